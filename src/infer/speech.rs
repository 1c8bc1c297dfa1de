//! Speech: Silero VAD finds the speech in 16 kHz mono audio, Whisper transcribes each speech
//! segment (log-mel features computed here, greedy decoding with the decoder's KV cache).

use std::sync::{Arc, Mutex};

use ort::value::{DynValue, Tensor, TensorRef};
use realfft::{RealFftPlanner, RealToComplex};
use serde::Serialize;
use tokenizers::Tokenizer;

use super::{Error, Runtime, Shared, Slot, lock, model_err};
use crate::config::SpeechConfig;

/// Sample rate every speech model here works at.
pub const SAMPLE_RATE: u32 = 16_000;

/// One stretch of speech and what was said.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeechSegment {
    /// Start, seconds from the start of the audio.
    pub start_s: f32,
    /// End, seconds from the start of the audio.
    pub end_s: f32,
    /// The words.
    pub text: String,
    /// exp(mean log-probability) of the decoded tokens, 0..1.
    pub confidence: f32,
}

// Silero VAD at 16 kHz: 512 new samples per window, with the last 64 of the previous one.
const VAD_WINDOW: usize = 512;
const VAD_CONTEXT: usize = 64;
/// Speech shorter than this is ignored.
const MIN_SPEECH: usize = SAMPLE_RATE as usize / 4;
/// Silence this long ends a segment.
const MIN_SILENCE: usize = SAMPLE_RATE as usize * 3 / 10;
/// Padding kept around each segment.
const SPEECH_PAD: usize = SAMPLE_RATE as usize / 5;
/// Segments closer than this (after padding) are one: a pause between phrases keeps a
/// sentence together, which reads better and gives Whisper context.
const MERGE_GAP: usize = SAMPLE_RATE as usize * 4 / 5;

// Whisper's front end.
const N_FFT: usize = 400;
const HOP: usize = 160;
const N_MELS: usize = 80;
const N_FRAMES: usize = 3000;
/// 30 s: Whisper's window; longer segments are split.
const N_SAMPLES: usize = N_FRAMES * HOP;
const MAX_TOKENS: usize = 224;
const D_MODEL: usize = 384;
const LAYERS: usize = 4;
/// The token Whisper writes for a lone space; not allowed as the first token.
const BLANK: usize = 220;

#[derive(Default)]
struct VadScratch {
    input: Vec<f32>,
    state: Vec<f32>,
}

#[derive(Default)]
struct EncScratch {
    mel: Vec<f32>,
}

/// Voice activity detection and speech recognition.
pub struct Speech {
    vad: Shared<VadScratch>,
    encoder: Shared<EncScratch>,
    decoder: Mutex<ort::session::Session>,
    tokenizer: Tokenizer,
    front: Mutex<MelFrontEnd>,
    threshold: f32,
    sot: i64,
    eot: i64,
    no_timestamps: i64,
    batch: usize,
}

