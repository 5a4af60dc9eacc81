//! The console's pages and JSON API on the telemetry listener (see docs/CONSOLE.md).
//!
//! Access: on a loopback listener the console is open (an installer at the gateway, or
//! through an SSH tunnel); a `[telemetry] console_token`, when set, is required whatever
//! the address. On any other address without a token the console is refused (403, logged
//! once at start): live camera pictures must never be one open port away.
//!
//! On a loopback listener the console also answers only requests whose `Host` is
//! `localhost` or a loopback IP literal: a page on `evil.example` whose name an attacker
//! re-points at 127.0.0.1 (DNS rebinding) is same-origin with itself, so the browser of an
//! installer with a tunnel open would let it read the console; its `Host` still says
//! `evil.example`. Every console response carries headers that keep it out of frames and
//! other origins' pages; the token is taken from the query on `/` only (the page that
//! sets the cookie), so it does not spread into logged or shared URLs of the API.
//!
//! Handlers never panic and never block the async workers: JPEG encoding runs on the
//! blocking pool.
//!
//! Longer than most files (~620 lines before its tests) on purpose: the access checks
//! (token, role, `Host`, anti-CSRF) and every handler they guard are read together.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::warn;

use super::{CameraConsole, ConsoleHub};
use crate::camera::CameraCtx;
use crate::control::ControlRequest;
use crate::control::command::{Command, Request as CommandRequest};
use crate::event::{ModelOut, rfc3339_millis};
use crate::telemetry::health::Health;

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/console.js");
const APP_CSS: &str = include_str!("web/console.css");

/// The cookie a page opened with `?token=` sets, so its images and API calls carry it.
const COOKIE: &str = "lookout_console_token";
/// Most cameras per `/api/cameras` page.
const MAX_PAGE: usize = 256;

/// Who may use the console.
#[derive(Clone, PartialEq)]
pub enum Access {
    Open,
    Token(String),
    /// Not loopback and no token: refused.
    Refused,
}

/// Never shows the token, so a stray `{:?}` cannot leak it into the journal.
impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Open => f.write_str("Open"),
            Access::Token(_) => f.write_str("Token(***)"),
            Access::Refused => f.write_str("Refused"),
        }
    }
}

impl Access {
    /// The policy for a listener on `addr` with an optional token.
    pub fn for_listener(addr: SocketAddr, token: Option<&str>) -> Self {
        match token {
            Some(t) if !t.is_empty() => Access::Token(t.to_string()),
            _ if addr.ip().is_loopback() => Access::Open,
            _ => Access::Refused,
        }
    }
}

/// What the console serves from.
pub struct Console {
    pub hub: Arc<ConsoleHub>,
    pub health: Arc<Health>,
    pub access: Access,
    /// The listener's address: on loopback, `Host` must name it (see [`host_allowed`]).
    pub listen: SocketAddr,
    /// Where changes go; `None`: the console only reads.
    pub writer: Option<Writer>,
    /// With [`Access::Token`]: a second token that opens the console read-only.
    pub viewer: Option<String>,
}

/// What the request's credentials allow (set by the access check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Loopback without a token, or the console token: may also change settings.
    Change,
    /// `console_viewer_token`: pictures, events and counts only.
    View,
}

/// The address a request came from (set per connection by the listener).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Where the editor's changes go: the supervisor's queue, the one MQTT commands use, so
/// they are validated, persisted and applied the same way.
pub struct Writer {
    requests: tokio::sync::mpsc::Sender<ControlRequest>,
    /// Random per run: every change must echo it in [`CSRF_HEADER`]. Only a page of the
    /// console's own origin can read it (`/api/session`), so another site's page cannot
    /// make an installer's browser change anything, token cookie or not.
    csrf: String,
    next_id: std::sync::atomic::AtomicU64,
}

impl Writer {
    pub fn new(requests: tokio::sync::mpsc::Sender<ControlRequest>) -> anyhow::Result<Self> {
        let mut b = [0u8; 24];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
        let csrf = b.iter().map(|x| format!("{x:02x}")).collect();
        Ok(Self { requests, csrf, next_id: std::sync::atomic::AtomicU64::new(1) })
    }
}

/// The header a change carries the session's anti-CSRF token in.
pub const CSRF_HEADER: &str = "x-lookout-csrf";
/// Largest body of a rules change (a few hundred points fit in a few kB).
const MAX_CHANGE_BYTES: usize = 64 * 1024;
/// How long a change may wait for the supervisor (one change at a time; a model download
/// can hold it) before the answer is "busy".
const CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

