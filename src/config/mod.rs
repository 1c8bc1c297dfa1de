//! Configuration: TOML with `${VAR}` / `${VAR:-default}` substitution, strict field checking
//! and validation that reports every mistake at once.
//!
//! Loading is pure: [`load_str`] turns text into a [`Config`] or the full list of
//! [`ConfigError`]s (file, field, what to do). Nothing here opens a connection.

mod env;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use env::substitute;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: String,
    /// Dotted path of the field, e.g. `cameras[2].url`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.field, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the config:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// A string that must never be printed: camera passwords and the like.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for handing to the RTSP client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for clips, snapshots, the spool and the embedded stores.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// The message bus between roles.
    #[serde(default)]
    pub bus: BusConfig,
    /// RTSP session behaviour shared by all cameras.
    #[serde(default)]
    pub edge: EdgeConfig,
    /// Frame sampling defaults (a camera may override the interval).
    #[serde(default)]
    pub sampling: SamplingConfig,
    /// Clip recording.
    #[serde(default)]
    pub recording: RecordingConfig,
    /// Decoding: hardware profile and decoder pool.
    #[serde(default)]
    pub media: MediaConfig,
    /// Where the model files are.
    #[serde(default)]
    pub models: ModelsConfig,
    /// Inference: execution provider, threads, thresholds.
    #[serde(default)]
    pub infer: InferConfig,
    /// Where clips and snapshots are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where insights are kept.
    #[serde(default)]
    pub insights: InsightsConfig,
    /// Sharing cameras between edge nodes (cluster bus only).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The cameras this deployment watches.
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// Log output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// An env-filter directive such as `info` or `panoptes=debug,retina=warn`;
    /// `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event.
    Json,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Bearer API keys; when any is set, `/v1/*` and `/metrics` need one (`${ENV}` them).
    #[serde(default)]
    pub keys: Vec<Secret>,
    /// Requests per second one client address may make (after a burst of twice that);
    /// `0` turns the limit off.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
            keys: Vec::new(),
            rate_limit: default_rate_limit(),
            max_body: default_max_body(),
        }
    }
}

fn default_rate_limit() -> u32 {
    200
}
fn default_max_body() -> usize {
    64 * 1024
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// The message bus.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `memory`: in-process channels (the embedded default).
    #[serde(default)]
    pub kind: BusKind,
    /// Frames kept waiting for inference; when full the oldest frame is dropped and counted.
    #[serde(default = "default_frames_capacity")]
    pub frames_capacity: usize,
    /// Audio chunks kept waiting (2048 chunks of 0.5 s hold 10 s of 100 cameras' audio);
    /// when full the oldest is dropped and counted.
    #[serde(default = "default_audio_capacity")]
    pub audio_capacity: usize,
    /// Deliveries of one message before it goes to the dead-letter subject.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// How long a delivered message may stay unacknowledged before it is redelivered.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// NATS server(s) for `kind = "nats"`, comma-separated: `nats://host:4222`.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// NATS user; use `${ENV}`.
    #[serde(default)]
    pub username: Option<String>,
    /// NATS password; use `${ENV}`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// NATS token; use `${ENV}`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// JetStream FRAMES stream: frames older than this are discarded unread.
    #[serde(default = "default_frames_max_age", with = "humantime_serde")]
    pub frames_max_age: Duration,
    /// JetStream FRAMES stream: bytes kept; the oldest frames are discarded beyond it.
    #[serde(default = "default_frames_max_bytes")]
    pub frames_max_bytes: i64,
    /// JetStream INSIGHTS and CLIPS streams: how long records stay on the bus.
    #[serde(default = "default_records_max_age", with = "humantime_serde")]
    pub records_max_age: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::default(),
            frames_capacity: default_frames_capacity(),
            audio_capacity: default_audio_capacity(),
            max_deliver: default_max_deliver(),
            ack_wait: default_ack_wait(),
            url: default_nats_url(),
            username: None,
            password: None,
            token: None,
            frames_max_age: default_frames_max_age(),
            frames_max_bytes: default_frames_max_bytes(),
            records_max_age: default_records_max_age(),
        }
    }
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_frames_max_age() -> Duration {
    Duration::from_secs(120)
}
fn default_frames_max_bytes() -> i64 {
    1 << 30
}
fn default_records_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_frames_capacity() -> usize {
    512
}
fn default_audio_capacity() -> usize {
    2048
}
fn default_max_deliver() -> u32 {
    5
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

/// Bus backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process bounded queues.
    #[default]
    Memory,
    /// NATS JetStream (`bus.url`).
    Nats,
}

