//! What a site keeps in etcd, and the layout of its keys. Everything lives under
//! `lookout/v1/{site}/`:
//!
//! | key | written by | bound to | value |
//! |---|---|---|---|
//! | `agents/{agent}` | that agent | its lease | [`MemberRecord`] |
//! | `cameras/{id}` | `lookout site camera add/update/remove` | — | the camera's `camera.add` JSON |
//! | `leader` | the elected agent (create-if-absent transaction) | its lease | the agent id |
//! | `assignment` | the leader (transaction: only while it holds `leader`) | — | [`Assignment`] |
//!
//! Values are JSON and read as hostile input: an unreadable one is skipped and counted,
//! never trusted, so one bad write cannot stop a site.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::assign;

/// The largest value read from etcd (etcd's own default request limit is 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// The most site cameras a site inventory holds.
pub const MAX_CAMERAS: usize = 10_000;
/// The largest camera JSON (zones and lines included) a site camera may have.
pub const MAX_CAMERA_BYTES: usize = 64 * 1024;
/// The most members a gateway keeps track of.
pub const MAX_MEMBERS: usize = 1_000;

/// Key names for one site.
#[derive(Debug, Clone)]
pub struct Keys {
    site: String,
    prefix: String,
}

impl Keys {
    pub fn new(site: &str) -> Self {
        Self { site: site.to_string(), prefix: format!("lookout/v1/{site}/") }
    }
    pub fn site(&self) -> &str {
        &self.site
    }
    /// Everything of the site (what an agent lists and watches).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn agents(&self) -> String {
        format!("{}agents/", self.prefix)
    }
    pub fn agent(&self, id: &str) -> String {
        format!("{}agents/{id}", self.prefix)
    }
    pub fn cameras(&self) -> String {
        format!("{}cameras/", self.prefix)
    }
    pub fn camera(&self, id: &str) -> String {
        format!("{}cameras/{id}", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }
    pub fn assignment(&self) -> String {
        format!("{}assignment", self.prefix)
    }

    /// What a key of this site is.
    pub fn classify<'k>(&self, key: &'k str) -> Option<Key<'k>> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if let Some(id) = rest.strip_prefix("agents/") {
            return Some(Key::Agent(id));
        }
        if let Some(id) = rest.strip_prefix("cameras/") {
            return Some(Key::Camera(id));
        }
        match rest {
            "leader" => Some(Key::Leader),
            "assignment" => Some(Key::Assignment),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'k> {
    Agent(&'k str),
    Camera(&'k str),
    Leader,
    Assignment,
}

/// What an agent says of itself under `agents/{agent}` (bound to its lease, so it vanishes
/// when the agent stops renewing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRecord {
    pub agent: String,
    pub version: String,
    /// Analysed fps it takes on for site cameras.
    pub capacity: f64,
    /// The `[[models]]` names it can run.
    pub models: BTreeSet<String>,
    /// Its own cameras (config file and `camera.add`): a site camera may not reuse an id.
    pub local_cameras: BTreeSet<String>,
    /// The analysed fps of the site cameras it runs now.
    pub load: f64,
    /// The site cameras it runs now.
    pub running: BTreeSet<String>,
    /// Site cameras assigned to it that it cannot run, with why.
    pub refused: BTreeMap<String, String>,
}

/// The leader's table under `assignment`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The agent that wrote it.
    pub leader: String,
    /// Camera id → agent id.
    pub cameras: BTreeMap<String, String>,
    /// Cameras that fit nowhere, with why (`no_model`, `no_room`).
    pub unassigned: BTreeMap<String, String>,
    /// Cameras moved between live gateways since the leader took over.
    pub moves: u64,
    /// When it was written (RFC 3339, UTC).
    pub ts: String,
}

/// `schema` of the site's retained message.
pub const SITE_SCHEMA: &str = "lookout.site/1";

/// The body of `lookout.site/1` (the leader adds `id` and `ts` when it publishes): the
/// members, the assignment table and the cameras that fit nowhere.
pub fn site_body(site: &str, leader: &str, members: &[&MemberRecord], a: &Assignment, cameras: usize) -> Value {
    let mut assigned: BTreeMap<&str, usize> = BTreeMap::new();
    for agent in a.cameras.values() {
        *assigned.entry(agent.as_str()).or_default() += 1;
    }
    let members: Vec<Value> = members
        .iter()
        .map(|m| {
            serde_json::json!({
                "agent": m.agent,
                "version": m.version,
                "capacity": m.capacity,
                "load": m.load,
                "models": m.models,
                "assigned": assigned.get(m.agent.as_str()).copied().unwrap_or(0),
                "running": m.running.len(),
                "refused": m.refused,
            })
        })
        .collect();
    serde_json::json!({
        "schema": SITE_SCHEMA,
        "site": site,
        "agent": leader,
        "members": members,
        "cameras": cameras,
        "assignment": a.cameras,
        "unassigned": a.unassigned,
        "moves": a.moves,
    })
}

