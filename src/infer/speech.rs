//! Speech: Silero VAD finds the speech in 16 kHz mono audio, Whisper transcribes each speech
//! segment (log-mel features computed here, greedy decoding with the decoder's KV cache).
//!
//! Voice activity runs over many streams at once ([`VadStream`]: one per camera, fed as
//! the audio arrives), one window of every stream per model run; windows of digital
//! silence are not run at all. Whisper sees a window fitted to the phrase (the phrase plus
//! [`WINDOW_MARGIN`], at least `speech.min_window`, 6 s on the CPU) instead of a fixed
//! 30 s: the encoder and the decoder's cross-attention cost in proportion. Whisper was
//! trained on 30 s windows and can repeat itself when the audio ends close to the window's
//! end, so a short window whose transcript runs past what the phrase could hold, or ends
//! by repeating itself, is decoded again with the full window.

use std::sync::{Arc, Mutex};

use ort::value::{DynValue, Tensor, TensorRef};
use realfft::{RealFftPlanner, RealToComplex};
use serde::Serialize;
use tokenizers::Tokenizer;

use super::runtime::{Error, Runtime, Shared, Slot, lock, model_err};
use crate::config::{InferConfig, Provider};

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

/// Silero VAD at 16 kHz: 512 new samples per window, with the last 64 of the previous one.
pub const VAD_WINDOW: usize = 512;
const VAD_CONTEXT: usize = 64;
const VAD_STATE: usize = 2 * 128;
/// A window whose samples all stay below this (about -74 dBFS, a few steps of 16-bit
/// audio) is digital silence: a muted microphone, or a camera that sends silent audio. It
/// is speech with probability 0 and costs no model run.
const DIGITAL_SILENCE: f32 = 2e-4;
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
/// Audio after a phrase in a fitted window. With less, Whisper tiny.en repeated short
/// phrases until the token limit ("Hello? Hello? ..."; a 3.7 s sentence in a 5 s window).
pub const WINDOW_MARGIN: usize = 2 * SAMPLE_RATE as usize;
/// Phrases transcribed in one run: the decoder reads its 80 MB output projection once per
/// step for the whole batch, so phrases that end together share that cost.
const SPEECH_BATCH: usize = 8;
const D_MODEL: usize = 384;
const LAYERS: usize = 4;
/// The token Whisper writes for a lone space; not allowed as the first token.
const BLANK: usize = 220;

#[derive(Default)]
struct VadScratch {
    input: Vec<f32>,
    state: Vec<f32>,
    /// Which stream each row of the batch is.
    rows: Vec<usize>,
}

/// Voice activity state of one continuous audio stream (a camera's audio): the model's
/// recurrent state and the last samples seen, so that audio fed a little at a time is
/// looked at once, window by window, as if it had come in one piece.
#[derive(Clone)]
pub struct VadStream {
    state: [f32; VAD_STATE],
    context: [f32; VAD_CONTEXT],
}

impl Default for VadStream {
    fn default() -> Self {
        Self {
            state: [0.0; VAD_STATE],
            context: [0.0; VAD_CONTEXT],
        }
    }
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
    /// Shortest window Whisper sees, in mel frames.
    min_window: usize,
    full_windows: metrics::Counter,
}

impl Speech {
    /// Loads `silero-vad/silero_vad.onnx` and `whisper-tiny.en/*` from the models directory.
    pub fn load(rt: &Runtime, infer: &InferConfig) -> Result<Self, Error> {
        // Small runs (a window of each talking camera) go faster on one thread.
        let vad = rt.session_with_threads("vad", "silero-vad/silero_vad.onnx", 1)?;
        let (encoder, decoder) = whisper_files(rt.provider());
        let encoder = rt.session("whisper-encoder", encoder)?;
        let decoder = rt.session("whisper-decoder", decoder)?;
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
            threshold: infer.speech.vad_threshold,
            sot,
            eot,
            no_timestamps,
            batch: rt.batch.max(SPEECH_BATCH),
            min_window: frames_for(
                infer.speech_min_window().as_secs_f64() * f64::from(SAMPLE_RATE),
            ),
            full_windows: metrics::counter!("panoptes_infer_speech_full_windows_total"),
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
        let mut stream = VadStream::default();
        let probs = self.voice_activity(&mut [(&mut stream, pcm)])?;
        Ok(self.phrases(&probs[0], pcm.len()))
    }

