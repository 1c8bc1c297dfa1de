//! Object storage for clips and snapshots.
//!
//! Keys are time-ordered (`clips/<camera>/<yyyy-mm-dd>/<start_ms>-<end_ms>.mp4`) so a
//! camera's clips for a time range are found by listing a few date prefixes, without a
//! database. [`ObjectStore::Local`] (a directory under `data_dir`) is the embedded default;
//! [`ObjectStore::S3`] keeps objects in a bucket and uploads from a durable spool, so an
//! outage of the object store loses nothing (see [`s3`]).
//! Writers produce files in the spool first and hand them over whole, so a reader never
//! sees half a clip.
//!
//! The methods are synchronous: callers run them on `tokio::task::spawn_blocking` threads
//! (the S3 backend drives its async client from there).

mod common;
mod local;
pub mod s3;

use std::path::{Path, PathBuf};

pub use common::{ClipRecord, StoreError, clip_key, parse_clip_id, snapshot_key};
pub use local::LocalStore;
pub use s3::S3Store;

use crate::config::{Config, StoreKind};

/// Where objects live, one variant per backend.
#[derive(Clone, Debug)]
pub enum ObjectStore {
    /// A directory on local disk.
    Local(LocalStore),
    /// An S3 (or S3-compatible) bucket, fed from a durable spool.
    S3(S3Store),
}

impl ObjectStore {
    /// The store `config.store` asks for: the local directory under `data_dir`, or S3
    /// (which checks the bucket and starts the background uploader; see [`S3Store::build`]).
    /// Must be called inside a tokio runtime.
    pub async fn build(config: &Config) -> Result<ObjectStore, StoreError> {
        match config.store.kind {
            StoreKind::Local => {
                ObjectStore::local(&config.data_dir).map_err(|source| StoreError::Dir {
                    path: config.data_dir.clone(),
                    source,
                })
            }
            StoreKind::S3 => Ok(ObjectStore::S3(
                S3Store::build(&config.store.s3, &config.data_dir).await?,
            )),
        }
    }

    /// The embedded store under `data_dir`.
    pub fn local(data_dir: &Path) -> std::io::Result<ObjectStore> {
        Ok(ObjectStore::Local(LocalStore::open(data_dir)?))
    }

    /// A directory for files being written before they are stored.
    pub fn spool_dir(&self) -> &Path {
        match self {
            ObjectStore::Local(s) => s.spool_dir(),
            ObjectStore::S3(s) => s.spool_dir(),
        }
    }

    /// Stores a finished spool file under `key`; the spool file is gone afterwards. With S3
    /// the file is kept in the spool until an upload succeeds, so `Ok` means "durably
    /// accepted", not necessarily "in the bucket" (see [`ObjectStore::pending_uploads`]).
    pub fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        match self {
            ObjectStore::Local(s) => s.put_file(key, file),
            ObjectStore::S3(s) => s.put_file(key, file),
        }
    }

    /// Stores bytes under `key` (written aside, then handed over like a file).
    pub fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self
            .spool_dir()
            .join(format!("{}.part", key.replace('/', "_")));
        std::fs::write(&tmp, bytes).map_err(|source| StoreError::Io {
            key: key.to_string(),
            source,
        })?;
        self.put_file(key, &tmp)
    }

    /// A local file holding the object, for serving with HTTP Range: the stored file for the
    /// local store; for S3 the spooled copy while the object still waits to upload, else
    /// `None` (use [`ObjectStore::presigned_url`]).
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        match self {
            ObjectStore::Local(s) => s.local_path(key),
            ObjectStore::S3(s) => s.local_path(key),
        }
    }

    /// A time-limited URL (`store.s3.presign_ttl`) from which a client can GET the object
    /// directly. `None` for the local store, for an S3 object still in the spool (serve
    /// [`ObjectStore::local_path`]) and for one the bucket does not have.
    pub async fn presigned_url(&self, key: &str) -> Option<String> {
        match self {
            ObjectStore::Local(_) => None,
            ObjectStore::S3(s) => s.presigned_url(key).await,
        }
    }

    /// Objects accepted by `put_file`/`put_bytes` that are not in the object store yet
    /// (always 0 for the local store).
    pub fn pending_uploads(&self) -> usize {
        match self {
            ObjectStore::Local(_) => 0,
            ObjectStore::S3(s) => s.pending_uploads(),
        }
    }

    /// `(start_ms, end_ms)` of the clips of `camera` overlapping `[from_ms, to_ms)`, sorted by
    /// start: names only, no file metadata, for linking insights to their clips.
    pub fn clip_spans(&self, camera: &str, from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
        match self {
            ObjectStore::Local(s) => s.clip_spans(camera, from_ms, to_ms),
            ObjectStore::S3(s) => s.clip_spans(camera, from_ms, to_ms),
        }
    }

    /// Deletes clips that ended and snapshots taken before `cutoff_ms` (retention); returns
    /// how many objects went.
    pub fn delete_before(&self, cutoff_ms: i64) -> usize {
        match self {
            ObjectStore::Local(s) => s.delete_before(cutoff_ms),
            ObjectStore::S3(s) => s.delete_before(cutoff_ms),
        }
    }

    /// Clips of `camera` (or of every camera) overlapping `[from_ms, to_ms)`, oldest first.
    pub fn list_clips(&self, camera: Option<&str>, from_ms: i64, to_ms: i64) -> Vec<ClipRecord> {
        match self {
            ObjectStore::Local(s) => s.list_clips(camera, from_ms, to_ms),
            ObjectStore::S3(s) => s.list_clips(camera, from_ms, to_ms),
        }
    }
}
