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
    // The camera with the unknown field is still checked: its id repeats the first one's.
    assert!(
        out.contains("cameras[1].id: duplicate camera id \"gate\" (also cameras[0])"),
        "{out}"
    );
    assert!(out.contains("4 problems"), "{out}");
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
        "cameras[1].id: duplicate camera id \"a\" (also cameras[0])",
        "cameras[1].password: environment variable CAM_PASSWORD is not set",
        "cameras[2].id: must be 1-64 characters",
        "cameras[2].url: scheme \"http\" is not supported",
        "cameras[2].sample_interval: must be greater than zero",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

/// Every kind of mistake the issue names, several in one section and several in one camera,
/// all in one `panoptes validate` run: each is named by its field, nothing else is reported,
/// and no password is echoed.
#[test]
fn every_kind_of_mistake_is_listed_in_one_run() {
    let (ok, out) = validate(
        r#"
data_dir = 5
colour = "blue"

[api]
listen = "nowhere"
rate_limit = -1

[sampling]
interval = "-5s"
jpeg_quality = "high"
bogus = 1

[edge]
backoff_initial = -3
stall_timeout = "0s"

[bus]
kind = "nats"
url = "nats://nats-user:s3cret-nats@127.0.0.1:4222"

[store.s3]
endpoint = "http://minio-user:s3cret-minio@127.0.0.1:9000"

[[cameras]]
id = "a"
url = "rtsp://admin:s3cret-one@192.0.2.1/stream"
fps = 3
sample_interval = "-1s"

[[cameras]]
id = "a"
url = "rtsp//missing-colon"

[[cameras]]
id = "c"
url = "rtsp://"

[[cameras]]
id = "d"
url = "rtsp://192.0.2.4:99999/stream"

# A password with '#' in it: the URL parses, with the '@' in its fragment.
[[cameras]]
id = "e"
url = "rtsp://admin:554#s3cret-two@192.0.2.5/stream"

[[cameras]]
id = "f"
url = 5
record = "yes"

[[cameras]]
url = "ftp://192.0.2.7/stream"
"#,
    );
    assert!(!ok, "{out}");
    let expected = [
        "data_dir: invalid type: integer `5`, expected path string",
        "colour: unknown field `colour`",
        "api.listen: invalid socket address syntax",
        "api.rate_limit: invalid value: integer `-1`, expected u32; it must not be negative",
        "sampling.interval: invalid value: string \"-5s\", expected a duration; write a positive duration",
        "sampling.jpeg_quality: invalid type: string \"high\", expected u32",
        "sampling.bogus: unknown field `bogus`",
        "edge.backoff_initial: invalid type: integer `-3`, expected a duration",
        "edge.stall_timeout: must be greater than zero",
        "bus.url: credentials must not be inside the URL; use bus.username/bus.password",
        "store.s3.endpoint: credentials must not be inside the URL",
        "cameras[0].fps: unknown field `fps`",
        "cameras[0].sample_interval: invalid value: string \"-1s\", expected a duration",
        "cameras[0].url: credentials must not be inside the URL",
        "cameras[1].id: duplicate camera id \"a\" (also cameras[0])",
        "cameras[1].url: not a valid URL (relative URL without a base)",
        "cameras[2].url: has no host",
        "cameras[3].url: not a valid URL (invalid port number)",
        "cameras[4].url: credentials must not be inside the URL",
        "cameras[5].url: invalid type: integer `5`, expected a string",
        "cameras[5].record: invalid type: string \"yes\", expected a boolean",
        "cameras[6]: missing field `id`",
    ];
    let missing: Vec<&str> = expected
        .iter()
        .filter(|e| !out.contains(&format!("bad.toml: {e}")))
        .copied()
        .collect();
    assert!(missing.is_empty(), "missing {missing:#?} in:\n{out}");
    // Exactly these: a wrong field is not also reported as missing, and so on.
    assert!(
        out.contains(&format!("{} problems in the config", expected.len())),
        "{out}"
    );
    assert!(!out.contains("s3cret"), "a password was printed: {out}");
}

#[test]
fn an_unset_variable_is_reported_once_for_its_field() {
    // Left unexpanded, each value would also be "not a valid URL" and "not a duration".
    let (ok, out) = validate(
        r#"
[[cameras]]
id = "gate"
url = "${CAM_URL_UNSET_IN_TESTS}"
sample_interval = "${CAM_INTERVAL_UNSET_IN_TESTS}"
"#,
    );
    assert!(!ok);
    for needle in [
        "cameras[0].url: environment variable CAM_URL_UNSET_IN_TESTS is not set",
        "cameras[0].sample_interval: environment variable CAM_INTERVAL_UNSET_IN_TESTS is not set",
        "2 problems in the config",
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
