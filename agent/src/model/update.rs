//! `model.update`, the download half: fetch a manifest, check its signature, fetch what
//! it names (relative to the manifest's URL), check sizes and hashes, and install it as a
//! new version folder (see [`super::store`]). Blocking: run it on a blocking thread.
//! Loading, the self-test and the swap are the supervisor's (`control::supervisor`).
//!
//! Every refusal has its own code, so a fleet tool can tell "fix the release" from
//! "fix the network": see [`UpdateError::code`].
//!
//! A command names the URL, so the URL is hostile until checked: nothing is fetched
//! unless updates are enabled; `file://` only inside `[model_updates] local_dir` and only
//! regular files; `http(s)://` only below an `allowed_urls` prefix, every redirect checked
//! again, and a host name only when it resolves to public addresses (checked by the
//! resolver the connection uses, so DNS cannot answer differently in between). No error
//! ever quotes what was fetched.

use std::io::{Read, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::signature::{self, SignatureError};
use super::store::{ModelStore, compare_versions, valid_version};
use crate::config::{ModelUpdatesConfig, read_ca_file};

/// The largest manifest or labels file accepted.
const SMALL_FILE_MAX: u64 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed (each one checked like the first URL).
const MAX_REDIRECTS: usize = 5;
/// Free space left for the outbox (which shares the state folder) after a download.
const KEEP_FREE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("model updates are off on this gateway: configure [model_updates] trusted_keys")]
    Disabled,
    #[error("{0}")]
    InvalidUrl(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error(
        "version {version} of {name} is lower than {highest}, which this gateway has run; use model.rollback (or [model_updates] allow_downgrade)"
    )]
    Downgrade { name: String, version: String, highest: String },
    #[error("not enough free space in the state folder: {needed} bytes needed, {available} available")]
    NoSpace { needed: u64, available: u64 },
    #[error("cancelled: the agent is stopping")]
    Cancelled,
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("{url} is larger than {limit} bytes ([model_updates] max_bytes)")]
    TooLarge { url: String, limit: u64 },
    #[error("the manifest is not usable: {0}")]
    BadManifest(String),
    #[error("the manifest is not signed, and [model_updates] allow_unsigned is false")]
    Unsigned,
    #[error("signature check failed: {0}")]
    BadSignature(String),
    #[error("no configured model runs {0:?} (the manifest's name): updates replace configured models")]
    UnknownModel(String),
    #[error("{url}: got {got} bytes, the manifest says size = {expected} (truncated or wrong file)")]
    SizeMismatch { url: String, got: u64, expected: u64 },
    #[error("{url}: sha256 is {actual}, the manifest says {expected}")]
    ChecksumMismatch { url: String, expected: String, actual: String },
    #[error(
        "version {version} of {name} is already installed with another sha256 ({installed}); give the release a new version"
    )]
    VersionConflict { name: String, version: String, installed: String },
    #[error("cannot install: {0}")]
    Io(String),
}

impl UpdateError {
    /// The reply's `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            UpdateError::Disabled => "updates_disabled",
            UpdateError::InvalidUrl(_) => "invalid_url",
            UpdateError::NotAllowed(_) => "url_not_allowed",
            UpdateError::Downgrade { .. } => "downgrade",
            UpdateError::NoSpace { .. } => "no_space",
            UpdateError::Cancelled => "shutting_down",
            UpdateError::Download { .. } => "download_failed",
            UpdateError::TooLarge { .. } => "too_large",
            UpdateError::BadManifest(_) => "bad_manifest",
            UpdateError::Unsigned => "unsigned",
            UpdateError::BadSignature(_) => "bad_signature",
            UpdateError::UnknownModel(_) => "unknown_model",
            UpdateError::SizeMismatch { .. } => "size_mismatch",
            UpdateError::ChecksumMismatch { .. } => "checksum_mismatch",
            UpdateError::VersionConflict { .. } => "version_conflict",
            UpdateError::Io(_) => "install_failed",
        }
    }
}

