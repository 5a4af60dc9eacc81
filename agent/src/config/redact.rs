//! Masking secrets in URLs for anything shown: logs, MQTT replies and statuses, config
//! errors, the console, `lookout probe`.
//!
//! Cameras take credentials in the userinfo (`rtsp://admin:pw@cam/…`) and, on many models,
//! in the query (`…/stream?user=admin&password=pw`). The password and every value of a
//! secret-named query key (see [`is_secret_key`]) become `***`; the rest stays, so the
//! installer still sees which camera, path and user. A string that does not parse as a URL
//! is masked conservatively (everything before its last `@`), since that is where a
//! mistyped password usually breaks the syntax.

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Whether a query key names a secret: `password`, `pwd`, `passwd`, `pass`, `token`,
/// `key`, `secret`, `auth`, `apikey` and their relatives (`access_token`, `api-key`,
/// `passphrase`, `authorization`, `sig`…), case-insensitive, percent-decoded, with `-`,
/// `_` and `.` ignored. Wrongly masking a harmless value costs nothing.
pub fn is_secret_key(key: &str) -> bool {
    let k: String = percent_decode(key)
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    ["pass", "pwd", "token", "secret", "auth", "cred", "session"].iter().any(|w| k.contains(w))
        || k.ends_with("key")
        || matches!(k.as_str(), "sig" | "signature" | "pw")
}

/// The URL with its password and secret query values masked.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else { return redact_unparsed(url) };
    // An `@` the parser did not take as the end of a userinfo (a password with a raw `@`,
    // `#`, `/` or `?` in it) may follow a secret: mask as if unparsable.
    let userinfo = !u.username().is_empty() || u.password().is_some();
    let ats = url.matches('@').count();
    if ats > usize::from(userinfo) || (ats > 0 && u.cannot_be_a_base()) {
        return redact_unparsed(url);
    }
    if u.password().is_some() {
        let _ = u.set_password(Some(MASK));
    }
    // The fragment is read as the query's continuation: a raw `#` in a secret value
    // moves its tail there.
    let tail = match (u.query(), u.fragment()) {
        (q, Some(f)) => format!("{}#{f}", q.unwrap_or("")),
        (Some(q), None) => q.to_string(),
        (None, None) => return u.to_string(),
    };
    let masked = redact_query(&tail);
    if masked != tail {
        let (q, f) = match masked.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (masked.as_str(), None),
        };
        if u.query().is_some() {
            u.set_query(Some(q));
        }
        u.set_fragment(f);
    }
    u.to_string()
}

/// Masks, in free text (an error message, a log line), every URL it contains: each
/// `scheme://…` up to the next whitespace, `"`, `<`, `>` or backquote.
pub fn redact_urls_in(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let start = rest[..i]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(i, |(j, _)| j);
        // Not `'`: it is valid, unencoded, in a userinfo.
        let len =
            rest[i..].find(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '>' | '`')).unwrap_or(rest.len() - i);
        let end = i + len;
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// [`redact_urls_in`], and also every secret of `url` (its password, its secret query
/// values, raw or percent-decoded) wherever it appears in `text`: a GStreamer or camera
/// message may quote one without the URL around it. Secrets shorter than 4 characters
/// are masked only inside URLs (replacing "1" everywhere would garble the message).
pub fn redact_secrets_in(text: &str, url: &str) -> String {
    let mut out = redact_urls_in(text);
    for secret in url_secrets(url) {
        if secret.chars().count() >= 4 && secret != MASK {
            out = out.replace(&secret, MASK);
        }
    }
    out
}

/// The secret parts of `url`, each raw and percent-decoded, longest first.
fn url_secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut add = |s: &str| {
        for v in [s.to_string(), percent_decode(s)] {
            if !v.is_empty() && !found.contains(&v) {
                found.push(v);
            }
        }
    };
    match url::Url::parse(url) {
        Ok(u) => {
            if let Some(p) = u.password() {
                add(p);
            }
            for part in [u.query(), u.fragment()].into_iter().flatten() {
                for (_, v) in secret_pairs(part) {
                    add(v);
                }
            }
        }
        Err(_) => {
            let after = url.find("://").map_or(url, |i| &url[i + 3..]);
            if let Some((userinfo, _)) = after.rsplit_once('@') {
                add(userinfo.split_once(':').map_or(userinfo, |(_, p)| p));
            }
            if let Some((_, q)) = after.split_once('?') {
                for (_, v) in secret_pairs(q) {
                    add(v);
                }
            }
        }
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found
}

