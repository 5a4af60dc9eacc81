//! A model's worker threads (`[inference] workers`, one session each): each takes batches
//! across the model's cameras from their shared queue, runs them, and sends one
//! [`Analysed`] per frame to the events thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tracing::{debug, error, info};

use super::detection::Detection;
use super::detector::Detector;
use super::queue::{Claim, FrameQueue, Take};
use super::stats::ModelStats;
use crate::camera::CameraCtx;
use crate::latency::{STAGES, Stage};

/// One analysed frame: what the event stage turns into messages.
#[derive(Debug, Clone)]
pub struct Analysed {
    pub camera: Arc<CameraCtx>,
    pub captured: SystemTime,
    pub native_width: u32,
    pub native_height: u32,
    pub model_name: Arc<str>,
    pub model_version: Arc<str>,
    pub model_sha256: Arc<str>,
    pub labels: Arc<[String]>,
    /// At or above the camera's tracking floor (below `min_score`, see
    /// [`crate::camera::ScoreThresholds`]), highest first.
    pub detections: Vec<Detection>,
    /// The decoded frame, kept only when something was detected (snapshots need it) or
    /// the console watches the camera.
    pub original: Option<crate::camera::Original>,
    /// When its model run ended (stage timings, `crate::latency`).
    pub analysed_at: std::time::Instant,
}

/// A model's next session, handed to its worker thread (a model update or rollback).
///
/// The worker takes it between batches: the batch in flight finishes on the old session
/// and the next one runs on the new, so every analysed frame names the session that
/// really analysed it. The old session is dropped on the worker thread.
#[derive(Default)]
pub struct ModelSwap(std::sync::Mutex<Option<Detector>>);

impl ModelSwap {
    /// Queues `det` to replace the running session (replacing any swap not taken yet).
    pub fn put(&self, det: Detector) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(det);
    }

    pub(super) fn take(&self) -> Option<Detector> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A taken batch's claim on its cameras, released when dropped.
struct Held<'a> {
    queue: &'a FrameQueue,
    claim: Option<Claim>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.claim.take() {
            self.queue.release(c);
        }
    }
}

/// Runs a model's worker thread until its queue is closed and empty.
///
/// Returns when the queue closes or the output channel's receiver is gone.
#[allow(clippy::too_many_arguments)]
pub fn run_worker(
    mut det: Detector,
    swap: Arc<ModelSwap>,
    queue: Arc<FrameQueue>,
    max_batch: usize,
    max_wait: Duration,
    stats: Arc<ModelStats>,
    out: std::sync::mpsc::SyncSender<Analysed>,
) {
    info!(model = %det.name, version = %det.version, "inference worker started");
    loop {
        let (frames, _held) = match queue.take_batch(max_batch, Duration::from_millis(500), max_wait) {
            // Released when this iteration ends, however it ends (a panic or a closed
            // output included): only then may another worker take these cameras'
            // next frames, whose results then queue behind these in capture order.
            Take::Batch(f, c) => (f, Held { queue: &queue, claim: Some(c) }),
            Take::Idle => continue,
            Take::Closed => break,
        };
        // Checked after taking: a worker that waited for frames while another already
        // swapped must not analyse a camera on the old session after it ran on the new.
        if let Some(next) = swap.take() {
            info!(model = %next.name, from = %det.version, to = %next.version, sha256 = %next.sha256, "model swapped");
            det = next;
        }
        let started = std::time::Instant::now();
        let results = match det.detect(&frames) {
            Ok(r) => r,
            Err(e) => {
                // A failed batch loses those frames (video is lossy), never the worker.
                stats.failed_runs.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "inference failed");
                continue;
            }
        };
        let run = started.elapsed().as_secs_f64();
        stats.record(run, frames.len());
        let analysed_at = std::time::Instant::now();
        debug!(batch = frames.len(), "batch analysed");
        for (mut frame, detections) in frames.into_iter().zip(results) {
            frame.camera.stats.analysed_frames.fetch_add(1, Ordering::Relaxed);
            STAGES.record(Stage::Queue, started.saturating_duration_since(frame.sampled_at).as_secs_f64());
            STAGES.record(Stage::Inference, run);
            // Without detections no track can improve its snapshot: release the decoder's buffer
            // now, unless the console is showing this camera.
            let keep = !detections.is_empty() || frame.camera.watch.is_watched();
            let original = if keep { frame.original.take() } else { None };
            let a = Analysed {
                camera: frame.camera.clone(),
                captured: frame.captured,
                native_width: frame.native_width,
                native_height: frame.native_height,
                model_name: det.name.clone(),
                model_version: det.version.clone(),
                model_sha256: det.sha256.clone(),
                labels: det.labels.clone(),
                detections,
                original,
                analysed_at,
            };
            // Blocks while the event stage is behind: back-pressure, not loss.
            if out.send(a).is_err() {
                info!(model = %det.name, "output closed, inference worker stopping");
                return;
            }
        }
    }
    info!(model = %det.name, "inference worker stopped");
}
