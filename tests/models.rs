//! Accuracy of the models on inputs with known content, through `panoptes analyze` (the
//! installed models, real ONNX Runtime): objects in photographs, drawn text, spoken words,
//! and the ordering of text embeddings.

mod common;

use std::path::Path;

use common::{analyze, cer, fixtures, models, wer};
use serde_json::Value;

fn of_kind<'a>(findings: &'a [Value], kind: &str) -> Vec<&'a Value> {
    findings.iter().filter(|f| f["kind"] == kind).collect()
}

#[test]
fn detector_finds_the_person_the_cat_and_the_cup() {
    let samples = models().join("samples");
    for (photo, label) in [
        ("astronaut.png", "person"),
        ("chelsea.png", "cat"),
        ("coffee.png", "cup"),
    ] {
        let findings = analyze(&samples.join(photo), &[]);
        let objects = of_kind(&findings, "object");
        let hit = objects
            .iter()
            .find(|o| o["label"] == label)
            .unwrap_or_else(|| panic!("no {label} in {photo}: {objects:?}"));
        assert!(
            hit["confidence"].as_f64().unwrap() >= 0.5,
            "{label} in {photo} found with low confidence: {hit}"
        );
        let b = &hit["bbox"];
        let area = b["w"].as_f64().unwrap() * b["h"].as_f64().unwrap();
        assert!(
            area > 0.1,
            "the {label} fills much of {photo}, the box does not: {b}"
        );
    }
}

#[test]
fn ocr_reads_the_drawn_text() {
    let fx = fixtures();
    let want = std::fs::read_to_string(fx.join("lobby.overlay.txt")).unwrap();
    let want = want.trim();
    // Four frames of the lobby recording, each with the text drawn in the middle.
    let findings = analyze(&fx.join("lobby.mp4"), &["--every", "5s"]);
    let texts = of_kind(&findings, "text");
    assert!(texts.len() >= 3, "text found in too few frames: {texts:?}");
    for t in &texts {
        let got = t["text"].as_str().unwrap();
        let rate = cer(want, got);
        assert!(rate <= 0.10, "read {got:?} for {want:?}: CER {rate:.2}");
        let y = t["bbox"]["y"].as_f64().unwrap();
        assert!(
            (0.3..0.6).contains(&y),
            "the text is drawn mid-frame, box at y={y}"
        );
    }
}

/// All speech transcripts of `file`, joined in order.
fn transcript(file: &Path) -> String {
    let findings = analyze(file, &[]);
    of_kind(&findings, "speech")
        .iter()
        .map(|s| s["text"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn speech_recognition_of_a_recorded_voice() {
    let samples = models().join("samples");
    let want = std::fs::read_to_string(samples.join("beckett.txt")).unwrap();
    let got = transcript(&samples.join("beckett.wav"));
    let rate = wer(&want, &got);
    assert!(rate <= 0.20, "heard {got:?} for {want:?}: WER {rate:.2}");
}

#[test]
fn speech_recognition_of_a_synthetic_voice_in_a_recording() {
    // The sentence espeak-ng speaks in the lobby recording (AAC, 16 kHz, inside the MP4).
    let fx = fixtures();
    let want = std::fs::read_to_string(fx.join("lobby.txt")).unwrap();
    let got = transcript(&fx.join("lobby.mp4"));
    let rate = wer(&want, &got);
    assert!(rate <= 0.20, "heard {got:?} for {want:?}: WER {rate:.2}");
}

/// The default config over the installed models, and the runtime it loads.
fn runtime() -> (panoptes::config::Config, panoptes::infer::Runtime) {
    let config = panoptes::config::load_str(
        &format!("[models]\ndir = {:?}\n", models().display().to_string()),
        "test",
        &|_| None,
    )
    .unwrap();
    let rt = panoptes::infer::Runtime::new(&config.infer, &config.models).unwrap();
    (config, rt)
}

fn embedder() -> panoptes::infer::Embedder {
    panoptes::infer::Embedder::load(&runtime().1).unwrap()
}

#[test]
fn related_phrases_embed_closer_than_unrelated_ones() {
    let embedder = embedder();
    let v = embedder
        .embed(&[
            "a delivery truck at the loading dock",
            "a lorry unloading goods at the warehouse",
            "a cat sleeping on a sofa",
        ])
        .unwrap();
    assert!(v.iter().all(|e| e.len() == panoptes::infer::Embedder::DIM));
    for e in &v {
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not unit length: {norm}");
    }
    let related = panoptes::infer::similarity(&v[0], &v[1]);
    let unrelated = panoptes::infer::similarity(&v[0], &v[2]);
    assert!(
        related > unrelated + 0.1,
        "related {related:.3} should be well above unrelated {unrelated:.3}"
    );
}

#[test]
fn missing_models_are_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["analyze"])
        .arg(models().join("samples/astronaut.png"))
        .env("PANOPTES_MODELS", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ONNX Runtime library not found") && err.contains("models/install.sh"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A file that is not ONNX Runtime.
    let junk = empty.path().join("libonnxruntime.so.1.99.0");
    std::fs::write(&junk, b"not a library").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["analyze"])
        .arg(models().join("samples/astronaut.png"))
        .env("ORT_DYLIB_PATH", &junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot load ONNX Runtime from"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Search queries sent at once are embedded in shared batches; each caller must get its
/// own query's vector, as close to the one it has alone as quantisation allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_search_queries_each_get_their_own_vector() {
    let embedder = std::sync::Arc::new(embedder());
    const QUERIES: [&str; 12] = [
        "a delivery truck at the loading dock",
        "somebody left a bag by the door",
        "emergency exit",
        "a cat sleeping on a sofa",
        "the parcel was delivered to the front desk this morning",
        "red car",
        "a man talking on the phone in the lobby",
        "coffee",
        "the gate is open",
        "two people shaking hands",
        "licence plate",
        "a bicycle leaning on the wall",
    ];
    let queries: &'static [&str] = &QUERIES;
    let alone = embedder.embed(queries).unwrap();
    let shared = std::sync::Arc::new(panoptes::infer::QueryEmbedder::new(embedder).unwrap());
    let mut tasks = Vec::new();
    for round in 0..4 {
        for (i, q) in queries.iter().enumerate() {
            let shared = std::sync::Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                (round, i, shared.embed(q).await.unwrap())
            }));
        }
    }
    for t in tasks {
        let (round, i, v) = t.await.unwrap();
        let own = panoptes::infer::similarity(&v, &alone[i]);
        assert!(
            own > 0.99,
            "round {round}, {:?}: {own:.4} to its own vector",
            queries[i]
        );
        for (j, other) in alone.iter().enumerate() {
            if j != i {
                let sim = panoptes::infer::similarity(&v, other);
                assert!(
                    sim < own - 0.05,
                    "round {round}, {:?} is as close to {:?} ({sim:.3}) as to itself ({own:.3})",
                    queries[i],
                    queries[j]
                );
            }
        }
    }
}

