//! `panoptes analyze FILE`: every model over one recording or image, insights as JSON lines.
//!
//! Images (PNG, JPEG) are read directly. Anything GStreamer can play (MP4, MKV, WAV, ...) is
//! decoded with `uridecodebin`: one frame per interval goes through detection and OCR in
//! batches while the file is still decoding, and the whole soundtrack, at 16 kHz mono,
//! through voice activity detection and speech recognition at the end.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::Serialize;

use super::{Error, Models, RgbImage};
use crate::geometry::BBox;

/// One finding in the analysed file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// `object`, `text` or `speech`.
    pub kind: &'static str,
    /// Seconds from the start of the file (0 for an image).
    pub offset_s: f32,
    /// End of a speech segment, seconds from the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_s: Option<f32>,
    /// Object class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Text read or heard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// 0..1.
    pub confidence: f32,
    /// Where in the picture.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bbox: Option<BBox>,
    /// Which model found it.
    pub model: String,
}

/// What an analysis covered.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Frames run through the vision models.
    pub frames: usize,
    /// Seconds of audio examined.
    pub audio_s: f32,
    /// Findings reported.
    pub findings: usize,
    /// Seconds spent in the vision models.
    pub vision_s: f32,
    /// Seconds spent in the speech models.
    pub speech_s: f32,
}

