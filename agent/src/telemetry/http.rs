//! The telemetry listener (`[telemetry] listen`, loopback by default):
//!
//! - `GET /healthz`: 200 while every inference and event thread is alive and the outbox's
//!   disk works, else 503 with the reason.
//! - `GET /readyz`: 200 once the agent is ready (models loaded and MQTT connected, or 20 s
//!   without a broker, exactly when systemd is told READY), else 503; the body is the
//!   status line as JSON either way.
//! - `GET /metrics`: Prometheus text format, `lookout_<name>_<unit>[_total]`, per-camera
//!   series labelled `camera`, per-model ones `model`.
//! - The installers' console (`/`, `/camera/{id}`, `/agent`, `/api/…`): `console::http`.
//!
//! Served through hyper directly rather than `axum::serve`, which sets no timer (so no
//! header-read timeout) and accepts without bound: a client that opens connections and
//! sends half a header must not pin the agent's file descriptors. See [`Limits`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::health::{Health, ListenerStats};
use crate::camera::{CameraCtx, CameraState};
use crate::console::ConsoleHub;
use crate::console::http::{Access, Console, Peer, Writer};
use crate::infer::{BATCH_BUCKETS, LATENCY_BUCKETS, ModelStats};

/// Bounds of the telemetry listener. Hostile clients are ordinary clients here: each
/// bound refuses or closes without waiting on the client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more is answered `503` and closed at once (nothing
    /// queues in the agent; the kernel's listen backlog is the only queue).
    pub max_connections: usize,
    /// A request's header must be complete within this, counted from the moment the
    /// connection is ready for a request: it also closes idle keep-alive connections.
    pub header_read_timeout: Duration,
    /// A connection is asked to close after this (after its response in progress) and
    /// dropped `close_grace` later: bounds a client that reads its response too slowly.
    pub max_connection_age: Duration,
    pub close_grace: Duration,
    /// At shutdown, how long responses in progress may take before their connections
    /// are dropped: the agent's drain waits for the listener, a client must not delay it.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // 128: a few browsers (≈6 connections each) and scrapers, far below the fds the
        // agent needs for cameras and the outbox (systemd raises LimitNOFILE).
        Self {
            max_connections: 128,
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(120),
            close_grace: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// Serves until `shutdown`, with the console when given its hub (`console_token`: see
/// `console::http::Access`). A listener that cannot bind is logged and skipped: telemetry
/// must never stop the agent.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    console: Option<Arc<ConsoleHub>>,
    console_token: Option<String>,
    viewer_token: Option<String>,
    writer: Option<Writer>,
    shutdown: CancellationToken,
) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(%addr, error = %e, "cannot listen for telemetry; /readyz and /metrics are off");
            return;
        }
    };
    info!(addr = %listener.local_addr().unwrap_or(addr), "telemetry listening");
    let metrics_hub = console.clone();
    let stats = health.listener.clone();
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move |State(h): State<Arc<Health>>| {
                let hub = metrics_hub.clone();
                async move { metrics(&h, hub.as_deref()) }
            }),
        )
        .with_state(health.clone());
    if let Some(hub) = console {
        let access = Access::for_listener(addr, console_token.as_deref());
        app = app.merge(crate::console::http::router(Console {
            hub,
            health,
            access,
            listen: addr,
            writer,
            viewer: viewer_token,
        }));
    }
    serve_app(listener, app, Limits::default(), stats, shutdown).await;
}

/// What one connection may buffer of a request (hyper's default is ~400 kB): a
/// browser's header with its cookie is a few kB, and 128 full buffers stay at 8 MiB.
const MAX_REQUEST_BUFFER: usize = 64 * 1024;

/// The bare `503` a connection beyond the cap gets (written without waiting, then closed).
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 32\r\n\
    Retry-After: 5\r\nConnection: close\r\n\r\ntoo many connections, try again\n";

