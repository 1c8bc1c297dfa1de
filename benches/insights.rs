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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use panoptes::infer::{BBox, Embedder, Runtime};
use panoptes::store::insights::{Filter, Insight, InsightStore, Kind, Query, insight_id};
use panoptes::store::objects::{ObjectStore, clip_key, snapshot_key};

#[path = "common/host.rs"]
mod host;
use host::{cpu_secs, free_port, rss_mib};

const BIN: &str = env!("CARGO_BIN_EXE_panoptes");
/// Changes whenever the generated data set changes, so an old cache is rebuilt.
const DATASET_VERSION: u32 = 1;
const SEED: u64 = 0x1a51_6475;
const DAYS: i64 = 30;
const BATCH: usize = 10_000;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

struct Args {
    insights: usize,
    cameras_synthetic: usize,
    clients: usize,
    secs: u64,
    warmup: u64,
    cameras: usize,
    e2e_secs: u64,
    interval: String,
    rebuild: bool,
    recorded: usize,
    only: Option<HashSet<String>>,
    explain: bool,
    calls: usize,
    /// `[infer] batch` for the end-to-end run (`None`: the default).
    infer_batch: Option<usize>,
    /// Models turned off end to end (`detection`, `ocr`, `speech`), to see what the others
    /// cost alone.
    off: Vec<String>,
}

impl Args {
    fn wants(&self, phase: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(phase))
    }
}

