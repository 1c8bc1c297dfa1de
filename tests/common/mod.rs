//! Helpers for integration tests: the fixtures, a replay server and a panoptes process on
//! free loopback ports, HTTP calls and bounded waiting.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod faulty;
pub mod flow;
pub mod services;

pub const BIN: &str = env!("CARGO_BIN_EXE_panoptes");

/// The generated fixtures (made by `tests/fixtures/generate.sh`, which runs here if needed).
pub fn fixtures() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("PANOPTES_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("tests/fixtures/out"));
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap();
    if !*done {
        let status = Command::new(root.join("tests/fixtures/generate.sh"))
            .arg(&dir)
            .status()
            .expect("run tests/fixtures/generate.sh");
        assert!(status.success(), "fixture generation failed");
        *done = true;
    }
    dir
}

/// The HTTP client of the tests. Every call is bounded, so a server that accepts a
/// connection and never answers fails the test (and shows the processes' last lines)
/// instead of hanging the whole suite.
pub fn http() -> &'static ureq::Agent {
    static AGENT: LazyLock<ureq::Agent> = LazyLock::new(|| {
        ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(HTTP_TIMEOUT))
            .build()
            .into()
    });
    &AGENT
}

/// The longest any one HTTP call of a test may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 200 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Output of a child process, collected by background threads.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<String>>);

impl Output {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Starts `cmd` with its stdout and stderr collected into one `Output`.
    fn spawn(cmd: &mut Command, what: &str) -> (Child, Output) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let output = Output::default();
        output.collect(child.stdout.take().unwrap());
        output.collect(child.stderr.take().unwrap());
        (child, output)
    }

    fn collect(&self, r: impl Read + Send + 'static) {
        let buf = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let mut b = buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
    }
}

/// `panoptes replay` on a free port.
pub struct Replay {
    child: Child,
    pub port: u16,
    pub output: Output,
}

impl Replay {
    pub fn start(files: &[PathBuf], copies: u32) -> Replay {
        Self::start_on(free_port(), files, copies)
    }

    pub fn start_on(port: u16, files: &[PathBuf], copies: u32) -> Replay {
        Self::start_with(port, files, copies, None)
    }

    /// A replay server whose mounts demand `(user, password)` (RTSP digest).
    pub fn start_with(
        port: u16,
        files: &[PathBuf],
        copies: u32,
        auth: Option<(&str, &str)>,
    ) -> Replay {
        let mut cmd = Command::new(BIN);
        if let Some((user, password)) = auth {
            cmd.args(["replay", "--username", user])
                .env("PANOPTES_REPLAY_PASSWORD", password);
        } else {
            cmd.arg("replay");
        }
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--copies")
            .arg(copies.to_string())
            .args(files);
        let (child, output) = Output::spawn(&mut cmd, "panoptes replay");
        let mounts = files.len() * copies as usize;
        let out = output.clone();
        let mut r = Replay {
            child,
            port,
            output,
        };
        wait_for(Duration::from_secs(60), "replay mounts", || {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("replay exited with {status}: {}", out.text());
            }
            (out.text().matches("serving rtsp://").count() >= mounts).then_some(())
        });
        r
    }

    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{mount}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `panoptes run` (or one role) with a config file in a temporary directory.
pub struct Panoptes {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub base: String,
    pub output: Output,
    env: Vec<(String, String)>,
    role: String,
    data_dir: PathBuf,
}

impl Panoptes {
    /// Starts panoptes with `cameras` (TOML `[[cameras]]` entries) and `extra` settings.
    pub fn start(extra: &str, cameras: &str) -> Panoptes {
        Self::start_env(extra, cameras, &[])
    }

    /// Starts panoptes with extra environment variables (for `${VAR}` in the config).
    pub fn start_env(extra: &str, cameras: &str, env: &[(&str, &str)]) -> Panoptes {
        Self::start_role("run", None, extra, cameras, env)
    }

