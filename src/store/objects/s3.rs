//! Clips and snapshots in S3 or an S3-compatible store (cluster mode).
//!
//! Uploads are durable. [`S3Store::put_file`] first moves the finished file into
//! `data_dir/spool/pending/`, named after its percent-encoded object key, then uploads it
//! (PutObject, or a multipart upload in 8 MiB parts from `multipart_threshold` on, aborted
//! if a part fails) and deletes the local copy only once S3 has confirmed it. When the
//! upload fails the file stays and `put_file` still returns `Ok`: the object is safe in the
//! spool. A background task started by [`S3Store::build`] retries pending files oldest first
//! every 1-2 s, backing off to 30 s while S3 is down, and resumes whatever an earlier run
//! left in `pending/`. While S3 is known to be down, `put_file` only spools (the uploader
//! probes), so writers never wait on timeouts. One warning is logged per outage and one
//! info line when it is over, with how many objects were flushed.
//!
//! Listings merge the bucket with the spooled clips, so a clip is listed, and served from the
//! spool through `local_path`, before it reaches S3.
//!
//! The [`ObjectStore`](super::ObjectStore) methods are synchronous and their callers run
//! them on `tokio::task::spawn_blocking` threads. This backend drives its async S3 client
//! from there with the `tokio::runtime::Handle` captured in `build` (`Handle::block_on`),
//! which panics on an async worker thread: never call those methods from async code.
//!
//! At start, `build` sends HeadBucket. A bucket that is missing or refuses access is a
//! configuration mistake and fails the start with a message naming bucket and endpoint. An
//! endpoint that cannot be reached only logs a warning: the spool keeps everything and the
//! uploads start when it is back, so a node that boots before its object store still records.
//!
//! Limits: a spooled object that S3 refuses for good blocks the queue behind it (each retry
//! counts in `panoptes_store_upload_failures_total`); a multipart upload cut short by a crash
//! or shutdown is left to the bucket's lifecycle rule for incomplete multipart uploads.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use futures::StreamExt as _;
use tokio::runtime::Handle;
use tracing::Instrument as _;

use super::common::{
    ClipRecord, StoreError, clip_days, clip_record, day_may_expire, expired, overlaps,
    parse_clip_key, parse_clip_name, sort_clips,
};
use crate::config::S3Config;

/// Size of each part of a multipart upload (S3 wants at least 5 MiB but for the last).
const PART_SIZE: u64 = 8 << 20;
/// Spooled files uploaded at the same time by the background uploader.
const UPLOAD_CONCURRENCY: usize = 4;
/// ListObjectsV2 requests in flight for one listing (cameras x days).
const LIST_CONCURRENCY: usize = 16;
/// The uploader's pause between passes (jittered down to half), doubled while S3 fails...
const RETRY_MIN: Duration = Duration::from_secs(2);
/// ...up to this.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A dead endpoint must fail fast: writers and listings wait on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// S3 refuses presigned URLs valid for longer.
const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Keys per DeleteObjects request (S3's limit).
const DELETE_BATCH: usize = 1000;

/// Objects in an S3 bucket, uploaded from a durable spool (see the module docs).
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    bucket: String,
    /// Endpoint for messages, without user info.
    endpoint: String,
    /// Key prefix inside the bucket: empty or ending in `/`.
    prefix: String,
    spool: PathBuf,
    pending: PathBuf,
    multipart_threshold: u64,
    presign_ttl: Duration,
    handle: Handle,
    /// Spooled files an upload (or a deletion) is working on right now.
    claims: Mutex<HashSet<PathBuf>>,
    health: Mutex<Health>,
}

