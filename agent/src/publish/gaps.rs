//! Which `seq` ranges still need a `delivery.gap` announcement.
//!
//! A gap message is an outbox record like any other, so when the outbox is full it can
//! be dropped (or refused) itself, and what it announced would be lost with it. The
//! announcer therefore remembers what each of its gap messages announced until that
//! message is known delivered; when one is dropped instead, whatever no other gap
//! message still in the outbox covers is announced again. The consumer sees every
//! missing `seq` covered by some gap message it received.
//!
//! A new announcement absorbs the ranges of gap messages still in the outbox that it
//! touches, so ranges overlap rather than fragment: announced one by one, the pieces of
//! a long outage (each second's drops, a too-large message between two runs of drops)
//! would need a message each, and once those messages outnumber what the full outbox
//! holds they only push each other out. Merged, the outstanding ranges are no more than
//! the runs of dropped seqs separated by delivered ones. The union of the ranges
//! received is exactly the set of dropped seqs; a seq can be in more than one.
use std::collections::BTreeMap;

/// A run of dropped seqs, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: u64,
    pub last: u64,
    pub reason: &'static str,
}

impl Range {
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

#[derive(Debug, Default)]
pub struct GapAnnouncer {
    /// Dropped ranges not yet in any gap message, merged, ordered.
    unannounced: Vec<Range>,
    /// seq of a gap message → the ranges it announced; until it is delivered.
    in_flight: BTreeMap<u64, Vec<Range>>,
}

impl GapAnnouncer {
    /// Records ranges the outbox dropped. Gap messages among them lost their
    /// announcements: what no other gap message still covers is queued again.
    pub fn dropped(&mut self, first: u64, last: u64, reason: &'static str) {
        let lost: Vec<u64> = self.in_flight.range(first..=last).map(|(s, _)| *s).collect();
        let mut orphaned = Vec::new();
        for seq in lost {
            if let Some(ranges) = self.in_flight.remove(&seq) {
                orphaned.extend(ranges);
            }
        }
        for r in orphaned {
            for part in self.uncovered(r) {
                self.add(part);
            }
        }
        self.add(Range { first, last, reason });
    }

    /// The parts of `r` that no gap message still in flight announces.
    fn uncovered(&self, r: Range) -> Vec<Range> {
        let mut covered: Vec<(u64, u64)> = self
            .in_flight
            .values()
            .flatten()
            .filter(|c| c.first <= r.last && c.last >= r.first)
            .map(|c| (c.first, c.last))
            .collect();
        covered.sort_unstable();
        let mut parts = Vec::new();
        let mut next = r.first;
        for (f, l) in covered {
            if f > next {
                parts.push(Range { first: next, last: f - 1, reason: r.reason });
            }
            next = next.max(l.saturating_add(1));
            if next > r.last {
                return parts;
            }
        }
        parts.push(Range { first: next, last: r.last, reason: r.reason });
        parts
    }

    /// Queues `r` for announcement (again).
    pub fn add(&mut self, r: Range) {
        self.unannounced.push(r);
        self.unannounced = merge(std::mem::take(&mut self.unannounced));
    }

    /// The ranges to announce now (one message each), each widened by the in-flight
    /// ranges it touches; `sent` must then be told the seq each message got.
    pub fn take(&mut self) -> Vec<Range> {
        if self.unannounced.is_empty() {
            return Vec::new();
        }
        // Only in-flight ranges that touch a queued one join: the merge runs over both,
        // and a merged run that holds no queued range is already announced.
        let queued = std::mem::take(&mut self.unannounced);
        let mut all: Vec<(Range, bool)> = queued.iter().map(|r| (*r, true)).collect();
        all.extend(self.in_flight.values().flatten().map(|r| (*r, false)));
        all.sort_by_key(|(r, _)| r.first);
        let mut runs: Vec<(Range, bool)> = Vec::new();
        for (r, is_new) in all {
            match runs.last_mut() {
                Some((m, new)) if r.first <= m.last.saturating_add(1) => {
                    m.last = m.last.max(r.last);
                    if is_new {
                        // A mixed range is named by its most recent cause.
                        m.reason = r.reason;
                    }
                    *new |= is_new;
                }
                _ => runs.push((r, is_new)),
            }
        }
        runs.into_iter().filter(|(_, new)| *new).map(|(r, _)| r).collect()
    }

