//! Events against ground truth: a scripted scene (people cut out of real photos walking
//! scripted paths, rendered to H.264, served over RTSP) through the real agent, model
//! and broker. The truth of the scene (`lookout::demo::scene::standard_scene`):
//!
//! - A walks east along the bottom, crossing x = 0.5 at 8 s and passing through "bench";
//! - B walks west higher up, crossing x = 0.5 at 10 s; A and B are in view together;
//! - C walks into "bench", stands there ~11 s, walks out; nobody else is in view then.
//!
//! Every received message is also validated against docs/schemas by the recorder.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lookout_e2e::*;
use serde_json::Value;

const CAMERA: &str = "scene";

/// The scene's rules: the counting line at x = 0.5, the bench, and the whole frame as a
/// plaza that is crowded with more than one person.
const RULES: &str = r#"lost_after = 2
count_interval = 5
[[cameras.zones]]
name = "bench"
polygon = [[0.55, 0.7], [0.75, 0.7], [0.75, 1.0], [0.55, 1.0]]
loiter_seconds = 6
[[cameras.zones]]
name = "plaza"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
max_objects = 1
classes = ["person"]
[[cameras.lines]]
name = "gate"
points = [[0.5, 0.0], [0.5, 1.0]]
directions = ["east", "west"]
"#;

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

fn track(e: &Value) -> u64 {
    e["object"]["track_id"].as_u64().unwrap_or_else(|| panic!("no track_id in {e}"))
}

