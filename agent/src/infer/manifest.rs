//! Model manifests: what a model file is, how to feed it and how to read its outputs.
//!
//! A manifest is a small TOML file beside the model (see `models/README.md`). Loading a
//! [`ModelSpec`] reads the manifest and checks the model file's size and sha256, so a
//! truncated or swapped file is refused before ONNX Runtime ever sees it.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why a model could not be used. None of these get better by retrying.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model manifest {path}: {source}")]
    ReadManifest { path: PathBuf, source: std::io::Error },
    #[error("invalid model manifest {path}: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("cannot read model file {path}: {source}")]
    ReadModel { path: PathBuf, source: std::io::Error },
    #[error("model file {path} has sha256 {actual}, but its manifest says {expected}: refusing to load it")]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("cannot read labels {path}: {source}")]
    ReadLabels { path: PathBuf, source: std::io::Error },
}

/// The manifest as written on disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    name: String,
    version: String,
    file: String,
    sha256: String,
    #[serde(default)]
    #[allow(dead_code)] // Documentation for people; kept so deny_unknown_fields accepts it.
    license: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    /// The artifact's size in bytes, checked when given.
    #[serde(default)]
    size: Option<u64>,
    /// ed25519 signature over the rest (see `crate::model::signature`); checked by model updates.
    #[serde(default)]
    #[allow(dead_code)]
    signature: Option<String>,
    input: InputFile,
    output: OutputFile,
    labels: LabelsFile,
    postprocess: PostprocessSpec,
    /// A reference image and what the model must find in it (optional).
    #[serde(default)]
    self_test: Option<SelfTestFile>,
}

/// `[self_test]`: run before a model is trusted with cameras (start-up and updates).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelfTestFile {
    /// An image file beside the manifest (JPEG or PNG).
    image: String,
    /// Its sha256, so a signed manifest covers it.
    sha256: String,
    #[serde(default)]
    expect: Vec<Expected>,
}

/// One detection the self-test must find: same label, score ≥ `min_score` (default the
/// manifest's `score_threshold`), IoU with `bbox` ≥ `min_iou` (default 0.5).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub label: String,
    /// `[x, y, w, h]`, normalised to the image.
    pub bbox: [f32; 4],
    #[serde(default)]
    pub min_score: Option<f32>,
    #[serde(default = "default_min_iou")]
    pub min_iou: f32,
}

fn default_min_iou() -> f32 {
    0.5
}

/// A checked `[self_test]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfTest {
    pub image: PathBuf,
    pub expect: Vec<Expected>,
}

/// `[input]` as written: optional fields are checked and defaulted into [`InputSpec`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputFile {
    name: String,
    shape: [i64; 4],
    #[serde(default)]
    layout: Layout,
    #[serde(default)]
    color: ColorOrder,
    #[serde(default)]
    dtype: DType,
    #[serde(default)]
    resize: Resize,
    pad_value: Option<u8>,
    scale: Option<f32>,
    offset: Option<f32>,
}

/// How the model's input tensor is laid out, filled and normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    /// `[N, H, W, 3]` for NHWC, `[N, 3, H, W]` for NCHW; `-1` for a dynamic batch.
    pub shape: [i64; 4],
    pub layout: Layout,
    pub color: ColorOrder,
    pub dtype: DType,
    pub resize: Resize,
    /// Letterbox border, in 0..255 pixel units (before `scale` and `offset`).
    pub pad_value: u8,
    /// float32 input = pixel * scale + offset (1 and 0 for uint8 inputs).
    pub scale: f32,
    pub offset: f32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum Layout {
    #[default]
    NHWC,
    NCHW,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum ColorOrder {
    #[default]
    RGB,
}

/// The input tensor's element type.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// `pixel * scale + offset`.
    #[default]
    Float32,
    /// Raw 0..255 pixels (TF Object Detection API exports).
    Uint8,
}