/// Serves `app` on `listener` within `limits` until `shutdown`; then lets connections
/// finish their response for at most `shutdown_grace`.
pub async fn serve_app(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    // At most one line a minute each, whatever a client does.
    let mut last_refusal_log: Option<std::time::Instant> = None;
    let mut last_accept_log: Option<std::time::Instant> = None;
    let due = |last: &mut Option<std::time::Instant>| {
        let due = last.is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    };
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: pause, or the loop spins.
                    if due(&mut last_accept_log) {
                        warn!(error = %e, "telemetry listener cannot accept; pausing 100 ms per failure");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = stream;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(&stream);
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if due(&mut last_refusal_log) {
                warn!(max = limits.max_connections, "telemetry listener full; refusing connections (503)");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Handlers that log who asked (the console's editor) read the peer from here.
        let service = TowerToHyperService::new(app.clone().layer(axum::Extension(Peer(peer))));
        let stop = shutdown.clone();
        let open = Open::new(&stats, permit);
        conns.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(MAX_REQUEST_BUFFER);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let finished = tokio::select! {
                _ = conn.as_mut() => true,
                _ = tokio::time::sleep(limits.max_connection_age) => false,
                _ = stop.cancelled() => false,
            };
            if !finished {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.close_grace, conn).await;
            }
            drop(open);
        });
    }
    // Every connection saw `shutdown`: idle ones are closed, responses in progress get
    // `shutdown_grace`; whatever is left is dropped with the set.
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(limits.shutdown_grace, drain).await;
}