/// Whether S3 is known to be down, for logging once per outage.
#[derive(Default)]
struct Health {
    down_since: Option<Instant>,
    /// Objects uploaded since the outage began.
    flushed: usize,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.inner.bucket)
            .field("endpoint", &self.inner.endpoint)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Connects to the bucket of `config` (static credentials when configured, else the
    /// standard AWS chain), checks it with HeadBucket, and starts the background uploader
    /// on the current tokio runtime. The spool is `data_dir/spool`; objects waiting to
    /// upload are in `data_dir/spool/pending/`. The uploader stops when the last clone of
    /// the store is dropped or the runtime shuts down.
    pub async fn build(config: &S3Config, data_dir: &Path) -> Result<S3Store, StoreError> {
        let spool = data_dir.join("spool");
        let pending = spool.join("pending");
        std::fs::create_dir_all(&pending).map_err(|source| StoreError::Dir {
            path: pending.clone(),
            source,
        })?;
        let endpoint = config.endpoint.as_deref().map_or_else(
            || format!("AWS S3 ({})", config.region),
            crate::config::redact_url,
        );
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .build(),
            );
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret.expose(),
                None,
                None,
                "panoptes-config",
            ));
        }
        if let Some(url) = &config.endpoint {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        let client = Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(config.path_style)
                .build(),
        );
        let inner = Arc::new(Inner {
            client,
            bucket: config.bucket.clone(),
            endpoint,
            prefix: normalize_prefix(&config.prefix),
            spool,
            pending,
            multipart_threshold: config.multipart_threshold,
            presign_ttl: config.presign_ttl.min(MAX_PRESIGN_TTL),
            handle: Handle::current(),
            claims: Mutex::default(),
            health: Mutex::default(),
        });
        inner.check_bucket().await?;
        let waiting = scan_pending(&inner.pending).len();
        metrics::gauge!("panoptes_store_pending_uploads").set(waiting as f64);
        if waiting > 0 {
            tracing::info!(
                pending = waiting,
                "objects left in the spool by an earlier run upload now"
            );
        }
        tokio::spawn(
            run_uploader(Arc::downgrade(&inner))
                .instrument(tracing::info_span!("s3_uploader", component = "store")),
        );
        Ok(S3Store { inner })
    }

    /// Where files are written before they are stored.
    pub fn spool_dir(&self) -> &Path {
        &self.inner.spool
    }

    /// Objects in the spool waiting to upload.
    pub fn pending_uploads(&self) -> usize {
        std::fs::read_dir(&self.inner.pending).map_or(0, |rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter(|e| e.file_name().to_str().and_then(key_of_pending).is_some())
                .count()
        })
    }

    /// Moves `file` into the pending spool, then uploads it unless S3 is known to be down.
    /// `Ok` once the file is spooled: a failed upload is retried in the background.
    pub fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        let inner = &self.inner;
        let dest = inner.pending_path(key);
        spool_into(file, &dest).map_err(|source| StoreError::Io {
            key: key.to_string(),
            source,
        })?;
        if inner.is_down() {
            return Ok(());
        }
        let Some(_claim) = inner.claim(&dest) else {
            // The uploader has an older copy in hand; it (or its next pass) takes this one.
            return Ok(());
        };
        match inner.handle.block_on(inner.upload_pending(key, &dest)) {
            Ok(()) => {}
            Err(e @ StoreError::Io { .. }) => {
                tracing::warn!(key, error = %e, "cannot read a spooled object; the uploader retries it");
            }
            Err(e) => inner.note_failure(key, &e),
        }
        Ok(())
    }

    /// The spooled copy of `key` while it waits to upload.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        let p = self.inner.pending_path(key);
        p.is_file().then_some(p)
    }

    /// A presigned GET URL for `key`, valid for `presign_ttl` (at most 7 days). `None` while
    /// the object is still spooled (serve [`S3Store::local_path`]) and when the bucket does
    /// not have it. If S3 cannot be asked, the URL is returned anyway.
    pub async fn presigned_url(&self, key: &str) -> Option<String> {
        let inner = &self.inner;
        if inner.pending_path(key).is_file() {
            return None;
        }
        let full = inner.full_key(key);
        match inner
            .client
            .head_object()
            .bucket(&inner.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return None,
            Err(e) => {
                tracing::debug!(
                    key,
                    error = describe(&e),
                    "cannot check the object; presigning anyway"
                );
            }
        }
        let presign = PresigningConfig::expires_in(inner.presign_ttl).ok()?;
        match inner
            .client
            .get_object()
            .bucket(&inner.bucket)
            .key(&full)
            .presigned(presign)
            .await
        {
            Ok(request) => Some(request.uri().to_string()),
            Err(e) => {
                tracing::warn!(key, error = describe(&e), "cannot presign a URL");
                None
            }
        }
    }

    /// See [`ObjectStore::clip_spans`](super::ObjectStore::clip_spans).
    pub fn clip_spans(&self, camera: &str, from_ms: i64, to_ms: i64) -> Vec<(i64, i64)> {
        let mut spans: Vec<(i64, i64)> = self
            .clips(Some(camera), from_ms, to_ms)
            .into_keys()
            .map(|(_, start, end)| (start, end))
            .collect();
        spans.sort_unstable();
        spans
    }

    /// See [`ObjectStore::list_clips`](super::ObjectStore::list_clips).
    pub fn list_clips(&self, camera: Option<&str>, from_ms: i64, to_ms: i64) -> Vec<ClipRecord> {
        let mut out: Vec<ClipRecord> = self
            .clips(camera, from_ms, to_ms)
            .into_iter()
            .map(|((cam, start, end), bytes)| clip_record(&cam, start, end, bytes))
            .collect();
        sort_clips(&mut out);
        out
    }

    /// Deletes clips that ended and snapshots taken before `cutoff_ms`, in the bucket and in
    /// the pending spool; returns how many objects went.
    pub fn delete_before(&self, cutoff_ms: i64) -> usize {
        let inner = &self.inner;
        let mut deleted = 0;
        for p in scan_pending(&inner.pending) {
            let mut parts = p.key.split('/');
            let top = parts.next().unwrap_or_default();
            let (_camera, day, name) = (parts.next(), parts.next(), parts.next());
            if matches!(top, "clips" | "snapshots")
                && day.is_some_and(|d| day_may_expire(d, cutoff_ms))
                && name.is_some_and(|n| expired(n, cutoff_ms))
                && let Some(_claim) = inner.claim(&p.path)
                && std::fs::remove_file(&p.path).is_ok()
            {
                deleted += 1;
            }
        }
        deleted + inner.handle.block_on(inner.delete_before(cutoff_ms))
    }

    /// Clips overlapping `[from_ms, to_ms)` in the bucket and in the spool: `(camera, start,
    /// end)` to size in bytes.
    fn clips(
        &self,
        camera: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> BTreeMap<(String, i64, i64), u64> {
        let inner = &self.inner;
        let mut found = BTreeMap::new();
        for p in scan_pending(&inner.pending) {
            if let Some((cam, start, end)) = parse_clip_key(&p.key)
                && camera.is_none_or(|c| c == cam)
                && overlaps(start, end, from_ms, to_ms)
            {
                found.insert((cam.to_string(), start, end), p.bytes);
            }
        }
        let spooled_cameras: BTreeSet<String> = found.keys().map(|k| k.0.clone()).collect();
        let listed =
            inner
                .handle
                .block_on(inner.bucket_clips(camera, spooled_cameras, from_ms, to_ms));
        // A clip both listed and still spooled is mid-upload: either size is right.
        for (k, bytes) in listed {
            found.entry(k).or_insert(bytes);
        }
        found
    }
}