impl Speech {
    /// Loads `silero-vad/silero_vad.onnx` and `whisper-tiny.en/*` from the models directory.
    pub fn load(rt: &Runtime, cfg: &SpeechConfig) -> Result<Self, Error> {
        let vad = rt.session("vad", "silero-vad/silero_vad.onnx")?;
        let encoder = rt.session(
            "whisper-encoder",
            "whisper-tiny.en/whisper-tiny.en-encoder.onnx",
        )?;
        let decoder = rt.session(
            "whisper-decoder",
            "whisper-tiny.en/whisper-tiny.en-decoder.onnx",
        )?;
        let err = model_err("whisper-decoder");
        let meta = decoder.metadata().map_err(|e| err(&e))?;
        let token = |key: &str, default: i64| {
            meta.custom(key)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        let (sot, eot, no_timestamps) = (
            token("sot", 50257),
            token("eot", 50256),
            token("no_timestamps", 50362),
        );
        drop(meta);
        let tokenizer = Tokenizer::from_file(rt.file("whisper-tiny.en/tokenizer.json")?)
            .map_err(|e| model_err("whisper-tokenizer")(&e))?;
        Ok(Self {
            vad: Mutex::new(Slot {
                session: vad,
                scratch: VadScratch::default(),
            }),
            encoder: Mutex::new(Slot {
                session: encoder,
                scratch: EncScratch::default(),
            }),
            decoder: Mutex::new(decoder),
            tokenizer,
            front: Mutex::new(MelFrontEnd::new()),
            threshold: cfg.vad_threshold,
            sot,
            eot,
            no_timestamps,
            batch: rt.batch,
        })
    }

    /// Finds the speech in `pcm` (16 kHz mono, -1..1) and transcribes it.
    pub fn transcribe(&self, pcm: &[f32]) -> Result<Vec<SpeechSegment>, Error> {
        let ranges = self.speech_ranges(pcm)?;
        let clips: Vec<&[f32]> = ranges.iter().map(|&(a, b)| &pcm[a..b]).collect();
        let texts = self.recognize(&clips)?;
        Ok(ranges
            .into_iter()
            .zip(texts)
            .filter(|(_, (text, _))| !text.is_empty())
            .map(|((a, b), (text, confidence))| SpeechSegment {
                start_s: a as f32 / SAMPLE_RATE as f32,
                end_s: b as f32 / SAMPLE_RATE as f32,
                text,
                confidence,
            })
            .collect())
    }

    /// Sample ranges of speech, padded, each at most 30 s.
    pub fn speech_ranges(&self, pcm: &[f32]) -> Result<Vec<(usize, usize)>, Error> {
        let probs = self.vad_probabilities(pcm)?;
        Ok(segments(&probs, pcm.len(), self.threshold))
    }

    /// Speech probability of each 32 ms window.
    fn vad_probabilities(&self, pcm: &[f32]) -> Result<Vec<f32>, Error> {
        let err = model_err("vad");
        let mut guard = lock(&self.vad);
        let Slot { session, scratch } = &mut *guard;
        scratch.state.clear();
        scratch.state.resize(2 * 128, 0.0);
        scratch.input.clear();
        scratch.input.resize(VAD_CONTEXT + VAD_WINDOW, 0.0);
        let mut probs = Vec::with_capacity(pcm.len() / VAD_WINDOW + 1);
        let sr = Tensor::from_array(((), vec![SAMPLE_RATE as i64])).map_err(|e| err(&e))?;
        for window in pcm.chunks(VAD_WINDOW) {
            // Carry the last 64 samples, then the new window (zero-padded at the very end).
            scratch.input.copy_within(VAD_WINDOW.., 0);
            let new = &mut scratch.input[VAD_CONTEXT..];
            new[..window.len()].copy_from_slice(window);
            new[window.len()..].fill(0.0);
            let outputs = session
                .run(ort::inputs![
                    "input" => TensorRef::from_array_view(([1, VAD_CONTEXT + VAD_WINDOW], &*scratch.input)).map_err(|e| err(&e))?,
                    "state" => TensorRef::from_array_view(([2, 1, 128], &*scratch.state)).map_err(|e| err(&e))?,
                    "sr" => &sr,
                ])
                .map_err(|e| err(&e))?;
            let (_, p) = outputs["output"]
                .try_extract_tensor::<f32>()
                .map_err(|e| err(&e))?;
            probs.push(p.first().copied().unwrap_or(0.0));
            let (_, state) = outputs["stateN"]
                .try_extract_tensor::<f32>()
                .map_err(|e| err(&e))?;
            scratch.state.copy_from_slice(&state[..2 * 128]);
        }
        Ok(probs)
    }

    /// Transcribes each clip (at most 30 s each): text and confidence.
    pub fn recognize(&self, clips: &[&[f32]]) -> Result<Vec<(String, f32)>, Error> {
        let mut out = Vec::with_capacity(clips.len());
        for chunk in clips.chunks(self.batch) {
            let (cross_k, cross_v) = self.encode(chunk)?;
            for (tokens, confidence) in self.decode(chunk.len(), &cross_k, &cross_v)? {
                let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
                let text = self
                    .tokenizer
                    .decode(&ids, true)
                    .map_err(|e| model_err("whisper-tokenizer")(&e))?;
                out.push((text.trim().to_string(), confidence));
            }
        }
        Ok(out)
    }

    /// Log-mel features of each clip through the encoder: the cross-attention keys and values.
    fn encode(&self, clips: &[&[f32]]) -> Result<(DynValue, DynValue), Error> {
        let err = model_err("whisper-encoder");
        let mut guard = lock(&self.encoder);
        let Slot { session, scratch } = &mut *guard;
        let per = N_MELS * N_FRAMES;
        scratch.mel.resize(clips.len() * per, 0.0);
        {
            let mut front = self.front.lock().unwrap_or_else(|p| p.into_inner());
            for (clip, dst) in clips.iter().zip(scratch.mel.chunks_mut(per)) {
                front.log_mel(clip, dst);
            }
        }
        let mel = TensorRef::from_array_view(([clips.len(), N_MELS, N_FRAMES], &*scratch.mel))
            .map_err(|e| err(&e))?;
        let mut outputs = session
            .run(ort::inputs!["mel" => mel])
            .map_err(|e| err(&e))?;
        let k = outputs
            .remove("cross_k")
            .ok_or_else(|| err(&"no cross_k output"))?;
        let v = outputs
            .remove("cross_v")
            .ok_or_else(|| err(&"no cross_v output"))?;
        Ok((k, v))
    }

    /// Greedy decoding of `n` clips at once with the self-attention KV cache.
    fn decode(
        &self,
        n: usize,
        cross_k: &DynValue,
        cross_v: &DynValue,
    ) -> Result<Vec<(Vec<i64>, f32)>, Error> {
        let err = model_err("whisper-decoder");
        let mut session = self.decoder.lock().unwrap_or_else(|p| p.into_inner());
        let empty = || Tensor::from_array(([LAYERS, n, 0, D_MODEL], Vec::<f32>::new()));
        let mut self_k: DynValue = empty().map_err(|e| err(&e))?.into_dyn();
        let mut self_v: DynValue = empty().map_err(|e| err(&e))?.into_dyn();
        let mut step: Vec<i64> = (0..n)
            .flat_map(|_| [self.sot, self.no_timestamps])
            .collect();
        let mut width = 2;
        let mut offset = 0i64;
        let mut tokens: Vec<Vec<i64>> = vec![Vec::new(); n];
        let mut logprob = vec![0.0f32; n];
        let mut done = vec![false; n];
        for i in 0..MAX_TOKENS {
            let mut outputs = session
                .run(ort::inputs![
                    "tokens" => TensorRef::from_array_view(([n, width], &*step)).map_err(|e| err(&e))?,
                    "self_k" => &self_k,
                    "self_v" => &self_v,
                    "cross_k" => cross_k,
                    "cross_v" => cross_v,
                    "offset" => Tensor::from_array(([1usize], vec![offset])).map_err(|e| err(&e))?,
                ])
                .map_err(|e| err(&e))?;
            let (_, logits) = outputs["logits"]
                .try_extract_tensor::<f32>()
                .map_err(|e| err(&e))?;
            let vocab = logits.len() / n;
            let mut next = Vec::with_capacity(n);
            for (b, row) in logits.chunks(vocab).enumerate() {
                if done[b] {
                    next.push(self.eot);
                    continue;
                }
                // Only text tokens and end of text; neither a blank nor an empty transcript first.
                let allowed = &row[..=(self.eot as usize).min(vocab - 1)];
                let mut best = 0;
                for (t, &v) in allowed.iter().enumerate() {
                    let banned = i == 0 && (t == BLANK || t == self.eot as usize);
                    if !banned && v > allowed[best] {
                        best = t;
                    }
                }
                logprob[b] += log_softmax_at(row, best);
                if best as i64 == self.eot {
                    done[b] = true;
                } else {
                    tokens[b].push(best as i64);
                }
                next.push(best as i64);
            }
            offset += width as i64;
            self_k = outputs
                .remove("new_self_k")
                .ok_or_else(|| err(&"no new_self_k output"))?;
            self_v = outputs
                .remove("new_self_v")
                .ok_or_else(|| err(&"no new_self_v output"))?;
            if done.iter().all(|d| *d) {
                break;
            }
            step = next;
            width = 1;
        }
        Ok(tokens
            .into_iter()
            .zip(logprob)
            .map(|(t, lp)| {
                let steps = (t.len() + 1) as f32;
                (t, (lp / steps).exp())
            })
            .collect())
    }
}

/// log softmax of `row` at index `k`.
fn log_softmax_at(row: &[f32], k: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    row[k] - max - sum.ln()
}

/// Speech segments from per-window probabilities: start at `threshold`, end after
/// [`MIN_SILENCE`] below `threshold - 0.15`, drop short ones, pad, merge those
/// [`MERGE_GAP`] apart, split at 30 s.
fn segments(probs: &[f32], len: usize, threshold: f32) -> Vec<(usize, usize)> {
    let neg = (threshold - 0.15).max(0.01);
    let mut raw: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    let mut silence_from = None;
    for (i, &p) in probs.iter().enumerate() {
        let at = i * VAD_WINDOW;
        match start {
            None if p >= threshold => {
                start = Some(at);
                silence_from = None;
            }
            Some(s) => {
                if p >= threshold {
                    silence_from = None;
                } else if p < neg {
                    let from = *silence_from.get_or_insert(at);
                    if at + VAD_WINDOW - from >= MIN_SILENCE {
                        raw.push((s, from));
                        start = None;
                    }
                }
            }
            None => {}
        }
    }
    if let Some(s) = start {
        raw.push((s, len));
    }
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (a, b) in raw.into_iter().filter(|(a, b)| b - a >= MIN_SPEECH) {
        let (a, b) = (a.saturating_sub(SPEECH_PAD), (b + SPEECH_PAD).min(len));
        match out.last_mut() {
            Some(last) if a <= last.1 + MERGE_GAP => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out.into_iter()
        .flat_map(|(a, b)| {
            (a..b)
                .step_by(N_SAMPLES)
                .map(move |s| (s, (s + N_SAMPLES).min(b)))
        })
        .collect()
}

/// Whisper's log-mel spectrogram: 16 kHz audio padded or cut to 30 s, STFT (400-point
/// periodic Hann, hop 160, centred with reflection), power, 80 Slaney mel bands,
/// log10, clamped to 8 below the maximum, scaled as (x + 4) / 4.
pub struct MelFrontEnd {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    filters: Vec<f32>,
    padded: Vec<f32>,
    frame: Vec<f32>,
    spectrum: Vec<realfft::num_complex::Complex<f32>>,
    power: Vec<f32>,
}

impl Default for MelFrontEnd {
    fn default() -> Self {
        Self::new()
    }
}

impl MelFrontEnd {
    /// Plans the FFT and builds the filter bank.
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        let window = (0..N_FFT)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
            .map(|v| v as f32)
            .collect();
        let spectrum = fft.make_output_vec();
        Self {
            fft,
            window,
            filters: mel_filters(),
            padded: Vec::new(),
            frame: vec![0.0; N_FFT],
            spectrum,
            power: vec![0.0; (N_FFT / 2 + 1) * N_FRAMES],
        }
    }

    /// Writes the [80, 3000] features of `audio` into `out`.
    pub fn log_mel(&mut self, audio: &[f32], out: &mut [f32]) {
        let bins = N_FFT / 2 + 1;
        let pad = N_FFT / 2;
        let n = audio.len().min(N_SAMPLES);
        self.padded.clear();
        self.padded.resize(N_SAMPLES + 2 * pad, 0.0);
        self.padded[pad..pad + n].copy_from_slice(&audio[..n]);
        // Reflect at both ends of the 30 s signal (the end is zeros unless the audio is 30 s).
        for i in 0..pad {
            self.padded[pad - 1 - i] = self.padded[pad + 1 + i];
            self.padded[pad + N_SAMPLES + i] = self.padded[pad + N_SAMPLES - 2 - i];
        }
        for t in 0..N_FRAMES {
            let src = &self.padded[t * HOP..t * HOP + N_FFT];
            for ((f, s), w) in self.frame.iter_mut().zip(src).zip(&self.window) {
                *f = s * w;
            }
            // Sizes are fixed at construction, so the FFT cannot fail.
            let _ = self.fft.process(&mut self.frame, &mut self.spectrum);
            for (k, c) in self.spectrum.iter().enumerate() {
                self.power[k * N_FRAMES + t] = c.norm_sqr();
            }
        }
        let mut max = f32::NEG_INFINITY;
        for m in 0..N_MELS {
            let row = &mut out[m * N_FRAMES..(m + 1) * N_FRAMES];
            row.fill(0.0);
            let weights = &self.filters[m * bins..(m + 1) * bins];
            for (k, &w) in weights.iter().enumerate() {
                if w == 0.0 {
                    continue;
                }
                let p = &self.power[k * N_FRAMES..(k + 1) * N_FRAMES];
                for (o, &v) in row.iter_mut().zip(p) {
                    *o += w * v;
                }
            }
            for v in row.iter_mut() {
                *v = v.max(1e-10).log10();
                max = max.max(*v);
            }
        }
        for v in out[..N_MELS * N_FRAMES].iter_mut() {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
    }
}

/// Log-mel features of `audio` as [80 x 3000] values (see [`MelFrontEnd`]).
pub fn log_mel(audio: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; N_MELS * N_FRAMES];
    MelFrontEnd::new().log_mel(audio, &mut out);
    out
}

/// librosa's `filters.mel(sr=16000, n_fft=400, n_mels=80)`: Slaney mel scale, Slaney
/// normalisation; [80 x 201] row-major.
fn mel_filters() -> Vec<f32> {
    fn hz_to_mel(f: f64) -> f64 {
        let (f_sp, min_log_hz, min_log_mel, logstep) =
            (200.0 / 3.0, 1000.0, 15.0, 6.4f64.ln() / 27.0);
        if f >= min_log_hz {
            min_log_mel + (f / min_log_hz).ln() / logstep
        } else {
            f / f_sp
        }
    }
    fn mel_to_hz(m: f64) -> f64 {
        let (f_sp, min_log_hz, min_log_mel, logstep) =
            (200.0 / 3.0, 1000.0, 15.0, 6.4f64.ln() / 27.0);
        if m >= min_log_mel {
            min_log_hz * (logstep * (m - min_log_mel)).exp()
        } else {
            f_sp * m
        }
    }
    let bins = N_FFT / 2 + 1;
    let sr = SAMPLE_RATE as f64;
    let fft_freqs: Vec<f64> = (0..bins).map(|k| k as f64 * sr / N_FFT as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let mel_f: Vec<f64> = (0..N_MELS + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (N_MELS + 1) as f64))
        .collect();
    let mut w = vec![0.0f32; N_MELS * bins];
    for m in 0..N_MELS {
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - mel_f[m]) / (mel_f[m + 1] - mel_f[m]);
            let upper = (mel_f[m + 2] - f) / (mel_f[m + 2] - mel_f[m + 1]);
            w[m * bins + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_pad_merge_and_drop_short_bursts() {
        let w = VAD_WINDOW;
        // 90 windows: speech 10..20, a short gap, speech 22..30 (one segment); a lone burst
        // at 50 (too short); speech from 80 to the end, far enough to stay apart.
        let mut probs = vec![0.0; 90];
        for range in [10..20, 22..30, 50..51, 80..90] {
            probs[range].fill(0.9);
        }
        let segs = segments(&probs, 90 * w, 0.5);
        assert_eq!(
            segs,
            vec![
                (10 * w - SPEECH_PAD, 30 * w + SPEECH_PAD),
                (80 * w - SPEECH_PAD, 90 * w)
            ]
        );
    }

    #[test]
    fn long_speech_is_split_at_30_seconds() {
        let probs = vec![0.9; 70 * SAMPLE_RATE as usize / VAD_WINDOW];
        let len = probs.len() * VAD_WINDOW;
        let segs = segments(&probs, len, 0.5);
        assert_eq!(segs.len(), 3);
        assert!(segs.iter().all(|(a, b)| b - a <= N_SAMPLES));
        assert_eq!(segs.last().unwrap().1, len);
    }

    #[test]
    fn mel_filters_match_librosa_shape() {
        let f = mel_filters();
        let bins = N_FFT / 2 + 1;
        // Every band has weight somewhere, and the first band peaks in the first bins.
        for m in 0..N_MELS {
            assert!(
                f[m * bins..(m + 1) * bins].iter().any(|&v| v > 0.0),
                "band {m}"
            );
        }
        // librosa: filters[0, 1] = 0.02486259 for these settings.
        assert!((f[1] - 0.024_862_59).abs() < 1e-6, "{}", f[1]);
    }

    #[test]
    fn silence_gives_the_floor_value() {
        let mel = log_mel(&[0.0; 16000]);
        // log10(1e-10) = -10, the maximum too, so (-10 + 4) / 4 everywhere.
        assert!(mel.iter().all(|&v| (v + 1.5).abs() < 1e-6));
    }
}
