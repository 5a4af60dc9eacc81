//! Finding and loading ONNX Runtime (`ort` with `load-dynamic`).
//!
//! The library is not linked at build time: it comes from the PyPI wheel `onnxruntime`
//! (see `scripts/setup.sh`), so the binary looks for it, in order:
//! 1. `[agent] onnxruntime` in the config;
//! 2. `ORT_DYLIB_PATH`;
//! 3. beside the executable, then `../lib/lookout/` relative to it (packaged installs);
//! 4. `/usr/lib/lookout/`, `/usr/local/lib/lookout/`;
//! 5. the set-up cache: `$LOOKOUT_CACHE`, else `$XDG_CACHE_HOME/lookout`, else `~/.cache/lookout`,
//!    in `onnxruntime-<version>/`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime release whose C API level matches ort's `api-31` feature.
pub const ORT_VERSION: &str = "1.31.1";
const LIB: &str = "libonnxruntime.so.1";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime ({LIB}, version {ORT_VERSION}) was not found; looked in:\n{}\n\
         Fix: run scripts/setup.sh (installs it into the cache), or set ORT_DYLIB_PATH \
         or `[agent] onnxruntime` in the config to the library's path.",
        .searched.iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n")
    )]
    NotFound { searched: Vec<PathBuf> },
    #[error(
        "cannot load ONNX Runtime from {path}: {message} (it must be version {ORT_VERSION}, from the onnxruntime wheel)"
    )]
    Load { path: PathBuf, message: String },
}

/// Every place searched, in order, for the given configured path.
pub fn candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = configured {
        c.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        c.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        c.push(dir.join(LIB));
        c.push(dir.join("../lib/lookout").join(LIB));
    }
    c.push(PathBuf::from("/usr/lib/lookout").join(LIB));
    c.push(PathBuf::from("/usr/local/lib/lookout").join(LIB));
    c.push(cache_dir().join(format!("onnxruntime-{ORT_VERSION}")).join(LIB));
    c
}

/// The set-up cache folder (also where scripts/setup.sh puts test media).
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("LOOKOUT_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("lookout");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/lookout")
}

/// The first candidate that exists. When `configured` is given and missing, that is an
/// error of its own: silently using another copy would hide a typo.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(RuntimeError::NotFound { searched: vec![p.to_path_buf()] })
        };
    }
    let searched = candidates(None);
    searched.iter().find(|p| p.is_file()).cloned().ok_or(RuntimeError::NotFound { searched })
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
/// ONNX Runtime allows one environment per process, so later calls share the first.
pub fn environment(configured: Option<&Path>) -> Result<ort::environment::Environment, RuntimeError> {
    let path = locate(configured)?;
    let env = ENV.get_or_init(|| {
        ort::init_from(&path)
            .map_err(|e| e.to_string())?
            .with_name("lookout")
            .with_telemetry(false)
            .build()
            .map_err(|e| e.to_string())
    });
    env.clone().map_err(|message| RuntimeError::Load { path, message })
}
