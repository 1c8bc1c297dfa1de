//! Ingest slice, end to end: the replay server over generated fixtures, `panoptes run` on the
//! embedded defaults, and what a user checks through the API.

mod common;

use std::time::Duration;

use common::{Panoptes, Replay, discover, fixtures, jpeg_size, wait_for};
use serde_json::Value;

/// Short timeouts and segments so the scenarios run in seconds.
const FAST: &str = r#"
[edge]
connect_timeout = "3s"
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

fn camera(id: &str, url: &str) -> String {
    format!("[[cameras]]\nid = \"{id}\"\nurl = \"{url}\"\n")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_default()
}

#[test]
fn cameras_stream_sample_and_record_without_gaps() {
    let fx = fixtures();
    let replay = Replay::start(&[fx.join("lobby.mp4"), fx.join("lobby-h265.mkv")], 1);
    let cams = camera("lobby", &replay.url("lobby"))
        + &camera("hevc", &replay.url("lobby-h265"))
        + &camera("udp", &replay.url("lobby"))
        + "transport = \"udp\"\naudio = false\n";
    let p = Panoptes::start(FAST, &cams);

    for (id, codec) in [("lobby", "h264"), ("hevc", "h265"), ("udp", "h264")] {
        let c = p.wait_state(id, "streaming", Duration::from_secs(20));
        assert_eq!(c["video"]["codec"], codec, "{c}");
        assert_eq!(c["video"]["width"], 640, "{c}");
        assert_eq!(c["video"]["height"], 360, "{c}");
    }
    // The frame rate is measured from timestamps: let it settle over a few seconds.
    std::thread::sleep(Duration::from_secs(8));
    for id in ["lobby", "hevc", "udp"] {
        let c = p.camera(id).unwrap();
        let fps = c["video"]["fps"].as_f64().unwrap();
        assert!((fps - 15.0).abs() < 1.0, "{id}: fps {fps}: {c}");
        assert!(u(&c["keyframes"]) >= 5, "{c}");
        assert!(u(&c["samples"]) >= 3, "{id} sampled too little: {c}");
        assert_eq!(c["state"], "streaming", "{c}");
        // Snapshots decode at the configured size (640x360 into 320x320 keeps 16:9).
        let (status, jpeg) = p.get_bytes(&format!("/v1/cameras/{id}/snapshot"));
        assert_eq!(status, 200);
        assert_eq!(jpeg_size(&jpeg), Some((320, 180)), "{id} snapshot size");
    }
    let lobby = p.camera("lobby").unwrap();
    assert_eq!(lobby["audio"]["codec"], "aac", "{lobby}");
    assert!(
        u(&lobby["audio_chunks"]) >= 1,
        "no audio chunk published: {lobby}"
    );

    // Clips: consecutive segments, no gap, no overlap, each plays with the right length.
    for id in ["lobby", "hevc"] {
        let clips = wait_for(Duration::from_secs(15), "three clips", || {
            let v = p.get(&format!("/v1/clips?camera={id}"));
            let items = v["items"].as_array().unwrap().clone();
            (items.len() >= 3).then_some(items)
        });
        for pair in clips.windows(2) {
            let end =
                chrono::DateTime::parse_from_rfc3339(pair[0]["end"].as_str().unwrap()).unwrap();
            let start =
                chrono::DateTime::parse_from_rfc3339(pair[1]["start"].as_str().unwrap()).unwrap();
            let gap_ms = (start - end).num_milliseconds().abs();
            assert!(
                gap_ms <= 67,
                "gap of {gap_ms} ms between {} and {}",
                pair[0],
                pair[1]
            );
        }
        for clip in &clips {
            let start =
                chrono::DateTime::parse_from_rfc3339(clip["start"].as_str().unwrap()).unwrap();
            let end = chrono::DateTime::parse_from_rfc3339(clip["end"].as_str().unwrap()).unwrap();
            let want = (end - start).num_milliseconds() as f64 / 1000.0;
            assert!((2.0..4.0).contains(&want), "segment length {want}s: {clip}");
            let (status, body) = p.get_bytes(clip["url"].as_str().unwrap());
            assert_eq!(status, 200);
            assert_eq!(body.len() as u64, u(&clip["bytes"]));
            let file = p
                .dir
                .path()
                .join(format!("{}.mp4", clip["id"].as_str().unwrap()));
            std::fs::write(&file, &body).unwrap();
            let (duration, text) = discover(&file);
            assert!(
                (duration - want).abs() < 0.1,
                "clip plays {duration}s, expected {want}s: {text}"
            );
            let codec = if id == "hevc" { "H.265" } else { "H.264" };
            assert!(text.contains(codec), "{text}");
        }
    }
    // Range requests for players that seek.
    let clip = &p.get("/v1/clips?camera=lobby")["items"][0];
    let url = format!("{}{}", p.base, clip["url"].as_str().unwrap());
    let mut r = common::http()
        .get(&url)
        .header("Range", "bytes=0-99")
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(r.body_mut().read_to_vec().unwrap().len(), 100);

    // Per-stage metrics.
    let (_, metrics) = p.get_bytes("/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    for name in [
        "panoptes_edge_frames_received_total{camera=\"lobby\"}",
        "panoptes_edge_keyframes_total",
        "panoptes_media_samples_total",
        "panoptes_recorder_segments_total",
        "panoptes_recorder_bytes_total",
        "panoptes_bus_published_total{stream=\"frames\"}",
    ] {
        assert!(metrics.contains(name), "metric {name} missing");
    }
}

