//! Wires the stages together and runs them until shutdown, then drains them in flow
//! order: cameras stop → inference finishes its batch → the event stage appends every
//! message to the outbox and syncs it → MQTT delivers what it can within the grace
//! period (the rest stays in the outbox for the next start).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::console::ConsoleHub;
use crate::control::ControlPlane;
use crate::control::supervisor::{Deps, Supervisor};
use crate::control::{self, inventory::Inventory};
use crate::event::{self, Topics};
use crate::infer::{self, Analysed};
use crate::publish::outbox::{Outbox, OutboxConfig};
use crate::publish::{self, Delivery};
use crate::source;
use crate::telemetry::{self, Liveness, health::Health};

/// Per-camera counters at the end of a run.
#[derive(Debug, Serialize)]
pub struct CameraSummary {
    pub camera: String,
    pub encoded_frames: u64,
    pub decoded_frames: u64,
    pub sampled_frames: u64,
    pub replaced_frames: u64,
    pub undecoded_frames: u64,
    pub activity_skipped_frames: u64,
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
    let config_sha256 = crate::infer::manifest::sha256_file(&config.file).unwrap_or_default();
    let inventory = Arc::new(Inventory::new(&site, &agent_id, config_sha256));
    // The installers' console: what its pages show, fed by the event stage; cameras
    // and models registered by the supervisor.
    let console = Arc::new(ConsoleHub::new());

    // Event stage: its own thread, as appends, fsyncs and snapshot encoding block.
    // Cameras join and leave it through `EventsCtl`, sent by the supervisor.
    let (tx, rx) = sync_channel::<Analysed>(event::thread::ANALYSED_CHANNEL);
    let (events_ctl, events_ctl_rx) = std::sync::mpsc::channel::<event::thread::EventsCtl>();
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
                event::thread::run(rx, events_ctl_rx, &delivery, &topics, &site, &agent_id, fsync, &console)
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
    let viewer_token = config.telemetry.console_viewer_token.as_ref().map(|t| t.expose().to_string());
    // `[site]`: the site task joins the site and hands the supervisor its site cameras.
    let (site, site_task) = match config.site.clone() {
        Some(s) => {
            let models = config.models.iter().map(|m| m.name.clone()).collect();
            let (h, t) = crate::site::coordinator::spawn(s, &site, &agent_id, models, shutdown.clone());
            (Some(h), Some(t))
        }
        None => (None, None),
    };
    let site_state = site.as_ref().map(|h| h.state.clone());
    let site_handle = site.clone();
    let supervisor = Supervisor::start(
        config,
        Deps {
            env,
            inventory: inventory.clone(),
            analysed: tx,
            events: events_ctl,
            liveness: liveness.clone(),
            expected_threads: expected_threads.clone(),
            topics: topics.clone(),
            shutdown: shutdown.clone(),
            console: console.clone(),
            site,
        },
    )
    .await?;
    let (requests_tx, requests_rx) = tokio::sync::mpsc::channel(control::CONTROL_QUEUE);

    // Publishing: its own token so it outlives the cameras and drains last.
    let mqtt_stop = CancellationToken::new();
    // The console's editor queues its changes where MQTT commands go.
    let writer = crate::console::http::Writer::new(requests_tx.clone())?;
    let presence = ControlPlane {
        inventory: inventory.clone(),
        requests: requests_tx,
        guard: std::sync::Mutex::new(guard),
        site: site_state,
    };
    let mqtt_task = publish::spawn(mqtt_config, delivery.clone(), presence, mqtt_stop.clone(), grace);
    // The MQTT task and the supervisor count as workers too: if either ends early (a
    // panic), the watchdog ping is withheld and /healthz fails, as for a dead thread.
    expected_threads.fetch_add(2, Ordering::SeqCst);
    let mqtt_task = liveness.watch(mqtt_task);
    let supervisor_task = liveness.watch(tokio::spawn(supervisor.run(requests_rx)));

    info!(cameras = inventory.cameras().len(), "agent running");
    let health = Arc::new(Health {
        inventory: inventory.clone(),
        delivery: delivery.clone(),
        expected_threads,
        liveness: liveness.clone(),
        ready: std::sync::atomic::AtomicBool::new(false),
        listener: Default::default(),
        site: site_handle,
    });
    let health_task = tokio::spawn(telemetry::health::run(health.clone(), shutdown.clone()));
    let http = listen.map(|addr| {
        let (health, console, token) = (health.clone(), console.clone(), console_token.clone());
        let viewer = viewer_token.clone();
        tokio::spawn(telemetry::http::serve(addr, health, Some(console), token, viewer, Some(writer), shutdown.clone()))
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
    // With the site cameras stopped, the lease is revoked: others take them at once.
    if let Some(t) = site_task {
        let _ = t.await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        let _ = events.join();
    })
    .await;
    mqtt_stop.cancel();
    let _ = mqtt_task.await;
    let cameras = inventory.cameras();

    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let cameras = cameras
        .iter()
        .map(|c| CameraSummary {
            camera: c.id.clone(),
            encoded_frames: l(&c.stats.encoded_frames),
            decoded_frames: l(&c.stats.decoded_frames),
            sampled_frames: l(&c.stats.sampled_frames),
            replaced_frames: l(&c.stats.replaced_frames),
            undecoded_frames: l(&c.stats.undecoded_frames),
            activity_skipped_frames: l(&c.stats.activity_skipped_frames),
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
