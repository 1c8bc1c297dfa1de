//! A test-only RTSP camera that misbehaves on purpose.
//!
//! It answers OPTIONS, DESCRIBE, SETUP, PLAY and TEARDOWN on 127.0.0.1 and streams H.264
//! (RFC 6184, single NAL unit and FU-A packets) or H.265 (RFC 7798) over TCP interleaved
//! (`$` framing) at 15 fps, from access units cut out of the fixtures. The mount path picks the
//! fault:
//!
//! | mount         | what the camera does                                                    |
//! |---------------|-------------------------------------------------------------------------|
//! | `/ok`         | nothing wrong (the control: the peer itself is a valid camera)          |
//! | `/corrupt`    | every 20th access unit has a NAL unit with its forbidden bit set and flipped bytes |
//! | `/truncated`  | every 20th access unit loses its RTP header (packet cut to 7 bytes), every other 20th has a fragment cut to one byte |
//! | `/h265switch` | announces H.264, sends H.265 after 3 s; once switched, announces and sends H.265 |
//! | `/resize`     | 640x360 for 3 s, then 320x180 (new SPS/PPS in-band)                     |
//! | `/tsjump`     | the RTP timestamp jumps 30 s back mid-GOP, 3 s later 10 min forward, and so on |
//! | `/silent`     | accepts the connection and never answers                                |
//! | `/garbage`    | answers DESCRIBE with 200 OK and a body that is not SDP                  |

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One coded picture: its NAL units, without start codes.
pub type AccessUnit = Vec<Vec<u8>>;

const FPS: u32 = 15;
const TICKS_PER_FRAME: u32 = 90_000 / FPS;
/// Largest RTP payload; bigger NAL units are fragmented.
const MTU: usize = 1_200;
/// When the switching modes switch: 3 s, a whole number of 1 s GOPs.
const SWITCH_AT: u64 = 45;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    H265,
}

/// The access units the camera sends, starting with a keyframe that carries its parameter sets.
pub struct Media {
    /// The lobby at 640x360, H.264.
    pub h264: Vec<AccessUnit>,
    /// The lobby at 320x180, H.264.
    pub h264_small: Vec<AccessUnit>,
    /// The lobby at 640x360, H.265.
    pub h265: Vec<AccessUnit>,
}

impl Media {
    /// Cuts the fixtures into access units with `gst-launch-1.0` (into `dir`).
    pub fn load(fixtures: &Path, dir: &Path) -> Media {
        let lobby = fixtures.join("lobby.mp4");
        let hevc = fixtures.join("lobby-h265.mkv");
        let h264_caps = "video/x-h264,stream-format=byte-stream,alignment=au";
        let h265_caps = "video/x-h265,stream-format=byte-stream,alignment=au";
        let h264 = annex_b(
            dir,
            "lobby.h264",
            &format!(
                "filesrc location={} ! qtdemux ! h264parse config-interval=-1 ! {h264_caps}",
                lobby.display()
            ),
        );
        let h264_small = annex_b(
            dir,
            "small.h264",
            &format!(
                "filesrc location={} ! qtdemux ! h264parse ! avdec_h264 max-threads=1 ! videoscale \
                 ! video/x-raw,width=320,height=180 ! videoconvert ! video/x-raw,format=I420 \
                 ! x264enc threads=1 key-int-max=15 bframes=0 bitrate=200 speed-preset=ultrafast \
                 ! h264parse config-interval=-1 ! {h264_caps}",
                lobby.display()
            ),
        );
        let h265 = annex_b(
            dir,
            "lobby.h265",
            &format!(
                "filesrc location={} ! matroskademux ! h265parse config-interval=-1 ! {h265_caps}",
                hevc.display()
            ),
        );
        let media = Media {
            h264: access_units(Codec::H264, &h264),
            h264_small: access_units(Codec::H264, &h264_small),
            h265: access_units(Codec::H265, &h265),
        };
        for (name, aus, codec) in [
            ("lobby.h264", &media.h264, Codec::H264),
            ("small.h264", &media.h264_small, Codec::H264),
            ("lobby.h265", &media.h265, Codec::H265),
        ] {
            assert!(aus.len() >= 60, "{name}: only {} access units", aus.len());
            assert!(
                is_key(codec, &aus[0]),
                "{name} does not start with a keyframe"
            );
        }
        media
    }
}

