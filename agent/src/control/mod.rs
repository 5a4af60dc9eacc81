//! Remote control over MQTT (issue 6): `commands/{name}` in, `replies/{request_id}`
//! out. [`command`] parses. Read-only commands (`camera.list`, `model.list`) are answered
//! at once from the [`fleet::Fleet`] by the MQTT task ([`handle_read`]); commands that
//! change something are queued to the [`supervisor`], which runs them one at a time.
//! Every outcome is a reply; nothing a command says can stop the agent.

pub mod command;
pub mod fleet;
pub mod overlay;
pub mod supervisor;

use serde_json::{Map, Value, json};

use command::{Command, Reply, Request};
use fleet::Fleet;

/// Answers `camera.list` and `model.list`; anything else is the supervisor's.
pub fn handle_read(req: &Request, fleet: &Fleet) -> Reply {
    let id = req.request_id.as_str();
    match &req.command {
        Command::CameraList => {
            let cameras: Vec<Value> = fleet
                .camera_entries()
                .iter()
                .map(|c| {
                    let (st, reason) = c.ctx.state();
                    json!({
                        "id": c.config.id,
                        "model": c.config.model,
                        "url": crate::config::redact_url(&c.config.url),
                        "fps": c.config.fps,
                        "state": st.as_str(),
                        "reason": reason,
                        "origin": c.origin,
                    })
                })
                .collect();
            Reply::ok(id, Map::from_iter([("cameras".to_string(), Value::Array(cameras))]))
        }
        Command::ModelList => {
            let entries = fleet.camera_entries();
            let models: Vec<Value> = fleet
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
                        "cameras": cameras,
                    })
                })
                .collect();
            Reply::ok(id, Map::from_iter([("models".to_string(), Value::Array(models))]))
        }
        other => Reply::error(id, "internal", format!("{} is not a read-only command", other.name())),
    }
}