fn args() -> Args {
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

// ---------------------------------------------------------------------------------------------
// The synthetic data set.

/// The 80 COCO classes, most often seen by building and street cameras first.
const LABELS: [&str; 80] = [
    "person",
    "car",
    "truck",
    "bicycle",
    "motorcycle",
    "bus",
    "backpack",
    "handbag",
    "dog",
    "chair",
    "bench",
    "bottle",
    "cup",
    "suitcase",
    "umbrella",
    "cell phone",
    "potted plant",
    "traffic light",
    "stop sign",
    "cat",
    "bird",
    "laptop",
    "tv",
    "dining table",
    "book",
    "clock",
    "train",
    "boat",
    "parking meter",
    "fire hydrant",
    "skateboard",
    "couch",
    "tie",
    "sports ball",
    "keyboard",
    "mouse",
    "remote",
    "horse",
    "sink",
    "refrigerator",
    "microwave",
    "oven",
    "toaster",
    "bed",
    "toilet",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
    "wine glass",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "frisbee",
    "skis",
    "snowboard",
    "kite",
    "baseball bat",
    "baseball glove",
    "surfboard",
    "tennis racket",
    "airplane",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
];

/// Paraphrases searched for: none of them is a stored text word for word.
const SEARCHES: [&str; 16] = [
    "a lorry reached the warehouse loading bay",
    "someone asked for a door to be opened",
    "vehicle registration number",
    "emergency exit sign",
    "a dog walking around",
    "a man riding a bike",
    "parcel delivery at the front desk",
    "a van is obstructing the entrance",
    "a kitten",
    "a mug of coffee",
    "somebody was called to the front desk",
    "parking is not allowed here",
    "a coach at the stop",
    "people walking by",
    "chemist shop",
    "slippery floor warning",
];

/// Words looked up with `q=`, from rare to common in the data set.
const WORDS: [&str; 11] = [
    "hangar", "pharmacy", "forklift", "courier", "dock", "exit", "gate", "parking", "truck", "car",
    "person",
];

/// Cumulative weights for picking an index.
struct Weighted(Vec<f64>);

impl Weighted {
    fn new(weights: impl IntoIterator<Item = f64>) -> Weighted {
        let mut acc = 0.0;
        Weighted(
            weights
                .into_iter()
                .map(|w| {
                    acc += w;
                    acc
                })
                .collect(),
        )
    }

    fn pick(&self, rng: &mut impl Rng) -> usize {
        let total = self.0.last().copied().unwrap_or(0.0);
        let x = rng.random::<f64>() * total;
        self.0.partition_point(|&c| c <= x).min(self.0.len() - 1)
    }
}

/// Everything the generator and the load clients share: cameras, texts, sentences.
struct DataSet {
    cameras: Vec<String>,
    /// Per kind (object, text, speech): how often each camera reports it (0 where it cannot).
    by_kind: [Weighted; 3],
    labels: Weighted,
    signs: Vec<String>,
    plates: Vec<String>,
    sentences: Vec<String>,
    sentence_weights: Weighted,
}

fn kind_index(k: Kind) -> usize {
    match k {
        Kind::Object => 0,
        Kind::Text => 1,
        Kind::Speech => 2,
    }
}

impl DataSet {
    fn new(cameras: usize) -> DataSet {
        let mut rng = StdRng::seed_from_u64(SEED);
        let ids: Vec<String> = (0..cameras).map(|c| format!("cam-{c:04}")).collect();
        // Busy cameras (an entrance) report ~10x what quiet ones (a back corridor) do.
        let activity: Vec<f64> = (0..cameras)
            .map(|c| 1.0 / ((c + 20) as f64).powf(0.7))
            .collect();
        let sees_text = |c: usize| c % 5 < 2;
        let hears = |c: usize| c % 10 < 3;
        let by_kind = [
            Weighted::new(activity.iter().copied()),
            Weighted::new(
                activity
                    .iter()
                    .enumerate()
                    .map(|(c, w)| if sees_text(c) { *w } else { 0.0 }),
            ),
            Weighted::new(
                activity
                    .iter()
                    .enumerate()
                    .map(|(c, w)| if hears(c) { *w } else { 0.0 }),
            ),
        ];
        let labels = Weighted::new((0..LABELS.len()).map(|r| 1.0 / ((r + 1) as f64).powf(1.5)));

        let mut signs = Vec::new();
        for prefix in [
            "DOCK", "GATE", "BAY", "LOT", "LEVEL", "ZONE", "DOOR", "PLATFORM", "AISLE", "SECTION",
            "ENTRANCE", "HANGAR",
        ] {
            for n in 1..=60 {
                signs.push(format!("{prefix} {n}"));
            }
        }
        for s in [
            "NO PARKING",
            "STAFF ONLY",
            "EMERGENCY EXIT",
            "FIRE EXIT KEEP CLEAR",
            "LOADING ZONE",
            "DELIVERIES ONLY",
            "VISITOR PARKING",
            "SPEED LIMIT 10",
            "AUTHORISED PERSONNEL ONLY",
            "PANOPTES DOCK 42",
            "RECEPTION",
            "CAUTION WET FLOOR",
            "HIGH VOLTAGE",
            "PUSH",
            "PULL",
            "OPEN 24 HOURS",
            "TOILETS",
            "LIFT OUT OF ORDER",
            "STAIRS",
            "KEEP LEFT",
            "NO ENTRY",
            "ONE WAY",
            "WAITING AREA",
            "CCTV IN OPERATION",
        ] {
            signs.push(s.to_string());
        }
        for a in [
            "ACME",
            "NORTHWIND",
            "CONTOSO",
            "GLOBEX",
            "INITECH",
            "UMBRELLA",
            "STARK",
            "WAYNE",
            "TYRELL",
            "CYBERDYNE",
        ] {
            for b in [
                "LOGISTICS",
                "FOODS",
                "PHARMACY",
                "MOTORS",
                "BAKERY",
                "HARDWARE",
                "BANK",
                "HOTEL",
            ] {
                signs.push(format!("{a} {b}"));
            }
        }
        let letter = |rng: &mut StdRng| (b'A' + rng.random_range(0..26u8)) as char;
        let digit = |rng: &mut StdRng| (b'0' + rng.random_range(0..10u8)) as char;
        let mut plates = HashSet::new();
        while plates.len() < 2500 {
            let p: String = if rng.random_bool(0.5) {
                // AB12 CDE
                [
                    letter(&mut rng),
                    letter(&mut rng),
                    digit(&mut rng),
                    digit(&mut rng),
                    ' ',
                    letter(&mut rng),
                    letter(&mut rng),
                    letter(&mut rng),
                ]
                .iter()
                .collect()
            } else {
                // ABC 1234
                [
                    letter(&mut rng),
                    letter(&mut rng),
                    letter(&mut rng),
                    ' ',
                    digit(&mut rng),
                    digit(&mut rng),
                    digit(&mut rng),
                    digit(&mut rng),
                ]
                .iter()
                .collect()
            };
            plates.insert(p);
        }
        let mut plates: Vec<String> = plates.into_iter().collect();
        plates.sort();

        let subjects = [
            "The delivery truck",
            "A white van",
            "The courier",
            "A taxi",
            "The forklift",
            "A cyclist",
            "The bus",
            "A customer",
            "The security guard",
            "The cleaner",
            "A visitor",
            "The night shift",
        ];
        let verbs = [
            "arrived at",
            "is waiting at",
            "just left",
            "is blocking",
            "was seen near",
            "is parked at",
            "came back to",
            "is heading to",
        ];
        let places = [
            "the loading dock",
            "gate three",
            "the main entrance",
            "the car park",
            "the back door",
            "reception",
            "the warehouse",
            "bay seven",
            "the side street",
            "the north exit",
            "the staff entrance",
            "the lobby",
        ];
        let times = [
            "this morning",
            "a minute ago",
            "just now",
            "at noon",
            "again",
            "before the shift change",
            "after closing time",
            "for the second time today",
        ];
        let names = [
            "John", "Maria", "Ahmed", "Li", "Sarah", "Tom", "Priya", "Olga", "Kofi", "Ana",
        ];
        let things = [
            "car", "van", "pallet", "bins", "boxes", "trolley", "ladder", "bike",
        ];
        let mut sentences = Vec::new();
        for n in names {
            for p in places {
                sentences.push(format!("{n}, please come to {p}."));
            }
        }
        for p in places {
            sentences.push(format!("Can someone open {p}?"));
            for t in things {
                sentences.push(format!("Please move the {t} away from {p}."));
            }
        }
        let mut seen: HashSet<String> = sentences.iter().cloned().collect();
        while sentences.len() < 3000 {
            let s = format!(
                "{} {} {} {}.",
                subjects[rng.random_range(0..subjects.len())],
                verbs[rng.random_range(0..verbs.len())],
                places[rng.random_range(0..places.len())],
                times[rng.random_range(0..times.len())]
            );
            if seen.insert(s.clone()) {
                sentences.push(s);
            }
        }
        let sentence_weights =
            Weighted::new((0..sentences.len()).map(|r| 1.0 / ((r + 1) as f64).powf(0.5)));
        DataSet {
            cameras: ids,
            by_kind,
            labels,
            signs,
            plates,
            sentences,
            sentence_weights,
        }
    }

    /// Every distinct text the insights carry (what gets an embedding).
    fn bodies(&self) -> Vec<String> {
        LABELS
            .iter()
            .map(|s| s.to_string())
            .chain(self.signs.iter().cloned())
            .chain(self.plates.iter().cloned())
            .chain(self.sentences.iter().cloned())
            .collect()
    }

    /// The signs camera `c` has in view.
    fn camera_sign(&self, c: usize, rng: &mut impl Rng) -> &str {
        let j = rng.random_range(0..3usize);
        &self.signs[(c * 7 + j * 131) % self.signs.len()]
    }

    /// A camera that reports `kind`, busy ones more often.
    fn camera_for(&self, kind: Kind, rng: &mut impl Rng) -> usize {
        self.by_kind[kind_index(kind)].pick(rng)
    }

    /// The `i`-th of `n` insights spread over [`start_ms`, `start_ms` + 30 days).
    fn insight(&self, i: usize, n: usize, start_ms: i64, rng: &mut StdRng) -> Insight {
        let span = DAYS * DAY_MS;
        let step = span as f64 / n as f64;
        let ts_ms = start_ms + (i as f64 * step) as i64 + rng.random_range(0..step.max(1.0) as i64);
        let roll = rng.random::<f64>();
        let kind = if roll < 0.85 {
            Kind::Object
        } else if roll < 0.95 {
            Kind::Text
        } else {
            Kind::Speech
        };
        let c = self.camera_for(kind, rng);
        let camera = self.cameras[c].clone();
        let ts = DateTime::from_timestamp_millis(ts_ms).unwrap_or_default();
        let secs = |s: i64| Some(ts + chrono::Duration::milliseconds(s));
        let bbox = |rng: &mut StdRng| {
            let (w, h) = (
                rng.random_range(0.03..0.5f32),
                rng.random_range(0.05..0.8f32),
            );
            BBox {
                x: rng.random_range(0.0..1.0 - w),
                y: rng.random_range(0.0..1.0 - h),
                w,
                h,
            }
        };
        let (label, text, ts_end, bbox, snapshot, model) = match kind {
            Kind::Object => {
                let label = LABELS[self.labels.pick(rng)].to_string();
                let end = rng
                    .random_bool(0.35)
                    .then(|| secs(10_000 * rng.random_range(1..=30i64)))
                    .flatten();
                (
                    Some(label),
                    None,
                    end,
                    Some(bbox(rng)),
                    Some(snapshot_key(&camera, ts_ms)),
                    "yolov8n",
                )
            }
            Kind::Text => {
                let text = if rng.random_bool(0.65) {
                    self.camera_sign(c, rng).to_string()
                } else {
                    self.plates[rng.random_range(0..self.plates.len())].clone()
                };
                let end = rng
                    .random_bool(0.7)
                    .then(|| secs(10_000 * rng.random_range(1..=360i64)))
                    .flatten();
                (
                    None,
                    Some(text),
                    end,
                    Some(bbox(rng)),
                    Some(snapshot_key(&camera, ts_ms)),
                    "ppocr",
                )
            }
            Kind::Speech => {
                let text = self.sentences[self.sentence_weights.pick(rng)].clone();
                (
                    None,
                    Some(text),
                    secs(rng.random_range(1500..8000i64)),
                    None,
                    None,
                    "whisper-tiny.en",
                )
            }
        };
        Insight {
            id: insight_id(&camera, kind, ts_ms * 1_000_000, i),
            camera,
            kind,
            ts,
            ts_end,
            label,
            text,
            confidence: rng.random_range(0.4..0.99f32),
            bbox,
            snapshot,
            clip: None,
            model: model.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"))
        .join("panoptes/bench")
}

fn models_dir() -> PathBuf {
    std::env::var_os("PANOPTES_MODELS")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

fn fixtures_dir() -> PathBuf {
    std::env::var_os("PANOPTES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/out"))
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} CPU cores ({cpu}), {mem:.0} GiB memory")
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// Sum of every series of a metric in a Prometheus text page.
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sum of the series of a metric whose labels contain `label` (e.g. `stream="frames"`).
fn metric_with(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') && r.contains(label))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `panoptes` (run or replay) as a child process, output kept in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        Proc { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn check_alive(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} exited with {status}:\n{}", self.log_tail());
        }
    }

    /// SIGTERM, then SIGKILL after 20 s.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeout)
        .build()
        .into()
}

/// GET `url`: status and body as JSON (Null when it is not JSON).
fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, Value), String> {
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Starts `panoptes run` on `config` and waits for `/healthz`.
fn start_panoptes(config: &Path, log: PathBuf, base: &str, what: &str) -> Proc {
    let mut p = Proc::spawn(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("PANOPTES_MODELS", models_dir()),
        log,
    );
    let a = agent(Some(Duration::from_secs(2)));
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        p.check_alive(what);
        if get(&a, &format!("{base}/healthz")).is_ok_and(|(s, _)| s == 200) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no /healthz after 180 s:\n{}",
            p.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Phase 1: the store.

struct Store {
    dir: PathBuf,
    min_ms: i64,
    max_ms: i64,
}

fn db_count(db: &Path) -> Option<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row("SELECT count(*) FROM insights", [], |r| r.get::<_, i64>(0))
        .ok()
        .map(|n| n as u64)
}

fn build_meta(dir: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("build.json")).ok()?).ok()
}