    /// Padded phrases (sample ranges, each at most 30 s) in `len` samples of audio whose
    /// windows had the speech probabilities `probs`.
    pub fn phrases(&self, probs: &[f32], len: usize) -> Vec<(usize, usize)> {
        segments(probs, len, self.threshold)
    }

    /// Speech probability of each window of each stream's new audio, continuing from what
    /// each stream saw before. One model run takes the next window of every stream; a last
    /// partial window is zero-padded (feed whole windows to continue a stream later).
    pub fn voice_activity(
        &self,
        streams: &mut [(&mut VadStream, &[f32])],
    ) -> Result<Vec<Vec<f32>>, Error> {
        let err = model_err("vad");
        let mut guard = lock(&self.vad);
        let Slot { session, scratch } = &mut *guard;
        let mut probs: Vec<Vec<f32>> = streams
            .iter()
            .map(|(_, pcm)| Vec::with_capacity(pcm.len().div_ceil(VAD_WINDOW)))
            .collect();
        let steps = streams
            .iter()
            .map(|(_, pcm)| pcm.len().div_ceil(VAD_WINDOW))
            .max()
            .unwrap_or(0);
        let sr = Tensor::from_array(((), vec![SAMPLE_RATE as i64])).map_err(|e| err(&e))?;
        let width = VAD_CONTEXT + VAD_WINDOW;
        for step in 0..steps {
            scratch.rows.clear();
            scratch.input.clear();
            for (i, (stream, pcm)) in streams.iter_mut().enumerate() {
                let Some(window) = pcm.chunks(VAD_WINDOW).nth(step) else {
                    continue;
                };
                let silent = window.iter().all(|v| v.abs() < DIGITAL_SILENCE);
                if silent {
                    probs[i].push(0.0);
                    stream.state = [0.0; VAD_STATE];
                } else {
                    scratch.rows.push(i);
                    scratch.input.extend_from_slice(&stream.context);
                    scratch.input.extend_from_slice(window);
                    scratch.input.resize(scratch.rows.len() * width, 0.0);
                }
                // The next window's context: the last samples of this one (zero-padded).
                let mut last = [0.0; VAD_WINDOW];
                last[..window.len()].copy_from_slice(window);
                stream
                    .context
                    .copy_from_slice(&last[VAD_WINDOW - VAD_CONTEXT..]);
            }
            let b = scratch.rows.len();
            if b == 0 {
                continue;
            }
            // State [2, b, 128]: the two layers of every row.
            scratch.state.clear();
            for layer in 0..2 {
                for &i in &scratch.rows {
                    scratch
                        .state
                        .extend_from_slice(&streams[i].0.state[layer * 128..(layer + 1) * 128]);
                }
            }
            let outputs = session
                .run(ort::inputs![
                    "input" => TensorRef::from_array_view(([b, width], &*scratch.input)).map_err(|e| err(&e))?,
                    "state" => TensorRef::from_array_view(([2, b, 128], &*scratch.state)).map_err(|e| err(&e))?,
                    "sr" => &sr,
                ])
                .map_err(|e| err(&e))?;
            let (_, p) = outputs["output"]
                .try_extract_tensor::<f32>()
                .map_err(|e| err(&e))?;
            let (_, state) = outputs["stateN"]
                .try_extract_tensor::<f32>()
                .map_err(|e| err(&e))?;
            if p.len() < b || state.len() < 2 * b * 128 {
                return Err(err(&format!(
                    "expected {b} probabilities and state [2, {b}, 128], got {} and {} values",
                    p.len(),
                    state.len()
                )));
            }
            for (row, &i) in scratch.rows.iter().enumerate() {
                probs[i].push(p[row]);
                let stream = &mut streams[i].0;
                for layer in 0..2 {
                    let from = (layer * b + row) * 128;
                    stream.state[layer * 128..(layer + 1) * 128]
                        .copy_from_slice(&state[from..from + 128]);
                }
            }
        }
        Ok(probs)
    }

    /// Phrases [`Speech::recognize`] transcribes in one run.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Mel frames of the window Whisper sees for a phrase of `samples`: the phrase plus
    /// [`WINDOW_MARGIN`], at least `speech.min_window`, at most 30 s.
    pub fn window_frames(&self, samples: usize) -> usize {
        frames_for((samples + WINDOW_MARGIN) as f64).max(self.min_window)
    }

