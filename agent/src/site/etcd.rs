//! Connecting to the site's etcd as `[site]` says (endpoints, TLS, credentials), and asking
//! each member on its own whether the cluster has a leader (the fencing probe).

use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::lease::Probe;
use crate::config::SiteConfig;

/// How long a single request may take before it counts as failed: a third of the TTL, so
/// a renewal that hangs is retried well before the fence.
pub fn request_timeout(site: &SiteConfig) -> Duration {
    (site.lease_ttl / 3).max(Duration::from_secs(1))
}

fn options(site: &SiteConfig, timeout: Duration, require_leader: bool) -> anyhow::Result<ConnectOptions> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(timeout, timeout)
        .with_keep_alive_while_idle(true)
        .with_require_leader(require_leader);
    if let (Some(user), Some(password)) = (&site.username, &site.password) {
        o = o.with_user(user.clone(), password.expose().to_string());
    }
    if let Some(tls) = &site.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            t = t.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &tls.client_auth {
            let c = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let k = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            t = t.identity(Identity::from_pem(c, k));
        }
        o = o.with_tls(t);
    }
    Ok(o)
}

/// A client over every endpoint; requests fail rather than wait when the cluster has no
/// leader, so a partition shows as errors, not as hangs.
pub async fn connect(site: &SiteConfig) -> anyhow::Result<Client> {
    let timeout = request_timeout(site);
    let o = options(site, timeout, true)?;
    // etcd-client's own errors name the endpoint, never the credentials.
    tokio::time::timeout(timeout * 2, Client::connect(&site.endpoints, Some(o)))
        .await
        .context("connecting to etcd timed out")?
        .context("connecting to etcd")
}

/// A client on the first endpoint that answers, for one-shot commands: a fresh balanced
/// client may send its first request to a member that is down.
pub async fn connect_any(site: &SiteConfig) -> anyhow::Result<Client> {
    let timeout = request_timeout(site);
    let mut last = None;
    for ep in &site.endpoints {
        let o = options(site, timeout, true)?;
        let attempt = async {
            let mut c = Client::connect([ep.as_str()], Some(o)).await?;
            c.status().await?;
            anyhow::Ok(c)
        };
        match tokio::time::timeout(timeout * 2, attempt).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => last = Some(e.context(format!("etcd at {ep}"))),
            Err(_) => last = Some(anyhow::anyhow!("etcd at {ep}: no answer within {:?}", timeout * 2)),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd endpoint configured")))
}

/// Asks every endpoint, each on its own connection, whether it knows a leader.
pub async fn probe(site: &SiteConfig) -> Probe {
    let timeout = Duration::from_secs(1);
    let asks = site.endpoints.iter().map(|ep| async move {
        let o = options(site, timeout, false).ok()?;
        let ask = async {
            let mut c = Client::connect([ep.as_str()], Some(o)).await.ok()?;
            c.status().await.ok().map(|s| s.leader())
        };
        tokio::time::timeout(timeout * 2, ask).await.ok().flatten()
    });
    let answers = futures_util::future::join_all(asks).await;
    if answers.iter().flatten().any(|&leader| leader != 0) {
        Probe::HasLeader
    } else if answers.iter().any(Option::is_some) {
        Probe::NoLeader
    } else {
        Probe::Unreachable
    }
}
