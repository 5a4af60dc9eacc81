//! Runtime camera changes, persisted so a restart keeps them.
//!
//! The config file stays the base; this file records what commands changed on top of it.
//! On disk: `{state_dir}/runtime/cameras.json`,
//!
//! ```json
//! { "format": "lookout.runtime-cameras/1",
//!   "cameras": [ { "id": "gate-2", "url": "rtsp://…", "model": "person", … } ],
//!   "removed": [ "dock-1" ] }
//! ```
//!
//! - `cameras`: cameras added or updated at runtime, exactly as the command gave them
//!   (the same keys as a `[[cameras]]` table). One with the id of a config file camera
//!   replaces it.
//! - `removed`: ids of config file cameras removed at runtime.
//!
//! Written whole to a temporary file, synced, then renamed over the old one (and the
//! folder synced), so a power cut leaves the old or the new file, never a mix. A file that
//! cannot be read is moved aside (`cameras.json.unreadable-<unix secs>`), reported, and
//! the agent starts from the config file alone.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const FORMAT: &str = "lookout.runtime-cameras/1";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    #[serde(default = "format")]
    pub format: String,
    #[serde(default)]
    pub cameras: Vec<Value>,
    #[serde(default)]
    pub removed: Vec<String>,
}

fn format() -> String {
    FORMAT.to_string()
}

impl Overlay {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("runtime").join("cameras.json")
    }

    /// Reads the overlay; a missing file is an empty overlay. An unreadable one is moved
    /// aside and reported in the returned warning.
    pub fn load(state_dir: &Path) -> (Self, Option<String>) {
        let path = Self::path(state_dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Self::default(), None),
            Err(e) => return (Self::default(), Some(format!("cannot read {}: {e}", path.display()))),
        };
        match serde_json::from_slice::<Overlay>(&text) {
            Ok(o) if o.format == FORMAT => (o, None),
            Ok(o) => (Self::default(), Some(aside(&path, &format!("unknown format {:?}", o.format)))),
            Err(e) => (Self::default(), Some(aside(&path, &e.to_string()))),
        }
    }

    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(state_dir);
        let dir = path.parent().unwrap_or(state_dir);
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        let mut o = self.clone();
        o.format = FORMAT.to_string();
        f.write_all(&serde_json::to_vec_pretty(&o).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// The runtime settings of camera `id`, if any.
    pub fn camera(&self, id: &str) -> Option<&Value> {
        self.cameras.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(id))
    }

    /// Adds or replaces camera `id`'s runtime settings (and un-removes it).
    pub fn upsert(&mut self, id: &str, camera: Value) {
        self.cameras.retain(|c| c.get("id").and_then(Value::as_str) != Some(id));
        self.cameras.push(camera);
        self.removed.retain(|r| r != id);
    }

    /// Forgets camera `id`'s runtime settings; `in_config` also hides the config's camera.
    pub fn remove(&mut self, id: &str, in_config: bool) {
        self.cameras.retain(|c| c.get("id").and_then(Value::as_str) != Some(id));
        if in_config && !self.removed.iter().any(|r| r == id) {
            self.removed.push(id.to_string());
        }
    }
}

fn aside(path: &Path, why: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let to = path.with_extension(format!("json.unreadable-{secs}"));
    match std::fs::rename(path, &to) {
        Ok(()) => format!(
            "{} is unreadable ({why}); moved it to {} and started from the config file alone",
            path.display(),
            to.display()
        ),
        Err(e) => format!("{} is unreadable ({why}) and cannot be moved aside ({e}); ignoring it", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_survive_a_save_and_load() {
        let dir = tempdir();
        let mut o = Overlay::default();
        o.upsert("a", json!({"id": "a", "url": "rtsp://x/a", "model": "m"}));
        o.remove("cfg", true);
        o.upsert("a", json!({"id": "a", "url": "rtsp://x/a2", "model": "m"}));
        o.save(&dir).expect("save");
        let (back, warning) = Overlay::load(&dir);
        assert!(warning.is_none());
        assert_eq!(back.cameras.len(), 1);
        assert_eq!(back.camera("a").and_then(|c| c["url"].as_str()), Some("rtsp://x/a2"));
        assert_eq!(back.removed, vec!["cfg".to_string()]);
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_not_lost() {
        let dir = tempdir();
        std::fs::create_dir_all(dir.join("runtime")).expect("mkdir");
        std::fs::write(Overlay::path(&dir), b"{ torn").expect("write");
        let (o, warning) = Overlay::load(&dir);
        assert_eq!(o, Overlay::default());
        assert!(warning.expect("warned").contains("moved it to"));
        let kept = std::fs::read_dir(dir.join("runtime")).expect("ls").count();
        assert_eq!(kept, 1, "the unreadable file is kept under another name");
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("lookout-overlay-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }
}
