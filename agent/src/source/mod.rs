//! Camera ingest: one GStreamer pipeline per camera, run by one named task per camera
//! that restarts it whenever it fails or stalls.
//!
//! A camera's task owns its pipeline and its bus; the pipeline's own streaming threads
//! (rtspsrc, decoder) do the work and hand frames to the model's [`FrameQueue`]. One
//! camera failing only ever restarts that camera.

pub mod activity;
mod client;
mod gate;
pub mod motion;
mod pipeline;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

pub use gate::{Gate, GateVerdict, Sampler};
pub use pipeline::FrameFormat;

use crate::camera::{CameraCtx, CameraState};
use crate::config::{CameraConfig, RtspClient};
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
        let by_text = Self::from_text(&format!("{} {debug}", error.message()));
        if error.matches(gst::ResourceError::NotAuthorized) || by_text == Fault::Unauthorized {
            Fault::Unauthorized
        } else if by_text == Fault::Forbidden {
            Fault::Forbidden
        } else if error.matches(gst::ResourceError::NotFound) || by_text == Fault::NotFound {
            Fault::NotFound
        } else if matches!(by_text, Fault::Refused | Fault::Timeout) {
            by_text
        } else if error.matches(gst::StreamError::Decode) || error.matches(gst::StreamError::Format) {
            Fault::Corrupt
        } else {
            by_text
        }
    }

    /// Classifies an error by its text alone (the shared RTSP client's, or GStreamer's
    /// debug text), in the order the checks above take.
    pub fn from_text(text: &str) -> Self {
        let text = text.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
        if has(&["unauthorized", " 401"]) {
            Fault::Unauthorized
        } else if has(&["forbidden", " 403"]) {
            Fault::Forbidden
        } else if has(&["not found", " 404"]) {
            Fault::NotFound
        } else if has(&["connection refused"]) {
            Fault::Refused
        } else if has(&["timeout", "timed out", "unreachable"]) {
            Fault::Timeout
        } else if has(&["decod"]) {
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
    let mut opener = GstOpener { cam: &cam, format, queue, slot, pick: ClientPick::new(cam.client) };
    restart_loop(&mut opener, &ctx, cam.reconnect, &cam.url, &shutdown).instrument(span).await
}

/// The outside world of a camera's restart loop: one run of its pipeline (until it
/// fails, ends or shutdown) and a diagnosis of a failure. GStreamer and the network in
/// the agent ([`GstOpener`]); scripted outcomes in the tests.
pub(crate) trait Opener {
    async fn run_once(&mut self, ctx: &Arc<CameraCtx>, shutdown: &CancellationToken) -> Result<(), SourceError>;
    async fn diagnose(&mut self, err: SourceError) -> SourceError;
}

/// Which client receives a camera's next run. `SharedOrGstreamer` (what `auto` gives)
/// starts with the shared client and moves to rtspsrc for the rest of the camera's run
/// once the shared client has failed [`ClientPick::FALL_BACK_AFTER`] runs in a row
/// without a frame, for a reason rtspsrc might not share: a protocol or stream error, a
/// stall, an end of stream. A camera that refuses, times out or rejects the credentials
/// or path fails the same way under either client, so those do not count.
#[derive(Debug)]
pub(crate) struct ClientPick {
    setting: RtspClient,
    strikes: u32,
    fell_back: bool,
}

impl ClientPick {
    pub(crate) const FALL_BACK_AFTER: u32 = 2;

    pub(crate) fn new(setting: RtspClient) -> Self {
        ClientPick { setting, strikes: 0, fell_back: false }
    }

    /// The client for the next run: `Gstreamer` or `Shared`.
    pub(crate) fn current(&self) -> RtspClient {
        match self.setting {
            RtspClient::SharedOrGstreamer if self.fell_back => RtspClient::Gstreamer,
            RtspClient::SharedOrGstreamer => RtspClient::Shared,
            fixed => fixed,
        }
    }

    /// Notes how a run ended (`streamed`: it delivered frames); true when this made the
    /// camera fall back to rtspsrc.
    pub(crate) fn after_run(&mut self, streamed: bool, result: &Result<(), SourceError>) -> bool {
        if self.setting != RtspClient::SharedOrGstreamer || self.fell_back {
            return false;
        }
        let shared_may_be_why = match result {
            Ok(()) => false,
            Err(SourceError::Stream { fault, .. }) => matches!(fault, Fault::Other | Fault::Corrupt),
            Err(SourceError::Stalled { .. } | SourceError::Eos { .. } | SourceError::UnsupportedCodec { .. }) => true,
            Err(SourceError::MissingElement { .. } | SourceError::Build { .. }) => false,
        };
        self.strikes = if streamed || !shared_may_be_why { 0 } else { self.strikes + 1 };
        self.fell_back = self.strikes >= Self::FALL_BACK_AFTER;
        self.fell_back
    }
}

/// The camera's real pipeline and a TCP probe of its address.
struct GstOpener<'a> {
    cam: &'a CameraConfig,
    format: FrameFormat,
    queue: Arc<FrameQueue>,
    slot: usize,
    pick: ClientPick,
}

