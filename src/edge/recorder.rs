//! Clip recording: access units go into MP4 segments without re-encoding.
//!
//! A segment starts at a keyframe and is cut at the first keyframe at least
//! `recording.segment` after its start; that keyframe starts the next segment, so the end of
//! one clip is exactly the start of the next (both come from the same RTP timestamp). A
//! frame's duration is known only when the next frame arrives, so one frame is held back.
//! Finished segments are closed and moved into the object store off the camera task.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::task::JoinSet;

use super::shared::EdgeShared;
use super::status::CameraStatus;
use crate::bus::{Bus, StreamKind};
use crate::media::mp4::Mp4Writer;
use crate::store::objects::{ObjectStore, clip_key};

/// Maps stream ticks to wall-clock milliseconds for one session.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix milliseconds at tick `base_ts`.
    pub base_ms: i64,
    /// The anchor tick.
    pub base_ts: i64,
    /// Ticks per second.
    pub rate: u32,
}

impl Clock {
    /// Unix milliseconds of tick `ts`.
    pub fn ms(&self, ts: i64) -> i64 {
        self.base_ms + (ts - self.base_ts) * 1000 / i64::from(self.rate)
    }

    /// Unix nanoseconds of tick `ts`.
    pub fn ns(&self, ts: i64) -> i64 {
        self.base_ms * 1_000_000
            + ((i128::from(ts - self.base_ts) * 1_000_000_000) / i128::from(self.rate)) as i64
    }
}

struct Segment {
    writer: Mp4Writer,
    start_ts: i64,
}

struct Pending {
    data: Bytes,
    ts: i64,
    key: bool,
}

/// The recorder of one camera session.
pub struct Recorder {
    camera: Arc<str>,
    store: ObjectStore,
    bus: Bus,
    status: Arc<CameraStatus>,
    segment_ticks: i64,
    clock: Clock,
    sample_entry: Vec<u8>,
    dims: (u32, u32),
    current: Option<Segment>,
    pending: Option<Pending>,
    last_duration: u32,
    closing: JoinSet<()>,
    segments: metrics::Counter,
    bytes: metrics::Counter,
    errors: metrics::Counter,
}

impl Recorder {
    /// A recorder for a session whose stream is described by `sample_entry`.
    pub fn new(
        camera: Arc<str>,
        shared: &EdgeShared,
        status: Arc<CameraStatus>,
        clock: Clock,
        sample_entry: Vec<u8>,
        dims: (u32, u32),
    ) -> Recorder {
        let label = camera.to_string();
        let segment_secs = shared.recording.segment.as_secs_f64();
        Recorder {
            segment_ticks: (segment_secs * f64::from(clock.rate)) as i64,
            last_duration: clock.rate / 15,
            segments: metrics::counter!("panoptes_recorder_segments_total", "camera" => label.clone()),
            bytes: metrics::counter!("panoptes_recorder_bytes_total", "camera" => label.clone()),
            errors: metrics::counter!("panoptes_recorder_errors_total", "camera" => label),
            store: shared.store.clone(),
            bus: shared.bus.clone(),
            camera,
            status,
            clock,
            sample_entry,
            dims,
            current: None,
            pending: None,
            closing: JoinSet::new(),
        }
    }

    /// New stream parameters (resolution or codec change): the open segment ends here.
    pub fn set_parameters(&mut self, ts: i64, sample_entry: Vec<u8>, dims: (u32, u32)) {
        if sample_entry == self.sample_entry {
            return;
        }
        self.cut(ts);
        self.sample_entry = sample_entry;
        self.dims = dims;
    }

    /// Adds one access unit (4-byte length-prefixed NAL units).
    pub fn push(&mut self, ts: i64, key: bool, data: Bytes) {
        if let Some(p) = self.pending.take() {
            let d = ts - p.ts;
            // A timestamp that does not move forward cannot be a duration; reuse the last.
            let duration = if d > 0 && d < i64::from(self.clock.rate) * 10 {
                d as u32
            } else {
                self.last_duration
            };
            self.last_duration = duration;
            let cut_here = key
                && self
                    .current
                    .as_ref()
                    .is_some_and(|s| ts - s.start_ts >= self.segment_ticks);
            self.write(&p, duration);
            if cut_here || d <= 0 {
                // A backwards timestamp also ends the segment: its times could not be kept.
                self.close_current(p.ts + i64::from(duration));
            }
        }
        if self.current.is_none() {
            if !key {
                return; // a segment must start with a keyframe
            }
            self.open(ts);
        }
        self.pending = Some(Pending { data, ts, key });
    }

