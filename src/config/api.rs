//! `[api]`: the HTTP API.

use std::net::SocketAddr;

use serde::Deserialize;

use super::secret::Secret;

/// The HTTP API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Bearer API keys; when any is set, `/v1/*` and `/metrics` need one (`${ENV}` them).
    #[serde(default)]
    pub keys: Vec<Secret>,
    /// Requests per second one client address may make (after a burst of twice that);
    /// `0` turns the limit off.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
            keys: Vec::new(),
            rate_limit: default_rate_limit(),
            max_body: default_max_body(),
        }
    }
}

fn default_rate_limit() -> u32 {
    200
}
fn default_max_body() -> usize {
    64 * 1024
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
