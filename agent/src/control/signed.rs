//! Signed commands: a command may carry an ed25519 signature, so that who may control a
//! gateway does not rest on the broker's ACL alone (`[control] require_signed`).
//!
//! **Envelope.** The payload gets a `signature` object:
//! `{"key": "ed25519:<public key>", "agent": "{site}/{agent}", "expires": <unix seconds>,
//! "nonce": "<16 to 64 of A-Z a-z 0-9 - _>", "sig": "ed25519:<64-byte signature>"}`.
//!
//! **What is signed.** The domain tag `lookout-command-v1\n` followed by the JSON object
//! `{"agent", "command" (the topic's command name), "expires", "key", "nonce", "payload"
//! (the payload without `signature`)}` with keys sorted at every level and no whitespace,
//! as serde_json writes it. Every field of the command, its name, the target agent and the
//! expiry are covered, so a signed command cannot be retargeted, renamed or extended.
//!
//! **Checks, in order.** The signature first (a forgery never learns more than
//! `bad_signature`), then the agent (`wrong_agent`), the expiry (`expired`; more than
//! [`MAX_EXPIRY_SECS`] ahead is `expiry_too_far`), then the nonce (`replayed`). Nonces
//! of admitted commands are kept until their expiry, at most [`MAX_NONCES`] at once (more
//! are refused `busy` until some expire), so a captured command runs at most once; with
//! [`CommandGuard::persist_in`] they are saved on disk too, so a restart forgets none.
//! Refusal messages are fixed texts: nothing from the payload is echoed.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde_json::{Map, Value, json};

use super::command::{self, Reply};
use crate::model::signature::{parse_public, public_key_string};

const DOMAIN: &[u8] = b"lookout-command-v1\n";
const SIG_PREFIX: &str = "ed25519:";
/// The payload field that carries the envelope.
pub const FIELD: &str = "signature";
/// Furthest expiry accepted: a captured command is only worth anything until it expires,
/// and the nonce cache must hold its nonce that long.
pub const MAX_EXPIRY_SECS: u64 = 600;
/// Most nonces remembered at once (admitted commands not yet expired).
pub const MAX_NONCES: usize = 4096;

/// Who may command this agent, and the nonces already used.
pub struct CommandGuard {
    trusted: Vec<VerifyingKey>,
    require_signed: bool,
    /// `{site}/{agent}`, what a signature's `agent` must say.
    agent: String,
    /// nonce → its command's expiry.
    nonces: HashMap<String, u64>,
    /// Where the nonces are saved after each admitted signed command.
    store: Option<PathBuf>,
}

/// A command let through: its payload without the envelope, and who signed it.
#[derive(Debug)]
pub struct Admitted {
    pub payload: Map<String, Value>,
    pub signed_by: Option<VerifyingKey>,
}

/// The parsed `signature` object.
struct Envelope {
    key: String,
    agent: String,
    expires: u64,
    nonce: String,
    sig: [u8; 64],
}

/// `{site}/{agent}`: a signature's `agent`.
pub fn agent_name(site: &str, agent: &str) -> String {
    format!("{site}/{agent}")
}

/// The bytes a command's signature covers (see the module docs).
pub fn signed_bytes(
    name: &str,
    payload: &Map<String, Value>,
    key: &str,
    agent: &str,
    expires: u64,
    nonce: &str,
) -> Vec<u8> {
    let canonical = json!({
        "agent": agent,
        "command": name,
        "expires": expires,
        "key": key,
        "nonce": nonce,
        "payload": Value::Object(payload.clone()),
    });
    let mut out = DOMAIN.to_vec();
    // serde_json's maps are sorted by key: the serialisation is canonical.
    out.extend(serde_json::to_vec(&canonical).unwrap_or_default());
    out
}

