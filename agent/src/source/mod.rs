//! Camera ingest: one GStreamer pipeline per camera, run by one named task per camera
//! that restarts it whenever it fails or stalls.
//!
//! A camera's task owns its pipeline and its bus; the pipeline's own streaming threads
//! (rtspsrc, decoder) do the work and hand frames to the model's [`FrameQueue`]. One
//! camera failing only ever restarts that camera.

mod gate;
pub mod motion;
mod pipeline;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gstreamer as gst;
use gstreamer::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

pub use gate::{Gate, GateVerdict, Sampler};
pub use pipeline::FrameFormat;

use crate::config::CameraConfig;
use crate::infer::queue::FrameQueue;

/// Why a camera's pipeline stopped, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "camera {camera}: GStreamer element {element} is missing (install the GStreamer plugins: scripts/setup.sh)"
    )]
    MissingElement { camera: String, element: String },
    #[error("camera {camera}: cannot build the pipeline: {message}")]
    Build { camera: String, message: String },
    #[error("camera {camera}: codec {codec:?} is not supported (H264, H265, JPEG)")]
    UnsupportedCodec { camera: String, codec: String },
    #[error("camera {camera}: {}: {message} (from {element})", fault.describe())]
    Stream { camera: String, element: String, message: String, fault: Fault },
    #[error("camera {camera}: stream ended")]
    Eos { camera: String },
    #[error("camera {camera}: no data for {seconds} s")]
    Stalled { camera: String, seconds: u64 },
}

impl SourceError {
    fn build(camera: &str, e: impl std::fmt::Display) -> Self {
        SourceError::Build { camera: camera.to_string(), message: e.to_string() }
    }

    /// The error with `url`'s secrets masked in its text: it becomes the camera's status
    /// reason (MQTT, console) and a log line, and GStreamer's messages may quote the URL.
    pub fn redacted(self, url: &str) -> Self {
        let r = |m: String| crate::config::redact_secrets_in(&m, url);
        match self {
            SourceError::Build { camera, message } => SourceError::Build { camera, message: r(message) },
            SourceError::Stream { camera, element, message, fault } => {
                SourceError::Stream { camera, element, message: r(message), fault }
            }
            other => other,
        }
    }

    /// Missing plugins, wrong credentials or paths and unsupported codecs do not heal by
    /// waiting (the camera is still retried, slowly, in case someone fixes it); network
    /// faults, camera reboots and server restarts may, so those are retried with back-off.
    pub fn retry_can_help(&self) -> bool {
        match self {
            SourceError::MissingElement { .. } | SourceError::UnsupportedCodec { .. } => false,
            SourceError::Stream { fault, .. } => fault.retry_can_help(),
            _ => true,
        }
    }
}

/// What kind of failure a GStreamer error on a camera's pipeline is, in the installer's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// RTSP 401: credentials missing or wrong.
    Unauthorized,
    /// RTSP 403.
    Forbidden,
    /// RTSP 404: wrong path.
    NotFound,
    /// TCP connection refused: nothing listens there.
    Refused,
    /// No answer in time, or the host is unreachable.
    Timeout,
    /// The decoder could not decode the stream.
    Corrupt,
    Other,
}

impl Fault {
    /// Classifies a pipeline error from its GLib error and its debug text.
    pub fn classify(error: &gst::glib::Error, debug: &str) -> Self {
        let text = format!("{} {debug}", error.message()).to_ascii_lowercase();
        if error.matches(gst::ResourceError::NotAuthorized) || text.contains("unauthorized") || text.contains(" 401") {
            Fault::Unauthorized
        } else if text.contains("forbidden") || text.contains(" 403") {
            Fault::Forbidden
        } else if error.matches(gst::ResourceError::NotFound) || text.contains("not found") || text.contains(" 404") {
            Fault::NotFound
        } else if text.contains("connection refused") {
            Fault::Refused
        } else if text.contains("timeout") || text.contains("timed out") || text.contains("unreachable") {
            Fault::Timeout
        } else if error.matches(gst::StreamError::Decode)
            || error.matches(gst::StreamError::Format)
            || text.contains("decod")
        {
            Fault::Corrupt
        } else {
            Fault::Other
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Fault::Unauthorized => "unauthorized (RTSP 401): check the user and password in the camera's url",
            Fault::Forbidden => "forbidden (RTSP 403): the camera refuses this user or address",
            Fault::NotFound => "not found (RTSP 404): check the path in the camera's url",
            Fault::Refused => "connection refused: nothing listens at the camera's address and port",
            Fault::Timeout => "timed out: the camera does not answer (network, address or firewall)",
            Fault::Corrupt => "corrupt stream: the camera sends data the decoder cannot decode",
            Fault::Other => "stream error",
        }
    }

