//! Messages the agent publishes: their types, topics and JSON encoding.
//!
//! The schema is documented in `docs/EVENTS.md`; each message names its schema and
//! version in `schema`, and a change that could break a consumer gets a new version.

use std::time::SystemTime;

pub mod snapshot;
pub mod stage;
pub mod thread;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::camera::StreamSetup;
use crate::infer::Analysed;
use crate::infer::detection::BBox;

/// `schema` of the per-frame detections message.
pub const DETECTIONS_SCHEMA: &str = "lookout.detections/1";

/// Topic root for one agent: `lookout/v1/{site}/{agent}`.
#[derive(Debug, Clone)]
pub struct Topics {
    root: String,
}

impl Topics {
    pub fn new(site: &str, agent: &str) -> Self {
        Self { root: format!("lookout/v1/{site}/{agent}") }
    }

    /// Commands to this agent: `.../commands/{name}` (subscription filter).
    pub fn commands(&self) -> String {
        format!("{}/commands/+", self.root)
    }

    /// The command name of a topic under [`commands`](Self::commands), if it is one.
    pub fn command_name<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic.strip_prefix(self.root.as_str())?.strip_prefix("/commands/")
    }

    pub fn reply(&self, request_id: &str) -> String {
        format!("{}/replies/{request_id}", self.root)
    }

    pub fn status(&self) -> String {
        format!("{}/status", self.root)
    }

    pub fn camera_status(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/status", self.root)
    }

    pub fn delivery(&self) -> String {
        format!("{}/delivery", self.root)
    }

    pub fn detections(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/detections", self.root)
    }

    /// Every camera's detections (for subscribers).
    pub fn all_detections(&self) -> String {
        format!("{}/cameras/+/detections", self.root)
    }

    /// Everything every camera publishes (for subscribers).
    pub fn all_cameras(&self) -> String {
        format!("{}/cameras/#", self.root)
    }

    pub fn events(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/events", self.root)
    }

    /// The site's retained `lookout.site/1` (published by its leader): one level above
    /// every agent's root.
    pub fn site(&self) -> String {
        let site = self.root.rsplit_once('/').map_or(self.root.as_str(), |(s, _)| s);
        format!("{site}/site")
    }

    pub fn counts(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/counts", self.root)
    }

    /// A snapshot's topic: named by the id of the event that references it.
    pub fn snapshot(&self, camera: &str, event_id: &str) -> String {
        format!("{}/cameras/{camera}/snapshots/{event_id}", self.root)
    }
}

/// `lookout.detections/1`: what one analysed frame showed.
#[derive(Debug, Serialize)]
pub struct DetectionsMessage<'a> {
    pub schema: &'static str,
    /// UUIDv7, unique per message: consumers de-duplicate re-deliveries by it.
    pub id: String,
    /// Per-agent sequence number, never reused, also across restarts.
    pub seq: u64,
    pub site: &'a str,
    pub agent: &'a str,
    pub camera: &'a str,
    /// Capture time, RFC 3339 UTC with milliseconds.
    pub ts: String,
    pub frame: FrameSize,
    pub model: ModelRef<'a>,
    pub detections: Vec<DetectionOut<'a>>,
}

#[derive(Debug, Serialize)]
pub struct FrameSize {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Serialize)]
pub struct ModelRef<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// Of the model file: which exact weights produced this.
    pub sha256: &'a str,
}

#[derive(Debug, Serialize)]
pub struct DetectionOut<'a> {
    pub class: &'a str,
    pub class_id: u32,
    pub score: f64,
    pub bbox: BBoxOut,
}

