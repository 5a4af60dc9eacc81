//! One model's ONNX Runtime session with its pre- and post-processing: load and check
//! against the manifest, self-test, preprocess a batch, run, decode.

use std::sync::Arc;
use std::time::SystemTime;

use ndarray::{Array4, ArrayViewMut3, Axis};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, TensorElementType, ValueType};

use super::detection::Detection;
use super::letterbox::Placement;
use super::manifest::{self, ModelSpec, OutputSpec};
use super::ssd::NmsParams;
use super::{decode, detection, letterbox, runtime, shapes, ssd};
use crate::camera::{CameraCtx, Frame};
use crate::config::{InferenceConfig, Provider};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("model {model}: ONNX Runtime cannot load {path}: {source}")]
    Load { model: String, path: String, source: ort::Error },
    #[error("model {model}: the model's {what} does not match its manifest: {message}")]
    Mismatch { model: String, what: &'static str, message: String },
    #[error("model {model}: inference failed on a batch of {batch}: {source}")]
    Run { model: String, batch: usize, source: ort::Error },
    /// The batch or the model's outputs are not what this code can use.
    #[error("model {model}: a batch of {batch} gave no usable result: {message}")]
    Output { model: String, batch: usize, message: String },
    #[error("model {model}: loading was interrupted: {source}")]
    LoadInterrupted { model: String, source: tokio::task::JoinError },
    #[error("model {model}: self-test failed: {message}")]
    SelfTest { model: String, message: String },
    #[error("model {model}: frame from camera {camera} is {got}, expected {expected}")]
    BadFrame { model: String, camera: String, got: String, expected: String },
    /// None of the providers the model lists could run it (and `"cpu"` was not listed).
    #[error("model {model}: no listed execution provider can run it: {reasons}")]
    NoProvider { model: String, reasons: String },
}

/// A prepared input batch, in the model's element type and layout.
#[derive(Debug, Clone)]
pub enum InputBatch {
    F32(Array4<f32>),
    U8(Array4<u8>),
}