/// Clip and snapshot storage.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `local` (a directory under `data_dir`, the default) or `s3`.
    #[serde(default)]
    pub kind: StoreKind,
    /// S3 settings for `kind = "s3"`.
    #[serde(default)]
    pub s3: S3Config,
}

/// Object store backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Files under `data_dir/objects`.
    #[default]
    Local,
    /// S3 or any S3-compatible store.
    S3,
}

/// S3 (or S3-compatible) object storage.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name.
    #[serde(default)]
    pub bucket: String,
    /// Region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint of an S3-compatible server (`http://minio:9000`); AWS when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub path_style: bool,
    /// Key prefix inside the bucket.
    #[serde(default)]
    pub prefix: String,
    /// Access key id; the standard AWS credential chain is used when unset.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key; use `${ENV}`.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Objects at or above this size are uploaded in parts.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: u64,
    /// How long a presigned clip URL stays valid.
    #[serde(default = "default_presign_ttl", with = "humantime_serde")]
    pub presign_ttl: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            region: default_region(),
            endpoint: None,
            path_style: false,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            multipart_threshold: default_multipart_threshold(),
            presign_ttl: default_presign_ttl(),
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_multipart_threshold() -> u64 {
    16 << 20
}
fn default_presign_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// Insight storage.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InsightsConfig {
    /// `sqlite` (under `data_dir`, the default) or `qdrant`.
    #[serde(default)]
    pub kind: InsightsKind,
    /// Qdrant gRPC URL for `kind = "qdrant"`.
    #[serde(default = "default_qdrant_url")]
    pub url: String,
    /// Qdrant API key; use `${ENV}`.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Qdrant collection.
    #[serde(default = "default_collection")]
    pub collection: String,
}

impl Default for InsightsConfig {
    fn default() -> Self {
        Self {
            kind: InsightsKind::default(),
            url: default_qdrant_url(),
            api_key: None,
            collection: default_collection(),
        }
    }
}

fn default_qdrant_url() -> String {
    "http://127.0.0.1:6334".into()
}
fn default_collection() -> String {
    "panoptes_insights".into()
}

/// Insight store backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InsightsKind {
    /// SQLite + FTS5 + in-memory vectors under `data_dir`.
    #[default]
    Sqlite,
    /// A Qdrant server.
    Qdrant,
}

/// Edge nodes sharing cameras.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id (default: `PANOPTES_NODE`, else the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// How often an edge node renews its membership.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A node that has not renewed for this long is gone and its cameras move.
    #[serde(default = "default_member_ttl", with = "humantime_serde")]
    pub member_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node: None,
            heartbeat: default_heartbeat(),
            member_ttl: default_member_ttl(),
        }
    }
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(2)
}
fn default_member_ttl() -> Duration {
    Duration::from_secs(6)
}

/// RTSP session behaviour.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Limit for DESCRIBE + SETUP + PLAY.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit for the first video frame after PLAY.
    #[serde(default = "default_first_frame_timeout", with = "humantime_serde")]
    pub first_frame_timeout: Duration,
    /// A streaming camera that sends no frame for this long is reconnected
    /// (a stalled RTSP server raises no error by itself).
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// First reconnect delay; doubles on each failure, with jitter.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Upper bound of the reconnect delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            first_frame_timeout: default_first_frame_timeout(),
            stall_timeout: default_stall_timeout(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_first_frame_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_stall_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}

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

fn default_true() -> bool {
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

/// RTP transport.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// RTP interleaved in the RTSP TCP connection (works through NAT and firewalls).
    #[default]
    Tcp,
    /// RTP over UDP.
    Udp,
}

