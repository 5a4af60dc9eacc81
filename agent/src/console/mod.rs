//! The local console for installers: what each camera sees, its detections, zones,
//! lines and health, served on the telemetry listener (`console::http`, `docs/CONSOLE.md`).
//!
//! [`ConsoleHub`] keeps per camera only bounded, recent things:
//!
//! - the latest two analysed frames **while the camera is watched** (its frame was asked
//!   for within [`crate::camera::WATCH_WINDOW`]): a reference to the decoded buffer (no copy) and the
//!   boxes with track ids. The JPEG is encoded lazily, once per frame, by the first
//!   request for it (`event::snapshot::encode`, the agent's one encoder); boxes, zones and
//!   lines are drawn by the browser. While nobody watches, the hot path costs a clock read
//!   and a few atomic loads per analysed frame, and nothing is encoded or held.
//! - the last [`MAX_EVENTS`] event messages (their JSON, as appended to the outbox), the
//!   snapshots they reference (at most [`MAX_SNAPSHOTS`] and [`MAX_SNAPSHOT_BYTES`]), and
//!   the counts messages of the last hour (at most [`MAX_COUNTS`]).
//!
//! Wiring (a handful of calls, see `agent.rs`): [`ConsoleHub::add_camera`] /
//! [`ConsoleHub::remove_camera`] as cameras come and go, [`ConsoleHub::on_frame`] after a
//! camera's event stage saw a frame, [`ConsoleHub::on_message`] for what was appended to
//! the outbox, and `infer::run_worker` keeps a frame's decoded buffer while
//! `CameraCtx::watch` says the camera is watched.

pub mod http;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::camera::{CameraCtx, Original};
use crate::event::ModelOut;
use crate::event::snapshot::{self, Jpeg};
use crate::infer::Analysed;
use crate::rules::RulesConfig;
use crate::track::Track;

/// Event messages kept per camera.
pub const MAX_EVENTS: usize = 50;
/// Snapshots (of kept events) kept per camera, and their total size.
pub const MAX_SNAPSHOTS: usize = 16;
pub const MAX_SNAPSHOT_BYTES: usize = 512 << 10;
/// Counts messages kept per camera (and none older than an hour): an hour at 10-s intervals.
pub const MAX_COUNTS: usize = 360;
pub const COUNTS_WINDOW: Duration = Duration::from_secs(3600);
/// Setting changes kept per camera for its page.
pub const MAX_CHANGES: usize = 20;
/// Live frames are encoded no larger than this (longest side) at this quality.
pub const FRAME_MAX_SIDE: u32 = 960;
pub const FRAME_QUALITY: u8 = 75;
/// Analysed frames held per watched camera: the latest and the one before, so a browser
/// that read a frame's boxes can still fetch that frame's JPEG when the next one arrived.
const FRAMES_HELD: usize = 2;

/// `x` with at most 4 decimals, as in the messages (f32s print their binary noise).
fn r4(x: f32) -> f64 {
    (f64::from(x) * 1e4).round() / 1e4
}

/// A zone as the browser draws it (normalised coordinates).
#[derive(Debug, Clone, Serialize)]
pub struct ZoneView {
    pub name: String,
    pub polygon: Vec<[f64; 2]>,
}

/// A counting line as the browser draws it.
#[derive(Debug, Clone, Serialize)]
pub struct LineView {
    pub name: String,
    pub points: [[f64; 2]; 2],
    /// `[0]` is from the side where (B−A)×(P−A) > 0 to the other.
    pub directions: [String; 2],
}

/// What the console shows about a camera besides its live state.
#[derive(Debug, Clone, Serialize)]
pub struct CameraInfo {
    pub model: ModelOut,
    pub labels: Vec<String>,
    /// `bottom_center` or `center`: the point of a box that zones and lines test.
    pub reference_point: &'static str,
    pub zones: Vec<ZoneView>,
    pub lines: Vec<LineView>,
}

