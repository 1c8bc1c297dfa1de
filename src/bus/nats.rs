//! The cluster bus: NATS JetStream.
//!
//! Streams are created or updated at startup: FRAMES keeps fresh frames (max age and max
//! bytes, the oldest discarded), AUDIO is a work queue, CLIPS and INSIGHTS keep records for
//! `bus.records_max_age`, DLQ keeps dead letters. Publishes carry `Nats-Msg-Id`, so a retried
//! publish is stored once. Consumers are durable pull consumers with explicit acks; a message
//! that fails `max_deliver` times (or is never acknowledged) moves to `panoptes.dlq.<kind>`
//! with the error. The client reconnects on its own; while the server is away, publishes are
//! refused at once and counted as dropped, so the edge keeps recording.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_nats::{HeaderMap, jetstream::message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt;

use super::message::{BusError, Headers, Message, Published, StreamKind};
use crate::config::BusConfig;

/// How long a publish waits for the server's acknowledgement.
const PUBLISH_ACK_WAIT: Duration = Duration::from_secs(5);
/// How long dead letters are kept.
const DLQ_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest pause before a failed message is redelivered.
const MAX_NAK_DELAY: Duration = Duration::from_secs(30);

/// Messages asked for in one pull.
const PULL_BATCH: usize = 16;

/// Shortest life of a pull request: shorter waits reuse the pull in progress.
const MIN_PULL_EXPIRY: Duration = Duration::from_millis(200);

/// A connection to NATS with the Panoptes streams in place.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    max_deliver: u32,
    ack_wait: Duration,
    /// Set while publishes fail, so an outage is logged once, not once per frame.
    down: Arc<AtomicBool>,
}

/// The JetStream stream name of a kind.
pub fn stream_name(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Frames => "FRAMES",
        StreamKind::Audio => "AUDIO",
        StreamKind::Clips => "CLIPS",
        StreamKind::Insights => "INSIGHTS",
    }
}

/// The name of the dead-letter stream (`panoptes.dlq.>`).
pub const DLQ_STREAM: &str = "DLQ";

/// The stream settings Panoptes wants for `kind`.
fn stream_config(kind: StreamKind, config: &BusConfig) -> stream::Config {
    let subjects = vec![format!("panoptes.{}.>", kind.as_str())];
    let (retention, max_age, max_bytes) = match kind {
        StreamKind::Frames => (
            stream::RetentionPolicy::Limits,
            config.frames_max_age,
            config.frames_max_bytes,
        ),
        StreamKind::Audio => (
            stream::RetentionPolicy::WorkQueue,
            config.records_max_age,
            -1,
        ),
        StreamKind::Clips | StreamKind::Insights => {
            (stream::RetentionPolicy::Limits, config.records_max_age, -1)
        }
    };
    stream::Config {
        name: stream_name(kind).into(),
        subjects,
        retention,
        max_age,
        max_bytes,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        // The dedup window may not outlast the messages.
        duplicate_window: max_age.min(Duration::from_secs(120)),
        ..Default::default()
    }
}