/// Normalised to [0, 1] of the frame, origin top-left, rounded to 5 decimals (a tenth
/// of a pixel on a 4K frame).
#[derive(Debug, Clone, Serialize)]
pub struct BBoxOut {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

pub(crate) fn round(v: f32, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (v as f64 * m).round() / m
}

impl From<BBox> for BBoxOut {
    fn from(b: BBox) -> Self {
        Self { x: round(b.x, 5), y: round(b.y, 5), w: round(b.w, 5), h: round(b.h, 5) }
    }
}

/// The detections message for an analysed frame, numbered `seq`.
pub fn detections_message(a: &Analysed, site: &str, agent: &str, seq: u64) -> Vec<u8> {
    let msg = DetectionsMessage {
        schema: DETECTIONS_SCHEMA,
        id: new_id(),
        seq,
        site,
        agent,
        camera: &a.camera.id,
        ts: rfc3339_millis(a.captured),
        frame: FrameSize { width: a.native_width, height: a.native_height },
        model: ModelRef { name: &a.model_name, version: &a.model_version, sha256: &a.model_sha256 },
        detections: a
            .detections
            .iter()
            .filter(|d| d.score >= a.camera.scores.report)
            .map(|d| DetectionOut {
                class: a.labels.get(d.class_id as usize).map(String::as_str).unwrap_or("unknown"),
                class_id: d.class_id,
                score: round(d.score, 4),
                bbox: d.bbox.into(),
            })
            .collect(),
    };
    to_json(&msg)
}

/// `schema` of object, zone and line events.
pub const EVENT_SCHEMA: &str = "lookout.event/1";
/// `schema` of the per-interval counts.
pub const COUNTS_SCHEMA: &str = "lookout.counts/1";

/// The model an event derives from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelOut {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl ModelOut {
    /// How messages name the model `spec` describes.
    pub fn of(spec: &crate::infer::manifest::ModelSpec) -> Self {
        Self { name: spec.name.clone(), version: spec.version.clone(), sha256: spec.sha256.clone() }
    }
}

/// `lookout.event/1` on `.../cameras/{camera}/events`. `type` says which optional
/// parts are present: `object` for object-related types, `zone` for `zone.*`, `line`
/// for `line.cross`, `snapshot` for `object.new` / `object.end` when one was taken.
#[derive(Debug, Clone, Serialize)]
pub struct EventMessage {
    pub schema: &'static str,
    pub id: String,
    pub seq: u64,
    /// When it happened: the capture time of the frame that showed it.
    pub ts: String,
    pub site: String,
    pub agent: String,
    pub camera: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub model: ModelOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<LineOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRef>,
}

/// A tracked object.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectOut {
    /// Unique per camera, also across restarts (see docs/EVENTS.md).
    pub track_id: u64,
    pub class: String,
    pub class_id: u32,
    /// The `[class_groups]` its class belongs to, by name; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Score of the latest detection.
    pub score: f64,
    /// Latest box, normalised.
    pub bbox: BBoxOut,
    pub first_seen: String,
    pub last_seen: String,
    /// `last_seen − first_seen`, seconds.
    pub dwell_seconds: f64,
    pub best_score: f64,
    /// Zones visited so far, in order of first entry.
    pub zones: Vec<String>,
    /// Zones it is in now.
    pub in_zones: Vec<String>,
    /// A few of its reference points, oldest first, `[x, y]` normalised.
    pub path: Vec<[f64; 2]>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ZoneOut {
    pub name: String,
    /// `zone.loiter`: seconds inside so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// `zone.crowded` / `zone.crowd_cleared`: objects inside now, and the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_objects: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LineOut {
    pub name: String,
    /// One of the line's two configured direction names.
    pub direction: String,
}

/// Where the event's JPEG snapshot is published (binary, retained = false).
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRef {
    /// Equal to the event's `id`.
    pub id: String,
    pub topic: String,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
    /// `ts` of the frame the snapshot shows (the object's best-scoring frame).
    pub ts: String,
    pub score: f64,
    /// The object's box in that frame, normalised.
    pub bbox: BBoxOut,
    /// The `seq` the JPEG was published with (snapshots take a `seq` like every message
    /// through the outbox; their payload cannot show it).
    pub seq: u64,
}

