//! The agent's health: what `/healthz`, `/readyz`, `/metrics`, the console and systemd
//! (readiness, status line, watchdog) report on. Below the HTTP listener and the console,
//! which both read it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::error;

use super::Liveness;
use crate::camera::{CameraCtx, CameraState};
use crate::control::inventory::Inventory;
use crate::publish::Delivery;

/// What the endpoints report on.
pub struct Health {
    /// Cameras and models as they are now (they change at runtime).
    pub inventory: Arc<Inventory>,
    pub delivery: Arc<Delivery>,
    pub liveness: Liveness,
    /// Threads that must be alive (counted when they were started).
    pub expected_threads: Arc<std::sync::atomic::AtomicUsize>,
    /// Set by the health loop when systemd is told READY.
    pub ready: AtomicBool,
    /// The listener's connections (for /metrics).
    pub listener: Arc<ListenerStats>,
    /// `[site]`: the site task's state (for /metrics and the console).
    pub site: Option<crate::site::SiteHandle>,
}

/// Counters of the telemetry listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections being served now.
    pub open: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub refused: AtomicU64,
}

impl Health {
    /// The cameras as they are now (the one place the console reads the camera list).
    pub fn camera_list(&self) -> Vec<Arc<CameraCtx>> {
        self.inventory.cameras()
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
        let cameras = self.inventory.cameras();
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

/// Tells systemd when the agent is ready (first MQTT connection, or after a while without
/// one: the outbox buffers meanwhile), keeps its status line current, and pings the
/// watchdog only while healthy (every inference and event thread alive, the outbox's disk
/// working), so a dead thread or a failing disk gets the service restarted.
pub async fn run(health: Arc<Health>, shutdown: CancellationToken) {
    let started = Instant::now();
    let watchdog = super::systemd::watchdog_interval();
    // Each second: readiness follows the first MQTT connection closely, and the
    // watchdog (pinged at half its period at least) never starves.
    let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let status = health.status_line();
        let connected = health.delivery.stats.connected.load(Ordering::Relaxed);
        if !health.ready.load(Ordering::Relaxed) && (connected || started.elapsed() >= super::READY_WITHOUT_MQTT_AFTER)
        {
            health.ready.store(true, Ordering::Relaxed);
            super::systemd::ready(&status);
        } else {
            super::systemd::status(&status);
        }
        if health.healthy() {
            if watchdog.is_some() {
                super::systemd::watchdog();
            }
        } else {
            error!(
                problem = health.problem().unwrap_or_default(),
                alive = health.liveness.alive(),
                expected = health.expected_threads.load(Ordering::SeqCst),
                "unhealthy; withholding the watchdog ping"
            );
        }
    }
}
