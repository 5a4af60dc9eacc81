//! Wires the stages together and runs them until shutdown, then drains them in flow
//! order: cameras stop → inference finishes its batch → the event stage appends every
//! message to the outbox and syncs it → MQTT delivers what it can within the grace
//! period (the rest stays in the outbox for the next start).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::console::{self, ConsoleHub};
use crate::control::fleet::Fleet;
use crate::control::supervisor::{Deps, Supervisor};
use crate::event::snapshot;
use crate::event::stage::{CameraEvents, Outgoing};
use crate::event::{Topics, detections_message, gap_message};
use crate::infer::{self, Analysed};
use crate::publish::gaps::{GapAnnouncer, Range};
use crate::publish::outbox::{Outbox, OutboxConfig, OutboxError};
use crate::publish::{self, Delivery, Presence};
use crate::source::{self, CameraCtx};
use crate::telemetry::{self, Liveness, http::Health};

/// Capacity of the inference → event channel, in analysed frames. When full, inference
/// waits (see `infer`).
pub const ANALYSED_CHANNEL: usize = 256;

/// Commands waiting for the supervisor; when full, a new one is refused as `busy`.
pub const CONTROL_QUEUE: usize = 16;

/// Cameras joining and leaving the event thread.
pub enum EventsCtl {
    Add(Arc<CameraCtx>, Box<CameraEvents>),
    /// Ends the camera's tracks and sends its partial counts; ignored if the stage now
    /// belongs to a newer context of the same id.
    Remove(Arc<CameraCtx>),
}

/// Per-camera counters at the end of a run.
#[derive(Debug, Serialize)]
pub struct CameraSummary {
    pub camera: String,
    pub encoded_frames: u64,
    pub decoded_frames: u64,
    pub sampled_frames: u64,
    pub replaced_frames: u64,
    pub analysed_frames: u64,
    pub messages: u64,
    pub restarts: u64,
}

/// What a run did.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub cameras: Vec<CameraSummary>,
    /// Outbox messages the broker acknowledged during this run.
    pub mqtt_acked: u64,
    /// Messages still in the outbox at exit (delivered on the next start).
    pub outbox_pending: u64,
    /// Messages dropped from the outbox (announced as `delivery.gap`).
    pub outbox_dropped: u64,
}

