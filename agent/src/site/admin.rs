//! `lookout site …`: the operators' view of a site, talking to etcd with the config's
//! `[site]` section. Cameras are checked against this config exactly as `camera.add` checks
//! them (every problem listed) before anything is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde_json::{Value, json};

use super::record::{self, Assignment, Key, Keys, MAX_CAMERA_BYTES, MemberRecord};
use crate::config::Config;

/// What a command did: printed on stdout, or refused (exit status 2) with why.
#[derive(Debug)]
pub enum Outcome {
    Done(String),
    Refused(String),
}

async fn client(config: &Config) -> anyhow::Result<(Client, Keys)> {
    let site = config.site.as_ref().context("the config has no [site] section")?;
    let limit = super::etcd::request_timeout(site) * 6;
    Ok((super::etcd::connect(site, 0, limit).await?.0, Keys::new(&config.agent.site)))
}

/// The site's keys: members, cameras and the assignment.
struct Snapshot {
    members: BTreeMap<String, MemberRecord>,
    cameras: BTreeMap<String, Value>,
    leader: Option<String>,
    assignment: Option<Assignment>,
    unreadable: Vec<String>,
}

async fn snapshot(c: &mut Client, keys: &Keys) -> anyhow::Result<Snapshot> {
    let r = c.get(keys.prefix(), Some(GetOptions::new().with_prefix())).await.context("reading the site")?;
    let mut s = Snapshot {
        members: BTreeMap::new(),
        cameras: BTreeMap::new(),
        leader: None,
        assignment: None,
        unreadable: Vec::new(),
    };
    for kv in r.kvs() {
        let Ok(k) = kv.key_str() else { continue };
        let ok = match keys.classify(k) {
            // Never printed as they are: a hostile key could carry terminal escapes.
            Some(Key::Agent(id) | Key::Camera(id)) if !record::valid_id(id) => Err(String::new()),
            Some(Key::Agent(id)) => record::parse::<MemberRecord>(kv.value()).map(|m| {
                s.members.insert(id.to_string(), m);
            }),
            Some(Key::Camera(id)) => record::parse::<Value>(kv.value()).map(|v| {
                s.cameras.insert(id.to_string(), v);
            }),
            Some(Key::Leader) => {
                s.leader = Some(String::from_utf8_lossy(kv.value()).into_owned());
                Ok(())
            }
            Some(Key::Assignment) => record::parse::<Assignment>(kv.value()).map(|a| s.assignment = Some(a)),
            None => Ok(()),
        };
        if ok.is_err() {
            s.unreadable.push(format!("{k:?}"));
        }
    }
    Ok(s)
}

/// Reads and checks a camera's JSON as `camera.add` would.
fn check_camera(config: &Config, text: &[u8]) -> Result<(String, Value), String> {
    if text.len() > MAX_CAMERA_BYTES {
        return Err(format!("the camera's JSON is {} bytes, more than {MAX_CAMERA_BYTES}", text.len()));
    }
    let v: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    if let Err(problems) = crate::config::camera_from_json(&v, config) {
        return Err(problems.join("\n"));
    }
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    if !record::valid_id(&id) {
        return Err(format!("id: {id:?} is not a valid camera id"));
    }
    Ok((id, v))
}

