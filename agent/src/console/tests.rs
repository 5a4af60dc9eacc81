use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::*;
use crate::event::stage::{CameraEvents, CameraSpec};
use crate::event::{ModelOut, Topics};
use crate::infer::detection::{BBox, Detection};
use crate::rules::geometry::Point;
use crate::rules::{LineRule, RulesConfig, ZoneRule};

fn model() -> ModelOut {
    ModelOut { name: "person".into(), version: "1".into(), sha256: "ab".into() }
}

fn labels() -> Arc<[String]> {
    vec!["person".to_string()].into()
}

fn rules() -> RulesConfig {
    RulesConfig {
        zones: vec![ZoneRule {
            name: "door".into(),
            polygon: vec![Point::new(0.0, 0.0), Point::new(0.5, 0.0), Point::new(0.5, 0.5)],
            loiter: None,
            max_objects: None,
            classes: vec![],
        }],
        lines: vec![LineRule {
            name: "gate".into(),
            a: Point::new(0.5, 0.0),
            b: Point::new(0.5, 1.0),
            directions: ["east".into(), "west".into()],
            classes: vec![],
        }],
        ..RulesConfig::default()
    }
}

fn original() -> Original {
    crate::camera::test_original()
}

fn person(x: f32, score: f32) -> Detection {
    Detection { class_id: 0, score, bbox: BBox { x, y: 0.3, w: 0.1, h: 0.3 } }
}

fn analysed(cam: &Arc<CameraCtx>, s: f64, detections: Vec<Detection>) -> Analysed {
    Analysed {
        camera: cam.clone(),
        captured: SystemTime::UNIX_EPOCH + Duration::from_secs_f64(1_700_000_000.0 + s),
        native_width: 64,
        native_height: 48,
        model_name: "person".into(),
        model_version: "1".into(),
        model_sha256: "ab".into(),
        labels: labels(),
        detections,
        original: Some(original()),
        analysed_at: std::time::Instant::now(),
    }
}

fn stage() -> CameraEvents {
    let spec = CameraSpec {
        id: "cam".into(),
        scores: crate::camera::ScoreThresholds::new(0.5),
        lost_after: Duration::from_secs(5),
        count_interval: Duration::from_secs(60),
        rules: rules(),
        snapshots: crate::config::SnapshotPolicy::default(),
        labels: labels(),
        groups: Vec::new().into(),
        model: model(),
    };
    CameraEvents::new(spec, "site", "gw", Topics::new("site", "gw"), SystemTime::UNIX_EPOCH)
}

fn hub_with_camera() -> (ConsoleHub, Arc<CameraCtx>) {
    let hub = ConsoleHub::new();
    hub.add_camera("cam", CameraInfo::new(model(), &labels(), &rules()));
    (hub, Arc::new(CameraCtx::new("cam", 0.5)))
}

#[test]
fn an_unwatched_camera_holds_no_frame_and_encodes_nothing() {
    let (hub, ctx) = hub_with_camera();
    let mut st = stage();
    for i in 0..5 {
        let a = analysed(&ctx, f64::from(i), vec![person(0.2, 0.9)]);
        st.on_frame(&a);
        hub.on_frame(&a, st.tracks());
    }
    assert!(hub.camera("cam").expect("camera").frame(None).is_none());
    assert_eq!(hub.frames_encoded.load(Ordering::Relaxed), 0);
}

#[test]
fn a_watched_camera_frame_has_boxes_with_track_ids_and_encodes_once() {
    let (hub, ctx) = hub_with_camera();
    ctx.watch.touch();
    let mut st = stage();
    // Confirmed after two hits: the first frame's box has no track yet, the second's has.
    for i in 0..2 {
        let a = analysed(&ctx, f64::from(i), vec![person(0.2 + 0.01 * i as f32, 0.9), person(0.7, 0.4)]);
        st.on_frame(&a);
        hub.on_frame(&a, st.tracks());
    }
    let cam = hub.camera("cam").expect("camera");
    let f = cam.frame(None).expect("a frame while watched");
    // The weak detection (below min_score, not continuing a track) is not shown.
    assert_eq!(f.boxes.len(), 1, "{:?}", f.boxes);
    assert_eq!(f.boxes[0].class, "person");
    let tid = f.boxes[0].track_id.expect("track id");
    assert_eq!(st.tracks().next().map(|t| t.id), Some(tid));
    let older = cam.frame(Some(f.seq - 1)).expect("the previous frame is still held");
    assert_eq!(older.boxes[0].track_id, None);

    let j1 = f.jpeg(&hub).expect("jpeg");
    let j2 = f.jpeg(&hub).expect("jpeg");
    assert!(Arc::ptr_eq(&j1, &j2));
    assert_eq!(hub.frames_encoded.load(Ordering::Relaxed), 1);
    let img = image::load_from_memory(&j1.bytes).expect("decodes");
    assert_eq!((img.width(), img.height()), (64, 48));
}

