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

pub mod insights;
pub mod qdrant;
pub mod s3;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use serde::Serialize;

pub use s3::S3Store;

use crate::config::{Config, StoreKind};

/// Object store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation on an object failed.
    #[error("object {key}: {source}")]
    Io {
        /// The object key.
        key: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A directory of the store (objects, spool) cannot be created.
    #[error("cannot create the directory {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An S3 request about one object (or listing prefix) failed.
    #[error("object {key}: {message}")]
    S3 {
        /// The object key (without the configured prefix), or the prefix listed.
        key: String,
        /// What S3 (or the connection to it) said; never holds credentials.
        message: String,
    },
    /// The configured bucket cannot be used (missing, access denied).
    #[error("S3 bucket \"{bucket}\" at {endpoint}: {message}")]
    Bucket {
        /// The bucket name.
        bucket: String,
        /// The endpoint, without any user info.
        endpoint: String,
        /// What went wrong and what to check.
        message: String,
    },
}

/// Where objects live, one variant per backend.
#[derive(Clone, Debug)]
pub enum ObjectStore {
    /// A directory on local disk.
    Local(LocalStore),
    /// An S3 (or S3-compatible) bucket, fed from a durable spool.
    S3(S3Store),
}

/// Objects as files under a root directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    spool: PathBuf,
    /// Clip names per day folder, so linking a page of insights to clips reads a folder
    /// once rather than once per insight.
    spans: Arc<SpanCache>,
}

/// `(start_ms, end_ms)` of the clips in one day folder, valid while the folder's mtime is
/// unchanged.
#[derive(Debug, Default)]
struct SpanCache(Mutex<HashMap<PathBuf, DaySpans>>);

/// A day folder's mtime when read, and its clips.
type DaySpans = (SystemTime, Arc<Vec<(i64, i64)>>);

/// Folders changed more recently than this are read afresh: a clip stored within the
/// same timestamp tick as the last read would not change the mtime the cache compares.
const SPAN_CACHE_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Day folders remembered at most (one per camera and day; old ones fall out).
const SPAN_CACHE_MAX: usize = 16_384;

