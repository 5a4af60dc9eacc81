//! The installers' console through the real agent, model, RTSP server and broker:
//! its JSON API, its access rules, and the pages in headless Chromium.
//!
//! Cameras: `scene` (the scripted scene: people walk through from 3 s to 34 s after the
//! agent connects; a zone and a counting line) and `clip` (the bundled pedestrian clip).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lookout_e2e::browser::Browser;
use lookout_e2e::*;
use serde_json::Value;

const SCENE_RULES: &str = r#"count_interval = 5
[[cameras.zones]]
name = "bench"
polygon = [[0.55, 0.7], [0.75, 0.7], [0.75, 1.0], [0.55, 1.0]]
[[cameras.lines]]
name = "gate"
points = [[0.5, 0.0], [0.5, 1.0]]
directions = ["east", "west"]
"#;

/// The agent with `scene` (+ rules) and `clip` cameras, its telemetry on `listen`.
struct Setup {
    _server: RtspServer,
    _broker: Mosquitto,
    agent: AgentProcess,
    port: u16,
}

fn start(name: &str, telemetry: &str) -> Setup {
    let server = RtspServer::start(
        0,
        vec![
            ("/scene".into(), scene_media(&standard_scene()).expect("scene media")),
            (
                "/clip".into(),
                Media::Clip {
                    codec: Codec::H264,
                    units: clip(Codec::H264).expect("clip").into(),
                    fps: 10,
                    loop_from: 0,
                },
            ),
        ],
    )
    .expect("rtsp server");
    let broker = Mosquitto::start().expect("mosquitto");
    let dir = scratch(name);
    let cams = [
        Cam { id: "clip", url: server.url("/clip"), fps: 5.0, min_score: 0.5 },
        Cam { id: "scene", url: server.url("/scene"), fps: 5.0, min_score: 0.5 },
    ];
    let config = write_config(&dir, &broker.url(), &cams).expect("config");
    let port = free_port().expect("port");
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "[telemetry]\nlisten = \"off\"\n",
        &format!("[telemetry]\nlisten = \"127.0.0.1:{port}\"\n{telemetry}"),
    );
    std::fs::write(&config, text + SCENE_RULES).expect("config");
    let agent = AgentProcess::start(&config).expect("agent");
    Setup { _server: server, _broker: broker, agent, port }
}

