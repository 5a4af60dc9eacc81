//! The supervisor's model changes: `model.update` (the download and load off the async
//! workers, then the swap) and `model.rollback`.

use super::*;

impl Supervisor {
    /// The highest version `name` has run here: the config's or active one, and what
    /// the store remembers (after a rollback the newer one stays the floor).
    pub(super) fn highest_version(&self, name: &str) -> String {
        let mut best = self.active.get(name).map(|s| s.version.clone()).unwrap_or_default();
        if let Ok(Some(st)) = self.store.state(name) {
            let seen = [Some(st.active.version), st.previous.map(|p| p.version), st.highest];
            for v in seen.into_iter().flatten() {
                if compare_versions(&v, &best).is_gt() {
                    best = v;
                }
            }
        }
        best
    }

    /// Starts a `model.update` off the command loop: download, verification, install and
    /// the new session's load and self-test all run on the blocking pool, cancelled at
    /// shutdown. `Err` is the reply when it cannot start.
    pub(super) fn start_update(
        &mut self,
        id: &str,
        manifest_url: &str,
        reply: oneshot::Sender<Reply>,
        done: &mpsc::UnboundedSender<UpdateDone>,
    ) -> Result<(), (Reply, oneshot::Sender<Reply>)> {
        if !self.config.model_updates.enabled() {
            let e = update::UpdateError::Disabled;
            return Err((Reply::error(id, e.code(), e.to_string()), reply));
        }
        if self.updating.is_some() {
            let busy = Reply::error(id, "busy", "another model.update is in progress; try again when it is answered");
            return Err((busy, reply));
        }
        let known: Vec<KnownModel> = self
            .config
            .models
            .iter()
            .map(|m| KnownModel {
                name: m.name.clone(),
                manifest_name: self.active.get(&m.name).map_or_else(|| m.spec.name.clone(), |s| s.name.clone()),
                highest: self.highest_version(&m.name),
            })
            .collect();
        let loaded: HashSet<String> = self.models.keys().cloned().collect();
        let token = self.deps.shutdown.child_token();
        self.updating = Some(token.clone());
        let (url, cfg, icfgs, env) = (
            manifest_url.to_string(),
            self.config.model_updates.clone(),
            // Each model's own providers.
            self.config
                .models
                .iter()
                .map(|m| (m.name.clone(), self.config.inference_for(&m.name)))
                .collect::<std::collections::HashMap<_, _>>(),
            self.deps.env.clone(),
        );
        let store = ModelStore::new(&self.config.agent.state_dir);
        let (done, request_id) = (done.clone(), id.to_string());
        tokio::spawn(async move {
            let job_url = url.clone();
            let result = tokio::task::spawn_blocking(move || {
                prepare(&job_url, &cfg, &icfgs, &env, &store, &known, &loaded, &token)
            })
            .await
            .unwrap_or_else(|_| Err(("internal", "the update failed inside the agent; see its log".into())));
            let _ = done.send(UpdateDone { request_id, url, reply, result });
        });
        Ok(())
    }