    pub fn retry_can_help(self) -> bool {
        !matches!(self, Fault::Unauthorized | Fault::Forbidden | Fault::NotFound)
    }
}

/// Counters for one camera (exported as `lookout_*` metrics).
#[derive(Debug, Default)]
pub struct CameraStats {
    /// Encoded frames received from the camera.
    pub encoded_frames: AtomicU64,
    /// Frames passed to the decoder.
    pub decoded_frames: AtomicU64,
    /// Decoded frames sampled for analysis.
    pub sampled_frames: AtomicU64,
    /// Sampled frames replaced by a newer one before the model took them.
    pub replaced_frames: AtomicU64,
    /// Sampled frames the motion gate kept from the model (nothing moved).
    pub motion_skipped_frames: AtomicU64,
    /// Frames the model analysed.
    pub analysed_frames: AtomicU64,
    /// Messages handed to the publisher.
    pub messages: AtomicU64,
    /// Pipeline (re)starts after a failure.
    pub restarts: AtomicU64,
}

/// What the rest of the agent knows about a camera at run time.
#[derive(Debug)]
pub struct CameraCtx {
    pub id: String,
    /// Detections below this score are not reported.
    pub min_score: f32,
    pub stats: CameraStats,
    native_size: AtomicU64,
    /// Milliseconds since `epoch` at which the last encoded frame arrived.
    last_data_ms: AtomicU64,
    /// Milliseconds since `epoch` at which the decoder last put out a frame.
    last_decoded_ms: AtomicU64,
    epoch: Instant,
    state: Mutex<(CameraState, Option<String>)>,
    /// Capture time of the last sampled frame, ms since the Unix epoch (0: none yet).
    last_frame_ms: AtomicU64,
    /// Tracks (tentative ones included) the event stage holds for this camera: while
    /// any, the motion gate lets every sampled frame through.
    pub live_tracks: std::sync::atomic::AtomicUsize,
    /// Console: whether someone is looking at this camera's live frame (issue 8).
    pub watch: crate::console::Watch,
}

/// Where a camera is in its life (reported in its retained status message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraState {
    Starting,
    Streaming,
    /// Failed; retrying with back-off.
    Reconnecting,
    /// Failed in a way retrying cannot fix (e.g. a missing GStreamer plugin); still retried, slowly.
    Failed,
    Stopped,
}

impl CameraState {
    pub const ALL: [CameraState; 5] = [
        CameraState::Starting,
        CameraState::Streaming,
        CameraState::Reconnecting,
        CameraState::Failed,
        CameraState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Starting => "starting",
            CameraState::Streaming => "streaming",
            CameraState::Reconnecting => "reconnecting",
            CameraState::Failed => "failed",
            CameraState::Stopped => "stopped",
        }
    }
}

impl CameraCtx {
    pub fn new(id: &str, min_score: f32) -> Self {
        Self {
            id: id.to_string(),
            min_score,
            stats: CameraStats::default(),
            native_size: AtomicU64::new(0),
            last_data_ms: AtomicU64::new(0),
            last_decoded_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            state: Mutex::new((CameraState::Starting, None)),
            last_frame_ms: AtomicU64::new(0),
            live_tracks: std::sync::atomic::AtomicUsize::new(0),
            watch: crate::console::Watch::default(),
        }
    }

    /// Detections down to this score reach the tracker: weaker than `min_score` ones
    /// may continue a track (partial occlusion) but never start one or get reported.
    pub fn track_floor(&self) -> f32 {
        self.min_score * crate::track::LOW_SCORE_FRACTION
    }

