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
