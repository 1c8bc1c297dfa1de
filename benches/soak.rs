//! Soak: many replayed cameras for a long while with every stage on, and the replay server
//! killed and restarted over and over, watching for what grows.
//!
//! `cargo bench --bench soak -- [--cameras 200] [--minutes 15] [--restarts 50] [--every 10]
//! [--warmup 120] [--no-infer]`
//!
//! `panoptes replay --copies <cameras>` serves `lobby.mp4` (H.264 with AAC: drawn text and a
//! spoken sentence) and `panoptes run` takes every copy on the embedded defaults with every
//! stage on: recording in 10 s clips, a frame sampled per camera every 10 s, audio chunks,
//! detection, OCR and speech (unless `--no-infer`), the SQLite insight store. Two cores
//! cannot analyse 20 frames/s: inference falls behind by design, and what is bounded is the
//! point (frames older than `infer.max_frame_age` are skipped and counted).
//!
//! During the run the replay server is killed and started again `--restarts` times, evenly
//! spread: each time every camera loses its session and reconnects.
//!
//! Every `--every` seconds: RSS and threads of panoptes (/proc), tokio tasks alive
//! (`panoptes_runtime_tasks`), the decoder queue (`panoptes_media_decode_queue`), the
//! in-process bus (`panoptes_bus_queued{stream}`), cameras streaming, reconnects, frames
//! received, clips, and frames analysed or skipped. The report compares the end with the
//! end of the warm-up (`--warmup` seconds after every camera first streams): RSS growth
//! (target < 5%), task and thread counts, and the largest queue depths seen against their
//! bounds. Figures are printed, never asserted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/host.rs"]
mod host;
use host::{cpu_secs, free_port, rss_mib};

const BIN: &str = env!("CARGO_BIN_EXE_panoptes");

struct Args {
    cameras: usize,
    minutes: f64,
    restarts: usize,
    every: u64,
    warmup: u64,
    infer: bool,
}

fn args() -> Args {
    let mut a = Args {
        cameras: 200,
        minutes: 15.0,
        restarts: 50,
        every: 10,
        warmup: 120,
        infer: true,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        let mut used = true;
        match argv[i].as_str() {
            "--cameras" => a.cameras = val.parse().unwrap_or(a.cameras).max(1),
            "--minutes" => a.minutes = val.parse().unwrap_or(a.minutes),
            "--restarts" => a.restarts = val.parse().unwrap_or(a.restarts),
            "--every" => a.every = val.parse().unwrap_or(a.every).max(1),
            "--warmup" => a.warmup = val.parse().unwrap_or(a.warmup),
            "--no-infer" => {
                a.infer = false;
                used = false;
            }
            // `cargo bench` passes `--bench`; anything else unknown is ignored too.
            _ => used = false,
        }
        i += if used { 2 } else { 1 };
    }
    a
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> PathBuf {
    let dir = std::env::var_os("PANOPTES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/fixtures/out"));
    let path = dir.join("lobby.mp4");
    assert!(
        path.is_file(),
        "{} is missing: run `make fixtures` (make bench-soak does)",
        path.display()
    );
    path
}

/// `panoptes replay` on a fixed port, so it can be killed and started again.
struct Replay {
    child: Option<Child>,
    port: u16,
    copies: usize,
}

