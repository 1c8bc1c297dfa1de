//! Real servers for cluster tests, on free loopback ports, stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use super::{Output, free_port, wait_for};

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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
            ureq::get(&url).call().ok().map(|_| ())
        });
    }

    /// Creates a bucket (moto takes unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        ureq::put(&format!("{}/{bucket}", self.url()))
            .send_empty()
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e}"));
    }

    /// Keys in a bucket under a prefix (first 1000).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let url = format!("{}/{bucket}?list-type=2&prefix={prefix}", self.url());
        let xml = ureq::get(&url)
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
