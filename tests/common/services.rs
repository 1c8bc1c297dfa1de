//! Real servers for cluster tests, on free loopback ports, stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use super::{Output, free_port, http, wait_for};

/// Kills a server's process at once (SIGKILL, as a crash would) and reaps it.
fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `nats-server` with JetStream, storing in a temporary directory.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    pub output: Output,
}

fn nats_binary() -> PathBuf {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

impl NatsServer {
    /// JetStream on, `max_payload` raised to 8 MB for frames.
    pub fn start() -> NatsServer {
        Self::start_with(Some("8MB"))
    }

    /// With `max_payload` as given, or the server's default (1 MB) for `None`.
    pub fn start_with(max_payload: Option<&str>) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            dir.path().join("js").display()
        );
        if let Some(m) = max_payload {
            conf.push_str(&format!("max_payload: {m}\n"));
        }
        std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
        let mut s = NatsServer {
            child: None,
            port,
            dir,
            output: Output::default(),
        };
        s.start_again();
        s
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (as a crash would); its stored streams stay on disk.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again on the same port and storage.
    pub fn start_again(&mut self) {
        self.kill();
        let bin = nats_binary();
        let mut cmd = Command::new(&bin);
        cmd.arg("-c").arg(self.dir.path().join("nats.conf"));
        let (child, output) = Output::spawn(&mut cmd, "nats-server");
        self.child = Some(child);
        self.output = output;
        let out = self.output.clone();
        wait_for(
            Duration::from_secs(20),
            "nats-server to listen (make test installs it: apt-get install nats-server)",
            || out.text().contains("Server is ready").then_some(()),
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `moto_server` (PyPI `moto[server]`, installed by `make test`): an in-memory S3.
pub struct MotoServer {
    child: Option<Child>,
    pub port: u16,
    pub output: Output,
}

/// A program in the Panoptes Python environment (`PANOPTES_VENV`, by default
/// `~/.cache/panoptes/venv`), where `make test` installs the test tools.
pub fn venv_bin(name: &str) -> PathBuf {
    std::env::var_os("PANOPTES_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                })
                .join("panoptes/venv")
        })
        .join("bin")
        .join(name)
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PANOPTES_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let p = venv_bin("moto_server");
    assert!(
        p.is_file(),
        "{} is missing: `make test` installs it (tests/requirements.txt), or set PANOPTES_MOTO_SERVER",
        p.display()
    );
    p
}

impl MotoServer {
    /// Starts it on a free port and waits until it answers.
    pub fn start() -> MotoServer {
        let mut s = MotoServer {
            child: None,
            port: free_port(),
            output: Output::default(),
        };
        s.start_again();
        s
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it; everything it held is gone (it keeps objects in memory).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again on the same port, empty.
    pub fn start_again(&mut self) {
        self.kill();
        let mut cmd = Command::new(moto_binary());
        cmd.args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let (child, output) = Output::spawn(&mut cmd, "moto_server");
        self.child = Some(child);
        self.output = output;
        let url = format!("{}/", self.url());
        wait_for(Duration::from_secs(30), "moto_server to answer", || {
            http().get(&url).call().ok().map(|_| ())
        });
    }

    /// Creates a bucket (moto takes unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        http()
            .put(&format!("{}/{bucket}", self.url()))
            .send_empty()
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    }

    /// Keys in a bucket under a prefix (first 1000).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let url = format!("{}/{bucket}?list-type=2&prefix={prefix}", self.url());
        let xml = http()
            .get(&url)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_default();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Qdrant server for the insight-store tests: the one at `PANOPTES_TEST_QDRANT_URL` (its
/// gRPC endpoint) when that is set, otherwise a `qdrant` binary started on free loopback
/// ports with a temporary storage directory. The binary is the first of
/// `PANOPTES_QDRANT_BIN`, `../shared/bin/qdrant` beside the checkout and `qdrant` on `PATH`.
pub struct QdrantServer {
    child: Option<Child>,
    /// gRPC endpoint (what `insights.url` takes).
    url: String,
    /// HTTP port of a server started here (readiness); `None` for an external one.
    http_port: Option<u16>,
    grpc_port: u16,
    bin: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
    pub output: Output,
}

/// The `qdrant` binary to start, if there is one.
pub fn qdrant_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PANOPTES_QDRANT_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PANOPTES_QDRANT_BIN={} is not a file",
            p.display()
        );
        return Some(p);
    }
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/bin/qdrant");
    if shared.is_file() {
        return Some(shared);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("qdrant"))
            .find(|p| p.is_file())
    })
}

impl QdrantServer {
    /// The server to test against, or `None` (after printing that `test` is skipped) when
    /// there is neither a URL nor a binary.
    pub fn start(test: &str) -> Option<QdrantServer> {
        if let Ok(url) = std::env::var("PANOPTES_TEST_QDRANT_URL") {
            return Some(QdrantServer {
                child: None,
                url,
                http_port: None,
                grpc_port: 0,
                bin: None,
                dir: None,
                output: Output::default(),
            });
        }
        let Some(bin) = qdrant_binary() else {
            eprintln!(
                "skipped {test}: no Qdrant server (set PANOPTES_TEST_QDRANT_URL, or \
                 PANOPTES_QDRANT_BIN, or put qdrant in ../shared/bin or on PATH)"
            );
            return None;
        };
        let grpc_port = free_port();
        let mut s = QdrantServer {
            child: None,
            url: format!("http://127.0.0.1:{grpc_port}"),
            http_port: Some(free_port()),
            grpc_port,
            bin: Some(bin),
            dir: Some(tempfile::tempdir().unwrap()),
            output: Output::default(),
        };
        s.start_again();
        Some(s)
    }

    /// The gRPC endpoint, for `insights.url`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Whether this server was started here (and so can be killed and restarted).
    pub fn is_ours(&self) -> bool {
        self.bin.is_some()
    }

    /// Kills the server at once (SIGKILL, as a crash would); its storage stays on disk.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again on the same ports and storage, and waits until it is ready.
    pub fn start_again(&mut self) {
        self.kill();
        let (Some(bin), Some(dir), Some(http)) = (&self.bin, &self.dir, self.http_port) else {
            panic!(
                "an external Qdrant server ({}) cannot be restarted",
                self.url
            );
        };
        let mut cmd = Command::new(bin);
        // It writes a marker file where it runs: keep that in the temporary directory.
        cmd.current_dir(dir.path())
            .env("QDRANT__STORAGE__STORAGE_PATH", dir.path().join("storage"))
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", http.to_string())
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT__LOG_LEVEL", "WARN");
        let (child, output) = Output::spawn(&mut cmd, "qdrant");
        self.child = Some(child);
        self.output = output;
        let ready = format!("http://127.0.0.1:{http}/readyz");
        wait_for(Duration::from_secs(30), "qdrant to be ready", || {
            super::http().get(&ready).call().ok().map(|_| ())
        });
    }
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.kill();
    }
}