/// Runs the agent until `shutdown` is cancelled; `grace` bounds the drain.
pub async fn run(config: Config, shutdown: CancellationToken, grace: Duration) -> anyhow::Result<Summary> {
    source::init()?;
    let env = infer::runtime::environment(config.agent.onnxruntime.as_deref())?;
    let topics = Topics::new(&config.agent.site, &config.agent.id);

    // The outbox first: what an earlier run left undelivered goes out before anything new.
    let outbox_dir = config.agent.state_dir.join("outbox");
    let o = &config.outbox;
    let (outbox, report) = Outbox::open(OutboxConfig {
        dir: outbox_dir.clone(),
        max_bytes: o.max_bytes,
        max_age: o.max_age,
        segment_bytes: o.segment_bytes,
        full_policy: o.full_policy,
        max_message_bytes: config.mqtt.max_message_bytes.saturating_sub(publish::PUBLISH_OVERHEAD),
    })
    .with_context(|| format!("opening the outbox in {} ([agent] state_dir)", outbox_dir.display()))?;
    if report.corrupt_records > 0 || report.torn_bytes > 0 || report.unreadable_segments > 0 {
        warn!(
            corrupt_records = report.corrupt_records,
            torn_bytes = report.torn_bytes,
            unreadable_segments = report.unreadable_segments,
            "outbox had damaged records (power cut? bad sectors?); skipped them and announce them as a gap"
        );
    }
    info!(pending = report.pending, dir = %outbox_dir.display(), "outbox open");
    let delivery = Arc::new(Delivery::new(outbox));
    let (site, agent_id) = (config.agent.site.clone(), config.agent.id.clone());
    let config_sha256 = crate::infer::model::sha256_file(&config.file).unwrap_or_default();
    let fleet = Arc::new(Fleet::new(&site, &agent_id, config_sha256));
    // Console (issue 8): what the installers' pages show; fed by the event stage, cameras
    // and models registered by the supervisor.
    let console = Arc::new(ConsoleHub::new());

    // Event stage: its own thread, as appends, fsyncs and snapshot encoding block.
    // Cameras join and leave it through `EventsCtl`, sent by the supervisor.
    let (tx, rx) = sync_channel::<Analysed>(ANALYSED_CHANNEL);
    let (events_ctl, events_ctl_rx) = std::sync::mpsc::channel::<EventsCtl>();
    let liveness = Liveness::default();
    let expected_threads = Arc::new(AtomicUsize::new(0));
    let events = {
        let (delivery, topics, site, agent_id) = (delivery.clone(), topics.clone(), site.clone(), agent_id.clone());
        let fsync = config.outbox.fsync_interval;
        let alive = liveness.guard();
        expected_threads.fetch_add(1, Ordering::SeqCst);
        let console = console.clone();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let _alive = alive;
                run_events(rx, events_ctl_rx, &delivery, &topics, &site, &agent_id, fsync, &console)
            })
            .context("spawning event thread")?
    };

    // Models and cameras: the supervisor starts them (restoring runtime changes) and
    // changes them on commands and SIGHUP.
    let mqtt_config = config.mqtt.clone();
    let mut guard = crate::control::signed::CommandGuard::new(
        config.control.trusted_keys.clone(),
        config.control.require_signed,
        crate::control::signed::agent_name(&config.agent.site, &config.agent.id),
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Some(w) = guard.persist_in(config.agent.state_dir.join("runtime").join("command-nonces.json"), now) {
        warn!("{w}");
    }
    let listen = config.telemetry.listen;
    let console_token = config.telemetry.console_token.as_ref().map(|t| t.expose().to_string());
    let supervisor = Supervisor::start(
        config,
        Deps {
            env,
            fleet: fleet.clone(),
            analysed: tx,
            events: events_ctl,
            liveness: liveness.clone(),
            expected_threads: expected_threads.clone(),
            topics: topics.clone(),
            shutdown: shutdown.clone(),
            console: console.clone(),
        },
    )
    .await?;
    let (requests_tx, requests_rx) = tokio::sync::mpsc::channel(CONTROL_QUEUE);

    // Publishing: its own token so it outlives the cameras and drains last.
    let mqtt_stop = CancellationToken::new();
    let presence = Presence { fleet: fleet.clone(), requests: requests_tx, guard: std::sync::Mutex::new(guard) };
    let mqtt_task = publish::spawn(mqtt_config, delivery.clone(), presence, mqtt_stop.clone(), grace);
    // The MQTT task and the supervisor count as workers too: if either ends early (a
    // panic), the watchdog ping is withheld and /healthz fails, as for a dead thread.
    expected_threads.fetch_add(2, Ordering::SeqCst);
    let mqtt_task = liveness.watch(mqtt_task);
    let supervisor_task = liveness.watch(tokio::spawn(supervisor.run(requests_rx)));

    info!(cameras = fleet.cameras().len(), "agent running");
    let health = Arc::new(Health {
        fleet: fleet.clone(),
        delivery: delivery.clone(),
        expected_threads,
        liveness: liveness.clone(),
        ready: std::sync::atomic::AtomicBool::new(false),
        listener: Default::default(),
    });
    let health_task = tokio::spawn(health_loop(health.clone(), shutdown.clone()));
    let http = listen.map(|addr| {
        let (health, console, token) = (health.clone(), console.clone(), console_token.clone());
        tokio::spawn(telemetry::http::serve(addr, health, Some(console), token, shutdown.clone()))
    });

    shutdown.cancelled().await;
    info!("shutting down");
    telemetry::systemd::stopping();
    let _ = health_task.await;
    if let Some(h) = http {
        let _ = h.await;
    }
    // Cameras stop, inference workers finish their batch; then the event thread sees
    // its inputs close, ends every track and syncs the outbox.
    let _ = supervisor_task.await;
    let _ = tokio::task::spawn_blocking(move || {
        let _ = events.join();
    })
    .await;
    mqtt_stop.cancel();
    let _ = mqtt_task.await;
    let cameras = fleet.cameras();

    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let cameras = cameras
        .iter()
        .map(|c| CameraSummary {
            camera: c.id.clone(),
            encoded_frames: l(&c.stats.encoded_frames),
            decoded_frames: l(&c.stats.decoded_frames),
            sampled_frames: l(&c.stats.sampled_frames),
            replaced_frames: l(&c.stats.replaced_frames),
            analysed_frames: l(&c.stats.analysed_frames),
            messages: l(&c.stats.messages),
            restarts: l(&c.stats.restarts),
        })
        .collect();
    let ostats = delivery.outbox().stats();
    Ok(Summary {
        cameras,
        mqtt_acked: l(&delivery.stats.acked),
        outbox_pending: ostats.pending_records,
        outbox_dropped: ostats.dropped_total,
    })
}

