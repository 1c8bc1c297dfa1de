//! What both object store backends share: the key layout (time-ordered, so a camera's clips
//! for a range are found by listing a few day prefixes), the clip record, the retention rule
//! and the errors.

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

pub(super) fn date_of(ms: i64) -> String {
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
pub(super) const MAX_CLIP_SPAN_MS: i64 = 3_600_000;

/// `(start_ms, end_ms)` from a clip's file name, `<start_ms>-<end_ms>.mp4`.
pub(super) fn parse_clip_name(name: &str) -> Option<(i64, i64)> {
    let (a, b) = name.strip_suffix(".mp4")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `(camera, start_ms, end_ms)` from a clip key, `clips/<camera>/<yyyy-mm-dd>/<name>`.
pub(super) fn parse_clip_key(key: &str) -> Option<(&str, i64, i64)> {
    let mut parts = key.strip_prefix("clips/")?.split('/');
    let (camera, _day, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || camera.is_empty() {
        return None;
    }
    let (start, end) = parse_clip_name(name)?;
    Some((camera, start, end))
}

/// Whether a clip `[start, end)` overlaps the range `[from_ms, to_ms)`.
pub(super) fn overlaps(start: i64, end: i64, from_ms: i64, to_ms: i64) -> bool {
    end > from_ms && start < to_ms
}

/// The day folders (`yyyy-mm-dd`) that may hold clips overlapping `[from_ms, to_ms)`: a
/// clip lives under the day it started, which may be up to [`MAX_CLIP_SPAN_MS`] earlier.
pub(super) fn clip_days(from_ms: i64, to_ms: i64) -> Vec<String> {
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
pub(super) fn day_may_expire(folder: &str, cutoff_ms: i64) -> bool {
    NaiveDate::parse_from_str(folder, "%Y-%m-%d").is_ok_and(|d| d <= day(cutoff_ms))
}

/// Retention rule for an object's file name: a clip (`<start>-<end>.mp4`) expires when it
/// ended before `cutoff_ms`, a snapshot (`<ms>.jpg`) when it was taken before it.
pub(super) fn expired(name: &str, cutoff_ms: i64) -> bool {
    let stem = name.split('.').next().unwrap_or_default();
    stem.rsplit('-')
        .next()
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|t| t < cutoff_ms)
}

pub(super) fn clip_record(camera: &str, start: i64, end: i64, bytes: u64) -> ClipRecord {
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
pub(super) fn sort_clips(clips: &mut [ClipRecord]) {
    clips.sort_by(|a, b| a.start.cmp(&b.start).then(a.camera.cmp(&b.camera)));
}

pub(super) fn day(ms: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .date_naive()
}

pub(super) fn read_names(dir: &Path) -> Vec<String> {
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
}
