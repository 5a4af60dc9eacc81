//! Remote commands: `lookout/v1/{site}/{agent}/commands/{name}` carries a JSON object
//! with a `request_id`; the answer goes to `.../replies/{request_id}`. This module only
//! parses and answers, with no I/O: anything a sender can put in a payload gets either a
//! [`Request`] or an error [`Reply`] that says what is wrong, and never a panic (a
//! proptest fuzzes it).
//!
//! Payloads:
//! - `camera.add`, `camera.update`: `{"request_id": "…", "camera": { …the keys of a [[cameras]] table… }}`
//! - `camera.remove`: `{"request_id": "…", "id": "…"}`
//! - `camera.list`, `model.list`: `{"request_id": "…"}`
//! - `model.update`: `{"request_id": "…", "manifest_url": "http://…/manifest.toml"}`
//! - `model.rollback`: `{"request_id": "…", "name": "…"}`

use serde::Serialize;
use serde_json::{Map, Value};

/// Largest command payload accepted; a camera table is well under 4 KiB.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest `request_id` (it becomes a topic segment).
pub const MAX_REQUEST_ID: usize = 128;
/// The reply topic segment used when a request has no usable `request_id`.
pub const NO_REQUEST_ID: &str = "_invalid";

/// A parsed, well-formed command.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub request_id: String,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// The camera as a JSON object with the keys of a `[[cameras]]` table; validated by
    /// the config reader like the file's cameras.
    CameraAdd {
        camera: Map<String, Value>,
    },
    CameraUpdate {
        camera: Map<String, Value>,
    },
    CameraRemove {
        id: String,
    },
    /// Replaces a camera's `zones` and `lines` (the keys of `[[cameras.zones]]` and
    /// `[[cameras.lines]]`), keeping the rest of its settings; then as `camera.update`.
    /// Sent by the console's editor, not accepted over MQTT. `by` says who, for the log.
    CameraRules {
        id: String,
        rules: Map<String, Value>,
        by: String,
    },
    CameraList,
    ModelUpdate {
        manifest_url: String,
    },
    ModelRollback {
        name: String,
    },
    ModelList,
}

impl Command {
    /// The command's topic name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::CameraAdd { .. } => "camera.add",
            Command::CameraUpdate { .. } => "camera.update",
            Command::CameraRemove { .. } => "camera.remove",
            Command::CameraRules { .. } => "camera.rules",
            Command::CameraList => "camera.list",
            Command::ModelUpdate { .. } => "model.update",
            Command::ModelRollback { .. } => "model.rollback",
            Command::ModelList => "model.list",
        }
    }

    /// Whether it only reads (answered at once by the MQTT task) or changes something
    /// (queued for the supervisor).
    pub fn is_read_only(&self) -> bool {
        matches!(self, Command::CameraList | Command::ModelList)
    }
}

/// Why a command was refused; `code` is stable, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

/// `schema` of replies.
pub const REPLY_SCHEMA: &str = "lookout.reply/1";

/// A reply: `{"request_id": "…", "ok": true, …}` or `{"request_id": "…", "ok": false, "error": {…}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    pub schema: &'static str,
    pub request_id: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// What the command returns (merged into the reply object).
    #[serde(flatten)]
    pub result: Map<String, Value>,
}

impl Reply {
    pub fn ok(request_id: &str, result: Map<String, Value>) -> Self {
        Self { schema: REPLY_SCHEMA, request_id: request_id.to_string(), ok: true, error: None, result }
    }

    pub fn error(request_id: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            schema: REPLY_SCHEMA,
            request_id: request_id.to_string(),
            ok: false,
            error: Some(ErrorBody { code, message: message.into() }),
            result: Map::new(),
        }
    }
}

