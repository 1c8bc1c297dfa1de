//! `panoptes replay`: an RTSP server that plays recorded files as if they were live cameras.
//!
//! Each file is demuxed once at startup into memory (compressed access units with their caps,
//! timestamps and key-frame flags); nothing is decoded or encoded afterwards. A feeder thread
//! per live media pushes the cached samples through `appsrc` into an RTP payloader at real-time
//! pace, re-stamping every loop so timestamps keep rising across the loop point.
//!
//! A file is mounted at `/<stem>`, or at `/<stem>-0` … `/<stem>-<N-1>` with `copies = N`. All
//! mounts of one file share one factory whose media key ignores the path, and the factory is
//! shared, so N copies and any number of clients cost one pipeline: this is what lets a 2-core
//! machine stand in for a thousand cameras.
//!
//! Served codecs: H.264 and H.265 video, AAC (RFC 3640 `mpeg4-generic`) and Opus audio.

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as gst_rtsp_server;
use gstreamer_rtsp_server::prelude::*;
use gstreamer_rtsp_server::subclass::prelude::*;
use tracing::{debug, error, info, warn};

mod clip;

use clip::{Clip, Step};

/// Threads the server may use for client connections and media bus handling. The default (0)
/// handles every client on the main loop one at a time, which serialises a burst of a thousand
/// DESCRIBEs; a few threads are enough because each request is short.
const CLIENT_THREADS: i32 = 4;

/// Pending connections the kernel may queue for us (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;

/// If the feeder finds itself this far behind its schedule (the machine stalled, or the media
/// was paused), it re-bases its clock instead of bursting the backlog out at once.
const MAX_LATENESS: Duration = Duration::from_secs(1);