type Shared = Arc<Console>;

/// The console's routes (pages, assets, `/api/`), behind the access check.
pub fn router(console: Console) -> Router {
    if console.access == Access::Refused {
        warn!(
            "console refused: the telemetry listener is not on loopback and [telemetry] console_token is not set; \
             set a token to use it (see docs/CONSOLE.md)"
        );
    }
    let shared: Shared = Arc::new(console);
    Router::new()
        .route("/", get(page))
        .route("/camera/{id}", get(page))
        .route("/agent", get(page))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/api/status", get(status))
        .route("/api/cameras", get(cameras))
        .route("/api/cameras/{id}", get(camera))
        .route("/api/cameras/{id}/frame", get(frame))
        .route("/api/cameras/{id}/frame.jpg", get(frame_jpeg))
        .route("/api/cameras/{id}/events", get(events))
        .route("/api/cameras/{id}/counts", get(counts))
        .route("/api/cameras/{id}/snapshots/{snapshot}", get(snapshot))
        .route("/api/session", get(session))
        .route(
            "/api/cameras/{id}/rules",
            axum::routing::put(save_rules).layer(axum::extract::DefaultBodyLimit::max(MAX_CHANGE_BYTES)),
        )
        .route_layer(middleware::from_fn_with_state(shared.clone(), check_access))
        .route_layer(middleware::from_fn(secure_headers))
        .with_state(shared)
}

/// The console's pages need only their own script, style, images and API: nothing
/// inline, nothing from elsewhere, never inside another site's frame.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// On every console answer, refusals included.
async fn secure_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Other sites' pages cannot even embed a frame as an <img>.
    h.insert(header::HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin"));
    resp
}

/// Whether `host` (a `Host` header or a request URI's authority) names a loopback
/// listener in a way DNS cannot re-point: `localhost`, a loopback IP literal or the
/// listener's own IP, with any port (an SSH tunnel's local port differs).
pub fn host_allowed(host: &str, listen: SocketAddr) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else { return false };
        match after {
            "" => (ip, None),
            a => match a.strip_prefix(':') {
                Some(p) => (ip, Some(p)),
                None => return false,
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, p)) => (name, Some(p)),
            None => (host, None),
        }
    };
    if port.is_some_and(|p| !(1..=5).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    // A bracketed name must be an IPv6 literal, a bare one IPv4.
    let ip = if host.starts_with('[') {
        name.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        name.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    };
    ip.is_some_and(|ip| ip.is_loopback() || ip == listen.ip())
}

/// The DNS-rebinding guard: `None` when the request may go on.
fn misdirected(req: &Request, listen: SocketAddr) -> Option<Response> {
    if !listen.ip().is_loopback() {
        return None;
    }
    let mut names = req.headers().get_all(header::HOST).iter().map(|v| v.to_str().unwrap_or("")).collect::<Vec<_>>();
    names.extend(req.uri().authority().map(|a| a.as_str()));
    if !names.is_empty() && names.iter().all(|h| host_allowed(h, listen)) {
        return None;
    }
    let port = listen.port();
    let text = format!(
        "this console answers only to http://127.0.0.1:{port}/, http://localhost:{port}/ or http://[::1]:{port}/ \
         (other host names are refused: DNS rebinding)\n"
    );
    Some((StatusCode::MISDIRECTED_REQUEST, text).into_response())
}

/// `lookout_console_*` lines for /metrics.
pub fn render_metrics(hub: &ConsoleHub, out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP lookout_console_frames_encoded_total Live frames encoded as JPEG for the console (only while someone watches).\n\
         # TYPE lookout_console_frames_encoded_total counter\nlookout_console_frames_encoded_total {}",
        hub.frames_encoded.load(Ordering::Relaxed)
    );
}

/// Compares without an early exit, so response times do not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

/// The tokens a request shows: its bearer header, its cookie and, on `/` only, `?token=`.
fn presented_tokens<'a>(headers: &'a HeaderMap, path: &str, query: Option<&'a str>) -> Vec<&'a str> {
    let mut got = Vec::new();
    if let Some(b) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        got.push(b.trim());
    }
    for c in headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()) {
        got.extend(c.split(';').filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('=')));
    }
    if path == "/" {
        got.extend(query_param(query, "token"));
    }
    got
}

