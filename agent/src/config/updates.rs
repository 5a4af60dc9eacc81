//! `[model_updates]` and `[control]`: who may push models and send commands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::reader::{Issues, TableReader};
use super::resolve_path;

/// `[model_updates]` (optional section): who may push models to this gateway.
#[derive(Debug, Clone)]
pub struct ModelUpdatesConfig {
    /// `trusted_keys` (default none): public key files (`lookout model keygen`); a
    /// `model.update` is installed only when its manifest is signed by one of them. Each
    /// file must exist and hold an ed25519 public key. Relative paths resolve against
    /// the config file's folder.
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// The files they came from, for messages.
    pub trusted_key_files: Vec<PathBuf>,
    /// `allow_unsigned` (default false): accept updates without a valid signature. For
    /// labs only: anyone who can publish on the command topic can then replace models.
    pub allow_unsigned: bool,
    /// `max_bytes` (default 536870912, 512 MiB): the largest artifact a `model.update`
    /// downloads; a bigger one (by its manifest's `size` or while streaming) is refused.
    pub max_bytes: u64,
    /// `timeout_secs` (default 300): the whole download of one update (manifest, labels,
    /// artifact) must finish within this; connecting must within 10 s.
    pub timeout: Duration,
    /// `keep_versions` (default 3, at least 2): installed versions kept on disk per model
    /// (the active one and the one before it are always kept, for rollback).
    pub keep_versions: usize,
    /// `ca_file` (default none): PEM certificates trusted for `https://` downloads in
    /// addition to the system's CA store (a release server with a private CA).
    pub ca_file: Option<PathBuf>,
    /// `allowed_urls` (default none): URL prefixes (`http://` or `https://`, each ending in
    /// `/`) that release manifests and their files may be downloaded from; any other
    /// http(s) URL, and every redirect that leaves them, is refused. A host name must
    /// resolve to public addresses only; a loopback, link-local or private address is
    /// accepted only when a prefix names it literally (`http://10.0.0.5:8080/releases/`).
    pub allowed_urls: Vec<url::Url>,
    /// `local_dir` (default none): the one folder `file://` releases may be read from
    /// (regular files only, symlinks resolved and still inside it). Without it `file://`
    /// URLs are refused.
    pub local_dir: Option<PathBuf>,
    /// `allow_downgrade` (default false): accept a `model.update` whose version is lower
    /// than the highest this gateway has run for that model. Off, an old signed release
    /// cannot be replayed to downgrade a model; `model.rollback` is the way back.
    pub allow_downgrade: bool,
}

impl ModelUpdatesConfig {
    /// Updates are switched on by trusting a key (or, in labs, `allow_unsigned`); until
    /// then `model.update` is refused before anything is fetched.
    pub fn enabled(&self) -> bool {
        !self.trusted_keys.is_empty() || self.allow_unsigned
    }
}

/// `[control]` (optional section): who may send commands, independently of the broker's ACL.
#[derive(Debug, Clone, Default)]
pub struct ControlConfig {
    /// `trusted_keys` (default none): public key files (`lookout model keygen`, the same
    /// format as `[model_updates] trusted_keys`) whose signatures on commands are accepted.
    /// Relative paths resolve against the config file's folder.
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// The files they came from, for messages.
    pub trusted_key_files: Vec<PathBuf>,
    /// `require_signed` (default false): refuse commands without a valid signature
    /// (`unsigned_command`). Needs at least one trusted key. A signature that is present
    /// is checked either way.
    pub require_signed: bool,
}

impl Default for ModelUpdatesConfig {
    fn default() -> Self {
        Self {
            trusted_keys: Vec::new(),
            trusted_key_files: Vec::new(),
            allow_unsigned: false,
            max_bytes: 512 << 20,
            timeout: Duration::from_secs(300),
            keep_versions: 3,
            ca_file: None,
            allowed_urls: Vec::new(),
            local_dir: None,
            allow_downgrade: false,
        }
    }
}

/// Reads one camera given as JSON (a `camera.add` / `camera.update` command) with the
/// same keys, defaults and checks as a `[[cameras]]` table in `config`'s file. Returns
/// every problem as `camera.<field>: <message>`.
/// `trusted_keys`: ed25519 public key files, each reported on the key's line if unusable.
pub(super) fn read_trusted_keys(
    t: &mut TableReader<'_, '_>,
    issues: &mut Issues<'_>,
    base_dir: &Path,
    cwd: &Path,
) -> (Vec<ed25519_dalek::VerifyingKey>, Vec<PathBuf>) {
    let (mut keys, mut files) = (Vec::new(), Vec::new());
    for f in t.opt::<Vec<String>>(issues, "trusted_keys").unwrap_or_default() {
        let path = resolve_path(base_dir, cwd, &f);
        match crate::model::signature::read_public(&path) {
            Ok(k) => {
                keys.push(k);
                files.push(path);
            }
            Err(e) => {
                let s = t.raw("trusted_keys").map(|v| v.span());
                issues.push(&t.field_path("trusted_keys"), s.as_ref(), e.to_string());
            }
        }
    }
    (keys, files)
}