fn build_store(a: &Args, data: &DataSet) -> Store {
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
fn load_embedder() -> Embedder {
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
fn embed_all(data: &DataSet) -> HashMap<String, Vec<f32>> {
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
fn recorded_cameras(data: &DataSet, count: usize) -> Vec<usize> {
    (0..data.cameras.len())
        .filter(|c| c % 5 == 4)
        .take(count)
        .collect()
}

/// 10 s clip files (empty) over the last day of the data set for the recorded cameras,
/// stored through the object store as the recorder stores clips.
fn make_clips(store: &Store, data: &DataSet, count: usize) {
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

// ---------------------------------------------------------------------------------------------
// Phases 2 and 3: serve and load.

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Op {
    CameraKind,
    LabelRange,
    Word,
    Page2,
    Recorded,
    Search,
    SearchCamera,
    SearchKind,
    SearchCameraKind,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::CameraKind => "camera + kind",
            Op::LabelRange => "label + time range",
            Op::Word => "q=word",
            Op::Page2 => "page 2 (cursor)",
            Op::Recorded => "camera + kind, recorded camera",
            Op::Search => "search",
            Op::SearchCamera => "search + camera",
            Op::SearchKind => "search + kind",
            Op::SearchCameraKind => "search + camera + kind",
        }
    }
}

/// One request: what, which variant, how long, whether it was right.
struct Sample {
    op: Op,
    variant: String,
    ms: f64,
    ok: bool,
    /// Status 200 but no items where the data set has some.
    empty: bool,
}

struct LoadCtx<'a> {
    base: String,
    data: &'a DataSet,
    min_ms: i64,
    max_ms: i64,
    recorded: Vec<usize>,
}

fn kind_name(k: Kind) -> &'static str {
    k.as_str()
}

/// One request, drawn: the HTTP load sends it, the in-process `store` phase calls the store
/// with it, so both see the same mix.
struct Draw {
    op: Op,
    variant: String,
    filter: Filter,
    /// `q=` words of a listing.
    words: Option<&'static str>,
    /// The text of a semantic search (its `q=`).
    search: Option<&'static str>,
    limit: usize,
    /// Only the second page is timed: the first one gives its cursor.
    page2: bool,
    /// The data set has items for it: an empty answer is a fault.
    must_match: bool,
}

impl Draw {
    /// Path and query of the (first) request.
    fn path(&self) -> String {
        let f = &self.filter;
        let mut params: Vec<String> = Vec::new();
        if let Some(s) = self.search {
            params.push(format!("q={}", encode(s)));
        }
        if let Some(c) = &f.camera {
            params.push(format!("camera={c}"));
        }
        if let Some(k) = f.kind {
            params.push(format!("kind={}", kind_name(k)));
        }
        if let Some(l) = &f.label {
            params.push(format!("label={}", encode(l)));
        }
        if let Some(t) = f.from_ms {
            params.push(format!("from={}", encode(&rfc3339(t))));
        }
        if let Some(t) = f.to_ms {
            params.push(format!("to={}", encode(&rfc3339(t))));
        }
        if let Some(w) = self.words {
            params.push(format!("q={}", encode(w)));
        }
        params.push(format!("limit={}", self.limit));
        let route = if self.search.is_some() {
            "search"
        } else {
            "insights"
        };
        format!("/v1/{route}?{}", params.join("&"))
    }
}