fn annex_b(dir: &Path, name: &str, pipeline: &str) -> Vec<u8> {
    let out = dir.join(name);
    let launch = format!("{pipeline} ! filesink location={}", out.display());
    let status = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(launch.split_whitespace())
        .status()
        .expect("run gst-launch-1.0");
    assert!(status.success(), "gst-launch-1.0 {launch} failed");
    std::fs::read(&out).unwrap()
}

/// NAL units of an Annex B byte stream.
fn nal_units(data: &[u8]) -> Vec<Vec<u8>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |n| n - 3);
        while end > s && data[end - 1] == 0 {
            end -= 1; // the leading zero of a 4-byte start code, or trailing zeros
        }
        if end > s {
            out.push(data[s..end].to_vec());
        }
    }
    out
}

fn nal_type(codec: Codec, nal: &[u8]) -> u8 {
    match codec {
        Codec::H264 => nal[0] & 0x1f,
        Codec::H265 => (nal[0] >> 1) & 0x3f,
    }
}

fn is_vcl(codec: Codec, nal: &[u8]) -> bool {
    match codec {
        Codec::H264 => matches!(nal_type(codec, nal), 1..=5),
        Codec::H265 => nal_type(codec, nal) < 32,
    }
}

/// Whether a slice is the first of its picture (first_mb_in_slice == 0,
/// first_slice_segment_in_pic_flag).
fn first_slice(codec: Codec, nal: &[u8]) -> bool {
    match codec {
        Codec::H264 => nal.get(1).is_some_and(|b| b & 0x80 != 0),
        Codec::H265 => nal.get(2).is_some_and(|b| b & 0x80 != 0),
    }
}

pub fn is_key(codec: Codec, au: &AccessUnit) -> bool {
    au.iter().any(|n| match codec {
        Codec::H264 => nal_type(codec, n) == 5,
        Codec::H265 => (16..=23).contains(&nal_type(codec, n)),
    })
}

/// Groups NAL units into access units: a picture's first slice, or a non-picture NAL unit
/// after a picture, starts the next one.
fn access_units(codec: Codec, data: &[u8]) -> Vec<AccessUnit> {
    let mut out = Vec::new();
    let mut cur: AccessUnit = Vec::new();
    let mut has_picture = false;
    for nal in nal_units(data) {
        let vcl = is_vcl(codec, &nal);
        if has_picture && (!vcl || first_slice(codec, &nal)) {
            out.push(std::mem::take(&mut cur));
            has_picture = false;
        }
        has_picture |= vcl;
        cur.push(nal);
    }
    if has_picture {
        out.push(cur);
    }
    // Start at the first keyframe.
    let first = out.iter().position(|a| is_key(codec, a)).unwrap_or(0);
    out.drain(..first);
    out
}

/// RTP payloads of one NAL unit.
fn packetize(codec: Codec, nal: &[u8]) -> Vec<Vec<u8>> {
    if nal.len() <= MTU {
        return vec![nal.to_vec()];
    }
    let (header, body): (Vec<u8>, &[u8]) = match codec {
        // FU indicator: F and NRI of the NAL unit, type 28; FU header: S, E, type.
        Codec::H264 => (vec![(nal[0] & 0xe0) | 28, nal[0] & 0x1f], &nal[1..]),
        // Payload header of type 49 with the layer and TID of the NAL unit; FU header.
        Codec::H265 => (
            vec![(nal[0] & 0x81) | (49 << 1), nal[1], (nal[0] >> 1) & 0x3f],
            &nal[2..],
        ),
    };
    let chunks: Vec<&[u8]> = body.chunks(MTU).collect();
    let fu = header.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut p = header.clone();
            if i == 0 {
                p[fu] |= 0x80;
            }
            if i == chunks.len() - 1 {
                p[fu] |= 0x40;
            }
            p.extend_from_slice(chunk);
            p
        })
        .collect()
}