/// Analyses `path`, handing each finding to `emit` as soon as it is known.
pub fn analyze(
    models: &Models,
    path: &Path,
    every: Duration,
    emit: &mut dyn FnMut(&Finding),
) -> Result<Summary, Error> {
    let name = path.display().to_string();
    if !path.is_file() {
        return Err(Error::Input {
            source_name: name,
            message: "no such file".into(),
        });
    }
    let mut summary = Summary::default();
    let is_image = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"));
    if is_image {
        let img = image::open(path)
            .map_err(|e| Error::Input {
                source_name: name,
                message: e.to_string(),
            })?
            .into_rgb8();
        vision(models, &[(0.0, img)], &mut summary, emit)?;
        return Ok(summary);
    }
    let decoding = Decoding::start(path, every, models.runtime.batch * 2)?;
    let mut batch: Vec<(f32, RgbImage)> = Vec::with_capacity(models.runtime.batch);
    loop {
        match decoding.frames.recv_timeout(Duration::from_millis(100)) {
            Ok(frame) => {
                batch.push(frame);
                if batch.len() >= models.runtime.batch {
                    vision(models, &batch, &mut summary, emit)?;
                    batch.clear();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some(end) = decoding.finished() {
                    end.map_err(|message| Error::Input {
                        source_name: name.clone(),
                        message,
                    })?;
                    // Frames sent before the end are still queued.
                    batch.extend(decoding.frames.try_iter());
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    vision(models, &batch, &mut summary, emit)?;
    let audio = decoding.finish();
    summary.audio_s = audio.len() as f32 / super::speech::SAMPLE_RATE as f32;
    if let Some(speech) = &models.speech
        && !audio.is_empty()
    {
        let started = Instant::now();
        for seg in speech.transcribe(&audio)? {
            summary.findings += 1;
            emit(&Finding {
                kind: "speech",
                offset_s: seg.start_s,
                end_s: Some(seg.end_s),
                label: None,
                text: Some(seg.text),
                confidence: seg.confidence,
                bbox: None,
                model: "whisper-tiny.en".into(),
            });
        }
        summary.speech_s = started.elapsed().as_secs_f32();
    }
    Ok(summary)
}

/// Detection and OCR over a batch of frames.
fn vision(
    models: &Models,
    frames: &[(f32, RgbImage)],
    summary: &mut Summary,
    emit: &mut dyn FnMut(&Finding),
) -> Result<(), Error> {
    if frames.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    let images: Vec<&RgbImage> = frames.iter().map(|(_, img)| img).collect();
    let objects = match &models.detector {
        Some(d) => d.detect(&images)?,
        None => vec![Vec::new(); frames.len()],
    };
    let texts = match &models.ocr {
        Some(o) => o.read(&images)?,
        None => vec![Vec::new(); frames.len()],
    };
    summary.frames += frames.len();
    summary.vision_s += started.elapsed().as_secs_f32();
    let detector = models.detector.as_ref().map_or("", |d| d.name.as_str());
    for (((offset, _), objects), texts) in frames.iter().zip(objects).zip(texts) {
        for o in objects {
            summary.findings += 1;
            emit(&Finding {
                kind: "object",
                offset_s: *offset,
                end_s: None,
                label: Some(o.label),
                text: None,
                confidence: o.confidence,
                bbox: Some(o.bbox),
                model: detector.to_string(),
            });
        }
        for t in texts {
            summary.findings += 1;
            emit(&Finding {
                kind: "text",
                offset_s: *offset,
                end_s: None,
                label: None,
                text: Some(t.text),
                confidence: t.confidence,
                bbox: Some(t.bbox),
                model: "ppocr".into(),
            });
        }
    }
    Ok(())
}

/// A file being decoded by GStreamer: sampled frames arrive on a bounded channel (the
/// decoder waits when analysis falls behind), the audio collects in memory.
struct Decoding {
    pipeline: gst::Pipeline,
    frames: Receiver<(f32, RgbImage)>,
    audio: Arc<Mutex<Vec<f32>>>,
}

impl Decoding {
    fn start(path: &Path, every: Duration, queue: usize) -> Result<Self, Error> {
        let input_err = |message: String| Error::Input {
            source_name: path.display().to_string(),
            message,
        };
        crate::media::init_gstreamer().map_err(|e| input_err(e.to_string()))?;
        let abs = std::fs::canonicalize(path).map_err(|e| input_err(e.to_string()))?;
        let uri = gst::glib::filename_to_uri(&abs, None).map_err(|e| input_err(e.to_string()))?;
        let pipeline = gst::Pipeline::new();
        let decode = gst::ElementFactory::make("uridecodebin")
            .property("uri", uri.as_str())
            .build()
            .map_err(|e| input_err(format!("GStreamer uridecodebin: {e}")))?;
        pipeline
            .add(&decode)
            .map_err(|e| input_err(e.to_string()))?;
        let (tx, frames) = sync_channel(queue.max(1));
        let audio = Arc::new(Mutex::new(Vec::new()));
        let weak = pipeline.downgrade();
        let audio_sink = Arc::clone(&audio);
        let every_s = every.as_secs_f64().max(0.001);
        decode.connect_pad_added(move |_, pad| {
            let Some(pipeline) = weak.upgrade() else {
                return;
            };
            let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)));
            let media = caps
                .as_ref()
                .and_then(|c| c.structure(0))
                .map(|s| s.name().to_string())
                .unwrap_or_default();
            let linked = if media.starts_with("video/") {
                video_branch(&pipeline, pad, tx.clone(), every_s)
            } else if media.starts_with("audio/") {
                audio_branch(&pipeline, pad, Arc::clone(&audio_sink))
            } else {
                Ok(())
            };
            if let Err(e) = linked {
                tracing::warn!(media, error = %e, "cannot decode this stream of the file");
            }
        });
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| input_err("GStreamer cannot play this file".into()))?;
        Ok(Self {
            pipeline,
            frames,
            audio,
        })
    }

    /// `Some(Ok)` at the end of the file, `Some(Err)` on a decoding error, `None` meanwhile.
    fn finished(&self) -> Option<Result<(), String>> {
        let bus = self.pipeline.bus()?;
        let msg = bus.pop_filtered(&[gst::MessageType::Eos, gst::MessageType::Error])?;
        match msg.view() {
            gst::MessageView::Error(e) => Some(Err(format!(
                "{} ({})",
                e.error(),
                e.debug().map(|d| d.to_string()).unwrap_or_default()
            ))),
            _ => Some(Ok(())),
        }
    }

    /// Stops decoding and returns the audio, 16 kHz mono.
    fn finish(self) -> Vec<f32> {
        let _ = self.pipeline.set_state(gst::State::Null);
        std::mem::take(&mut *self.audio.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn link_branch(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    elements: &[gst::Element],
) -> Result<(), String> {
    pipeline.add_many(elements).map_err(|e| e.to_string())?;
    gst::Element::link_many(elements).map_err(|e| e.to_string())?;
    for e in elements {
        e.sync_state_with_parent().map_err(|e| e.to_string())?;
    }
    let sink = elements[0].static_pad("sink").ok_or("no sink pad")?;
    pad.link(&sink).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

fn make(factory: &str) -> Result<gst::Element, String> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|e| format!("GStreamer element {factory}: {e}"))
}

/// queue ! videoconvert ! RGB appsink, keeping the first frame of every interval.
fn video_branch(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    tx: SyncSender<(f32, RgbImage)>,
    every_s: f64,
) -> Result<(), String> {
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .build();
    let sink = gst_app::AppSink::builder().caps(&caps).sync(false).build();
    let mut next_due = 0.0f64;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let t = buffer.pts().map_or(0.0, |p| p.nseconds() as f64 / 1e9);
                if t + 1e-6 < next_due {
                    return Ok(gst::FlowSuccess::Ok);
                }
                next_due = (t / every_s).floor() * every_s + every_s;
                let Some(img) = sample.caps().and_then(|c| rgb_image(c, buffer)) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                // Blocks while analysis is behind; the end of analysis ends decoding.
                tx.send((t as f32, img))
                    .map_err(|_| gst::FlowError::Flushing)?;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    link_branch(
        pipeline,
        pad,
        &[make("queue")?, make("videoconvert")?, sink.upcast()],
    )
}

/// Copies an RGB buffer (rows padded to 4 bytes, as GStreamer lays them out) into an image.
fn rgb_image(caps: &gst::CapsRef, buffer: &gst::BufferRef) -> Option<RgbImage> {
    let s = caps.structure(0)?;
    let (w, h) = (
        s.get::<i32>("width").ok()? as usize,
        s.get::<i32>("height").ok()? as usize,
    );
    let row = w * 3;
    let stride = row.div_ceil(4) * 4;
    let map = buffer.map_readable().ok()?;
    if map.len() < stride * (h - 1) + row {
        return None;
    }
    let mut data = Vec::with_capacity(row * h);
    for y in 0..h {
        data.extend_from_slice(&map[y * stride..y * stride + row]);
    }
    RgbImage::from_raw(w as u32, h as u32, data)
}

/// queue ! audioconvert ! audioresample ! 16 kHz mono f32 appsink, collected in `out`.
fn audio_branch(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    out: Arc<Mutex<Vec<f32>>>,
) -> Result<(), String> {
    let caps = gst::Caps::builder("audio/x-raw")
        .field("format", "F32LE")
        .field("rate", super::speech::SAMPLE_RATE as i32)
        .field("channels", 1)
        .field("layout", "interleaved")
        .build();
    let sink = gst_app::AppSink::builder().caps(&caps).sync(false).build();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok()) {
                    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                    out.extend(
                        map.chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    );
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    link_branch(
        pipeline,
        pad,
        &[
            make("queue")?,
            make("audioconvert")?,
            make("audioresample")?,
            sink.upcast(),
        ],
    )
}
