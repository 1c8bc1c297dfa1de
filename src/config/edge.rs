//! `[edge]` and `[cluster]`: RTSP session behaviour, and edge nodes sharing cameras.

use std::time::Duration;

use serde::Deserialize;

/// Edge nodes sharing cameras.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id (default: `PANOPTES_NODE`, else the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// How often an edge node renews its membership.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat: Duration,
    /// A node that has not renewed for this long is gone and its cameras move.
    #[serde(default = "default_member_ttl", with = "humantime_serde")]
    pub member_ttl: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node: None,
            heartbeat: default_heartbeat(),
            member_ttl: default_member_ttl(),
        }
    }
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(2)
}
fn default_member_ttl() -> Duration {
    Duration::from_secs(6)
}

/// RTSP session behaviour.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Limit for DESCRIBE + SETUP + PLAY.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit for the first video frame after PLAY.
    #[serde(default = "default_first_frame_timeout", with = "humantime_serde")]
    pub first_frame_timeout: Duration,
    /// A streaming camera that sends no frame for this long is reconnected
    /// (a stalled RTSP server raises no error by itself).
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// First reconnect delay; doubles on each failure, with jitter.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Upper bound of the reconnect delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            first_frame_timeout: default_first_frame_timeout(),
            stall_timeout: default_stall_timeout(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_first_frame_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_stall_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
