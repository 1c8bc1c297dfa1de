//! Ingest benchmark: how many replayed cameras one node holds at real time, and at what
//! cost, against the peers' ways of doing the same work on the same replayed cameras.
//!
//! `cargo bench --bench ingest -- [--counts 100,500,1000] [--secs 60] [--peer-max 200]`
//!
//! For each N: `panoptes replay --copies N` serves a 640x360@15fps H.264 recording (2 s GOP,
//! ~300 kbit/s); then, one after the other, each system records every camera in 10 s segments
//! for `--secs` seconds after a warm-up:
//! - Panoptes: `panoptes run` with N cameras, recording on, one keyframe sampled per 10 s;
//! - GStreamer: one `rtspsrc ! rtph264depay ! h264parse ! splitmuxsink` pipeline per camera
//!   (all in one gst-launch process, the cheapest way to run them);
//! - ffmpeg: one `ffmpeg -c copy -f segment` process per camera.
//!
//! Peers run at most `--peer-max` cameras (a process per camera at 1000 would exhaust the
//! machine before measuring anything); their figure of merit is per core anyway.
//! Reported: share of real-time frame rate held, cameras held at >= 95% of real time,
//! CPU in cores, RSS, clips and samples, and cameras held per core with Panoptes' ratio.
//! Figures are printed, never asserted.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/host.rs"]
mod host;
use host::{cpu_secs, free_port, rss_mib};

const BIN: &str = env!("CARGO_BIN_EXE_panoptes");
const FPS: f64 = 15.0;

struct Args {
    counts: Vec<usize>,
    secs: u64,
    warmup: u64,
    peer_max: usize,
    peers: bool,
}