fn dlq_config() -> stream::Config {
    stream::Config {
        name: DLQ_STREAM.into(),
        subjects: vec!["panoptes.dlq.>".into()],
        max_age: DLQ_MAX_AGE,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The largest JPEG a frame of `width` x `height` may reasonably be: six bits a pixel, well
/// above what the encoder produces at the qualities used for sampling.
pub fn max_frame_bytes(width: u32, height: u32) -> usize {
    (width as usize * height as usize * 3) / 4
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Nats(format!("{what}: {e}"))
}

impl NatsBus {
    /// Connects, checks the server's payload limit against `max_frame` bytes and creates or
    /// updates the streams. Waits for the server if it is not up yet.
    pub async fn connect(config: &BusConfig, max_frame: usize) -> Result<NatsBus, BusError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("panoptes")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((250 * attempt as u64).min(5_000))
            })
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("bus: disconnected from NATS; reconnecting")
                    }
                    async_nats::Event::Connected => tracing::info!("bus: connected to NATS"),
                    other => tracing::debug!(event = %other, "bus: NATS event"),
                }
            });
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            options = options.user_and_password(user.clone(), password.expose().to_string());
        }
        if let Some(token) = &config.token {
            options = options.token(token.expose().to_string());
        }
        let servers: Vec<async_nats::ServerAddr> = config
            .url
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e| nats_error("bus.url", e))?;
        let client = tokio::time::timeout(Duration::from_secs(30), options.connect(servers))
            .await
            .map_err(|_| {
                BusError::Nats(format!(
                    "no NATS server answered at {} within 30 s (bus.url)",
                    crate::config::redact_url(&config.url)
                ))
            })?
            .map_err(|e| nats_error("cannot connect to NATS", e))?;
        // The server's INFO arrives with the connection.
        let mut limit = client.server_info().max_payload;
        for _ in 0..50 {
            if limit > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            limit = client.server_info().max_payload;
        }
        if limit > 0 && max_frame > limit {
            return Err(BusError::Nats(format!(
                "the NATS server takes messages up to {limit} bytes (max_payload), but sampled \
                 frames may reach {max_frame} bytes (sampling.max_width x max_height); raise \
                 max_payload in the server's config (e.g. `max_payload: 8MB`) or lower the \
                 sampling size"
            )));
        }
        let js = jetstream::new(client.clone());
        for kind in StreamKind::ALL {
            ensure_stream(&js, stream_config(kind, config)).await?;
        }
        ensure_stream(&js, dlq_config()).await?;
        Ok(NatsBus {
            client,
            js,
            max_deliver: config.max_deliver,
            ack_wait: config.ack_wait,
            down: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The JetStream context (key-value buckets, direct reads).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Sends what the client still buffers (acks and naks are fire-and-forget publishes:
    /// a process that exits without this loses its last ones, and the server redelivers).
    pub async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        match tokio::time::timeout(timeout, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable(format!(
                "flush not done within {timeout:?}"
            ))),
        }
    }

    fn refused(&self, stream: &str, reason: &'static str, error: String) -> BusError {
        metrics::counter!("panoptes_bus_dropped_total", "stream" => stream.to_string(), "reason" => reason)
            .increment(1);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %error, "bus: publishes are failing; samples are dropped and counted until NATS is back");
        }
        BusError::Unavailable(error)
    }

    /// Publishes and waits for the server to store the message.
    pub async fn publish(
        &self,
        subject: String,
        headers: Headers,
        payload: Bytes,
    ) -> Result<Published, BusError> {
        let kind = StreamKind::of_subject(&subject).ok_or_else(|| BusError::BadSubject {
            subject: subject.clone(),
        })?;
        let label = kind.as_str();
        if !self.is_connected() {
            return Err(self.refused(label, "unavailable", "not connected to NATS".into()));
        }
        let map = header_map(&headers);
        let message = PublishMessage::build().payload(payload).headers(map);
        let ack = match self.js.send_publish(subject, message).await {
            Ok(ack) => ack,
            Err(e) => {
                let reason = match e.kind() {
                    jetstream::context::PublishErrorKind::MaxPayloadExceeded => "too_large",
                    _ => "unavailable",
                };
                return Err(self.refused(label, reason, e.to_string()));
            }
        };
        match tokio::time::timeout(PUBLISH_ACK_WAIT, ack).await {
            Ok(Ok(_)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("bus: publishing again");
                }
                metrics::counter!("panoptes_bus_published_total", "stream" => label).increment(1);
                Ok(Published::Stored)
            }
            Ok(Err(e)) => Err(self.refused(label, "unavailable", e.to_string())),
            Err(_) => Err(self.refused(
                label,
                "unavailable",
                "NATS did not confirm the publish in time".into(),
            )),
        }
    }

    async fn stream(&self, kind: StreamKind) -> Result<jetstream::stream::Stream, BusError> {
        self.js
            .get_stream(stream_name(kind))
            .await
            .map_err(|e| nats_error("cannot open stream", e))
    }

    /// A durable pull consumer; processes using the same `durable` name share the work.
    pub async fn consumer(
        &self,
        kind: StreamKind,
        durable: &str,
    ) -> Result<NatsConsumer, BusError> {
        let stream = self.stream(kind).await?;
        let config = consumer::pull::Config {
            durable_name: Some(durable.to_string()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            // One more than configured: a message delivered past max_deliver (never acked,
            // never failed, e.g. its worker died) is dead-lettered on that last delivery.
            max_deliver: i64::from(self.max_deliver) + 1,
            max_ack_pending: 1024,
            ..Default::default()
        };
        let consumer = stream
            .get_or_create_consumer(durable, config)
            .await
            .map_err(|e| nats_error("cannot create consumer", e))?;
        Ok(NatsConsumer {
            kind,
            consumer,
            messages: None,
            acks: true,
            bus: self.clone(),
        })
    }

    /// Every message published from now on, for this process only, without acknowledgement
    /// (live feeds such as `/v1/events`).
    pub async fn live(&self, kind: StreamKind) -> Result<NatsConsumer, BusError> {
        let stream = self.stream(kind).await?;
        let config = consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| nats_error("cannot create consumer", e))?;
        Ok(NatsConsumer {
            kind,
            consumer,
            messages: None,
            acks: false,
            bus: self.clone(),
        })
    }

    /// The newest message on `subject` (e.g. a camera's latest frame), if the stream has one.
    pub async fn last_on(&self, subject: &str) -> Option<Message> {
        let kind = StreamKind::of_subject(subject)?;
        let stream = self.js.get_stream(stream_name(kind)).await.ok()?;
        let raw = stream.get_last_raw_message_by_subject(subject).await.ok()?;
        Some(Message {
            subject: raw.subject.to_string(),
            headers: headers_of(&raw.headers),
            payload: raw.payload,
        })
    }

    async fn dead_letter(&self, kind: StreamKind, message: &Message, deliveries: u32, error: &str) {
        let mut headers = message.headers.clone();
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("Nats-Msg-Id"));
        headers.push(("original-subject".into(), message.subject.clone()));
        headers.push(("error".into(), error.replace(['\r', '\n'], " ")));
        headers.push(("delivery-count".into(), deliveries.to_string()));
        let subject = format!("panoptes.dlq.{}", kind.as_str());
        let map = header_map(&headers);
        let sent = match self
            .js
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(message.payload.clone())
                    .headers(map),
            )
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) => {
                metrics::counter!("panoptes_bus_dead_lettered_total", "stream" => kind.as_str())
                    .increment(1);
                tracing::warn!(subject = %message.subject, deliveries, error, "bus: message moved to the dead-letter stream");
            }
            Err(e) => {
                tracing::error!(subject = %message.subject, error = %e, "bus: cannot dead-letter a message")
            }
        }
    }
}