impl CameraInfo {
    pub fn new(model: ModelOut, labels: &[String], rules: &RulesConfig) -> Self {
        Self {
            model,
            labels: labels.to_vec(),
            reference_point: match rules.reference {
                crate::rules::ReferencePoint::BottomCenter => "bottom_center",
                crate::rules::ReferencePoint::Center => "center",
            },
            zones: rules
                .zones
                .iter()
                .map(|z| ZoneView {
                    name: z.name.clone(),
                    polygon: z.polygon.iter().map(|p| [r4(p.x), r4(p.y)]).collect(),
                })
                .collect(),
            lines: rules
                .lines
                .iter()
                .map(|l| LineView {
                    name: l.name.clone(),
                    points: [[r4(l.a.x), r4(l.a.y)], [r4(l.b.x), r4(l.b.y)]],
                    directions: l.directions.clone(),
                })
                .collect(),
        }
    }
}

/// One box of a live frame.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BoxView {
    pub class: String,
    pub class_id: u32,
    pub score: f64,
    /// The confirmed track this detection continues, if any.
    pub track_id: Option<u64>,
    /// Normalised to the frame.
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// An analysed frame of a watched camera.
pub struct LiveFrame {
    pub seq: u64,
    pub captured: SystemTime,
    pub boxes: Vec<BoxView>,
    original: Original,
    /// Encoded by the first request for it; `None` if encoding failed.
    jpeg: OnceLock<Option<Arc<Jpeg>>>,
}

impl LiveFrame {
    /// The frame as a JPEG, encoded on first use (blocking: call it off the async workers).
    pub fn jpeg(&self, hub: &ConsoleHub) -> Option<Arc<Jpeg>> {
        self.jpeg
            .get_or_init(|| match snapshot::encode(&self.original, FRAME_MAX_SIDE, FRAME_QUALITY) {
                Ok(j) => {
                    hub.frames_encoded.fetch_add(1, Ordering::Relaxed);
                    Some(Arc::new(j))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "console: cannot encode a live frame");
                    None
                }
            })
            .clone()
    }
}

/// What the outbox received for a camera, as the console keeps it.
pub enum MessageKind {
    /// An event message (`lookout.event/1`); its JSON follows.
    Event,
    /// A counts message (`lookout.counts/1`); its JSON follows.
    Counts,
    /// A snapshot: the id events reference it by (`snapshot.id`), and the JPEG.
    Snapshot { id: String, jpeg: Arc<Jpeg> },
    /// Not kept (detections).
    Other,
}

impl MessageKind {
    /// What `out` is to the console, before it is turned into a payload.
    pub fn of(out: &crate::event::stage::StageMessage) -> Self {
        use crate::event::stage::StageMessage;
        match out {
            StageMessage::Event(_) => MessageKind::Event,
            StageMessage::Counts(_) => MessageKind::Counts,
            StageMessage::Snapshot { topic, jpeg } => MessageKind::Snapshot {
                id: topic.rsplit('/').next().unwrap_or_default().to_string(),
                jpeg: jpeg.clone(),
            },
        }
    }

    /// Whether the console keeps the message's JSON payload.
    pub fn wants_payload(&self) -> bool {
        matches!(self, MessageKind::Event | MessageKind::Counts)
    }
}

#[derive(Default)]
struct Recent {
    events: VecDeque<Arc<[u8]>>,
    snapshots: VecDeque<(String, Arc<Jpeg>)>,
    snapshot_bytes: usize,
    counts: VecDeque<(Instant, Arc<[u8]>)>,
}

/// Frames per second from counter deltas between reads at least [`RATE_WINDOW`] apart.
struct Rate {
    at: Instant,
    encoded: u64,
    analysed: u64,
    fps: (f64, f64),
}

const RATE_WINDOW: Duration = Duration::from_secs(1);

