//! The hand-off between cameras and a model's inference threads: one latest-frame slot
//! per camera, taken round-robin in batches.
//!
//! Video is lossy on purpose: a camera's new frame replaces one the inference threads have
//! not taken yet (the replaced frame is counted in `lookout_frames_replaced_total`), so a
//! slow model never builds a backlog and always works on the newest picture. Taking
//! frames round-robin, starting after the camera served last, keeps every camera's share
//! equal when the model cannot keep up.
//!
//! Several workers may take from one queue. A taken batch is a [`Claim`]: until its
//! worker releases it (after handing the results on), no other worker takes those
//! cameras' next frames, so each camera's frames reach the event stage in capture order.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::camera::Frame;

struct State {
    /// Indexed by camera slot number; `None` when the camera has nothing new.
    slots: Vec<Option<Frame>>,
    /// Slots of removed cameras, reused by the next `register`.
    free: Vec<usize>,
    /// Per slot, the claim analysing its last taken frame (0: none).
    in_flight: Vec<u64>,
    /// The id of the next claim (never 0).
    next_claim: u64,
    /// Slot to look at first in the next batch.
    cursor: usize,
    closed: bool,
}

impl State {
    fn takeable(&self, idx: usize) -> bool {
        self.slots[idx].is_some() && self.in_flight.get(idx).is_none_or(|c| *c == 0)
    }
}

/// Latest-frame slots for the cameras of one model.
pub struct FrameQueue {
    state: Mutex<State>,
    ready: Condvar,
}

/// A batch's hold on its cameras: release it with [`FrameQueue::release`] once their
/// results are handed on.
#[derive(Debug)]
pub struct Claim {
    id: u64,
    slots: Vec<usize>,
}

/// What `take_batch` returned.
pub enum Take {
    Batch(Vec<Frame>, Claim),
    /// Nothing arrived within the timeout.
    Idle,
    Closed,
}

impl FrameQueue {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                slots: Vec::new(),
                in_flight: Vec::new(),
                next_claim: 1,
                free: Vec::new(),
                cursor: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update; the slots
        // themselves are always in a valid state, so carry on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a slot for a camera; frames for it are put with this number.
    pub fn register(&self) -> usize {
        let mut s = self.lock();
        if let Some(slot) = s.free.pop() {
            return slot;
        }
        s.slots.push(None);
        s.in_flight.push(0);
        s.slots.len() - 1
    }

    /// Releases a removed camera's slot (after its pipeline stopped), dropping any frame
    /// it left, so a camera added later reuses it.
    pub fn unregister(&self, slot: usize) {
        let mut s = self.lock();
        if let Some(x) = s.slots.get_mut(slot) {
            *x = None;
            // A batch still analysing the removed camera must not hold up the next one.
            s.in_flight[slot] = 0;
            if !s.free.contains(&slot) {
                s.free.push(slot);
            }
        }
    }

    /// Puts a camera's newest frame. Returns the frame it replaced, if any, so the caller
    /// can count the drop.
    pub fn put(&self, slot: usize, frame: Frame) -> Option<Frame> {
        let mut s = self.lock();
        let old = s.slots.get_mut(slot).and_then(|x| x.replace(frame));
        drop(s);
        self.ready.notify_one();
        old
    }

    /// Whether the camera at `slot` has a frame the model has not taken yet.
    pub fn is_pending(&self, slot: usize) -> bool {
        self.lock().slots.get(slot).is_some_and(Option::is_some)
    }

    /// Ends `claim`: its cameras' next frames may be taken again.
    pub fn release(&self, claim: Claim) {
        let mut s = self.lock();
        let mut waiting = false;
        for slot in claim.slots {
            if let Some(c) = s.in_flight.get_mut(slot)
                && *c == claim.id
            {
                *c = 0;
                waiting |= s.slots[slot].is_some();
            }
        }
        drop(s);
        // A worker waits only if a released camera's next frame is already there.
        if waiting {
            self.ready.notify_one();
        }
    }

