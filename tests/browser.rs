//! The web page in a real browser: replayed cameras -> `panoptes run` with inference ->
//! Debian's Chromium, driven by `tests/browser/check.mjs` (playwright-core), sees every
//! camera's snapshot, finds the drawn text by searching, and plays the clip it is in.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::flow::{encode, items};
use common::{Panoptes, Replay, fixtures, models, wait_for};

/// How long node may take for every check (check.mjs stops itself after 150 s).
const NODE_TIMEOUT: Duration = Duration::from_secs(180);

/// `tests/browser/node_modules`, installed from the lock file if missing (as `make
/// browser-deps` does).
fn browser_deps() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .status()
            .expect("run npm (install Node.js: deploy/setup.sh)");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    dir
}

#[test]
fn the_web_page_shows_cameras_finds_text_and_plays_its_clip() {
    let fx = fixtures();
    let check = browser_deps().join("check.mjs");
    let replay = Replay::start(&[fx.join("lobby.mp4"), fx.join("photos.mp4")], 1);
    let models = models();
    let cameras = format!(
        "[[cameras]]\nid = \"lobby\"\nurl = \"{}\"\n\n[[cameras]]\nid = \"photos\"\nurl = \"{}\"\n",
        replay.url("lobby"),
        replay.url("photos")
    );
    let extra = "[sampling]\ninterval = \"2s\"\n\n[recording]\nsegment = \"4s\"\n\n[infer]\nenabled = true\n";
    let p = Panoptes::start_env(
        extra,
        &cameras,
        &[("PANOPTES_MODELS", models.to_str().unwrap())],
    );
    assert_eq!(items(&p.get("/v1/cameras")).len(), 2);

    // The text drawn on the lobby camera, read by OCR, once the clip holding it is stored:
    // what the page is to find and play.
    let overlay = std::fs::read_to_string(fx.join("lobby.overlay.txt")).unwrap();
    let overlay = overlay.trim();
    let started = Instant::now();
    let text = wait_for(
        Duration::from_secs(120),
        "the OCR insight and its clip",
        || {
            items(&p.get(&format!("/v1/insights?q={}", encode(overlay))))
                .into_iter()
                .find(|i| i["kind"] == "text" && i["clip"]["url"].is_string())
        },
    );
    eprintln!(
        "OCR insight with its clip after {:.1} s: {text}",
        started.elapsed().as_secs_f64()
    );

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let screenshot = dir.join("page.png");
    let log = dir.join("check.log");
    let _ = std::fs::remove_file(&screenshot);
    let out = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    let mut node = Command::new("node")
        .arg(&check)
        .arg(&p.base)
        .arg(overlay)
        .arg(&screenshot)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run node (install Node.js: deploy/setup.sh)");
    let status = loop {
        if let Some(status) = node.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > NODE_TIMEOUT {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "--- node {} ({:.1} s) ---\n{output}",
        check.display(),
        started.elapsed().as_secs_f64()
    );
    match status {
        Some(s) => assert!(s.success(), "the browser checks failed ({s}):\n{output}"),
        None => panic!("the browser checks took more than {NODE_TIMEOUT:?}:\n{output}"),
    }

    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", screenshot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} is not a screenshot ({} bytes)",
        screenshot.display(),
        png.len()
    );
    // Straight to stderr, past the test harness's capture: where to look, even on success.
    let _ = writeln!(
        std::io::stderr(),
        "browser test: screenshot of the page in {}",
        screenshot.display()
    );
}