    /// Starts `panoptes <role>` (run, edge, infer, api); `data_dir` shares one between
    /// processes, otherwise each has its own.
    pub fn start_role(
        role: &str,
        data_dir: Option<&Path>,
        extra: &str,
        cameras: &str,
        env: &[(&str, &str)],
    ) -> Panoptes {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let data_dir = data_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("data"));
        let config = dir.path().join("panoptes.toml");
        std::fs::write(&config, Self::config_text(&data_dir, port, extra, cameras)).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, output) = Self::launch(role, &config, &env);
        let mut p = Panoptes {
            child,
            dir,
            config,
            base: format!("http://127.0.0.1:{port}"),
            output,
            env,
            role: role.to_string(),
            data_dir,
        };
        p.wait_healthy();
        p
    }

    fn launch(role: &str, config: &Path, env: &[(String, String)]) -> (Child, Output) {
        let mut cmd = Command::new(BIN);
        cmd.arg(role)
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                "debug,async_nats=info,aws=info,h2=info,hyper=info",
            )
            .envs(env.iter().map(|(k, v)| (k, v)));
        Output::spawn(&mut cmd, &format!("panoptes {role}"))
    }

    fn wait_healthy(&mut self) {
        let health = format!("{}/healthz", self.base);
        let out = self.output.clone();
        wait_for(Duration::from_secs(60), "panoptes /healthz", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("panoptes exited with {status}: {}", out.text());
            }
            http().get(&health).call().ok().map(|_| ())
        });
    }

    /// Stops panoptes with SIGTERM and starts it again on the same config and data.
    pub fn restart(&mut self) {
        let (ok, _) = self.stop();
        assert!(ok, "panoptes did not stop cleanly: {}", self.output.text());
        self.start_again();
    }

    /// Starts the process again after [`Panoptes::stop`] or [`Panoptes::kill`].
    pub fn start_again(&mut self) {
        let (child, output) = Self::launch(&self.role, &self.config, &self.env);
        self.child = child;
        self.output = output;
        self.wait_healthy();
    }

    /// The config file: inference is off unless `extra` has an `[infer]` section, so ingest
    /// tests measure ingest alone.
    pub fn config_text(data_dir: &Path, port: u16, extra: &str, cameras: &str) -> String {
        let infer = if extra.contains("[infer]") {
            ""
        } else {
            "[infer]\nenabled = false\n"
        };
        // An `[api]` table in `extra` gets the listen address; otherwise one is added.
        let (extra, api) = match extra.find("[api]\n") {
            Some(i) => (
                format!(
                    "{}[api]\nlisten = \"127.0.0.1:{port}\"\n{}",
                    &extra[..i],
                    &extra[i + 6..]
                ),
                String::new(),
            ),
            None => (
                extra.to_string(),
                format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"),
            ),
        };
        format!(
            "data_dir = \"{}\"\n{extra}\n{infer}\n{api}\n{cameras}\n",
            data_dir.display()
        )
    }

    /// Rewrites the config file with new cameras (same port and settings).
    pub fn rewrite(&self, extra: &str, cameras: &str) {
        let port: u16 = self.base.rsplit(':').next().unwrap().parse().unwrap();
        let tmp = self.dir.path().join("panoptes.toml.new");
        std::fs::write(
            &tmp,
            Self::config_text(&self.data_dir, port, extra, cameras),
        )
        .unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.base);
        let mut resp = http()
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        resp.body_mut().read_json().unwrap()
    }

    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let url = format!("{}{path}", self.base);
        match http()
            .get(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .call()
        {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let body = r
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024 * 1024)
                    .read_to_vec()
                    .unwrap();
                (status, body)
            }
            Err(e) => panic!("GET {url}: {e}"),
        }
    }

    pub fn camera(&self, id: &str) -> Option<Value> {
        self.get("/v1/cameras")["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
    }

    pub fn wait_state(&self, id: &str, state: &str, timeout: Duration) -> Value {
        wait_for(timeout, &format!("camera {id} to be {state}"), || {
            self.camera(id).filter(|c| c["state"] == state)
        })
    }

    /// Kills the process at once (SIGKILL): no clean-up, as when a node dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The sum of the `/metrics` samples whose line starts with `line_start`.
    pub fn metric(&self, line_start: &str) -> f64 {
        let (_, body) = self.get_bytes("/metrics");
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with(line_start))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for the exit; returns (success, seconds taken).
    pub fn stop(&mut self) -> (bool, f64) {
        let started = Instant::now();
        self.terminate();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return (s.success(), started.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return (false, started.elapsed().as_secs_f64());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Panoptes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the process said last, to see why a check failed.
            let text = self.output.text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- last lines of panoptes {} ---\n{tail}", self.role);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Width and height from a JPEG's start-of-frame marker.
pub fn jpeg_size(jpeg: &[u8]) -> Option<(u32, u32)> {
    if jpeg.get(..2) != Some(&[0xff, 0xd8]) {
        return None;
    }
    let mut i = 2;
    while i + 9 < jpeg.len() {
        if jpeg[i] != 0xff {
            return None;
        }
        let marker = jpeg[i + 1];
        let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
        if matches!(marker, 0xc0..=0xc3) {
            let h = u16::from_be_bytes([jpeg[i + 5], jpeg[i + 6]]);
            let w = u16::from_be_bytes([jpeg[i + 7], jpeg[i + 8]]);
            return Some((u32::from(w), u32::from(h)));
        }
        i += 2 + len;
    }
    None
}

/// What `gst-discoverer-1.0` says about a file: (duration in seconds, video codec text).
pub fn discover(path: &Path) -> (f64, String) {
    let out = Command::new("gst-discoverer-1.0")
        .arg(path)
        .output()
        .expect("run gst-discoverer-1.0");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "gst-discoverer failed on {}: {text}",
        path.display()
    );
    let duration = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Duration: "))
        .and_then(|d| {
            let mut parts = d.trim().split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + s)
        })
        .unwrap_or_else(|| panic!("no duration in: {text}"));
    (duration, text)
}

/// The installed models (made by `models/install.sh`, which runs here if needed).
pub fn models() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("PANOPTES_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models"));
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap();
    if !*done {
        let status = Command::new(root.join("models/install.sh"))
            .arg("--dir")
            .arg(&dir)
            .status()
            .expect("run models/install.sh");
        assert!(status.success(), "model install failed");
        *done = true;
    }
    dir
}

/// Runs `panoptes analyze` on `file` with the installed models; the findings, one JSON
/// object each.
pub fn analyze(file: &Path, args: &[&str]) -> Vec<Value> {
    let out = Command::new(BIN)
        .arg("analyze")
        .args(args)
        .arg(file)
        .env("PANOPTES_MODELS", models())
        .output()
        .expect("run panoptes analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "panoptes analyze {} failed: {stderr}",
        file.display()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Levenshtein distance between two sequences.
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Lower case, punctuation dropped, words separated by single spaces.
pub fn normalize_text(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Word error rate of `got` against `want`.
pub fn wer(want: &str, got: &str) -> f64 {
    let (w, g) = (normalize_text(want), normalize_text(got));
    let w: Vec<&str> = w.split(' ').collect();
    let g: Vec<&str> = g.split(' ').filter(|s| !s.is_empty()).collect();
    edit_distance(&w, &g) as f64 / w.len() as f64
}

/// Character error rate of `got` against `want` (case and spacing kept).
pub fn cer(want: &str, got: &str) -> f64 {
    let w: Vec<char> = want.chars().collect();
    let g: Vec<char> = got.chars().collect();
    edit_distance(&w, &g) as f64 / w.len() as f64
}
