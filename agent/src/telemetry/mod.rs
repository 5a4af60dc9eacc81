//! Logging (tracing) and the service manager: systemd readiness, status and watchdog.
//! Per-camera counters live in `source::CameraStats`; metrics endpoints come with the
//! issue that needs them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tracing_subscriber::EnvFilter;

pub mod http;

/// Logs to stderr (the journal under systemd); `RUST_LOG` overrides the default level (`info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: the journal and log files would keep the escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// systemd's notification protocol. Without `NOTIFY_SOCKET` (not under systemd, or
/// `Type=simple`) every call does nothing.
pub mod systemd {
    use sd_notify::NotifyState;

    pub fn ready(status: &str) {
        let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(status: &str) {
        let _ = sd_notify::notify(&[NotifyState::Status(status)]);
    }

    pub fn stopping() {
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
    }

    pub fn watchdog() {
        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
    }

    /// How often to ping the watchdog (half of `WatchdogSec`), when it is on.
    pub fn watchdog_interval() -> Option<std::time::Duration> {
        sd_notify::watchdog_enabled().map(|d| d / 2)
    }
}

/// Counts threads that must stay alive for the agent to be healthy; each holds a
/// [`Alive`] guard that counts down when the thread ends, however it ends.
#[derive(Clone, Default)]
pub struct Liveness(Arc<AtomicUsize>);

pub struct Alive(Arc<AtomicUsize>);

impl Liveness {
    pub fn guard(&self) -> Alive {
        self.0.fetch_add(1, Ordering::SeqCst);
        Alive(self.0.clone())
    }

    pub fn alive(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long start-up waits for the first MQTT connection before telling systemd it is
/// ready anyway: with the broker down at boot the agent must still run and buffer.
pub const READY_WITHOUT_MQTT_AFTER: Duration = Duration::from_secs(20);
