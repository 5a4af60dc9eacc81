//! MQTT publishing (QoS 1) with rumqttc.
//!
//! The connection task (`mqtt`) drives rumqttc's event loop, which must be polled
//! continuously for anything to be sent; after a connection error it waits (back-off
//! 1 s → 30 s) and polls again, which reconnects. Messages are handed over through
//! rumqttc's bounded request queue: when it is full (broker unreachable for long),
//! `publish` waits, which stalls the event stage, which stalls inference, whose
//! latest-frame slots then replace frames. Messages are not dropped on that path.
//!
//! Known gap until the durable outbox lands (issue "Delivery the platform can trust"):
//! messages still in the process's memory are lost if the agent is killed. The session
//! is persistent (`clean_session = false`) so the broker and rumqttc re-send unacknowledged
//! QoS 1 publishes after a reconnect.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::config::MqttConfig;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("MQTT client stopped: {0}")]
    Closed(String),
}

/// Counters of the MQTT connection (exported as `lookout_mqtt_*` metrics).
#[derive(Debug, Default)]
pub struct MqttStats {
    pub connected: AtomicBool,
    /// Messages handed to the client.
    pub queued: AtomicU64,
    /// PUBLISH packets written to the socket (re-sends included).
    pub sent: AtomicU64,
    /// PUBACKs received.
    pub acked: AtomicU64,
    pub connects: AtomicU64,
}

/// Handle for publishing; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    pub stats: Arc<MqttStats>,
}

impl Publisher {
    /// Creates the client and spawns its connection task, which runs until `shutdown`
    /// and then for up to `grace` while unacknowledged messages drain.
    pub fn start(
        cfg: &MqttConfig,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let mut opts = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
        opts.set_keep_alive(cfg.keep_alive);
        opts.set_clean_session(false);
        opts.set_inflight(cfg.max_inflight);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        // Request queue: enough for a burst from every camera, small enough that a dead
        // broker back-pressures quickly instead of piling up memory.
        let (client, eventloop) = AsyncClient::new(opts, 256);
        let stats = Arc::new(MqttStats::default());
        let span = tracing::info_span!("mqtt", broker = %format!("{}:{}", cfg.host, cfg.port));
        let task = tokio::spawn(drive(eventloop, client.clone(), stats.clone(), shutdown, grace).instrument(span));
        (Self { client, stats }, task)
    }

    /// Publishes with QoS 1; waits while the client's queue is full.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), PublishError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| PublishError::Closed(e.to_string()))?;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    stats: Arc<MqttStats>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = eventloop.poll() => match ev {
                Ok(ev) => {
                    if note(&ev, &stats) {
                        backoff = Duration::from_secs(1);
                    }
                }
                Err(e) => {
                    if stats.connected.swap(false, Ordering::Relaxed) {
                        warn!(error = %e, "MQTT connection lost");
                    } else {
                        warn!(error = %e, retry_in = ?backoff, "cannot connect to MQTT broker");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    drain(&mut eventloop, &client, &stats, grace).await;
}

/// Keeps polling until every queued message is acknowledged or `grace` runs out, then
/// disconnects cleanly.
async fn drain(eventloop: &mut EventLoop, client: &AsyncClient, stats: &MqttStats, grace: Duration) {
    let pending = || stats.queued.load(Ordering::Relaxed).saturating_sub(stats.acked.load(Ordering::Relaxed));
    let deadline = tokio::time::Instant::now() + grace;
    while pending() > 0 && stats.connected.load(Ordering::Relaxed) {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(ev)) => {
                note(&ev, stats);
            }
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let left = pending();
    if left > 0 {
        warn!(unacknowledged = left, "stopping with messages the broker has not acknowledged");
    } else {
        info!(published = stats.acked.load(Ordering::Relaxed), "all messages acknowledged");
    }
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    }
}

/// Updates counters for one event; true when it shows a working connection.
fn note(ev: &Event, stats: &MqttStats) -> bool {
    match ev {
        Event::Incoming(Packet::ConnAck(_)) => {
            stats.connected.store(true, Ordering::Relaxed);
            stats.connects.fetch_add(1, Ordering::Relaxed);
            info!("connected to MQTT broker");
            true
        }
        Event::Incoming(Packet::PubAck(_)) => {
            stats.acked.fetch_add(1, Ordering::Relaxed);
            true
        }
        Event::Outgoing(Outgoing::Publish(_)) => {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            false
        }
        _ => false,
    }
}
