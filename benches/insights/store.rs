//! Phase 1: the store, built once and cached, with clips for the recorded cameras.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

use panoptes::infer::{Embedder, Runtime};
use panoptes::store::insights::{Insight, InsightStore};
use panoptes::store::objects::{ObjectStore, clip_key};

use crate::dataset::*;
use crate::support::*;
use crate::{Args, BATCH, DATASET_VERSION, DAY_MS, DAYS, SEED};

pub(crate) struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) min_ms: i64,
    pub(crate) max_ms: i64,
}

pub(crate) fn db_count(db: &Path) -> Option<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row("SELECT count(*) FROM insights", [], |r| r.get::<_, i64>(0))
        .ok()
        .map(|n| n as u64)
}

pub(crate) fn build_meta(dir: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("build.json")).ok()?).ok()
}

pub(crate) fn build_store(a: &Args, data: &DataSet) -> Store {
    let name = if a.insights == 1_000_000 {
        "insights-1m".to_string()
    } else {
        format!("insights-{}", a.insights)
    };
    let dir = cache_root().join(name);
    let db = dir.join("insights.db");
    let meta = build_meta(&dir);
    let fits = meta.as_ref().is_some_and(|m| {
        m["count"] == a.insights
            && m["version"] == DATASET_VERSION
            && m["cameras"] == a.cameras_synthetic
    });
    let cached = !a.rebuild && fits && db_count(&db) == Some(a.insights as u64);
    if cached {
        let m = meta.unwrap();
        println!(
            "store: cached {} ({} insights, built {} in {:.0} s; --rebuild to build again)",
            db.display(),
            a.insights,
            m["built_at"].as_str().unwrap_or("?"),
            m["build_secs"].as_f64().unwrap_or(0.0)
        );
    } else {
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "insights.db",
            "insights.db-wal",
            "insights.db-shm",
            "build.json",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let _ = std::fs::remove_dir_all(dir.join("objects"));
        let t0 = Instant::now();
        let embeddings = embed_all(data);
        let embed_secs = t0.elapsed().as_secs_f64();
        let store = InsightStore::sqlite(&db).unwrap();
        let start_ms = Utc::now().timestamp_millis() - DAYS * DAY_MS;
        let mut rng = StdRng::seed_from_u64(SEED ^ 0xb111d);
        let t1 = Instant::now();
        let mut last = Instant::now();
        let mut i = 0;
        while i < a.insights {
            let n = BATCH.min(a.insights - i);
            let batch: Vec<Insight> = (i..i + n)
                .map(|k| data.insight(k, a.insights, start_ms, &mut rng))
                .collect();
            store.upsert(&batch, &embeddings).unwrap();
            i += n;
            if last.elapsed() > Duration::from_secs(5) || i == a.insights {
                last = Instant::now();
                let rate = i as f64 / t1.elapsed().as_secs_f64();
                eprintln!(
                    "  stored {i}/{} ({:.0}/s, {:.0} s left, db {:.0} MiB)",
                    a.insights,
                    rate,
                    (a.insights - i) as f64 / rate,
                    mib(file_size(&db) + file_size(&dir.join("insights.db-wal")))
                );
            }
        }
        let write_secs = t1.elapsed().as_secs_f64();
        assert_eq!(store.count().unwrap(), a.insights as u64);
        drop(store);
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "store: built {} insights in {secs:.0} s ({embed_secs:.0} s embedding {} distinct texts, {write_secs:.0} s writing: {:.0} insights/s through InsightStore::upsert)",
            a.insights,
            embeddings.len(),
            a.insights as f64 / write_secs
        );
        let meta = serde_json::json!({
            "count": a.insights,
            "cameras": a.cameras_synthetic,
            "version": DATASET_VERSION,
            "built_at": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            "build_secs": secs,
            "embed_secs": embed_secs,
            "write_secs": write_secs,
        });
        std::fs::write(dir.join("build.json"), meta.to_string()).unwrap();
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (min_ms, max_ms): (i64, i64) = conn
        .query_row("SELECT min(ts), max(ts) FROM insights", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let texts: i64 = conn
        .query_row("SELECT count(*) FROM texts", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    let size = file_size(&db) + file_size(&dir.join("insights.db-wal"));
    println!(
        "store: {} ({:.0} MiB, {texts} distinct texts embedded, {} to {})",
        db.display(),
        mib(size),
        rfc3339(min_ms),
        rfc3339(max_ms)
    );
    let store = Store {
        dir,
        min_ms,
        max_ms,
    };
    make_clips(&store, data, a.recorded);
    store
}

/// The text embedder, on the installed models.
pub(crate) fn load_embedder() -> Embedder {
    let config = panoptes::config::load_str(
        &format!("[models]\ndir = {:?}\n", models_dir().display().to_string()),
        "bench",
        &|_| None,
    )
    .unwrap();
    let rt = Runtime::new(&config.infer, &config.models)
        .unwrap_or_else(|e| panic!("{e} (models/install.sh installs the models)"));
    Embedder::load(&rt).unwrap()
}

/// Real embeddings of every distinct text, in batches, with progress.
pub(crate) fn embed_all(data: &DataSet) -> HashMap<String, Vec<f32>> {
    let embedder = load_embedder();
    let bodies = data.bodies();
    let mut out = HashMap::with_capacity(bodies.len());
    let t0 = Instant::now();
    for (k, chunk) in bodies.chunks(256).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let vectors = embedder.embed(&refs).unwrap();
        out.extend(chunk.iter().cloned().zip(vectors));
        if k % 4 == 3 || out.len() == bodies.len() {
            eprintln!(
                "  embedded {}/{} texts ({:.0}/s)",
                out.len(),
                bodies.len(),
                out.len() as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    out
}

/// The recorded cameras: `count` busy cameras that are not the ones the other listings use.
pub(crate) fn recorded_cameras(data: &DataSet, count: usize) -> Vec<usize> {
    (0..data.cameras.len())
        .filter(|c| c % 5 == 4)
        .take(count)
        .collect()
}

/// 10 s clip files (empty) over the last day of the data set for the recorded cameras,
/// stored through the object store as the recorder stores clips.
pub(crate) fn make_clips(store: &Store, data: &DataSet, count: usize) {
    let objects = ObjectStore::local(&store.dir).unwrap();
    let mut made = 0;
    for c in recorded_cameras(data, count) {
        let cam = &data.cameras[c];
        // Written last: a camera whose clips were cut short is made again.
        let done = store.dir.join("objects/clips").join(cam).join(".complete");
        if done.is_file() {
            continue;
        }
        let end = store.max_ms + 10_000;
        let mut start = end - DAY_MS;
        while start < end {
            objects
                .put_bytes(&clip_key(cam, start, start + 10_000), &[])
                .unwrap();
            start += 10_000;
            made += 1;
        }
        std::fs::write(&done, b"").unwrap();
    }
    if made > 0 {
        println!("store: made {made} empty 10 s clip files for {count} recorded cameras");
    }
}
