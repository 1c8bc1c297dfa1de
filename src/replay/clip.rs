//! A recorded file demuxed once into memory: its tracks (compressed access units with caps,
//! timestamps and key-frame flags) merged into one decode-order schedule that the feeders
//! loop. Nothing is decoded or encoded.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result, anyhow, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use tracing::warn;

/// How long demuxing one file may take before we give up (a broken file must not hang startup).
const DEMUX_TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(120);

/// A codec the replay server can payload without transcoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Codec {
    H264,
    H265,
    Aac,
    Opus,
}

impl Codec {
    /// Maps demuxed caps to a codec; `Ok(None)` for streams that are neither audio nor video
    /// (subtitles, timecode, metadata), which are skipped.
    pub(super) fn from_caps(caps: &gst::CapsRef) -> Result<Option<Self>, String> {
        let s = caps.structure(0).ok_or("empty caps")?;
        let name = s.name().as_str();
        let codec = match name {
            "video/x-h264" => Codec::H264,
            "video/x-h265" => Codec::H265,
            // rtpmp4gpay needs raw access units; MP4 and Matroska always carry them so.
            "audio/mpeg"
                if s.get::<i32>("mpegversion").is_ok_and(|v| v == 2 || v == 4)
                    && s.get::<&str>("stream-format").is_ok_and(|f| f == "raw") =>
            {
                Codec::Aac
            }
            "audio/x-opus" => Codec::Opus,
            n if n.starts_with("video/") || n.starts_with("audio/") || n.starts_with("image/") => {
                return Err(format!("unsupported codec {caps}"));
            }
            _ => return Ok(None),
        };
        Ok(Some(codec))
    }

    pub(super) fn payloader(self) -> &'static str {
        match self {
            Codec::H264 => "rtph264pay",
            Codec::H265 => "rtph265pay",
            Codec::Aac => "rtpmp4gpay",
            Codec::Opus => "rtpopuspay",
        }
    }

    pub(super) fn is_video(self) -> bool {
        matches!(self, Codec::H264 | Codec::H265)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::Aac => "aac",
            Codec::Opus => "opus",
        })
    }
}

/// One elementary stream of a file, held in memory.
pub(super) struct Track {
    pub(super) codec: Codec,
    pub(super) caps: gst::Caps,
    /// Buffers as demuxed (payload, flags, duration); their timestamps are ignored in favour
    /// of `times`, which are relative to the start of the file.
    pub(super) buffers: Vec<gst::Buffer>,
    /// (pts, dts) of each buffer in nanoseconds from the file's first decode timestamp.
    pub(super) times: Vec<(u64, u64)>,
}

/// One step of the merged schedule: push `track`'s buffer `index` at decode time `dts`.
#[derive(Clone, Copy)]
pub(super) struct Step {
    pub(super) dts: u64,
    pub(super) track: usize,
    pub(super) index: usize,
}

/// A file demuxed into memory, ready to be looped.
pub(super) struct Clip {
    /// Mount name derived from the file stem.
    pub(super) name: String,
    pub(super) path: PathBuf,
    /// Video tracks first, so `pay0` is the picture.
    pub(super) tracks: Vec<Track>,
    /// Every buffer of every track in decode order.
    pub(super) timeline: Vec<Step>,
    /// Length of one loop in nanoseconds: the end of the longest track, so tracks stay in sync.
    pub(super) period: u64,
}

impl Clip {
    pub(super) fn load(path: &Path) -> Result<Self> {
        let name = mount_name(path)?;
        let demuxed = demux(path).with_context(|| format!("reading {}", path.display()))?;

        let mut tracks = Vec::new();
        for (caps, buffers) in demuxed {
            let codec = match Codec::from_caps(&caps) {
                Ok(Some(codec)) => codec,
                Ok(None) => {
                    warn!(file = %path.display(), %caps, "skipping stream that is neither audio nor video");
                    continue;
                }
                Err(e) => bail!(
                    "{}: {e}; panoptes replay serves H.264/H.265 video and AAC/Opus audio without transcoding",
                    path.display()
                ),
            };
            if buffers.is_empty() {
                warn!(file = %path.display(), %caps, "skipping empty stream");
                continue;
            }
            tracks.push((codec, caps, buffers));
        }
        if tracks.is_empty() {
            bail!("{}: no audio or video stream found", path.display());
        }
        // Stable sort: keeps the file's order within video and within audio.
        tracks.sort_by_key(|(codec, _, _)| !codec.is_video());

        let start = tracks
            .iter()
            .flat_map(|(_, _, b)| b.iter())
            .filter_map(|b| b.dts_or_pts())
            .map(gst::ClockTime::nseconds)
            .min()
            .ok_or_else(|| anyhow!("{}: no timestamps in any stream", path.display()))?;

        let mut period = 0u64;
        let mut out = Vec::with_capacity(tracks.len());
        for (codec, caps, buffers) in tracks {
            let mut kept = Vec::with_capacity(buffers.len());
            let mut times = Vec::with_capacity(buffers.len());
            for buffer in buffers {
                let (Some(dts), Some(pts)) = (buffer.dts_or_pts(), buffer.pts().or(buffer.dts()))
                else {
                    continue;
                };
                times.push((
                    pts.nseconds().saturating_sub(start),
                    dts.nseconds().saturating_sub(start),
                ));
                kept.push(buffer);
            }
            let fallback = typical_step(&times);
            for (buffer, (pts, dts)) in kept.iter().zip(&times) {
                let duration = buffer.duration().map_or(fallback, |d| d.nseconds());
                period = period.max(pts + duration).max(dts + duration);
            }
            out.push(Track {
                codec,
                caps,
                buffers: kept,
                times,
            });
        }

        let mut timeline: Vec<Step> = out
            .iter()
            .enumerate()
            .flat_map(|(track, t)| {
                t.times
                    .iter()
                    .enumerate()
                    .map(move |(index, &(_, dts))| Step { dts, track, index })
            })
            .collect();
        timeline.sort_by_key(|s| (s.dts, s.track));

        Ok(Clip {
            name,
            path: path.to_owned(),
            tracks: out,
            timeline,
            period: period.max(1),
        })
    }

