//! Bad API input: schemathesis (PyPI, installed by `make test` through
//! tests/install-services.sh) reads the OpenAPI description a real `panoptes run` serves and
//! sends it generated requests, valid and invalid (query parameters, path parameters,
//! unknown parameters), for a bounded number of cases. No answer may be a 5xx and the process
//! must still be up afterwards. Before it, a fixed list of values known to break parsers is
//! sent as every parameter, so the usual suspects are tried on every run whatever the random
//! draw. Traffic goes to 127.0.0.1 only.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Panoptes, Replay, fixtures, models, wait_for};

/// Requests per operation and phase; `PANOPTES_FUZZ_EXAMPLES` raises it for a longer hunt.
const EXAMPLES: &str = "30";
/// Hard limit on the whole schemathesis run.
const LIMIT: Duration = Duration::from_secs(90);

fn schemathesis() -> PathBuf {
    let st = common::services::venv_bin("st");
    assert!(
        st.is_file(),
        "{} is missing: `make test` installs it (tests/install-services.sh)",
        st.display()
    );
    st
}

/// Values that have broken parsers and query builders elsewhere: full-text operators and
/// quotes, control and multi-byte characters, numbers past every integer type, times at
/// the ends of the calendar, cursors and clip ids at the ends of i64, path tricks.
fn known_bad_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "\"",
        "'",
        "(",
        ")",
        "*",
        "a*",
        "a OR b",
        "NEAR(a b)",
        "a:b",
        "^a",
        "-a",
        "a AND",
        "{a}",
        "[",
        "\\",
        "%",
        "%00",
        "\0",
        "\u{7f}",
        "\u{202e}",
        "é(",
        "🦀",
        "null",
        "0",
        "-1",
        "1001",
        "18446744073709551616",
        "99999999999999999999999",
        "1e3",
        "0x10",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        "9999-12-31T23:59:59-23:59",
        "0000-01-01T00:00:00+23:59",
        "2026-02-30T00:00:00Z",
        "2026-01-01",
        "9223372036854775807.9223372036854775807",
        "-9223372036854775808.-9223372036854775808",
        ".",
        "1.",
        ".1",
        "1.2.3",
        "OBJECT",
        "object ",
        "lobby",
        "lobby-0-9223372036854775807",
        "lobby-9223372036854775807-9223372036854775807",
        "lobby--9223372036854775808-0",
        "a--1-2",
        "..",
        "../../etc/passwd",
        "lobby/../../x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("x".repeat(5000));
    v.push("(".repeat(600));
    v.push("a ".repeat(400));
    v
}