    /// The camera's state and, when it failed, why.
    pub fn state(&self) -> (CameraState, Option<String>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_last_frame(&self, t: SystemTime) {
        let ms = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_frame_ms.store(ms, Ordering::Relaxed);
    }

    /// Capture time of the last frame handed to the model.
    pub fn last_frame(&self) -> Option<SystemTime> {
        let ms = self.last_frame_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    fn set_native_size(&self, w: u32, h: u32) {
        self.native_size.store(((w as u64) << 32) | h as u64, Ordering::Relaxed);
    }

    /// The camera's frame size before scaling (0 × 0 until known).
    pub fn native_size(&self) -> (u32, u32) {
        let v = self.native_size.load(Ordering::Relaxed);
        ((v >> 32) as u32, v as u32)
    }

    fn touch(&self) {
        self.last_data_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_data(&self) -> Duration {
        let last = Duration::from_millis(self.last_data_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub(crate) fn touch_decoded(&self) {
        self.last_decoded_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_decoded(&self) -> Duration {
        let last = Duration::from_millis(self.last_decoded_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    fn set_state(&self, state: CameraState, reason: Option<String>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (state, reason);
    }
}

/// A decoded, scaled RGB frame ready for the model.
pub struct Frame {
    /// The camera's slot in its model's queue.
    pub slot: usize,
    pub camera: Arc<CameraCtx>,
    pub pts_ns: u64,
    pub captured: SystemTime,
    /// The camera's own frame size.
    pub native_width: u32,
    pub native_height: u32,
    /// Size of `pixels` (the model's input size), packed RGB rows of `stride` bytes.
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub pixels: Box<dyn AsRef<[u8]> + Send>,
    /// The decoded frame before scaling, for snapshots (cameras with snapshots only).
    pub original: Option<Original>,
}

/// A decoded frame at the camera's resolution, in whatever raw format the decoder gave.
/// Holding it holds one of the decoder's buffers (no copy).
#[derive(Debug, Clone)]
pub struct Original {
    pub buffer: gstreamer::Buffer,
    pub caps: gstreamer::Caps,
}

/// A 64×48 grey I420 decoded frame, for tests of snapshots and the console.
#[cfg(test)]
pub(crate) fn test_original() -> Original {
    use gstreamer_video as gst_video;
    gstreamer::init().expect("gstreamer");
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 64, 48).build().expect("video info");
    let mut buffer = gstreamer::Buffer::with_size(info.size()).expect("buffer");
    buffer.get_mut().expect("writable").map_writable().expect("map").as_mut_slice().fill(128);
    Original { buffer, caps: info.to_caps().expect("caps") }
}

#[cfg(test)]
pub(crate) fn test_frame(slot: usize, pts_ns: u64) -> Frame {
    Frame {
        slot,
        camera: Arc::new(CameraCtx::new("test", 0.5)),
        pts_ns,
        captured: SystemTime::UNIX_EPOCH,
        native_width: 4,
        native_height: 4,
        width: 2,
        height: 2,
        stride: 6,
        pixels: Box::new(vec![0u8; 12]),
        original: None,
    }
}

/// How long a camera may deliver nothing before its pipeline is restarted. Longer at
/// start, where RTSP set-up and the first keyframe take a while.
/// GStreamer says only "Failed to connect" when the RTSP connection cannot be opened;
/// a plain TCP connect to the camera tells the installer why (refused, timed out,
/// unreachable, unknown host).
async fn diagnose(err: SourceError, url: &str) -> SourceError {
    let SourceError::Stream { camera, element, message, fault: Fault::Other } = err else { return err };
    if !message.contains("Could not open resource") {
        return SourceError::Stream { camera, element, message, fault: Fault::Other };
    }
    let target = url::Url::parse(url).ok().and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(554))));
    let Some(target) = target else { return SourceError::Stream { camera, element, message, fault: Fault::Other } };
    let probe = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&target)).await;
    let (fault, why) = match probe {
        Err(_) => (Fault::Timeout, format!("TCP connect to {target} timed out")),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            (Fault::Refused, format!("TCP connect to {target}: {e}"))
        }
        Ok(Err(e)) => (Fault::Timeout, format!("TCP connect to {target}: {e}")),
        // The port answers: the RTSP exchange itself failed.
        Ok(Ok(_)) => (Fault::Other, format!("{target} accepts connections")),
    };
    SourceError::Stream { camera, element, message: format!("{message}; {why}"), fault }
}

/// `d` ± 20 %, so cameras that failed together (a switch reboot) do not all reconnect in
/// the same instant. Not cryptographic: the clock's nanoseconds are random enough here.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.subsec_nanos());
    let factor = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    d.mul_f64(factor)
}

/// Runs one camera until `shutdown`: (re)starts its pipeline, retrying failures with
/// exponential back-off. Spawn it as the camera's task.
pub async fn run(
    cam: CameraConfig,
    ctx: Arc<CameraCtx>,
    format: FrameFormat,
    queue: Arc<FrameQueue>,
    slot: usize,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("camera", camera = %cam.id);
    async move {
        let mut backoff = cam.reconnect.min;
        loop {
            let before = ctx.stats.sampled_frames.load(Ordering::Relaxed);
            let result = run_once(&cam, &ctx, format, &queue, slot, &shutdown).await;
            if shutdown.is_cancelled() {
                break;
            }
            // A run that delivered frames was a working connection: start back-off over.
            if ctx.stats.sampled_frames.load(Ordering::Relaxed) > before {
                backoff = cam.reconnect.min;
            }
            let err = match result {
                Ok(()) => break,
                Err(e) => e,
            };
            ctx.stats.restarts.fetch_add(1, Ordering::Relaxed);
            let err = diagnose(err, &cam.url).await.redacted(&cam.url);
            let state = if err.retry_can_help() { CameraState::Reconnecting } else { CameraState::Failed };
            ctx.set_state(state, Some(err.to_string()));
            if err.retry_can_help() {
                warn!(error = %err, retry_in = ?backoff, "camera failed, will retry");
            } else {
                warn!(error = %err, retry_in = ?cam.reconnect.max, "camera failed; retrying cannot help until this is fixed");
                backoff = cam.reconnect.max;
            }
            tokio::select! {
                _ = tokio::time::sleep(jittered(backoff)) => {}
                _ = shutdown.cancelled() => break,
            }
            backoff = (backoff * 2).min(cam.reconnect.max);
        }
        ctx.set_state(CameraState::Stopped, None);
        info!("camera stopped");
    }
    .instrument(span)
    .await
}

