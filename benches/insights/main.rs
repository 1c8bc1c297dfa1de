//! Insights benchmark: query latency of the embedded insight store at one million insights
//! under concurrent load, and the delay from frame capture to insight at 100 replayed cameras.
//!
//! `cargo bench --bench insights -- [--clients 8] [--secs 20] [--warmup 3] [--cameras 100]
//! [--e2e-secs 60] [--interval 10s] [--rebuild] [--insights 1000000] [--synthetic-cameras 1000]
//! [--recorded-cameras 10] [--calls 1000] [--infer-batch N] [--off detection,ocr,speech]
//! [--only build,load,store,e2e,explain]
//! [--explain]`
//!
//! Phases:
//! 1. Build (cached): `--insights` synthetic insights (default 1,000,000) from ~1000 cameras
//!    over 30 days, written through [`InsightStore::upsert`] in transactions of 10,000, into
//!    `~/.cache/panoptes/bench/insights-1m/insights.db`. Kinds in the proportions a deployment
//!    sees (objects 85%: the 80 COCO labels, skewed towards person and car; text 10%: a few
//!    thousand signs and number plates, each camera seeing its own few signs; speech 5%: a few
//!    thousand sentences from templates), busy cameras far busier than quiet ones, a third of
//!    the findings extended over several samples (`ts_end`). Every distinct text gets its real
//!    embedding from [`Embedder`]. The cached store is reused when it holds the right count;
//!    `--rebuild` forces a new one. The build time (recorded in `build.json`) and the size of
//!    the database are printed. The last day of `--recorded-cameras` (10) cameras also gets
//!    10 s clip files (empty) in the object store, as a recording camera has: each listed
//!    insight looks its clip up on disk, which costs next to nothing where there are no clips.
//! 2. Serve: `panoptes run` over that data directory (no cameras, `[infer] enabled = true`, so
//!    the models load and `/v1/search` embeds queries) on a free loopback port.
//! 3. Load: this process (a second process on loopback) runs `--clients` threads, each with
//!    its own keep-alive connection, for `--secs` seconds per endpoint after a warm-up:
//!    - `/v1/insights`: camera + kind; label + time range (1 h to 24 h); `q=` one word (rare to
//!      common); the second page of a listing through its cursor; camera + kind on a recorded
//!      camera (clip lookups on disk).
//!    - `/v1/search?q=<paraphrase>&limit=10`: alone, with a camera, with a kind, with both.
//!
//!    Printed per request type and per endpoint: p50/p90/p99/max latency and requests/s, CPU
//!    of the server and of the clients, errors (no answer or a status other than 200) and
//!    empty answers (no items where the data set has some, or a recorded camera's insights
//!    without their clip), then the slowest request variants, and the server's CPU per
//!    request. The clients are closed-loop: each sends its next request when the last is
//!    answered, so once the server is saturated latency is about clients / throughput.
//! 4. Store (`store`): the same mix of requests, `--calls` per endpoint, as calls to
//!    [`InsightStore::query`] and [`InsightStore::search`] in this process, one at a time:
//!    what the store itself costs per request type, without HTTP, the clip lookups or the
//!    embedding of the search text (timed on its own).
//! 5. End to end: `panoptes replay` serves `--cameras` streams (half `lobby.mp4`: drawn text and
//!    a spoken sentence; half `photos.mp4`: a person, a cat, a cup), `panoptes run` ingests them
//!    on a fresh data directory with every model on (sampling every `--interval`), and this
//!    process listens on `/v1/events` for `--e2e-secs` seconds once the cameras stream. An
//!    insight is announced after it is stored, so each event's arrival bounds the time it
//!    became queryable; delay = arrival - max(ts, ts_end): `ts` is the capture time of the
//!    frame that found it, `ts_end` that of the latest frame that extended it (or the end of
//!    a sentence). Printed: count, p50/p99/max delay overall, per kind and per 10 s of the
//!    window (a growing delay means inference does not keep up), frames sampled and inferred,
//!    frames dropped (`panoptes_bus_dropped_total`, `panoptes_media_dropped_total`), CPU and
//!    RSS of panoptes. `--off speech` (or `detection,ocr`) turns models off, to see what
//!    the others cost alone.
//!
//! `--explain` (or `--only explain`) prints SQLite's plan and the in-process time of the SQL
//! each request type runs (the statements mirror `src/store/insights/sqlite.rs`), among them the
//! statement a semantic search checks 64 candidate texts against its filters with.
//!
//! Targets (from the issue): `/v1/insights` p99 < 20 ms, `/v1/search` p99 < 50 ms, end to end
//! p50 < 1 s and p99 < 3 s. Figures are printed, never asserted; the machine (cores, memory)
//! is printed with them, since the load clients, the server and, end to end, the replay
//! server and every model share its cores.

