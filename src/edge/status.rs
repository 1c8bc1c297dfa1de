//! Live state of every camera, shared between the camera tasks and the API.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Connection state of a camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    /// DESCRIBE / SETUP / PLAY in progress, or waiting for the first frame.
    Connecting,
    /// Frames are arriving.
    Streaming,
    /// The last attempt failed; waiting before the next.
    Backoff,
    /// Not running (disabled, removed or shutting down).
    Stopped,
}

/// What went wrong with a camera's stream: the `kind` label of
/// `panoptes_edge_stream_errors_total` and the keys of a camera's `stream_errors_by_kind`.
///
/// The first three are survived inside a session (the packet or access unit is dropped, or the
/// timeline re-based, and frames keep flowing); the others end the session, which reconnects
/// after a backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// An RTP packet too short or malformed to have a valid header; it is dropped.
    BadRtpHeader,
    /// An RTP payload that is not valid H.264/H.265 packetization (a corrupt NAL header, a
    /// fragment cut short or out of place); the access unit it belonged to is dropped.
    BadPayload,
    /// The RTP timestamp jumped backwards or far forwards; the stream's timeline is re-based
    /// so capture times and clips stay continuous.
    TimestampJump,
    /// The data stopped being the codec the description announced (e.g. the camera was
    /// switched from H.264 to H.265); the session reconnects to read the new description.
    CodecChanged,
    /// The camera answered DESCRIBE with something that is not a usable SDP description.
    BadSdp,
    /// DESCRIBE, SETUP or PLAY was refused or failed (connection refused, 401, 404, ...).
    Connect,
    /// DESCRIBE, SETUP and PLAY did not complete within `connect_timeout`.
    ConnectTimeout,
    /// The description offers no H.264/H.265 video.
    NoVideo,
    /// No video frame within `first_frame_timeout` of PLAY.
    FirstFrameTimeout,
    /// No usable video frame for `stall_timeout`.
    Stalled,
    /// The RTSP connection failed mid-stream.
    Stream,
    /// The server ended the stream.
    Ended,
    /// The camera URL does not parse.
    InvalidUrl,
}

impl FaultKind {
    /// Every kind, in the order of [`FaultKind::index`].
    pub const ALL: [FaultKind; 13] = [
        FaultKind::BadRtpHeader,
        FaultKind::BadPayload,
        FaultKind::TimestampJump,
        FaultKind::CodecChanged,
        FaultKind::BadSdp,
        FaultKind::Connect,
        FaultKind::ConnectTimeout,
        FaultKind::NoVideo,
        FaultKind::FirstFrameTimeout,
        FaultKind::Stalled,
        FaultKind::Stream,
        FaultKind::Ended,
        FaultKind::InvalidUrl,
    ];

    /// The label value and API key.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::BadRtpHeader => "bad_rtp_header",
            FaultKind::BadPayload => "bad_payload",
            FaultKind::TimestampJump => "timestamp_jump",
            FaultKind::CodecChanged => "codec_changed",
            FaultKind::BadSdp => "bad_sdp",
            FaultKind::Connect => "connect",
            FaultKind::ConnectTimeout => "connect_timeout",
            FaultKind::NoVideo => "no_video",
            FaultKind::FirstFrameTimeout => "first_frame_timeout",
            FaultKind::Stalled => "stalled",
            FaultKind::Stream => "stream",
            FaultKind::Ended => "ended",
            FaultKind::InvalidUrl => "invalid_url",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Video stream parameters as the API shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VideoInfo {
    /// `h264` or `h265`.
    pub codec: &'static str,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Measured frames per second.
    pub fps: f64,
}

/// Audio stream parameters as the API shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AudioInfo {
    /// e.g. `aac`.
    pub codec: String,
    /// Source sample rate.
    pub sample_rate: u32,
}

/// The latest sampled frame of a camera.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// JPEG bytes.
    pub jpeg: Bytes,
    /// When the frame was captured.
    pub at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Mutable {
    state: Option<CameraState>,
    last_error: Option<String>,
    last_error_kind: Option<FaultKind>,
    last_error_at: Option<DateTime<Utc>>,
    video: Option<VideoInfo>,
    audio: Option<AudioInfo>,
    snapshot: Option<Snapshot>,
    since: Option<DateTime<Utc>>,
}