/// One camera.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique id: letters, digits, `-` and `_` (it becomes part of bus subjects and object keys).
    pub id: String,
    /// `rtsp://host[:port]/path`, without credentials.
    pub url: String,
    /// RTSP user name; use `${ENV}` to keep it out of the file.
    #[serde(default)]
    pub username: Option<String>,
    /// RTSP password; use `${ENV}` to keep it out of the file.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub transport: Transport,
    /// Overrides `sampling.interval` for this camera.
    #[serde(default, with = "humantime_serde")]
    pub sample_interval: Option<Duration>,
    /// Overrides `recording.enabled` for this camera.
    #[serde(default)]
    pub record: Option<bool>,
    /// Decode the camera's audio and publish it.
    #[serde(default = "default_true")]
    pub audio: bool,
    /// A disabled camera is kept in the config but not connected.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pins the camera to this edge node (cluster); otherwise the live nodes share cameras.
    #[serde(default)]
    pub node: Option<String>,
}

impl CameraConfig {
    /// The sample interval in force for this camera.
    pub fn sample_interval(&self, sampling: &SamplingConfig) -> Duration {
        self.sample_interval.unwrap_or(sampling.interval)
    }

    /// Whether this camera records clips.
    pub fn records(&self, recording: &RecordingConfig) -> bool {
        self.record.unwrap_or(recording.enabled)
    }

    /// The URL with any user info removed, safe to show.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// Removes user name and password from a URL so it can be logged or shown.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        // Unparseable: keep only what follows the last '@' so no credentials can leak.
        Err(_) => match raw.rfind('@') {
            Some(i) => format!("rtsp://***@{}", &raw[i + 1..]),
            None => raw.to_string(),
        },
    }
}

/// Reads, substitutes, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    load_str(&text, &file, &|name| std::env::var(name).ok())
}

/// Parses and validates config text; `file` names it in errors, `env` resolves `${VAR}`.
pub fn load_str(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let err = |field: &str, message: String| ConfigError {
        file: file.to_string(),
        field: field.to_string(),
        message,
    };
    let mut value: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigErrors(vec![err("", format!("not valid TOML: {e}"))]))?;
    let substituted = substitute(&mut value, env);
    // A field whose variable is unset keeps its `${...}` text; other complaints about that
    // field would only repeat the first one.
    let unset: HashSet<String> = substituted.iter().map(|(f, _)| f.clone()).collect();
    let mut found: Vec<(String, String)> = Vec::new();

    // Cameras are parsed one by one so that indexes in messages match the file, and so
    // that one broken camera does not hide the others' mistakes.
    let mut cameras_raw = Vec::new();
    if let Some(c) = value.remove("cameras") {
        match c {
            toml::Value::Array(items) => cameras_raw = items,
            _ => found.push((
                "cameras".into(),
                "must be an array of tables: write each camera as [[cameras]]".into(),
            )),
        }
    }
    // Every other field has a default, so after the bad fields are dropped this succeeds.
    let Some(mut config) = deserialize_all::<Config>(toml::Value::Table(value), "", &mut found)
    else {
        let mut errors: Vec<ConfigError> = substituted
            .into_iter()
            .chain(found)
            .map(|(f, m)| err(&f, m))
            .collect();
        if errors.is_empty() {
            errors.push(err("", "cannot be read as a config".into()));
        }
        return Err(ConfigErrors(errors));
    };
    let cameras: Vec<Option<CameraConfig>> = cameras_raw
        .into_iter()
        .enumerate()
        .map(|(i, raw)| deserialize_all(raw, &format!("cameras[{i}]"), &mut found))
        .collect();
    config.cameras = cameras.iter().flatten().cloned().collect();
    found.extend(validate(&config, &cameras));
    let errors: Vec<ConfigError> = substituted
        .into_iter()
        .chain(found.into_iter().filter(|(f, _)| !unset.contains(f)))
        .map(|(f, m)| err(&f, m))
        .collect();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Deserializes `raw` as a `T`, reporting every bad field rather than the first: serde stops