/// `lookout.counts/1` on `.../cameras/{camera}/counts`, every `count_interval`.
#[derive(Debug, Clone, Serialize)]
pub struct CountsMessage {
    pub schema: &'static str,
    pub id: String,
    pub seq: u64,
    /// The end of the interval.
    pub ts: String,
    pub site: String,
    pub agent: String,
    pub camera: String,
    pub model: ModelOut,
    pub interval: IntervalOut,
    /// Frames analysed in the interval: 0 means the counts saw nothing (camera down),
    /// not that nothing was there.
    pub analysed_frames: u64,
    /// Objects present at the end of the interval, per class (every class of the model).
    pub classes: BTreeMap<String, usize>,
    /// The same per `[class_groups]` group (every group with a class in the model).
    pub groups: BTreeMap<String, usize>,
    /// Per zone: objects inside at the end of the interval.
    pub zones: BTreeMap<String, ZoneCountOut>,
    /// Per line: crossings during the interval, by direction name.
    pub lines: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per line: the crossings by class, then direction name. Beside `lines`, not in it,
    /// because version 1 promises that a line's object holds only direction counts.
    pub line_classes: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
    /// Per line: the crossings by group, then direction name.
    pub line_groups: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntervalOut {
    pub start: String,
    pub end: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ZoneCountOut {
    pub occupancy: usize,
    /// Objects inside by class: every class of the zone's `classes` (0 included), or,
    /// for a zone of every class, those with an object inside.
    pub classes: BTreeMap<String, usize>,
    /// Objects inside by group: every group with a class the zone counts.
    pub groups: BTreeMap<String, usize>,
}

/// A new message id: UUIDv7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(crate) fn to_json(msg: &impl Serialize) -> Vec<u8> {
    // Plain structs of strings and numbers always serialise.
    serde_json::to_vec(msg).unwrap_or_default()
}

/// `schema` of delivery messages.
pub const DELIVERY_SCHEMA: &str = "lookout.delivery/1";

/// `lookout.delivery/1`, `type = "delivery.gap"`: messages with these `seq`s were dropped
/// by the agent and will never arrive.
#[derive(Debug, Serialize)]
pub struct GapMessage<'a> {
    pub schema: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub seq: u64,
    pub ts: String,
    pub site: &'a str,
    pub agent: &'a str,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    /// "full" (outbox at max_bytes), "expired" (older than max_age), "corrupt" (unreadable on disk).
    pub reason: &'static str,
}

pub fn gap_message(
    site: &str,
    agent: &str,
    seq: u64,
    first_seq: u64,
    last_seq: u64,
    count: u64,
    reason: &'static str,
) -> Vec<u8> {
    to_json(&GapMessage {
        schema: DELIVERY_SCHEMA,
        kind: "delivery.gap",
        id: new_id(),
        seq,
        ts: rfc3339_millis(SystemTime::now()),
        site,
        agent,
        first_seq,
        last_seq,
        count,
        reason,
    })
}

/// `schema` of the agent's retained presence message.
pub const STATUS_SCHEMA: &str = "lookout.status/1";

/// `lookout.status/1` on `.../status`, retained: `online` on connect (birth), `offline`
/// as the MQTT will and on clean shutdown.
#[derive(Debug, Serialize)]
pub struct StatusMessage<'a> {
    pub schema: &'static str,
    pub id: String,
    pub site: &'a str,
    pub agent: &'a str,
    pub state: &'static str,
    pub ts: String,
    /// Why offline: "shutdown" or "connection lost" (the will).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cameras: Option<Vec<CameraInfo<'a>>>,
}

#[derive(Debug, Serialize, Clone)]
pub struct CameraInfo<'a> {
    pub id: &'a str,
    pub model: ModelInfo<'a>,
}

#[derive(Debug, Serialize, Clone)]
pub struct ModelInfo<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'static str>,
}

/// What the birth message says about the agent.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub site: String,
    pub agent: String,
    pub started: SystemTime,
    pub config_sha256: String,
    pub cameras: Vec<CameraModel>,
}

/// A camera and the model it runs, for the birth message.
#[derive(Debug, Clone)]
pub struct CameraModel {
    pub camera: String,
    pub model: String,
    pub version: String,
    pub sha256: String,
    /// The execution provider the model's session runs on (none before it is loaded).
    pub provider: Option<&'static str>,
}

pub fn status_message(info: &AgentInfo, state: &'static str, reason: Option<&'static str>) -> Vec<u8> {
    let online = state == "online";
    to_json(&StatusMessage {
        schema: STATUS_SCHEMA,
        id: new_id(),
        site: &info.site,
        agent: &info.agent,
        state,
        ts: rfc3339_millis(SystemTime::now()),
        reason,
        version: Some(env!("CARGO_PKG_VERSION")),
        started: Some(rfc3339_millis(info.started)),
        config_sha256: online.then_some(info.config_sha256.as_str()),
        cameras: online.then(|| {
            info.cameras
                .iter()
                .map(|c| CameraInfo {
                    id: &c.camera,
                    model: ModelInfo { name: &c.model, version: &c.version, sha256: &c.sha256, provider: c.provider },
                })
                .collect()
        }),
    })
}

