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
    /// ed25519 signature over the rest (see `model::signature`); checked by model updates.
    #[serde(default)]
    #[allow(dead_code)]
    signature: Option<String>,
    input: InputSpec,
    output: OutputSpec,
    labels: LabelsFile,
    postprocess: PostprocessSpec,
}

/// How the model's input tensor is laid out and normalised.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    /// `[N, H, W, C]`; `-1` for a dynamic batch.
    pub shape: [i64; 4],
    pub layout: Layout,
    pub color: ColorOrder,
    /// input = pixel * scale + offset
    pub scale: f32,
    pub offset: f32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Layout {
    NHWC,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum ColorOrder {
    RGB,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub format: OutputFormat,
    pub boxes: String,
    pub scores: String,
    pub anchors: usize,
}

/// The output conventions a decoder exists for.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum OutputFormat {
    /// boxes `[N,A,4]` = ymin, xmin, ymax, xmax normalised; scores `[N,A,1+C]`, column 0
    /// background; no NMS in the graph (done in [`super::ssd`]).
    #[serde(rename = "ssd-decoded")]
    SsdDecoded,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsFile {
    file: String,
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
}

impl ModelSpec {
    /// Reads the manifest at `manifest`, then verifies the model file it names.
    pub fn load(manifest: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(manifest)
            .map_err(|source| ModelError::ReadManifest { path: manifest.to_path_buf(), source })?;
        let bad = |message: String| ModelError::BadManifest { path: manifest.to_path_buf(), message };
        let m: ManifestFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let dir = manifest.parent().unwrap_or(Path::new("."));
        let (h, w, c) = (m.input.shape[1], m.input.shape[2], m.input.shape[3]);
        if h <= 0 || w <= 0 || c != 3 {
            return Err(bad(format!("input.shape must be [N, H, W, 3] with H, W > 0, got {:?}", m.input.shape)));
        }
        if !(0.0..=1.0).contains(&m.postprocess.score_threshold) || !(0.0..=1.0).contains(&m.postprocess.nms_iou) {
            return Err(bad("postprocess.score_threshold and nms_iou must lie in [0, 1]".into()));
        }
        let labels_path = dir.join(&m.labels.file);
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
        Ok(ModelSpec {
            name: m.name,
            version: m.version,
            path,
            sha256: actual,
            input: m.input,
            output: m.output,
            labels,
            postprocess: m.postprocess,
        })
    }

    /// Input height and width in pixels.
    pub fn input_size(&self) -> (u32, u32) {
        (self.input.shape[1] as u32, self.input.shape[2] as u32)
    }
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