/// Counters of one camera (also exported as metrics).
#[derive(Debug, Default)]
pub struct Counters {
    /// Video access units received.
    pub frames_received: AtomicU64,
    /// Keyframes received.
    pub keyframes: AtomicU64,
    /// Frames sampled and decoded to JPEG.
    pub samples: AtomicU64,
    /// Samples dropped (decoder queue full, bus full, decode failure).
    pub dropped: AtomicU64,
    /// Reconnect attempts after a failure.
    pub reconnects: AtomicU64,
    /// Clip segments stored.
    pub clips: AtomicU64,
    /// Bytes of video received.
    pub bytes: AtomicU64,
    /// Audio chunks published.
    pub audio_chunks: AtomicU64,
    /// Changes of the video parameters mid-session (resolution, profile).
    pub parameter_changes: AtomicU64,
    /// Stream faults, by [`FaultKind::index`].
    faults: [AtomicU64; FaultKind::ALL.len()],
}

impl Counters {
    /// How often `kind` happened.
    pub fn faults(&self, kind: FaultKind) -> u64 {
        self.faults[kind.index()].load(Ordering::Relaxed)
    }
}

/// One camera's live status.
#[derive(Debug)]
pub struct CameraStatus {
    id: String,
    url: String,
    mutable: Mutex<Mutable>,
    /// Unix milliseconds of the latest frame; 0 before the first.
    last_frame_ms: std::sync::atomic::AtomicI64,
    /// Counters, updated lock-free from the camera task.
    pub counters: Counters,
}

/// The camera record of the API.
#[derive(Debug, Clone, Serialize)]
pub struct CameraView {
    /// Camera id.
    pub id: String,
    /// Connection state.
    pub state: CameraState,
    /// Since when the camera is in this state.
    pub state_since: Option<DateTime<Utc>>,
    /// The URL, credentials removed.
    pub url: String,
    /// The node running the camera.
    pub owner: String,
    /// Video parameters, once known.
    pub video: Option<VideoInfo>,
    /// Audio parameters, when the camera has audio.
    pub audio: Option<AudioInfo>,
    /// Video access units received.
    pub frames_received: u64,
    /// Keyframes received.
    pub keyframes: u64,
    /// Frames sampled.
    pub samples: u64,
    /// Samples dropped.
    pub dropped: u64,
    /// Reconnects after failures.
    pub reconnects: u64,
    /// Clips stored.
    pub clips: u64,
    /// Video bytes received.
    pub bytes_received: u64,
    /// Audio chunks published.
    pub audio_chunks: u64,
    /// Stream faults of every kind, survived or not (see `stream_errors_by_kind`).
    pub stream_errors: u64,
    /// Stream faults by kind (`bad_rtp_header`, `bad_payload`, `timestamp_jump`,
    /// `codec_changed`, `bad_sdp`, `connect`, `connect_timeout`, ...); kinds that never
    /// happened are left out.
    pub stream_errors_by_kind: BTreeMap<&'static str, u64>,
    /// Changes of the video parameters mid-session (e.g. a resolution change).
    pub parameter_changes: u64,
    /// Arrival of the latest frame.
    pub last_frame_at: Option<DateTime<Utc>>,
    /// Time of the latest snapshot.
    pub last_snapshot_at: Option<DateTime<Utc>>,
    /// The most recent error, kept after recovery.
    pub last_error: Option<String>,
    /// The kind of `last_error`, as in `stream_errors_by_kind`.
    pub last_error_kind: Option<&'static str>,
    /// When `last_error` happened.
    pub last_error_at: Option<DateTime<Utc>>,
}

impl CameraStatus {
    fn new(id: &str, url: &str) -> CameraStatus {
        CameraStatus {
            id: id.to_string(),
            url: url.to_string(),
            mutable: Mutex::new(Mutable::default()),
            last_frame_ms: std::sync::atomic::AtomicI64::new(0),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mutable> {
        self.mutable.lock().expect("camera status poisoned")
    }

    /// Camera id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Moves to `state`.
    pub fn set_state(&self, state: CameraState) {
        let mut m = self.lock();
        if m.state != Some(state) {
            m.state = Some(state);
            m.since = Some(Utc::now());
        }
    }

    /// Current state.
    pub fn state(&self) -> CameraState {
        self.lock().state.unwrap_or(CameraState::Stopped)
    }

    /// Records an error (already scrubbed of secrets by the caller).
    pub fn set_error(&self, error: String) {
        let mut m = self.lock();
        m.last_error = Some(error);
        m.last_error_at = Some(Utc::now());
    }

    /// Counts a stream fault and makes it the last error (`error` already scrubbed of
    /// secrets by the caller).
    pub fn record_fault(&self, kind: FaultKind, error: String) {
        self.counters.faults[kind.index()].fetch_add(1, Ordering::Relaxed);
        let mut m = self.lock();
        m.last_error = Some(error);
        m.last_error_kind = Some(kind);
        m.last_error_at = Some(Utc::now());
    }

    /// Records the video parameters.
    pub fn set_video(&self, video: VideoInfo) {
        self.lock().video = Some(video);
    }

    /// Updates the measured frame rate.
    pub fn set_fps(&self, fps: f64) {
        if let Some(v) = &mut self.lock().video {
            v.fps = fps;
        }
    }

    /// Records the audio parameters (None: no audio).
    pub fn set_audio(&self, audio: Option<AudioInfo>) {
        self.lock().audio = audio;
    }

    /// Notes the arrival of a frame (lock-free: called for every frame).
    pub fn frame_seen(&self, at: DateTime<Utc>) {
        self.last_frame_ms
            .store(at.timestamp_millis(), Ordering::Relaxed);
    }

    /// Stores the latest sampled frame.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        self.lock().snapshot = Some(snapshot);
    }

    /// The latest sampled frame.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.lock().snapshot.clone()
    }