/// `payload` with a `signature` for command `name` to `agent` (`{site}/{agent}`), valid
/// until `expires` (unix seconds); an earlier signature is replaced.
pub fn sign(
    name: &str,
    mut payload: Map<String, Value>,
    key: &SigningKey,
    agent: &str,
    expires: u64,
    nonce: &str,
) -> Map<String, Value> {
    payload.remove(FIELD);
    let public = public_key_string(&key.verifying_key());
    let sig = key.sign(&signed_bytes(name, &payload, &public, agent, expires, nonce));
    payload.insert(
        FIELD.to_string(),
        json!({
            "key": public,
            "agent": agent,
            "expires": expires,
            "nonce": nonce,
            "sig": format!("{SIG_PREFIX}{}", B64.encode(sig.to_bytes())),
        }),
    );
    payload
}

/// A fresh random nonce (32 hex digits).
pub fn new_nonce() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn is_nonce(s: &str) -> bool {
    (16..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `signature` object, or why it is malformed (fixed texts).
fn envelope(v: Value) -> Result<Envelope, &'static str> {
    let Value::Object(mut o) = v else { return Err("signature must be an object") };
    let mut text = |k: &str, max: usize| match o.remove(k) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s),
        Some(_) => Err("signature has a field of the wrong type or length"),
        None => Err("signature needs key, agent, expires, nonce and sig"),
    };
    let key = text("key", 64)?;
    let agent = text("agent", 129)?;
    let nonce = text("nonce", 64)?;
    let sig = text("sig", 100)?;
    let expires = match o.remove("expires") {
        Some(v) => v.as_u64().ok_or("signature.expires must be unix seconds (a non-negative integer)")?,
        None => return Err("signature needs key, agent, expires, nonce and sig"),
    };
    if !o.is_empty() {
        return Err("signature has unknown fields");
    }
    if !is_nonce(&nonce) {
        return Err("signature.nonce must be 16 to 64 of A-Z a-z 0-9 - _");
    }
    let sig = sig
        .strip_prefix(SIG_PREFIX)
        .and_then(|b| B64.decode(b).ok())
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or("signature.sig must be \"ed25519:\" and 64 bytes in base64")?;
    Ok(Envelope { key, agent, expires, nonce, sig })
}

impl CommandGuard {
    /// `trusted` keys (`[control] trusted_keys`); `require_signed` refuses unsigned
    /// commands; `agent` as [`agent_name`] gives it.
    pub fn new(trusted: Vec<VerifyingKey>, require_signed: bool, agent: String) -> Self {
        Self { trusted, require_signed, agent, nonces: HashMap::new(), store: None }
    }