async fn check_access(State(c): State<Shared>, mut req: Request, next: Next) -> Response {
    if let Some(refusal) = misdirected(&req, c.listen) {
        return refusal;
    }
    let (full, viewer) = match &c.access {
        Access::Open => {
            req.extensions_mut().insert(Role::Change);
            return next.run(req).await;
        }
        Access::Refused => {
            return (
                StatusCode::FORBIDDEN,
                "the console is off: the telemetry listener is not on loopback and [telemetry] console_token is not set\n",
            )
                .into_response();
        }
        Access::Token(t) => (t.clone(), c.viewer.clone()),
    };
    let query = req.uri().query().map(str::to_string);
    let on_root = req.uri().path() == "/";
    let presented = presented_tokens(req.headers(), req.uri().path(), query.as_deref());
    let shows = |want: &str| presented.iter().any(|t| same(t.as_bytes(), want.as_bytes()));
    let (role, want) = if shows(&full) {
        (Role::Change, full.clone())
    } else if let Some(v) = viewer.as_deref().filter(|v| shows(v)) {
        (Role::View, v.to_string())
    } else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the console needs its token: open /?token=… once (it is then kept in a cookie) or send Authorization: Bearer … \
             (?token= counts on / only)\n",
        )
            .into_response();
    };
    let from_query =
        on_root && query_param(query.as_deref(), "token").is_some_and(|t| same(t.as_bytes(), want.as_bytes()));
    req.extensions_mut().insert(role);
    let mut resp = next.run(req).await;
    if from_query && let Ok(v) = HeaderValue::from_str(&format!("{COOKIE}={want}; Path=/; HttpOnly; SameSite=Strict")) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Every page is the same shell; `console.js` renders by path.
async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

fn json_bytes(code: StatusCode, body: Vec<u8>) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

fn json_value(v: &impl Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => json_bytes(StatusCode::OK, b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot serialise: {e}")),
    }
}

fn error(code: StatusCode, message: &str) -> Response {
    json_bytes(code, json!({ "error": message }).to_string().into_bytes())
}

fn no_camera(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, &format!("no camera {id:?}"))
}

/// The camera's runtime context and console state.
fn find(c: &Console, id: &str) -> Option<(Arc<CameraCtx>, Arc<CameraConsole>)> {
    let ctx = c.health.camera_list().into_iter().find(|x| x.id == id)?;
    Some((ctx, c.hub.camera(id)?))
}

#[derive(Serialize)]
struct CameraView<'a> {
    id: &'a str,
    state: &'static str,
    reason: Option<String>,
    input_fps: f64,
    analysed_fps: f64,
    last_frame: Option<String>,
    /// The camera's own frame size (0 × 0 until the first frame).
    width: u32,
    height: u32,
    /// How its stream is received and decoded (null until set up).
    rtsp_client: Option<&'static str>,
    codec: Option<&'static str>,
    decoder: Option<String>,
    watched: bool,
    #[serde(flatten)]
    info: super::CameraInfo,
    /// Its `zones` and `lines` as configured (class names, not ids): what the editor edits.
    rules: serde_json::Value,
    /// Its latest setting changes, newest first: who, when, whether it restarted.
    changes: Vec<serde_json::Value>,
}

fn camera_view<'a>(ctx: &'a CameraCtx, cam: &'a CameraConsole) -> CameraView<'a> {
    let (state, reason) = ctx.state();
    let (input, analysed) = cam.fps(ctx);
    let (width, height) = ctx.native_size();
    let stream = ctx.stream();
    CameraView {
        id: &ctx.id,
        state: state.as_str(),
        reason,
        input_fps: (input * 100.0).round() / 100.0,
        analysed_fps: (analysed * 100.0).round() / 100.0,
        last_frame: ctx.last_frame().map(rfc3339_millis),
        width,
        height,
        rtsp_client: stream.as_ref().map(|s| s.rtsp_client),
        codec: stream.as_ref().map(|s| s.codec),
        decoder: stream.map(|s| s.decoder),
        watched: ctx.watch.is_watched(),
        info: cam.info(),
        rules: cam.rules_source(),
        changes: cam.changes(),
    }
}