async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), BusError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(_) => js.update_stream(config).await.map(|_| ()).map_err(|e| {
            BusError::Nats(format!(
                "cannot update stream {name} to Panoptes' settings: {e} (a stream made by \
                     hand with another retention policy must be deleted first)"
            ))
        }),
        Err(_) => js.create_stream(config).await.map(|_| ()).map_err(|e| {
            BusError::Nats(format!(
                "cannot create stream {name}: {e} (is JetStream enabled? nats-server -js)"
            ))
        }),
    }
}

fn header_map(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(k.as_str(), v.as_str());
    }
    map
}

fn headers_of(map: &HeaderMap) -> Headers {
    let mut out: Headers = map
        .iter()
        .flat_map(|(k, vs)| {
            vs.iter()
                .map(move |v| (k.to_string(), v.as_str().to_string()))
        })
        .collect();
    out.sort();
    out
}

/// A pull consumer on one stream.
pub struct NatsConsumer {
    kind: StreamKind,
    consumer: consumer::Consumer<consumer::pull::Config>,
    messages: Option<consumer::pull::Batch>,
    acks: bool,
    bus: NatsBus,
}

impl NatsConsumer {
    /// Waits up to `timeout` for the next message.
    pub async fn next(&mut self, timeout: Duration) -> Option<NatsDelivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.messages.is_none() {
                // Pulls of at most 16 that end (filled or expired) on their own: a prefetched
                // message waits in this process while its ack_wait runs, and at shutdown
                // `release` can hand back everything the server has sent.
                let expires = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .max(MIN_PULL_EXPIRY);
                match self
                    .consumer
                    .batch()
                    .max_messages(PULL_BATCH)
                    .expires(expires)
                    .messages()
                    .await
                {
                    Ok(m) => self.messages = Some(m),
                    Err(e) => {
                        tracing::debug!(error = %e, "bus: cannot pull yet");
                        tokio::time::sleep_until(
                            deadline.min(tokio::time::Instant::now() + Duration::from_millis(500)),
                        )
                        .await;
                        if tokio::time::Instant::now() >= deadline {
                            return None;
                        }
                        continue;
                    }
                }
            }
            let messages = self.messages.as_mut()?;
            let next = match tokio::time::timeout_at(deadline, messages.next()).await {
                Err(_) => return None,
                Ok(n) => n,
            };
            let raw = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // Missed heartbeats while the server was away: the stream recovers by itself.
                    tracing::debug!(error = %e, "bus: pull interrupted");
                    continue;
                }
                None => {
                    self.messages = None;
                    continue;
                }
            };
            let message = Message {
                subject: raw.subject.to_string(),
                headers: raw.headers.as_ref().map(headers_of).unwrap_or_default(),
                payload: raw.payload.clone(),
            };
            let deliveries = raw
                .info()
                .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
                .unwrap_or(1);
            if self.acks && deliveries > self.bus.max_deliver {
                let error = format!(
                    "not acknowledged within {:?} on any of {} deliveries",
                    self.bus.ack_wait, self.bus.max_deliver
                );
                self.bus
                    .dead_letter(self.kind, &message, deliveries - 1, &error)
                    .await;
                let _ = raw.ack_with(AckKind::Term).await;
                continue;
            }
            return Some(NatsDelivery {
                kind: self.kind,
                raw,
                message,
                deliveries,
                acks: self.acks,
                bus: self.bus.clone(),
            });
        }
    }
}

