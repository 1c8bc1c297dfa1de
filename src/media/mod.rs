//! Media: turning compressed camera streams into what inference consumes.
//!
//! - [`sampler`]: per-camera policy deciding which access units to decode (keyframes only
//!   when the interval is at least a GOP, otherwise a GOP prefix whose last picture is kept).
//! - [`DecoderPool`]: a bounded pool of GStreamer pipelines built from the `pipelines/`
//!   templates of the configured hardware profile; it turns jobs into JPEGs. Jobs wait in one
//!   bounded queue; when it is full the oldest job is dropped and counted, so camera tasks
//!   never block.
//! - [`audio`]: AAC to 16 kHz mono PCM chunks, per camera, without a thread.
//! - [`gate`]: whether a sampled picture changed against the camera's last analysed one.
//! - [`mp4`]: the clip writer the recorder uses.

pub mod audio;
pub mod gate;
pub mod mp4;
pub mod sampler;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;

use crate::config::{MediaConfig, MediaProfile, SamplingConfig};

/// Video codecs Panoptes ingests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    /// H.264 / AVC.
    H264,
    /// H.265 / HEVC.
    H265,
}

impl VideoCodec {
    /// `h264` or `h265`.
    pub fn as_str(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::H265 => "h265",
        }
    }
}

/// Media failures.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// GStreamer could not be initialised.
    #[error("GStreamer failed to initialise: {0}")]
    Init(String),
    /// A pipeline template is missing or does not parse.
    #[error("pipeline template {profile}/{codec}: {message}")]
    Template {
        /// Hardware profile.
        profile: &'static str,
        /// Codec key in the template file.
        codec: &'static str,
        /// What went wrong (a missing element is named here).
        message: String,
    },
    /// Decoding a job failed.
    #[error("camera {camera}: decoding failed: {message}")]
    Decode {
        /// Camera id.
        camera: String,
        /// Cause.
        message: String,
    },
}

/// Pipeline descriptions of one hardware profile.
#[derive(Debug, Clone)]
pub struct Templates {
    profile: MediaProfile,
    h264: String,
    h265: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    h264: String,
    h265: String,
}

const BUILTIN: [(MediaProfile, &str); 3] = [
    (MediaProfile::Cpu, include_str!("../../pipelines/cpu.toml")),
    (
        MediaProfile::Nvidia,
        include_str!("../../pipelines/nvidia.toml"),
    ),
    (
        MediaProfile::Vaapi,
        include_str!("../../pipelines/vaapi.toml"),
    ),
];

impl Templates {
    /// The templates of `profile`, from `dir` or else the copies built into the binary.
    pub fn load(profile: MediaProfile, dir: Option<&Path>) -> Result<Templates, MediaError> {
        let err = |message: String| MediaError::Template {
            profile: profile.name(),
            codec: "*",
            message,
        };
        let text = match dir {
            Some(d) => {
                let path = d.join(format!("{}.toml", profile.name()));
                std::fs::read_to_string(&path)
                    .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?
            }
            None => BUILTIN
                .iter()
                .find(|(p, _)| *p == profile)
                .map(|(_, t)| t.to_string())
                .unwrap_or_default(),
        };
        let file: TemplateFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        Ok(Templates {
            profile,
            h264: file.h264,
            h265: file.h265,
        })
    }

    fn description(&self, codec: VideoCodec, quality: u32) -> String {
        let t = match codec {
            VideoCodec::H264 => &self.h264,
            VideoCodec::H265 => &self.h265,
        };
        t.replace("{quality}", &quality.to_string())
    }

    /// Builds every pipeline once so a missing element (a GPU plugin on a machine without
    /// it) is a clear startup error rather than a silent lack of frames.
    pub fn check(&self, quality: u32) -> Result<(), MediaError> {
        init_gstreamer()?;
        for codec in [VideoCodec::H264, VideoCodec::H265] {
            let p = Decoder::build(&self.description(codec, quality)).map_err(|message| {
                MediaError::Template {
                    profile: self.profile.name(),
                    codec: codec.as_str(),
                    message,
                }
            })?;
            let _ = p.pipeline.set_state(gst::State::Null);
        }
        Ok(())
    }
}

/// Initialises GStreamer once.
pub fn init_gstreamer() -> Result<(), MediaError> {
    gst::init().map_err(|e| MediaError::Init(e.to_string()))
}

