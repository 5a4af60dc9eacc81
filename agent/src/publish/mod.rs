//! Delivery to the platform: the durable outbox and the MQTT connection task.
//!
//! Every message that carries a `seq` is appended to the [`outbox`] on disk (by the
//! event stage) before anyone tries to publish it, and leaves it only when the broker
//! has acknowledged it (PUBACK). The `mqtt` task publishes from the outbox:
//!
//! - One connection = one fresh rumqttc client and event loop. On any connection error
//!   both are dropped and, after a back-off (1 s → 30 s), rebuilt; everything not yet
//!   acknowledged is then published again from the outbox, oldest first. Nothing that
//!   rumqttc held in memory matters: the outbox is the only source of truth, so an agent
//!   crash or a broker restart loses nothing.
//! - PUBACKs are tied to messages through rumqttc's events: each publish request we make
//!   is answered, in order, by one `Outgoing::Publish(pkid)`, so a FIFO of the `seq`s we
//!   handed over maps each pkid to its `seq`, and `Incoming::PubAck(pkid)` acks that `seq`.
//! - At most `mqtt.max_inflight` messages are handed over and unacknowledged at once.
//! - Presence: on connect a retained `lookout.status/1` "online" (birth); the MQTT will,
//!   retained, says "offline"; a clean shutdown publishes "offline" itself. Each camera's
//!   retained `lookout.camera_status/1` is published on connect, on every state change,
//!   and every 60 s. These are state, not events: they carry no `seq` and bypass the outbox.
//! - Presence messages and replies wait in [`Connection::pending`] until rumqttc's request
//!   queue has room (it holds `max_inflight + 16` requests; on connect an agent with a few
//!   hundred cameras has more statuses than that): nothing is dropped for lack of room.

pub mod gaps;
pub mod outbox;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::config::MqttConfig;
use crate::control::ControlPlane;
use crate::control::command::Reply;
use crate::event::{Topics, camera_status_message, status_message};
use outbox::{Outbox, OutboxError};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("MQTT TLS set-up: cannot read {path}: {source}")]
    TlsFile { path: String, source: std::io::Error },
}

/// Why a connection ended or could not start, and whether trying again soon can help.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionFailure {
    /// The broker said no (credentials, client id, ACL): every attempt gets the same
    /// answer until the config or the broker changes.
    #[error("{broker}: broker refused the connection ({code:?}): check username/password and ACLs")]
    Refused { broker: String, code: rumqttc::ConnectReturnCode },
    /// The handshake failed: usually a certificate or key that does not match.
    #[error("{broker}: TLS failed ({source}): check ca_file, client_cert/client_key and the broker's certificate")]
    Tls { broker: String, source: rumqttc::TlsError },
    /// The network or the broker went away (or never answered): worth retrying soon.
    #[error("{broker}: {source}")]
    Network { broker: String, source: Box<ConnectionError> },
    /// The client could not be set up (a TLS file that cannot be read).
    #[error(transparent)]
    Setup(#[from] PublishError),
}

impl ConnectionFailure {
    fn classify(e: ConnectionError, broker: &str) -> Self {
        let broker = broker.to_string();
        match e {
            ConnectionError::ConnectionRefused(code) => ConnectionFailure::Refused { broker, code },
            ConnectionError::Tls(source) => ConnectionFailure::Tls { broker, source },
            source => ConnectionFailure::Network { broker, source: Box::new(source) },
        }
    }

    /// Whether the same attempt can succeed without anyone changing anything.
    pub fn retry_helps(&self) -> bool {
        matches!(self, ConnectionFailure::Network { .. })
    }
}

/// Longest wait between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before the next attempt: from 1 s, doubling up to [`MAX_BACKOFF`], back to
/// 1 s once a connection had been up; straight to the longest for a failure that
/// retrying cannot fix (a refusal, a TLS mismatch), so a wrong password does not hammer
/// the broker.
fn next_backoff(previous: Option<Duration>, failure: &ConnectionFailure, was_connected: bool) -> Duration {
    if was_connected {
        return Duration::from_secs(1);
    }
    if !failure.retry_helps() {
        return MAX_BACKOFF;
    }
    previous.map_or(Duration::from_secs(1), |b| (b * 2).min(MAX_BACKOFF))
}

