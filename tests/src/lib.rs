//! Harness for Lookout's end-to-end tests: every peer is real. A mosquitto broker and
//! gst-rtsp-server are started per test, the real `lookout` binary runs as a child
//! process with the real ONNX Runtime and model, and a real MQTT client records what
//! the platform would receive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

pub mod browser;
pub mod etcd;

pub use lookout::demo::broker::{Mosquitto, free_port};
pub use lookout::demo::media::{AccessUnit, Codec, clip, media_file};
pub use lookout::demo::rtsp::{Media, RtspServer};
pub use lookout::demo::scene::{Actor, Scene, Sprite, city_scene, quiet_scene, scene_media, standard_scene};

/// A loopback TCP port that refuses every connection for as long as this lives. The socket
/// is bound but never listens, so no other bind (a server started later on port 0) can take
/// the port; a port merely freed by `free_port` can be handed out again at once.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn bind() -> anyhow::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
        let port = socket.local_addr()?.port();
        Ok(Self { _socket: socket, port })
    }
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The person model's manifest: most tests run it (their truths and fixtures are its).
/// Rules for a camera of the quiet scene (`lookout::demo::scene::quiet_scene`), appended
/// to its `[[cameras]]` section: the line x = 0.5 and a zone on the lower walkway that A
/// and C cross and B does not. Shared by the end-to-end test and the benchmark.
pub const QUIET_SCENE_RULES: &str = r#"lost_after = 3
[[cameras.zones]]
name = "walkway"
polygon = [[0.3, 0.6], [0.7, 0.6], [0.7, 1.0], [0.3, 1.0]]
[[cameras.lines]]
name = "middle"
points = [[0.5, 0.0], [0.5, 1.0]]
directions = ["east", "west"]
"#;

pub fn person_manifest() -> PathBuf {
    workspace().join("models/ssdlite-mobilenetv2-person/manifest.toml")
}

/// The default model's manifest (people and vehicles).
pub fn city_manifest() -> PathBuf {
    workspace().join(format!("models/{}/manifest.toml", lookout::demo::DEFAULT_MODEL))
}

/// The `lookout` binary of the same build as this test or tool (scripts/test.sh builds it
/// first): tests run from `target/<profile>/deps/`, tools from `target/<profile>/`.
pub fn lookout_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("target dir");
    let bin = [dir.join("lookout"), dir.join("../lookout")].into_iter().find(|p| p.is_file());
    bin.unwrap_or_else(|| {
        panic!(
            "no lookout binary beside {}: build it first (`cargo build -p lookout`, done by scripts/test.sh)",
            exe.display()
        )
    })
}

/// Keeps a loopback port from being handed to anyone else (tests run in parallel and
/// pick free ports) while no broker listens on it. An agent connecting meanwhile gets no
/// MQTT answer, as from a dead broker. Drop it just before starting the broker there.
pub struct PortHold {
    _listener: std::net::TcpListener,
    pub port: u16,
}

impl PortHold {
    /// A fresh free port, held.
    pub fn new() -> anyhow::Result<Self> {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = l.local_addr()?.port();
        Ok(Self { _listener: l, port })
    }

    /// Holds `port` again (after a broker there stopped), retrying briefly while the
    /// stopped broker's socket goes away.
    pub fn again(port: u16) -> anyhow::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => return Ok(Self { _listener: l, port }),
                Err(e) if Instant::now() > deadline => bail!("cannot hold port {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Lets go of the port for a broker to take.
    pub fn release(self) -> u16 {
        self.port
    }
}

/// A camera in a generated config.
pub struct Cam<'a> {
    pub id: &'a str,
    pub url: String,
    pub fps: f64,
    pub min_score: f64,
}

