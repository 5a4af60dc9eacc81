//! Every message type the agent builds validates against its JSON Schema in
//! `docs/schemas` (the schemas are the contract; these tests keep code and contract
//! together), and the schemas reject what they promise to reject.
//!
//! The messages are built by the crate's own code: `detections_message`, `gap_message`,
//! `status_message`, `camera_status_message`, and a camera's [`CameraEvents`] fed a
//! scripted scene (two people, a zone with loitering and crowding, a counting line) that
//! produces every event type, snapshots and counts. `seq`s are assigned as the agent's
//! outbox does (one per appended message, snapshots included).
//!
//! `LOOKOUT_PRINT_EXAMPLES=1 cargo test -p lookout --lib event::schema_tests -- --nocapture`
//! prints the messages pretty-printed (the examples in docs/EVENTS.md come from there).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::stage::{CameraEvents, CameraSpec, StageMessage};
use super::*;
use crate::camera::{CameraCtx, Original};
use crate::config::SnapshotPolicy;
use crate::infer::detection::Detection;
use crate::rules::geometry::Point;
use crate::rules::{LineRule, ReferencePoint, RulesConfig, ZoneRule};

const SITE: &str = "site-1";
const AGENT: &str = "gw-1";
const CAMERA: &str = "cam-1";
const MODEL_NAME: &str = "ssdlite-mobilenetv2-person";
const MODEL_VERSION: &str = "0.2.0";
const MODEL_SHA256: &str = "e4d205d75e8ed1c21f8f18bf548ae763a2d2e804eba8e3639e04ce9186c76653";
/// 2026-11-22T04:17:20.250Z: the scene's first frame (exact in binary, so times print exactly).
const T0: f64 = 1_795_321_040.25;

/// The scene's time `s` seconds after its first frame.
fn at(s: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(T0 + s)
}

fn ts_at(s: f64) -> String {
    rfc3339_millis(at(s))
}

// ---------------------------------------------------------------------------------------
// Schemas and validation

/// `lookout.event/1` → `docs/schemas/lookout.event.1.json`, parsed.
fn schema_doc(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schemas")
        .join(format!("{}.json", name.replace('/', ".")));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Validators assert `format` too (uuid, date-time), on top of the schemas' patterns.
fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema_doc(name))
        .unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"))
}

/// Every message schema the agent publishes, with the constant the code uses.
/// (`lookout.site/1` is the site task's, checked against real messages in `site::record`.)
const SCHEMAS: [&str; 7] = [
    DETECTIONS_SCHEMA,
    EVENT_SCHEMA,
    COUNTS_SCHEMA,
    DELIVERY_SCHEMA,
    STATUS_SCHEMA,
    CAMERA_STATUS_SCHEMA,
    "lookout.site/1",
];

/// (instance path, schema path, message) of every error of `msg` against schema `name`.
fn errors(name: &str, msg: &Value) -> Vec<(String, String, String)> {
    let v = validator(name);
    v.iter_errors(msg)
        .map(|e| (e.instance_path().as_str().to_string(), e.schema_path().as_str().to_string(), e.to_string()))
        .collect()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Follows local `$ref`s (`#/$defs/...`).
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    while let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("only local $refs are used, got {r}"));
        node = root.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    node
}

