//! The supervisor: the one task that starts, changes and stops cameras and models while
//! the agent runs. Start-up, mutating commands (`camera.add/update/remove`,
//! `model.update/rollback`) and `SIGHUP` reloads all go through it, one at a time and in
//! order, so two changes never race. Each change touches only what it names: a camera
//! change stops and starts that camera's task alone; a model change swaps the session
//! under its running worker (see `infer::ModelSwap`), so cameras keep streaming.
//!
//! Longer than most files (~700 lines before its tests) because every camera command's
//! handler sits next to the state it changes and the start/stop steps they share; the
//! model half lives in `supervisor::models`. The camera half is the next to move out when it grows.
//!
//! Runtime camera changes persist in the state folder ([`super::overlay`]); installed
//! model versions and the active one too ([`crate::model::store`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::time::SystemTime;

use anyhow::Context as _;
use futures_util::FutureExt as _;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::ControlRequest;
use super::command::{Command, Reply, Request};
use super::inventory::{CameraEntry, Inventory, ModelEntry, Origin};
use super::overlay::Overlay;
use crate::camera::CameraCtx;
use crate::config::{CameraConfig, Config};
use crate::event::ModelOut;
use crate::event::Topics;
use crate::event::stage::{CameraEvents, CameraSpec, LiveSettings};
use crate::event::thread::EventsCtl;
use crate::infer::manifest::ModelSpec;
use crate::infer::queue::FrameQueue;
use crate::infer::{self, Analysed, Detector, InferError, ModelStats, ModelSwap};
use crate::model::store::{ModelState, ModelStore, ModelVersion, StoredVersion, compare_versions};
use crate::model::update::{self, Installed, KnownModel};
use crate::source::{self, FrameFormat};
use crate::telemetry::Liveness;

mod models;

/// What the supervisor wires new cameras and models into.
pub struct Deps {
    pub env: ort::environment::Environment,
    pub inventory: Arc<Inventory>,
    pub analysed: SyncSender<Analysed>,
    pub events: Sender<EventsCtl>,
    pub liveness: Liveness,
    /// Threads that must stay alive; incremented per inference worker started.
    pub expected_threads: Arc<AtomicUsize>,
    pub topics: Topics,
    pub shutdown: CancellationToken,
    /// The installers' console: told of every camera and model change.
    pub console: Arc<crate::console::ConsoleHub>,
    /// `[site]`: the site cameras assigned here, and where to say what runs.
    pub site: Option<crate::site::SiteHandle>,
}

/// A `model.update` downloaded, verified and loaded off the command loop, coming back
/// to be swapped in (or refused).
struct UpdateDone {
    request_id: String,
    url: String,
    reply: oneshot::Sender<Reply>,
    result: Result<Prepared, (&'static str, String)>,
}

/// A model's sessions, one per `[inference] workers`: the first passes the manifest's
/// self-test, the others load the same file with the same settings.
fn sessions(
    spec: &ModelSpec,
    cfg: &crate::config::InferenceConfig,
    env: &ort::environment::Environment,
) -> Result<Vec<Detector>, InferError> {
    let mut first = Detector::new(spec, cfg, env)?;
    first.self_test()?;
    let mut all = vec![first];
    for _ in 1..cfg.workers.max(1) {
        all.push(Detector::new(spec, cfg, env)?);
    }
    Ok(all)
}

struct Prepared {
    installed: Installed,
    spec: ModelSpec,
    /// The new sessions (one per worker), when the model was running as the job started.
    detector: Option<Vec<Detector>>,
}

struct ModelRuntime {
    queue: Arc<FrameQueue>,
    format: FrameFormat,
    /// One per worker thread.
    swaps: Vec<Arc<ModelSwap>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// The execution provider of the session running (or queued to run) the model.
    provider: crate::config::Provider,
}

struct RunningCamera {
    ctx: Arc<CameraCtx>,
    config: CameraConfig,
    origin: Origin,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    slot: usize,
}

pub struct Supervisor {
    config: Config,
    overlay: Overlay,
    store: ModelStore,
    deps: Deps,
    /// The spec each configured model runs (or would run) now.
    active: HashMap<String, ModelSpec>,
    models: HashMap<String, ModelRuntime>,
    cameras: HashMap<String, RunningCamera>,
    /// The `model.update` in progress (one at a time), cancelled at shutdown.
    updating: Option<CancellationToken>,
    /// Every site camera id (local cameras may not take one) and the JSON of those
    /// running here.
    site_ids: BTreeSet<String>,
    site_sources: HashMap<String, Value>,
    /// Site cameras assigned here that cannot run, with why.
    site_refused: BTreeMap<String, String>,
}

impl Supervisor {
    /// Restores runtime state and starts every camera. A model that cannot load is fatal
    /// here (as with a bad config file); later changes never are.
    pub async fn start(config: Config, deps: Deps) -> anyhow::Result<Self> {
        let (overlay, warning) = Overlay::load(&config.agent.state_dir);
        if let Some(w) = warning {
            error!("{w}");
        }
        let store = ModelStore::new(&config.agent.state_dir);
        let leftovers = store.remove_staging();
        if leftovers > 0 {
            warn!(count = leftovers, "removed the staging folders of interrupted model downloads");
        }
        let mut sup = Supervisor {
            config,
            overlay,
            store,
            deps,
            active: HashMap::new(),
            models: HashMap::new(),
            cameras: HashMap::new(),
            updating: None,
            site_ids: BTreeSet::new(),
            site_sources: HashMap::new(),
            site_refused: BTreeMap::new(),
        };
        for m in sup.config.models.clone() {
            let (spec, previous) = sup.restore_model(&m.name, &m.spec);
            sup.active.insert(m.name.clone(), spec.clone());
            sup.publish_model(&m.name, &spec, previous);
        }
        for (cam, origin) in sup.effective_cameras() {
            let id = cam.id.clone();
            sup.start_camera(cam, origin).await.with_context(|| format!("starting camera {id}"))?;
        }
        Ok(sup)
    }