    /// Remembers that gap message `seq` announced `range`.
    pub fn sent(&mut self, seq: u64, range: Range) {
        self.in_flight.entry(seq).or_default().push(range);
    }

    /// Forgets gap messages the outbox no longer holds without having dropped them:
    /// everything below `first_pending` that was not reported dropped was delivered.
    pub fn delivered_below(&mut self, first_pending: u64) {
        self.in_flight = self.in_flight.split_off(&first_pending);
    }

    pub fn is_idle(&self) -> bool {
        self.unannounced.is_empty()
    }
}

/// Sorts and merges touching or overlapping ranges; a mixed range is named by the cause
/// of the range that joined it last.
fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_by_key(|r| r.first);
    let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(m) if r.first <= m.last.saturating_add(1) => {
                m.last = m.last.max(r.last);
                m.reason = r.reason;
            }
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_drops_merge_into_one_range() {
        let mut g = GapAnnouncer::default();
        g.dropped(1, 1, "full");
        g.dropped(2, 5, "full");
        g.dropped(9, 9, "full");
        let t = g.take();
        assert_eq!(t.iter().map(|r| (r.first, r.last)).collect::<Vec<_>>(), vec![(1, 5), (9, 9)]);
        assert!(g.is_idle());
    }

    #[test]
    fn a_dropped_gap_message_is_announced_again_with_the_drop_that_took_it() {
        let mut g = GapAnnouncer::default();
        g.dropped(1, 10, "full");
        let r = g.take()[0];
        g.sent(11, r); // the gap message got seq 11
        // Later the outbox drops 11..=20, the gap message included.
        g.dropped(11, 20, "full");
        let t = g.take();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].first, t[0].last, t[0].count()), (1, 20, 20));
    }

    #[test]
    fn delivered_gap_messages_are_forgotten() {
        let mut g = GapAnnouncer::default();
        g.dropped(1, 3, "full");
        let r = g.take()[0];
        g.sent(4, r);
        g.delivered_below(5);
        // Seq 4 was delivered: dropping a later range does not repeat 1..=3.
        g.dropped(5, 6, "expired");
        assert_eq!(g.take().iter().map(|r| (r.first, r.last)).collect::<Vec<_>>(), vec![(5, 6)]);
    }

    #[test]
    fn a_new_announcement_absorbs_the_in_flight_ranges_it_touches() {
        let mut g = GapAnnouncer::default();
        g.dropped(1, 5, "full");
        let r = g.take()[0];
        g.sent(6, r);
        g.dropped(7, 7, "too_large");
        let r = g.take()[0];
        assert_eq!((r.first, r.last), (7, 7), "6 is a gap message still in the outbox");
        g.sent(8, r);
        // The first gap message is dropped: 1..=6 is one run with 7 now.
        g.dropped(6, 6, "full");
        let t = g.take();
        assert_eq!(t.iter().map(|r| (r.first, r.last)).collect::<Vec<_>>(), vec![(1, 7)]);
        g.sent(9, t[0]);
        // Dropping message 8 loses nothing: message 9 covers 7 too.
        g.dropped(8, 8, "full");
        assert_eq!(g.take().iter().map(|r| (r.first, r.last)).collect::<Vec<_>>(), vec![(1, 8)]);
    }

    #[test]
    fn a_dropped_gap_message_requeues_only_what_no_other_covers() {
        let mut g = GapAnnouncer::default();
        g.sent(10, Range { first: 1, last: 4, reason: "full" });
        g.sent(11, Range { first: 3, last: 8, reason: "full" });
        g.dropped(10, 10, "full");
        let t = g.take();
        // 1..=2 lost its only notice; 10 is new; 3..=8 stays with message 11, and the
        // run 1..=8 is announced whole because it touches it.
        assert_eq!(t.iter().map(|r| (r.first, r.last)).collect::<Vec<_>>(), vec![(1, 8), (10, 10)]);
    }
}
