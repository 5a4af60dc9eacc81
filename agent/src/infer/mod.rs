//! Inference: ONNX Runtime sessions, preprocessing, decoding, and the per-model worker
//! thread that batches frames across cameras.
//!
//! Each model gets one OS thread (`infer-<model>`) that owns its session: ONNX Runtime
//! calls block for tens of milliseconds and must never run on the async runtime's
//! workers. The thread takes batches from the model's [`queue::FrameQueue`] and sends one
//! [`Analysed`] per frame down a bounded channel; when that channel is full the thread
//! waits (messages are never dropped) and the cameras' latest-frame slots absorb the
//! delay by replacing frames (counted).

pub mod model;
pub mod queue;
pub mod runtime;
pub mod ssd;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ndarray::Array4;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use tracing::{debug, error, info};

use crate::config::InferenceConfig;
use crate::source::{CameraCtx, Frame};
use model::ModelSpec;
use queue::{FrameQueue, Take};
use ssd::{Detection, NmsParams};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("model {model}: ONNX Runtime cannot load {path}: {message}")]
    Load { model: String, path: String, message: String },
    #[error("model {model}: the model's {what} does not match its manifest: {message}")]
    Mismatch { model: String, what: &'static str, message: String },
    #[error("model {model}: inference failed on a batch of {batch}: {message}")]
    Run { model: String, batch: usize, message: String },
    #[error("model {model}: frame from camera {camera} is {got}, expected {expected}")]
    BadFrame { model: String, camera: String, got: String, expected: String },
}

/// Upper bounds (seconds) of the inference latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
/// Upper bounds of the batch size histogram's buckets.
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// A model's inference counters, read by `/metrics` (Prometheus histograms: cumulative
/// bucket counts are computed when rendering).
#[derive(Debug, Default)]
pub struct ModelStats {
    pub name: String,
    /// Per bucket of [`LATENCY_BUCKETS`] (non-cumulative), then +Inf.
    pub latency_buckets: [AtomicU64; 11],
    pub latency_sum_us: AtomicU64,
    /// Per bucket of [`BATCH_BUCKETS`] (non-cumulative), then +Inf.
    pub batch_buckets: [AtomicU64; 8],
    pub frames: AtomicU64,
    pub runs: AtomicU64,
    pub failed_runs: AtomicU64,
}

impl ModelStats {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), ..Self::default() }
    }

    fn record(&self, seconds: f64, batch: usize) {
        let i = LATENCY_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        let j = BATCH_BUCKETS.iter().position(|b| batch as u64 <= *b).unwrap_or(BATCH_BUCKETS.len());
        self.batch_buckets[j].fetch_add(1, Ordering::Relaxed);
        self.frames.fetch_add(batch as u64, Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
    }
}

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
    /// [`CameraCtx::track_floor`]), highest first.
    pub detections: Vec<Detection>,
    /// The decoded frame, kept only when something was detected (snapshots need it) or
    /// the console watches the camera.
    pub original: Option<crate::source::Original>,
}

/// An ONNX Runtime session for one model plus its pre- and post-processing.
pub struct Detector {
    session: Session,
    spec: ModelSpec,
    name: Arc<str>,
    version: Arc<str>,
    sha256: Arc<str>,
    labels: Arc<[String]>,
}

