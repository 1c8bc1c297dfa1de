//! `[models]` and `[infer]`: the model files, and how inference runs them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::media::default_true;

/// Model files.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// The directory `models/install.sh` fills; `PANOPTES_MODELS` overrides it.
    #[serde(default = "default_models_dir")]
    pub dir: PathBuf,
    /// The object detector, relative to `dir` (or absolute): any YOLOv8-layout ONNX model with a `names`
    /// metadata entry (as `yolo export format=onnx` writes) can take the place of YOLOv8n.
    #[serde(default = "default_detector")]
    pub detector: PathBuf,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: default_models_dir(),
            detector: default_detector(),
        }
    }
}

impl ModelsConfig {
    /// The models directory in force: `PANOPTES_MODELS` when set, else `dir`.
    pub fn resolved_dir(&self) -> PathBuf {
        match std::env::var_os("PANOPTES_MODELS") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => self.dir.clone(),
        }
    }
}

fn default_models_dir() -> PathBuf {
    PathBuf::from("./models")
}
fn default_detector() -> PathBuf {
    PathBuf::from("yolov8n/yolov8n.onnx")
}

/// Inference.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InferConfig {
    /// Run the infer role in `panoptes run` (sampled frames and audio become insights).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Execution provider: `cpu`, `cuda` or `tensorrt` (the last two need the
    /// `onnxruntime-gpu` library and an NVIDIA GPU).
    #[serde(default)]
    pub provider: Provider,
    /// With `cuda` or `tensorrt`, run on the CPU when the GPU provider cannot start instead of
    /// refusing to start.
    #[serde(default)]
    pub fallback_to_cpu: bool,
    /// Threads ONNX Runtime uses inside one model run; 0 means one per CPU core.
    #[serde(default)]
    pub threads: usize,
    /// The ONNX Runtime shared library; by default `<models.dir>/onnxruntime/libonnxruntime.so.*`
    /// (`ORT_DYLIB_PATH` overrides both).
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
    /// Largest number of frames run through the detector and OCR at once (text crops,
    /// phrases and texts go at least 8 or 16 at a time). By default 1 on the CPU, where
    /// larger batches gain no throughput and make each frame wait for the others, and 8
    /// with a GPU provider; see [`InferConfig::frame_batch`].
    #[serde(default)]
    pub batch: Option<usize>,
    /// How long the worker waits for a batch to fill before running what it has.
    #[serde(default = "default_batch_wait", with = "humantime_serde")]
    pub batch_wait: Duration,
    /// A frame captured longer ago than this when its turn comes is skipped (acknowledged
    /// and counted, not analysed): when inference falls behind, fresh frames go first.
    /// `0s` analyses every frame however late.
    #[serde(default = "default_max_frame_age", with = "humantime_serde")]
    pub max_frame_age: Duration,
    /// Insights and clips older than this are deleted.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Object detection.
    #[serde(default)]
    pub detection: DetectionConfig,
    /// Text in the image.
    #[serde(default)]
    pub ocr: OcrConfig,
    /// Speech recognition.
    #[serde(default)]
    pub speech: SpeechConfig,
    /// The change gate: a sampled frame that shows nothing new against the camera's last
    /// analysed one runs no model and extends that frame's insights instead.
    #[serde(default)]
    pub gate: GateConfig,
}

/// The change gate (`infer.gate`; see `src/media/gate.rs` for how pictures are compared).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// Compare each sampled frame with the camera's last analysed one and run the models only
    /// on change; `false` analyses every frame.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Grey levels (1-255) a pixel of the small grey picture must differ by, once the change
    /// in overall brightness is taken out, to count as changed.
    #[serde(default = "default_gate_threshold")]
    pub threshold: u8,
    /// Smallest changed region, as a share of the picture (0-1), that counts as change: the
    /// default 0.005 is a person far off in a 1080p view.
    #[serde(default = "default_gate_min_area")]
    pub min_area: f32,
    /// A frame is analysed at least this often whatever it shows (`0s`: never forced).
    #[serde(default = "default_gate_refresh", with = "humantime_serde")]
    pub refresh: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: default_gate_threshold(),
            min_area: default_gate_min_area(),
            refresh: default_gate_refresh(),
        }
    }
}

