//! Phases 2 and 3: `panoptes run` serves the store while closed-loop clients load it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use panoptes::store::insights::{Filter, Kind};

use crate::dataset::*;
use crate::host::{cpu_secs, free_port, rss_mib};
use crate::store::*;
use crate::support::*;
use crate::{Args, DAY_MS, HOUR_MS, SEED};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) enum Op {
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
    pub(crate) fn name(self) -> &'static str {
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
pub(crate) struct Sample {
    pub(crate) op: Op,
    pub(crate) variant: String,
    pub(crate) ms: f64,
    pub(crate) ok: bool,
    /// Status 200 but no items where the data set has some.
    pub(crate) empty: bool,
}

pub(crate) struct LoadCtx<'a> {
    pub(crate) base: String,
    pub(crate) data: &'a DataSet,
    pub(crate) min_ms: i64,
    pub(crate) max_ms: i64,
    pub(crate) recorded: Vec<usize>,
}

pub(crate) fn kind_name(k: Kind) -> &'static str {
    k.as_str()
}

/// One request, drawn: the HTTP load sends it, the in-process `store` phase calls the store
/// with it, so both see the same mix.
pub(crate) struct Draw {
    pub(crate) op: Op,
    pub(crate) variant: String,
    pub(crate) filter: Filter,
    /// `q=` words of a listing.
    pub(crate) words: Option<&'static str>,
    /// The text of a semantic search (its `q=`).
    pub(crate) search: Option<&'static str>,
    pub(crate) limit: usize,
    /// Only the second page is timed: the first one gives its cursor.
    pub(crate) page2: bool,
    /// The data set has items for it: an empty answer is a fault.
    pub(crate) must_match: bool,
}

impl Draw {
    /// Path and query of the (first) request.
    pub(crate) fn path(&self) -> String {
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
pub(crate) fn draw(ctx: &LoadCtx<'_>, op: Op, rng: &mut StdRng) -> Draw {
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
pub(crate) fn request(ctx: &LoadCtx<'_>, agent: &ureq::Agent, op: Op, rng: &mut StdRng) -> Sample {
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
pub(crate) fn load(
    ctx: &LoadCtx<'_>,
    ops: &[Op],
    clients: usize,
    warmup: u64,
    secs: u64,
) -> Vec<Sample> {
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

pub(crate) fn report(title: &str, samples: &[Sample], secs: f64, target_ms: f64) {
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
pub(crate) fn slowest(samples: &[Sample]) {
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
pub(crate) fn endpoints(a: &Args) -> [(&'static str, Vec<Op>, f64); 2] {
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

pub(crate) fn serve_and_load(a: &Args, data: &DataSet, store: &Store) {
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