/// `lookout site camera add|update`: `update` replaces an existing camera, `add` refuses one.
pub async fn camera_put(config: &Config, text: &[u8], update: bool) -> anyhow::Result<Outcome> {
    let (id, camera) = match check_camera(config, text) {
        Ok(c) => c,
        Err(why) => return Ok(Outcome::Refused(why)),
    };
    let (mut c, keys) = client(config).await?;
    // The members (their local ids) and how many cameras: not the whole inventory, which
    // adding cameras one by one would read again for each.
    let r = c.get(keys.agents(), Some(GetOptions::new().with_prefix())).await.context("reading the members")?;
    let members: Vec<MemberRecord> = r.kvs().iter().filter_map(|kv| record::parse(kv.value()).ok()).collect();
    let count = c
        .get(keys.cameras(), Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .context("counting the cameras")?
        .count();
    if let Some(m) = members.iter().find(|m| m.local_cameras.contains(&id)) {
        return Ok(Outcome::Refused(format!(
            "camera {id} is a local camera of gateway {}; a site camera needs an id of its own",
            m.agent
        )));
    }
    if !update && usize::try_from(count).unwrap_or(usize::MAX) >= record::MAX_CAMERAS {
        return Ok(Outcome::Refused(format!("the site already has {} cameras", record::MAX_CAMERAS)));
    }
    let key = keys.camera(&id);
    let exists = if update {
        Compare::version(key.as_str(), CompareOp::Greater, 0)
    } else {
        Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
    };
    let put = TxnOp::put(key.as_str(), serde_json::to_vec(&camera)?, None);
    let r = c.txn(Txn::new().when([exists]).and_then([put])).await.context("writing the camera")?;
    Ok(match (r.succeeded(), update) {
        (true, false) => Outcome::Done(format!("added site camera {id}")),
        (true, true) => Outcome::Done(format!("updated site camera {id}")),
        (false, false) => Outcome::Refused(format!("site camera {id} exists; use `lookout site camera update`")),
        (false, true) => Outcome::Refused(format!("no site camera {id}; use `lookout site camera add`")),
    })
}

pub async fn camera_remove(config: &Config, id: &str) -> anyhow::Result<Outcome> {
    if !record::valid_id(id) {
        return Ok(Outcome::Refused(format!("{id:?} is not a valid camera id")));
    }
    let (mut c, keys) = client(config).await?;
    let r = c.delete(keys.camera(id), None).await.context("removing the camera")?;
    Ok(if r.deleted() > 0 {
        Outcome::Done(format!("removed site camera {id}"))
    } else {
        Outcome::Refused(format!("no site camera {id}"))
    })
}

/// Every site camera with where it runs; URLs without their credentials.
pub async fn camera_list(config: &Config, as_json: bool) -> anyhow::Result<Outcome> {
    let (mut c, keys) = client(config).await?;
    let s = snapshot(&mut c, &keys).await?;
    let a = s.assignment.unwrap_or_default();
    let rows: Vec<Value> = s
        .cameras
        .iter()
        .map(|(id, v)| {
            json!({
                "id": id,
                "model": v.get("model"),
                "fps": v.get("fps").cloned().unwrap_or(json!(1.0)),
                "url": v.get("url").and_then(Value::as_str).map(crate::config::redact_url),
                "agent": a.cameras.get(id),
                "unassigned": a.unassigned.get(id),
            })
        })
        .collect();
    if as_json {
        return Ok(Outcome::Done(serde_json::to_string_pretty(&rows)?));
    }
    let mut out = String::new();
    for r in &rows {
        let at = r["agent"].as_str().map_or_else(
            || format!("unassigned ({})", r["unassigned"].as_str().unwrap_or("not yet placed")),
            |a| format!("on {a}"),
        );
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:>5} fps  {at}",
            r["id"].as_str().unwrap_or(""),
            r["model"].as_str().unwrap_or(""),
            r["fps"]
        );
    }
    let _ = write!(out, "{} site cameras", rows.len());
    Ok(Outcome::Done(out))
}

/// `lookout site status`: members, capacity, load, the leader, assignments and the
/// cameras that fit nowhere.
pub async fn status(config: &Config, as_json: bool) -> anyhow::Result<Outcome> {
    let (mut c, keys) = client(config).await?;
    let s = snapshot(&mut c, &keys).await?;
    let a = s.assignment.clone().unwrap_or_default();
    let mut assigned: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (cam, agent) in &a.cameras {
        assigned.entry(agent.as_str()).or_default().push(cam.as_str());
    }
    let members: Vec<Value> = s
        .members
        .values()
        .map(|m| {
            json!({
                "agent": m.agent,
                "version": m.version,
                "capacity": m.capacity,
                "load": m.load,
                "models": m.models,
                "assigned": assigned.get(m.agent.as_str()).cloned().unwrap_or_default(),
                "running": m.running,
                "refused": m.refused,
                "local_cameras": m.local_cameras.len(),
            })
        })
        .collect();
    let doc = json!({
        "site": config.agent.site,
        "leader": s.leader,
        "members": members,
        "cameras": s.cameras.len(),
        "assignment": a.cameras,
        "unassigned": a.unassigned,
        "moves": a.moves,
        "assignment_ts": a.ts,
        "unreadable_keys": s.unreadable,
    });
    if as_json {
        return Ok(Outcome::Done(serde_json::to_string_pretty(&doc)?));
    }
    let mut out = String::new();
    let _ = writeln!(out, "site {}: leader {}", config.agent.site, s.leader.as_deref().unwrap_or("none"));
    let _ = writeln!(out, "{:<20} {:>9} {:>7} {:>9} {:>8}", "agent", "capacity", "load", "assigned", "refused");
    for m in s.members.values() {
        let n = assigned.get(m.agent.as_str()).map_or(0, Vec::len);
        let _ = writeln!(out, "{:<20} {:>9.1} {:>7.1} {:>9} {:>8}", m.agent, m.capacity, m.load, n, m.refused.len());
    }
    let _ = writeln!(out, "{} site cameras, {} assigned, {} moves", s.cameras.len(), a.cameras.len(), a.moves);
    for (cam, why) in &a.unassigned {
        let _ = writeln!(out, "unassigned: {cam} ({why})");
    }
    for (cam, agent) in a.cameras.iter().filter(|(_, agent)| !s.members.contains_key(*agent)) {
        let _ = writeln!(out, "waiting for a new home: {cam} (its gateway {agent} left)");
    }
    for k in &s.unreadable {
        let _ = writeln!(out, "unreadable key: {k}");
    }
    Ok(Outcome::Done(out.trim_end().to_string()))
}

/// Reads a camera's JSON from a file, or stdin for `-`.
pub fn read_input(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut text = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().take(MAX_CAMERA_BYTES as u64 + 1).read_to_end(&mut text).context("reading stdin")?;
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        f.take(MAX_CAMERA_BYTES as u64 + 1)
            .read_to_end(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if text.is_empty() {
        bail!("no camera JSON given");
    }
    Ok(text)
}
