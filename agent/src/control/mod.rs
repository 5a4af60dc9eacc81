//! Remote control over MQTT: `commands/{name}` in, `replies/{request_id}`
//! out. The MQTT task hands each command to [`ControlPlane::route`]: the signature and
//! replay checks ([`signed`]), then [`command`] parses. Read-only commands
//! (`camera.list`, `model.list`) are answered at once from the [`inventory::Inventory`]
//! ([`handle_read`]); commands that change something are queued to the [`supervisor`],
//! which runs them one at a time. Every outcome is a reply; nothing a command says can
//! stop the agent.

pub mod command;
pub mod inventory;
pub mod overlay;
pub mod signed;
pub mod supervisor;

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tracing::{info, warn};

use command::{Command, Reply, Request};
use inventory::Inventory;
use signed::CommandGuard;

/// Commands waiting for the supervisor; when full, a new one is refused as `busy`.
pub const CONTROL_QUEUE: usize = 16;

/// A mutating command and where its reply goes.
pub struct ControlRequest {
    pub request: Request,
    pub reply: tokio::sync::oneshot::Sender<Reply>,
}

/// What routing a command needs: the running inventory (read-only commands), where
/// mutating commands go, and the signature and replay checks.
pub struct ControlPlane {
    pub inventory: Arc<Inventory>,
    /// Where commands that change something go (the supervisor).
    pub requests: tokio::sync::mpsc::Sender<ControlRequest>,
    /// Signature checks and the nonces seen: shared by every connection, so a command
    /// captured on one cannot be replayed on the next.
    pub guard: Mutex<CommandGuard>,
    /// `[site]`: the site task's state (the leader's retained `lookout.site/1`).
    pub site: Option<Arc<crate::site::coordinator::SiteState>>,
}

impl ControlPlane {
    /// Routes command `name` (from its topic) with `payload`. The reply comes back at
    /// once, or, for a change queued to the supervisor, later through `replies` (a model
    /// download can take minutes); `None` then.
    pub fn route(
        &self,
        name: &str,
        payload: &[u8],
        retain: bool,
        replies: &tokio::sync::mpsc::UnboundedSender<Reply>,
    ) -> Option<Reply> {
        if retain {
            // A retained command would run again at every reconnect.
            return Some(Reply::error(command::NO_REQUEST_ID, "retained_command", "commands must not be retained"));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let admitted = self.guard.lock().unwrap_or_else(|e| e.into_inner()).admit(name, payload, now);
        let req = match admitted.and_then(|a| {
            if let Some(key) = a.signed_by {
                info!(command = name, key = %crate::model::signature::public_key_string(&key), "signed command");
            }
            command::parse_object(name, a.payload)
        }) {
            Ok(req) => req,
            Err(reply) => {
                let code = reply.error.as_ref().map_or("", |e| e.code);
                warn!(command = name, code, "command refused");
                return Some(reply);
            }
        };
        if req.command.is_read_only() {
            let reply = handle_read(&req, &self.inventory);
            info!(command = name, request_id = %req.request_id, ok = reply.ok, "command");
            return Some(reply);
        }
        // Changes run on the supervisor, one at a time.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = req.request_id.clone();
        info!(command = name, request_id = %id, "command queued");
        match self.requests.try_send(ControlRequest { request: req, reply: tx }) {
            Ok(()) => {
                let back = replies.clone();
                tokio::spawn(async move {
                    let reply = rx.await.unwrap_or_else(|_| {
                        Reply::error(&id, "shutting_down", "the agent stopped before the command ran")
                    });
                    let _ = back.send(reply);
                });
                None
            }
            Err(_) => {
                Some(Reply::error(&id, "busy", format!("{CONTROL_QUEUE} changes are already waiting; try again later")))
            }
        }
    }
}

/// Answers `camera.list` and `model.list`; anything else is the supervisor's.
pub fn handle_read(req: &Request, inventory: &Inventory) -> Reply {
    let id = req.request_id.as_str();
    match &req.command {
        Command::CameraList => {
            let cameras: Vec<Value> = inventory
                .camera_entries()
                .iter()
                .map(|c| {
                    let (st, reason) = c.ctx.state();
                    let stream = c.ctx.stream();
                    json!({
                        "id": c.config.id,
                        "model": c.config.model,
                        "url": crate::config::redact_url(&c.config.url),
                        "fps": c.config.fps,
                        "state": st.as_str(),
                        "reason": reason,
                        "origin": c.origin,
                        "rtsp_client": stream.as_ref().map(|s| s.rtsp_client),
                        "codec": stream.as_ref().map(|s| s.codec),
                        "decoder": stream.as_ref().map(|s| s.decoder.as_str()),
                    })
                })
                .collect();
            Reply::ok(id, Map::from_iter([("cameras".to_string(), Value::Array(cameras))]))
        }
        Command::ModelList => {
            let entries = inventory.camera_entries();
            let models: Vec<Value> = inventory
                .models()
                .iter()
                .map(|m| {
                    let cameras: Vec<&str> =
                        entries.iter().filter(|c| c.config.model == m.name).map(|c| c.config.id.as_str()).collect();
                    json!({
                        "name": m.name,
                        "manifest_name": m.manifest_name,
                        "active": m.active,
                        "previous": m.previous,
                        "installed": m.installed,
                        "loaded": m.loaded,
                        "provider": m.provider,
                        "cameras": cameras,
                    })
                })
                .collect();
            Reply::ok(id, Map::from_iter([("models".to_string(), Value::Array(models))]))
        }
        other => Reply::error(id, "internal", format!("{} is not a read-only command", other.name())),
    }
}

/// `lookout command sign`: the payload on stdin, signed for `agent` (`{site}/{id}`), on
/// stdout. The command is parsed first: signing one every agent refuses helps nobody.
pub fn sign_command(name: &str, key: &std::path::Path, agent: &str, expires_in: u64) -> anyhow::Result<()> {
    use anyhow::{Context, bail};
    use std::io::Read as _;
    if !(1..=signed::MAX_EXPIRY_SECS).contains(&expires_in) {
        bail!("--expires-in must be 1 to {} seconds", signed::MAX_EXPIRY_SECS);
    }
    let id_ok =
        |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !agent.split_once('/').is_some_and(|(site, id)| id_ok(site) && id_ok(id)) {
        bail!("--agent must be {{site}}/{{agent id}}, e.g. main-street/gw-07");
    }
    let key = crate::model::signature::read_secret(key)?;
    let mut text = Vec::new();
    std::io::stdin().read_to_end(&mut text).context("reading the payload from stdin")?;
    let mut payload =
        command::decode(&text).map_err(|r| anyhow::anyhow!("{}", r.error.map_or_else(String::new, |e| e.message)))?;
    payload.remove(signed::FIELD);
    if let Err(r) = command::parse_object(name, payload.clone()) {
        let e = r.error.map_or_else(String::new, |e| format!("{}: {}", e.code, e.message));
        bail!("the command would be refused: {e}");
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).context("clock")?.as_secs();
    let nonce = signed::new_nonce().map_err(anyhow::Error::msg)?;
    let signed = signed::sign(name, payload, &key, agent, now + expires_in, &nonce);
    println!("{}", serde_json::to_string(&signed)?);
    Ok(())
}