fn default_gate_threshold() -> u8 {
    20
}
fn default_gate_min_area() -> f32 {
    0.005
}
fn default_gate_refresh() -> Duration {
    Duration::from_secs(300)
}

impl Default for InferConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            provider: Provider::default(),
            fallback_to_cpu: false,
            threads: 0,
            ort_library: None,
            batch: None,
            batch_wait: default_batch_wait(),
            max_frame_age: default_max_frame_age(),
            retention: default_retention(),
            detection: DetectionConfig::default(),
            ocr: OcrConfig::default(),
            speech: SpeechConfig::default(),
            gate: GateConfig::default(),
        }
    }
}

impl InferConfig {
    /// `batch`, or the provider's default: 1 on the CPU, 8 on a GPU.
    pub fn frame_batch(&self) -> usize {
        self.batch
            .unwrap_or(match self.provider {
                Provider::Cpu => 1,
                Provider::Cuda | Provider::Tensorrt => 8,
            })
            .max(1)
    }

    /// `speech.min_window`, or the provider's default: 6 s on the CPU, 30 s on a GPU.
    pub fn speech_min_window(&self) -> Duration {
        self.speech
            .min_window
            .unwrap_or(Duration::from_secs(match self.provider {
                Provider::Cpu => 6,
                Provider::Cuda | Provider::Tensorrt => 30,
            }))
    }
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(50)
}
fn default_max_frame_age() -> Duration {
    Duration::from_secs(10)
}
fn default_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

/// ONNX Runtime execution provider.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The CPU provider of the ONNX Runtime library in the models directory.
    #[default]
    Cpu,
    /// NVIDIA CUDA (untested here: no GPU on the build machines).
    Cuda,
    /// NVIDIA TensorRT, with CUDA for what TensorRT cannot run (untested here).
    Tensorrt,
}

/// Object detection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectionConfig {
    /// Run the detector on sampled frames.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Detections below this confidence are dropped.
    #[serde(default = "default_detection_confidence")]
    pub min_confidence: f32,
    /// Overlap (intersection over union) above which the weaker of two boxes of one class
    /// is suppressed.
    #[serde(default = "default_nms_iou")]
    pub nms_iou: f32,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_confidence: default_detection_confidence(),
            nms_iou: default_nms_iou(),
        }
    }
}

fn default_detection_confidence() -> f32 {
    0.4
}
fn default_nms_iou() -> f32 {
    0.45
}

/// Text in the image.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OcrConfig {
    /// Read text in sampled frames.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Text lines recognised with less confidence are dropped.
    #[serde(default = "default_ocr_confidence")]
    pub min_confidence: f32,
}

impl Default for OcrConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_confidence: default_ocr_confidence(),
        }
    }
}

fn default_ocr_confidence() -> f32 {
    0.6
}

/// Speech recognition.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpeechConfig {
    /// Transcribe speech in the cameras' audio.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Voice activity probability above which audio counts as speech.
    #[serde(default = "default_vad_threshold")]
    pub vad_threshold: f32,
    /// Shortest window of audio Whisper sees. A phrase is transcribed in a window of the
    /// phrase plus 2 s, at least this long; the encoder's cost grows with the window.
    /// Whisper was trained on 30 s windows: shorter ones are several times cheaper, and a
    /// transcript that runs on or repeats itself is redone with the full window. `"30s"`
    /// always uses the full window. By default 6 s on the CPU, and 30 s with a GPU
    /// provider, where the full window costs little and keeps the encoder's input one
    /// shape (TensorRT builds an engine per shape); see [`InferConfig::speech_min_window`].
    #[serde(default, with = "humantime_serde::option")]
    pub min_window: Option<Duration>,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            vad_threshold: default_vad_threshold(),
            min_window: None,
        }
    }
}

fn default_vad_threshold() -> f32 {
    0.5
}