    /// Wakes the consumers for good; later `take_batch` calls return `Closed` once empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Waits up to `timeout` for at least one frame; then, while fewer than `max` are
    /// ready, up to `max_wait` more for others to fill the batch; then takes up to `max`
    /// frames, one per camera, round-robin. Frames of cameras claimed by another batch
    /// stay until that batch is released.
    pub fn take_batch(&self, max: usize, timeout: Duration, max_wait: Duration) -> Take {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if (0..s.slots.len()).any(|i| s.takeable(i)) {
                break;
            }
            if s.closed && s.slots.iter().all(Option::is_none) {
                return Take::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Take::Idle;
            }
            s = self.ready.wait_timeout(s, deadline - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        let fill_by = Instant::now() + max_wait;
        loop {
            let ready = (0..s.slots.len()).filter(|&i| s.takeable(i)).count();
            let free = s.in_flight.iter().filter(|c| **c == 0).count();
            let now = Instant::now();
            if ready >= max.min(free) || s.closed || now >= fill_by {
                break;
            }
            s = self.ready.wait_timeout(s, fill_by - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        let n = s.slots.len();
        let start = s.cursor;
        let id = s.next_claim;
        s.next_claim += 1;
        let mut batch = Vec::with_capacity(max.min(n));
        let mut slots = Vec::with_capacity(max.min(n));
        let mut last = start;
        for i in 0..n {
            if batch.len() >= max {
                break;
            }
            let idx = (start + i) % n;
            if !s.takeable(idx) {
                continue;
            }
            if let Some(f) = s.slots[idx].take() {
                s.in_flight[idx] = id;
                batch.push(f);
                slots.push(idx);
                last = idx;
            }
        }
        s.cursor = (last + 1) % n;
        Take::Batch(batch, Claim { id, slots })
    }
}

impl Default for FrameQueue {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::test_frame;

    fn cams(b: &[Frame]) -> Vec<usize> {
        b.iter().map(|f| f.slot).collect()
    }

    /// Takes a batch at once and releases it, as a worker does after its run.
    fn take(q: &FrameQueue, max: usize) -> Vec<Frame> {
        let Take::Batch(b, claim) = q.take_batch(max, Duration::ZERO, Duration::ZERO) else {
            panic!("expected a batch")
        };
        q.release(claim);
        b
    }

    #[test]
    fn newer_frame_replaces_older_and_reports_it() {
        let q = FrameQueue::new();
        let a = q.register();
        assert!(q.put(a, test_frame(a, 1)).is_none());
        let replaced = q.put(a, test_frame(a, 2)).expect("first frame replaced");
        assert_eq!(replaced.pts_ns, 1);
        let b = take(&q, 8);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].pts_ns, 2);
    }

    #[test]
    fn batches_rotate_across_cameras_so_none_starves() {
        let q = FrameQueue::new();
        let slots: Vec<usize> = (0..5).map(|_| q.register()).collect();
        let mut served = vec![0; 5];
        for round in 0..10 {
            for &s in &slots {
                q.put(s, test_frame(s, round));
            }
            // Capacity for only two frames per round: the rest get replaced.
            for c in cams(&take(&q, 2)) {
                served[c] += 1;
            }
        }
        // 20 frames served over 5 cameras: each got exactly 4.
        assert_eq!(served, vec![4; 5]);
    }

    #[test]
    fn a_partial_batch_waits_up_to_max_wait_for_other_cameras() {
        let q = std::sync::Arc::new(FrameQueue::new());
        let (a, b) = (q.register(), q.register());
        q.put(a, test_frame(a, 1));
        let q2 = q.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            q2.put(b, test_frame(b, 1));
        });
        // Generous max_wait: b's frame arrives within it and joins the batch.
        let Take::Batch(batch, claim) = q.take_batch(2, Duration::ZERO, Duration::from_secs(10)) else {
            panic!("batch")
        };
        late.join().expect("thread");
        assert_eq!(cams(&batch), vec![a, b]);
        q.release(claim);
        // No max_wait: whatever is ready goes at once.
        q.put(a, test_frame(a, 2));
        assert_eq!(cams(&take(&q, 2)), vec![a]);
    }

    #[test]
    fn a_removed_cameras_slot_is_emptied_and_reused() {
        let q = FrameQueue::new();
        let (a, b) = (q.register(), q.register());
        q.put(a, test_frame(a, 1));
        q.unregister(a);
        assert!(!q.is_pending(a));
        assert_eq!(q.register(), a);
        assert_ne!(a, b);
    }

    #[test]
    fn take_times_out_when_idle_and_reports_close() {
        let q = FrameQueue::new();
        q.register();
        assert!(matches!(q.take_batch(4, Duration::from_millis(5), Duration::ZERO), Take::Idle));
        q.close();
        assert!(matches!(q.take_batch(4, Duration::from_millis(5), Duration::ZERO), Take::Closed));
    }

    #[test]
    fn a_cameras_next_frame_waits_until_its_claimed_batch_is_released() {
        let q = FrameQueue::new();
        let (a, b) = (q.register(), q.register());
        q.put(a, test_frame(a, 1));
        let Take::Batch(first, claim) = q.take_batch(4, Duration::ZERO, Duration::ZERO) else { panic!("batch") };
        assert_eq!(cams(&first), vec![a]);
        // While the first batch runs, a's next frame is not for another worker; b's is.
        q.put(a, test_frame(a, 2));
        q.put(b, test_frame(b, 1));
        assert_eq!(cams(&take(&q, 4)), vec![b]);
        assert!(matches!(q.take_batch(4, Duration::from_millis(5), Duration::ZERO), Take::Idle));
        assert!(q.is_pending(a));
        q.release(claim);
        let next = take(&q, 4);
        assert_eq!((cams(&next), next[0].pts_ns), (vec![a], 2));
    }

    #[test]
    fn a_worker_waiting_on_a_claimed_camera_wakes_when_it_is_released() {
        let q = std::sync::Arc::new(FrameQueue::new());
        let a = q.register();
        q.put(a, test_frame(a, 1));
        let Take::Batch(_, claim) = q.take_batch(1, Duration::ZERO, Duration::ZERO) else { panic!("batch") };
        q.put(a, test_frame(a, 2));
        let q2 = q.clone();
        let other = std::thread::spawn(move || match q2.take_batch(1, Duration::from_secs(30), Duration::ZERO) {
            Take::Batch(b, _) => cams(&b),
            _ => Vec::new(),
        });
        std::thread::sleep(Duration::from_millis(20));
        q.release(claim);
        assert_eq!(other.join().expect("thread"), vec![a]);
    }

    #[test]
    fn a_stale_claim_of_a_removed_camera_never_frees_the_slots_next_camera() {
        let q = FrameQueue::new();
        let a = q.register();
        q.put(a, test_frame(a, 1));
        let Take::Batch(_, stale) = q.take_batch(1, Duration::ZERO, Duration::ZERO) else { panic!("batch") };
        // The camera goes while its frame is analysed; a new one gets the slot at once.
        q.unregister(a);
        let c = q.register();
        assert_eq!(c, a);
        q.put(c, test_frame(c, 1));
        let Take::Batch(_, current) = q.take_batch(1, Duration::ZERO, Duration::ZERO) else { panic!("batch") };
        q.put(c, test_frame(c, 2));
        // The old batch finishing must not let c's next frame overtake c's running one.
        q.release(stale);
        assert!(matches!(q.take_batch(1, Duration::ZERO, Duration::ZERO), Take::Idle));
        q.release(current);
        assert_eq!(cams(&take(&q, 1)), vec![c]);
    }
}
