//! The decoder pool on real access units: keyframes and GOP prefixes of the fixtures,
//! demuxed with GStreamer, decode to JPEGs of the configured size, job after job.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use panoptes::config::{MediaConfig, MediaProfile, SamplingConfig};
use panoptes::media::{DecodeJob, DecoderPool, Templates, VideoCodec};

/// (codec_data, [(is_key, access unit)]) of the video track of a file.
fn demux(path: &std::path::Path) -> (Bytes, Vec<(bool, Bytes)>) {
    gst::init().unwrap();
    let demux = if path.extension().unwrap() == "mkv" {
        "matroskademux"
    } else {
        "qtdemux"
    };
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! {demux} ! video/x-h264;video/x-h265 ! appsink name=sink sync=false",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut codec_data = Bytes::new();
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        if codec_data.is_empty() {
            let s = sample.caps().unwrap().structure(0).unwrap().to_owned();
            let b: gst::Buffer = s.get("codec_data").unwrap();
            codec_data = Bytes::copy_from_slice(&b.map_readable().unwrap());
        }
        let buf = sample.buffer().unwrap();
        let key = !buf.flags().contains(gst::BufferFlags::DELTA_UNIT);
        frames.push((key, Bytes::copy_from_slice(&buf.map_readable().unwrap())));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    (codec_data, frames)
}

fn run_jobs(file: &str, codec: VideoCodec, prefix_len: usize) {
    let (codec_data, frames) = demux(&common::fixtures().join(file));
    let keys: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.0)
        .map(|(i, _)| i)
        .collect();
    assert!(keys.len() >= 5, "{file}: only {} keyframes", keys.len());
    let media = MediaConfig {
        decoders: 1,
        ..MediaConfig::default()
    };
    let sampling = SamplingConfig {
        max_width: 320,
        max_height: 320,
        ..SamplingConfig::default()
    };
    let templates = Templates::load(MediaProfile::Cpu, None).unwrap();
    let (pool, mut results) = DecoderPool::start(&media, &sampling, templates).unwrap();
    let camera: Arc<str> = Arc::from("cam");
    let jobs = 6;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for (n, &k) in keys.iter().take(jobs).enumerate() {
        let job_frames: Vec<Bytes> = frames[k..(k + prefix_len).min(frames.len())]
            .iter()
            .map(|f| f.1.clone())
            .collect();
        assert!(
            pool.submit(DecodeJob {
                camera: camera.clone(),
                codec,
                codec_data: codec_data.clone(),
                width: 640,
                height: 360,
                frames: job_frames,
                capture_ns: n as i64,
            })
            .is_none()
        );
        let r = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), results.recv()).await })
            .expect("a result within 10 s")
            .expect("pool running");
        let frame = r.unwrap_or_else(|e| panic!("{file} job {n}: {e}"));
        assert_eq!((frame.width, frame.height), (320, 180));
        assert_eq!(common::jpeg_size(&frame.jpeg), Some((320, 180)));
        assert_eq!(frame.capture_ns, n as i64);
    }
    pool.shutdown();
}

#[test]
fn h264_keyframes_decode_job_after_job() {
    run_jobs("lobby.mp4", VideoCodec::H264, 1);
}

#[test]
fn h264_gop_prefixes_decode_to_their_last_picture() {
    run_jobs("lobby.mp4", VideoCodec::H264, 7);
}

#[test]
fn h265_keyframes_decode_job_after_job() {
    run_jobs("lobby-h265.mkv", VideoCodec::H265, 1);
}
