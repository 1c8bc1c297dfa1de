//! `panoptes validate` prints every mistake in a config at once and exits non-zero.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_panoptes");

fn validate(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .env_remove("CAM_PASSWORD")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn three_mistakes_are_all_reported() {
    let (ok, out) = validate(
        r#"
data_dir = "./data"

[sampling]
interval = "-5s"

[[cameras]]
id = "gate"
url = "rtsp://admin:hunter2@192.0.2.10/stream"

[[cameras]]
id = "gate"
url = "rtsp://192.0.2.11/stream"
fps = 15
"#,
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("bad.toml: sampling.interval: invalid value"),
        "{out}"
    );
    assert!(
        out.contains("cameras[0].url: credentials must not be inside the URL"),
        "{out}"
    );
    assert!(out.contains("cameras[1].fps: unknown field `fps`"), "{out}");
    assert!(out.contains("3 problems"), "{out}");
    assert!(!out.contains("hunter2"), "the password was printed: {out}");
}

#[test]
fn duplicate_ids_bad_urls_and_unset_variables() {
    let (ok, out) = validate(
        r#"
[[cameras]]
id = "a"
url = "rtsp//missing-colon"

[[cameras]]
id = "a"
url = "rtsp://192.0.2.1/s"
username = "u"
password = "${CAM_PASSWORD}"

[[cameras]]
id = "bad id!"
url = "http://192.0.2.1/s"
sample_interval = "0s"
"#,
    );
    assert!(!ok);
    for needle in [
        "cameras[0].url: not a valid URL",
        "cameras[1].id: duplicate camera id \"a\"",
        "cameras[1].password: environment variable CAM_PASSWORD is not set",
        "cameras[2].id: must be 1-64 characters",
        "cameras[2].url: scheme \"http\" is not supported",
        "cameras[2].sample_interval: must be greater than zero",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

#[test]
fn the_demo_config_is_valid() {
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/panoptes.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_cluster_config_is_valid_with_its_secrets_and_names_them_without() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cluster.toml");
    let out = Command::new(BIN)
        .args(["validate", "--config", path])
        .env("S3_ACCESS_KEY_ID", "panoptes")
        .env("S3_SECRET_ACCESS_KEY", "not-a-real-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["validate", "--config", path])
        .env_remove("S3_ACCESS_KEY_ID")
        .env_remove("S3_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("S3_SECRET_ACCESS_KEY is not set"), "{err}");
}

#[test]
fn the_nvidia_profile_validates_and_names_a_missing_element() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nvidia.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{}\"\n[media]\nprofile = \"nvidia\"\n\
             [infer]\nenabled = false\n[[cameras]]\nid = \"lobby\"\nurl = \"rtsp://127.0.0.1:9/lobby\"\n",
            dir.path().join("data").display(),
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let has_nvcodec = Command::new("gst-inspect-1.0")
        .arg("nvh264dec")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_nvcodec {
        eprintln!("skipped: this machine has GStreamer's nvcodec plugin");
        return;
    }
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("panoptes kept running with the nvidia profile and no NVIDIA plugins");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("no element \"nvh264dec\""), "{err}");
}
