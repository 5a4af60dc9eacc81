//! Installed model versions and which one is active, under the state folder:
//!
//! ```text
//! {state_dir}/models/{name}/{version}/manifest.toml   the manifest as signed (signature kept)
//!                                    /{file}           the artifact it names
//!                                    /{labels}         its labels file
//! {state_dir}/models/{name}/state.json                 which version is active, and the one before
//! ```
//!
//! `state.json` is `{"format": "lookout.model-state/1", "active": V, "previous": V | null}`
//! with `V = {"version", "sha256", "source": "config" | "update"}`; "config" means the
//! manifest named in the config file. It is replaced atomically (temporary file, sync,
//! rename). Without it the config's manifest is active. Versions are never modified in
//! place: an update installs a new folder, so the one running is never touched.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::fleet::ModelVersion;

pub const FORMAT: &str = "lookout.model-state/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredVersion {
    pub version: String,
    pub sha256: String,
    pub source: String,
}

impl From<&ModelVersion> for StoredVersion {
    fn from(v: &ModelVersion) -> Self {
        Self { version: v.version.clone(), sha256: v.sha256.clone(), source: v.source.to_string() }
    }
}

impl StoredVersion {
    pub fn to_version(&self) -> ModelVersion {
        ModelVersion {
            version: self.version.clone(),
            sha256: self.sha256.clone(),
            source: if self.source == "config" { "config" } else { "update" },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelState {
    pub format: String,
    pub active: StoredVersion,
    pub previous: Option<StoredVersion>,
}

pub struct ModelStore {
    root: PathBuf,
}

impl ModelStore {
    pub fn new(state_dir: &Path) -> Self {
        Self { root: state_dir.join("models") }
    }

    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn version_dir(&self, name: &str, version: &str) -> PathBuf {
        self.root.join(name).join(version)
    }

    /// The stored state; `Err` says why an existing file cannot be used.
    pub fn state(&self, name: &str) -> Result<Option<ModelState>, String> {
        let path = self.model_dir(name).join("state.json");
        match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice::<ModelState>(&b).map_err(|e| format!("{}: {e}", path.display())).and_then(|s| {
                    if s.format == FORMAT { Ok(Some(s)) } else { Err(format!("{}: unknown format", path.display())) }
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    pub fn save_state(&self, name: &str, state: &ModelState) -> std::io::Result<()> {
        let dir = self.model_dir(name);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("state.json");
        let tmp = dir.join("state.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    }

    /// Installed (downloaded) versions with their manifests, oldest first.
    pub fn installed(&self, name: &str) -> Vec<(ModelVersion, PathBuf)> {
        let Ok(dirs) = std::fs::read_dir(self.model_dir(name)) else { return Vec::new() };
        let mut found: Vec<(std::time::SystemTime, ModelVersion, PathBuf)> = dirs
            .filter_map(Result::ok)
            .filter(|d| d.file_type().is_ok_and(|t| t.is_dir()) && !d.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|d| {
                let manifest = d.path().join("manifest.toml");
                let text = std::fs::read_to_string(&manifest).ok()?;
                let t: toml::Table = toml::from_str(&text).ok()?;
                let version = t.get("version")?.as_str()?.to_string();
                let sha256 = t.get("sha256")?.as_str()?.to_ascii_lowercase();
                let when = d.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                Some((when, ModelVersion { version, sha256, source: "update" }, manifest))
            })
            .collect();
        found.sort_by_key(|(when, v, _)| (*when, v.version.clone()));
        found.into_iter().map(|(_, v, p)| (v, p)).collect()
    }

    /// Deletes the oldest installed versions beyond `keep`, never one in `protect`.
    pub fn prune(&self, name: &str, keep: usize, protect: &[&str]) -> Vec<String> {
        let installed = self.installed(name);
        let mut removable: Vec<&ModelVersion> =
            installed.iter().map(|(v, _)| v).filter(|v| !protect.contains(&v.version.as_str())).collect();
        let excess = installed.len().saturating_sub(keep);
        removable.truncate(excess);
        let mut removed = Vec::new();
        for v in removable {
            if std::fs::remove_dir_all(self.version_dir(name, &v.version)).is_ok() {
                removed.push(v.version.clone());
            }
        }
        removed
    }
}

/// Whether `v` can name a folder: letters, digits, `.`, `-`, `_`, `+`, not starting with a dot.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
}