/// Work for the decoder pool: decode `frames` (a keyframe first) and keep the last picture.
pub struct DecodeJob {
    /// Camera id.
    pub camera: Arc<str>,
    /// Codec of the frames.
    pub codec: VideoCodec,
    /// `avcC` / `hvcC` record describing the stream.
    pub codec_data: Bytes,
    /// Coded picture size, for the output size.
    pub width: u32,
    /// Coded picture size, for the output size.
    pub height: u32,
    /// Access units, 4-byte length-prefixed, starting with a keyframe.
    pub frames: Vec<Bytes>,
    /// Wall-clock capture time of the last frame, unix nanoseconds.
    pub capture_ns: i64,
}

/// A sampled frame, encoded as JPEG.
#[derive(Clone)]
pub struct DecodedFrame {
    /// Camera id.
    pub camera: Arc<str>,
    /// JPEG bytes.
    pub jpeg: Bytes,
    /// JPEG size.
    pub width: u32,
    /// JPEG size.
    pub height: u32,
    /// Wall-clock capture time, unix nanoseconds.
    pub capture_ns: i64,
}

/// The outcome of a job, sent to the pool's output channel.
pub type DecodeResult = Result<DecodedFrame, MediaError>;

struct Queue {
    jobs: Mutex<(VecDeque<DecodeJob>, bool)>,
    ready: Condvar,
    capacity: usize,
    /// Jobs waiting (`panoptes_media_decode_queue`).
    depth: metrics::Gauge,
}

/// A bounded pool of decoder pipelines on their own threads (GStreamer calls block).
pub struct DecoderPool {
    queue: Arc<Queue>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    submitted: metrics::Counter,
}

