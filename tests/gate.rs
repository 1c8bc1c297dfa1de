//! The change gate, end to end: an ffmpeg-made static scene (a photograph under sensor noise
//! and rising light, a cat on it from 16 s to 28 s of every 36 s loop) replayed as a camera
//! into `panoptes run` with real models. Noise and drift run no model and create no insight;
//! the cat is found on the first sample it is in; the unchanged background stays one
//! insight that keeps being extended.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::flow::{all_items, last_seen_ms};
use common::{Panoptes, Replay, fixtures, models, wait_for};
use serde_json::Value;

const INTERVAL_S: f64 = 2.0;

fn ms(i: &Value, field: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(i[field].as_str().unwrap_or_default())
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

#[test]
fn static_scene_runs_models_only_on_change() {
    let fx = fixtures();
    let replay = Replay::start(&[fx.join("static.mp4")], 1);
    let models = models();
    let cameras = format!(
        "[[cameras]]\nid = \"yard\"\nurl = \"{}\"\n",
        replay.url("static")
    );
    let extra = "[sampling]\ninterval = \"2s\"\n\n[infer]\nenabled = true\n";
    let p = Panoptes::start_env(
        extra,
        &cameras,
        &[("PANOPTES_MODELS", models.to_str().unwrap())],
    );
    let verdict = |v: &str| {
        p.metric(&format!(
            "panoptes_infer_gate_total{{camera=\"yard\",verdict=\"{v}\"}}"
        ))
    };

    // Two cat appearances: two loops of the file, about 72 samples' worth of seconds.
    let cats = wait_for(Duration::from_secs(150), "the cat twice", || {
        let cats: Vec<Value> = all_items(&p)
            .into_iter()
            .filter(|i| i["label"] == "cat")
            .collect();
        // The second one must have ended (the cat left) before it is judged.
        let done = cats.len() >= 2
            && cats
                .iter()
                .all(|c| last_seen_ms(c) + 6_000 < chrono::Utc::now().timestamp_millis());
        done.then_some(cats)
    });
    let all = all_items(&p);

    // Found on the first sample it is in and followed to the last: the cat is on screen for
    // 12 s, sampled every 2 s, so one insight spans at least 12 - 2 * 2 s (less slack for
    // sampling jitter); one found a sample late spans at most 10 - 2 s.
    for c in &cats {
        let span = (last_seen_ms(c) - ms(c, "ts")) as f64 / 1000.0;
        assert!(
            span >= 12.0 - 2.0 * INTERVAL_S - 0.6,
            "the cat was found late or lost on the way (span {span:.1} s): {c}"
        );
        assert!(
            span <= 12.0 + 2.0 * INTERVAL_S,
            "one insight per visit: {c}"
        );
    }
    assert_eq!(cats.len(), 2, "one insight per visit, no flicker: {cats:?}");

    // The background: whatever the first frame showed is one insight per finding, extended
    // through the whole run, and noise made nothing else.
    let first_ts = all.iter().map(|i| ms(i, "ts")).min().unwrap();
    let others: Vec<&Value> = all.iter().filter(|i| i["label"] != "cat").collect();
    let late: Vec<&&Value> = others
        .iter()
        .filter(|i| ms(i, "ts") > first_ts + 1_000)
        .collect();
    assert!(late.is_empty(), "insights from noise or drift: {late:?}");
    let ids: HashSet<&str> = all.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "an id listed twice");
    for i in &others {
        let lasted = (last_seen_ms(i) - ms(i, "ts")) as f64 / 1000.0;
        assert!(
            lasted >= 60.0,
            "the still background stays one lasting insight: {i}"
        );
    }

    // And models ran only on change: the first frame, the cat coming and going (twice),
    // maybe the loop point. Every other sample only extended what was there.
    let analysed = verdict("first") + verdict("changed") + verdict("global") + verdict("refresh");
    let unchanged = verdict("unchanged");
    let gated = p.metric("panoptes_infer_gated_total{camera=\"yard\"}");
    assert_eq!(
        gated, unchanged,
        "every unchanged sample is counted as gated"
    );
    assert!(
        analysed <= 1.0 + 3.0 * 2.0 + 2.0,
        "models ran {analysed} times against {unchanged} unchanged samples"
    );
    assert!(
        unchanged >= 3.0 * analysed,
        "the gate let too much through: {analysed} analysed, {unchanged} unchanged"
    );
    assert!(p.metric("panoptes_infer_change_score_count") >= analysed + unchanged);
}