/// A verified, installed (not yet active) version.
#[derive(Debug)]
pub struct Installed {
    /// The config's name for the model (`[[models]] name`), which the store is keyed by.
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub manifest: PathBuf,
    /// Whether this call created the folder (a failed activation removes it again).
    pub fresh: bool,
    /// The public key that signed the manifest (`ed25519:…`), if signed.
    pub signed_by: Option<String>,
}

/// A configured model a release may replace.
#[derive(Debug, Clone)]
pub struct KnownModel {
    /// `[[models]] name`, which the store is keyed by.
    pub name: String,
    /// The manifest name it runs now: a release replaces the model whose manifest has its name.
    pub manifest_name: String,
    /// The highest version it has run; a release below it is a downgrade.
    pub highest: String,
}

/// One download's limits and where it may go.
struct Fetcher<'a> {
    cfg: &'a ModelUpdatesConfig,
    deadline: Instant,
    cancel: &'a CancellationToken,
}

/// Downloads and verifies the release at `manifest_url`; installs it into `store`.
/// Refused before any I/O when updates are off or the URL is not allowed.
pub fn install(
    manifest_url: &str,
    cfg: &ModelUpdatesConfig,
    store: &ModelStore,
    models: &[KnownModel],
    cancel: &CancellationToken,
) -> Result<Installed, UpdateError> {
    if !cfg.enabled() {
        return Err(UpdateError::Disabled);
    }
    let f = Fetcher { cfg, deadline: Instant::now() + cfg.timeout, cancel };
    let url = Url::parse(manifest_url).map_err(|e| UpdateError::InvalidUrl(format!("manifest_url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https" | "file") {
        return Err(UpdateError::InvalidUrl(format!(
            "manifest_url: scheme {:?} is not http, https or file",
            url.scheme()
        )));
    }
    let mut text = Vec::new();
    f.fetch(&url, SMALL_FILE_MAX, &mut text)?;
    let text = String::from_utf8(text).map_err(|_| UpdateError::BadManifest("not UTF-8".into()))?;

    // The signature first: nothing an untrusted manifest says is acted on.
    let signed_by = match signature::verify(&text, &cfg.trusted_keys) {
        Ok(key) => Some(signature::public_key_string(&key)),
        Err(SignatureError::Unsigned) if cfg.allow_unsigned => None,
        Err(SignatureError::Unsigned) => return Err(UpdateError::Unsigned),
        Err(e) if cfg.trusted_keys.is_empty() && !cfg.allow_unsigned => {
            return Err(UpdateError::BadSignature(format!("{e}; and no [model_updates] trusted_keys are configured")));
        }
        Err(e) => return Err(UpdateError::BadSignature(e.to_string())),
    };

    let table: toml::Table =
        toml::from_str(&text).map_err(|e| UpdateError::BadManifest(signature::toml_problem(&text, &e)))?;
    let field = |k: &str| {
        table
            .get(k)
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| UpdateError::BadManifest(format!("missing string field `{k}`")))
    };
    let (name, version, file, sha256) = (field("name")?, field("version")?, field("file")?, field("sha256")?);
    let sha256 = sha256.trim().to_ascii_lowercase();
    let Some(known) = models.iter().find(|m| m.manifest_name == name) else {
        return Err(UpdateError::UnknownModel(name));
    };
    let name = known.name.clone();
    if !valid_version(&version) {
        return Err(UpdateError::BadManifest(
            "version: use letters, digits, '.', '-', '_', '+' (it names a folder)".into(),
        ));
    }
    if !cfg.allow_downgrade && compare_versions(&version, &known.highest).is_lt() {
        return Err(UpdateError::Downgrade { name, version, highest: known.highest.clone() });
    }
    let size = match table.get("size") {
        None => None,
        Some(v) => Some(
            v.as_integer()
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| UpdateError::BadManifest("`size` must be a whole number of bytes".into()))?,
        ),
    };
    let labels = table
        .get("labels")
        .and_then(|l| l.get("file"))
        .and_then(toml::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| UpdateError::BadManifest("missing `[labels] file`".into()))?;
    // The labels name what each class id means: a signature that left them out would
    // let anyone swap "person" for "car" in a signed release.
    let labels_sha = table.get("labels").and_then(|l| l.get("sha256")).and_then(toml::Value::as_str);
    if signed_by.is_some() && labels_sha.is_none() {
        return Err(UpdateError::BadManifest("a signed manifest must give `[labels] sha256`".into()));
    }
    // The self-test's reference image, if any: fetched and installed like the rest
    // (its sha256 is in the signed manifest; the session load checks it).
    let self_test_image =
        table.get("self_test").and_then(|t| t.get("image")).and_then(toml::Value::as_str).map(str::to_string);
    for f in [Some(&file), Some(&labels), self_test_image.as_ref()].into_iter().flatten() {
        if !safe_relative(f) {
            return Err(UpdateError::BadManifest(format!(
                "{f:?}: must be a relative path below the manifest's folder"
            )));
        }
    }
    let limit = cfg.max_bytes;
    if let Some(s) = size
        && s > limit
    {
        let artifact = url.join(&file).map_or_else(|_| file.clone(), |u| u.to_string());
        return Err(UpdateError::TooLarge { url: artifact, limit });
    }

    let dest = store.version_dir(&name, &version);
    if dest.join("manifest.toml").is_file() {
        let installed = store.installed(&name).into_iter().find(|(v, _)| v.version == version);
        return match installed {
            Some((v, manifest)) if v.sha256 == sha256 => {
                Ok(Installed { name, version, sha256, manifest, fresh: false, signed_by })
            }
            Some((v, _)) => Err(UpdateError::VersionConflict { name, version, installed: v.sha256 }),
            None => Err(UpdateError::Io(format!("{} is not a readable install", dest.display()))),
        };
    }

    // Room for the artifact (its declared size, else the most it may be) and for the
    // outbox after it.
    std::fs::create_dir_all(store.model_dir(&name)).map_err(|e| UpdateError::Io(e.to_string()))?;
    let needed = size.unwrap_or(limit).saturating_add(2 * SMALL_FILE_MAX).saturating_add(KEEP_FREE);
    if let Some(available) = free_bytes(&store.model_dir(&name))
        && available < needed
    {
        return Err(UpdateError::NoSpace { needed, available });
    }

    // Download into a staging folder beside the final one; rename when all checks pass.
    let staging = store.model_dir(&name).join(format!(".staging-{}", uuid::Uuid::now_v7()));
    let result = (|| {
        std::fs::create_dir_all(&staging).map_err(|e| UpdateError::Io(e.to_string()))?;
        std::fs::write(staging.join("manifest.toml"), &text).map_err(|e| UpdateError::Io(e.to_string()))?;
        let labels_url = join(&url, &labels)?;
        let mut labels_bytes = Vec::new();
        f.fetch(&labels_url, SMALL_FILE_MAX, &mut labels_bytes)?;
        if let Some(expected) = labels_sha {
            let actual = hex(&Sha256::digest(&labels_bytes));
            if !actual.eq_ignore_ascii_case(expected.trim()) {
                return Err(UpdateError::ChecksumMismatch {
                    url: labels_url.to_string(),
                    expected: expected.trim().to_ascii_lowercase(),
                    actual,
                });
            }
        }
        write_new(&staging.join(&labels), &labels_bytes)?;
        if let Some(img) = &self_test_image {
            let mut bytes = Vec::new();
            f.fetch(&join(&url, img)?, limit, &mut bytes)?;
            write_new(&staging.join(img), &bytes)?;
        }
        let artifact_url = join(&url, &file)?;
        if let Some(parent) = staging.join(&file).parent() {
            std::fs::create_dir_all(parent).map_err(|e| UpdateError::Io(e.to_string()))?;
        }
        let mut out = HashingFile::create(&staging.join(&file))?;
        let got = f.fetch(&artifact_url, limit, &mut out)?;
        let actual = out.finish()?;
        if let Some(expected) = size
            && got != expected
        {
            return Err(UpdateError::SizeMismatch { url: artifact_url.to_string(), got, expected });
        }
        if actual != sha256 {
            return Err(UpdateError::ChecksumMismatch {
                url: artifact_url.to_string(),
                expected: sha256.clone(),
                actual,
            });
        }
        std::fs::rename(&staging, &dest).map_err(|e| UpdateError::Io(format!("{}: {e}", dest.display())))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Ok(d) = std::fs::File::open(store.model_dir(&name)) {
        let _ = d.sync_all();
    }
    Ok(Installed { name, version, sha256, manifest: dest.join("manifest.toml"), fresh: true, signed_by })
}

/// A relative path with only normal components (no `..`, no root, no hidden names).
fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && !p.contains('\\')
        && path.components().all(|c| match c {
            std::path::Component::Normal(n) => !n.to_string_lossy().starts_with('.'),
            _ => false,
        })
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| UpdateError::Io(e.to_string()))?;
    }
    std::fs::write(path, bytes).map_err(|e| UpdateError::Io(format!("{}: {e}", path.display())))
}

