//! Edge: RTSP ingest of many cameras in one process.
//!
//! Each camera is one tokio task (no thread, no pipeline) supervising a retina session:
//! it records clips ([`recorder`]), samples frames into the shared decoder pool and decodes
//! audio. [`Edge`] owns the running cameras and applies config changes (cameras added,
//! removed or changed) without touching the others. Camera state lives in [`status`].

pub mod cluster;
mod faults;
pub mod recorder;
pub mod session;
mod shared;
pub mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, StreamKind};
use crate::config::{CameraConfig, Config};
use crate::media::{DecodeResult, DecoderPool, MediaError, Templates};
use crate::store::objects::ObjectStore;
use session::CameraTask;
use status::{CameraRegistry, Snapshot};

pub use shared::EdgeShared;

struct Running {
    camera: CameraConfig,
    token: CancellationToken,
    handle: JoinHandle<()>,
}

/// The running cameras of this node.
pub struct Edge {
    shared: Arc<EdgeShared>,
    running: HashMap<String, Running>,
    results: JoinHandle<()>,
}

impl Edge {
    /// Starts the decoder pool and the frame publisher; cameras start with [`Edge::apply`].
    pub fn build(
        config: &Config,
        store: ObjectStore,
        bus: Bus,
        registry: Arc<CameraRegistry>,
    ) -> Result<Edge, MediaError> {
        let templates =
            Templates::load(config.media.profile, config.media.pipelines_dir.as_deref())?;
        let (pool, results) = DecoderPool::start(&config.media, &config.sampling, templates)?;
        tracing::info!(
            profile = config.media.profile.name(),
            decoders = config.media.decoders,
            "decoder pool started"
        );
        let results = tokio::spawn(publish_frames(results, bus.clone(), registry.clone()));
        Ok(Edge {
            shared: Arc::new(EdgeShared {
                edge: config.edge.clone(),
                sampling: config.sampling.clone(),
                recording: config.recording.clone(),
                store,
                bus,
                pool,
                registry,
            }),
            running: HashMap::new(),
            results,
        })
    }

    /// Makes the running cameras match `cameras`: new ones start, removed ones stop,
    /// changed ones restart, the rest are not touched.
    pub async fn apply(&mut self, cameras: &[CameraConfig]) {
        let wanted: HashMap<&str, &CameraConfig> = cameras
            .iter()
            .filter(|c| c.enabled)
            .map(|c| (c.id.as_str(), c))
            .collect();
        let stopping: Vec<String> = self
            .running
            .iter()
            .filter(|(id, r)| wanted.get(id.as_str()) != Some(&&r.camera))
            .map(|(id, _)| id.clone())
            .collect();
        let mut handles = Vec::new();
        for id in &stopping {
            if let Some(r) = self.running.remove(id) {
                tracing::info!(camera = %id, "stopping camera");
                r.token.cancel();
                handles.push(r.handle);
            }
        }
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        for id in &stopping {
            if !wanted.contains_key(id.as_str()) {
                self.shared.registry.remove(id);
            }
        }
        for (id, camera) in wanted {
            if self.running.contains_key(id) {
                continue;
            }
            tracing::info!(camera = %id, url = %camera.display_url(), "starting camera");
            let status = self.shared.registry.register(id, &camera.display_url());
            let token = CancellationToken::new();
            let task = CameraTask {
                camera: camera.clone(),
                id: Arc::from(id),
                shared: self.shared.clone(),
                status,
                shutdown: token.clone(),
            };
            let span = tracing::info_span!("camera", component = "edge", camera = %id);
            let handle = tokio::spawn(tracing::Instrument::instrument(task.run(), span));
            self.running.insert(
                id.to_string(),
                Running {
                    camera: camera.clone(),
                    token,
                    handle,
                },
            );
        }
    }

    /// Cameras running now.
    pub fn camera_ids(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Stops every camera (their open clips are stored), then drains the decoder pool.
    pub async fn shutdown(mut self) {
        self.apply(&[]).await;
        let pool = self.shared.pool.clone();
        let _ = tokio::task::spawn_blocking(move || pool.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.results).await;
    }
}

/// Takes JPEGs from the decoder pool: keeps each camera's latest as its snapshot and
/// publishes it on `panoptes.frames.<camera>`.
async fn publish_frames(
    mut results: mpsc::Receiver<DecodeResult>,
    bus: Bus,
    registry: Arc<CameraRegistry>,
) {
    while let Some(result) = results.recv().await {
        let frame = match result {
            Ok(f) => f,
            Err(crate::media::MediaError::Decode { camera, .. }) => {
                if let Some(s) = registry.get(&camera) {
                    s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Err(_) => continue,
        };
        let camera = frame.camera.to_string();
        let at = DateTime::<Utc>::from_timestamp_nanos(frame.capture_ns);
        if let Some(s) = registry.get(&camera) {
            s.set_snapshot(Snapshot {
                jpeg: frame.jpeg.clone(),
                at,
            });
            s.counters.samples.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!("panoptes_media_samples_total", "camera" => camera.clone()).increment(1);
        let headers = vec![
            ("camera".to_string(), camera.clone()),
            ("capture-ns".to_string(), frame.capture_ns.to_string()),
            ("pts".to_string(), frame.capture_ns.to_string()),
            ("width".to_string(), frame.width.to_string()),
            ("height".to_string(), frame.height.to_string()),
            (
                "Nats-Msg-Id".to_string(),
                format!("{camera}:{}", frame.capture_ns),
            ),
        ];
        let subject = StreamKind::Frames.subject(&camera);
        match bus
            .publish(subject, headers, Bytes::clone(&frame.jpeg))
            .await
        {
            Ok(_) => {}
            // Counted by the bus, which logs an outage once.
            Err(crate::bus::BusError::Unavailable(_)) => {}
            Err(e) => tracing::warn!(camera = %camera, error = %e, "frame not published"),
        }
    }
}