/// The event stage: analysed frames become messages appended to the outbox (per-frame
/// detections, then each camera's tracks, rules and snapshots; counts on their interval).
/// Syncs the outbox at most every `fsync` (0: after every message) and wakes the MQTT
/// task when more is on disk; expires old messages; announces every drop as `delivery.gap`.
/// At the end every camera's tracks end and its partial counts go out. The console keeps
/// copies of what it shows (see `console`).
#[allow(clippy::too_many_arguments)]
fn run_events(
    rx: Receiver<Analysed>,
    ctl: Receiver<EventsCtl>,
    delivery: &Delivery,
    topics: &Topics,
    site: &str,
    agent: &str,
    fsync: Duration,
    console: &ConsoleHub,
) {
    let mut stages: BTreeMap<String, (Arc<CameraCtx>, CameraEvents)> = BTreeMap::new();
    let mut last_tick = Instant::now();
    let mut gaps = GapAnnouncer::default();
    let mut last_sync = Instant::now();
    let mut last_expire = Instant::now();
    let mut last_announce: Option<Instant> = None;
    let mut sync_failures = 0u64;
    let mut open = true;
    while open {
        // Cameras joining and leaving (the supervisor); a leaving camera ends its tracks
        // and sends its partial counts, as at shutdown.
        while let Ok(c) = ctl.try_recv() {
            match c {
                EventsCtl::Add(ctx, stage) => {
                    stages.insert(ctx.id.clone(), (ctx, *stage));
                }
                EventsCtl::Remove(ctx) => {
                    if stages.get(&ctx.id).is_some_and(|(c, _)| Arc::ptr_eq(c, &ctx))
                        && let Some((ctx, mut stage)) = stages.remove(&ctx.id)
                    {
                        append_outgoing(delivery, &ctx, topics, stage.finish(SystemTime::now()), console);
                    }
                }
            }
        }
        match rx.recv_timeout(fsync.clamp(Duration::from_millis(10), Duration::from_secs(1))) {
            Ok(a) => {
                if a.detections.iter().any(|d| d.score >= a.camera.min_score) {
                    let topic = topics.detections(&a.camera.id);
                    append(delivery, &a.camera, &topic, |seq| detections_message(&a, site, agent, seq));
                }
                // Frames analysed for a camera since removed (or replaced) have no stage.
                if let Some((ctx, stage)) = stages.get_mut(&a.camera.id)
                    && Arc::ptr_eq(ctx, &a.camera)
                {
                    append_outgoing(delivery, &a.camera, topics, stage.on_frame(&a), console);
                    a.camera.live_tracks.store(stage.held_tracks(), Ordering::Relaxed);
                    console.on_frame(&a, stage.tracks());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        if last_tick.elapsed() >= Duration::from_millis(250) || !open {
            let now = SystemTime::now();
            for (ctx, stage) in stages.values_mut() {
                let outs = if open { stage.tick(now) } else { stage.finish(now) };
                append_outgoing(delivery, ctx, topics, outs, console);
                ctx.live_tracks.store(stage.held_tracks(), Ordering::Relaxed);
            }
            last_tick = Instant::now();
        }
        if last_expire.elapsed() >= Duration::from_secs(60) {
            if let Err(e) = delivery.outbox().expire(SystemTime::now()) {
                warn!(error = %e, "cannot expire old outbox records");
            }
            last_expire = Instant::now();
        }
        collect_gaps(delivery, &mut gaps);
        // Coalesce announcements: while the outbox is full each one costs a record.
        if !gaps.is_idle() && (!open || last_announce.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))) {
            announce_gaps(delivery, &mut gaps, topics, site, agent);
            last_announce = Some(Instant::now());
        }
        // Last round: appending a gap message into a full outbox can drop older records
        // (even an earlier gap message); announce until nothing is left unannounced. Each
        // round merges ranges, so this settles in a few rounds.
        let mut rounds = 0;
        while !open && !gaps.is_idle() && rounds < 16 {
            announce_gaps(delivery, &mut gaps, topics, site, agent);
            rounds += 1;
        }
        let needs_sync = delivery.outbox().needs_sync();
        if needs_sync && (!open || last_sync.elapsed() >= fsync) {
            // Outside the outbox lock: async tasks keep acking and reading meanwhile.
            match delivery.sync() {
                Ok(()) => sync_failures = 0,
                Err(e) => {
                    sync_failures += 1;
                    // Retried every interval: say so once, then now and then.
                    if sync_failures % 100 == 1 {
                        error!(error = %e, failures_in_a_row = sync_failures, "cannot sync the outbox to disk; nothing new is published until it works");
                    }
                }
            }
            last_sync = Instant::now();
            delivery.wake.notify_one();
        }
    }
}

/// Appends one message, counting it for its camera; returns its `seq` when it is in the
/// outbox. A message that used up its seq without being stored (refused when full, too
/// large, its write failed) is counted by the outbox and announced as a gap like any
/// other drop.
fn append(delivery: &Delivery, camera: &CameraCtx, topic: &str, build: impl FnOnce(u64) -> Vec<u8>) -> Option<u64> {
    match delivery.append(topic, build) {
        Ok(seq) => {
            camera.stats.messages.fetch_add(1, Ordering::Relaxed);
            Some(seq)
        }
        Err(OutboxError::Refused { seq }) => {
            warn!(camera = %camera.id, seq, "outbox full: message refused (full_policy = drop_newest)");
            None
        }
        Err(e @ OutboxError::WriteFailed { .. }) => {
            // A full or failing disk fails every append: log the first and then now and then.
            let failures = delivery.outbox().stats().write_failures_total;
            if failures % 100 == 1 {
                error!(camera = %camera.id, error = %e, write_failures_total = failures, "cannot write to the outbox; the messages are announced as lost");
            }
            None
        }
        Err(e) => {
            error!(camera = %camera.id, error = %e, "cannot append a message to the outbox");
            None
        }
    }
}

/// Appends a camera's messages in order; an event gets the `seq` of the snapshot
/// appended just before it. The console keeps a copy of events, counts and snapshots.
fn append_outgoing(
    delivery: &Delivery,
    camera: &CameraCtx,
    topics: &Topics,
    outs: Vec<Outgoing>,
    console: &ConsoleHub,
) {
    let mut snapshot_seq = None;
    // Width and height of a snapshot made smaller to fit, for the event that names it.
    let mut shrunk: Option<(u32, u32)> = None;
    let max_message = delivery.outbox().max_message_bytes();
    for mut out in outs {
        let is_snapshot = matches!(out, Outgoing::Snapshot { .. });
        match &mut out {
            Outgoing::Snapshot { topic, jpeg } => {
                shrunk = None;
                let room = max_message.saturating_sub(topic.len() as u64);
                if jpeg.bytes.len() as u64 > room {
                    match snapshot::shrink(jpeg, room as usize) {
                        Some(j) => {
                            shrunk = Some((j.width, j.height));
                            *jpeg = Arc::new(j);
                        }
                        None => {
                            // Left out: the event that follows goes without a snapshot.
                            warn!(camera = %camera.id, bytes = jpeg.bytes.len(), max = room, "snapshot too large for an MQTT message even made smaller; leaving it out");
                            snapshot_seq = None;
                            continue;
                        }
                    }
                }
            }
            Outgoing::Event(m) => {
                if let (Some((w, h)), Some(s)) = (shrunk.take(), m.snapshot.as_mut()) {
                    (s.width, s.height) = (w, h);
                }
            }
            Outgoing::Counts(_) => {}
        }
        let kind = console::Kind::of(&out);
        let mut kept = None;
        let seq = append(delivery, camera, &out.topic(topics), |seq| {
            let payload = out.into_payload(seq, snapshot_seq);
            kept = kind.wants_payload().then(|| payload.clone());
            payload
        });
        if seq.is_some() {
            console.on_message(&camera.id, kind, kept);
        }
        snapshot_seq = if is_snapshot { seq } else { None };
    }
}

/// Tells systemd when the agent is ready (first MQTT connection, or after a while without
/// one: the outbox buffers meanwhile), keeps its status line current, and pings the
/// watchdog only while healthy (every inference and event thread alive, the outbox's disk
/// working), so a dead thread or a failing disk gets the service restarted.
async fn health_loop(health: Arc<Health>, shutdown: CancellationToken) {
    let started = Instant::now();
    let watchdog = telemetry::systemd::watchdog_interval();
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
        if !health.ready.load(Ordering::Relaxed)
            && (connected || started.elapsed() >= telemetry::READY_WITHOUT_MQTT_AFTER)
        {
            health.ready.store(true, Ordering::Relaxed);
            telemetry::systemd::ready(&status);
        } else {
            telemetry::systemd::status(&status);
        }
        if health.healthy() {
            if watchdog.is_some() {
                telemetry::systemd::watchdog();
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

/// Takes what the outbox dropped since the last call.
fn collect_gaps(delivery: &Delivery, gaps: &mut GapAnnouncer) {
    let mut outbox = delivery.outbox();
    for gap in outbox.take_gaps() {
        let reason = gap.reason.as_str();
        warn!(
            first_seq = gap.first,
            last_seq = gap.last,
            count = gap.count,
            reason,
            "messages dropped from the outbox"
        );
        gaps.dropped(gap.first, gap.last, reason);
    }
    let stats = outbox.stats();
    gaps.delivered_below(outbox.first_pending_seq().unwrap_or(stats.next_seq));
}

/// Appends one `delivery.gap` message per range waiting to be announced.
fn announce_gaps(delivery: &Delivery, gaps: &mut GapAnnouncer, topics: &Topics, site: &str, agent: &str) {
    for r in gaps.take() {
        let Range { first, last, reason } = r;
        let appended =
            delivery.append(&topics.delivery(), |seq| gap_message(site, agent, seq, first, last, r.count(), reason));
        match appended {
            Ok(seq) => gaps.sent(seq, r),
            Err(e) => {
                // Refused or a failed write (its own seq is a new gap, merged with this
                // one when adjacent): kept here and tried again later, until the disk
                // takes it.
                warn!(error = %e, "cannot append the delivery.gap message yet");
                gaps.add(r);
            }
        }
    }
    collect_gaps(delivery, gaps);
}
