//! `model.update`, the download half: fetch a manifest, check its signature, fetch what
//! it names (relative to the manifest's URL), check sizes and hashes, and install it as a
//! new version folder (see [`super::store`]). Blocking: run it on a blocking thread.
//! Loading, the self-test and the swap are the supervisor's (`control::supervisor`).
//!
//! Every refusal has its own code, so a fleet tool can tell "fix the release" from
//! "fix the network": see [`UpdateError::code`].

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use url::Url;

use super::signature::{self, SignatureError};
use super::store::{ModelStore, valid_version};
use crate::config::ModelUpdatesConfig;

/// The largest manifest or labels file accepted.
const SMALL_FILE_MAX: u64 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}")]
    InvalidUrl(String),
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
            UpdateError::InvalidUrl(_) => "invalid_url",
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

/// Downloads and verifies the release at `manifest_url`; installs it into `store`.
/// `models` maps each configured model (`[[models]] name`) to the manifest name it runs:
/// a release replaces the configured model whose manifest has its name.
pub fn install(
    manifest_url: &str,
    cfg: &ModelUpdatesConfig,
    store: &ModelStore,
    models: &[(String, String)],
) -> Result<Installed, UpdateError> {
    let deadline = Instant::now() + cfg.timeout;
    let ca = cfg.ca_file.as_deref();
    let url = Url::parse(manifest_url).map_err(|e| UpdateError::InvalidUrl(format!("manifest_url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https" | "file") {
        return Err(UpdateError::InvalidUrl(format!(
            "manifest_url: scheme {:?} is not http, https or file",
            url.scheme()
        )));
    }
    let mut text = Vec::new();
    fetch(&url, SMALL_FILE_MAX, deadline, ca, &mut text)?;
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

    let table: toml::Table = toml::from_str(&text).map_err(|e| UpdateError::BadManifest(e.message().to_string()))?;
    let field = |k: &str| {
        table
            .get(k)
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| UpdateError::BadManifest(format!("missing string field `{k}`")))
    };
    let (name, version, file, sha256) = (field("name")?, field("version")?, field("file")?, field("sha256")?);
    let sha256 = sha256.trim().to_ascii_lowercase();
    let Some((alias, _)) = models.iter().find(|(_, manifest_name)| *manifest_name == name) else {
        return Err(UpdateError::UnknownModel(name));
    };
    let name = alias.clone();
    if !valid_version(&version) {
        return Err(UpdateError::BadManifest(format!(
            "version {version:?}: use letters, digits, '.', '-', '_', '+' (it names a folder)"
        )));
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

    // Download into a staging folder beside the final one; rename when all checks pass.
    let staging = store.model_dir(&name).join(format!(".staging-{}", uuid::Uuid::now_v7()));
    let result = (|| {
        std::fs::create_dir_all(&staging).map_err(|e| UpdateError::Io(e.to_string()))?;
        std::fs::write(staging.join("manifest.toml"), &text).map_err(|e| UpdateError::Io(e.to_string()))?;
        let labels_url = join(&url, &labels)?;
        let mut labels_bytes = Vec::new();
        fetch(&labels_url, SMALL_FILE_MAX, deadline, ca, &mut labels_bytes)?;
        write_new(&staging.join(&labels), &labels_bytes)?;
        if let Some(img) = &self_test_image {
            let mut bytes = Vec::new();
            fetch(&join(&url, img)?, limit, deadline, ca, &mut bytes)?;
            write_new(&staging.join(img), &bytes)?;
        }
        let artifact_url = join(&url, &file)?;
        if let Some(parent) = staging.join(&file).parent() {
            std::fs::create_dir_all(parent).map_err(|e| UpdateError::Io(e.to_string()))?;
        }
        let mut out = HashingFile::create(&staging.join(&file))?;
        let got = fetch(&artifact_url, limit, deadline, ca, &mut out)?;
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

/// Streams `url` into `out`, refusing more than `limit` bytes or going past `deadline`.
/// Returns the byte count.
fn fetch(
    url: &Url,
    limit: u64,
    deadline: Instant,
    ca_file: Option<&Path>,
    out: &mut impl std::io::Write,
) -> Result<u64, UpdateError> {
    let fail = |reason: String| UpdateError::Download { url: url.to_string(), reason };
    let reader: Box<dyn Read> = match url.scheme() {
        "file" => {
            let path = url.to_file_path().map_err(|_| fail("not a local path".into()))?;
            Box::new(std::fs::File::open(&path).map_err(|e| fail(e.to_string()))?)
        }
        _ => {
            let left = deadline.saturating_duration_since(Instant::now());
            let config = ureq::Agent::config_builder()
                .timeout_connect(Some(CONNECT_TIMEOUT.min(left)))
                .timeout_global(Some(left))
                .http_status_as_error(false)
                .tls_config(tls_config(ca_file).map_err(fail)?)
                .build();
            let agent: ureq::Agent = config.into();
            let resp = agent.get(url.as_str()).call().map_err(|e| fail(describe(&e)))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(fail(format!("HTTP {status}")));
            }
            if let Some(n) = resp.body().content_length()
                && n > limit
            {
                return Err(UpdateError::TooLarge { url: url.to_string(), limit });
            }
            Box::new(resp.into_body().into_reader())
        }
    };
    let mut limited = reader.take(limit + 1);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        if Instant::now() >= deadline {
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

/// The certificates of a PEM file (`[model_updates] ca_file`); at least one.
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
        Ok(self.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
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
