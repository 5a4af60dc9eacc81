//! The console's pages and JSON API on the telemetry listener (see docs/CONSOLE.md).
//!
//! Access: on a loopback listener the console is open (an installer at the gateway, or
//! through an SSH tunnel); a `[telemetry] console_token`, when set, is required whatever
//! the address. On any other address without a token the console is refused (403, logged
//! once at start): live camera pictures must never be one open port away.
//!
//! Handlers never panic and never block the async workers: JPEG encoding runs on the
//! blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use tracing::warn;

use super::{CameraConsole, ConsoleHub};
use crate::event::{ModelOut, rfc3339_millis};
use crate::source::CameraCtx;
use crate::telemetry::http::Health;

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
}

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
        .route_layer(middleware::from_fn_with_state(shared.clone(), check_access))
        .with_state(shared)
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

fn presented_tokens<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Vec<&'a str> {
    let mut got = Vec::new();
    if let Some(b) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        got.push(b.trim());
    }
    for c in headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()) {
        got.extend(c.split(';').filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('=')));
    }
    got.extend(query_param(query, "token"));
    got
}

async fn check_access(State(c): State<Shared>, req: Request, next: Next) -> Response {
    let want = match &c.access {
        Access::Open => return next.run(req).await,
        Access::Refused => {
            return (
                StatusCode::FORBIDDEN,
                "the console is off: the telemetry listener is not on loopback and [telemetry] console_token is not set\n",
            )
                .into_response();
        }
        Access::Token(t) => t.clone(),
    };
    let query = req.uri().query().map(str::to_string);
    let ok = presented_tokens(req.headers(), query.as_deref()).iter().any(|t| same(t.as_bytes(), want.as_bytes()));
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the console needs its token: open /?token=… once (it is then kept in a cookie) or send Authorization: Bearer …\n",
        )
            .into_response();
    }
    let from_query = query_param(query.as_deref(), "token").is_some_and(|t| same(t.as_bytes(), want.as_bytes()));
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
    watched: bool,
    #[serde(flatten)]
    info: super::CameraInfo,
}

fn camera_view<'a>(ctx: &'a CameraCtx, cam: &'a CameraConsole) -> CameraView<'a> {
    let (state, reason) = ctx.state();
    let (input, analysed) = cam.fps(ctx);
    let (width, height) = ctx.native_size();
    CameraView {
        id: &ctx.id,
        state: state.as_str(),
        reason,
        input_fps: (input * 100.0).round() / 100.0,
        analysed_fps: (analysed * 100.0).round() / 100.0,
        last_frame: ctx.last_frame().map(rfc3339_millis),
        width,
        height,
        watched: ctx.watch.is_watched(),
        info: cam.info(),
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
    let streaming = cams.iter().filter(|x| x.state().0 == crate::source::CameraState::Streaming).count();
    let o = h.delivery.outbox().stats();
    let s = &h.delivery.stats;
    let models: Vec<ModelOut> = c.hub.models();
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(presented_tokens(&h, Some("a=1&token=ghi")), vec!["abc", "def", "ghi"]);
        assert!(presented_tokens(&HeaderMap::new(), Some("tokenx=1")).is_empty());
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }

    #[test]
    fn camera_ids_are_escaped_in_links() {
        assert_eq!(urlencode("cam-1"), "cam-1");
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