    /// The model version the store says is active, else the config's.
    fn restore_model(&self, name: &str, config_spec: &ModelSpec) -> (ModelSpec, Option<ModelVersion>) {
        let state = match self.store.state(name) {
            Ok(Some(s)) => s,
            Ok(None) => return (config_spec.clone(), None),
            Err(e) => {
                error!(model = name, error = %e, "cannot read the model state; running the config's version");
                return (config_spec.clone(), None);
            }
        };
        let previous = state.previous.as_ref().map(StoredVersion::to_version);
        if state.active.source == "config" {
            return (config_spec.clone(), previous);
        }
        let manifest = self.store.version_dir(name, &state.active.version).join("manifest.toml");
        match ModelSpec::load(&manifest) {
            Ok(spec) => {
                info!(model = name, version = %spec.version, "running the version installed by model.update");
                (spec, previous)
            }
            Err(e) => {
                error!(model = name, error = %e, "the installed model version cannot be used; running the config's");
                (config_spec.clone(), None)
            }
        }
    }

    fn publish_model(&self, name: &str, spec: &ModelSpec, previous: Option<ModelVersion>) {
        let config_version = self.config.model(name).map(|m| ModelVersion {
            version: m.spec.version.clone(),
            sha256: m.spec.sha256.clone(),
            source: "config",
        });
        let mut installed: Vec<ModelVersion> = config_version.into_iter().collect();
        installed.extend(self.store.installed(name).into_iter().map(|(v, _)| v));
        let active_source =
            if self.config.model(name).is_some_and(|m| m.spec.path == spec.path) { "config" } else { "update" };
        let stats = self.deps.inventory.model(name).map_or_else(|| Arc::new(ModelStats::new(name)), |m| m.stats);
        self.deps.inventory.set_model(ModelEntry {
            name: name.to_string(),
            manifest_name: spec.name.clone(),
            active: ModelVersion { version: spec.version.clone(), sha256: spec.sha256.clone(), source: active_source },
            previous,
            installed,
            loaded: self.models.contains_key(name),
            provider: self.models.get(name).map(|rt| rt.provider.as_str()),
            stats,
        });
        let running: Vec<(ModelOut, &'static str)> = self
            .active
            .iter()
            .filter_map(|(n, s)| Some((ModelOut::of(s), self.models.get(n)?.provider.as_str())))
            .collect();
        self.deps.console.set_models(running);
    }

    /// The config file's cameras with the runtime changes applied, in config order then
    /// runtime additions. A runtime camera that no longer validates (say its model left
    /// the config) is reported and skipped, and stays persisted.
    fn effective_cameras(&self) -> Vec<(CameraConfig, Origin)> {
        let mut out = Vec::new();
        for c in &self.config.cameras {
            if self.overlay.removed.contains(&c.id) {
                continue;
            }
            match self.overlay.camera(&c.id) {
                Some(v) => match crate::config::camera_from_json(v, &self.config) {
                    Ok(rc) => out.push((rc, Origin::RuntimeOverride)),
                    Err(problems) => {
                        error!(camera = %c.id, problems = %problems.join("; "), "runtime settings invalid; using the config file's");
                        out.push((c.clone(), Origin::Config));
                    }
                },
                None => out.push((c.clone(), Origin::Config)),
            }
        }
        for v in &self.overlay.cameras {
            let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
            if self.config.cameras.iter().any(|c| c.id == id) {
                continue;
            }
            match crate::config::camera_from_json(v, &self.config) {
                Ok(rc) => out.push((rc, Origin::Runtime)),
                Err(problems) => {
                    error!(camera = id, problems = %problems.join("; "), "runtime camera invalid; not started")
                }
            }
        }
        out
    }

    /// Runs until shutdown: commands and `SIGHUP` reloads, one at a time; a model
    /// download runs beside it and comes back to be swapped in. Then stops every camera
    /// and inference worker (the event thread ends when they are gone).
    pub async fn run(mut self, mut requests: mpsc::Receiver<ControlRequest>) {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let shutdown = self.deps.shutdown.clone();
        let (done_tx, mut done) = mpsc::unbounded_channel::<UpdateDone>();
        let mut open = true;
        let mut site = self.deps.site.as_ref().map(|h| h.wanted.clone());
        self.report_site();
        loop {
            tokio::select! {
                changed = async { match site.as_mut() { Some(w) => w.changed().await, None => std::future::pending().await } } => {
                    match (changed, site.as_mut()) {
                        (Ok(()), Some(w)) => {
                            let wanted = w.borrow_and_update().clone();
                            if AssertUnwindSafe(self.apply_site(wanted)).catch_unwind().await.is_err() {
                                error!("applying the site assignment failed inside the agent; the supervisor carries on");
                            }
                        }
                        _ => site = None,
                    }
                }
                r = requests.recv(), if open => match r {
                    Some(r) => {
                        self.dispatch(r, &done_tx).await;
                        self.report_site();
                    }
                    None => open = false,
                },
                Some(UpdateDone { request_id, url, reply, result }) = done.recv() => {
                    let r = guarded(&mut self, "model.update", &request_id, |s| s.finish_update(&request_id, &url, result).boxed()).await;
                    answer("model.update", &request_id, r, reply);
                }
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                    if AssertUnwindSafe(self.reload()).catch_unwind().await.is_err() {
                        error!("the reload failed inside the agent; the supervisor carries on");
                    }
                    self.report_site();
                }
                _ = shutdown.cancelled() => break,
            }
        }
        if let Some(t) = self.updating.take() {
            t.cancel();
        }
        let report = self.deps.site.as_ref().map(|h| h.report.clone());
        let local = self.local_ids();
        self.stop_all().await;
        // The site task revokes the lease once nothing runs here any more.
        if let Some(r) = report {
            r.set(crate::site::Reported { local, ..Default::default() });
        }
    }