impl DecoderPool {
    /// Starts `config.decoders` workers; results go to the returned receiver (bounded: a
    /// result that finds it full is dropped and counted).
    pub fn start(
        config: &MediaConfig,
        sampling: &SamplingConfig,
        templates: Templates,
    ) -> Result<(Arc<DecoderPool>, mpsc::Receiver<DecodeResult>), MediaError> {
        init_gstreamer()?;
        templates.check(sampling.jpeg_quality)?;
        let queue = Arc::new(Queue {
            jobs: Mutex::new((VecDeque::with_capacity(config.queue), false)),
            ready: Condvar::new(),
            capacity: config.queue,
            depth: metrics::gauge!("panoptes_media_decode_queue"),
        });
        let (tx, rx) = mpsc::channel(config.queue.max(16));
        let mut workers = Vec::new();
        for i in 0..config.decoders {
            let worker = Worker {
                queue: queue.clone(),
                templates: templates.clone(),
                quality: sampling.jpeg_quality,
                max: (sampling.max_width, sampling.max_height),
                decoders: HashMap::new(),
                out: tx.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("decoder-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| MediaError::Init(format!("cannot start decoder thread: {e}")))?;
            workers.push(handle);
        }
        Ok((
            Arc::new(DecoderPool {
                queue,
                workers: Mutex::new(workers),
                submitted: metrics::counter!("panoptes_media_decode_jobs_total"),
            }),
            rx,
        ))
    }

    /// Queues a job. When the queue is full the oldest job is dropped and returned, so the
    /// caller can count it against its camera.
    pub fn submit(&self, job: DecodeJob) -> Option<Arc<str>> {
        let mut q = self.queue.jobs.lock().expect("decoder queue poisoned");
        if q.1 {
            return Some(job.camera);
        }
        let dropped = if q.0.len() >= self.queue.capacity {
            q.0.pop_front().map(|j| j.camera)
        } else {
            None
        };
        q.0.push_back(job);
        self.queue.depth.set(q.0.len() as f64);
        drop(q);
        self.submitted.increment(1);
        self.queue.ready.notify_one();
        dropped
    }

    /// Jobs waiting.
    pub fn queued(&self) -> usize {
        self.queue
            .jobs
            .lock()
            .expect("decoder queue poisoned")
            .0
            .len()
    }

    /// Finishes the queued jobs, then stops the workers.
    pub fn shutdown(&self) {
        self.queue.jobs.lock().expect("decoder queue poisoned").1 = true;
        self.queue.ready.notify_all();
        let workers = std::mem::take(&mut *self.workers.lock().expect("workers poisoned"));
        for w in workers {
            let _ = w.join();
        }
    }
}

struct Worker {
    queue: Arc<Queue>,
    templates: Templates,
    quality: u32,
    max: (u32, u32),
    decoders: HashMap<VideoCodec, Decoder>,
    out: mpsc::Sender<DecodeResult>,
}

impl Worker {
    fn run(mut self) {
        let errors = metrics::counter!("panoptes_media_decode_errors_total");
        let latency = metrics::histogram!("panoptes_media_decode_seconds");
        let result_dropped =
            metrics::counter!("panoptes_media_dropped_total", "reason" => "results_full");
        loop {
            let job = {
                let mut q = self.queue.jobs.lock().expect("decoder queue poisoned");
                loop {
                    if let Some(j) = q.0.pop_front() {
                        self.queue.depth.set(q.0.len() as f64);
                        break j;
                    }
                    if q.1 {
                        return;
                    }
                    q = self.queue.ready.wait(q).expect("decoder queue poisoned");
                }
            };
            let started = std::time::Instant::now();
            let result = self.decode(&job);
            latency.record(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                errors.increment(1);
                tracing::warn!(camera = %job.camera, error = %e, "decode failed");
            }
            if self.out.try_send(result).is_err() {
                result_dropped.increment(1);
            }
        }
    }

    fn decode(&mut self, job: &DecodeJob) -> DecodeResult {
        let fail = |message: String| MediaError::Decode {
            camera: job.camera.to_string(),
            message,
        };
        if !self.decoders.contains_key(&job.codec) {
            let d = Decoder::build(&self.templates.description(job.codec, self.quality))
                .map_err(&fail)?;
            self.decoders.insert(job.codec, d);
        }
        let decoder = self.decoders.get_mut(&job.codec).expect("inserted above");
        let out = output_size(job.width, job.height, self.max);
        let result = decoder.run(job, out);
        if result.is_err() {
            // A pipeline that failed may be wedged; the next job gets a fresh one.
            if let Some(d) = self.decoders.remove(&job.codec) {
                let _ = d.pipeline.set_state(gst::State::Null);
            }
        }
        let (jpeg, width, height) = result.map_err(fail)?;
        Ok(DecodedFrame {
            camera: job.camera.clone(),
            jpeg,
            width,
            height,
            capture_ns: job.capture_ns,
        })
    }
}

/// Whether an H.265 access unit (4-byte length-prefixed NAL units) starts a random access
/// point: a BLA, IDR or CRA picture (NAL types 16-21). retina flags only IDR pictures, but
/// encoders with open GOPs (x265's default, many cameras) put CRA pictures at keyframes.
pub fn h265_is_irap(au: &[u8]) -> bool {
    let mut rest = au;
    while rest.len() > 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(nal) = rest.get(4..4 + len) else {
            return false;
        };
        if let Some(&h) = nal.first() {
            let kind = (h >> 1) & 0x3f;
            if kind < 32 {
                // The first picture NAL decides.
                return (16..=21).contains(&kind);
            }
        }
        rest = &rest[4 + len..];
    }
    false
}

/// The largest size within `max` with the aspect ratio of `w`x`h`, never upscaled, even.
pub fn output_size(w: u32, h: u32, max: (u32, u32)) -> (u32, u32) {
    if w == 0 || h == 0 {
        return (max.0 & !1, max.1 & !1);
    }
    let scale = (f64::from(max.0) / f64::from(w))
        .min(f64::from(max.1) / f64::from(h))
        .min(1.0);
    let even = |v: f64| ((v / 2.0).round() as u32 * 2).max(2);
    (even(f64::from(w) * scale), even(f64::from(h) * scale))
}

/// One decoder pipeline, reused across jobs and cameras.
struct Decoder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    size: gst::Element,
    sink: gst_app::AppSink,
    caps_key: Option<(Bytes, (u32, u32))>,
    generation: u32,
    playing: bool,
    next_pts: u64,
    /// Streams (by codec data) whose decoder holds pictures back until drained.
    needs_drain: std::collections::HashSet<Bytes>,
}