/// 16-bit PCM mono samples of a WAV file, as -1..1.
fn wav_samples(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .expect("a data chunk");
    bytes[data + 8..]
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// The infer worker feeds each camera's audio to voice activity detection as it arrives,
/// many cameras in one model run. That must see what one pass over the whole recording sees.
#[test]
fn voice_activity_in_pieces_and_across_streams_matches_one_pass() {
    use panoptes::infer::VadStream;
    const WINDOW: usize = 512;
    let (config, rt) = runtime();
    let speech = panoptes::infer::Speech::load(&rt, &config.infer).unwrap();
    let voice = wav_samples(&models().join("samples/beckett.wav"));
    let voice = &voice[..voice.len() / WINDOW * WINDOW];
    // A second stream: the same voice after 3 s of digital silence, cut to the same length.
    let mut late = vec![0.0f32; 3 * 16_000 / WINDOW * WINDOW];
    late.extend_from_slice(voice);
    late.truncate(voice.len());
    let alone = |pcm: &[f32]| {
        speech
            .voice_activity(&mut [(&mut VadStream::default(), pcm)])
            .unwrap()
            .remove(0)
    };
    let (want_voice, want_late) = (alone(voice), alone(&late));
    // The first 1.5 s as silero-vad's own wrapper runs the model (64 samples of the
    // previous window before each 512, the state carried), with the Python onnxruntime
    // on the same file. Without the carried samples they differ by up to 0.066.
    const SILERO: [f32; 48] = [
        0.0325, 0.0156, 0.0083, 0.0060, 0.0060, 0.0051, 0.0037, 0.0037, 0.0115, 0.0154, 0.4510,
        0.8975, 0.9905, 0.9991, 0.9995, 1.0000, 1.0000, 0.9999, 1.0000, 1.0000, 1.0000, 1.0000,
        1.0000, 1.0000, 1.0000, 1.0000, 0.9999, 0.9999, 0.9998, 0.9998, 0.9999, 0.9998, 0.9999,
        0.9998, 0.9994, 0.9720, 0.8338, 0.4896, 0.1560, 0.0603, 0.0297, 0.0219, 0.0217, 0.0471,
        0.0357, 0.0218, 0.0259, 0.0311,
    ];
    for (i, (got, want)) in want_voice.iter().zip(SILERO).enumerate() {
        assert!(
            (got - want).abs() < 1e-3,
            "window {i}: {got:.4}, silero-vad's own loop gives {want:.4}"
        );
    }
    assert!(
        want_voice.iter().filter(|&&p| p > 0.5).count() > want_voice.len() / 3,
        "half the recording is speech: {want_voice:?}"
    );
    assert!(
        want_late[..90].iter().all(|&p| p == 0.0),
        "digital silence is no speech"
    );
    // Both streams together, fed 16 windows at a time (about half a second).
    let (mut a, mut b) = (VadStream::default(), VadStream::default());
    let (mut got_voice, mut got_late) = (Vec::new(), Vec::new());
    for (x, y) in voice.chunks(16 * WINDOW).zip(late.chunks(16 * WINDOW)) {
        let mut probs = speech
            .voice_activity(&mut [(&mut a, x), (&mut b, y)])
            .unwrap();
        got_late.extend(probs.pop().unwrap());
        got_voice.extend(probs.pop().unwrap());
    }
    for (name, got, want) in [
        ("voice", &got_voice, &want_voice),
        ("late voice", &got_late, &want_late),
    ] {
        assert_eq!(got.len(), want.len(), "{name}: one probability per window");
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!(
                (g - w).abs() < 1e-3,
                "{name}, window {i}: {g:.4} in pieces across streams, {w:.4} in one pass"
            );
        }
    }
    // The phrases found are the same too.
    assert_eq!(
        speech.phrases(&got_voice, voice.len()),
        speech.speech_ranges(voice).unwrap()
    );
}