/// Writes a config for `cams` against `broker_url` into `dir` and returns its path.
pub fn write_config(dir: &Path, broker_url: &str, cams: &[Cam<'_>]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut s = format!(
        "[agent]\nsite = \"test-site\"\nid = \"gw-test\"\nstate_dir = \"{}\"\n\n[mqtt]\nurl = \"{broker_url}\"\n\n\
         [inference]\nthreads = 1\n\n[telemetry]\nlisten = \"off\"\n\n[[models]]\nname = \"person\"\nmanifest = \"{}\"\n",
        dir.join("state").display(),
        person_manifest().display()
    );
    for c in cams {
        s.push_str(&format!(
            "\n[[cameras]]\nid = \"{}\"\nurl = \"{}\"\nmodel = \"person\"\nfps = {}\nmin_score = {}\nreconnect_max_secs = 2\n",
            c.id, c.url, c.fps, c.min_score
        ));
    }
    let path = dir.join("lookout.toml");
    std::fs::write(&path, s)?;
    Ok(path)
}

/// Adds `line` (`key = value`) to camera `id`'s section of the config at `path`.
pub fn add_camera_key(path: &Path, id: &str, line: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let header = format!("\n[[cameras]]\nid = \"{id}\"\n");
    anyhow::ensure!(text.matches(&header).count() == 1, "no single camera {id} in {}", path.display());
    std::fs::write(path, text.replace(&header, &format!("{header}{line}\n")))?;
    Ok(())
}

/// A fresh scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lookout-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// The agent as a child process; killed when dropped unless stopped.
pub struct AgentProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProcess {
    pub fn start(config: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(config, &[])
    }

    /// With extra environment variables (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let log = config.with_extension("log");
        let err = std::fs::File::create(&log)?;
        let child = Command::new(lookout_bin())
            .args(["run", "--summary", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .context("starting lookout")?;
        Ok(Self { child: Some(child), log })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGHUP (reload the config file).
    pub fn hup(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("not running")?;
        let ok = Command::new("kill").args(["-HUP", &pid.to_string()]).status()?.success();
        if !ok {
            bail!("kill -HUP {pid} failed");
        }
        Ok(())
    }

    /// The agent's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for exit; returns the exit status and stdout.
    pub fn stop(mut self) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let mut child = self.child.take().context("already stopped")?;
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    use std::io::Read;
                    o.read_to_string(&mut out)?;
                }
                return Ok((status, out));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("lookout did not exit within 30 s of SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    /// The payload as JSON (`Null` for binary payloads: snapshots).
    pub json: Value,
    pub payload: Vec<u8>,
    pub at: Instant,
    /// Delivered as a retained message (on subscribe).
    pub retain: bool,
}

/// Subscribes to a topic filter and records everything that arrives. Every message is
/// checked against the published contract as it arrives ([`Schemas`]): JSON messages
/// against their JSON Schema, snapshots for being JPEG. A test whose recorder saw a
/// violation fails when the recorder is dropped.
pub struct Recorder {
    pub messages: Arc<Mutex<Vec<Received>>>,
    violations: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The JSON Schemas of `docs/schemas`, by the `schema` value they describe
/// (`lookout.event/1` is `docs/schemas/lookout.event.1.json`).
pub struct Schemas {
    validators: Vec<(String, jsonschema::Validator)>,
}

impl Schemas {
    pub fn load() -> anyhow::Result<Self> {
        let dir = workspace().join("docs/schemas");
        let mut validators = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            // "lookout.event.1" → "lookout.event/1"
            let Some((name, major)) = stem.rsplit_once('.') else { continue };
            let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
                .with_context(|| format!("parsing {}", path.display()))?;
            let v = jsonschema::validator_for(&schema).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            validators.push((format!("{name}/{major}"), v));
        }
        if validators.is_empty() {
            bail!("no schemas in {}", dir.display());
        }
        Ok(Self { validators })
    }

    /// Why `payload` on `topic` breaks the contract, if it does.
    pub fn check(&self, topic: &str, payload: &[u8]) -> Option<String> {
        // An empty retained message clears a removed camera's status (EVENTS.md).
        if payload.is_empty() && topic.contains("/cameras/") && topic.ends_with("/status") {
            return None;
        }
        // Commands go to agents (a recorder on `#` sees an operator's too): not messages.
        if topic.contains("/commands/") {
            return None;
        }
        if topic.contains("/snapshots/") {
            let jpeg = payload.starts_with(&[0xFF, 0xD8]) && payload.ends_with(&[0xFF, 0xD9]);
            return (!jpeg).then(|| format!("{topic}: snapshot is not a JPEG ({} bytes)", payload.len()));
        }
        let json: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return Some(format!("{topic}: not JSON: {e}")),
        };
        let Some(name) = json["schema"].as_str() else { return Some(format!("{topic}: no `schema` field: {json}")) };
        let Some((_, v)) = self.validators.iter().find(|(n, _)| n == name) else {
            return Some(format!("{topic}: no JSON Schema for {name:?} in docs/schemas"));
        };
        let errors: Vec<String> = v.iter_errors(&json).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        (!errors.is_empty()).then(|| format!("{topic}: {name} violated: {}\n  in {json}", errors.join("; ")))
    }
}

impl Recorder {
    pub async fn start(port: u16, filter: &str) -> anyhow::Result<Self> {
        Self::start_with(port, &[filter], None).await
    }