impl SpanCache {
    fn day(&self, dir: &Path) -> Arc<Vec<(i64, i64)>> {
        let Ok(mtime) = std::fs::metadata(dir).and_then(|m| m.modified()) else {
            self.lock().remove(dir);
            return Arc::default();
        };
        if let Some((at, spans)) = self.lock().get(dir)
            && *at == mtime
        {
            return Arc::clone(spans);
        }
        let mut spans: Vec<(i64, i64)> = read_names(dir)
            .iter()
            .filter_map(|n| parse_clip_name(n))
            .collect();
        spans.sort_unstable();
        let spans = Arc::new(spans);
        let settled = mtime.elapsed().is_ok_and(|age| age >= SPAN_CACHE_SETTLE);
        if settled {
            let mut map = self.lock();
            if map.len() >= SPAN_CACHE_MAX {
                map.clear();
            }
            map.insert(dir.to_path_buf(), (mtime, Arc::clone(&spans)));
        }
        spans
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, DaySpans>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One clip, as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClipRecord {
    /// `<camera>-<start_ms>-<end_ms>`.
    pub id: String,
    /// Camera id.
    pub camera: String,
    /// First frame (RFC 3339).
    pub start: DateTime<Utc>,
    /// End of the last frame (RFC 3339): the next clip's start.
    pub end: DateTime<Utc>,
    /// Size in bytes.
    pub bytes: u64,
    /// Where to fetch it.
    pub url: String,
    /// The object key.
    pub key: String,
}

/// The object key of a clip.
pub fn clip_key(camera: &str, start_ms: i64, end_ms: i64) -> String {
    format!(
        "clips/{camera}/{}/{start_ms}-{end_ms}.mp4",
        date_of(start_ms)
    )
}

/// The object key of a snapshot.
pub fn snapshot_key(camera: &str, at_ms: i64) -> String {
    format!("snapshots/{camera}/{}/{at_ms}.jpg", date_of(at_ms))
}

fn date_of(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// Parses a clip id (`<camera>-<start_ms>-<end_ms>`) into its parts.
pub fn parse_clip_id(id: &str) -> Option<(&str, i64, i64)> {
    let mut it = id.rsplitn(3, '-');
    let end: i64 = it.next()?.parse().ok()?;
    let start: i64 = it.next()?.parse().ok()?;
    let camera = it.next()?;
    if camera.is_empty()
        || end < start
        || !camera
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return None;
    }
    Some((camera, start, end))
}

/// Longest clip the listing looks back for when a range starts mid-clip.
const MAX_CLIP_SPAN_MS: i64 = 3_600_000;

/// `(start_ms, end_ms)` from a clip's file name, `<start_ms>-<end_ms>.mp4`.
fn parse_clip_name(name: &str) -> Option<(i64, i64)> {
    let (a, b) = name.strip_suffix(".mp4")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `(camera, start_ms, end_ms)` from a clip key, `clips/<camera>/<yyyy-mm-dd>/<name>`.
fn parse_clip_key(key: &str) -> Option<(&str, i64, i64)> {
    let mut parts = key.strip_prefix("clips/")?.split('/');
    let (camera, _day, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || camera.is_empty() {
        return None;
    }
    let (start, end) = parse_clip_name(name)?;
    Some((camera, start, end))
}

/// Whether a clip `[start, end)` overlaps the range `[from_ms, to_ms)`.
fn overlaps(start: i64, end: i64, from_ms: i64, to_ms: i64) -> bool {
    end > from_ms && start < to_ms
}

/// The day folders (`yyyy-mm-dd`) that may hold clips overlapping `[from_ms, to_ms)`: a
/// clip lives under the day it started, which may be up to [`MAX_CLIP_SPAN_MS`] earlier.
fn clip_days(from_ms: i64, to_ms: i64) -> Vec<String> {
    let mut d = day(from_ms.saturating_sub(MAX_CLIP_SPAN_MS));
    let last = day(to_ms);
    let mut out = Vec::new();
    while d <= last {
        out.push(d.format("%Y-%m-%d").to_string());
        d += ChronoDuration::days(1);
    }
    out
}

/// Whether a day folder (`yyyy-mm-dd`) may hold objects older than `cutoff_ms`.
fn day_may_expire(folder: &str, cutoff_ms: i64) -> bool {
    NaiveDate::parse_from_str(folder, "%Y-%m-%d").is_ok_and(|d| d <= day(cutoff_ms))
}

/// Retention rule for an object's file name: a clip (`<start>-<end>.mp4`) expires when it
/// ended before `cutoff_ms`, a snapshot (`<ms>.jpg`) when it was taken before it.
fn expired(name: &str, cutoff_ms: i64) -> bool {
    let stem = name.split('.').next().unwrap_or_default();
    stem.rsplit('-')
        .next()
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|t| t < cutoff_ms)
}

fn clip_record(camera: &str, start: i64, end: i64, bytes: u64) -> ClipRecord {
    let id = format!("{camera}-{start}-{end}");
    ClipRecord {
        url: format!("/v1/clips/{id}"),
        key: clip_key(camera, start, end),
        id,
        camera: camera.to_string(),
        start: DateTime::from_timestamp_millis(start).unwrap_or_default(),
        end: DateTime::from_timestamp_millis(end).unwrap_or_default(),
        bytes,
    }
}

/// Oldest first, then by camera.
fn sort_clips(clips: &mut [ClipRecord]) {
    clips.sort_by(|a, b| a.start.cmp(&b.start).then(a.camera.cmp(&b.camera)));
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
        let root = data_dir.join("objects");
        let spool = data_dir.join("spool");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&spool)?;
        Ok(ObjectStore::Local(LocalStore {
            root,
            spool,
            spans: Arc::default(),
        }))
    }

    /// A directory for files being written before they are stored.
    pub fn spool_dir(&self) -> &Path {
        match self {
            ObjectStore::Local(s) => &s.spool,
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

impl LocalStore {
    fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        let dest = self.root.join(key);
        let io = |source| StoreError::Io {
            key: key.to_string(),
            source,
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::rename(file, &dest).map_err(io)
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        let p = self.root.join(key);
        p.is_file().then_some(p)
    }

    fn clip_spans(&self, camera: &str, from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
        let root = self.root.join("clips").join(camera);
        let mut out: Vec<(i64, i64)> = clip_days(from_ms, to_ms)
            .iter()
            .flat_map(|d| {
                let day = self.spans.day(&root.join(d));
                day.iter()
                    .copied()
                    .filter(|&(a, b)| overlaps(a, b, from_ms, to_ms))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Emptied day folders go too.
    fn delete_before(&self, cutoff_ms: i64) -> usize {
        let mut deleted = 0;
        for top in ["clips", "snapshots"] {
            let root = self.root.join(top);
            for cam in read_names(&root) {
                for d in read_names(&root.join(&cam)) {
                    if !day_may_expire(&d, cutoff_ms) {
                        continue;
                    }
                    let dir = root.join(&cam).join(&d);
                    for name in read_names(&dir) {
                        if expired(&name, cutoff_ms)
                            && std::fs::remove_file(dir.join(&name)).is_ok()
                        {
                            deleted += 1;
                        }
                    }
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        deleted
    }

    fn list_clips(&self, camera: Option<&str>, from_ms: i64, to_ms: i64) -> Vec<ClipRecord> {
        let clips_root = self.root.join("clips");
        let cameras: Vec<String> = match camera {
            Some(c) => vec![c.to_string()],
            None => read_names(&clips_root),
        };
        let days = clip_days(from_ms, to_ms);
        let mut out = Vec::new();
        for cam in cameras {
            for d in &days {
                let dir = clips_root.join(&cam).join(d);
                for name in read_names(&dir) {
                    let Some((start, end)) = parse_clip_name(&name) else {
                        continue;
                    };
                    if !overlaps(start, end, from_ms, to_ms) {
                        continue;
                    }
                    let bytes = std::fs::metadata(dir.join(&name))
                        .map(|m| m.len())
                        .unwrap_or(0);
                    out.push(clip_record(&cam, start, end, bytes));
                }
            }
        }
        sort_clips(&mut out);
        out
    }
}

fn day(ms: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .date_naive()
}

fn read_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_ids_parse_back() {
        assert_eq!(
            parse_clip_id("front-door-1700000000000-1700000010000"),
            Some(("front-door", 1_700_000_000_000, 1_700_000_010_000))
        );
        assert_eq!(parse_clip_id("x-2-1"), None);
        assert_eq!(parse_clip_id("../etc-1-2"), None);
        assert_eq!(parse_clip_id("1-2"), None);
    }

    #[test]
    fn clip_keys_and_names_parse_back() {
        let key = clip_key("front-door", 1_700_000_000_000, 1_700_000_010_000);
        assert_eq!(
            parse_clip_key(&key),
            Some(("front-door", 1_700_000_000_000, 1_700_000_010_000))
        );
        assert_eq!(parse_clip_key(&snapshot_key("cam", 5)), None);
        assert_eq!(parse_clip_key("clips/cam/2023-11-14/x/1-2.mp4"), None);
        assert_eq!(parse_clip_name("1-2.mp4"), Some((1, 2)));
        assert_eq!(parse_clip_name("1-2.mp4.part"), None);
    }

    #[test]
    fn retention_rule_reads_the_end_of_clips_and_the_time_of_snapshots() {
        assert!(expired("100-200.mp4", 201));
        assert!(!expired("100-200.mp4", 200));
        assert!(expired("150.jpg", 151));
        assert!(!expired("150.jpg", 150));
        assert!(!expired("notes.txt", i64::MAX));
        assert!(day_may_expire("2023-11-14", 1_700_000_000_000));
        assert!(!day_may_expire("2023-11-15", 1_700_000_000_000));
        assert!(!day_may_expire("lost+found", i64::MAX));
    }

    #[test]
    fn listing_finds_overlapping_clips_across_days() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::local(dir.path()).unwrap();
        // 2023-11-14T22:13:20Z and one just after midnight.
        let a = 1_700_000_000_000;
        let b = 1_700_006_400_000;
        for (s, e) in [(a, a + 10_000), (a + 10_000, a + 20_000), (b, b + 10_000)] {
            store.put_bytes(&clip_key("cam", s, e), b"mp4").unwrap();
        }
        assert_eq!(
            store.list_clips(Some("cam"), a + 5_000, a + 15_000).len(),
            2
        );
        assert_eq!(store.list_clips(Some("cam"), a, b + 1).len(), 3);
        assert_eq!(store.list_clips(None, b, b + 1).len(), 1);
        assert_eq!(store.list_clips(Some("other"), a, b).len(), 0);
        let c = &store.list_clips(Some("cam"), a, a + 1)[0];
        assert_eq!(c.id, format!("cam-{a}-{}", a + 10_000));
        assert!(store.local_path(&c.key).is_some());
        assert_eq!(
            store.clip_spans("cam", a + 5_000, b + 1),
            vec![(a, a + 10_000), (a + 10_000, a + 20_000), (b, b + 10_000)]
        );
        assert_eq!(store.pending_uploads(), 0);
        store.put_bytes(&snapshot_key("cam", a), b"jpg").unwrap();
        assert_eq!(store.delete_before(a + 10_001), 2);
        assert_eq!(store.list_clips(Some("cam"), a, b + 1).len(), 2);
    }

    #[test]
    fn remembered_clip_names_follow_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::local(dir.path()).unwrap();
        let a = 1_700_000_000_000;
        let first = clip_key("cam", a, a + 10_000);
        store.put_bytes(&first, b"mp4").unwrap();
        let ObjectStore::Local(local) = &store else {
            unreachable!()
        };
        let day = local.local_path(&first).unwrap();
        let day = day.parent().unwrap();
        let age = |d: &Path, secs| {
            std::fs::File::open(d)
                .unwrap()
                .set_modified(SystemTime::now() - std::time::Duration::from_secs(secs))
                .unwrap();
        };
        // A settled folder is read once and remembered.
        age(day, 60);
        assert_eq!(store.clip_spans("cam", a, a + 1), vec![(a, a + 10_000)]);
        assert_eq!(local.spans.lock().len(), 1);
        // A clip stored since changes the folder, so the next answer has it.
        store
            .put_bytes(&clip_key("cam", a + 10_000, a + 20_000), b"mp4")
            .unwrap();
        assert_eq!(
            store.clip_spans("cam", a, a + 30_000),
            vec![(a, a + 10_000), (a + 10_000, a + 20_000)]
        );
        // And so does retention.
        age(day, 60);
        assert_eq!(store.clip_spans("cam", a, a + 30_000).len(), 2);
        assert_eq!(store.delete_before(a + 10_001), 1);
        assert_eq!(
            store.clip_spans("cam", a, a + 30_000),
            vec![(a + 10_000, a + 20_000)]
        );
    }
}