impl NatsConsumer {
    /// Hands back what the server has sent this process and no one has taken yet: each is
    /// nak'ed without delay, so another worker gets it now rather than after `ack_wait`.
    /// The pull in progress ends on its own (filled or expired), which bounds the wait.
    /// Returns how many were handed back.
    pub async fn release(mut self) -> usize {
        let Some(mut messages) = self.messages.take() else {
            return 0;
        };
        let mut released = 0;
        let limit = MIN_PULL_EXPIRY + Duration::from_secs(1);
        while let Ok(Some(next)) = tokio::time::timeout(limit, messages.next()).await {
            if let Ok(m) = next
                && self.acks
                && m.ack_with(AckKind::Nak(None)).await.is_ok()
            {
                released += 1;
            }
        }
        if released > 0 {
            metrics::counter!("panoptes_bus_released_total", "stream" => self.kind.as_str())
                .increment(released as u64);
        }
        released
    }
}

/// A delivered JetStream message.
pub struct NatsDelivery {
    kind: StreamKind,
    raw: jetstream::Message,
    message: Message,
    deliveries: u32,
    acks: bool,
    bus: NatsBus,
}

impl NatsDelivery {
    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Deliveries so far, this one included.
    pub fn delivery_count(&self) -> u32 {
        self.deliveries
    }

    /// Done: the server forgets it for this consumer.
    pub async fn ack(self) -> Result<(), BusError> {
        if !self.acks {
            return Ok(());
        }
        metrics::counter!("panoptes_bus_acked_total", "stream" => self.kind.as_str()).increment(1);
        self.raw
            .ack()
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    /// Failed: redelivered after a pause that grows with each try, or dead-lettered once
    /// `max_deliver` deliveries have failed.
    pub async fn nak(self, error: &str) -> Result<(), BusError> {
        if !self.acks {
            return Ok(());
        }
        if self.deliveries >= self.bus.max_deliver {
            self.bus
                .dead_letter(self.kind, &self.message, self.deliveries, error)
                .await;
            return self
                .raw
                .ack_with(AckKind::Term)
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()));
        }
        metrics::counter!("panoptes_bus_redelivered_total", "stream" => self.kind.as_str())
            .increment(1);
        self.raw
            .ack_with(AckKind::Nak(Some(nak_delay(self.deliveries))))
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }
}

/// Pause before redelivering after the `n`-th failed delivery: 1 s, 2 s, 4 s ... 30 s.
fn nak_delay(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(5)).min(MAX_NAK_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_follow_design() {
        let c = BusConfig::default();
        let frames = stream_config(StreamKind::Frames, &c);
        assert_eq!(frames.name, "FRAMES");
        assert_eq!(frames.subjects, vec!["panoptes.frames.>".to_string()]);
        assert_eq!(frames.discard, stream::DiscardPolicy::Old);
        assert_eq!(frames.max_age, c.frames_max_age);
        assert_eq!(frames.max_bytes, c.frames_max_bytes);
        assert_eq!(
            stream_config(StreamKind::Audio, &c).retention,
            stream::RetentionPolicy::WorkQueue
        );
        assert_eq!(
            stream_config(StreamKind::Insights, &c).retention,
            stream::RetentionPolicy::Limits
        );
        let short = BusConfig {
            frames_max_age: Duration::from_secs(30),
            ..c
        };
        assert_eq!(
            stream_config(StreamKind::Frames, &short).duplicate_window,
            Duration::from_secs(30)
        );
    }

    #[test]
    fn redelivery_backs_off_to_a_limit() {
        assert_eq!(nak_delay(1), Duration::from_secs(1));
        assert_eq!(nak_delay(2), Duration::from_secs(2));
        assert_eq!(nak_delay(4), Duration::from_secs(8));
        assert_eq!(nak_delay(40), MAX_NAK_DELAY);
    }

    #[test]
    fn frame_bound_covers_default_sampling() {
        // 1280x720 at six bits a pixel stays under NATS' default 1 MiB.
        assert!(max_frame_bytes(1280, 720) < 1 << 20);
        assert!(max_frame_bytes(3840, 2160) > 1 << 20);
    }
}