/// One camera's console state.
pub struct CameraConsole {
    pub id: String,
    info: RwLock<CameraInfo>,
    /// Its `zones` and `lines` as configured (the editor's starting point).
    rules_source: RwLock<serde_json::Value>,
    /// The latest changes of its settings, oldest first (at most [`MAX_CHANGES`]).
    changes: Mutex<VecDeque<serde_json::Value>>,
    frames: Mutex<VecDeque<Arc<LiveFrame>>>,
    recent: Mutex<Recent>,
    rate: Mutex<Rate>,
    next_seq: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CameraConsole {
    /// Its model, zones and lines as last set.
    pub fn info(&self) -> CameraInfo {
        self.info.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Its `zones` and `lines` as configured: labels and group names, not class ids.
    pub fn rules_source(&self) -> serde_json::Value {
        self.rules_source.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Its latest setting changes, newest first.
    pub fn changes(&self) -> Vec<serde_json::Value> {
        lock(&self.changes).iter().rev().cloned().collect()
    }

    /// The latest frame, or the held one numbered `seq`.
    pub fn frame(&self, seq: Option<u64>) -> Option<Arc<LiveFrame>> {
        let frames = lock(&self.frames);
        match seq {
            Some(s) => frames.iter().find(|f| f.seq == s).cloned(),
            None => frames.back().cloned(),
        }
    }

    /// The kept event messages, newest first, as one JSON array.
    pub fn events_json(&self) -> Vec<u8> {
        let r = lock(&self.recent);
        json_array(r.events.iter().rev().map(|e| &e[..]))
    }

    /// The counts messages of the last hour, oldest first, as one JSON array.
    pub fn counts_json(&self) -> Vec<u8> {
        let mut r = lock(&self.recent);
        expire_counts(&mut r.counts, Instant::now());
        json_array(r.counts.iter().map(|(_, c)| &c[..]))
    }

    pub fn snapshot(&self, id: &str) -> Option<Arc<Jpeg>> {
        lock(&self.recent).snapshots.iter().find(|(i, _)| i == id).map(|(_, j)| j.clone())
    }

    /// Input and analysed frames per second of `ctx`, over the last few seconds.
    pub fn fps(&self, ctx: &CameraCtx) -> (f64, f64) {
        let mut r = lock(&self.rate);
        let now = Instant::now();
        let (e, a) =
            (ctx.stats.encoded_frames.load(Ordering::Relaxed), ctx.stats.analysed_frames.load(Ordering::Relaxed));
        let secs = now.duration_since(r.at).as_secs_f64();
        if secs >= RATE_WINDOW.as_secs_f64() {
            r.fps = (e.saturating_sub(r.encoded) as f64 / secs, a.saturating_sub(r.analysed) as f64 / secs);
            (r.at, r.encoded, r.analysed) = (now, e, a);
        }
        r.fps
    }
}

fn expire_counts(counts: &mut VecDeque<(Instant, Arc<[u8]>)>, now: Instant) {
    while counts.front().is_some_and(|(t, _)| now.duration_since(*t) > COUNTS_WINDOW) || counts.len() > MAX_COUNTS {
        counts.pop_front();
    }
}

/// `[a,b,…]` from JSON documents, without parsing them again.
fn json_array<'a>(items: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    out
}

/// Everything the console shows that the rest of the agent does not keep anyway.
pub struct ConsoleHub {
    cameras: RwLock<BTreeMap<String, Arc<CameraConsole>>>,
    /// The loaded models and the execution provider each runs on.
    models: RwLock<Vec<(ModelOut, &'static str)>>,
    /// When the agent started.
    pub started: SystemTime,
    /// Live frames encoded for the console (`lookout_console_frames_encoded_total`).
    pub frames_encoded: AtomicU64,
}

impl Default for ConsoleHub {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsoleHub {
    pub fn new() -> Self {
        Self {
            cameras: RwLock::default(),
            models: RwLock::default(),
            started: SystemTime::now(),
            frames_encoded: AtomicU64::new(0),
        }
    }

    /// The models loaded (for the agent page); call again when they change.
    pub fn set_models(&self, models: Vec<(ModelOut, &'static str)>) {
        *self.models.write().unwrap_or_else(|e| e.into_inner()) = models;
    }

    pub fn models(&self) -> Vec<(ModelOut, &'static str)> {
        self.models.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A camera appears (at start or at run time), or its model, zones or lines changed
    /// (camera update, model swap): then what the console kept of it stays.
    pub fn add_camera(&self, id: &str, info: CameraInfo) {
        let mut cameras = self.cameras.write().unwrap_or_else(|e| e.into_inner());
        if let Some(cam) = cameras.get(id) {
            *cam.info.write().unwrap_or_else(|e| e.into_inner()) = info;
            return;
        }
        let cam = CameraConsole {
            id: id.to_string(),
            info: RwLock::new(info),
            rules_source: RwLock::new(serde_json::json!({ "zones": [], "lines": [] })),
            changes: Mutex::new(VecDeque::new()),
            frames: Mutex::new(VecDeque::new()),
            recent: Mutex::new(Recent::default()),
            rate: Mutex::new(Rate { at: Instant::now(), encoded: 0, analysed: 0, fps: (0.0, 0.0) }),
            next_seq: AtomicU64::new(1),
        };
        cameras.insert(id.to_string(), Arc::new(cam));
    }

    /// The camera's `zones` and `lines` as configured (see [`CameraConsole::rules_source`]).
    pub fn set_rules_source(&self, id: &str, rules: serde_json::Value) {
        if let Some(cam) = self.camera(id) {
            *cam.rules_source.write().unwrap_or_else(|e| e.into_inner()) = rules;
        }
    }

    /// A change of the camera's settings (who, when, what happened), for its page.
    pub fn record_change(&self, id: &str, change: serde_json::Value) {
        if let Some(cam) = self.camera(id) {
            let mut c = lock(&cam.changes);
            c.push_back(change);
            while c.len() > MAX_CHANGES {
                c.pop_front();
            }
        }
    }

    /// A camera is gone: what the console kept of it is released.
    pub fn remove_camera(&self, id: &str) {
        self.cameras.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    pub fn camera(&self, id: &str) -> Option<Arc<CameraConsole>> {
        self.cameras.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// After the camera's event stage saw `a` (`tracks`: its confirmed tracks now). Keeps
    /// the frame only while the camera is watched; otherwise two atomic loads.
    pub fn on_frame<'t>(&self, a: &Analysed, tracks: impl Iterator<Item = &'t Track>) {
        let watch = &a.camera.watch;
        if !watch.is_watched() {
            // A plain load first: the common case (never watched) stays a read.
            if watch.held.load(Ordering::Relaxed)
                && watch.held.swap(false, Ordering::Relaxed)
                && let Some(cam) = self.camera(&a.camera.id)
            {
                lock(&cam.frames).clear();
            }
            return;
        }
        let (Some(original), Some(cam)) = (&a.original, self.camera(&a.camera.id)) else { return };
        let t = crate::event::stage::secs(a.captured);
        let tracks: Vec<&Track> = tracks.filter(|tr| tr.last_seen == t).collect();
        let boxes = a
            .detections
            .iter()
            .filter_map(|d| {
                let track_id = tracks.iter().find(|tr| tr.bbox == d.bbox && tr.class_id == d.class_id).map(|tr| tr.id);
                (d.score >= a.camera.scores.report || track_id.is_some()).then(|| BoxView {
                    class: a
                        .labels
                        .get(d.class_id as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("class_{}", d.class_id)),
                    class_id: d.class_id,
                    score: r4(d.score),
                    track_id,
                    x: r4(d.bbox.x),
                    y: r4(d.bbox.y),
                    w: r4(d.bbox.w),
                    h: r4(d.bbox.h),
                })
            })
            .collect();
        let frame = LiveFrame {
            seq: cam.next_seq.fetch_add(1, Ordering::Relaxed),
            captured: a.captured,
            boxes,
            original: original.clone(),
            jpeg: OnceLock::new(),
        };
        let mut frames = lock(&cam.frames);
        frames.push_back(Arc::new(frame));
        while frames.len() > FRAMES_HELD {
            frames.pop_front();
        }
        watch.held.store(true, Ordering::Relaxed);
    }

    /// A message of `camera` was appended to the outbox: `payload` is its JSON when
    /// [`MessageKind::wants_payload`].
    pub fn on_message(&self, camera: &str, kind: MessageKind, payload: Option<Vec<u8>>) {
        let Some(cam) = self.camera(camera) else { return };
        let mut r = lock(&cam.recent);
        match (kind, payload) {
            (MessageKind::Event, Some(p)) => {
                r.events.push_back(p.into());
                while r.events.len() > MAX_EVENTS {
                    r.events.pop_front();
                }
            }
            (MessageKind::Counts, Some(p)) => {
                r.counts.push_back((Instant::now(), p.into()));
                expire_counts(&mut r.counts, Instant::now());
            }
            (MessageKind::Snapshot { id, jpeg }, _) => {
                r.snapshot_bytes += jpeg.bytes.len();
                r.snapshots.push_back((id, jpeg));
                while r.snapshots.len() > MAX_SNAPSHOTS
                    || (r.snapshot_bytes > MAX_SNAPSHOT_BYTES && r.snapshots.len() > 1)
                {
                    if let Some((_, j)) = r.snapshots.pop_front() {
                        r.snapshot_bytes -= j.bytes.len();
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