/// `?offset=&limit=`: a page of the cameras, sorted by id, with the total.
async fn cameras(State(c): State<Shared>, req: Request) -> Response {
    let q = req.uri().query();
    let num = |name, default| query_param(q, name).and_then(|v| v.parse::<usize>().ok()).unwrap_or(default);
    let (offset, limit) = (num("offset", 0), num("limit", MAX_PAGE).min(MAX_PAGE));
    let mut list = c.health.camera_list();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    let total = list.len();
    let cams: Vec<(Arc<CameraCtx>, Arc<CameraConsole>)> = list
        .into_iter()
        .skip(offset)
        .take(limit)
        .filter_map(|ctx| {
            let cam = c.hub.camera(&ctx.id)?;
            Some((ctx, cam))
        })
        .collect();
    let views: Vec<CameraView<'_>> = cams.iter().map(|(ctx, cam)| camera_view(ctx, cam)).collect();
    json_value(&json!({ "total": total, "offset": offset, "cameras": views }))
}

async fn camera(State(c): State<Shared>, Path(id): Path<String>) -> Response {
    match find(&c, &id) {
        Some((ctx, cam)) => json_value(&camera_view(&ctx, &cam)),
        None => no_camera(&id),
    }
}

/// The latest analysed frame's boxes; asking makes the camera watched.
async fn frame(State(c): State<Shared>, Path(id): Path<String>) -> Response {
    let Some((ctx, cam)) = find(&c, &id) else { return no_camera(&id) };
    ctx.watch.touch();
    let frame = cam.frame(None).map(|f| {
        json!({
            "seq": f.seq,
            "captured": rfc3339_millis(f.captured),
            "jpeg": format!("/api/cameras/{}/frame.jpg?seq={}", urlencode(&id), f.seq),
            "boxes": f.boxes,
        })
    });
    json_value(&json!({ "camera": id, "frame": frame }))
}

/// A frame as JPEG: `?seq=` one of the two latest, else the latest. 404 until the first
/// analysed frame after the camera became watched.
async fn frame_jpeg(State(c): State<Shared>, Path(id): Path<String>, req: Request) -> Response {
    let Some((ctx, cam)) = find(&c, &id) else { return no_camera(&id) };
    ctx.watch.touch();
    let seq = query_param(req.uri().query(), "seq").and_then(|s| s.parse().ok());
    let Some(f) = cam.frame(seq) else {
        return error(StatusCode::NOT_FOUND, "no analysed frame yet (the camera is now watched: try again shortly)");
    };
    let hub = c.hub.clone();
    let seq = f.seq;
    match tokio::task::spawn_blocking(move || f.jpeg(&hub)).await {
        Ok(Some(j)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (header::HeaderName::from_static("x-frame-seq"), HeaderValue::from(seq)),
            ],
            j.bytes.clone(),
        )
            .into_response(),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the frame"),
    }
}

async fn events(State(c): State<Shared>, Path(id): Path<String>) -> Response {
    match c.hub.camera(&id) {
        Some(cam) => json_bytes(StatusCode::OK, cam.events_json()),
        None => no_camera(&id),
    }
}

async fn counts(State(c): State<Shared>, Path(id): Path<String>) -> Response {
    match c.hub.camera(&id) {
        Some(cam) => json_bytes(StatusCode::OK, cam.counts_json()),
        None => no_camera(&id),
    }
}

async fn snapshot(State(c): State<Shared>, Path((id, snap)): Path<(String, String)>) -> Response {
    let Some(cam) = c.hub.camera(&id) else { return no_camera(&id) };
    match cam.snapshot(&snap) {
        Some(j) => ([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "max-age=3600")], j.bytes.clone())
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "no such snapshot (the console keeps the latest few per camera)"),
    }
}

