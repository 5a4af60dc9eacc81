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

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::Liveness;
use crate::console::ConsoleHub;
use crate::console::http::{Access, Console};
use crate::infer::{BATCH_BUCKETS, LATENCY_BUCKETS, ModelStats};
use crate::publish::Delivery;
use crate::source::{CameraCtx, CameraState};

/// What the endpoints report on.
pub struct Health {
    /// Cameras and models as they are now (they change at runtime).
    pub fleet: Arc<crate::control::fleet::Fleet>,
    pub delivery: Arc<Delivery>,
    pub liveness: Liveness,
    /// Threads that must be alive (counted when they were started).
    pub expected_threads: Arc<std::sync::atomic::AtomicUsize>,
    /// Set by the health loop when systemd is told READY.
    pub ready: AtomicBool,
}

impl Health {
    /// The cameras as they are now (the one place the console reads the camera list).
    pub fn camera_list(&self) -> Vec<Arc<CameraCtx>> {
        self.fleet.cameras()
    }

    pub fn healthy(&self) -> bool {
        self.problem().is_none()
    }

    /// Why the agent is unhealthy: a worker thread died, or the outbox's disk keeps
    /// failing (messages are being lost, or nothing new can be published).
    pub fn problem(&self) -> Option<String> {
        if self.liveness.alive() != self.expected_threads.load(Ordering::SeqCst) {
            return Some("a worker thread died".into());
        }
        self.delivery.outbox().health().err()
    }

    /// The one-line status also sent to systemd.
    pub fn status_line(&self) -> String {
        let cameras = self.fleet.cameras();
        let streaming = cameras.iter().filter(|c| c.state().0 == CameraState::Streaming).count();
        let connected = self.delivery.stats.connected.load(Ordering::Relaxed);
        let pending = self.delivery.outbox().stats().pending_records;
        format!(
            "{streaming}/{} cameras streaming; MQTT {}; {pending} messages awaiting the broker",
            cameras.len(),
            if connected { "connected" } else { "not connected" }
        )
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
    shutdown: CancellationToken,
) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(%addr, error = %e, "cannot listen for telemetry; /readyz and /metrics are off");
            return;
        }
    };
    info!(addr = %listener.local_addr().unwrap_or(addr), "telemetry listening");
    let metrics_hub = console.clone();
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
        app = app.merge(crate::console::http::router(Console { hub, health, access }));
    }
    let result = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    if let Err(e) = result {
        error!(error = %e, "telemetry listener failed");
    }
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
    let per_camera: [CameraSeries; 8] = [
        ("lookout_frames_received_total", "Encoded frames received from the camera.", |c| {
            c.stats.encoded_frames.load(Ordering::Relaxed)
        }),
        ("lookout_frames_decoded_total", "Frames passed to the decoder.", |c| {
            c.stats.decoded_frames.load(Ordering::Relaxed)
        }),
        (
            "lookout_frames_replaced_total",
            "Frames dropped on purpose because the model was behind: replaced by a newer one before analysis, or not decoded while the previous one waited.",
            |c| c.stats.replaced_frames.load(Ordering::Relaxed),
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
    let cameras = h.fleet.cameras();
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
    render_models(&mut out, &h.fleet.model_stats());
    let o = h.delivery.outbox().stats();
    let s = &h.delivery.stats;
    let global: [(&str, &str, &str, u64); 9] = [
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
    ];
    for (name, kind, help, v) in global {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    out
}
