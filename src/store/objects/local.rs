//! The embedded object store: objects as files under `data_dir/objects`, written into
//! `data_dir/spool` first and renamed into place whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::common::{
    ClipRecord, StoreError, clip_days, clip_record, day_may_expire, expired, overlaps,
    parse_clip_name, read_names, sort_clips,
};

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

impl LocalStore {
    /// The store under `data_dir` (`objects/` and `spool/`, created if missing).
    pub fn open(data_dir: &Path) -> std::io::Result<LocalStore> {
        let root = data_dir.join("objects");
        let spool = data_dir.join("spool");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&spool)?;
        Ok(LocalStore {
            root,
            spool,
            spans: Arc::default(),
        })
    }

    /// Where files are written before they are stored.
    pub(super) fn spool_dir(&self) -> &Path {
        &self.spool
    }

    pub(super) fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
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

    pub(super) fn local_path(&self, key: &str) -> Option<PathBuf> {
        let p = self.root.join(key);
        p.is_file().then_some(p)
    }

    pub(super) fn clip_spans(&self, camera: &str, from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
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
    pub(super) fn delete_before(&self, cutoff_ms: i64) -> usize {
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

    pub(super) fn list_clips(
        &self,
        camera: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Vec<ClipRecord> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::objects::{ObjectStore, clip_key, snapshot_key};

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
