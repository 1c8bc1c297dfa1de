//! The S3 object store against a real S3-compatible server: `moto_server` (PyPI
//! `moto[server]`, pinned in tests/requirements.txt and installed by `make test` into
//! `$HOME/.cache/panoptes/venv`; `PANOPTES_MOTO_SERVER` points elsewhere). Only 127.0.0.1 is
//! contacted: static credentials and a fixed region keep the AWS chain off the network.
//!
//! One test, in phases, because the outage phase kills and restarts the server: upload,
//! listing, presigned GET, multipart, an outage survived by the spool, retention.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use panoptes::store::objects::{ObjectStore, StoreError, clip_key, snapshot_key};

const BUCKET: &str = "panoptes-test";
const PREFIX: &str = "site-a/";
const ACCESS_KEY: &str = "panoptes-test-key";
const SECRET: &str = "s3-test-secret-never-printed";
const MIB: usize = 1 << 20;

/// A moto_server on a loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(port: u16, log: &Path) -> Moto {
        let bin = moto_binary();
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!(
                    "moto_server exited ({status}) before answering:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            let answer = ureq::get(&moto.url())
                .config()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .call();
            if answer.is_ok() {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on {} within 30 s",
                moto.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> PathBuf {
    let path = std::env::var_os("PANOPTES_MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/panoptes/venv/bin/moto_server")
        });
    assert!(
        path.is_file(),
        "moto_server not found at {}: run `make test`, which installs tests/requirements.txt \
         into $HOME/.cache/panoptes/venv (or set PANOPTES_MOTO_SERVER)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon's config for this server, loaded and validated like a config file; the
/// secret comes through `${S3_SECRET}`.
fn config(data_dir: &Path, port: u16, bucket: &str) -> panoptes::config::Config {
    let text = format!(
        r#"
data_dir = "{}"

[store]
kind = "s3"

[store.s3]
bucket = "{bucket}"
region = "us-east-1"
endpoint = "http://127.0.0.1:{port}"
path_style = true
prefix = "{PREFIX}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "${{S3_SECRET}}"
multipart_threshold = {}
presign_ttl = "10m"
"#,
        data_dir.display(),
        5 * MIB
    );
    panoptes::config::load_str(&text, "s3-test.toml", &|name| {
        (name == "S3_SECRET").then(|| SECRET.to_string())
    })
    .unwrap_or_else(|e| panic!("test config: {e}"))
}

/// A client of our own, to look into the bucket.
async fn admin(endpoint: &str) -> Client {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET, None, None, "test"))
        .load()
        .await;
    Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    )
}

async fn get(admin: &Client, key: &str) -> Option<Vec<u8>> {
    let out = admin
        .get_object()
        .bucket(BUCKET)
        .key(format!("{PREFIX}{key}"))
        .send()
        .await
        .ok()?;
    Some(out.body.collect().await.unwrap().into_bytes().to_vec())
}