/// at the first error, so the field it names is dropped (falling back to its default) and
/// the rest is tried again. Returns `None` when what is left still does not make a `T`
/// (a required field is missing), after reporting why.
fn deserialize_all<T: serde::de::DeserializeOwned>(
    mut raw: toml::Value,
    prefix: &str,
    found: &mut Vec<(String, String)>,
) -> Option<T> {
    let mut removed = HashSet::new();
    // Each round removes one field, so the loop ends; the bound is a second guard.
    for _ in 0..1000 {
        match serde_path_to_error::deserialize::<_, T>(raw.clone()) {
            Ok(v) => return Some(v),
            Err(e) => {
                let field = join_path(prefix, &e);
                let message = serde_message(e.inner());
                // A required field dropped for being wrong is not also "missing".
                let dropped_here = message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.split('`').next())
                    .is_some_and(|name| {
                        removed.contains(&if field.is_empty() {
                            name.to_string()
                        } else {
                            format!("{field}.{name}")
                        })
                    });
                if !dropped_here {
                    found.push((field.clone(), message));
                }
                if !remove_field(&mut raw, e.path()) {
                    return None;
                }
                removed.insert(field);
            }
        }
    }
    None
}

/// Removes the innermost table key on `path` (an array is removed whole, so that the
/// indexes of later complaints still match the file); false when the path names no key.
fn remove_field(raw: &mut toml::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some(last_key) = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))
    else {
        return false;
    };
    let mut at = raw;
    for s in &segments[..last_key] {
        let next = match (s, at) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key),
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (segments[last_key], at) {
        (Segment::Map { key }, toml::Value::Table(t)) => t.remove(key).is_some(),
        _ => false,
    }
}

/// Whether a URL carries a user name or password. Any `@` counts: a password holding `#`,
/// `/` or `?` makes the URL parse with the `@` in the path or fragment, where redaction
/// would not find it.
fn has_credentials(raw: &str, u: &url::Url) -> bool {
    !u.username().is_empty() || u.password().is_some() || raw.contains('@')
}

/// `prefix` joined with the path serde reached before failing, e.g. `cameras[2].sample_interval`.
fn join_path(prefix: &str, e: &serde_path_to_error::Error<toml::de::Error>) -> String {
    let path = e.path().to_string();
    match (prefix.is_empty(), path == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => path,
        (false, false) => format!("{prefix}.{path}"),
    }
}

fn serde_message(e: &toml::de::Error) -> String {
    let m = e.message().trim().to_string();
    if m.starts_with("unknown field") {
        format!("{m}; remove it or fix its spelling")
    } else if m.ends_with("expected a duration") {
        format!("{m}; write a positive duration with a unit, e.g. \"10s\", \"500ms\" or \"2m\"")
    } else if m == "invalid socket address syntax" {
        format!("{m}; write an IP address and port, e.g. \"0.0.0.0:8080\"")
    } else if m.starts_with("invalid value: integer `-") {
        format!("{m}; it must not be negative")
    } else {
        m
    }
}