    // ---- site cameras ----

    fn local_ids(&self) -> BTreeSet<String> {
        self.cameras.iter().filter(|(_, c)| c.origin != Origin::Site).map(|(id, _)| id.clone()).collect()
    }

    /// Tells the site task which site cameras run here, which are refused, and this
    /// gateway's own camera ids.
    fn report_site(&self) {
        let Some(h) = &self.deps.site else { return };
        let running = self
            .cameras
            .iter()
            .filter(|(_, c)| c.origin == Origin::Site)
            .map(|(id, c)| (id.clone(), c.config.fps))
            .collect();
        h.report.set(crate::site::Reported { running, refused: self.site_refused.clone(), local: self.local_ids() });
    }

    /// Starts, restarts and stops site cameras to match the leader's table (already fenced
    /// by the site task: empty when this gateway must stop them).
    async fn apply_site(&mut self, wanted: crate::site::Wanted) {
        self.site_ids = wanted.site_ids;
        let running: Vec<String> =
            self.cameras.iter().filter(|(_, c)| c.origin == Origin::Site).map(|(id, _)| id.clone()).collect();
        for id in running {
            if wanted.cameras.get(&id) != self.site_sources.get(&id) {
                // Its tracks end here; the gateway that takes it over starts new ones.
                self.stop_camera(&id).await;
                self.site_sources.remove(&id);
                info!(camera = %id, "site camera stopped here");
            }
        }
        self.site_refused.retain(|id, _| wanted.cameras.contains_key(id));
        for (id, v) in wanted.cameras {
            if self.cameras.get(&id).is_some_and(|c| c.origin == Origin::Site) {
                continue;
            }
            if self.cameras.contains_key(&id) || self.in_config(&id) || self.overlay.camera(&id).is_some() {
                let why = "a local camera of this gateway has this id";
                if self.site_refused.insert(id.clone(), why.into()).is_none() {
                    warn!(camera = %id, "site camera refused: {why}");
                }
                continue;
            }
            let cam = match crate::config::camera_from_json(&v, &self.config) {
                Ok(c) => c,
                Err(problems) => {
                    let why = problems.join("; ");
                    if self.site_refused.insert(id.clone(), why.clone()).is_none() {
                        warn!(camera = %id, problems = %why, "site camera refused: invalid for this gateway");
                    }
                    continue;
                }
            };
            self.site_sources.insert(id.clone(), v);
            match self.start_camera(cam, Origin::Site).await {
                Ok(()) => {
                    self.site_refused.remove(&id);
                }
                Err(e) => {
                    self.site_sources.remove(&id);
                    let why = format!("{e:#}");
                    warn!(camera = %id, error = %why, "site camera refused: cannot start");
                    self.site_refused.insert(id, why);
                }
            }
        }
        self.report_site();
    }

