//! Bad streams (issue 6, item 1): a faulty RTSP camera (tests/common/faulty.rs) sends corrupt
//! NAL units, truncated RTP packets, a codec change, a resolution change and timestamp jumps,
//! never answers, or answers DESCRIBE with garbage. Each fault is counted and named in
//! `/v1/cameras`, survived where the stream can go on, and a healthy camera beside them keeps
//! its frame rate and its clips stay continuous.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::faulty::{FaultyCamera, Media};
use common::{Panoptes, Replay, fixtures, wait_for};
use serde_json::Value;

/// Short timeouts and segments so the scenario runs in well under a minute.
const FAST: &str = r#"
[edge]
connect_timeout = "2s"
first_frame_timeout = "3s"
stall_timeout = "2s"
backoff_initial = "200ms"
backoff_max = "1s"

[sampling]
interval = "1s"
max_width = 320
max_height = 320

[recording]
segment = "2s"
"#;

/// Camera id and the faulty camera's mount.
const FAULTY: [(&str, &str); 8] = [
    ("peer-ok", "ok"),
    ("corrupt", "corrupt"),
    ("truncated", "truncated"),
    ("codec-switch", "h265switch"),
    ("resize", "resize"),
    ("tsjump", "tsjump"),
    ("silent", "silent"),
    ("garbage", "garbage"),
];

fn camera(id: &str, url: &str) -> String {
    format!("[[cameras]]\nid = \"{id}\"\nurl = \"{url}\"\n")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_default()
}

fn kind(c: &Value, kind: &str) -> u64 {
    u(&c["stream_errors_by_kind"][kind])
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Waits until camera `id` satisfies `ok`; the camera record on success.
fn wait_camera(p: &Panoptes, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(Duration::from_secs(30), &format!("{id}: {what}"), || {
            let c = p.camera(id)?;
            last = c.clone();
            ok(&c).then_some(c)
        })
    }));
    found.unwrap_or_else(|_| panic!("{id}: {what}; the camera shows {last:#}"))
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text(v))
        .unwrap_or_else(|e| panic!("bad time {v}: {e}"))
        .with_timezone(&Utc)
}