    /// Transcribes each clip (at most 30 s each): text and confidence.
    pub fn recognize(&self, clips: &[&[f32]]) -> Result<Vec<(String, f32)>, Error> {
        let mut out: Vec<Option<(String, f32)>> = vec![None; clips.len()];
        let mut again = Vec::new();
        for (n, chunk) in clips.chunks(self.batch).enumerate() {
            let frames = chunk
                .iter()
                .map(|c| self.window_frames(c.len()))
                .max()
                .unwrap_or(N_FRAMES);
            let fitted = frames < N_FRAMES;
            let caps: Vec<usize> = chunk
                .iter()
                .map(|c| {
                    if fitted {
                        token_cap(c.len())
                    } else {
                        MAX_TOKENS
                    }
                })
                .collect();
            let (cross_k, cross_v) = self.encode(chunk, frames)?;
            let decoded = self.decode(chunk.len(), &cross_k, &cross_v, &caps)?;
            for (i, (tokens, confidence, capped)) in decoded.into_iter().enumerate() {
                let at = n * self.batch + i;
                if fitted && (capped || ends_in_repeat(&tokens)) {
                    again.push(at);
                } else {
                    out[at] = Some((self.text(&tokens)?, confidence));
                }
            }
        }
        // Fitted windows that ran on or repeated themselves: Whisper's own 30 s window.
        self.full_windows.increment(again.len() as u64);
        for chunk in again.chunks(self.batch) {
            let clips: Vec<&[f32]> = chunk.iter().map(|&i| clips[i]).collect();
            let (cross_k, cross_v) = self.encode(&clips, N_FRAMES)?;
            let caps = vec![MAX_TOKENS; clips.len()];
            let decoded = self.decode(clips.len(), &cross_k, &cross_v, &caps)?;
            for (&i, (tokens, confidence, _)) in chunk.iter().zip(decoded) {
                out[i] = Some((self.text(&tokens)?, confidence));
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn text(&self, tokens: &[i64]) -> Result<String, Error> {
        let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
        let text = self
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| model_err("whisper-tokenizer")(&e))?;
        Ok(text.trim().to_string())
    }

    /// Log-mel features of each clip, `frames` long, through the encoder: the
    /// cross-attention keys and values.
    fn encode(&self, clips: &[&[f32]], frames: usize) -> Result<(DynValue, DynValue), Error> {
        let err = model_err("whisper-encoder");
        let mut guard = lock(&self.encoder);
        let Slot { session, scratch } = &mut *guard;
        let per = N_MELS * frames;
        scratch.mel.resize(clips.len() * per, 0.0);
        {
            let mut front = self.front.lock().unwrap_or_else(|p| p.into_inner());
            for (clip, dst) in clips.iter().zip(scratch.mel.chunks_mut(per)) {
                front.log_mel(clip, dst, frames);
            }
        }
        let mel = TensorRef::from_array_view(([clips.len(), N_MELS, frames], &*scratch.mel))
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

    /// Greedy decoding of `n` clips at once with the self-attention KV cache, clip `b`
    /// stopping after `caps[b]` tokens. Returns each clip's tokens, confidence, and whether
    /// it was stopped at its cap rather than by end of text.
    fn decode(
        &self,
        n: usize,
        cross_k: &DynValue,
        cross_v: &DynValue,
        caps: &[usize],
    ) -> Result<Vec<(Vec<i64>, f32, bool)>, Error> {
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
        let mut capped = vec![false; n];
        let longest = caps.iter().copied().max().unwrap_or(MAX_TOKENS);
        for i in 0..longest.min(MAX_TOKENS) {
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
                    if tokens[b].len() >= caps[b] {
                        done[b] = true;
                        capped[b] = true;
                    }
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
        // Out of steps without an end of text.
        for (c, d) in capped.iter_mut().zip(&done) {
            *c |= !d;
        }
        Ok(tokens
            .into_iter()
            .zip(logprob)
            .zip(capped)
            .map(|((t, lp), capped)| {
                let steps = (t.len() + 1) as f32;
                (t, (lp / steps).exp(), capped)
            })
            .collect())
    }
}

/// The Whisper encoder and decoder (under the models directory) for `provider`. On the
/// CPU, the graphs with int8 weights: about 1.5x faster, with the same transcripts in the
/// install's checks. A GPU runs the float graphs (int8 activations are quantized on the
/// CPU at every run).
pub fn whisper_files(provider: Provider) -> (&'static str, &'static str) {
    match provider {
        Provider::Cpu => (
            "whisper-tiny.en/whisper-tiny.en-encoder.int8.onnx",
            "whisper-tiny.en/whisper-tiny.en-decoder.int8.onnx",
        ),
        Provider::Cuda | Provider::Tensorrt => (
            "whisper-tiny.en/whisper-tiny.en-encoder.onnx",
            "whisper-tiny.en/whisper-tiny.en-decoder.onnx",
        ),
    }
}

/// Mel frames (even, as the encoder's stride-2 convolution wants, at most 30 s) that hold
/// `samples` of audio.
fn frames_for(samples: f64) -> usize {
    let frames = (samples / HOP as f64).ceil().max(2.0) as usize;
    (frames.div_ceil(2) * 2).min(N_FRAMES)
}

/// Most tokens a phrase of `samples` can hold in a fitted window: 10 a second (fast
/// speech is about 6) plus 10. A transcript that reaches it has run on.
fn token_cap(samples: usize) -> usize {
    (samples * 10 / SAMPLE_RATE as usize + 10).min(MAX_TOKENS)
}

/// Whether the transcript ends by saying its last three or more tokens twice in a row, as
/// Whisper does when it runs on past the audio ("... Fail better. Fail better.").
fn ends_in_repeat(tokens: &[i64]) -> bool {
    let n = tokens.len();
    (3..=n / 2).any(|k| tokens[n - k..] == tokens[n - 2 * k..n - k])
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

    /// Writes the [80, `frames`] features of `audio` into `out`: the first `frames` (at
    /// most 3000) of its 30 s window.
    pub fn log_mel(&mut self, audio: &[f32], out: &mut [f32], frames: usize) {
        let frames = frames.min(N_FRAMES);
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
        for t in 0..frames {
            let src = &self.padded[t * HOP..t * HOP + N_FFT];
            for ((f, s), w) in self.frame.iter_mut().zip(src).zip(&self.window) {
                *f = s * w;
            }
            // Sizes are fixed at construction, so the FFT cannot fail.
            let _ = self.fft.process(&mut self.frame, &mut self.spectrum);
            for (k, c) in self.spectrum.iter().enumerate() {
                self.power[k * frames + t] = c.norm_sqr();
            }
        }
        let mut max = f32::NEG_INFINITY;
        for m in 0..N_MELS {
            let row = &mut out[m * frames..(m + 1) * frames];
            row.fill(0.0);
            let weights = &self.filters[m * bins..(m + 1) * bins];
            for (k, &w) in weights.iter().enumerate() {
                if w == 0.0 {
                    continue;
                }
                let p = &self.power[k * frames..(k + 1) * frames];
                for (o, &v) in row.iter_mut().zip(p) {
                    *o += w * v;
                }
            }
            for v in row.iter_mut() {
                *v = v.max(1e-10).log10();
                max = max.max(*v);
            }
        }
        for v in out[..N_MELS * frames].iter_mut() {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
    }
}

/// Log-mel features of `audio` as [80 x `frames`] values, the first `frames` (at most
/// 3000) of its 30 s window (see [`MelFrontEnd`]).
pub fn log_mel(audio: &[f32], frames: usize) -> Vec<f32> {
    let mut out = vec![0.0; N_MELS * frames.min(N_FRAMES)];
    MelFrontEnd::new().log_mel(audio, &mut out, frames);
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
    fn fitted_windows_are_even_frames_within_30_seconds() {
        assert_eq!(frames_for(16_000.0), 100);
        assert_eq!(frames_for(16_001.0), 102);
        assert_eq!(frames_for(0.0), 2);
        assert_eq!(frames_for(40.0 * 16_000.0), N_FRAMES);
    }

    #[test]
    fn a_transcript_past_its_cap_or_ending_in_a_repeat_has_run_on() {
        // 4 s of audio may hold 50 tokens; 30 s no more than Whisper's own limit.
        assert_eq!(token_cap(4 * 16_000), 50);
        assert_eq!(token_cap(30 * 16_000), MAX_TOKENS);
        assert!(ends_in_repeat(&[9, 1, 2, 3, 1, 2, 3]));
        assert!(ends_in_repeat(&[1, 2, 3, 4, 1, 2, 3, 4]));
        // A word said twice is speech, not a loop; nor is a repeat that does not end it.
        assert!(!ends_in_repeat(&[7, 8, 1, 2, 1, 2]));
        assert!(!ends_in_repeat(&[1, 2, 3, 1, 2, 3, 4]));
        assert!(!ends_in_repeat(&[]));
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
        let mel = log_mel(&[0.0; 16000], N_FRAMES);
        // log10(1e-10) = -10, the maximum too, so (-10 + 4) / 4 everywhere.
        assert!(mel.iter().all(|&v| (v + 1.5).abs() < 1e-6));
    }
}
