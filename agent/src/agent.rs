//! Wires the stages together and runs them until shutdown, then drains them in flow
//! order: cameras stop → inference finishes its batch → the event stage appends every
//! message to the outbox and syncs it → MQTT delivers what it can within the grace
//! period (the rest stays in the outbox for the next start).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::console::{self, CameraInfo, ConsoleHub};
use crate::event::stage::{CameraEvents, CameraSpec, Outgoing};
use crate::event::{AgentInfo, ModelOut, Topics, detections_message, gap_message};
use crate::infer::queue::FrameQueue;
use crate::infer::{self, Analysed, Detector};
use crate::publish::gaps::{GapAnnouncer, Range};
use crate::publish::outbox::{GapReason, Outbox, OutboxConfig, OutboxError};
use crate::publish::{self, Delivery, Presence};
use crate::source::{self, CameraCtx, FrameFormat};
use crate::telemetry::{self, Liveness, http::Health};

/// Capacity of the inference → event channel, in analysed frames. When full, inference
/// waits (see `infer`).
pub const ANALYSED_CHANNEL: usize = 256;

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
    })
    .with_context(|| format!("opening the outbox in {} ([agent] state_dir)", outbox_dir.display()))?;
    if report.corrupt_records > 0 || report.torn_bytes > 0 {
        warn!(
            corrupt_records = report.corrupt_records,
            torn_bytes = report.torn_bytes,
            "outbox had damaged records (power cut?); skipped them"
        );
    }
    info!(pending = report.pending, dir = %outbox_dir.display(), "outbox open");
    let delivery = Arc::new(Delivery::new(outbox));
    let (site, agent_id) = (config.agent.site.clone(), config.agent.id.clone());

    // Console (issue 8): what the installers' pages show; fed by the event stage.
    let console = Arc::new(ConsoleHub::new());

    // Models: one detector, queue and worker thread per model some camera uses.
    let (tx, rx) = sync_channel::<Analysed>(ANALYSED_CHANNEL);
    let mut queues: HashMap<String, (Arc<FrameQueue>, FrameFormat)> = HashMap::new();
    let mut workers = Vec::new();
    let mut model_stats = Vec::new();
    let liveness = Liveness::default();
    let mut loaded = Vec::new();
    for m in &config.models {
        if !config.cameras.iter().any(|c| c.model == m.name) {
            continue;
        }
        let det =
            Detector::new(&m.spec, &config.inference, &env).with_context(|| format!("loading model {}", m.name))?;
        let (h, w) = m.spec.input_size();
        let queue = Arc::new(FrameQueue::new());
        let (q, out, max_batch) = (queue.clone(), tx.clone(), config.inference.max_batch);
        let max_wait = config.inference.max_wait;
        let stats = Arc::new(infer::ModelStats::new(&m.name));
        model_stats.push(stats.clone());
        let alive = liveness.guard();
        let handle = std::thread::Builder::new()
            .name(format!("infer-{}", m.name))
            .spawn(move || {
                let _alive = alive;
                infer::run_worker(det, q, max_batch, max_wait, stats, out)
            })
            .context("spawning inference thread")?;
        info!(model = %m.name, version = %m.spec.version, sha256 = %m.spec.sha256, "model loaded");
        loaded.push(ModelOut { name: m.name.clone(), version: m.spec.version.clone(), sha256: m.spec.sha256.clone() });
        workers.push(handle);
        queues.insert(m.name.clone(), (queue, FrameFormat { width: w, height: h }));
    }
    drop(tx);
    console.set_models(loaded); // console: re-call on a model swap

    // Cameras' contexts (their tasks start after MQTT, below).
    let mut cameras = Vec::new();
    for cam in &config.cameras {
        let min_score = cam
            .min_score
            .unwrap_or_else(|| config.model(&cam.model).map_or(0.5, |m| m.spec.postprocess.score_threshold));
        cameras.push(Arc::new(CameraCtx::new(&cam.id, min_score)));
    }

    // Event stage: its own thread, as appends, fsyncs and snapshot encoding block.
    let events = {
        let (delivery, topics, site, agent_id) = (delivery.clone(), topics.clone(), site.clone(), agent_id.clone());
        let fsync = config.outbox.fsync_interval;
        let stages: Vec<(Arc<CameraCtx>, CameraEvents)> = config
            .cameras
            .iter()
            .zip(&cameras)
            .filter_map(|(cam, ctx)| {
                let m = config.model(&cam.model)?;
                let spec = CameraSpec {
                    id: cam.id.clone(),
                    min_score: ctx.min_score,
                    lost_after: cam.lost_after,
                    count_interval: cam.count_interval,
                    rules: cam.rules.clone(),
                    snapshots: cam.snapshots,
                    labels: m.spec.labels.clone().into(),
                    model: ModelOut {
                        name: m.name.clone(),
                        version: m.spec.version.clone(),
                        sha256: m.spec.sha256.clone(),
                    },
                };
                // console: re-apply on runtime camera add/update (and remove_camera on remove)
                console.add_camera(&cam.id, CameraInfo::new(spec.model.clone(), &spec.labels, &cam.rules));
                Some((ctx.clone(), CameraEvents::new(spec, &site, &agent_id, topics.clone(), SystemTime::now())))
            })
            .collect();
        let alive = liveness.guard();
        let console = console.clone();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let _alive = alive;
                run_events(rx, stages, &delivery, &topics, &site, &agent_id, fsync, &console)
            })
            .context("spawning event thread")?
    };

    // Publishing: its own token so it outlives the cameras and drains last.
    let mqtt_stop = CancellationToken::new();
    let presence = Presence { info: agent_info(&config), cameras: cameras.clone() };
    let mqtt_task = publish::spawn(config.mqtt.clone(), delivery.clone(), presence, mqtt_stop.clone(), grace);

    let mut camera_tasks = Vec::new();
    for (cam, ctx) in config.cameras.iter().zip(&cameras) {
        let Some((queue, format)) = queues.get(&cam.model) else { continue };
        let slot = queue.register();
        camera_tasks.push(tokio::spawn(source::run(
            cam.clone(),
            ctx.clone(),
            *format,
            queue.clone(),
            slot,
            shutdown.clone(),
        )));
    }
    info!(cameras = cameras.len(), "agent running");
    let health = Arc::new(Health {
        cameras: cameras.clone(),
        models: model_stats,
        delivery: delivery.clone(),
        expected_threads: liveness.alive(),
        liveness: liveness.clone(),
        ready: std::sync::atomic::AtomicBool::new(false),
    });
    let health_task = tokio::spawn(health_loop(health.clone(), shutdown.clone()));
    let http = config.telemetry.listen.map(|addr| {
        let token = config.telemetry.console_token.as_ref().map(|t| t.expose().to_string());
        tokio::spawn(telemetry::http::serve(addr, health.clone(), Some(console.clone()), token, shutdown.clone()))
    });

    shutdown.cancelled().await;
    info!("shutting down");
    telemetry::systemd::stopping();
    let _ = health_task.await;
    if let Some(h) = http {
        let _ = h.await;
    }
    for t in camera_tasks {
        let _ = t.await;
    }
    for (q, _) in queues.values() {
        q.close();
    }
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
        let _ = events.join();
    })
    .await;
    mqtt_stop.cancel();
    let _ = mqtt_task.await;

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
/// At the end every camera's tracks end and its partial counts go out.
#[allow(clippy::too_many_arguments)] // console (issue 8) made it eight
fn run_events(
    rx: Receiver<Analysed>,
    mut stages: Vec<(Arc<CameraCtx>, CameraEvents)>,
    delivery: &Delivery,
    topics: &Topics,
    site: &str,
    agent: &str,
    fsync: Duration,
    console: &ConsoleHub,
) {
    let index: HashMap<String, usize> = stages.iter().enumerate().map(|(i, (c, _))| (c.id.clone(), i)).collect();
    let mut last_tick = Instant::now();
    let mut gaps = GapAnnouncer::default();
    let mut last_sync = Instant::now();
    let mut last_expire = Instant::now();
    let mut last_announce: Option<Instant> = None;
    let mut open = true;
    while open {
        match rx.recv_timeout(fsync.clamp(Duration::from_millis(10), Duration::from_secs(1))) {
            Ok(a) => {
                if a.detections.iter().any(|d| d.score >= a.camera.min_score) {
                    let topic = topics.detections(&a.camera.id);
                    append(delivery, &a.camera, &topic, |seq| detections_message(&a, site, agent, seq));
                }
                if let Some(&i) = index.get(&a.camera.id) {
                    append_outgoing(delivery, &a.camera, topics, stages[i].1.on_frame(&a), console);
                    a.camera.live_tracks.store(stages[i].1.held_tracks(), Ordering::Relaxed);
                    console.on_frame(&a, stages[i].1.tracks());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        if last_tick.elapsed() >= Duration::from_millis(250) || !open {
            let now = SystemTime::now();
            for (ctx, stage) in &mut stages {
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
            if let Err(e) = delivery.outbox().sync() {
                error!(error = %e, "cannot sync the outbox to disk");
            }
            last_sync = Instant::now();
            delivery.wake.notify_one();
        }
    }
}

/// Appends one message, counting it for its camera; returns its `seq`. A refusal
/// (outbox full with `drop_newest`) is counted and announced as a gap like any other drop.
fn append(delivery: &Delivery, camera: &CameraCtx, topic: &str, build: impl FnOnce(u64) -> Vec<u8>) -> Option<u64> {
    match delivery.outbox().append(topic, build) {
        Ok(seq) => {
            camera.stats.messages.fetch_add(1, Ordering::Relaxed);
            Some(seq)
        }
        Err(OutboxError::Refused { seq }) => {
            warn!(camera = %camera.id, seq, "outbox full: message refused (full_policy = drop_newest)");
            Some(seq)
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
    for out in outs {
        let is_snapshot = matches!(out, Outgoing::Snapshot { .. });
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
/// watchdog only while every inference and event thread is alive, so a dead one gets the
/// service restarted.
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
                alive = health.liveness.alive(),
                expected = health.expected_threads,
                "an inference or event thread has died; withholding the watchdog ping"
            );
        }
    }
}

/// Takes what the outbox dropped since the last call.
fn collect_gaps(delivery: &Delivery, gaps: &mut GapAnnouncer) {
    let mut outbox = delivery.outbox();
    for gap in outbox.take_gaps() {
        let reason = match gap.reason {
            GapReason::Full => "full",
            GapReason::Expired => "expired",
            GapReason::Corrupt => "corrupt",
        };
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
        let appended = delivery
            .outbox()
            .append(&topics.delivery(), |seq| gap_message(site, agent, seq, first, last, r.count(), reason));
        match appended {
            Ok(seq) => gaps.sent(seq, r),
            Err(e) => {
                // Refused (its own seq is a new gap) or an I/O error: try again later.
                warn!(error = %e, "cannot append the delivery.gap message yet");
                gaps.add(r);
            }
        }
    }
    collect_gaps(delivery, gaps);
}

fn agent_info(config: &Config) -> AgentInfo {
    let config_sha256 = crate::infer::model::sha256_file(&config.file).unwrap_or_default();
    AgentInfo {
        site: config.agent.site.clone(),
        agent: config.agent.id.clone(),
        started: SystemTime::now(),
        config_sha256,
        cameras: config
            .cameras
            .iter()
            .map(|c| {
                let (v, h) = config
                    .model(&c.model)
                    .map_or((String::new(), String::new()), |m| (m.spec.version.clone(), m.spec.sha256.clone()));
                (c.id.clone(), c.model.clone(), v, h)
            })
            .collect(),
    }
}
