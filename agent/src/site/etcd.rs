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

/// A client on one member: the first, from `start` on, that answers. Requests fail rather
/// than wait when that member knows no leader, so a partition shows as errors, not hangs.
/// One member at a time, not tonic's balanced channel: a fresh balanced client sends
/// requests to a member that is down as readily as to one that is up.
pub async fn connect(site: &SiteConfig, start: usize, limit: Duration) -> anyhow::Result<(Client, usize)> {
    let timeout = request_timeout(site);
    let deadline = tokio::time::Instant::now() + limit;
    let n = site.endpoints.len();
    let mut last = None;
    for k in 0..n {
        let i = (start + k) % n;
        let ep = &site.endpoints[i];
        let o = options(site, timeout, true)?;
        // etcd-client's errors name the endpoint, never the credentials.
        let attempt = async {
            let mut c = Client::connect([ep.as_str()], Some(o)).await?;
            c.status().await?;
            anyhow::Ok(c)
        };
        let each = deadline.min(tokio::time::Instant::now() + timeout);
        match tokio::time::timeout_at(each, attempt).await {
            Ok(Ok(c)) => return Ok((c, i)),
            Ok(Err(e)) => last = Some(e.context(format!("etcd at {ep}"))),
            Err(_) => last = Some(anyhow::anyhow!("etcd at {ep}: no answer in time")),
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no etcd endpoint configured")))
}

/// Asks every endpoint, each on its own connection, whether it knows a leader, within
/// `limit`: one that knows a leader decides at once; otherwise what answered by then.
pub async fn probe(site: &SiteConfig, limit: Duration) -> Probe {
    use futures_util::StreamExt as _;
    let deadline = tokio::time::Instant::now() + limit;
    let mut asks: futures_util::stream::FuturesUnordered<_> = site
        .endpoints
        .iter()
        .map(|ep| async move {
            let o = options(site, limit, false).ok()?;
            let mut c = Client::connect([ep.as_str()], Some(o)).await.ok()?;
            c.status().await.ok().map(|s| s.leader())
        })
        .collect();
    let mut no_leader = false;
    loop {
        match tokio::time::timeout_at(deadline, asks.next()).await {
            Ok(Some(Some(0))) => no_leader = true,
            Ok(Some(Some(_))) => return Probe::HasLeader,
            Ok(Some(None)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    if no_leader { Probe::NoLeader } else { Probe::Unreachable }
}
