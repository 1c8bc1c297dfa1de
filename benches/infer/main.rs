//! Inference benchmark: each model on the same inputs through Panoptes and through the Python
//! `onnxruntime` package (same .onnx files, threads and batch), and Panoptes' overhead over a
//! bare `Session::run` of the same model runs.
//!
//! `cargo bench --bench infer -- [--threads 2] [--batch 8] [--secs 6] [--rounds 6]
//! [--only detect,ocr,speech,embed] [--no-python]`
//!
//! `--secs` is the measured time per side and case, split into `--rounds` turns. Models come
//! from `models/` (`models/install.sh`; `PANOPTES_MODELS` overrides), ONNX Runtime from there
//! too, CPU provider.
//!
//! Cases (one iteration each; items/s = items per iteration x iterations / seconds):
//! - `detect`: B decoded RGB photos (astronaut, chelsea, coffee, repeated to fill the batch)
//!   through [`Detector::detect`]: letterbox, one [B,3,640,640] run, decoding and class-wise
//!   NMS. Items: images.
//! - `ocr`: B copies of a 640x360 frame of `tests/fixtures/out/lobby.mp4` (extracted once
//!   with `gst-launch-1.0` into `~/.cache/panoptes/bench/lobby.png`) through [`Ocr::read`]:
//!   DB detection per frame, orientation check and recognition of the crops. Items: frames.
//! - `speech`: `models/samples/beckett.wav` (10 s, 16 kHz) through [`Speech::transcribe`]:
//!   Silero VAD window by window, log-mel, Whisper encoder and greedy decoding with the KV
//!   cache, detokenising. Items: clips (of 10 s; one speech segment, so no batching).
//! - `embed`: 64 short sentences through [`Embedder::embed`] (batches of max(B, 16), as
//!   Panoptes runs them): tokenising, one run per batch, mean pooling. Items: texts.
//!
//! Three figures per case, each after a warm-up, measured in turns (`--rounds`; the order
//! alternates, so that background load falls on every side alike):
//! - Panoptes: end to end through the public API (inputs already decoded, outputs typed).
//! - Python: `benches/infer_reference.py`, driven as a subprocess, does the same work with
//!   `onnxruntime` (intra-op threads = `--threads`, inter-op 1, `ORT_ENABLE_ALL`; OpenCV gets
//!   the same threads) and the usual Python pre/post-processing (OpenCV, NumPy, pyclipper,
//!   `tokenizers`), on the same inputs, which the bench writes to
//!   `~/.cache/panoptes/bench/infer_reference.json` (`python benches/infer_reference.py
//!   FILE` runs the reference alone). It runs in the Python environment `models/install.sh`
//!   makes (`$PANOPTES_VENV`, by default `~/.cache/panoptes/venv`); the bench installs
//!   `opencv-python-headless`, `pyclipper` and `tokenizers` (pinned) into it with pip when
//!   they are missing, and does nothing when they are there.
//! - Bare: `Session::run` alone (sessions from [`Runtime::session`], same provider and threads)
//!   on pre-filled inputs of the shapes Panoptes uses, for every model run of the case: the
//!   detector; the OCR detector, classifier and recogniser; VAD, encoder and decoder (replaying
//!   the decoded tokens); the embedder. What each bare figure covers is printed with it.
//!   Overhead = end-to-end time / bare time - 1: Panoptes' own pre/post-processing and glue.
//!
//! The table gives items/s over all rounds. Below it: the slowest and fastest round of each
//! side and the median over the rounds of the ratio and the overhead (the sides of one round
//! run back to back, so these medians are the steadier figures on a busy machine). With
//! `--threads` equal to the core count, anything else running (a build) slows the model runs
//! by up to half, round by round; use more `--rounds` or a quiet machine.
//!
//! Targets (from the issue): Panoptes >= 1.2x the Python reference end to end, overhead <= 10%.
//! Figures are printed, never asserted. The outputs of both sides are compared (labels, text
//! read, transcript words, embedding cosine) and a warning is printed when they disagree.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use panoptes::config::{InferConfig, ModelsConfig};
use panoptes::infer::Runtime;

mod cases;

use cases::*;

pub(crate) const CASES: [&str; 4] = ["detect", "ocr", "speech", "embed"];
/// Python packages the reference needs beyond what `models/install.sh` installs (the versions
/// the reference was checked with).
pub(crate) const PY_EXTRAS: [&str; 3] = [
    "opencv-python-headless==5.0.0.93",
    "pyclipper==1.4.0",
    "tokenizers==0.23.3",
];
pub(crate) const LOBBY_TEXT: &str = "PANOPTES DOCK 42";

