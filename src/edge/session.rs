//! One camera: a supervisor loop around a retina RTSP session.
//!
//! `run` loops over `run_once` until shutdown. `run_once` connects (DESCRIBE, SETUP, PLAY
//! within `connect_timeout`), waits for the first frame (`first_frame_timeout`) and then
//! feeds every access unit to the recorder and the sampler, and every audio frame to the
//! audio decoder. A stream that stops sending raises no error in retina, so a watchdog
//! (`stall_timeout`) ends the session. Failures wait a jittered, doubling delay.
//!
//! Bad input is counted by [`FaultKind`] and survived where the stream can go on: a malformed
//! RTP packet or a broken access unit is dropped (retina's depacketizer is left consistent
//! after such an error), and an RTP timestamp jump re-bases the session's timeline so capture
//! times and clips stay continuous. A resolution change starts a new clip. Data that is no
//! longer the announced codec, and anything retina cannot go on from, end the session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use retina::client::{
    Credentials, Demuxed, InitialSequenceNumberPolicy, PlayOptions, SessionOptions, SetupOptions,
    TcpTransportOptions, Transport as RtspTransport, UdpTransportOptions,
};
use retina::codec::{CodecItem, FrameFormat, ParametersRef, VideoFrame};
use tokio_util::sync::CancellationToken;

use super::faults::{
    FOREIGN_LIMIT, Rebase, SessionError, codec_name, has_picture, recoverable, summary,
};
use super::recorder::{Clock, Recorder};
use super::shared::EdgeShared;
use super::status::{AudioInfo, CameraState, CameraStatus, FaultKind, VideoInfo};
use crate::bus::StreamKind;
use crate::config::{CameraConfig, Transport};
use crate::media::audio::{AudioDecoder, SAMPLE_RATE};
use crate::media::sampler::Sampler;
use crate::media::{DecodeJob, VideoCodec};

/// Packet errors are logged at most this often per camera (they can come by the hundred).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The supervisor of one camera.
pub struct CameraTask {
    pub(super) camera: CameraConfig,
    pub(super) id: Arc<str>,
    pub(super) shared: Arc<EdgeShared>,
    pub(super) status: Arc<CameraStatus>,
    pub(super) shutdown: CancellationToken,
}

struct Metrics {
    frames: metrics::Counter,
    keyframes: metrics::Counter,
    bytes: metrics::Counter,
    reconnects: metrics::Counter,
    audio_chunks: metrics::Counter,
    audio_errors: metrics::Counter,
    dropped_queue: metrics::Counter,
    parameter_changes: metrics::Counter,
    camera: String,
}

impl Metrics {
    fn new(camera: &str) -> Metrics {
        let c = camera.to_string();
        Metrics {
            frames: metrics::counter!("panoptes_edge_frames_received_total", "camera" => c.clone()),
            keyframes: metrics::counter!("panoptes_edge_keyframes_total", "camera" => c.clone()),
            bytes: metrics::counter!("panoptes_edge_bytes_received_total", "camera" => c.clone()),
            reconnects: metrics::counter!("panoptes_edge_reconnects_total", "camera" => c.clone()),
            audio_chunks: metrics::counter!("panoptes_media_audio_chunks_total", "camera" => c.clone()),
            audio_errors: metrics::counter!("panoptes_media_audio_errors_total", "camera" => c.clone()),
            dropped_queue: metrics::counter!("panoptes_media_dropped_total", "camera" => c.clone(), "reason" => "decode_queue_full"),
            parameter_changes: metrics::counter!("panoptes_edge_parameter_changes_total", "camera" => c.clone()),
            camera: c,
        }
    }
}

impl Metrics {
    fn fault(&self, kind: FaultKind) {
        // Faults are rare next to frames: a registry lookup per fault is cheap enough.
        metrics::counter!("panoptes_edge_stream_errors_total", "camera" => self.camera.clone(), "kind" => kind.as_str())
            .increment(1);
    }
}

