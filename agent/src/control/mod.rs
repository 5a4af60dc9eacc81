//! Remote control over MQTT (issue 6): `commands/{name}` in, `replies/{request_id}`
//! out. [`command`] parses; [`handle`] answers. Handling is synchronous and cheap (it
//! runs on the MQTT task), and never fails the agent: every outcome is a reply.

pub mod command;

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::event::AgentInfo;
use crate::source::CameraCtx;
use command::{Command, Reply, Request};

/// What the commands can see and act on.
pub struct ControlState<'a> {
    pub info: &'a AgentInfo,
    pub cameras: &'a [Arc<CameraCtx>],
}

/// Answers one parsed command.
pub fn handle(req: &Request, state: &ControlState<'_>) -> Reply {
    let id = req.request_id.as_str();
    match &req.command {
        Command::CameraList => {
            let cameras: Vec<Value> = state
                .cameras
                .iter()
                .map(|c| {
                    let (st, reason) = c.state();
                    let model = state.info.cameras.iter().find(|(cid, ..)| *cid == c.id).map(|(_, m, ..)| m.clone());
                    json!({ "id": c.id, "model": model, "state": st.as_str(), "reason": reason, "source": "config" })
                })
                .collect();
            Reply::ok(id, Map::from_iter([("cameras".to_string(), Value::Array(cameras))]))
        }
        Command::ModelList => {
            let mut models: Vec<Value> = Vec::new();
            for (_, name, version, sha256) in &state.info.cameras {
                if !models.iter().any(|m| m["name"] == *name) {
                    models.push(json!({ "name": name, "version": version, "sha256": sha256, "active": true }));
                }
            }
            Reply::ok(id, Map::from_iter([("models".to_string(), Value::Array(models))]))
        }
        Command::CameraAdd { .. }
        | Command::CameraUpdate { .. }
        | Command::CameraRemove { .. }
        | Command::ModelUpdate { .. }
        | Command::ModelRollback { .. } => Reply::error(
            id,
            "not_implemented",
            "this agent version lists cameras and models; runtime changes are not available yet",
        ),
    }
}
