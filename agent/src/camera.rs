//! A camera as every stage knows it at run time: its identity and thresholds, counters,
//! state, the frames it hands on, and the two flags that flow back against the flow
//! (live tracks, written by the events thread and read by the motion gate; `watch`,
//! written by the console and read by inference). A leaf of the flow: the stages import
//! it, it imports none of them but the tracker's score policy.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// A camera is watched while its frame was asked for this recently.
pub const WATCH_WINDOW: Duration = Duration::from_secs(10);
fn process_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// When a camera's live frame was last asked for. Lives on `CameraCtx` so the inference
/// worker and the event stage can check it with one atomic load, on a monotonic clock
/// (a wall-clock step must not leave a camera watched for hours).
#[derive(Debug, Default)]
pub struct Watch {
    /// Milliseconds since the process epoch, plus one (0: never asked).
    pub(crate) last_ms: AtomicU64,
    /// The hub holds frames of this camera (to release them once nobody watches).
    pub(crate) held: AtomicBool,
}

impl Watch {
    /// Someone asked for the camera's live frame.
    pub fn touch(&self) {
        let ms = process_epoch().elapsed().as_millis() as u64 + 1;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    pub fn is_watched(&self) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        last != 0
            && (process_epoch().elapsed().as_millis() as u64 + 1).saturating_sub(last) < WATCH_WINDOW.as_millis() as u64
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
    /// Keyframes due for analysis but not decoded: the camera's previous frame still
    /// waited for the model, and this one would only have replaced it.
    pub undecoded_frames: AtomicU64,
    /// Sampled frames the motion gate kept from the model (nothing moved).
    pub motion_skipped_frames: AtomicU64,
    /// Keyframes due for analysis but not decoded: the compressed stream showed no
    /// activity since the last analysed frame (`source::activity`).
    pub activity_skipped_frames: AtomicU64,
    /// Decoded frames whose picture had moved although the compressed stream looked quiet
    /// (found at a keepalive or while tracking; each lowers the camera's threshold).
    pub activity_misses: AtomicU64,
    /// 1 while the camera skips static keyframes before decoding (its activity gate is
    /// calibrated and informative), else 0.
    pub activity_gate_active: AtomicU64,
    /// Frames the model analysed.
    pub analysed_frames: AtomicU64,
    /// Messages handed to the publisher.
    pub messages: AtomicU64,
    /// Pipeline (re)starts after a failure.
    pub restarts: AtomicU64,
}

/// The tracker's floor as a fraction of the camera's `min_score`: 0.5 → 0.3, ByteTrack's
/// pair of thresholds.
pub const LOW_SCORE_FRACTION: f32 = 0.6;

/// A camera's two score thresholds, derived once from its `min_score`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreThresholds {
    /// Detections at or above this start tracks and are reported (`min_score`).
    pub report: f32,
    /// Detections from here to `report` reach the tracker only: they may continue a
    /// track (partial occlusion) but never start one or appear in a message.
    pub track_floor: f32,
}

impl ScoreThresholds {
    pub fn new(min_score: f32) -> Self {
        Self { report: min_score, track_floor: min_score * LOW_SCORE_FRACTION }
    }
}

/// What the rest of the agent knows about a camera at run time.
#[derive(Debug)]
pub struct CameraCtx {
    pub id: String,
    /// What is reported and what only the tracker sees.
    pub scores: ScoreThresholds,
    pub stats: CameraStats,
    native_size: AtomicU64,
    /// Milliseconds since `epoch` at which the last encoded frame arrived.
    last_data_ms: AtomicU64,
    /// Milliseconds since `epoch` at which the decoder last put out a frame (or a
    /// keyframe was skipped by choice while it owed none).
    last_decoded_ms: AtomicU64,
    /// A frame was handed to the decoder and nothing came out yet.
    decode_owed: std::sync::atomic::AtomicBool,
    epoch: Instant,
    state: Mutex<(CameraState, Option<String>)>,
    /// Capture time of the last sampled frame, ms since the Unix epoch (0: none yet).
    last_frame_ms: AtomicU64,
    /// Tracks (tentative ones included) the event stage holds for this camera: while
    /// any, the motion gate lets every sampled frame through.
    pub live_tracks: std::sync::atomic::AtomicUsize,
    /// Whether someone is looking at this camera's live frame in the console (written by
    /// the console, read by inference to keep the frame's decoded buffer).
    pub watch: Watch,
    /// How its current pipeline receives and decodes it (none before the first set-up).
    stream: Mutex<Option<StreamSetup>>,
}