fn rtp(seq: u16, ts: u32, mark: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push(if mark { 0x80 | 96 } else { 96 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x5eed_f00du32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Shared state of the camera.
struct Shared {
    media: Media,
    port: u16,
    stop: AtomicBool,
    /// Mounts whose camera switched codec: later sessions are told H.265.
    switched: Mutex<HashMap<String, bool>>,
    /// Open connections, shut down on drop.
    conns: Mutex<Vec<TcpStream>>,
}

/// The faulty camera; stops when dropped.
pub struct FaultyCamera {
    shared: Arc<Shared>,
    pub port: u16,
}

impl FaultyCamera {
    pub fn start(media: Media) -> FaultyCamera {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            media,
            port,
            stop: AtomicBool::new(false),
            switched: Mutex::new(HashMap::new()),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                s.conns.lock().unwrap().push(conn.try_clone().unwrap());
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
        });
        FaultyCamera { shared, port }
    }

    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{mount}", self.port)
    }
}

impl Drop for FaultyCamera {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

struct Request {
    method: String,
    url: String,
    headers: HashMap<String, String>,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map_or("", String::as_str)
    }

    fn mount(&self) -> String {
        let path = self.url.splitn(4, '/').nth(3).unwrap_or("");
        path.split('/').next().unwrap_or("").to_string()
    }
}

fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    // Interleaved data from the client (RTCP receiver reports) would start with '$'; retina
    // sends none over TCP here, so every message is a request.
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let url = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        url,
        headers,
    })
}

fn respond(w: &Mutex<TcpStream>, cseq: &str, headers: &[(&str, String)], body: &str) -> bool {
    let mut msg = format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n");
    for (k, v) in headers {
        msg.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        msg.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    msg.push_str("\r\n");
    msg.push_str(body);
    w.lock().unwrap().write_all(msg.as_bytes()).is_ok()
}

fn sdp(codec: Codec) -> String {
    let rtpmap = match codec {
        Codec::H264 => "a=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n",
        Codec::H265 => "a=rtpmap:96 H265/90000\r\n",
    };
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=faulty\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         a=control:*\r\nm=video 0 RTP/AVP 96\r\n{rtpmap}a=control:trackID=0\r\n"
    )
}

fn serve(s: &Arc<Shared>, conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let writer = Arc::new(Mutex::new(conn.try_clone()?));
    let mut reader = BufReader::new(conn);
    let mut codec = Codec::H264;
    let mut channel = 0u8;
    let mut sending = false;
    while let Some(req) = read_request(&mut reader) {
        let mount = req.mount();
        let cseq = req.header("CSeq").to_string();
        let session = ("Session", "5eedf00d;timeout=60".to_string());
        let ok = match req.method.as_str() {
            _ if mount == "silent" => true, // read, never answer
            "OPTIONS" => respond(
                &writer,
                &cseq,
                &[(
                    "Public",
                    "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER".into(),
                )],
                "",
            ),
            "DESCRIBE" if mount == "garbage" => respond(
                &writer,
                &cseq,
                &[("Content-Type", "application/sdp".into())],
                "<html><body>404 camera firmware portal</body></html>\r\n\x01\x02 not an SDP at all\r\n",
            ),
            "DESCRIBE" => {
                let switched = s.switched.lock().unwrap().get(&mount).copied();
                codec = if switched == Some(true) {
                    Codec::H265
                } else {
                    Codec::H264
                };
                respond(
                    &writer,
                    &cseq,
                    &[
                        ("Content-Type", "application/sdp".into()),
                        (
                            "Content-Base",
                            format!("rtsp://127.0.0.1:{}/{mount}/", s.port),
                        ),
                    ],
                    &sdp(codec),
                )
            }
            "SETUP" => {
                let transport = req.header("Transport");
                channel = transport
                    .split(';')
                    .find_map(|p| p.strip_prefix("interleaved="))
                    .and_then(|p| p.split('-').next())
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                respond(
                    &writer,
                    &cseq,
                    &[
                        (
                            "Transport",
                            format!(
                                "RTP/AVP/TCP;unicast;interleaved={channel}-{};ssrc=5EEDF00D",
                                channel + 1
                            ),
                        ),
                        session,
                    ],
                    "",
                )
            }
            "PLAY" => {
                let ok = respond(
                    &writer,
                    &cseq,
                    &[
                        session,
                        ("Range", "npt=0.000-".into()),
                        (
                            "RTP-Info",
                            format!("url={};seq=1000;rtptime=90000", req.url),
                        ),
                    ],
                    "",
                );
                if ok && !sending {
                    sending = true;
                    let s = s.clone();
                    let w = writer.clone();
                    std::thread::spawn(move || send(&s, &w, &mount, codec, channel));
                }
                ok
            }
            "TEARDOWN" => {
                respond(&writer, &cseq, &[session], "");
                false
            }
            _ => respond(&writer, &cseq, &[session], ""),
        };
        if !ok {
            break;
        }
    }
    let _ = writer.lock().unwrap().shutdown(Shutdown::Both);
    Ok(())
}