    pub(super) fn mount_paths(&self, copies: u32) -> Vec<String> {
        if copies == 1 {
            vec![format!("/{}", self.name)]
        } else {
            (0..copies).map(|i| format!("/{}-{i}", self.name)).collect()
        }
    }

    /// A short human description, e.g. `h264 640x360, aac`.
    pub(super) fn describe(&self) -> String {
        self.tracks
            .iter()
            .map(|t| {
                let s = t.caps.structure(0);
                let size = s.and_then(|s| {
                    Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?))
                });
                match size {
                    Some((w, h)) if t.codec.is_video() => format!("{} {w}x{h}", t.codec),
                    _ => t.codec.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The usual spacing of a track's timestamps, for buffers that carry no duration.
pub(super) fn typical_step(times: &[(u64, u64)]) -> u64 {
    let mut steps: Vec<u64> = times
        .windows(2)
        .map(|w| w[1].1.saturating_sub(w[0].1))
        .filter(|&d| d > 0)
        .collect();
    if steps.is_empty() {
        return 40_000_000;
    }
    let mid = steps.len() / 2;
    *steps.select_nth_unstable(mid).1
}

/// The mount name for a file: its stem, with characters that would need escaping in a URL
/// replaced by `_` (the printed URL is then the one to use).
pub(super) fn mount_name(path: &Path) -> Result<String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "{}: cannot derive a mount name from this file name",
                path.display()
            )
        })?;
    Ok(stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~') {
                c
            } else {
                '_'
            }
        })
        .collect())
}

/// Demuxes `path` with `filesrc ! parsebin` into memory: for each elementary stream, its caps
/// and every buffer. parsebin (rather than a fixed demuxer) accepts whatever container GStreamer
/// can parse, and its parsers fill in codec_data so payloaders can put parameter sets in the SDP.
pub(super) fn demux(path: &Path) -> Result<Vec<(gst::Caps, Vec<gst::Buffer>)>> {
    if !path.is_file() {
        bail!("no such file");
    }
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc")
        .property("location", path)
        .build()
        .context("creating filesrc")?;
    let parse = gst::ElementFactory::make("parsebin")
        .build()
        .context("creating parsebin (gstreamer1.0-plugins-base missing?)")?;
    pipeline.add_many([&src, &parse])?;
    src.link(&parse)?;

    type Stream = Arc<Mutex<(Option<gst::Caps>, Vec<gst::Buffer>)>>;
    let streams: Arc<Mutex<Vec<Stream>>> = Arc::default();
    let link_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    parse.connect_pad_added({
        let streams = streams.clone();
        let link_errors = link_errors.clone();
        move |parse, pad| {
            let stream: Stream = Arc::default();
            streams.lock().unwrap().push(stream.clone());
            // sync=false and no queue limit: we want the whole file as fast as it can be read.
            let sink = gst_app::AppSink::builder()
                .sync(false)
                .callbacks(
                    gst_app::AppSinkCallbacks::builder()
                        .new_sample(move |sink| {
                            let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                            let mut s = stream.lock().unwrap();
                            if s.0.is_none() {
                                s.0 = sample.caps_owned();
                            }
                            if let Some(buffer) = sample.buffer_owned() {
                                s.1.push(buffer);
                            }
                            Ok(gst::FlowSuccess::Ok)
                        })
                        .build(),
                )
                .build();
            let result = (|| -> Result<(), String> {
                let bin = parse
                    .parent()
                    .and_downcast::<gst::Bin>()
                    .ok_or("parsebin has no parent")?;
                bin.add(&sink).map_err(|e| e.to_string())?;
                sink.sync_state_with_parent().map_err(|e| e.to_string())?;
                let sinkpad = sink.static_pad("sink").ok_or("appsink has no sink pad")?;
                pad.link(&sinkpad).map_err(|e| e.to_string())?;
                Ok(())
            })();
            if let Err(e) = result {
                link_errors.lock().unwrap().push(e);
            }
        }
    });

    pipeline
        .set_state(gst::State::Playing)
        .context("starting the demux pipeline")?;
    let bus = pipeline.bus().context("pipeline without a bus")?;
    let outcome = match bus.timed_pop_filtered(
        DEMUX_TIMEOUT,
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        None => Err(anyhow!("demuxing took longer than {DEMUX_TIMEOUT}")),
        Some(msg) => match msg.view() {
            gst::MessageView::Error(e) => Err(anyhow!(
                "{} ({})",
                e.error(),
                e.debug().map(|d| d.to_string()).unwrap_or_default()
            )),
            _ => Ok(()),
        },
    };
    let _ = pipeline.set_state(gst::State::Null);
    outcome?;
    if let Some(e) = link_errors.lock().unwrap().first() {
        bail!("linking a demuxed stream: {e}");
    }

    let streams = std::mem::take(&mut *streams.lock().unwrap());
    Ok(streams
        .into_iter()
        .filter_map(|s| {
            let (caps, buffers) = std::mem::take(&mut *s.lock().unwrap());
            Some((caps?, buffers))
        })
        .collect())
}
