//! Bus benchmark: sampled frames through NATS JetStream with Panoptes' bus, against a
//! minimal async-nats client doing the same work on the same machine, as a ratio.
//!
//! `cargo bench --bench bus -- [--count 20000] [--secs 20] [--cameras 8] [--workers 2]
//! [--rounds 2] [--batch 16]`
//!
//! `nats bench` is not installed here, so the reference is the least code async-nats needs
//! for the same work: the same JPEGs, subjects, headers and `Nats-Msg-Id`, the same stream
//! settings (copied from the FRAMES stream Panoptes creates) and the same consumer settings.
//! Each phase moves `--count` frames or runs `--secs` seconds, whichever comes first:
//! - publish: `--cameras` tasks, each publishing its camera's frames one after the other and
//!   awaiting every JetStream ack, as an edge does;
//! - consume: `--workers` tasks (the infer workers), each with its own pull subscription on
//!   one durable consumer, acknowledging every frame; pulls of `--batch` messages, as
//!   Panoptes pulls (`--batch 0`: async-nats' default `messages()` for the reference).
//!
//! Every system runs on its own fresh `nats-server`, so both start on an empty store. Rounds
//! alternate which system goes first (the VM is noisy; every round is printed).
//! Figures are printed, never asserted.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use bytes::Bytes;
use futures::StreamExt;
use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use panoptes::bus::{Bus, StreamKind, nats};
use tokio_util::sync::CancellationToken;

// rss_mib is not reported: both systems share this process.
#[allow(dead_code)]
#[path = "common/host.rs"]
mod host;
use host::{cpu_secs, free_port};

const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;
/// Distinct JPEGs cycled through.
const FRAMES: usize = 32;
const MIN_JPEG: usize = 30_000;
const MAX_JPEG: usize = 60_000;
/// The durable consumer name the infer workers share.
const DURABLE: &str = "infer";
/// A worker that sees nothing for this long stops (the phase is then reported short).
const STALL: Duration = Duration::from_secs(10);

struct Args {
    count: usize,
    secs: u64,
    cameras: usize,
    workers: usize,
    rounds: usize,
    batch: usize,
}

