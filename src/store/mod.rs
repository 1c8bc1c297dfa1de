//! Object storage for clips and snapshots.
//!
//! Keys are time-ordered (`clips/<camera>/<yyyy-mm-dd>/<start_ms>-<end_ms>.mp4`) so a
//! camera's clips for a time range are found by listing a few date prefixes, without a
//! database. [`ObjectStore::Local`] (a directory under `data_dir`) is the embedded default.
//! Writers produce files in the spool first and hand them over whole, so a reader never
//! sees half a clip.

pub mod insights;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use serde::Serialize;

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
}

/// Where objects live, one variant per backend.
#[derive(Clone, Debug)]
pub enum ObjectStore {
    /// A directory on local disk.
    Local(LocalStore),
}

/// Objects as files under a root directory.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    spool: PathBuf,
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

impl ObjectStore {
    /// The embedded store under `data_dir`.
    pub fn local(data_dir: &Path) -> std::io::Result<ObjectStore> {
        let root = data_dir.join("objects");
        let spool = data_dir.join("spool");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&spool)?;
        Ok(ObjectStore::Local(LocalStore { root, spool }))
    }

    /// A directory for files being written before they are stored.
    pub fn spool_dir(&self) -> &Path {
        match self {
            ObjectStore::Local(s) => &s.spool,
        }
    }

    /// Stores a finished spool file under `key`; the spool file is gone afterwards.
    pub fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        match self {
            ObjectStore::Local(s) => {
                let dest = s.root.join(key);
                let io = |source| StoreError::Io {
                    key: key.to_string(),
                    source,
                };
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                std::fs::rename(file, &dest).map_err(io)
            }
        }
    }

    /// Stores bytes under `key` (written aside, then renamed into place).
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

    /// A local file holding the object, for serving with HTTP Range.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        match self {
            ObjectStore::Local(s) => {
                let p = s.root.join(key);
                p.is_file().then_some(p)
            }
        }
    }

    /// `(start_ms, end_ms)` of the clips of `camera` overlapping `[from_ms, to_ms)`, sorted by
    /// start: names only, no file metadata, for linking insights to their clips.
    pub fn clip_spans(&self, camera: &str, from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
        let ObjectStore::Local(s) = self;
        let root = s.root.join("clips").join(camera);
        let mut d = day(from_ms.saturating_sub(MAX_CLIP_SPAN_MS));
        let last = day(to_ms);
        let mut out = Vec::new();
        while d <= last {
            for name in read_names(&root.join(d.format("%Y-%m-%d").to_string())) {
                let span = name
                    .strip_suffix(".mp4")
                    .and_then(|n| n.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)));
                if let Some((a, b)) = span
                    && b > from_ms
                    && a < to_ms
                {
                    out.push((a, b));
                }
            }
            d += ChronoDuration::days(1);
        }
        out.sort_unstable();
        out
    }

    /// Deletes clips that ended and snapshots taken before `cutoff_ms` (retention); returns
    /// how many files went. Emptied day folders go too.
    pub fn delete_before(&self, cutoff_ms: i64) -> usize {
        let ObjectStore::Local(s) = self;
        let cutoff_day = day(cutoff_ms);
        let mut deleted = 0;
        for top in ["clips", "snapshots"] {
            let root = s.root.join(top);
            for cam in read_names(&root) {
                for d in read_names(&root.join(&cam)) {
                    let Ok(date) = NaiveDate::parse_from_str(&d, "%Y-%m-%d") else {
                        continue;
                    };
                    if date > cutoff_day {
                        continue;
                    }
                    let dir = root.join(&cam).join(&d);
                    for name in read_names(&dir) {
                        // clips: <start>-<end>.mp4 (ended at <end>); snapshots: <ms>.jpg.
                        let stem = name.split('.').next().unwrap_or_default();
                        let last = stem.rsplit('-').next().and_then(|v| v.parse::<i64>().ok());
                        if last.is_some_and(|t| t < cutoff_ms)
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

    /// Clips of `camera` (or of every camera) overlapping `[from_ms, to_ms)`, oldest first.
    pub fn list_clips(&self, camera: Option<&str>, from_ms: i64, to_ms: i64) -> Vec<ClipRecord> {
        let ObjectStore::Local(s) = self;
        let clips_root = s.root.join("clips");
        let cameras: Vec<String> = match camera {
            Some(c) => vec![c.to_string()],
            None => read_names(&clips_root),
        };
        let first_day = day(from_ms.saturating_sub(MAX_CLIP_SPAN_MS));
        let last_day = day(to_ms);
        let mut out = Vec::new();
        for cam in cameras {
            let mut d = first_day;
            while d <= last_day {
                let dir = clips_root.join(&cam).join(d.format("%Y-%m-%d").to_string());
                for name in read_names(&dir) {
                    let Some((start, end)) = name
                        .strip_suffix(".mp4")
                        .and_then(|n| n.split_once('-'))
                        .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
                    else {
                        continue;
                    };
                    if end <= from_ms || start >= to_ms {
                        continue;
                    }
                    let bytes = std::fs::metadata(dir.join(&name))
                        .map(|m| m.len())
                        .unwrap_or(0);
                    let id = format!("{cam}-{start}-{end}");
                    out.push(ClipRecord {
                        url: format!("/v1/clips/{id}"),
                        key: clip_key(&cam, start, end),
                        id,
                        camera: cam.clone(),
                        start: DateTime::from_timestamp_millis(start).unwrap_or_default(),
                        end: DateTime::from_timestamp_millis(end).unwrap_or_default(),
                        bytes,
                    });
                }
                d += ChronoDuration::days(1);
            }
        }
        out.sort_by(|a, b| a.start.cmp(&b.start).then(a.camera.cmp(&b.camera)));
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
    }
}
