//! One camera: a supervisor loop around a retina RTSP session.
//!
//! `run` loops over `run_once` until shutdown. `run_once` connects (DESCRIBE, SETUP, PLAY
//! within `connect_timeout`), waits for the first frame (`first_frame_timeout`) and then
//! feeds every access unit to the recorder and the sampler, and every audio frame to the
//! audio decoder. A stream that stops sending raises no error in retina, so a watchdog
//! (`stall_timeout`) ends the session. Failures wait a jittered, doubling delay.

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

use super::EdgeShared;
use super::recorder::{Clock, Recorder};
use super::status::{AudioInfo, CameraState, CameraStatus, VideoInfo};
use crate::bus::StreamKind;
use crate::config::{CameraConfig, Transport};
use crate::media::audio::{AudioDecoder, SAMPLE_RATE};
use crate::media::sampler::Sampler;
use crate::media::{DecodeJob, VideoCodec};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The URL does not parse (validation normally catches this).
    #[error("invalid URL: {0}")]
    Url(String),
    /// DESCRIBE, SETUP or PLAY failed.
    #[error("connect failed: {0}")]
    Connect(String),
    /// DESCRIBE, SETUP and PLAY did not complete in time.
    #[error("no answer within {0:?} (connect timeout)")]
    ConnectTimeout(Duration),
    /// The server offers no H.264 or H.265 video.
    #[error("no H.264/H.265 video stream; the server offers: {0}")]
    NoVideo(String),
    /// No frame arrived after PLAY.
    #[error("no video frame within {0:?} of PLAY (first-frame timeout)")]
    FirstFrameTimeout(Duration),
    /// Frames stopped arriving.
    #[error("no video frame for {0:?}; the stream stalled")]
    Stalled(Duration),
    /// The RTSP connection failed mid-stream.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The server closed the stream.
    #[error("the server ended the stream")]
    Ended,
}

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
            dropped_queue: metrics::counter!("panoptes_media_dropped_total", "camera" => c, "reason" => "decode_queue_full"),
        }
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
            let message = self.scrub(&error.to_string());
            // A session that streamed for a while was healthy: start the backoff afresh.
            if started.elapsed() > edge.backoff_max {
                backoff = edge.backoff_initial;
            }
            let delay = jitter(backoff);
            tracing::warn!(camera = %self.id, error = %message, retry_in_ms = delay.as_millis() as u64, "camera session ended");
            self.status.set_error(message);
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
        let connect_err = |e: retina::Error| SessionError::Connect(e.to_string());
        let mut session = retina::client::Session::describe(url, options)
            .await
            .map_err(connect_err)?;
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
                        break Err(if streaming {
                            SessionError::Stalled(wait)
                        } else {
                            SessionError::FirstFrameTimeout(wait)
                        });
                    }
                    watchdog.as_mut().reset(last_video + wait);
                    continue;
                }
                r = demuxed.next() => r,
            };
            let item = match item {
                None => break Err(SessionError::Ended),
                Some(Err(e)) => break Err(SessionError::Stream(e.to_string())),
                Some(Ok(item)) => item,
            };
            match item {
                CodecItem::VideoFrame(frame) if frame.stream_id() == video_i => {
                    last_video = tokio::time::Instant::now();
                    if !streaming {
                        streaming = true;
                        self.status.set_state(CameraState::Streaming);
                        tracing::info!(camera = %self.id, "camera streaming");
                    }
                    self.on_video(&mut state, &demuxed, video_i, frame, metrics);
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

    fn on_video(
        &self,
        st: &mut SessionState,
        demuxed: &Demuxed,
        video_i: usize,
        frame: VideoFrame,
        metrics: &Metrics,
    ) {
        let counters = &self.status.counters;
        let key = frame.is_random_access_point()
            || (st.codec == VideoCodec::H265 && crate::media::h265_is_irap(frame.data()));
        let ts = frame.timestamp().timestamp();
        let rate = frame.timestamp().clock_rate().get();
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
            self.update_parameters(st, demuxed, video_i, ts, clock);
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
            return;
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
    }

    fn update_parameters(
        &self,
        st: &mut SessionState,
        demuxed: &Demuxed,
        video_i: usize,
        ts: i64,
        clock: Clock,
    ) {
        let Some(ParametersRef::Video(v)) = demuxed.streams()[video_i].parameters() else {
            return;
        };
        let dims = v.pixel_dimensions();
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
        let ts = frame.timestamp().timestamp();
        if st.audio_failed {
            return;
        }
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
}

/// A delay between half and all of `d`, so cameras that failed together do not all
/// reconnect in the same instant.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..=1.0))
}
