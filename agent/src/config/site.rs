//! `[site]`: this gateway as a member of a site coordinated through etcd (optional;
//! without it the gateway runs only its own cameras, as before).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mqtt::{Secret, read_password};
use super::reader::{Issues, Keyword, TableReader};
use super::resolve_path;

/// What a gateway does with its site cameras while it cannot reach a working etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorLoss {
    /// Keep analysing the cameras it was assigned, but only while a reachable etcd member
    /// confirms that the cluster has no leader (quorum lost): then no lease can expire and
    /// no camera can be given to anyone else. When no member answers at all, this gateway
    /// may be the one cut off, so it stops like `stop`.
    Keep,
    /// Stop every site camera before its lease can expire, whatever the cause.
    Stop,
}

impl Keyword for CoordinatorLoss {
    const ALL: &'static [(&'static str, Self)] = &[("keep", CoordinatorLoss::Keep), ("stop", CoordinatorLoss::Stop)];
}

/// TLS to etcd (`https://` endpoints).
#[derive(Debug, Clone)]
pub struct SiteTls {
    /// `ca_file` (optional): PEM CA the etcd members' certificates chain to. Default: the
    /// system's trust store.
    pub ca_file: Option<PathBuf>,
    /// `client_cert` and `client_key` (optional, together): PEM certificate and key when
    /// etcd requires client certificates (`--client-cert-auth`).
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// `[site]`
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// `endpoints` (required, 1 to 9): the etcd members' client URLs, `http://host:port`
    /// or `https://host:port` (all of one scheme).
    pub endpoints: Vec<String>,
    /// Set when the endpoints are `https://`.
    pub tls: Option<SiteTls>,
    /// `username` (optional) and one of `password`, `password_file`, `password_env`:
    /// etcd's own authentication. Never logged.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `lease_ttl_secs` (default 10, 3 to 60): the TTL of this gateway's etcd lease. A
    /// gateway that dies loses its cameras to others this long after its last renewal;
    /// a gateway that cannot renew stops its site cameras at `stop_fraction` of it.
    pub lease_ttl: Duration,
    /// `capacity` (required, 0 to 10000): the analysed frames per second this gateway
    /// takes on for site cameras (a camera costs its `fps`). Measure it with the scale
    /// benchmark (docs/BENCHMARKS.md: the most cameras at 1 fps the gateway holds at
    /// ≥ 0.8 fps each, minus its own config-file cameras). 0: a standby member that runs no site camera.
    pub capacity: f64,
    /// `on_coordinator_loss` (default "keep"): see [`CoordinatorLoss`].
    pub on_coordinator_loss: CoordinatorLoss,
    /// `settle_secs` (default 30, 0 to 3600): how long a gateway that (re)joins takes only
    /// cameras nobody runs before cameras are moved to it to even the load, so a gateway
    /// that flaps does not move cameras back and forth.
    pub settle: Duration,
}

impl SiteConfig {
    /// Since its last renewal, how much of its lease a gateway that cannot renew waits
    /// before it stops its site cameras: the rest of the TTL is what stopping may take
    /// (the supervisor may be busy with a command) before anyone else can start them.
    pub const STOP_FRACTION: f64 = 0.6;
}

pub(super) fn read_site(
    mut t: TableReader<'_, '_>,
    issues: &mut Issues<'_>,
    base_dir: &Path,
    cwd: &Path,
) -> Option<SiteConfig> {
    let endpoints = t.req::<Vec<String>>(issues, "endpoints");
    let mut tls_scheme = None;
    if let Some(list) = &endpoints {
        let span = t.raw("endpoints").map(|v| v.span());
        if list.is_empty() || list.len() > 9 {
            issues.push(&t.field_path("endpoints"), span.as_ref(), "list 1 to 9 etcd client URLs");
        }
        for e in list {
            match endpoint_scheme(e) {
                Ok(tls) if tls_scheme.is_some_and(|s| s != tls) => {
                    issues.push(&t.field_path("endpoints"), span.as_ref(), "use one scheme for every endpoint");
                }
                Ok(tls) => tls_scheme = Some(tls),
                Err(msg) => issues.push(&t.field_path("endpoints"), span.as_ref(), msg),
            }
        }
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
    if (ca_file.is_some() || client_auth.is_some()) && tls_scheme == Some(false) {
        let s = t.raw("endpoints").map(|v| v.span());
        issues.push(&t.field_path("endpoints"), s.as_ref(), "ca_file/client_cert are set: use https:// endpoints");
    }
    let username = t.opt::<String>(issues, "username");
    let password = read_password(&mut t, issues, base_dir, cwd);
    if password.is_some() && username.is_none() {
        issues.push(&t.field_path("username"), Some(t.span()), "a password needs a username");
    }
    let ttl = t.num_in::<u64>(issues, "lease_ttl_secs", 3, 60, "seconds").unwrap_or(10);
    let capacity = t.req::<f64>(issues, "capacity");
    if let Some(c) = capacity
        && !(0.0..=10_000.0).contains(&c)
    {
        let s = t.raw("capacity").map(|v| v.span());
        issues.push(&t.field_path("capacity"), s.as_ref(), format!("must be from 0 to 10000 analysed fps, got {c}"));
    }
    let on_coordinator_loss = t.keyword(issues, "on_coordinator_loss", CoordinatorLoss::Keep);
    let settle = t.num_in::<u64>(issues, "settle_secs", 0, 3600, "seconds").unwrap_or(30);
    t.finish(issues);
    let endpoints = endpoints?;
    Some(SiteConfig {
        endpoints,
        tls: (tls_scheme == Some(true)).then_some(SiteTls { ca_file, client_auth }),
        username,
        password,
        lease_ttl: Duration::from_secs(ttl),
        capacity: capacity?.clamp(0.0, 10_000.0),
        on_coordinator_loss,
        settle: Duration::from_secs(settle),
    })
}

/// Whether an etcd client URL is TLS (`https://`), or why it is not one.
fn endpoint_scheme(e: &str) -> Result<bool, String> {
    let u = url::Url::parse(e).map_err(|err| format!("\"{}\" is not a URL ({err})", super::redact_url(e)))?;
    let tls = match u.scheme() {
        "http" => false,
        "https" => true,
        s => return Err(format!("\"{s}://\": etcd endpoints are http://host:port or https://host:port")),
    };
    if u.host_str().is_none_or(str::is_empty) || u.port().is_none() {
        return Err(format!("\"{}\" needs a host and a port (etcd's is usually 2379)", super::redact_url(e)));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("credentials go in username/password, not in the URL".into());
    }
    if u.path() != "/" && !u.path().is_empty() || u.query().is_some() {
        return Err(format!("\"{}\": only scheme, host and port", super::redact_url(e)));
    }
    Ok(tls)
}
