//! What the API must answer about the replayed fixtures, once the insight flow runs: the
//! same checks for `panoptes run` and for a cluster of roles.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::{Panoptes, discover, wait_for, wer};

pub fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

pub fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every insight, following the cursor through all pages.
pub fn all_items(p: &Panoptes) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/insights?limit=200&cursor={}", encode(c)),
            None => "/v1/insights?limit=200".to_string(),
        };
        let page = p.get(&path);
        all.extend(items(&page));
        match page["next_cursor"].as_str() {
            // A cursor that does not move on would page forever.
            Some(c) if cursor.as_deref() == Some(c) => panic!("{path} answers its own cursor"),
            Some(c) => cursor = Some(c.to_string()),
            None => return all,
        }
    }
}

/// Every insight id, following the cursor through all pages.
pub fn all_ids(p: &Panoptes) -> Vec<String> {
    all_items(p)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// When an insight was last seen (ms).
pub fn last_seen_ms(i: &Value) -> i64 {
    let at = |f: &str| {
        i[f].as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
    };
    at("ts_end").or_else(|| at("ts")).unwrap_or(0)
}

/// Checks the answers about the `lobby` (drawn text, spoken sentence) and `photos`
/// (astronaut) cameras: text search, kind and label filters, live events, semantic search,
/// the clip of an insight, bad parameters and the API description.
/// `infer` is the process that runs inference (for its metrics).
pub fn check_answers(p: &Panoptes, infer: &Panoptes, fx: &Path) {
    let overlay = std::fs::read_to_string(fx.join("lobby.overlay.txt")).unwrap();
    let overlay = overlay.trim();
    let sentence = std::fs::read_to_string(fx.join("lobby.txt")).unwrap();
    // Live events: listen before the first insight can be stored.
    let (tx, events) = mpsc::channel::<String>();
    let url = format!("{}/v1/events", p.base);
    std::thread::spawn(move || {
        let Ok(resp) = ureq::get(&url).call() else {
            return;
        };
        let reader = BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    // The drawn text, read by OCR, for the right camera.
    let text = wait_for(Duration::from_secs(90), "the OCR insight", || {
        items(&p.get(&format!("/v1/insights?q={}", encode(overlay))))
            .into_iter()
            .find(|i| i["kind"] == "text")
    });
    assert_eq!(text["camera"], "lobby", "{text}");
    assert!(
        super::cer(overlay, text["text"].as_str().unwrap()) <= 0.1,
        "{text}"
    );
    let age = chrono::Utc::now()
        - chrono::DateTime::parse_from_rfc3339(text["ts"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
    assert!(
        age < chrono::Duration::seconds(120),
        "the insight's time is the capture time of this run: {text}"
    );

    // The stage reports what it did.
    let (_, metrics) = infer.get_bytes("/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    for name in [
        "panoptes_infer_frames_total",
        "panoptes_infer_insights_written_total",
        "panoptes_infer_batch_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    // A live event arrived while we listened.
    let event = wait_for(Duration::from_secs(30), "an insight event", || {
        while let Ok(line) = events.try_recv() {
            if let Some(data) = line.strip_prefix("data:") {
                return serde_json::from_str::<Value>(data.trim()).ok();
            }
        }
        None
    });
    let id = event["id"].as_str().unwrap();
    assert_eq!(p.get(&format!("/v1/insights/{id}"))["id"], id);

    // The astronaut, found by the detector on the photos camera.
    let person = wait_for(Duration::from_secs(60), "a person", || {
        items(&p.get("/v1/insights?label=person&camera=photos"))
            .into_iter()
            .next()
    });
    assert_eq!(person["kind"], "object");
    let (status, jpeg) = p.get_bytes(person["url"].as_str().unwrap());
    assert_eq!(status, 200);
    assert_eq!(super::jpeg_size(&jpeg), Some((640, 360)));

    // The spoken sentence.
    let speech = wait_for(Duration::from_secs(90), "the speech insight", || {
        items(&p.get("/v1/insights?kind=speech&camera=lobby"))
            .into_iter()
            .find(|s| wer(&sentence, s["text"].as_str().unwrap_or("")) <= 0.2)
    });

    // Meaning, not words: a paraphrase finds the sentence.
    let hits = items(&p.get(&format!(
        "/v1/search?q={}",
        encode("a lorry reached the warehouse loading bay in the morning")
    )));
    let rank = hits.iter().position(|h| h["kind"] == "speech");
    assert!(
        rank.is_some_and(|r| r < 3),
        "the sentence should be in the top 3: {hits:#?}"
    );
    assert!(hits[0]["similarity"].as_f64().unwrap() > 0.3);

    // The clip that contains the sentence plays and covers its time.
    let id = speech["id"].as_str().unwrap().to_string();
    let with_clip = wait_for(Duration::from_secs(60), "the sentence's clip", || {
        Some(p.get(&format!("/v1/insights/{id}"))).filter(|i| i["clip"]["url"].is_string())
    });
    let clip_id = with_clip["clip"]["id"].as_str().unwrap();
    let (_, start, end) = {
        let mut parts = clip_id.rsplitn(3, '-');
        let end: i64 = parts.next().unwrap().parse().unwrap();
        let start: i64 = parts.next().unwrap().parse().unwrap();
        ((), start, end)
    };
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(with_clip[field].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let (ts, ts_end) = (at("ts"), at("ts_end"));
    // The clip playing when the sentence began, or, for a sentence that began as the stream
    // did (before the first keyframe), the first clip with part of it.
    assert!(
        start <= ts_end && ts < end && (start <= ts || start - ts < 1000),
        "clip {clip_id} does not hold the sentence {ts}..{ts_end}"
    );
    let offset = with_clip["clip"]["offset_s"].as_f64().unwrap();
    assert!((offset - (ts - start).max(0) as f64 / 1000.0).abs() < 0.01);
    let (status, mp4) = p.get_bytes(with_clip["clip"]["url"].as_str().unwrap());
    assert_eq!(status, 200);
    let file = p.dir.path().join("clip.mp4");
    std::fs::write(&file, mp4).unwrap();
    let (seconds, codec) = discover(&file);
    assert!(codec.contains("H.264"), "{codec}");
    assert!(
        (seconds - (end - start) as f64 / 1000.0).abs() < 0.5,
        "clip plays {seconds} s"
    );

    // Bad parameters get 400 with the error body; unknown ids 404.
    for bad in [
        "/v1/insights?kind=smell",
        "/v1/insights?from=yesterday",
        "/v1/insights?limit=0",
        "/v1/insights?cursor=zzz",
        "/v1/insights?color=red",
        "/v1/search",
    ] {
        let (status, body) = p.get_bytes(bad);
        assert_eq!(status, 400, "{bad}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request", "{bad}");
    }
    let (status, _) = p.get_bytes("/v1/insights/00000000-0000-0000-0000-000000000000");
    assert_eq!(status, 404);
    let spec = p.get("/openapi.json");
    for path in ["/v1/insights", "/v1/search", "/v1/events", "/v1/clips/{id}"] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI description"
        );
    }
}
