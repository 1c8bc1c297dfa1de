//! In-process bus: one bounded queue per stream, shared by all consumers of that stream
//! (work-queue semantics), with in-flight tracking for explicit acks and redelivery.
//! Frames are handed out newest first, the other streams oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::Counter;
use tokio::sync::Notify;

use super::message::{BusError, Headers, Message, Published, StreamKind};
use crate::config::BusConfig;

/// The in-process bus.
#[derive(Clone)]
pub struct MemoryBus {
    streams: Arc<HashMap<StreamKind, Arc<Stream>>>,
    dlq: Arc<Mutex<VecDeque<Message>>>,
}

struct Stream {
    kind: StreamKind,
    capacity: usize,
    /// Deliver the newest waiting message first (frames: a stale frame is worth less
    /// than a new one); otherwise the oldest (audio must stay in order).
    newest_first: bool,
    max_deliver: u32,
    ack_wait: Duration,
    state: Mutex<State>,
    notify: Notify,
    published: Counter,
    /// Messages held, waiting or in flight (`panoptes_bus_queued`).
    queued: metrics::Gauge,
    dropped: Counter,
    acked: Counter,
    redelivered: Counter,
    dead_lettered: Counter,
    dlq: Arc<Mutex<VecDeque<Message>>>,
    /// When a full stream was last reported in the log.
    warned_full: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    /// Messages waiting for a consumer: (seq, message, deliveries so far).
    ready: VecDeque<(u64, Message, u32)>,
    /// Delivered, not yet acknowledged: seq -> (message, deliveries, redeliver at).
    in_flight: HashMap<u64, (Message, u32, Instant)>,
}

const DLQ_CAPACITY: usize = 1024;

impl MemoryBus {
    /// Builds the streams with the configured capacities.
    pub fn new(config: &BusConfig) -> MemoryBus {
        let dlq = Arc::new(Mutex::new(VecDeque::new()));
        let streams = StreamKind::ALL
            .into_iter()
            .map(|kind| {
                let capacity = match kind {
                    StreamKind::Frames => config.frames_capacity,
                    StreamKind::Audio => config.audio_capacity,
                    StreamKind::Clips | StreamKind::Insights => 4096,
                };
                let label = kind.as_str();
                let stream = Stream {
                    kind,
                    capacity,
                    newest_first: kind == StreamKind::Frames,
                    max_deliver: config.max_deliver,
                    ack_wait: config.ack_wait,
                    state: Mutex::new(State::default()),
                    notify: Notify::new(),
                    published: metrics::counter!("panoptes_bus_published_total", "stream" => label),
                    queued: metrics::gauge!("panoptes_bus_queued", "stream" => label),
                    dropped: metrics::counter!("panoptes_bus_dropped_total", "stream" => label),
                    acked: metrics::counter!("panoptes_bus_acked_total", "stream" => label),
                    redelivered: metrics::counter!("panoptes_bus_redelivered_total", "stream" => label),
                    dead_lettered: metrics::counter!("panoptes_bus_dead_lettered_total", "stream" => label),
                    dlq: dlq.clone(),
                    warned_full: Mutex::new(None),
                };
                (kind, Arc::new(stream))
            })
            .collect();
        MemoryBus {
            streams: Arc::new(streams),
            dlq,
        }
    }

    pub(super) fn publish(
        &self,
        subject: String,
        headers: Headers,
        payload: Bytes,
    ) -> Result<Published, BusError> {
        let kind = StreamKind::of_subject(&subject).ok_or(BusError::BadSubject {
            subject: subject.clone(),
        })?;
        let stream = &self.streams[&kind];
        let msg = Message {
            subject,
            headers,
            payload,
        };
        let mut dropped = false;
        {
            let mut st = stream.state.lock().expect("bus lock poisoned");
            if st.ready.len() + st.in_flight.len() >= stream.capacity
                && st.ready.pop_front().is_some()
            {
                dropped = true;
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            st.ready.push_back((seq, msg, 0));
            stream
                .queued
                .set((st.ready.len() + st.in_flight.len()) as f64);
        }
        stream.published.increment(1);
        if dropped {
            stream.dropped.increment(1);
            // Once a minute at most: the counter has the full story.
            let mut warned = stream.warned_full.lock().expect("bus lock poisoned");
            if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(60)) {
                *warned = Some(Instant::now());
                tracing::warn!(
                    stream = stream.kind.as_str(),
                    capacity = stream.capacity,
                    "the consumers are behind: the stream is full and its oldest messages are dropped (panoptes_bus_dropped_total)"
                );
            }
        }
        stream.notify.notify_one();
        Ok(if dropped {
            Published::StoredDroppedOldest
        } else {
            Published::Stored
        })
    }

