//! The infer worker: sampled frames and audio from the bus in, insights out.
//!
//! Frames are pulled in batches across cameras (up to `infer.batch`, or whatever arrived
//! within `infer.batch_wait`), passed through each camera's change gate (`infer.gate`: a
//! frame that shows nothing new runs no model and extends the insights of the camera's last
//! analysed frame), run through detection and OCR, and each is acknowledged only
//! after its insights are stored, so a crash means redelivery, never loss; ids are derived
//! from the capture, so redelivery overwrites. The same object in the same place, or the
//! same text, on consecutive samples of a camera extends one insight (`ts` .. `ts_end`)
//! instead of adding one per sample. A batch is followed in capture order; a frame older
//! than its camera's latest analysed one (the in-process bus hands out the newest frame
//! first) gives insights of its own. Audio chunks are gathered per camera until voice
//! activity detection sees a phrase end, then the phrase is transcribed: every chunk
//! waiting is taken at once, so the voice activity of all cameras runs together and
//! phrases that end together are transcribed in one batch. Each camera's audio goes
//! through voice activity detection once, as it arrives. Stored insights are published
//! on `panoptes.insights.<camera>` for live listeners.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::speech::{VAD_WINDOW, VadStream};
use super::tracks::{FrameIn, Track, follow_camera, still_there};
use super::{Models, decode_image};
use crate::bus::{Bus, StreamKind};
use crate::config::InferConfig;
use crate::media::gate::{ChangeGate, GateSettings};
use crate::store::insights::{Insight, InsightStore, Kind, insight_id};
use crate::store::objects::ObjectStore;

/// Audio kept per camera while a phrase is still going on.
const MAX_PENDING_AUDIO_S: usize = 30;
/// Most audio chunks taken from the bus in one pass.
const AUDIO_BATCH: usize = 512;

/// Everything the worker needs, shared by its tasks.
pub struct Worker {
    models: Arc<Models>,
    insights: Arc<InsightStore>,
    objects: ObjectStore,
    bus: Bus,
    batch: usize,
    batch_wait: Duration,
    /// Frames older than this are skipped (`None`: never).
    max_frame_age: Option<Duration>,
    /// Gap after which a finding no longer continues (a few sample intervals).
    continue_within: Duration,
    tracks: Mutex<HashMap<String, Track>>,
    /// The change gate's settings (`None`: every frame is analysed) and each camera's gate.
    gate: Option<GateSettings>,
    gates: Mutex<HashMap<String, ChangeGate>>,
    audio: Mutex<HashMap<String, PendingAudio>>,
}

/// Audio of one camera not yet transcribed.
#[derive(Default)]
struct PendingAudio {
    start_ns: i64,
    samples: Vec<f32>,
    /// Speech probability of each whole VAD window of `samples` looked at so far.
    probs: Vec<f32>,
    vad: VadStream,
}

impl PendingAudio {
    /// Unix ns of sample `s` of the buffer.
    fn ns(&self, s: usize) -> i64 {
        self.start_ns + (s as i64 * 1_000_000_000 / i64::from(super::speech::SAMPLE_RATE))
    }

    /// Adds a chunk; a gap (reconnect, dropped chunk) starts over, since audio on both
    /// sides of it is not one phrase.
    fn push(&mut self, start_ns: i64, pcm: &[u8]) {
        let expected = self.ns(self.samples.len());
        if self.samples.is_empty() || (start_ns - expected).abs() > 200_000_000 {
            *self = PendingAudio {
                start_ns,
                ..PendingAudio::default()
            };
        }
        self.samples.extend(
            pcm.chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
        );
    }

    /// Drops the samples before `from` (a whole number of VAD windows).
    fn drain(&mut self, from: usize) {
        self.start_ns = self.ns(from);
        self.samples.drain(..from);
        self.probs.drain(..from / VAD_WINDOW);
    }
}