impl Detector {
    /// Loads the model into a new session. `threads` is ONNX Runtime's intra-op pool size.
    pub fn new(
        spec: &ModelSpec,
        cfg: &InferenceConfig,
        env: &ort::environment::Environment,
    ) -> Result<Self, InferError> {
        let load_err = |e: ort::Error| InferError::Load {
            model: spec.name.clone(),
            path: spec.path.display().to_string(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(env)
            .map_err(load_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(e.into()))?
            .with_intra_threads(cfg.threads)
            .map_err(|e| load_err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.into()))?
            .with_intra_op_spinning(cfg.spinning)
            .map_err(|e| load_err(e.into()))?
            .with_inter_op_spinning(false)
            .map_err(|e| load_err(e.into()))?;
        let session = builder.commit_from_file(&spec.path).map_err(load_err)?;
        let det = Detector {
            session,
            spec: spec.clone(),
            name: spec.name.as_str().into(),
            version: spec.version.as_str().into(),
            sha256: spec.sha256.as_str().into(),
            labels: spec.labels.clone().into(),
        };
        det.check_signature()?;
        Ok(det)
    }

    fn check_signature(&self) -> Result<(), InferError> {
        let mismatch = |what, message: String| InferError::Mismatch { model: self.spec.name.clone(), what, message };
        let inputs: Vec<&str> = self.session.inputs().iter().map(|i| i.name()).collect();
        if !inputs.contains(&self.spec.input.name.as_str()) {
            return Err(mismatch("input", format!("no input named {:?} (inputs: {inputs:?})", self.spec.input.name)));
        }
        let outputs: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        for want in [&self.spec.output.boxes, &self.spec.output.scores] {
            if !outputs.contains(&want.as_str()) {
                return Err(mismatch("outputs", format!("no output named {want:?} (outputs: {outputs:?})")));
            }
        }
        Ok(())
    }

    /// Fills `input[i]` from frame pixels: RGB bytes to `pixel * scale + offset`.
    fn preprocess(&self, frames: &[Frame]) -> Result<Array4<f32>, InferError> {
        let (h, w) = self.spec.input_size();
        let (scale, offset) = (self.spec.input.scale, self.spec.input.offset);
        let mut input = Array4::<f32>::zeros((frames.len(), h as usize, w as usize, 3));
        for (i, f) in frames.iter().enumerate() {
            let px = (*f.pixels).as_ref();
            let row_bytes = w as usize * 3;
            if f.width != w
                || f.height != h
                || f.stride < row_bytes
                || px.len() < f.stride * (h as usize - 1) + row_bytes
            {
                return Err(InferError::BadFrame {
                    model: self.spec.name.clone(),
                    camera: f.camera.id.clone(),
                    got: format!("{}x{} stride {} ({} bytes)", f.width, f.height, f.stride, px.len()),
                    expected: format!("{w}x{h} RGB"),
                });
            }
            let mut dst = input.index_axis_mut(ndarray::Axis(0), i);
            let Some(dst) = dst.as_slice_mut() else { continue };
            for (y, out_row) in dst.chunks_exact_mut(row_bytes).enumerate() {
                let src_row = &px[y * f.stride..y * f.stride + row_bytes];
                for (o, &s) in out_row.iter_mut().zip(src_row) {
                    *o = s as f32 * scale + offset;
                }
            }
        }
        Ok(input)
    }

    /// Runs the model on a prepared input batch and decodes each image's detections.
    pub fn run(&mut self, input: Array4<f32>, params: &[NmsParams]) -> Result<Vec<Vec<Detection>>, InferError> {
        let batch = input.shape()[0];
        let run_err = |e: ort::Error| InferError::Run { model: self.spec.name.clone(), batch, message: e.to_string() };
        let tensor = Tensor::from_array(input).map_err(run_err)?;
        let classes = self.spec.labels.len();
        let anchors = self.spec.output.anchors;
        let (boxes_name, scores_name) = (self.spec.output.boxes.clone(), self.spec.output.scores.clone());
        let input_name = self.spec.input.name.clone();
        let model = self.spec.name.clone();
        let outputs = self.session.run(ort::inputs![input_name => tensor]).map_err(|e| InferError::Run {
            model: model.clone(),
            batch,
            message: e.to_string(),
        })?;
        let extract = |name: &str| {
            outputs
                .get(name)
                .ok_or_else(|| InferError::Run { model: model.clone(), batch, message: format!("no output {name}") })?
                .try_extract_tensor::<f32>()
                .map(|(_, data)| data)
                .map_err(|e| InferError::Run { model: model.clone(), batch, message: e.to_string() })
        };
        let boxes = extract(&boxes_name)?;
        let scores = extract(&scores_name)?;
        let (bstride, sstride) = (anchors * 4, anchors * (classes + 1));
        if boxes.len() < batch * bstride || scores.len() < batch * sstride {
            return Err(InferError::Mismatch {
                model: model.clone(),
                what: "output shape",
                message: format!("{} boxes / {} scores for a batch of {batch}", boxes.len(), scores.len()),
            });
        }
        Ok((0..batch)
            .map(|i| {
                ssd::decode(
                    &boxes[i * bstride..(i + 1) * bstride],
                    &scores[i * sstride..(i + 1) * sstride],
                    classes,
                    &params[i.min(params.len().saturating_sub(1))],
                )
            })
            .collect())
    }

    /// Preprocesses and runs a batch of frames.
    pub fn detect(&mut self, frames: &[Frame]) -> Result<Vec<Vec<Detection>>, InferError> {
        let input = self.preprocess(frames)?;
        let params: Vec<NmsParams> = frames
            .iter()
            .map(|f| NmsParams {
                min_score: f.camera.track_floor(),
                iou: self.spec.postprocess.nms_iou,
                max_detections: self.spec.postprocess.max_detections,
            })
            .collect();
        self.run(input, &params)
    }
}

/// Runs a model's worker thread until its queue is closed and empty.
///
/// Returns when the queue closes or the output channel's receiver is gone.
pub fn run_worker(
    mut det: Detector,
    queue: Arc<FrameQueue>,
    max_batch: usize,
    max_wait: Duration,
    stats: Arc<ModelStats>,
    out: std::sync::mpsc::SyncSender<Analysed>,
) {
    info!(model = %det.name, version = %det.version, "inference worker started");
    loop {
        let frames = match queue.take_batch(max_batch, Duration::from_millis(500), max_wait) {
            Take::Batch(f) => f,
            Take::Idle => continue,
            Take::Closed => break,
        };
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
        stats.record(started.elapsed().as_secs_f64(), frames.len());
        debug!(batch = frames.len(), "batch analysed");
        for (mut frame, detections) in frames.into_iter().zip(results) {
            frame.camera.stats.analysed_frames.fetch_add(1, Ordering::Relaxed);
            // Without detections no track can improve its snapshot: release the decoder's buffer
            // now, unless the console is showing this camera (issue 8).
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