/// `schema` of a camera's retained status message.
pub const CAMERA_STATUS_SCHEMA: &str = "lookout.camera_status/1";

/// `lookout.camera_status/1` on `.../cameras/{camera}/status`, retained.
#[derive(Debug, Serialize)]
pub struct CameraStatusMessage<'a> {
    pub schema: &'static str,
    pub id: String,
    pub site: &'a str,
    pub agent: &'a str,
    pub camera: &'a str,
    /// "starting", "streaming", "reconnecting", "failed" (retrying cannot help until fixed), "stopped".
    pub state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// Encoded frames per second received from the camera, over the last report interval.
    pub input_fps: f64,
    /// Frames per second analysed, over the last report interval.
    pub analysed_fps: f64,
    /// When the last frame was captured, if any.
    pub last_frame: Option<String>,
    /// How the stream is received and decoded: absent until the camera's first set-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtsp_client: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codec: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoder: Option<&'a str>,
    pub ts: String,
}

#[allow(clippy::too_many_arguments)]
pub fn camera_status_message(
    site: &str,
    agent: &str,
    camera: &str,
    state: &str,
    reason: Option<&str>,
    input_fps: f64,
    analysed_fps: f64,
    last_frame: Option<SystemTime>,
    stream: Option<&StreamSetup>,
) -> Vec<u8> {
    to_json(&CameraStatusMessage {
        schema: CAMERA_STATUS_SCHEMA,
        id: new_id(),
        site,
        agent,
        camera,
        state,
        reason,
        input_fps: (input_fps * 100.0).round() / 100.0,
        analysed_fps: (analysed_fps * 100.0).round() / 100.0,
        last_frame: last_frame.map(rfc3339_millis),
        rtsp_client: stream.map(|s| s.rtsp_client),
        codec: stream.map(|s| s.codec),
        decoder: stream.map(|s| s.decoder.as_str()),
        ts: rfc3339_millis(SystemTime::now()),
    })
}

/// `2026-11-22T04:17:20.123Z`
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod schema_tests;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::camera::CameraCtx;
    use crate::infer::detection::Detection;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_321_040_123);
        assert_eq!(rfc3339_millis(t), "2026-11-22T04:17:20.123Z");
        assert_eq!(rfc3339_millis(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // Leap day.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_millis(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn detections_message_has_every_documented_field() {
        let a = Analysed {
            camera: Arc::new(CameraCtx::new("cam-1", 0.5)),
            captured: SystemTime::UNIX_EPOCH,
            native_width: 768,
            native_height: 576,
            model_name: "m".into(),
            model_version: "1".into(),
            model_sha256: "ab".into(),
            labels: vec!["person".to_string()].into(),
            detections: vec![
                Detection { class_id: 0, score: 0.912345, bbox: BBox { x: 0.1, y: 0.2, w: 0.3, h: 0.4 } },
                // Below min_score: for the tracker only.
                Detection { class_id: 0, score: 0.4, bbox: BBox { x: 0.5, y: 0.2, w: 0.3, h: 0.4 } },
            ],
            original: None,
            analysed_at: std::time::Instant::now(),
        };
        let v: serde_json::Value = serde_json::from_slice(&detections_message(&a, "s", "g", 42)).expect("json");
        assert_eq!(v["schema"], DETECTIONS_SCHEMA);
        assert_eq!(v["seq"], 42);
        assert_eq!(v["id"].as_str().map(str::len), Some(36));
        assert_eq!(v["site"], "s");
        assert_eq!(v["agent"], "g");
        assert_eq!(v["camera"], "cam-1");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["frame"]["width"], 768);
        assert_eq!(v["model"]["version"], "1");
        assert_eq!(v["detections"][0]["class"], "person");
        assert_eq!(v["detections"][0]["score"], 0.9123);
        assert_eq!(v["detections"][0]["bbox"]["w"], 0.3);
        assert_eq!(v["detections"].as_array().map(Vec::len), Some(1), "only detections ≥ min_score");
        assert_eq!(v["model"]["sha256"], "ab");
    }

    #[test]
    fn message_ids_are_unique_and_time_ordered() {
        let ids: Vec<String> = (0..100).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(Topics::new("s", "g").detections("c"), "lookout/v1/s/g/cameras/c/detections");
    }
}
