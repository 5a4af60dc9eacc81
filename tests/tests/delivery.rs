//! Delivery the platform can trust, against a real mosquitto: nothing lost across broker
//! outages and agent crashes, damaged outbox files survived, drops announced, TLS, and
//! presence through retained messages and the MQTT will.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lookout_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);
const ALL: &str = "lookout/v1/test-site/gw-test/#";

/// First arrival of each message id, in arrival order (re-deliveries are byte-identical
/// and share the id).
fn unique(msgs: &[Received]) -> Vec<Received> {
    let mut seen = HashSet::new();
    msgs.iter().filter(|m| m.json["seq"].is_u64() && seen.insert(m.json["id"].to_string())).cloned().collect()
}

/// Seqs of the snapshots that arrived: a JPEG cannot carry its seq, the event naming it does.
fn snapshot_seqs(msgs: &[Received]) -> BTreeSet<u64> {
    let topics: HashSet<&str> =
        msgs.iter().filter(|m| m.topic.contains("/snapshots/")).map(|m| m.topic.as_str()).collect();
    unique(msgs)
        .iter()
        .filter(|m| m.json["snapshot"]["topic"].as_str().is_some_and(|t| topics.contains(t)))
        .filter_map(|m| m.json["snapshot"]["seq"].as_u64())
        .collect()
}

/// Every seq delivered, snapshots included.
fn delivered_seqs(msgs: &[Received]) -> BTreeSet<u64> {
    let mut seqs: BTreeSet<u64> = unique(msgs).iter().filter_map(|m| m.json["seq"].as_u64()).collect();
    seqs.extend(snapshot_seqs(msgs));
    seqs
}

fn gaps(msgs: &[Received]) -> Vec<(u64, u64, u64)> {
    unique(msgs)
        .iter()
        .filter(|m| m.json["type"] == "delivery.gap")
        .map(|m| {
            let f = |k: &str| m.json[k].as_u64().unwrap_or(0);
            (f("first_seq"), f("last_seq"), f("count"))
        })
        .collect()
}

/// Every seq some gap message announced. Ranges may overlap (a later notice can repeat
/// and extend an earlier one), so drops are counted over the union.
fn announced(msgs: &[Received]) -> BTreeSet<u64> {
    gaps(msgs).iter().flat_map(|&(first, last, _)| first..=last).collect()
}

/// After a clean stop: waits for the agent's goodbye ("offline", reason "shutdown"). It
/// is published after the drain, and the broker delivers in order, so whatever the
/// agent delivered before it has reached the recorder too.
async fn wait_for_goodbye(rec: &Recorder) -> Vec<Received> {
    rec.wait_for(WAIT, "the agent's offline status after its drain", |m| {
        m.iter().any(|r| r.topic.ends_with("/gw-test/status") && r.json["reason"] == "shutdown")
    })
    .await
    .expect("goodbye")
}

/// Every seq from 1 to the highest received arrived or was announced as dropped, and
/// each camera's messages first arrived in seq order. Returns the highest seq.
fn assert_complete(msgs: &[Received]) -> u64 {
    let u = unique(msgs);
    let seqs = delivered_seqs(msgs);
    let max = *seqs.iter().next_back().expect("some messages");
    let dropped = gaps(msgs);
    let missing: Vec<u64> =
        (1..=max).filter(|s| !seqs.contains(s) && !dropped.iter().any(|(f, l, _)| (f..=l).contains(&s))).collect();
    assert!(missing.is_empty(), "seqs never delivered nor announced: {missing:?} (of 1..={max})");
    let mut per_camera: HashMap<String, Vec<u64>> = HashMap::new();
    for m in &u {
        if let (Some(c), Some(s)) = (m.json["camera"].as_str(), m.json["seq"].as_u64()) {
            per_camera.entry(c.to_string()).or_default().push(s);
        }
    }
    for (c, s) in per_camera {
        assert!(s.windows(2).all(|w| w[0] < w[1]), "camera {c} delivered out of order: {s:?}");
    }
    max
}

/// Turns the config's telemetry listener on, on a free loopback port; returns the port.
fn listen_telemetry(config: &Path) -> u16 {
    let port = free_port().expect("port");
    let text = std::fs::read_to_string(config).expect("config");
    std::fs::write(config, text.replace("listen = \"off\"", &format!("listen = \"127.0.0.1:{port}\""))).expect("write");
    port
}