fn args() -> Args {
    let mut a = Args {
        counts: vec![100, 500, 1000],
        secs: 60,
        warmup: 15,
        peer_max: 200,
        peers: true,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--counts" => a.counts = val().split(',').filter_map(|s| s.parse().ok()).collect(),
            "--secs" => a.secs = val().parse().unwrap_or(a.secs),
            "--warmup" => a.warmup = val().parse().unwrap_or(a.warmup),
            "--peer-max" => a.peer_max = val().parse().unwrap_or(a.peer_max),
            "--no-peers" => {
                a.peers = false;
                i -= 1;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// The recording every camera replays, generated once into the cache.
fn fixture() -> PathBuf {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"))
        .join("panoptes/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cam.mp4");
    if !path.exists() {
        let tmp = dir.join("cam.part.mp4");
        let status = Command::new("gst-launch-1.0")
            .args([
                "-q",
                "videotestsrc",
                "pattern=smpte",
                "horizontal-speed=3",
                "num-buffers=450",
                "!",
            ])
            .args([
                "video/x-raw,width=640,height=360,framerate=15/1",
                "!",
                "timeoverlay",
                "!",
            ])
            .args(["video/x-raw,format=I420", "!"])
            .args([
                "x264enc",
                "bitrate=300",
                "key-int-max=30",
                "bframes=0",
                "threads=1",
                "speed-preset=veryfast",
                "!",
            ])
            .args([
                "video/x-h264,profile=high",
                "!",
                "h264parse",
                "!",
                "mp4mux",
                "!",
            ])
            .arg("filesink")
            .arg(format!("location={}", tmp.display()))
            .status()
            .expect("gst-launch-1.0");
        assert!(status.success(), "could not make the bench recording");
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

struct Replay {
    child: Child,
    port: u16,
}

impl Replay {
    fn start(file: &Path, copies: usize) -> Replay {
        let port = free_port();
        let mut child = Command::new(BIN)
            .args([
                "replay",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--copies",
                &copies.to_string(),
            ])
            .arg(file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut ready = 0;
        for line in out.lines().map_while(Result::ok) {
            if line.contains("serving rtsp://") {
                ready += 1;
                if ready == copies {
                    break;
                }
            }
        }
        assert_eq!(ready, copies, "replay server did not come up");
        Replay { child, port }
    }

    fn url(&self, stem: &str, i: usize) -> String {
        format!("rtsp://127.0.0.1:{}/{stem}-{i}", self.port)
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one system achieved over the measurement window.
struct Result_ {
    system: &'static str,
    cameras: usize,
    realtime: f64,
    held: usize,
    cores: f64,
    rss_mib: f64,
    clips: u64,
    samples: u64,
    dropped: u64,
    replay_cores: f64,
}

impl Result_ {
    fn held_per_core(&self) -> f64 {
        if self.cores > 0.0 {
            self.held as f64 / self.cores
        } else {
            0.0
        }
    }
}

/// Samples CPU and RSS of `pids` over `secs`; returns (cores, peak RSS MiB, replay cores).
fn measure(pids: &dyn Fn() -> Vec<u32>, replay: u32, secs: u64) -> (f64, f64, f64) {
    let cpu = |ps: &[u32]| ps.iter().map(|&p| cpu_secs(p)).sum::<f64>();
    let ps = pids();
    let (c0, r0, t0) = (cpu(&ps), cpu_secs(replay), Instant::now());
    let mut peak = 0.0f64;
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        peak = peak.max(pids().iter().map(|&p| rss_mib(p)).sum());
    }
    let wall = t0.elapsed().as_secs_f64();
    (
        (cpu(&pids()) - c0) / wall,
        peak,
        (cpu_secs(replay) - r0) / wall,
    )
}

fn get_json(url: &str) -> serde_json::Value {
    ureq::get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap()
}

fn panoptes(replay: &Replay, n: usize, a: &Args, bytes_per_frame: &mut f64) -> Result_ {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = format!(
        "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[sampling]\ninterval = \"10s\"\n[recording]\nsegment = \"10s\"\n[log]\nlevel = \"warn\"\n",
        dir.path().join("data").display()
    );
    for i in 0..n {
        cfg.push_str(&format!(
            "[[cameras]]\nid = \"cam-{i}\"\nurl = \"{}\"\naudio = false\n",
            replay.url("cam", i)
        ));
    }
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut r) = ureq::get(&format!("{base}/v1/cameras")).call() {
            let v: serde_json::Value = r.body_mut().read_json().unwrap();
            let streaming = v["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["state"] == "streaming")
                .count();
            if streaming == n || Instant::now() > deadline {
                eprintln!("  panoptes: {streaming}/{n} cameras streaming");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(a.warmup));
    let snapshot = || -> HashMap<String, (u64, u64, u64, u64, u64)> {
        get_json(&format!("{base}/v1/cameras"))["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let g = |k: &str| c[k].as_u64().unwrap_or(0);
                (
                    c["id"].as_str().unwrap().to_string(),
                    (
                        g("frames_received"),
                        g("clips"),
                        g("samples"),
                        g("bytes_received"),
                        g("dropped"),
                    ),
                )
            })
            .collect()
    };
    let before = snapshot();
    let t0 = Instant::now();
    let pid = child.id();
    let (cores, rss, replay_cores) = measure(&|| vec![pid], replay.child.id(), a.secs);
    let wall = t0.elapsed().as_secs_f64();
    let after = snapshot();
    let (mut frames, mut clips, mut samples, mut bytes, mut held, mut dropped) =
        (0u64, 0, 0, 0u64, 0, 0);
    for (id, a1) in &after {
        let b = before.get(id).copied().unwrap_or_default();
        let f = a1.0 - b.0;
        frames += f;
        clips += a1.1 - b.1;
        samples += a1.2 - b.2;
        bytes += a1.3 - b.3;
        dropped += a1.4 - b.4;
        if f as f64 >= 0.95 * FPS * wall {
            held += 1;
        }
    }
    if frames > 0 {
        *bytes_per_frame = bytes as f64 / frames as f64;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    Result_ {
        system: "panoptes",
        cameras: n,
        realtime: frames as f64 / (n as f64 * FPS * wall),
        held,
        cores,
        rss_mib: rss,
        clips,
        samples,
        dropped,
        replay_cores,
    }
}

/// Bytes recorded per camera, by file name prefix `cam{i}-`.
fn recorded(dir: &Path) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let cam = name.split('-').next().unwrap_or_default().to_string();
        *out.entry(cam).or_default() += e.metadata().map(|m| m.len()).unwrap_or(0);
    }
    out
}

fn peer(
    system: &'static str,
    replay: &Replay,
    n: usize,
    a: &Args,
    bytes_per_frame: f64,
) -> Result_ {
    let dir = tempfile::tempdir().unwrap();
    let mut children: Vec<Child> = Vec::new();
    if system == "gstreamer" {
        let mut cmd = Command::new("gst-launch-1.0");
        cmd.arg("-q");
        for i in 0..n {
            cmd.args([
                "rtspsrc",
                &format!("location={}", replay.url("cam", i)),
                "protocols=tcp",
                "latency=200",
                "!",
                "rtph264depay",
                "!",
                "h264parse",
                "!",
                "splitmuxsink",
                &format!("location={}/cam{i}-%05d.mp4", dir.path().display()),
                "max-size-time=10000000000",
            ]);
        }
        children.push(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    } else {
        for i in 0..n {
            children.push(
                Command::new("ffmpeg")
                    .args([
                        "-nostdin",
                        "-loglevel",
                        "error",
                        "-rtsp_transport",
                        "tcp",
                        "-i",
                    ])
                    .arg(replay.url("cam", i))
                    .args([
                        "-c",
                        "copy",
                        "-f",
                        "segment",
                        "-segment_time",
                        "10",
                        "-reset_timestamps",
                        "1",
                    ])
                    .arg(dir.path().join(format!("cam{i}-%05d.mp4")))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
    }
    std::thread::sleep(Duration::from_secs(a.warmup));
    let before = recorded(dir.path());
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let t0 = Instant::now();
    let (cores, rss, replay_cores) = measure(&|| pids.clone(), replay.child.id(), a.secs);
    let wall = t0.elapsed().as_secs_f64();
    let after = recorded(dir.path());
    let clips = std::fs::read_dir(dir.path()).unwrap().count() as u64;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let expected = bytes_per_frame * FPS * wall;
    let mut total = 0.0;
    let mut held = 0;
    for i in 0..n {
        let key = format!("cam{i}");
        let got = after.get(&key).copied().unwrap_or(0) as f64
            - before.get(&key).copied().unwrap_or(0) as f64;
        let share = (got / expected).clamp(0.0, 1.0);
        total += share;
        if share >= 0.95 {
            held += 1;
        }
    }
    Result_ {
        system,
        cameras: n,
        realtime: total / n as f64,
        held,
        cores,
        rss_mib: rss,
        clips,
        samples: 0,
        dropped: 0,
        replay_cores,
    }
}

fn main() {
    let a = args();
    let file = fixture();
    println!(
        "ingest bench: 640x360@15fps H.264 replayed cameras, {} s window after {} s warm-up, {} cores",
        a.secs,
        a.warmup,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut rows = Vec::new();
    for &n in &a.counts {
        eprintln!("N = {n}");
        // A fresh replay server per system, so no system inherits another's sessions.
        let mut bytes_per_frame = 0.0;
        let p = panoptes(&Replay::start(&file, n), n, &a, &mut bytes_per_frame);
        let mut group = vec![p];
        if a.peers {
            let m = n.min(a.peer_max);
            for system in ["gstreamer", "ffmpeg"] {
                eprintln!("  {system}: {m} cameras");
                let replay = Replay::start(&file, n);
                group.push(peer(system, &replay, m, &a, bytes_per_frame));
            }
        }
        rows.push(group);
    }
    println!(
        "\n| N | system | cameras | real-time | held >= 95% | CPU cores | RSS MiB | clips | samples (dropped) | replay cores | held per core | Panoptes ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for group in &rows {
        let ours = group[0].held_per_core();
        for r in group {
            let ratio = if r.system == "panoptes" {
                "-".to_string()
            } else if r.held_per_core() > 0.0 {
                format!("{:.1}x", ours / r.held_per_core())
            } else {
                "n/a (held none)".to_string()
            };
            println!(
                "| {} | {} | {} | {:.1}% | {} | {:.2} | {:.0} | {} | {} ({}) | {:.2} | {:.0} | {} |",
                group[0].cameras,
                r.system,
                r.cameras,
                r.realtime * 100.0,
                r.held,
                r.cores,
                r.rss_mib,
                r.clips,
                r.samples,
                r.dropped,
                r.replay_cores,
                r.held_per_core(),
                ratio
            );
        }
    }
}