/// Longest single sleep of a feeder, so a stop request is noticed promptly.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// RTSP credentials a replayed camera demands (digest authentication), like a real camera.
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Serves `files` on `listen` until the process is interrupted (blocking; runs a glib main loop).
/// With `auth`, every mount demands those credentials.
pub fn run(
    listen: SocketAddr,
    files: Vec<PathBuf>,
    copies: u32,
    auth: Option<Credentials>,
) -> Result<()> {
    if files.is_empty() {
        bail!("no files to serve");
    }
    if copies == 0 {
        bail!("--copies must be at least 1");
    }
    // GStreamer reports a failed bind only as "failed to attach"; binding once ourselves first
    // turns "address in use" into an error that says so, before any time is spent demuxing.
    drop(
        std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on {listen}"))?,
    );
    gst::init().context("initialising GStreamer")?;

    let mut clips: Vec<Arc<Clip>> = Vec::with_capacity(files.len());
    for file in &files {
        let clip = Clip::load(file)?;
        if let Some(other) = clips.iter().find(|c| c.name == clip.name) {
            bail!(
                "{} and {} would both be mounted at /{}: rename one",
                other.path.display(),
                file.display(),
                clip.name
            );
        }
        info!(
            file = %file.display(),
            mount = %clip.name,
            streams = %clip.describe(),
            samples = clip.timeline.len(),
            loop_seconds = clip.period as f64 / 1e9,
            "loaded"
        );
        clips.push(Arc::new(clip));
    }

    let server = gst_rtsp_server::RTSPServer::new();
    server.set_address(&listen.ip().to_string());
    server.set_service(&listen.port().to_string());
    // The default backlog of 5 resets connections when hundreds of cameras connect at once.
    server.set_backlog(LISTEN_BACKLOG);
    let pool = gst_rtsp_server::RTSPThreadPool::new();
    pool.set_max_threads(CLIENT_THREADS);
    server.set_thread_pool(Some(&pool));
    let clients = Arc::new(AtomicUsize::new(0));
    server.connect_client_connected(move |_, client| {
        let n = clients.fetch_add(1, Ordering::Relaxed) + 1;
        debug!(clients = n, "client connected");
        let clients = clients.clone();
        client.connect_closed(move |_| {
            let n = clients.fetch_sub(1, Ordering::Relaxed) - 1;
            debug!(clients = n, "client closed");
        });
    });

    const ROLE: &str = "camera-user";
    if let Some(c) = &auth {
        let a = gst_rtsp_server::RTSPAuth::new();
        a.set_supported_methods(gst_rtsp_server::gst_rtsp::RTSPAuthMethod::Digest);
        let token = gst_rtsp_server::RTSPToken::builder()
            .field(gst_rtsp_server::RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
            .build();
        a.add_digest(&c.username, &c.password, &token);
        server.set_auth(Some(&a));
        info!(user = %c.username, "clients must authenticate (digest)");
    }

    let mounts = server
        .mount_points()
        .context("RTSP server has no mount points")?;
    let mut paths = Vec::new();
    for clip in &clips {
        let factory = ReplayFactory::new(clip.clone());
        if auth.is_some() {
            factory.add_role_from_structure(
                &gst::Structure::builder(ROLE)
                    .field(gst_rtsp_server::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                    .field(gst_rtsp_server::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                    .build(),
            );
        }
        for path in clip.mount_paths(copies) {
            mounts.add_factory(&path, factory.clone());
            paths.push((path, clip.clone()));
        }
    }

    let _source = server
        .attach(None)
        .with_context(|| format!("cannot listen on {listen}"))?;

    let host = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url_base = SocketAddr::new(host, u16::try_from(server.bound_port()).unwrap_or(0));
    let mut stdout = std::io::stdout().lock();
    for (path, clip) in &paths {
        writeln!(
            stdout,
            "panoptes replay: serving rtsp://{url_base}{path} ({})",
            clip.describe()
        )?;
    }
    stdout.flush()?;
    drop(stdout);

    glib::MainLoop::new(None, false).run();
    Ok(())
}

/// The media factory for one file. It is shared and its media key ignores the URL, so every
/// mount of the file and every client get the same media, and with it one feeder.
mod factory {
    use super::*;

    mod imp {
        use super::*;
        use std::sync::OnceLock;

        #[derive(Default)]
        pub struct ReplayFactory {
            pub(super) clip: OnceLock<Arc<Clip>>,
        }

        #[glib::object_subclass]
        impl ObjectSubclass for ReplayFactory {
            const NAME: &'static str = "PanoptesReplayFactory";
            type Type = super::ReplayFactory;
            type ParentType = gst_rtsp_server::RTSPMediaFactory;
        }

        impl ObjectImpl for ReplayFactory {
            fn constructed(&self) {
                self.parent_constructed();
                self.obj().set_shared(true);
            }
        }

        impl RTSPMediaFactoryImpl for ReplayFactory {
            fn gen_key(
                &self,
                _url: &gstreamer_rtsp_server::gst_rtsp::RTSPUrl,
            ) -> Option<glib::GString> {
                Some("replay".into())
            }

            fn create_element(
                &self,
                _url: &gstreamer_rtsp_server::gst_rtsp::RTSPUrl,
            ) -> Option<gst::Element> {
                let clip = self.clip.get()?;
                match media_bin(clip) {
                    Ok(bin) => Some(bin.upcast()),
                    Err(e) => {
                        error!(mount = %clip.name, error = format!("{e:#}"), "cannot build media");
                        None
                    }
                }
            }

            fn media_configure(&self, media: &gst_rtsp_server::RTSPMedia) {
                self.parent_media_configure(media);
                let Some(clip) = self.clip.get() else { return };
                let Ok(bin) = media.element().downcast::<gst::Bin>() else {
                    return;
                };
                let srcs: Vec<_> = (0..clip.tracks.len())
                    .filter_map(|i| {
                        bin.by_name(&format!("src{i}"))
                            .and_downcast::<gst_app::AppSrc>()
                            .map(|s| s.downgrade())
                    })
                    .collect();
                let feeder = Arc::new(FeederState::default());
                // gst-rtsp-server unprepares a media when its last client leaves, and a client
                // that DESCRIBEs while that happens gets 503 (more than half the time when a
                // camera reconnects at once). Holding one prepare reference of our own keeps the
                // media alive for the life of the process; it then idles in PAUSED between
                // clients and resumes where it was.
                media.connect_prepared({
                    let feeder = feeder.clone();
                    let mount = clip.name.clone();
                    move |media| {
                        if feeder.kept.swap(true, Ordering::SeqCst) {
                            return;
                        }
                        // Not from inside the signal: prepare() takes the media's state lock.
                        let media = media.clone();
                        let mount = mount.clone();
                        std::thread::spawn(move || {
                            if let Err(e) = media.prepare(None) {
                                warn!(mount, error = %e, "cannot keep the media prepared");
                            } else {
                                debug!(mount, "media kept prepared");
                            }
                        });
                    }
                });
                media.connect_unprepared({
                    let feeder = feeder.clone();
                    move |_| feeder.stop.store(true, Ordering::SeqCst)
                });
                let feeder = Feeder {
                    clip: clip.clone(),
                    media: media.downgrade(),
                    srcs,
                    state: feeder,
                };
                let spawned = std::thread::Builder::new()
                    .name(format!("replay-{}", clip.name))
                    .spawn(move || feeder.run());
                if let Err(e) = spawned {
                    error!(mount = %clip.name, error = %e, "cannot start feeder thread");
                }
            }
        }
    }

    glib::wrapper! {
        pub struct ReplayFactory(ObjectSubclass<imp::ReplayFactory>)
            @extends gst_rtsp_server::RTSPMediaFactory;
    }

    impl ReplayFactory {
        pub(super) fn new(clip: Arc<Clip>) -> Self {
            let factory: Self = glib::Object::new();
            let _ = factory.imp().clip.set(clip);
            factory
        }
    }
}
use factory::ReplayFactory;

/// `appsrc name=srcN ! tee ! <payloader> name=payN` per track; gst-rtsp-server finds the payloaders
/// by name.
fn media_bin(clip: &Clip) -> Result<gst::Bin> {
    let bin = gst::Bin::new();
    for (i, track) in clip.tracks.iter().enumerate() {
        let src = gst_app::AppSrc::builder()
            .name(format!("src{i}"))
            .caps(&track.caps)
            .format(gst::Format::Time)
            .is_live(true)
            .stream_type(gst_app::AppStreamType::Stream)
            // The feeder paces itself; the queue only absorbs scheduling jitter. If the
            // pipeline stalls, old data is dropped rather than buffered without bound.
            .max_time(gst::ClockTime::from_seconds(2))
            .max_bytes(0)
            .leaky_type(gst_app::AppLeakyType::Downstream)
            .build();
        let mut pay = gst::ElementFactory::make(track.codec.payloader())
            .name(format!("pay{i}"))
            .property("pt", 96u32 + i as u32);
        if track.codec.is_video() {
            // Parameter sets before every key frame, so a client joining mid-stream can decode
            // from the next key frame even if it ignores the SDP.
            pay = pay.property("config-interval", -1i32);
        }
        let pay = pay
            .build()
            .with_context(|| format!("creating {}", track.codec.payloader()))?;
        // A client may SETUP only some streams (video without audio); the unused payloader's
        // output is then unlinked, and the not-linked flow return would stop its appsrc with an
        // error that fails the shared media for every client. The tee turns it into OK.
        let tee = gst::ElementFactory::make("tee")
            .name(format!("tee{i}"))
            .property("allow-not-linked", true)
            .build()
            .context("creating tee")?;
        bin.add_many([src.upcast_ref(), &tee, &pay])?;
        gst::Element::link_many([src.upcast_ref(), &tee, &pay]).with_context(|| {
            format!("linking {} caps to {}", track.caps, track.codec.payloader())
        })?;
    }
    Ok(bin)
}

/// Flags shared between a media's signal handlers and its feeder.
#[derive(Default)]
struct FeederState {
    /// Set once we hold our own prepare reference on the media.
    kept: AtomicBool,
    /// Set when the media is unprepared: the feeder exits.
    stop: AtomicBool,
}

/// Pushes a clip's samples into one media's appsrcs in a loop, at real-time pace.
struct Feeder {
    clip: Arc<Clip>,
    /// Weak, so a media that is dropped without being unprepared still ends the feeder.
    media: glib::WeakRef<gst_rtsp_server::RTSPMedia>,
    srcs: Vec<glib::WeakRef<gst_app::AppSrc>>,
    state: Arc<FeederState>,
}

impl Feeder {
    fn run(self) {
        let mount = self.clip.name.as_str();
        debug!(mount, "feeder started");
        // Output running time = virtual time + offset, where virtual time is the clip's decode
        // time plus one period per completed loop: it never goes backwards at the loop point.
        let mut offset: Option<i128> = None;
        let mut loop_start: u64 = 0;
        let mut loops: u64 = 0;
        'outer: loop {
            for step in &self.clip.timeline {
                let Some(off) = self.wait_for(loop_start + step.dts, &mut offset) else {
                    break 'outer;
                };
                if !self.push(step, loop_start, off) {
                    break 'outer;
                }
            }
            loop_start += self.clip.period;
            loops += 1;
            debug!(mount, loops, "looped");
        }
        debug!(mount, loops, "feeder stopped");
    }

    /// Sleeps until virtual decode time `vdts` is due and returns the offset to stamp it with,
    /// or `None` when the feeder should stop.
    fn wait_for(&self, vdts: u64, offset: &mut Option<i128>) -> Option<i128> {
        let vdts = i128::from(vdts);
        loop {
            if self.state.stop.load(Ordering::SeqCst) {
                return None;
            }
            // Only once prepared: RTSPMedia::status() blocks while the media is preparing, and
            // preparing needs this thread's data.
            if self.state.kept.load(Ordering::SeqCst) {
                let media = self.media.upgrade()?;
                if media.status() == gst_rtsp_server::RTSPMediaStatus::Error {
                    warn!(mount = %self.clip.name, "media failed; releasing it so the next client gets a fresh one");
                    if self.state.kept.swap(false, Ordering::SeqCst) {
                        let _ = media.unprepare();
                    }
                    return None;
                }
            }
            let src = self.srcs.first()?.upgrade()?;
            // A live source only runs in PLAYING: before the first client it is prerolling and
            // between clients the media is PAUSED. Hold back rather than fill the queue.
            let now = match src.current_state() {
                gst::State::Playing => src.current_running_time(),
                _ => None,
            };
            let Some(now) = now.map(|t| i128::from(t.nseconds())) else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let off = *offset.get_or_insert(now - vdts);
            let late = now - (vdts + off);
            if late > MAX_LATENESS.as_nanos() as i128 {
                debug!(mount = %self.clip.name, late_ms = late / 1_000_000, "feeder behind schedule; re-basing");
                *offset = Some(now - vdts);
                return *offset;
            }
            if late >= 0 {
                return Some(off);
            }
            let wait = Duration::from_nanos(late.unsigned_abs() as u64).min(MAX_SLEEP);
            std::thread::sleep(wait);
        }
    }

    /// Pushes one sample re-stamped for this loop; `false` when the media is gone.
    fn push(&self, step: &Step, loop_start: u64, offset: i128) -> bool {
        let Some(src) = self.srcs.get(step.track).and_then(|w| w.upgrade()) else {
            return false;
        };
        let track = &self.clip.tracks[step.track];
        let (pts, dts) = track.times[step.index];
        let stamp = |t: u64| {
            let t = (i128::from(loop_start + t) + offset).max(0);
            gst::ClockTime::from_nseconds(t as u64)
        };
        // A shallow copy: new metadata, same memory.
        let mut buffer = track.buffers[step.index].copy();
        {
            let b = buffer.make_mut();
            b.set_pts(stamp(pts));
            b.set_dts(stamp(dts));
            b.unset_flags(gst::BufferFlags::DISCONT);
        }
        match src.push_buffer(buffer) {
            Ok(_) => true,
            // Flushing: the media is shutting down or pausing between our check and the push;
            // the next wait sorts out which.
            Err(gst::FlowError::Flushing) => true,
            Err(e) => {
                warn!(mount = %self.clip.name, error = ?e, "push failed; stopping feeder");
                false
            }
        }
    }
}