/// How a frame is fitted into the model's input.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Scaled to H x W regardless of aspect ratio.
    #[default]
    Stretch,
    /// Scaled to fit with its aspect ratio kept, centred, the rest filled with
    /// `pad_value` (Ultralytics' letterbox).
    Letterbox,
}

/// The default letterbox border: Ultralytics' grey.
pub const DEFAULT_PAD_VALUE: u8 = 114;

/// `[output]` as written: which fields apply depends on `format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputFile {
    format: OutputFormat,
    boxes: Option<String>,
    scores: Option<String>,
    classes: Option<String>,
    num_detections: Option<String>,
    output: Option<String>,
    anchors: Option<usize>,
}

/// The output conventions a decoder exists for, as written in `output.format`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum OutputFormat {
    #[serde(rename = "ssd-decoded")]
    SsdDecoded,
    #[serde(rename = "tfod")]
    Tfod,
    #[serde(rename = "yolov8")]
    Yolov8,
    #[serde(rename = "yolov5")]
    Yolov5,
}

impl OutputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::SsdDecoded => "ssd-decoded",
            OutputFormat::Tfod => "tfod",
            OutputFormat::Yolov8 => "yolov8",
            OutputFormat::Yolov5 => "yolov5",
        }
    }
}

/// The model's outputs and how to decode them (`C` = the number of labels).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputSpec {
    /// boxes `[N,A,4]` = ymin, xmin, ymax, xmax normalised to the input; scores
    /// `[N,A,1+C]`, column 0 background; no NMS in the graph (done in [`super::ssd`]).
    SsdDecoded { boxes: String, scores: String, anchors: usize },
    /// TF Object Detection API whole graph: boxes `[N,K,4]` (ymin, xmin, ymax, xmax
    /// normalised), scores `[N,K]`, classes `[N,K]` (float, 1-based label-map ids),
    /// num_detections `[N]`; NMS already done in the graph.
    Tfod { boxes: String, scores: String, classes: String, num_detections: String },
    /// Ultralytics YOLOv8 / YOLO11: `[N, 4+C, A]`, rows cx, cy, w, h (input pixels), then
    /// C class scores; no objectness, no NMS in the graph.
    Yolov8 { output: String, anchors: usize },
    /// Ultralytics YOLOv5: `[N, A, 5+C]`, columns cx, cy, w, h (input pixels),
    /// objectness, C class probabilities; score = objectness x class probability.
    Yolov5 { output: String, anchors: usize },
}

impl OutputSpec {
    pub fn format(&self) -> OutputFormat {
        match self {
            OutputSpec::SsdDecoded { .. } => OutputFormat::SsdDecoded,
            OutputSpec::Tfod { .. } => OutputFormat::Tfod,
            OutputSpec::Yolov8 { .. } => OutputFormat::Yolov8,
            OutputSpec::Yolov5 { .. } => OutputFormat::Yolov5,
        }
    }

