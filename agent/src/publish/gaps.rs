//! Which `seq` ranges still need a `delivery.gap` announcement.
//!
//! A gap message is an outbox record like any other, so when the outbox is full it can
//! be dropped (or refused) itself, and what it announced would be lost with it. The
//! announcer therefore remembers what each of its gap messages announced until that
//! message is known delivered; when one is dropped instead, its ranges are announced
//! again, merged with the drop that took it. The consumer sees every missing `seq`
//! covered by some gap message it received, and the counts add up to the outbox's drop
//! counter.

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
    /// announcements: those are queued again.
    pub fn dropped(&mut self, first: u64, last: u64, reason: &'static str) {
        let lost: Vec<u64> = self.in_flight.range(first..=last).map(|(s, _)| *s).collect();
        for seq in lost {
            if let Some(ranges) = self.in_flight.remove(&seq) {
                for r in ranges {
                    self.add(r);
                }
            }
        }
        self.add(Range { first, last, reason });
    }

    /// Queues `r` for announcement (again).
    pub fn add(&mut self, r: Range) {
        self.unannounced.push(r);
        self.unannounced.sort_by_key(|r| r.first);
        let mut merged: Vec<Range> = Vec::with_capacity(self.unannounced.len());
        for r in self.unannounced.drain(..) {
            match merged.last_mut() {
                Some(m) if r.first <= m.last + 1 => {
                    m.last = m.last.max(r.last);
                    // A mixed range is named by its most recent cause.
                    m.reason = r.reason;
                }
                _ => merged.push(r),
            }
        }
        self.unannounced = merged;
    }

    /// The ranges to announce now (one message each); `sent` must then be told the seq
    /// each message got.
    pub fn take(&mut self) -> Vec<Range> {
        std::mem::take(&mut self.unannounced)
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
}