/// One listing level: objects and sub-folders directly under a prefix.
#[derive(Default)]
struct Listing {
    /// Object names (after the prefix) and sizes.
    objects: Vec<(String, u64)>,
    /// Folder names (after the prefix, without the `/`).
    folders: Vec<String>,
}

/// Outcome of one spooled file in an uploader pass.
enum Outcome {
    Uploaded,
    /// Someone else has it, it is gone, or the pass already hit a failure.
    Skipped,
    /// S3 refused or could not be reached.
    Failed,
}

impl Inner {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn pending_path(&self, key: &str) -> PathBuf {
        self.pending.join(pending_name(key))
    }

    fn claim(&self, path: &Path) -> Option<Claim<'_>> {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        claims.insert(path.to_path_buf()).then(|| Claim {
            claims: &self.claims,
            path: path.to_path_buf(),
        })
    }

    fn is_down(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .down_since
            .is_some()
    }

    fn note_failure(&self, key: &str, e: &StoreError) {
        metrics::counter!("panoptes_store_upload_failures_total").increment(1);
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if health.down_since.is_some() {
            tracing::debug!(key, error = %e, "S3 upload failed again");
            return;
        }
        *health = Health {
            down_since: Some(Instant::now()),
            flushed: 0,
        };
        drop(health);
        tracing::warn!(
            bucket = %self.bucket,
            endpoint = %self.endpoint,
            key,
            error = %e,
            "S3 upload failed; objects stay in the spool and upload when S3 is back"
        );
    }

    fn note_uploaded(&self) {
        metrics::counter!("panoptes_store_uploads_total").increment(1);
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if health.down_since.is_some() {
            health.flushed += 1;
        }
    }

    /// A pass went through without a failure: an outage, if any, is over.
    fn note_recovered(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = health.down_since.take() {
            tracing::info!(
                bucket = %self.bucket,
                endpoint = %self.endpoint,
                flushed = health.flushed,
                outage_s = since.elapsed().as_secs(),
                "S3 is back; spooled objects uploaded"
            );
        }
    }

    /// HeadBucket: fails on a missing or forbidden bucket, warns when unreachable.
    async fn check_bucket(&self) -> Result<(), StoreError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, endpoint = %self.endpoint, prefix = %self.prefix, "S3 object store ready");
                Ok(())
            }
            Err(e @ (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_))) => {
                tracing::warn!(
                    bucket = %self.bucket,
                    endpoint = %self.endpoint,
                    error = describe(&e),
                    "S3 unreachable at start; objects stay in the spool and upload when it is back"
                );
                self.health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .down_since = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let message = match status {
                    Some(404) => "no such bucket: create it, or correct store.s3.bucket".into(),
                    Some(403) => "access denied: check store.s3.access_key_id and secret_access_key (or the AWS credential chain) and the bucket policy".into(),
                    Some(301) => "the bucket is in another region: correct store.s3.region".into(),
                    _ => format!("HeadBucket failed: {}", describe(&e)),
                };
                Err(StoreError::Bucket {
                    bucket: self.bucket.clone(),
                    endpoint: self.endpoint.clone(),
                    message,
                })
            }
        }
    }

    /// One uploader pass over the pending spool, oldest first; false if S3 failed.
    async fn flush(&self) -> bool {
        let dir = self.pending.clone();
        let files = tokio::task::spawn_blocking(move || scan_pending(&dir))
            .await
            .unwrap_or_default();
        let total = files.len();
        metrics::gauge!("panoptes_store_pending_uploads").set(total as f64);
        // After one failure the files not yet started are left for the next pass; those in
        // flight finish (dropping a multipart upload halfway would leave it dangling).
        let failed = AtomicBool::new(false);
        let outcomes: Vec<Outcome> = futures::stream::iter(files)
            .map(|p| self.flush_one(p, &failed))
            .buffered(UPLOAD_CONCURRENCY)
            .collect()
            .await;
        let uploaded = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Uploaded))
            .count();
        if uploaded > 0 {
            metrics::gauge!("panoptes_store_pending_uploads")
                .set(total.saturating_sub(uploaded) as f64);
        }
        if failed.load(Ordering::Relaxed) {
            return false;
        }
        self.note_recovered();
        true
    }

    async fn flush_one(&self, p: Pending, failed: &AtomicBool) -> Outcome {
        if failed.load(Ordering::Relaxed) {
            return Outcome::Skipped;
        }
        let Some(_claim) = self.claim(&p.path) else {
            return Outcome::Skipped;
        };
        match self.upload_pending(&p.key, &p.path).await {
            Ok(()) => Outcome::Uploaded,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // put_file uploaded it between the scan and the claim.
                Outcome::Skipped
            }
            Err(e @ StoreError::Io { .. }) => {
                tracing::error!(key = %p.key, path = %p.path.display(), error = %e, "cannot read a spooled object");
                Outcome::Skipped
            }
            Err(e) => {
                failed.store(true, Ordering::Relaxed);
                self.note_failure(&p.key, &e);
                Outcome::Failed
            }
        }
    }

    /// Uploads one spooled file and deletes it once S3 has it.
    async fn upload_pending(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            key: key.to_string(),
            source,
        };
        let before = tokio::fs::metadata(path).await.map_err(io)?;
        self.upload(key, path, before.len()).await?;
        // The same key may have been spooled again meanwhile: that newer copy stays.
        let unchanged = tokio::fs::metadata(path)
            .await
            .is_ok_and(|m| m.ino() == before.ino() && m.modified().ok() == before.modified().ok());
        if unchanged && let Err(e) = tokio::fs::remove_file(path).await {
            tracing::warn!(key, path = %path.display(), error = %e, "uploaded, but cannot delete the spooled copy");
        }
        self.note_uploaded();
        Ok(())
    }

    async fn upload(&self, key: &str, path: &Path, size: u64) -> Result<(), StoreError> {
        let full = self.full_key(key);
        if size >= self.multipart_threshold {
            return self.upload_multipart(key, &full, path, size).await;
        }
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| read_error(key, e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_type(content_type(key))
            .body(body)
            .send()
            .await
            .map_err(|e| s3_error(key, &e))?;
        Ok(())
    }

    async fn upload_multipart(
        &self,
        key: &str,
        full: &str,
        path: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .content_type(content_type(key))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(|e| s3_error(key, &e))?;
        let Some(id) = created.upload_id() else {
            return Err(StoreError::S3 {
                key: key.to_string(),
                message: "CreateMultipartUpload answered without an upload id".into(),
            });
        };
        let result = self.upload_parts(key, full, id, path, size).await;
        if result.is_err()
            && let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(id)
                .send()
                .await
        {
            tracing::debug!(
                key,
                error = describe(&e),
                "cannot abort the multipart upload"
            );
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        full: &str,
        id: &str,
        path: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let mut parts = Vec::new();
        let (mut offset, mut number) = (0, 1);
        while offset < size {
            let len = PART_SIZE.min(size - offset);
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| read_error(key, e))?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(id)
                .part_number(number)
                .content_length(len as i64)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map_err(|e| s3_error(key, &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .set_checksum_crc32(part.checksum_crc32().map(str::to_string))
                    .build(),
            );
            offset += len;
            number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error(key, &e))?;
        Ok(())
    }

    /// Objects and folders directly under the logical prefix `prefix` (ending in `/`).
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let full = self.full_key(prefix);
        let mut out = Listing::default();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s3_error(prefix, &e))?;
            out.objects.extend(page.contents().iter().filter_map(|o| {
                let name = o.key()?.strip_prefix(&full)?;
                Some((name.to_string(), o.size().unwrap_or(0).max(0) as u64))
            }));
            out.folders
                .extend(page.common_prefixes().iter().filter_map(|p| {
                    let name = p.prefix()?.strip_prefix(&full)?.strip_suffix('/')?;
                    (!name.is_empty()).then(|| name.to_string())
                }));
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// Clips in the bucket overlapping `[from_ms, to_ms)`, for one camera or every camera
    /// (those with a folder in the bucket, and `spooled` ones).
    async fn bucket_clips(
        &self,
        camera: Option<&str>,
        spooled: BTreeSet<String>,
        from_ms: i64,
        to_ms: i64,
    ) -> Vec<((String, i64, i64), u64)> {
        let mut first_error = None;
        let cameras: BTreeSet<String> = match camera {
            Some(c) => BTreeSet::from([c.to_string()]),
            None => match self.list("clips/").await {
                Ok(l) => l.folders.into_iter().chain(spooled).collect(),
                Err(e) => {
                    first_error = Some(e);
                    BTreeSet::new()
                }
            },
        };
        let days = clip_days(from_ms, to_ms);
        let prefixes: Vec<(String, String)> = cameras
            .iter()
            .flat_map(|c| {
                days.iter()
                    .map(move |d| (c.clone(), format!("clips/{c}/{d}/")))
            })
            .collect();
        let listings: Vec<(String, Result<Listing, StoreError>)> = futures::stream::iter(prefixes)
            .map(|(cam, prefix)| async move { (cam, self.list(&prefix).await) })
            .buffer_unordered(LIST_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::new();
        for (cam, listing) in listings {
            match listing {
                Ok(l) => out.extend(l.objects.into_iter().filter_map(|(name, bytes)| {
                    let (start, end) = parse_clip_name(&name)?;
                    overlaps(start, end, from_ms, to_ms).then(|| ((cam.clone(), start, end), bytes))
                })),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            if self.is_down() {
                tracing::debug!(error = %e, "cannot list the bucket; listing spooled clips only");
            } else {
                tracing::warn!(bucket = %self.bucket, endpoint = %self.endpoint, error = %e, "cannot list the bucket; listing spooled clips only");
            }
        }
        out
    }

    /// Bucket part of retention: day folders that may hold expired objects are listed and
    /// their expired objects deleted in batches.
    async fn delete_before(&self, cutoff_ms: i64) -> usize {
        let mut expired_keys = Vec::new();
        let result: Result<(), StoreError> = async {
            for top in ["clips", "snapshots"] {
                for cam in self.list(&format!("{top}/")).await?.folders {
                    for day in self.list(&format!("{top}/{cam}/")).await?.folders {
                        if !day_may_expire(&day, cutoff_ms) {
                            continue;
                        }
                        let prefix = format!("{top}/{cam}/{day}/");
                        for (name, _) in self.list(&prefix).await?.objects {
                            if expired(&name, cutoff_ms) {
                                expired_keys.push(self.full_key(&format!("{prefix}{name}")));
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(bucket = %self.bucket, endpoint = %self.endpoint, error = %e, "retention: cannot list the bucket; the rest waits for the next sweep");
        }
        let mut deleted = 0;
        for batch in expired_keys.chunks(DELETE_BATCH) {
            deleted += self.delete_keys(batch).await;
        }
        deleted
    }

    /// DeleteObjects for full keys; returns how many went.
    async fn delete_keys(&self, keys: &[String]) -> usize {
        let ids: Result<Vec<ObjectIdentifier>, _> = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect();
        let delete =
            ids.and_then(|ids| Delete::builder().set_objects(Some(ids)).quiet(true).build());
        let delete = match delete {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a DeleteObjects request");
                return 0;
            }
        };
        match self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
        {
            Ok(out) => {
                for e in out.errors() {
                    tracing::warn!(
                        key = e.key().unwrap_or_default(),
                        code = e.code().unwrap_or_default(),
                        "retention: S3 refused to delete an object"
                    );
                }
                keys.len().saturating_sub(out.errors().len())
            }
            Err(e) => {
                tracing::warn!(bucket = %self.bucket, endpoint = %self.endpoint, error = describe(&e), "retention: DeleteObjects failed");
                0
            }
        }
    }
}

/// A spooled file held by one upload or deletion; released on drop.
struct Claim<'a> {
    claims: &'a Mutex<HashSet<PathBuf>>,
    path: PathBuf,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.path);
    }
}

/// Retries the pending spool until the store is dropped.
async fn run_uploader(store: Weak<Inner>) {
    let mut delay = RETRY_MIN;
    loop {
        tokio::time::sleep(jitter(delay)).await;
        let Some(inner) = store.upgrade() else { return };
        delay = if inner.flush().await {
            RETRY_MIN
        } else {
            (delay * 2).min(RETRY_MAX)
        };
    }
}

/// A delay between half and all of `d`, so nodes that lost S3 together do not all retry
/// in the same instant.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..=1.0))
}

/// A file in `pending/` and the key it is for.
#[derive(Debug)]
struct Pending {
    path: PathBuf,
    key: String,
    bytes: u64,
    modified: SystemTime,
}

/// The pending spool, oldest first. Names that are not encoded keys are ignored.
fn scan_pending(dir: &Path) -> Vec<Pending> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Pending> = rd
        .flatten()
        .filter_map(|e| {
            let key = key_of_pending(e.file_name().to_str()?)?;
            let meta = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
            Some(Pending {
                path: e.path(),
                key,
                bytes: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect();
    out.sort_by(|a, b| a.modified.cmp(&b.modified).then_with(|| a.key.cmp(&b.key)));
    out
}

/// Moves a finished file into the pending spool (copying when it is on another filesystem).
fn spool_into(file: &Path, dest: &Path) -> std::io::Result<()> {
    match std::fs::rename(file, dest) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            // A leading dot is never an encoded key: the scan skips the half-copied file.
            let name = dest
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object");
            let tmp = dest.with_file_name(format!(".incoming-{name}"));
            std::fs::copy(file, &tmp)?;
            std::fs::rename(&tmp, dest)?;
            std::fs::remove_file(file)
        }
        r => r,
    }
}

/// The pending file name for an object key: bytes other than ASCII letters, digits, `-`,
/// `_` and (not leading) `.` become `%XX`, so `clips/cam/2024-01-01/1-2.mp4` is
/// `clips%2Fcam%2F2024-01-01%2F1-2.mp4`.
fn pending_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 16);
    for (i, b) in key.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The object key a pending file name stands for; `None` for any other name.
fn key_of_pending(name: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(name.len());
    let mut it = name.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    let key = String::from_utf8(bytes).ok()?;
    // Only the canonical spelling counts, so stray and temporary files are never keys.
    (!key.is_empty() && pending_name(&key) == name).then_some(key)
}

/// The configured key prefix as stored: empty, or without leading and with one trailing `/`.
fn normalize_prefix(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

fn content_type(key: &str) -> &'static str {
    match key.rsplit('.').next() {
        Some("mp4") => "video/mp4",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

fn s3_error<E, R>(key: &str, e: &SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    StoreError::S3 {
        key: key.to_string(),
        message: describe(e),
    }
}

/// An error and its causes on one line (`DisplayErrorContext` appends a Debug dump too).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn read_error(key: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Io {
        key: key.to_string(),
        source: std::io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::objects::{clip_key, snapshot_key};

    #[test]
    fn pending_names_round_trip_to_keys() {
        let keys = [
            clip_key("front-door", 1_700_000_000_000, 1_700_000_010_000),
            snapshot_key("cam_2", 1_700_000_000_000),
            "odd key/with spaces/100%/é.mp4".to_string(),
            ".hidden".to_string(),
            "a/../b".to_string(),
        ];
        for key in keys {
            let name = pending_name(&key);
            assert!(!name.contains('/') && !name.starts_with('.'), "{name}");
            assert_eq!(key_of_pending(&name).as_deref(), Some(key.as_str()));
        }
        assert_eq!(
            pending_name("clips/cam/2024-01-01/1-2.mp4"),
            "clips%2Fcam%2F2024-01-01%2F1-2.mp4"
        );
    }

    #[test]
    fn other_spool_names_are_not_keys() {
        for name in [
            "",
            ".incoming-clips%2Fa.mp4",
            "a%2",
            "a%zz",
            "a%2fb",
            "a%41",
            "a b",
            "%FF%FE",
        ] {
            assert_eq!(key_of_pending(name), None, "{name:?}");
        }
    }

    #[test]
    fn prefixes_are_normalized() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("site-a"), "site-a/");
        assert_eq!(normalize_prefix("/site-a/"), "site-a/");
        assert_eq!(normalize_prefix("org/site-a//"), "org/site-a/");
    }

    #[test]
    fn pending_spool_is_scanned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (key, age) in [("clips/b/new.mp4", 1), ("clips/a/old.mp4", 0), ("z", 2)] {
            let path = dir.path().join(pending_name(key));
            std::fs::write(&path, key).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(t0 + Duration::from_secs(age)).unwrap();
        }
        std::fs::write(dir.path().join(".incoming-z"), "half").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let keys: Vec<String> = scan_pending(dir.path())
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["clips/a/old.mp4", "clips/b/new.mp4", "z"]);
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("clips/a/d/1-2.mp4"), "video/mp4");
        assert_eq!(content_type("snapshots/a/d/1.jpg"), "image/jpeg");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