/// A request of `op`, drawn as a user of the data set would make it.
fn draw(ctx: &LoadCtx<'_>, op: Op, rng: &mut StdRng) -> Draw {
    let data = ctx.data;
    let pick_kind = |rng: &mut StdRng| match rng.random_range(0..10) {
        0..=5 => Kind::Object,
        6..=8 => Kind::Text,
        _ => Kind::Speech,
    };
    let mut d = Draw {
        op,
        variant: String::new(),
        filter: Filter::default(),
        words: None,
        search: None,
        limit: 50,
        page2: false,
        must_match: true,
    };
    match op {
        Op::CameraKind => {
            let kind = pick_kind(rng);
            let mut c = data.camera_for(kind, rng);
            while ctx.recorded.contains(&c) {
                c = data.camera_for(kind, rng);
            }
            d.filter.camera = Some(data.cameras[c].clone());
            d.filter.kind = Some(kind);
            d.variant = kind_name(kind).to_string();
        }
        Op::Recorded => {
            if ctx.recorded.is_empty() {
                return draw(ctx, Op::CameraKind, rng);
            }
            let c = ctx.recorded[rng.random_range(0..ctx.recorded.len())];
            d.filter.camera = Some(data.cameras[c].clone());
            d.filter.kind = Some(Kind::Object);
            d.variant = "object".into();
        }
        Op::LabelRange => {
            let rank = if rng.random_bool(0.5) {
                data.labels.pick(rng)
            } else {
                rng.random_range(0..LABELS.len())
            };
            let window = [HOUR_MS, 6 * HOUR_MS, DAY_MS][rng.random_range(0..3)];
            let to = rng.random_range(ctx.min_ms + window..=ctx.max_ms);
            d.variant = format!(
                "{} label, {} h",
                if rank < 5 { "top-5" } else { "other" },
                window / HOUR_MS
            );
            d.filter.label = Some(LABELS[rank].to_string());
            d.filter.from_ms = Some(to - window);
            d.filter.to_ms = Some(to);
            d.must_match = rank < 2;
        }
        Op::Word => {
            let w = WORDS[rng.random_range(0..WORDS.len())];
            d.words = Some(w);
            d.variant = format!("q={w}");
        }
        Op::Page2 => {
            d.page2 = true;
            d.variant = match rng.random_range(0..3) {
                0 => {
                    let c = data.camera_for(Kind::Object, rng);
                    d.filter.camera = Some(data.cameras[c].clone());
                    "camera"
                }
                1 => {
                    d.filter.kind = Some(Kind::Text);
                    "kind"
                }
                _ => {
                    d.filter.label = Some(LABELS[data.labels.pick(rng)].to_string());
                    "label"
                }
            }
            .into();
        }
        Op::Search | Op::SearchCamera | Op::SearchKind | Op::SearchCameraKind => {
            let q = SEARCHES[rng.random_range(0..SEARCHES.len())];
            d.search = Some(q);
            d.limit = 10;
            let kind = pick_kind(rng);
            if matches!(op, Op::SearchKind | Op::SearchCameraKind) {
                d.filter.kind = Some(kind);
            }
            if matches!(op, Op::SearchCamera | Op::SearchCameraKind) {
                let c = if op == Op::SearchCameraKind {
                    data.camera_for(kind, rng)
                } else {
                    data.camera_for(Kind::Object, rng)
                };
                d.filter.camera = Some(data.cameras[c].clone());
            }
            d.variant = q.to_string();
            d.must_match = matches!(op, Op::Search | Op::SearchKind);
        }
    }
    d
}

/// One request of `op` (two for the cursor page; only the second is timed).
fn request(ctx: &LoadCtx<'_>, agent: &ureq::Agent, op: Op, rng: &mut StdRng) -> Sample {
    let d = draw(ctx, op, rng);
    let mut path = d.path();
    if d.page2 {
        let cursor = match get(agent, &format!("{}{path}", ctx.base)) {
            Ok((200, v)) => v["next_cursor"].as_str().map(str::to_string),
            _ => None,
        };
        let Some(cursor) = cursor else {
            return Sample {
                op,
                variant: "first page".into(),
                ms: 0.0,
                ok: false,
                empty: true,
            };
        };
        path = format!("{path}&cursor={}", encode(&cursor));
    }
    let url = format!("{}{path}", ctx.base);
    let t = Instant::now();
    let got = get(agent, &url);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let (ok, empty) = match &got {
        Ok((200, v)) => {
            let n = v["items"].as_array().map_or(0, Vec::len);
            // A recorded camera's newest insights are in its clips: the link must be there.
            let unlinked = op == Op::Recorded && !v["items"][0]["clip"].is_object();
            (true, (d.must_match && n == 0) || unlinked)
        }
        _ => (false, false),
    };
    if !ok {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| eprintln!("  first failed request: {url}: {got:?}"));
    }
    Sample {
        op,
        variant: d.variant,
        ms,
        ok,
        empty,
    }
}

/// Runs `clients` threads over `ops` for `secs` (after `warmup`); every sample of the window.
fn load(ctx: &LoadCtx<'_>, ops: &[Op], clients: usize, warmup: u64, secs: u64) -> Vec<Sample> {
    let stop = AtomicBool::new(false);
    let measuring = AtomicBool::new(false);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..clients {
            let (stop, measuring, out) = (&stop, &measuring, &out);
            s.spawn(move || {
                let agent = agent(Some(Duration::from_secs(30)));
                let mut rng = StdRng::seed_from_u64(SEED + 17 * t as u64 + ops.len() as u64);
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let op = ops[rng.random_range(0..ops.len())];
                    let sample = request(ctx, &agent, op, &mut rng);
                    if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                        mine.push(sample);
                    }
                }
                out.lock().unwrap().extend(mine);
            });
        }
        std::thread::sleep(Duration::from_secs(warmup));
        measuring.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    out.into_inner().unwrap()
}