async fn run_once(
    cam: &CameraConfig,
    ctx: &Arc<CameraCtx>,
    format: FrameFormat,
    queue: &Arc<FrameQueue>,
    slot: usize,
    shutdown: &CancellationToken,
) -> Result<(), SourceError> {
    let pipeline = pipeline::build(cam, ctx.clone(), format, queue.clone(), slot)?;
    let result = watch_bus(&pipeline, ctx, cam.stall, &cam.url, shutdown).await;
    // Always back to Null, whatever happened: this closes the RTSP session (TEARDOWN)
    // and frees the decoder. It can block (a TEARDOWN to a dead server waits for its
    // timeout), so not on an async worker.
    let _ = tokio::task::spawn_blocking(move || pipeline.set_state(gst::State::Null)).await;
    result
}

/// Starts the pipeline and follows its bus until an error, the end of stream, a stall
/// or shutdown.
async fn watch_bus(
    pipeline: &gst::Pipeline,
    ctx: &Arc<CameraCtx>,
    stall: Duration,
    url: &str,
    shutdown: &CancellationToken,
) -> Result<(), SourceError> {
    use futures_util::StreamExt;
    let camera = ctx.id.clone();
    let bus = pipeline.bus().ok_or_else(|| SourceError::build(&camera, "pipeline has no bus"))?;
    let mut messages = bus.stream();
    pipeline.set_state(gst::State::Playing).map_err(|e| SourceError::build(&camera, e))?;
    ctx.touch();
    let started = Instant::now();
    // The counter is cumulative over the camera's life: this run streams once it grows.
    let frames_before = ctx.stats.sampled_frames.load(Ordering::Relaxed);
    let mut streaming = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {
                let quiet = ctx.since_data();
                // Starting gets twice as long: RTSP setup, the first keyframe.
                let limit = if streaming { stall } else { stall * 2 };
                if quiet > limit && started.elapsed() > limit {
                    return Err(SourceError::Stalled { camera, seconds: quiet.as_secs() });
                }
                // Data arrives but nothing comes out of the decoder: a corrupt or
                // undecodable stream (the decoders mostly warn, not fail, on bad data).
                let undecoded = ctx.since_decoded().min(started.elapsed());
                if undecoded > limit && quiet < limit {
                    return Err(SourceError::Stream {
                        camera,
                        element: "decoder".into(),
                        message: format!("data arrives but no frame has decoded for {} s", undecoded.as_secs()),
                        fault: Fault::Corrupt,
                    });
                }
                let frames = ctx.stats.sampled_frames.load(Ordering::Relaxed);
                if !streaming && frames > frames_before {
                    streaming = true;
                    ctx.set_state(CameraState::Streaming, None);
                    info!("camera streaming");
                }
            }
            msg = messages.next() => {
                let Some(msg) = msg else { return Err(SourceError::build(&camera, "bus closed")) };
                use gst::MessageView;
                match msg.view() {
                    MessageView::Error(err) => {
                        let debug = err.debug().map(|d| d.to_string()).unwrap_or_default();
                        return Err(SourceError::Stream {
                            camera,
                            element: err.src().map(|s| s.name().to_string()).unwrap_or_default(),
                            fault: Fault::classify(&err.error(), &debug),
                            message: match debug.lines().next() {
                                Some(d) if !d.is_empty() => format!("{} ({d})", err.error()),
                                _ => err.error().to_string(),
                            },
                        });
                    }
                    MessageView::Eos(_) => return Err(SourceError::Eos { camera }),
                    MessageView::Warning(w) => {
                        let warning = crate::config::redact_secrets_in(&w.error().to_string(), url);
                        warn!(%warning, "GStreamer warning");
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), SourceError> {
    gst::init().map_err(|e| SourceError::build("-", e))
}
