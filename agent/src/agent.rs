//! Wires the stages together and runs them until shutdown, then drains them in flow
//! order: cameras stop → inference finishes its batch → the event stage hands every
//! message to MQTT → MQTT waits (up to the grace period) for their acknowledgements.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::event::{Topics, detections_message};
use crate::infer::queue::FrameQueue;
use crate::infer::{self, Analysed, Detector};
use crate::publish::Publisher;
use crate::source::{self, CameraCtx, FrameFormat};

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
    pub mqtt_acked: u64,
}

/// Runs the agent until `shutdown` is cancelled; `grace` bounds the drain.
pub async fn run(config: Config, shutdown: CancellationToken, grace: Duration) -> anyhow::Result<Summary> {
    source::init()?;
    let env = infer::runtime::environment(config.agent.onnxruntime.as_deref())?;

    // Models: one detector, queue and worker thread per model some camera uses.
    let (tx, mut rx) = mpsc::channel::<Analysed>(ANALYSED_CHANNEL);
    let mut queues: HashMap<String, (Arc<FrameQueue>, FrameFormat)> = HashMap::new();
    let mut workers = Vec::new();
    for m in &config.models {
        if !config.cameras.iter().any(|c| c.model == m.name) {
            continue;
        }
        let det =
            Detector::new(&m.spec, &config.inference, &env).with_context(|| format!("loading model {}", m.name))?;
        let (h, w) = m.spec.input_size();
        let queue = Arc::new(FrameQueue::new());
        let (q, out, max_batch) = (queue.clone(), tx.clone(), config.inference.max_batch);
        let handle = std::thread::Builder::new()
            .name(format!("infer-{}", m.name))
            .spawn(move || infer::run_worker(det, q, max_batch, out))
            .context("spawning inference thread")?;
        info!(model = %m.name, version = %m.spec.version, sha256 = %m.spec.sha256, "model loaded");
        workers.push(handle);
        queues.insert(m.name.clone(), (queue, FrameFormat { width: w, height: h }));
    }
    drop(tx);

    // Publishing: its own token so it outlives the cameras and drains last.
    let mqtt_stop = CancellationToken::new();
    let (publisher, mqtt_task) = Publisher::start(&config.mqtt, mqtt_stop.clone(), grace);

    // Cameras: one named task each.
    let mut cameras = Vec::new();
    let mut camera_tasks = Vec::new();
    for cam in &config.cameras {
        let Some((queue, format)) = queues.get(&cam.model) else { continue };
        let min_score = cam
            .min_score
            .unwrap_or_else(|| config.model(&cam.model).map_or(0.5, |m| m.spec.postprocess.score_threshold));
        let ctx = Arc::new(CameraCtx::new(&cam.id, min_score));
        let slot = queue.register();
        cameras.push(ctx.clone());
        camera_tasks.push(tokio::spawn(source::run(cam.clone(), ctx, *format, queue.clone(), slot, shutdown.clone())));
    }
    info!(cameras = cameras.len(), "agent running");

    // Event stage: analysed frames to messages to MQTT.
    let topics = Topics::new(&config.agent.site, &config.agent.id);
    let (site, agent_id) = (config.agent.site.clone(), config.agent.id.clone());
    let events = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                let Some(payload) = detections_message(&a, &site, &agent_id) else { continue };
                if let Err(e) = publisher.publish(topics.detections(&a.camera.id), payload).await {
                    error!(error = %e, "cannot hand message to MQTT");
                    break;
                }
                a.camera.stats.messages.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    shutdown.cancelled().await;
    info!("shutting down");
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
    })
    .await;
    let _ = events.await;
    mqtt_stop.cancel();
    let _ = mqtt_task.await;

    let cameras = cameras
        .iter()
        .map(|c| {
            let s = &c.stats;
            let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            CameraSummary {
                camera: c.id.clone(),
                encoded_frames: l(&s.encoded_frames),
                decoded_frames: l(&s.decoded_frames),
                sampled_frames: l(&s.sampled_frames),
                replaced_frames: l(&s.replaced_frames),
                analysed_frames: l(&s.analysed_frames),
                messages: l(&s.messages),
                restarts: l(&s.restarts),
            }
        })
        .collect();
    Ok(Summary { cameras, mqtt_acked: publisher.stats.acked.load(Ordering::Relaxed) })
}
