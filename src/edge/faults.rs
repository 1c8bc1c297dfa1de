//! What can go wrong in a camera's stream, and how a session survives it: why a session
//! ended ([`SessionError`]), which retina errors cost only one packet, RTP timestamp jumps
//! re-based so capture times stay continuous, and pictures told from another codec's data.

use std::time::{Duration, Instant};

use super::status::FaultKind;
use crate::media::VideoCodec;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The URL does not parse (validation normally catches this).
    #[error("invalid URL: {0}")]
    Url(String),
    /// DESCRIBE, SETUP or PLAY failed.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The camera answered DESCRIBE, but not with a description retina can use.
    #[error("the answer to DESCRIBE is not a usable SDP description: {0}")]
    BadSdp(String),
    /// DESCRIBE, SETUP and PLAY did not complete in time.
    #[error("no answer within {0:?} (connect timeout)")]
    ConnectTimeout(Duration),
    /// The server offers no H.264 or H.265 video.
    #[error("no H.264/H.265 video stream; the server offers: {0}")]
    NoVideo(String),
    /// No frame arrived after PLAY.
    #[error("no video frame within {0:?} of PLAY (first-frame timeout)")]
    FirstFrameTimeout(Duration),
    /// Frames stopped arriving.
    #[error("no video frame for {0:?}; the stream stalled")]
    Stalled(Duration),
    /// Packets kept arriving, but none made a usable frame.
    #[error("no usable video frame for {wait:?}: {rejected} packets rejected, the last: {last}")]
    Unusable {
        /// How long without a usable frame.
        wait: Duration,
        /// Packets rejected in that time.
        rejected: u64,
        /// The last rejection.
        last: String,
    },
    /// The data is not the codec the description announced.
    #[error(
        "the stream is no longer {announced}: {count} access units in a row without {announced} \
         picture data{looks}; reconnecting to read the camera's new description"
    )]
    CodecChanged {
        /// The codec of the description.
        announced: &'static str,
        /// Access units seen without a picture of that codec.
        count: u32,
        /// What the data looks like instead, when it is recognised.
        looks: String,
    },
    /// The RTSP connection failed mid-stream.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The server closed the stream.
    #[error("the server ended the stream")]
    Ended,
}

impl SessionError {
    /// How the API and the metrics count it.
    pub fn kind(&self) -> FaultKind {
        match self {
            SessionError::Url(_) => FaultKind::InvalidUrl,
            SessionError::Connect(_) => FaultKind::Connect,
            SessionError::BadSdp(_) => FaultKind::BadSdp,
            SessionError::ConnectTimeout(_) => FaultKind::ConnectTimeout,
            SessionError::NoVideo(_) => FaultKind::NoVideo,
            SessionError::FirstFrameTimeout(_) => FaultKind::FirstFrameTimeout,
            SessionError::Stalled(_) | SessionError::Unusable { .. } => FaultKind::Stalled,
            SessionError::CodecChanged { .. } => FaultKind::CodecChanged,
            SessionError::Stream(_) => FaultKind::Stream,
            SessionError::Ended => FaultKind::Ended,
        }
    }
}

/// Access units in a row without a picture of the announced codec before the session is
/// ended as a codec change (one such unit can be a stray SEI; a changed camera sends them all).
pub(super) const FOREIGN_LIMIT: u32 = 3;

/// A timestamp this far behind the previous frame's is a jump, not B-frame reordering.
const MAX_BACKWARD_SECS: f64 = 0.5;

/// A timestamp this much further ahead than the wall-clock time between two frames is a jump,
/// not a gap in the stream (a gap moves both clocks alike).
const MAX_AHEAD_SECS: f64 = 1.0;

/// Keeps a stream's timeline continuous across RTP timestamp jumps (a camera whose clock was
/// reset or set, a restarted encoder behind a proxy): the frame after a jump is placed one
/// frame after the one before it, and the offset is kept for the frames that follow.
#[derive(Debug, Default)]
pub(super) struct Rebase {
    offset: i64,
    last: Option<(i64, Instant)>,
}

impl Rebase {
    /// The re-based timestamp of a frame with stream timestamp `raw` arriving at `now`, and
    /// the jump in seconds when there was one. `step` is the usual frame duration in ticks.
    pub(super) fn apply(
        &mut self,
        raw: i64,
        rate: u32,
        now: Instant,
        step: Option<f64>,
    ) -> (i64, Option<f64>) {
        let mut ts = raw + self.offset;
        let mut jump = None;
        if let Some((prev, at)) = self.last {
            let rate = f64::from(rate);
            let ahead = (ts - prev) as f64 / rate;
            let wall = now.saturating_duration_since(at).as_secs_f64();
            if ahead < -MAX_BACKWARD_SECS || ahead > wall + MAX_AHEAD_SECS {
                let step = step.unwrap_or(wall * rate).round().max(1.0) as i64;
                self.offset += prev + step - ts;
                ts = prev + step;
                jump = Some(ahead);
            }
        }
        self.last = Some((ts, now));
        (ts, jump)
    }
}

/// Whether retina rejected only one packet (and its access unit) and the session can go on,
/// and how that is counted. retina's errors are opaque; the variant name that starts their
/// `Debug` form is the most stable thing to go by.
pub(super) fn recoverable(e: &retina::Error) -> Option<FaultKind> {
    let debug = format!("{e:?}");
    if debug.starts_with("PacketError") {
        return Some(FaultKind::BadRtpHeader);
    }
    if !debug.starts_with("RtpPacketError") {
        return None;
    }
    // A new SSRC or a sequence far off is not one bad packet: retina rejects every packet
    // after it on TCP, so only a new session helps.
    let first = summary(e);
    if first.starts_with("wrong ssrc") || first.starts_with("Out-of-order packet") {
        return None;
    }
    Some(FaultKind::BadPayload)
}