    /// Subscribes to `filters`. With a `persistent_id`, the session (subscriptions and
    /// queued QoS 1 messages) survives disconnects and graceful broker restarts, so the
    /// recorder misses nothing the agent delivers while it reconnects.
    pub async fn start_with(port: u16, filters: &[&str], persistent_id: Option<&str>) -> anyhow::Result<Self> {
        let id = persistent_id.map_or_else(|| format!("e2e-recorder-{}", free_port().unwrap_or(0)), str::to_string);
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_clean_session(persistent_id.is_none());
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).await?;
        }
        let messages = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let schemas = Schemas::load()?;
        let (suback_tx, suback_rx) = tokio::sync::oneshot::channel();
        let store = messages.clone();
        let bad = violations.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            let mut suback = Some(suback_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = suback.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if let Some(v) = schemas.check(&p.topic, &p.payload) {
                            bad.lock().expect("violations lock").push(v);
                        }
                        store.lock().expect("recorder lock").push(Received {
                            topic: p.topic,
                            json,
                            payload: p.payload.to_vec(),
                            at: Instant::now(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    // Broker gone: rumqttc reconnects on the next poll.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), suback_rx).await.context("no SUBACK within 10 s")??;
        Ok(Self { messages, violations, task })
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.messages.lock().expect("recorder lock").clone()
    }

    /// Messages from `camera` (by the `camera` field).
    pub fn from_camera(&self, camera: &str) -> Vec<Received> {
        self.snapshot().into_iter().filter(|m| m.json["camera"] == camera).collect()
    }

    /// Waits until `cond` holds over the messages, or fails after `timeout` with `what`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[Received]) -> bool,
    ) -> anyhow::Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            let snap = self.snapshot();
            if cond(&snap) {
                return Ok(snap);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}; {} messages so far", snap.len());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Recorder {
    /// Contract violations seen so far.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().expect("violations lock").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
        let v = self.violations();
        if !v.is_empty() && !std::thread::panicking() {
            panic!("{} received message(s) break the documented schema:\n{}", v.len(), v.join("\n"));
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// An HTTP response as read by [`http_request`].
#[derive(Debug)]
pub struct HttpResponse {
    pub code: u16,
    /// The header lines, as sent.
    pub headers: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON (HTTP {}): {}", self.code, self.text()))
    }

    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A plain HTTP/1.0 request on loopback with extra headers; the body as bytes.
pub fn http_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<HttpResponse> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status line")?;
    let headers = head.split_once("\r\n").map(|(_, h)| h.to_string()).unwrap_or_default();
    Ok(HttpResponse { code, headers, body: raw[split + 4..].to_vec() })
}

/// Intersection over union of two `{x,y,w,h}` JSON boxes.
pub fn iou(a: &Value, b: &Value) -> f64 {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let (ax1, ay1, ax2, ay2) = (f(a, "x"), f(a, "y"), f(a, "x") + f(a, "w"), f(a, "y") + f(a, "h"));
    let (bx1, by1, bx2, by2) = (f(b, "x"), f(b, "y"), f(b, "x") + f(b, "w"), f(b, "y") + f(b, "h"));
    let iw = (ax2.min(bx2) - ax1.max(bx1)).max(0.0);
    let ih = (ay2.min(by2) - ay1.max(by1)).max(0.0);
    let inter = iw * ih;
    inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)
}

/// An RTSP server in a child process (`rtsp-serve`), so a test can kill it.
pub struct RtspProcess {
    child: Child,
    pub port: u16,
}

impl RtspProcess {
    /// `mounts` as `/path=h264` or `/path=h265` (the clip) or `/path=still:<image>`.
    pub fn start(bin: &Path, port: u16, mounts: &[&str]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("--port").arg(port.to_string());
        for m in mounts {
            cmd.arg("--mount").arg(m);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        // It prints "ready" once listening.
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            use std::io::BufRead;
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        if !line.starts_with("ready") {
            let _ = child.kill();
            bail!("rtsp-serve did not start: {line:?}");
        }
        Ok(Self { child, port })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}{mount}", self.port)
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtspProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `lookout` with `args` (e.g. `model sign`); fails with its stderr when it fails.
pub fn lookout(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(lookout_bin()).args(args).output().context("running lookout")?;
    if !out.status.success() {
        bail!("lookout {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A real HTTP server (Python's `http.server`) serving `dir` on loopback; stops when dropped.
pub struct HttpServer {
    child: Child,
    pub port: u16,
}

impl HttpServer {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server")?;
        Self::wait(child, port)
    }

    fn wait(child: Child, port: u16) -> anyhow::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("http.server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, port })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An operator sending commands over MQTT and waiting for their replies.
pub struct Operator {
    client: AsyncClient,
    root: String,
    replies: Recorder,
    pump: tokio::task::JoinHandle<()>,
}

impl Operator {
    /// `root` is `lookout/v1/{site}/{agent}`.
    pub async fn connect(port: u16, root: &str) -> anyhow::Result<Self> {
        let replies = Recorder::start(port, &format!("{root}/replies/#")).await?;
        let mut opts = MqttOptions::new(format!("e2e-operator-{}", std::process::id()), "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        Ok(Self { client, root: root.to_string(), replies, pump })
    }

    /// Sends `name` with `payload` without waiting for a reply.
    pub async fn send(&self, name: &str, payload: Value) -> anyhow::Result<()> {
        let topic = format!("{}/commands/{name}", self.root);
        self.client.publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&payload)?).await?;
        Ok(())
    }

    /// Sends `name` with `payload` (which must carry `request_id`) and waits for its reply.
    pub async fn call(&self, name: &str, payload: Value, timeout: Duration) -> anyhow::Result<Value> {
        let id = payload["request_id"].as_str().context("payload without request_id")?.to_string();
        let topic = format!("{}/commands/{name}", self.root);
        self.client.publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&payload)?).await?;
        let want = format!("{}/replies/{id}", self.root);
        let got = self
            .replies
            .wait_for(timeout, &format!("reply to {name} {id}"), |m| m.iter().any(|r| r.topic == want))
            .await?;
        got.into_iter().find(|r| r.topic == want).map(|r| r.json).context("reply vanished")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl.
pub fn make_pki(dir: &Path, name: &str) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ca = format!("{name}-ca");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={ca}"),
        "-keyout",
        &format!("{ca}.key"),
        "-out",
        &format!("{ca}.pem"),
    ]);
    for (who, cn) in [("server", "127.0.0.1"), ("client", "lookout-agent")] {
        let base = format!("{name}-{who}");
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{base}.key"),
            "-out",
            &format!("{base}.csr"),
        ]);
        std::fs::write(dir.join(format!("{base}.ext")), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("ext");
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{base}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{base}.ext"),
            "-out",
            &format!("{base}.pem"),
        ]);
    }
}

/// A real HTTPS server (Python's `http.server` wrapped in TLS) serving `dir` with
/// `cert`/`key`; stops when dropped.
pub fn https_server(dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<HttpServer> {
    let port = free_port()?;
    let script = "import functools, http.server, ssl, sys\n\
        d, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]\n\
        h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=d)\n\
        s = http.server.ThreadingHTTPServer(('127.0.0.1', port), h)\n\
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain(cert, key)\n\
        s.socket = c.wrap_socket(s.socket, server_side=True)\n\
        s.serve_forever()\n";
    let child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .arg(port.to_string())
        .arg(cert)
        .arg(key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting an HTTPS server with python3")?;
    HttpServer::wait(child, port)
}