impl InputBatch {
    /// Rows in the batch (its first dimension).
    pub fn len(&self) -> usize {
        match self {
            InputBatch::F32(a) => a.shape()[0],
            InputBatch::U8(a) => a.shape()[0],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An ONNX Runtime session for one model plus its pre- and post-processing.
pub struct Detector {
    pub(super) session: Session,
    pub(super) spec: ModelSpec,
    pub(super) name: Arc<str>,
    pub(super) version: Arc<str>,
    pub(super) sha256: Arc<str>,
    pub(super) labels: Arc<[String]>,
    /// The execution provider the session runs on.
    pub(super) provider: Provider,
}

impl Detector {
    /// Loads the model into a new session. `threads` is ONNX Runtime's intra-op pool size.
    ///
    /// Refuses ([`InferError::Mismatch`]) a model whose input or output names, element
    /// types or shapes disagree with its manifest.
    pub fn new(
        spec: &ModelSpec,
        cfg: &InferenceConfig,
        env: &ort::environment::Environment,
    ) -> Result<Self, InferError> {
        let load_err = |e: ort::Error| InferError::Load {
            model: spec.name.clone(),
            path: spec.path.display().to_string(),
            source: e,
        };
        let providers = if cfg.providers.is_empty() { &[Provider::Cpu][..] } else { &cfg.providers[..] };
        let mut refused: Vec<String> = Vec::new();
        let mut loaded = None;
        for &provider in providers {
            match session_on(spec, cfg, env, provider) {
                Ok(session) => {
                    loaded = Some((session, provider));
                    break;
                }
                // The CPU provider always registers: its failure is the model's own.
                Err(e) if provider == Provider::Cpu => return Err(load_err(e)),
                Err(e) => {
                    // A deliberate, logged decision, never ONNX Runtime's silent fallback.
                    let reason = e.to_string();
                    tracing::warn!(model = %spec.name, provider = provider.as_str(), reason = %reason, "execution provider cannot run the model; trying the next one listed");
                    refused.push(format!("{}: {reason}", provider.as_str()));
                }
            }
        }
        let Some((session, provider)) = loaded else {
            return Err(InferError::NoProvider { model: spec.name.clone(), reasons: refused.join("; ") });
        };
        if !refused.is_empty() || provider != Provider::Cpu {
            tracing::info!(model = %spec.name, provider = provider.as_str(), "execution provider chosen");
        }
        let det = Detector {
            session,
            spec: spec.clone(),
            name: spec.name.as_str().into(),
            version: spec.version.as_str().into(),
            sha256: spec.sha256.as_str().into(),
            labels: spec.labels.clone().into(),
            provider,
        };
        det.check_signature()?;
        Ok(det)
    }

    /// The execution provider running this model.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The manifest this detector was loaded from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn check_signature(&self) -> Result<(), InferError> {
        let mismatch = |what, message: String| InferError::Mismatch { model: self.spec.name.clone(), what, message };
        let inputs: Vec<&str> = self.session.inputs().iter().map(|i| i.name()).collect();
        let Some(input) = self.session.inputs().iter().find(|i| i.name() == self.spec.input.name) else {
            return Err(mismatch("input", format!("no input named {:?} (inputs: {inputs:?})", self.spec.input.name)));
        };
        let outputs: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        for want in self.spec.output.tensor_names() {
            if !outputs.contains(&want) {
                return Err(mismatch("outputs", format!("no output named {want:?} (outputs: {outputs:?})")));
            }
        }
        let dtype = match self.spec.input.dtype {
            manifest::DType::Float32 => TensorElementType::Float32,
            manifest::DType::Uint8 => TensorElementType::Uint8,
        };
        let (shape, ty) = tensor_info(input.dtype())
            .ok_or_else(|| mismatch("input type", format!("input {:?} is not a tensor", input.name())))?;
        if ty != dtype {
            return Err(mismatch(
                "input type",
                format!("input {:?} takes {ty:?}, the manifest says dtype {dtype:?}", input.name()),
            ));
        }
        shapes::check("input", input.name(), shape, &shapes::input(&self.spec))
            .map_err(|m| mismatch("input shape", m))?;
        for (name, want) in shapes::outputs(&self.spec) {
            let Some(o) = self.session.outputs().iter().find(|o| o.name() == name) else { continue };
            let (shape, ty) = tensor_info(o.dtype())
                .ok_or_else(|| mismatch("output type", format!("output {name:?} is not a tensor")))?;
            if ty != TensorElementType::Float32 {
                return Err(mismatch("output type", format!("output {name:?} is {ty:?}, expected Float32")));
            }
            shapes::check("output", name, shape, &want).map_err(|m| mismatch("output shape", m))?;
        }
        Ok(())
    }

    /// Fills one input row per frame (plus zero rows up to a fixed batch size) and
    /// says where each frame landed in the input.
    pub(super) fn preprocess(&self, frames: &[Frame]) -> Result<(InputBatch, Vec<Placement>), InferError> {
        let (h, w) = self.spec.input_size();
        let inp = &self.spec.input;
        let rows = frames.len().max(self.spec.fixed_batch().unwrap_or(0));
        let (hu, wu) = (h as usize, w as usize);
        let dims = match inp.layout {
            manifest::Layout::NHWC => (rows, hu, wu, 3),
            manifest::Layout::NCHW => (rows, 3, hu, wu),
        };
        let mut batch = match inp.dtype {
            manifest::DType::Float32 => InputBatch::F32(Array4::zeros(dims)),
            manifest::DType::Uint8 => InputBatch::U8(Array4::zeros(dims)),
        };
        let mut places = Vec::with_capacity(frames.len());
        let mut boxed = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let px = (*f.pixels).as_ref();
            let row_bytes = f.width as usize * 3;
            let stretch = inp.resize == manifest::Resize::Stretch;
            if (stretch && (f.width != w || f.height != h))
                || f.width == 0
                || f.height == 0
                || f.stride < row_bytes
                || px.len() < f.stride * (f.height as usize - 1) + row_bytes
            {
                return Err(InferError::BadFrame {
                    model: self.spec.name.clone(),
                    camera: f.camera.id.clone(),
                    got: format!("{}x{} stride {} ({} bytes)", f.width, f.height, f.stride, px.len()),
                    expected: if stretch { format!("{w}x{h} RGB") } else { "RGB".into() },
                });
            }
            let (src, stride, place) = if stretch {
                (px, f.stride, Placement::full(w, h))
            } else {
                let place = Placement::letterbox(f.native_width, f.native_height, w, h);
                boxed.resize(wu * hu * 3, 0);
                letterbox::letterbox(px, f.width, f.height, f.stride, &place, inp.pad_value, &mut boxed);
                (boxed.as_slice(), wu * 3, place)
            };
            let (scale, offset) = (inp.scale, inp.offset);
            match &mut batch {
                InputBatch::F32(a) => {
                    fill(a.index_axis_mut(Axis(0), i), inp.layout, src, stride, |v| f32::from(v) * scale + offset)
                }
                InputBatch::U8(a) => fill(a.index_axis_mut(Axis(0), i), inp.layout, src, stride, |v| v),
            }
            places.push(place);
        }
        Ok((batch, places))
    }

    /// Runs the model on a prepared batch and decodes the first `places.len()` images
    /// (rows beyond are padding for a fixed batch size), boxes mapped to their frames.
    pub fn run_batch(
        &mut self,
        input: InputBatch,
        params: &[NmsParams],
        places: &[Placement],
    ) -> Result<Vec<Vec<Detection>>, InferError> {
        let batch = input.len();
        let Detector { session, spec, .. } = self;
        let model = spec.name.clone();
        let run_err = |source: ort::Error| InferError::Run { model: model.clone(), batch, source };
        let output_err = |message: String| InferError::Output { model: model.clone(), batch, message };
        if places.len() > batch || params.is_empty() {
            return Err(output_err(format!(
                "{} frames and {} parameters for a batch of {batch}",
                places.len(),
                params.len()
            )));
        }
        let tensor = match input {
            InputBatch::F32(a) => Tensor::from_array(a).map(|t| t.into_dyn()),
            InputBatch::U8(a) => Tensor::from_array(a).map(|t| t.into_dyn()),
        }
        .map_err(run_err)?;
        let outputs = session.run(ort::inputs![spec.input.name.as_str() => tensor]).map_err(run_err)?;
        let extract = |name: &str| {
            let (shape, data) = outputs
                .get(name)
                .ok_or_else(|| output_err(format!("no output {name}")))?
                .try_extract_tensor::<f32>()
                .map_err(run_err)?;
            Ok::<_, InferError>((shape.to_vec(), data))
        };
        // Per image: the slice of `data` holding image i, `per` values each.
        let short = |name: &str, got: usize, per: usize| InferError::Mismatch {
            model: model.clone(),
            what: "output shape",
            message: format!("output {name:?} holds {got} values, a batch of {batch} needs {}", batch * per),
        };
        let labels = spec.labels.len();
        let param = |i: usize| params[i.min(params.len().saturating_sub(1))];
        let results = match &spec.output {
            OutputSpec::SsdDecoded { boxes, scores, anchors } => {
                let (_, b) = extract(boxes)?;
                let (_, s) = extract(scores)?;
                let (bs, ss) = (anchors * 4, anchors * (labels + 1));
                if b.len() < batch * bs {
                    return Err(short(boxes, b.len(), bs));
                }
                if s.len() < batch * ss {
                    return Err(short(scores, s.len(), ss));
                }
                places
                    .iter()
                    .enumerate()
                    .map(|(i, pl)| ssd::decode_placed(&b[i * bs..][..bs], &s[i * ss..][..ss], labels, pl, &param(i)))
                    .collect()
            }
            OutputSpec::Tfod { boxes, scores, classes, num_detections } => {
                let (shape, b) = extract(boxes)?;
                let k = shape.get(1).copied().unwrap_or(0).max(0) as usize;
                let (_, s) = extract(scores)?;
                let (_, c) = extract(classes)?;
                let (_, n) = extract(num_detections)?;
                for (name, got, per) in [(boxes, b.len(), k * 4), (scores, s.len(), k), (classes, c.len(), k)] {
                    if got < batch * per {
                        return Err(short(name, got, per));
                    }
                }
                if n.len() < batch {
                    return Err(short(num_detections, n.len(), 1));
                }
                places
                    .iter()
                    .enumerate()
                    .map(|(i, pl)| {
                        let (bi, si, ci) = (&b[i * k * 4..][..k * 4], &s[i * k..][..k], &c[i * k..][..k]);
                        decode::tfod(bi, si, ci, n[i], labels, pl, &param(i))
                    })
                    .collect()
            }
            OutputSpec::Yolov8 { output, anchors } | OutputSpec::Yolov5 { output, anchors } => {
                let (_, o) = extract(output)?;
                let v8 = matches!(spec.output, OutputSpec::Yolov8 { .. });
                let per = anchors * if v8 { 4 + labels } else { 5 + labels };
                if o.len() < batch * per {
                    return Err(short(output, o.len(), per));
                }
                places
                    .iter()
                    .enumerate()
                    .map(|(i, pl)| {
                        let oi = &o[i * per..][..per];
                        if v8 {
                            decode::yolov8(oi, labels, *anchors, pl, &param(i))
                        } else {
                            decode::yolov5(oi, labels, *anchors, pl, &param(i))
                        }
                    })
                    .collect()
            }
        };
        Ok(results)
    }

    /// Preprocesses and runs a batch of frames (in runs of the model's fixed batch
    /// size, if it has one).
    pub fn detect(&mut self, frames: &[Frame]) -> Result<Vec<Vec<Detection>>, InferError> {
        let chunk = self.spec.fixed_batch().unwrap_or(frames.len()).max(1);
        let mut out = Vec::with_capacity(frames.len());
        for part in frames.chunks(chunk) {
            let (input, places) = self.preprocess(part)?;
            let params: Vec<NmsParams> = part
                .iter()
                .map(|f| NmsParams {
                    score_floor: f.camera.scores.track_floor,
                    iou: self.spec.postprocess.nms_iou,
                    max_detections: self.spec.postprocess.max_detections,
                })
                .collect();
            out.extend(self.run_batch(input, &params, &places)?);
        }
        Ok(out)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Runs one inference on a plain grey frame before the session is trusted with
    /// cameras: a model that loads but cannot run (missing kernels, outputs that do not
    /// decode) fails here, not on the first camera frame.
    pub fn self_test(&mut self) -> Result<(), InferError> {
        let (h, w) = self.spec.input_size();
        let inp = &self.spec.input;
        let rows = self.spec.fixed_batch().unwrap_or(1).max(1);
        let (hu, wu) = (h as usize, w as usize);
        let dims = match inp.layout {
            manifest::Layout::NHWC => (rows, hu, wu, 3),
            manifest::Layout::NCHW => (rows, 3, hu, wu),
        };
        let grey = match inp.dtype {
            manifest::DType::Float32 => InputBatch::F32(Array4::from_elem(dims, 128.0 * inp.scale + inp.offset)),
            manifest::DType::Uint8 => InputBatch::U8(Array4::from_elem(dims, 128u8)),
        };
        let params = NmsParams {
            score_floor: self.spec.postprocess.score_threshold,
            iou: self.spec.postprocess.nms_iou,
            max_detections: self.spec.postprocess.max_detections,
        };
        let out = self.run_batch(grey, &[params], &[Placement::full(w, h)]).map_err(|e| match e {
            // Outputs of another shape than the manifest says: name it as such.
            InferError::Mismatch { .. } => e,
            e => InferError::SelfTest { model: self.spec.name.clone(), message: e.to_string() },
        })?;
        if out.len() != 1 {
            return Err(InferError::SelfTest {
                model: self.spec.name.clone(),
                message: format!("{} results for 1 image", out.len()),
            });
        }
        if let Some(t) = self.spec.self_test.clone() {
            self.reference_test(&t)?;
        }
        Ok(())
    }

    /// `n` copies of a still image as camera frames of a camera with `min_score`: stretched
    /// to the input size (the image crate's bilinear filter, where a camera has
    /// GStreamer's), so that [`Detector::detect`] gives them this model's own
    /// preprocessing, element type and layout. For the self-test, `lookout probe` and the
    /// benchmarks.
    pub fn image_frames(&self, img: &image::RgbImage, n: usize, min_score: f32) -> Vec<Frame> {
        let (h, w) = self.spec.input_size();
        let small = image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle).into_raw();
        let camera = Arc::new(CameraCtx::new("still", min_score));
        (0..n)
            .map(|i| Frame {
                slot: i,
                camera: camera.clone(),
                pts_ns: 0,
                captured: SystemTime::now(),
                native_width: img.width(),
                native_height: img.height(),
                width: w,
                height: h,
                stride: w as usize * 3,
                pixels: Box::new(small.clone()),
                original: None,
                sampled_at: std::time::Instant::now(),
            })
            .collect()
    }

    /// The manifest's `[self_test]`: the reference image goes through the same path as a
    /// camera frame (stretched to the input size, then this model's preprocessing), and
    /// every expected detection must be found.
    fn reference_test(&mut self, t: &manifest::SelfTest) -> Result<(), InferError> {
        let name = self.spec.name.clone();
        let fail = |message: String| InferError::SelfTest { model: name.clone(), message };
        let img = image::open(&t.image).map_err(|e| fail(format!("{}: {e}", t.image.display())))?.to_rgb8();
        let floor = t
            .expect
            .iter()
            .map(|e| e.min_score.unwrap_or(self.spec.postprocess.score_threshold))
            .fold(self.spec.postprocess.score_threshold, f32::min);
        let frame = self.image_frames(&img, 1, floor).pop().ok_or_else(|| fail("no frame".into()))?;
        let found = self.detect(std::slice::from_ref(&frame))?.into_iter().next().unwrap_or_default();
        for e in &t.expect {
            let min_score = e.min_score.unwrap_or(self.spec.postprocess.score_threshold);
            let want = detection::BBox { x: e.bbox[0], y: e.bbox[1], w: e.bbox[2], h: e.bbox[3] };
            let hit = found.iter().any(|d| {
                self.spec.labels.get(d.class_id as usize) == Some(&e.label)
                    && d.score >= min_score
                    && d.bbox.iou(&want) >= e.min_iou
            });
            if !hit {
                let seen: Vec<String> = found
                    .iter()
                    .map(|d| {
                        let label = self.spec.labels.get(d.class_id as usize).map_or("?", String::as_str);
                        format!(
                            "{label} {:.2} [{:.3}, {:.3}, {:.3}, {:.3}]",
                            d.score, d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h
                        )
                    })
                    .collect();
                return Err(fail(format!(
                    "expected {} (score ≥ {min_score}, IoU ≥ {}) at {:?} in {}; found {seen:?}",
                    e.label,
                    e.min_iou,
                    e.bbox,
                    t.image.display()
                )));
            }
        }
        Ok(())
    }
}

/// The element type and shape of a tensor outlet.
fn tensor_info(t: &ValueType) -> Option<(&[i64], TensorElementType)> {
    let shape: &[i64] = t.tensor_shape()?;
    Some((shape, t.tensor_type()?))
}

/// Copies packed RGB rows (`stride` bytes apart) into one input row of the model.
fn fill<T: Copy>(
    dst: ArrayViewMut3<'_, T>,
    layout: manifest::Layout,
    src: &[u8],
    stride: usize,
    conv: impl Fn(u8) -> T,
) {
    let (h, w) = match layout {
        manifest::Layout::NHWC => (dst.shape()[0], dst.shape()[1]),
        manifest::Layout::NCHW => (dst.shape()[1], dst.shape()[2]),
    };
    let Some(dst) = dst.into_slice() else { return };
    let row_bytes = w * 3;
    match layout {
        manifest::Layout::NHWC => {
            for (y, out_row) in dst.chunks_exact_mut(row_bytes).enumerate() {
                for (o, &s) in out_row.iter_mut().zip(&src[y * stride..y * stride + row_bytes]) {
                    *o = conv(s);
                }
            }
        }
        manifest::Layout::NCHW => {
            let plane = h * w;
            for y in 0..h {
                let src_row = &src[y * stride..y * stride + row_bytes];
                for (x, px) in src_row.chunks_exact(3).enumerate() {
                    for (c, &s) in px.iter().enumerate() {
                        dst[c * plane + y * w + x] = conv(s);
                    }
                }
            }
        }
    }
}

/// A session for `spec` on `provider` alone: the provider is registered with
/// `error_on_failure`, so a provider that cannot load is an error here, never a silent run
/// on the CPU. Plugin providers (ONNX Runtime's `RegisterExecutionProviderLibrary`) are
/// taken from the environment's devices when one is registered; otherwise the provider
/// must be built into the loaded ONNX Runtime.
fn session_on(
    spec: &ModelSpec,
    cfg: &InferenceConfig,
    env: &ort::environment::Environment,
    provider: Provider,
) -> Result<Session, ort::Error> {
    use ort::ep;
    // Builder errors carry the builder for recovery; only the message matters here.
    fn plain<R>(e: ort::Error<R>) -> ort::Error
    where
        ort::Error: From<ort::Error<R>>,
    {
        e.into()
    }
    let builder = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(plain)?
        .with_intra_threads(cfg.threads)
        .map_err(plain)?
        .with_inter_threads(1)
        .map_err(plain)?
        .with_intra_op_spinning(cfg.spinning)
        .map_err(plain)?
        .with_inter_op_spinning(false)
        .map_err(plain)?;
    let plugin = |name: &str| env.devices().filter(|d| d.ep().is_ok_and(|e| e == name)).collect::<Vec<_>>();
    let mut builder = match provider {
        Provider::Cpu => builder,
        Provider::Cuda => {
            builder.with_execution_providers([ep::CUDA::default().build().error_on_failure()]).map_err(plain)?
        }
        Provider::TensorRt => {
            builder.with_execution_providers([ep::TensorRT::default().build().error_on_failure()]).map_err(plain)?
        }
        Provider::OpenVino | Provider::Qnn => {
            let name =
                if provider == Provider::OpenVino { "OpenVINOExecutionProvider" } else { "QNNExecutionProvider" };
            let devices = plugin(name);
            if devices.is_empty() {
                let dispatch = if provider == Provider::OpenVino {
                    ep::OpenVINO::default().build()
                } else {
                    ep::QNN::default().build()
                };
                builder.with_execution_providers([dispatch.error_on_failure()]).map_err(plain)?
            } else {
                builder.with_devices(devices, None).map_err(plain)?
            }
        }
    };
    builder.commit_from_file(&spec.path)
}