fn join(base: &Url, name: &str) -> Result<Url, UpdateError> {
    base.join(name).map_err(|e| UpdateError::BadManifest(format!("{name:?} does not resolve against {base}: {e}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes free for an unprivileged writer in the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Whether connecting to `ip` can only reach the public internet: not loopback, private,
/// link-local (cloud metadata services), carrier-grade NAT, unique-local, multicast or
/// unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0))
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let s0 = a.segments()[0];
                !(a.is_loopback()
                    || a.is_unspecified()
                    || a.is_multicast()
                    || (s0 & 0xfe00) == 0xfc00
                    || (s0 & 0xffc0) == 0xfe80
                    || s0 == 0x2001 && a.segments()[1] == 0xdb8)
            }
        },
    }
}

/// Where an http(s) URL may go: below an allowed prefix; `true` when that prefix names
/// the host as an IP address literally, the only way a private address is allowed.
fn allowed_http(url: &Url, cfg: &ModelUpdatesConfig) -> Result<bool, UpdateError> {
    let refuse = || UpdateError::NotAllowed("the URL is not below any [model_updates] allowed_urls prefix".into());
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UpdateError::NotAllowed("URLs with a user or password are not accepted".into()));
    }
    let prefix = cfg.allowed_urls.iter().find(|p| url.as_str().starts_with(p.as_str())).ok_or_else(refuse)?;
    Ok(matches!(prefix.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))))
}

