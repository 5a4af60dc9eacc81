//! Presence at scale: an agent with many cameras connects and every camera's retained
//! status reaches the broker, though there are more of them than rumqttc's request queue
//! holds at once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lookout_e2e::*;

const ROOT: &str = "lookout/v1/test-site/gw-test";
const CAMERAS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cameras_retained_status_arrives_on_connect_with_300_cameras() {
    // Cameras that refuse connections: each still has a status (`reconnecting`) without
    // streaming anything. A long back-off keeps that status from changing during the test,
    // so only the statuses sent on connect can arrive (the periodic ones come after 60 s).
    let closed = ClosedPort::bind().expect("port");
    let refused = format!("rtsp://127.0.0.1:{}/cam", closed.port);
    let ids: Vec<String> = (0..CAMERAS).map(|i| format!("cam-{i:03}")).collect();
    let cams: Vec<Cam<'_>> = ids.iter().map(|id| Cam { id, url: refused.clone(), fps: 1.0, min_score: 0.5 }).collect();
    // The broker is down until every camera has failed once: then the connect reports
    // 300 settled statuses at once.
    let hold = PortHold::new().expect("port");
    let port = hold.port;
    let dir = scratch("presence-300");
    let config = write_config(&dir, &format!("mqtt://127.0.0.1:{port}"), &cams).expect("config");
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(
        &config,
        text.replace("reconnect_max_secs = 2\n", "reconnect_min_secs = 300\nreconnect_max_secs = 300\n"),
    )
    .expect("write config");
    let agent = AgentProcess::start(&config).expect("agent");
    let deadline = Instant::now() + Duration::from_secs(120);
    while agent.log().matches("camera failed").count() < CAMERAS {
        assert!(Instant::now() < deadline, "not every camera failed within 120 s\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let broker = Mosquitto::start_on(hold.release()).expect("mosquitto");
    let statuses = Recorder::start(broker.port(), &format!("{ROOT}/cameras/+/status")).await.expect("sub");
    let distinct = |m: &[Received]| m.iter().map(|r| r.topic.clone()).collect::<HashSet<_>>().len();
    statuses
        .wait_for(Duration::from_secs(60), "a first camera status", |m| !m.is_empty())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // Well within the 60 s after which the agent would repeat them anyway.
    let got = statuses.wait_for(Duration::from_secs(30), "every camera's status", |m| distinct(m) >= CAMERAS).await;
    let got = got.unwrap_or_else(|e| panic!("{e}: {} distinct cameras", distinct(&statuses.snapshot())));
    assert_eq!(distinct(&got), CAMERAS);
    for r in &got {
        assert_eq!(r.json["state"], "reconnecting", "{}", r.json);
    }
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
}