    pub(super) async fn finish_update(
        &mut self,
        id: &str,
        url: &str,
        result: Result<Prepared, (&'static str, String)>,
    ) -> Reply {
        self.updating = None;
        let p = match result {
            Ok(p) => p,
            Err((code, message)) => {
                warn!(url = %crate::config::redact_url(url), code, error = %message, "model update refused");
                return Reply::error(id, code, message);
            }
        };
        let (installed, spec) = (&p.installed, &p.spec);
        let cleanup = |s: &Self| {
            if installed.fresh {
                let _ = std::fs::remove_dir_all(s.store.version_dir(&installed.name, &installed.version));
            }
        };
        let alias = installed.name.clone();
        if let Some(cur) = self.active.get(&alias)
            && cur.sha256 == spec.sha256
            && cur.version == spec.version
        {
            let mut m = Map::new();
            m.insert("model".into(), json!({"name": spec.name, "version": spec.version, "sha256": spec.sha256}));
            m.insert("changed".into(), json!(false));
            return Reply::ok(id, m);
        }
        let mut extra = Map::new();
        extra.insert("signed_by".into(), json!(installed.signed_by));
        match self.activate(&alias, spec, "update", p.detector).await {
            Ok(m) => {
                extra.extend(m);
                Reply::ok(id, extra)
            }
            Err((code, message)) => {
                cleanup(self);
                warn!(model = %spec.name, version = %spec.version, code, error = %message, "model update refused; the running version stays");
                Reply::error(id, code, message)
            }
        }
    }

    pub(super) async fn model_rollback(&mut self, id: &str, name: &str) -> Reply {
        let Some(entry) = self.deps.inventory.model(name) else {
            return Reply::error(id, "unknown_model", format!("no model {name}"));
        };
        let Some(prev) = entry.previous.clone() else {
            return Reply::error(id, "no_previous", format!("{name} has no previous version to roll back to"));
        };
        let spec = if prev.source == "config" {
            match self.config.model(name) {
                Some(m) => Ok(m.spec.clone()),
                None => Err("the config no longer names it".to_string()),
            }
        } else {
            ModelSpec::load(&self.store.version_dir(name, &prev.version).join("manifest.toml"))
                .map_err(|e| e.to_string())
        };
        let spec = match spec {
            Ok(s) => s,
            Err(e) => {
                return Reply::error(id, "rollback_failed", format!("version {} is not usable: {e}", prev.version));
            }
        };
        match self.activate(name, &spec, prev.source, None).await {
            Ok(m) => Reply::ok(id, m),
            Err((code, message)) => Reply::error(id, code, message),
        }
    }

    /// Makes `spec` the model's running version: a new session (shape checks and the
    /// self-test included; `preloaded` if the caller made it already), then the swap,
    /// then the record on disk. On any error the running version is untouched.
    pub(super) async fn activate(
        &mut self,
        name: &str,
        spec: &ModelSpec,
        source: &'static str,
        preloaded: Option<Vec<Detector>>,
    ) -> Result<Map<String, Value>, (&'static str, String)> {
        let name = name.to_string();
        let old = self.active.get(&name).cloned().ok_or(("unknown_model", format!("no model {name}")))?;
        let old_version = ModelVersion {
            version: old.version.clone(),
            sha256: old.sha256.clone(),
            source: self.source_of(&name, &old),
        };
        let new_version = ModelVersion { version: spec.version.clone(), sha256: spec.sha256.clone(), source };
        let mut switched: Vec<String> = Vec::new();
        if self.models.contains_key(&name) {
            let dets = match preloaded {
                Some(d) => d,
                None => self.load(&name, spec).await.map_err(load_error)?,
            };
            let (h, w) = spec.input_size();
            let format = FrameFormat { width: w, height: h };
            let resize = self.models.get(&name).is_some_and(|rt| (rt.format.width, rt.format.height) != (w, h));
            if let Some(rt) = self.models.get_mut(&name) {
                if let Some(d) = dets.first() {
                    rt.provider = d.provider();
                }
                // [inference] cannot change live, so there is one new session per worker.
                for (swap, det) in rt.swaps.iter().zip(dets) {
                    swap.put(det);
                }
                rt.format = format;
            }
            switched = self.cameras.values().filter(|c| c.config.model == name).map(|c| c.config.id.clone()).collect();
            switched.sort();
            // The console's camera pages name the version now running (history kept).
            let out = ModelOut::of(spec);
            for c in self.cameras.values().filter(|c| c.config.model == name) {
                let info = crate::console::CameraInfo::new(out.clone(), &spec.labels, &c.config.rules);
                self.deps.console.add_camera(&c.config.id, info);
            }
            if resize {
                // Frames are scaled to the model's input by each camera's pipeline: those
                // cameras restart (briefly) with the new size.
                for cam in &switched {
                    if let Some(c) = self.cameras.get(cam) {
                        let (cfg, origin) = (c.config.clone(), c.origin);
                        self.stop_camera(cam).await;
                        if let Err(e) = self.start_camera(cfg, origin).await {
                            error!(camera = %cam, error = %format!("{e:#}"), "cannot restart camera after the model's input size changed");
                        }
                    }
                }
            }
        }
        let mut highest = self.highest_version(&name);
        if compare_versions(&new_version.version, &highest).is_gt() {
            highest = new_version.version.clone();
        }
        self.active.insert(name.clone(), spec.clone());
        let state = ModelState {
            format: crate::model::store::FORMAT.into(),
            active: StoredVersion::from(&new_version),
            previous: Some(StoredVersion::from(&old_version)),
            highest: Some(highest),
        };
        if let Err(e) = self.store.save_state(&name, &state) {
            error!(model = %name, error = %e, "cannot record the active model version; a restart would run the previous one");
        }
        let keep = self.config.model_updates.keep_versions;
        let removed = self.store.prune(&name, keep, &[new_version.version.as_str(), old_version.version.as_str()]);
        if !removed.is_empty() {
            info!(model = %name, removed = ?removed, "old model versions deleted");
        }
        self.publish_model(&name, spec, Some(old_version.clone()));
        info!(model = %name, from = %old_version.version, to = %new_version.version, cameras = ?switched, "model version active");
        let mut m = Map::new();
        m.insert("model".into(), json!({"name": name, "version": new_version.version, "sha256": new_version.sha256}));
        m.insert("previous".into(), json!({"version": old_version.version, "sha256": old_version.sha256}));
        m.insert("cameras".into(), json!(switched));
        Ok(m)
    }

    pub(super) fn source_of(&self, name: &str, spec: &ModelSpec) -> &'static str {
        if self.config.model(name).is_some_and(|m| m.spec.path == spec.path) { "config" } else { "update" }
    }
}