#[test]
fn cameras_recover_when_the_server_comes_back() {
    let fx = fixtures();
    let mut replay = Replay::start(&[fx.join("lobby.mp4")], 1);
    let port = replay.port;
    let p = Panoptes::start(FAST, &camera("lobby", &replay.url("lobby")));
    p.wait_state("lobby", "streaming", Duration::from_secs(20));
    replay.kill();
    let c = p.wait_state("lobby", "backoff", Duration::from_secs(10));
    assert!(
        c["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{c}"
    );
    let before = u(&c["frames_received"]);
    let _replay = Replay::start_on(port, &[fx.join("lobby.mp4")], 1);
    let c = p.wait_state("lobby", "streaming", Duration::from_secs(15));
    assert!(u(&c["reconnects"]) >= 1, "{c}");
    wait_for(Duration::from_secs(10), "frames after reconnect", || {
        let c = p.camera("lobby")?;
        (u(&c["frames_received"]) > before + 15).then_some(())
    });
}

#[test]
fn bad_cameras_show_their_error_and_do_not_disturb_others() {
    let fx = fixtures();
    let replay = Replay::start(&[fx.join("lobby.mp4")], 1);
    let refused = common::free_port();
    let password = "Pw-9f3e-do-not-leak";
    let cams = camera("good", &replay.url("lobby"))
        + &camera("wrong-path", &replay.url("no-such-mount"))
        + &format!(
            "[[cameras]]\nid = \"refused\"\nurl = \"rtsp://127.0.0.1:{refused}/x\"\nusername = \"admin\"\npassword = \"{password}\"\n"
        )
        + &format!(
            "[[cameras]]\nid = \"secret\"\nurl = \"{}\"\nusername = \"admin\"\npassword = \"{password}\"\n",
            replay.url("lobby")
        );
    let p = Panoptes::start(FAST, &cams);
    p.wait_state("good", "streaming", Duration::from_secs(20));
    p.wait_state("secret", "streaming", Duration::from_secs(20));
    for id in ["wrong-path", "refused"] {
        let c = wait_for(Duration::from_secs(15), "an error", || {
            p.camera(id)
                .filter(|c| c["last_error"].is_string() && c["reconnects"].as_u64() >= Some(2))
        });
        assert_ne!(c["state"], "streaming", "{c}");
        eprintln!("{id}: {}", c["last_error"]);
    }
    let wrong = p.camera("wrong-path").unwrap();
    assert!(
        wrong["last_error"].as_str().unwrap().contains("404"),
        "{wrong}"
    );
    let refused_cam = p.camera("refused").unwrap();
    assert!(
        refused_cam["last_error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("refused"),
        "{refused_cam}"
    );
    // The good camera keeps its frame rate while the others fail.
    let a = u(&p.camera("good").unwrap()["frames_received"]);
    std::thread::sleep(Duration::from_secs(4));
    let good = p.camera("good").unwrap();
    let rate = (u(&good["frames_received"]) - a) as f64 / 4.0;
    assert!(
        (rate - 15.0).abs() < 2.0,
        "good camera at {rate} fps: {good}"
    );
    assert_eq!(u(&good["reconnects"]), 0, "{good}");

    // The password appears nowhere a user or operator can see.
    let mut seen = String::new();
    for path in [
        "/v1/cameras",
        "/v1/cameras/refused",
        "/v1/cameras/secret",
        "/v1/clips",
        "/metrics",
    ] {
        seen.push_str(&String::from_utf8_lossy(&p.get_bytes(path).1));
    }
    seen.push_str(&p.output.text());
    assert!(
        p.output.text().contains("camera session ended"),
        "logs were not captured"
    );
    assert!(!seen.contains(password), "the camera password leaked");
}

#[test]
fn camera_credentials_are_used_and_never_shown() {
    let fx = fixtures();
    let password = "Dg-7c1a-camera-pass";
    let wrong = "Wr-4b2e-not-the-pass";
    let replay = Replay::start_with(
        common::free_port(),
        &[fx.join("lobby.mp4")],
        1,
        Some(("admin", password)),
    );
    let url = replay.url("lobby");
    let cams = format!(
        "[[cameras]]\nid = \"authed\"\nurl = \"{url}\"\nusername = \"${{CAM_USER}}\"\npassword = \"${{CAM_PASSWORD}}\"\n\
         [[cameras]]\nid = \"wrong\"\nurl = \"{url}\"\nusername = \"admin\"\npassword = \"{wrong}\"\n\
         [[cameras]]\nid = \"anonymous\"\nurl = \"{url}\"\n"
    );
    let p = Panoptes::start_env(
        FAST,
        &cams,
        &[("CAM_USER", "admin"), ("CAM_PASSWORD", password)],
    );
    let authed = p.wait_state("authed", "streaming", Duration::from_secs(20));
    assert_eq!(authed["video"]["codec"], "h264");
    for id in ["wrong", "anonymous"] {
        let c = wait_for(Duration::from_secs(15), "an authentication error", || {
            p.camera(id).filter(|c| c["last_error"].is_string())
        });
        assert_ne!(c["state"], "streaming", "{c}");
        assert!(c["last_error"].as_str().unwrap().contains("401"), "{c}");
    }
    // Let a clip be written so its metadata is covered too.
    wait_for(Duration::from_secs(15), "a clip", || {
        (p.camera("authed")?["clips"].as_u64()? >= 1).then_some(())
    });
    let mut seen = p.output.text();
    assert!(
        seen.contains("DESCRIBE"),
        "debug logs of the RTSP exchange were not captured"
    );
    for path in [
        "/v1/cameras",
        "/v1/cameras/authed",
        "/v1/cameras/wrong",
        "/v1/clips",
        "/metrics",
    ] {
        seen.push_str(&String::from_utf8_lossy(&p.get_bytes(path).1));
    }
    for clip in walk(&p.dir.path().join("data")) {
        seen.push_str(&String::from_utf8_lossy(&std::fs::read(clip).unwrap()));
    }
    for secret in [password, wrong] {
        assert!(!seen.contains(secret), "a camera password leaked");
    }
}

#[test]
fn cameras_added_and_removed_in_the_config_file_start_and_stop() {
    let fx = fixtures();
    let replay = Replay::start(&[fx.join("lobby.mp4"), fx.join("photos.mp4")], 1);
    let one = camera("lobby", &replay.url("lobby"));
    let p = Panoptes::start(FAST, &one);
    p.wait_state("lobby", "streaming", Duration::from_secs(20));
    let frames = |id: &str| u(&p.camera(id).unwrap()["frames_received"]);
    let reconnects_before = u(&p.camera("lobby").unwrap()["reconnects"]);

    let two = one.clone() + &camera("photos", &replay.url("photos"));
    p.rewrite(FAST, &two);
    wait_for(Duration::from_secs(5), "photos to start", || {
        p.camera("photos")
    });
    p.wait_state("photos", "streaming", Duration::from_secs(15));

    p.rewrite(FAST, &camera("photos", &replay.url("photos")));
    wait_for(Duration::from_secs(5), "lobby to stop", || {
        p.camera("lobby").is_none().then_some(())
    });
    // The camera that stayed was not touched.
    let before = frames("photos");
    std::thread::sleep(Duration::from_secs(2));
    assert!(frames("photos") > before + 20);
    assert_eq!(u(&p.camera("photos").unwrap()["reconnects"]), 0);
    assert_eq!(reconnects_before, 0);

    // A broken edit is reported and changes nothing.
    std::fs::write(&p.config, "[[cameras]]\nid = 3\n").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(p.camera("photos").is_some());
    assert!(p.output.text().contains("config change ignored"));
}

#[test]
fn sigterm_stores_the_open_clip_and_exits() {
    let fx = fixtures();
    let replay = Replay::start(&[fx.join("lobby.mp4")], 1);
    let extra = FAST.replace("segment = \"2s\"", "segment = \"60s\"");
    let mut p = Panoptes::start(&extra, &camera("lobby", &replay.url("lobby")));
    p.wait_state("lobby", "streaming", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        p.get("/v1/clips?camera=lobby")["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let (ok, secs) = p.stop();
    assert!(ok, "unclean exit: {}", p.output.text());
    assert!(secs < 10.0, "shutdown took {secs}s");
    let clips: Vec<_> = walk(&p.dir.path().join("data/objects/clips/lobby"));
    assert_eq!(clips.len(), 1, "{clips:?}");
    let (duration, _) = discover(&clips[0]);
    assert!(duration > 2.0, "last clip plays {duration}s");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