use std::collections::HashSet;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_panoptes");
/// Changes whenever the generated data set changes, so an old cache is rebuilt.
pub(crate) const DATASET_VERSION: u32 = 1;
pub(crate) const SEED: u64 = 0x1a51_6475;
pub(crate) const DAYS: i64 = 30;
pub(crate) const BATCH: usize = 10_000;
pub(crate) const DAY_MS: i64 = 86_400_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;

mod calls;
mod dataset;
mod e2e;
#[path = "../common/host.rs"]
mod host;
mod load;
mod store;
mod support;

use calls::*;
use dataset::*;
use e2e::*;
use load::*;
use store::*;
use support::*;

pub(crate) struct Args {
    pub(crate) insights: usize,
    pub(crate) cameras_synthetic: usize,
    pub(crate) clients: usize,
    pub(crate) secs: u64,
    pub(crate) warmup: u64,
    pub(crate) cameras: usize,
    e2e_secs: u64,
    pub(crate) interval: String,
    pub(crate) rebuild: bool,
    pub(crate) recorded: usize,
    pub(crate) only: Option<HashSet<String>>,
    pub(crate) explain: bool,
    pub(crate) calls: usize,
    /// `[infer] batch` for the end-to-end run (`None`: the default).
    pub(crate) infer_batch: Option<usize>,
    /// Models turned off end to end (`detection`, `ocr`, `speech`), to see what the others
    /// cost alone.
    pub(crate) off: Vec<String>,
}

impl Args {
    pub(crate) fn wants(&self, phase: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(phase))
    }
}

pub(crate) fn args() -> Args {
    let mut a = Args {
        insights: 1_000_000,
        cameras_synthetic: 1000,
        clients: 8,
        secs: 20,
        warmup: 3,
        cameras: 100,
        e2e_secs: 60,
        interval: "10s".into(),
        rebuild: false,
        recorded: 10,
        only: None,
        explain: false,
        calls: 1000,
        infer_batch: None,
        off: Vec::new(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        let mut flag = false;
        match argv[i].as_str() {
            "--insights" => a.insights = val.parse().unwrap_or(a.insights),
            "--synthetic-cameras" => a.cameras_synthetic = val.parse().unwrap_or(1000),
            "--clients" => a.clients = val.parse().unwrap_or(a.clients).max(1),
            "--secs" => a.secs = val.parse().unwrap_or(a.secs),
            "--warmup" => a.warmup = val.parse().unwrap_or(a.warmup),
            "--cameras" => a.cameras = val.parse().unwrap_or(a.cameras).max(1),
            "--e2e-secs" => a.e2e_secs = val.parse().unwrap_or(a.e2e_secs),
            "--interval" => a.interval = val,
            "--recorded-cameras" => a.recorded = val.parse().unwrap_or(a.recorded),
            "--calls" => a.calls = val.parse().unwrap_or(a.calls).max(1),
            "--infer-batch" => a.infer_batch = val.parse().ok().filter(|&b| b > 0),
            "--only" => a.only = Some(val.split(',').map(str::to_string).collect()),
            "--off" => {
                a.off = val
                    .split(',')
                    .filter(|m| ["detection", "ocr", "speech"].contains(m))
                    .map(str::to_string)
                    .collect()
            }
            "--rebuild" => {
                a.rebuild = true;
                flag = true;
            }
            "--explain" => {
                a.explain = true;
                flag = true;
            }
            // `cargo bench` passes `--bench`; anything else unknown is ignored too.
            _ => flag = true,
        }
        i += if flag { 1 } else { 2 };
    }
    a
}

fn main() {
    let a = args();
    println!(
        "insights bench: {} synthetic insights, {} clients x {} s per endpoint, e2e {} cameras x {} s; machine: {}",
        a.insights,
        a.clients,
        a.secs,
        a.cameras,
        a.e2e_secs,
        machine()
    );
    let needs_store = ["build", "load", "store", "explain"]
        .iter()
        .any(|p| a.wants(p))
        || a.explain;
    if needs_store {
        let data = DataSet::new(a.cameras_synthetic);
        let store = build_store(&a, &data);
        if a.wants("load") {
            serve_and_load(&a, &data, &store);
        }
        if a.wants("store") {
            store_calls(&a, &data, &store);
        }
        if a.explain || a.only.as_ref().is_some_and(|o| o.contains("explain")) {
            explain(&store, &data);
        }
    }
    if a.wants("e2e") {
        e2e(&a);
    }
}
