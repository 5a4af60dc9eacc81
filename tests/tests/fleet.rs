//! Operating a running agent remotely, against real peers: mosquitto, gst-rtsp-server
//! cameras streaming throughout, a real HTTP server serving model releases, the real
//! `lookout` binary with ONNX Runtime.
//!
//! - Model updates: every kind of bad release is refused with its own code while the
//!   old model keeps analysing; a good one swaps in with no gap in a streaming camera's
//!   messages longer than 3 analysis intervals, events name the new version from then
//!   on; rollback; the active version survives a restart.
//! - Cameras: add, update, remove while another keeps streaming; runtime changes survive
//!   a restart; `SIGHUP` adds a camera from the edited config file and leaves the rest.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lookout_e2e::*;
use serde_json::{Value, json};

const ROOT: &str = "lookout/v1/test-site/gw-test";
const WAIT: Duration = Duration::from_secs(60);
/// Analysed frames per second of the streaming cameras.
const FPS: f64 = 1.0;

fn still(name: &str) -> Media {
    Media::Still { image: media_file(name).expect("media (scripts/setup.sh fetches it)") }
}

/// A release folder `dir/name/` with the person model's files, its manifest edited by
/// `edit`, signed with `key` (if any).
fn release(dir: &Path, name: &str, key: Option<&Path>, edit: impl Fn(String) -> String) -> PathBuf {
    let src = person_manifest();
    let src_dir = src.parent().expect("model dir");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("release dir");
    std::fs::create_dir_all(out.join("reference")).expect("reference dir");
    for f in ["model.onnx", "labels.txt", "reference/vtest_frame200.png"] {
        std::fs::copy(src_dir.join(f), out.join(f)).expect("copy model files");
    }
    let size = std::fs::metadata(src_dir.join("model.onnx")).expect("model").len();
    let text = std::fs::read_to_string(&src).expect("manifest");
    // The manifest at the top level: `size` goes before the first table.
    let text = text.replacen("\n[input]", &format!("size = {size}\n\n[input]"), 1);
    let manifest = out.join("manifest.toml");
    std::fs::write(&manifest, edit(text)).expect("write manifest");
    if let Some(k) = key {
        lookout(&["model", "sign", manifest.to_str().expect("utf-8 path"), "--key", k.to_str().expect("utf-8")])
            .expect("sign");
    }
    out
}

/// A local HTTP server that answers every request with a redirect to `location`.
fn redirect_server(location: String) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

/// A local HTTP server that accepts connections and never answers (a stalled download).
fn silent_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten().take(4) {
            held.push(conn);
        }
        std::thread::sleep(Duration::from_secs(120));
    });
    (port, t)
}

fn version(text: String, v: &str) -> String {
    text.replacen("version = \"0.2.0\"", &format!("version = \"{v}\""), 1)
}

/// Capture times (ms) of a camera's detections messages.
fn capture_times(msgs: &[Received], camera: &str) -> Vec<(i128, String)> {
    msgs.iter()
        .filter(|m| m.json["camera"] == camera)
        .filter_map(|m| {
            let ts = m.json["ts"].as_str()?;
            let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
            Some((t.unix_timestamp_nanos() / 1_000_000, m.json["model"]["version"].as_str().unwrap_or("").to_string()))
        })
        .collect()
}

