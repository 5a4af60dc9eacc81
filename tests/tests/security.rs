//! Who may control a gateway: the broker ACL documented in docs/INSTALL.md ("Securing a
//! gateway"), read from that page and run in a real mosquitto, and signed commands
//! (`[control] require_signed`) against the real agent.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lookout_e2e::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The fenced block of docs/INSTALL.md whose first line is `first`.
fn doc_block(first: &str) -> String {
    let text = std::fs::read_to_string(workspace().join("docs/INSTALL.md")).expect("INSTALL.md");
    let mut blocks = text.split("```").skip(1).step_by(2);
    let block = blocks
        .find_map(|b| b.split_once('\n').map(|(_, body)| body).filter(|body| body.starts_with(first)))
        .unwrap_or_else(|| panic!("docs/INSTALL.md has no block starting with {first:?}"));
    block.to_string()
}

/// Topic and payload of each message received.
type Messages = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An MQTT client with credentials that records what it receives.
struct Peer {
    client: AsyncClient,
    got: Messages,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    async fn connect(port: u16, client_id: &str, user: &str, password: &str) -> Self {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        if !user.is_empty() {
            opts.set_credentials(user, password);
        }
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let got: Messages = Arc::new(Mutex::new(Vec::new()));
        let store = got.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tx = Some(tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        store.lock().expect("lock").push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), rx).await.expect("CONNACK within 10 s").expect("connected");
        Self { client, got, task }
    }

    async fn subscribe(&self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
    }

    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await.expect("publish");
    }

    fn received(&self) -> Vec<(String, Vec<u8>)> {
        self.got.lock().expect("lock").clone()
    }

    fn on(&self, topic: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| serde_json::from_slice(&p).unwrap_or(Value::Null))
            .collect()
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&[(String, Vec<u8>)]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.received()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn passwd(file: &Path, user: &str, password: &str) {
    let mut cmd = Command::new("mosquitto_passwd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let out = cmd.arg("-b").arg(file).arg(user).arg(password).output().expect("mosquitto_passwd");
    assert!(out.status.success(), "mosquitto_passwd: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateways_credentials_cannot_command_another_or_read_its_events() {
    // The broker runs exactly the documented ACL and settings.
    let dir = scratch("security-acl");
    let acl = dir.join("lookout.acl");
    std::fs::write(&acl, doc_block("# /etc/mosquitto/lookout.acl")).expect("acl");
    let passwords = dir.join("lookout.passwd");
    for (user, pw) in [("platform", "platform-pw"), ("main-street/gw-07", "gw07-pw"), ("main-street/gw-08", "gw08-pw")]
    {
        passwd(&passwords, user, pw);
    }
    let conf = doc_block("# /etc/mosquitto/conf.d/lookout.conf")
        .replace("/etc/mosquitto/lookout.passwd", &passwords.display().to_string())
        .replace("/etc/mosquitto/lookout.acl", &acl.display().to_string());
    let mosquitto_log = dir.join("mosquitto.log");
    let conf = format!("{conf}\nlog_dest file {}\nlog_type all\n", mosquitto_log.display());
    let broker = Mosquitto::start_with(free_port().expect("port"), &conf).expect("mosquitto");

    // Gateway gw-07: the real agent with its own account, streaming one camera.
    let clip = Arc::new(clip(Codec::H264).expect("clip"));
    let server = RtspServer::start(
        0,
        vec![("/cam".into(), Media::Clip { codec: Codec::H264, units: clip, fps: 10, loop_from: 0 })],
    )
    .expect("rtsp");
    let config =
        write_config(&dir, &broker.url(), &[Cam { id: "cam-1", url: server.url("/cam"), fps: 2.0, min_score: 0.5 }])
            .expect("config");
    let text = std::fs::read_to_string(&config).expect("read config");
    let text = text
        .replace("site = \"test-site\"", "site = \"main-street\"")
        .replace("id = \"gw-test\"", "id = \"gw-07\"")
        .replace("[mqtt]\n", "[mqtt]\nusername = \"main-street/gw-07\"\npassword = \"gw07-pw\"\n");
    std::fs::write(&config, text).expect("write config");
    const A: &str = "lookout/v1/main-street/gw-07";

    let platform = Peer::connect(broker.port(), "platform-e2e", "platform", "platform-pw").await;
    platform.subscribe("lookout/v1/#").await;
    let agent = AgentProcess::start(&config).expect("agent");
    platform
        .wait_for("gw-07's detections on the platform", |m| {
            m.iter().any(|(t, _)| t == &format!("{A}/cameras/cam-1/detections"))
        })
        .await;
    assert!(platform.on(&format!("{A}/status")).iter().any(|s| s["state"] == "online"), "{}", agent.log());

    // Gateway gw-08's credentials, even with gw-07's client id (a takeover would cut gw-07 off).
    let intruder = Peer::connect(broker.port(), "lookout-main-street-gw-07", "main-street/gw-08", "gw08-pw").await;
    intruder.subscribe(&format!("{A}/#")).await;
    intruder.subscribe("lookout/v1/#").await;
    intruder.subscribe("#").await;
    intruder
        .publish(format!("{A}/commands/camera.remove"), false, br#"{"request_id":"evil-1","id":"cam-1"}"#.to_vec())
        .await;
    intruder.publish(format!("{A}/commands/camera.list"), false, br#"{"request_id":"evil-2"}"#.to_vec()).await;
    intruder.publish(format!("{A}/status"), true, b"forged".to_vec()).await;
    // Its own topics work: the refusals above are the ACL, not bad credentials.
    intruder.publish("lookout/v1/main-street/gw-08/status".to_string(), true, br#"{"state":"online"}"#.to_vec()).await;
    platform
        .wait_for("gw-08's own status", |m| m.iter().any(|(t, _)| t == "lookout/v1/main-street/gw-08/status"))
        .await;

    // The platform's own command still gets through, after the intruder's.
    platform.publish(format!("{A}/commands/camera.list"), false, br#"{"request_id":"list-1"}"#.to_vec()).await;
    platform.wait_for("the reply to list-1", |m| m.iter().any(|(t, _)| t == &format!("{A}/replies/list-1"))).await;
    let list = platform.on(&format!("{A}/replies/list-1")).remove(0);
    assert_eq!(list["cameras"][0]["id"], "cam-1", "the intruder's camera.remove ran: {list}");
    // More detections after all that: gw-07 kept streaming and publishing.
    let before = platform.on(&format!("{A}/cameras/cam-1/detections")).len();
    platform
        .wait_for("more detections", |m| {
            m.iter().filter(|(t, _)| t == &format!("{A}/cameras/cam-1/detections")).count() >= before + 2
        })
        .await;

    let seen = platform.received();
    assert!(!seen.iter().any(|(t, _)| t.contains("/replies/evil-")), "gw-07 answered the intruder");
    assert!(!seen.iter().any(|(_, p)| p == b"forged"), "the intruder forged gw-07's status");
    assert!(
        !platform.on(&format!("{A}/status")).iter().any(|s| s["state"] == "offline"),
        "gw-07 was cut off (session takeover): {:?}\n{}",
        platform.on(&format!("{A}/status")),
        std::fs::read_to_string(&mosquitto_log).unwrap_or_default()
    );
    let leaked: Vec<String> = intruder.received().into_iter().map(|(t, _)| t).filter(|t| t.contains("gw-07")).collect();
    assert!(leaked.is_empty(), "gw-08's account read gw-07's topics: {leaked:?}");
    assert!(!agent.log().contains("evil-"), "gw-07 saw the intruder's commands\n{}", agent.log());
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
}

/// `lookout command sign NAME --key KEY --agent AGENT` with `payload` on stdin.
fn cli_sign(name: &str, key: &Path, agent: &str, payload: &Value) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new(lookout_bin())
        .args(["command", "sign", name, "--expires-in", "300", "--agent", agent, "--key"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lookout command sign");
    child.stdin.take().expect("stdin").write_all(&serde_json::to_vec(payload).expect("json")).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "lookout command sign: {}", String::from_utf8_lossy(&out.stderr));
    let signed: Value = serde_json::from_slice(&out.stdout).expect("signed JSON");
    assert!(signed["signature"]["sig"].as_str().is_some_and(|s| s.starts_with("ed25519:")), "{signed}");
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_commands_are_required_checked_and_never_replayed() {
    const ROOT: &str = "lookout/v1/test-site/gw-test";
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = scratch("security-signed");
    let (secret, public) = (dir.join("ops.key"), dir.join("ops.pub"));
    lookout(&["model", "keygen", "--secret", &secret.display().to_string(), "--public", &public.display().to_string()])
        .expect("keygen");
    // Cameras that refuse connections: commands need no stream.
    let closed = ClosedPort::bind().expect("port");
    let refused = format!("rtsp://127.0.0.1:{}/cam", closed.port);
    let cams = [
        Cam { id: "cam-1", url: refused.clone(), fps: 1.0, min_score: 0.5 },
        Cam { id: "cam-2", url: refused, fps: 1.0, min_score: 0.5 },
    ];
    let config = write_config(&dir, &broker.url(), &cams).expect("config");
    let text = std::fs::read_to_string(&config).expect("read config");
    let control = format!("\n[control]\ntrusted_keys = [\"{}\"]\nrequire_signed = true\n", public.display());
    std::fs::write(&config, text.replace("\n[[models]]", &format!("{control}\n[[models]]"))).expect("write config");

    let peer = Peer::connect(broker.port(), "operator-e2e", "", "").await;
    peer.subscribe(&format!("{ROOT}/#")).await;
    let agent = AgentProcess::start(&config).expect("agent");
    peer.wait_for("the agent online", |m| {
        m.iter().any(|(t, p)| t == &format!("{ROOT}/status") && p.windows(8).any(|w| w == b"\"online\""))
    })
    .await;
    // The n-th reply (from 1) on replies/{id}.
    let reply = |id: &'static str, n: usize| {
        let peer = &peer;
        async move {
            let topic = format!("{ROOT}/replies/{id}");
            let deadline = Instant::now() + WAIT;
            loop {
                let got = peer.on(&topic);
                if got.len() >= n {
                    return got[n - 1].clone();
                }
                assert!(Instant::now() < deadline, "no reply #{n} to {id}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_string();
    let send = |name: &str, payload: Vec<u8>| peer.publish(format!("{ROOT}/commands/{name}"), false, payload);

    send("camera.list", br#"{"request_id":"plain-1"}"#.to_vec()).await;
    assert_eq!(code(&reply("plain-1", 1).await), "unsigned_command");

    let remove = cli_sign("camera.remove", &secret, "test-site/gw-test", &json!({"request_id": "rm-1", "id": "cam-2"}));
    send("camera.remove", remove.clone()).await;
    let done = reply("rm-1", 1).await;
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["camera"], "cam-2", "{done}");
    // The same signed command again, as someone who captured it would send it.
    send("camera.remove", remove.clone()).await;
    assert_eq!(code(&reply("rm-1", 2).await), "replayed");
    // And after a restart (the agent remembers the nonces on disk).
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    // Counted after the stop: the removal itself re-announced "online" (a new birth),
    // and a command sent before the new process subscribes would be lost.
    let online = |m: &[(String, Vec<u8>)]| {
        m.iter().filter(|(t, p)| t == &format!("{ROOT}/status") && p.windows(8).any(|w| w == b"\"online\"")).count()
    };
    // Its "offline" comes after every "online" the old process sent.
    peer.wait_for("the agent offline", |m| {
        m.iter().any(|(t, p)| t == &format!("{ROOT}/status") && p.windows(9).any(|w| w == b"\"offline\""))
    })
    .await;
    let before = online(&peer.received());
    let agent = AgentProcess::start(&config).expect("agent again");
    peer.wait_for("the agent online again", |m| online(m) > before).await;
    send("camera.remove", remove).await;
    assert_eq!(code(&reply("rm-1", 3).await), "replayed");

    let other = cli_sign("camera.list", &secret, "test-site/gw-other", &json!({"request_id": "other-1"}));
    send("camera.list", other).await;
    assert_eq!(code(&reply("other-1", 1).await), "wrong_agent");

    let key = lookout::model::signature::read_secret(&secret).expect("secret");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let payload = json!({"request_id": "old-1"}).as_object().cloned().expect("object");
    let old =
        lookout::control::signed::sign("camera.list", payload, &key, "test-site/gw-test", now - 5, "0123456789abcdef");
    send("camera.list", serde_json::to_vec(&old).expect("json")).await;
    assert_eq!(code(&reply("old-1", 1).await), "expired");

    // Signed for camera.list, sent as camera.remove: the name is signed too.
    let list = cli_sign("camera.list", &secret, "test-site/gw-test", &json!({"request_id": "list-1"}));
    send("camera.remove", list.clone()).await;
    assert_eq!(code(&reply("list-1", 1).await), "bad_signature");
    send("camera.list", list).await;
    let cameras = reply("list-1", 2).await;
    assert_eq!(cameras["ok"], true, "{cameras}");
    let ids: Vec<&str> =
        cameras["cameras"].as_array().expect("cameras").iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["cam-1"], "removed once, the replay refused: {cameras}");
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
}