/// Whether `s` can be a topic segment: no MQTT wildcards or separators, printable ASCII.
pub(crate) fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_REQUEST_ID
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Parses the command `name` (the topic's last segment) with its payload.
pub fn parse(name: &str, payload: &[u8]) -> Result<Request, Reply> {
    parse_object(name, decode(payload)?)
}

/// A payload as a JSON object (the size cap first), or the refusal.
pub fn decode(payload: &[u8]) -> Result<Map<String, Value>, Reply> {
    let refuse = |code, msg: String| Reply::error(NO_REQUEST_ID, code, msg);
    if payload.len() > MAX_PAYLOAD {
        return Err(refuse(
            "payload_too_large",
            format!("{} bytes; commands are at most {MAX_PAYLOAD}", payload.len()),
        ));
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| refuse("malformed_json", format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(refuse("malformed_json", "expected a JSON object".into()));
    };
    Ok(obj)
}

/// The reply topic segment for a payload: its `request_id` when usable.
pub fn reply_id(obj: &Map<String, Value>) -> &str {
    match obj.get("request_id") {
        Some(Value::String(s)) if is_segment(s) => s,
        _ => NO_REQUEST_ID,
    }
}

/// Parses the command `name` from a decoded payload (see [`decode`]).
pub fn parse_object(name: &str, mut obj: Map<String, Value>) -> Result<Request, Reply> {
    let refuse = |id: &str, code, msg: String| Reply::error(id, code, msg);
    let request_id = match obj.remove("request_id") {
        Some(Value::String(s)) if is_segment(&s) => s,
        Some(Value::String(_)) => {
            return Err(refuse(
                NO_REQUEST_ID,
                "invalid_request_id",
                format!("request_id must be 1 to {MAX_REQUEST_ID} of A-Z a-z 0-9 - _ . : (it names the reply topic)"),
            ));
        }
        Some(_) => return Err(refuse(NO_REQUEST_ID, "invalid_request_id", "request_id must be a string".into())),
        None => return Err(refuse(NO_REQUEST_ID, "missing_field", "request_id is required".into())),
    };
    let id = request_id.as_str();
    let string = |obj: &mut Map<String, Value>, key: &str| -> Result<String, Reply> {
        match obj.remove(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            Some(_) => Err(refuse(id, "invalid_field", format!("{key} must be a non-empty string"))),
            None => Err(refuse(id, "missing_field", format!("{key} is required"))),
        }
    };
    let table = |obj: &mut Map<String, Value>, key: &str| -> Result<Map<String, Value>, Reply> {
        match obj.remove(key) {
            Some(Value::Object(m)) => Ok(m),
            Some(_) => Err(refuse(id, "invalid_field", format!("{key} must be an object"))),
            None => Err(refuse(id, "missing_field", format!("{key} is required"))),
        }
    };
    let command = match name {
        "camera.add" => Command::CameraAdd { camera: table(&mut obj, "camera")? },
        "camera.update" => Command::CameraUpdate { camera: table(&mut obj, "camera")? },
        "camera.remove" => Command::CameraRemove { id: string(&mut obj, "id")? },
        "camera.list" => Command::CameraList,
        "model.update" => {
            let url = string(&mut obj, "manifest_url")?;
            if !["http://", "https://", "file://"].iter().any(|p| url.starts_with(p)) {
                return Err(refuse(
                    id,
                    "invalid_field",
                    "manifest_url must be an http://, https:// or file:// URL".into(),
                ));
            }
            Command::ModelUpdate { manifest_url: url }
        }
        "model.rollback" => Command::ModelRollback { name: string(&mut obj, "name")? },
        "model.list" => Command::ModelList,
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(refuse(
                id,
                "unknown_command",
                format!(
                    "unknown command {shown:?}; commands: camera.add, camera.update, camera.remove, camera.list, \
                     model.update, model.rollback, model.list"
                ),
            ));
        }
    };
    // Unknown keys are refused like in the config file: a typo must not be ignored.
    if let Some(k) = obj.keys().next() {
        let shown: String = k.chars().take(64).collect();
        return Err(refuse(id, "unknown_field", format!("{name} takes no field {shown:?}")));
    }
    Ok(Request { request_id, command })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn err(name: &str, payload: &str) -> Reply {
        parse(name, payload.as_bytes()).expect_err("refused")
    }

    fn code(r: &Reply) -> &'static str {
        r.error.as_ref().map_or("", |e| e.code)
    }

    #[test]
    fn well_formed_commands_parse() {
        let r = parse("camera.remove", br#"{"request_id":"r-1","id":"gate"}"#).expect("ok");
        assert_eq!(r, Request { request_id: "r-1".into(), command: Command::CameraRemove { id: "gate".into() } });
        let r = parse("camera.add", br#"{"request_id":"r2","camera":{"id":"c","url":"rtsp://h/s","model":"person"}}"#)
            .expect("ok");
        assert!(matches!(r.command, Command::CameraAdd { camera } if camera["id"] == "c"));
        let r = parse("model.update", br#"{"request_id":"u1","manifest_url":"http://h/m/manifest.toml"}"#).expect("ok");
        assert!(matches!(r.command, Command::ModelUpdate { .. }));
        assert_eq!(parse("camera.list", br#"{"request_id":"l"}"#).expect("ok").command, Command::CameraList);
    }

    #[test]
    fn bad_commands_get_their_own_error_codes() {
        assert_eq!(code(&err("camera.list", "{nope")), "malformed_json");
        assert_eq!(code(&err("camera.list", "[1,2]")), "malformed_json");
        assert_eq!(code(&err("camera.list", "{}")), "missing_field");
        assert_eq!(code(&err("camera.list", r#"{"request_id":"a/b"}"#)), "invalid_request_id");
        assert_eq!(code(&err("camera.list", r#"{"request_id":7}"#)), "invalid_request_id");
        let unknown = err("camera.explode", r#"{"request_id":"x"}"#);
        assert_eq!((code(&unknown), unknown.request_id.as_str()), ("unknown_command", "x"));
        assert_eq!(code(&err("camera.remove", r#"{"request_id":"x"}"#)), "missing_field");
        assert_eq!(code(&err("camera.remove", r#"{"request_id":"x","id":3}"#)), "invalid_field");
        assert_eq!(code(&err("camera.add", r#"{"request_id":"x","camera":"c"}"#)), "invalid_field");
        assert_eq!(code(&err("model.update", r#"{"request_id":"x","manifest_url":"ftp://h/m"}"#)), "invalid_field");
        assert_eq!(code(&err("camera.list", r#"{"request_id":"x","colour":1}"#)), "unknown_field");
        let big = format!(r#"{{"request_id":"x","pad":"{}"}}"#, "a".repeat(MAX_PAYLOAD));
        assert_eq!(code(&err("camera.list", &big)), "payload_too_large");
    }

    #[test]
    fn replies_have_the_documented_shape() {
        let ok = serde_json::to_value(Reply::ok("r1", Map::from_iter([("cameras".into(), Value::Array(vec![]))])))
            .expect("json");
        assert_eq!(ok, serde_json::json!({"schema": "lookout.reply/1", "request_id": "r1", "ok": true, "cameras": []}));
        let e = serde_json::to_value(Reply::error("r1", "unknown_command", "no")).expect("json");
        assert_eq!(
            e,
            serde_json::json!({
                "schema": "lookout.reply/1",
                "request_id": "r1",
                "ok": false,
                "error": {"code": "unknown_command", "message": "no"}
            })
        );
    }

    /// JSON values of some depth, as a sender might craft them.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("(request_id|id|camera|name|manifest_url|url|.{0,12})", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const NAMES: [&str; 9] = [
        "camera.add",
        "camera.update",
        "camera.remove",
        "camera.list",
        "model.update",
        "model.rollback",
        "model.list",
        "",
        "x.y",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes: never a panic; an error reply always names a reply topic.
        #[test]
        fn arbitrary_bytes_never_panic(name in prop::sample::select(&NAMES[..]), payload in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Err(r) = parse(name, &payload) {
                prop_assert!(!r.ok && r.error.is_some());
                prop_assert!(is_segment(&r.request_id));
            }
        }

        /// Arbitrary JSON objects: parsed or refused with a code, and a parsed request
        /// always has a usable request_id.
        #[test]
        fn arbitrary_json_is_parsed_or_refused(name in prop::sample::select(&NAMES[..]), v in json_value()) {
            let payload = serde_json::to_vec(&v).expect("serialise");
            match parse(name, &payload) {
                Ok(r) => prop_assert!(is_segment(&r.request_id)),
                Err(r) => {
                    prop_assert!(is_segment(&r.request_id));
                    prop_assert!(!r.error.as_ref().map_or("", |e| e.code).is_empty());
                }
            }
        }
    }
}