impl Worker {
    /// A worker over loaded models and stores.
    pub fn new(
        models: Arc<Models>,
        insights: Arc<InsightStore>,
        objects: ObjectStore,
        bus: Bus,
        config: &InferConfig,
        sample_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            models,
            insights,
            objects,
            bus,
            batch: config.frame_batch(),
            batch_wait: config.batch_wait,
            max_frame_age: Some(config.max_frame_age).filter(|d| !d.is_zero()),
            continue_within: (sample_interval * 3).max(Duration::from_secs(5)),
            tracks: Mutex::new(HashMap::new()),
            gate: config.gate.enabled.then_some(GateSettings {
                threshold: config.gate.threshold,
                min_area: config.gate.min_area,
                refresh: config.gate.refresh,
            }),
            gates: Mutex::new(HashMap::new()),
            audio: Mutex::new(HashMap::new()),
        })
    }

    /// Runs the frame and audio loops until `shutdown`; work in hand is finished and acked.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let frames = tokio::spawn(Arc::clone(&self).frames_loop(shutdown.clone()));
        let audio = tokio::spawn(Arc::clone(&self).audio_loop(shutdown));
        let _ = tokio::join!(frames, audio);
    }

    async fn frames_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let Ok(mut consumer) = self.bus.consumer(StreamKind::Frames, "infer").await else {
            return;
        };
        let processed = metrics::counter!("panoptes_infer_frames_total");
        let failed = metrics::counter!("panoptes_infer_errors_total", "stream" => "frames");
        let latency = metrics::histogram!("panoptes_infer_batch_seconds", "stream" => "frames");
        let skipped = metrics::counter!("panoptes_infer_frames_skipped_total", "reason" => "stale");
        let mut warned: Option<Instant> = None;
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                d = consumer.next(Duration::from_millis(500)) => d,
            };
            let Some(first) = first else { continue };
            let mut batch = vec![first];
            let deadline = Instant::now() + self.batch_wait;
            while batch.len() < self.batch {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match consumer.next(left).await {
                    Some(d) => batch.push(d),
                    None => break,
                }
            }
            let mut frames: Vec<FrameIn> =
                batch.iter().map(|d| FrameIn::from(d.message())).collect();
            if let Some(max_age) = self.max_frame_age {
                let now = Utc::now();
                let fresh = |f: &FrameIn| !is_stale(f.at, now, max_age);
                let (mut keep, mut kept) = (Vec::new(), Vec::new());
                let mut stale = 0;
                for (d, f) in batch.into_iter().zip(frames) {
                    if fresh(&f) {
                        keep.push(d);
                        kept.push(f);
                    } else {
                        stale += 1;
                        let _ = d.ack().await;
                    }
                }
                if stale > 0 {
                    skipped.increment(stale);
                    // Once a minute at most: the counter has the full story.
                    if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(60)) {
                        warned = Some(Instant::now());
                        tracing::warn!(
                            max_frame_age = ?max_age,
                            "inference is behind: frames older than infer.max_frame_age are skipped (panoptes_infer_frames_skipped_total)"
                        );
                    }
                }
                (batch, frames) = (keep, kept);
                if batch.is_empty() {
                    continue;
                }
            }
            // The bus may hand out the newest frame first: each camera's frames are
            // followed in capture order.
            let mut pairs: Vec<_> = batch.into_iter().zip(frames).collect();
            pairs.sort_by_key(|(_, f)| f.capture_ns);
            let (batch, frames): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
            let me = Arc::clone(&self);
            let started = Instant::now();
            let n = batch.len();
            match tokio::task::spawn_blocking(move || me.process_frames(frames)).await {
                Ok(Ok(stored)) => {
                    latency.record(started.elapsed().as_secs_f64());
                    processed.increment(n as u64);
                    for d in batch {
                        let _ = d.ack().await;
                    }
                    if shutdown.is_cancelled() {
                        tracing::info!(
                            frames = n,
                            "shutdown: the frame batch in hand is stored and acknowledged"
                        );
                    }
                    self.announce(stored).await;
                }
                Ok(Err(e)) => {
                    failed.increment(1);
                    tracing::warn!(error = %e, frames = n, "frame batch failed; it will be redelivered");
                    for d in batch {
                        let _ = d.nak(&e).await;
                    }
                }
                Err(e) => {
                    failed.increment(1);
                    for d in batch {
                        let _ = d.nak(&format!("inference panicked: {e}")).await;
                    }
                }
            }
        }
        let released = consumer.release().await;
        tracing::info!(
            released,
            "frame consumer stopped; frames received but not started went back to the bus"
        );
    }

    async fn audio_loop(self: Arc<Self>, shutdown: CancellationToken) {
        if self.models.speech.is_none() {
            return;
        }
        let Ok(mut consumer) = self.bus.consumer(StreamKind::Audio, "infer").await else {
            return;
        };
        let failed = metrics::counter!("panoptes_infer_errors_total", "stream" => "audio");
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                d = consumer.next(Duration::from_millis(500)) => d,
            };
            let Some(first) = first else { continue };
            // Whatever else is waiting goes along: all cameras' audio in one pass.
            let mut batch = vec![first];
            while batch.len() < AUDIO_BATCH {
                match consumer.next(Duration::ZERO).await {
                    Some(d) => batch.push(d),
                    None => break,
                }
            }
            let chunks: Vec<AudioIn> = batch.iter().map(|d| AudioIn::from(d.message())).collect();
            match self.process_audio(chunks).await {
                Ok(()) => {
                    for d in batch {
                        let _ = d.ack().await;
                    }
                }
                Err(e) => {
                    failed.increment(1);
                    tracing::warn!(error = %e, chunks = batch.len(), "audio failed; it will be redelivered");
                    for d in batch {
                        let _ = d.nak(&e).await;
                    }
                }
            }
        }
        consumer.release().await;
    }

    /// Publishes stored insights for live listeners (`/v1/events`).
    async fn announce(&self, stored: Vec<Insight>) {
        for i in stored {
            let Ok(body) = serde_json::to_vec(&i) else {
                continue;
            };
            let headers = vec![
                ("camera".to_string(), i.camera.clone()),
                ("kind".to_string(), i.kind.as_str().to_string()),
                (
                    "Nats-Msg-Id".to_string(),
                    format!("{}:{}", i.id, i.ts_end.unwrap_or(i.ts).timestamp_millis()),
                ),
            ];
            let _ = self
                .bus
                .publish(
                    StreamKind::Insights.subject(&i.camera),
                    headers,
                    Bytes::from(body),
                )
                .await;
        }
    }

    /// Detection and OCR over a batch of frames; stores what they found. Returns the
    /// insights written (new and extended).
    fn process_frames(&self, frames: Vec<FrameIn>) -> Result<Vec<Insight>, String> {
        let mut images = Vec::with_capacity(frames.len());
        let mut kept = Vec::with_capacity(frames.len());
        let mut unchanged = Vec::new();
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        for f in &frames {
            match decode_image(&f.jpeg) {
                Ok(img) => {
                    if let Some(settings) = self.gate {
                        let gate = gates
                            .entry(f.camera.clone())
                            .or_insert_with(|| ChangeGate::new(settings));
                        let change = gate.look(
                            img.as_raw(),
                            img.width() as usize,
                            img.height() as usize,
                            f.at.timestamp_millis(),
                        );
                        metrics::histogram!("panoptes_infer_change_score")
                            .record(f64::from(change.score));
                        metrics::counter!(
                            "panoptes_infer_gate_total",
                            "camera" => f.camera.clone(),
                            "verdict" => change.verdict.as_str()
                        )
                        .increment(1);
                        if !change.verdict.analyse() {
                            metrics::counter!("panoptes_infer_gated_total", "camera" => f.camera.clone())
                                .increment(1);
                            unchanged.push(f);
                            continue;
                        }
                    }
                    images.push(img);
                    kept.push(f);
                }
                // A frame that does not decode is counted and dropped, not retried.
                Err(e) => {
                    metrics::counter!("panoptes_infer_bad_frames_total").increment(1);
                    tracing::warn!(camera = %f.camera, error = %e, "sampled frame is not a readable JPEG");
                }
            }
        }
        let refs: Vec<&super::RgbImage> = images.iter().collect();
        // A batch the gate emptied runs no model at all.
        let objects = match &self.models.detector {
            Some(d) if !refs.is_empty() => d.detect(&refs).map_err(|e| e.to_string())?,
            _ => vec![Vec::new(); refs.len()],
        };
        let texts = match &self.models.ocr {
            Some(o) if !refs.is_empty() => o.read(&refs).map_err(|e| e.to_string())?,
            _ => vec![Vec::new(); refs.len()],
        };
        let detector = self
            .models
            .detector
            .as_ref()
            .map_or("", |d| d.name.as_str());
        drop(gates);
        let mut written = Vec::new();
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        for frame in unchanged {
            let track = tracks.entry(frame.camera.clone()).or_default();
            written.extend(still_there(track, frame.at, self.continue_within));
        }
        for ((frame, objects), texts) in kept.into_iter().zip(objects).zip(texts) {
            let track = tracks.entry(frame.camera.clone()).or_default();
            let (found, fresh) =
                follow_camera(track, frame, objects, texts, detector, self.continue_within);
            if fresh {
                let key =
                    crate::store::objects::snapshot_key(&frame.camera, frame.at.timestamp_millis());
                self.objects
                    .put_bytes(&key, &frame.jpeg)
                    .map_err(|e| e.to_string())?;
            }
            written.extend(found);
        }
        drop(tracks);
        self.store(&written)?;
        Ok(written)
    }

    /// Adds chunks to their cameras' pending audio and transcribes the phrases that have
    /// ended, a batch at a time, oldest first; each batch is stored and announced as soon
    /// as it is transcribed.
    async fn process_audio(self: &Arc<Self>, chunks: Vec<AudioIn>) -> Result<(), String> {
        let panicked = |e: tokio::task::JoinError| format!("inference panicked: {e}");
        let Some(speech) = &self.models.speech else {
            return Ok(());
        };
        let batch = speech.batch();
        let me = Arc::clone(self);
        let mut phrases = tokio::task::spawn_blocking(move || me.ended_phrases(chunks))
            .await
            .map_err(panicked)??;
        phrases.sort_by_key(|p| p.end_ns);
        while !phrases.is_empty() {
            let rest = phrases.split_off(batch.min(phrases.len()));
            let now = std::mem::replace(&mut phrases, rest);
            let me = Arc::clone(self);
            let stored = tokio::task::spawn_blocking(move || me.transcribe(now))
                .await
                .map_err(panicked)??;
            self.announce(stored).await;
        }
        Ok(())
    }

    /// Adds chunks to their cameras' pending audio, runs voice activity detection over the
    /// new audio of every camera at once, and cuts out the phrases that have ended.
    fn ended_phrases(&self, chunks: Vec<AudioIn>) -> Result<Vec<Phrase>, String> {
        let Some(speech) = &self.models.speech else {
            return Ok(Vec::new());
        };
        let rate = super::speech::SAMPLE_RATE as usize;
        let mut pending = self.audio.lock().unwrap_or_else(|p| p.into_inner());
        let mut cameras: Vec<String> = Vec::new();
        for chunk in &chunks {
            pending
                .entry(chunk.camera.clone())
                .or_default()
                .push(chunk.start_ns, &chunk.pcm);
            if !cameras.contains(&chunk.camera) {
                cameras.push(chunk.camera.clone());
            }
        }
        // Voice activity of the whole windows not looked at yet, all cameras together.
        let mut bufs: Vec<(&String, &mut PendingAudio)> = pending
            .iter_mut()
            .filter(|(camera, _)| cameras.contains(camera))
            .collect();
        let probs = {
            let mut streams: Vec<(&mut VadStream, &[f32])> = bufs
                .iter_mut()
                .map(|(_, buf)| {
                    let from = buf.probs.len() * VAD_WINDOW;
                    let whole = (buf.samples.len() - from) / VAD_WINDOW * VAD_WINDOW;
                    (&mut buf.vad, &buf.samples[from..from + whole])
                })
                .collect();
            speech
                .voice_activity(&mut streams)
                .map_err(|e| e.to_string())?
        };
        let mut phrases = Vec::new();
        for ((camera, buf), p) in bufs.iter_mut().zip(probs) {
            buf.probs.extend(p);
            let len = buf.probs.len() * VAD_WINDOW;
            let ranges = speech.phrases(&buf.probs, len);
            // A phrase has ended when its padded end lies half a second before the last
            // audio looked at (one closer may go on in the next chunk), or the buffer is full.
            let full = buf.samples.len() >= MAX_PENDING_AUDIO_S * rate;
            let ended = |b: usize| full || b + rate / 2 < len;
            for &(a, b) in ranges.iter().filter(|&&(_, b)| ended(b)) {
                phrases.push(Phrase {
                    camera: camera.to_string(),
                    start_ns: buf.ns(a),
                    end_ns: buf.ns(b),
                    samples: buf.samples[a..b].to_vec(),
                });
            }
            let keep_from = ranges
                .iter()
                .find(|&&(_, b)| !ended(b))
                .map_or(len.saturating_sub(rate / 2), |&(a, _)| a);
            // Whole windows, so the probabilities kept still line up with the samples.
            buf.drain(keep_from / VAD_WINDOW * VAD_WINDOW);
        }
        Ok(phrases)
    }

    /// Transcribes phrases and stores what was said. Returns the insights written.
    fn transcribe(&self, phrases: Vec<Phrase>) -> Result<Vec<Insight>, String> {
        let Some(speech) = &self.models.speech else {
            return Ok(Vec::new());
        };
        let clips: Vec<&[f32]> = phrases.iter().map(|p| p.samples.as_slice()).collect();
        let texts = speech.recognize(&clips).map_err(|e| e.to_string())?;
        let written: Vec<Insight> = phrases
            .iter()
            .zip(texts)
            .filter(|(_, (text, _))| !text.is_empty())
            .map(|(p, (text, confidence))| Insight {
                id: insight_id(&p.camera, Kind::Speech, p.start_ns, 0),
                camera: p.camera.clone(),
                kind: Kind::Speech,
                ts: DateTime::from_timestamp_nanos(p.start_ns),
                ts_end: Some(DateTime::from_timestamp_nanos(p.end_ns)),
                label: None,
                text: Some(text),
                confidence,
                bbox: None,
                snapshot: None,
                clip: None,
                model: "whisper-tiny.en".into(),
            })
            .collect();
        self.store(&written)?;
        Ok(written)
    }

    /// Embeds new texts and writes the insights.
    fn store(&self, insights: &[Insight]) -> Result<(), String> {
        if insights.is_empty() {
            return Ok(());
        }
        let bodies: Vec<&str> = insights.iter().filter_map(|i| i.body()).collect();
        let missing = self
            .insights
            .missing_texts(&bodies)
            .map_err(|e| e.to_string())?;
        let mut embeddings = HashMap::new();
        if !missing.is_empty() {
            let refs: Vec<&str> = missing.iter().map(String::as_str).collect();
            let vectors = self
                .models
                .embedder
                .embed(&refs)
                .map_err(|e| e.to_string())?;
            embeddings.extend(missing.into_iter().zip(vectors));
        }
        self.insights
            .upsert(insights, &embeddings)
            .map_err(|e| e.to_string())?;
        metrics::counter!("panoptes_infer_insights_written_total").increment(insights.len() as u64);
        Ok(())
    }
}

