//! Remote commands through a real broker to the real agent: well-formed ones are
//! answered, bad ones refused with their own code, and the agent keeps streaming.

use std::sync::Arc;
use std::time::Duration;

use lookout_e2e::*;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;

const ROOT: &str = "lookout/v1/test-site/gw-test";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_get_replies_and_bad_ones_never_stop_the_agent() {
    let broker = Mosquitto::start().expect("mosquitto");
    let clip = Arc::new(clip(Codec::H264).expect("clip"));
    let server = RtspServer::start(
        0,
        vec![("/cam".into(), Media::Clip { codec: Codec::H264, units: clip, fps: 10, loop_from: 0 })],
    )
    .expect("rtsp");
    let dir = scratch("control");
    let config =
        write_config(&dir, &broker.url(), &[Cam { id: "cam-1", url: server.url("/cam"), fps: 2.0, min_score: 0.5 }])
            .expect("config");
    let replies = Recorder::start(broker.port(), &format!("{ROOT}/replies/#")).await.expect("replies");
    let detections = Recorder::start(broker.port(), &format!("{ROOT}/cameras/+/detections")).await.expect("sub");
    let agent = AgentProcess::start(&config).expect("agent");
    detections.wait_for(WAIT, "streaming", |m| !m.is_empty()).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    let mut opts = MqttOptions::new("e2e-operator", "127.0.0.1", broker.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let send = |name: &str, payload: Vec<u8>| {
        let client = client.clone();
        let topic = format!("{ROOT}/commands/{name}");
        async move { client.publish(topic, QoS::AtLeastOnce, false, payload).await.expect("publish") }
    };
    send("camera.list", br#"{"request_id":"list-1"}"#.to_vec()).await;
    send("model.list", br#"{"request_id":"models-1"}"#.to_vec()).await;
    send("camera.list", b"{not json".to_vec()).await;
    send("camera.explode", br#"{"request_id":"boom-1"}"#.to_vec()).await;
    send("camera.remove", br#"{"request_id":"rm-1"}"#.to_vec()).await;
    send("camera.list", format!(r#"{{"request_id":"big-1","x":"{}"}}"#, "a".repeat(70_000)).into_bytes()).await;

    let by_id =
        |m: &[Received], id: &str| m.iter().find(|r| r.topic == format!("{ROOT}/replies/{id}")).map(|r| r.json.clone());
    let got = replies.wait_for(WAIT, "six replies", |m| m.len() >= 6).await.unwrap_or_else(|e| {
        panic!("{e}: {:?}\n{}", replies.snapshot().iter().map(|r| &r.topic).collect::<Vec<_>>(), agent.log())
    });
    let list = by_id(&got, "list-1").expect("camera.list reply");
    assert_eq!(list["ok"], true, "{list}");
    assert_eq!(list["cameras"][0]["id"], "cam-1", "{list}");
    assert_eq!(list["cameras"][0]["model"], "person", "{list}");
    // Streaming, so set up: rtsp_client = "auto" received this rtsp:// TCP camera with the
    // shared client.
    assert_eq!(list["cameras"][0]["rtsp_client"], "shared", "{list}");
    assert_eq!(list["cameras"][0]["codec"], "H264", "{list}");
    assert!(list["cameras"][0]["decoder"].as_str().is_some_and(|d| !d.is_empty()), "{list}");
    let models = by_id(&got, "models-1").expect("model.list reply");
    assert_eq!(models["models"][0]["name"], "person", "{models}");
    assert_eq!(models["models"][0]["active"]["sha256"].as_str().map(str::len), Some(64), "{models}");
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_string();
    let invalid: Vec<String> =
        got.iter().filter(|r| r.topic == format!("{ROOT}/replies/_invalid")).map(|r| code(&r.json)).collect();
    assert!(invalid.contains(&"malformed_json".to_string()), "{invalid:?}");
    assert!(invalid.contains(&"payload_too_large".to_string()), "{invalid:?}");
    assert_eq!(code(&by_id(&got, "boom-1").expect("reply")), "unknown_command");
    assert_eq!(code(&by_id(&got, "rm-1").expect("reply")), "missing_field");

    // Still streaming after all that.
    let before = detections.snapshot().len();
    detections
        .wait_for(WAIT, "detections after the bad commands", |m| m.len() >= before + 2)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    pump.abort();
}

/// Camera credentials, in the userinfo and in the query as many cameras take them, are
/// masked in everything the agent shows: command replies, retained statuses, the console,
/// /metrics, its log, check-config and probe output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_secrets_never_appear_in_replies_statuses_console_logs_or_errors() {
    const SECRETS: [&str; 6] =
        ["UsrPw9Secret", "QryPw9Secret", "AddPw9Secret", "AddTok9Secret", "NewPw9Secret", "CfgPw9Secret"];
    let leaks = |what: &str, text: &str| {
        for s in SECRETS {
            assert!(!text.contains(s), "{what} shows the secret {s}:\n{text}");
        }
    };
    let broker = Mosquitto::start().expect("mosquitto");
    let closed = ClosedPort::bind().expect("port");
    let dead = closed.port;
    let dir = scratch("secrets");
    let url = format!("rtsp://admin:UsrPw9Secret@127.0.0.1:{dead}/s?user=admin&Password=QryPw9Secret&channel=1");
    let config =
        write_config(&dir, &broker.url(), &[Cam { id: "cam-1", url, fps: 1.0, min_score: 0.5 }]).expect("config");
    let http = free_port().expect("port");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("listen = \"off\"\n", &format!("listen = \"127.0.0.1:{http}\"\n"));
    std::fs::write(&config, text).expect("config");
    let statuses = Recorder::start(broker.port(), &format!("{ROOT}/cameras/+/status")).await.expect("sub");
    let agent = AgentProcess::start(&config).expect("agent");
    let op = Operator::connect(broker.port(), ROOT).await.expect("operator");

    // The camera fails (nothing listens there): its reason is published and logged.
    statuses
        .wait_for(WAIT, "cam-1 reconnecting", |m| m.iter().any(|r| r.json["state"] == "reconnecting"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let list = op.call("camera.list", serde_json::json!({"request_id": "l1"}), WAIT).await.expect("list");
    let shown = list["cameras"][0]["url"].as_str().unwrap_or("").to_string();
    assert!(shown.contains("admin:***@") && shown.contains("Password=***") && shown.contains("channel=1"), "{list}");
    leaks("camera.list", &list.to_string());

    // A camera.add whose URL does not parse: the error quotes it, masked.
    let bad = format!("rtsp://admin:AddPw9Secret@[bad:{dead}/s?token=AddTok9Secret");
    let add = serde_json::json!({"request_id": "a1", "camera": {"id": "cam-2", "url": bad, "model": "person"}});
    let reply = op.call("camera.add", add, WAIT).await.expect("add");
    assert_eq!(reply["error"]["code"], "invalid_camera", "{reply}");
    assert!(reply["error"]["message"].as_str().is_some_and(|m| m.contains("***")), "{reply}");
    leaks("the camera.add reply", &reply.to_string());
    // A valid one: it fails as well, its status and log masked too.
    let good = format!("rtsp://ops:NewPw9Secret@127.0.0.1:{dead}/live?apikey=NewPw9Secret");
    let add = serde_json::json!({"request_id": "a2", "camera": {"id": "cam-3", "url": good, "model": "person"}});
    let reply = op.call("camera.add", add, WAIT).await.expect("add");
    assert_eq!(reply["ok"], true, "{reply}");
    leaks("the camera.add reply", &reply.to_string());
    statuses
        .wait_for(WAIT, "cam-3 reconnecting", |m| {
            m.iter().any(|r| r.topic.ends_with("/cam-3/status") && r.json["state"] == "reconnecting")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let list = op.call("camera.list", serde_json::json!({"request_id": "l2"}), WAIT).await.expect("list");
    leaks("camera.list", &list.to_string());
    for r in statuses.snapshot() {
        leaks("a camera status", &String::from_utf8_lossy(&r.payload));
    }
    for path in ["/api/cameras", "/api/cameras/cam-1", "/api/cameras/cam-3", "/api/status", "/metrics"] {
        let r = http_request(http, "GET", path, &[]).expect("console");
        assert_eq!(r.code, 200, "{path}");
        leaks(path, &r.text());
    }
    let (_, stdout) = agent.stop().expect("stop");
    leaks("the agent's summary", &stdout);
    let log = std::fs::read_to_string(config.with_extension("log")).expect("log");
    assert!(log.contains("camera failed"), "{log}");
    leaks("the agent's log", &log);

    // check-config and probe print what is wrong with a URL without its secrets.
    let broken = dir.join("broken.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let at = text.find("url = \"rtsp://").expect("camera url");
    let end = at + text[at..].find('\n').expect("line end");
    let text = format!("{}url = \"rtsp://admin:CfgPw9Secret@[bad/s?pwd=CfgPw9Secret\"{}", &text[..at], &text[end..]);
    std::fs::write(&broken, text).expect("write");
    let out =
        std::process::Command::new(lookout_bin()).arg("check-config").arg(&broken).output().expect("check-config");
    assert!(!out.status.success());
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("cameras[0].url") && shown.contains("***"), "{shown}");
    leaks("check-config", &shown);
    let probe = format!("rtsp://admin:UsrPw9Secret@127.0.0.1:{dead}/s?password=QryPw9Secret");
    let out =
        std::process::Command::new(lookout_bin()).args(["probe", &probe, "--seconds", "2"]).output().expect("probe");
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("probing rtsp://admin:***@127.0.0.1"), "{shown}");
    leaks("lookout probe", &shown);
}
