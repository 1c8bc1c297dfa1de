//! What types cannot check: ids, URLs, ranges, and fields that only make sense together.
//! Pure: no I/O.

use std::time::Duration;

use super::bus::BusKind;
use super::cameras::CameraConfig;
use super::root::Config;
use super::secret::has_credentials;
use super::store::{InsightsKind, StoreKind};

/// Checks what types cannot: ids, URLs, ranges. Returns (field, message) pairs.
/// `cameras` keeps `None` where an entry failed to parse, so indexes match the file.
pub(super) fn validate(config: &Config, cameras: &[Option<CameraConfig>]) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let push =
        |errors: &mut Vec<(String, String)>, f: String, m: &str| errors.push((f, m.to_string()));
    let s = &config.sampling;
    if s.interval.is_zero() {
        push(
            &mut errors,
            "sampling.interval".into(),
            "must be greater than zero, e.g. \"10s\"",
        );
    }
    if s.max_width < 16 || s.max_height < 16 {
        push(
            &mut errors,
            "sampling.max_width".into(),
            "max_width and max_height must be at least 16 pixels",
        );
    }
    if !(1..=100).contains(&s.jpeg_quality) {
        push(
            &mut errors,
            "sampling.jpeg_quality".into(),
            "must be between 1 and 100",
        );
    }
    if s.audio_chunk < Duration::from_millis(100) {
        push(
            &mut errors,
            "sampling.audio_chunk".into(),
            "must be at least 100ms",
        );
    }
    if config.recording.segment < Duration::from_secs(1) {
        push(
            &mut errors,
            "recording.segment".into(),
            "must be at least 1s",
        );
    }
    for (i, k) in config.api.keys.iter().enumerate() {
        if k.expose().trim().len() < 16 {
            push(
                &mut errors,
                format!("api.keys[{i}]"),
                "an API key must be at least 16 characters (e.g. `openssl rand -hex 24`)",
            );
        }
    }
    if config.media.decoders == 0 {
        push(&mut errors, "media.decoders".into(), "must be at least 1");
    }
    if config.media.queue == 0 {
        push(&mut errors, "media.queue".into(), "must be at least 1");
    }
    if config.bus.frames_capacity == 0 || config.bus.audio_capacity == 0 {
        push(
            &mut errors,
            "bus.frames_capacity".into(),
            "queue capacities must be at least 1",
        );
    }
    if config.bus.max_deliver == 0 {
        push(&mut errors, "bus.max_deliver".into(), "must be at least 1");
    }
    if config.bus.kind == BusKind::Nats {
        for (i, u) in config.bus.url.split(',').enumerate() {
            let ok = url::Url::parse(u.trim())
                .is_ok_and(|u| matches!(u.scheme(), "nats" | "tls") && u.host_str().is_some());
            if !ok {
                push(
                    &mut errors,
                    format!("bus.url[{i}]"),
                    "must be nats://host:port (several separated by commas)",
                );
            }
        }
        if config.bus.frames_max_bytes <= 0 || config.bus.frames_max_age.is_zero() {
            push(
                &mut errors,
                "bus.frames_max_bytes".into(),
                "frames_max_bytes and frames_max_age must be greater than zero",
            );
        }
    }
    if config.store.kind == StoreKind::S3 {
        let s3 = &config.store.s3;
        if s3.bucket.is_empty() {
            push(
                &mut errors,
                "store.s3.bucket".into(),
                "is required when store.kind = \"s3\"",
            );
        }
        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
            push(
                &mut errors,
                "store.s3.access_key_id".into(),
                "access_key_id and secret_access_key go together (or leave both out for the standard credential chain)",
            );
        }
        if let Some(e) = &s3.endpoint
            && !url::Url::parse(e).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            push(
                &mut errors,
                "store.s3.endpoint".into(),
                "must be an http:// or https:// URL",
            );
        }
        if s3.multipart_threshold < 5 << 20 {
            push(
                &mut errors,
                "store.s3.multipart_threshold".into(),
                "must be at least 5 MiB (S3's smallest part)",
            );
        }
    }
    if config.insights.kind == InsightsKind::Qdrant
        && !url::Url::parse(&config.insights.url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        push(
            &mut errors,
            "insights.url".into(),
            "must be Qdrant's gRPC URL, e.g. http://qdrant:6334",
        );
    }
    if config.cluster.heartbeat.is_zero() || config.cluster.member_ttl <= config.cluster.heartbeat {
        push(
            &mut errors,
            "cluster.member_ttl".into(),
            "heartbeat must be greater than zero and member_ttl longer than heartbeat",
        );
    }
    if config.bus.password.is_some() && config.bus.username.is_none() {
        push(
            &mut errors,
            "bus.username".into(),
            "a password is set but no username",
        );
    }
    // The other URLs must not carry secrets either: they are logged and shown.
    let other_urls = [
        (
            "bus.url",
            Some(config.bus.url.as_str()),
            "bus.username/bus.password or bus.token",
        ),
        (
            "store.s3.endpoint",
            config.store.s3.endpoint.as_deref(),
            "store.s3.access_key_id/secret_access_key",
        ),
        (
            "insights.url",
            Some(config.insights.url.as_str()),
            "insights.api_key",
        ),
    ];
    for (field, raw, instead) in other_urls {
        let Some(raw) = raw else { continue };
        let leaks = raw.split(',').any(|one| {
            url::Url::parse(one.trim()).map_or(one.contains('@'), |u| has_credentials(one, &u))
        });
        if leaks {
            errors.push((
                field.into(),
                format!(
                    "credentials must not be inside the URL; use {instead} with ${{ENV}} values"
                ),
            ));
        }
    }
    let inf = &config.infer;
    if inf.batch == Some(0) {
        push(&mut errors, "infer.batch".into(), "must be at least 1");
    }
    for (name, v) in [
        (
            "infer.detection.min_confidence",
            inf.detection.min_confidence,
        ),
        ("infer.detection.nms_iou", inf.detection.nms_iou),
        ("infer.ocr.min_confidence", inf.ocr.min_confidence),
        ("infer.speech.vad_threshold", inf.speech.vad_threshold),
    ] {
        if !(0.0..=1.0).contains(&v) {
            push(&mut errors, name.into(), "must be between 0 and 1");
        }
    }
    if !(inf.gate.min_area > 0.0 && inf.gate.min_area < 1.0) {
        push(
            &mut errors,
            "infer.gate.min_area".into(),
            "must be a share of the picture above 0 and below 1 (0.005 is half a percent)",
        );
    }
    if inf.gate.threshold == 0 {
        push(
            &mut errors,
            "infer.gate.threshold".into(),
            "must be at least 1 (grey levels of 255); set infer.gate.enabled = false to analyse every frame",
        );
    }
    if inf
        .speech
        .min_window
        .is_some_and(|w| !(Duration::from_secs(1)..=Duration::from_secs(30)).contains(&w))
    {
        push(
            &mut errors,
            "infer.speech.min_window".into(),
            "must be between 1s and 30s (Whisper's window)",
        );
    }
    if config.models.detector.as_os_str().is_empty() {
        push(
            &mut errors,
            "models.detector".into(),
            "must name an ONNX file, e.g. \"yolov8n/yolov8n.onnx\" (relative to models.dir)",
        );
    }
    let e = &config.edge;
    for (name, d) in [
        ("edge.connect_timeout", e.connect_timeout),
        ("edge.first_frame_timeout", e.first_frame_timeout),
        ("edge.stall_timeout", e.stall_timeout),
        ("edge.backoff_initial", e.backoff_initial),
    ] {
        if d.is_zero() {
            push(&mut errors, name.into(), "must be greater than zero");
        }
    }
    if e.backoff_max < e.backoff_initial {
        push(
            &mut errors,
            "edge.backoff_max".into(),
            "must be at least edge.backoff_initial",
        );
    }
    let mut seen = std::collections::HashMap::new();
    for (i, cam) in cameras.iter().enumerate() {
        let Some(cam) = cam else { continue };
        let at = |f: &str| format!("cameras[{i}].{f}");
        if cam.id.is_empty()
            || cam.id.len() > 64
            || !cam
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            push(
                &mut errors,
                at("id"),
                "must be 1-64 characters of letters, digits, '-' or '_'",
            );
        } else if let Some(first) = seen.get(cam.id.as_str()) {
            errors.push((
                at("id"),
                format!(
                    "duplicate camera id \"{}\" (also cameras[{first}]); ids must be unique",
                    cam.id
                ),
            ));
        } else {
            seen.insert(cam.id.as_str(), i);
        }
        match url::Url::parse(&cam.url) {
            Err(err) => errors.push((
                at("url"),
                format!("not a valid URL ({err}); expected rtsp://host[:port]/path"),
            )),
            Ok(u) => {
                if u.scheme() != "rtsp" && u.scheme() != "rtsps" {
                    errors.push((
                        at("url"),
                        format!(
                            "scheme \"{}\" is not supported; expected rtsp://host[:port]/path",
                            u.scheme()
                        ),
                    ));
                } else if u.host_str().is_none_or(str::is_empty) {
                    errors.push((
                        at("url"),
                        "has no host; expected rtsp://host[:port]/path".into(),
                    ));
                }
                if has_credentials(&cam.url, &u) {
                    errors.push((
                        at("url"),
                        "credentials must not be inside the URL; use username/password with ${ENV} values \
                         (write an '@' in the path as %40)"
                            .into(),
                    ));
                }
            }
        }
        if cam.sample_interval.is_some_and(|d| d.is_zero()) {
            errors.push((at("sample_interval"), "must be greater than zero".into()));
        }
        if cam.password.is_some() && cam.username.is_none() {
            errors.push((at("username"), "a password is set but no username".into()));
        }
    }
    errors
}
