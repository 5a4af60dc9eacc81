//! Maintainer tooling through the real binary: `lookout model keygen | sign | verify`.

use std::path::Path;
use std::process::{Command, Output};

use lookout_e2e::*;

fn lookout(args: &[&str], dir: &Path) -> Output {
    Command::new(lookout_bin()).args(args).current_dir(dir).output().expect("run lookout")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A copy of the person model's folder to sign and tamper with.
fn model_copy(dir: &Path) -> std::path::PathBuf {
    let src = person_manifest().parent().expect("model dir").to_path_buf();
    let dst = dir.join("model");
    std::fs::create_dir_all(dst.join("reference")).expect("mkdir");
    for f in ["manifest.toml", "model.onnx", "labels.txt", "reference/vtest_frame200.png"] {
        std::fs::copy(src.join(f), dst.join(f)).expect("copy");
    }
    dst.join("manifest.toml")
}

#[test]
fn keygen_sign_verify_accepts_the_release_and_refuses_every_tampering_with_a_reason() {
    let dir = scratch("model-sign");
    let manifest = model_copy(&dir);
    let m = manifest.to_str().expect("utf-8");
    let out = lookout(&["model", "keygen", "--secret", "release.key", "--public", "release.pub"], &dir);
    assert!(out.status.success(), "{}", text(&out));
    let mode = std::fs::metadata(dir.join("release.key")).map(|md| {
        use std::os::unix::fs::PermissionsExt as _;
        md.permissions().mode() & 0o777
    });
    assert_eq!(mode.expect("secret key"), 0o600, "the secret key is private");
    // Never overwrites a key.
    let again = lookout(&["model", "keygen", "--secret", "release.key", "--public", "other.pub"], &dir);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains("refusing to overwrite"), "{}", text(&again));

    // Unsigned: refused.
    let unsigned = lookout(&["model", "verify", m, "--pubkey", "release.pub"], &dir);
    assert_eq!(unsigned.status.code(), Some(2));
    assert!(text(&unsigned).contains("not signed"), "{}", text(&unsigned));

    let signed = lookout(&["model", "sign", m, "--key", "release.key"], &dir);
    assert!(signed.status.success(), "{}", text(&signed));
    let ok = lookout(&["model", "verify", m, "--pubkey", "release.pub"], &dir);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("signature ok") && text(&ok).contains("sha256 ok"), "{}", text(&ok));
    // The signed manifest still loads as a model (the agent accepts the new field).
    lookout::infer::manifest::ModelSpec::load(&manifest).expect("a signed manifest loads");

    // Another key does not verify it.
    let other = lookout(&["model", "keygen", "--secret", "other.key", "--public", "other.pub"], &dir);
    assert!(other.status.success());
    let foreign = lookout(&["model", "verify", m, "--pubkey", "other.pub"], &dir);
    assert_eq!(foreign.status.code(), Some(2));
    assert!(text(&foreign).contains("does not match any trusted key"), "{}", text(&foreign));

    // A changed field: the signature no longer matches.
    let original = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(&manifest, original.replace("version = \"0.2.0\"", "version = \"0.2.1\"")).expect("write");
    let altered = lookout(&["model", "verify", m, "--pubkey", "release.pub"], &dir);
    assert_eq!(altered.status.code(), Some(2));
    assert!(text(&altered).contains("does not match any trusted key"), "{}", text(&altered));
    std::fs::write(&manifest, &original).expect("restore");

    // A damaged artifact: the signature holds, the sha256 does not.
    let onnx = manifest.with_file_name("model.onnx");
    let bytes = std::fs::read(&onnx).expect("model");
    std::fs::write(&onnx, &bytes[..bytes.len() / 2]).expect("truncate");
    let damaged = lookout(&["model", "verify", m, "--pubkey", "release.pub"], &dir);
    assert_eq!(damaged.status.code(), Some(2));
    assert!(text(&damaged).contains("sha256") && text(&damaged).contains("the manifest says"), "{}", text(&damaged));
    // And signing refuses a manifest whose artifact does not match.
    let refuse = lookout(&["model", "sign", m, "--key", "release.key"], &dir);
    assert_eq!(refuse.status.code(), Some(2), "{}", text(&refuse));
}