/// Counters of the MQTT connection (exported as `lookout_mqtt_*` metrics).
#[derive(Debug, Default)]
pub struct MqttStats {
    pub connected: AtomicBool,
    /// Outbox messages handed to the client (re-sends after reconnects included).
    pub sent: AtomicU64,
    /// Outbox messages acknowledged by the broker.
    pub acked: AtomicU64,
    pub connects: AtomicU64,
}

/// What the event stage and the MQTT task share.
pub struct Delivery {
    outbox: Mutex<Outbox>,
    /// Wakes the MQTT task when something was appended.
    pub wake: Notify,
    pub stats: MqttStats,
}

impl Delivery {
    pub fn new(outbox: Outbox) -> Self {
        Self { outbox: Mutex::new(outbox), wake: Notify::new(), stats: MqttStats::default() }
    }

    /// The outbox; short critical sections only (appends, reads of a few records, acks),
    /// never an fsync: [`Delivery::sync`] and [`Delivery::append`] do those outside it.
    pub fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Outbox::append`], with the fsync a new segment needs done outside the lock, so
    /// the async tasks that take it (PUBACKs, `/metrics`, the health loop) never wait for
    /// the disk. Only one thread may append (the events thread).
    pub fn append(&self, topic: &str, build: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, OutboxError> {
        let prepared = self.outbox().prepare(topic, build)?;
        // Its own statement: the guard must be gone before `sync` takes the lock again.
        let rolls_dirty = self.outbox().rolls_dirty(&prepared);
        if rolls_dirty && let Err(e) = self.sync() {
            warn!(error = %e, "cannot sync the outbox before starting a new segment");
        }
        self.outbox().commit(prepared)
    }

    /// [`Outbox::sync`] holding the lock only to plan and to record the result: the
    /// fsyncs run on cloned file handles without it.
    pub fn sync(&self) -> Result<(), OutboxError> {
        let Some(mut job) = self.outbox().begin_sync() else { return Ok(()) };
        job.run();
        self.outbox().finish_sync(job)
    }
}

/// Bytes of an MQTT 3.1.1 QoS 1 PUBLISH besides topic and payload, at most: the fixed
/// header (1 + up to 4 of remaining length), the topic's length (2) and the packet id (2).
pub const PUBLISH_OVERHEAD: u64 = 9;

/// Spawns the `mqtt` task. It runs until `shutdown`, then keeps delivering for up to
/// `grace` until the outbox is empty, publishes "offline" and disconnects.
pub fn spawn(
    cfg: MqttConfig,
    delivery: Arc<Delivery>,
    presence: ControlPlane,
    shutdown: CancellationToken,
    grace: Duration,
) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("mqtt", broker = %format!("{}:{}", cfg.host, cfg.port));
    tokio::spawn(run(cfg, delivery, presence, shutdown, grace).instrument(span))
}

async fn run(
    cfg: MqttConfig,
    delivery: Arc<Delivery>,
    presence: ControlPlane,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let topics = Topics::new(&presence.inventory.site, &presence.inventory.agent);
    let mut backoff: Option<Duration> = None;
    // Replies of queued commands come back here, to be published by whichever
    // connection is up (one publisher keeps the pkid bookkeeping in order).
    let (reply_tx, mut replies) = tokio::sync::mpsc::unbounded_channel::<Reply>();
    loop {
        let result = match Connection::new(&cfg, &topics, &presence, &delivery, reply_tx.clone()) {
            Ok(mut c) => {
                let result = c.run(&shutdown, grace, &mut replies).await;
                if !c.pending.is_empty() {
                    // Statuses are sent again on the next connection; those replies are lost.
                    warn!(count = c.pending.len(), "connection ended with statuses or replies not yet handed to MQTT");
                }
                result
            }
            Err(e) => Err(ConnectionFailure::Setup(e)),
        };
        let wait = match result {
            Ok(()) => return,
            Err(reason) => {
                let was_connected = delivery.stats.connected.swap(false, Ordering::Relaxed);
                let wait = next_backoff(backoff, &reason, was_connected);
                if was_connected {
                    warn!(reason = %reason, retry_in = ?wait, "MQTT connection lost; unacknowledged messages stay in the outbox");
                } else if reason.retry_helps() {
                    // One line per attempt, saying why; back-off keeps it to one per 30 s at most.
                    warn!(reason = %reason, retry_in = ?wait, "cannot connect to the MQTT broker");
                } else {
                    error!(reason = %reason, retry_in = ?wait, "cannot connect to the MQTT broker; retrying cannot help until its config or the broker changes");
                }
                wait
            }
        };
        backoff = Some(wait);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// rumqttc options: identity, keep-alive, credentials, TLS and the will.
fn options(cfg: &MqttConfig, topics: &Topics, presence: &ControlPlane) -> Result<MqttOptions, PublishError> {
    let mut opts = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    opts.set_keep_alive(cfg.keep_alive);
    // The outbox replays everything unacknowledged on each new connection, so no broker
    // session state is needed (and stale in-memory state in rumqttc can't interfere).
    opts.set_clean_session(true);
    opts.set_inflight(cfg.max_inflight);
    // What the outbox admits (topic + payload ≤ max_message_bytes - PUBLISH_OVERHEAD)
    // always fits, so rumqttc never fails a connection on one of our records.
    let max = usize::try_from(cfg.max_message_bytes).unwrap_or(usize::MAX);
    opts.set_max_packet_size(max, max);
    opts.set_request_channel_capacity(cfg.max_inflight as usize + 16);
    opts.set_last_will(LastWill::new(
        topics.status(),
        status_message(&presence.inventory.agent_info(), "offline", Some("connection lost")),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(user) = &cfg.username {
        opts.set_credentials(user, cfg.password.as_ref().map(|p| p.expose()).unwrap_or(""));
    }
    if let Some(tls) = &cfg.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| PublishError::TlsFile { path: p.display().to_string(), source })
        };
        // Without a CA file, Debian's system bundle (rumqttc's own default panics when the
        // platform store cannot be read).
        let ca = read(tls.ca_file.as_deref().unwrap_or(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt")))?;
        let client_auth = match &tls.client_auth {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple { ca, alpn: None, client_auth }));
    }
    Ok(opts)
}

/// One connection's lifetime.
struct Connection<'a> {
    client: AsyncClient,
    eventloop: EventLoop,
    topics: &'a Topics,
    presence: &'a ControlPlane,
    delivery: &'a Delivery,
    max_inflight: usize,
    broker: String,
    connected: bool,
    /// One entry per publish request not yet seen as `Outgoing::Publish`: the outbox seq,
    /// or `None` for presence messages.
    requested: VecDeque<Option<u64>>,
    /// pkid → seq of outbox messages sent and not yet acknowledged.
    unacked: HashMap<u16, u64>,
    /// Highest seq handed over on this connection.
    cursor: u64,
    /// Last published state per camera, and when.
    camera_reports: HashMap<String, (String, Instant, u64, u64)>,
    /// The inventory generation the birth message described.
    fleet_generation: u64,
    /// The last `lookout.site/1` generation published (`[site]` leaders only).
    site_generation: u64,
    reply_tx: tokio::sync::mpsc::UnboundedSender<Reply>,
    /// Presence messages and replies not yet accepted by rumqttc's request queue, oldest
    /// first; topped up into it as it drains. At most one retained state per topic (a newer
    /// state replaces the queued one) and [`MAX_PENDING_REPLIES`] replies.
    pending: VecDeque<PendingPublish>,
}

/// A publish waiting for room in rumqttc's request queue.
struct PendingPublish {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

/// Most replies waiting for room at once: a command flood while the broker is slow to
/// acknowledge must not grow memory without bound. Beyond it replies are dropped, logged.
const MAX_PENDING_REPLIES: usize = 256;

impl<'a> Connection<'a> {
    fn new(
        cfg: &MqttConfig,
        topics: &'a Topics,
        presence: &'a ControlPlane,
        delivery: &'a Delivery,
        reply_tx: tokio::sync::mpsc::UnboundedSender<Reply>,
    ) -> Result<Self, PublishError> {
        let (client, eventloop) = AsyncClient::new(options(cfg, topics, presence)?, cfg.max_inflight as usize + 16);
        Ok(Self {
            client,
            eventloop,
            topics,
            presence,
            delivery,
            max_inflight: cfg.max_inflight as usize,
            broker: format!("{}:{}", cfg.host, cfg.port),
            connected: false,
            requested: VecDeque::new(),
            unacked: HashMap::new(),
            cursor: 0,
            camera_reports: HashMap::new(),
            fleet_generation: 0,
            site_generation: 0,
            reply_tx,
            pending: VecDeque::new(),
        })
    }

    /// Runs until shutdown (Ok, after draining) or a connection error (Err with the reason).
    async fn run(
        &mut self,
        shutdown: &CancellationToken,
        grace: Duration,
        replies: &mut tokio::sync::mpsc::UnboundedReceiver<Reply>,
    ) -> Result<(), ConnectionFailure> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            // Until the CONNACK, poll() alone: a poll() cancelled while it connects drops
            // the fresh connection (rumqttc then connects again), and the broker publishes
            // that first connection's will, "offline", to the platform.
            tokio::select! {
                ev = self.eventloop.poll() => self.on_event(ev)?,
                Some(reply) = replies.recv(), if self.connected => self.publish_reply(&reply),
                _ = self.delivery.wake.notified(), if self.connected => {}
                _ = tick.tick(), if self.connected => self.report_cameras(false),
                _ = shutdown.cancelled() => return self.drain(grace).await,
            }
            self.flush_pending();
            self.top_up();
        }
    }

    fn on_event(&mut self, ev: Result<Event, ConnectionError>) -> Result<(), ConnectionFailure> {
        match ev.map_err(|e| ConnectionFailure::classify(e, &self.broker))? {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.connected = true;
                self.delivery.stats.connected.store(true, Ordering::Relaxed);
                self.delivery.stats.connects.fetch_add(1, Ordering::Relaxed);
                let pending = self.delivery.outbox().stats().pending_records;
                info!(pending, "connected to MQTT broker");
                // A fresh session each connection: subscribe again, before the birth, so
                // that whoever sees "online" can send a command the broker will route
                // (it handles one connection's packets in order). Subscribe requests are
                // not publish requests, so the pkid → seq FIFO is unaffected.
                if let Err(e) = self.client.try_subscribe(self.topics.commands(), QoS::AtLeastOnce) {
                    warn!(error = %e, "cannot subscribe to commands");
                }
                self.fleet_generation = self.presence.inventory.generation();
                self.publish_state(
                    self.topics.status(),
                    status_message(&self.presence.inventory.agent_info(), "online", None),
                );
                self.report_cameras(true);
            }
            Event::Incoming(Packet::Publish(p)) => self.on_command(&p.topic, &p.payload, p.retain),
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Some(seq)) = self.requested.pop_front() {
                    self.unacked.insert(pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = self.unacked.remove(&ack.pkid) {
                    self.delivery.stats.acked.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.delivery.outbox().ack(seq) {
                        warn!(seq, error = %e, "cannot record acknowledgement; the message may be sent again");
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Hands outbox messages to the client while fewer than `max_inflight` are out.
    fn top_up(&mut self) {
        if !self.connected {
            return;
        }
        loop {
            let room = self.max_inflight.saturating_sub(self.requested.len() + self.unacked.len());
            if room == 0 {
                return;
            }
            // Only what is on disk: a record lost to a power cut before its fsync must never
            // have been seen by the platform, or its seq could come back with other content.
            let records = {
                let outbox = self.delivery.outbox();
                let durable = outbox.durable_seq();
                outbox
                    .pending(self.cursor, room.min(64))
                    .map(|r| r.into_iter().filter(|r| r.seq <= durable).collect::<Vec<_>>())
            };
            let records = match records {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "cannot read the outbox");
                    return;
                }
            };
            if records.is_empty() {
                return;
            }
            for r in records {
                if self.client.try_publish(r.topic, QoS::AtLeastOnce, false, r.payload).is_err() {
                    // Request queue full: the next event will call us again.
                    return;
                }
                self.requested.push_back(Some(r.seq));
                self.cursor = r.seq;
                self.delivery.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A command: routed by `control`, answered on `replies/{request_id}` now or when
    /// the supervisor is done with it.
    fn on_command(&mut self, topic: &str, payload: &[u8], retain: bool) {
        let Some(name) = self.topics.command_name(topic) else { return };
        if let Some(reply) = self.presence.route(name, payload, retain, &self.reply_tx) {
            self.publish_reply(&reply);
        }
    }

    /// Replies go out at QoS 1, not retained, not through the outbox: a reply to a
    /// request nobody waits for any more is worthless.
    fn publish_reply(&mut self, reply: &Reply) {
        if self.pending.iter().filter(|p| !p.retain).count() >= MAX_PENDING_REPLIES {
            warn!(request_id = %reply.request_id, "reply dropped: {MAX_PENDING_REPLIES} replies already wait for the broker");
            return;
        }
        let body = serde_json::to_vec(reply).unwrap_or_default();
        self.pending.push_back(PendingPublish {
            topic: self.topics.reply(&reply.request_id),
            payload: body,
            retain: false,
        });
        self.flush_pending();
    }

    /// Retained state messages (not in the outbox). Only the latest state of a topic
    /// matters, so one still waiting is replaced in place (keeping its turn).
    fn publish_state(&mut self, topic: String, payload: Vec<u8>) {
        match self.pending.iter_mut().find(|p| p.retain && p.topic == topic) {
            Some(p) => p.payload = payload,
            None => self.pending.push_back(PendingPublish { topic, payload, retain: true }),
        }
        self.flush_pending();
    }

    /// Hands waiting presence messages and replies to rumqttc while its request queue
    /// takes them; the rest stay queued for the next call (after the next event).
    fn flush_pending(&mut self) {
        while let Some(p) = self.pending.front() {
            if self.client.try_publish(p.topic.clone(), QoS::AtLeastOnce, p.retain, p.payload.clone()).is_err() {
                return;
            }
            self.requested.push_back(None);
            self.pending.pop_front();
        }
    }

    /// Publishes each camera's status when it changed, or every 60 s, or when `all`.
    fn report_cameras(&mut self, all: bool) {
        let now = Instant::now();
        // Cameras added or removed, or a model swapped: the birth message says again
        // what runs, and a removed camera's retained status is cleared (empty payload).
        if let Some(site) = &self.presence.site {
            let g = site.message_generation();
            if all || g != self.site_generation {
                self.site_generation = g;
                // Only the leader has one; a gateway that stops leading leaves the
                // retained message to its successor.
                if let Some(m) = site.message() {
                    self.publish_state(self.topics.site(), m);
                }
            }
        }
        let generation = self.presence.inventory.generation();
        if generation != self.fleet_generation {
            self.fleet_generation = generation;
            self.publish_state(
                self.topics.status(),
                status_message(&self.presence.inventory.agent_info(), "online", None),
            );
        }
        let cameras = self.presence.inventory.cameras();
        let gone: Vec<String> =
            self.camera_reports.keys().filter(|id| !cameras.iter().any(|c| &c.id == *id)).cloned().collect();
        for id in gone {
            self.camera_reports.remove(&id);
            self.publish_state(self.topics.camera_status(&id), Vec::new());
        }
        for cam in &cameras {
            let (state, reason) = cam.state();
            let stream = cam.stream();
            // A new client or decoder (an `auto` fall-back) is reported at once too.
            let key = format!("{}{:?}{:?}", state.as_str(), reason, stream);
            let (encoded, analysed) =
                (cam.stats.encoded_frames.load(Ordering::Relaxed), cam.stats.analysed_frames.load(Ordering::Relaxed));
            let due = match self.camera_reports.get(&cam.id) {
                Some((last, at, _, _)) => all || *last != key || now.duration_since(*at) >= Duration::from_secs(60),
                None => true,
            };
            if !due {
                continue;
            }
            let (input_fps, analysed_fps) = match self.camera_reports.get(&cam.id) {
                Some((_, at, e0, a0)) => {
                    let secs = now.duration_since(*at).as_secs_f64().max(0.001);
                    // A camera restarted by camera.update has fresh counters under the same id.
                    (encoded.saturating_sub(*e0) as f64 / secs, analysed.saturating_sub(*a0) as f64 / secs)
                }
                None => (0.0, 0.0),
            };
            let payload = camera_status_message(
                &self.presence.inventory.site,
                &self.presence.inventory.agent,
                &cam.id,
                state.as_str(),
                reason.as_deref(),
                input_fps,
                analysed_fps,
                cam.last_frame(),
                stream.as_ref(),
            );
            self.publish_state(self.topics.camera_status(&cam.id), payload);
            self.camera_reports.insert(cam.id.clone(), (key, now, encoded, analysed));
        }
    }

    /// At shutdown: keep delivering until the outbox is empty or `grace` runs out, then
    /// say "offline" and disconnect. What is left stays in the outbox for next time.
    async fn drain(&mut self, grace: Duration) -> Result<(), ConnectionFailure> {
        let deadline = tokio::time::Instant::now() + grace;
        while self.connected && self.delivery.outbox().stats().pending_records > 0 {
            self.flush_pending();
            self.top_up();
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(ev) => {
                    if let Err(e) = self.on_event(ev) {
                        warn!(reason = %e, "connection lost while draining");
                        self.connected = false;
                    }
                }
                Err(_) => break,
            }
        }
        let left = self.delivery.outbox().stats().pending_records;
        if left > 0 {
            warn!(pending = left, "stopping with unacknowledged messages; they stay in the outbox for the next start");
        } else {
            info!(acked = self.delivery.stats.acked.load(Ordering::Relaxed), "outbox empty: everything acknowledged");
        }
        if self.connected {
            // "offline" goes first: camera statuses still waiting would be stale at once.
            if !self.pending.is_empty() {
                info!(count = self.pending.len(), "stopping: statuses and replies not yet handed to MQTT are dropped");
                self.pending.clear();
            }
            self.publish_state(
                self.topics.status(),
                status_message(&self.presence.inventory.agent_info(), "offline", Some("shutdown")),
            );
            // Wait (briefly) for a PUBACK so the retained state is really offline.
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                match tokio::time::timeout_at(until, self.eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) if self.pending.is_empty() => break,
                    Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(_)) => self.flush_pending(),
                }
            }
            let _ = self.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.eventloop.poll()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> ConnectionFailure {
        let source = ConnectionError::Io(std::io::ErrorKind::ConnectionRefused.into());
        ConnectionFailure::classify(source, "b:1883")
    }

    #[test]
    fn a_refusal_is_told_apart_from_a_network_failure() {
        let refused = ConnectionFailure::classify(
            ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::BadUserNamePassword),
            "b:1883",
        );
        assert!(!refused.retry_helps());
        assert!(refused.to_string().contains("check username/password"), "{refused}");
        assert!(network().retry_helps());
        assert!(std::error::Error::source(&network()).is_some(), "the I/O error is kept as the source");
    }

    #[test]
    fn backoff_doubles_for_network_failures_and_waits_longest_for_refusals() {
        let refused =
            ConnectionFailure::Refused { broker: "b".into(), code: rumqttc::ConnectReturnCode::NotAuthorized };
        let mut wait = None;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let w = next_backoff(wait, &network(), false);
            waits.push(w.as_secs());
            wait = Some(w);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(next_backoff(None, &refused, false), MAX_BACKOFF, "a wrong password does not hammer the broker");
        assert_eq!(
            next_backoff(Some(MAX_BACKOFF), &network(), true),
            Duration::from_secs(1),
            "after a lost connection"
        );
    }
}
