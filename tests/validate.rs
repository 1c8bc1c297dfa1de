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