/// `key=value` pairs of a query whose key is a secret (pairs split on `&`, `;`, `#`).
fn secret_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query.split(['&', ';', '#']).filter_map(|kv| kv.split_once('=')).filter(|(k, v)| !v.is_empty() && is_secret_key(k))
}

/// The query (or fragment) with the value of every secret key masked; separators and
/// other pairs kept as they were.
fn redact_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    let mut after_secret = false;
    loop {
        let end = rest.find(['&', ';', '#']).unwrap_or(rest.len());
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((k, v)) if !v.is_empty() && is_secret_key(k) => {
                out.push_str(k);
                out.push('=');
                out.push_str(MASK);
                after_secret = true;
            }
            // A bare word right after a secret is most likely its continuation (a raw
            // `&`, `;` or `#` inside a password).
            None if after_secret && !pair.is_empty() => out.push_str(MASK),
            _ => {
                out.push_str(pair);
                after_secret = false;
            }
        }
        if end == rest.len() {
            break;
        }
        out.push_str(&rest[end..end + 1]);
        rest = &rest[end + 1..];
    }
    out
}

/// Not a URL: mask everything between the scheme and the last `@`, and the secret
/// query values after the first `?`.
fn redact_unparsed(s: &str) -> String {
    let (head, rest) = match s.find("://") {
        Some(i) => s.split_at(i + 3),
        None => ("", s),
    };
    let rest = match rest.rfind('@') {
        Some(i) => format!("{MASK}{}", &rest[i..]),
        None => rest.to_string(),
    };
    match rest.split_once('?') {
        Some((a, q)) => format!("{head}{a}?{}", redact_query(q)),
        None => format!("{head}{rest}"),
    }
}