fn report(title: &str, samples: &[Sample], secs: f64, target_ms: f64) {
    println!(
        "\n| {title} | requests | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | empty |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut by_op: BTreeMap<Op, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_op.entry(s.op).or_default().push(s);
    }
    let row = |name: &str, rows: &[&Sample]| {
        let mut ms: Vec<f64> = rows.iter().filter(|s| s.ok).map(|s| s.ms).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "| {name} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            rows.len(),
            rows.len() as f64 / secs,
            pct(&ms, 0.5),
            pct(&ms, 0.9),
            pct(&ms, 0.99),
            ms.last().copied().unwrap_or(f64::NAN),
            rows.iter().filter(|s| !s.ok && !s.empty).count(),
            rows.iter().filter(|s| s.empty).count()
        );
        pct(&ms, 0.99)
    };
    for (op, rows) in &by_op {
        row(op.name(), rows);
    }
    let all: Vec<&Sample> = samples.iter().collect();
    let p99 = row("**all**", &all);
    println!(
        "{title}: p99 {p99:.1} ms against the target of < {target_ms} ms: {}",
        if p99 < target_ms { "met" } else { "NOT met" }
    );
    slowest(samples);
}

/// Where the slow ones come from: the request variants with the highest p99.
fn slowest(samples: &[Sample]) {
    let mut by_variant: BTreeMap<(Op, &str), Vec<f64>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.ok) {
        by_variant
            .entry((s.op, s.variant.as_str()))
            .or_default()
            .push(s.ms);
    }
    let mut slow: Vec<(f64, f64, usize, String)> = by_variant
        .into_iter()
        .map(|((op, v), mut ms)| {
            ms.sort_by(f64::total_cmp);
            (
                pct(&ms, 0.99),
                pct(&ms, 0.5),
                ms.len(),
                format!("{}: {v}", op.name()),
            )
        })
        .collect();
    slow.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("slowest request variants (p99 / p50 ms, requests):");
    for (p99, p50, n, name) in slow.iter().take(8) {
        println!("  {p99:>8.1} / {p50:>6.1}  {n:>6}  {name}");
    }
}

/// The two endpoints: title, the request types sent to it, the p99 target in ms.
fn endpoints(a: &Args) -> [(&'static str, Vec<Op>, f64); 2] {
    let listing = [
        Op::CameraKind,
        Op::LabelRange,
        Op::Word,
        Op::Page2,
        Op::Recorded,
    ];
    [
        (
            "/v1/insights",
            listing
                .into_iter()
                .filter(|o| *o != Op::Recorded || a.recorded > 0)
                .collect(),
            20.0,
        ),
        (
            "/v1/search",
            vec![
                Op::Search,
                Op::SearchCamera,
                Op::SearchKind,
                Op::SearchCameraKind,
            ],
            50.0,
        ),
    ]
}

fn serve_and_load(a: &Args, data: &DataSet, store: &Store) {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = tmp.path().join("serve.toml");
    // No cameras: the API over the stored insights. Retention is long so that the sweep at
    // start-up keeps a cached data set that is older than 30 days.
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[api]\nlisten = \"127.0.0.1:{port}\"\n# The load generator is one client doing hundreds of requests a second.\nrate_limit = 0\n[infer]\nenabled = true\nretention = \"3650days\"\n[log]\nlevel = \"warn\"\n",
            store.dir.display().to_string()
        ),
    )
    .unwrap();
    let t = Instant::now();
    let mut server = start_panoptes(&config, tmp.path().join("serve.log"), &base, "panoptes run");
    println!(
        "\nserve: panoptes run over the store on {base} (ready in {:.1} s, RSS {:.0} MiB)",
        t.elapsed().as_secs_f64(),
        rss_mib(server.pid())
    );
    let ctx = LoadCtx {
        base,
        data,
        min_ms: store.min_ms,
        max_ms: store.max_ms,
        recorded: recorded_cameras(data, a.recorded),
    };
    let server_pid = server.pid().to_string();
    for (title, ops, target) in endpoints(a) {
        eprintln!(
            "load: {title}, {} clients, {} s warm-up + {} s",
            a.clients, a.warmup, a.secs
        );
        let (s0, c0, t0) = (cpu_secs(&server_pid), cpu_secs("self"), Instant::now());
        let samples = load(&ctx, &ops, a.clients, a.warmup, a.secs);
        let wall = t0.elapsed().as_secs_f64();
        let (s1, c1) = (cpu_secs(&server_pid), cpu_secs("self"));
        server.check_alive("panoptes run");
        report(title, &samples, a.secs as f64, target);
        // CPU per request holds steadier than latency when other work shares the cores.
        let per_request = (s1 - s0) / wall * a.secs as f64 * 1000.0 / samples.len().max(1) as f64;
        println!(
            "CPU over the phase: server {:.2} cores ({per_request:.1} ms per request), load clients {:.2} cores (of {}); server RSS {:.0} MiB",
            (s1 - s0) / wall,
            (c1 - c0) / wall,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            rss_mib(server.pid())
        );
    }
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Phase 4: the store in process, what `InsightStore::query` and `InsightStore::search` cost per
// request type, one call at a time, without HTTP, the clip lookups or the query's embedding.