    /// Saves the nonces in `path` after each admitted signed command, and loads those of
    /// earlier runs that have not expired at `now`: a command captured before a restart
    /// cannot be replayed after it. Returns a warning when the file cannot be read.
    pub fn persist_in(&mut self, path: PathBuf, now: u64) -> Option<String> {
        let warning = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<HashMap<String, u64>>(&bytes) {
                Ok(saved) => {
                    self.nonces =
                        saved.into_iter().filter(|(n, until)| *until > now && is_nonce(n)).take(MAX_NONCES).collect();
                    None
                }
                Err(e) => Some(format!("{}: unreadable ({e}); starting with no nonces", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("cannot read {}: {e}; starting with no nonces", path.display())),
        };
        self.store = Some(path);
        warning
    }

    /// Whole file to a temporary one, synced, renamed over the old one: a power cut leaves
    /// the old set or the new one.
    fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&self.nonces).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Checks command `name`'s payload at time `now` (unix seconds): the payload without
    /// its envelope, or the refusal to send.
    pub fn admit(&mut self, name: &str, payload: &[u8], now: u64) -> Result<Admitted, Reply> {
        let mut obj = command::decode(payload)?;
        let id = command::reply_id(&obj).to_string();
        let refuse = |code: &'static str, msg: &str| Reply::error(&id, code, msg);
        let Some(raw) = obj.remove(FIELD) else {
            if self.require_signed {
                return Err(refuse("unsigned_command", "this agent accepts signed commands only"));
            }
            return Ok(Admitted { payload: obj, signed_by: None });
        };
        let env = envelope(raw).map_err(|m| refuse("bad_signature", m))?;
        let key = parse_public(&env.key)
            .ok()
            .filter(|k| self.trusted.contains(k))
            .ok_or_else(|| refuse("bad_signature", "not signed by a trusted key ([control] trusted_keys)"))?;
        let msg = signed_bytes(name, &obj, &env.key, &env.agent, env.expires, &env.nonce);
        key.verify_strict(&msg, &Signature::from_bytes(&env.sig))
            .map_err(|_| refuse("bad_signature", "the signature does not match the command"))?;
        if env.agent != self.agent {
            return Err(refuse("wrong_agent", "the command was signed for another agent"));
        }
        if env.expires <= now {
            return Err(refuse("expired", "the command's signature has expired"));
        }
        if env.expires - now > MAX_EXPIRY_SECS {
            return Err(refuse("expiry_too_far", "signature.expires is more than 600 s ahead of this agent's clock"));
        }
        if self.nonces.get(&env.nonce).is_some_and(|&until| until > now) {
            return Err(refuse("replayed", "this signed command was already received"));
        }
        self.nonces.retain(|_, until| *until > now);
        if self.nonces.len() >= MAX_NONCES {
            return Err(refuse("busy", "too many signed commands in the last 10 minutes; try again later"));
        }
        self.nonces.insert(env.nonce.clone(), env.expires);
        if let Some(path) = &self.store
            && let Err(e) = self.save(path)
        {
            // Carrying it out unrecorded would let it be replayed after a restart.
            tracing::warn!(error = %e, path = %path.display(), "cannot save the nonces of signed commands");
            self.nonces.remove(&env.nonce);
            return Err(refuse("persist_failed", "the command's nonce cannot be saved; nothing ran"));
        }
        Ok(Admitted { payload: obj, signed_by: Some(key) })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const AGENT: &str = "site-1/gw-1";
    const NOW: u64 = 1_800_000_000;
    const CODES: [&str; 10] = [
        "payload_too_large",
        "malformed_json",
        "unsigned_command",
        "bad_signature",
        "wrong_agent",
        "expired",
        "expiry_too_far",
        "replayed",
        "busy",
        "ok",
    ];

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn guard(require: bool) -> CommandGuard {
        CommandGuard::new(vec![key().verifying_key()], require, AGENT.into())
    }

    fn payload(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    fn signed(name: &str, p: Value, agent: &str, expires: u64, nonce: &str) -> Vec<u8> {
        serde_json::to_vec(&sign(name, payload(p), &key(), agent, expires, nonce)).expect("json")
    }

    fn code(r: &Result<Admitted, Reply>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(r) => r.error.as_ref().map_or("", |e| e.code),
        }
    }

    const NONCE: &str = "0123456789abcdef";

    #[test]
    fn a_signed_command_is_admitted_once_without_its_envelope() {
        let mut g = guard(true);
        let bytes = signed("camera.remove", json!({"request_id": "r1", "id": "cam-2"}), AGENT, NOW + 300, NONCE);
        let a = g.admit("camera.remove", &bytes, NOW).expect("admitted");
        assert_eq!(Value::Object(a.payload), json!({"request_id": "r1", "id": "cam-2"}));
        assert_eq!(a.signed_by, Some(key().verifying_key()));
        let again = g.admit("camera.remove", &bytes, NOW + 1);
        assert_eq!(code(&again), "replayed");
        assert_eq!(again.expect_err("refused").request_id, "r1");
    }

    #[test]
    fn unsigned_commands_pass_only_when_signatures_are_not_required() {
        let p = br#"{"request_id":"l1"}"#;
        assert_eq!(code(&guard(true).admit("camera.list", p, NOW)), "unsigned_command");
        assert_eq!(code(&guard(false).admit("camera.list", p, NOW)), "ok");
        // A signature that is there must verify, required or not.
        let mut bytes = signed("camera.list", json!({"request_id": "l1"}), AGENT, NOW + 60, NONCE);
        bytes = String::from_utf8(bytes).expect("utf8").replace("l1", "l2").into_bytes();
        assert_eq!(code(&guard(false).admit("camera.list", &bytes, NOW)), "bad_signature");
    }

    #[test]
    fn each_refusal_has_its_own_code() {
        let p = json!({"request_id": "x"});
        let mut g = guard(true);
        let other = signed("camera.list", p.clone(), "site-1/gw-2", NOW + 60, NONCE);
        assert_eq!(code(&g.admit("camera.list", &other, NOW)), "wrong_agent");
        let old = signed("camera.list", p.clone(), AGENT, NOW, NONCE);
        assert_eq!(code(&g.admit("camera.list", &old, NOW)), "expired");
        let far = signed("camera.list", p.clone(), AGENT, NOW + MAX_EXPIRY_SECS + 1, NONCE);
        assert_eq!(code(&g.admit("camera.list", &far, NOW)), "expiry_too_far");
        let edge = signed("camera.list", p.clone(), AGENT, NOW + MAX_EXPIRY_SECS, NONCE);
        assert_eq!(code(&g.admit("camera.list", &edge, NOW)), "ok");
        // Another command name: the name is signed.
        let list = signed("camera.list", p.clone(), AGENT, NOW + 60, "fedcba9876543210");
        assert_eq!(code(&g.admit("model.list", &list, NOW)), "bad_signature");
        // An untrusted key.
        let stranger = SigningKey::from_bytes(&[9u8; 32]);
        let foreign =
            serde_json::to_vec(&sign("camera.list", payload(p), &stranger, AGENT, NOW + 60, NONCE)).expect("json");
        let r = g.admit("camera.list", &foreign, NOW);
        assert_eq!(code(&r), "bad_signature");
        // Refusals name no part of the payload.
        assert!(!r.expect_err("refused").error.expect("error").message.contains("ed25519:"));
    }

    #[test]
    fn the_nonce_cache_is_bounded_and_forgets_expired_nonces() {
        let mut g = guard(true);
        let p = json!({"request_id": "x"});
        for i in 0..MAX_NONCES {
            let b = signed("camera.list", p.clone(), AGENT, NOW + 10, &format!("nonce-{i:012}"));
            assert_eq!(code(&g.admit("camera.list", &b, NOW)), "ok");
        }
        let b = signed("camera.list", p.clone(), AGENT, NOW + 100, "nonce-extra-00001");
        assert_eq!(code(&g.admit("camera.list", &b, NOW)), "busy");
        // Once the first ones expired there is room again; the cache never grows past the bound.
        assert_eq!(code(&g.admit("camera.list", &b, NOW + 11)), "ok");
        assert!(g.nonces.len() <= MAX_NONCES);
    }

    #[test]
    fn saved_nonces_outlive_a_restart_until_they_expire() {
        let dir = std::env::temp_dir().join(format!("lookout-nonces-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("runtime").join("command-nonces.json");
        let p = json!({"request_id": "x"});
        let short = signed("camera.list", p.clone(), AGENT, NOW + 10, "nonce-short-000001");
        let long = signed("camera.list", p.clone(), AGENT, NOW + 300, "nonce-long-0000001");
        let mut g = guard(true);
        assert_eq!(g.persist_in(path.clone(), NOW), None, "no file yet is no problem");
        assert_eq!(code(&g.admit("camera.list", &short, NOW)), "ok");
        assert_eq!(code(&g.admit("camera.list", &long, NOW)), "ok");
        // A restart 20 s later: the long one is still remembered, the expired one dropped.
        let mut again = guard(true);
        assert_eq!(again.persist_in(path.clone(), NOW + 20), None);
        assert_eq!(code(&again.admit("camera.list", &long, NOW + 20)), "replayed");
        assert_eq!(again.nonces.len(), 1);
        std::fs::write(&path, "{not json").expect("write");
        assert!(guard(true).persist_in(path.clone(), NOW).is_some_and(|w| w.contains("unreadable")));
        // Cannot save: refused, and not remembered either.
        let mut blocked = guard(true);
        blocked.persist_in(dir.join("runtime").join("command-nonces.json").join("not-a-dir.json"), NOW);
        std::fs::write(dir.join("runtime").join("command-nonces.json"), "{}").expect("write");
        assert_eq!(code(&blocked.admit("camera.list", &long, NOW)), "persist_failed");
        assert!(blocked.nonces.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// JSON values, with the envelope's keys likely.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
            "ed25519:[A-Za-z0-9+/=]{0,90}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("(request_id|signature|key|sig|agent|expires|nonce|.{0,8})", inner, 0..7)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn check_refusal(r: &Result<Admitted, Reply>) -> Result<(), TestCaseError> {
        prop_assert!(CODES.contains(&code(r)), "code {}", code(r));
        if let Err(reply) = r {
            prop_assert!(command::is_segment(&reply.request_id));
            // Bounded, and nothing of the envelope echoed.
            let msg = &reply.error.as_ref().expect("error").message;
            prop_assert!(msg.len() <= 200, "{msg}");
            prop_assert!(!msg.contains("ed25519:"), "{msg}");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes: never a panic, and only documented codes.
        #[test]
        fn arbitrary_bytes_are_refused_with_a_documented_code(payload in prop::collection::vec(any::<u8>(), 0..512)) {
            check_refusal(&guard(true).admit("camera.list", &payload, NOW))?;
        }

        /// Arbitrary objects with arbitrary `signature` values: never admitted when
        /// signatures are required, always a documented code.
        #[test]
        fn forged_envelopes_are_never_admitted(v in json_value(), sig in json_value()) {
            let mut obj = match v { Value::Object(m) => m, other => Map::from_iter([("x".to_string(), other)]) };
            obj.insert(FIELD.into(), sig);
            let bytes = serde_json::to_vec(&obj).expect("json");
            let r = guard(true).admit("camera.list", &bytes, NOW);
            check_refusal(&r)?;
            prop_assert!(r.is_err());
        }

        /// A genuine signature over any payload: admitted once; changing any one signed
        /// part (a payload field, the name, the agent, the expiry, the nonce) breaks it.
        #[test]
        fn any_change_to_a_signed_command_breaks_its_signature(
            fields in prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..5),
            which in 0usize..5,
            expires_in in 1u64..=MAX_EXPIRY_SECS,
        ) {
            let mut p: Map<String, Value> = fields.into_iter().collect();
            p.remove(FIELD);
            p.insert("request_id".into(), json!("r-1"));
            let signed = sign("camera.add", p, &key(), AGENT, NOW + expires_in, NONCE);
            let bytes = serde_json::to_vec(&signed).expect("json");
            let mut g = guard(true);
            prop_assert_eq!(code(&g.admit("camera.add", &bytes, NOW)), "ok");
            prop_assert_eq!(code(&g.admit("camera.add", &bytes, NOW)), "replayed");
            let mut altered = signed.clone();
            let mut name = "camera.add";
            match which {
                0 => { altered.insert("request_id".into(), json!("r-2")); }
                1 => name = "camera.update",
                2 => { altered[FIELD]["agent"] = json!("site-1/gw-9"); }
                3 => { altered[FIELD]["expires"] = json!(NOW + expires_in - 1); }
                _ => { altered[FIELD]["nonce"] = json!("ffffffffffffffff"); }
            }
            let bytes = serde_json::to_vec(&altered).expect("json");
            prop_assert_eq!(code(&guard(true).admit(name, &bytes, NOW)), "bad_signature");
        }
    }
}