/// The first line of a retina error: the description, without the connection and packet
/// context lines that follow it (those go to the debug log).
pub(super) fn summary(e: &retina::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default().trim();
    let mut out: String = first.chars().take(300).collect();
    if out.len() < first.len() {
        out.push('…');
    }
    out
}

pub(super) fn codec_name(codec: VideoCodec) -> &'static str {
    match codec {
        VideoCodec::H264 => "H.264",
        VideoCodec::H265 => "H.265",
    }
}

/// Whether an access unit (4-byte length-prefixed NAL units) holds picture data of `codec`.
/// An H.265 stream read as H.264 yields units of "data partition" and SEI NAL types and no
/// slice; H.264 read as H.265 yields no valid two-byte header.
pub(super) fn has_picture(codec: VideoCodec, au: &[u8]) -> bool {
    let mut rest = au;
    let mut picture = false;
    while rest.len() > 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(nal) = rest.get(4..4 + len) else {
            return picture;
        };
        rest = &rest[4 + len..];
        match codec {
            // Non-IDR and IDR slices; data partitioning (2-4) is never used by cameras.
            VideoCodec::H264 => {
                if nal.first().is_some_and(|h| matches!(h & 0x1f, 1 | 5)) {
                    picture = true;
                }
            }
            VideoCodec::H265 => {
                let [h0, h1, ..] = nal else { return false };
                // forbidden_zero_bit 0, and a temporal id of at least 1 in every header.
                if h0 & 0x80 != 0 || h1 & 0x07 == 0 {
                    return false;
                }
                if (h0 >> 1) & 0x3f < 32 {
                    picture = true;
                }
            }
        }
    }
    picture
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    const RATE: u32 = 90_000;
    const STEP: i64 = 6_000; // 15 fps

    /// Feeds frames 1/15 s apart in wall time with the given stream timestamps.
    fn run(raw: &[i64]) -> (Vec<i64>, Vec<f64>) {
        let mut r = Rebase::default();
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut jumps = Vec::new();
        for (i, ts) in raw.iter().enumerate() {
            let now = t0 + Duration::from_millis(67 * i as u64);
            let (t, j) = r.apply(*ts, RATE, now, Some(STEP as f64));
            out.push(t);
            jumps.extend(j);
        }
        (out, jumps)
    }

    #[test]
    fn a_steady_stream_is_left_alone() {
        let raw: Vec<i64> = (0..30).map(|i| 1_000 + i * STEP).collect();
        let (out, jumps) = run(&raw);
        assert_eq!(out, raw);
        assert!(jumps.is_empty());
    }

    #[test]
    fn jumps_back_and_forward_are_rebased_to_one_frame() {
        let mut raw: Vec<i64> = (0..10).map(|i| i * STEP).collect();
        let back = raw[9] - 30 * 90_000;
        raw.extend((0..10).map(|i| back + i * STEP));
        let ahead = raw[19] + 3_600 * 90_000;
        raw.extend((0..10).map(|i| ahead + i * STEP));
        let (out, jumps) = run(&raw);
        assert_eq!(out, (0..30).map(|i| i * STEP).collect::<Vec<_>>());
        assert_eq!(jumps.len(), 2, "{jumps:?}");
        assert!((jumps[0] + 30.0).abs() < 0.1 && (jumps[1] - 3600.0).abs() < 0.1);
    }

    #[test]
    fn a_real_gap_or_a_late_burst_is_not_a_jump() {
        let mut r = Rebase::default();
        let t0 = Instant::now();
        r.apply(0, RATE, t0, None);
        // Five seconds without frames, and the stream clock moved five seconds too.
        let (t, j) = r.apply(5 * 90_000, RATE, t0 + Duration::from_secs(5), None);
        assert_eq!((t, j), (5 * 90_000, None));
        // Frames held up for three seconds, then delivered at once.
        let (t, j) = r.apply(5 * 90_000 + STEP, RATE, t0 + Duration::from_secs(8), None);
        assert_eq!((t, j), (5 * 90_000 + STEP, None));
        // Slight reordering is not a jump either.
        let (_, j) = r.apply(5 * 90_000, RATE, t0 + Duration::from_secs(8), None);
        assert_eq!(j, None);
    }

    fn au(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in nals {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n);
        }
        out
    }

    #[test]
    fn pictures_are_told_from_the_other_codec() {
        let h264_idr = au(&[&[0x06, 0x05, 0x01], &[0x65, 0x88, 0x84]]);
        let h264_p = au(&[&[0x41, 0x9a, 0x02]]);
        // VPS, SPS, PPS, IDR_W_RADL and TRAIL_R as an H.264 depacketizer passes them on.
        let h265_idr = au(&[
            &[0x40, 0x01, 0x0c],
            &[0x42, 0x01, 0x01],
            &[0x44, 0x01, 0xc1],
            &[0x26, 0x01, 0xaf],
        ]);
        let h265_p = au(&[&[0x02, 0x01, 0xd0]]);
        for a in [&h264_idr, &h264_p] {
            assert!(has_picture(VideoCodec::H264, a));
            assert!(!has_picture(VideoCodec::H265, a));
        }
        for a in [&h265_idr, &h265_p] {
            assert!(has_picture(VideoCodec::H265, a));
            assert!(!has_picture(VideoCodec::H264, a));
        }
        assert!(!has_picture(VideoCodec::H264, &[0, 0, 0, 9, 0x65]));
        assert!(!has_picture(VideoCodec::H264, &[]));
    }
}