/// `%XX` decoded (invalid sequences kept as they are; not UTF-8: lossy).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |at: usize| b.get(at).and_then(|&c| (c as char).to_digit(16));
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn userinfo_passwords_are_masked_and_the_rest_kept() {
        assert_eq!(redact_url("rtsp://admin:S3cret@10.0.4.21:554/stream1"), "rtsp://admin:***@10.0.4.21:554/stream1");
        assert_eq!(redact_url("rtsp://10.0.4.21:554/stream1"), "rtsp://10.0.4.21:554/stream1");
        assert_eq!(redact_url("rtsp://viewer@cam/s"), "rtsp://viewer@cam/s");
        assert_eq!(redact_url("mqtt://gw:pw%40x@broker:1883"), "mqtt://gw:***@broker:1883");
    }

    #[test]
    fn secret_query_values_are_masked_whatever_the_case() {
        assert_eq!(
            redact_url("rtsp://cam/stream?user=admin&password=Pw1&channel=1"),
            "rtsp://cam/stream?user=admin&password=***&channel=1"
        );
        for key in [
            "password",
            "pwd",
            "passwd",
            "pass",
            "token",
            "key",
            "secret",
            "auth",
            "apikey",
            "PassWord",
            "PWD",
            "Api_Key",
            "api-key",
            "access_token",
            "authorization",
            "passphrase",
            "sig",
            "x%70assword",
        ] {
            let out = redact_url(&format!("rtsp://cam/s?a=1&{key}=Zz9;b=2"));
            assert!(!out.contains("Zz9") && out.contains("a=1") && out.contains("b=2"), "{key}: {out}");
        }
        for key in ["channel", "subtype", "user", "resolution", "keyframe", "fps"] {
            let url = format!("rtsp://cam/s?{key}=v1");
            assert_eq!(redact_url(&url), url);
        }
        assert_eq!(redact_url("rtsp://cam/s#token=abc"), "rtsp://cam/s#token=***");
        assert_eq!(redact_url("rtsp://cam/s?password=ab#cd"), "rtsp://cam/s?password=***#***");
        assert_eq!(redact_url("rtsp://cam/s?pwd="), "rtsp://cam/s?pwd=");
    }

    #[test]
    fn what_does_not_parse_is_masked_up_to_its_last_at() {
        for raw in ["rtsp://admin:p#ss@cam/x", "rtsp://admin:pa/ss@cam", "rtsp://admin:12#ss@cam", "rtsp://a:b@[bad/x"]
        {
            let out = redact_url(raw);
            assert!(!out.contains("ss@") && !out.contains(":b@") && out.contains("***@"), "{raw}: {out}");
        }
        assert_eq!(redact_url("admin:pw@cam/stream"), "***@cam/stream");
        // Found by the property tests below: a raw `@` inside the password, a `'` in it.
        assert_eq!(redact_url("rtsp://admin:@A#@cam"), "rtsp://***@cam");
        assert_eq!(redact_urls_in(r#"at "rtsp://:A'@a" now"#), r#"at "rtsp://:***@a" now"#);
        assert_eq!(redact_url("not a url?password=x"), "not a url?password=***");
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn urls_in_text_are_masked_and_known_secrets_anywhere() {
        let msg = r#"cameras[0].url: not a valid URL (invalid port number): "rtsp://admin:S3cret@cam:x/s?token=T0ken""#;
        let out = redact_urls_in(msg);
        assert!(
            !out.contains("S3cret") && !out.contains("T0ken") && out.starts_with("cameras[0].url: not a valid"),
            "{out}"
        );
        assert_eq!(redact_urls_in("no url here: a://"), "no url here: a://");
        let two = redact_urls_in("from rtsp://u:Aa1@h/x to rtsp://h/y?pwd=Bb2.");
        assert!(!two.contains("Aa1") && !two.contains("Bb2") && two.contains("rtsp://h/y?pwd=***"), "{two}");
        let url = "rtsp://admin:S3cret%21@cam/s?key=K3yValue";
        let out = redact_secrets_in("auth failed for S3cret! (K3yValue) at rtsp://admin:S3cret%21@cam/s", url);
        assert!(!out.contains("S3cret") && !out.contains("K3yValue"), "{out}");
        assert_eq!(redact_secrets_in("code 1", "rtsp://u:1@h/"), "code 1", "short secrets are left alone outside URLs");
    }

    /// Lowercase keys, users, hosts and paths: the only uppercase letters in these URLs are
    /// in the secrets (and in their percent-encodings, which lie inside them).
    fn secret() -> impl Strategy<Value = String> {
        "[A-Z!$&'()+,;=:@/?#% ~._-]{0,6}[A-Z][A-Z!$&'()+,;=:@/?#% ~._-]{0,6}"
    }

    fn secret_key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "password",
            "pwd",
            "passwd",
            "pass",
            "token",
            "key",
            "secret",
            "auth",
            "apikey",
            "access_token",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn no_secret_survives_redaction(
            user in "[a-z]{0,6}",
            password in prop::option::of(secret()),
            host in "[a-z]{1,8}",
            port in prop::option::of(1u16..),
            path in "(/[a-z0-9]{0,6}){0,3}",
            pairs in prop::collection::vec(
                prop_oneof![
                    (secret_key().prop_map(str::to_string), secret()),
                    ("[a-z]{1,6}".prop_filter("not a secret name", |k| !is_secret_key(k)), "[a-z0-9]{0,6}"),
                ],
                0..5,
            ),
        ) {
            let mut u = url::Url::parse(&format!("rtsp://{host}{path}")).expect("base url");
            let _ = u.set_port(port);
            if !user.is_empty() || password.is_some() {
                let _ = u.set_username(&user);
                let _ = u.set_password(password.as_deref());
            }
            if !pairs.is_empty() {
                let mut q = u.query_pairs_mut();
                for (k, v) in &pairs {
                    q.append_pair(k, v);
                }
            }
            let url = u.to_string();
            let out = redact_url(&url);
            prop_assert!(!out.chars().any(|c| c.is_ascii_uppercase()), "{url} → {out}");
            let text = redact_urls_in(&format!("camera failed: \"{url}\" ({url})"));
            prop_assert!(!text.chars().any(|c| c.is_ascii_uppercase()), "{url} → {text}");
        }

        #[test]
        fn a_raw_password_that_breaks_the_url_does_not_survive(
            pw in "[A-Z#/?@:;&]{1,10}",
            rest in "(/[a-z]{0,5})?(\\?[a-z]{1,4}=[a-z]{0,4})?",
        ) {
            let url = format!("rtsp://admin:{pw}@cam{rest}");
            let out = redact_url(&url);
            prop_assert!(!out.chars().any(|c| c.is_ascii_uppercase()), "{url} → {out}");
        }

        #[test]
        fn any_text_is_redacted_without_panicking(text in any::<String>(), url in any::<String>()) {
            let _ = redact_url(&text);
            let _ = redact_urls_in(&text);
            let _ = redact_secrets_in(&text, &url);
        }
    }
}