fn summary(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            let what = e["zone"]["name"].as_str().or(e["line"]["direction"].as_str()).unwrap_or("");
            format!("{} {} {} {what}", e["ts"], e["type"], e["object"]["track_id"])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_scene_gives_exact_crossings_zone_events_and_one_track_per_person() {
    let scene = standard_scene();
    let media = scene_media(&scene).expect("scene media");
    let server = RtspServer::start(0, vec![("/scene".into(), media)]).expect("rtsp server");
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = scratch("scene");
    let config =
        write_config(&dir, &broker.url(), &[Cam { id: CAMERA, url: server.url("/scene"), fps: 5.0, min_score: 0.5 }])
            .expect("config");
    let mut text = std::fs::read_to_string(&config).expect("config text");
    text.push_str(RULES);
    std::fs::write(&config, text).expect("config");

    let rec = Recorder::start(broker.port(), &format!("lookout/v1/test-site/gw-test/cameras/{CAMERA}/#"))
        .await
        .expect("recorder");
    let agent = AgentProcess::start(&config).expect("agent");
    // The script ends at 34 s after the agent connects; tracks end 2 s after last sight.
    let waited = rec
        .wait_for(Duration::from_secs(120), "three object.end events", |m| {
            m.iter().filter(|r| r.json["type"] == "object.end").count() >= 3
        })
        .await;
    // A little longer: nothing more may happen in the empty scene.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = agent.log();
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success(), "{log}");
    if let Err(e) = waited {
        let events: Vec<Value> = rec.snapshot().into_iter().map(|r| r.json).filter(|j| j["type"].is_string()).collect();
        panic!("{e}\n{}\n{log}", summary(&events));
    }
    // The final counts come at shutdown.
    let all = rec
        .wait_for(Duration::from_secs(10), "the final counts", |m| {
            m.iter().filter(|r| r.topic.ends_with("/counts")).count() >= 2
        })
        .await
        .expect("counts");

    let events: Vec<Value> = all.iter().filter(|r| r.topic.ends_with("/events")).map(|r| r.json.clone()).collect();
    let story = summary(&events);

    // One track per person: three objects, each new once and ended once.
    let new: Vec<u64> = of_type(&events, "object.new").into_iter().map(track).collect();
    let end: BTreeSet<u64> = of_type(&events, "object.end").into_iter().map(track).collect();
    assert_eq!(new.len(), 3, "three people, three objects:\n{story}");
    assert_eq!(new.iter().copied().collect::<BTreeSet<_>>(), end, "each object ends once:\n{story}");
    for e in events.iter().filter(|e| !e["object"].is_null()) {
        assert!(new.contains(&track(e)), "event about an object never announced:\n{e}\n{story}");
    }
    let (a, b, c) = (new[0], new[1], new[2]);

    // Exact crossings: A east, then B west.
    let crossings: Vec<(u64, &str)> = of_type(&events, "line.cross")
        .into_iter()
        .map(|e| (track(e), e["line"]["direction"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(crossings, vec![(a, "east"), (b, "west")], "\n{story}");
    for e in of_type(&events, "line.cross") {
        assert_eq!(e["line"]["name"], "gate");
    }

    // The bench: A passes through, C loiters; B (higher up) never enters.
    let bench: Vec<(&str, u64)> = events
        .iter()
        .filter(|e| e["zone"]["name"] == "bench")
        .map(|e| (e["type"].as_str().unwrap_or(""), track(e)))
        .collect();
    assert_eq!(
        bench,
        vec![("zone.enter", a), ("zone.exit", a), ("zone.enter", c), ("zone.loiter", c), ("zone.exit", c)],
        "\n{story}"
    );
    let loiter = of_type(&events, "zone.loiter")[0];
    assert!(loiter["zone"]["seconds"].as_f64().unwrap_or(0.0) >= 6.0, "{loiter}");

    // The plaza is crowded once, while A and B are both in view.
    let crowd: Vec<(&str, u64)> = events
        .iter()
        .filter(|e| e["zone"]["name"] == "plaza" && e["type"].as_str().is_some_and(|t| t.contains("crowd")))
        .map(|e| (e["type"].as_str().unwrap_or(""), e["zone"]["count"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(crowd, vec![("zone.crowded", 2), ("zone.crowd_cleared", 1)], "\n{story}");

    // Lifecycle details: A's end lists the zones it visited and a path from west to east.
    let a_end = of_type(&events, "object.end").into_iter().find(|e| track(e) == a).expect("A ends");
    assert_eq!(a_end["object"]["zones"], serde_json::json!(["plaza", "bench"]), "{a_end}");
    let path = a_end["object"]["path"].as_array().expect("path");
    let x = |p: &Value| p[0].as_f64().unwrap_or(f64::NAN);
    assert!(path.len() >= 3 && x(&path[0]) < 0.35 && x(&path[path.len() - 1]) > 0.65, "{a_end}");
    assert!(a_end["object"]["dwell_seconds"].as_f64().unwrap_or(0.0) > 5.0, "{a_end}");

    // Counts: the crossings of every interval add up to the events.
    let counts: Vec<&Value> = all.iter().filter(|r| r.topic.ends_with("/counts")).map(|r| &r.json).collect();
    let mut by_dir: BTreeMap<String, u64> = BTreeMap::new();
    for c in &counts {
        for (dir, n) in c["lines"]["gate"].as_object().expect("gate counts") {
            *by_dir.entry(dir.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    assert_eq!(by_dir, BTreeMap::from([("east".to_string(), 1), ("west".to_string(), 1)]), "{counts:?}");
    assert!(counts.iter().any(|c| c["classes"]["person"] == 2), "some interval ends with A and B in view");

    // Snapshots: one per object.new and object.end, published before the event, a JPEG
    // of at most 640 px that shows a person where the object was.
    let manifest = lookout::infer::manifest::ModelSpec::load(&person_manifest()).expect("manifest");
    for e in events.iter().filter(|e| e["type"] == "object.new" || e["type"] == "object.end") {
        let snap = &e["snapshot"];
        assert_eq!(snap["id"], e["id"], "{e}");
        let topic = snap["topic"].as_str().expect("snapshot topic");
        let pos = |pred: &dyn Fn(&Received) -> bool| all.iter().position(pred);
        let s_at = pos(&|r| r.topic == topic).unwrap_or_else(|| panic!("snapshot {topic} never arrived"));
        let e_at = pos(&|r| r.json["id"] == e["id"]).expect("event");
        assert!(s_at < e_at, "the snapshot precedes its event");
        let img = image::load_from_memory(&all[s_at].payload).expect("snapshot decodes").to_rgb8();
        assert_eq!((img.width(), img.height()), (640, 480));
        assert_eq!((snap["width"].as_u64(), snap["height"].as_u64()), (Some(640), Some(480)));
        let found = lookout::probe::detect_image(&img, &manifest, 0.5).expect("detector");
        assert!(!found.is_empty(), "no person in the snapshot of {e}");
    }
    drop(server);
}

/// The city scene's rules: the line at x = 0.5 for every class, a road zone for vehicles
/// and a pavement zone for people, with groups as a platform would name them.
const CITY_RULES: &str = r#"lost_after = 2
count_interval = 4
[[cameras.zones]]
name = "road"
polygon = [[0.0, 0.5], [1.0, 0.5], [1.0, 0.75], [0.0, 0.75]]
classes = ["vehicle"]
[[cameras.zones]]
name = "pavement"
polygon = [[0.0, 0.85], [1.0, 0.85], [1.0, 1.0], [0.0, 1.0]]
classes = ["person"]
[[cameras.lines]]
name = "gate"
points = [[0.5, 0.0], [0.5, 1.0]]
directions = ["east", "west"]

[class_groups]
vehicle = ["car", "bus", "truck", "motorcycle"]
"#;

/// Sums `counts[*][map][line][name][direction]` over the intervals.
fn crossing_totals(counts: &[&Value], map: &str) -> BTreeMap<(String, String), u64> {
    let mut totals = BTreeMap::new();
    for c in counts {
        for (name, dirs) in c[map]["gate"].as_object().unwrap_or_else(|| panic!("no {map}.gate in {c}")) {
            for (dir, n) in dirs.as_object().expect("directions") {
                *totals.entry((name.clone(), dir.clone())).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    totals.retain(|_, n| *n > 0);
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn city_scene_counts_crossings_and_occupancy_per_class_and_group() {
    let scene = city_scene();
    let media = scene_media(&scene).expect("scene media");
    let server = RtspServer::start(0, vec![("/city".into(), media)]).expect("rtsp server");
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = scratch("city-scene");
    let config =
        write_config(&dir, &broker.url(), &[Cam { id: "city", url: server.url("/city"), fps: 5.0, min_score: 0.5 }])
            .expect("config");
    let text = std::fs::read_to_string(&config).expect("config text");
    let text = text.replace(&person_manifest().display().to_string(), &city_manifest().display().to_string());
    std::fs::write(&config, format!("{text}{CITY_RULES}")).expect("config");

    let rec = Recorder::start(broker.port(), "lookout/v1/test-site/gw-test/cameras/city/#").await.expect("recorder");
    let agent = AgentProcess::start(&config).expect("agent");
    let waited = rec
        .wait_for(Duration::from_secs(120), "three object.end events", |m| {
            m.iter().filter(|r| r.json["type"] == "object.end").count() >= 3
        })
        .await;
    let (status, log) = agent.stop().expect("stop");
    assert!(status.success(), "{log}");
    if let Err(e) = waited {
        let events: Vec<Value> = rec.snapshot().into_iter().map(|r| r.json).filter(|j| j["type"].is_string()).collect();
        panic!("{e}\n{}\n{log}", summary(&events));
    }
    // Everything the outbox held is under this camera's topics (one camera, no gaps):
    // once the recorder has as many, the final partial counts are in.
    let acked = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|s| s["mqtt_acked"].as_u64())
        .unwrap_or_else(|| panic!("the agent's run summary:\n{log}")) as usize;
    let all = rec
        .wait_for(Duration::from_secs(10), "every published message", |m| {
            m.iter().filter(|r| !r.topic.ends_with("/status")).count() >= acked
        })
        .await
        .expect("messages");
    let events: Vec<Value> = all.iter().filter(|r| r.topic.ends_with("/events")).map(|r| r.json.clone()).collect();
    let story = summary(&events);

    // One track per road user, each with its class and, for vehicles, its group.
    let new = of_type(&events, "object.new");
    let classes: Vec<(&str, &Value)> =
        new.iter().map(|e| (e["object"]["class"].as_str().unwrap_or(""), &e["object"]["groups"])).collect();
    let vehicle = serde_json::json!(["vehicle"]);
    assert_eq!(
        classes,
        vec![("car", &vehicle), ("truck", &vehicle), ("person", &Value::Null)],
        "the car, the van, then the person:\n{story}"
    );
    let (car, van, person) = (track(new[0]), track(new[1]), track(new[2]));

    // Exact crossings, by class.
    let crossings: Vec<(u64, &str, &str)> = of_type(&events, "line.cross")
        .into_iter()
        .map(|e| (track(e), e["object"]["class"].as_str().unwrap_or(""), e["line"]["direction"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(crossings, vec![(car, "car", "east"), (van, "truck", "west"), (person, "person", "east")], "\n{story}");

    // Zones filtered by group and by label: vehicles on the road, the person on the pavement.
    // (A track's exit comes when it is declared lost, which may be after the next road
    // user appeared in the other zone: the order is per zone.)
    let zone_events = |zone: &str| -> Vec<(&str, u64)> {
        events
            .iter()
            .filter(|e| e["zone"]["name"] == zone)
            .map(|e| (e["type"].as_str().unwrap_or(""), track(e)))
            .collect()
    };
    assert_eq!(
        zone_events("road"),
        vec![("zone.enter", car), ("zone.exit", car), ("zone.enter", van), ("zone.exit", van)],
        "\n{story}"
    );
    assert_eq!(zone_events("pavement"), vec![("zone.enter", person), ("zone.exit", person)], "\n{story}");

    // Counts: per class and per group, adding up to the events.
    let counts: Vec<&Value> = all.iter().filter(|r| r.topic.ends_with("/counts")).map(|r| &r.json).collect();
    let key = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        crossing_totals(&counts, "line_classes"),
        BTreeMap::from([(key("car", "east"), 1), (key("person", "east"), 1), (key("truck", "west"), 1)]),
        "{counts:?}"
    );
    assert_eq!(
        crossing_totals(&counts, "line_groups"),
        BTreeMap::from([(key("vehicle", "east"), 1), (key("vehicle", "west"), 1)]),
        "{counts:?}"
    );
    for c in &counts {
        assert_eq!(
            c["zones"]["road"]["classes"].as_object().map(|m| m.len()),
            Some(4),
            "every class of the filter: {c}"
        );
        assert_eq!(c["zones"]["road"]["groups"]["vehicle"], c["zones"]["road"]["occupancy"], "{c}");
        assert_eq!(c["groups"]["vehicle"].as_u64(), Some(c["zones"]["road"]["occupancy"].as_u64().unwrap_or(0)));
    }
    let road_has = |class: &str| counts.iter().any(|c| c["zones"]["road"]["classes"][class] == 1);
    assert!(road_has("car") && road_has("truck"), "an interval ends with each vehicle on the road: {counts:?}");
    assert!(counts.iter().any(|c| c["zones"]["pavement"]["classes"]["person"] == 1), "{counts:?}");
    drop(server);
}

/// A mostly static camera at 1 fps (keyframes only): once the first crossing has taught
/// the camera what motion looks like in its stream, static keyframes are not even
/// decoded, yet the second crossing is caught exactly and the camera is never taken for
/// a stalled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_scenes_keyframes_are_skipped_undecoded_without_losing_a_crossing() {
    let scene = quiet_scene();
    let media = scene_media(&scene).expect("scene media");
    let server = RtspServer::start(0, vec![("/quiet".into(), media)]).expect("rtsp server");
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = scratch("quiet-scene");
    let config =
        write_config(&dir, &broker.url(), &[Cam { id: CAMERA, url: server.url("/quiet"), fps: 1.0, min_score: 0.5 }])
            .expect("config");
    let port = free_port().expect("port");
    let text = std::fs::read_to_string(&config)
        .expect("config text")
        .replace("listen = \"off\"", &format!("listen = \"127.0.0.1:{port}\""))
        + QUIET_SCENE_RULES;
    std::fs::write(&config, text).expect("config");
    let rec = Recorder::start(broker.port(), &format!("lookout/v1/test-site/gw-test/cameras/{CAMERA}/events"))
        .await
        .expect("recorder");
    let agent = AgentProcess::start(&config).expect("agent");
    // A crosses at 22 s, B at 62 s; B's track ends 3 s after he leaves at 64 s.
    let waited = rec
        .wait_for(Duration::from_secs(150), "B's object.end", |m| {
            m.iter().filter(|r| r.json["type"] == "object.end").count() >= 2
        })
        .await;
    let metrics = http_get(port, "/metrics").map(|(_, m)| m).unwrap_or_default();
    let log = agent.log();
    let (status, summary_json) = agent.stop().expect("stop");
    assert!(status.success(), "{log}");
    let events: Vec<Value> = rec.snapshot().into_iter().map(|r| r.json).collect();
    let story = summary(&events);
    waited.unwrap_or_else(|e| panic!("{e}\n{story}\n{log}"));

    let crossings: Vec<&str> =
        of_type(&events, "line.cross").iter().map(|e| e["line"]["direction"].as_str().unwrap_or("")).collect();
    assert_eq!(crossings, ["east", "west"], "A east, then B west:\n{story}");
    assert_eq!(of_type(&events, "zone.enter").len(), 1, "A enters the walkway, B never:\n{story}");
    assert_eq!(of_type(&events, "zone.exit").len(), 1, "\n{story}");
    assert_eq!(of_type(&events, "object.new").len(), 2, "two people, two objects:\n{story}");

    let series = |name: &str| -> u64 {
        let key = format!("{name}{{camera=\"{CAMERA}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let skipped = series("lookout_frames_activity_skipped_total");
    assert!(skipped >= 10, "static keyframes between the crossings skipped undecoded: {skipped}\n{metrics}");
    assert_eq!(series("lookout_activity_gate_active"), 1, "{metrics}");
    let s: Value = serde_json::from_str(summary_json.trim()).expect("summary");
    assert_eq!(s["cameras"][0]["restarts"], 0, "a quiet camera is not a stalled one:\n{log}");
    assert!(!log.contains("corrupt stream"), "{log}");
}