/// Streams access units at 15 fps until the client goes away, with the mount's faults.
fn send(s: &Shared, w: &Mutex<TcpStream>, mount: &str, announced: Codec, channel: u8) {
    let mut seq: u16 = 1000;
    let mut ts_offset: i64 = 0;
    let start = Instant::now();
    for i in 0u64.. {
        if s.stop.load(Ordering::Relaxed) {
            return;
        }
        let due = start + Duration::from_millis(i * 1000 / u64::from(FPS));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let m = &s.media;
        let (codec, mut au) = match mount {
            "resize" if i >= SWITCH_AT => {
                let k = (i - SWITCH_AT) as usize;
                (Codec::H264, m.h264_small[k % m.h264_small.len()].clone())
            }
            "h265switch" if announced == Codec::H264 && i >= SWITCH_AT => {
                s.switched.lock().unwrap().insert(mount.to_string(), true);
                let k = (i - SWITCH_AT) as usize;
                (Codec::H265, m.h265[k % m.h265.len()].clone())
            }
            _ if announced == Codec::H265 => {
                (Codec::H265, m.h265[i as usize % m.h265.len()].clone())
            }
            _ => (Codec::H264, m.h264[i as usize % m.h264.len()].clone()),
        };
        if mount == "corrupt" && i % 20 == 10 {
            // A broken picture: forbidden bit set, and garbage in the slice data.
            if let Some(nal) = au.iter_mut().find(|n| is_vcl(codec, n)) {
                nal[0] |= 0x80;
                let (mid, len) = (nal.len() / 2, nal.len());
                for b in &mut nal[mid..(mid + 8).min(len)] {
                    *b ^= 0x5a;
                }
            }
        }
        if mount == "tsjump" && i > 0 {
            // Mid-GOP: back 30 s, then 3 s later ten minutes ahead.
            match i % 90 {
                52 => ts_offset -= 30 * 90_000,
                7 => ts_offset += 600 * 90_000,
                _ => {}
            }
        }
        let ts = (90_000 + i as i64 * i64::from(TICKS_PER_FRAME) + ts_offset) as u32;
        let payloads: Vec<Vec<u8>> = au.iter().flat_map(|n| packetize(codec, n)).collect();
        let last = payloads.len() - 1;
        let mut out = Vec::new();
        for (k, payload) in payloads.iter().enumerate() {
            let mut pkt = rtp(seq, ts, k == last, payload);
            seq = seq.wrapping_add(1);
            if mount == "truncated" {
                if i % 20 == 5 && k == 0 {
                    pkt.truncate(7); // not even an RTP header
                } else if i % 20 == 15 && k == 1 && k != last {
                    pkt.truncate(13); // an FU-A fragment with no FU header
                }
            }
            out.push(b'$');
            out.push(channel);
            out.extend_from_slice(&(pkt.len() as u16).to_be_bytes());
            out.extend_from_slice(&pkt);
        }
        if w.lock().unwrap().write_all(&out).is_err() {
            return;
        }
    }
}