fn get(port: u16, path: &str) -> HttpResponse {
    http_request(port, "GET", path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn get_json(port: u16, path: &str) -> Value {
    let r = get(port, path);
    assert_eq!(r.code, 200, "GET {path}: {}", r.text());
    r.json().unwrap_or_else(|e| panic!("{e}"))
}

fn metric(port: u16, series: &str) -> f64 {
    let m = get(port, "/metrics").text();
    m.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{m}"))
}

/// Polls `f` every 200 ms until it gives a value or `secs` pass.
fn wait<T>(secs: u64, what: &str, log: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn camera<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["cameras"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == id))
        .unwrap_or_else(|| panic!("no {id} in {list}"))
}

#[test]
fn console_api_shows_watched_cameras_frames_with_tracked_people_and_encodes_nothing_unwatched() {
    let s = start("console-api", "");
    let port = s.port;
    let log = || s.agent.log();
    // Both cameras stream and frames are analysed while nobody looks: nothing is encoded.
    wait(60, "both cameras streaming", log, || {
        let list = http_request(port, "GET", "/api/cameras", &[]).ok()?.json().ok()?;
        (camera(&list, "clip")["state"] == "streaming" && camera(&list, "scene")["state"] == "streaming").then_some(())
    });
    wait(30, "analysed frames of clip", log, || {
        (metric(port, "lookout_frames_analysed_total{camera=\"clip\"}") >= 5.0).then_some(())
    });
    assert_eq!(metric(port, "lookout_console_frames_encoded_total"), 0.0, "nobody looked, yet frames were encoded");
    let list = get_json(port, "/api/cameras");
    assert_eq!(list["total"], 2);
    assert_eq!(list["cameras"][0]["id"], "clip", "sorted by id");
    let scene = camera(&list, "scene");
    assert_eq!(scene["watched"], false);
    assert_eq!(scene["model"]["name"], "ssdlite-mobilenetv2-person", "as the messages name it: {scene}");
    assert_eq!(scene["zones"][0]["name"], "bench");
    assert_eq!(scene["lines"][0]["points"], serde_json::json!([[0.5, 0.0], [0.5, 1.0]]));
    assert_eq!((scene["width"].as_u64(), scene["height"].as_u64()), (Some(640), Some(480)), "{scene}");
    assert_eq!(get_json(port, "/api/cameras?offset=1&limit=1")["cameras"][0]["id"], "scene", "paging");

    // Watching: the scene's frame comes with a tracked person once people walk in.
    let frame = wait(60, "a frame of scene with a tracked person", log, || {
        let f = get_json(port, "/api/cameras/scene/frame")["frame"].clone();
        let tracked = f["boxes"].as_array()?.iter().any(|b| b["class"] == "person" && b["track_id"].is_u64());
        tracked.then_some(f)
    });
    assert!(camera(&get_json(port, "/api/cameras"), "scene")["watched"] == true);
    let jpeg_url = frame["jpeg"].as_str().expect("jpeg url");
    let r = get(port, jpeg_url);
    assert_eq!(r.code, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(r.header("x-frame-seq"), frame["seq"].as_u64().map(|s| s.to_string()).as_deref());
    let img = image::load_from_memory(&r.body).expect("the frame decodes as an image");
    assert_eq!((img.width(), img.height()), (640, 480), "the camera's own frame size");
    assert!(metric(port, "lookout_console_frames_encoded_total") >= 1.0);
    // A frame asked for twice is encoded at most once (only the scene is watched, only here). At
    // 5 fps the two frames held turn over in 0.4 s: on a busy machine, try again.
    let mut once = false;
    for _ in 0..20 {
        let f = get_json(port, "/api/cameras/scene/frame")["frame"].clone();
        let Some(url) = f["jpeg"].as_str() else { continue };
        let before = metric(port, "lookout_console_frames_encoded_total");
        let (a, b) = (get(port, url), get(port, url));
        let after = metric(port, "lookout_console_frames_encoded_total");
        if a.code == 200 && b.code == 200 {
            assert!(a.body == b.body, "the same frame should be the same JPEG");
            // 0 when this frame was already encoded for an earlier request: try a newer one.
            assert!(after - before <= 1.0, "one frame, {} encodings", after - before);
            if after - before == 1.0 {
                once = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(once, "could not fetch a new frame twice in 20 tries");
    // clip was never looked at.
    assert_eq!(camera(&get_json(port, "/api/cameras"), "clip")["watched"], false);

    // Events with their snapshots, and counts per interval with the line and the zone.
    let snap = wait(60, "an object.new event with a snapshot", log, || {
        let evs = get_json(port, "/api/cameras/scene/events");
        evs.as_array()?.iter().find(|e| e["type"] == "object.new" && e["snapshot"]["id"].is_string()).cloned()
    });
    let r = get(port, &format!("/api/cameras/scene/snapshots/{}", snap["snapshot"]["id"].as_str().unwrap_or("")));
    assert_eq!(r.code, 200);
    image::load_from_memory(&r.body).expect("the snapshot decodes");
    let counts = wait(30, "counts of scene", log, || {
        let c = get_json(port, "/api/cameras/scene/counts");
        (!c.as_array()?.is_empty()).then_some(c)
    });
    assert_eq!(counts[0]["schema"], "lookout.counts/1");
    assert!(
        counts[0]["lines"]["gate"]["east"].is_u64() && counts[0]["zones"]["bench"]["occupancy"].is_u64(),
        "{counts}"
    );

    // The agent page's data.
    let st = get_json(port, "/api/status");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["models"][0]["sha256"].as_str().map(str::len), Some(64), "{st}");
    assert_eq!(st["cameras"]["total"], 2);
    assert!(st["mqtt"]["connected"].is_boolean() && st["outbox"]["pending_messages"].is_u64(), "{st}");

    // Unknowns are JSON 404s; pages and assets are served.
    let r = get(port, "/api/cameras/nope/frame");
    assert_eq!(r.code, 404);
    assert!(r.json().expect("json")["error"].as_str().is_some_and(|e| e.contains("nope")));
    assert_eq!(get(port, "/api/cameras/scene/snapshots/nope").code, 404);
    for page in ["/", "/camera/scene", "/agent", "/console/app.js", "/console/app.css"] {
        assert_eq!(get(port, page).code, 200, "{page}");
    }
    let (status, _) = s.agent.stop().expect("stop");
    assert!(status.success());
}

/// An agent listening on every address, with a camera that refuses connections (the
/// console does not need pictures to be guarded).
fn start_exposed(name: &str, token: Option<&str>) -> (AgentProcess, u16) {
    start_listening(name, "0.0.0.0", token)
}

/// The same agent with its telemetry listener on `ip`.
fn start_listening(name: &str, ip: &str, token: Option<&str>) -> (AgentProcess, u16) {
    let dir = scratch(name);
    // Held until the test process ends: the camera must keep failing.
    let closed = ClosedPort::bind().expect("port");
    let dead = format!("rtsp://127.0.0.1:{}/none", closed.port);
    std::mem::forget(closed);
    let config = write_config(&dir, "mqtt://127.0.0.1:1", &[Cam { id: "cam", url: dead, fps: 1.0, min_score: 0.5 }])
        .expect("config");
    let port = free_port().expect("port");
    let token = token.map(|t| format!("console_token = \"{t}\"\n")).unwrap_or_default();
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("listen = \"off\"\n", &format!("listen = \"{ip}:{port}\"\n{token}"));
    std::fs::write(&config, text).expect("config");
    let agent = AgentProcess::start(&config).expect("agent");
    wait(30, "the telemetry listener", || agent.log(), || http_request(port, "GET", "/healthz", &[]).ok().map(drop));
    (agent, port)
}

#[test]
fn console_beyond_loopback_needs_its_token_and_without_one_is_refused() {
    const TOKEN: &str = "0123456789abcdef0123";
    let (agent, port) = start_exposed("console-token", Some(TOKEN));
    let req = |path: &str, headers: &[(&str, &str)]| http_request(port, "GET", path, headers).expect("request");
    assert_eq!(req("/api/cameras", &[]).code, 401);
    assert_eq!(req("/api/cameras", &[("Authorization", "Bearer wrong-token-0123456789")]).code, 401);
    assert_eq!(req("/", &[]).code, 401);
    let ok = req("/api/cameras", &[("Authorization", &format!("Bearer {TOKEN}"))]);
    assert_eq!(ok.code, 200);
    assert_eq!(ok.json().expect("json")["cameras"][0]["id"], "cam");
    // Opening a page with ?token= sets the cookie its images and API calls then carry.
    let page = req(&format!("/?token={TOKEN}"), &[]);
    assert_eq!(page.code, 200);
    let cookie = page.header("set-cookie").expect("a cookie").split(';').next().unwrap_or("").to_string();
    assert!(page.header("set-cookie").is_some_and(|c| c.contains("HttpOnly")));
    assert_eq!(req("/api/status", &[("Cookie", &cookie)]).code, 200);
    // Monitoring keeps working without the token.
    assert_eq!(req("/metrics", &[]).code, 200);
    drop(agent);

    let (agent, port) = start_exposed("console-refused", None);
    let r = http_request(port, "GET", "/api/cameras", &[]).expect("request");
    assert_eq!(r.code, 403);
    assert!(r.text().contains("console_token"), "{}", r.text());
    assert_eq!(http_request(port, "GET", "/metrics", &[]).expect("metrics").code, 200);
    assert!(agent.log().contains("console refused"), "{}", agent.log());
}

/// Sends `request` as is and reads until the agent closes: the whole answer.
fn raw(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn has_header(answer: &str, name: &str, value_part: &str) -> bool {
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .any(|l| l.split_once(':').is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case(name) && v.contains(value_part)))
}

#[test]
fn console_on_loopback_refuses_other_host_names_dns_rebinding_and_sends_security_headers() {
    let (agent, port) = start_listening("console-rebinding", "127.0.0.1", None);
    let get = |path: &str, host: &str| {
        raw(port, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
    };
    // A page on evil.example re-pointed at 127.0.0.1 (through an installer's SSH tunnel):
    // refused, with nothing of the cameras in the answer.
    for path in
        ["/", "/api/cameras", "/api/cameras/cam", "/api/cameras/cam/frame", "/api/cameras/cam/frame.jpg", "/api/status"]
    {
        for host in ["evil.example", &format!("evil.example:{port}"), "localhost.evil.example", "127.0.0.1.nip.io"] {
            let a = get(path, host);
            assert_eq!(status_of(&a), 421, "GET {path} Host {host}: {a}");
            assert!(!a.contains("\"cam\"") && !a.contains("image/jpeg") && !a.contains("\"cameras\""), "{a}");
            assert!(has_header(&a, "content-security-policy", "frame-ancestors 'none'"), "{a}");
        }
    }
    // The absolute form names the host in the request line.
    let a = raw(port, "GET http://evil.example/api/cameras HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&a), 421, "{a}");
    // No Host at all is not a browser: refused too.
    assert_eq!(status_of(&raw(port, "GET /api/cameras HTTP/1.0\r\n\r\n")), 421);
    // The names an installer uses, with any port (a tunnel's local port differs).
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "localhost:8080".into(), "[::1]:9464".into()]
    {
        let a = get("/api/cameras", &host);
        assert_eq!(status_of(&a), 200, "Host {host}: {a}");
        assert!(a.contains("\"cam\""), "{a}");
    }
    // Every console answer keeps itself out of frames and other sites.
    for path in ["/", "/camera/cam", "/console/app.js", "/api/cameras", "/api/cameras/nope"] {
        let a = get(path, &format!("127.0.0.1:{port}"));
        for (name, value) in [
            ("content-security-policy", "frame-ancestors 'none'"),
            ("content-security-policy", "default-src 'none'"),
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ] {
            assert!(has_header(&a, name, value), "GET {path}: no {name}: {value} in\n{a}");
        }
    }
    // Monitoring is not the console: scrapers may use any name.
    assert_eq!(status_of(&get("/metrics", "evil.example")), 200);
    assert_eq!(status_of(&get("/healthz", "evil.example")), 200);
    drop(agent);
}

#[test]
fn console_token_in_the_query_counts_on_the_root_page_only() {
    const TOKEN: &str = "0123456789abcdef0123";
    let (agent, port) = start_exposed("console-query-token", Some(TOKEN));
    let req = |path: &str| http_request(port, "GET", path, &[]).expect("request");
    for path in ["/api/cameras", "/api/status", "/api/cameras/cam/frame.jpg", "/camera/cam", "/console/app.js"] {
        let r = req(&format!("{path}?token={TOKEN}"));
        assert_eq!(r.code, 401, "{path}?token=: {}", r.text());
        assert!(r.header("set-cookie").is_none(), "{path}");
    }
    let page = req(&format!("/?token={TOKEN}"));
    assert_eq!(page.code, 200);
    assert!(page.header("set-cookie").is_some());
    // In a browser: the page works on its cookie (under its CSP) and drops the token from
    // the address bar.
    let browser = Browser::start().expect("headless chromium");
    browser.goto(&format!("http://127.0.0.1:{port}/?token={TOKEN}&page=0")).expect("open the console");
    let seen = wait_browser(30, || {
        let v = browser.eval("return [location.href, document.querySelectorAll('.tile').length]").ok()?;
        (v[1].as_u64() == Some(1)).then_some(()).filter(|_| !v[0].as_str().unwrap_or("token").contains("token"))
    });
    let now = browser.eval("return [location.href, document.body.innerText]").unwrap_or_default();
    assert!(seen.is_some(), "the grid should show the camera and the address no token: {now}");
    assert!(now[0].as_str().is_some_and(|u| u.ends_with("/?page=0")), "{now}");
    drop(agent);
}

#[test]
fn telemetry_listener_caps_connections_and_closes_half_sent_headers() {
    use std::io::{Read, Write};
    let (agent, port) = start_listening("listener-limits", "127.0.0.1", None);
    // 128 clients (the cap) that each send half a header and then nothing.
    let held: Vec<std::net::TcpStream> = (0..128)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let a = raw(port, "");
    assert!(a.starts_with("HTTP/1.1 503"), "the 129th connection: {a:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "refused after {:?}", t.elapsed());
    // The agent closes each half header after its 10 s header-read timeout.
    for mut s in held {
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut buf = Vec::new();
        let closed = match s.read_to_end(&mut buf) {
            Ok(_) => true,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        };
        assert!(closed, "a half-sent header was kept open");
    }
    assert!(t.elapsed() < Duration::from_secs(15), "half headers held for {:?}", t.elapsed());
    let m = wait(
        10,
        "the listener serving again",
        || agent.log(),
        || {
            let r = http_request(port, "GET", "/metrics", &[]).ok()?;
            (r.code == 200).then(|| r.text())
        },
    );
    assert!(m.contains("lookout_http_connections_refused_total 1\n"), "{m}");
    drop(agent);
}

/// `target/test-artifacts/`, beside the build this test belongs to.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    // target/<profile>/deps/<test> → target/
    let target = exe.ancestors().nth(3).map(PathBuf::from).unwrap_or_else(|| workspace().join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

#[test]
fn console_in_headless_chromium_shows_both_cameras_with_pictures_and_states() {
    let s = start("console-browser", "");
    let port = s.port;
    let log = || s.agent.log();
    wait(60, "both cameras streaming", log, || {
        let list = http_request(port, "GET", "/api/cameras", &[]).ok()?.json().ok()?;
        (camera(&list, "clip")["state"] == "streaming" && camera(&list, "scene")["state"] == "streaming").then_some(())
    });
    let browser = Browser::start().expect("headless chromium");
    browser.goto(&format!("http://127.0.0.1:{port}/")).expect("open the console");
    // Per tile: the camera, whether its picture loaded (natural size), its state, and how
    // many boxes its last frame had.
    let tiles = r#"return [...document.querySelectorAll('.tile')].map(t => {
        const img = t.querySelector('img.frame');
        return { camera: t.dataset.camera, width: img.naturalWidth, complete: img.complete,
                 state: (t.querySelector('.state') || {}).textContent || '', boxes: Number(img.dataset.boxes || 0),
                 fps: (t.querySelector('.fps') || {}).textContent || '' };
    });"#;
    let mut last = Value::Null;
    let got = wait_browser(60, || {
        last = browser.eval(tiles).ok()?;
        let t = last.as_array()?;
        let ok = |id: &str| {
            t.iter().any(|x| {
                x["camera"] == id && x["complete"] == true && x["width"].as_u64() > Some(0) && x["state"] == "streaming"
            })
        };
        (t.len() == 2 && ok("clip") && ok("scene")).then_some(())
    });
    assert!(got.is_some(), "both tiles should show a picture and a state; tiles: {last}\n{}", log());
    // People are in view: a tile draws their boxes (a nicer screenshot too), and every
    // tile shows the frames coming in. The clip always has people; the scripted scene only
    // in its first 45 s, which a slow start can miss, so either counts.
    let boxes = wait_browser(40, || {
        last = browser.eval(tiles).ok()?;
        let t = last.as_array()?;
        let receiving =
            t.iter().all(|x| x["fps"].as_str().is_some_and(|f| f.starts_with("in ") && !f.starts_with("in 0.0")));
        (receiving && t.iter().any(|x| x["boxes"].as_u64() > Some(0))).then_some(())
    });
    assert!(boxes.is_some(), "a tile should get boxes and both tiles an input rate; tiles: {last}");
    std::thread::sleep(Duration::from_millis(500));
    let png = browser.screenshot().expect("screenshot");
    let img = image::load_from_memory(&png).expect("the screenshot is a PNG");
    assert!(img.width() >= 800, "{}x{}", img.width(), img.height());
    let path = artifacts().join("console.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    eprintln!("console screenshot: {}", path.display());
    assert!(metric(port, "lookout_console_frames_encoded_total") >= 2.0);

    // The camera page: a live picture, the events with their snapshots, the counts chart.
    browser.goto(&format!("http://127.0.0.1:{port}/camera/scene")).expect("open the camera page");
    let page = r#"const img = document.querySelector('.camera img.frame');
        return { width: img ? img.naturalWidth : 0, events: document.querySelectorAll('.event').length,
                 snapshots: [...document.querySelectorAll('.event img')].filter(i => i.naturalWidth > 0).length,
                 chart: document.querySelectorAll('.chart polyline').length };"#;
    let camera_page = wait_browser(40, || {
        last = browser.eval(page).ok()?;
        (last["width"].as_u64() > Some(0) && last["snapshots"].as_u64() > Some(0) && last["chart"].as_u64() > Some(0))
            .then_some(())
    });
    assert!(
        camera_page.is_some(),
        "the camera page should show its picture, events with snapshots and a chart: {last}"
    );
    std::fs::write(artifacts().join("console-camera.png"), browser.screenshot().expect("screenshot")).expect("save");

    // The agent page names the model with its sha256.
    browser.goto(&format!("http://127.0.0.1:{port}/agent")).expect("open the agent page");
    let sha = get_json(port, "/api/status")["models"][0]["sha256"].as_str().unwrap_or("?").to_string();
    let agent_page = wait_browser(20, || {
        let text = browser.eval("return document.body.innerText").ok()?;
        text.as_str()?.contains(&sha).then_some(())
    });
    assert!(agent_page.is_some(), "the agent page should list the model's sha256 {sha}");
}

fn wait_browser(secs: u64, mut f: impl FnMut() -> Option<()>) -> Option<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().is_some() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    None
}

/// The editor's scene, 640×480 at 10 fps, 58 s (times from the agent's connection):
/// - Messi stands at x 0.15 (bottom at y 0.5) from 1 s to 54 s: one track throughout;
/// - Grace A walks east along y 0.92 from x 0.4 (22 s) to 0.9 (30 s): x 0.5 at 23.6 s,
///   inside x 0.6–0.8 from 25.2 s to 28.4 s;
/// - Grace B walks west along y 0.92 from x 0.92 (42 s) to 0.58 (48 s): x 0.7 at 45.9 s,
///   never as far as x 0.5.
fn editor_scene() -> Scene {
    Scene {
        width: 640,
        height: 480,
        fps: 10,
        duration: 58.0,
        actors: vec![
            Actor { sprite: Sprite::Messi, height: 0.38, path: vec![(1.0, 0.15, 0.5), (54.0, 0.15, 0.5)] },
            Actor { sprite: Sprite::Grace, height: 0.38, path: vec![(22.0, 0.4, 0.92), (30.0, 0.9, 0.92)] },
            Actor { sprite: Sprite::Grace, height: 0.38, path: vec![(42.0, 0.92, 0.92), (48.0, 0.58, 0.92)] },
        ],
    }
}

const TOKEN: &str = "editor-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

/// A PUT with a JSON body and extra headers; the whole answer.
fn put(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    raw(
        port,
        &format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{extra}\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn events_of<'a>(msgs: &'a [Received], ty: &str) -> Vec<&'a Value> {
    msgs.iter().filter(|m| m.json["schema"] == "lookout.event/1" && m.json["type"] == ty).map(|m| &m.json).collect()
}

/// Bottom-centre x of an event's object.
fn foot_x(e: &Value) -> f64 {
    let b = &e["object"]["bbox"];
    b["x"].as_f64().unwrap_or(f64::NAN) + b["w"].as_f64().unwrap_or(f64::NAN) / 2.0
}

#[test]
fn zones_and_lines_drawn_in_the_browser_apply_live_without_restarting_the_camera() {
    // The browser first, so its start-up does not eat into the scene's quiet start.
    let browser = Browser::start().expect("headless chromium");
    let server =
        RtspServer::start(0, vec![("/walk".into(), scene_media(&editor_scene()).expect("scene media"))]).expect("rtsp");
    let broker = Mosquitto::start().expect("mosquitto");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let rec = rt.block_on(Recorder::start(broker.port(), "lookout/#")).expect("recorder");
    let dir = scratch("console-editor");
    let cams = [Cam { id: "walk", url: server.url("/walk"), fps: 5.0, min_score: 0.5 }];
    let config = write_config(&dir, &broker.url(), &cams).expect("config");
    let port = free_port().expect("port");
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "[telemetry]\nlisten = \"off\"\n",
        &format!(
            "[telemetry]\nlisten = \"127.0.0.1:{port}\"\nconsole_token = \"{TOKEN}\"\nconsole_viewer_token = \"{VIEWER}\"\n"
        ),
    );
    // Periodic object.update shows which tracks go on across a change.
    std::fs::write(&config, text + "update_interval = 1\n").expect("config");
    let agent = AgentProcess::start(&config).expect("agent");
    let log = || agent.log();
    let auth = format!("Bearer {TOKEN}");

    wait(60, "the camera streaming", log, || {
        let c = http_request(port, "GET", "/api/cameras/walk", &[("Authorization", &auth)]).ok()?.json().ok()?;
        (c["state"] == "streaming").then_some(())
    });
    // The token opens the console (cookie), then the camera page, with a picture.
    browser.goto(&format!("http://127.0.0.1:{port}/?token={TOKEN}")).expect("open the console");
    browser.goto(&format!("http://127.0.0.1:{port}/camera/walk")).expect("open the camera page");
    let picture = "return (document.querySelector('.camera img.frame') || {}).naturalWidth || 0";
    let shown = wait_browser(40, || (browser.eval(picture).ok()?.as_u64()? > 0).then_some(()));
    assert!(shown.is_some(), "the camera page should show a picture\n{}", log());

    // Draw: a line across the walking path, a zone on it; name them; save.
    let canvas = ".camera .view canvas";
    browser.click("button.edit").expect("edit");
    browser.click("button.add-line").expect("+ line");
    browser.click_at(canvas, &[(0.5, 0.3), (0.5, 0.99)]).expect("place the line");
    browser.click("button.add-zone").expect("+ zone");
    browser.click_at(canvas, &[(0.6, 0.8), (0.8, 0.8), (0.8, 0.99), (0.6, 0.99)]).expect("place the zone");
    browser.click("button.done").expect("done");
    browser.type_into("[data-shape='lines:0'] input[data-field=name]", "door").expect("name the line");
    browser.type_into("[data-shape='lines:0'] input[data-field=direction0]", "east").expect("direction");
    browser.type_into("[data-shape='lines:0'] input[data-field=direction1]", "west").expect("direction");
    browser.type_into("[data-shape='zones:0'] input[data-field=name]", "seat").expect("name the zone");
    browser.eval("window.scrollTo(0, 0)").expect("scroll");
    std::fs::write(artifacts().join("console-editor.png"), browser.screenshot().expect("screenshot")).expect("save");
    browser.click("button.save").expect("save");
    let status =
        "return [...document.querySelectorAll('.editor-status, .problem')].map(e => e.textContent).join(' | ')";
    let saved = wait_browser(20, || browser.eval(status).ok()?.as_str()?.starts_with("Saved").then_some(()));
    assert!(saved.is_some(), "the editor should report the save: {:?}\n{}", browser.eval(status), log());
    let cam = http_request(port, "GET", "/api/cameras/walk", &[("Authorization", &auth)])
        .expect("camera")
        .json()
        .expect("json");
    assert_eq!(cam["lines"][0]["name"], "door", "{cam}");
    assert_eq!(cam["lines"][0]["directions"], serde_json::json!(["east", "west"]), "{cam}");
    assert_eq!(cam["zones"][0]["name"], "seat", "{cam}");
    let line_x = cam["lines"][0]["points"][0][0].as_f64().unwrap_or(0.0);
    assert!((line_x - 0.5).abs() < 0.02, "the line lies where it was clicked: {cam}");
    assert_eq!(cam["changes"][0]["restarted"], false, "{cam}");
    assert!(cam["changes"][0]["by"].as_str().is_some_and(|b| b.starts_with("console (token)")), "{cam}");

    // A walks east through both: the crossing and the visit match the drawn shapes.
    let msgs = rt
        .block_on(rec.wait_for(Duration::from_secs(60), "A crossing door and leaving seat", |m| {
            !events_of(m, "line.cross").is_empty() && !events_of(m, "zone.exit").is_empty()
        }))
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));
    let cross = events_of(&msgs, "line.cross")[0].clone();
    assert_eq!((&cross["line"]["name"], &cross["line"]["direction"]), (&"door".into(), &"east".into()), "{cross}");
    assert!((foot_x(&cross) - 0.5).abs() < 0.12, "crossed near x 0.5: {cross}");
    let enter = events_of(&msgs, "zone.enter").first().cloned().cloned().expect("zone.enter before zone.exit");
    assert_eq!(enter["zone"]["name"], "seat", "{enter}");
    assert!((0.55..0.7).contains(&foot_x(&enter)), "entered at the zone's left edge (0.6): {enter}");
    assert_eq!(enter["object"]["track_id"], cross["object"]["track_id"], "the same walker");
    // Messi's track: the one standing on the left.
    let standing = events_of(&msgs, "object.update")
        .into_iter()
        .find(|e| foot_x(e) < 0.3)
        .map(|e| e["object"]["track_id"].clone())
        .expect("object.update of the standing person");

    // Move the line to x 0.7 by dragging its ends; save.
    let moved_at = Instant::now();
    browser.click("button.edit").expect("edit again");
    browser.drag(canvas, (0.5, 0.3), (0.7, 0.3)).expect("drag A");
    browser.drag(canvas, (0.5, 0.99), (0.7, 0.99)).expect("drag B");
    browser.click("button.save").expect("save");
    let saved =
        wait_browser(20, || browser.eval(status).ok()?.as_str()?.contains("applied without a restart").then_some(()));
    assert!(saved.is_some(), "the move should apply without a restart: {:?}\n{}", browser.eval(status), log());
    let cam = http_request(port, "GET", "/api/cameras/walk", &[("Authorization", &auth)])
        .expect("camera")
        .json()
        .expect("json");
    let line_x = cam["lines"][0]["points"][0][0].as_f64().unwrap_or(0.0);
    assert!((line_x - 0.7).abs() < 0.02, "the line moved where it was dragged: {cam}");

    // B walks west across x 0.7 only: one crossing, of the moved line; Messi's track
    // went on through the change and the camera never restarted.
    let msgs = rt
        .block_on(
            rec.wait_for(Duration::from_secs(60), "B crossing the moved line", |m| {
                events_of(m, "line.cross").len() >= 2
            }),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));
    let crosses = events_of(&msgs, "line.cross");
    let second = crosses[1];
    assert_eq!(second["line"]["direction"], "west", "{second}");
    assert!((foot_x(second) - 0.7).abs() < 0.12, "crossed near x 0.7, where the line is now: {second}");
    let after: Vec<&Received> = msgs.iter().filter(|m| m.at > moved_at).collect();
    assert!(
        after.iter().any(|m| m.json["type"] == "object.update" && m.json["object"]["track_id"] == standing),
        "the standing person's track {standing} goes on after the change"
    );
    assert!(
        !msgs.iter().any(|m| m.json["type"] == "object.end" && m.json["object"]["track_id"] == standing),
        "the standing person's track never ended"
    );
    let restarts: Vec<&Value> = after
        .iter()
        .filter(|m| m.json["schema"] == "lookout.camera_status/1" && m.json["state"] != "streaming")
        .map(|m| &m.json)
        .collect();
    assert!(restarts.is_empty(), "no camera status other than streaming after the change: {restarts:?}");
    assert!(!log().contains("camera stopped and removed"), "the pipeline was not restarted\n{}", log());

    // Without the token: refused; with it but without the page's session token: refused;
    // with both, an invalid shape is refused with its problem, and nothing changes.
    let body = r#"{"zones": [{"name": "bad", "polygon": [[0.1, 0.1], [0.2, 0.2]]}], "lines": []}"#;
    assert_eq!(status_of(&put(port, "/api/cameras/walk/rules", &[], body)), 401);
    assert_eq!(status_of(&put(port, "/api/cameras/walk/rules", &[("Authorization", &auth)], body)), 403);
    let session =
        http_request(port, "GET", "/api/session", &[("Authorization", &auth)]).expect("session").json().expect("json");
    let csrf = session["csrf"].as_str().expect("csrf").to_string();
    let foreign = [("Authorization", auth.as_str()), ("X-Lookout-Csrf", &csrf), ("Origin", "http://evil.example")];
    assert_eq!(status_of(&put(port, "/api/cameras/walk/rules", &foreign, body)), 403);
    // The viewer's token opens the console but gets no session token and cannot change.
    let viewer = format!("Bearer {VIEWER}");
    let view = http_request(port, "GET", "/api/session", &[("Authorization", &viewer)])
        .expect("session")
        .json()
        .expect("json");
    assert_eq!((&view["can_write"], &view["csrf"]), (&Value::Bool(false), &Value::Null), "{view}");
    let as_viewer = [("Authorization", viewer.as_str()), ("X-Lookout-Csrf", &csrf)];
    assert_eq!(status_of(&put(port, "/api/cameras/walk/rules", &as_viewer, body)), 403);
    let answer = put(port, "/api/cameras/walk/rules", &[("Authorization", &auth), ("X-Lookout-Csrf", &csrf)], body);
    assert_eq!(status_of(&answer), 422, "{answer}");
    assert!(answer.contains("zones[0]"), "the problem names the shape: {answer}");
    let cam = http_request(port, "GET", "/api/cameras/walk", &[("Authorization", &auth)])
        .expect("camera")
        .json()
        .expect("json");
    assert_eq!(cam["zones"][0]["name"], "seat", "a refused change changes nothing: {cam}");
    assert_eq!(cam["changes"].as_array().map(Vec::len), Some(2), "two changes recorded: {cam}");
    drop(rec);
}
