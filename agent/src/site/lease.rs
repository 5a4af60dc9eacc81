//! Whether this gateway may go on analysing its site cameras, from what it knows of its
//! etcd lease: pure, so the fencing rule is tested without a cluster or a clock.
//!
//! The lease is granted and renewed by etcd; the gateway only knows when it *sent* each
//! renewal that etcd confirmed. The server renewed it no earlier than that, so the lease
//! cannot expire before `sent + ttl`: stopping at `sent + STOP_FRACTION × ttl` leaves the
//! rest of the TTL for the stop itself, and nobody else is given the cameras before the
//! lease expires. While a reachable member confirms the cluster has no leader, no lease
//! can expire and nothing can move, which is when `on_coordinator_loss = "keep"` holds on.
//! etcd gives every lease a full TTL again when a new leader is elected: a leader seen after
//! a probe (sent at `t`) found none was elected after `t`, so the lease lives until at least
//! `t + ttl`, and the gateway holds on while it renews, until `t + STOP_FRACTION × ttl`;
//! then, still unable to renew, it stops.
//!
//! "No leader" is what the members this gateway reaches say. Members it cannot reach may
//! still form a quorum with a leader (this gateway cut off together with a minority of
//! etcd): then its lease expires there, its cameras are given to others and run twice
//! until it reconnects. That is the price of `keep`; `stop` never pays it.

use std::time::{Duration, Instant};

use crate::config::{CoordinatorLoss, SiteConfig};

/// What the gateway learnt from asking each etcd endpoint for its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A member answered and knows no leader: quorum is lost, nothing can change.
    NoLeader,
    /// A member answered and has a leader: the cluster works without us.
    HasLeader,
    /// No member answered: this gateway may be the one cut off.
    Unreachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The lease is certainly alive: run the assigned cameras.
    Run,
    /// The lease is not confirmed, but nothing can move (quorum lost, policy `keep`).
    Hold,
    /// Stop every site camera now.
    Stop,
}

#[derive(Debug, Clone)]
pub struct LeaseGuard {
    policy: CoordinatorLoss,
    /// When the last renewal etcd confirmed was sent, and the TTL it granted.
    renewed: Option<(Instant, Duration)>,
    /// When the last probe that found no leader was sent.
    no_leader: Option<Instant>,
}

impl LeaseGuard {
    pub fn new(policy: CoordinatorLoss) -> Self {
        Self { policy, renewed: None, no_leader: None }
    }

    /// etcd confirmed a grant or renewal sent at `sent` with `ttl` left (a TTL of 0 means
    /// the lease is gone).
    pub fn renewed(&mut self, sent: Instant, ttl: Duration) {
        self.renewed = (!ttl.is_zero()).then_some((sent, ttl));
        self.no_leader = None;
    }

    /// A probe sent at `sent` found no leader on the members that answered.
    pub fn saw_no_leader(&mut self, sent: Instant) {
        self.no_leader = Some(sent);
    }

    /// The lease is gone (expired or revoked): nothing runs until a new one is granted.
    pub fn lost(&mut self) {
        self.renewed = None;
    }

    /// When the cameras must stop unless a renewal is confirmed first.
    pub fn stop_at(&self) -> Option<Instant> {
        self.renewed.map(|(sent, ttl)| sent + ttl.mul_f64(SiteConfig::STOP_FRACTION))
    }

