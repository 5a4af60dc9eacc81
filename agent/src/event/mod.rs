//! Messages the agent publishes: their types, topics and JSON encoding.
//!
//! The schema is documented in `docs/EVENTS.md`; each message names its schema and
//! version in `schema`, and a change that could break a consumer gets a new version.

use std::time::SystemTime;

use serde::Serialize;

use crate::infer::Analysed;
use crate::infer::ssd::BBox;

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

    pub fn detections(&self, camera: &str) -> String {
        format!("{}/cameras/{camera}/detections", self.root)
    }

    /// Every camera's detections (for subscribers).
    pub fn all_detections(&self) -> String {
        format!("{}/cameras/+/detections", self.root)
    }
}

/// `lookout.detections/1`: what one analysed frame showed.
#[derive(Debug, Serialize)]
pub struct DetectionsMessage<'a> {
    pub schema: &'static str,
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
#[derive(Debug, Serialize)]
pub struct BBoxOut {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

fn round(v: f32, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (v as f64 * m).round() / m
}

impl From<BBox> for BBoxOut {
    fn from(b: BBox) -> Self {
        Self { x: round(b.x, 5), y: round(b.y, 5), w: round(b.w, 5), h: round(b.h, 5) }
    }
}

/// The detections message for an analysed frame, or `None` when it showed nothing.
pub fn detections_message(a: &Analysed, site: &str, agent: &str) -> Option<Vec<u8>> {
    if a.detections.is_empty() {
        return None;
    }
    let msg = DetectionsMessage {
        schema: DETECTIONS_SCHEMA,
        site,
        agent,
        camera: &a.camera.id,
        ts: rfc3339_millis(a.captured),
        frame: FrameSize { width: a.native_width, height: a.native_height },
        model: ModelRef { name: &a.model_name, version: &a.model_version },
        detections: a
            .detections
            .iter()
            .map(|d| DetectionOut {
                class: a.labels.get(d.class_id as usize).map(String::as_str).unwrap_or("unknown"),
                class_id: d.class_id,
                score: round(d.score, 4),
                bbox: d.bbox.into(),
            })
            .collect(),
    };
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&msg).ok()
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
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::infer::ssd::Detection;
    use crate::source::CameraCtx;

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
            labels: vec!["person".to_string()].into(),
            detections: vec![Detection { class_id: 0, score: 0.912345, bbox: BBox { x: 0.1, y: 0.2, w: 0.3, h: 0.4 } }],
        };
        let v: serde_json::Value =
            serde_json::from_slice(&detections_message(&a, "s", "g").expect("a message")).expect("json");
        assert_eq!(v["schema"], DETECTIONS_SCHEMA);
        assert_eq!(v["site"], "s");
        assert_eq!(v["agent"], "g");
        assert_eq!(v["camera"], "cam-1");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["frame"]["width"], 768);
        assert_eq!(v["model"]["version"], "1");
        assert_eq!(v["detections"][0]["class"], "person");
        assert_eq!(v["detections"][0]["score"], 0.9123);
        assert_eq!(v["detections"][0]["bbox"]["w"], 0.3);
    }

    #[test]
    fn no_message_for_a_frame_without_detections() {
        let a = Analysed {
            camera: Arc::new(CameraCtx::new("cam-1", 0.5)),
            captured: SystemTime::UNIX_EPOCH,
            native_width: 1,
            native_height: 1,
            model_name: "m".into(),
            model_version: "1".into(),
            labels: vec![].into(),
            detections: vec![],
        };
        assert!(detections_message(&a, "s", "g").is_none());
        assert_eq!(Topics::new("s", "g").detections("c"), "lookout/v1/s/g/cameras/c/detections");
    }
}