/// Every byte outside the unreserved set, percent-encoded.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends each of [`known_bad_values`] as each query and path parameter the description
/// declares, one at a time; fails listing every request answered with a 5xx or not at all.
/// Returns how many requests were sent.
fn send_known_bad_values(p: &Panoptes, doc: &serde_json::Value) -> usize {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        // A valid request to the event stream opens it: the status is all that is read.
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let values = known_bad_values();
    let mut failures = Vec::new();
    let mut sent = 0;
    for (path, op) in doc["paths"].as_object().expect("paths in /openapi.json") {
        let Some(params) = op.get("get").and_then(|g| g.get("parameters")) else {
            continue;
        };
        let params = params.as_array().unwrap();
        // Path parameters hold a plausible value while a query parameter is tried.
        let mut base = path.clone();
        for param in params.iter().filter(|p| p["in"] == "path") {
            base = base.replace(&format!("{{{}}}", param["name"].as_str().unwrap()), "lobby");
        }
        for param in params {
            let name = param["name"].as_str().unwrap();
            for value in &values {
                let url = match param["in"].as_str() {
                    Some("query") => format!("{}{base}?{name}={}", p.base, encode(value)),
                    Some("path") => format!(
                        "{}{}",
                        p.base,
                        path.replace(&format!("{{{name}}}"), &encode(value))
                    ),
                    _ => continue,
                };
                sent += 1;
                match agent.get(&url).call() {
                    Ok(r) if r.status().as_u16() < 500 => {}
                    Ok(r) => failures.push(format!("{} {url}", r.status())),
                    Err(e) => failures.push(format!("{e} {url}")),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    sent
}

/// The served description with the formats the handlers enforce added to the query
/// parameters it declares as bare strings. Without them almost every generated request
/// carries some random `kind` or `from` and is refused with a 400 before it reaches a
/// store; with them, the valid cases get through to the queries (the text of `q` and
/// `label` stays free), while the invalid ones still test the refusals.
fn with_parameter_formats(mut doc: serde_json::Value) -> serde_json::Value {
    let formats = [
        (
            "kind",
            serde_json::json!({"type": "string", "enum": ["object", "text", "speech"]}),
        ),
        (
            "from",
            serde_json::json!({"type": "string", "format": "date-time"}),
        ),
        (
            "to",
            serde_json::json!({"type": "string", "format": "date-time"}),
        ),
        (
            "camera",
            serde_json::json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}),
        ),
        (
            "limit",
            serde_json::json!({"type": "string", "pattern": "^[1-9][0-9]{0,2}$"}),
        ),
        (
            "cursor",
            serde_json::json!({"type": "string", "pattern": "^-?[0-9]{1,19}\\.-?[0-9]{1,19}$"}),
        ),
        (
            "label",
            serde_json::json!({"type": "string", "minLength": 1, "maxLength": 100}),
        ),
        (
            "q",
            serde_json::json!({"type": "string", "minLength": 1, "maxLength": 100}),
        ),
    ];
    let mut changed = 0;
    for op in doc["paths"]
        .as_object_mut()
        .expect("paths in /openapi.json")
        .values_mut()
    {
        // `get_mut`, not indexing: indexing a missing key would add a null there.
        let Some(params) = op
            .get_mut("get")
            .and_then(|g| g.get_mut("parameters"))
            .and_then(serde_json::Value::as_array_mut)
        else {
            continue;
        };
        for param in params.iter_mut().filter(|p| p["in"] == "query") {
            let bare = param["schema"].as_object().is_some_and(|s| {
                s.keys().all(|k| k == "type")
                    && (s["type"] == "string" || s["type"] == serde_json::json!(["string", "null"]))
            });
            if let Some((_, schema)) = formats.iter().find(|(name, _)| param["name"] == *name)
                && bare
            {
                param["schema"] = schema.clone();
                changed += 1;
            }
        }
    }
    eprintln!("gave {changed} query parameters their format");
    doc
}

#[test]
fn generated_requests_get_no_5xx_and_the_daemon_survives() {
    let fx = fixtures();
    let replay = Replay::start(&[fx.join("lobby.mp4")], 1);
    let models = models();
    let cameras = format!(
        "[[cameras]]\nid = \"lobby\"\nurl = \"{}\"\n",
        replay.url("lobby")
    );
    // Inference on, so /v1/insights and /v1/search answer rather than saying 503 (no
    // insight store in this process); no rate limit, so the cases reach the handlers.
    let extra =
        "[api]\nrate_limit = 0\n\n[sampling]\ninterval = \"2s\"\n\n[infer]\nenabled = true\n";
    let mut p = Panoptes::start_env(
        extra,
        &cameras,
        &[("PANOPTES_MODELS", models.to_str().unwrap())],
    );
    // /readyz says 503 by design until the bus and stores are up: wait for that first.
    wait_for(Duration::from_secs(30), "/readyz", || {
        (p.get_bytes("/readyz").0 == 200).then_some(())
    });
    p.wait_state("lobby", "streaming", Duration::from_secs(30));

    let doc = p.get("/openapi.json");
    let sent = send_known_bad_values(&p, &doc);
    assert!(
        sent > 500,
        "only {sent} requests: are the parameters still described?"
    );

    let work = tempfile::tempdir().unwrap();
    let schema = work.path().join("openapi.json");
    std::fs::write(
        &schema,
        serde_json::to_vec(&with_parameter_formats(doc)).unwrap(),
    )
    .unwrap();
    let examples = std::env::var("PANOPTES_FUZZ_EXAMPLES").unwrap_or_else(|_| EXAMPLES.into());
    let mut cmd = Command::new(schemathesis());
    cmd.current_dir(work.path())
        .arg("run")
        .arg(&schema)
        .args(["--url", &p.base])
        .args(["--checks", "not_a_server_error"])
        // An event stream never ends, so a request to it cannot complete; its query
        // parameters are checked below instead.
        .args(["--exclude-path", "/v1/events"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .args(["--workers", "2"])
        .arg("--no-color")
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Ok(seed) = std::env::var("PANOPTES_FUZZ_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let mut child = cmd.spawn().expect("start schemathesis");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = out.join().unwrap() + &err.join().unwrap();
    eprintln!("{report}");
    let status = status.unwrap_or_else(|| panic!("schemathesis ran past {LIMIT:?}"));
    assert!(
        status.success(),
        "schemathesis found failures (above; rerun with PANOPTES_FUZZ_SEED=<its seed>)"
    );
    let cases = report
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    // e.g. "388 generated, 388 passed": guards against a run that tested nothing.
    let generated: u32 = cases
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(generated >= 100, "too few cases ran: {cases:?}");
    assert!(cases.ends_with(&format!("{generated} passed")), "{cases:?}");

    // The event stream's parameters are refused at once, before any stream opens.
    for query in [
        "camera=bad%20id",
        "camera=",
        "kind=nothing",
        "kind=%00",
        "colour=blue",
        "camera=a&camera=b",
    ] {
        let (status, body) = p.get_bytes(&format!("/v1/events?{query}"));
        assert_eq!(
            status,
            400,
            "/v1/events?{query}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // Still up, and it stops cleanly (a process that had died would report its exit).
    assert_eq!(p.get_bytes("/healthz").0, 200);
    let log = p.output.text();
    assert!(!log.contains("panicked"), "a handler panicked:\n{log}");
    let (ok, _) = p.stop();
    assert!(ok, "panoptes did not stop cleanly after the fuzzing");
}