/// The local file a `file://` URL may name: a regular file inside `local_dir` once
/// symlinks are resolved. Opened without blocking, so a FIFO or a device is refused
/// rather than waited on.
fn open_local(url: &Url, cfg: &ModelUpdatesConfig) -> Result<std::fs::File, UpdateError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let Some(root) = &cfg.local_dir else {
        return Err(UpdateError::NotAllowed("file:// URLs need [model_updates] local_dir".into()));
    };
    let outside = || UpdateError::NotAllowed("the file is not inside [model_updates] local_dir".into());
    let path = url.to_file_path().map_err(|_| outside())?;
    // Checked by name first, so a path outside is refused without touching it.
    if !path.starts_with(root) {
        return Err(outside());
    }
    let real = path
        .canonicalize()
        .map_err(|e| UpdateError::Download { url: url.to_string(), reason: e.kind().to_string() })?;
    if !real.starts_with(root) {
        return Err(outside());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&real)
        .map_err(|e| UpdateError::Download { url: url.to_string(), reason: e.kind().to_string() })?;
    let meta = file.metadata().map_err(|e| UpdateError::Download { url: url.to_string(), reason: e.to_string() })?;
    if !meta.is_file() {
        return Err(UpdateError::NotAllowed("not a regular file".into()));
    }
    Ok(file)
}

