//! The site task: this gateway's membership, its mirror of the site's keys, the leader's
//! assignment, and the fence that stops site cameras before the lease can expire.
//!
//! One task, `run()` retrying `session()`: a session connects, keeps (or grants) the lease,
//! writes this member's record, lists the site and watches it from that revision, and
//! campaigns for `leader` when nobody holds it. The leader recomputes the assignment
//! ([`super::assign::plan`]) whenever members, cameras or the settle timers change, and
//! writes it in a transaction that only succeeds while it still holds `leader` under its
//! own lease. Every agent runs the cameras the table gives it, handed to the supervisor
//! through a `watch` channel ([`Wanted`]), and only while [`LeaseGuard`] says its lease is
//! alive. The lease and the guard outlive a session, so a dropped connection costs nothing
//! when it comes back before the fence.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp, WatchOptions};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::assign;
use super::etcd::{self, request_timeout};
use super::lease::{LeaseGuard, Probe, Verdict};
use super::record::{self, Assignment, Key, Keys, MemberRecord};
use crate::config::SiteConfig;

/// How long the site task gathers changes before it acts on them.
const BATCH: Duration = Duration::from_millis(200);

/// What the supervisor should run now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Wanted {
    /// The site cameras assigned to this gateway (their `camera.add` JSON), empty while the
    /// fence says stop.
    pub cameras: BTreeMap<String, Value>,
    /// Every site camera id: a local camera may not take one.
    pub site_ids: BTreeSet<String>,
}

/// What the supervisor runs of the site's cameras, reported back for the member record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reported {
    /// Site camera id → its fps.
    pub running: BTreeMap<String, f64>,
    pub refused: BTreeMap<String, String>,
    /// This gateway's own cameras (config file and `camera.add`).
    pub local: BTreeSet<String>,
}

#[derive(Default)]
pub struct Report {
    state: Mutex<Reported>,
    changed: Notify,
}