async fn bucket_keys(admin: &Client) -> Vec<String> {
    let out = admin.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// Deterministic bytes that differ per `seed`, so a mixed-up object cannot compare equal.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `bytes` in the spool and hands the file to the store, from a blocking thread
/// like the recorder does.
async fn put_clip(store: &ObjectStore, key: &str, bytes: &[u8]) {
    let (store, owned, bytes) = (store.clone(), key.to_string(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        let key = owned;
        let file = store
            .spool_dir()
            .join(format!("{}.mp4.part", key.replace('/', "_")));
        std::fs::write(&file, &bytes).unwrap();
        store.put_file(&key, &file)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("put_file {key}: {e}"));
}

/// Runs a sync store method on a blocking thread, as the daemon's callers do.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn pending_dir(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("spool/pending"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn s3_store_uploads_lists_presigns_survives_an_outage_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary, and no other thread of it is started yet.
    unsafe {
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        std::env::set_var("AWS_CONFIG_FILE", dir.path().join("no-aws-config"));
        std::env::set_var(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("no-aws-credentials"),
        );
    }
    let metrics = panoptes::telemetry::metrics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        let phase = |name: &str| eprintln!("[{:>5.1} s] {name}", t0.elapsed().as_secs_f64());
        let data = dir.path().join("data");
        let log = dir.path().join("moto.log");
        let port = free_port();
        let moto = Moto::start(port, &log);
        let admin = admin(&moto.url()).await;
        admin.create_bucket().bucket(BUCKET).send().await.unwrap();
        phase("moto up, bucket created");

        // A bucket that does not exist fails the start, naming bucket and endpoint only.
        let err = ObjectStore::build(&config(&data, port, "no-such-bucket"))
            .await
            .expect_err("a missing bucket must fail the start");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Bucket { .. }), "{msg}");
        assert!(
            msg.contains("no-such-bucket") && msg.contains(&format!("127.0.0.1:{port}")),
            "{msg}"
        );
        assert!(!msg.contains(SECRET) && !format!("{err:?}").contains(SECRET));

        // An endpoint nobody answers on is not fatal: the node starts and spools.
        let unreachable = dir.path().join("unreachable");
        let cold = ObjectStore::build(&config(&unreachable, free_port(), BUCKET))
            .await
            .expect("an unreachable S3 only warns at start");
        put_clip(&cold, &clip_key("lobby", 1, 2), b"spooled").await;
        assert_eq!(cold.pending_uploads(), 1);
        drop(cold);
        phase("unreachable at start: spooled");

        let store = ObjectStore::build(&config(&data, port, BUCKET))
            .await
            .unwrap();
        assert!(!format!("{store:?}").contains(SECRET));
        phase("store built");

        // Upload: the object is in the bucket under the prefix, the spool is empty.
        let now = chrono::Utc::now().timestamp_millis();
        let (s1, e1) = (now - 60_000, now - 50_000);
        let key1 = clip_key("lobby", s1, e1);
        let clip1 = content(1, 256 * 1024);
        put_clip(&store, &key1, &clip1).await;
        assert_eq!(get(&admin, &key1).await.as_deref(), Some(&clip1[..]));
        assert!(pending_dir(&data).is_empty(), "{:?}", pending_dir(&data));
        assert_eq!(store.pending_uploads(), 0);
        assert_eq!(store.local_path(&key1), None);
        phase("clip uploaded");

        // Listing finds it by camera, for every camera, and as a span; not outside the range.
        let (from, to) = (now - 3_600_000, now + 60_000);
        let s = store.clone();
        let (mine, all, spans, before) = blocking(move || {
            (
                s.list_clips(Some("lobby"), from, to),
                s.list_clips(None, from, to),
                s.clip_spans("lobby", from, to),
                s.list_clips(Some("lobby"), from, s1),
            )
        })
        .await;
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0].id, format!("lobby-{s1}-{e1}"));
        assert_eq!(mine[0].key, key1);
        assert_eq!(mine[0].bytes, clip1.len() as u64);
        assert_eq!(mine[0].url, format!("/v1/clips/lobby-{s1}-{e1}"));
        assert_eq!(all, mine);
        assert_eq!(spans, vec![(s1, e1)]);
        assert!(before.is_empty(), "{before:?}");

        // A presigned URL serves the bytes to a plain HTTP client; no URL for what is not there.
        let url = store.presigned_url(&key1).await.expect("a presigned URL");
        assert!(
            url.starts_with(&moto.url()) && url.contains("X-Amz-Signature"),
            "{url}"
        );
        assert!(!url.contains(SECRET));
        let fetched = blocking(move || {
            ureq::get(&url)
                .config()
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .call()
                .unwrap()
                .body_mut()
                .read_to_vec()
                .unwrap()
        })
        .await;
        assert_eq!(fetched, clip1);
        assert_eq!(store.presigned_url(&clip_key("lobby", 1, 2)).await, None);
        phase("listed and presigned");

        // Above multipart_threshold (5 MiB): 12 MiB goes up in two 8 MiB parts.
        let (s2, e2) = (now - 40_000, now - 30_000);
        let key2 = clip_key("yard", s2, e2);
        let big = content(2, 12 * MIB);
        put_clip(&store, &key2, &big).await;
        let head = admin
            .head_object()
            .bucket(BUCKET)
            .key(format!("{PREFIX}{key2}"))
            .send()
            .await
            .unwrap();
        assert!(
            head.e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .ends_with("-2"),
            "a multipart ETag ends in -<parts>: {:?}",
            head.e_tag()
        );
        assert_eq!(get(&admin, &key2).await.map(|b| b == big), Some(true));
        assert!(pending_dir(&data).is_empty());
        let s = store.clone();
        let cameras: Vec<String> = blocking(move || s.list_clips(None, from, to))
            .await
            .into_iter()
            .map(|c| c.camera)
            .collect();
        assert_eq!(cameras, ["lobby", "yard"]);
        phase("multipart uploaded");

        // Outage: S3 goes away; clips are accepted, spooled, listed and served locally.
        drop(moto);
        let outage: Vec<(String, Vec<u8>)> = (0..3)
            .map(|i| {
                let start = now - 20_000 + i * 5_000;
                (
                    clip_key("lobby", start, start + 5_000),
                    content(10 + i as u64, 64 * 1024),
                )
            })
            .collect();
        for (key, bytes) in &outage {
            put_clip(&store, key, bytes).await;
        }
        assert_eq!(store.pending_uploads(), 3);
        for (key, bytes) in &outage {
            let path = store.local_path(key).expect("spooled copy");
            assert_eq!(&std::fs::read(path).unwrap(), bytes);
            assert_eq!(store.presigned_url(key).await, None);
        }
        let s = store.clone();
        let listed = blocking(move || s.list_clips(Some("lobby"), now - 20_000, to)).await;
        let listed: Vec<&str> = listed.iter().map(|c| c.key.as_str()).collect();
        let expected: Vec<&str> = outage.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(listed, expected);
        phase("outage: 3 clips spooled and listed");

        // S3 is back (empty: moto keeps nothing): the uploader flushes the spool by itself.
        let moto = Moto::start(port, &log);
        admin.create_bucket().bucket(BUCKET).send().await.unwrap();
        phase("moto restarted");
        let deadline = Instant::now() + Duration::from_secs(25);
        while store.pending_uploads() > 0 {
            assert!(
                Instant::now() < deadline,
                "still {} pending 25 s after S3 came back",
                store.pending_uploads()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        phase("spool flushed");
        for (key, bytes) in &outage {
            assert_eq!(get(&admin, key).await.as_deref(), Some(&bytes[..]), "{key}");
            assert_eq!(store.local_path(key), None);
        }
        assert!(pending_dir(&data).is_empty());

        // Retention: a clip that ended and a snapshot taken before the cutoff go.
        let old = 1_700_000_000_000; // 2023-11-14
        let old_clip = clip_key("lobby", old, old + 10_000);
        let old_snap = snapshot_key("lobby", old + 5_000);
        let new_snap = snapshot_key("lobby", now);
        put_clip(&store, &old_clip, b"old clip").await;
        let s = store.clone();
        let (a, b) = (old_snap.clone(), new_snap.clone());
        blocking(move || {
            s.put_bytes(&a, b"old jpeg").unwrap();
            s.put_bytes(&b, b"new jpeg").unwrap();
        })
        .await;
        let s = store.clone();
        let deleted = blocking(move || s.delete_before(now - 86_400_000)).await;
        assert_eq!(deleted, 2);
        let keys = bucket_keys(&admin).await;
        assert!(!keys.contains(&format!("{PREFIX}{old_clip}")), "{keys:?}");
        assert!(!keys.contains(&format!("{PREFIX}{old_snap}")), "{keys:?}");
        assert!(keys.contains(&format!("{PREFIX}{new_snap}")), "{keys:?}");
        for (key, _) in &outage {
            assert!(keys.contains(&format!("{PREFIX}{key}")), "{keys:?}");
        }
        phase("retention");

        let text = metrics.render();
        for name in [
            "panoptes_store_uploads_total",
            "panoptes_store_upload_failures_total",
            "panoptes_store_pending_uploads",
        ] {
            assert!(text.contains(name), "{name} missing from /metrics");
        }
        drop(moto);
    });
}
