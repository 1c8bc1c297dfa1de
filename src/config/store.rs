//! `[store]` and `[insights]`: where clips and snapshots, and insights, are kept.

use std::time::Duration;

use serde::Deserialize;

use super::secret::Secret;

/// Clip and snapshot storage.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `local` (a directory under `data_dir`, the default) or `s3`.
    #[serde(default)]
    pub kind: StoreKind,
    /// S3 settings for `kind = "s3"`.
    #[serde(default)]
    pub s3: S3Config,
}

/// Object store backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Files under `data_dir/objects`.
    #[default]
    Local,
    /// S3 or any S3-compatible store.
    S3,
}

/// S3 (or S3-compatible) object storage.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name.
    #[serde(default)]
    pub bucket: String,
    /// Region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Endpoint of an S3-compatible server (`http://minio:9000`); AWS when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub path_style: bool,
    /// Key prefix inside the bucket.
    #[serde(default)]
    pub prefix: String,
    /// Access key id; the standard AWS credential chain is used when unset.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key; use `${ENV}`.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Objects at or above this size are uploaded in parts.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: u64,
    /// How long a presigned clip URL stays valid.
    #[serde(default = "default_presign_ttl", with = "humantime_serde")]
    pub presign_ttl: Duration,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            region: default_region(),
            endpoint: None,
            path_style: false,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            multipart_threshold: default_multipart_threshold(),
            presign_ttl: default_presign_ttl(),
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_multipart_threshold() -> u64 {
    16 << 20
}
fn default_presign_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// Insight storage.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InsightsConfig {
    /// `sqlite` (under `data_dir`, the default) or `qdrant`.
    #[serde(default)]
    pub kind: InsightsKind,
    /// Qdrant gRPC URL for `kind = "qdrant"`.
    #[serde(default = "default_qdrant_url")]
    pub url: String,
    /// Qdrant API key; use `${ENV}`.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Qdrant collection.
    #[serde(default = "default_collection")]
    pub collection: String,
}

impl Default for InsightsConfig {
    fn default() -> Self {
        Self {
            kind: InsightsKind::default(),
            url: default_qdrant_url(),
            api_key: None,
            collection: default_collection(),
        }
    }
}

fn default_qdrant_url() -> String {
    "http://127.0.0.1:6334".into()
}
fn default_collection() -> String {
    "panoptes_insights".into()
}

/// Insight store backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InsightsKind {
    /// SQLite + FTS5 + in-memory vectors under `data_dir`.
    #[default]
    Sqlite,
    /// A Qdrant server.
    Qdrant,
}
