//! `[[cameras]]`: the cameras a deployment watches.

use std::time::Duration;

use serde::Deserialize;

use super::media::{RecordingConfig, SamplingConfig, default_true};
use super::secret::{Secret, redact_url};

/// RTP transport.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// RTP interleaved in the RTSP TCP connection (works through NAT and firewalls).
    #[default]
    Tcp,
    /// RTP over UDP.
    Udp,
}

/// One camera.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique id: letters, digits, `-` and `_` (it becomes part of bus subjects and object keys).
    pub id: String,
    /// `rtsp://host[:port]/path`, without credentials.
    pub url: String,
    /// RTSP user name; use `${ENV}` to keep it out of the file.
    #[serde(default)]
    pub username: Option<String>,
    /// RTSP password; use `${ENV}` to keep it out of the file.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub transport: Transport,
    /// Overrides `sampling.interval` for this camera.
    #[serde(default, with = "humantime_serde")]
    pub sample_interval: Option<Duration>,
    /// Overrides `recording.enabled` for this camera.
    #[serde(default)]
    pub record: Option<bool>,
    /// Decode the camera's audio and publish it.
    #[serde(default = "default_true")]
    pub audio: bool,
    /// A disabled camera is kept in the config but not connected.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pins the camera to this edge node (cluster); otherwise the live nodes share cameras.
    #[serde(default)]
    pub node: Option<String>,
}

impl CameraConfig {
    /// The sample interval in force for this camera.
    pub fn sample_interval(&self, sampling: &SamplingConfig) -> Duration {
        self.sample_interval.unwrap_or(sampling.interval)
    }

    /// Whether this camera records clips.
    pub fn records(&self, recording: &RecordingConfig) -> bool {
        self.record.unwrap_or(recording.enabled)
    }

    /// The URL with any user info removed, safe to show.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}