/// The value of one series in a `/metrics` text.
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

/// Polls `probe` until it gives a value, or fails after `timeout` with `what`.
async fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Setup {
    _server: RtspServer,
    config: std::path::PathBuf,
    dir: std::path::PathBuf,
}

fn setup(name: &str, broker_url: &str, cameras: usize, fps: f64, extra: &str) -> Setup {
    let h264 = Arc::new(clip(Codec::H264).expect("clip"));
    let mounts = (0..cameras)
        .map(|i| (format!("/c{i}"), Media::Clip { codec: Codec::H264, units: h264.clone(), fps: 10, loop_from: 0 }))
        .collect();
    let server = RtspServer::start(0, mounts).expect("rtsp server");
    let ids: Vec<String> = (0..cameras).map(|i| format!("cam-{i}")).collect();
    let cams: Vec<Cam> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Cam { id, url: server.url(&format!("/c{i}")), fps, min_score: 0.5 })
        .collect();
    let dir = scratch(name);
    let config = write_config(&dir, broker_url, &cams).expect("config");
    if !extra.is_empty() {
        let text = std::fs::read_to_string(&config).expect("read config");
        std::fs::write(&config, text + "\n" + extra).expect("write config");
    }
    Setup { _server: server, config, dir }
}

/// Distinct messages delivered (by id; snapshots by their event).
fn count_seq(msgs: &[Received]) -> usize {
    unique(msgs).len() + snapshot_seqs(msgs).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_every_seq_in_order_after_a_30s_broker_outage() {
    let port = free_port().expect("port");
    let broker = Mosquitto::start_on(port).expect("mosquitto");
    let s = setup("outage", &broker.url(), 2, 2.0, "");
    let rec = Recorder::start_with(port, &[ALL], Some("platform-outage")).await.expect("recorder");
    let agent = AgentProcess::start(&s.config).expect("agent");
    rec.wait_for(WAIT, "first messages", |m| count_seq(m) >= 4)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    broker.terminate();
    let hold = PortHold::again(port).expect("hold port");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let before = count_seq(&rec.snapshot());
    let _broker = Mosquitto::start_on(hold.release()).expect("mosquitto again");
    // While the broker was down the cameras produced ~2 × 2 × 30 messages: all must come.
    rec.wait_for(WAIT, "the messages from the outage", |m| count_seq(m) >= before + 80)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let (status, summary) = agent.stop().expect("stop");
    assert!(status.success());
    let summary: Value = serde_json::from_str(summary.trim()).expect("summary");
    assert_eq!(summary["outbox_pending"], 0, "{summary}");
    let msgs = wait_for_goodbye(&rec).await;
    let max = assert_complete(&msgs);
    assert!(gaps(&msgs).is_empty(), "nothing may be dropped: {:?}", gaps(&msgs));
    assert_eq!(count_seq(&msgs) as u64, max, "every seq from 1 to {max} exactly once (after de-duplication)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loses_nothing_when_the_agent_is_killed_while_the_broker_is_down() {
    let port = free_port().expect("port");
    let broker = Mosquitto::start_on(port).expect("mosquitto");
    let s = setup("sigkill", &broker.url(), 1, 2.0, "");
    let rec = Recorder::start_with(port, &[ALL], Some("platform-sigkill")).await.expect("recorder");
    let agent = AgentProcess::start(&s.config).expect("agent");
    rec.wait_for(WAIT, "first messages", |m| count_seq(m) >= 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    broker.terminate();
    let hold = PortHold::again(port).expect("hold port");
    tokio::time::sleep(Duration::from_secs(6)).await;
    drop(agent); // SIGKILL: no drain, no goodbye.
    let agent = AgentProcess::start(&s.config).expect("agent again");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _broker = Mosquitto::start_on(hold.release()).expect("mosquitto again");
    let before = count_seq(&rec.snapshot());
    rec.wait_for(WAIT, "messages from both agent runs", |m| count_seq(m) >= before + 20)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    let msgs = wait_for_goodbye(&rec).await;
    let max = assert_complete(&msgs);
    assert!(gaps(&msgs).is_empty(), "{:?}", gaps(&msgs));
    assert_eq!(count_seq(&msgs) as u64, max);
}

/// The newest outbox segment file.
fn last_segment(state: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(state.join("outbox"))
        .expect("outbox dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_past_a_corrupted_outbox_tail_and_reports_it() {
    // No broker yet: messages pile up in the outbox.
    let hold = PortHold::new().expect("port");
    let s = setup("torn", &format!("mqtt://127.0.0.1:{}", hold.port), 1, 2.0, "");
    let agent = AgentProcess::start(&s.config).expect("agent");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (status, summary) = agent.stop().expect("stop");
    assert!(status.success());
    let summary: Value = serde_json::from_str(summary.trim()).expect("summary");
    let pending = summary["outbox_pending"].as_u64().unwrap_or(0);
    assert!(pending >= 5, "expected queued messages: {summary}");

    // A power cut in the middle of the last write: cut the last record short.
    let seg = last_segment(&s.dir.join("state"));
    let len = std::fs::metadata(&seg).expect("segment").len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).expect("open segment");
    f.set_len(len - 40).expect("truncate");
    drop(f);

    let broker = Mosquitto::start_on(hold.release()).expect("mosquitto");
    let rec = Recorder::start_with(broker.port(), &[ALL], None).await.expect("recorder");
    let agent = AgentProcess::start(&s.config).expect("agent again");
    // Everything before the torn record, then new messages.
    rec.wait_for(WAIT, "the surviving backlog and new messages", |m| count_seq(m) as u64 >= pending + 4)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let log = agent.log();
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    assert!(log.contains("damaged records"), "the skipped tail must be reported:\n{log}");
    let seqs = delivered_seqs(&rec.snapshot());
    // Only the torn record (the last one written, seq = pending) may be missing.
    let missing: Vec<u64> = (1..pending).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "records before the torn one were lost: {missing:?}");
    assert!(seqs.iter().any(|&s| s > pending), "new messages after restart: {seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbox_drops_oldest_and_announces_the_exact_gap() {
    // The platform's session exists before the agent can connect: what the agent sends
    // the moment the broker is back is queued for the recorder, not missed by it.
    let port = free_port().expect("port");
    let broker = Mosquitto::start_on(port).expect("mosquitto");
    let rec = Recorder::start_with(port, &[ALL], Some("platform-full")).await.expect("recorder");
    broker.terminate();
    let hold = PortHold::again(port).expect("hold port");
    let s = setup(
        "full",
        &format!("mqtt://127.0.0.1:{port}"),
        2,
        5.0,
        "[outbox]\nmax_bytes = 16384\nsegment_bytes = 4096\n",
    );
    let agent = AgentProcess::start(&s.config).expect("agent");
    // ~600-byte messages at up to 10/s: 16 KiB fills within seconds.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let _broker = Mosquitto::start_on(hold.release()).expect("mosquitto again");
    rec.wait_for(WAIT, "a delivery.gap message", |m| !gaps(m).is_empty())
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let (status, summary) = agent.stop().expect("stop");
    assert!(status.success());
    let summary: Value = serde_json::from_str(summary.trim()).expect("summary");
    // Everything left was delivered in the drain: otherwise seqs announced only by gap
    // messages still in the outbox would look lost.
    assert_eq!(summary["outbox_pending"], 0, "{summary}");
    let msgs = wait_for_goodbye(&rec).await;
    assert_complete(&msgs);
    let g = gaps(&msgs);
    for (first, last, count) in &g {
        assert_eq!(last - first + 1, *count, "gap range and count disagree: {g:?}");
    }
    // The oldest went: the gaps start at seq 1 and leave no hole before the survivors.
    assert_eq!(g.iter().map(|x| x.0).min(), Some(1), "{g:?}");
    let dropped = announced(&msgs).len() as u64;
    assert_eq!(summary["outbox_dropped"].as_u64(), Some(dropped), "counter vs announced: {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_mutual_tls_and_refuses_a_wrong_ca_with_a_clear_reason() {
    let pki = scratch("pki");
    make_pki(&pki, "good");
    make_pki(&pki, "other");
    let (plain, tls) = (free_port().expect("port"), free_port().expect("port"));
    let p = |f: &str| pki.join(f).display().to_string();
    let broker = Mosquitto::start_with(
        plain,
        &format!(
            "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            p("good-ca.pem"),
            p("good-server.pem"),
            p("good-server.key")
        ),
    )
    .expect("mosquitto");
    let rec = Recorder::start_with(broker.port(), &[ALL], None).await.expect("recorder");
    let tls_keys = |ca: &str| {
        format!(
            "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            p(ca),
            p("good-client.pem"),
            p("good-client.key")
        )
    };
    let url = format!("mqtts://127.0.0.1:{tls}");
    let with_tls = |config: &Path, ca: &str| {
        let text = std::fs::read_to_string(config).expect("read");
        let text = text.replace(&format!("url = \"{url}\"\n"), &format!("url = \"{url}\"\n{}", tls_keys(ca)));
        std::fs::write(config, text).expect("write");
    };

    let good = setup("tls-good", &url, 1, 2.0, "");
    with_tls(&good.config, "good-ca.pem");
    let agent = AgentProcess::start(&good.config).expect("agent");
    rec.wait_for(WAIT, "messages over mutual TLS", |m| count_seq(m) >= 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    drop(agent);

    let bad = setup("tls-bad", &url, 1, 2.0, "");
    with_tls(&bad.config, "other-ca.pem");
    let agent = AgentProcess::start(&bad.config).expect("agent");
    let deadline = std::time::Instant::now() + WAIT;
    while !agent.log().contains("cannot connect to the MQTT broker") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("cannot connect to the MQTT broker")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("TLS") || line.contains("certificate"), "the reason must name TLS: {line}");
    // Still running, retrying with back-off, not crashed.
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_marks_the_agent_offline_when_it_is_killed() {
    let broker = Mosquitto::start().expect("mosquitto");
    let s = setup("will", &broker.url(), 1, 2.0, "");
    let agent = AgentProcess::start(&s.config).expect("agent");
    let status_topic = "lookout/v1/test-site/gw-test/status";
    let rec = Recorder::start_with(broker.port(), &[ALL], None).await.expect("recorder");
    rec.wait_for(WAIT, "online and a streaming camera", |m| {
        m.iter().any(|r| r.topic == status_topic && r.json["state"] == "online")
            && m.iter().any(|r| r.topic.ends_with("/cameras/cam-0/status") && r.json["state"] == "streaming")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let statuses: Vec<Value> = rec.snapshot().into_iter().filter(|r| r.topic == status_topic).map(|r| r.json).collect();
    let birth = statuses.iter().find(|j| j["state"] == "online").expect("birth");
    assert_eq!(birth["schema"], "lookout.status/1");
    assert_eq!(birth["cameras"][0]["id"], "cam-0", "status messages: {statuses:#?}");
    assert_eq!(birth["cameras"][0]["model"]["sha256"].as_str().map(str::len), Some(64));

    drop(agent); // SIGKILL: only the broker can tell.
    rec.wait_for(WAIT, "the will", |m| m.iter().any(|r| r.topic == status_topic && r.json["state"] == "offline"))
        .await
        .expect("offline by will");
    // Retained: a platform that subscribes later still sees it.
    let late = Recorder::start(broker.port(), status_topic).await.expect("late subscriber");
    let got = late.wait_for(WAIT, "the retained status", |m| !m.is_empty()).await.expect("retained");
    assert!(got[0].retain, "status must be retained");
    assert_eq!(got[0].json["state"], "offline");
    assert_eq!(got[0].json["reason"], "connection lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_when_ready_pings_the_watchdog_and_says_when_stopping() {
    use std::os::unix::net::UnixDatagram;
    let broker = Mosquitto::start().expect("mosquitto");
    let s = setup("notify", &broker.url(), 1, 1.0, "");
    let socket_path = s.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let agent = AgentProcess::start_with_env(
        &s.config,
        &[("NOTIFY_SOCKET", &socket_path.display().to_string()), ("WATCHDOG_USEC", "2000000")],
    )
    .expect("agent");
    // One entry per datagram: systemd reads each as one notification.
    let mut got: Vec<String> = Vec::new();
    let read = |got: &mut Vec<String>| {
        let mut buf = [0u8; 4096];
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let has = |got: &[String], line: &str| got.iter().filter(|d| d.lines().any(|l| l == line)).count();
    let deadline = std::time::Instant::now() + WAIT;
    while !(has(&got, "READY=1") > 0 && has(&got, "WATCHDOG=1") >= 2) {
        assert!(std::time::Instant::now() < deadline, "no READY and watchdog pings: {got:?}\n{}", agent.log());
        read(&mut got);
    }
    // Ready, with its status line, only once MQTT was connected (the broker is up).
    let ready = got.iter().find(|d| d.lines().any(|l| l == "READY=1")).expect("ready");
    assert!(ready.contains("STATUS=") && ready.contains("MQTT connected"), "{ready}");
    assert_eq!(has(&got, "READY=1"), 1, "READY only once: {got:?}");
    let (status_code, _) = agent.stop().expect("stop");
    assert!(status_code.success());
    for _ in 0..10 {
        read(&mut got);
    }
    assert_eq!(has(&got, "STOPPING=1"), 1, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_readiness_health_and_metrics() {
    let broker = Mosquitto::start().expect("mosquitto");
    let s = setup("telemetry", &broker.url(), 1, 2.0, "");
    let port = listen_telemetry(&s.config);
    let rec = Recorder::start_with(broker.port(), &[ALL], None).await.expect("recorder");
    let agent = AgentProcess::start(&s.config).expect("agent");
    // Three frames with detections: three analysed frames at least.
    rec.wait_for(WAIT, "detections", |m| m.iter().filter(|r| r.topic.ends_with("/detections")).count() >= 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // Ready follows the first MQTT connection within the health loop's second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (code, body) = loop {
        let (code, body) = http_get(port, "/readyz").expect("readyz");
        if code == 200 || std::time::Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(ready["ready"], true);
    assert!(ready["status"].as_str().is_some_and(|s| s.contains("1/1 cameras streaming")), "{body}");
    assert_eq!(http_get(port, "/healthz").expect("healthz").0, 200);
    let (code, metrics) = http_get(port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    let value = |series: &str| metric(&metrics, series);
    assert!(value("lookout_frames_analysed_total{camera=\"cam-0\"}") >= 3.0);
    assert!(
        value("lookout_frames_received_total{camera=\"cam-0\"}")
            > value("lookout_frames_decoded_total{camera=\"cam-0\"}") - 1.0
    );
    assert_eq!(value("lookout_mqtt_connected"), 1.0);
    // Per model: every run is in the latency and batch histograms.
    let runs = value("lookout_inference_duration_seconds_count{model=\"person\"}");
    assert!(runs >= 3.0, "{metrics}");
    assert_eq!(value("lookout_inference_batch_frames_count{model=\"person\"}"), runs);
    assert_eq!(value("lookout_inference_duration_seconds_bucket{model=\"person\",le=\"+Inf\"}"), runs);
    assert!(value("lookout_inference_batch_frames_sum{model=\"person\"}") >= runs);
    // The clip always moves: motion gating skipped nothing.
    assert_eq!(value("lookout_frames_motion_skipped_total{camera=\"cam-0\"}"), 0.0);
    assert_eq!(value("lookout_up"), 1.0);
    assert!(value("lookout_mqtt_acked_total") >= 1.0);
    drop(agent);
}

/// A tmpfs of `size` mounted on a folder (the tests run as root), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs on {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` with one file, until it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn write_failed_gaps(msgs: &[Received]) -> u64 {
    unique(msgs)
        .iter()
        .filter(|m| m.json["type"] == "delivery.gap" && m.json["reason"] == "write_failed")
        .filter_map(|m| m.json["count"].as_u64())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_announced_as_write_failed_gaps_fails_healthz_and_does_not_crash_the_agent() {
    let port = free_port().expect("port");
    let broker = Mosquitto::start_on(port).expect("mosquitto");
    let s = setup("diskfull", &broker.url(), 1, 2.0, "[outbox]\nmax_bytes = 524288\nsegment_bytes = 65536\n");
    let state = s.dir.join("state");
    let _disk = Tmpfs::mount(&state, "2m");
    let http = listen_telemetry(&s.config);
    let rec = Recorder::start_with(port, &[ALL], Some("platform-diskfull")).await.expect("recorder");
    let agent = AgentProcess::start(&s.config).expect("agent");
    rec.wait_for(WAIT, "first messages", |m| count_seq(m) >= 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // The broker goes away (nothing is acknowledged, so no segment is freed) and the
    // disk fills up.
    broker.terminate();
    let hold = PortHold::again(port).expect("hold port");
    let filler = state.join("filler");
    fill(&filler);
    let body = wait_until(WAIT, "/healthz to fail", || match http_get(http, "/healthz") {
        Ok((503, body)) => Some(body),
        _ => None,
    })
    .await;
    assert!(body.contains("appends failed") && body.contains("No space"), "{body}");
    let (_, metrics) = http_get(http, "/metrics").expect("metrics");
    let failures = metric(&metrics, "lookout_outbox_write_failures_total");
    assert!(failures >= 3.0, "{metrics}");
    assert_eq!(metric(&metrics, "lookout_up"), 0.0);

    // Room again, and the broker back: the lost seqs are announced, nothing else is lost.
    std::fs::remove_file(&filler).expect("remove filler");
    let _broker = Mosquitto::start_on(hold.release()).expect("mosquitto again");
    rec.wait_for(WAIT, "a write_failed gap", |m| write_failed_gaps(m) >= 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    wait_until(WAIT, "/healthz to recover", || http_get(http, "/healthz").ok().filter(|r| r.0 == 200)).await;
    let (status, summary) = agent.stop().expect("stop");
    assert!(status.success(), "the agent must survive a full disk");
    let msgs = wait_for_goodbye(&rec).await;
    assert_complete(&msgs);
    let summary: Value = serde_json::from_str(summary.trim()).expect("summary");
    let dropped = announced(&msgs).len() as u64;
    assert_eq!(summary["outbox_dropped"].as_u64(), Some(dropped), "counter vs announced: {summary}");
    assert!(write_failed_gaps(&msgs) as f64 >= failures);
}

/// Outbox segments, oldest first.
fn segments(outbox: &Path) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(outbox)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "seg")).collect())
        .unwrap_or_default();
    segs.sort();
    segs
}

/// The seqs of the records in a segment, read per the disk format (publish/outbox.rs).
fn record_seqs(segment: &Path) -> Vec<u64> {
    let data = std::fs::read(segment).expect("segment");
    let (mut at, mut seqs) = (0, Vec::new());
    while at + 20 <= data.len() && data[at..at + 4] == *b"LKO1" {
        let len = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        seqs.push(u64::from_le_bytes(data[at + 12..at + 20].try_into().expect("8 bytes")));
        at += 12 + len;
    }
    seqs
}

/// Flips a byte in the state copy with the higher generation.
fn damage_newest_state_copy(outbox: &Path) {
    let generation = |name: &str| {
        std::fs::read(outbox.join(name)).ok().map(|b| u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")))
    };
    let newest = if generation("state.a") >= generation("state.b") { "state.a" } else { "state.b" };
    let path = outbox.join(newest);
    let mut data = std::fs::read(&path).expect("state copy");
    data[20] ^= 0x10;
    std::fs::write(&path, data).expect("damage state");
}

/// No seq was given to two different messages.
fn assert_no_seq_reused(msgs: &[Received]) {
    let mut ids: HashMap<u64, String> = HashMap::new();
    for m in unique(msgs) {
        let (seq, id) = (m.json["seq"].as_u64().expect("seq"), m.json["id"].to_string());
        if let Some(other) = ids.insert(seq, id.clone()) {
            assert_eq!(other, id, "seq {seq} reused");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_only_go_forward_past_an_unreadable_segment_and_a_damaged_state() {
    let hold = PortHold::new().expect("port");
    let s = setup(
        "unreadable",
        &format!("mqtt://127.0.0.1:{}", hold.port),
        1,
        2.0,
        "[outbox]\nmax_bytes = 1048576\nsegment_bytes = 4096\n",
    );
    let outbox = s.dir.join("state/outbox");
    // No broker: messages pile up over several segments.
    let agent = AgentProcess::start(&s.config).expect("agent");
    wait_until(WAIT, "four outbox segments", || (segments(&outbox).len() >= 4).then_some(())).await;
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    let segs = segments(&outbox);
    let written: Vec<u64> = segs.iter().flat_map(|p| record_seqs(p)).collect();
    let max_written = *written.iter().max().expect("records");

    // A bad sector makes a segment in the middle unreadable (here: a folder in its place),
    // and the newest state copy is damaged.
    let victim = &segs[1];
    let lost = record_seqs(victim);
    std::fs::remove_file(victim).expect("remove segment");
    std::fs::create_dir(victim).expect("unreadable segment");
    damage_newest_state_copy(&outbox);

    let broker = Mosquitto::start_on(hold.release()).expect("mosquitto");
    let rec = Recorder::start_with(broker.port(), &[ALL], None).await.expect("recorder");
    let agent = AgentProcess::start(&s.config).expect("agent again");
    let covered = |m: &[Received], seqs: &[u64]| {
        let g = gaps(m);
        seqs.iter().all(|s| g.iter().any(|(f, l, _)| (f..=l).contains(&s)))
    };
    rec.wait_for(WAIT, "the backlog, a gap for the unreadable segment and new messages", |m| {
        covered(m, &lost) && delivered_seqs(m).iter().filter(|&&s| s > max_written).count() >= 3
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(agent.log().contains("unreadable"), "{}", agent.log());
    assert!(victim.with_extension("seg.unreadable").is_dir(), "moved aside");
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    let msgs = wait_for_goodbye(&rec).await;
    assert_complete(&msgs);
    assert_no_seq_reused(&msgs);
    let high = *delivered_seqs(&msgs).iter().next_back().expect("seqs");

    // Everything was delivered; now no segment is left and a state copy is damaged.
    for seg in segments(&outbox) {
        std::fs::remove_file(seg).expect("remove segment");
    }
    damage_newest_state_copy(&outbox);
    let before = count_seq(&rec.snapshot());
    let agent = AgentProcess::start(&s.config).expect("agent a third time");
    rec.wait_for(WAIT, "messages of the third run", |m| count_seq(m) >= before + 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    let msgs = rec.snapshot();
    let third: Vec<u64> = delivered_seqs(&msgs).into_iter().filter(|&s| s > high).collect();
    assert!(third.len() >= 3, "the third run's seqs start above {high}");
    assert_no_seq_reused(&msgs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_too_large_for_max_message_bytes_are_made_smaller_and_delivery_never_stalls() {
    let broker = Mosquitto::start().expect("mosquitto");
    // Large, barely compressed snapshots: far above 64 KiB as first encoded.
    let s = setup("bigsnap", &broker.url(), 1, 2.0, "snapshot_max_side = 4096\nsnapshot_quality = 100\n");
    let text = std::fs::read_to_string(&s.config).expect("config");
    std::fs::write(&s.config, text.replace("[mqtt]\n", "[mqtt]\nmax_message_bytes = 65536\n")).expect("write");
    let rec = Recorder::start_with(broker.port(), &[ALL], None).await.expect("recorder");
    let agent = AgentProcess::start(&s.config).expect("agent");
    let is_snapshot = |r: &Received| r.topic.contains("/snapshots/");
    rec.wait_for(WAIT, "three snapshots and later messages", |m| {
        let snaps = m.iter().filter(|r| is_snapshot(r)).count();
        snaps >= 3 && m.iter().rposition(|r| !is_snapshot(r)) > m.iter().rposition(is_snapshot)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    let msgs = wait_for_goodbye(&rec).await;
    for r in msgs.iter().filter(|r| is_snapshot(r)) {
        assert!(r.topic.len() + r.payload.len() + 9 <= 65536, "{} bytes on {}", r.payload.len(), r.topic);
        // The event that names it gives the size it was made.
        let event = msgs.iter().find(|m| m.json["snapshot"]["topic"] == r.topic.as_str()).expect("its event");
        let img = image::load_from_memory(&r.payload).expect("a JPEG");
        assert_eq!(
            (Some(u64::from(img.width())), Some(u64::from(img.height()))),
            (event.json["snapshot"]["width"].as_u64(), event.json["snapshot"]["height"].as_u64())
        );
    }
    assert_complete(&msgs);
    assert!(gaps(&msgs).is_empty(), "{:?}", gaps(&msgs));
}
