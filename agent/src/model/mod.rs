//! Model lifecycle: what maintainers do with models (keys, signing, verification), and
//! the agent's side of updates: download and verification ([`update`]) and the installed
//! versions on disk ([`store`]). Loading and swapping sessions is the supervisor's.

pub mod signature;
pub mod store;
pub mod update;

use std::path::Path;

use anyhow::{Context, bail};

/// `lookout model keygen`: writes a new key pair; the secret file readable by its owner only.
pub fn keygen(secret: &Path, public: &Path) -> anyhow::Result<()> {
    for p in [secret, public] {
        if p.exists() {
            bail!("{} exists: refusing to overwrite a key", p.display());
        }
    }
    let (secret_text, public_text) = signature::keygen().map_err(anyhow::Error::msg)?;
    write_private(secret, &secret_text).with_context(|| format!("writing {}", secret.display()))?;
    std::fs::write(public, &public_text).with_context(|| format!("writing {}", public.display()))?;
    println!("secret key: {} (keep it off the gateways)", secret.display());
    println!("public key: {} (list it in [model_updates] trusted_keys)", public.display());
    Ok(())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// `lookout model sign`: adds or replaces the manifest's signature, after checking that
/// the artifact it names matches its `sha256` (and `size`): signing a manifest whose
/// file does not match would only produce an update every gateway refuses.
pub fn sign(manifest: &Path, key: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    check_artifact(manifest, &text)?;
    let key = signature::read_secret(key)?;
    let signed = signature::sign(&text, &key).map_err(anyhow::Error::msg)?;
    let tmp = manifest.with_extension("toml.signing");
    std::fs::write(&tmp, &signed).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, manifest).with_context(|| format!("replacing {}", manifest.display()))?;
    println!("{}: signed", manifest.display());
    Ok(())
}

/// `lookout model verify`: the signature against `pubkey`, then the artifact.
pub fn verify(manifest: &Path, pubkey: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let key = signature::read_public(pubkey)?;
    signature::verify(&text, &[key]).with_context(|| format!("{}: signature", manifest.display()))?;
    let (path, size) = check_artifact(manifest, &text)?;
    println!(
        "{}: signature ok ({}); {}: sha256 ok, {size} bytes",
        manifest.display(),
        pubkey.display(),
        path.display()
    );
    Ok(())
}

/// The manifest's artifact (`file`, relative to the manifest) against its `sha256` and,
/// when given, `size`. Returns its path and size.
fn check_artifact(manifest: &Path, text: &str) -> anyhow::Result<(std::path::PathBuf, u64)> {
    let table: toml::Table = toml::from_str(text).with_context(|| format!("{}: not TOML", manifest.display()))?;
    let file = table.get("file").and_then(|v| v.as_str()).context("the manifest has no `file`")?;
    let want = table.get("sha256").and_then(|v| v.as_str()).context("the manifest has no `sha256`")?;
    let path = manifest.parent().unwrap_or(Path::new(".")).join(file);
    let size = std::fs::metadata(&path).with_context(|| format!("artifact {}", path.display()))?.len();
    if let Some(want_size) = table.get("size").and_then(|v| v.as_integer())
        && want_size as u64 != size
    {
        bail!("artifact {}: {size} bytes, the manifest says {want_size}", path.display());
    }
    let got = crate::infer::manifest::sha256_file(&path).with_context(|| format!("reading {}", path.display()))?;
    if !got.eq_ignore_ascii_case(want.trim()) {
        bail!("artifact {}: sha256 {got}, the manifest says {want}", path.display());
    }
    Ok((path, size))
}