/// Reads a value from etcd as `T`, bounded in size.
pub fn parse<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!("{} bytes, more than {MAX_VALUE_BYTES}", value.len()));
    }
    serde_json::from_slice(value).map_err(|e| format!("not a valid record: {e}"))
}

/// A site camera as the planner weighs it: its `model` and `fps` (default 1). Full
/// validation happens where it runs, against that gateway's config.
pub fn planner_camera(id: &str, camera: &Value) -> Result<assign::Camera, String> {
    let model = camera.get("model").and_then(Value::as_str).ok_or("model: missing or not a string")?;
    let weight = match camera.get("fps") {
        None => 1.0,
        Some(v) => v.as_f64().filter(|f| (0.01..=60.0).contains(f)).ok_or("fps: must be a number from 0.01 to 60")?,
    };
    match camera.get("id").and_then(Value::as_str) {
        Some(inner) if inner == id => Ok(assign::Camera { id: id.to_string(), model: model.to_string(), weight }),
        _ => Err("id: must equal the key's camera id".into()),
    }
}

/// A camera or agent id as used in a key: the same rule as topic segments.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn keys_round_trip_through_classify() {
        let k = Keys::new("city");
        assert_eq!(k.classify(&k.agent("gw-1")), Some(Key::Agent("gw-1")));
        assert_eq!(k.classify(&k.camera("cam-7")), Some(Key::Camera("cam-7")));
        assert_eq!(k.classify(&k.leader()), Some(Key::Leader));
        assert_eq!(k.classify(&k.assignment()), Some(Key::Assignment));
        assert_eq!(k.classify("lookout/v1/other/leader"), None, "another site's key");
        assert_eq!(k.classify("lookout/v1/city/unknown"), None);
    }

    #[test]
    fn a_camera_is_weighed_by_its_fps_and_must_name_its_own_id() {
        let c = planner_camera("cam-1", &json!({"id": "cam-1", "model": "person", "fps": 2})).expect("camera");
        assert_eq!((c.model.as_str(), c.weight), ("person", 2.0));
        let c = planner_camera("cam-1", &json!({"id": "cam-1", "model": "person"})).expect("default fps");
        assert_eq!(c.weight, 1.0);
        assert!(planner_camera("cam-1", &json!({"id": "cam-2", "model": "person"})).is_err());
        assert!(planner_camera("cam-1", &json!({"id": "cam-1", "model": "person", "fps": 0})).is_err());
        assert!(planner_camera("cam-1", &json!({"id": "cam-1"})).is_err());
    }

    #[test]
    fn records_refuse_oversized_and_unknown_input() {
        assert!(parse::<Assignment>(&vec![b' '; MAX_VALUE_BYTES + 1]).is_err());
        assert!(
            parse::<Assignment>(br#"{"leader":"a","cameras":{},"unassigned":{},"moves":0,"ts":"","x":1}"#).is_err()
        );
        let a = Assignment { leader: "gw-1".into(), ..Default::default() };
        let bytes = serde_json::to_vec(&a).expect("json");
        assert_eq!(parse::<Assignment>(&bytes), Ok(a));
    }

    #[test]
    fn the_site_message_matches_its_published_schema() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas/lookout.site.1.json");
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("json");
        let v = jsonschema::options().should_validate_formats(true).build(&schema).expect("compiles");
        let m = MemberRecord {
            agent: "gw-1".into(),
            version: "0.1.0".into(),
            capacity: 6.0,
            models: ["person".to_string()].into(),
            local_cameras: BTreeSet::new(),
            load: 2.0,
            running: ["cam-1".to_string(), "cam-2".to_string()].into(),
            refused: [("cam-3".to_string(), "a local camera of this gateway has this id".to_string())].into(),
        };
        let a = Assignment {
            leader: "gw-1".into(),
            cameras: [("cam-1".to_string(), "gw-1".to_string()), ("cam-2".to_string(), "gw-1".to_string())].into(),
            unassigned: [("cam-9".to_string(), "no_room".to_string())].into(),
            moves: 3,
            ts: String::new(),
        };
        let mut body = site_body("city", "gw-1", &[&m], &a, 4);
        body["id"] = json!(crate::event::new_id());
        body["ts"] = json!(crate::event::rfc3339_millis(std::time::SystemTime::now()));
        let errors: Vec<String> = v.iter_errors(&body).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:?}\n{body:#}");
        assert_eq!(body["members"][0]["assigned"], 2);
        let mut bad = body.clone();
        bad["assignment"]["cam-1"] = json!("not an id!");
        assert!(!v.is_valid(&bad), "the schema constrains what it describes");
    }

    proptest! {
        #[test]
        fn no_etcd_value_panics_the_readers(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse::<MemberRecord>(&bytes);
            let _ = parse::<Assignment>(&bytes);
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                let _ = planner_camera("x", &v);
            }
        }
    }
}