/// Paths of the fields of `inst` that `node` (of schema `root`) does not declare: neither
/// in `properties` nor covered by an `additionalProperties` schema (the maps).
fn undeclared(root: &Value, node: &Value, inst: &Value, path: &str, out: &mut Vec<String>) {
    let node = resolve(root, node);
    match inst {
        Value::Object(map) => {
            let props = node.get("properties").and_then(Value::as_object);
            let rest = node.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                let p = format!("{path}/{k}");
                match props.and_then(|ps| ps.get(k)).or(rest) {
                    Some(s) => undeclared(root, s, v, &p, out),
                    None => out.push(p),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = node.get("items") {
                for (i, v) in items.iter().enumerate() {
                    undeclared(root, s, v, &format!("{path}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

/// The message validates against the schema it names, and every field it has is declared
/// there (additional properties are allowed for consumers' sake, so without this check a
/// field added to the code but not to the contract would go unnoticed).
fn assert_valid(msg: &Value) {
    let name = msg["schema"].as_str().unwrap_or_else(|| panic!("no schema in {}", pretty(msg)));
    assert!(SCHEMAS.contains(&name), "unknown schema {name}");
    let errs = errors(name, msg);
    assert!(errs.is_empty(), "{name} rejects a message the agent built: {errs:#?}\n{}", pretty(msg));
    let doc = schema_doc(name);
    let mut extra = Vec::new();
    undeclared(&doc, &doc, msg, "", &mut extra);
    assert!(extra.is_empty(), "fields missing from the {name} schema: {extra:?}\n{}", pretty(msg));
}

/// `valid` passes; `mutate`d, it is rejected with an error at `at` from `keyword`.
fn assert_rejects(valid: &Value, why: &str, at: &str, keyword: &str, mutate: impl FnOnce(&mut Value)) {
    assert_valid(valid);
    let mut bad = valid.clone();
    mutate(&mut bad);
    let name = valid["schema"].as_str().unwrap_or_default();
    let errs = errors(name, &bad);
    assert!(
        errs.iter().any(|(path, schema_path, _)| path == at && schema_path.ends_with(&format!("/{keyword}"))),
        "{why}: expected a `{keyword}` error at {at:?}, got {errs:#?}\n{}",
        pretty(&bad)
    );
}

fn remove(v: &mut Value, pointer: &str, key: &str) {
    let obj = v.pointer_mut(pointer).and_then(Value::as_object_mut).unwrap_or_else(|| panic!("no object at {pointer}"));
    assert!(obj.remove(key).is_some(), "no {key} at {pointer}");
}

fn set(v: &mut Value, pointer: &str, new: Value) {
    *v.pointer_mut(pointer).unwrap_or_else(|| panic!("nothing at {pointer}")) = new;
}

/// With `LOOKOUT_PRINT_EXAMPLES` set: prints `payload` as published (fields in wire order).
fn maybe_print(label: &str, payload: &[u8]) {
    if std::env::var_os("LOOKOUT_PRINT_EXAMPLES").is_some() {
        println!("=== {label}\n{}", String::from_utf8_lossy(payload));
    }
}

// ---------------------------------------------------------------------------------------
// The scene

/// One message as the outbox would publish it.
#[derive(Debug, Clone)]
struct Published {
    seq: u64,
    topic: String,
    payload: Vec<u8>,
}

impl Published {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("{} is not JSON: {e}", self.topic))
    }

    fn is_snapshot(&self) -> bool {
        self.topic.contains("/snapshots/")
    }
}

/// The agent's outbox, reduced to what matters here: one seq per appended message.
struct Outbox {
    topics: Topics,
    next_seq: u64,
    published: Vec<Published>,
}

impl Outbox {
    fn new() -> Self {
        Self { topics: Topics::new(SITE, AGENT), next_seq: 1, published: Vec::new() }
    }

    fn append(&mut self, topic: String, build: impl FnOnce(u64) -> Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.published.push(Published { seq, topic, payload: build(seq) });
    }

    /// As the agent's `append_outgoing`.
    fn append_outgoing(&mut self, out: Vec<StageMessage>) {
        let mut snapshot_seq = None;
        for o in out {
            let is_snapshot = matches!(o, StageMessage::Snapshot { .. });
            let seq = self.next_seq;
            self.append(o.topic(&self.topics), |seq| o.into_payload(seq, snapshot_seq));
            snapshot_seq = is_snapshot.then_some(seq);
        }
    }
}

fn labels() -> Arc<[String]> {
    vec!["person".to_string()].into()
}

fn camera_spec() -> CameraSpec {
    let p = Point::new;
    CameraSpec {
        id: CAMERA.into(),
        scores: crate::camera::ScoreThresholds::new(0.5),
        lost_after: Duration::from_secs(2),
        count_interval: Duration::from_secs(12),
        rules: RulesConfig {
            // The lower left of the frame.
            zones: vec![ZoneRule {
                name: "door".into(),
                polygon: vec![p(0.05, 0.5), p(0.55, 0.5), p(0.55, 0.95), p(0.05, 0.95)],
                loiter: Some(Duration::from_secs(3)),
                max_objects: Some(1),
                classes: Vec::new(),
            }],
            // A vertical line at x = 0.6, drawn downwards: its left side is (B−A)×(P−A) > 0,
            // so directions[0] ("in") is left to right.
            lines: vec![LineRule {
                name: "gate".into(),
                a: p(0.6, 0.1),
                b: p(0.6, 0.9),
                directions: ["in".into(), "out".into()],
                classes: Vec::new(),
            }],
            reference: ReferencePoint::BottomCenter,
            update_interval: None,
        },
        snapshots: SnapshotPolicy { enabled: true, max_side: 640, quality: 80 },
        labels: labels(),
        groups: vec![("pedestrian".to_string(), vec![0])].into(),
        model: ModelOut { name: MODEL_NAME.into(), version: MODEL_VERSION.into(), sha256: MODEL_SHA256.into() },
    }
}

/// A person whose feet (the box's bottom-centre, the default reference point) are at (x, y).
fn person(x: f32, y: f32, score: f32) -> Detection {
    Detection { class_id: 0, score, bbox: BBox { x: x - 0.025, y: y - 0.15, w: 0.05, h: 0.15 } }
}

fn original() -> Original {
    crate::camera::test_original()
}

fn frame(cam: &Arc<CameraCtx>, s: f64, detections: Vec<Detection>) -> Analysed {
    Analysed {
        camera: cam.clone(),
        captured: at(s),
        native_width: 1280,
        native_height: 720,
        model_name: MODEL_NAME.into(),
        model_version: MODEL_VERSION.into(),
        model_sha256: MODEL_SHA256.into(),
        labels: labels(),
        original: (!detections.is_empty()).then(original),
        analysed_at: std::time::Instant::now(),
        detections,
    }
}

/// Everything one camera publishes for the scripted scene, in outbox order.
///
/// - t=0..10 s, one frame a second. P1 walks down into zone `door` (enters at 2 s),
///   stays (loiters at 5 s: `loiter_seconds` = 3), walks out of it (8 s) and right across
///   line `gate` (10 s).
/// - P2 appears in the zone at 2 s (confirmed at 3 s: two objects > `max_objects` = 1,
///   crowded), is last seen at 4 s and ends at 6 s (`lost_after` = 2 s): it exits the
///   zone at 4 s, its last sight, and the crowding clears.
/// - The counts are due at 12 s; the camera stops at 13 s (P1 ends, partial counts).
fn scene() -> Vec<Published> {
    let cam = Arc::new(CameraCtx::new(CAMERA, 0.5));
    let mut outbox = Outbox::new();
    let mut stage = CameraEvents::new(camera_spec(), SITE, AGENT, Topics::new(SITE, AGENT), at(0.0));
    let p2 = |s: f32| person(0.10, 0.70, s);
    // Detections come highest score first, as from the model.
    let frames: Vec<(f64, Vec<Detection>)> = vec![
        (0.0, vec![person(0.40, 0.32, 0.80)]),
        (1.0, vec![person(0.40, 0.42, 0.82)]),
        (2.0, vec![p2(0.90), person(0.40, 0.52, 0.85)]),
        (3.0, vec![p2(0.91), person(0.40, 0.60, 0.86)]),
        (4.0, vec![p2(0.90), person(0.40, 0.62, 0.865)]),
        (5.0, vec![person(0.40, 0.62, 0.88)]),
        (6.0, vec![person(0.40, 0.62, 0.88)]),
        (7.0, vec![person(0.40, 0.56, 0.89)]),
        (8.0, vec![person(0.40, 0.46, 0.93)]),
        (9.0, vec![person(0.50, 0.46, 0.90)]),
        (10.0, vec![person(0.65, 0.46, 0.90)]),
    ];
    for (s, dets) in frames {
        let a = frame(&cam, s, dets);
        // As the agent's event stage: the frame's detections, then what the stage makes of it.
        if a.detections.iter().any(|d| d.score >= a.camera.scores.report) {
            let topic = outbox.topics.detections(CAMERA);
            outbox.append(topic, |seq| detections_message(&a, SITE, AGENT, seq));
        }
        let out = stage.on_frame(&a);
        outbox.append_outgoing(out);
        let out = stage.tick(at(s + 0.5));
        outbox.append_outgoing(out);
    }
    let out = stage.tick(at(12.0));
    outbox.append_outgoing(out);
    let out = stage.finish(at(13.0));
    outbox.append_outgoing(out);
    outbox.published
}

fn on<'a>(published: &'a [Published], suffix: &str) -> Vec<&'a Published> {
    published.iter().filter(|p| p.topic.ends_with(suffix)).collect()
}

fn jsons_on(published: &[Published], suffix: &str) -> Vec<Value> {
    on(published, suffix).into_iter().map(Published::json).collect()
}

const EVENT_TYPES: [&str; 9] = [
    "object.new",
    "object.update",
    "object.end",
    "zone.enter",
    "zone.exit",
    "zone.loiter",
    "zone.crowded",
    "zone.crowd_cleared",
    "line.cross",
];

/// The first event of type `kind` (for a given track, if `track`).
fn event<'a>(events: &'a [Value], kind: &str, track: Option<u64>) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == kind && track.is_none_or(|t| e["object"]["track_id"] == t))
        .unwrap_or_else(|| panic!("no {kind} event"))
}

fn events_of_scene() -> Vec<Value> {
    jsons_on(&scene(), "/events")
}

// ---------------------------------------------------------------------------------------
// Every message type validates

#[test]
fn every_event_type_validates_against_its_schema() {
    let published = scene();
    let events = jsons_on(&published, "/events");
    let p1 = stage::first_track_id(at(0.0));
    let p2 = p1 + 1;
    let seen: Vec<(String, Option<u64>, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["object"]["track_id"].as_u64(),
                e["ts"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expected: Vec<(&str, Option<u64>, f64)> = vec![
        ("object.new", Some(p1), 1.0),
        ("zone.enter", Some(p1), 2.0),
        ("object.update", Some(p1), 2.0),
        ("object.new", Some(p2), 3.0),
        ("zone.enter", Some(p2), 3.0),
        ("zone.crowded", None, 3.0),
        ("zone.loiter", Some(p1), 5.0),
        // P2 ended at 6 s: it left the zone when it was last seen.
        ("zone.exit", Some(p2), 4.0),
        ("object.end", Some(p2), 4.0),
        ("zone.crowd_cleared", None, 6.0),
        ("zone.exit", Some(p1), 8.0),
        ("object.update", Some(p1), 8.0),
        ("line.cross", Some(p1), 10.0),
        ("object.end", Some(p1), 10.0),
    ];
    let expected: Vec<(String, Option<u64>, String)> =
        expected.into_iter().map(|(k, t, s)| (k.to_string(), t, ts_at(s))).collect();
    assert_eq!(seen, expected);
    let kinds: BTreeSet<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, EVENT_TYPES.into_iter().collect::<BTreeSet<_>>(), "the scene produces every event type");
    for e in &events {
        assert_valid(e);
    }
    for kind in EVENT_TYPES {
        let first = on(&published, "/events").into_iter().find(|p| p.json()["type"] == kind);
        maybe_print(kind, &first.expect("every type").payload);
    }
}

#[test]
fn event_parts_follow_their_type() {
    let events = events_of_scene();
    for e in &events {
        let kind = e["type"].as_str().unwrap_or("");
        let crowding = kind.starts_with("zone.crowd");
        assert_eq!(e.get("object").is_some(), !crowding, "object on {kind}");
        assert_eq!(e.get("zone").is_some(), kind.starts_with("zone."), "zone on {kind}");
        assert_eq!(e.get("line").is_some(), kind == "line.cross", "line on {kind}");
        assert_eq!(e.get("snapshot").is_some(), kind == "object.new" || kind == "object.end", "snapshot on {kind}");
    }
    assert_eq!(event(&events, "zone.loiter", None)["zone"], json!({ "name": "door", "seconds": 3.0 }));
    assert_eq!(event(&events, "zone.crowded", None)["zone"], json!({ "name": "door", "count": 2, "max_objects": 1 }));
    assert_eq!(
        event(&events, "zone.crowd_cleared", None)["zone"],
        json!({ "name": "door", "count": 1, "max_objects": 1 })
    );
    assert_eq!(event(&events, "line.cross", None)["line"], json!({ "name": "gate", "direction": "in" }));
    let p1 = stage::first_track_id(at(0.0));
    let end = event(&events, "object.end", Some(p1));
    assert_eq!(end["object"]["zones"], json!(["door"]));
    assert_eq!(end["object"]["in_zones"], json!([]));
    assert_eq!(end["object"]["first_seen"], ts_at(0.0));
    assert_eq!(end["object"]["dwell_seconds"], 10.0);
}

#[test]
fn snapshots_are_jpegs_published_just_before_the_event_that_references_them() {
    let published = scene();
    let mut snapshots = 0;
    for (i, p) in published.iter().enumerate() {
        if !p.is_snapshot() {
            continue;
        }
        snapshots += 1;
        assert!(p.payload.starts_with(&[0xFF, 0xD8, 0xFF]), "a snapshot's payload is a raw JPEG");
        let next = published.get(i + 1).expect("an event follows its snapshot");
        let e = next.json();
        assert_eq!(e["schema"], EVENT_SCHEMA);
        assert_eq!(next.seq, p.seq + 1, "the snapshot takes the seq just before its event's");
        assert_eq!(next.json()["snapshot"]["seq"], p.seq, "and the event names it");
        let snap = &e["snapshot"];
        assert_eq!(snap["topic"], p.topic);
        assert_eq!(snap["id"], e["id"], "a snapshot is named by its event's id");
        assert_eq!(p.topic, Topics::new(SITE, AGENT).snapshot(CAMERA, e["id"].as_str().unwrap_or("")));
        assert_eq!((snap["width"].as_u64(), snap["height"].as_u64()), (Some(64), Some(48)));
        assert_valid(&e);
    }
    // object.new and object.end of both people.
    assert_eq!(snapshots, 4);
    let events = jsons_on(&published, "/events");
    let p1 = stage::first_track_id(at(0.0));
    // P1's best frame (0.93) was at 8 s; at its object.new (1 s), the best so far was 1 s.
    assert_eq!(event(&events, "object.end", Some(p1))["snapshot"]["ts"], ts_at(8.0));
    assert_eq!(event(&events, "object.end", Some(p1))["snapshot"]["score"], 0.93);
    assert_eq!(event(&events, "object.new", Some(p1))["snapshot"]["ts"], ts_at(1.0));
}

#[test]
fn every_message_goes_to_its_topic_with_a_fresh_seq() {
    let published = scene();
    let root = format!("lookout/v1/{SITE}/{AGENT}/cameras/{CAMERA}/");
    for (i, p) in published.iter().enumerate() {
        assert_eq!(p.seq, i as u64 + 1);
        let leaf = p.topic.strip_prefix(&root).unwrap_or_else(|| panic!("{} outside {root}", p.topic));
        if p.is_snapshot() {
            continue;
        }
        let v = p.json();
        let expected = match v["schema"].as_str() {
            Some(DETECTIONS_SCHEMA) => "detections",
            Some(EVENT_SCHEMA) => "events",
            Some(COUNTS_SCHEMA) => "counts",
            other => panic!("unexpected schema {other:?}"),
        };
        assert_eq!(leaf, expected);
        assert_eq!(v["seq"], p.seq);
    }
    let ids: BTreeSet<String> =
        published.iter().filter(|p| !p.is_snapshot()).map(|p| p.json()["id"].to_string()).collect();
    assert_eq!(ids.len(), published.iter().filter(|p| !p.is_snapshot()).count(), "ids are unique");
}

#[test]
fn detections_of_every_frame_validate_against_their_schema() {
    let published = scene();
    let detections = jsons_on(&published, "/detections");
    assert_eq!(detections.len(), 11, "one per frame with a detection");
    for d in &detections {
        assert_valid(d);
    }
    assert_eq!(detections[2]["detections"].as_array().map(Vec::len), Some(2));
    maybe_print("detections", &on(&published, "/detections")[2].payload);
}

#[test]
fn counts_validate_against_their_schema() {
    let published = scene();
    let counts = jsons_on(&published, "/counts");
    assert_eq!(counts.len(), 2, "one when due at 12 s, one for the partial interval at the stop");
    for c in &counts {
        assert_valid(c);
    }
    let (due, last) = (&counts[0], &counts[1]);
    assert_eq!(due["interval"], json!({ "start": ts_at(0.0), "end": ts_at(12.0), "seconds": 12.0 }));
    assert_eq!(due["ts"], due["interval"]["end"]);
    assert_eq!(due["analysed_frames"], 11);
    assert_eq!(due["classes"], json!({ "person": 1 }));
    assert_eq!(due["groups"], json!({ "pedestrian": 1 }));
    assert_eq!(due["zones"], json!({ "door": { "occupancy": 0, "classes": {}, "groups": { "pedestrian": 0 } } }));
    assert_eq!(due["lines"], json!({ "gate": { "in": 1, "out": 0 } }));
    assert_eq!(due["line_classes"], json!({ "gate": { "person": { "in": 1, "out": 0 } } }));
    assert_eq!(due["line_groups"], json!({ "gate": { "pedestrian": { "in": 1, "out": 0 } } }));
    // No frame after 12 s: the partial interval saw nothing.
    assert_eq!(last["analysed_frames"], 0);
    assert_eq!(last["interval"]["seconds"], 1.0);
    assert_eq!(last["lines"], json!({ "gate": { "in": 0, "out": 0 } }));
    assert_eq!(last["line_classes"], json!({ "gate": {} }), "only classes that crossed, for a line of every class");
    maybe_print("counts", &on(&published, "/counts")[0].payload);
}

fn gap(reason: &'static str) -> Value {
    serde_json::from_slice(&gap_message(SITE, AGENT, 4420, 1, 191, 191, reason)).expect("json")
}

#[test]
fn delivery_gaps_validate_against_their_schema() {
    for reason in ["full", "expired", "corrupt"] {
        assert_valid(&gap(reason));
    }
    maybe_print("delivery.gap", &gap_message(SITE, AGENT, 4420, 1, 191, 191, "full"));
}

fn agent_info() -> AgentInfo {
    AgentInfo {
        site: SITE.into(),
        agent: AGENT.into(),
        started: at(-2.0),
        config_sha256: "5f0c7a1e3b9d4c2a8e6f1b0d9c8a7e6f5d4c3b2a1908f7e6d5c4b3a291807f6e".into(),
        cameras: vec![crate::event::CameraModel {
            camera: CAMERA.into(),
            model: MODEL_NAME.into(),
            version: MODEL_VERSION.into(),
            sha256: MODEL_SHA256.into(),
            provider: Some("cpu"),
        }],
    }
}

fn status(state: &'static str, reason: Option<&'static str>) -> Value {
    serde_json::from_slice(&status_message(&agent_info(), state, reason)).expect("json")
}

#[test]
fn status_online_and_offline_validate_against_their_schema() {
    let online = status("online", None);
    assert_valid(&online);
    assert!(online.get("seq").is_none(), "retained state carries no seq");
    for reason in ["shutdown", "connection lost"] {
        let offline = status("offline", Some(reason));
        assert_valid(&offline);
        assert!(offline.get("cameras").is_none());
    }
    maybe_print("status online", &status_message(&agent_info(), "online", None));
    maybe_print("status offline", &status_message(&agent_info(), "offline", Some("connection lost")));
}

fn camera_status_bytes(state: &str, reason: Option<&str>, last_frame: Option<SystemTime>) -> Vec<u8> {
    // A streaming camera sends ~25 fps and one a second is analysed; others get nothing.
    let (input_fps, analysed_fps) = if state == "streaming" { (25.04, 1.0) } else { (0.0, 0.0) };
    // Set up once it has streamed; a camera that never connected has none.
    let stream = last_frame.map(|_| crate::camera::StreamSetup {
        rtsp_client: "shared",
        codec: "H264",
        decoder: "avdec_h264".to_string(),
    });
    camera_status_message(SITE, AGENT, CAMERA, state, reason, input_fps, analysed_fps, last_frame, stream.as_ref())
}

fn camera_status(state: &str, reason: Option<&str>, last_frame: Option<SystemTime>) -> Value {
    serde_json::from_slice(&camera_status_bytes(state, reason, last_frame)).expect("json")
}

#[test]
fn camera_status_validates_in_every_state() {
    let lost = Some("camera cam-1: stream error from src: Could not open resource for reading and writing.");
    let cases = [
        ("starting", None, None),
        ("streaming", None, Some(at(10.0))),
        ("reconnecting", lost, Some(at(10.0))),
        ("failed", Some("camera cam-1: no decoder for H.265: install gstreamer1.0-libav"), None),
        ("stopped", None, Some(at(10.0))),
    ];
    for (state, reason, last) in cases {
        let v = camera_status(state, reason, last);
        assert_valid(&v);
        assert!(v.get("seq").is_none(), "retained state carries no seq");
        assert_eq!(v["last_frame"].is_null(), last.is_none(), "last_frame is null, not absent, before any frame");
        for field in ["rtsp_client", "codec", "decoder"] {
            assert_eq!(v.get(field).is_some(), last.is_some(), "{field} once the stream was set up, absent before");
        }
    }
    for (state, reason) in [("streaming", None), ("reconnecting", lost)] {
        maybe_print(&format!("camera_status {state}"), &camera_status_bytes(state, reason, Some(at(10.0))));
    }
}

// ---------------------------------------------------------------------------------------
// The schemas reject what they must

#[test]
fn event_schema_rejects_events_missing_their_type_specific_parts() {
    let events = events_of_scene();
    let cross = event(&events, "line.cross", None);
    assert_rejects(cross, "line.cross without line", "", "required", |v| remove(v, "", "line"));
    assert_rejects(cross, "line.cross without object", "", "required", |v| remove(v, "", "object"));
    assert_rejects(cross, "line without direction", "/line", "required", |v| remove(v, "/line", "direction"));
    let enter = event(&events, "zone.enter", None);
    assert_rejects(enter, "zone.enter without zone", "", "required", |v| remove(v, "", "zone"));
    assert_rejects(enter, "zone.exit without zone", "", "required", |v| {
        set(v, "/type", json!("zone.exit"));
        remove(v, "", "zone");
    });
    let new = event(&events, "object.new", None);
    assert_rejects(new, "object.new without object", "", "required", |v| remove(v, "", "object"));
    let update = event(&events, "object.update", None);
    assert_rejects(update, "object.update without object", "", "required", |v| remove(v, "", "object"));
    let end = event(&events, "object.end", None);
    assert_rejects(end, "object.end without object", "", "required", |v| remove(v, "", "object"));
    let loiter = event(&events, "zone.loiter", None);
    assert_rejects(loiter, "zone.loiter without seconds", "/zone", "required", |v| remove(v, "/zone", "seconds"));
    assert_rejects(loiter, "zone.loiter without object", "", "required", |v| remove(v, "", "object"));
    let crowded = event(&events, "zone.crowded", None);
    assert_rejects(crowded, "zone.crowded without count", "/zone", "required", |v| remove(v, "/zone", "count"));
    assert_rejects(crowded, "zone.crowded without zone", "", "required", |v| remove(v, "", "zone"));
    let cleared = event(&events, "zone.crowd_cleared", None);
    assert_rejects(cleared, "zone.crowd_cleared without max_objects", "/zone", "required", |v| {
        remove(v, "/zone", "max_objects")
    });
    // A snapshot only on object.new / object.end.
    let snapshot = new["snapshot"].clone();
    assert_rejects(enter, "zone.enter with a snapshot", "", "not", |v| set_key(v, "snapshot", snapshot.clone()));
    assert_rejects(update, "object.update with a snapshot", "", "not", |v| set_key(v, "snapshot", snapshot));
}

fn set_key(v: &mut Value, key: &str, new: Value) {
    v.as_object_mut().expect("object").insert(key.to_string(), new);
}

#[test]
fn event_schema_rejects_malformed_and_out_of_range_values() {
    let events = events_of_scene();
    let new = event(&events, "object.new", None);
    assert_rejects(new, "unknown type", "/type", "enum", |v| set(v, "/type", json!("object.teleport")));
    assert_rejects(new, "another major version", "/schema", "const", |v| set(v, "/schema", json!("lookout.event/2")));
    assert_rejects(new, "missing seq", "", "required", |v| remove(v, "", "seq"));
    assert_rejects(new, "the stage's placeholder seq 0", "/seq", "minimum", |v| set(v, "/seq", json!(0)));
    assert_rejects(new, "bbox x beyond the frame", "/object/bbox/x", "maximum", |v| {
        set(v, "/object/bbox/x", json!(1.5))
    });
    assert_rejects(new, "negative bbox h", "/object/bbox/h", "minimum", |v| set(v, "/object/bbox/h", json!(-0.1)));
    assert_rejects(new, "path point beyond the frame", "/object/path/0/1", "maximum", |v| {
        set(v, "/object/path/0", json!([0.4, 1.2]))
    });
    assert_rejects(new, "path point with 3 coordinates", "/object/path/0", "maxItems", |v| {
        set(v, "/object/path/0", json!([0.4, 0.4, 0.0]))
    });
    assert_rejects(new, "track id beyond 2^53", "/object/track_id", "maximum", |v| {
        set(v, "/object/track_id", json!(9_007_199_254_740_992_u64))
    });
    assert_rejects(new, "score above 1", "/object/score", "maximum", |v| set(v, "/object/score", json!(1.01)));
    assert_rejects(new, "object without path", "/object", "required", |v| remove(v, "/object", "path"));
    assert_rejects(new, "model without sha256", "/model", "required", |v| remove(v, "/model", "sha256"));
    assert_rejects(new, "snapshot of another type", "/snapshot/content_type", "const", |v| {
        set(v, "/snapshot/content_type", json!("image/png"))
    });
    assert_rejects(new, "snapshot without topic", "/snapshot", "required", |v| remove(v, "/snapshot", "topic"));
    assert_rejects(new, "ts without milliseconds", "/ts", "pattern", |v| set(v, "/ts", json!("2026-11-22T04:17:21Z")));
    assert_rejects(new, "ts with an offset", "/ts", "pattern", |v| {
        set(v, "/ts", json!("2026-11-22T05:17:21.250+01:00"))
    });
    assert_rejects(new, "first_seen not a time", "/object/first_seen", "pattern", |v| {
        set(v, "/object/first_seen", json!("yesterday"))
    });
    assert_rejects(new, "id not a uuid", "/id", "pattern", |v| set(v, "/id", json!("event-1")));
    assert_rejects(new, "a UUIDv4 id", "/id", "pattern", |v| {
        set(v, "/id", json!("0b5a6f8e-3c1d-4e2f-9a7b-1c2d3e4f5a6b"))
    });
    assert_rejects(new, "an upper-case id", "/id", "pattern", |v| {
        let upper = v["id"].as_str().unwrap_or("").to_uppercase();
        set(v, "/id", json!(upper))
    });
    assert_rejects(new, "a camera id that is not a topic segment", "/camera", "pattern", |v| {
        set(v, "/camera", json!("cam/1"))
    });
}

#[test]
fn detections_schema_rejects_malformed_messages() {
    let d = &jsons_on(&scene(), "/detections")[0];
    assert_rejects(d, "bbox coordinate of 1.5", "/detections/0/bbox/x", "maximum", |v| {
        set(v, "/detections/0/bbox/x", json!(1.5))
    });
    assert_rejects(d, "missing seq", "", "required", |v| remove(v, "", "seq"));
    assert_rejects(d, "seq as a string", "/seq", "type", |v| set(v, "/seq", json!("42")));
    assert_rejects(d, "no detections", "/detections", "minItems", |v| set(v, "/detections", json!([])));
    assert_rejects(d, "score above 1", "/detections/0/score", "maximum", |v| {
        set(v, "/detections/0/score", json!(97.31))
    });
    assert_rejects(d, "detection without class", "/detections/0", "required", |v| remove(v, "/detections/0", "class"));
    assert_rejects(d, "frame of 0 pixels", "/frame/width", "minimum", |v| set(v, "/frame/width", json!(0)));
    assert_rejects(d, "model sha256 not hex", "/model/sha256", "pattern", |v| {
        set(v, "/model/sha256", json!("E4D205D7"))
    });
    assert_rejects(d, "another schema", "/schema", "const", |v| set(v, "/schema", json!("lookout.event/1")));
}

#[test]
fn counts_schema_rejects_malformed_messages() {
    let c = &jsons_on(&scene(), "/counts")[0];
    assert_rejects(c, "missing analysed_frames", "", "required", |v| remove(v, "", "analysed_frames"));
    assert_rejects(c, "missing seq", "", "required", |v| remove(v, "", "seq"));
    assert_rejects(c, "negative class count", "/classes/person", "minimum", |v| set(v, "/classes/person", json!(-1)));
    assert_rejects(c, "zone without occupancy", "/zones/door", "required", |v| remove(v, "/zones/door", "occupancy"));
    assert_rejects(c, "crossings as a string", "/lines/gate/in", "type", |v| set(v, "/lines/gate/in", json!("1")));
    assert_rejects(c, "a line with one direction", "/lines/gate", "minProperties", |v| remove(v, "/lines/gate", "out"));
    assert_rejects(c, "interval without end", "/interval", "required", |v| remove(v, "/interval", "end"));
}

#[test]
fn delivery_schema_rejects_incomplete_gaps() {
    let g = gap("full");
    assert_rejects(&g, "gap without first_seq", "", "required", |v| remove(v, "", "first_seq"));
    assert_rejects(&g, "gap without reason", "", "required", |v| remove(v, "", "reason"));
    assert_rejects(&g, "unknown reason", "/reason", "enum", |v| set(v, "/reason", json!("lost")));
    assert_rejects(&g, "empty gap", "/count", "minimum", |v| set(v, "/count", json!(0)));
    assert_rejects(&g, "missing seq", "", "required", |v| remove(v, "", "seq"));
    assert_rejects(&g, "unknown type", "/type", "enum", |v| set(v, "/type", json!("delivery.late")));
}

#[test]
fn status_schemas_reject_incomplete_presence() {
    let online = status("online", None);
    assert_rejects(&online, "birth without cameras", "", "required", |v| remove(v, "", "cameras"));
    assert_rejects(&online, "birth without config_sha256", "", "required", |v| remove(v, "", "config_sha256"));
    assert_rejects(&online, "unknown state", "/state", "enum", |v| set(v, "/state", json!("away")));
    assert_rejects(&online, "status without version", "", "required", |v| remove(v, "", "version"));
    assert_rejects(&online, "status without started", "", "required", |v| remove(v, "", "started"));
    assert_rejects(&online, "camera model without sha256", "/cameras/0/model", "required", |v| {
        remove(v, "/cameras/0/model", "sha256")
    });
    let offline = status("offline", Some("shutdown"));
    assert_rejects(&offline, "offline without reason", "", "required", |v| remove(v, "", "reason"));
    let cam = camera_status("reconnecting", Some("camera cam-1: connection refused"), Some(at(10.0)));
    assert_rejects(&cam, "reconnecting without reason", "", "required", |v| remove(v, "", "reason"));
    assert_rejects(&cam, "last_frame absent instead of null", "", "required", |v| remove(v, "", "last_frame"));
    assert_rejects(&cam, "unknown camera state", "/state", "enum", |v| set(v, "/state", json!("ok")));
    assert_rejects(&cam, "negative fps", "/input_fps", "minimum", |v| set(v, "/input_fps", json!(-1.0)));
    assert_rejects(&cam, "last_frame not a time", "/last_frame", "pattern", |v| {
        set(v, "/last_frame", json!("2026-11-22 04:17:30"))
    });
}

// ---------------------------------------------------------------------------------------
// Compatibility and the schema files themselves

/// Adds a field `future` to every object of `v`.
fn add_unknown_fields(v: &mut Value) {
    if let Value::Object(m) = v {
        for (_, child) in m.iter_mut() {
            add_unknown_fields(child);
        }
        m.insert("future".into(), json!({ "added": "later" }));
    } else if let Value::Array(items) = v {
        for child in items {
            add_unknown_fields(child);
        }
    }
}

#[test]
fn unknown_fields_are_accepted_at_every_level() {
    let published = scene();
    let mut messages: Vec<Value> = published.iter().filter(|p| !p.is_snapshot()).map(Published::json).collect();
    messages.extend([gap("expired"), status("online", None), status("offline", Some("shutdown"))]);
    messages.push(camera_status("streaming", None, Some(at(10.0))));
    for msg in messages {
        let mut v = msg.clone();
        add_unknown_fields(&mut v);
        // The maps of counts take any key, but their values keep their shape.
        if v["schema"] == COUNTS_SCHEMA {
            set(&mut v, "/classes/future", json!(0));
            set(&mut v, "/zones/future", json!({ "occupancy": 0, "added": "later" }));
            set(&mut v, "/zones/door/future", json!("later"));
            set(&mut v, "/lines/gate/future", json!(0));
            set(&mut v, "/lines/future", json!({ "in": 0, "out": 0 }));
            set(&mut v, "/groups/future", json!(0));
            set(&mut v, "/zones/door/classes/future", json!(0));
            set(&mut v, "/zones/door/groups/future", json!(0));
            for (map, name) in [("line_classes", "person"), ("line_groups", "pedestrian")] {
                set(&mut v, &format!("/{map}/future"), json!({}));
                set(&mut v, &format!("/{map}/gate/future"), json!({ "in": 0, "out": 0 }));
                if v.pointer(&format!("/{map}/gate/{name}")).is_some() {
                    set(&mut v, &format!("/{map}/gate/{name}/future"), json!(0));
                }
            }
        }
        let errs = errors(msg["schema"].as_str().unwrap_or_default(), &v);
        assert!(errs.is_empty(), "a consumer must accept added fields: {errs:#?}\n{}", pretty(&v));
    }
}

#[test]
fn undeclared_fields_are_caught_by_the_contract_check() {
    let events = events_of_scene();
    let doc = schema_doc(EVENT_SCHEMA);
    let mut v = event(&events, "object.new", None).clone();
    set_key(&mut v, "speed", json!(1.2));
    set(&mut v, "/object/bbox", json!({ "x": 0.1, "y": 0.1, "w": 0.1, "h": 0.1, "z": 0.0 }));
    let mut extra = Vec::new();
    undeclared(&doc, &doc, &v, "", &mut extra);
    assert_eq!(extra, ["/object/bbox/z", "/speed"]);
}

/// Every `properties` entry in `node` (recursively) has a description; no
/// `additionalProperties: false` or `unevaluatedProperties: false` anywhere.
fn check_schema_node(node: &Value, path: &str, problems: &mut Vec<String>) {
    match node {
        Value::Object(m) => {
            for key in ["additionalProperties", "unevaluatedProperties"] {
                if m.get(key) == Some(&Value::Bool(false)) {
                    problems.push(format!("{path}/{key} is false: consumers' added fields would be rejected"));
                }
            }
            if let Some(Value::Object(props)) = m.get("properties") {
                for (k, p) in props {
                    let described = p.get("description").and_then(Value::as_str).is_some_and(|d| !d.trim().is_empty());
                    // Conditions (if/then) only restate properties declared elsewhere.
                    let in_condition = path.contains("/if") || path.contains("/then");
                    if !described && !in_condition {
                        problems.push(format!("{path}/properties/{k} has no description"));
                    }
                }
            }
            for (k, v) in m {
                check_schema_node(v, &format!("{path}/{k}"), problems);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_schema_node(v, &format!("{path}/{i}"), problems);
            }
        }
        _ => {}
    }
}

#[test]
fn schemas_are_draft_2020_12_describe_every_property_and_allow_added_fields() {
    for name in SCHEMAS {
        let doc = schema_doc(name);
        if let Err(e) = jsonschema::meta::validate(&doc) {
            panic!("{name} is not a valid JSON Schema: {e}");
        }
        assert_eq!(doc["$schema"], "https://json-schema.org/draft/2020-12/schema", "{name}");
        assert_eq!(doc["$id"], format!("https://lookout.dev/schemas/{name}.json"), "{name}");
        assert_eq!(doc["title"], name);
        assert!(doc["description"].as_str().is_some_and(|d| d.len() > 40), "{name} has a description");
        assert_eq!(doc["properties"]["schema"]["const"], name, "{name} pins its schema field");
        let mut problems = Vec::new();
        check_schema_node(&doc, "", &mut problems);
        assert!(problems.is_empty(), "{name}: {problems:#?}");
    }
    // The checker itself finds what it must.
    let mut problems = Vec::new();
    check_schema_node(
        &json!({ "properties": { "a": { "type": "string" } }, "additionalProperties": false }),
        "",
        &mut problems,
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
}