/// The sentences of the `embed` case: the kind of text insights carry.
pub(crate) const SENTENCES: [&str; 64] = [
    "a person walks past the loading dock",
    "a delivery truck arrives at the gate",
    "two people talk near the entrance",
    "a cat sleeps on the windowsill",
    "a cup of coffee on a wooden table",
    "the parking lot is empty at night",
    "a forklift moves pallets in the warehouse",
    "someone leaves a package by the door",
    "a red car parks in the visitor bay",
    "the lobby lights turn on at seven",
    "a man in a blue jacket checks his phone",
    "a woman carries a box up the stairs",
    "a dog runs across the courtyard",
    "the side door is left open",
    "a cyclist rides through the car park",
    "snow covers the entrance ramp",
    "a van reverses into dock three",
    "a crowd gathers outside the shop",
    "the shutter goes up at the loading bay",
    "a security guard patrols the corridor",
    "text on the sign reads PANOPTES DOCK 42",
    "an alarm sounds in the server room",
    "rain falls on the empty street",
    "a bus stops at the corner",
    "boxes are stacked beside the conveyor",
    "a child plays with a ball in the hall",
    "the reception desk is unattended",
    "a courier scans a parcel at the desk",
    "smoke rises behind the building",
    "a bicycle is chained to the railing",
    "the gate barrier lifts for a lorry",
    "people queue at the ticket machine",
    "a cleaner mops the lobby floor",
    "the camera view is blocked by a ladder",
    "a white van waits with its engine running",
    "two workers unload crates from a trailer",
    "a person in a hard hat inspects the racking",
    "the emergency exit is obstructed",
    "a laptop is left on the meeting room table",
    "headlights sweep across the yard",
    "a pigeon walks along the ledge",
    "the canteen fills up at lunchtime",
    "a motorbike enters through the side gate",
    "someone tries the handle of a locked door",
    "water pools under the loading bay door",
    "a man sweeps leaves from the path",
    "a taxi drops off a passenger",
    "the printer by the window is jammed",
    "three people wait for the lift",
    "a truck driver signs the delivery note",
    "the fence near the bins is damaged",
    "a woman walks a stroller past the shop",
    "the warehouse lights flicker",
    "ever tried, ever failed, no matter",
    "a pallet jack is left in the aisle",
    "a visitor signs in at reception",
    "the clock above the door shows nine",
    "a person jogs along the river path",
    "a shopping trolley rolls across the car park",
    "the blinds are down in the office",
    "an ambulance passes with its lights on",
    "a box falls from the top shelf",
    "two cars are parked across the exit",
    "the night shift arrives at the gate",
];

pub(crate) struct Args {
    pub(crate) threads: usize,
    pub(crate) batch: usize,
    pub(crate) secs: f64,
    pub(crate) rounds: usize,
    pub(crate) only: Vec<String>,
    pub(crate) python: bool,
}

pub(crate) fn args() -> Args {
    let mut a = Args {
        threads: 2,
        batch: 8,
        secs: 6.0,
        rounds: 6,
        only: CASES.iter().map(|s| s.to_string()).collect(),
        python: true,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = || argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--threads" => a.threads = val().parse().unwrap_or(a.threads),
            "--batch" => a.batch = val().parse::<usize>().unwrap_or(a.batch).max(1),
            "--secs" => a.secs = val().parse().unwrap_or(a.secs),
            "--rounds" => a.rounds = val().parse::<usize>().unwrap_or(a.rounds).max(1),
            "--only" => {
                a.only = val()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| CASES.contains(&s.as_str()))
                    .collect()
            }
            "--no-python" => {
                a.python = false;
                i += 1;
                continue;
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

pub(crate) fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"))
        .join("panoptes")
}

/// One 640x360 frame of the lobby fixture as PNG, extracted once into the cache.
pub(crate) fn lobby_frame() -> Result<PathBuf> {
    let dir = cache_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("lobby.png");
    if !path.exists() {
        let video = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/out/lobby.mp4");
        let tmp = dir.join("lobby.part.png");
        let status = Command::new("gst-launch-1.0")
            .arg("-q")
            .arg("filesrc")
            .arg(format!("location={}", video.display()))
            .args(["!", "decodebin", "!", "videoconvert", "!"])
            .args([
                "video/x-raw,format=RGB",
                "!",
                "pngenc",
                "snapshot=true",
                "!",
            ])
            .arg("filesink")
            .arg(format!("location={}", tmp.display()))
            .status()
            .context("gst-launch-1.0")?;
        if !status.success() || !tmp.exists() {
            bail!("could not extract a frame of {}", video.display());
        }
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// 16-bit PCM mono WAV as f32 samples in -1..1.
pub(crate) fn read_wav(path: &Path) -> Result<(Vec<f32>, u32)> {
    let b = std::fs::read(path).with_context(|| path.display().to_string())?;
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        bail!("{}: not a WAV file", path.display());
    }
    let u16_at = |p: usize| u16::from_le_bytes([b[p], b[p + 1]]);
    let mut pos = 12;
    let mut rate = 0;
    while pos + 8 <= b.len() {
        let len = u32::from_le_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]) as usize;
        let body = pos + 8;
        match &b[pos..pos + 4] {
            b"fmt " => {
                if len < 16 || body + 16 > b.len() {
                    bail!("{}: short fmt chunk", path.display());
                }
                let (format, channels, bits) = (u16_at(body), u16_at(body + 2), u16_at(body + 14));
                if format != 1 || channels != 1 || bits != 16 {
                    bail!("{}: expected 16-bit PCM mono", path.display());
                }
                rate = u32::from_le_bytes([b[body + 4], b[body + 5], b[body + 6], b[body + 7]]);
            }
            b"data" => {
                let end = (body + len).min(b.len());
                let pcm = b[body..end]
                    .chunks_exact(2)
                    .map(|s| i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0)
                    .collect();
                return Ok((pcm, rate));
            }
            _ => {}
        }
        pos = body + len + (len & 1);
    }
    bail!("{}: no data chunk", path.display())
}