impl CameraTask {
    /// Runs the camera until shutdown.
    pub async fn run(self) {
        let edge = self.shared.edge.clone();
        let metrics = Metrics::new(&self.id);
        let mut backoff = edge.backoff_initial;
        loop {
            self.status.set_state(CameraState::Connecting);
            let started = Instant::now();
            let result = self.run_once(&metrics).await;
            if self.shutdown.is_cancelled() {
                break;
            }
            let error = match result {
                Ok(()) => SessionError::Ended,
                Err(e) => e,
            };
            let kind = error.kind();
            let message = self.scrub(&error.to_string());
            // A session that streamed for a while was healthy: start the backoff afresh.
            if started.elapsed() > edge.backoff_max {
                backoff = edge.backoff_initial;
            }
            let delay = jitter(backoff);
            tracing::warn!(camera = %self.id, kind = kind.as_str(), error = %message, retry_in_ms = delay.as_millis() as u64, "camera session ended");
            self.status.record_fault(kind, message);
            metrics.fault(kind);
            self.status.set_state(CameraState::Backoff);
            self.status
                .counters
                .reconnects
                .fetch_add(1, Ordering::Relaxed);
            metrics.reconnects.increment(1);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            backoff = (backoff * 2).min(edge.backoff_max);
        }
        self.status.set_state(CameraState::Stopped);
    }

    /// Removes the camera's password from a message, whatever produced it.
    fn scrub(&self, message: &str) -> String {
        match &self.camera.password {
            Some(p) if !p.expose().is_empty() => message.replace(p.expose(), "***"),
            _ => message.to_string(),
        }
    }

    async fn connect(&self) -> Result<(Demuxed, usize, Option<usize>, VideoCodec), SessionError> {
        let url =
            url::Url::parse(&self.camera.url).map_err(|e| SessionError::Url(e.to_string()))?;
        let creds = self.camera.username.as_ref().map(|u| Credentials {
            username: u.clone(),
            password: self
                .camera
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        });
        let options = SessionOptions::default()
            .creds(creds)
            .user_agent(format!("panoptes/{}", env!("CARGO_PKG_VERSION")));
        let connect_err = |e: retina::Error| {
            tracing::debug!(camera = %self.id, error = %self.scrub(&e.to_string()), "connect failed");
            SessionError::Connect(summary(&e))
        };
        let mut session = retina::client::Session::describe(url, options)
            .await
            .map_err(|e| {
                // An error with a success status is an answer retina could not parse.
                if e.status_code() == Some(200) {
                    tracing::debug!(camera = %self.id, error = %self.scrub(&e.to_string()), "unusable DESCRIBE answer");
                    SessionError::BadSdp(summary(&e))
                } else {
                    connect_err(e)
                }
            })?;
        let streams = session.streams();
        let video = streams.iter().enumerate().find_map(|(i, s)| {
            if s.media() != "video" {
                return None;
            }
            match s.encoding_name() {
                "h264" => Some((i, VideoCodec::H264)),
                "h265" => Some((i, VideoCodec::H265)),
                _ => None,
            }
        });
        let Some((video_i, codec)) = video else {
            let offered: Vec<String> = streams
                .iter()
                .map(|s| format!("{}/{}", s.media(), s.encoding_name()))
                .collect();
            return Err(SessionError::NoVideo(offered.join(", ")));
        };
        let audio_i = self
            .camera
            .audio
            .then(|| {
                streams
                    .iter()
                    .position(|s| s.media() == "audio" && s.encoding_name() == "mpeg4-generic")
            })
            .flatten();
        let transport = match self.camera.transport {
            Transport::Tcp => RtspTransport::Tcp(TcpTransportOptions::default()),
            Transport::Udp => RtspTransport::Udp(UdpTransportOptions::default()),
        };
        let setup = || {
            SetupOptions::default()
                .transport(transport.clone())
                .frame_format(FrameFormat::MP4)
        };
        session.setup(video_i, setup()).await.map_err(connect_err)?;
        if let Some(a) = audio_i {
            session.setup(a, setup()).await.map_err(connect_err)?;
        }
        // Servers disagree about the first sequence number after PLAY; trusting it makes
        // retina drop sessions as "out of order".
        let playing = session
            .play(PlayOptions::default().initial_seq(InitialSequenceNumberPolicy::Ignore))
            .await
            .map_err(connect_err)?;
        let demuxed = playing.demuxed().map_err(connect_err)?;
        Ok((demuxed, video_i, audio_i, codec))
    }