/// An `allowed_urls` entry: an http(s) URL whose path ends in `/`, so that a prefix match
/// can never run into a longer host name or a sibling folder.
pub(super) fn url_prefix(s: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if u.host().is_none() || !u.username().is_empty() || u.password().is_some() {
        return Err("must name a host, without user or password".into());
    }
    if !u.path().ends_with('/') || u.query().is_some() || u.fragment().is_some() {
        return Err("must end with / (a folder) and have no query or fragment".into());
    }
    Ok(u)
}

/// The certificates of a PEM file (`[model_updates] ca_file`), read at load to refuse a bad one
/// early and again by each download; at least one.
pub fn read_ca_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("{}: not PEM: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// `[model_updates]`.
pub(super) fn read_model_updates(
    mut t: TableReader<'_, '_>,
    issues: &mut Issues<'_>,
    base_dir: &Path,
    cwd: &Path,
) -> ModelUpdatesConfig {
    let mut u = ModelUpdatesConfig::default();
    (u.trusted_keys, u.trusted_key_files) = read_trusted_keys(&mut t, issues, base_dir, cwd);
    u.allow_unsigned = t.opt::<bool>(issues, "allow_unsigned").unwrap_or(false);
    if let Some(n) = t.num_in::<u64>(issues, "max_bytes", 1, 8 << 30, "bytes") {
        u.max_bytes = n;
    }
    if let Some(n) = t.num_in::<u64>(issues, "timeout_secs", 1, 3600, "seconds") {
        u.timeout = Duration::from_secs(n);
    }
    if let Some(f) = t.opt::<String>(issues, "ca_file") {
        let path = resolve_path(base_dir, cwd, &f);
        match read_ca_file(&path) {
            Ok(_) => u.ca_file = Some(path),
            Err(e) => {
                let s = t.raw("ca_file").map(|v| v.span());
                issues.push(&t.field_path("ca_file"), s.as_ref(), e);
            }
        }
    }
    // At least the active version and the one to roll back to.
    if let Some(n) = t.num_in::<usize>(issues, "keep_versions", 2, 100, "versions") {
        u.keep_versions = n;
    }
    for prefix in t.opt::<Vec<String>>(issues, "allowed_urls").unwrap_or_default() {
        match url_prefix(&prefix) {
            Ok(prefix) => u.allowed_urls.push(prefix),
            Err(e) => {
                let s = t.raw("allowed_urls").map(|v| v.span());
                issues.push(&t.field_path("allowed_urls"), s.as_ref(), format!("{prefix:?}: {e}"));
            }
        }
    }
    if let Some(d) = t.opt::<String>(issues, "local_dir") {
        let path = resolve_path(base_dir, cwd, &d);
        match path.canonicalize() {
            Ok(p) if p.is_dir() => u.local_dir = Some(p),
            _ => {
                let s = t.raw("local_dir").map(|v| v.span());
                issues.push(&t.field_path("local_dir"), s.as_ref(), format!("{} is not a folder", path.display()));
            }
        }
    }
    u.allow_downgrade = t.opt::<bool>(issues, "allow_downgrade").unwrap_or(false);
    t.finish(issues);
    u
}

/// `[control]`.
pub(super) fn read_control(
    mut t: TableReader<'_, '_>,
    issues: &mut Issues<'_>,
    base_dir: &Path,
    cwd: &Path,
) -> ControlConfig {
    let mut c = ControlConfig::default();
    let before_keys = issues.list.len();
    (c.trusted_keys, c.trusted_key_files) = read_trusted_keys(&mut t, issues, base_dir, cwd);
    c.require_signed = t.opt::<bool>(issues, "require_signed").unwrap_or(false);
    if c.require_signed && c.trusted_keys.is_empty() && issues.list.len() == before_keys {
        let s = t.raw("require_signed").map(|v| v.span());
        issues.push(&t.field_path("require_signed"), s.as_ref(), "needs trusted_keys: no command could be accepted");
    }
    t.finish(issues);
    c
}
