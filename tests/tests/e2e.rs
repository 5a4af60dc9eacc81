//! End-to-end: real mosquitto, real gst-rtsp-server, real ONNX Runtime and model, the
//! real `lookout` binary; assertions on what an MQTT subscriber receives.
//!
//! Timeouts here are generous upper bounds for "it never happened", not performance
//! thresholds: the machine is shared and slow.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lookout_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn ts_window() -> (String, String) {
    let now = SystemTime::now();
    (
        lookout::event::rfc3339_millis(now - Duration::from_secs(300)),
        lookout::event::rfc3339_millis(now + Duration::from_secs(5)),
    )
}

/// Every field the detections schema promises, with the right types and ranges.
fn assert_detections_message(m: &Received, camera: &str, width: u64, height: u64, since: &str, until: &str) {
    let j = &m.json;
    assert_eq!(m.topic, format!("lookout/v1/test-site/gw-test/cameras/{camera}/detections"));
    assert_eq!(j["schema"], "lookout.detections/1", "{j}");
    assert_eq!(j["site"], "test-site");
    assert_eq!(j["agent"], "gw-test");
    assert_eq!(j["camera"], camera);
    let ts = j["ts"].as_str().expect("ts is a string");
    // RFC 3339 UTC with milliseconds: 2026-11-22T04:17:20.123Z
    assert_eq!(ts.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".", "{ts}");
    assert!(ts[20..23].chars().all(|c| c.is_ascii_digit()), "{ts}");
    assert!(since <= ts && ts <= until, "capture time {ts} is not recent ({since} .. {until})");
    assert_eq!(j["frame"]["width"], width, "{j}");
    assert_eq!(j["frame"]["height"], height, "{j}");
    assert_eq!(j["model"]["name"], "ssdlite-mobilenetv2-person");
    assert_eq!(j["model"]["version"], "0.2.0");
    let dets = j["detections"].as_array().expect("detections array");
    assert!(!dets.is_empty(), "a message is only sent for a frame with detections");
    for d in dets {
        assert_eq!(d["class"], "person");
        assert_eq!(d["class_id"], 0);
        let score = d["score"].as_f64().expect("score");
        assert!((0.5..=1.0).contains(&score), "score {score} below the camera's min_score");
        let b = &d["bbox"];
        let (x, y, w, h) = (b["x"].as_f64(), b["y"].as_f64(), b["w"].as_f64(), b["h"].as_f64());
        let (x, y, w, h) = (x.expect("x"), y.expect("y"), w.expect("w"), h.expect("h"));
        assert!(x >= 0.0 && y >= 0.0 && w > 0.0 && h > 0.0 && x + w <= 1.0 + 1e-6 && y + h <= 1.0 + 1e-6, "{b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_schema_complete_detections_for_every_h264_and_h265_camera() {
    let broker = Mosquitto::start().expect("mosquitto");
    let h264 = Arc::new(clip(Codec::H264).expect("h264 clip"));
    let h265 = Arc::new(clip(Codec::H265).expect("h265 clip"));
    let server = RtspServer::start(
        0,
        vec![
            ("/a".into(), Media::Clip { codec: Codec::H264, units: h264.clone(), fps: 10, loop_from: 0 }),
            ("/b".into(), Media::Clip { codec: Codec::H264, units: h264, fps: 10, loop_from: 0 }),
            ("/c".into(), Media::Clip { codec: Codec::H265, units: h265, fps: 10, loop_from: 0 }),
        ],
    )
    .expect("rtsp server");
    let dir = scratch("schema");
    let cams = [
        Cam { id: "cam-264-a", url: server.url("/a"), fps: 2.0, min_score: 0.5 },
        Cam { id: "cam-264-b", url: server.url("/b"), fps: 1.0, min_score: 0.5 },
        Cam { id: "cam-265", url: server.url("/c"), fps: 2.0, min_score: 0.5 },
        // The same streams through the shared RTSP client (the first three through rtspsrc).
        Cam { id: "shared-264-b", url: server.url("/b"), fps: 1.0, min_score: 0.5 },
        Cam { id: "shared-265", url: server.url("/c"), fps: 2.0, min_score: 0.5 },
    ];
    let config = write_config(&dir, &broker.url(), &cams).expect("config");
    for (id, client) in [
        ("cam-264-a", "gstreamer"),
        ("cam-264-b", "gstreamer"),
        ("cam-265", "gstreamer"),
        ("shared-264-b", "shared"),
        ("shared-265", "shared"),
    ] {
        add_camera_key(&config, id, &format!("rtsp_client = \"{client}\"")).expect("config");
    }
    let rec = Recorder::start(broker.port(), "lookout/v1/test-site/gw-test/cameras/+/detections").await.expect("sub");
    let statuses = Recorder::start(broker.port(), "lookout/v1/test-site/gw-test/cameras/+/status").await.expect("sub");
    let agent = AgentProcess::start(&config).expect("agent");

    // Each camera's status says which client receives it and what decodes it.
    let setups = [
        ("cam-264-a", "gstreamer", "H264"),
        ("cam-264-b", "gstreamer", "H264"),
        ("cam-265", "gstreamer", "H265"),
        ("shared-264-b", "shared", "H264"),
        ("shared-265", "shared", "H265"),
    ];
    statuses
        .wait_for(WAIT, "every camera's status naming its client, codec and decoder", |m| {
            setups.iter().all(|(id, client, codec)| {
                m.iter().any(|r| {
                    r.json["camera"] == *id
                        && r.json["rtsp_client"] == *client
                        && r.json["codec"] == *codec
                        && r.json["decoder"].as_str().is_some_and(|d| !d.is_empty())
                })
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let got = rec
        .wait_for(WAIT, "3 messages from each camera", |m| {
            cams.iter().all(|c| m.iter().filter(|r| r.json["camera"] == c.id).count() >= 3)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let (since, until) = ts_window();
    for c in &cams {
        for m in got.iter().filter(|r| r.json["camera"] == c.id) {
            assert_detections_message(m, c.id, 768, 576, &since, &until);
        }
    }
    // Capture times of one camera go forward.
    let ts: Vec<&str> =
        got.iter().filter(|r| r.json["camera"] == "cam-264-a").filter_map(|r| r.json["ts"].as_str()).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "timestamps not increasing: {ts:?}");

    let (status, summary) = agent.stop().expect("stop");
    assert!(status.success(), "lookout exited with {status} on SIGTERM");
    let summary: Value = serde_json::from_str(summary.trim()).expect("summary JSON on stdout");
    for c in summary["cameras"].as_array().expect("cameras") {
        assert!(c["analysed_frames"].as_u64() >= Some(3), "{c}");
        // At most one detections message per analysed frame; events and counts come on top.
        let detections = got.iter().filter(|r| r.json["camera"] == c["camera"]).count() as u64;
        assert!(detections <= c["analysed_frames"].as_u64().unwrap_or(0), "{c}");
        assert!(c["messages"].as_u64().unwrap_or(0) >= detections, "{c}");
    }
    let handed: u64 =
        summary["cameras"].as_array().expect("cameras").iter().filter_map(|c| c["messages"].as_u64()).sum();
    assert_eq!(summary["mqtt_acked"].as_u64(), Some(handed), "{summary}");
    // At 1 fps with a 1 s GOP the agent decodes keyframes only, whichever client receives.
    for id in ["cam-264-b", "shared-264-b"] {
        let slow = summary["cameras"].as_array().expect("cameras").iter().find(|c| c["camera"] == id).expect("b");
        let (enc, dec) = (slow["encoded_frames"].as_u64().unwrap_or(0), slow["decoded_frames"].as_u64().unwrap_or(0));
        assert!(dec * 5 < enc, "{id}: keyframe-only decoding expected at 1 fps: decoded {dec} of {enc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_on_still_images_over_h264_and_mjpeg_match_the_conversion_reference() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("models/ssdlite-mobilenetv2-person/reference/detections.json"))
            .expect("reference"),
    )
    .expect("reference JSON");
    let broker = Mosquitto::start().expect("mosquitto");
    // Two stills over H.264, one over MJPEG (RTP JPEG).
    let images = ["grace_hopper.jpg", "messi5.jpg", "grace_hopper.jpg"];
    let mounts = images
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let image = media_file(name).expect("media");
            (format!("/still{i}"), if i < 2 { Media::Still { image } } else { Media::MjpegStill { image } })
        })
        .collect();
    let server = RtspServer::start(0, mounts).expect("rtsp server");
    // The last two receive the same stills through the shared RTSP client, the rest
    // through rtspsrc.
    let ids = ["still-grace", "still-messi", "mjpeg-grace", "shared-messi", "shared-mjpeg-grace"];
    let images = [images[0], images[1], images[2], images[1], images[2]];
    let cams: Vec<Cam> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Cam { id, url: server.url(&format!("/still{}", [0, 1, 2, 1, 2][i])), fps: 2.0, min_score: 0.3 })
        .collect();
    let dir = scratch("still");
    let config = write_config(&dir, &broker.url(), &cams).expect("config");
    for (i, id) in ids.iter().enumerate() {
        let client = if i < 3 { "gstreamer" } else { "shared" };
        add_camera_key(&config, id, &format!("rtsp_client = \"{client}\"")).expect("config");
    }
    let rec = Recorder::start(broker.port(), "lookout/v1/test-site/gw-test/cameras/+/detections").await.expect("sub");
    let agent = AgentProcess::start(&config).expect("agent");
    let got = rec
        .wait_for(WAIT, "3 messages per still", |m| {
            ids.iter().all(|id| m.iter().filter(|r| r.json["camera"] == *id).count() >= 3)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    for (id, image) in ids.iter().zip(images) {
        let want = reference["images"].as_array().expect("images").iter().find(|i| i["image"] == image).expect("image");
        let want_dets = want["detections"].as_array().expect("detections");
        for m in got.iter().filter(|r| r.json["camera"] == *id) {
            assert_eq!(m.json["frame"]["width"], want["width"]);
            assert_eq!(m.json["frame"]["height"], want["height"]);
            let dets = m.json["detections"].as_array().expect("detections");
            assert_eq!(dets.len(), want_dets.len(), "{image}: got {dets:?}, reference {want_dets:?}");
            for (g, w) in dets.iter().zip(want_dets) {
                let overlap = iou(&g["bbox"], &w["bbox"]);
                let (gs, ws) = (g["score"].as_f64().unwrap_or(0.0), w["score"].as_f64().unwrap_or(1.0));
                eprintln!("{image}: IoU {overlap:.4} with the reference, score {gs:.4} vs {ws:.4}");
                assert!(
                    overlap >= 0.85,
                    "{image}: IoU {overlap:.3} with the reference box {} vs {}",
                    g["bbox"],
                    w["bbox"]
                );
                assert!((gs - ws).abs() <= 0.05, "{image}: score {gs} vs reference {ws}");
            }
        }
    }
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_resumes_after_its_rtsp_server_restarts_while_another_camera_never_stops() {
    let serve = std::path::PathBuf::from(env!("CARGO_BIN_EXE_rtsp-serve"));
    let broker = Mosquitto::start().expect("mosquitto");
    let port_a = free_port().expect("port");
    let server_a = RtspProcess::start(&serve, port_a, &["/cam=h264"]).expect("server a");
    let server_b = RtspProcess::start(&serve, free_port().expect("port"), &["/cam=h264"]).expect("server b");
    let cams = [
        Cam { id: "flaky", url: server_a.url("/cam"), fps: 2.0, min_score: 0.5 },
        Cam { id: "steady", url: server_b.url("/cam"), fps: 2.0, min_score: 0.5 },
    ];
    let dir = scratch("restart");
    let config = write_config(&dir, &broker.url(), &cams).expect("config");
    let rec = Recorder::start(broker.port(), "lookout/v1/test-site/gw-test/cameras/+/detections").await.expect("sub");
    let status =
        Recorder::start(broker.port(), "lookout/v1/test-site/gw-test/cameras/flaky/status").await.expect("sub");
    let agent = AgentProcess::start(&config).expect("agent");
    rec.wait_for(WAIT, "both cameras streaming", |m| {
        ["flaky", "steady"].iter().all(|id| m.iter().filter(|r| r.json["camera"] == *id).count() >= 2)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    server_a.kill();
    // Nobody else may take the port while the server is down (tests run in parallel).
    let hold = PortHold::again(port_a).expect("hold port");
    let killed = Instant::now();
    // While the flaky camera's server is down, the steady camera keeps publishing.
    rec.wait_for(WAIT, "steady camera to keep publishing during the outage", |m| {
        m.iter().filter(|r| r.json["camera"] == "steady" && r.at > killed + Duration::from_secs(2)).count() >= 6
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let quiet_from = killed + Duration::from_secs(2);
    let flaky_during_outage = rec.from_camera("flaky").iter().filter(|r| r.at > quiet_from).count();
    assert_eq!(flaky_during_outage, 0, "the flaky camera cannot publish while its server is down");
    // Its retained status says so, with the reason, and never claims it streams meanwhile.
    let states: Vec<String> = status
        .snapshot()
        .iter()
        .filter(|r| r.at > killed)
        .map(|r| format!("{} ({})", r.json["state"], r.json["reason"]))
        .collect();
    assert!(states.iter().any(|s| s.starts_with("\"reconnecting\"")), "status during the outage: {states:?}");
    assert!(!states.iter().any(|s| s.starts_with("\"streaming\"")), "status during the outage: {states:?}");

    let _server_a = RtspProcess::start(&serve, hold.release(), &["/cam=h264"]).expect("server a again");
    let restarted = Instant::now();
    rec.wait_for(WAIT, "flaky camera to resume after its server came back", |m| {
        m.iter().filter(|r| r.json["camera"] == "flaky" && r.at > restarted).count() >= 2
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    let steady_total = rec.from_camera("steady").iter().filter(|r| r.at > killed).count();
    assert!(steady_total >= 6, "steady camera published {steady_total} messages since the outage began");
    let (status, summary) = agent.stop().expect("stop");
    assert!(status.success());
    let summary: Value = serde_json::from_str(summary.trim()).expect("summary");
    let by_id = |id: &str| summary["cameras"].as_array().and_then(|c| c.iter().find(|c| c["camera"] == id).cloned());
    assert!(by_id("flaky").and_then(|c| c["restarts"].as_u64()) >= Some(1), "{summary}");
    assert_eq!(by_id("steady").and_then(|c| c["restarts"].as_u64()), Some(0), "{summary}");
}

#[test]
fn check_config_lists_every_problem_and_exits_nonzero() {
    let dir = scratch("check");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[agent]\nsite = \"s\"\nid = \"g\"\ncolour = \"blue\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1\"\n\n\
             [[models]]\nname = \"person\"\nmanifest = \"{}\"\n\n\
             [[cameras]]\nid = \"a\"\nurl = \"http://x/y\"\nmodel = \"person\"\nfps = 0\n\n\
             [[cameras]]\nid = \"a\"\nurl = \"rtsp://h/s\"\nmodel = \"car\"\n",
            person_manifest().display()
        ),
    )
    .expect("write");
    let out = std::process::Command::new(lookout_bin()).arg("check-config").arg(&bad).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let file = bad.display().to_string();
    for expected in [
        format!("{file}:4: agent.colour: unknown field"),
        format!("{file}:15: cameras[0].url: expected an rtsp:// URL"),
        format!("{file}:17: cameras[0].fps: must be > 0"),
        format!("{file}:20: cameras[1].id: duplicate camera id \"a\""),
        format!("{file}:22: cameras[1].model: unknown model \"car\""),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }

    let good = write_config(
        &dir,
        "mqtt://127.0.0.1:1883",
        &[Cam { id: "cam-1", url: "rtsp://127.0.0.1:8554/cam1".into(), fps: 2.0, min_score: 0.5 }],
    )
    .expect("config");
    let out = std::process::Command::new(lookout_bin()).arg("check-config").arg(&good).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn missing_onnx_runtime_is_refused_with_instructions() {
    let dir = scratch("no-ort");
    let config = write_config(
        &dir,
        "mqtt://127.0.0.1:1",
        &[Cam { id: "cam-1", url: "rtsp://127.0.0.1:1/x".into(), fps: 1.0, min_score: 0.5 }],
    )
    .expect("config");
    let text = std::fs::read_to_string(&config)
        .expect("read")
        .replace("id = \"gw-test\"\n", "id = \"gw-test\"\nonnxruntime = \"/nonexistent/libonnxruntime.so.1\"\n");
    std::fs::write(&config, text).expect("write");
    let out = std::process::Command::new(lookout_bin()).arg("run").arg("--config").arg(&config).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent/libonnxruntime.so.1") && err.contains("scripts/setup.sh"), "{err}");
}

#[test]
fn probe_reports_the_stream_and_writes_the_frame_with_boxes() {
    let server = RtspServer::start(
        0,
        vec![("/img".into(), Media::Still { image: media_file("grace_hopper.jpg").expect("media") })],
    )
    .expect("rtsp server");
    let out = scratch("probe").join("frame.jpg");
    let run = std::process::Command::new(lookout_bin())
        .args(["probe", &server.url("/img"), "--seconds", "4", "--out"])
        .arg(&out)
        .output()
        .expect("run probe");
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{text}\n{}", String::from_utf8_lossy(&run.stderr));
    for expected in [
        "codec:              H264",
        "resolution:         512x600",
        "frame rate:         5.0 fps",
        // The default (COCO) model: Grace Hopper and her tie.
        "detections (≥ 0.5):  2",
        "    person 0.",
        "    tie 0.",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains("keyframe interval:  1.0") || text.contains("keyframe interval:  0.9"), "{text}");
    let img = image::open(&out).expect("the frame is a readable JPEG");
    assert_eq!((img.width(), img.height()), (512, 600));
    // The box is drawn in red along the person's edges (the reference box starts near x=0.003 w, y=0.027 h).
    let px = img.to_rgb8();
    let reds = px.pixels().filter(|p| p[0] > 200 && p[1] < 90 && p[2] < 90).count();
    assert!(reds > 1000, "expected a drawn box, found {reds} red pixels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_unauthorized_and_corrupt_cameras_get_clear_reasons_while_a_healthy_one_keeps_analysing() {
    faults_get_clear_reasons("gstreamer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_rtsp_client_gives_the_same_reasons_and_keeps_the_healthy_camera_analysing() {
    faults_get_clear_reasons("shared").await;
}

/// Four cameras received by `client` (`rtsp_client`): one healthy, one refusing
/// connections, one behind a password the config does not have, one sending garbage.
async fn faults_get_clear_reasons(client: &str) {
    let broker = Mosquitto::start().expect("mosquitto");
    let h264 = Arc::new(clip(Codec::H264).expect("clip"));
    // A camera with a valid stream description (SPS/PPS intact) that sends no decodable
    // picture: every slice is mangled into a reserved NAL type.
    let garbage: Vec<AccessUnit> =
        h264.iter().map(|au| AccessUnit { data: scramble_slices(&au.data), keyframe: au.keyframe }).collect();
    let open = RtspServer::start(
        0,
        vec![("/ok".into(), Media::Clip { codec: Codec::H264, units: h264.clone(), fps: 10, loop_from: 0 })],
    )
    .expect("rtsp server");
    // A server of its own: gst-rtsp-server handles its clients on one main loop, and a
    // media that never prerolls (garbage) would hold up the other mounts' clients.
    let bad = RtspServer::start(
        0,
        vec![("/garbage".into(), Media::Clip { codec: Codec::H264, units: Arc::new(garbage), fps: 10, loop_from: 0 })],
    )
    .expect("rtsp server");
    let locked = RtspServer::start_with_auth(
        0,
        vec![("/cam".into(), Media::Clip { codec: Codec::H264, units: h264, fps: 10, loop_from: 0 })],
        Some(("installer", "s3cret")),
    )
    .expect("rtsp server with auth");
    let closed = ClosedPort::bind().expect("port");
    let refused_url = format!("rtsp://127.0.0.1:{}/cam", closed.port);
    let cams = [
        Cam { id: "ok", url: open.url("/ok"), fps: 2.0, min_score: 0.5 },
        Cam { id: "refused", url: refused_url, fps: 2.0, min_score: 0.5 },
        Cam { id: "locked", url: locked.url("/cam"), fps: 2.0, min_score: 0.5 },
        Cam { id: "garbage", url: bad.url("/garbage"), fps: 2.0, min_score: 0.5 },
    ];
    let dir = scratch(&format!("faults-{client}"));
    let config = write_config(&dir, &broker.url(), &cams).expect("config");
    let port = free_port().expect("port");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace("listen = \"off\"", &format!("listen = \"127.0.0.1:{port}\"")).replace(
        "reconnect_max_secs = 2\n",
        &format!("reconnect_max_secs = 2\nstall_seconds = 5\nrtsp_client = \"{client}\"\n"),
    );
    assert_eq!(text.matches("rtsp_client").count(), 4, "{text}");
    std::fs::write(&config, text).expect("config");
    let status = Recorder::start(broker.port(), "lookout/v1/test-site/gw-test/cameras/+/status").await.expect("sub");
    let rec = Recorder::start(broker.port(), "lookout/v1/test-site/gw-test/cameras/ok/detections").await.expect("sub");
    let agent = AgentProcess::start(&config).expect("agent");

    let reason_of = |m: &[Received], id: &str, state: &str, says: &str| {
        m.iter().any(|r| {
            r.json["camera"] == id
                && r.json["state"] == state
                && r.json["reason"].as_str().is_some_and(|s| s.contains(says))
        })
    };
    let expected = [
        ("refused", "reconnecting", "connection refused"),
        ("locked", "failed", "unauthorized (RTSP 401)"),
        ("garbage", "reconnecting", "corrupt stream"),
    ];
    let started = Instant::now();
    let got = status
        .wait_for(WAIT, "a clear status and reason for every failing camera", |m| {
            expected.iter().all(|(id, state, says)| reason_of(m, id, state, says))
        })
        .await;
    let states: Vec<String> = status
        .snapshot()
        .iter()
        .map(|r| format!("{} {} {}", r.json["camera"], r.json["state"], r.json["reason"]))
        .collect();
    if let Err(e) = got {
        panic!("{e}\n{}\n{}", states.join("\n"), agent.log());
    }
    // The healthy camera kept analysing all along: detections in every third of the
    // time it took the others to fail (at least 6 s, while they keep retrying), and it
    // never restarted.
    let failed_by = started.elapsed().max(Duration::from_secs(6));
    rec.wait_for(WAIT, "detections after the others failed", |m| m.iter().any(|r| r.at >= started + failed_by))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let dets = rec.snapshot();
    for k in 0..3u32 {
        let (from, to) = (started + failed_by * k / 3, started + failed_by * (k + 1) / 3);
        assert!(
            dets.iter().any(|r| r.at >= from && r.at <= to),
            "the healthy camera went quiet between {:?} and {:?} of {failed_by:?}",
            failed_by * k / 3,
            failed_by * (k + 1) / 3
        );
    }
    status
        .wait_for(WAIT, "the healthy camera streaming", |m| {
            m.iter().any(|r| r.json["camera"] == "ok" && r.json["state"] == "streaming")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{states:?}"));

    // Readiness is about the agent (config, model, MQTT), not every camera; the status
    // line and the metrics say which cameras stream.
    let (code, body) = http_get(port, "/readyz").expect("readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("1/4 cameras streaming"), "{body}");
    let (_, metrics) = http_get(port, "/metrics").expect("metrics");
    assert!(metrics.contains("lookout_camera_streaming{camera=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("lookout_camera_state{camera=\"locked\",state=\"failed\"} 1"), "{metrics}");
    // How each camera is received: the healthy one as configured; none for those whose
    // stream was never set up.
    let ok_stream =
        format!("lookout_camera_stream_info{{camera=\"ok\",rtsp_client=\"{client}\",codec=\"H264\",decoder=\"");
    assert!(metrics.contains(&ok_stream), "{metrics}");
    for id in ["refused", "locked"] {
        assert!(!metrics.contains(&format!("lookout_camera_stream_info{{camera=\"{id}\"")), "{metrics}");
    }
    for id in ["refused", "locked", "garbage"] {
        assert!(metrics.contains(&format!("lookout_camera_streaming{{camera=\"{id}\"}} 0")), "{metrics}");
        let restarts = format!("lookout_camera_restarts_total{{camera=\"{id}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&restarts))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {restarts} in {metrics}"));
        assert!(n >= 1, "{id} restarted {n} times");
    }
    let (exit, summary) = agent.stop().expect("stop");
    assert!(exit.success());
    let summary: Value = serde_json::from_str(summary.trim()).expect("summary");
    let ok = summary["cameras"].as_array().and_then(|c| c.iter().find(|c| c["camera"] == "ok").cloned());
    assert_eq!(ok.and_then(|c| c["restarts"].as_u64()), Some(0), "{summary}");
}

/// Annex B access unit whose slice NALs (types 1–5) are turned into reserved NAL types
/// with scrambled payloads; parameter sets are left alone, so the stream still describes
/// itself as valid H.264.
fn scramble_slices(au: &[u8]) -> Vec<u8> {
    let mut out = au.to_vec();
    let mut i = 0;
    let mut in_slice = false;
    let mut header = false;
    while i < out.len() {
        if i + 3 <= out.len() && out[i..i + 3] == [0, 0, 1] {
            i += 3;
            header = true;
            continue;
        }
        if header {
            in_slice = (1..=5).contains(&(out[i] & 0x1F));
            if in_slice {
                // Unknown NAL type 30 (reserved): nothing a decoder can use.
                out[i] = (out[i] & 0xE0) | 30;
            }
            header = false;
        } else if in_slice && out[i] != 0 {
            // Never create a zero byte: no accidental start codes.
            out[i] = out[i] ^ 0x5A | 1;
        }
        i += 1;
    }
    out
}
