//! Signed model manifests: ed25519 over a canonical form of the manifest.
//!
//! **What is signed.** The manifest is parsed as TOML, its top-level `signature` key is
//! removed, and the rest becomes JSON with keys sorted at every level and no whitespace
//! (so comments, key order and formatting do not matter), prefixed by the domain tag
//! `lookout-manifest-v1\n`. Every field is covered: name, version, the artifact's file
//! name, `sha256` and `size`, input and output specs, labels, post-processing. The
//! artifact itself is covered through its `sha256`.
//!
//! **Formats.** A manifest carries `signature = "ed25519:<base64 of 64 bytes>"` at the top
//! level. A public key file holds one line `ed25519:<base64 of 32 bytes>`; a secret key
//! file holds `lookout-ed25519-secret:<base64 of the 32-byte seed>` and is created
//! readable by its owner only.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

const DOMAIN: &[u8] = b"lookout-manifest-v1\n";
const SIG_PREFIX: &str = "ed25519:";
const PUB_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "lookout-ed25519-secret:";

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a valid manifest: {message}")]
    Manifest { path: String, message: String },
    #[error("{path}: not a {what} key file ({message})")]
    Key { path: String, what: &'static str, message: String },
    #[error("the manifest is not signed (no top-level `signature`)")]
    Unsigned,
    #[error("the manifest's signature is malformed: {0}")]
    Malformed(String),
    #[error("the signature does not match any trusted key (manifest altered, or signed by another key)")]
    Mismatch,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SignatureError + '_ {
    move |source| SignatureError::Io { path: path.display().to_string(), source }
}

/// Where a downloaded file is not TOML, without a word of its text: toml's own message
/// quotes the offending line, and a fetched file may be anything (a secret included).
pub fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text.as_bytes()[..span.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1;
            format!("not valid TOML (line {line})")
        }
        None => "not valid TOML".into(),
    }
}

/// The bytes a manifest's signature covers (see the module docs).
pub fn signed_bytes(manifest_text: &str) -> Result<Vec<u8>, String> {
    let mut table: toml::Table = toml::from_str(manifest_text).map_err(|e| toml_problem(manifest_text, &e))?;
    table.remove("signature");
    let json = serde_json::to_value(&table).map_err(|e| e.to_string())?;
    // serde_json's maps are sorted by key: the serialisation is canonical.
    let mut out = DOMAIN.to_vec();
    out.extend(serde_json::to_vec(&json).map_err(|e| e.to_string())?);
    Ok(out)
}

/// A new key pair: (secret key file text, public key file text).
pub fn keygen() -> Result<(String, String), String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let secret = format!("{SECRET_PREFIX}{}\n", B64.encode(seed));
    let public = format!("{PUB_PREFIX}{}\n", B64.encode(key.verifying_key().as_bytes()));
    Ok((secret, public))
}

/// A public key as its key file writes it (`ed25519:<base64>`).
pub fn public_key_string(key: &VerifyingKey) -> String {
    format!("{PUB_PREFIX}{}", B64.encode(key.as_bytes()))
}

