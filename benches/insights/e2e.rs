//! Phase 5: end to end, from frame capture to insight, at `--cameras` replayed cameras.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::host::{cpu_secs, free_port, rss_mib};
use crate::support::*;
use crate::{Args, BIN};

pub(crate) struct Event {
    pub(crate) arrived: DateTime<Utc>,
    pub(crate) kind: String,
    pub(crate) extended: bool,
    pub(crate) delay_s: f64,
}

pub(crate) fn e2e(a: &Args) {
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
