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