#[test]
fn frames_are_released_once_nobody_watches() {
    let (hub, ctx) = hub_with_camera();
    ctx.watch.touch();
    let a = analysed(&ctx, 0.0, vec![]);
    hub.on_frame(&a, std::iter::empty());
    assert!(hub.camera("cam").expect("camera").frame(None).is_some());
    // Nobody asks any more (as if never asked: the window has passed).
    ctx.watch.last_ms.store(0, Ordering::Relaxed);
    assert!(!ctx.watch.is_watched());
    hub.on_frame(&a, std::iter::empty());
    assert!(hub.camera("cam").expect("camera").frame(None).is_none());
}

#[test]
fn events_snapshots_and_counts_are_bounded_and_served_as_json_arrays() {
    let (hub, _) = hub_with_camera();
    for i in 0..(MAX_EVENTS + 10) {
        hub.on_message("cam", MessageKind::Event, Some(format!("{{\"n\":{i}}}").into_bytes()));
    }
    let cam = hub.camera("cam").expect("camera");
    let events: Vec<serde_json::Value> = serde_json::from_slice(&cam.events_json()).expect("JSON array");
    assert_eq!(events.len(), MAX_EVENTS);
    assert_eq!(events[0]["n"], MAX_EVENTS + 9, "newest first");

    for i in 0..(MAX_SNAPSHOTS + 4) {
        let jpeg = Arc::new(Jpeg { bytes: vec![0; 1000], width: 1, height: 1 });
        hub.on_message("cam", MessageKind::Snapshot { id: format!("s{i}"), jpeg }, None);
    }
    assert!(cam.snapshot("s0").is_none() && cam.snapshot(&format!("s{}", MAX_SNAPSHOTS + 3)).is_some());
    let big = Arc::new(Jpeg { bytes: vec![0; MAX_SNAPSHOT_BYTES - 100], width: 1, height: 1 });
    hub.on_message("cam", MessageKind::Snapshot { id: "big".into(), jpeg: big }, None);
    assert!(cam.snapshot("big").is_some());
    assert!(cam.snapshot(&format!("s{}", MAX_SNAPSHOTS + 3)).is_none(), "older ones make room by size");

    for i in 0..(MAX_COUNTS + 5) {
        hub.on_message("cam", MessageKind::Counts, Some(format!("{{\"n\":{i}}}").into_bytes()));
    }
    let counts: Vec<serde_json::Value> = serde_json::from_slice(&cam.counts_json()).expect("JSON array");
    assert_eq!(counts.len(), MAX_COUNTS);
    assert_eq!(counts[0]["n"], 5, "oldest first");
    // An update (new zones, a model swap) keeps what was kept.
    let mut info = CameraInfo::new(model(), &labels(), &RulesConfig::default());
    info.model.version = "2".into();
    hub.add_camera("cam", info);
    let cam = hub.camera("cam").expect("camera");
    assert_eq!(cam.info().model.version, "2");
    assert!(cam.info().zones.is_empty());
    assert_eq!(serde_json::from_slice::<Vec<serde_json::Value>>(&cam.events_json()).expect("json").len(), MAX_EVENTS);
    // Messages of unknown cameras and removed cameras go nowhere.
    hub.on_message("other", MessageKind::Event, Some(b"{}".to_vec()));
    hub.remove_camera("cam");
    assert!(hub.camera("cam").is_none());
}

#[test]
fn camera_info_carries_zones_and_lines_for_drawing() {
    let info = CameraInfo::new(model(), &labels(), &rules());
    let v = serde_json::to_value(&info).expect("json");
    assert_eq!(v["zones"][0]["name"], "door");
    assert_eq!(v["zones"][0]["polygon"][1], serde_json::json!([0.5, 0.0]));
    assert_eq!(v["lines"][0]["points"], serde_json::json!([[0.5, 0.0], [0.5, 1.0]]));
    assert_eq!(v["lines"][0]["directions"], serde_json::json!(["east", "west"]));
}