pub(super) fn load_error(e: InferError) -> (&'static str, String) {
    match e {
        InferError::Mismatch { .. } => ("shape_mismatch", e.to_string()),
        InferError::SelfTest { .. } => ("self_test_failed", e.to_string()),
        _ => ("load_failed", e.to_string()),
    }
}

/// The blocking half of a `model.update`: install the release, read its manifest, and
/// load and self-test a session for it if the model is running. A fresh install that
/// fails later is removed again.
#[allow(clippy::too_many_arguments)]
pub(super) fn prepare(
    url: &str,
    cfg: &crate::config::ModelUpdatesConfig,
    icfgs: &std::collections::HashMap<String, crate::config::InferenceConfig>,
    env: &ort::environment::Environment,
    store: &ModelStore,
    known: &[KnownModel],
    loaded: &HashSet<String>,
    cancel: &CancellationToken,
) -> Result<Prepared, (&'static str, String)> {
    // A release URL may carry a token in its query: replies and logs show it masked.
    let installed = update::install(url, cfg, store, known, cancel)
        .map_err(|e| (e.code(), crate::config::redact_urls_in(&e.to_string())))?;
    let remove = |i: &Installed| {
        if i.fresh {
            let _ = std::fs::remove_dir_all(store.version_dir(&i.name, &i.version));
        }
    };
    let spec = match ModelSpec::load(&installed.manifest) {
        Ok(s) => s,
        Err(e) => {
            remove(&installed);
            return Err(("bad_manifest", e.to_string()));
        }
    };
    let detector = if loaded.contains(&installed.name) {
        let icfg = icfgs.get(&installed.name).cloned().unwrap_or_default();
        match super::sessions(&spec, &icfg, env) {
            Ok(d) => Some(d),
            Err(e) => {
                remove(&installed);
                return Err(load_error(e));
            }
        }
    } else {
        None
    };
    Ok(Prepared { installed, spec, detector })
}