/// A resolver that drops every non-public address unless the URL's allowed prefix named
/// its address, and remembers that it did so (for the refusal's code).
#[derive(Debug)]
struct PublicOnly {
    allow_private: bool,
    refused: Arc<AtomicBool>,
}

impl ureq::unversioned::resolver::Resolver for PublicOnly {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let all = ureq::unversioned::resolver::DefaultResolver::default().resolve(uri, config, timeout)?;
        if self.allow_private {
            return Ok(all);
        }
        let mut out = self.empty();
        for a in all.iter().filter(|a| is_public(a.ip())) {
            out.push(*a);
        }
        if out.is_empty() {
            self.refused.store(true, Ordering::SeqCst);
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

impl Fetcher<'_> {
    /// Streams `url` into `out`, refusing more than `limit` bytes, a URL or redirect that
    /// is not allowed, or going past the deadline. Returns the byte count.
    fn fetch(&self, url: &Url, limit: u64, out: &mut impl std::io::Write) -> Result<u64, UpdateError> {
        let reader: Box<dyn Read> = match url.scheme() {
            "file" => Box::new(open_local(url, self.cfg)?),
            "http" | "https" => self.get(url, limit)?,
            other => return Err(UpdateError::NotAllowed(format!("scheme {other:?} is not http, https or file"))),
        };
        let fail = |reason: String| UpdateError::Download { url: url.to_string(), reason };
        let mut limited = reader.take(limit + 1);
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            if self.cancel.is_cancelled() {
                return Err(UpdateError::Cancelled);
            }
            if Instant::now() >= self.deadline {
                return Err(fail("timed out ([model_updates] timeout_secs)".into()));
            }
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fail(e.to_string())),
            };
            total += n as u64;
            if total > limit {
                return Err(UpdateError::TooLarge { url: url.to_string(), limit });
            }
            out.write_all(&buf[..n]).map_err(|e| UpdateError::Io(e.to_string()))?;
        }
        Ok(total)
    }

    /// An http(s) GET, following redirects by hand so each target is checked first.
    fn get(&self, first: &Url, limit: u64) -> Result<Box<dyn Read>, UpdateError> {
        let mut url = first.clone();
        for _ in 0..=MAX_REDIRECTS {
            let fail = |reason: String| UpdateError::Download { url: url.to_string(), reason };
            if !matches!(url.scheme(), "http" | "https") {
                return Err(UpdateError::NotAllowed("a redirect may only lead to http:// or https://".into()));
            }
            let allow_private = allowed_http(&url, self.cfg)?;
            let left = self.deadline.saturating_duration_since(Instant::now());
            let config = ureq::Agent::config_builder()
                .timeout_connect(Some(CONNECT_TIMEOUT.min(left)))
                .timeout_global(Some(left))
                .http_status_as_error(false)
                .max_redirects(0)
                .proxy(None)
                .tls_config(tls_config(self.cfg.ca_file.as_deref()).map_err(fail)?)
                .build();
            let refused = Arc::new(AtomicBool::new(false));
            let resolver = PublicOnly { allow_private, refused: refused.clone() };
            let agent =
                ureq::Agent::with_parts(config, ureq::unversioned::transport::DefaultConnector::default(), resolver);
            let resp = match agent.get(url.as_str()).call() {
                Ok(r) => r,
                Err(_) if refused.load(Ordering::SeqCst) => {
                    return Err(UpdateError::NotAllowed(
                        "the host resolves only to loopback, link-local or private addresses; name such a server by its address in allowed_urls".into(),
                    ));
                }
                Err(e) => return Err(fail(describe(&e))),
            };
            let status = resp.status();
            if status.is_redirection() {
                let next = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .ok_or_else(|| fail(format!("HTTP {status} without a usable Location")))?;
                url = next;
                continue;
            }
            if !status.is_success() {
                return Err(fail(format!("HTTP {status}")));
            }
            if let Some(n) = resp.body().content_length()
                && n > limit
            {
                return Err(UpdateError::TooLarge { url: url.to_string(), limit });
            }
            return Ok(Box::new(resp.into_body().into_reader()));
        }
        Err(UpdateError::Download { url: first.to_string(), reason: format!("more than {MAX_REDIRECTS} redirects") })
    }
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::TimedOut => "timed out".into(),
            _ => io.to_string(),
        },
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        other => other.to_string(),
    }
}

