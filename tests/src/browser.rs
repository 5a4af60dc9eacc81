//! Headless Chromium for the console's end-to-end test, driven over WebDriver by
//! Debian's `chromedriver` (package `chromium-driver`, the same version as `chromium`;
//! installed by scripts/setup.sh). WebDriver is plain HTTP + JSON, so no client crate.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The flags the issue asks for, plus a window size fit for a screenshot.
const FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,860",
];

/// How WebDriver names an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A pointer move to a point of an element, given as fractions of its box (WebDriver
/// offsets are from the element's centre, in whole CSS pixels).
fn move_to(id: &str, w: f64, h: f64, fx: f64, fy: f64, ms: u64) -> Value {
    json!({ "type": "pointerMove", "duration": ms, "origin": { ELEMENT: id },
            "x": (fx * w - w / 2.0).round() as i64, "y": (fy * h - h / 2.0).round() as i64 })
}

/// A chromedriver process with one browser session; both end when dropped.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    pub fn start() -> anyhow::Result<Self> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).is_file() {
                bail!("{bin} is missing: run scripts/setup.sh (it installs chromium and chromium-driver)");
            }
        }
        let port = crate::free_port()?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver")?;
        let mut b = Self { driver, port, session: String::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while call(port, "GET", "/status", None).ok().and_then(|v| v["value"]["ready"].as_bool()) != Some(true) {
            if Instant::now() > deadline {
                bail!("chromedriver not ready within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": FLAGS },
        }}});
        let v = call(port, "POST", "/session", Some(&caps))?;
        b.session = v["value"]["sessionId"].as_str().with_context(|| format!("no session: {v}"))?.to_string();
        Ok(b)
    }

    fn cmd(&self, method: &str, what: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let v = call(self.port, method, &format!("/session/{}/{what}", self.session), body)?;
        if let Some(e) = v["value"]["error"].as_str() {
            bail!("WebDriver {what}: {e}: {}", v["value"]["message"]);
        }
        Ok(v["value"].clone())
    }

    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "url", Some(&json!({ "url": url }))).map(drop)
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.cmd("POST", "execute/sync", Some(&json!({ "script": script, "args": [] })))
    }

    /// The WebDriver id of the first element matching `css`.
    pub fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self.cmd("POST", "element", Some(&json!({ "using": "css selector", "value": css })))?;
        v[ELEMENT].as_str().map(str::to_string).with_context(|| format!("no element {css}: {v}"))
    }

    /// A real click on the element matching `css`.
    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css)?;
        self.cmd("POST", &format!("element/{id}/click"), Some(&json!({}))).map(drop)
    }

    /// Clears the input matching `css` and types `text` into it, as a user would.
    pub fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.find(css)?;
        self.cmd("POST", &format!("element/{id}/clear"), Some(&json!({})))?;
        self.cmd("POST", &format!("element/{id}/value"), Some(&json!({ "text": text }))).map(drop)
    }

    /// Mouse clicks at points of the element matching `css`, given as fractions of its
    /// box (0,0 top left), through WebDriver's input actions: real pointer events.
    pub fn click_at(&self, css: &str, points: &[(f64, f64)]) -> anyhow::Result<()> {
        let (id, w, h) = self.rect(css)?;
        let mut acts = Vec::new();
        for &(fx, fy) in points {
            acts.push(move_to(&id, w, h, fx, fy, 0));
            acts.push(json!({ "type": "pointerDown", "button": 0 }));
            acts.push(json!({ "type": "pointerUp", "button": 0 }));
            // Apart in time, so two clicks on one spot are not a double-click.
            acts.push(json!({ "type": "pause", "duration": 600 }));
        }
        self.pointer(acts)
    }

    /// Presses at `from` and releases at `to` (fractions of the element's box).
    pub fn drag(&self, css: &str, from: (f64, f64), to: (f64, f64)) -> anyhow::Result<()> {
        let (id, w, h) = self.rect(css)?;
        self.pointer(vec![
            move_to(&id, w, h, from.0, from.1, 0),
            json!({ "type": "pointerDown", "button": 0 }),
            move_to(&id, w, h, (from.0 + to.0) / 2.0, (from.1 + to.1) / 2.0, 150),
            move_to(&id, w, h, to.0, to.1, 150),
            json!({ "type": "pointerUp", "button": 0 }),
        ])
    }

    /// Scrolls the element into the middle of the viewport (offsets count from the centre
    /// of its visible part) and gives its id and size.
    fn rect(&self, css: &str) -> anyhow::Result<(String, f64, f64)> {
        self.eval(&format!("document.querySelector({}).scrollIntoView({{block: 'center'}})", json!(css)))?;
        let id = self.find(css)?;
        let r = self.cmd("GET", &format!("element/{id}/rect"), None)?;
        let (w, h) = (r["width"].as_f64().unwrap_or(0.0), r["height"].as_f64().unwrap_or(0.0));
        anyhow::ensure!(w > 0.0 && h > 0.0, "{css} has no size: {r}");
        Ok((id, w, h))
    }

    fn pointer(&self, actions: Vec<Value>) -> anyhow::Result<()> {
        let body = json!({ "actions": [{
            "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" }, "actions": actions,
        }]});
        self.cmd("POST", "actions", Some(&body)).map(drop)
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let v = self.cmd("GET", "screenshot", None)?;
        let b64 = v.as_str().context("screenshot is not a string")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = call(self.port, "DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver request (HTTP/1.1, `Connection: close`); the response's JSON.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver keeps the connection open despite `Connection: close`: read the
    // headers, then exactly Content-Length bytes (or chunks up to the last one).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf)?;
        anyhow::ensure!(n > 0, "{method} {path}: connection closed before the headers");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut payload = raw[split + 4..].to_vec();
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let done = match length {
            Some(len) => payload.len() >= len,
            None if chunked => payload.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        payload.extend_from_slice(&buf[..n]);
    }
    if chunked {
        payload = dechunk(&payload)?;
    }
    serde_json::from_slice(&payload)
        .with_context(|| format!("{method} {path}: not JSON: {}", String::from_utf8_lossy(&payload)))
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").context("bad chunk")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..eol])?.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("short chunk")?);
        data = data.get(size + 2..).context("short chunk")?;
    }
}