    /// A local change may not touch a site camera or take its id.
    fn refuse_site_id(&self, id: &str, cam: &str) -> Option<Reply> {
        let site = self.site_ids.contains(cam) || self.cameras.get(cam).is_some_and(|c| c.origin == Origin::Site);
        site.then(|| {
            Reply::error(
                id,
                "site_camera",
                format!(
                    "{cam} is a site camera: change it with `lookout site camera`, or give a local camera another id"
                ),
            )
        })
    }

    async fn dispatch(&mut self, r: ControlRequest, done: &mpsc::UnboundedSender<UpdateDone>) {
        let (name, id) = (r.request.command.name(), r.request.request_id.clone());
        if let Command::ModelUpdate { manifest_url } = &r.request.command {
            // A started update answers when it is done.
            if let Err((reply, tx)) = self.start_update(&id, manifest_url, r.reply, done) {
                answer(name, &id, reply, tx);
            }
            return;
        }
        let req = r.request;
        let reply = guarded(self, name, &id, |s| s.handle(&req).boxed()).await;
        answer(name, &id, reply, r.reply);
    }

    async fn handle(&mut self, req: &Request) -> Reply {
        let id = req.request_id.as_str();
        match &req.command {
            Command::CameraAdd { camera } => self.camera_add(id, camera).await,
            Command::CameraUpdate { camera } => self.camera_update(id, camera, "MQTT camera.update").await,
            Command::CameraRemove { id: cam } => self.camera_remove(id, cam).await,
            Command::CameraRules { id: cam, rules, by } => self.camera_rules(id, cam, rules, by).await,
            // Started by `dispatch`, answered by `finish_update`.
            Command::ModelUpdate { .. } => Reply::error(id, "internal", "model.update is not run inline"),
            Command::ModelRollback { name } => self.model_rollback(id, name).await,
            Command::CameraList | Command::ModelList => super::handle_read(req, &self.deps.inventory),
        }
    }

    // ---- cameras ----

    fn parse_camera(&self, id: &str, camera: &Map<String, Value>) -> Result<CameraConfig, Reply> {
        crate::config::camera_from_json(&Value::Object(camera.clone()), &self.config).map_err(|problems| {
            let mut r = Reply::error(id, "invalid_camera", problems.join("; "));
            r.result.insert("problems".into(), json!(problems));
            r
        })
    }