    pub(super) fn consumer(&self, kind: StreamKind, _durable: &str) -> MemoryConsumer {
        MemoryConsumer {
            stream: self.streams[&kind].clone(),
        }
    }

    /// Messages waiting or in flight on a stream.
    pub fn pending(&self, kind: StreamKind) -> usize {
        let st = self.streams[&kind].state.lock().expect("bus lock poisoned");
        st.ready.len() + st.in_flight.len()
    }

    /// Messages that exhausted their deliveries, oldest first (the `panoptes.dlq.<kind>` subject).
    pub fn dead_letters(&self) -> Vec<Message> {
        self.dlq
            .lock()
            .expect("dlq lock poisoned")
            .iter()
            .cloned()
            .collect()
    }
}

/// A pull consumer on one stream.
pub struct MemoryConsumer {
    stream: Arc<Stream>,
}

impl MemoryConsumer {
    pub(super) async fn next(&mut self, timeout: Duration) -> Option<MemoryDelivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so a publish between the look and the
            // wait still wakes us.
            let notified = self.stream.notify.notified();
            let wake_at = {
                let mut st = self.stream.state.lock().expect("bus lock poisoned");
                let now = Instant::now();
                let expired: Vec<u64> = st
                    .in_flight
                    .iter()
                    .filter(|(_, (_, _, at))| *at <= now)
                    .map(|(s, _)| *s)
                    .collect();
                for seq in expired {
                    if let Some((msg, n, _)) = st.in_flight.remove(&seq) {
                        self.stream.redelivered.increment(1);
                        st.ready.push_front((seq, msg, n));
                    }
                }
                let next = if self.stream.newest_first {
                    st.ready.pop_back()
                } else {
                    st.ready.pop_front()
                };
                if let Some((seq, msg, n)) = next {
                    let n = n + 1;
                    st.in_flight
                        .insert(seq, (msg.clone(), n, now + self.stream.ack_wait));
                    return Some(MemoryDelivery {
                        stream: self.stream.clone(),
                        seq,
                        message: msg,
                        deliveries: n,
                    });
                }
                st.in_flight.values().map(|(_, _, at)| *at).min()
            };
            let mut until = deadline;
            if let Some(at) = wake_at {
                until = until.min(tokio::time::Instant::from_std(at));
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

/// A message handed to a consumer; ack or nak it.
pub struct MemoryDelivery {
    stream: Arc<Stream>,
    seq: u64,
    message: Message,
    deliveries: u32,
}

impl MemoryDelivery {
    pub(super) fn message(&self) -> &Message {
        &self.message
    }

    pub(super) fn delivery_count(&self) -> u32 {
        self.deliveries
    }

    pub(super) fn ack(self) {
        let removed = self
            .stream
            .state
            .lock()
            .expect("bus lock poisoned")
            .in_flight
            .remove(&self.seq)
            .is_some();
        if removed {
            self.stream.acked.increment(1);
        }
    }

    pub(super) fn nak(self, error: &str) {
        let mut st = self.stream.state.lock().expect("bus lock poisoned");
        let Some((msg, n, _)) = st.in_flight.remove(&self.seq) else {
            return;
        };
        if n >= self.stream.max_deliver {
            drop(st);
            let mut dead = msg;
            dead.subject = format!("panoptes.dlq.{}", self.stream.kind.as_str());
            dead.headers.push(("error".into(), error.to_string()));
            dead.headers.push(("delivery-count".into(), n.to_string()));
            let mut dlq = self.stream.dlq.lock().expect("dlq lock poisoned");
            if dlq.len() >= DLQ_CAPACITY {
                dlq.pop_front();
            }
            dlq.push_back(dead);
            self.stream.dead_lettered.increment(1);
            tracing::warn!(
                stream = self.stream.kind.as_str(),
                deliveries = n,
                error,
                "message dead-lettered"
            );
        } else {
            st.ready.push_front((self.seq, msg, n));
            drop(st);
            self.stream.redelivered.increment(1);
            self.stream.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, StreamKind};

    fn bus(capacity: usize, max_deliver: u32, ack_wait: Duration) -> Bus {
        Bus::Memory(MemoryBus::new(&BusConfig {
            frames_capacity: capacity,
            max_deliver,
            ack_wait,
            ..BusConfig::default()
        }))
    }

    async fn publish(bus: &Bus, camera: &str, body: &'static [u8]) -> Published {
        bus.publish(
            StreamKind::Frames.subject(camera),
            vec![("camera".into(), camera.into())],
            Bytes::from_static(body),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn full_stream_drops_oldest_and_frames_go_newest_first() {
        let bus = bus(2, 3, Duration::from_secs(30));
        assert_eq!(publish(&bus, "a", b"1").await, Published::Stored);
        assert_eq!(publish(&bus, "a", b"2").await, Published::Stored);
        assert_eq!(
            publish(&bus, "a", b"3").await,
            Published::StoredDroppedOldest
        );
        let mut c = bus.consumer(StreamKind::Frames, "infer").await.unwrap();
        let d = c.next(Duration::from_millis(10)).await.unwrap();
        assert_eq!(&d.message().payload[..], b"3");
        assert_eq!(d.message().header("Camera"), Some("a"));
        d.ack().await.unwrap();
        let d = c.next(Duration::from_millis(10)).await.unwrap();
        assert_eq!(&d.message().payload[..], b"2");
        d.ack().await.unwrap();
        assert!(c.next(Duration::from_millis(10)).await.is_none());
    }

    #[tokio::test]
    async fn audio_goes_oldest_first() {
        let bus = bus(8, 3, Duration::from_secs(30));
        for body in [&b"1"[..], b"2", b"3"] {
            bus.publish(
                StreamKind::Audio.subject("a"),
                vec![("camera".into(), "a".into())],
                Bytes::from_static(body),
            )
            .await
            .unwrap();
        }
        let mut c = bus.consumer(StreamKind::Audio, "infer").await.unwrap();
        for want in [&b"1"[..], b"2", b"3"] {
            let d = c.next(Duration::from_millis(10)).await.unwrap();
            assert_eq!(&d.message().payload[..], want);
            d.ack().await.unwrap();
        }
    }

    #[tokio::test]
    async fn unacked_message_is_redelivered_then_dead_lettered() {
        let bus = bus(8, 2, Duration::from_millis(20));
        publish(&bus, "a", b"x").await;
        let mut c = bus.consumer(StreamKind::Frames, "infer").await.unwrap();
        let first = c.next(Duration::from_millis(10)).await.unwrap();
        assert_eq!(first.delivery_count(), 1);
        // Not acked: comes back after ack_wait.
        std::mem::forget(first);
        let second = c.next(Duration::from_millis(200)).await.unwrap();
        assert_eq!(second.delivery_count(), 2);
        second.nak("model failed").await.unwrap();
        assert!(c.next(Duration::from_millis(50)).await.is_none());
        let Bus::Memory(m) = &bus else {
            unreachable!("built as a memory bus")
        };
        let dead = m.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].subject, "panoptes.dlq.frames");
        assert_eq!(dead[0].header("error"), Some("model failed"));
        assert_eq!(m.pending(StreamKind::Frames), 0);
    }

    #[tokio::test]
    async fn waiting_consumer_wakes_on_publish() {
        let bus = bus(8, 3, Duration::from_secs(30));
        let mut c = bus.consumer(StreamKind::Frames, "infer").await.unwrap();
        let b2 = bus.clone();
        let t = tokio::spawn(async move { c.next(Duration::from_secs(5)).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        publish(&b2, "a", b"x").await;
        assert!(t.await.unwrap());
    }

    #[tokio::test]
    async fn bad_subject_is_refused() {
        let bus = bus(8, 3, Duration::from_secs(30));
        let e = bus
            .publish("frames.a".into(), vec![], Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(e, BusError::BadSubject { .. }));
    }
}
