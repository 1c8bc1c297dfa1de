//! What every camera task of an edge node shares: the settings in force, the stores, the bus,
//! the decoder pool and the camera registry.

use std::sync::Arc;

use super::status::CameraRegistry;
use crate::bus::Bus;
use crate::config::{EdgeConfig, RecordingConfig, SamplingConfig};
use crate::media::DecoderPool;
use crate::store::objects::ObjectStore;

/// What every camera task shares.
pub struct EdgeShared {
    /// Session timeouts and backoff.
    pub edge: EdgeConfig,
    /// Sampling defaults.
    pub sampling: SamplingConfig,
    /// Recording defaults.
    pub recording: RecordingConfig,
    /// Where clips go.
    pub store: ObjectStore,
    /// Where frames and audio go.
    pub bus: Bus,
    /// The decoder pool.
    pub pool: Arc<DecoderPool>,
    /// Camera state.
    pub registry: Arc<CameraRegistry>,
}