    /// The camera's settings as its last source gave them: the runtime overlay, else the
    /// config file.
    fn camera_source(&self, cam: &str) -> Option<Map<String, Value>> {
        let v = self
            .site_sources
            .get(cam)
            .or_else(|| self.overlay.camera(cam))
            .cloned()
            .or_else(|| self.config.camera_sources.get(cam).cloned())?;
        match v {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    async fn camera_rules(&mut self, id: &str, cam: &str, rules: &Map<String, Value>, by: &str) -> Reply {
        if let Some(k) = rules.keys().find(|k| !RULE_KEYS.contains(&k.as_str())) {
            return Reply::error(id, "invalid_field", format!("{k}: only zones and lines can be changed here"));
        }
        let (Some(mut camera), true) = (self.camera_source(cam), self.cameras.contains_key(cam)) else {
            return Reply::error(id, "not_found", format!("no camera {cam}"));
        };
        for k in RULE_KEYS {
            camera.remove(k);
            match rules.get(k) {
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(v) => {
                    camera.insert(k.to_string(), v.clone());
                }
                None => {}
            }
        }
        self.camera_update(id, &camera, by).await
    }

    fn in_config(&self, cam: &str) -> bool {
        self.config.cameras.iter().any(|c| c.id == cam)
    }

    async fn camera_add(&mut self, id: &str, camera: &Map<String, Value>) -> Reply {
        let cam = match self.parse_camera(id, camera) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Some(r) = self.refuse_site_id(id, &cam.id) {
            return r;
        }
        if self.cameras.contains_key(&cam.id) {
            return Reply::error(id, "already_exists", format!("camera {} exists; use camera.update", cam.id));
        }
        let overrides = self.in_config(&cam.id);
        let origin = if overrides { Origin::RuntimeOverride } else { Origin::Runtime };
        let cam_id = cam.id.clone();
        let before = self.overlay.clone();
        self.overlay.upsert(&cam_id, Value::Object(camera.clone()));
        if let Err(r) = self.persist(id) {
            self.overlay = before;
            return r;
        }
        if let Err(e) = self.start_camera(cam, origin).await {
            self.overlay = before;
            let _ = self.persist(id);
            return Reply::error(id, "model_unavailable", format!("{e:#}"));
        }
        camera_reply(id, &cam_id, origin, overrides, true)
    }

    /// `by` says who asked, for the log and the console's record of changes.
    async fn camera_update(&mut self, id: &str, camera: &Map<String, Value>, by: &str) -> Reply {
        let cam = match self.parse_camera(id, camera) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if let Some(r) = self.refuse_site_id(id, &cam.id) {
            return r;
        }
        let Some(running) = self.cameras.get(&cam.id) else {
            return Reply::error(id, "not_found", format!("no camera {}; use camera.add", cam.id));
        };
        let overrides = self.in_config(&cam.id);
        let origin = if overrides { Origin::RuntimeOverride } else { Origin::Runtime };
        let changed = running.config != cam;
        let before = self.overlay.clone();
        let cam_id = cam.id.clone();
        self.overlay.upsert(&cam_id, Value::Object(camera.clone()));
        if let Err(r) = self.persist(id) {
            self.overlay = before;
            return r;
        }
        let live = changed && running.config.same_pipeline(&cam);
        if changed && !live {
            self.stop_camera(&cam_id).await;
            if let Err(e) = self.start_camera(cam, origin).await {
                return Reply::error(id, "model_unavailable", format!("{e:#}"));
            }
        } else if let Some(r) = self.cameras.get_mut(&cam_id) {
            if live {
                // Only what the event stage holds changed: the pipeline and tracks go on.
                let settings = LiveSettings {
                    rules: cam.rules.clone(),
                    count_interval: cam.count_interval,
                    snapshots: cam.snapshots,
                };
                let _ = self.deps.events.send(EventsCtl::Apply(r.ctx.clone(), Box::new(settings)));
                if let Some(spec) = self.active.get(&cam.model) {
                    let info = crate::console::CameraInfo::new(ModelOut::of(spec), &spec.labels, &cam.rules);
                    self.deps.console.add_camera(&cam_id, info);
                    self.deps.console.set_rules_source(&cam_id, rules_source(camera));
                }
                r.config = cam;
            }
            r.origin = origin;
            self.deps.inventory.set_camera(CameraEntry { ctx: r.ctx.clone(), config: r.config.clone(), origin });
        }
        let restarted = changed && !live;
        if changed {
            info!(camera = %cam_id, by, request_id = id, restarted, "camera settings changed");
            let at = crate::event::rfc3339_millis(SystemTime::now());
            let change = json!({ "ts": at, "by": by, "request_id": id, "restarted": restarted });
            self.deps.console.record_change(&cam_id, change);
        }
        let mut reply = camera_reply(id, &cam_id, origin, overrides, changed);
        reply.result.insert("restarted".into(), json!(restarted));
        reply
    }

    async fn camera_remove(&mut self, id: &str, cam: &str) -> Reply {
        if let Some(r) = self.refuse_site_id(id, cam) {
            return r;
        }
        if !self.cameras.contains_key(cam) {
            return Reply::error(id, "not_found", format!("no camera {cam}"));
        }
        let overrides = self.in_config(cam);
        let before = self.overlay.clone();
        self.overlay.remove(cam, overrides);
        if let Err(r) = self.persist(id) {
            self.overlay = before;
            return r;
        }
        self.stop_camera(cam).await;
        let mut m = Map::new();
        m.insert("camera".into(), json!(cam));
        m.insert("overrides_config".into(), json!(overrides));
        if overrides {
            m.insert(
                "note".into(),
                json!("the camera is in the config file; it stays removed until camera.add brings it back"),
            );
        }
        Reply::ok(id, m)
    }

    fn persist(&self, id: &str) -> Result<(), Reply> {
        self.overlay.save(&self.config.agent.state_dir).map_err(|e| {
            error!(error = %e, "cannot save runtime camera changes");
            Reply::error(
                id,
                "persist_failed",
                format!(
                    "cannot save to {}: {e}; nothing changed",
                    Overlay::path(&self.config.agent.state_dir).display()
                ),
            )
        })
    }

    async fn start_camera(&mut self, cam: CameraConfig, origin: Origin) -> anyhow::Result<()> {
        self.ensure_model(&cam.model).await?;
        let spec = self.active.get(&cam.model).context("model vanished")?.clone();
        let rt = self.models.get(&cam.model).context("model not loaded")?;
        let min_score = cam.min_score.unwrap_or(spec.postprocess.score_threshold);
        let ctx = Arc::new(CameraCtx::new(&cam.id, min_score));
        let spec_out = ModelOut::of(&spec);
        self.deps
            .console
            .add_camera(&cam.id, crate::console::CameraInfo::new(spec_out.clone(), &spec.labels, &cam.rules));
        if let Some(source) = self.camera_source(&cam.id) {
            self.deps.console.set_rules_source(&cam.id, rules_source(&source));
        }
        let stage = CameraEvents::new(
            CameraSpec {
                id: cam.id.clone(),
                scores: ctx.scores,
                lost_after: cam.lost_after,
                count_interval: cam.count_interval,
                rules: cam.rules.clone(),
                snapshots: cam.snapshots,
                labels: spec.labels.clone().into(),
                groups: self
                    .config
                    .class_groups
                    .iter()
                    .map(|g| (g.name.clone(), g.ids_in(&spec.labels)))
                    .filter(|(_, ids)| !ids.is_empty())
                    .collect(),
                // Messages name the model as its manifest does, like `detections` (infer).
                model: spec_out,
            },
            &self.deps.inventory.site,
            &self.deps.inventory.agent,
            self.deps.topics.clone(),
            SystemTime::now(),
        );
        let _ = self.deps.events.send(EventsCtl::Add(ctx.clone(), Box::new(stage)));
        let slot = rt.queue.register();
        let token = self.deps.shutdown.child_token();
        let task =
            tokio::spawn(source::run(cam.clone(), ctx.clone(), rt.format, rt.queue.clone(), slot, token.clone()));
        info!(camera = %cam.id, model = %cam.model, origin = ?origin, "camera started");
        self.deps.inventory.set_camera(CameraEntry { ctx: ctx.clone(), config: cam.clone(), origin });
        self.cameras.insert(cam.id.clone(), RunningCamera { ctx, config: cam, origin, token, task, slot });
        Ok(())
    }

    async fn stop_camera(&mut self, id: &str) {
        let Some(c) = self.cameras.remove(id) else { return };
        c.token.cancel();
        let _ = c.task.await;
        if let Some(rt) = self.models.get(&c.config.model) {
            rt.queue.unregister(c.slot);
        }
        // Its tracks end and its partial counts go out, like at shutdown.
        let _ = self.deps.events.send(EventsCtl::Remove(c.ctx.clone()));
        self.deps.inventory.remove_camera(id);
        self.deps.console.remove_camera(id);
        info!(camera = id, "camera stopped and removed");
    }

    /// Loads the model's session and starts its worker if no camera used it yet.
    async fn ensure_model(&mut self, name: &str) -> anyhow::Result<()> {
        if self.models.contains_key(name) {
            return Ok(());
        }
        let spec = self.active.get(name).with_context(|| format!("unknown model {name}"))?.clone();
        let dets = self.load(name, &spec).await?;
        let provider = dets.first().map_or(crate::config::Provider::Cpu, Detector::provider);
        let (h, w) = spec.input_size();
        let queue = Arc::new(FrameQueue::new());
        let stats = self.deps.inventory.model(name).map_or_else(|| Arc::new(ModelStats::new(name)), |m| m.stats);
        let (max_batch, max_wait) = (self.config.inference.max_batch, self.config.inference.max_wait);
        let (mut swaps, mut workers) = (Vec::new(), Vec::new());
        for (i, det) in dets.into_iter().enumerate() {
            let swap = Arc::new(ModelSwap::default());
            let (q, s, out, st) = (queue.clone(), swap.clone(), self.deps.analysed.clone(), stats.clone());
            let alive = self.deps.liveness.guard();
            self.deps.expected_threads.fetch_add(1, Ordering::SeqCst);
            let thread = if i == 0 { format!("infer-{name}") } else { format!("infer{i}-{name}") };
            let worker = std::thread::Builder::new()
                .name(thread)
                .spawn(move || {
                    let _alive = alive;
                    infer::run_worker(det, s, q, max_batch, max_wait, st, out)
                })
                .context("spawning inference thread")?;
            swaps.push(swap);
            workers.push(worker);
        }
        info!(model = name, version = %spec.version, sha256 = %spec.sha256, workers = workers.len(), "model loaded");
        self.models.insert(
            name.to_string(),
            ModelRuntime { queue, format: FrameFormat { width: w, height: h }, swaps, workers, provider },
        );
        let previous = self.deps.inventory.model(name).and_then(|m| m.previous);
        self.publish_model(name, &spec, previous);
        Ok(())
    }

    /// New sessions for model `name` at `spec` (one per worker), on the model's
    /// providers, off the async workers (loading takes a while).
    async fn load(&self, name: &str, spec: &ModelSpec) -> Result<Vec<Detector>, InferError> {
        let (model, cfg, env) = (spec.name.clone(), self.config.inference_for(name), self.deps.env.clone());
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || sessions(&spec, &cfg, &env))
            .await
            .unwrap_or_else(|source| Err(InferError::LoadInterrupted { model, source }))
    }

    // ---- reload ----

    /// `SIGHUP`: reads the config file again. On any problem nothing changes. Otherwise
    /// cameras are diffed: removed ones stop, new ones start, changed ones restart, the
    /// rest are not touched. Sections that cannot change live are reported.
    async fn reload(&mut self) {
        let file = self.config.file.clone();
        let new = match crate::config::load(&file) {
            Ok(c) => c,
            Err(e) => {
                error!(file = %file.display(), "reload refused, still running the previous config:\n{e}");
                return;
            }
        };
        for (section, a, b) in [
            ("[agent]", format!("{:?}", self.config.agent), format!("{:?}", new.agent)),
            ("[mqtt]", format!("{:?}", self.config.mqtt), format!("{:?}", new.mqtt)),
            ("[inference]", format!("{:?}", self.config.inference), format!("{:?}", new.inference)),
            ("[outbox]", format!("{:?}", self.config.outbox), format!("{:?}", new.outbox)),
            ("[telemetry]", format!("{:?}", self.config.telemetry), format!("{:?}", new.telemetry)),
            ("[[models]]", model_keys(&self.config), model_keys(&new)),
        ] {
            if a != b {
                warn!(section, "changed in the config file; takes effect at the next restart");
            }
        }
        let models_now = self.config.models.clone();
        if self.config.class_groups != new.class_groups {
            info!("[class_groups] changed: cameras get the new groups when they (re)start");
        }
        self.config.cameras = new.cameras;
        self.config.model_updates = new.model_updates;
        self.config.class_groups = new.class_groups;
        // New model names become available to cameras; existing ones keep running as they are.
        for m in new.models {
            if !models_now.iter().any(|o| o.name == m.name) {
                self.active.insert(m.name.clone(), m.spec.clone());
                self.config.models.push(m.clone());
                self.publish_model(&m.name, &m.spec, None);
            }
        }
        self.deps.inventory.set_config_sha256(crate::infer::manifest::sha256_file(&file).unwrap_or_default());
        let wanted = self.effective_cameras();
        let (mut added, mut removed, mut restarted, mut unchanged) = (0, 0, 0, 0);
        // Site cameras are the site task's, not the config file's.
        let gone: Vec<String> = self
            .cameras
            .iter()
            .filter(|(id, c)| c.origin != Origin::Site && !wanted.iter().any(|(w, _)| &w.id == *id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.stop_camera(&id).await;
            removed += 1;
        }
        for (cam, origin) in wanted {
            let id = cam.id.clone();
            if self.cameras.get(&id).is_some_and(|c| c.origin == Origin::Site) {
                error!(camera = %id, "the config file names a site camera's id; not started (give it another id)");
                continue;
            }
            match self.cameras.get(&id) {
                Some(r) if r.config == cam => unchanged += 1,
                Some(_) => {
                    self.stop_camera(&id).await;
                    match self.start_camera(cam, origin).await {
                        Ok(()) => restarted += 1,
                        Err(e) => error!(camera = %id, error = %format!("{e:#}"), "cannot restart camera"),
                    }
                }
                None => match self.start_camera(cam, origin).await {
                    Ok(()) => added += 1,
                    Err(e) => error!(camera = %id, error = %format!("{e:#}"), "cannot start camera"),
                },
            }
        }
        info!(added, removed, restarted, unchanged, file = %file.display(), "config reloaded");
    }

    async fn stop_all(mut self) {
        let ids: Vec<String> = self.cameras.keys().cloned().collect();
        for c in self.cameras.values() {
            c.token.cancel();
        }
        for id in ids {
            if let Some(c) = self.cameras.remove(&id) {
                let _ = c.task.await;
            }
        }
        let workers: Vec<_> = self
            .models
            .values_mut()
            .flat_map(|rt| {
                rt.queue.close();
                std::mem::take(&mut rt.workers)
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
    }

    /// Every camera context started so far (for the run summary).
    pub fn camera_contexts(&self) -> Vec<Arc<CameraCtx>> {
        self.cameras.values().map(|c| c.ctx.clone()).collect()
    }
}

/// Runs one command's handler; a panic in it becomes an `internal` reply and the
/// supervisor lives on (the camera or model it touched may be left stopped).
async fn guarded<'a, S>(
    state: &'a mut S,
    name: &str,
    id: &str,
    f: impl FnOnce(&'a mut S) -> futures_util::future::BoxFuture<'a, Reply>,
) -> Reply {
    match AssertUnwindSafe(f(state)).catch_unwind().await {
        Ok(reply) => reply,
        Err(_) => {
            error!(command = name, request_id = %id, "the command failed inside the agent; the supervisor carries on");
            Reply::error(id, "internal", "the command failed inside the agent; see its log")
        }
    }
}

fn answer(name: &str, id: &str, reply: Reply, tx: oneshot::Sender<Reply>) {
    let code = reply.error.as_ref().map_or("", |e| e.code);
    info!(command = name, request_id = %id, ok = reply.ok, code, "command done");
    let _ = tx.send(reply);
}

fn model_keys(c: &Config) -> String {
    c.models
        .iter()
        .map(|m| {
            let providers: Vec<&str> = m.providers.iter().map(|p| p.as_str()).collect();
            format!("{}={}@{}[{}]", m.name, m.manifest.display(), m.spec.sha256, providers.join("/"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The camera's `zones` and `lines` as its source gave them (class names, groups and
/// all), for the console's editor; nothing else of it (its URL may hold a password).
fn rules_source(camera: &Map<String, Value>) -> Value {
    let mut m = Map::new();
    for k in RULE_KEYS {
        m.insert(k.to_string(), camera.get(k).cloned().unwrap_or_else(|| json!([])));
    }
    Value::Object(m)
}

/// What `camera.rules` replaces.
const RULE_KEYS: [&str; 2] = ["zones", "lines"];

fn camera_reply(id: &str, cam: &str, origin: Origin, overrides: bool, changed: bool) -> Reply {
    let mut m = Map::new();
    m.insert("camera".into(), json!(cam));
    m.insert("origin".into(), json!(origin));
    m.insert("overrides_config".into(), json!(overrides));
    m.insert("changed".into(), json!(changed));
    if overrides {
        m.insert(
            "note".into(),
            json!("this runtime setting overrides the config file's camera of the same id until it is removed"),
        );
    }
    Reply::ok(id, m)
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[tokio::test]
    async fn a_command_that_panics_is_answered_internal_and_the_next_one_runs() {
        let mut handled = 0u32;
        let reply =
            guarded(&mut handled, "camera.add", "r-1", |_| async { panic!("a bug in a handler") }.boxed()).await;
        assert_eq!(reply.error.as_ref().map(|e| e.code), Some("internal"));
        assert!(!serde_json::to_string(&reply).expect("json").contains("a bug"), "the panic text stays in the log");
        let reply = guarded(&mut handled, "camera.list", "r-2", |n| {
            async move {
                *n += 1;
                Reply::ok("r-2", Map::new())
            }
            .boxed()
        })
        .await;
        assert!(reply.ok && handled == 1);
    }
}