/// rustls with the aws-lc-rs provider the MQTT client already uses, trusting the system's
/// CA store and `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<ureq::tls::TlsConfig, String> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut certs: Vec<ureq::tls::Certificate<'static>> =
        loaded.certs.iter().map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned()).collect();
    if let Some(f) = ca_file {
        certs.extend(read_ca_file(f)?);
    }
    if certs.is_empty() {
        return Err("no CA certificates found in the system store (install ca-certificates)".into());
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build())
}

/// A file being written and hashed at once.
struct HashingFile {
    file: std::fs::File,
    hasher: Sha256,
}

impl HashingFile {
    fn create(path: &Path) -> Result<Self, UpdateError> {
        let file = std::fs::File::create(path).map_err(|e| UpdateError::Io(format!("{}: {e}", path.display())))?;
        Ok(Self { file, hasher: Sha256::new() })
    }

    fn finish(mut self) -> Result<String, UpdateError> {
        self.file.flush().and_then(|()| self.file.sync_all()).map_err(|e| UpdateError::Io(e.to_string()))?;
        Ok(hex(&self.hasher.finalize()))
    }
}

impl std::io::Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let d = std::env::temp_dir().join(format!("lookout-update-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&d).expect("mkdir");
            Self(d.canonicalize().expect("canonical"))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Updates on (one trusted key), file:// releases from `local`; the signing key too.
    fn enabled(local: &Path) -> (ModelUpdatesConfig, ed25519_dalek::SigningKey) {
        let (secret, public) = signature::keygen().expect("keygen");
        let cfg = ModelUpdatesConfig {
            trusted_keys: vec![signature::parse_public(&public).expect("public")],
            local_dir: Some(local.to_path_buf()),
            allowed_urls: vec![Url::parse("http://127.0.0.1:8080/releases/").expect("url")],
            ..ModelUpdatesConfig::default()
        };
        (cfg, signature::parse_secret(&secret).expect("secret"))
    }

    fn try_install(url: &str, cfg: &ModelUpdatesConfig, state: &Path) -> Result<Installed, UpdateError> {
        let known = [KnownModel { name: "m".into(), manifest_name: "m".into(), highest: "0.2.0".into() }];
        install(url, cfg, &ModelStore::new(state), &known, &CancellationToken::new())
    }

    const MANIFEST: &str = "name = \"m\"\nversion = \"VERSION\"\nfile = \"model.onnx\"\nsha256 = \"00\"\n\n[labels]\nfile = \"labels.txt\"\n";

    #[test]
    fn updates_are_refused_before_any_io_while_off() {
        let state = Dir::new();
        let e = try_install("file:///proc/self/environ", &ModelUpdatesConfig::default(), &state.0).expect_err("off");
        assert_eq!(e.code(), "updates_disabled");
        assert!(!state.0.join("models").exists(), "nothing written");
    }

    #[test]
    fn file_urls_must_name_regular_files_inside_local_dir() {
        let (local, state) = (Dir::new(), Dir::new());
        let (cfg, _) = enabled(&local.0);
        let fifo = local.0.join("fifo.toml");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
        std::os::unix::fs::symlink("/etc/passwd", local.0.join("link.toml")).expect("symlink");
        for url in [
            "file:///etc/passwd".to_string(),
            "file:///proc/self/environ".to_string(),
            format!("file://{}", fifo.display()),
            format!("file://{}/link.toml", local.0.display()),
            format!("file://{}/../x/manifest.toml", local.0.display()),
        ] {
            let e = try_install(&url, &cfg, &state.0).expect_err("refused");
            assert_eq!(e.code(), "url_not_allowed", "{url}: {e}");
        }
    }

    #[test]
    fn what_was_fetched_never_appears_in_an_error() {
        let (local, state) = (Dir::new(), Dir::new());
        let (cfg, _) = enabled(&local.0);
        for (i, text) in
            ["SECRET-PASSWORD-4711\n", "user = SECRET-PASSWORD-4711\n", "signature = 7\nSECRET-PASSWORD-4711 = [\n"]
                .iter()
                .enumerate()
        {
            let f = local.0.join(format!("{i}.toml"));
            std::fs::write(&f, text).expect("write");
            let e = try_install(&format!("file://{}", f.display()), &cfg, &state.0).expect_err("refused");
            assert!(!e.to_string().contains("SECRET"), "{e}");
        }
    }

    #[test]
    fn signed_manifests_must_cover_their_labels_and_may_not_go_back() {
        let (local, state) = (Dir::new(), Dir::new());
        let (cfg, key) = enabled(&local.0);
        let write = |name: &str, text: &str| {
            let f = local.0.join(name);
            std::fs::write(&f, signature::sign(text, &key).expect("sign")).expect("write");
            format!("file://{}", f.display())
        };
        let e = try_install(&write("nolabels.toml", &MANIFEST.replace("VERSION", "0.3.0")), &cfg, &state.0)
            .expect_err("refused");
        assert_eq!(e.code(), "bad_manifest");
        assert!(e.to_string().contains("[labels] sha256"), "{e}");
        let old = MANIFEST.replace("VERSION", "0.1.9") + "sha256 = \"00\"\n";
        let e = try_install(&write("old.toml", &old), &cfg, &state.0).expect_err("refused");
        assert_eq!(e.code(), "downgrade", "{e}");
        let allowed = ModelUpdatesConfig { allow_downgrade: true, ..cfg.clone() };
        let e = try_install(&write("old2.toml", &old), &allowed, &state.0).expect_err("no labels file");
        assert_ne!(e.code(), "downgrade", "{e}");
    }

    #[test]
    fn only_public_addresses_count_as_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn http_urls_must_lie_below_an_allowed_prefix() {
        let cfg = ModelUpdatesConfig {
            allowed_urls: vec![
                Url::parse("http://127.0.0.1:8080/releases/").expect("url"),
                Url::parse("https://releases.example.org/lookout/").expect("url"),
            ],
            ..ModelUpdatesConfig::default()
        };
        let check = |u: &str| allowed_http(&Url::parse(u).expect("url"), &cfg).map_err(|e| e.code());
        assert_eq!(check("http://127.0.0.1:8080/releases/1/manifest.toml"), Ok(true));
        assert_eq!(check("https://releases.example.org/lookout/m.toml"), Ok(false));
        for bad in [
            "http://127.0.0.1:8080/releasesX/m.toml",
            "http://127.0.0.1:8081/releases/m.toml",
            "https://releases.example.org.evil.test/lookout/m.toml",
            "http://releases.example.org/lookout/m.toml",
            "https://user:pw@releases.example.org/lookout/m.toml",
            "http://127.0.0.1:8080/",
        ] {
            assert_eq!(check(bad), Err("url_not_allowed"), "{bad}");
        }
    }

    #[test]
    fn release_paths_stay_inside_the_release_folder() {
        for ok in ["model.onnx", "reference/frame.png"] {
            assert!(safe_relative(ok), "{ok}");
        }
        for bad in ["", "../model.onnx", "/etc/passwd", "a/../../b", ".hidden", "dir/.x", "a\\b"] {
            assert!(!safe_relative(bad), "{bad}");
        }
    }
}
