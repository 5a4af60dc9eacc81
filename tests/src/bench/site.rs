//! `lookout-bench site`: a site of real agents on a real 3-member etcd cluster.
//!
//! 1. Failover: 3 agents at the default lease TTL (10 s), 6 streaming cameras; the agent
//!    running the most cameras is SIGKILLed `kills` times (restarted and given cameras back
//!    in between): the time from the kill until every one of its cameras publishes from
//!    another gateway, p50 / p99.
//! 2. etcd traffic and standby memory: `gateways` agents plus one standby (capacity 0) and
//!    `cameras` site cameras whose addresses do not answer (the pipelines retry quietly;
//!    etcd sees the same keys, leases and watches as with streaming cameras): bytes in and
//!    out of etcd (its own gRPC counters) per member per minute, while the cameras are
//!    added and in steady state; the standby agent's RSS growth per site camera it mirrors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lookout::site::admin::{self, Outcome};
use lookout_e2e::etcd::{EtcdCluster, site_assignment, site_settled};
use lookout_e2e::*;
use serde_json::{Value, json};

const SITE: &str = "bench-site";

fn config(
    dir: &Path,
    id: &str,
    broker: &str,
    etcd: &EtcdCluster,
    capacity: f64,
    settle: u64,
) -> anyhow::Result<PathBuf> {
    let d = dir.join(id);
    std::fs::create_dir_all(&d)?;
    let eps = etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "[agent]\nsite = \"{SITE}\"\nid = \"{id}\"\nstate_dir = \"{}\"\n\n[mqtt]\nurl = \"{broker}\"\n\n\
         [inference]\nthreads = 1\n\n[telemetry]\nlisten = \"off\"\n\n[[models]]\nname = \"person\"\nmanifest = \"{}\"\n\n\
         [site]\nendpoints = [{eps}]\ncapacity = {capacity}\nsettle_secs = {settle}\n",
        d.join("state").display(),
        person_manifest().display()
    );
    let path = d.join("lookout.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

async fn status(config: &lookout::config::Config) -> anyhow::Result<Value> {
    match admin::status(config, true).await? {
        Outcome::Done(s) => Ok(serde_json::from_str(&s)?),
        Outcome::Refused(r) => bail!("site status refused: {r}"),
    }
}

async fn add(config: &lookout::config::Config, camera: &Value) -> anyhow::Result<()> {
    match admin::camera_put(config, camera.to_string().as_bytes(), false).await? {
        Outcome::Done(_) => Ok(()),
        Outcome::Refused(r) => bail!("adding {}: {r}", camera["id"]),
    }
}

async fn wait_status(
    config: &lookout::config::Config,
    timeout: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(config).await?;
        if cond(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub async fn bench_site(kills: usize, gateways: usize, cameras: usize, seconds: u64) -> anyhow::Result<()> {
    failover(kills).await?;
    traffic(gateways, cameras, seconds).await
}

async fn failover(kills: usize) -> anyhow::Result<()> {
    const CAMS: usize = 6;
    if kills == 0 {
        return Ok(());
    }
    let dir = scratch("bench-site-failover");
    let etcd = EtcdCluster::start(&dir, 3)?;
    let broker = Mosquitto::start()?;
    let serve = std::env::current_exe()?.parent().map(|d| d.join("rtsp-serve")).context("exe dir")?;
    let mounts: Vec<String> = (0..CAMS).map(|i| format!("/cam{i}=h264")).collect();
    let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let rtsp = RtspProcess::start(&serve, free_port()?, &mounts)?;
    let rec = Recorder::start(broker.port(), &format!("lookout/v1/{SITE}/+/cameras/+/detections")).await?;
    let ids = ["gw-1", "gw-2", "gw-3"];
    let mut paths = BTreeMap::new();
    let mut agents = BTreeMap::new();
    for id in ids {
        let p = config(&dir, id, &broker.url(), &etcd, 4.0, 2)?;
        agents.insert(id, AgentProcess::start(&p)?);
        paths.insert(id, p);
    }
    let cfg = lookout::config::load(&paths["gw-1"]).map_err(|e| anyhow::anyhow!("{e}"))?;
    wait_status(&cfg, Duration::from_secs(60), "3 members", |s| s["members"].as_array().is_some_and(|m| m.len() == 3))
        .await?;
    for i in 0..CAMS {
        let cam = json!({"id": format!("cam{i}"), "url": rtsp.url(&format!("/cam{i}")), "model": "person",
                         "fps": 1.0, "min_score": 0.3, "reconnect_max_secs": 2});
        add(&cfg, &cam).await?;
    }
    let mut times = Vec::new();
    for round in 0..kills {
        let s = wait_status(&cfg, Duration::from_secs(120), "every gateway running its share", |s| {
            site_settled(s, 3, CAMS)
                && s["members"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().all(|m| m["running"].as_array().is_some_and(|r| !r.is_empty())))
        })
        .await?;
        let table = site_assignment(&s);
        // The agent with the most cameras, and each of them analysed where assigned.
        let victim =
            ids.iter().copied().max_by_key(|id| table.values().filter(|a| a == id).count()).context("an agent")?;
        let orphans: Vec<String> = table.iter().filter(|(_, a)| *a == victim).map(|(c, _)| c.clone()).collect();
        let since = Instant::now();
        rec.wait_for(Duration::from_secs(60), "detections from every camera", |msgs| {
            let seen: BTreeSet<&str> =
                msgs.iter().filter(|m| m.at >= since).filter_map(|m| m.json["camera"].as_str()).collect();
            seen.len() == CAMS
        })
        .await?;
        drop(agents.remove(victim)); // SIGKILL
        let killed = Instant::now();
        let msgs = rec
            .wait_for(Duration::from_secs(120), "the victim's cameras analysed elsewhere", |msgs| {
                orphans.iter().all(|c| {
                    msgs.iter().any(|m| m.at >= killed && m.json["camera"] == c.as_str() && m.json["agent"] != victim)
                })
            })
            .await?;
        let t = orphans
            .iter()
            .filter_map(|c| {
                msgs.iter()
                    .filter(|m| m.at >= killed && m.json["camera"] == c.as_str() && m.json["agent"] != victim)
                    .map(|m| m.at - killed)
                    .min()
            })
            .max()
            .context("a failover")?;
        eprintln!(
            "kill {}: {victim} ({} cameras) → analysed elsewhere after {:.2} s",
            round + 1,
            orphans.len(),
            t.as_secs_f64()
        );
        times.push(t.as_secs_f64());
        agents.insert(victim, AgentProcess::start(&paths[victim])?);
    }
    times.sort_by(f64::total_cmp);
    println!("| lease TTL | kills | failover p50 | p99 | min | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| 10 s | {} | {:.1} s | {:.1} s | {:.1} s | {:.1} s |",
        times.len(),
        pct(&times, 0.5),
        pct(&times, 0.99),
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}

/// etcd's own gRPC byte counters, summed over the members.
fn etcd_bytes(etcd: &EtcdCluster) -> anyhow::Result<(f64, f64)> {
    let (mut rx, mut tx) = (0.0, 0.0);
    for i in 0..3 {
        let (_, text) = http_get(etcd.client_port(i), "/metrics")?;
        let get =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
        rx += get("etcd_network_client_grpc_received_bytes_total");
        tx += get("etcd_network_client_grpc_sent_bytes_total");
    }
    Ok((rx, tx))
}

fn rss_kib(pid: u32) -> f64 {
    super::status_field(pid, "VmRSS:").split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

async fn traffic(gateways: usize, cameras: usize, seconds: u64) -> anyhow::Result<()> {
    let dir = scratch("bench-site-traffic");
    let etcd = EtcdCluster::start(&dir, 3)?;
    let broker = Mosquitto::start()?;
    let per = (cameras as f64 / gateways as f64).ceil() + 4.0;
    let mut agents = Vec::new();
    let mut first = None;
    for g in 0..gateways {
        let id = format!("gw-{:02}", g + 1);
        let p = config(&dir, &id, &broker.url(), &etcd, per, 30)?;
        first.get_or_insert(p.clone());
        agents.push(AgentProcess::start(&p)?);
    }
    let standby_cfg = config(&dir, "standby", &broker.url(), &etcd, 0.0, 30)?;
    let standby = AgentProcess::start(&standby_cfg)?;
    let members = gateways + 1;
    let cfg = lookout::config::load(&first.context("a gateway")?).map_err(|e| anyhow::anyhow!("{e}"))?;
    wait_status(&cfg, Duration::from_secs(120), "every member joined", |s| {
        s["members"].as_array().is_some_and(|m| m.len() == members)
    })
    .await?;
    let pid = standby.pid().context("standby pid")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss0 = rss_kib(pid);

    // Cameras nobody answers for: each gateway's pipelines retry every 60 s.
    let (rx0, tx0) = etcd_bytes(&etcd)?;
    let t0 = Instant::now();
    for i in 0..cameras {
        let cam = json!({"id": format!("cam-{i:04}"), "url": format!("rtsp://127.0.0.1:9/cam-{i:04}"), "model": "person",
                         "fps": 1.0, "reconnect_min_secs": 30, "reconnect_max_secs": 60});
        add(&cfg, &cam).await?;
    }
    let s = wait_status(&cfg, Duration::from_secs(300), "every camera running", |s| site_settled(s, members, cameras))
        .await?;
    let add_secs = t0.elapsed().as_secs_f64();
    let (rx1, tx1) = etcd_bytes(&etcd)?;
    let loads: Vec<f64> =
        s["members"].as_array().map(|ms| ms.iter().filter_map(|m| m["load"].as_f64()).collect()).unwrap_or_default();

    // Steady state.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rx2, tx2) = etcd_bytes(&etcd)?;
    let t2 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (rx3, tx3) = etcd_bytes(&etcd)?;
    let minutes = t2.elapsed().as_secs_f64() / 60.0;
    let rss1 = rss_kib(pid);
    let per_member_min = |rx: f64, tx: f64, minutes: f64| (rx + tx) / members as f64 / minutes / 1024.0;

    println!("| phase | members | site cameras | etcd bytes in + out per member per minute | over |");
    println!("|---|---|---|---|---|");
    println!(
        "| adding {cameras} cameras one by one (CLI path) until every gateway runs its share | {members} | {cameras} | {:.1} KiB | {add_secs:.0} s |",
        per_member_min(rx1 - rx0, tx1 - tx0, add_secs / 60.0)
    );
    println!(
        "| steady state (lease renewals, watches; nothing changes) | {members} | {cameras} | {:.1} KiB | {:.0} s |",
        per_member_min(rx3 - rx2, tx3 - tx2, minutes),
        minutes * 60.0
    );
    println!();
    println!(
        "Loads: min {:.0} / max {:.0} analysed fps per gateway. Standby agent (capacity 0) RSS {:.1} MiB with 0 site cameras, {:.1} MiB mirroring {cameras}: {:.2} KiB per site camera.",
        loads.iter().filter(|l| **l > 0.0).copied().fold(f64::INFINITY, f64::min),
        loads.iter().copied().fold(0.0, f64::max),
        rss0 / 1024.0,
        rss1 / 1024.0,
        (rss1 - rss0) / cameras as f64
    );
    drop(agents);
    drop(standby);
    Ok(())
}