    /// The API record.
    pub fn view(&self, owner: &str) -> CameraView {
        let m = self.lock();
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CameraView {
            id: self.id.clone(),
            state: m.state.unwrap_or(CameraState::Stopped),
            state_since: m.since,
            url: self.url.clone(),
            owner: owner.to_string(),
            video: m.video.clone(),
            audio: m.audio.clone(),
            frames_received: get(&c.frames_received),
            keyframes: get(&c.keyframes),
            samples: get(&c.samples),
            dropped: get(&c.dropped),
            reconnects: get(&c.reconnects),
            clips: get(&c.clips),
            bytes_received: get(&c.bytes),
            audio_chunks: get(&c.audio_chunks),
            stream_errors: c.faults.iter().map(get).sum(),
            stream_errors_by_kind: FaultKind::ALL
                .iter()
                .map(|k| (k.as_str(), c.faults(*k)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            parameter_changes: get(&c.parameter_changes),
            last_frame_at: match self.last_frame_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => DateTime::from_timestamp_millis(ms),
            },
            last_snapshot_at: m.snapshot.as_ref().map(|s| s.at),
            last_error: m.last_error.clone(),
            last_error_kind: m.last_error_kind.map(FaultKind::as_str),
            last_error_at: m.last_error_at,
        }
    }
}

/// Every camera this process runs.
#[derive(Debug)]
pub struct CameraRegistry {
    node: String,
    cameras: RwLock<BTreeMap<String, Arc<CameraStatus>>>,
}

impl CameraRegistry {
    /// An empty registry for this node.
    pub fn new(node: &str) -> CameraRegistry {
        CameraRegistry {
            node: node.to_string(),
            cameras: RwLock::new(BTreeMap::new()),
        }
    }

    /// The status entry of a camera, created when missing.
    pub fn register(&self, id: &str, display_url: &str) -> Arc<CameraStatus> {
        let mut cams = self.cameras.write().expect("registry poisoned");
        cams.entry(id.to_string())
            .or_insert_with(|| Arc::new(CameraStatus::new(id, display_url)))
            .clone()
    }

    /// Forgets a camera.
    pub fn remove(&self, id: &str) {
        self.cameras.write().expect("registry poisoned").remove(id);
    }

    /// One camera.
    pub fn get(&self, id: &str) -> Option<Arc<CameraStatus>> {
        self.cameras
            .read()
            .expect("registry poisoned")
            .get(id)
            .cloned()
    }

    /// All cameras, ordered by id.
    pub fn views(&self) -> Vec<CameraView> {
        self.cameras
            .read()
            .expect("registry poisoned")
            .values()
            .map(|c| c.view(&self.node))
            .collect()
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_indexed_in_order_and_named_once() {
        let mut names = std::collections::HashSet::new();
        for (i, k) in FaultKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
            assert!(names.insert(k.as_str()), "{k:?}");
        }
    }

    #[test]
    fn faults_are_counted_by_kind_and_the_last_is_shown() {
        let s = CameraStatus::new("cam", "rtsp://h/x");
        s.record_fault(FaultKind::BadPayload, "dropped an access unit: a".into());
        s.record_fault(FaultKind::BadPayload, "dropped an access unit: b".into());
        s.record_fault(FaultKind::TimestampJump, "timestamp jumped".into());
        let v = s.view("node");
        assert_eq!(v.stream_errors, 3);
        assert_eq!(v.stream_errors_by_kind.get("bad_payload"), Some(&2));
        assert_eq!(v.stream_errors_by_kind.get("timestamp_jump"), Some(&1));
        assert!(!v.stream_errors_by_kind.contains_key("stalled"));
        assert_eq!(v.last_error.as_deref(), Some("timestamp jumped"));
        assert_eq!(v.last_error_kind, Some("timestamp_jump"));
        assert!(v.last_error_at.is_some());
    }
}