/// The longest gap between consecutive messages, in ms.
fn longest_gap(times: &[(i128, String)]) -> i128 {
    times.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or(0)
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_updates_are_verified_swapped_without_a_gap_and_rolled_back() {
    let dir = scratch("fleet-models");
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let (secret, public) = (keys.join("release.key"), keys.join("release.pub"));
    let (foreign, foreign_pub) = (keys.join("foreign.key"), keys.join("foreign.pub"));
    for (s, p) in [(&secret, &public), (&foreign, &foreign_pub)] {
        lookout(&["model", "keygen", "--secret", s.to_str().expect("utf-8"), "--public", p.to_str().expect("utf-8")])
            .expect("keygen");
    }

    let www = dir.join("www");
    let k = Some(secret.as_path());
    release(&www, "good", k, |t| version(t, "0.3.0"));
    release(&www, "foreign", Some(foreign.as_path()), |t| version(t, "0.3.1"));
    release(&www, "unsigned", None, |t| version(t, "0.3.2"));
    // Same size, one byte changed after signing.
    let badsha = release(&www, "badsha", k, |t| version(t, "0.3.3"));
    let mut altered = std::fs::read(badsha.join("model.onnx")).expect("model");
    let mid = altered.len() / 2;
    altered[mid] ^= 0xff;
    std::fs::write(badsha.join("model.onnx"), &altered).expect("alter");
    let truncated = release(&www, "truncated", k, |t| version(t, "0.3.4"));
    let bytes = std::fs::read(truncated.join("model.onnx")).expect("model");
    std::fs::write(truncated.join("model.onnx"), &bytes[..bytes.len() / 2]).expect("truncate");
    // The manifest says 3000 anchors; the model has 1917.
    release(&www, "shape", k, |t| version(t, "0.3.5").replace("anchors = 1917", "anchors = 3000"));
    // Signed and intact, but its self-test expects a person where the reference has none.
    release(&www, "selftest", k, |t| version(t, "0.3.7").replacen("bbox = [0.271, 0.332", "bbox = [0.671, 0.032", 1));
    // Bigger than the config's max_bytes (13 MB), truthfully declared.
    let big = release(&www, "big", k, |t| version(t, "0.3.6"));
    let mut padded = bytes.clone();
    padded.resize(14_000_000, 0);
    std::fs::write(big.join("model.onnx"), &padded).expect("pad");
    let sha = lookout::infer::manifest::sha256_file(&big.join("model.onnx")).expect("sha");
    let manifest = big.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let text = text
        .lines()
        .filter(|l| !l.starts_with("signature"))
        .map(|l| {
            if l.starts_with("sha256") {
                format!("sha256 = \"{sha}\"")
            } else if l.starts_with("size") {
                "size = 14000000".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&manifest, text).expect("manifest");
    lookout(&["model", "sign", manifest.to_str().expect("utf-8"), "--key", secret.to_str().expect("utf-8")])
        .expect("sign big");
    let http = HttpServer::start(&www).expect("http server");
    // The same releases over HTTPS, with a private CA the agent is told to trust.
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).expect("pki dir");
    make_pki(&pki, "rel");
    let https = https_server(&www, &pki.join("rel-server.pem"), &pki.join("rel-server.key")).expect("https server");
    release(&www, "tls", k, |t| version(t, "0.5.0"));
    // A server whose certificate no trusted CA signed.
    make_pki(&pki, "rogue");
    let rogue = https_server(&www, &pki.join("rogue-server.pem"), &pki.join("rogue-server.key")).expect("https");

    release(&www, "old", k, |t| version(t, "0.2.5"));
    // The one folder file:// releases may come from: a release, a file that is not a
    // manifest (a stand-in for a secret) and a FIFO (which must not block the agent).
    let local_dir = dir.join("local");
    std::fs::create_dir_all(&local_dir).expect("local dir");
    std::fs::write(local_dir.join("secret.toml"), "SECRET-PASSWORD-4711\n").expect("secret");
    let fifo = local_dir.join("fifo.toml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    // Both ports stay taken for the whole test: a port merely freed could be handed to one
    // of the allowed servers below and turn the refusal into a download.
    let closed = ClosedPort::bind().expect("port");
    // Not in allowed_urls, yet serving a valid release: fetching it would succeed.
    let unlisted_server = HttpServer::start(&www).expect("unlisted http server");
    let unlisted = unlisted_server.port;
    let redirect = redirect_server(format!("http://127.0.0.1:{unlisted}/good/manifest.toml"));
    let (silent, _silent) = silent_server();

    let broker = Mosquitto::start().expect("mosquitto");
    let server = RtspServer::start(0, vec![("/cam".into(), still("grace_hopper.jpg"))]).expect("rtsp");
    let config =
        write_config(&dir, &broker.url(), &[Cam { id: "cam-1", url: server.url("/cam"), fps: FPS, min_score: 0.5 }])
            .expect("config");
    // Two sessions take the camera's frames in turn: a swap must reach both without a
    // frame on the old version after one on the new, and frames stay in capture order.
    let mut text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("[inference]\nthreads = 1\n", "[inference]\nthreads = 1\nworkers = 2\n");
    assert!(text.contains("workers = 2"), "the test config has no [inference] section to extend");
    let allowed: Vec<String> = [
        http.url(""),
        https.https_url(""),
        rogue.https_url(""),
        format!("http://127.0.0.1:{}/", closed.port),
        format!("http://127.0.0.1:{redirect}/"),
        format!("http://127.0.0.1:{silent}/"),
        // Listed by name: it still may not reach a loopback address.
        format!("http://localhost:{}/", http.port),
    ]
    .iter()
    .map(|u| format!("\"{u}\""))
    .collect();
    text.push_str(&format!(
        "\n[model_updates]\ntrusted_keys = [\"{}\"]\nmax_bytes = 13000000\ntimeout_secs = 60\nca_file = \"{}\"\nallowed_urls = [{}]\nlocal_dir = \"{}\"\n",
        public.display(),
        pki.join("rel-ca.pem").display(),
        allowed.join(", "),
        local_dir.display()
    ));
    std::fs::write(&config, text).expect("config");

    let detections = Recorder::start(broker.port(), &format!("{ROOT}/cameras/+/detections")).await.expect("sub");
    let op = Operator::connect(broker.port(), ROOT).await.expect("operator");
    let agent = AgentProcess::start(&config).expect("agent");
    detections.wait_for(WAIT, "detections", |m| m.len() >= 2).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(agent.log().matches("inference worker started").count(), 2, "{}", agent.log());

    // Every bad release is refused with its own reason; URLs the gateway may not reach
    // are refused before anything is read from them.
    let file = |p: &Path| format!("file://{}", p.display());
    let bad = [
        ("foreign", http.url("foreign/manifest.toml"), "bad_signature"),
        ("unsigned", http.url("unsigned/manifest.toml"), "unsigned"),
        ("badsha", http.url("badsha/manifest.toml"), "checksum_mismatch"),
        ("truncated", http.url("truncated/manifest.toml"), "size_mismatch"),
        ("shape", http.url("shape/manifest.toml"), "shape_mismatch"),
        ("selftest", http.url("selftest/manifest.toml"), "self_test_failed"),
        ("big", http.url("big/manifest.toml"), "too_large"),
        ("unreachable", format!("http://127.0.0.1:{}/r/manifest.toml", closed.port), "download_failed"),
        ("missing", http.url("nothing-here/manifest.toml"), "download_failed"),
        ("untrusted-tls", rogue.https_url("tls/manifest.toml"), "download_failed"),
        ("ftp", "ftp://example.org/manifest.toml".into(), "invalid_field"),
        ("environ", "file:///proc/self/environ".into(), "url_not_allowed"),
        ("password", "file:///etc/lookout/mqtt-password".into(), "url_not_allowed"),
        ("unlisted", format!("http://127.0.0.1:{unlisted}/good/manifest.toml"), "url_not_allowed"),
        ("by-name", format!("http://localhost:{}/good/manifest.toml", http.port), "url_not_allowed"),
        ("redirect", format!("http://127.0.0.1:{redirect}/good/manifest.toml"), "url_not_allowed"),
        ("fifo", file(&fifo), "url_not_allowed"),
        ("escape", file(&local_dir.join("../good/manifest.toml")), "url_not_allowed"),
        ("secret", file(&local_dir.join("secret.toml")), "bad_signature"),
    ];
    let mut session = Vec::new();
    for (name, url, want) in &bad {
        let req = json!({"request_id": format!("upd-{name}"), "manifest_url": url});
        let reply = op.call("model.update", req.clone(), WAIT).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
        assert_eq!(reply["ok"], false, "{name}: {reply}");
        assert_eq!(code(&reply), *want, "{name}: {reply}");
        let text = reply.to_string();
        assert!(!text.contains("SECRET-PASSWORD") && !text.contains("PATH="), "{name}: the reply leaks: {reply}");
        session.push(format!("→ model.update {req}\n← {reply}"));
    }
    // The old model kept analysing throughout.
    let n = detections.snapshot().len();
    detections.wait_for(WAIT, "detections after the refusals", |m| m.len() >= n + 2).await.expect("still streaming");
    assert!(
        capture_times(&detections.snapshot(), "cam-1").iter().all(|(_, v)| v == "0.2.0"),
        "a refused release must never run"
    );

    // The good release swaps in.
    let req = json!({"request_id": "upd-good", "manifest_url": http.url("good/manifest.toml")});
    let reply = op.call("model.update", req.clone(), WAIT).await.expect("reply");
    session.push(format!("→ model.update {req}\n← {reply}"));
    assert_eq!(reply["ok"], true, "{reply}\n{}", agent.log());
    assert_eq!(reply["model"]["version"], "0.3.0", "{reply}");
    assert_eq!(reply["previous"]["version"], "0.2.0", "{reply}");
    assert_eq!(reply["cameras"], json!(["cam-1"]), "{reply}");
    assert!(reply["signed_by"].as_str().is_some_and(|k| k.starts_with("ed25519:")), "{reply}");
    // An older signed release cannot be replayed to go back.
    let req = json!({"request_id": "upd-old", "manifest_url": http.url("old/manifest.toml")});
    let reply = op.call("model.update", req.clone(), WAIT).await.expect("reply");
    session.push(format!("→ model.update {req}\n← {reply}"));
    assert_eq!(code(&reply), "downgrade", "{reply}");
    let n = detections.snapshot().len();
    detections
        .wait_for(WAIT, "detections by 0.3.0", |m| {
            m.len() >= n + 3 && capture_times(m, "cam-1").iter().rev().take(3).all(|(_, v)| v == "0.3.0")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let times = capture_times(&detections.snapshot(), "cam-1");
    let first_new = times.iter().position(|(_, v)| v == "0.3.0").expect("0.3.0 messages");
    assert!(times[first_new..].iter().all(|(_, v)| v == "0.3.0"), "once swapped, every frame names the new version");
    assert!(times.windows(2).all(|w| w[0].0 < w[1].0), "frames out of capture order: {times:?}");
    let around = &times[first_new.saturating_sub(5)..(first_new + 5).min(times.len())];
    let limit = (3.0 * 1000.0 / FPS) as i128;
    assert!(longest_gap(around) <= limit, "gap across the swap: {around:?} (limit {limit} ms)");

    let list = op.call("model.list", json!({"request_id": "list-1"}), WAIT).await.expect("model.list");
    session.push(format!("→ model.list {{\"request_id\":\"list-1\"}}\n← {list}"));
    let person = &list["models"][0];
    assert_eq!(person["active"]["version"], "0.3.0", "{list}");
    assert_eq!(person["previous"]["version"], "0.2.0", "{list}");
    let installed: Vec<&str> =
        person["installed"].as_array().expect("installed").iter().filter_map(|v| v["version"].as_str()).collect();
    assert!(installed.contains(&"0.2.0") && installed.contains(&"0.3.0"), "{list}");
    assert!(!installed.iter().any(|v| v.starts_with("0.3.") && *v != "0.3.0"), "refused releases are not kept: {list}");

    // Rollback returns to the config's version, without stopping the camera.
    let reply = op.call("model.rollback", json!({"request_id": "rb-1", "name": "person"}), WAIT).await.expect("reply");
    session.push(format!("→ model.rollback {{\"request_id\":\"rb-1\",\"name\":\"person\"}}\n← {reply}"));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["model"]["version"], "0.2.0", "{reply}");
    let n = detections.snapshot().len();
    detections
        .wait_for(WAIT, "detections by 0.2.0 again", |m| {
            m.len() >= n + 3 && capture_times(m, "cam-1").iter().rev().take(3).all(|(_, v)| v == "0.2.0")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // Forward again (already installed: no download), then restart: the active version persists.
    let reply = op
        .call("model.update", json!({"request_id": "upd-again", "manifest_url": http.url("good/manifest.toml")}), WAIT)
        .await
        .expect("reply");
    assert_eq!(reply["ok"], true, "{reply}");
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    let mark = detections.snapshot().len();
    let agent = AgentProcess::start(&config).expect("agent again");
    detections
        .wait_for(WAIT, "detections after the restart", |m| m.len() >= mark + 2)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let after = capture_times(&detections.snapshot()[mark..], "cam-1");
    assert!(after.iter().all(|(_, v)| v == "0.3.0"), "the updated version runs after a restart: {after:?}");

    // A release on the gateway's own disk (file://) installs the same way.
    let local = release(&local_dir, "local-0.4.0", k, |t| version(t, "0.4.0"));
    let url = format!("file://{}", local.join("manifest.toml").display());
    let req = json!({"request_id": "upd-file", "manifest_url": url});
    let reply = op.call("model.update", req.clone(), WAIT).await.expect("reply");
    session.push(format!("→ model.update {req}\n← {reply}"));
    assert_eq!((reply["ok"].clone(), reply["model"]["version"].clone()), (json!(true), json!("0.4.0")), "{reply}");
    let n = detections.snapshot().len();
    detections
        .wait_for(WAIT, "detections by 0.4.0", |m| {
            m.len() >= n + 2 && capture_times(m, "cam-1").last().is_some_and(|(_, v)| v == "0.4.0")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // Over HTTPS, trusting the configured CA.
    let req = json!({"request_id": "upd-https", "manifest_url": https.https_url("tls/manifest.toml")});
    let reply = op.call("model.update", req.clone(), WAIT).await.expect("reply");
    session.push(format!("→ model.update {req}\n← {reply}"));
    assert_eq!((reply["ok"].clone(), reply["model"]["version"].clone()), (json!(true), json!("0.5.0")), "{reply}");

    // A download that stalls holds up nothing: other commands are answered meanwhile, a
    // second update is told to wait, and SIGTERM still stops the agent.
    let stalled = format!("http://127.0.0.1:{silent}/r/manifest.toml");
    op.send("model.update", json!({"request_id": "upd-stalled", "manifest_url": stalled})).await.expect("send");
    let reply = op.call("camera.remove", json!({"request_id": "rm-none", "id": "nope"}), WAIT).await.expect("reply");
    assert_eq!(code(&reply), "not_found", "{reply}");
    let req = json!({"request_id": "upd-second", "manifest_url": http.url("good/manifest.toml")});
    let reply = op.call("model.update", req, WAIT).await.expect("reply");
    assert_eq!(code(&reply), "busy", "{reply}");
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());

    // The update session, for the record (see the closing note).
    let _ = std::fs::write(workspace().join("target/fleet-update-session.txt"), session.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cameras_change_live_survive_a_restart_and_follow_sighup() {
    let dir = scratch("fleet-cameras");
    let broker = Mosquitto::start().expect("mosquitto");
    let server = RtspServer::start(
        0,
        vec![
            ("/a".into(), still("grace_hopper.jpg")),
            ("/b".into(), still("messi5.jpg")),
            ("/c".into(), still("grace_hopper.jpg")),
        ],
    )
    .expect("rtsp");
    let cams = [
        Cam { id: "cam-1", url: server.url("/a"), fps: FPS, min_score: 0.5 },
        Cam { id: "cam-2", url: server.url("/b"), fps: FPS, min_score: 0.5 },
    ];
    let config = write_config(&dir, &broker.url(), &cams).expect("config");
    // A second model, for a camera of its own: each model gets its own session and batcher.
    let yolo = workspace().join("models/testdata/yolov8/manifest.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replacen(
        "\n[[cameras]]",
        &format!("\n[[models]]\nname = \"yolo\"\nmanifest = \"{}\"\n\n[[cameras]]", yolo.display()),
        1,
    );
    std::fs::write(&config, text).expect("config");
    let detections = Recorder::start(broker.port(), &format!("{ROOT}/cameras/+/detections")).await.expect("sub");
    let statuses = Recorder::start(broker.port(), &format!("{ROOT}/cameras/+/status")).await.expect("sub");
    let op = Operator::connect(broker.port(), ROOT).await.expect("operator");
    let agent = AgentProcess::start(&config).expect("agent");
    for cam in ["cam-1", "cam-2"] {
        detections
            .wait_for(WAIT, cam, |m| m.iter().any(|r| r.json["camera"] == cam))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    }

    // With updates off, model.update reads nothing; a camera whose numbers would have
    // overflowed a Duration is refused, and the supervisor goes on answering.
    let req = json!({"request_id": "upd-off", "manifest_url": "file:///proc/self/environ"});
    let reply = op.call("model.update", req, WAIT).await.expect("reply");
    assert_eq!(code(&reply), "updates_disabled", "{reply}");
    assert!(!reply.to_string().contains("PATH="), "{reply}");
    let huge = json!({"id": "cam-9", "url": server.url("/c"), "model": "person", "reconnect_min_secs": 1e20});
    let reply = op.call("camera.add", json!({"request_id": "add-huge", "camera": huge}), WAIT).await.expect("reply");
    assert_eq!(code(&reply), "invalid_camera", "{reply}");
    assert!(reply.to_string().contains("reconnect_min_secs"), "{reply}");

    // Add a camera at runtime.
    let cam3 = json!({"id": "cam-3", "url": server.url("/c"), "model": "person", "fps": 1.0, "reconnect_max_secs": 2});
    let reply = op.call("camera.add", json!({"request_id": "add-3", "camera": cam3}), WAIT).await.expect("reply");
    assert_eq!(reply["ok"], true, "{reply}\n{}", agent.log());
    assert_eq!(reply["origin"], "runtime", "{reply}");
    assert_eq!(reply["overrides_config"], false, "{reply}");
    detections
        .wait_for(WAIT, "cam-3 detections", |m| m.iter().any(|r| r.json["camera"] == "cam-3"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // A camera on the second model: its detections come from that model.
    let cam5 = json!({"id": "cam-5", "url": server.url("/c"), "model": "yolo", "fps": 1.0});
    let reply = op.call("camera.add", json!({"request_id": "add-5", "camera": cam5}), WAIT).await.expect("reply");
    assert_eq!(reply["ok"], true, "{reply}\n{}", agent.log());
    let got = detections
        .wait_for(WAIT, "cam-5 detections", |m| m.iter().any(|r| r.json["camera"] == "cam-5"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let by5: Vec<&Received> = got.iter().filter(|r| r.json["camera"] == "cam-5").collect();
    assert!(by5.iter().all(|r| r.json["model"]["name"] == "test-yolov8"), "{:?}", by5[0].json);
    assert!(
        got.iter()
            .filter(|r| r.json["camera"] == "cam-1")
            .all(|r| r.json["model"]["name"] == "ssdlite-mobilenetv2-person")
    );
    let reply = op.call("camera.remove", json!({"request_id": "rm-5", "id": "cam-5"}), WAIT).await.expect("reply");
    assert_eq!(reply["ok"], true, "{reply}");

    // Bad requests are refused, naming what is wrong.
    let bad = json!({"id": "cam-9", "url": "http://not-rtsp", "model": "person", "fps": 0});
    let reply = op.call("camera.add", json!({"request_id": "add-bad", "camera": bad}), WAIT).await.expect("reply");
    assert_eq!(code(&reply), "invalid_camera", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("camera.url") && message.contains("camera.fps"), "{reply}");
    let reply = op.call("camera.add", json!({"request_id": "add-dup", "camera": cam3}), WAIT).await.expect("reply");
    assert_eq!(code(&reply), "already_exists", "{reply}");
    let reply = op.call("camera.remove", json!({"request_id": "rm-none", "id": "cam-42"}), WAIT).await.expect("reply");
    assert_eq!(code(&reply), "not_found", "{reply}");

    // Update the runtime camera and override a config camera; remove the config camera.
    let cam3b = json!({"id": "cam-3", "url": server.url("/c"), "model": "person", "fps": 2.0, "min_score": 0.6});
    let reply = op.call("camera.update", json!({"request_id": "upd-3", "camera": cam3b}), WAIT).await.expect("reply");
    assert_eq!((reply["ok"].clone(), reply["changed"].clone()), (json!(true), json!(true)), "{reply}");
    let cam2b = json!({"id": "cam-2", "url": server.url("/b"), "model": "person", "fps": 1.0});
    let reply = op.call("camera.update", json!({"request_id": "upd-2", "camera": cam2b}), WAIT).await.expect("reply");
    assert_eq!(reply["overrides_config"], true, "{reply}");
    assert_eq!(reply["origin"], "runtime_override", "{reply}");
    let reply = op.call("camera.remove", json!({"request_id": "rm-2", "id": "cam-2"}), WAIT).await.expect("reply");
    assert_eq!(reply["ok"], true, "{reply}");
    statuses
        .wait_for(WAIT, "cam-2's retained status cleared", |m| {
            m.iter().any(|r| r.topic == format!("{ROOT}/cameras/cam-2/status") && r.payload.is_empty())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let cut = detections.snapshot().len();
    detections
        .wait_for(WAIT, "more cam-1 and cam-3", |m| {
            let later = &m[cut..];
            later.iter().filter(|r| r.json["camera"] == "cam-1").count() >= 3
                && later.iter().any(|r| r.json["camera"] == "cam-3")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // Detections already analysed may trail the removal by a frame or two; then none.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark = detections.snapshot().len();

    // cam-1 was never touched: no gap in its messages beyond 3 analysis intervals.
    let times = capture_times(&detections.snapshot(), "cam-1");
    let limit = (3.0 * 1000.0 / FPS) as i128;
    assert!(longest_gap(&times) <= limit, "cam-1 gap {} ms > {limit} ms while others changed", longest_gap(&times));

    // Restart: runtime changes persist.
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
    assert!(!detections.snapshot()[mark..].iter().any(|r| r.json["camera"] == "cam-2"), "cam-2 was removed");
    // Counted once the old agent has drained: only the new one's messages come after.
    let restarted = detections.snapshot().len();
    let agent = AgentProcess::start(&config).expect("agent again");
    // Commands sent before the agent subscribed would be lost: wait for it to stream.
    detections
        .wait_for(WAIT, "cam-1 after restart", |m| m[restarted..].iter().any(|r| r.json["camera"] == "cam-1"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let list = op.call("camera.list", json!({"request_id": "list-after-restart"}), WAIT).await.expect("reply");
    let ids: Vec<(&str, &str)> = list["cameras"]
        .as_array()
        .expect("cameras")
        .iter()
        .map(|c| (c["id"].as_str().unwrap_or(""), c["origin"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(ids, vec![("cam-1", "config"), ("cam-3", "runtime")], "{list}");
    let cam3_fps = list["cameras"][1]["fps"].as_f64();
    assert_eq!(cam3_fps, Some(2.0), "cam-3 keeps its update: {list}");

    // SIGHUP: a camera added to the file starts; the others are not restarted.
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "\n[[cameras]]\nid = \"cam-4\"\nurl = \"{}\"\nmodel = \"person\"\nfps = 1.0\n",
        server.url("/b")
    ));
    std::fs::write(&config, text).expect("config");
    detections
        .wait_for(WAIT, "cam-1 after restart", |m| m[restarted..].iter().any(|r| r.json["camera"] == "cam-1"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    agent.hup().expect("SIGHUP");
    detections
        .wait_for(WAIT, "cam-4 after SIGHUP", |m| m.iter().any(|r| r.json["camera"] == "cam-4"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(agent.log().contains("config reloaded"), "{}", agent.log());
    let log = agent.log();
    let reload_line = log.lines().find(|l| l.contains("config reloaded")).unwrap_or("");
    assert!(
        reload_line.contains("added=1") && reload_line.contains("restarted=0") && reload_line.contains("unchanged=2"),
        "{reload_line}"
    );
    let (status, _) = agent.stop().expect("stop");
    assert!(status.success());
}