const PULL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a picture may take before the decoder is assumed to hold it back.
const FAST_TIMEOUT: Duration = Duration::from_millis(300);
/// Nominal spacing of the timestamps given to the decoder.
const FRAME_NS: u64 = 1_000_000_000 / 15;

impl Decoder {
    fn build(description: &str) -> Result<Decoder, String> {
        let element = gst::parse::launch(description).map_err(|e| e.to_string())?;
        let pipeline = element
            .downcast::<gst::Pipeline>()
            .map_err(|_| "the template is not a pipeline".to_string())?;
        let by_name = |name: &str| {
            pipeline
                .by_name(name)
                .ok_or_else(|| format!("the template has no element named \"{name}\""))
        };
        let src = by_name("src")?
            .downcast::<gst_app::AppSrc>()
            .map_err(|_| "\"src\" must be an appsrc".to_string())?;
        let sink = by_name("sink")?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| "\"sink\" must be an appsink".to_string())?;
        let size = by_name("size")?;
        sink.set_max_buffers(4);
        sink.set_drop(false);
        Ok(Decoder {
            pipeline,
            src,
            size,
            sink,
            caps_key: None,
            generation: 0,
            playing: false,
            next_pts: 0,
            needs_drain: Default::default(),
        })
    }

    fn run(&mut self, job: &DecodeJob, out: (u32, u32)) -> Result<(Bytes, u32, u32), String> {
        let key = (job.codec_data.clone(), out);
        if self.caps_key.as_ref() != Some(&key) {
            let caps = match job.codec {
                VideoCodec::H264 => {
                    gst::Caps::builder("video/x-h264").field("stream-format", "avc")
                }
                VideoCodec::H265 => {
                    gst::Caps::builder("video/x-h265").field("stream-format", "hvc1")
                }
            }
            .field("alignment", "au")
            .field(
                "codec_data",
                gst::Buffer::from_slice(job.codec_data.clone()),
            )
            .field("panoptes-generation", self.generation)
            .build();
            self.src.set_caps(Some(&caps));
            self.size.set_property("caps", sized_caps(&self.size, out));
            self.caps_key = Some(key);
        }
        if !self.playing {
            self.pipeline
                .set_state(gst::State::Playing)
                .map_err(|e| format!("cannot start the pipeline: {e}"))?;
            self.playing = true;
        }
        let n = job.frames.len();
        for (i, data) in job.frames.iter().enumerate() {
            let mut buf = gst::Buffer::from_slice(data.clone());
            {
                let b = buf.get_mut().expect("new buffer is writable");
                // Timestamps keep rising across jobs: the pipeline stays in PLAYING.
                self.next_pts += FRAME_NS;
                b.set_pts(gst::ClockTime::from_nseconds(self.next_pts));
                let mut flags = gst::BufferFlags::empty();
                if i > 0 {
                    flags |= gst::BufferFlags::DELTA_UNIT;
                }
                // Only the last picture is wanted: the decoder skips output for the rest.
                if i + 1 < n {
                    flags |= gst::BufferFlags::DECODE_ONLY;
                }
                b.set_flags(flags);
            }
            self.src
                .push_buffer(buf)
                .map_err(|e| format!("the decoder refused a frame: {e:?}"))?;
        }
        // Streams without picture reordering (nearly every camera) give the picture at
        // once and the pipeline stays up for the next job. A decoder that holds pictures
        // back (B-frames) is drained with EOS and the pipeline restarted, which costs
        // tens of milliseconds; streams found to need it skip straight to the drain.
        let drains = self.needs_drain.contains(&job.codec_data);
        if !drains
            && let Some(sample) = self.sink.try_pull_sample(gst::ClockTime::from_mseconds(
                FAST_TIMEOUT.as_millis() as u64,
            ))
        {
            return picture(&sample, out);
        }
        self.src
            .end_of_stream()
            .map_err(|e| format!("cannot end the stream: {e:?}"))?;
        let mut last = None;
        loop {
            match self.sink.try_pull_sample(gst::ClockTime::from_mseconds(
                PULL_TIMEOUT.as_millis() as u64
            )) {
                Some(s) => last = Some(s),
                None => {
                    if self.sink.is_eos() {
                        break;
                    }
                    return Err(self.bus_error().unwrap_or_else(|| {
                        format!("no picture within {}s", PULL_TIMEOUT.as_secs())
                    }));
                }
            }
        }
        self.reset()?;
        let sample = last.ok_or_else(|| {
            self.bus_error()
                .unwrap_or_else(|| "the decoder produced no picture".to_string())
        })?;
        if !drains {
            tracing::info!(
                camera = %job.camera,
                codec = job.codec.as_str(),
                "the decoder holds pictures back for this stream; decoding it with a drain per sample"
            );
            if self.needs_drain.len() >= 1024 {
                self.needs_drain.clear();
            }
            self.needs_drain.insert(job.codec_data.clone());
        }
        picture(&sample, out)
    }
    /// Back to NULL: clears EOS and decoder state for the next job (READY leaves appsink
    /// reporting EOS). The pads lose their caps, and appsrc sends caps again only when they
    /// differ from the last ones, so the next job's caps carry a new generation number.
    fn reset(&mut self) -> Result<(), String> {
        self.pipeline
            .set_state(gst::State::Null)
            .map_err(|e| format!("cannot reset the pipeline: {e}"))?;
        self.playing = false;
        self.next_pts = 0;
        self.caps_key = None;
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    fn bus_error(&self) -> Option<String> {
        let bus = self.pipeline.bus()?;
        while let Some(msg) = bus.pop() {
            if let gst::MessageView::Error(e) = msg.view() {
                return Some(format!(
                    "{} ({})",
                    e.error(),
                    e.src().map(|s| s.name().to_string()).unwrap_or_default()
                ));
            }
        }
        None
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// The JPEG of a sample with its size.
fn picture(sample: &gst::Sample, out: (u32, u32)) -> Result<(Bytes, u32, u32), String> {
    let (w, h) = sample
        .caps()
        .and_then(|c| c.structure(0))
        .and_then(|s| Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?)))
        .map(|(w, h)| (w as u32, h as u32))
        .unwrap_or(out);
    let buffer = sample.buffer().ok_or("the picture has no data")?;
    let map = buffer.map_readable().map_err(|e| e.to_string())?;
    Ok((Bytes::copy_from_slice(map.as_slice()), w, h))
}

