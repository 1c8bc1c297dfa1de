//! The root of the config file: one field per section.

use std::path::PathBuf;

use serde::Deserialize;

use super::api::ApiConfig;
use super::bus::BusConfig;
use super::cameras::CameraConfig;
use super::edge::{ClusterConfig, EdgeConfig};
use super::infer::{InferConfig, ModelsConfig};
use super::log::LogConfig;
use super::media::{MediaConfig, RecordingConfig, SamplingConfig};
use super::store::{InsightsConfig, StoreConfig};

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