impl Report {
    pub fn set(&self, r: Reported) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *s != r {
            *s = r;
            self.changed.notify_one();
        }
    }
    pub fn get(&self) -> Reported {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The site as this gateway last saw it, for status, metrics and the console.
#[derive(Debug, Clone, Default)]
pub struct SiteView {
    pub members: BTreeMap<String, MemberRecord>,
    pub assignment: Option<Assignment>,
    pub leader: Option<String>,
    /// `run`, `hold` or `stop`.
    pub fence: &'static str,
}

#[derive(Default)]
pub struct SiteStats {
    pub member: AtomicBool,
    pub leader: AtomicBool,
    pub etcd_errors: AtomicU64,
    pub moves: AtomicU64,
    pub renewals: AtomicU64,
    /// The last confirmed renewal's round trip, in microseconds.
    pub renewal_latency_us: AtomicU64,
    /// Values under the site's prefix that could not be read (skipped).
    pub bad_values: AtomicU64,
    /// Times the fence stopped this gateway's site cameras.
    pub fenced: AtomicU64,
}

#[derive(Default)]
pub struct SiteState {
    pub stats: SiteStats,
    view: Mutex<SiteView>,
    /// The leader's `lookout.site/1` body (without `id` and `ts`) and a counter bumped
    /// when it changes, for the MQTT task to publish retained.
    message: Mutex<Option<Value>>,
    message_generation: AtomicU64,
}

impl SiteState {
    pub fn view(&self) -> SiteView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn message_generation(&self) -> u64 {
        self.message_generation.load(Ordering::Relaxed)
    }

    /// The `lookout.site/1` message to publish now, while this gateway leads.
    pub fn message(&self) -> Option<Vec<u8>> {
        let mut body = self.message.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        if let Some(m) = body.as_object_mut() {
            m.insert("id".into(), Value::String(crate::event::new_id()));
            m.insert("ts".into(), Value::String(crate::event::rfc3339_millis(SystemTime::now())));
        }
        serde_json::to_vec(&body).ok()
    }

    fn set_message(&self, body: Option<Value>) {
        let mut m = self.message.lock().unwrap_or_else(|e| e.into_inner());
        if *m != body {
            *m = body;
            self.message_generation.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The supervisor's and the telemetry's ends of the site task.
#[derive(Clone)]
pub struct SiteHandle {
    pub wanted: watch::Receiver<Wanted>,
    pub report: Arc<Report>,
    pub state: Arc<SiteState>,
}

/// Starts the site task; it ends at `shutdown`, after the supervisor reports its site
/// cameras stopped, by revoking the lease so that others take them at once.
pub fn spawn(
    site: SiteConfig,
    site_name: &str,
    agent: &str,
    models: BTreeSet<String>,
    shutdown: CancellationToken,
) -> (SiteHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Wanted::default());
    let report = Arc::new(Report::default());
    let state = Arc::new(SiteState::default());
    let c = Coordinator {
        keys: Keys::new(site_name),
        me: agent.to_string(),
        models,
        guard: LeaseGuard::new(site.on_coordinator_loss),
        site,
        lease: None,
        endpoint: 0,
        verdict: Verdict::Stop,
        mirror: Mirror::default(),
        wanted: tx,
        report: report.clone(),
        state: state.clone(),
        shutdown,
    };
    let span = tracing::info_span!("site", site = site_name);
    let task = tokio::spawn(tracing::Instrument::instrument(c.run(), span));
    (SiteHandle { wanted: rx, report, state }, task)
}

/// The site's keys as this agent last read them.
#[derive(Default)]
struct Mirror {
    /// Member → (record, its key's create revision, when this agent first saw it).
    members: BTreeMap<String, (MemberRecord, i64, Instant)>,
    cameras: BTreeMap<String, Value>,
    /// The leader's agent id and lease.
    leader: Option<(String, i64)>,
    assignment: Option<Assignment>,
    /// The revision of the last assignment this agent wrote: older ones still coming
    /// through the watch are ignored.
    assignment_rev: i64,
}

struct Coordinator {
    site: SiteConfig,
    keys: Keys,
    me: String,
    models: BTreeSet<String>,
    guard: LeaseGuard,
    lease: Option<i64>,
    /// The endpoint to try first.
    endpoint: usize,
    verdict: Verdict,
    mirror: Mirror,
    wanted: watch::Sender<Wanted>,
    report: Arc<Report>,
    state: Arc<SiteState>,
    shutdown: CancellationToken,
}

impl Coordinator {
    async fn run(mut self) {
        let cap = request_timeout(&self.site);
        let mut backoff = Duration::from_millis(200);
        while !self.shutdown.is_cancelled() {
            let started = Instant::now();
            match self.session().await {
                Ok(()) => break,
                Err(e) => {
                    self.state.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %format!("{e:#}"), "etcd session ended; connecting again");
                }
            }
            if started.elapsed() > cap * 3 {
                backoff = Duration::from_millis(200);
            }
            // Waiting to reconnect, the fence still runs.
            let until = tokio::time::Instant::now() + backoff;
            while tokio::time::Instant::now() < until && !self.shutdown.is_cancelled() {
                let wake = match self.guard.stop_at() {
                    Some(at) if at > Instant::now() => until.min(at.into()),
                    _ => until,
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = self.shutdown.cancelled() => {}
                }
                if self.fence().await {
                    break;
                }
            }
            backoff = (backoff * 2).min(cap);
        }
        self.leave().await;
    }

    /// Decides whether the site cameras may run, and tells the supervisor. True when a
    /// leader is back while holding: the caller should renew at once.
    async fn fence(&mut self) -> bool {
        let now = Instant::now();
        let probe = match self.guard.stop_at() {
            Some(at) if now >= at && self.site.on_coordinator_loss == crate::config::CoordinatorLoss::Keep => {
                // Bounded so that, with the stop itself, it ends well inside the TTL.
                let limit = self.site.lease_ttl.mul_f64(0.15);
                let p = etcd::probe(&self.site, limit).await;
                if p == Probe::NoLeader {
                    self.guard.saw_no_leader(now);
                }
                p
            }
            _ => Probe::Unreachable,
        };
        let verdict = self.guard.verdict(Instant::now(), || probe);
        if verdict != self.verdict {
            match verdict {
                Verdict::Run => info!("lease confirmed: running the site cameras assigned here"),
                Verdict::Hold => warn!("etcd has lost quorum: keeping the site cameras (on_coordinator_loss = keep)"),
                Verdict::Stop => {
                    if self.verdict != Verdict::Stop || self.lease.is_some() {
                        warn!("lease not confirmed in time: stopping the site cameras before it can expire");
                    }
                    self.state.stats.fenced.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.verdict = verdict;
        }
        self.state.stats.member.store(verdict != Verdict::Stop, Ordering::Relaxed);
        self.push_wanted();
        verdict == Verdict::Hold && probe == Probe::HasLeader
    }

    fn push_wanted(&mut self) {
        let mut cameras = BTreeMap::new();
        if self.verdict != Verdict::Stop
            && let Some(a) = &self.mirror.assignment
        {
            for (cam, agent) in &a.cameras {
                if agent == &self.me
                    && let Some(v) = self.mirror.cameras.get(cam)
                {
                    cameras.insert(cam.clone(), v.clone());
                }
            }
        }
        let next = Wanted { cameras, site_ids: self.mirror.cameras.keys().cloned().collect() };
        self.wanted.send_if_modified(|w| {
            let changed = *w != next;
            if changed {
                *w = next;
            }
            changed
        });
        let mut v = self.state.view.lock().unwrap_or_else(|e| e.into_inner());
        v.members = self.mirror.members.iter().map(|(k, (r, _, _))| (k.clone(), r.clone())).collect();
        v.assignment = self.mirror.assignment.clone();
        v.leader = self.mirror.leader.as_ref().map(|(id, _)| id.clone());
        v.fence = match self.verdict {
            Verdict::Run => "run",
            Verdict::Hold => "hold",
            Verdict::Stop => "stop",
        };
        drop(v);
        let leader = self.is_leader();
        self.state.stats.leader.store(leader, Ordering::Relaxed);
        let body = match (&self.mirror.assignment, leader) {
            (Some(a), true) => {
                let members: Vec<&MemberRecord> = self.mirror.members.values().map(|(r, _, _)| r).collect();
                Some(record::site_body(self.keys.site(), &self.me, &members, a, self.mirror.cameras.len()))
            }
            _ => None,
        };
        self.state.set_message(body);
    }

    fn renewed(&mut self, sent: Instant, ttl_secs: i64) {
        self.guard.renewed(sent, Duration::from_secs(ttl_secs.max(0).unsigned_abs()));
        self.state.stats.renewals.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.state.stats.renewal_latency_us.store(us, Ordering::Relaxed);
    }

    fn lease_lost(&mut self) {
        self.lease = None;
        self.guard.lost();
    }

    /// How long one etcd request may take now: the request timeout, but never past the
    /// fence while the cameras run, so no await in a session can hold them past it (a
    /// request cut short ends the session, and the reconnect loop applies the fence).
    fn limit(&self) -> Duration {
        let t = request_timeout(&self.site);
        match (self.verdict, self.guard.stop_at()) {
            (Verdict::Run, Some(at)) => {
                at.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(20), t)
            }
            _ => t,
        }
    }

    fn is_leader(&self) -> bool {
        matches!((&self.mirror.leader, self.lease), (Some((id, l)), Some(mine)) if *id == self.me && *l == mine)
    }

    async fn session(&mut self) -> anyhow::Result<()> {
        let t = request_timeout(&self.site);
        let (mut client, at) = etcd::connect(&self.site, self.endpoint, self.limit()).await?;
        // Next time, start with the member that answered.
        self.endpoint = at;
        let (mut keeper, mut renewals) = self.open_lease(&mut client).await?;
        self.fence().await;
        let lease = self.lease.context("no lease")?;
        self.put_member(&mut client, lease).await?;

        let prefix = self.keys.prefix().to_string();
        let listed =
            tokio::time::timeout(self.limit(), client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
                .await
                .context("listing the site timed out")?
                .context("listing the site")?;
        let revision = listed.header().map_or(0, |h| h.revision());
        self.mirror.cameras.clear();
        self.mirror.leader = None;
        self.mirror.assignment = None;
        let mut seen = BTreeSet::new();
        for kv in listed.kvs() {
            if let Ok(k) = kv.key_str()
                && let Some(Key::Agent(id)) = self.keys.classify(k)
            {
                seen.insert(id.to_string());
            }
            self.apply_put(kv);
        }
        self.mirror.members.retain(|id, _| seen.contains(id));
        let mut changes = tokio::time::timeout(
            self.limit(),
            client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1))),
        )
        .await
        .context("watching the site timed out")?
        .context("watching the site")?;
        info!(revision, members = self.mirror.members.len(), cameras = self.mirror.cameras.len(), "site joined");

        let report = self.report.clone();
        let shutdown = self.shutdown.clone();
        // Renewals every TTL/5: after the last confirmed one, at least 40 % of the TTL is
        // left before the fence, room to reconnect through an etcd leader election.
        let mut tick = tokio::time::interval(self.site.lease_ttl / 5);
        // The first tick is at once: the renewal that opened the session may have been
        // sent a while ago (a slow connect).
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent: VecDeque<Instant> = VecDeque::new();
        // When to look at the site again (campaign, replan): changes that arrive within
        // BATCH of the first are taken together, so a burst (cameras added one by one, a
        // gateway's cameras all moving) writes the table once, not once per key.
        let mut due = Some(Instant::now());
        let mut report_dirty = false;
        loop {
            if due.is_some_and(|d| Instant::now() >= d) {
                self.campaign(&mut client, lease).await?;
                if self.is_leader() {
                    self.replan(&mut client, lease).await?;
                }
                due = None;
            }
            if report_dirty {
                self.put_member(&mut client, lease).await?;
                report_dirty = false;
            }
            self.push_wanted();
            // Wake for the fence, and when a member becomes settled (the leader replans).
            // A fence already passed is looked at again every request timeout.
            let now = Instant::now();
            let mut wake = self.guard.stop_at().filter(|at| *at > now).unwrap_or(now + t);
            if self.is_leader()
                && let Some(s) = self.next_settle()
            {
                wake = wake.min(s);
            }
            if let Some(d) = due {
                wake = wake.min(d);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    sent.push_back(Instant::now());
                    keeper.keep_alive().await.context("sending a lease renewal")?;
                }
                m = renewals.message() => {
                    let r = m.context("lease renewals")?.context("etcd closed the lease renewals")?;
                    let at = sent.pop_front().context("a renewal nobody asked for")?;
                    if r.ttl() <= 0 {
                        self.lease_lost();
                        self.fence().await;
                        bail!("the lease expired");
                    }
                    self.renewed(at, r.ttl());
                }
                m = changes.message() => {
                    let w = m.context("site watch")?.context("etcd closed the site watch")?;
                    if w.canceled() {
                        bail!("etcd cancelled the site watch ({})", w.cancel_reason());
                    }
                    for ev in w.events() {
                        let Some(kv) = ev.kv() else { continue };
                        match ev.event_type() {
                            EventType::Put => self.apply_put(kv),
                            EventType::Delete => self.apply_delete(kv),
                        }
                    }
                    due.get_or_insert(Instant::now() + BATCH);
                }
                _ = report.changed.notified() => report_dirty = true,
                _ = tokio::time::sleep_until(wake.into()) => {
                    if self.is_leader() {
                        due.get_or_insert(Instant::now());
                    }
                }
            }
            self.fence().await;
        }
    }

    /// Renews the lease this agent holds if etcd still knows it, else grants a new one.
    async fn open_lease(
        &mut self,
        client: &mut Client,
    ) -> anyhow::Result<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> {
        if let Some(id) = self.lease {
            // Opening the stream renews once and waits for the answer.
            let sent = Instant::now();
            match tokio::time::timeout(self.limit(), client.lease_keep_alive(id)).await.context("renewing timed out")? {
                Ok(pair) => {
                    self.renewed(sent, self.site.lease_ttl.as_secs().try_into().unwrap_or(10));
                    return Ok(pair);
                }
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => {
                    info!("the lease expired while etcd was out of reach; joining again with a new one");
                    self.lease_lost();
                    self.fence().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let ttl = i64::try_from(self.site.lease_ttl.as_secs()).unwrap_or(10);
        let sent = Instant::now();
        let g = tokio::time::timeout(self.limit(), client.lease_grant(ttl, None))
            .await
            .context("lease grant timed out")??;
        self.lease = Some(g.id());
        self.renewed(sent, g.ttl());
        info!(lease = g.id(), ttl = g.ttl(), "lease granted");
        let (keeper, stream) = tokio::time::timeout(self.limit(), client.lease_keep_alive(g.id()))
            .await
            .context("renewing timed out")??;
        Ok((keeper, stream))
    }

    async fn put_member(&mut self, client: &mut Client, lease: i64) -> anyhow::Result<()> {
        let r = self.report.get();
        let rec = MemberRecord {
            agent: self.me.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            capacity: self.site.capacity,
            models: self.models.clone(),
            local_cameras: r.local,
            load: r.running.values().sum(),
            running: r.running.keys().cloned().collect(),
            refused: r.refused,
        };
        let value = serde_json::to_vec(&rec)?;
        tokio::time::timeout(
            self.limit(),
            client.put(self.keys.agent(&self.me), value, Some(PutOptions::new().with_lease(lease))),
        )
        .await
        .context("writing the member record timed out")?
        .context("writing the member record")?;
        Ok(())
    }

    /// Takes `leader` when nobody holds it (or an earlier run of this agent left it).
    async fn campaign(&mut self, client: &mut Client, lease: i64) -> anyhow::Result<()> {
        let key = self.keys.leader();
        let when = match &self.mirror.leader {
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Some((id, l)) if *id == self.me && *l != lease => Compare::lease(key.as_str(), CompareOp::Equal, *l),
            Some(_) => return Ok(()),
        };
        let put = TxnOp::put(key.as_str(), self.me.as_str(), Some(PutOptions::new().with_lease(lease)));
        let r = tokio::time::timeout(self.limit(), client.txn(Txn::new().when([when]).and_then([put])))
            .await
            .context("campaign timed out")?
            .context("campaign")?;
        if r.succeeded() {
            info!("elected site leader");
            self.mirror.leader = Some((self.me.clone(), lease));
        }
        Ok(())
    }

    fn next_settle(&self) -> Option<Instant> {
        let now = Instant::now();
        self.mirror.members.values().map(|(_, _, seen)| *seen + self.site.settle).filter(|at| *at > now).min()
    }

    /// The leader's table for what it sees now, written only if it changed.
    async fn replan(&mut self, client: &mut Client, lease: i64) -> anyhow::Result<()> {
        let now = Instant::now();
        let members: Vec<assign::Member> = self
            .mirror
            .members
            .values()
            .map(|(r, _, seen)| assign::Member {
                id: r.agent.clone(),
                capacity: r.capacity,
                models: r.models.clone(),
                settled: now.duration_since(*seen) >= self.site.settle,
                refused: r.refused.keys().cloned().collect(),
            })
            .collect();
        let mut unassigned = BTreeMap::new();
        let mut cameras = Vec::new();
        for (id, v) in &self.mirror.cameras {
            match record::planner_camera(id, v) {
                Ok(c) => cameras.push(c),
                Err(e) => {
                    unassigned.insert(id.clone(), format!("invalid: {e}"));
                }
            }
        }
        let previous = self.mirror.assignment.clone().unwrap_or_default();
        let plan = assign::plan(&members, &cameras, &previous.cameras, &assign::Policy::default());
        unassigned.extend(plan.unassigned.iter().map(|(c, why)| (c.clone(), why.as_str().to_string())));
        if plan.assignments == previous.cameras && unassigned == previous.unassigned && previous.leader == self.me {
            return Ok(());
        }
        let moved =
            plan.assignments.iter().filter(|(c, to)| previous.cameras.get(*c).is_some_and(|f| f != *to)).count();
        let next = Assignment {
            leader: self.me.clone(),
            cameras: plan.assignments,
            unassigned,
            moves: previous.moves + moved as u64,
            ts: crate::event::rfc3339_millis(SystemTime::now()),
        };
        let (akey, lkey) = (self.keys.assignment(), self.keys.leader());
        let txn = Txn::new().when([Compare::lease(lkey.as_str(), CompareOp::Equal, lease)]).and_then([TxnOp::put(
            akey.as_str(),
            serde_json::to_vec(&next)?,
            None,
        )]);
        let r = tokio::time::timeout(self.limit(), client.txn(txn))
            .await
            .context("writing the assignment timed out")?
            .context("writing the assignment")?;
        if !r.succeeded() {
            warn!("no longer the site leader; the assignment was not written");
            self.mirror.leader = None;
            return Ok(());
        }
        self.mirror.assignment_rev = r.header().map_or(0, |h| h.revision());
        self.state.stats.moves.fetch_add(moved as u64, Ordering::Relaxed);
        info!(
            assigned = next.cameras.len(),
            unassigned = next.unassigned.len(),
            moved,
            members = members.len(),
            "assignment written"
        );
        self.mirror.assignment = Some(next);
        Ok(())
    }

    fn apply_put(&mut self, kv: &KeyValue) {
        let Ok(key) = kv.key_str() else {
            self.state.stats.bad_values.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let bad = |what: &str, e: String| {
            warn!(key = what, error = %e, "unreadable site value; skipped");
        };
        match self.keys.classify(key) {
            Some(Key::Agent(id))
                if self.mirror.members.len() >= record::MAX_MEMBERS && !self.mirror.members.contains_key(id) =>
            {
                self.state.stats.bad_values.fetch_add(1, Ordering::Relaxed);
                error!(agent = id, limit = record::MAX_MEMBERS, "too many site members; this one is ignored");
            }
            Some(Key::Agent(id)) => match record::parse::<MemberRecord>(kv.value()) {
                Ok(r) if r.agent == id && record::valid_id(id) => {
                    let created = kv.create_revision();
                    let seen = match self.mirror.members.get(id) {
                        Some((_, c, seen)) if *c == created => *seen,
                        _ => Instant::now(),
                    };
                    self.mirror.members.insert(id.to_string(), (r, created, seen));
                }
                Ok(_) => {
                    self.state.stats.bad_values.fetch_add(1, Ordering::Relaxed);
                    bad(key, "the record names another agent".into());
                    self.mirror.members.remove(id);
                }
                Err(e) => {
                    self.state.stats.bad_values.fetch_add(1, Ordering::Relaxed);
                    bad(key, e);
                    self.mirror.members.remove(id);
                }
            },
            Some(Key::Camera(id)) => {
                if self.mirror.cameras.len() >= record::MAX_CAMERAS && !self.mirror.cameras.contains_key(id) {
                    self.state.stats.bad_values.fetch_add(1, Ordering::Relaxed);
                    error!(camera = id, limit = record::MAX_CAMERAS, "too many site cameras; this one is ignored");
                    return;
                }
                let v = if kv.value().len() > record::MAX_CAMERA_BYTES {
                    Err(format!("{} bytes, more than {}", kv.value().len(), record::MAX_CAMERA_BYTES))
                } else {
                    record::parse::<Value>(kv.value())
                };
                match v {
                    Ok(v) if record::valid_id(id) && v.is_object() => {
                        self.mirror.cameras.insert(id.to_string(), v);
                    }
                    _ => {
                        self.state.stats.bad_values.fetch_add(1, Ordering::Relaxed);
                        bad(key, "not a camera object".into());
                        self.mirror.cameras.remove(id);
                    }
                }
            }
            Some(Key::Leader) => match std::str::from_utf8(kv.value()) {
                Ok(id) => self.mirror.leader = Some((id.to_string(), kv.lease())),
                Err(_) => self.mirror.leader = Some((String::new(), kv.lease())),
            },
            Some(Key::Assignment) if kv.mod_revision() < self.mirror.assignment_rev => {}
            Some(Key::Assignment) => match record::parse::<Assignment>(kv.value()) {
                Ok(a) => self.mirror.assignment = Some(a),
                Err(e) => {
                    self.state.stats.bad_values.fetch_add(1, Ordering::Relaxed);
                    bad(key, e);
                    self.mirror.assignment = None;
                }
            },
            None => {}
        }
    }

    fn apply_delete(&mut self, kv: &KeyValue) {
        let Ok(key) = kv.key_str() else { return };
        match self.keys.classify(key) {
            Some(Key::Agent(id)) if self.mirror.members.remove(id).is_some() => {
                info!(agent = id, "site member left");
            }
            Some(Key::Camera(id)) => {
                self.mirror.cameras.remove(id);
            }
            Some(Key::Leader) => self.mirror.leader = None,
            Some(Key::Assignment) => self.mirror.assignment = None,
            Some(Key::Agent(_)) | None => {}
        }
    }

    /// At shutdown: once the supervisor has stopped the site cameras, revokes the lease so
    /// that the member record and `leader` vanish now rather than a TTL later.
    async fn leave(&mut self) {
        self.verdict = Verdict::Stop;
        self.push_wanted();
        let deadline = Instant::now() + self.site.lease_ttl.mul_f64(0.5);
        while !self.report.get().running.is_empty() && Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.report.changed.notified()).await;
        }
        let Some(lease) = self.lease.take() else { return };
        let revoke = async {
            let (mut c, _) = etcd::connect(&self.site, self.endpoint, Duration::from_secs(2)).await?;
            c.lease_revoke(lease).await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(2), revoke).await {
            Ok(Ok(())) => info!("left the site (lease revoked)"),
            Ok(Err(e)) => warn!(error = %format!("{e:#}"), "cannot revoke the lease; it expires on its own"),
            Err(_) => warn!("revoking the lease timed out; it expires on its own"),
        }
    }
}