    async fn run_once(&self, metrics: &Metrics) -> Result<(), SessionError> {
        let edge = &self.shared.edge;
        let connected = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(edge.connect_timeout, self.connect()) => r,
        };
        let (mut demuxed, video_i, audio_i, codec) =
            connected.map_err(|_| SessionError::ConnectTimeout(edge.connect_timeout))??;
        tracing::info!(camera = %self.id, codec = codec.as_str(), audio = audio_i.is_some(), "camera connected");
        if audio_i.is_none() {
            self.status.set_audio(None);
        }
        let interval = self.camera.sample_interval(&self.shared.sampling);
        let mut state = SessionState {
            codec,
            clock: None,
            audio_clock: None,
            recorder: None,
            sampler: Sampler::new(0),
            sample_interval: interval,
            audio: None,
            audio_failed: false,
            codec_data: Bytes::new(),
            dims: (0, 0),
            last_ts: None,
            frame_delta: None,
            video_timeline: Rebase::default(),
            audio_timeline: Rebase::default(),
            foreign: 0,
            rejected: 0,
            last_rejection: None,
            unlogged_errors: 0,
            errors_logged_at: None,
        };
        let mut last_video = tokio::time::Instant::now();
        let mut streaming = false;
        // One cancellation future and one watchdog timer per session, not per packet: at
        // 1000 cameras a timer armed for every RTP item is a measurable share of the CPU.
        let cancelled = self.shutdown.cancelled();
        tokio::pin!(cancelled);
        let watchdog = tokio::time::sleep(edge.first_frame_timeout);
        tokio::pin!(watchdog);
        let result = loop {
            let wait = if streaming {
                edge.stall_timeout
            } else {
                edge.first_frame_timeout
            };
            let item = tokio::select! {
                biased;
                _ = &mut cancelled => break Ok(()),
                _ = &mut watchdog => {
                    if last_video.elapsed() >= wait {
                        break Err(match state.last_rejection.take() {
                            Some(last) => SessionError::Unusable {
                                wait,
                                rejected: state.rejected,
                                last,
                            },
                            None if streaming => SessionError::Stalled(wait),
                            None => SessionError::FirstFrameTimeout(wait),
                        });
                    }
                    watchdog.as_mut().reset(last_video + wait);
                    continue;
                }
                r = demuxed.next() => r,
            };
            let item = match item {
                None => break Err(SessionError::Ended),
                Some(Err(e)) => match recoverable(&e) {
                    Some(kind) => {
                        self.on_packet_error(&mut state, kind, &e, metrics);
                        continue;
                    }
                    None => {
                        tracing::debug!(camera = %self.id, error = %self.scrub(&e.to_string()), "stream failed");
                        break Err(SessionError::Stream(summary(&e)));
                    }
                },
                Some(Ok(item)) => item,
            };
            match item {
                CodecItem::VideoFrame(frame) if frame.stream_id() == video_i => {
                    match self.on_video(&mut state, &demuxed, video_i, frame, metrics) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => break Err(e),
                    }
                    last_video = tokio::time::Instant::now();
                    if !streaming {
                        streaming = true;
                        self.status.set_state(CameraState::Streaming);
                        tracing::info!(camera = %self.id, "camera streaming");
                    }
                }
                CodecItem::AudioFrame(frame) if Some(frame.stream_id()) == audio_i => {
                    self.on_audio(&mut state, &demuxed, frame, metrics).await;
                }
                _ => {}
            }
        };
        if let Some(r) = state.recorder.take() {
            r.close().await;
        }
        if let Some(mut a) = state.audio.take()
            && let Some(chunk) = a.flush()
        {
            self.publish_audio(&state, chunk, metrics).await;
        }
        result
    }

    /// Counts a packet retina rejected; the session goes on without it.
    fn on_packet_error(
        &self,
        st: &mut SessionState,
        kind: FaultKind,
        e: &retina::Error,
        metrics: &Metrics,
    ) {
        let what = match kind {
            FaultKind::BadRtpHeader => "dropped a malformed RTP packet",
            _ => "dropped an access unit",
        };
        let text = e.to_string();
        let seq = text
            .lines()
            .find_map(|l| l.strip_prefix("seq: "))
            .map(|s| format!(" (RTP seq {s})"))
            .unwrap_or_default();
        let message = self.scrub(&format!("{what}: {}{seq}", summary(e)));
        st.rejected += 1;
        st.unlogged_errors += 1;
        if st
            .errors_logged_at
            .is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL)
        {
            tracing::warn!(camera = %self.id, kind = kind.as_str(), errors = st.unlogged_errors, error = %message, "bad packets dropped; the session goes on");
            st.errors_logged_at = Some(Instant::now());
            st.unlogged_errors = 0;
        } else {
            tracing::debug!(camera = %self.id, kind = kind.as_str(), error = %self.scrub(&text), "bad packet dropped");
        }
        self.status.record_fault(kind, message.clone());
        metrics.fault(kind);
        st.last_rejection = Some(message);
    }

    /// Handles one access unit; `Ok(false)` when it was dropped as not a picture of the
    /// session's codec.
    fn on_video(
        &self,
        st: &mut SessionState,
        demuxed: &Demuxed,
        video_i: usize,
        frame: VideoFrame,
        metrics: &Metrics,
    ) -> Result<bool, SessionError> {
        let counters = &self.status.counters;
        if !has_picture(st.codec, frame.data()) {
            st.foreign += 1;
            let other = match st.codec {
                VideoCodec::H264 => VideoCodec::H265,
                VideoCodec::H265 => VideoCodec::H264,
            };
            tracing::debug!(camera = %self.id, codec = st.codec.as_str(), in_a_row = st.foreign, "access unit without a picture dropped");
            if st.foreign >= FOREIGN_LIMIT {
                return Err(SessionError::CodecChanged {
                    announced: codec_name(st.codec),
                    count: st.foreign,
                    looks: if has_picture(other, frame.data()) {
                        format!(" (the data looks like {})", codec_name(other))
                    } else {
                        String::new()
                    },
                });
            }
            return Ok(false);
        }
        st.foreign = 0;
        st.rejected = 0;
        st.last_rejection = None;
        let key = frame.is_random_access_point()
            || (st.codec == VideoCodec::H265 && crate::media::h265_is_irap(frame.data()));
        let rate = frame.timestamp().clock_rate().get();
        let (ts, jump) = st.video_timeline.apply(
            frame.timestamp().timestamp(),
            rate,
            Instant::now(),
            st.frame_delta,
        );
        if let Some(secs) = jump {
            let message = format!(
                "the RTP timestamp jumped {secs:+.3} s; the timeline was re-based so capture times and clips stay continuous"
            );
            tracing::warn!(camera = %self.id, jump_s = secs, "video timestamp jump");
            self.status.record_fault(FaultKind::TimestampJump, message);
            metrics.fault(FaultKind::TimestampJump);
        }
        counters.frames_received.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(frame.data().len() as u64, Ordering::Relaxed);
        metrics.frames.increment(1);
        metrics.bytes.increment(frame.data().len() as u64);
        if key {
            counters.keyframes.fetch_add(1, Ordering::Relaxed);
            metrics.keyframes.increment(1);
        }
        let now = Utc::now();
        self.status.frame_seen(now);
        let clock = *st.clock.get_or_insert(Clock {
            base_ms: now.timestamp_millis(),
            base_ts: ts,
            rate,
        });
        if st.recorder.is_none() && st.codec_data.is_empty() || frame.has_new_parameters() {
            self.update_parameters(st, demuxed, video_i, ts, clock, metrics);
        }
        self.track_fps(st, ts, rate);
        if key && let Some(avg) = st.frame_delta {
            // Once per GOP is often enough for the API and keeps the lock off the hot path.
            self.status
                .set_fps((f64::from(rate) / avg * 100.0).round() / 100.0);
        }
        let data = Bytes::from(frame.into_data());
        if let Some(r) = &mut st.recorder {
            r.push(ts, key, data.clone());
        }
        if st.codec_data.is_empty() {
            return Ok(true);
        }
        if let Some(frames) = st.sampler.on_frame(ts, key, &data) {
            let job = DecodeJob {
                camera: self.id.clone(),
                codec: st.codec,
                codec_data: st.codec_data.clone(),
                width: st.dims.0,
                height: st.dims.1,
                frames,
                capture_ns: clock.ns(ts),
            };
            if let Some(victim) = self.shared.pool.submit(job) {
                // The oldest job in the shared queue gave way; it may be another camera's.
                if *victim == *self.id {
                    metrics.dropped_queue.increment(1);
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                } else if let Some(other) = self.shared.registry.get(&victim) {
                    other.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("panoptes_media_dropped_total", "camera" => victim.to_string(), "reason" => "decode_queue_full").increment(1);
                }
            }
        }
        Ok(true)
    }

    fn update_parameters(
        &self,
        st: &mut SessionState,
        demuxed: &Demuxed,
        video_i: usize,
        ts: i64,
        clock: Clock,
        metrics: &Metrics,
    ) {
        let Some(ParametersRef::Video(v)) = demuxed.streams()[video_i].parameters() else {
            return;
        };
        let dims = v.pixel_dimensions();
        if !st.codec_data.is_empty() && st.codec_data != v.extra_data() {
            // Cameras change resolution or profile in-band (a new SPS); the recorder starts a
            // new clip and the decoder pool a new decoder for the new parameters.
            tracing::info!(camera = %self.id, from = ?st.dims, to = ?dims, "video parameters changed");
            self.status
                .counters
                .parameter_changes
                .fetch_add(1, Ordering::Relaxed);
            metrics.parameter_changes.increment(1);
        }
        st.dims = dims;
        st.codec_data = Bytes::copy_from_slice(v.extra_data());
        let interval_ticks = (st.sample_interval.as_secs_f64() * f64::from(clock.rate)) as i64;
        if st.sampler.gop().is_none() {
            let phase = (interval_ticks as f64 * rand::random_range(0.0..1.0)) as i64;
            st.sampler = Sampler::with_phase(interval_ticks, phase);
        }
        let fps = v
            .frame_rate()
            .map(|(n, d)| {
                if n > 0 {
                    f64::from(d) / f64::from(n)
                } else {
                    0.0
                }
            })
            .unwrap_or(0.0);
        self.status.set_video(VideoInfo {
            codec: st.codec.as_str(),
            width: dims.0,
            height: dims.1,
            fps: st
                .frame_delta
                .map(|d| f64::from(clock.rate) / d)
                .unwrap_or(fps),
        });
        let entry = match v.mp4_sample_entry().build() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(camera = %self.id, error = %e, "no MP4 sample entry; not recording");
                return;
            }
        };
        match &mut st.recorder {
            Some(r) => r.set_parameters(ts, entry, dims),
            None if self.camera.records(&self.shared.recording) => {
                st.recorder = Some(Recorder::new(
                    self.id.clone(),
                    &self.shared,
                    self.status.clone(),
                    clock,
                    entry,
                    dims,
                ));
            }
            None => {}
        }
    }

    fn track_fps(&self, st: &mut SessionState, ts: i64, rate: u32) {
        if let Some(prev) = st.last_ts {
            let d = (ts - prev) as f64;
            if d > 0.0 && d < f64::from(rate) * 5.0 {
                let avg = st.frame_delta.map_or(d, |a| a * 0.95 + d * 0.05);
                st.frame_delta = Some(avg);
            }
        }
        st.last_ts = Some(ts);
    }

    async fn on_audio(
        &self,
        st: &mut SessionState,
        demuxed: &Demuxed,
        frame: retina::codec::AudioFrame,
        metrics: &Metrics,
    ) {
        if st.audio_failed {
            return;
        }
        // Audio jumps with video on real cameras; counted once, on the video side.
        let (ts, _) = st.audio_timeline.apply(
            frame.timestamp().timestamp(),
            frame.timestamp().clock_rate().get(),
            Instant::now(),
            Some(f64::from(frame.frame_length().get())),
        );
        if st.audio.is_none() {
            let Some(ParametersRef::Audio(a)) = demuxed.streams()[frame.stream_id()].parameters()
            else {
                return;
            };
            let chunk = self.shared.sampling.audio_chunk.as_secs_f64();
            match AudioDecoder::aac(a.extra_data(), a.clock_rate(), chunk) {
                Ok(d) => {
                    self.status.set_audio(Some(AudioInfo {
                        codec: "aac".into(),
                        sample_rate: a.clock_rate(),
                    }));
                    st.audio_clock = Some(Clock {
                        base_ms: Utc::now().timestamp_millis(),
                        base_ts: ts,
                        rate: a.clock_rate(),
                    });
                    st.audio = Some(d);
                }
                Err(e) => {
                    // Not retried per frame: the parameters will not change in this session.
                    st.audio_failed = true;
                    metrics.audio_errors.increment(1);
                    tracing::warn!(camera = %self.id, error = %e, "audio ignored for this session");
                    return;
                }
            }
        }
        let Some(decoder) = &mut st.audio else { return };
        match decoder.push(ts, frame.data()) {
            Ok(Some(chunk)) => self.publish_audio(st, chunk, metrics).await,
            Ok(None) => {}
            Err(e) => {
                metrics.audio_errors.increment(1);
                tracing::debug!(camera = %self.id, error = %e, "audio frame skipped");
            }
        }
    }

    async fn publish_audio(
        &self,
        st: &SessionState,
        chunk: crate::media::audio::PcmChunk,
        metrics: &Metrics,
    ) {
        let Some(clock) = st.audio_clock else { return };
        let start = clock.ns(chunk.start_ts);
        let end = start + chunk.samples as i64 * 1_000_000_000 / i64::from(SAMPLE_RATE);
        let headers = vec![
            ("camera".to_string(), self.id.to_string()),
            ("start-ns".to_string(), start.to_string()),
            ("end-ns".to_string(), end.to_string()),
            ("sample-rate".to_string(), SAMPLE_RATE.to_string()),
            (
                "Nats-Msg-Id".to_string(),
                format!("{}:audio:{start}", self.id),
            ),
        ];
        if self
            .shared
            .bus
            .publish(
                StreamKind::Audio.subject(&self.id),
                headers,
                Bytes::from(chunk.pcm),
            )
            .await
            .is_ok()
        {
            self.status
                .counters
                .audio_chunks
                .fetch_add(1, Ordering::Relaxed);
            metrics.audio_chunks.increment(1);
        }
    }
}

struct SessionState {
    codec: VideoCodec,
    clock: Option<Clock>,
    audio_clock: Option<Clock>,
    recorder: Option<Recorder>,
    sampler: Sampler,
    sample_interval: Duration,
    audio: Option<AudioDecoder>,
    audio_failed: bool,
    codec_data: Bytes,
    dims: (u32, u32),
    last_ts: Option<i64>,
    frame_delta: Option<f64>,
    video_timeline: Rebase,
    audio_timeline: Rebase,
    /// Access units in a row without a picture of `codec`.
    foreign: u32,
    /// Packets rejected since the last usable frame, and the last rejection.
    rejected: u64,
    last_rejection: Option<String>,
    unlogged_errors: u64,
    errors_logged_at: Option<Instant>,
}

/// A delay between half and all of `d`, so cameras that failed together do not all
/// reconnect in the same instant.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..=1.0))
}