/// Checks what types cannot: ids, URLs, ranges. Returns (field, message) pairs.
/// `cameras` keeps `None` where an entry failed to parse, so indexes match the file.
fn validate(config: &Config, cameras: &[Option<CameraConfig>]) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let push =
        |errors: &mut Vec<(String, String)>, f: String, m: &str| errors.push((f, m.to_string()));
    let s = &config.sampling;
    if s.interval.is_zero() {
        push(
            &mut errors,
            "sampling.interval".into(),
            "must be greater than zero, e.g. \"10s\"",
        );
    }
    if s.max_width < 16 || s.max_height < 16 {
        push(
            &mut errors,
            "sampling.max_width".into(),
            "max_width and max_height must be at least 16 pixels",
        );
    }
    if !(1..=100).contains(&s.jpeg_quality) {
        push(
            &mut errors,
            "sampling.jpeg_quality".into(),
            "must be between 1 and 100",
        );
    }
    if s.audio_chunk < Duration::from_millis(100) {
        push(
            &mut errors,
            "sampling.audio_chunk".into(),
            "must be at least 100ms",
        );
    }
    if config.recording.segment < Duration::from_secs(1) {
        push(
            &mut errors,
            "recording.segment".into(),
            "must be at least 1s",
        );
    }
    for (i, k) in config.api.keys.iter().enumerate() {
        if k.expose().trim().len() < 16 {
            push(
                &mut errors,
                format!("api.keys[{i}]"),
                "an API key must be at least 16 characters (e.g. `openssl rand -hex 24`)",
            );
        }
    }
    if config.media.decoders == 0 {
        push(&mut errors, "media.decoders".into(), "must be at least 1");
    }
    if config.media.queue == 0 {
        push(&mut errors, "media.queue".into(), "must be at least 1");
    }
    if config.bus.frames_capacity == 0 || config.bus.audio_capacity == 0 {
        push(
            &mut errors,
            "bus.frames_capacity".into(),
            "queue capacities must be at least 1",
        );
    }
    if config.bus.max_deliver == 0 {
        push(&mut errors, "bus.max_deliver".into(), "must be at least 1");
    }
    if config.bus.kind == BusKind::Nats {
        for (i, u) in config.bus.url.split(',').enumerate() {
            let ok = url::Url::parse(u.trim())
                .is_ok_and(|u| matches!(u.scheme(), "nats" | "tls") && u.host_str().is_some());
            if !ok {
                push(
                    &mut errors,
                    format!("bus.url[{i}]"),
                    "must be nats://host:port (several separated by commas)",
                );
            }
        }
        if config.bus.frames_max_bytes <= 0 || config.bus.frames_max_age.is_zero() {
            push(
                &mut errors,
                "bus.frames_max_bytes".into(),
                "frames_max_bytes and frames_max_age must be greater than zero",
            );
        }
    }
    if config.store.kind == StoreKind::S3 {
        let s3 = &config.store.s3;
        if s3.bucket.is_empty() {
            push(
                &mut errors,
                "store.s3.bucket".into(),
                "is required when store.kind = \"s3\"",
            );
        }
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            push(
                &mut errors,
                "store.s3.access_key_id".into(),
                "access_key_id and secret_access_key go together (or leave both out for the standard credential chain)",
            );
        }
        if let Some(e) = &s3.endpoint
            && !url::Url::parse(e).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            push(
                &mut errors,
                "store.s3.endpoint".into(),
                "must be an http:// or https:// URL",
            );
        }
        if s3.multipart_threshold < 5 << 20 {
            push(
                &mut errors,
                "store.s3.multipart_threshold".into(),
                "must be at least 5 MiB (S3's smallest part)",
            );
        }
    }
    if config.insights.kind == InsightsKind::Qdrant
        && !url::Url::parse(&config.insights.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        push(
            &mut errors,
            "insights.url".into(),
            "must be Qdrant's gRPC URL, e.g. http://qdrant:6334",
        );
    }
    if config.cluster.heartbeat.is_zero() || config.cluster.member_ttl <= config.cluster.heartbeat {
        push(
            &mut errors,
            "cluster.member_ttl".into(),
            "heartbeat must be greater than zero and member_ttl longer than heartbeat",
        );
    }
    if config.bus.password.is_some() && config.bus.username.is_none() {
        push(
            &mut errors,
            "bus.username".into(),
            "a password is set but no username",
        );
    }
    // The other URLs must not carry secrets either: they are logged and shown.
    let other_urls = [
        (
            "bus.url",
            Some(config.bus.url.as_str()),
            "bus.username/bus.password or bus.token",
        ),
        (
            "store.s3.endpoint",
            config.store.s3.endpoint.as_deref(),
            "store.s3.access_key_id/secret_access_key",
        ),
        (
            "insights.url",
            Some(config.insights.url.as_str()),
            "insights.api_key",
        ),
    ];
    for (field, raw, instead) in other_urls {
        let Some(raw) = raw else { continue };
        let leaks = raw.split(',').any(|one| {
            url::Url::parse(one.trim()).map_or(one.contains('@'), |u| has_credentials(one, &u))
        });
        if leaks {
            errors.push((
                field.into(),
                format!(
                    "credentials must not be inside the URL; use {instead} with ${{ENV}} values"
                ),
            ));
        }
    }
    let inf = &config.infer;
    if inf.batch == Some(0) {
        push(&mut errors, "infer.batch".into(), "must be at least 1");
    }
    for (name, v) in [
        (
            "infer.detection.min_confidence",
            inf.detection.min_confidence,
        ),
        ("infer.detection.nms_iou", inf.detection.nms_iou),
        ("infer.ocr.min_confidence", inf.ocr.min_confidence),
        ("infer.speech.vad_threshold", inf.speech.vad_threshold),
    ] {
        if !(0.0..=1.0).contains(&v) {
            push(&mut errors, name.into(), "must be between 0 and 1");
        }
    }
    if inf
        .speech
        .min_window
        .is_some_and(|w| !(Duration::from_secs(1)..=Duration::from_secs(30)).contains(&w))
    {
        push(
            &mut errors,
            "infer.speech.min_window".into(),
            "must be between 1s and 30s (Whisper's window)",
        );
    }
    if config.models.detector.as_os_str().is_empty() {
        push(
            &mut errors,
            "models.detector".into(),
            "must name an ONNX file, e.g. \"yolov8n/yolov8n.onnx\" (relative to models.dir)",
        );
    }
    let e = &config.edge;
    for (name, d) in [
        ("edge.connect_timeout", e.connect_timeout),
        ("edge.first_frame_timeout", e.first_frame_timeout),
        ("edge.stall_timeout", e.stall_timeout),
        ("edge.backoff_initial", e.backoff_initial),
    ] {
        if d.is_zero() {
            push(&mut errors, name.into(), "must be greater than zero");
        }
    }
    if e.backoff_max < e.backoff_initial {
        push(
            &mut errors,
            "edge.backoff_max".into(),
            "must be at least edge.backoff_initial",
        );
    }
    let mut seen = std::collections::HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        let Some(cam) = cam else { continue };
        let at = |f: &str| format!("cameras[{i}].{f}");
        if cam.id.is_empty()
            || cam.id.len() > 64
            || !cam
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            push(
                &mut errors,
                at("id"),
                "must be 1-64 characters of letters, digits, '-' or '_'",
            );
        } else if let Some(first) = seen.get(cam.id.as_str()) {
            errors.push((
                at("id"),
                format!(
                    "duplicate camera id \"{}\" (also cameras[{first}]); ids must be unique",
                    cam.id
                ),
            ));
        } else {
            seen.insert(cam.id.as_str(), i);
        }
        match url::Url::parse(&cam.url) {
            Err(err) => errors.push((
                at("url"),
                format!("not a valid URL ({err}); expected rtsp://host[:port]/path"),
            )),
            Ok(u) => {
                if u.scheme() != "rtsp" && u.scheme() != "rtsps" {
                    errors.push((
                        at("url"),
                        format!(
                            "scheme \"{}\" is not supported; expected rtsp://host[:port]/path",
                            u.scheme()
                        ),
                    ));
                } else if u.host_str().is_none_or(str::is_empty) {
                    errors.push((
                        at("url"),
                        "has no host; expected rtsp://host[:port]/path".into(),
                    ));
                }
                if has_credentials(&cam.url, &u) {
                    errors.push((
                        at("url"),
                        "credentials must not be inside the URL; use username/password with ${ENV} values \
                         (write an '@' in the path as %40)"
                            .into(),
                    ));
                }
            }
        }
        if cam.sample_interval.is_some_and(|d| d.is_zero()) {
            errors.push((at("sample_interval"), "must be greater than zero".into()));
        }
        if cam.password.is_some() && cam.username.is_none() {
            errors.push((at("username"), "a password is set but no username".into()));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load_str(
            "data_dir = \"./data\"\n[api]\nlisten = \"127.0.0.1:8080\"\n[[cameras]]\nid = \"lobby\"\nurl = \"rtsp://127.0.0.1:8554/lobby\"\n",
            "t.toml",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.cameras.len(), 1);
        assert_eq!(c.sampling.interval, Duration::from_secs(10));
        assert_eq!(c.recording.segment, Duration::from_secs(10));
        assert!(c.cameras[0].records(&c.recording));
    }

    #[test]
    fn frame_batch_follows_the_provider_unless_set() {
        let batch = |text: &str| {
            load_str(text, "t.toml", &|_| None)
                .unwrap()
                .infer
                .frame_batch()
        };
        assert_eq!(batch(""), 1);
        assert_eq!(batch("[infer]\nprovider = \"cuda\"\n"), 8);
        assert_eq!(batch("[infer]\nprovider = \"tensorrt\"\n"), 8);
        assert_eq!(batch("[infer]\nbatch = 5\n"), 5);
        assert_eq!(batch("[infer]\nprovider = \"cuda\"\nbatch = 1\n"), 1);
        assert!(load_str("[infer]\nbatch = 0\n", "t.toml", &|_| None).is_err());
    }

    #[test]
    fn speech_window_follows_the_provider_unless_set() {
        let window = |text: &str| {
            load_str(text, "t.toml", &|_| None)
                .unwrap()
                .infer
                .speech_min_window()
        };
        assert_eq!(window(""), Duration::from_secs(6));
        assert_eq!(
            window("[infer]\nprovider = \"cuda\"\n"),
            Duration::from_secs(30)
        );
        assert_eq!(
            window("[infer]\nprovider = \"tensorrt\"\n"),
            Duration::from_secs(30)
        );
        assert_eq!(
            window("[infer.speech]\nmin_window = \"10s\"\n"),
            Duration::from_secs(10)
        );
        assert!(
            load_str("[infer.speech]\nmin_window = \"40s\"\n", "t.toml", &|_| {
                None
            })
            .is_err()
        );
        assert!(load_str("[infer.speech]\nmin_window = \"0s\"\n", "t.toml", &|_| None).is_err());
    }

    #[test]
    fn every_mistake_is_reported() {
        let text = r#"
data_dir = "./data"
colour = "blue"
[sampling]
interval = "soon"
[[cameras]]
id = "a"
url = "rtsp://user:pw@10.0.0.1/stream"
[[cameras]]
id = "a"
url = "http://x/y"
[[cameras]]
id = "b"
url = "rtsp://h/p"
fps = 3
"#;
        let errs = load_str(text, "t.toml", &no_env).unwrap_err().0;
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"colour"), "{errs:?}");
        assert!(fields.contains(&"sampling.interval"), "{errs:?}");
        assert!(fields.contains(&"cameras[0].url"), "{errs:?}");
        assert!(fields.contains(&"cameras[1].id"), "{errs:?}");
        assert!(fields.contains(&"cameras[1].url"), "{errs:?}");
        assert!(fields.contains(&"cameras[2].fps"), "{errs:?}");
        let url_err = errs.iter().find(|e| e.field == "cameras[0].url").unwrap();
        assert!(url_err.message.contains("credentials"));
        assert!(
            !format!("{errs:?}").contains("pw@"),
            "credentials leaked into errors"
        );
    }

    #[test]
    fn env_substitution_and_secret_redaction() {
        let env = |k: &str| (k == "CAM_PASS").then(|| "hunter2".to_string());
        let c = load_str(
            "[[cameras]]\nid = \"x\"\nurl = \"rtsp://${CAM_HOST:-127.0.0.1}/x\"\nusername = \"u\"\npassword = \"${CAM_PASS}\"\n",
            "t.toml",
            &env,
        )
        .unwrap();
        assert_eq!(c.cameras[0].url, "rtsp://127.0.0.1/x");
        assert_eq!(c.cameras[0].password.as_ref().unwrap().expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn missing_env_var_is_an_error() {
        let errs = load_str(
            "[[cameras]]\nid = \"x\"\nurl = \"rtsp://h/x\"\nusername = \"u\"\npassword = \"${NOPE}\"\n",
            "t.toml",
            &no_env,
        )
        .unwrap_err()
        .0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "cameras[0].password");
        assert!(errs[0].message.contains("NOPE"));
    }

    #[test]
    fn redact_url_removes_credentials() {
        assert_eq!(
            redact_url("rtsp://admin:secret@cam.local:554/s"),
            "rtsp://cam.local:554/s"
        );
        assert!(!redact_url("rtsp://admin:se cret@bad url").contains("se cret"));
    }
}