impl Opener for GstOpener<'_> {
    async fn run_once(&mut self, ctx: &Arc<CameraCtx>, shutdown: &CancellationToken) -> Result<(), SourceError> {
        let before = ctx.stats.sampled_frames.load(Ordering::Relaxed);
        let result = self.run_client(ctx, shutdown).await;
        let streamed = ctx.stats.sampled_frames.load(Ordering::Relaxed) > before;
        if self.pick.after_run(streamed, &result) {
            let reason = result.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
            let reason = crate::config::redact_secrets_in(&reason, &self.cam.url);
            warn!(%reason, runs = ClientPick::FALL_BACK_AFTER, "the shared RTSP client cannot receive this camera; rtspsrc receives it from now on");
        }
        result
    }

    async fn diagnose(&mut self, err: SourceError) -> SourceError {
        diagnose(err, &self.cam.url).await
    }
}

impl GstOpener<'_> {
    async fn run_client(&mut self, ctx: &Arc<CameraCtx>, shutdown: &CancellationToken) -> Result<(), SourceError> {
        match self.pick.current() {
            RtspClient::Gstreamer | RtspClient::SharedOrGstreamer => {
                run_once(self.cam, ctx, self.format, &self.queue, self.slot, shutdown).await
            }
            RtspClient::Shared => {
                // On a task of its own: the client parses what the network sends, and a
                // panic in it must restart this camera, not end its task for good.
                let (cam, ctx2, queue, shutdown) =
                    (self.cam.clone(), ctx.clone(), self.queue.clone(), shutdown.clone());
                let (format, slot) = (self.format, self.slot);
                let run = tokio::spawn(
                    async move { client::run_once(&cam, &ctx2, format, &queue, slot, &shutdown).await }
                        .instrument(tracing::Span::current()),
                );
                run.await.unwrap_or_else(|e| {
                    Err(SourceError::Stream {
                        camera: ctx.id.clone(),
                        element: "rtsp".into(),
                        message: format!("the RTSP client failed: {e}"),
                        fault: Fault::Other,
                    })
                })
            }
        }
    }
}

/// `run`'s loop over any [`Opener`]: back-off doubles from `reconnect.min` to
/// `reconnect.max` (jittered ± 20 %), starts over after a run that delivered frames, and
/// jumps to `max` for a fault retrying cannot fix. The camera's state says which.
async fn restart_loop(
    opener: &mut impl Opener,
    ctx: &Arc<CameraCtx>,
    reconnect: crate::config::ReconnectPolicy,
    url: &str,
    shutdown: &CancellationToken,
) {
    let mut backoff = reconnect.min;
    loop {
        let before = ctx.stats.sampled_frames.load(Ordering::Relaxed);
        let result = opener.run_once(ctx, shutdown).await;
        if shutdown.is_cancelled() {
            break;
        }
        // A run that delivered frames was a working connection: start back-off over.
        if ctx.stats.sampled_frames.load(Ordering::Relaxed) > before {
            backoff = reconnect.min;
        }
        let err = match result {
            Ok(()) => break,
            Err(e) => e,
        };
        ctx.stats.restarts.fetch_add(1, Ordering::Relaxed);
        let err = opener.diagnose(err).await.redacted(url);
        let state = if err.retry_can_help() { CameraState::Reconnecting } else { CameraState::Failed };
        ctx.set_state(state, Some(err.to_string()));
        if err.retry_can_help() {
            warn!(error = %err, retry_in = ?backoff, "camera failed, will retry");
        } else {
            warn!(error = %err, retry_in = ?reconnect.max, "camera failed; retrying cannot help until this is fixed");
            backoff = reconnect.max;
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(backoff)) => {}
            _ = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(reconnect.max);
    }
    ctx.set_state(CameraState::Stopped, None);
    info!("camera stopped");
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

/// What a camera's once-a-second health check decides, from how long it has been quiet
/// (no encoded data), how long since the decoder put out a frame, how long this run has
/// been going and whether it has streamed yet. Pure: the bus loop applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveliness {
    Fine,
    /// No data for longer than the limit: rebuild the pipeline.
    Stalled,
    /// Data arrives but nothing decodes: a corrupt or undecodable stream.
    Undecodable,
}