impl Replay {
    fn start(copies: usize) -> Replay {
        let mut r = Replay {
            child: None,
            port: free_port(),
            copies,
        };
        r.restart();
        r
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts it and returns once every copy is served.
    fn restart(&mut self) {
        self.kill();
        let mut child = Command::new(BIN)
            .args(["replay", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--copies", &self.copies.to_string()])
            .arg(fixture())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start panoptes replay");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut ready = 0;
        for line in out.lines().map_while(Result::ok) {
            if line.contains("serving rtsp://") {
                ready += 1;
                if ready == self.copies {
                    break;
                }
            }
        }
        assert_eq!(ready, self.copies, "replay server did not come up");
        self.child = Some(child);
    }

    fn url(&self, i: usize) -> String {
        format!("rtsp://127.0.0.1:{}/lobby-{i}", self.port)
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Prometheus samples by full series name (`name{labels}`).
fn scrape(base: &str) -> HashMap<String, f64> {
    let Ok(mut r) = ureq::get(&format!("{base}/metrics")).call() else {
        return HashMap::new();
    };
    let text = r.body_mut().read_to_string().unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `name` (any labels).
fn total(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

fn series(m: &HashMap<String, f64>, name: &str, label: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(label))
        .map(|(_, v)| v)
        .sum()
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn streaming(base: &str) -> usize {
    let Ok(mut r) = ureq::get(&format!("{base}/v1/cameras")).call() else {
        return 0;
    };
    let v: serde_json::Value = r.body_mut().read_json().unwrap_or_default();
    v["items"].as_array().map_or(0, |items| {
        items.iter().filter(|c| c["state"] == "streaming").count()
    })
}

#[derive(Clone, Debug)]
struct Sample {
    t: f64,
    rss: f64,
    threads: u64,
    tasks: f64,
    decode_queue: f64,
    bus_frames: f64,
    bus_audio: f64,
    streaming: usize,
    reconnects: f64,
    frames: f64,
    clips: f64,
    analysed: f64,
    skipped: f64,
    cpu: f64,
}

fn main() {
    let a = args();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    println!(
        "soak: {} cameras, {} min, {} replay restarts, inference {}, machine {cores} cores / {mem_gib:.0} GiB",
        a.cameras,
        a.minutes,
        a.restarts,
        if a.infer { "on" } else { "off" }
    );
    let mut replay = Replay::start(a.cameras);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let models = std::env::var_os("PANOPTES_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    let mut cfg = format!(
        "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\nrate_limit = 0\n\
         [sampling]\ninterval = \"10s\"\n[recording]\nsegment = \"10s\"\n\
         [edge]\nbackoff_max = \"4s\"\n[infer]\nenabled = {}\n[log]\nlevel = \"warn\"\n",
        dir.path().join("data").display(),
        a.infer
    );
    for i in 0..a.cameras {
        cfg.push_str(&format!(
            "[[cameras]]\nid = \"cam-{i}\"\nurl = \"{}\"\n",
            replay.url(i)
        ));
    }
    let path = dir.path().join("soak.toml");
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.path().join("panoptes.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("PANOPTES_MODELS", &models)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start panoptes run");
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    while streaming(&base) < a.cameras && Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            panic!(
                "panoptes exited with {s}: {}",
                std::fs::read_to_string(dir.path().join("panoptes.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "{}/{} cameras streaming after {:.0} s",
        streaming(&base),
        a.cameras,
        started.elapsed().as_secs_f64()
    );

    let run = Duration::from_secs_f64(a.minutes * 60.0);
    let restart_every = run.div_f64((a.restarts + 1) as f64);
    let t0 = Instant::now();
    let mut next_sample = t0;
    let mut next_restart = t0 + restart_every;
    let mut restarts = 0;
    let mut samples: Vec<Sample> = Vec::new();
    println!(
        "{:>6} {:>8} {:>7} {:>6} {:>7} {:>7} {:>6} {:>9} {:>10} {:>10} {:>7} {:>8} {:>8} {:>6}",
        "t_s",
        "rss_mib",
        "threads",
        "tasks",
        "decodeq",
        "bus_fr",
        "bus_au",
        "streaming",
        "reconnects",
        "frames",
        "clips",
        "analysed",
        "skipped",
        "cores"
    );
    let mut last_cpu = (cpu_secs(pid), Instant::now());
    while t0.elapsed() < run {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("panoptes exited during the soak with {s}");
        }
        let now = Instant::now();
        if restarts < a.restarts && now >= next_restart {
            replay.restart();
            restarts += 1;
            next_restart += restart_every;
        }
        if now >= next_sample {
            let m = scrape(&base);
            let cpu = cpu_secs(pid);
            let cores_used = (cpu - last_cpu.0) / last_cpu.1.elapsed().as_secs_f64().max(0.001);
            last_cpu = (cpu, Instant::now());
            let s = Sample {
                t: t0.elapsed().as_secs_f64(),
                rss: rss_mib(pid),
                threads: threads(pid),
                tasks: total(&m, "panoptes_runtime_tasks"),
                decode_queue: total(&m, "panoptes_media_decode_queue"),
                bus_frames: series(&m, "panoptes_bus_queued", "stream=\"frames\""),
                bus_audio: series(&m, "panoptes_bus_queued", "stream=\"audio\""),
                streaming: streaming(&base),
                reconnects: total(&m, "panoptes_edge_reconnects_total"),
                frames: total(&m, "panoptes_edge_frames_received_total"),
                clips: total(&m, "panoptes_recorder_segments_total"),
                analysed: total(&m, "panoptes_infer_frames_total"),
                skipped: total(&m, "panoptes_infer_frames_skipped_total"),
                cpu: cores_used,
            };
            println!(
                "{:>6.0} {:>8.1} {:>7} {:>6.0} {:>7.0} {:>7.0} {:>6.0} {:>9} {:>10.0} {:>10.0} {:>7.0} {:>8.0} {:>8.0} {:>6.2}",
                s.t,
                s.rss,
                s.threads,
                s.tasks,
                s.decode_queue,
                s.bus_frames,
                s.bus_audio,
                s.streaming,
                s.reconnects,
                s.frames,
                s.clips,
                s.analysed,
                s.skipped,
                s.cpu
            );
            samples.push(s);
            next_sample += Duration::from_secs(a.every);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let after_warmup: Vec<&Sample> = samples.iter().filter(|s| s.t >= a.warmup as f64).collect();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let stop = Instant::now();
    let status = child.wait();
    println!(
        "stopped with {:?} in {:.1} s",
        status.map(|s| s.code()),
        stop.elapsed().as_secs_f64()
    );
    let (Some(first), Some(last)) = (after_warmup.first(), after_warmup.last()) else {
        println!("the run was shorter than the warm-up: nothing to compare");
        return;
    };
    let max =
        |f: &dyn Fn(&Sample) -> f64| after_warmup.iter().map(|s| f(s)).fold(f64::MIN, f64::max);
    let tail: Vec<&&Sample> = after_warmup.iter().rev().take(3).collect();
    let end_rss = tail.iter().map(|s| s.rss).sum::<f64>() / tail.len() as f64;
    let wall = last.t - first.t;
    println!(
        "\nsummary (from the end of the {} s warm-up to the end):",
        a.warmup
    );
    println!(
        "  RSS: {:.1} MiB after warm-up, {:.1} MiB at the end (mean of the last 3 samples), max {:.1}: growth {:+.1}%",
        first.rss,
        end_rss,
        max(&|s| s.rss),
        (end_rss - first.rss) / first.rss * 100.0
    );
    println!(
        "  tokio tasks: {:.0} -> {:.0} (max {:.0}); threads: {} -> {} (max {:.0})",
        first.tasks,
        last.tasks,
        max(&|s| s.tasks),
        first.threads,
        last.threads,
        max(&|s| s.threads as f64)
    );
    println!(
        "  queues, largest seen: decoder {:.0}, bus frames {:.0}, bus audio {:.0}",
        max(&|s| s.decode_queue),
        max(&|s| s.bus_frames),
        max(&|s| s.bus_audio)
    );
    println!(
        "  replay restarts: {restarts}; reconnects counted: {:.0}; cameras streaming at the end: {}/{}",
        last.reconnects, last.streaming, a.cameras
    );
    println!(
        "  frames received: {:.0}/s ({:.1}/s per camera); clips: {:.0}; analysed {:.2} frames/s, skipped as stale {:.0}; panoptes used {:.2} cores",
        (last.frames - first.frames) / wall,
        (last.frames - first.frames) / wall / a.cameras as f64,
        last.clips - first.clips,
        (last.analysed - first.analysed) / wall,
        last.skipped - first.skipped,
        after_warmup.iter().map(|s| s.cpu).sum::<f64>() / after_warmup.len() as f64
    );
}