fn args() -> Args {
    let mut a = Args {
        count: 20_000,
        secs: 20,
        cameras: 8,
        workers: 2,
        rounds: 2,
        batch: 16,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = |d: usize| argv.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(d);
        match argv[i].as_str() {
            "--count" => a.count = val(a.count),
            "--secs" => a.secs = val(a.secs as usize) as u64,
            "--cameras" => a.cameras = val(a.cameras).max(1),
            "--workers" => a.workers = val(a.workers).max(1),
            "--rounds" => a.rounds = val(a.rounds).max(1),
            "--batch" => a.batch = val(a.batch),
            _ => {
                // `cargo bench` passes `--bench`; anything unknown is skipped.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// A synthetic 640x360 scene: gradients, a few moving boxes and sensor-like noise, so the
/// JPEG has the texture (and the size) of a camera frame.
fn scene(i: usize, noise: u32) -> RgbImage {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let boxes: Vec<(u32, u32, u32, u32, [u8; 3])> = (0..6)
        .map(|_| {
            let r = rand();
            (
                (r % 560) as u32,
                ((r >> 10) % 300) as u32,
                40 + ((r >> 20) % 120) as u32,
                30 + ((r >> 30) % 90) as u32,
                [(r >> 40) as u8, (r >> 48) as u8, (r >> 56) as u8],
            )
        })
        .collect();
    RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        let mut px = [
            (x * 255 / WIDTH) as i32,
            (y * 255 / HEIGHT) as i32,
            (((x + y + i as u32 * 9) % 256) as i32 / 2) + 64,
        ];
        if let Some(b) = boxes
            .iter()
            .find(|b| x >= b.0 && x < b.0 + b.2 && y >= b.1 && y < b.1 + b.3)
        {
            px = b.4.map(i32::from);
        }
        let n = (rand() % (2 * noise as u64 + 1)) as i32 - noise as i32;
        Rgb(px.map(|c| (c + n).clamp(0, 255) as u8))
    })
}

fn jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .expect("JPEG encoding");
    out
}

/// `FRAMES` real JPEGs with sizes spread over 30-60 KB: each scene is encoded at the
/// highest quality that stays under its target size.
fn payloads() -> Vec<Bytes> {
    (0..FRAMES)
        .map(|i| {
            let target = MIN_JPEG + 1_000 + i * (MAX_JPEG - MIN_JPEG - 2_000) / (FRAMES - 1);
            let img = scene(i, 10);
            let (mut lo, mut hi) = (5u8, 98u8);
            let mut best = jpeg(&img, lo);
            while lo <= hi {
                let q = lo + (hi - lo) / 2;
                let j = jpeg(&img, q);
                if j.len() <= target {
                    best = j;
                    lo = q + 1;
                } else {
                    hi = q - 1;
                }
            }
            assert!(
                (MIN_JPEG..=MAX_JPEG).contains(&best.len()),
                "scene {i}: no quality gives a {target}-byte JPEG (got {})",
                best.len()
            );
            Bytes::from(best)
        })
        .collect()
}

/// A `nats-server` with JetStream on a fresh store, killed when dropped.
struct NatsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

const NATS_SERVER: &str = "/usr/sbin/nats-server";

impl NatsServer {
    fn start() -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\nmax_payload: 8MB\n",
                dir.path().join("js").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server (make services installs it: apt-get install nats-server)");
        let err = BufReader::new(child.stderr.take().unwrap());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Keeps draining the log after it is ready, so the server never blocks on it.
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let server = NatsServer {
            child,
            port,
            _dir: dir,
        };
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("nats-server did not get ready within 20 s");
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one phase moved, in how long, at what CPU cost.
#[derive(Default, Clone, Copy)]
struct Phase {
    frames: u64,
    bytes: u64,
    secs: f64,
    /// CPU seconds of this (bench) process.
    cpu: f64,
    /// CPU seconds of the nats-server.
    server_cpu: f64,
    errors: u64,
}

impl Phase {
    fn fps(&self) -> f64 {
        self.frames as f64 / self.secs.max(1e-9)
    }

    fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs.max(1e-9)
    }
}

/// Measures CPU and wall time around a phase that reports (frames, bytes, errors, end).
struct Meter {
    start: Instant,
    cpu: f64,
    server_cpu: f64,
    server: u32,
}

impl Meter {
    fn start(server: &NatsServer) -> Meter {
        Meter {
            start: Instant::now(),
            cpu: cpu_secs("self"),
            server_cpu: cpu_secs(server.pid()),
            server: server.pid(),
        }
    }

    fn stop(self, frames: u64, bytes: u64, errors: u64, end: Instant) -> Phase {
        Phase {
            frames,
            bytes,
            secs: end.saturating_duration_since(self.start).as_secs_f64(),
            cpu: cpu_secs("self") - self.cpu,
            server_cpu: cpu_secs(self.server) - self.server_cpu,
            errors,
        }
    }
}

/// What each camera task publishes: its id and how many frames.
fn cameras(args: &Args) -> Vec<(String, usize)> {
    (0..args.cameras)
        .map(|c| {
            let n = args.count / args.cameras + usize::from(c < args.count % args.cameras);
            (format!("cam-{c:02}"), n)
        })
        .collect()
}

/// The headers the edge puts on a frame (src/edge/mod.rs, `publish_frames`).
fn frame_headers(camera: &str, capture_ns: i64) -> Vec<(String, String)> {
    vec![
        ("camera".to_string(), camera.to_string()),
        ("capture-ns".to_string(), capture_ns.to_string()),
        ("pts".to_string(), capture_ns.to_string()),
        ("width".to_string(), WIDTH.to_string()),
        ("height".to_string(), HEIGHT.to_string()),
        ("Nats-Msg-Id".to_string(), format!("{camera}:{capture_ns}")),
    ]
}

/// Capture time of a camera's `k`-th frame: 15 fps from a fixed epoch.
fn capture_ns(k: usize) -> i64 {
    1_700_000_000_000_000_000 + k as i64 * 66_666_667
}

/// Per-camera publish tally: frames, bytes, errors, when the last one finished.
type Tally = (u64, u64, u64, Instant);

/// Sums per-task tallies into one phase.
async fn collect(meter: Meter, tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Phase {
    let (mut frames, mut bytes, mut errors, mut end) = (0, 0, 0, meter.start);
    for t in tasks {
        let (f, b, e, at) = t.await.expect("bench task");
        frames += f;
        bytes += b;
        errors += e;
        end = end.max(at);
    }
    meter.stop(frames, bytes, errors, end)
}

/// Counts deliveries across workers and stops them all at the target.
#[derive(Clone)]
struct Progress {
    target: u64,
    delivered: Arc<AtomicU64>,
    done: CancellationToken,
}

impl Progress {
    fn new(target: u64) -> Progress {
        let done = CancellationToken::new();
        if target == 0 {
            done.cancel();
        }
        Progress {
            target,
            delivered: Arc::new(AtomicU64::new(0)),
            done,
        }
    }

    fn one(&self) {
        if self.delivered.fetch_add(1, Ordering::Relaxed) + 1 >= self.target {
            self.done.cancel();
        }
    }
}

/// Publishes and consumes through `panoptes::bus`; also returns the FRAMES stream settings
/// it created, for the reference to copy.
async fn panoptes_run(
    server: &NatsServer,
    args: &Args,
    frames: &[Bytes],
) -> (Phase, Phase, stream::Config) {
    // The frame bounds are raised so no frame ages out or is dropped during the bench.
    let text = format!(
        "[bus]\nkind = \"nats\"\nurl = \"{}\"\nframes_max_age = \"30m\"\nframes_max_bytes = {}\n",
        server.url(),
        16_i64 << 30
    );
    let config = panoptes::config::load_str(&text, "bench.toml", &|_| None).expect("bench config");
    let bus = Bus::connect(&config).await.expect("Panoptes bus");
    let settings = {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        let mut s = js
            .get_stream(nats::stream_name(StreamKind::Frames))
            .await
            .unwrap();
        s.info().await.unwrap().config.clone()
    };

    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let meter = Meter::start(server);
    let tasks = cameras(args)
        .into_iter()
        .enumerate()
        .map(|(c, (camera, n))| {
            let (bus, frames) = (bus.clone(), frames.to_vec());
            tokio::spawn(async move {
                let (mut ok, mut bytes, mut errors) = (0, 0, 0);
                for k in 0..n {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let jpeg = frames[(c * 7 + k) % frames.len()].clone();
                    let len = jpeg.len() as u64;
                    let subject = StreamKind::Frames.subject(&camera);
                    match bus
                        .publish(subject, frame_headers(&camera, capture_ns(k)), jpeg)
                        .await
                    {
                        Ok(_) => {
                            ok += 1;
                            bytes += len;
                        }
                        Err(_) => errors += 1,
                    }
                }
                (ok, bytes, errors, Instant::now())
            })
        })
        .collect();
    let publish = collect(meter, tasks).await;

    let mut consumers = Vec::new();
    for _ in 0..args.workers {
        consumers.push(
            bus.consumer(StreamKind::Frames, DURABLE)
                .await
                .expect("consumer"),
        );
    }
    let progress = Progress::new(publish.frames);
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let meter = Meter::start(server);
    let tasks = consumers
        .into_iter()
        .map(|mut consumer| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let (mut n, mut bytes, mut errors, mut last) = (0, 0, 0, Instant::now());
                while Instant::now() < deadline {
                    let delivery = tokio::select! {
                        biased;
                        _ = progress.done.cancelled() => break,
                        d = consumer.next(STALL) => d,
                    };
                    let Some(delivery) = delivery else { break };
                    let len = delivery.message().payload.len() as u64;
                    if delivery.ack().await.is_err() {
                        errors += 1;
                    }
                    n += 1;
                    bytes += len;
                    last = Instant::now();
                    progress.one();
                }
                (n, bytes, errors, last)
            })
        })
        .collect();
    let consume = collect(meter, tasks).await;
    (publish, consume, settings)
}