/// How a camera's stream is received and decoded, as its pipeline last set it up:
/// reported in its status, `camera.list`, `/metrics` and the console, so that an `auto`
/// choice (client, decoder) and a fall-back to rtspsrc are visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSetup {
    /// The RTSP client, in `rtsp_client`'s words: "gstreamer" (rtspsrc) or "shared".
    pub rtsp_client: &'static str,
    /// "H264", "H265" or "JPEG".
    pub codec: &'static str,
    /// The decoder element (e.g. "avdec_h264", or a hardware one).
    pub decoder: String,
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
            scores: ScoreThresholds::new(min_score),
            stats: CameraStats::default(),
            native_size: AtomicU64::new(0),
            last_data_ms: AtomicU64::new(0),
            last_decoded_ms: AtomicU64::new(0),
            decode_owed: std::sync::atomic::AtomicBool::new(false),
            epoch: Instant::now(),
            state: Mutex::new((CameraState::Starting, None)),
            last_frame_ms: AtomicU64::new(0),
            live_tracks: std::sync::atomic::AtomicUsize::new(0),
            watch: Watch::default(),
            stream: Mutex::new(None),
        }
    }

    /// How the camera's stream is received and decoded, once set up.
    pub fn stream(&self) -> Option<StreamSetup> {
        self.stream.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_stream(&self, setup: StreamSetup) {
        *self.stream.lock().unwrap_or_else(|e| e.into_inner()) = Some(setup);
    }

    /// The camera's state and, when it failed, why.
    pub fn state(&self) -> (CameraState, Option<String>) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_last_frame(&self, t: SystemTime) {
        let ms = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_frame_ms.store(ms, Ordering::Relaxed);
    }

    /// Capture time of the last frame handed to the model.
    pub fn last_frame(&self) -> Option<SystemTime> {
        let ms = self.last_frame_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    pub(crate) fn set_native_size(&self, w: u32, h: u32) {
        self.native_size.store(((w as u64) << 32) | h as u64, Ordering::Relaxed);
    }

    /// The camera's frame size before scaling (0 × 0 until known).
    pub fn native_size(&self) -> (u32, u32) {
        let v = self.native_size.load(Ordering::Relaxed);
        ((v >> 32) as u32, v as u32)
    }

    pub(crate) fn touch(&self) {
        self.last_data_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn since_data(&self) -> Duration {
        let last = Duration::from_millis(self.last_data_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub(crate) fn touch_decoded(&self) {
        self.decode_owed.store(false, Ordering::Relaxed);
        self.last_decoded_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A frame went to the decoder: until it puts one out, the decoder owes a frame.
    pub(crate) fn handed_to_decoder(&self) {
        self.decode_owed.store(true, Ordering::Relaxed);
    }

    /// A keyframe was not decoded by choice (nothing moved): the decoder is as healthy as
    /// its last answer, so it counts as fresh unless it still owes a frame (a corrupt
    /// stream is still caught at the next keyframe it is given).
    pub(crate) fn skipped_by_choice(&self) {
        if !self.decode_owed.load(Ordering::Relaxed) {
            self.last_decoded_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn since_decoded(&self) -> Duration {
        let last = Duration::from_millis(self.last_decoded_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub(crate) fn set_state(&self, state: CameraState, reason: Option<String>) {
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
    /// When the pipeline handed it over (stage timings, `crate::latency`).
    pub sampled_at: std::time::Instant,
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
        sampled_at: std::time::Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_camera_is_watched_only_after_its_frame_was_asked_for() {
        let w = Watch::default();
        assert!(!w.is_watched());
        w.touch();
        assert!(w.is_watched());
    }
}
