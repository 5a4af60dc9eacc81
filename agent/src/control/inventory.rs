//! What the agent runs right now: its cameras and its models. The supervisor changes it
//! (start-up, commands, `SIGHUP`); the MQTT task (presence, `camera.list`,
//! `model.list`) and the telemetry endpoints read it. Reads take a snapshot under a
//! short lock; every change bumps [`Inventory::generation`] so readers can tell.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use crate::camera::CameraCtx;
use crate::config::CameraConfig;
use crate::event::{AgentInfo, CameraModel};
use crate::infer::ModelStats;
use crate::model::store::ModelVersion;

/// Where a running camera's settings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The config file.
    Config,
    /// Added at runtime (`camera.add`), persisted in the state folder.
    Runtime,
    /// A config file camera replaced at runtime (`camera.update`): the runtime settings
    /// win until the camera is removed.
    RuntimeOverride,
    /// A site camera (`[site]`): assigned to this gateway by the site's leader, kept in
    /// etcd, never persisted here.
    Site,
}

#[derive(Clone)]
pub struct CameraEntry {
    pub ctx: Arc<CameraCtx>,
    pub config: CameraConfig,
    pub origin: Origin,
}

#[derive(Clone)]
pub struct ModelEntry {
    /// The config's name (`[[models]] name`): what cameras and `model.rollback` use.
    pub name: String,
    /// The active manifest's `name`: what messages call the model (`model.name`).
    pub manifest_name: String,
    pub active: ModelVersion,
    /// What `model.rollback` returns to.
    pub previous: Option<ModelVersion>,
    /// Every version on disk, oldest first.
    pub installed: Vec<ModelVersion>,
    /// Whether a session is loaded (some camera uses the model).
    pub loaded: bool,
    /// The execution provider its session runs on, while loaded.
    pub provider: Option<&'static str>,
    pub stats: Arc<ModelStats>,
}

#[derive(Default)]
struct State {
    cameras: BTreeMap<String, CameraEntry>,
    models: BTreeMap<String, ModelEntry>,
    config_sha256: String,
}

pub struct Inventory {
    pub site: String,
    pub agent: String,
    pub started: SystemTime,
    state: RwLock<State>,
    generation: AtomicU64,
}

impl Inventory {
    pub fn new(site: &str, agent: &str, config_sha256: String) -> Self {
        Self {
            site: site.to_string(),
            agent: agent.to_string(),
            started: SystemTime::now(),
            state: RwLock::new(State { config_sha256, ..State::default() }),
            generation: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Bumped by every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn cameras(&self) -> Vec<Arc<CameraCtx>> {
        self.read().cameras.values().map(|e| e.ctx.clone()).collect()
    }

    pub fn camera_entries(&self) -> Vec<CameraEntry> {
        self.read().cameras.values().cloned().collect()
    }

    pub fn camera(&self, id: &str) -> Option<CameraEntry> {
        self.read().cameras.get(id).cloned()
    }

    pub fn set_camera(&self, entry: CameraEntry) {
        self.write().cameras.insert(entry.config.id.clone(), entry);
    }

    pub fn remove_camera(&self, id: &str) {
        self.write().cameras.remove(id);
    }

    pub fn models(&self) -> Vec<ModelEntry> {
        self.read().models.values().cloned().collect()
    }

    pub fn model(&self, name: &str) -> Option<ModelEntry> {
        self.read().models.get(name).cloned()
    }

    pub fn set_model(&self, entry: ModelEntry) {
        self.write().models.insert(entry.name.clone(), entry);
    }

    pub fn model_stats(&self) -> Vec<Arc<ModelStats>> {
        self.read().models.values().filter(|m| m.loaded).map(|m| m.stats.clone()).collect()
    }

    pub fn set_config_sha256(&self, sha256: String) {
        self.write().config_sha256 = sha256;
    }

    /// What the birth message says: each camera with the model version it runs now.
    pub fn agent_info(&self) -> AgentInfo {
        let s = self.read();
        AgentInfo {
            site: self.site.clone(),
            agent: self.agent.clone(),
            started: self.started,
            config_sha256: s.config_sha256.clone(),
            cameras: s
                .cameras
                .values()
                .map(|c| {
                    let m = s.models.get(&c.config.model);
                    CameraModel {
                        camera: c.config.id.clone(),
                        model: c.config.model.clone(),
                        version: m.map(|m| m.active.version.clone()).unwrap_or_default(),
                        sha256: m.map(|m| m.active.sha256.clone()).unwrap_or_default(),
                        provider: m.and_then(|m| m.provider),
                    }
                })
                .collect(),
        }
    }
}