pub(crate) fn liveliness(
    quiet: Duration,
    since_decoded: Duration,
    running: Duration,
    streaming: bool,
    stall: Duration,
) -> Liveliness {
    // Starting gets twice as long: RTSP setup, the first keyframe.
    let limit = if streaming { stall } else { stall * 2 };
    if quiet > limit && running > limit {
        return Liveliness::Stalled;
    }
    // The decoders mostly warn, not fail, on bad data: a silent decoder is the sign.
    if since_decoded.min(running) > limit && quiet < limit {
        return Liveliness::Undecodable;
    }
    Liveliness::Fine
}

/// One run's health, checked once a second: stalls, a silent decoder, and the switch
/// to `streaming` once this run delivers frames.
struct RunHealth {
    started: Instant,
    /// The counter is cumulative over the camera's life: this run streams once it grows.
    frames_before: u64,
    streaming: bool,
    stall: Duration,
}

impl RunHealth {
    fn start(ctx: &CameraCtx, stall: Duration) -> Self {
        ctx.touch();
        let frames_before = ctx.stats.sampled_frames.load(Ordering::Relaxed);
        RunHealth { started: Instant::now(), frames_before, streaming: false, stall }
    }

    fn check(&mut self, ctx: &CameraCtx) -> Result<(), SourceError> {
        let camera = || ctx.id.clone();
        let quiet = ctx.since_data();
        let undecoded = ctx.since_decoded();
        match liveliness(quiet, undecoded, self.started.elapsed(), self.streaming, self.stall) {
            Liveliness::Fine => {}
            Liveliness::Stalled => return Err(SourceError::Stalled { camera: camera(), seconds: quiet.as_secs() }),
            Liveliness::Undecodable => {
                return Err(SourceError::Stream {
                    camera: camera(),
                    element: "decoder".into(),
                    message: format!(
                        "data arrives but no frame has decoded for {} s",
                        undecoded.min(self.started.elapsed()).as_secs()
                    ),
                    fault: Fault::Corrupt,
                });
            }
        }
        let frames = ctx.stats.sampled_frames.load(Ordering::Relaxed);
        if !self.streaming && frames > self.frames_before {
            self.streaming = true;
            ctx.set_state(CameraState::Streaming, None);
            info!("camera streaming");
        }
        Ok(())
    }
}

/// What a bus message means for the run: `Some(Err)` ends it (an error or the end of
/// stream); warnings are logged with the URL's secrets masked.
fn on_bus_message(msg: &gst::Message, camera: &str, url: &str) -> Option<Result<(), SourceError>> {
    use gst::MessageView;
    let camera = camera.to_string();
    match msg.view() {
        MessageView::Error(err) => {
            let debug = err.debug().map(|d| d.to_string()).unwrap_or_default();
            Some(Err(SourceError::Stream {
                camera,
                element: err.src().map(|s| s.name().to_string()).unwrap_or_default(),
                fault: Fault::classify(&err.error(), &debug),
                message: match debug.lines().next() {
                    Some(d) if !d.is_empty() => format!("{} ({d})", err.error()),
                    _ => err.error().to_string(),
                },
            }))
        }
        MessageView::Eos(_) => Some(Err(SourceError::Eos { camera })),
        MessageView::Warning(w) => {
            let warning = crate::config::redact_secrets_in(&w.error().to_string(), url);
            warn!(%warning, "GStreamer warning");
            None
        }
        _ => None,
    }
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
    let mut health = RunHealth::start(ctx, stall);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => health.check(ctx)?,
            msg = messages.next() => {
                let Some(msg) = msg else { return Err(SourceError::build(&camera, "bus closed")) };
                if let Some(end) = on_bus_message(&msg, &camera, url) {
                    return end;
                }
            }
        }
    }
}

