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

pub const FORMAT: &str = "lookout.model-state/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredVersion {
    pub version: String,
    pub sha256: String,
    pub source: String,
}

/// One installed version of a model.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModelVersion {
    pub version: String,
    pub sha256: String,
    /// "config" (the manifest named in the config file) or "update" (installed by `model.update`).
    pub source: &'static str,
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
    /// The highest version this gateway has run: `model.update` never goes below it
    /// (unless `allow_downgrade`), even once that version's files are pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest: Option<String>,
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

impl ModelStore {
    /// Removes what interrupted downloads left (`.staging-*` folders): they would
    /// otherwise fill the state folder, which the outbox shares. Returns how many.
    pub fn remove_staging(&self) -> usize {
        let Ok(models) = std::fs::read_dir(&self.root) else { return 0 };
        let mut removed = 0;
        for m in models.filter_map(Result::ok) {
            let Ok(entries) = std::fs::read_dir(m.path()) else { continue };
            for e in entries.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().starts_with(".staging-") && std::fs::remove_dir_all(e.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// Orders release versions: semantic versions as SemVer says (`1.0.0-rc.1` < `1.0.0`),
/// anything else by its runs of digits as numbers (`0.10` > `0.9`), then as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    if let (Ok(x), Ok(y)) = (semver::Version::parse(a), semver::Version::parse(b)) {
        // SemVer precedence: build metadata does not count, so a model's variants
        // ("0.2.0" and its INT8 build "0.2.0+int8") are the same release and either may
        // replace the other.
        return x.cmp_precedence(&y);
    }
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let ord = match (x, y) {
            ((true, n), (true, m)) => {
                let (n, m) = (n.trim_start_matches('0'), m.trim_start_matches('0'));
                n.len().cmp(&m.len()).then_with(|| n.cmp(m))
            }
            ((_, n), (_, m)) => n.cmp(m),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ra.len().cmp(&rb.len())
}

/// Whether `v` can name a folder: letters, digits, `.`, `-`, `_`, `+`, not starting with a dot.
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering::{Equal, Greater, Less};

    use super::*;

    #[test]
    fn versions_compare_as_releases_do() {
        assert_eq!(compare_versions("0.3.0", "0.2.0"), Greater);
        assert_eq!(compare_versions("0.10.0", "0.9.1"), Greater);
        assert_eq!(compare_versions("1.0.0-rc.1", "1.0.0"), Less);
        assert_eq!(compare_versions("1.0.0", "1.0.0"), Equal);
        assert_eq!(compare_versions("0.2.0+int8", "0.2.0"), Equal);
        assert_eq!(compare_versions("0.2.0", "0.3.0+int8"), Less);
        assert_eq!(compare_versions("2024.10", "2024.9"), Greater);
        assert_eq!(compare_versions("v2", "v10"), Less);
        assert_eq!(compare_versions("1.2", "1.2.1"), Less);
    }

    #[test]
    fn staging_leftovers_are_removed_and_versions_kept() {
        let root = std::env::temp_dir().join(format!("lookout-store-{}", uuid::Uuid::now_v7()));
        let store = ModelStore::new(&root);
        std::fs::create_dir_all(store.model_dir("person").join(".staging-a/sub")).expect("mkdir");
        std::fs::create_dir_all(store.version_dir("person", "0.3.0")).expect("mkdir");
        assert_eq!(store.remove_staging(), 1);
        assert!(!store.model_dir("person").join(".staging-a").exists());
        assert!(store.version_dir("person", "0.3.0").is_dir());
        let _ = std::fs::remove_dir_all(&root);
    }
}