    fn cut(&mut self, ts: i64) {
        if let Some(p) = self.pending.take() {
            let d = ts - p.ts;
            let duration = if d > 0 { d as u32 } else { self.last_duration };
            self.write(&p, duration);
            self.close_current(p.ts + i64::from(duration));
        }
    }

    fn open(&mut self, ts: i64) {
        let path = self.spool_path(ts);
        match Mp4Writer::create(&path, self.sample_entry.clone(), self.dims, self.clock.rate) {
            Ok(writer) => {
                self.current = Some(Segment {
                    writer,
                    start_ts: ts,
                })
            }
            Err(e) => {
                self.errors.increment(1);
                tracing::error!(camera = %self.camera, path = %path.display(), error = %e, "cannot open clip segment");
            }
        }
    }

    fn spool_path(&self, ts: i64) -> PathBuf {
        self.store
            .spool_dir()
            .join(format!("{}-{}.mp4.part", self.camera, self.clock.ms(ts)))
    }

    fn write(&mut self, p: &Pending, duration: u32) {
        let Some(seg) = &mut self.current else { return };
        if let Err(e) = seg.writer.push(&p.data, duration, p.key) {
            self.errors.increment(1);
            tracing::error!(camera = %self.camera, error = %e, "cannot write clip; segment abandoned");
            let path = seg.writer.path().to_path_buf();
            self.current = None;
            let _ = std::fs::remove_file(path);
            return;
        }
        self.bytes.increment(p.data.len() as u64);
    }

    fn close_current(&mut self, end_ts: i64) {
        let Some(seg) = self.current.take() else {
            return;
        };
        if seg.writer.samples() == 0 {
            let _ = std::fs::remove_file(seg.writer.path());
            return;
        }
        let start_ms = self.clock.ms(seg.start_ts);
        let end_ms = self.clock.ms(end_ts);
        let key = clip_key(&self.camera, start_ms, end_ms);
        let store = self.store.clone();
        let bus = self.bus.clone();
        let camera = self.camera.clone();
        let status = self.status.clone();
        let segments = self.segments.clone();
        let errors = self.errors.clone();
        // Syncing and renaming the file may block on the disk: not on the camera task.
        self.closing.spawn(async move {
            let path = seg.writer.path().to_path_buf();
            let k = key.clone();
            let stored = tokio::task::spawn_blocking(move || -> Result<u64, String> {
                let size = seg.writer.finish().map_err(|e| e.to_string())?;
                store.put_file(&k, &path).map_err(|e| e.to_string())?;
                Ok(size)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match stored {
                Ok(size) => {
                    segments.increment(1);
                    status.counters.clips.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(camera = %camera, key, bytes = size, "clip stored");
                    let record = serde_json::json!({
                        "id": format!("{camera}-{start_ms}-{end_ms}"),
                        "camera": &*camera,
                        "key": key,
                        "start_ms": start_ms,
                        "end_ms": end_ms,
                        "bytes": size,
                    });
                    let _ = bus
                        .publish(
                            StreamKind::Clips.subject(&camera),
                            vec![("camera".into(), camera.to_string())],
                            Bytes::from(record.to_string()),
                        )
                        .await;
                }
                Err(e) => {
                    errors.increment(1);
                    tracing::error!(camera = %camera, key, error = %e, "cannot store clip");
                }
            }
        });
        while self.closing.try_join_next().is_some() {}
    }

    /// Ends the session: the held-back frame gets the usual duration, the open segment is
    /// stored, and this waits until every segment is in the object store.
    pub async fn close(mut self) {
        if let Some(p) = self.pending.take() {
            let d = self.last_duration;
            self.write(&p, d);
            self.close_current(p.ts + i64::from(d));
        }
        while self.closing.join_next().await.is_some() {}
    }
}