/// One served connection: its slot and its count, given back however its task ends.
struct Open {
    stats: Arc<ListenerStats>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Open {
    fn new(stats: &Arc<ListenerStats>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self { stats: stats.clone(), _permit: permit }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn refuse(stream: &TcpStream) {
    // A fresh socket's send buffer is empty: this never waits, and a partial write
    // only shortens the answer.
    let _ = stream.try_write(BUSY);
}

async fn healthz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    match h.problem() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let ready = h.ready.load(Ordering::Relaxed) && h.healthy();
    let body = serde_json::json!({ "ready": ready, "status": h.status_line() }).to_string();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}

fn metrics(h: &Health, console: Option<&ConsoleHub>) -> impl IntoResponse + use<> {
    let mut out = render(h);
    if let Some(site) = &h.site {
        crate::site::metrics::render(site, &h.inventory.agent, &mut out);
    }
    if let Some(hub) = console {
        crate::console::http::render_metrics(hub, &mut out);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Per model: inference latency and batch size histograms, runs that failed.
fn render_models(out: &mut String, models: &[Arc<ModelStats>]) {
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP lookout_inference_duration_seconds Time of one model run (a batch), preprocessing and decoding included.\n\
         # TYPE lookout_inference_duration_seconds histogram"
    );
    for m in models {
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cum += l(&m.latency_buckets[i]);
            let _ = writeln!(out, "lookout_inference_duration_seconds_bucket{{model=\"{}\",le=\"{b}\"}} {cum}", m.name);
        }
        cum += l(&m.latency_buckets[LATENCY_BUCKETS.len()]);
        let sum = l(&m.latency_sum_us) as f64 / 1e6;
        let _ = writeln!(out, "lookout_inference_duration_seconds_bucket{{model=\"{}\",le=\"+Inf\"}} {cum}", m.name);
        let _ = writeln!(out, "lookout_inference_duration_seconds_sum{{model=\"{}\"}} {sum}", m.name);
        let _ = writeln!(out, "lookout_inference_duration_seconds_count{{model=\"{}\"}} {cum}", m.name);
    }
    let _ = writeln!(
        out,
        "# HELP lookout_inference_batch_frames Frames per model run.\n# TYPE lookout_inference_batch_frames histogram"
    );
    for m in models {
        let mut cum = 0;
        for (i, b) in BATCH_BUCKETS.iter().enumerate() {
            cum += l(&m.batch_buckets[i]);
            let _ = writeln!(out, "lookout_inference_batch_frames_bucket{{model=\"{}\",le=\"{b}\"}} {cum}", m.name);
        }
        cum += l(&m.batch_buckets[BATCH_BUCKETS.len()]);
        let _ = writeln!(out, "lookout_inference_batch_frames_bucket{{model=\"{}\",le=\"+Inf\"}} {cum}", m.name);
        let _ = writeln!(out, "lookout_inference_batch_frames_sum{{model=\"{}\"}} {}", m.name, l(&m.frames));
        let _ = writeln!(out, "lookout_inference_batch_frames_count{{model=\"{}\"}} {cum}", m.name);
    }
    let _ = writeln!(
        out,
        "# HELP lookout_inference_failures_total Model runs that failed (their frames are lost).\n\
         # TYPE lookout_inference_failures_total counter"
    );
    for m in models {
        let _ = writeln!(out, "lookout_inference_failures_total{{model=\"{}\"}} {}", m.name, l(&m.failed_runs));
    }
}

/// A per-camera series: name, help, how to read it.
type CameraSeries = (&'static str, &'static str, fn(&CameraCtx) -> u64);

fn render(h: &Health) -> String {
    let mut out = String::new();
    let per_camera: [CameraSeries; 12] = [
        ("lookout_frames_received_total", "Encoded frames received from the camera.", |c| {
            c.stats.encoded_frames.load(Ordering::Relaxed)
        }),
        ("lookout_frames_decoded_total", "Frames passed to the decoder.", |c| {
            c.stats.decoded_frames.load(Ordering::Relaxed)
        }),
        (
            "lookout_frames_replaced_total",
            "Sampled frames dropped on purpose because the model was behind: replaced by a newer one before analysis.",
            |c| c.stats.replaced_frames.load(Ordering::Relaxed),
        ),
        (
            "lookout_frames_undecoded_total",
            "Keyframes due for analysis but not decoded because the camera's previous frame still waited for the model (keyframe-only decoding on demand).",
            |c| c.stats.undecoded_frames.load(Ordering::Relaxed),
        ),
        (
            "lookout_frames_activity_skipped_total",
            "Keyframes due for analysis but not decoded: the compressed stream showed no activity since the last analysed frame.",
            |c| c.stats.activity_skipped_frames.load(Ordering::Relaxed),
        ),
        (
            "lookout_activity_misses_total",
            "Decoded frames whose picture had moved although the compressed stream looked quiet (each lowers the camera's threshold).",
            |c| c.stats.activity_misses.load(Ordering::Relaxed),
        ),
        (
            "lookout_activity_gate_active",
            "1 while the camera skips static keyframes before decoding (calibrated, and its frame sizes tell motion), else 0.",
            |c| c.stats.activity_gate_active.load(Ordering::Relaxed),
        ),
        (
            "lookout_frames_motion_skipped_total",
            "Sampled frames kept from the model because nothing moved (motion gating).",
            |c| c.stats.motion_skipped_frames.load(Ordering::Relaxed),
        ),
        ("lookout_frames_analysed_total", "Frames the model analysed.", |c| {
            c.stats.analysed_frames.load(Ordering::Relaxed)
        }),
        ("lookout_messages_total", "Messages appended to the outbox.", |c| c.stats.messages.load(Ordering::Relaxed)),
        ("lookout_camera_restarts_total", "Pipeline restarts after a failure.", |c| {
            c.stats.restarts.load(Ordering::Relaxed)
        }),
        ("lookout_camera_streaming", "1 while the camera streams.", |c| {
            u64::from(c.state().0 == CameraState::Streaming)
        }),
    ];
    let cameras = h.inventory.cameras();
    for (name, help, get) in per_camera {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for c in &cameras {
            let _ = writeln!(out, "{name}{{camera=\"{}\"}} {}", c.id, get(c));
        }
    }
    let _ = writeln!(
        out,
        "# HELP lookout_camera_state 1 for the state the camera is in (starting, streaming, reconnecting, failed, stopped).\n\
         # TYPE lookout_camera_state gauge"
    );
    for c in &cameras {
        let now = c.state().0;
        for st in CameraState::ALL {
            let _ = writeln!(
                out,
                "lookout_camera_state{{camera=\"{}\",state=\"{}\"}} {}",
                c.id,
                st.as_str(),
                u64::from(st == now)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP lookout_camera_stream_info How each camera's stream is received and decoded, as its pipeline last set it up (always 1; no series before the first set-up).\n\
         # TYPE lookout_camera_stream_info gauge"
    );
    for c in &cameras {
        if let Some(s) = c.stream() {
            let _ = writeln!(
                out,
                "lookout_camera_stream_info{{camera=\"{}\",rtsp_client=\"{}\",codec=\"{}\",decoder=\"{}\"}} 1",
                c.id, s.rtsp_client, s.codec, s.decoder
            );
        }
    }
    render_models(&mut out, &h.inventory.model_stats());
    let _ = writeln!(
        out,
        "# HELP lookout_model_provider The execution provider each loaded model runs on (1 for the one running).\n\
         # TYPE lookout_model_provider gauge"
    );
    for m in h.inventory.models() {
        if let Some(p) = m.provider {
            let _ = writeln!(out, "lookout_model_provider{{model=\"{}\",provider=\"{p}\"}} 1", m.name);
        }
    }
    crate::latency::STAGES.render(&mut out);
    let o = h.delivery.outbox().stats();
    let s = &h.delivery.stats;
    let global: [(&str, &str, &str, u64); 11] = [
        (
            "lookout_mqtt_connected",
            "gauge",
            "1 while connected to the broker.",
            u64::from(s.connected.load(Ordering::Relaxed)),
        ),
        ("lookout_mqtt_acked_total", "counter", "Messages the broker acknowledged.", s.acked.load(Ordering::Relaxed)),
        (
            "lookout_outbox_pending_messages",
            "gauge",
            "Messages awaiting the broker's acknowledgement.",
            o.pending_records,
        ),
        ("lookout_outbox_pending_bytes", "gauge", "Disk used by those messages.", o.pending_bytes),
        ("lookout_outbox_dropped_total", "counter", "Messages dropped (announced as delivery.gap).", o.dropped_total),
        (
            "lookout_outbox_write_failures_total",
            "counter",
            "Messages whose outbox write failed (disk full, read-only, I/O error; announced as delivery.gap write_failed).",
            o.write_failures_total,
        ),
        (
            "lookout_outbox_fsync_failures_total",
            "counter",
            "Outbox syncs that failed (fsync or state write); retried, nothing new is published meanwhile.",
            o.fsync_failures_total,
        ),
        (
            "lookout_outbox_read_failures_total",
            "counter",
            "Outbox records that could not be read back (announced as delivery.gap corrupt).",
            o.read_failures_total,
        ),
        (
            "lookout_up",
            "gauge",
            "1 while healthy (/healthz): every worker thread alive, the outbox's disk working.",
            u64::from(h.healthy()),
        ),
        (
            "lookout_http_connections_open",
            "gauge",
            "Connections the telemetry listener serves now.",
            h.listener.open.load(Ordering::Relaxed),
        ),
        (
            "lookout_http_connections_refused_total",
            "counter",
            "Connections refused (503) because the listener's connection cap was reached.",
            h.listener.refused.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, v) in global {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Server {
        addr: SocketAddr,
        stats: Arc<ListenerStats>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    /// `serve_app` on a real loopback socket, with one route.
    async fn start(limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/x", get(|| async { "x\n" }));
        let stats = Arc::new(ListenerStats::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_app(listener, app, limits, stats.clone(), stop.clone()));
        Server { addr, stats, stop, task }
    }

    /// What the server sends until it closes, or `None` if it has not closed `within`.
    async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(within, read).await.ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    async fn open_becomes(stats: &ListenerStats, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.open.load(Ordering::Relaxed) != n {
            assert!(
                Instant::now() < deadline,
                "open connections stayed {}, expected {n}",
                stats.open.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn the_service_gives_the_agent_descriptors_for_many_cameras_and_a_full_listener() {
        let unit = include_str!("../../../systemd/lookout.service");
        let limit: usize = unit
            .lines()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .and_then(|v| v.trim().parse().ok())
            .expect("LimitNOFILE= in systemd/lookout.service");
        // ~14 per camera (measured), 512 cameras, a full listener, and room for the rest.
        assert!(limit >= 512 * 14 + Limits::default().max_connections + 1024, "LimitNOFILE={limit}");
    }

    const GET_X: &[u8] = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

    #[tokio::test]
    async fn a_client_that_sends_half_a_header_nothing_or_too_much_is_disconnected() {
        let timeout = Duration::from_millis(300);
        let s = start(Limits { header_read_timeout: timeout, ..Limits::default() }).await;
        let mut half = TcpStream::connect(s.addr).await.expect("connect");
        half.write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaa").await.expect("write");
        let mut silent = TcpStream::connect(s.addr).await.expect("connect");
        let t = Instant::now();
        let got = read_until_closed(&mut half, Duration::from_secs(5)).await.expect("half a header: not closed in 5 s");
        assert!(t.elapsed() >= timeout - Duration::from_millis(50), "closed after {:?}", t.elapsed());
        assert!(!got.contains("200"), "{got}");
        read_until_closed(&mut silent, Duration::from_secs(5)).await.expect("a silent client: not closed in 5 s");
        // A keep-alive connection idle after its response is closed the same way.
        let mut kept = TcpStream::connect(s.addr).await.expect("connect");
        kept.write_all(GET_X).await.expect("write");
        let got = read_until_closed(&mut kept, Duration::from_secs(5)).await.expect("idle keep-alive: not closed");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        // An endless header is cut off at the buffer bound, not stored.
        let mut huge = TcpStream::connect(s.addr).await.expect("connect");
        huge.write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ").await.expect("write");
        let _ = huge.write_all(&[b'a'; 200 * 1024]).await;
        let got = read_until_closed(&mut huge, Duration::from_secs(5)).await.expect("a huge header: not closed");
        assert!(got.starts_with("HTTP/1.1 431"), "{got:?}");
        open_becomes(&s.stats, 0).await;
        s.stop.cancel();
        s.task.await.expect("server task");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_refused_at_once_and_served_again_when_one_closes() {
        let s = start(Limits { max_connections: 3, ..Limits::default() }).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(s.addr).await.expect("connect"));
        }
        open_becomes(&s.stats, 3).await;
        let mut extra = TcpStream::connect(s.addr).await.expect("connect");
        let got = read_until_closed(&mut extra, Duration::from_secs(2)).await.expect("the 4th waited");
        assert!(got.starts_with("HTTP/1.1 503"), "{got:?}");
        assert_eq!(s.stats.refused.load(Ordering::Relaxed), 1);
        drop(held.pop());
        open_becomes(&s.stats, 2).await;
        let mut next = TcpStream::connect(s.addr).await.expect("connect");
        next.write_all(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.expect("write");
        let got = read_until_closed(&mut next, Duration::from_secs(5)).await.expect("served");
        assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("x\n"), "{got:?}");
        // Shutdown does not wait for the held connections' clients, even one that has
        // sent half a header.
        held[0].write_all(b"GET /x HTTP/1.1\r\nHo").await.expect("write");
        let t = Instant::now();
        s.stop.cancel();
        s.task.await.expect("server task");
        assert!(t.elapsed() < Duration::from_secs(2), "shutdown took {:?}", t.elapsed());
    }
}