/// Deterministic values in 0..1 to pre-fill bare-run inputs.
pub(crate) fn pattern(n: usize) -> Vec<f32> {
    let mut x = 0x9e37_79b9u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 24) as f32
        })
        .collect()
}

/// Iterations and seconds of one side, per round.
#[derive(Default, Clone)]
pub(crate) struct Rate {
    pub(crate) rounds: Vec<(usize, f64)>,
}

impl Rate {
    fn add(&mut self, iters: usize, secs: f64) {
        self.rounds.push((iters, secs));
    }

    /// Items per second over all rounds.
    fn per_s(&self, items: usize) -> f64 {
        let iters: usize = self.rounds.iter().map(|r| r.0).sum();
        let secs: f64 = self.rounds.iter().map(|r| r.1).sum();
        if secs > 0.0 {
            (iters * items) as f64 / secs
        } else {
            0.0
        }
    }

    /// Slowest and fastest round, items per second.
    fn range(&self, items: usize) -> (f64, f64) {
        self.rounds
            .iter()
            .filter(|r| r.1 > 0.0)
            .map(|r| (r.0 * items) as f64 / r.1)
            .fold((f64::INFINITY, 0.0), |(lo, hi), v| (lo.min(v), hi.max(v)))
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Runs `f` until `secs` have passed (at least once).
pub(crate) fn timed(secs: f64, f: &mut dyn FnMut() -> Result<()>) -> Result<(usize, f64)> {
    let start = Instant::now();
    let mut iters = 0;
    loop {
        f()?;
        iters += 1;
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= secs {
            return Ok((iters, elapsed));
        }
    }
}

/// The Python reference, serving one JSON command per line.
pub(crate) struct Python {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: BufReader<ChildStdout>,
    pub(crate) versions: Option<Value>,
}

impl Python {
    fn start(python: &Path, config: &Path) -> Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/infer_reference.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(config)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("{} {}", python.display(), script.display()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or(anyhow!("no stdout"))?);
        Ok(Self {
            child,
            stdin,
            stdout,
            versions: None,
        })
    }

    fn line(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the Python reference exited");
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn call(&mut self, cmd: Value) -> Result<Value> {
        if self.versions.is_none() {
            let ready = self.line()?;
            self.versions = Some(ready["versions"].clone());
        }
        let stdin = self.stdin.as_mut().ok_or(anyhow!("stdin closed"))?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        self.line()
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The Python interpreter of the models' virtual environment, with the reference's extra
/// packages installed (pip, once), or why not.
pub(crate) fn python_env() -> Result<PathBuf> {
    let venv = std::env::var_os("PANOPTES_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("venv"));
    let python = venv.join("bin/python");
    if !python.exists() {
        bail!(
            "no Python environment at {} (models/install.sh makes it)",
            venv.display()
        );
    }
    let has = |py: &Path| {
        Command::new(py)
            .args([
                "-c",
                "import cv2, pyclipper, tokenizers, onnxruntime, numpy",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        eprintln!("installing {} into {}", PY_EXTRAS.join(" "), venv.display());
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg("--cache-dir")
            .arg(cache_dir().join("pip-cache"))
            .args(PY_EXTRAS)
            .status()?;
        if !status.success() || !has(&python) {
            bail!("could not install {}", PY_EXTRAS.join(" "));
        }
    }
    Ok(python)
}

/// One line of the results table.
pub(crate) struct Row {
    pub(crate) case: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) panoptes: f64,
    pub(crate) python: Option<f64>,
    pub(crate) bare: f64,
    /// Slowest-fastest round of each side, printed to show how steady the machine was.
    pub(crate) spread: String,
    pub(crate) covers: String,
    pub(crate) outputs: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

/// The Python reference's output as printed, and where it disagrees with Panoptes'.
type Reading = (String, Vec<String>);

/// What a case hands to the common measurement.
pub(crate) struct Case<'a> {
    pub(crate) name: &'static str,
    pub(crate) unit: &'static str,
    /// Items per iteration, the same on every side.
    pub(crate) items: usize,
    e2e: Box<dyn FnMut() -> Result<()> + 'a>,
    pub(crate) bare: Box<dyn FnMut() -> Result<()> + 'a>,
    pub(crate) covers: String,
    /// Panoptes' outputs, as printed.
    pub(crate) shown: Vec<String>,
    /// Reads the Python reference's output: how to print it, and where it disagrees with
    /// Panoptes'.
    pub(crate) check: Box<dyn Fn(&Value) -> Reading + 'a>,
}

/// Warms up every side, then times them in alternating turns.
pub(crate) fn measure(mut c: Case, py: &mut Option<Python>, a: &Args) -> Result<Row> {
    eprintln!("{}: warming up", c.name);
    for _ in 0..2 {
        (c.e2e)()?;
        (c.bare)()?;
    }
    let mut outputs = vec![format!("Panoptes: {}", c.shown.join("; "))];
    let mut warnings = Vec::new();
    let mut python_ok = false;
    if let Some(p) = py.as_mut() {
        match p.call(json!({"cmd": "warmup", "case": c.name})) {
            Ok(reply) => {
                let (shown, disagree) = (c.check)(&reply["output"]);
                outputs.push(format!("Python:   {shown}"));
                warnings.extend(disagree);
                python_ok = true;
            }
            Err(e) => {
                warnings.push(format!("the Python reference failed: {e:#}"));
                *py = None;
            }
        }
    }
    let slice = a.secs / a.rounds as f64;
    let (mut e2e, mut bare, mut pyr) = (Rate::default(), Rate::default(), Rate::default());
    for round in 0..a.rounds {
        eprintln!("{}: round {}/{}", c.name, round + 1, a.rounds);
        let mut order = ["panoptes", "bare", "python"];
        if round % 2 == 1 {
            order.reverse();
        }
        for side in order {
            match side {
                "panoptes" => {
                    let (n, s) = timed(slice, &mut *c.e2e)?;
                    e2e.add(n, s);
                }
                "bare" => {
                    let (n, s) = timed(slice, &mut *c.bare)?;
                    bare.add(n, s);
                }
                _ if python_ok => {
                    let p = py.as_mut().expect("python");
                    match p.call(json!({"cmd": "run", "case": c.name, "secs": slice})) {
                        Ok(r) => pyr.add(
                            r["iters"].as_u64().unwrap_or(0) as usize,
                            r["secs"].as_f64().unwrap_or(0.0),
                        ),
                        Err(e) => {
                            warnings.push(format!("the Python reference failed: {e:#}"));
                            python_ok = false;
                            *py = None;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let range = |r: &Rate| {
        let (lo, hi) = r.range(c.items);
        format!("{lo:.2}-{hi:.2}")
    };
    // Each round's sides ran next to each other: their ratios are the least disturbed by
    // load that comes and goes.
    let per_round = |a: &Rate, b: &Rate| -> Vec<f64> {
        a.rounds
            .iter()
            .zip(&b.rounds)
            .filter(|(x, y)| x.0 > 0 && y.0 > 0)
            .map(|(x, y)| (x.0 as f64 / x.1) / (y.0 as f64 / y.1))
            .collect()
    };
    let ratio = if python_ok {
        median(per_round(&e2e, &pyr)).map_or("-".into(), |m| format!("{m:.2}x"))
    } else {
        "-".into()
    };
    let overhead = median(per_round(&bare, &e2e))
        .map_or("-".into(), |m| format!("{:+.1}%", (m - 1.0) * 100.0));
    let spread = format!(
        "Panoptes {}, Python {}, bare {}; median of the rounds' ratio {ratio}, overhead {overhead}",
        range(&e2e),
        if python_ok { range(&pyr) } else { "-".into() },
        range(&bare)
    );
    Ok(Row {
        case: c.name,
        unit: c.unit,
        panoptes: e2e.per_s(c.items),
        python: (python_ok && !pyr.rounds.is_empty()).then(|| pyr.per_s(c.items)),
        bare: bare.per_s(c.items),
        spread,
        covers: c.covers,
        outputs,
        warnings,
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() -> Result<()> {
    let a = args();
    let infer = InferConfig {
        threads: a.threads,
        batch: Some(a.batch),
        ..InferConfig::default()
    };
    let models = ModelsConfig {
        dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        ..ModelsConfig::default()
    };
    let rt = Runtime::new(&infer, &models)?;
    println!(
        "infer bench: {} ({} cores), threads {}, batch {}, {} s per side and case in {} round(s), ONNX Runtime {}",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rt.threads(),
        rt.batch,
        a.secs,
        a.rounds,
        rt.library().display()
    );

    let mut py = None;
    if a.python {
        let photos =
            ["astronaut", "chelsea", "coffee"].map(|n| rt.dir().join(format!("samples/{n}.png")));
        let lobby = if a.only.iter().any(|c| c == "ocr") {
            Some(lobby_frame()?)
        } else {
            None
        };
        let config = json!({
            "models": rt.dir(),
            "detector": models.detector,
            "threads": rt.threads(),
            "batch": rt.batch,
            "secs": a.secs,
            "cases": a.only,
            "photos": photos,
            "lobby": lobby,
            "wav": rt.dir().join("samples/beckett.wav"),
            "sentences": &SENTENCES[..],
            "det_min_confidence": infer.detection.min_confidence,
            "det_nms_iou": infer.detection.nms_iou,
            "ocr_min_confidence": infer.ocr.min_confidence,
            "vad_threshold": infer.speech.vad_threshold,
        });
        let path = cache_dir().join("bench/infer_reference.json");
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
        match python_env().and_then(|python| Python::start(&python, &path)) {
            Ok(p) => py = Some(p),
            Err(e) => println!("warning: no Python reference: {e:#}"),
        }
    }

    let mut rows = Vec::new();
    for name in &a.only {
        eprintln!("{name}: loading");
        let case = match name.as_str() {
            "detect" => detect_case(&rt, &models, &infer, &a),
            "ocr" => ocr_case(&rt, &infer, &a),
            "speech" => speech_case(&rt, &infer),
            _ => embed_case(&rt, &a),
        }
        .with_context(|| format!("{name}: preparing"))?;
        rows.push(measure(case, &mut py, &a).with_context(|| format!("{name}: measuring"))?);
    }
    if let Some(v) = py.as_ref().and_then(|p| p.versions.as_ref()) {
        println!("Python reference: {v}");
    }

    println!(
        "\n| case | unit | Panoptes items/s | Python items/s | ratio (target >= 1.2x) | Panoptes bare run items/s | overhead (target <= 10%) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let (python, ratio) = match r.python {
            Some(p) if p > 0.0 => {
                let ratio = r.panoptes / p;
                let mark = if ratio >= 1.2 { "" } else { " (below)" };
                (format!("{p:.2}"), format!("{ratio:.2}x{mark}"))
            }
            _ => ("-".into(), "-".into()),
        };
        let overhead = if r.panoptes > 0.0 {
            r.bare / r.panoptes - 1.0
        } else {
            f64::NAN
        };
        let mark = if overhead <= 0.10 { "" } else { " (above)" };
        println!(
            "| {} | {} | {:.2} | {} | {} | {:.2} | {:+.1}%{} |",
            r.case,
            r.unit,
            r.panoptes,
            python,
            ratio,
            r.bare,
            overhead * 100.0,
            mark
        );
    }
    println!("\nbare runs (Session::run alone, pre-filled inputs), per iteration:");
    for r in &rows {
        println!("- {}: {}", r.case, r.covers);
    }
    println!("\nslowest-fastest round, items/s:");
    for r in &rows {
        println!("- {}: {}", r.case, r.spread);
    }
    println!("\noutputs:");
    for r in &rows {
        for o in &r.outputs {
            println!("- {}: {o}", r.case);
        }
    }
    for r in &rows {
        for w in &r.warnings {
            println!("warning: {w}");
        }
    }
    Ok(())
}

/// `[[name, score], ...]` as the Python reference prints detections and text lines.
fn pairs(v: &Value) -> Vec<(String, f64)> {
    v.as_array()
        .map(|v| {
            v.iter()
                .map(|x| {
                    (
                        x[0].as_str().unwrap_or("").to_string(),
                        x[1].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