/// The agent page: version, uptime, models, MQTT, outbox, cameras.
async fn status(State(c): State<Shared>) -> Response {
    let h = &c.health;
    let cams = h.camera_list();
    let streaming = cams.iter().filter(|x| x.state().0 == crate::camera::CameraState::Streaming).count();
    let o = h.delivery.outbox().stats();
    let s = &h.delivery.stats;
    // Each loaded model with the execution provider its session runs on.
    let models: Vec<Value> = c
        .hub
        .models()
        .into_iter()
        .map(|(m, provider): (ModelOut, &str)| {
            json!({ "name": m.name, "version": m.version, "sha256": m.sha256, "provider": provider })
        })
        .collect();
    let started = c.hub.started;
    json_value(&json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started": rfc3339_millis(started),
        "uptime_seconds": started.elapsed().map_or(0, |d| d.as_secs()),
        "healthy": h.healthy(),
        "ready": h.ready.load(Ordering::Relaxed) && h.healthy(),
        "status": h.status_line(),
        "models": models,
        "mqtt": { "connected": s.connected.load(Ordering::Relaxed), "acked": s.acked.load(Ordering::Relaxed) },
        "outbox": {
            "pending_messages": o.pending_records,
            "pending_bytes": o.pending_bytes,
            "dropped": o.dropped_total,
        },
        "cameras": { "total": cams.len(), "streaming": streaming },
        "console": { "frames_encoded": c.hub.frames_encoded.load(Ordering::Relaxed) },
        "site": h.site.as_ref().map(|s| crate::site::metrics::summary(s, &h.inventory.agent)),
    }))
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the page may do: whether it can change settings, and the token a change must
/// carry. Same-origin only: another site's page cannot read it (no CORS headers).
async fn session(State(c): State<Shared>, role: Option<axum::Extension<Role>>) -> Response {
    let may = role.is_some_and(|r| r.0 == Role::Change);
    let csrf = c.writer.as_ref().filter(|_| may).map(|w| w.csrf.as_str());
    let access = match c.access {
        Access::Open => "loopback",
        _ => "token",
    };
    json_value(&json!({ "can_write": csrf.is_some(), "csrf": csrf, "access": access }))
}

/// Why a change request is refused, if it is: it must be JSON, from the console's own
/// origin, and carry the session's anti-CSRF token. A form another site posts cannot
/// set the header, and a script of another origin cannot send it without a CORS
/// preflight, which the console never grants.
fn change_refused(headers: &HeaderMap, csrf: &str) -> Option<Response> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.trim_start().to_ascii_lowercase().starts_with("application/json") {
        return Some(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "a change is sent as application/json"));
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same_origin = match (origin.to_str().ok(), host) {
            (Some(o), Some(h)) => o.strip_prefix("http://").or_else(|| o.strip_prefix("https://")) == Some(h),
            _ => false,
        };
        if !same_origin {
            return Some(error(StatusCode::FORBIDDEN, "refused: a change must come from the console's own page"));
        }
    }
    let shown = headers.get(CSRF_HEADER).map(|v| v.as_bytes()).unwrap_or(b"");
    if !same(shown, csrf.as_bytes()) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "refused: a change needs this session's token in X-Lookout-Csrf (GET /api/session gives it)",
        ));
    }
    None
}