/// Initialises GStreamer once per process.
pub fn init() -> Result<(), SourceError> {
    gst::init().map_err(|e| SourceError::build("-", e))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::config::ReconnectPolicy;

    /// One scripted run: whether it delivered frames, and how it ended.
    struct Run {
        frames: bool,
        result: Result<(), SourceError>,
    }

    /// Plays `runs` in order, noting when each started; cancels `shutdown` after the last.
    struct Script {
        runs: VecDeque<Run>,
        started: Vec<tokio::time::Instant>,
        states: Vec<CameraState>,
    }

    impl Opener for Script {
        async fn run_once(&mut self, ctx: &Arc<CameraCtx>, shutdown: &CancellationToken) -> Result<(), SourceError> {
            self.started.push(tokio::time::Instant::now());
            self.states.push(ctx.state().0);
            let run = self.runs.pop_front().expect("a scripted run");
            if run.frames {
                ctx.stats.sampled_frames.fetch_add(1, Ordering::Relaxed);
            }
            if self.runs.is_empty() {
                shutdown.cancel();
            }
            run.result
        }

        async fn diagnose(&mut self, err: SourceError) -> SourceError {
            err
        }
    }

    fn stalled() -> Run {
        Run { frames: false, result: Err(SourceError::Stalled { camera: "cam".into(), seconds: 10 }) }
    }

    fn fault(fault: Fault) -> Run {
        let e = SourceError::Stream { camera: "cam".into(), element: "src".into(), message: "m".into(), fault };
        Run { frames: false, result: Err(e) }
    }

    /// Seconds between consecutive runs (virtual time: the clock is paused).
    async fn waits(runs: Vec<Run>) -> (Vec<f64>, Vec<CameraState>, Arc<CameraCtx>) {
        let ctx = Arc::new(CameraCtx::new("cam", 0.5));
        let mut script = Script { runs: runs.into(), started: Vec::new(), states: Vec::new() };
        let policy = ReconnectPolicy { min: Duration::from_secs(1), max: Duration::from_secs(30) };
        restart_loop(&mut script, &ctx, policy, "rtsp://cam/", &CancellationToken::new()).await;
        let waits = script.started.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        (waits, script.states, ctx)
    }

    fn about(got: f64, want: f64) -> bool {
        (want * 0.8 - 1e-3..=want * 1.2 + 1e-3).contains(&got)
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_doubles_up_to_the_maximum_and_starts_over_after_a_run_that_streamed() {
        let mut runs: Vec<Run> = (0..7).map(|_| stalled()).collect();
        runs.push(Run { frames: true, result: Err(SourceError::Eos { camera: "cam".into() }) });
        runs.push(stalled());
        runs.push(stalled());
        let (waits, _, ctx) = waits(runs).await;
        let want = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 1.0, 2.0];
        assert_eq!(waits.len(), want.len(), "{waits:?}");
        for (got, want) in waits.iter().zip(want) {
            assert!(about(*got, want), "waited {got} s, wanted {want} s ± 20 %: {waits:?}");
        }
        // The last run ended in shutdown, which is no restart.
        assert_eq!(ctx.stats.restarts.load(Ordering::Relaxed), 9);
        assert_eq!(ctx.state().0, CameraState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fault_retrying_cannot_fix_waits_the_maximum_and_marks_the_camera_failed() {
        let (waits, states, _) = waits(vec![fault(Fault::Unauthorized), fault(Fault::Timeout), stalled()]).await;
        assert!(about(waits[0], 30.0), "{waits:?}");
        // Back-off continues from the maximum: a wrong password fixed later is retried slowly.
        assert!(about(waits[1], 30.0), "{waits:?}");
        assert_eq!(states, vec![CameraState::Starting, CameraState::Failed, CameraState::Reconnecting]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_the_back_off_stops_at_once() {
        let ctx = Arc::new(CameraCtx::new("cam", 0.5));
        let shutdown = CancellationToken::new();
        let mut script = Script { runs: vec![stalled(), stalled()].into(), started: Vec::new(), states: Vec::new() };
        let policy = ReconnectPolicy { min: Duration::from_secs(60), max: Duration::from_secs(60) };
        let stop = shutdown.clone();
        let t0 = tokio::time::Instant::now();
        tokio::join!(restart_loop(&mut script, &ctx, policy, "rtsp://cam/", &shutdown), async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.cancel();
        });
        assert_eq!(script.started.len(), 1, "no second run after shutdown");
        assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
        assert_eq!(ctx.state().0, CameraState::Stopped);
    }

    #[test]
    fn auto_falls_back_to_rtspsrc_after_two_frameless_runs_the_shared_client_may_have_caused() {
        let err = |f: Fault| -> Result<(), SourceError> {
            Err(SourceError::Stream { camera: "c".into(), element: "rtsp".into(), message: "m".into(), fault: f })
        };
        let stalled = || -> Result<(), SourceError> { Err(SourceError::Stalled { camera: "c".into(), seconds: 20 }) };
        let mut pick = ClientPick::new(RtspClient::SharedOrGstreamer);
        assert_eq!(pick.current(), RtspClient::Shared);
        // The camera's own faults never count, however often.
        for f in [Fault::Refused, Fault::Timeout, Fault::Unauthorized, Fault::NotFound, Fault::Forbidden] {
            assert!(!pick.after_run(false, &err(f)) && !pick.after_run(false, &err(f)));
        }
        // Strikes must be in a row: a run that streamed, or a camera fault, starts over.
        assert!(!pick.after_run(false, &err(Fault::Other)));
        assert!(!pick.after_run(true, &err(Fault::Other)), "it streamed");
        assert!(!pick.after_run(false, &stalled()));
        assert!(!pick.after_run(false, &err(Fault::Refused)));
        assert!(!pick.after_run(false, &err(Fault::Corrupt)));
        assert_eq!(pick.current(), RtspClient::Shared);
        assert!(pick.after_run(false, &stalled()), "the second in a row falls back");
        assert_eq!(pick.current(), RtspClient::Gstreamer);
        // For good, and said once.
        assert!(!pick.after_run(true, &Ok(())) && !pick.after_run(false, &stalled()));
        assert_eq!(pick.current(), RtspClient::Gstreamer);

        // A client named in the config is kept whatever happens.
        for fixed in [RtspClient::Shared, RtspClient::Gstreamer] {
            let mut pick = ClientPick::new(fixed);
            for _ in 0..5 {
                assert!(!pick.after_run(false, &stalled()));
            }
            assert_eq!(pick.current(), fixed);
        }
    }

    #[test]
    fn a_quiet_camera_stalls_after_the_limit_doubled_while_starting() {
        let s = Duration::from_secs;
        let stall = s(10);
        // Starting: 20 s of quiet allowed.
        assert_eq!(liveliness(s(15), s(15), s(15), false, stall), Liveliness::Fine);
        assert_eq!(liveliness(s(21), s(21), s(21), false, stall), Liveliness::Stalled);
        // Streaming: 10 s.
        assert_eq!(liveliness(s(11), s(11), s(300), true, stall), Liveliness::Stalled);
        assert_eq!(liveliness(s(9), s(9), s(300), true, stall), Liveliness::Fine);
        // A run younger than the limit is never stalled, whatever the old counters say.
        assert_eq!(liveliness(s(500), s(500), s(5), true, stall), Liveliness::Fine);
    }

    #[test]
    fn data_without_decoded_frames_is_an_undecodable_stream() {
        let s = Duration::from_secs;
        assert_eq!(liveliness(s(1), s(25), s(25), false, s(10)), Liveliness::Undecodable);
        assert_eq!(liveliness(s(1), s(11), s(300), true, s(10)), Liveliness::Undecodable);
        // Counted from this run's start: the decoder's silence before it does not count.
        assert_eq!(liveliness(s(1), s(500), s(5), false, s(10)), Liveliness::Fine);
    }

    #[test]
    fn faults_are_classified_from_the_error_and_its_debug_text() {
        use gst::glib;
        let e = |kind: gst::ResourceError, text: &str| glib::Error::new(kind, text);
        let cases = [
            (e(gst::ResourceError::NotAuthorized, "Unauthorized"), "", Fault::Unauthorized),
            (e(gst::ResourceError::Read, "Unhandled error"), "rtspsrc: 401 Unauthorized", Fault::Unauthorized),
            (e(gst::ResourceError::Read, "Forbidden"), "", Fault::Forbidden),
            (e(gst::ResourceError::NotFound, "Not Found"), "", Fault::NotFound),
            (e(gst::ResourceError::OpenRead, "Could not open resource"), "Connection refused", Fault::Refused),
            (e(gst::ResourceError::Read, "Could not read"), "operation timed out", Fault::Timeout),
            (e(gst::ResourceError::Failed, "Internal data stream error"), "", Fault::Other),
        ];
        for (err, debug, want) in cases {
            assert_eq!(Fault::classify(&err, debug), want, "{err} / {debug}");
        }
        let decode = glib::Error::new(gst::StreamError::Decode, "No valid frames decoded");
        assert_eq!(Fault::classify(&decode, ""), Fault::Corrupt);
        assert!(!Fault::Unauthorized.retry_can_help() && !Fault::NotFound.retry_can_help());
        assert!(Fault::Timeout.retry_can_help() && Fault::Refused.retry_can_help() && Fault::Corrupt.retry_can_help());
    }
}
