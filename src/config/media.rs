//! `[sampling]`, `[recording]` and `[media]`: what the edge samples and records, and
//! how it decodes.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Frame sampling.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Time between sampled frames of one camera.
    #[serde(default = "default_sample_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Largest width of a sampled JPEG (aspect ratio is kept).
    #[serde(default = "default_max_width")]
    pub max_width: u32,
    /// Largest height of a sampled JPEG (aspect ratio is kept).
    #[serde(default = "default_max_height")]
    pub max_height: u32,
    /// JPEG quality, 1-100.
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: u32,
    /// Length of one PCM audio chunk published on the bus. A phrase is transcribed once the
    /// audio half a second past its end has arrived, so a chunk adds up to its length to
    /// the delay of speech insights; shorter chunks mean more, smaller messages.
    #[serde(default = "default_audio_chunk", with = "humantime_serde")]
    pub audio_chunk: Duration,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            interval: default_sample_interval(),
            max_width: default_max_width(),
            max_height: default_max_height(),
            jpeg_quality: default_jpeg_quality(),
            audio_chunk: default_audio_chunk(),
        }
    }
}

fn default_sample_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_max_width() -> u32 {
    1280
}
fn default_max_height() -> u32 {
    720
}
fn default_jpeg_quality() -> u32 {
    85
}
fn default_audio_chunk() -> Duration {
    Duration::from_millis(500)
}

/// Clip recording.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Record clips of every camera (a camera may turn it off).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Target segment length; segments are cut at the first keyframe after it.
    #[serde(default = "default_segment", with = "humantime_serde")]
    pub segment: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            segment: default_segment(),
        }
    }
}

pub(super) fn default_true() -> bool {
    true
}
fn default_segment() -> Duration {
    Duration::from_secs(10)
}

/// Decoding.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Hardware profile: the pipeline templates in `pipelines/<profile>.toml`.
    #[serde(default)]
    pub profile: MediaProfile,
    /// Directory of pipeline templates; the templates built into the binary when unset.
    #[serde(default)]
    pub pipelines_dir: Option<PathBuf>,
    /// Decoder pipelines working in parallel (each is one GStreamer pipeline per codec).
    #[serde(default = "default_decoders")]
    pub decoders: usize,
    /// Decode jobs waiting for a decoder; when full the oldest job is dropped and counted.
    #[serde(default = "default_decode_queue")]
    pub queue: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            profile: MediaProfile::default(),
            pipelines_dir: None,
            decoders: default_decoders(),
            queue: default_decode_queue(),
        }
    }
}

fn default_decoders() -> usize {
    2
}
fn default_decode_queue() -> usize {
    256
}

/// Decoder hardware profile.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MediaProfile {
    /// libav software decoders.
    #[default]
    Cpu,
    /// NVIDIA NVDEC / nvJPEG (untested here: no GPU on the build machines).
    Nvidia,
    /// VA-API (untested here).
    Vaapi,
}

impl MediaProfile {
    /// The profile's name as used for template files.
    pub fn name(self) -> &'static str {
        match self {
            MediaProfile::Cpu => "cpu",
            MediaProfile::Nvidia => "nvidia",
            MediaProfile::Vaapi => "vaapi",
        }
    }
}