/// `PUT /api/cameras/{id}/rules`: `{"zones": […], "lines": […]}` with the keys of
/// `[[cameras.zones]]` / `[[cameras.lines]]`, replacing the camera's zones and lines; the
/// rest of its settings stay. Answered with the supervisor's reply (`lookout.reply/1`).
async fn save_rules(
    State(c): State<Shared>,
    Path(id): Path<String>,
    peer: Option<axum::Extension<Peer>>,
    role: Option<axum::Extension<Role>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(w) = &c.writer else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "this console cannot change settings");
    };
    if role.is_none_or(|r| r.0 != Role::Change) {
        warn!(camera = %id, "console change refused: read-only token");
        return error(StatusCode::FORBIDDEN, "refused: this token opens the console read-only");
    }
    if let Some(refusal) = change_refused(&headers, &w.csrf) {
        warn!(camera = %id, "console change refused (no session token or another origin)");
        return refusal;
    }
    if c.hub.camera(&id).is_none() {
        return no_camera(&id);
    }
    let rules = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object with \"zones\" and \"lines\""),
    };
    let how = if c.access == Access::Open { "loopback" } else { "token" };
    let by = match peer {
        Some(axum::Extension(Peer(p))) => format!("console ({how}) from {p}"),
        None => format!("console ({how})"),
    };
    let n = w.next_id.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("console-{n}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let request = CommandRequest { request_id, command: Command::CameraRules { id: id.clone(), rules, by } };
    if w.requests.try_send(ControlRequest { request, reply: tx }).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "busy: other changes are waiting; try again shortly");
    }
    let reply = match tokio::time::timeout(CHANGE_WAIT, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "busy: the change did not start within 30 s"),
    };
    let code = match reply.error.as_ref().map(|e| e.code) {
        None => StatusCode::OK,
        Some("not_found") => StatusCode::NOT_FOUND,
        Some("invalid_camera" | "invalid_field") => StatusCode::UNPROCESSABLE_ENTITY,
        Some("busy" | "shutting_down") => StatusCode::SERVICE_UNAVAILABLE,
        Some(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    match serde_json::to_vec(&reply) {
        Ok(b) => json_bytes(code, b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot serialise: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    #[test]
    fn a_change_needs_json_the_session_token_and_the_consoles_own_origin() {
        let csrf = "c0ffee";
        let ok = [("host", "127.0.0.1:9464"), ("content-type", "application/json"), (CSRF_HEADER, csrf)];
        assert!(change_refused(&headers(&ok), csrf).is_none());
        let same_origin = [&ok[..], &[("origin", "http://127.0.0.1:9464")]].concat();
        assert!(change_refused(&headers(&same_origin), csrf).is_none());
        let code = |h: &[(&'static str, &str)]| change_refused(&headers(h), csrf).map(|r| r.status());
        // A plain form post from elsewhere: no JSON, no token.
        assert_eq!(
            code(&[("host", "127.0.0.1:9464"), ("content-type", "text/plain")]),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(code(&ok[..2]), Some(StatusCode::FORBIDDEN), "no token");
        assert_eq!(code(&[ok[0], ok[1], (CSRF_HEADER, "c0ffef")]), Some(StatusCode::FORBIDDEN), "a wrong token");
        let foreign = [&ok[..], &[("origin", "http://evil.example")]].concat();
        assert_eq!(code(&foreign), Some(StatusCode::FORBIDDEN), "another origin, even with the token");
        let null = [&ok[..], &[("origin", "null")]].concat();
        assert_eq!(code(&null), Some(StatusCode::FORBIDDEN), "a sandboxed page");
    }

    #[test]
    fn loopback_is_open_other_addresses_need_a_token() {
        let lo: SocketAddr = "127.0.0.1:9464".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:9464".parse().expect("addr");
        assert_eq!(Access::for_listener(lo, None), Access::Open);
        assert_eq!(Access::for_listener(any, None), Access::Refused);
        assert_eq!(Access::for_listener(any, Some("")), Access::Refused);
        assert_eq!(Access::for_listener(any, Some("s3cret")), Access::Token("s3cret".into()));
        assert_eq!(Access::for_listener(lo, Some("s3cret")), Access::Token("s3cret".into()));
    }

    #[test]
    fn tokens_come_from_bearer_cookie_or_query() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("x=1; lookout_console_token=def"));
        assert_eq!(presented_tokens(&h, "/", Some("a=1&token=ghi")), vec!["abc", "def", "ghi"]);
        assert!(presented_tokens(&HeaderMap::new(), "/", Some("tokenx=1")).is_empty());
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }

    #[test]
    fn query_tokens_count_on_the_root_page_only() {
        for path in ["/api/cameras", "/api/cameras/c/frame.jpg", "/agent", "/camera/c", "//"] {
            assert!(presented_tokens(&HeaderMap::new(), path, Some("token=ghi")).is_empty(), "{path}");
        }
    }

    #[test]
    fn only_loopback_names_pass_the_dns_rebinding_guard() {
        let lo: SocketAddr = "127.0.0.1:9464".parse().expect("addr");
        let lo2: SocketAddr = "127.0.0.2:9464".parse().expect("addr");
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9464",
            "127.0.0.1:8080",
            "localhost",
            "LocalHost:9464",
            "[::1]",
            "[::1]:9464",
            "127.1.2.3:1",
        ] {
            assert!(host_allowed(ok, lo), "{ok} should pass");
        }
        assert!(host_allowed("127.0.0.2:9464", lo2));
        for bad in [
            "evil.example",
            "evil.example:9464",
            "localhost.evil.example",
            "localhost.",
            "127.0.0.1.nip.io",
            "10.0.0.1:9464",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[127.0.0.1]",
            "::1",
            "127.0.0.1:99999x",
            "127.0.0.1:123456",
            "127.0.0.1:-1",
            "localhost:80:80",
            "",
            "0x7f.1",
            "2130706433",
            "[::ffff:7f00:1]evil",
        ] {
            assert!(!host_allowed(bad, lo), "{bad:?} should be refused");
        }
    }

    #[test]
    fn camera_ids_are_escaped_in_links() {
        assert_eq!(urlencode("cam-1"), "cam-1");
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