/// The capsfilter's caps (keeping a memory feature such as CUDAMemory from the template)
/// with the output size set.
fn sized_caps(filter: &gst::Element, (w, h): (u32, u32)) -> gst::Caps {
    let base: gst::Caps = filter.property("caps");
    let mut caps = match base.structure(0) {
        Some(_) if !base.is_any() => {
            let mut c = gst::Caps::new_empty();
            let s = base.structure(0).expect("checked").to_owned();
            let f = base.features(0).map(|f| f.to_owned());
            c.get_mut().expect("new caps").append_structure_full(s, f);
            c
        }
        _ => gst::Caps::builder("video/x-raw").build(),
    };
    {
        let c = caps.get_mut().expect("caps built here");
        c.set("width", w as i32);
        c.set("height", h as i32);
        c.set("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h265_random_access_points() {
        let au = |types: &[u8]| -> Vec<u8> {
            types
                .iter()
                .flat_map(|t| [0, 0, 0, 3, t << 1, 1, 0xaa])
                .collect()
        };
        assert!(h265_is_irap(&au(&[35, 21]))); // AUD, CRA
        assert!(h265_is_irap(&au(&[19]))); // IDR_W_RADL
        assert!(!h265_is_irap(&au(&[35, 1]))); // AUD, TRAIL_R
        assert!(!h265_is_irap(&[0, 0, 0, 9, 1])); // truncated
    }

    #[test]
    fn output_size_keeps_aspect_and_never_upscales() {
        assert_eq!(output_size(1920, 1080, (640, 640)), (640, 360));
        assert_eq!(output_size(640, 360, (1280, 720)), (640, 360));
        assert_eq!(output_size(1080, 1920, (640, 640)), (360, 640));
        assert_eq!(output_size(641, 361, (320, 320)), (320, 180));
    }

    #[test]
    fn builtin_templates_parse() {
        for profile in [MediaProfile::Cpu, MediaProfile::Nvidia, MediaProfile::Vaapi] {
            let t = Templates::load(profile, None).unwrap();
            assert!(t.description(VideoCodec::H264, 80).contains("quality=80"));
            assert!(
                t.description(VideoCodec::H265, 80)
                    .contains("appsink name=sink")
            );
        }
    }
}
