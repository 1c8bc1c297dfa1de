//! `[bus]`: the message bus between roles, in process or NATS JetStream.

use std::time::Duration;

use serde::Deserialize;

use super::secret::Secret;

/// The message bus.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `memory`: in-process channels (the embedded default).
    #[serde(default)]
    pub kind: BusKind,
    /// Frames kept waiting for inference; when full the oldest frame is dropped and counted.
    #[serde(default = "default_frames_capacity")]
    pub frames_capacity: usize,
    /// Audio chunks kept waiting (2048 chunks of 0.5 s hold 10 s of 100 cameras' audio);
    /// when full the oldest is dropped and counted.
    #[serde(default = "default_audio_capacity")]
    pub audio_capacity: usize,
    /// Deliveries of one message before it goes to the dead-letter subject.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// How long a delivered message may stay unacknowledged before it is redelivered.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// NATS server(s) for `kind = "nats"`, comma-separated: `nats://host:4222`.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// NATS user; use `${ENV}`.
    #[serde(default)]
    pub username: Option<String>,
    /// NATS password; use `${ENV}`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// NATS token; use `${ENV}`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// JetStream FRAMES stream: frames older than this are discarded unread.
    #[serde(default = "default_frames_max_age", with = "humantime_serde")]
    pub frames_max_age: Duration,
    /// JetStream FRAMES stream: bytes kept; the oldest frames are discarded beyond it.
    #[serde(default = "default_frames_max_bytes")]
    pub frames_max_bytes: i64,
    /// JetStream INSIGHTS and CLIPS streams: how long records stay on the bus.
    #[serde(default = "default_records_max_age", with = "humantime_serde")]
    pub records_max_age: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::default(),
            frames_capacity: default_frames_capacity(),
            audio_capacity: default_audio_capacity(),
            max_deliver: default_max_deliver(),
            ack_wait: default_ack_wait(),
            url: default_nats_url(),
            username: None,
            password: None,
            token: None,
            frames_max_age: default_frames_max_age(),
            frames_max_bytes: default_frames_max_bytes(),
            records_max_age: default_records_max_age(),
        }
    }
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_frames_max_age() -> Duration {
    Duration::from_secs(120)
}
fn default_frames_max_bytes() -> i64 {
    1 << 30
}
fn default_records_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_frames_capacity() -> usize {
    512
}
fn default_audio_capacity() -> usize {
    2048
}
fn default_max_deliver() -> u32 {
    5
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

/// Bus backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process bounded queues.
    #[default]
    Memory,
    /// NATS JetStream (`bus.url`).
    Nats,
}
