//! This gateway's view of its site, for `/metrics` (`lookout_site_*`) and the console's
//! agent page.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::SiteHandle;

/// Appends the site's metrics (Prometheus text format) for agent `me`.
pub fn render(h: &SiteHandle, me: &str, out: &mut String) {
    let s = &h.state.stats;
    let view = h.state.view();
    let report = h.report.get();
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let assigned = view.assignment.as_ref().map_or(0, |a| a.cameras.values().filter(|x| *x == me).count());
    let unassigned = view.assignment.as_ref().map_or(0, |a| a.unassigned.len());
    let cameras = view.assignment.as_ref().map_or(0, |a| a.cameras.len() + a.unassigned.len());
    let metrics: [(&str, &str, &str, f64); 14] = [
        (
            "lookout_site_member",
            "gauge",
            "1 while this gateway may run site cameras (its lease confirmed, or held while etcd has no leader).",
            f64::from(u8::from(s.member.load(Ordering::Relaxed))),
        ),
        (
            "lookout_site_leader",
            "gauge",
            "1 while this gateway is the site's leader (it writes the assignment).",
            f64::from(u8::from(s.leader.load(Ordering::Relaxed))),
        ),
        (
            "lookout_site_members",
            "gauge",
            "Live members of the site, as this gateway last saw them.",
            view.members.len() as f64,
        ),
        ("lookout_site_cameras", "gauge", "Site cameras in the leader's last table (assigned or not).", cameras as f64),
        ("lookout_site_assigned_cameras", "gauge", "Site cameras the leader assigns to this gateway.", assigned as f64),
        (
            "lookout_site_running_cameras",
            "gauge",
            "Site cameras running on this gateway now.",
            report.running.len() as f64,
        ),
        (
            "lookout_site_refused_cameras",
            "gauge",
            "Site cameras assigned here that this gateway cannot run (see lookout site status).",
            report.refused.len() as f64,
        ),
        (
            "lookout_site_unassigned_cameras",
            "gauge",
            "Site cameras that fit nowhere (no gateway has their model or room for them).",
            unassigned as f64,
        ),
        (
            "lookout_site_moves_total",
            "counter",
            "Cameras this gateway moved between gateways while it led the site.",
            l(&s.moves) as f64,
        ),
        (
            "lookout_site_etcd_errors_total",
            "counter",
            "etcd sessions that ended in an error (each is retried).",
            l(&s.etcd_errors) as f64,
        ),
        ("lookout_site_lease_renewals_total", "counter", "Lease renewals etcd confirmed.", l(&s.renewals) as f64),
        (
            "lookout_site_lease_renewal_seconds",
            "gauge",
            "Round trip of the last confirmed lease renewal.",
            l(&s.renewal_latency_us) as f64 / 1e6,
        ),
        (
            "lookout_site_fenced_total",
            "counter",
            "Times this gateway stopped its site cameras because its lease was not confirmed in time.",
            l(&s.fenced) as f64,
        ),
        (
            "lookout_site_unreadable_values_total",
            "counter",
            "Values under the site's etcd prefix that could not be read (skipped).",
            l(&s.bad_values) as f64,
        ),
    ];
    for (name, kind, help, v) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
}

/// The site as the console's agent page shows it: members, the leader, where each site
/// camera runs, what fits nowhere. No camera settings (their URLs may hold passwords).
pub fn summary(h: &SiteHandle, me: &str) -> Value {
    let view = h.state.view();
    let a = view.assignment.unwrap_or_default();
    let members: Vec<Value> = view
        .members
        .values()
        .map(|m| {
            json!({
                "agent": m.agent,
                "capacity": m.capacity,
                "load": m.load,
                "assigned": a.cameras.values().filter(|x| **x == m.agent).count(),
                "running": m.running.len(),
                "refused": m.refused,
            })
        })
        .collect();
    json!({
        "agent": me,
        "leader": view.leader,
        "fence": view.fence,
        "members": members,
        "assignment": a.cameras,
        "unassigned": a.unassigned,
        "moves": a.moves,
    })
}