fn store_calls(a: &Args, data: &DataSet, store: &Store) {
    let t = Instant::now();
    let s = InsightStore::sqlite(&store.dir.join("insights.db")).unwrap();
    println!(
        "\nstore: opened in process in {:.2} s (the texts' embeddings loaded); {} calls per endpoint, one at a time",
        t.elapsed().as_secs_f64(),
        a.calls
    );
    let embedder = load_embedder();
    let _ = embedder.embed(&["warm up"]);
    let mut embed_ms = Vec::new();
    let mut vectors = HashMap::new();
    for q in SEARCHES {
        let t = Instant::now();
        let v = embedder.embed(&[q]).unwrap().remove(0);
        embed_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        vectors.insert(q, v);
    }
    embed_ms.sort_by(f64::total_cmp);
    println!(
        "store: /v1/search also embeds its query (MiniLM, one session): p50 {:.2} ms, max {:.2} ms over the {} queries; not counted below",
        pct(&embed_ms, 0.5),
        embed_ms.last().copied().unwrap_or(f64::NAN),
        SEARCHES.len()
    );
    // Queries that arrive together can share one run of the model.
    for batch in [2, 4, 8] {
        let mut per_query = Vec::new();
        for _ in 0..5 {
            for chunk in SEARCHES.chunks(batch) {
                let t = Instant::now();
                embedder.embed(chunk).unwrap();
                per_query.push(t.elapsed().as_secs_f64() * 1000.0 / chunk.len() as f64);
            }
        }
        per_query.sort_by(f64::total_cmp);
        println!(
            "store: the same queries embedded {batch} to a run: p50 {:.2} ms per query",
            pct(&per_query, 0.5)
        );
    }
    let ctx = LoadCtx {
        base: String::new(),
        data,
        min_ms: store.min_ms,
        max_ms: store.max_ms,
        recorded: recorded_cameras(data, a.recorded),
    };
    let mut rng = StdRng::seed_from_u64(SEED ^ 0x5707e);
    for (title, ops, _) in endpoints(a) {
        let mut samples = Vec::with_capacity(a.calls);
        for _ in 0..a.calls {
            let d = draw(&ctx, ops[rng.random_range(0..ops.len())], &mut rng);
            let (ms, found) = if let Some(text) = d.search {
                let t = Instant::now();
                let hits = s.search(&vectors[text], &d.filter, d.limit).unwrap();
                (t.elapsed(), Some(hits.len()))
            } else {
                let mut q = Query {
                    filter: d.filter.clone(),
                    q: d.words.map(str::to_string),
                    limit: d.limit,
                    cursor: None,
                };
                if d.page2 {
                    q.cursor = s.query(&q).unwrap().1;
                }
                let t = Instant::now();
                let page = (!d.page2 || q.cursor.is_some()).then(|| s.query(&q).unwrap().0);
                (t.elapsed(), page.map(|p| p.len()))
            };
            samples.push(Sample {
                op: d.op,
                variant: d.variant,
                ms: ms.as_secs_f64() * 1000.0,
                ok: found.is_some(),
                empty: found.is_none_or(|n| d.must_match && n == 0),
            });
        }
        println!(
            "\n| store calls for {title} | calls | p50 ms | p90 ms | p99 ms | max ms | no cursor | empty |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let row = |name: &str, rows: &[&Sample]| {
            let mut ms: Vec<f64> = rows.iter().filter(|s| s.ok).map(|s| s.ms).collect();
            ms.sort_by(f64::total_cmp);
            println!(
                "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
                rows.len(),
                pct(&ms, 0.5),
                pct(&ms, 0.9),
                pct(&ms, 0.99),
                ms.last().copied().unwrap_or(f64::NAN),
                rows.iter().filter(|s| !s.ok).count(),
                rows.iter().filter(|s| s.ok && s.empty).count()
            );
        };
        let mut by_op: BTreeMap<Op, Vec<&Sample>> = BTreeMap::new();
        for s in &samples {
            by_op.entry(s.op).or_default().push(s);
        }
        for (op, rows) in &by_op {
            row(op.name(), rows);
        }
        row("**all**", &samples.iter().collect::<Vec<_>>());
        slowest(&samples);
    }
}

// ---------------------------------------------------------------------------------------------
// --explain: the SQL behind each request type.

const COLUMNS: &str =
    "seq, id, camera, kind, ts, ts_end, label, text, confidence, bbox, snapshot, clip, model";