/// The same work with async-nats alone, on a FRAMES stream with Panoptes' settings.
async fn reference_run(
    server: &NatsServer,
    args: &Args,
    frames: &[Bytes],
    settings: &stream::Config,
) -> (Phase, Phase) {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.create_stream(settings.clone()).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let meter = Meter::start(server);
    let tasks = cameras(args)
        .into_iter()
        .enumerate()
        .map(|(c, (camera, n))| {
            let (js, frames) = (js.clone(), frames.to_vec());
            tokio::spawn(async move {
                let (mut ok, mut bytes, mut errors) = (0, 0, 0);
                let subject = StreamKind::Frames.subject(&camera);
                for k in 0..n {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let jpeg = frames[(c * 7 + k) % frames.len()].clone();
                    let len = jpeg.len() as u64;
                    let ns = capture_ns(k);
                    let mut headers = HeaderMap::new();
                    headers.insert("camera", camera.as_str());
                    headers.insert("capture-ns", ns.to_string().as_str());
                    headers.insert("pts", ns.to_string().as_str());
                    headers.insert("width", WIDTH.to_string().as_str());
                    headers.insert("height", HEIGHT.to_string().as_str());
                    let message = PublishMessage::build()
                        .payload(jpeg)
                        .headers(headers)
                        .message_id(format!("{camera}:{ns}"));
                    let stored = match js.send_publish(subject.clone(), message).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if stored {
                        ok += 1;
                        bytes += len;
                    } else {
                        errors += 1;
                    }
                }
                (ok, bytes, errors, Instant::now())
            })
        })
        .collect();
    let publish = collect(meter, tasks).await;

    // The consumer settings Panoptes uses (src/bus/nats.rs, `NatsBus::consumer`).
    let config = consumer::pull::Config {
        durable_name: Some(DURABLE.to_string()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: 6,
        max_ack_pending: 1024,
        ..Default::default()
    };
    let mut consumers = Vec::new();
    for _ in 0..args.workers {
        consumers.push(
            stream
                .get_or_create_consumer(DURABLE, config.clone())
                .await
                .unwrap(),
        );
    }
    let progress = Progress::new(publish.frames);
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let meter = Meter::start(server);
    let batch = args.batch;
    let tasks = consumers
        .into_iter()
        .map(|consumer: consumer::PullConsumer| {
            let progress = progress.clone();
            tokio::spawn(async move {
                let (mut n, mut bytes, mut errors, mut last) = (0, 0, 0, Instant::now());
                let mut messages = if batch == 0 {
                    consumer.messages().await.unwrap()
                } else {
                    consumer
                        .stream()
                        .max_messages_per_batch(batch)
                        .heartbeat(Duration::from_secs(5))
                        .expires(Duration::from_secs(30))
                        .messages()
                        .await
                        .unwrap()
                };
                while Instant::now() < deadline {
                    let next = tokio::select! {
                        biased;
                        _ = progress.done.cancelled() => break,
                        m = tokio::time::timeout(STALL, messages.next()) => m,
                    };
                    let message = match next {
                        Ok(Some(Ok(m))) => m,
                        Ok(Some(Err(_))) => continue,
                        Ok(None) | Err(_) => break,
                    };
                    if message.ack().await.is_err() {
                        errors += 1;
                    }
                    n += 1;
                    bytes += message.payload.len() as u64;
                    last = Instant::now();
                    progress.one();
                }
                (n, bytes, errors, last)
            })
        })
        .collect();
    let consume = collect(meter, tasks).await;
    (publish, consume)
}

/// The 1-minute load average of the host.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

struct Round {
    order: &'static str,
    panoptes: (Phase, Phase),
    reference: (Phase, Phase),
}

fn fmt_rate(p: &Phase) -> (String, String) {
    (format!("{:.0}", p.fps()), format!("{:.1}", p.mbps()))
}

fn main() {
    let args = args();
    let version = Command::new(NATS_SERVER)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "nats-server (version unknown)".into());
    let load_before = loadavg();
    let t = Instant::now();
    let frames = payloads();
    let sizes: Vec<usize> = frames.iter().map(Bytes::len).collect();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    eprintln!("payloads ready in {:.1} s", t.elapsed().as_secs_f64());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut settings: Option<stream::Config> = None;
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        // Panoptes goes first in odd rounds (and always in the first: it makes the stream
        // whose settings the reference copies).
        let panoptes_first = r % 2 == 0 || settings.is_none();
        let mut p = None;
        let mut q = None;
        for first in [true, false] {
            if first == panoptes_first {
                eprintln!("round {}: Panoptes", r + 1);
                let server = NatsServer::start();
                let (publish, consume, s) = rt.block_on(panoptes_run(&server, &args, &frames));
                settings.get_or_insert(s);
                p = Some((publish, consume));
            } else {
                eprintln!("round {}: reference", r + 1);
                let server = NatsServer::start();
                let s = settings.as_ref().expect("Panoptes ran first");
                q = Some(rt.block_on(reference_run(&server, &args, &frames, s)));
            }
        }
        rounds.push(Round {
            order: if panoptes_first {
                "Panoptes, then reference"
            } else {
                "reference, then Panoptes"
            },
            panoptes: p.unwrap(),
            reference: q.unwrap(),
        });
    }

    println!("## Bus throughput: Panoptes vs a minimal async-nats client\n");
    println!("- server: {version}, JetStream file storage, a fresh server per system and round");
    println!(
        "- payloads: {} real JPEGs (image crate, synthetic {WIDTH}x{HEIGHT} scenes) of {:.1}-{:.1} KB, mean {:.1} KB; KB and MB are 10^3 and 10^6 bytes",
        sizes.len(),
        *sizes.iter().min().unwrap() as f64 / 1e3,
        *sizes.iter().max().unwrap() as f64 / 1e3,
        mean / 1e3
    );
    println!(
        "- each phase: {} frames or {} s, whichever comes first",
        args.count, args.secs
    );
    println!(
        "- publish: {} cameras, each publishing sequentially and awaiting every JetStream ack; headers as the edge sends them, with Nats-Msg-Id",
        args.cameras
    );
    let pull = if args.batch == 0 {
        "reference uses async-nats' default `messages()`, Panoptes pulls 16".to_string()
    } else {
        format!(
            "both pull {} messages per batch (`stream().max_messages_per_batch({})`)",
            args.batch, args.batch
        )
    };
    println!(
        "- consume: {} workers on one durable pull consumer (explicit ack, max_ack_pending 1024), acking each; {pull}",
        args.workers
    );
    println!(
        "- host: {} cores, load average {load_before} before, {} after (other work on the machine skews both systems)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("- ratio: Panoptes frames/s over reference frames/s\n");

    println!("| round | case | Panoptes frames/s | MB/s | reference frames/s | MB/s | ratio |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let cases = [
        format!("publish ({} cameras)", args.cameras),
        format!("consume ({} workers, ack)", args.workers),
    ];
    for (i, round) in rounds.iter().enumerate() {
        let pairs = [
            (round.panoptes.0, round.reference.0),
            (round.panoptes.1, round.reference.1),
        ];
        for (case, (p, q)) in cases.iter().zip(pairs) {
            let ((pf, pm), (qf, qm)) = (fmt_rate(&p), fmt_rate(&q));
            println!(
                "| {} | {case} | {pf} | {pm} | {qf} | {qm} | {:.2} |",
                i + 1,
                p.fps() / q.fps().max(1e-9)
            );
        }
    }

    println!("\nCPU seconds per phase (bench process; its nats-server), frames moved, errors:\n");
    println!(
        "| round | order | case | Panoptes frames | CPU s | server CPU s | reference frames | CPU s | server CPU s | process CPU µs/frame P / R |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, round) in rounds.iter().enumerate() {
        let pairs = [
            (round.panoptes.0, round.reference.0),
            (round.panoptes.1, round.reference.1),
        ];
        for (case, (p, q)) in cases.iter().zip(pairs) {
            let per = |x: &Phase| x.cpu * 1e6 / (x.frames.max(1) as f64);
            let frames = |x: &Phase| {
                if x.errors > 0 {
                    format!("{} ({} errors)", x.frames, x.errors)
                } else {
                    x.frames.to_string()
                }
            };
            println!(
                "| {} | {} | {case} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.0} / {:.0} |",
                i + 1,
                round.order,
                frames(&p),
                p.cpu,
                p.server_cpu,
                frames(&q),
                q.cpu,
                q.server_cpu,
                per(&p),
                per(&q)
            );
        }
    }
}
