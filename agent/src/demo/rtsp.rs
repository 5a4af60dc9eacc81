//! A local RTSP server (gst-rtsp-server) for the demo, the tests and the benchmarks.
//!
//! Clips are served from pre-encoded access units pushed into an `appsrc` at the clip's
//! frame rate, looping forever, so serving a stream costs almost nothing (no encoding).
//! A clip starts from its first unit when the first client connects to its mount (a
//! mount's pipeline is shared by its clients and torn down when the last one leaves).
//! Still images are encoded live at 5 fps with a near-lossless quantizer.
//! The server runs its own GLib main loop on a thread of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::glib;
use gstreamer_rtsp_server::prelude::*;

use super::media::{AccessUnit, Codec};

/// What a mount point serves.
#[derive(Clone)]
pub enum Media {
    /// A clip at `fps`: `units` once, then `units[loop_from..]` over and over.
    /// `loop_from` must index a keyframe; 0 loops the whole clip.
    Clip { codec: Codec, units: Arc<Vec<AccessUnit>>, fps: u32, loop_from: usize },
    /// A still image (JPEG or PNG) as an H.264 stream.
    Still { image: PathBuf },
    /// A still image as an MJPEG (RTP JPEG) stream, as older and cheaper cameras send.
    MjpegStill { image: PathBuf },
}

/// A running server; stops when dropped.
pub struct RtspServer {
    port: u16,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RtspServer {
    /// Serves `mounts` (`("/cam1", media)`) on 127.0.0.1:`port` (0 picks a free port).
    pub fn start(port: u16, mounts: Vec<(String, Media)>) -> anyhow::Result<Self> {
        Self::start_with_auth(port, mounts, None)
    }

    /// Like [`start`](Self::start), but every mount needs RTSP basic authentication with
    /// `credentials` (user, password): others get 401.
    pub fn start_with_auth(
        port: u16,
        mounts: Vec<(String, Media)>,
        credentials: Option<(&str, &str)>,
    ) -> anyhow::Result<Self> {
        gst::init()?;
        let server = rtsp::RTSPServer::new();
        server.set_address("127.0.0.1");
        server.set_service(&port.to_string());
        // The default backlog (5) refuses connections when many cameras start at once.
        server.set_backlog(1024);
        let points = server.mount_points().context("RTSP server has no mount points")?;
        for (path, media) in &mounts {
            if let Media::Clip { units, loop_from, .. } = media
                && !units.is_empty()
                && !units.get(*loop_from).is_some_and(|u| u.keyframe)
            {
                anyhow::bail!("{path}: loop_from {loop_from} is not a keyframe of the {} units", units.len());
            }
        }
        if let Some((user, password)) = credentials {
            let auth = rtsp::RTSPAuth::new();
            let token = rtsp::RTSPToken::builder().field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user").build();
            auth.add_basic(&rtsp::RTSPAuth::make_basic(user, password), &token);
            server.set_auth(Some(&auth));
        }
        for (path, media) in mounts {
            let f = factory(media);
            if credentials.is_some() {
                let role = gst::Structure::builder("user")
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                    .build();
                f.add_role_from_structure(&role);
            }
            points.add_factory(&path, f);
        }
        let ctx = glib::MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let source = server.attach(Some(&ctx)).context("cannot start RTSP server (port in use?)")?;
        let port = u16::try_from(server.bound_port()).context("RTSP server has no port")?;
        let ml = main_loop.clone();
        let thread = std::thread::Builder::new().name("rtsp-server".into()).spawn(move || {
            // The server and its source live on this thread with the loop.
            let _keep = (server, source);
            ml.run();
        })?;
        Ok(Self { port, main_loop, thread: Some(thread) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}{}", self.port, mount)
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn factory(media: Media) -> rtsp::RTSPMediaFactory {
    let f = rtsp::RTSPMediaFactory::new();
    // One pipeline per mount, shared by its clients, as a camera would.
    f.set_shared(true);
    match media {
        Media::Still { image } => {
            let dec =
                if image.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) { "pngdec" } else { "jpegdec" };
            f.set_launch(&format!(
                "( filesrc location=\"{}\" ! {dec} ! videoconvert ! video/x-raw,format=I420 ! imagefreeze is-live=true \
                 ! video/x-raw,framerate=5/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=5 pass=quant quantizer=10 \
                 ! rtph264pay name=pay0 pt=96 config-interval=-1 )",
                image.display()
            ));
        }
        Media::MjpegStill { image } => {
            let dec =
                if image.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) { "pngdec" } else { "jpegdec" };
            f.set_launch(&format!(
                "( filesrc location=\"{}\" ! {dec} ! videoconvert ! video/x-raw,format=I420 ! imagefreeze is-live=true \
                 ! video/x-raw,framerate=5/1 ! jpegenc quality=95 ! rtpjpegpay name=pay0 pt=26 )",
                image.display()
            ));
        }
        Media::Clip { codec, units, fps, loop_from } => {
            let (caps, parse, pay) = match codec {
                Codec::H264 => ("video/x-h264", "h264parse", "rtph264pay"),
                Codec::H265 => ("video/x-h265", "h265parse", "rtph265pay"),
            };
            f.set_launch(&format!(
                "( appsrc name=src is-live=true format=time do-timestamp=true \
                   caps={caps},stream-format=byte-stream,alignment=au \
                 ! {parse} ! {pay} name=pay0 pt=96 config-interval=-1 )"
            ));
            f.connect_media_configure(move |_, media| {
                let src = media
                    .element()
                    .downcast::<gst::Bin>()
                    .ok()
                    .and_then(|b| b.by_name_recurse_up("src"))
                    .and_then(|e| e.downcast::<gst_app::AppSrc>().ok());
                if let Some(src) = src {
                    feed(&src, units.clone(), fps, loop_from);
                }
            });
        }
    }
    f
}

/// Pushes one access unit per frame interval, in real time, from the first unit, then
/// looping from `loop_from`; timestamps come from the pipeline clock (`do-timestamp`), so
/// the stream is live like a camera's. Called once per configured media, so each new
/// shared pipeline starts the clip from its beginning.
fn feed(src: &gst_app::AppSrc, units: Arc<Vec<AccessUnit>>, fps: u32, loop_from: usize) {
    let interval = Duration::from_secs(1) / fps.max(1);
    let mut next = 0usize;
    let mut due = Instant::now();
    src.set_callbacks(
        gst_app::AppSrcCallbacks::builder()
            .need_data(move |src, _| {
                if units.is_empty() {
                    let _ = src.end_of_stream();
                    return;
                }
                // need-data runs on the appsrc's own streaming thread: sleeping paces it.
                let now = Instant::now();
                // After a pause (no client yet, slow consumer) restart pacing instead of bursting.
                if now > due + interval {
                    due = now;
                }
                if due > now {
                    std::thread::sleep(due - now);
                }
                due += interval;
                let Some(au) = units.get(next) else { return };
                next += 1;
                if next >= units.len() {
                    next = if loop_from < units.len() { loop_from } else { 0 };
                }
                let mut buf = gst::Buffer::from_slice(au.data.clone());
                if let Some(b) = buf.get_mut() {
                    b.set_duration(gst::ClockTime::from_nseconds(interval.as_nanos() as u64));
                    if !au.keyframe {
                        b.set_flags(gst::BufferFlags::DELTA_UNIT);
                    }
                }
                let _ = src.push_buffer(buf);
            })
            .build(),
    );
}
