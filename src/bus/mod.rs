//! The bus between roles: subjects `panoptes.<kind>.<camera>`, bounded streams, pull
//! consumers with explicit acknowledgement, redelivery and a dead-letter subject.
//!
//! [`Bus::Memory`] is the embedded default: in-process queues with the same semantics a
//! JetStream deployment has, so the all-in-one process runs the same code paths.
//! [`Bus::Nats`] is NATS JetStream, for clusters.

mod memory;
pub mod nats;

mod message;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{BusKind, Config};

pub use memory::MemoryBus;
pub use message::{BusError, Headers, Message, Published, StreamKind};
pub use nats::NatsBus;

/// The bus, one variant per backend.
#[derive(Clone)]
pub enum Bus {
    /// In-process bounded queues.
    Memory(MemoryBus),
    /// NATS JetStream.
    Nats(Box<NatsBus>),
}

impl Bus {
    /// Builds the configured backend; for NATS, connects (waiting for the server) and puts
    /// the streams in place.
    pub async fn connect(config: &Config) -> Result<Bus, BusError> {
        match config.bus.kind {
            BusKind::Memory => Ok(Bus::Memory(MemoryBus::new(&config.bus))),
            BusKind::Nats => {
                let max_frame =
                    nats::max_frame_bytes(config.sampling.max_width, config.sampling.max_height);
                Ok(Bus::Nats(Box::new(
                    NatsBus::connect(&config.bus, max_frame).await?,
                )))
            }
        }
    }

    /// Publishes one message; never blocks on a full stream (the oldest message gives way).
    pub async fn publish(
        &self,
        subject: String,
        headers: Headers,
        payload: Bytes,
    ) -> Result<Published, BusError> {
        match self {
            Bus::Memory(b) => b.publish(subject, headers, payload),
            Bus::Nats(b) => b.publish(subject, headers, payload).await,
        }
    }

    /// A pull consumer on one stream. Consumers with the same `durable` name share the work.
    pub async fn consumer(&self, stream: StreamKind, durable: &str) -> Result<Consumer, BusError> {
        match self {
            Bus::Memory(b) => Ok(Consumer::Memory(b.consumer(stream, durable))),
            Bus::Nats(b) => Ok(Consumer::Nats(Box::new(b.consumer(stream, durable).await?))),
        }
    }

    /// Every message published on `stream` from now on, for this process (live feeds).
    /// In process, the one feed is a consumer like any other.
    pub async fn live(&self, stream: StreamKind) -> Result<Consumer, BusError> {
        match self {
            Bus::Memory(b) => Ok(Consumer::Memory(b.consumer(stream, "live"))),
            Bus::Nats(b) => Ok(Consumer::Nats(Box::new(b.live(stream).await?))),
        }
    }

    /// Whether the bus can take messages (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        match self {
            Bus::Memory(_) => true,
            Bus::Nats(b) => b.is_connected(),
        }
    }

    /// Waits up to `timeout` until everything published, acked or nak'ed has left this
    /// process; called before exiting.
    pub async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        match self {
            Bus::Memory(_) => Ok(()),
            Bus::Nats(b) => b.flush(timeout).await,
        }
    }
}

/// A pull consumer.
pub enum Consumer {
    /// In-process.
    Memory(memory::MemoryConsumer),
    /// JetStream.
    Nats(Box<nats::NatsConsumer>),
}

impl Consumer {
    /// Waits up to `timeout` for the next message.
    pub async fn next(&mut self, timeout: Duration) -> Option<Delivery> {
        match self {
            Consumer::Memory(c) => c.next(timeout).await.map(Delivery::Memory),
            Consumer::Nats(c) => c.next(timeout).await.map(|d| Delivery::Nats(Box::new(d))),
        }
    }

    /// Stops consuming: what was received but not taken goes back to the bus for another
    /// worker at once. Returns how many messages went back. (The in-process bus hands out
    /// one message at a time, so it holds none.)
    pub async fn release(self) -> usize {
        match self {
            Consumer::Memory(_) => 0,
            Consumer::Nats(c) => c.release().await,
        }
    }
}

/// A delivered message that must be acknowledged (or rejected) by its consumer.
pub enum Delivery {
    /// In-process.
    Memory(memory::MemoryDelivery),
    /// JetStream.
    Nats(Box<nats::NatsDelivery>),
}

impl Delivery {
    /// The message.
    pub fn message(&self) -> &Message {
        match self {
            Delivery::Memory(d) => d.message(),
            Delivery::Nats(d) => d.message(),
        }
    }

    /// How many times this message has been delivered, this time included.
    pub fn delivery_count(&self) -> u32 {
        match self {
            Delivery::Memory(d) => d.delivery_count(),
            Delivery::Nats(d) => d.delivery_count(),
        }
    }

    /// The work is done: the message is removed for good.
    pub async fn ack(self) -> Result<(), BusError> {
        match self {
            Delivery::Memory(d) => {
                d.ack();
                Ok(())
            }
            Delivery::Nats(d) => d.ack().await,
        }
    }

    /// The work failed: redeliver, or dead-letter it once `max_deliver` is reached.
    pub async fn nak(self, error: &str) -> Result<(), BusError> {
        match self {
            Delivery::Memory(d) => {
                d.nak(error);
                Ok(())
            }
            Delivery::Nats(d) => d.nak(error).await,
        }
    }
}
