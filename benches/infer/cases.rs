//! The four cases: what Panoptes runs for each model, the bare ONNX Runtime loop beside it,
//! and how the Python reference is asked for the same work.

use anyhow::{Context, Result, anyhow, bail};
use ort::value::{DynValue, Tensor, TensorRef};
use serde_json::Value;

use panoptes::config::{InferConfig, ModelsConfig};
use panoptes::infer::{
    Detector, Embedder, Ocr, RgbImage, Runtime, Speech, decode_image, log_mel, similarity,
    whisper_files,
};

use crate::*;

pub(crate) fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

pub(crate) fn tensor(shape: &[usize], data: &[f32]) -> Result<DynValue> {
    Ok(Tensor::from_array((shape.to_vec(), data.to_vec()))
        .map_err(err)?
        .into_dyn())
}

pub(crate) fn detect_case<'a>(
    rt: &'a Runtime,
    models: &ModelsConfig,
    infer: &InferConfig,
    a: &Args,
) -> Result<Case<'a>> {
    let det = Detector::load(rt, &models.detector, &infer.detection)?;
    let photos: Vec<RgbImage> = ["astronaut", "chelsea", "coffee"]
        .iter()
        .map(|n| -> Result<RgbImage> {
            let path = rt.dir().join(format!("samples/{n}.png"));
            Ok(decode_image(
                &std::fs::read(&path).with_context(|| path.display().to_string())?,
            )?)
        })
        .collect::<Result<_>>()?;
    let b = a.batch;
    let distinct = photos.len().min(b);
    let found: Vec<Vec<(String, f32)>> = {
        let images: Vec<&RgbImage> = (0..b).map(|i| &photos[i % photos.len()]).collect();
        det.detect(&images)?
            .into_iter()
            .take(distinct)
            .map(|d| d.into_iter().map(|d| (d.label, d.confidence)).collect())
            .collect()
    };
    let shown = found
        .iter()
        .map(|d| {
            let l: Vec<String> = d.iter().map(|(l, c)| format!("{l} {c:.2}")).collect();
            format!("[{}]", l.join(", "))
        })
        .collect();
    let check = {
        let found = found.clone();
        move |py: &Value| -> Reading {
            let theirs: Vec<Vec<(String, f64)>> = py
                .as_array()
                .map(|imgs| imgs.iter().map(pairs).collect())
                .unwrap_or_default();
            let mut w = Vec::new();
            for (i, ours) in found.iter().enumerate() {
                let Some(theirs) = theirs.get(i) else {
                    w.push(format!("detect: no Python result for image {i}"));
                    continue;
                };
                let top = |v: Option<&str>| v.unwrap_or("nothing").to_string();
                let (a, b) = (
                    top(ours.first().map(|x| x.0.as_str())),
                    top(theirs.first().map(|x| x.0.as_str())),
                );
                if a != b {
                    w.push(format!(
                        "detect: image {i}: Panoptes' top label {a}, Python's {b}"
                    ));
                }
                for (l, c) in ours {
                    if *c >= 0.5 && !theirs.iter().any(|t| &t.0 == l) {
                        w.push(format!(
                            "detect: image {i}: only Panoptes finds {l} ({c:.2})"
                        ));
                    }
                }
                for (l, c) in theirs {
                    if *c >= 0.5 && !ours.iter().any(|t| &t.0 == l) {
                        w.push(format!("detect: image {i}: only Python finds {l} ({c:.2})"));
                    }
                }
            }
            let shown = theirs
                .iter()
                .map(|d| {
                    let l: Vec<String> = d.iter().map(|(l, c)| format!("{l} {c:.2}")).collect();
                    format!("[{}]", l.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ");
            (shown, w)
        }
    };
    let mut session = rt.session("bare-detector", &models.detector)?;
    let input = pattern(b * 3 * 640 * 640);
    let e2e = move || -> Result<()> {
        let images: Vec<&RgbImage> = (0..b).map(|i| &photos[i % photos.len()]).collect();
        std::hint::black_box(det.detect(&images)?);
        Ok(())
    };
    let bare = move || -> Result<()> {
        let t = TensorRef::from_array_view(([b, 3, 640, 640], &*input)).map_err(err)?;
        let outputs = session.run(ort::inputs![t]).map_err(err)?;
        std::hint::black_box(outputs.len());
        Ok(())
    };
    Ok(Case {
        name: "detect",
        unit: "images",
        items: b,
        e2e: Box::new(e2e),
        bare: Box::new(bare),
        covers: format!("detector [{b},3,640,640]"),
        shown,
        check: Box::new(check),
    })
}

pub(crate) fn ocr_case<'a>(rt: &'a Runtime, infer: &InferConfig, a: &Args) -> Result<Case<'a>> {
    let ocr = Ocr::load(rt, &infer.ocr)?;
    let frame = decode_image(&std::fs::read(lobby_frame()?)?)?;
    let b = a.batch;
    let lines = {
        let frames: Vec<&RgbImage> = vec![&frame; b];
        ocr.read(&frames)?.swap_remove(0)
    };
    let (fw, fh) = (frame.width() as f32, frame.height() as f32);
    // The shapes Panoptes runs: the detector per frame at the size it picks (longest side at
    // most 736, multiples of 32), then the crops of all frames in batches of max(B, 8),
    // sorted by aspect ratio, each batch as wide as its widest crop (at least 320).
    let ratio = (736.0 / fw.max(fh)).min(1.0);
    let round32 = |v: f32| (((v * ratio) / 32.0).round() as usize).max(1) * 32;
    let (dw, dh) = (round32(fw), round32(fh));
    let mut widths: Vec<usize> = lines
        .iter()
        .map(|l| {
            let (w, h) = (l.bbox.w * fw, l.bbox.h * fh);
            ((48.0 * w / h.max(1.0)).ceil() as usize).clamp(1, 2048)
        })
        .collect::<Vec<_>>()
        .repeat(b);
    widths.sort_unstable();
    let crop_batch = b.max(8);
    let rec_runs: Vec<(usize, usize)> = widths
        .chunks(crop_batch)
        .map(|c| (c.len(), c.iter().copied().max().unwrap_or(1).max(320)))
        .collect();
    let max_w = rec_runs.iter().map(|r| r.1).max().unwrap_or(320);
    let det_input = pattern(3 * dw * dh);
    let crops = pattern(crop_batch * 3 * 48 * max_w);
    let covers = format!(
        "{b} x det [1,3,{dh},{dw}] + cls {} + rec {} ({} line(s) per frame)",
        rec_runs
            .iter()
            .map(|r| format!("[{},3,48,192]", r.0))
            .collect::<Vec<_>>()
            .join(" "),
        rec_runs
            .iter()
            .map(|r| format!("[{},3,48,{}]", r.0, r.1))
            .collect::<Vec<_>>()
            .join(" "),
        lines.len()
    );
    let texts: Vec<String> = lines.iter().map(|l| l.text.clone()).collect();
    let shown = lines
        .iter()
        .map(|l| format!("{:?} {:.2}", l.text, l.confidence))
        .collect();
    let check = move |py: &Value| -> Reading {
        let lines = pairs(py);
        let theirs: Vec<String> = lines.iter().map(|l| l.0.clone()).collect();
        let shown = lines
            .iter()
            .map(|(t, c)| format!("{t:?} {c:.2}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut w = Vec::new();
        for (side, t) in [("Panoptes", &texts), ("Python", &theirs)] {
            if !t.iter().any(|l| l.contains(LOBBY_TEXT)) {
                w.push(format!("ocr: {side} does not read {LOBBY_TEXT:?}: {t:?}"));
            }
        }
        if texts != theirs {
            w.push(format!(
                "ocr: the lines differ: Panoptes {texts:?}, Python {theirs:?}"
            ));
        }
        (shown, w)
    };
    let mut det = rt.session("bare-ocr-det", "ppocr/det.onnx")?;
    let mut cls = rt.session("bare-ocr-cls", "ppocr/cls.onnx")?;
    let mut rec = rt.session("bare-ocr-rec", "ppocr/rec.onnx")?;
    let e2e = move || -> Result<()> {
        let frames: Vec<&RgbImage> = vec![&frame; b];
        std::hint::black_box(ocr.read(&frames)?);
        Ok(())
    };
    let bare = move || -> Result<()> {
        for _ in 0..b {
            let t = TensorRef::from_array_view(([1, 3, dh, dw], &*det_input)).map_err(err)?;
            std::hint::black_box(det.run(ort::inputs![t]).map_err(err)?.len());
        }
        for &(n, _) in &rec_runs {
            let t = TensorRef::from_array_view(([n, 3, 48, 192], &crops[..n * 3 * 48 * 192]))
                .map_err(err)?;
            std::hint::black_box(cls.run(ort::inputs![t]).map_err(err)?.len());
        }
        for &(n, w) in &rec_runs {
            let t = TensorRef::from_array_view(([n, 3, 48, w], &crops[..n * 3 * 48 * w]))
                .map_err(err)?;
            std::hint::black_box(rec.run(ort::inputs![t]).map_err(err)?.len());
        }
        Ok(())
    };
    Ok(Case {
        name: "ocr",
        unit: "frames",
        items: b,
        e2e: Box::new(e2e),
        bare: Box::new(bare),
        covers,
        shown,
        check: Box::new(check),
    })
}

/// Lower-case words without punctuation.
pub(crate) fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// The model runs of one transcription, recorded so the bare loop can replay them.
pub(crate) struct DecodeRun {
    pub(crate) mel: Vec<f32>,
    pub(crate) n: usize,
    /// Mel frames of the window.
    pub(crate) frames: usize,
    /// Token inputs of each decoder step ([n, 2] first, then [n, 1]).
    pub(crate) steps: Vec<Vec<i64>>,
}

pub(crate) fn speech_case<'a>(rt: &'a Runtime, infer: &InferConfig) -> Result<Case<'a>> {
    const VAD_WINDOW: usize = 512;
    const VAD_CONTEXT: usize = 64;
    let speech = Speech::load(rt, infer)?;
    let (pcm, rate) = read_wav(&rt.dir().join("samples/beckett.wav"))?;
    if rate != 16_000 {
        bail!("beckett.wav is {rate} Hz, expected 16000");
    }
    let expected =
        std::fs::read_to_string(rt.dir().join("samples/beckett.txt")).unwrap_or_else(|_| {
            "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better.".into()
        });
    let segments = speech.transcribe(&pcm)?;
    let ranges = speech.speech_ranges(&pcm)?;

    // VAD inputs: 64 samples of context + 512 new ones per window, zero-padded at the end.
    let mut vad_inputs = Vec::new();
    let mut window = vec![0.0f32; VAD_CONTEXT + VAD_WINDOW];
    for chunk in pcm.chunks(VAD_WINDOW) {
        window.copy_within(VAD_WINDOW.., 0);
        window[VAD_CONTEXT..][..chunk.len()].copy_from_slice(chunk);
        window[VAD_CONTEXT + chunk.len()..].fill(0.0);
        vad_inputs.push(window.clone());
    }
    // One thread, as Panoptes runs its VAD.
    let mut vad = rt.session_with_threads("bare-vad", "silero-vad/silero_vad.onnx", 1)?;
    // The graphs Panoptes runs on this provider (int8 weights on the CPU).
    let (encoder_file, decoder_file) = whisper_files(rt.provider());
    let mut encoder = rt.session("bare-whisper-encoder", encoder_file)?;
    let mut decoder = rt.session("bare-whisper-decoder", decoder_file)?;
    let (sot, eot, no_ts) = {
        let meta = decoder.metadata().map_err(err)?;
        let token = |k: &str, d: i64| {
            meta.custom(k)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(d)
        };
        (
            token("sot", 50257),
            token("eot", 50256),
            token("no_timestamps", 50362),
        )
    };

    // Record the decoder steps once (greedy, as Panoptes decodes), so the bare loop replays
    // the same runs without any post-processing of its own.
    let mut runs = Vec::new();
    for chunk in ranges.chunks(speech.batch()) {
        let n = chunk.len();
        // The window Panoptes fits to the phrases.
        let frames = chunk
            .iter()
            .map(|&(s, e)| speech.window_frames(e - s))
            .max()
            .unwrap_or(3000);
        let mut mel = Vec::with_capacity(n * 80 * frames);
        for &(s, e) in chunk {
            mel.extend(log_mel(&pcm[s..e], frames));
        }
        let t = TensorRef::from_array_view(([n, 80, frames], &*mel)).map_err(err)?;
        let mut out = encoder.run(ort::inputs!["mel" => t]).map_err(err)?;
        let ck = out.remove("cross_k").ok_or(anyhow!("no cross_k"))?;
        let cv = out.remove("cross_v").ok_or(anyhow!("no cross_v"))?;
        drop(out);
        let mut steps = Vec::new();
        let mut step: Vec<i64> = (0..n).flat_map(|_| [sot, no_ts]).collect();
        let (mut sk, mut sv) = (tensor(&[4, n, 0, 384], &[])?, tensor(&[4, n, 0, 384], &[])?);
        let mut offset = 0i64;
        let mut done = vec![false; n];
        for i in 0..224 {
            let width = step.len() / n;
            let mut out = decoder
                .run(ort::inputs![
                    "tokens" => TensorRef::from_array_view(([n, width], &*step)).map_err(err)?,
                    "self_k" => &sk,
                    "self_v" => &sv,
                    "cross_k" => &ck,
                    "cross_v" => &cv,
                    "offset" => Tensor::from_array(([1usize], vec![offset])).map_err(err)?,
                ])
                .map_err(err)?;
            let (_, logits) = out["logits"].try_extract_tensor::<f32>().map_err(err)?;
            let vocab = logits.len() / n;
            let mut next = Vec::with_capacity(n);
            for (b, row) in logits.chunks(vocab).enumerate() {
                if done[b] {
                    next.push(eot);
                    continue;
                }
                let allowed = &row[..=(eot as usize).min(vocab - 1)];
                let mut best = 0;
                for (t, &v) in allowed.iter().enumerate() {
                    let banned = i == 0 && (t == 220 || t == eot as usize);
                    if !banned && v > allowed[best] {
                        best = t;
                    }
                }
                done[b] = best as i64 == eot;
                next.push(best as i64);
            }
            steps.push(std::mem::replace(&mut step, next));
            offset += width as i64;
            sk = out.remove("new_self_k").ok_or(anyhow!("no new_self_k"))?;
            sv = out.remove("new_self_v").ok_or(anyhow!("no new_self_v"))?;
            if done.iter().all(|d| *d) {
                break;
            }
        }
        runs.push(DecodeRun {
            mel,
            n,
            frames,
            steps,
        });
    }
    let covers = format!(
        "VAD {} x [1,576] + {}",
        vad_inputs.len(),
        runs.iter()
            .map(|r| format!(
                "encoder [{},80,{}] + decoder {} steps (KV cache)",
                r.n,
                r.frames,
                r.steps.len()
            ))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    let ours = segments
        .iter()
        .map(|s| s.text.clone())
        .collect::<Vec<_>>()
        .join(" ");
    let shown = segments
        .iter()
        .map(|s| format!("{:.2}-{:.2} s {:?}", s.start_s, s.end_s, s.text))
        .collect();
    let check = move |py: &Value| -> Reading {
        let segs: Vec<(f64, f64, String)> = py
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|s| {
                        (
                            s[0].as_f64().unwrap_or(0.0),
                            s[1].as_f64().unwrap_or(0.0),
                            s[2].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let theirs = segs
            .iter()
            .map(|s| s.2.clone())
            .collect::<Vec<_>>()
            .join(" ");
        let shown = segs
            .iter()
            .map(|(a, b, t)| format!("{a:.2}-{b:.2} s {t:?}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut w = Vec::new();
        if words(&ours) != words(&theirs) {
            w.push(format!(
                "speech: transcripts differ: Panoptes {ours:?}, Python {theirs:?}"
            ));
        }
        if words(&ours) != words(&expected) {
            w.push(format!(
                "speech: Panoptes' transcript {ours:?} is not the reference {:?}",
                expected.trim()
            ));
        }
        (shown, w)
    };
    let e2e = move || -> Result<()> {
        std::hint::black_box(speech.transcribe(&pcm)?);
        Ok(())
    };
    let bare = move || -> Result<()> {
        let sr = Tensor::from_array(((), vec![16_000i64])).map_err(err)?;
        let mut state = tensor(&[2, 1, 128], &[0.0; 256])?;
        for input in &vad_inputs {
            let mut out = vad
                .run(ort::inputs![
                    "input" => TensorRef::from_array_view(([1, VAD_CONTEXT + VAD_WINDOW], &**input)).map_err(err)?,
                    "state" => &state,
                    "sr" => &sr,
                ])
                .map_err(err)?;
            state = out.remove("stateN").ok_or(anyhow!("no stateN"))?;
        }
        for r in &runs {
            let n = r.n;
            let t = TensorRef::from_array_view(([n, 80, r.frames], &*r.mel)).map_err(err)?;
            let mut out = encoder.run(ort::inputs!["mel" => t]).map_err(err)?;
            let ck = out.remove("cross_k").ok_or(anyhow!("no cross_k"))?;
            let cv = out.remove("cross_v").ok_or(anyhow!("no cross_v"))?;
            drop(out);
            let (mut sk, mut sv) = (tensor(&[4, n, 0, 384], &[])?, tensor(&[4, n, 0, 384], &[])?);
            let mut offset = 0i64;
            for step in &r.steps {
                let width = step.len() / n;
                let mut out = decoder
                    .run(ort::inputs![
                        "tokens" => TensorRef::from_array_view(([n, width], &**step)).map_err(err)?,
                        "self_k" => &sk,
                        "self_v" => &sv,
                        "cross_k" => &ck,
                        "cross_v" => &cv,
                        "offset" => Tensor::from_array(([1usize], vec![offset])).map_err(err)?,
                    ])
                    .map_err(err)?;
                offset += width as i64;
                sk = out.remove("new_self_k").ok_or(anyhow!("no new_self_k"))?;
                sv = out.remove("new_self_v").ok_or(anyhow!("no new_self_v"))?;
            }
        }
        Ok(())
    };
    Ok(Case {
        name: "speech",
        unit: "clips",
        items: 1,
        e2e: Box::new(e2e),
        bare: Box::new(bare),
        covers,
        shown,
        check: Box::new(check),
    })
}

pub(crate) fn embed_case<'a>(rt: &'a Runtime, a: &Args) -> Result<Case<'a>> {
    let embedder = Embedder::load(rt)?;
    let texts: Vec<&str> = SENTENCES.to_vec();
    let vectors = embedder.embed(&texts)?;
    // Same tokenizer settings and batches as Panoptes, tokenised once for the bare runs.
    let mut tok =
        tokenizers::Tokenizer::from_file(rt.file("minilm/tokenizer.json")?).map_err(err)?;
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: 128,
        ..Default::default()
    }))
    .map_err(err)?;
    tok.with_padding(Some(tokenizers::PaddingParams {
        strategy: tokenizers::PaddingStrategy::BatchLongest,
        ..Default::default()
    }));
    let batch = a.batch.max(16);
    let mut chunks = Vec::new();
    for chunk in texts.chunks(batch) {
        let enc = tok.encode_batch(chunk.to_vec(), true).map_err(err)?;
        let len = enc.first().map_or(0, |e| e.len());
        let ids = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Vec<i64> {
            enc.iter()
                .flat_map(|e| f(e).iter().map(|&v| v as i64))
                .collect()
        };
        chunks.push((
            [chunk.len(), len],
            ids(|e| e.get_ids()),
            ids(|e| e.get_attention_mask()),
            ids(|e| e.get_type_ids()),
        ));
    }
    let covers = format!(
        "embedder {}",
        chunks
            .iter()
            .map(|c| format!("[{},{}]", c.0[0], c.0[1]))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let first: Vec<Vec<f32>> = vectors.iter().take(4).cloned().collect();
    let shown = vec![format!(
        "{} vectors of {}, first vectors start {:?}",
        vectors.len(),
        Embedder::DIM,
        &first[0][..4]
    )];
    let check = move |py: &Value| -> Reading {
        let theirs: Vec<Vec<f32>> = py
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|e| {
                        e.as_array()
                            .map(|e| e.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let worst = first
            .iter()
            .zip(&theirs)
            .map(|(a, b)| similarity(a, b))
            .fold(f32::INFINITY, f32::min);
        let shown = format!(
            "first vectors start {:?}; lowest cosine with Panoptes' {worst:.5}",
            theirs.first().map(|v| &v[..v.len().min(4)]).unwrap_or(&[])
        );
        let w = if theirs.len() < first.len() || worst < 0.99 {
            vec![format!(
                "embed: Panoptes' and Python's vectors differ (lowest cosine {worst:.4})"
            )]
        } else {
            Vec::new()
        };
        (shown, w)
    };
    let mut session = rt.session("bare-embedder", "minilm/model.onnx")?;
    let e2e = move || -> Result<()> {
        std::hint::black_box(embedder.embed(&texts)?);
        Ok(())
    };
    let bare = move || -> Result<()> {
        for (shape, ids, mask, types) in &chunks {
            let outputs = session
                .run(ort::inputs![
                    "input_ids" => TensorRef::from_array_view((*shape, &**ids)).map_err(err)?,
                    "attention_mask" => TensorRef::from_array_view((*shape, &**mask)).map_err(err)?,
                    "token_type_ids" => TensorRef::from_array_view((*shape, &**types)).map_err(err)?,
                ])
                .map_err(err)?;
            std::hint::black_box(outputs.len());
        }
        Ok(())
    };
    Ok(Case {
        name: "embed",
        unit: "texts",
        items: SENTENCES.len(),
        e2e: Box::new(e2e),
        bare: Box::new(bare),
        covers,
        shown,
        check: Box::new(check),
    })
}