    /// Whether the site cameras may run at `now`; `probe` is asked only once the stop time
    /// has passed.
    pub fn verdict(&self, now: Instant, probe: impl FnOnce() -> Probe) -> Verdict {
        match self.stop_at() {
            None => Verdict::Stop,
            Some(at) if now < at => Verdict::Run,
            Some(_) => match (self.policy, probe(), self.renewed, self.no_leader) {
                (CoordinatorLoss::Keep, Probe::NoLeader, ..) => Verdict::Hold,
                // Quorum is back: the new leader's full TTL covers one renewal attempt.
                (CoordinatorLoss::Keep, Probe::HasLeader, Some((_, ttl)), Some(seen))
                    if now < seen + ttl.mul_f64(SiteConfig::STOP_FRACTION) =>
                {
                    Verdict::Hold
                }
                _ => Verdict::Stop,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn guard(policy: CoordinatorLoss) -> (LeaseGuard, Instant) {
        let t0 = Instant::now();
        let mut g = LeaseGuard::new(policy);
        g.renewed(t0, TTL);
        (g, t0)
    }

    #[test]
    fn without_a_lease_nothing_runs() {
        let g = LeaseGuard::new(CoordinatorLoss::Keep);
        assert_eq!(g.verdict(Instant::now(), || Probe::NoLeader), Verdict::Stop);
        let (mut g, t0) = guard(CoordinatorLoss::Keep);
        g.renewed(t0, Duration::ZERO);
        assert_eq!(
            g.verdict(t0, || Probe::HasLeader),
            Verdict::Stop,
            "a renewal answered with TTL 0: the lease is gone"
        );
    }

    #[test]
    fn a_gateway_that_cannot_renew_stops_before_its_lease_can_expire() {
        let (g, t0) = guard(CoordinatorLoss::Keep);
        let probe_not_asked = || panic!("no probe while the lease is certainly alive");
        assert_eq!(g.verdict(t0 + Duration::from_secs(5), probe_not_asked), Verdict::Run);
        let stop = g.stop_at().expect("a stop time");
        assert!(stop < t0 + TTL, "stops before the earliest expiry the server can have");
        assert_eq!(g.verdict(stop, || Probe::Unreachable), Verdict::Stop, "cut off: maybe alone, so stop");
        assert_eq!(g.verdict(stop, || Probe::HasLeader), Verdict::Stop, "the cluster works without us");
    }

    #[test]
    fn keep_holds_only_while_a_member_confirms_quorum_is_lost() {
        let (g, t0) = guard(CoordinatorLoss::Keep);
        let late = t0 + Duration::from_secs(30);
        assert_eq!(g.verdict(late, || Probe::NoLeader), Verdict::Hold);
        assert_eq!(g.verdict(late, || Probe::HasLeader), Verdict::Stop, "a leader and no renewal, nothing seen since");
        let (g, t0) = guard(CoordinatorLoss::Stop);
        assert_eq!(g.verdict(t0 + Duration::from_secs(30), || Probe::NoLeader), Verdict::Stop);
    }

    #[test]
    fn when_quorum_returns_a_holding_gateway_has_until_the_new_leaders_ttl_to_renew() {
        let (mut g, t0) = guard(CoordinatorLoss::Keep);
        let seen = t0 + Duration::from_secs(30);
        g.saw_no_leader(seen);
        assert_eq!(g.verdict(seen + Duration::from_secs(1), || Probe::HasLeader), Verdict::Hold, "renewing now");
        let limit = seen + TTL.mul_f64(SiteConfig::STOP_FRACTION);
        assert_eq!(g.verdict(limit, || Probe::HasLeader), Verdict::Stop, "still no renewal: stop inside that TTL");
        g.renewed(limit, TTL);
        g.lost();
        g.saw_no_leader(limit);
        assert_eq!(g.verdict(limit, || Probe::HasLeader), Verdict::Stop, "a lost lease is never held");
    }

    #[test]
    fn each_confirmed_renewal_moves_the_stop_time_from_when_it_was_sent() {
        let (mut g, t0) = guard(CoordinatorLoss::Stop);
        let sent = t0 + Duration::from_secs(4);
        g.renewed(sent, TTL);
        assert_eq!(g.stop_at(), Some(sent + TTL.mul_f64(SiteConfig::STOP_FRACTION)));
        assert_eq!(g.verdict(t0 + Duration::from_secs(9), || Probe::Unreachable), Verdict::Run);
        g.lost();
        assert_eq!(g.verdict(t0 + Duration::from_secs(9), || Probe::HasLeader), Verdict::Stop);
    }
}