    /// The output tensors the decoder reads, in the order it reads them.
    pub fn tensor_names(&self) -> Vec<&str> {
        match self {
            OutputSpec::SsdDecoded { boxes, scores, .. } => vec![boxes, scores],
            OutputSpec::Tfod { boxes, scores, classes, num_detections } => {
                vec![boxes, scores, classes, num_detections]
            }
            OutputSpec::Yolov8 { output, .. } | OutputSpec::Yolov5 { output, .. } => vec![output],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsFile {
    file: String,
    /// The labels file's sha256, checked when given (a signed manifest then covers it).
    #[serde(default)]
    sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostprocessSpec {
    /// Default `min_score` for cameras that set none.
    pub score_threshold: f32,
    pub nms_iou: f32,
    pub max_detections: usize,
}

/// A checked model: manifest read, file present with the right sha256, labels loaded.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub sha256: String,
    pub input: InputSpec,
    pub output: OutputSpec,
    pub labels: Vec<String>,
    pub postprocess: PostprocessSpec,
    pub self_test: Option<SelfTest>,
}

impl ModelSpec {
    /// Reads the manifest at `manifest`, then verifies the model file it names.
    pub fn load(manifest: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(manifest)
            .map_err(|source| ModelError::ReadManifest { path: manifest.to_path_buf(), source })?;
        let bad = |message: String| ModelError::BadManifest { path: manifest.to_path_buf(), message };
        let m: ManifestFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let dir = manifest.parent().unwrap_or(Path::new("."));
        let input = check_input(m.input).map_err(bad)?;
        let output = check_output(m.output).map_err(bad)?;
        if !(0.0..=1.0).contains(&m.postprocess.score_threshold) || !(0.0..=1.0).contains(&m.postprocess.nms_iou) {
            return Err(bad("postprocess.score_threshold and nms_iou must lie in [0, 1]".into()));
        }
        let labels_path = dir.join(&m.labels.file);
        if let Some(want) = &m.labels.sha256 {
            let got = sha256_file(&labels_path)
                .map_err(|source| ModelError::ReadLabels { path: labels_path.clone(), source })?;
            if !got.eq_ignore_ascii_case(want.trim()) {
                return Err(ModelError::Checksum { path: labels_path, expected: want.clone(), actual: got });
            }
        }
        let labels: Vec<String> = std::fs::read_to_string(&labels_path)
            .map_err(|source| ModelError::ReadLabels { path: labels_path.clone(), source })?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if labels.is_empty() {
            return Err(bad(format!("labels file {} is empty", labels_path.display())));
        }
        let path = dir.join(&m.file);
        if let Some(size) = m.size {
            let got =
                std::fs::metadata(&path).map_err(|source| ModelError::ReadModel { path: path.clone(), source })?.len();
            if got != size {
                return Err(bad(format!("{} is {got} bytes, the manifest says size = {size}", path.display())));
            }
        }
        let actual = sha256_file(&path).map_err(|source| ModelError::ReadModel { path: path.clone(), source })?;
        if !actual.eq_ignore_ascii_case(m.sha256.trim()) {
            return Err(ModelError::Checksum { path, expected: m.sha256, actual });
        }
        // The reference image last: a wrong model file is the error to report first.
        let self_test = match m.self_test {
            None => None,
            Some(t) => {
                let image = dir.join(&t.image);
                let got =
                    sha256_file(&image).map_err(|source| ModelError::ReadModel { path: image.clone(), source })?;
                if !got.eq_ignore_ascii_case(t.sha256.trim()) {
                    return Err(ModelError::Checksum { path: image, expected: t.sha256, actual: got });
                }
                Some(SelfTest { image, expect: t.expect })
            }
        };
        if let Some(t) = &self_test
            && let Some(e) = t.expect.iter().find(|e| !labels.contains(&e.label))
        {
            return Err(bad(format!("self_test.expect: label {:?} is not in the labels file", e.label)));
        }
        Ok(ModelSpec {
            name: m.name,
            version: m.version,
            path,
            sha256: actual,
            input,
            output,
            labels,
            postprocess: m.postprocess,
            self_test,
        })
    }

    /// Input height and width in pixels.
    pub fn input_size(&self) -> (u32, u32) {
        let (h, w) = match self.input.layout {
            Layout::NHWC => (self.input.shape[1], self.input.shape[2]),
            Layout::NCHW => (self.input.shape[2], self.input.shape[3]),
        };
        (h as u32, w as u32)
    }

    /// The batch size the model requires, or `None` when its batch is dynamic.
    pub fn fixed_batch(&self) -> Option<usize> {
        usize::try_from(self.input.shape[0]).ok()
    }
}

/// Validates `[input]` and fills in its defaults.
fn check_input(f: InputFile) -> Result<InputSpec, String> {
    let s = f.shape;
    let (h, w, c, form) = match f.layout {
        Layout::NHWC => (s[1], s[2], s[3], "[N, H, W, 3] for layout NHWC"),
        Layout::NCHW => (s[2], s[3], s[1], "[N, 3, H, W] for layout NCHW"),
    };
    if h <= 0 || w <= 0 || c != 3 || (s[0] != -1 && s[0] <= 0) {
        return Err(format!(
            "input.shape must be {form} with H, W > 0 and N = -1 (dynamic) or a fixed batch > 0, got {s:?}"
        ));
    }
    if f.name.is_empty() {
        return Err("input.name is empty".into());
    }
    if f.resize != Resize::Letterbox && f.pad_value.is_some() {
        return Err("input.pad_value applies only to input.resize = \"letterbox\"".into());
    }
    let (scale, offset) = match (f.dtype, f.scale, f.offset) {
        (DType::Float32, Some(scale), Some(offset)) if scale.is_finite() && offset.is_finite() => (scale, offset),
        (DType::Float32, Some(_), Some(_)) => return Err("input.scale and input.offset must be finite".into()),
        (DType::Float32, _, _) => {
            return Err("input.scale and input.offset are required for input.dtype = \"float32\"".into());
        }
        (DType::Uint8, None, None) => (1.0, 0.0),
        (DType::Uint8, _, _) => {
            return Err(
                "input.scale and input.offset do not apply to input.dtype = \"uint8\" (the model takes raw 0..255 pixels)"
                    .into(),
            );
        }
    };
    Ok(InputSpec {
        name: f.name,
        shape: f.shape,
        layout: f.layout,
        color: f.color,
        dtype: f.dtype,
        resize: f.resize,
        pad_value: f.pad_value.unwrap_or(DEFAULT_PAD_VALUE),
        scale,
        offset,
    })
}

/// Validates `[output]`: each format takes exactly its own fields.
fn check_output(f: OutputFile) -> Result<OutputSpec, String> {
    let format = f.format.as_str();
    let given: [(&str, bool); 6] = [
        ("boxes", f.boxes.is_some()),
        ("scores", f.scores.is_some()),
        ("classes", f.classes.is_some()),
        ("num_detections", f.num_detections.is_some()),
        ("output", f.output.is_some()),
        ("anchors", f.anchors.is_some()),
    ];
    let wanted: &[&str] = match f.format {
        OutputFormat::SsdDecoded => &["boxes", "scores", "anchors"],
        OutputFormat::Tfod => &["boxes", "scores", "classes", "num_detections"],
        OutputFormat::Yolov8 | OutputFormat::Yolov5 => &["output", "anchors"],
    };
    for (field, present) in given {
        if present && !wanted.contains(&field) {
            return Err(format!(
                "output.{field} does not apply to output.format = \"{format}\" (its fields: {})",
                wanted.join(", ")
            ));
        }
    }
    let name = |v: Option<String>, field: &str| match v {
        Some(n) if !n.is_empty() => Ok(n),
        Some(_) => Err(format!("output.{field} is empty")),
        None => Err(format!("output.{field} is required for output.format = \"{format}\"")),
    };
    let anchors = |v: Option<usize>| match v {
        Some(a) if a > 0 => Ok(a),
        Some(_) => Err("output.anchors must be > 0".to_string()),
        None => Err(format!("output.anchors is required for output.format = \"{format}\"")),
    };
    Ok(match f.format {
        OutputFormat::SsdDecoded => OutputSpec::SsdDecoded {
            boxes: name(f.boxes, "boxes")?,
            scores: name(f.scores, "scores")?,
            anchors: anchors(f.anchors)?,
        },
        OutputFormat::Tfod => OutputSpec::Tfod {
            boxes: name(f.boxes, "boxes")?,
            scores: name(f.scores, "scores")?,
            classes: name(f.classes, "classes")?,
            num_detections: name(f.num_detections, "num_detections")?,
        },
        OutputFormat::Yolov8 => OutputSpec::Yolov8 { output: name(f.output, "output")?, anchors: anchors(f.anchors)? },
        OutputFormat::Yolov5 => OutputSpec::Yolov5 { output: name(f.output, "output")?, anchors: anchors(f.anchors)? },
    })
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