fn explain(store: &Store, data: &DataSet) {
    use rusqlite::types::Value as V;
    let db = store.dir.join("insights.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let text_id = |body: &str| -> i64 {
        conn.query_row("SELECT id FROM texts WHERE body = ?1", [body], |r| r.get(0))
            .unwrap_or(0)
    };
    let busy = data.cameras[0].clone();
    let quiet = data.cameras[data.cameras.len() - 1].clone();
    let text_cam = data.cameras[1].clone();
    let order = " ORDER BY ts DESC, seq DESC LIMIT 51";
    let base = format!("SELECT {COLUMNS} FROM insights WHERE 1 = 1");
    let words = format!(
        "SELECT {COLUMNS} FROM insights_fts JOIN insights ON insights.seq = insights_fts.rowid WHERE insights_fts MATCH ?"
    );
    // A semantic search checks its best texts 64 at a time for insights passing the filters;
    // the labels are the worst batch for a camera that hears speech.
    let labels: Vec<i64> = LABELS.iter().take(64).map(|l| text_id(l)).collect();
    let labels = V::Text(serde_json::to_string(&labels).unwrap());
    let exists = "SELECT t.key FROM json_each(?) AS t WHERE EXISTS (SELECT 1 FROM insights WHERE text_id = t.value";
    let mid = (store.min_ms + store.max_ms) / 2;
    let page_cursor: (i64, i64) = conn
        .query_row(
            "SELECT ts, seq FROM insights WHERE camera = ?1 ORDER BY ts DESC, seq DESC LIMIT 1 OFFSET 49",
            [&busy],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or((store.max_ms, i64::MAX));
    let cases: Vec<(String, String, Vec<V>)> = vec![
        (
            format!("camera + kind ({busy}, text)"),
            format!("{base} AND camera = ? AND kind = ?{order}"),
            vec![V::Text(busy.clone()), V::Text("text".into())],
        ),
        (
            format!("camera + kind ({quiet}, speech: none)"),
            format!("{base} AND camera = ? AND kind = ?{order}"),
            vec![V::Text(quiet.clone()), V::Text("speech".into())],
        ),
        (
            "label + range (person, 1 h)".into(),
            format!("{base} AND label = ? AND coalesce(ts_end, ts) >= ? AND ts < ?{order}"),
            vec![
                V::Text("person".into()),
                V::Integer(mid - HOUR_MS),
                V::Integer(mid),
            ],
        ),
        (
            "label + range (giraffe, 1 h: rare)".into(),
            format!("{base} AND label = ? AND coalesce(ts_end, ts) >= ? AND ts < ?{order}"),
            vec![
                V::Text("giraffe".into()),
                V::Integer(mid - HOUR_MS),
                V::Integer(mid),
            ],
        ),
        (
            "label + range (bicycle, 1 h)".into(),
            format!("{base} AND label = ? AND coalesce(ts_end, ts) >= ? AND ts < ?{order}"),
            vec![
                V::Text("bicycle".into()),
                V::Integer(mid - HOUR_MS),
                V::Integer(mid),
            ],
        ),
        (
            "q=hangar".into(),
            format!("{words} ORDER BY insights_fts.rowid DESC LIMIT 51"),
            vec![V::Text("\"hangar\"".into())],
        ),
        (
            "q=person".into(),
            format!("{words} ORDER BY insights_fts.rowid DESC LIMIT 51"),
            vec![V::Text("\"person\"".into())],
        ),
        (
            format!("page 2 ({busy})"),
            format!("{base} AND camera = ? AND (ts < ? OR (ts = ? AND seq < ?)){order}"),
            vec![
                V::Text(busy.clone()),
                V::Integer(page_cursor.0),
                V::Integer(page_cursor.0),
                V::Integer(page_cursor.1),
            ],
        ),
        (
            "search, one text (person), no filter".into(),
            format!(
                "SELECT {COLUMNS} FROM insights WHERE text_id = ? ORDER BY ts DESC, seq DESC LIMIT 10"
            ),
            vec![V::Integer(text_id("person"))],
        ),
        (
            format!("search, one text (person) + camera {quiet}"),
            format!(
                "SELECT {COLUMNS} FROM insights WHERE text_id = ? AND camera = ? ORDER BY ts DESC, seq DESC LIMIT 10"
            ),
            vec![V::Integer(text_id("person")), V::Text(quiet.clone())],
        ),
        (
            format!("search, one text (EMERGENCY EXIT) + camera {text_cam} + kind text"),
            format!(
                "SELECT {COLUMNS} FROM insights WHERE text_id = ? AND camera = ? AND kind = ? ORDER BY ts DESC, seq DESC LIMIT 10"
            ),
            vec![
                V::Integer(text_id("EMERGENCY EXIT")),
                V::Text(text_cam.clone()),
                V::Text("text".into()),
            ],
        ),
        (
            format!("search, 64 texts (labels) checked + camera {busy} + kind speech"),
            format!("{exists} AND camera = ? AND kind = ?)"),
            vec![
                labels.clone(),
                V::Text(busy.clone()),
                V::Text("speech".into()),
            ],
        ),
        (
            "search, 64 texts (labels) checked + kind speech".into(),
            format!("{exists} AND kind = ?)"),
            vec![labels, V::Text("speech".into())],
        ),
        (
            "search, one text (car) + kind speech (none)".into(),
            format!(
                "SELECT {COLUMNS} FROM insights WHERE text_id = ? AND kind = ? ORDER BY ts DESC, seq DESC LIMIT 10"
            ),
            vec![V::Integer(text_id("car")), V::Text("speech".into())],
        ),
    ];
    println!("\nexplain: the SQL of each request type, in process (no HTTP), median of 5 runs");
    for (name, sql, params) in cases {
        let mut stmt = conn.prepare(&sql).unwrap();
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..5 {
            let t = Instant::now();
            rows = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |_| Ok(()))
                .unwrap()
                .count();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let steps: Vec<String> = plan
            .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .map_while(Result::ok)
            .collect();
        println!(
            "- {name}: {:.2} ms, {rows} rows\n    plan: {}",
            times[2],
            steps.join(" | ")
        );
    }
    // How many rows each search text has: a filter the text's rows rarely pass makes the
    // per-text query walk all of them.
    let person: i64 = conn
        .query_row(
            "SELECT count(*) FROM insights WHERE text_id = ?1",
            [text_id("person")],
            |r| r.get(0),
        )
        .unwrap_or(0);
    println!("  (rows with the text \"person\": {person})");
}

// ---------------------------------------------------------------------------------------------
// Phase 5: end to end.

struct Event {
    arrived: DateTime<Utc>,
    kind: String,
    extended: bool,
    delay_s: f64,
}

fn e2e(a: &Args) {
    let fx = fixtures_dir();
    let (lobby, photos) = (fx.join("lobby.mp4"), fx.join("photos.mp4"));
    assert!(
        lobby.is_file() && photos.is_file(),
        "fixtures missing in {} (tests/fixtures/generate.sh makes them)",
        fx.display()
    );
    let n = a.cameras;
    let copies = n.div_ceil(2);
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "\ne2e: {n} replayed cameras ({} x lobby.mp4: drawn text + speech, {} x photos.mp4: person, cat, cup; 640x360 15 fps H.264 + AAC), sampling every {}, {}, recording on, infer batch {}, {} s window",
        copies,
        n - copies,
        a.interval,
        if a.off.is_empty() {
            "every model on".to_string()
        } else {
            format!("off: {}", a.off.join(", "))
        },
        a.infer_batch
            .map_or("default".to_string(), |b| b.to_string()),
        a.e2e_secs
    );
    let rport = free_port();
    let mut replay = Proc::spawn(
        Command::new(BIN)
            .args(["replay", "--listen", &format!("127.0.0.1:{rport}")])
            .args(["--copies", &copies.to_string()])
            .arg(&lobby)
            .arg(&photos),
        tmp.path().join("replay.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&replay.log)
        .unwrap_or_default()
        .matches("serving rtsp://")
        .count()
        < 2 * copies
    {
        replay.check_alive("panoptes replay");
        assert!(Instant::now() < deadline, "replay mounts did not come up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cfg = format!(
        "data_dir = {:?}\n[api]\nlisten = \"127.0.0.1:{port}\"\n[sampling]\ninterval = \"{}\"\n[infer]\nenabled = true\n{}[log]\nlevel = \"warn\"\n",
        tmp.path().join("data").display().to_string(),
        a.interval,
        a.infer_batch
            .map_or(String::new(), |b| format!("batch = {b}\n"))
    );
    for model in &a.off {
        cfg.push_str(&format!("[infer.{model}]\nenabled = false\n"));
    }
    for i in 0..n {
        let (stem, k) = if i % 2 == 0 {
            ("lobby", i / 2)
        } else {
            ("photos", i / 2)
        };
        cfg.push_str(&format!(
            "[[cameras]]\nid = \"{stem}-{k}\"\nurl = \"rtsp://127.0.0.1:{rport}/{stem}-{k}\"\n"
        ));
    }
    let config = tmp.path().join("e2e.toml");
    std::fs::write(&config, cfg).unwrap();
    let mut server = start_panoptes(&config, tmp.path().join("run.log"), &base, "panoptes run");
    let pid = server.pid();

    // Live events from the start, so that nothing is missed.
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (events, stop, url) = (events.clone(), stop.clone(), format!("{base}/v1/events"));
        std::thread::spawn(move || {
            let Ok(resp) = agent(None).get(&url).call() else {
                eprintln!("  cannot subscribe to {url}");
                return;
            };
            let reader = BufReader::new(resp.into_body().into_reader());
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let arrived = Utc::now();
                let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                let time = |k: &str| {
                    v[k].as_str()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc))
                };
                let Some(ts) = time("ts") else { continue };
                let end = time("ts_end");
                let last = end.map_or(ts, |e| e.max(ts));
                events.lock().unwrap().push(Event {
                    arrived,
                    kind: v["kind"].as_str().unwrap_or("?").to_string(),
                    extended: end.is_some(),
                    delay_s: (arrived - last).num_microseconds().unwrap_or(0) as f64 / 1e6,
                });
            }
        });
    }

    let http = agent(Some(Duration::from_secs(10)));
    let t = Instant::now();
    let mut streaming = 0;
    while t.elapsed() < Duration::from_secs(120) {
        server.check_alive("panoptes run");
        if let Ok((200, v)) = get(&http, &format!("{base}/v1/cameras")) {
            streaming = v["items"].as_array().map_or(0, |c| {
                c.iter().filter(|c| c["state"] == "streaming").count()
            });
            if streaming == n {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "  {streaming}/{n} cameras streaming after {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // /metrics is Prometheus text.
    let metrics_text = || -> String {
        http.get(&format!("{base}/metrics"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    };
    let m0 = metrics_text();
    let start = Utc::now();
    let (cpu0, replay0, t0) = (cpu_secs(pid), cpu_secs(replay.pid()), Instant::now());
    let mut peak_rss = 0.0f64;
    while t0.elapsed() < Duration::from_secs(a.e2e_secs) {
        std::thread::sleep(Duration::from_secs(1));
        server.check_alive("panoptes run");
        peak_rss = peak_rss.max(rss_mib(pid));
    }
    let wall = t0.elapsed().as_secs_f64();
    let end = Utc::now();
    let cores = (cpu_secs(pid) - cpu0) / wall;
    let replay_cores = (cpu_secs(replay.pid()) - replay0) / wall;
    let m1 = metrics_text();
    stop.store(true, Ordering::Relaxed);
    server.stop();
    replay.stop();

    let delta = |name: &str| metric(&m1, name) - metric(&m0, name);
    let events = std::mem::take(&mut *events.lock().unwrap());
    let window: Vec<&Event> = events
        .iter()
        .filter(|e| e.arrived >= start && e.arrived <= end)
        .collect();
    println!(
        "\n| e2e: capture -> queryable ({n} cameras) | events | p50 s | p99 s | max s | min s |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, rows: &[&Event]| -> (f64, f64) {
        let mut d: Vec<f64> = rows.iter().map(|e| e.delay_s).collect();
        d.sort_by(f64::total_cmp);
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            d.len(),
            pct(&d, 0.5),
            pct(&d, 0.99),
            d.last().copied().unwrap_or(f64::NAN),
            d.first().copied().unwrap_or(f64::NAN)
        );
        (pct(&d, 0.5), pct(&d, 0.99))
    };
    let (p50, p99) = row("**all insights**", &window);
    let fresh: Vec<&Event> = window.iter().copied().filter(|e| !e.extended).collect();
    row("new (no ts_end)", &fresh);
    let ext: Vec<&Event> = window.iter().copied().filter(|e| e.extended).collect();
    row("extended or speech (ts_end)", &ext);
    for kind in ["object", "text", "speech"] {
        let rows: Vec<&Event> = window.iter().copied().filter(|e| e.kind == kind).collect();
        row(kind, &rows);
    }
    println!(
        "e2e: p50 {p50:.2} s (target < 1 s: {}), p99 {p99:.2} s (target < 3 s: {})",
        if p50 < 1.0 { "met" } else { "NOT met" },
        if p99 < 3.0 { "met" } else { "NOT met" }
    );
    println!("delay over the window, by arrival (10 s buckets): events, p50 s, p99 s");
    let mut buckets: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for e in &window {
        buckets
            .entry((e.arrived - start).num_seconds() / 10)
            .or_default()
            .push(e.delay_s);
    }
    for (b, mut d) in buckets {
        d.sort_by(f64::total_cmp);
        println!(
            "  {:>3}-{:<3} s: {:>6} {:>8.2} {:>8.2}",
            b * 10,
            b * 10 + 10,
            d.len(),
            pct(&d, 0.5),
            pct(&d, 0.99)
        );
    }
    let per_s = |name: &str| delta(name) / wall;
    println!(
        "frames sampled {:.1}/s (expected {:.1}/s), inferred {:.1}/s; insights written {:.1}/s; mean infer batch {:.2} s",
        per_s("panoptes_media_samples_total"),
        n as f64 / humantime::parse_duration(&a.interval).map_or(10.0, |d| d.as_secs_f64()),
        per_s("panoptes_infer_frames_total"),
        per_s("panoptes_infer_insights_written_total"),
        {
            let (s, c) = (
                delta("panoptes_infer_batch_seconds_sum"),
                delta("panoptes_infer_batch_seconds_count"),
            );
            if c > 0.0 { s / c } else { f64::NAN }
        }
    );
    println!(
        "dropped in the window: media {:.0} (decode queue); bus redelivered {:.0}; infer errors {:.0}",
        delta("panoptes_media_dropped_total"),
        delta("panoptes_bus_redelivered_total"),
        delta("panoptes_infer_errors_total")
    );
    println!(
        "bus streams (in the window: published, dropped as oldest when full; at the end: waiting or in flight)"
    );
    for stream in ["frames", "audio", "insights"] {
        let label = format!("stream=\"{stream}\"");
        let at = |page: &str, name: &str| metric_with(page, name, &label);
        let window = |name: &str| at(&m1, name) - at(&m0, name);
        println!(
            "  {stream}: published {:.0}, dropped {:.0}; backlog {:.0}",
            window("panoptes_bus_published_total"),
            window("panoptes_bus_dropped_total"),
            at(&m1, "panoptes_bus_published_total")
                - at(&m1, "panoptes_bus_acked_total")
                - at(&m1, "panoptes_bus_dropped_total")
                - at(&m1, "panoptes_bus_dead_lettered_total")
        );
    }
    println!(
        "panoptes run: {cores:.2} CPU cores, peak RSS {peak_rss:.0} MiB; replay server {replay_cores:.2} cores; machine: {}",
        machine()
    );
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
