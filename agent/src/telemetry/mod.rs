//! Logging (tracing) and the service manager: systemd readiness, status and watchdog.
//! Per-camera counters live in `camera::CameraStats`; metrics endpoints come with the
//! issue that needs them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tracing_subscriber::EnvFilter;

pub mod health;
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

    /// Counts an async task as a worker while it runs: when it ends, or panics, its
    /// guard goes and the count drops, as for a thread.
    pub fn watch(&self, task: tokio::task::JoinHandle<()>) -> tokio::task::JoinHandle<()> {
        let alive = self.guard();
        tokio::spawn(async move {
            let _alive = alive;
            let _ = task.await;
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watched_task_that_panics_no_longer_counts_as_alive() {
        let liveness = Liveness::default();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let task = liveness.watch(tokio::spawn(async move {
            let _ = wait.await;
            panic!("a bug in a worker task");
        }));
        assert_eq!(liveness.alive(), 1);
        let _ = go.send(());
        let _ = task.await;
        assert_eq!(liveness.alive(), 0, "a dead task must withhold the watchdog");
    }
}
