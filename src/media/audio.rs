//! Camera audio to 16 kHz mono PCM, per camera, inside the camera's task.
//!
//! AAC is decoded with symphonia (pure Rust, a few hundred bytes of state per camera, no
//! thread and no pipeline), mixed down to mono and resampled with rubato. PCM accumulates
//! into chunks of a configured length, which the edge publishes on `panoptes.audio.<camera>`.

use rubato::{FftFixedInOut, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_AAC, CodecParameters, Decoder, DecoderOptions};
use symphonia::core::formats::Packet;

/// Output sample rate, what speech models expect.
pub const SAMPLE_RATE: u32 = 16_000;

/// Audio failures.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The stream's codec or configuration is not supported.
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    /// A frame could not be decoded.
    #[error("audio frame could not be decoded: {0}")]
    Decode(String),
}

/// A finished chunk of 16 kHz mono PCM (s16le).
#[derive(Debug, Clone)]
pub struct PcmChunk {
    /// Samples, little-endian signed 16-bit.
    pub pcm: Vec<u8>,
    /// Stream ticks (at the stream's clock rate) of the first sample.
    pub start_ts: i64,
    /// Number of samples.
    pub samples: usize,
}

/// Decoder and chunker for one camera's AAC stream.
pub struct AudioDecoder {
    decoder: Box<dyn Decoder>,
    resampler: Option<FftFixedInOut<f32>>,
    clock_rate: u32,
    source_rate: u32,
    chunk_samples: usize,
    /// Mono samples at the source rate waiting for the resampler.
    mono: Vec<f32>,
    out: Vec<i16>,
    /// Stream timestamp of `out[0]`.
    out_start: Option<i64>,
    /// Stream timestamp corresponding to `mono[0]`.
    mono_start: Option<i64>,
    scratch: Option<SampleBuffer<f32>>,
}

impl AudioDecoder {
    /// A decoder for AAC with `config` (the AudioSpecificConfig from the SDP), emitting chunks
    /// of `chunk_secs` seconds. `clock_rate` is the RTP clock of the stream's timestamps.
    pub fn aac(
        config: &[u8],
        clock_rate: u32,
        chunk_secs: f64,
    ) -> Result<AudioDecoder, AudioError> {
        let mut params = CodecParameters::new();
        params
            .for_codec(CODEC_TYPE_AAC)
            .with_sample_rate(clock_rate)
            .with_extra_data(config.to_vec().into_boxed_slice());
        let decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| AudioError::Unsupported(e.to_string()))?;
        // RFC 3640: the RTP clock of an AAC stream is its sample rate.
        let source_rate = decoder.codec_params().sample_rate.unwrap_or(clock_rate);
        if source_rate == 0 {
            return Err(AudioError::Unsupported("sample rate 0".into()));
        }
        let resampler = if source_rate == SAMPLE_RATE {
            None
        } else {
            Some(
                FftFixedInOut::<f32>::new(source_rate as usize, SAMPLE_RATE as usize, 1024, 1)
                    .map_err(|e| AudioError::Unsupported(e.to_string()))?,
            )
        };
        Ok(AudioDecoder {
            decoder,
            resampler,
            clock_rate: clock_rate.max(1),
            source_rate,
            chunk_samples: ((chunk_secs * f64::from(SAMPLE_RATE)) as usize).max(1600),
            mono: Vec::with_capacity(4096),
            out: Vec::new(),
            out_start: None,
            mono_start: None,
            scratch: None,
        })
    }

    /// Decodes one frame stamped `ts` (stream ticks); returns a chunk when one is complete.
    pub fn push(&mut self, ts: i64, data: &[u8]) -> Result<Option<PcmChunk>, AudioError> {
        let packet = Packet::new_from_slice(0, 0, 0, data);
        let decoded = self
            .decoder
            .decode(&packet)
            .map_err(|e| AudioError::Decode(e.to_string()))?;
        let spec = *decoded.spec();
        let frames = decoded.frames();
        let channels = spec.channels.count().max(1);
        let scratch = match &mut self.scratch {
            Some(s) if s.capacity() >= frames * channels => s,
            _ => self
                .scratch
                .insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        scratch.copy_interleaved_ref(decoded);
        if self.mono.is_empty() {
            self.mono_start = Some(ts);
        }
        for frame in scratch.samples().chunks(channels) {
            self.mono.push(frame.iter().sum::<f32>() / channels as f32);
        }
        self.drain_resampler();
        if self.out.len() >= self.chunk_samples {
            return Ok(self.take_chunk(self.chunk_samples));
        }
        Ok(None)
    }

    /// Whatever PCM is pending, as a final (shorter) chunk.
    pub fn flush(&mut self) -> Option<PcmChunk> {
        self.take_chunk(self.out.len())
    }

    fn drain_resampler(&mut self) {
        let Some(resampler) = &mut self.resampler else {
            if self.out.is_empty() {
                self.out_start = self.mono_start;
            }
            self.out.extend(self.mono.drain(..).map(to_i16));
            return;
        };
        loop {
            let need = resampler.input_frames_next();
            if self.mono.len() < need {
                break;
            }
            if self.out.is_empty() {
                self.out_start = self.mono_start;
            }
            match resampler.process(&[&self.mono[..need]], None) {
                Ok(out) => self.out.extend(out[0].iter().copied().map(to_i16)),
                Err(e) => tracing::debug!(error = %e, "resampler refused a block"),
            }
            self.mono.drain(..need);
            if let Some(s) = &mut self.mono_start {
                *s += need as i64 * i64::from(self.clock_rate) / i64::from(self.source_rate);
            }
        }
    }

    fn take_chunk(&mut self, n: usize) -> Option<PcmChunk> {
        if n == 0 {
            return None;
        }
        let start_ts = self.out_start.unwrap_or_default();
        let pcm: Vec<u8> = self.out.drain(..n).flat_map(i16::to_le_bytes).collect();
        self.out_start =
            Some(start_ts + n as i64 * i64::from(self.clock_rate) / i64::from(SAMPLE_RATE));
        Some(PcmChunk {
            pcm,
            start_ts,
            samples: n,
        })
    }
}

fn to_i16(v: f32) -> i16 {
    (v.clamp(-1.0, 1.0) * 32767.0) as i16
}