/// Whether a frame captured `at` is too old at `now` to be worth analysing. A capture
/// time in the future (a camera clock ahead) is never stale.
fn is_stale(at: DateTime<Utc>, now: DateTime<Utc>, max_age: Duration) -> bool {
    (now - at).to_std().is_ok_and(|age| age > max_age)
}

/// A phrase that has ended, cut out of its camera's audio.
struct Phrase {
    camera: String,
    start_ns: i64,
    end_ns: i64,
    samples: Vec<f32>,
}

/// An audio chunk from the bus: s16le 16 kHz mono.
struct AudioIn {
    camera: String,
    start_ns: i64,
    pcm: Bytes,
}

impl From<&crate::bus::Message> for AudioIn {
    fn from(m: &crate::bus::Message) -> Self {
        AudioIn {
            camera: m.header("camera").unwrap_or_default().to_string(),
            start_ns: m
                .header("start-ns")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            pcm: m.payload.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_frames_past_the_age_limit_are_stale() {
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let limit = std::time::Duration::from_secs(10);
        let ago = |s: i64| now - chrono::Duration::seconds(s);
        assert!(!is_stale(ago(0), now, limit));
        assert!(!is_stale(ago(10), now, limit));
        assert!(is_stale(ago(11), now, limit));
        assert!(!is_stale(now + chrono::Duration::seconds(5), now, limit));
    }

    #[test]
    fn pending_audio_follows_its_clock_and_starts_over_at_a_gap() {
        // Half a second of 16 kHz s16le, as the edge publishes it.
        let chunk = vec![0u8; 16_000];
        let mut buf = PendingAudio::default();
        buf.push(1_000_000_000, &chunk);
        buf.push(1_500_000_000, &chunk);
        assert_eq!(buf.samples.len(), 16_000);
        buf.probs = vec![0.0; 16_000 / VAD_WINDOW];
        // 10 windows looked at and done with: the clock moves with them (62.5 us a sample).
        buf.drain(10 * VAD_WINDOW);
        assert_eq!(buf.start_ns, 1_000_000_000 + 10 * 512 * 62_500);
        assert_eq!(buf.probs.len(), 31 - 10);
        // The next chunk follows on: kept.
        buf.push(2_000_000_000, &chunk);
        assert_eq!(buf.samples.len(), 16_000 - 10 * VAD_WINDOW + 8_000);
        assert_eq!(buf.ns(buf.samples.len()), 2_500_000_000);
        // One a second later than due: not the same phrase, start over.
        buf.push(3_500_000_000, &chunk);
        assert_eq!(buf.samples.len(), 8_000);
        assert_eq!(buf.start_ns, 3_500_000_000);
        assert!(buf.probs.is_empty());
    }
}
