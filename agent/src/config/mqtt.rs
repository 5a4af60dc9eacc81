//! `[mqtt]`: the broker, TLS, credentials (a [`Secret`] never shown).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::reader::{Issues, TableReader};
use super::{redact_url, resolve_path};

/// A secret that never shows in logs or debug output.
#[derive(Clone)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// TLS for `mqtts://`.
#[derive(Debug, Clone)]
pub struct MqttTls {
    /// `ca_file` (optional): PEM CA certificate(s) the broker's certificate must chain to.
    /// Default: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// `client_cert` and `client_key` (optional, together): PEM certificate and key for
    /// mutual TLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// `[mqtt]`
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `url` (required): `mqtt://host[:port]` (port defaults to 1883) or
    /// `mqtts://host[:port]` (TLS, port defaults to 8883).
    pub host: String,
    pub port: u16,
    /// Set for `mqtts://`.
    pub tls: Option<MqttTls>,
    /// `username` (optional).
    pub username: Option<String>,
    /// One of `password`, `password_file` (its first line) or `password_env` (an
    /// environment variable's name). Never logged.
    pub password: Option<Secret>,
    /// `client_id` (default `lookout-{site}-{id}`).
    pub client_id: String,
    /// `keep_alive_secs` (default 30).
    pub keep_alive: Duration,
    /// `max_inflight` (default 100): QoS 1 publishes awaiting PUBACK.
    pub max_inflight: u16,
    /// `max_message_bytes` (default 1048576 = 1 MiB, 64 KiB to 16 MiB): the largest MQTT
    /// PUBLISH packet the agent sends or accepts (rumqttc's max packet size). Larger
    /// messages are refused at append (announced as a gap), snapshots made smaller first.
    pub max_message_bytes: u64,
}

/// `mqtt://host[:port]` (also `tcp://`) or `mqtts://host[:port]` to host, port and
/// whether TLS is on.
pub fn parse_mqtt_url(u: &str) -> Result<(String, u16, bool), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a valid URL ({e}): \"{}\"", redact_url(u)))?;
    let tls = match parsed.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(format!("expected mqtt://host[:port] or mqtts://host[:port], got scheme \"{other}\"")),
    };
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or("URL has no host")?;
    let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port, tls))
}

/// `password`, `password_file` or `password_env`: at most one.
pub(super) fn read_password(
    t: &mut TableReader<'_, '_>,
    issues: &mut Issues<'_>,
    base_dir: &Path,
    cwd: &Path,
) -> Option<Secret> {
    let inline = t.opt::<String>(issues, "password");
    let file = t.opt::<String>(issues, "password_file");
    let env = t.opt::<String>(issues, "password_env");
    if [inline.is_some(), file.is_some(), env.is_some()].iter().filter(|b| **b).count() > 1 {
        issues.push(&t.field_path("password"), Some(t.span()), "set only one of password, password_file, password_env");
        return None;
    }
    if let Some(p) = inline {
        return Some(Secret(p));
    }
    if let Some(path) = file {
        let span = t.raw("password_file").map(|v| v.span());
        let path = resolve_path(base_dir, cwd, &path);
        return match std::fs::read_to_string(&path) {
            Ok(s) => Some(Secret(s.lines().next().unwrap_or("").to_string())),
            Err(e) => {
                let msg = format!("cannot read {}: {e}", path.display());
                issues.push(&t.field_path("password_file"), span.as_ref(), msg);
                None
            }
        };
    }
    let var = env?;
    match std::env::var(&var) {
        Ok(v) => Some(Secret(v)),
        Err(_) => {
            let span = t.raw("password_env").map(|v| v.span());
            issues.push(&t.field_path("password_env"), span.as_ref(), format!("environment variable {var} is not set"));
            None
        }
    }
}

/// `[mqtt]`; `None` when a required key is missing or wrong (the issue is listed).
pub(super) fn read_mqtt(
    mut t: TableReader<'_, '_>,
    issues: &mut Issues<'_>,
    base_dir: &Path,
    cwd: &Path,
) -> Option<MqttConfig> {
    let url = t.req::<String>(issues, "url");
    let endpoint = url.and_then(|u| match parse_mqtt_url(&u) {
        Ok(e) => Some(e),
        Err(e) => {
            issues.push(&t.field_path("url"), t.raw("url").map(|v| v.span()).as_ref(), e);
            None
        }
    });
    let client_id = t.opt::<String>(issues, "client_id").unwrap_or_default();
    // rumqttc keeps the keep-alive as u16 seconds: a larger value would wrap.
    let keep_alive = t.num_in::<u64>(issues, "keep_alive_secs", 5, 3600, "seconds").unwrap_or(30);
    let max_inflight = t.opt::<u64>(issues, "max_inflight").unwrap_or(100);
    if !(1..=u16::MAX as u64).contains(&max_inflight) {
        let s = t.raw("max_inflight").map(|v| v.span());
        issues.push(&t.field_path("max_inflight"), s.as_ref(), "must be between 1 and 65535");
    }
    let max_message_bytes = t.opt::<u64>(issues, "max_message_bytes").unwrap_or(1 << 20);
    if !(64 << 10..=16 << 20).contains(&max_message_bytes) {
        let s = t.raw("max_message_bytes").map(|v| v.span());
        issues.push(
            &t.field_path("max_message_bytes"),
            s.as_ref(),
            "must be between 65536 (64 KiB) and 16777216 (16 MiB)",
        );
    }
    let file_key = |t: &mut TableReader<'_, '_>, issues: &mut Issues<'_>, key: &str| {
        let p = resolve_path(base_dir, cwd, &t.opt::<String>(issues, key)?);
        if !p.is_file() {
            let s = t.raw(key).map(|v| v.span());
            issues.push(&t.field_path(key), s.as_ref(), format!("{} is not a readable file", p.display()));
        }
        Some(p)
    };
    let ca_file = file_key(&mut t, issues, "ca_file");
    let client_cert = file_key(&mut t, issues, "client_cert");
    let client_key = file_key(&mut t, issues, "client_key");
    let client_auth = match (client_cert, client_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            issues.push(&t.field_path("client_key"), Some(t.span()), "client_cert and client_key go together");
            None
        }
    };
    let username = t.opt::<String>(issues, "username");
    let password = read_password(&mut t, issues, base_dir, cwd);
    let tls_keys = ca_file.is_some() || client_auth.is_some();
    if let Some((_, _, false)) = &endpoint
        && tls_keys
    {
        let s = t.raw("url").map(|v| v.span());
        issues.push(&t.field_path("url"), s.as_ref(), "ca_file/client_cert are set: use an mqtts:// URL");
    }
    t.finish(issues);
    let (host, port, tls) = endpoint?;
    Some(MqttConfig {
        host,
        port,
        tls: tls.then_some(MqttTls { ca_file, client_auth }),
        username,
        password,
        client_id,
        keep_alive: Duration::from_secs(keep_alive),
        max_inflight: max_inflight.clamp(1, u16::MAX as u64) as u16,
        max_message_bytes,
    })
}
