//! Configuration: TOML with `${VAR}` / `${VAR:-default}` substitution, strict field checking
//! and validation that reports every mistake at once.
//!
//! Loading is pure: [`load_str`] turns text into a [`Config`] or the full list of
//! [`ConfigError`]s (file, field, what to do). Nothing here opens a connection.
//!
//! One file per section of the config file, each with its own `///` reference on every
//! field; [`root`] ties them together, [`load`] reads a file and [`validate`] checks what
//! types cannot.

mod api;
mod bus;
mod cameras;
mod edge;
mod env;
mod infer;
mod load;
mod log;
mod media;
mod root;
mod secret;
mod store;
mod validate;

pub use api::ApiConfig;
pub use bus::{BusConfig, BusKind};
pub use cameras::{CameraConfig, Transport};
pub use edge::{ClusterConfig, EdgeConfig};
pub use env::substitute;
pub use infer::{
    DetectionConfig, GateConfig, InferConfig, ModelsConfig, OcrConfig, Provider, SpeechConfig,
};
pub use load::{ConfigError, ConfigErrors, load, load_str};
pub use log::{LogConfig, LogFormat};
pub use media::{MediaConfig, MediaProfile, RecordingConfig, SamplingConfig};
pub use root::Config;
pub use secret::{Secret, redact_url};
pub use store::{InsightsConfig, InsightsKind, S3Config, StoreConfig, StoreKind};