/// Checks that the camera's clips follow each other without gap or overlap and lie within
/// the run; returns how many there are.
fn check_clips(p: &Panoptes, id: &str, from: DateTime<Utc>) -> usize {
    let mut clips = p.get(&format!("/v1/clips?camera={id}"))["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    clips.sort_by_key(|c| time(&c["start"]));
    let now = Utc::now();
    for c in &clips {
        let (start, end) = (time(&c["start"]), time(&c["end"]));
        assert!(
            start >= from - chrono::Duration::seconds(2) && end <= now,
            "{id}: clip outside the run ({from} .. {now}): {c}"
        );
        let secs = (end - start).num_milliseconds() as f64 / 1000.0;
        assert!(secs > 0.0 && secs < 6.0, "{id}: clip of {secs} s: {c}");
    }
    for pair in clips.windows(2) {
        let gap = (time(&pair[1]["start"]) - time(&pair[0]["end"])).num_milliseconds();
        assert!(
            gap.abs() <= 67,
            "{id}: {gap} ms between clips {} and {}",
            pair[0],
            pair[1]
        );
    }
    clips.len()
}

#[test]
fn faulty_streams_are_counted_and_named_and_leave_the_others_alone() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let peer = FaultyCamera::start(Media::load(&fx, tmp.path()));
    let replay = Replay::start(&[fx.join("lobby.mp4")], 1);
    let mut cams = camera("healthy", &replay.url("lobby"));
    for (id, mount) in FAULTY {
        cams += &camera(id, &peer.url(mount));
        cams += "audio = false\n";
    }
    let from = Utc::now();
    let p = Panoptes::start(FAST, &cams);
    for id in ["healthy", "peer-ok"] {
        p.wait_state(id, "streaming", Duration::from_secs(20));
    }

    // Corrupt NAL units: the broken access units are dropped and counted, the session goes on.
    let c = wait_camera(&p, "corrupt", "two bad access units counted", |c| {
        kind(c, "bad_payload") >= 2
    });
    assert!(
        text(&c["last_error"]).starts_with("dropped an access unit: "),
        "{c:#}"
    );
    assert!(text(&c["last_error"]).contains("RTP seq"), "{c:#}");

    // Truncated RTP packets: dropped and counted, the session goes on.
    let c = wait_camera(&p, "truncated", "two short packets counted", |c| {
        kind(c, "bad_rtp_header") >= 2 && kind(c, "bad_payload") >= 1
    });
    assert!(text(&c["last_error"]).starts_with("dropped "), "{c:#}");

    // H.264 -> H.265 mid-stream: named, and the reconnect picks up the new codec.
    let c = wait_camera(
        &p,
        "codec-switch",
        "streaming H.265 after the switch",
        |c| c["state"] == "streaming" && c["video"]["codec"] == "h265",
    );
    assert!(
        kind(&c, "codec_changed") >= 1 && u(&c["reconnects"]) >= 1,
        "{c:#}"
    );
    assert_eq!(c["last_error_kind"], "codec_changed", "{c:#}");
    let e = text(&c["last_error"]);
    assert!(
        e.contains("no longer H.264") && e.contains("looks like H.265"),
        "{c:#}"
    );

    // Resolution change: the new size is shown, the stream goes on; not an error.
    let c = wait_camera(&p, "resize", "showing 320x180", |c| {
        c["video"]["width"] == 320 && c["video"]["height"] == 180
    });
    assert!(u(&c["parameter_changes"]) >= 1, "{c:#}");

    // Timestamp jumps back and forth: counted, the timeline re-based.
    let c = wait_camera(&p, "tsjump", "a jump back and a jump forward", |c| {
        kind(c, "timestamp_jump") >= 2
    });
    assert!(text(&c["last_error"]).contains("timestamp jumped"), "{c:#}");

    // A camera that never answers, and one that answers DESCRIBE with garbage.
    let c = wait_camera(&p, "silent", "a connect timeout", |c| {
        kind(c, "connect_timeout") >= 1
    });
    assert!(text(&c["last_error"]).contains("connect timeout"), "{c:#}");
    let c = wait_camera(&p, "garbage", "the bad SDP named", |c| {
        kind(c, "bad_sdp") >= 2
    });
    assert_eq!(c["last_error_kind"], "bad_sdp", "{c:#}");
    assert!(
        text(&c["last_error"]).contains("not a usable SDP description"),
        "{c:#}"
    );

    // Faults go on (corrupt and truncated packets, jumps every 3 s, failed connects) while
    // the others are measured.
    let before = p.get("/v1/cameras");
    let window = 10.0;
    std::thread::sleep(Duration::from_secs_f64(window));
    let after = p.get("/v1/cameras");
    let find = |v: &Value, id: &str| -> Value {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing from {v:#}"))
    };
    for id in [
        "healthy",
        "peer-ok",
        "corrupt",
        "truncated",
        "resize",
        "tsjump",
    ] {
        let (a, b) = (find(&before, id), find(&after, id));
        let rate = (u(&b["frames_received"]) - u(&a["frames_received"])) as f64 / window;
        eprintln!("{id}: {rate:.2} frames/s; {b}");
        assert_eq!(b["state"], "streaming", "{b:#}");
        assert_eq!(u(&b["reconnects"]), 0, "{id} reconnected: {b:#}");
        // A dropped access unit is one frame less: corrupt and truncated lose one in 20.
        let want = if matches!(id, "corrupt" | "truncated") {
            15.0 * 19.0 / 20.0
        } else {
            15.0
        };
        assert!((rate - want).abs() <= 1.0, "{id} at {rate} frames/s: {b:#}");
        let fps = b["video"]["fps"].as_f64().unwrap_or_default();
        assert!((fps - 15.0).abs() <= 1.0, "{id} measures {fps} fps: {b:#}");
    }
    for id in ["codec-switch", "silent", "garbage"] {
        eprintln!("{id}: {}", find(&after, id));
    }
    for id in ["healthy", "peer-ok"] {
        let b = find(&after, id);
        assert_eq!(u(&b["stream_errors"]), 0, "{b:#}");
        assert!(b["last_error"].is_null(), "{b:#}");
        assert_eq!(u(&b["parameter_changes"]), 0, "{b:#}");
    }
    let resize = find(&after, "resize");
    assert_eq!(u(&resize["stream_errors"]), 0, "{resize:#}");
    for id in ["silent", "garbage"] {
        let b = find(&after, id);
        assert_ne!(b["state"], "streaming", "{b:#}");
        assert_eq!(u(&b["frames_received"]), 0, "{b:#}");
        assert!(u(&b["reconnects"]) >= 2, "{b:#}");
    }

    // Clips: no gap, no overlap, all within the run, across drops, the resolution change and
    // the timestamp jumps.
    for id in [
        "healthy",
        "peer-ok",
        "corrupt",
        "truncated",
        "resize",
        "tsjump",
    ] {
        let n = check_clips(&p, id, from);
        assert!(n >= 5, "{id}: only {n} clips");
    }

    // The metrics name the camera and the kind.
    let (_, metrics) = p.get_bytes("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    for (camera, kind) in [
        ("corrupt", "bad_payload"),
        ("truncated", "bad_rtp_header"),
        ("codec-switch", "codec_changed"),
        ("tsjump", "timestamp_jump"),
        ("silent", "connect_timeout"),
        ("garbage", "bad_sdp"),
    ] {
        let camera = format!("camera=\"{camera}\"");
        let kind = format!("kind=\"{kind}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("panoptes_edge_stream_errors_total{")
                    && l.contains(&camera)
                    && l.contains(&kind)),
            "no panoptes_edge_stream_errors_total with {camera}, {kind}"
        );
    }
    assert!(
        metrics.contains("panoptes_edge_parameter_changes_total{camera=\"resize\"}"),
        "panoptes_edge_parameter_changes_total missing"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("panoptes_edge_stream_errors_total{")
                && l.contains("camera=\"healthy\"")),
        "the healthy camera has stream errors"
    );
}