pub fn parse_public(text: &str) -> Result<VerifyingKey, String> {
    let b64 = text.trim().strip_prefix(PUB_PREFIX).ok_or("expected a line starting with \"ed25519:\"")?;
    let bytes: [u8; 32] =
        B64.decode(b64).map_err(|e| e.to_string())?.try_into().map_err(|_| "expected 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

pub fn parse_secret(text: &str) -> Result<SigningKey, String> {
    let b64 =
        text.trim().strip_prefix(SECRET_PREFIX).ok_or("expected a line starting with \"lookout-ed25519-secret:\"")?;
    let seed: [u8; 32] =
        B64.decode(b64).map_err(|e| e.to_string())?.try_into().map_err(|_| "expected 32 bytes".to_string())?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn read_public(path: &Path) -> Result<VerifyingKey, SignatureError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    parse_public(&text).map_err(|message| SignatureError::Key {
        path: path.display().to_string(),
        what: "public",
        message,
    })
}

pub fn read_secret(path: &Path) -> Result<SigningKey, SignatureError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    parse_secret(&text).map_err(|message| SignatureError::Key {
        path: path.display().to_string(),
        what: "secret",
        message,
    })
}

/// `manifest_text` with its signature added or replaced, the rest of the text unchanged.
pub fn sign(manifest_text: &str, key: &SigningKey) -> Result<String, String> {
    let sig = key.sign(&signed_bytes(manifest_text)?);
    let line = format!("signature = \"{SIG_PREFIX}{}\"", B64.encode(sig.to_bytes()));
    // Drop an earlier top-level signature line; top-level keys end at the first table.
    let mut out = Vec::new();
    let mut top = true;
    let mut placed = false;
    for l in manifest_text.lines() {
        let t = l.trim_start();
        if top && t.starts_with('[') {
            out.push(line.clone());
            placed = true;
            top = false;
        }
        if top && (t.starts_with("signature ") || t.starts_with("signature=")) {
            continue;
        }
        out.push(l.to_string());
    }
    if !placed {
        out.push(line);
    }
    let signed = out.join("\n") + "\n";
    // What we wrote must verify: guards against a manifest layout the line editing missed.
    verify(&signed, &[key.verifying_key()]).map_err(|e| format!("the signed manifest does not verify: {e}"))?;
    Ok(signed)
}

/// Checks the manifest's signature against `trusted` keys; returns the key that signed.
pub fn verify(manifest_text: &str, trusted: &[VerifyingKey]) -> Result<VerifyingKey, SignatureError> {
    let table: toml::Table =
        toml::from_str(manifest_text).map_err(|e| SignatureError::Malformed(toml_problem(manifest_text, &e)))?;
    let sig = match table.get("signature") {
        None => return Err(SignatureError::Unsigned),
        Some(v) => v.as_str().ok_or_else(|| SignatureError::Malformed("not a string".into()))?,
    };
    let b64 = sig.strip_prefix(SIG_PREFIX).ok_or_else(|| SignatureError::Malformed("expected \"ed25519:…\"".into()))?;
    let bytes: [u8; 64] = B64
        .decode(b64)
        .map_err(|e| SignatureError::Malformed(e.to_string()))?
        .try_into()
        .map_err(|_| SignatureError::Malformed("expected 64 bytes".into()))?;
    let sig = Signature::from_bytes(&bytes);
    let msg = signed_bytes(manifest_text).map_err(SignatureError::Malformed)?;
    trusted.iter().find(|k| k.verify(&msg, &sig).is_ok()).copied().ok_or(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "# a comment\nname = \"m\"\nversion = \"1\"\nfile = \"model.onnx\"\nsha256 = \"ab\"\n\n[input]\nname = \"images\"\n";

    fn keys() -> (SigningKey, VerifyingKey) {
        let (secret, public) = keygen().expect("keygen");
        (parse_secret(&secret).expect("secret"), parse_public(&public).expect("public"))
    }

    #[test]
    fn a_signed_manifest_verifies_and_keeps_its_text() {
        let (sk, pk) = keys();
        let signed = sign(MANIFEST, &sk).expect("sign");
        assert_eq!(verify(&signed, &[pk]).expect("verify"), pk);
        assert!(signed.starts_with("# a comment\nname = \"m\""), "{signed}");
        assert_eq!(signed.matches("signature = ").count(), 1);
        // Re-signing replaces the signature instead of adding one.
        let again = sign(&signed, &sk).expect("sign again");
        assert_eq!(again.matches("signature = ").count(), 1);
        assert_eq!(verify(&again, &[pk]).expect("verify"), pk);
    }

    #[test]
    fn any_change_to_a_field_breaks_the_signature_but_formatting_does_not() {
        let (sk, pk) = keys();
        let signed = sign(MANIFEST, &sk).expect("sign");
        for (from, to) in [
            ("sha256 = \"ab\"", "sha256 = \"ac\""),
            ("version = \"1\"", "version = \"2\""),
            ("name = \"images\"", "name = \"x\""),
        ] {
            let altered = signed.replace(from, to);
            assert!(matches!(verify(&altered, &[pk]), Err(SignatureError::Mismatch)), "{from} -> {to}");
        }
        let added = signed.replace("[input]", "size = 5\n[input]");
        assert!(matches!(verify(&added, &[pk]), Err(SignatureError::Mismatch)), "an added field");
        let reformatted = signed.replace("# a comment\n", "").replace("name = \"m\"", "name    =   \"m\"   # same");
        assert_eq!(verify(&reformatted, &[pk]).expect("formatting is not signed"), pk);
    }

    #[test]
    fn unsigned_malformed_and_foreign_signatures_are_refused() {
        let (sk, _) = keys();
        let (_, other) = keys();
        assert!(matches!(verify(MANIFEST, &[other]), Err(SignatureError::Unsigned)));
        let signed = sign(MANIFEST, &sk).expect("sign");
        assert!(matches!(verify(&signed, &[other]), Err(SignatureError::Mismatch)));
        assert!(matches!(verify(&signed, &[]), Err(SignatureError::Mismatch)));
        let bad = MANIFEST.replace("[input]", "signature = \"rsa:abc\"\n[input]");
        assert!(matches!(verify(&bad, &[other]), Err(SignatureError::Malformed(_))));
        assert!(parse_public("ed25519:AAAA").is_err());
        assert!(parse_secret("ed25519:AAAA").is_err());
    }
}
