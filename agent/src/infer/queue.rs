//! The hand-off between cameras and a model's inference thread: one latest-frame slot
//! per camera, taken round-robin in batches.
//!
//! Video is lossy on purpose: a camera's new frame replaces one the inference thread has
//! not taken yet (the replaced frame is counted in `lookout_frames_replaced_total`), so a
//! slow model never builds a backlog and always works on the newest picture. Taking
//! frames round-robin, starting after the camera served last, keeps every camera's share
//! equal when the model cannot keep up.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::camera::Frame;

struct State {
    /// Indexed by camera slot number; `None` when the camera has nothing new.
    slots: Vec<Option<Frame>>,
    /// Slots of removed cameras, reused by the next `register`.
    free: Vec<usize>,
    /// Slot to look at first in the next batch.
    cursor: usize,
    closed: bool,
}

/// Latest-frame slots for the cameras of one model.
pub struct FrameQueue {
    state: Mutex<State>,
    ready: Condvar,
}

/// What `take_batch` returned.
pub enum Take {
    Batch(Vec<Frame>),
    /// Nothing arrived within the timeout.
    Idle,
    Closed,
}

impl FrameQueue {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State { slots: Vec::new(), free: Vec::new(), cursor: 0, closed: false }),
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
        s.slots.len() - 1
    }

    /// Releases a removed camera's slot (after its pipeline stopped), dropping any frame
    /// it left, so a camera added later reuses it.
    pub fn unregister(&self, slot: usize) {
        let mut s = self.lock();
        if let Some(x) = s.slots.get_mut(slot) {
            *x = None;
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

    /// Wakes the consumer for good; later `take_batch` calls return `Closed` once empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Waits up to `timeout` for at least one frame; then, while fewer than `max` are
    /// ready, up to `max_wait` more for others to fill the batch; then takes up to `max`
    /// frames, one per camera, round-robin.
    pub fn take_batch(&self, max: usize, timeout: Duration, max_wait: Duration) -> Take {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if s.slots.iter().any(Option::is_some) {
                break;
            }
            if s.closed {
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
            let ready = s.slots.iter().filter(|x| x.is_some()).count();
            let now = Instant::now();
            if ready >= max.min(s.slots.len()) || s.closed || now >= fill_by {
                break;
            }
            s = self.ready.wait_timeout(s, fill_by - now).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        let n = s.slots.len();
        let start = s.cursor;
        let mut batch = Vec::with_capacity(max.min(n));
        let mut last = start;
        for i in 0..n {
            if batch.len() >= max {
                break;
            }
            let idx = (start + i) % n;
            if let Some(f) = s.slots[idx].take() {
                batch.push(f);
                last = idx;
            }
        }
        s.cursor = (last + 1) % n;
        Take::Batch(batch)
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

    #[test]
    fn newer_frame_replaces_older_and_reports_it() {
        let q = FrameQueue::new();
        let a = q.register();
        assert!(q.put(a, test_frame(a, 1)).is_none());
        let replaced = q.put(a, test_frame(a, 2)).expect("first frame replaced");
        assert_eq!(replaced.pts_ns, 1);
        let Take::Batch(b) = q.take_batch(8, Duration::ZERO, Duration::ZERO) else { panic!("expected a batch") };
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
            let Take::Batch(b) = q.take_batch(2, Duration::ZERO, Duration::ZERO) else { panic!("expected a batch") };
            for c in cams(&b) {
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
        let Take::Batch(batch) = q.take_batch(2, Duration::ZERO, Duration::from_secs(10)) else { panic!("batch") };
        late.join().expect("thread");
        assert_eq!(cams(&batch), vec![a, b]);
        // No max_wait: whatever is ready goes at once.
        q.put(a, test_frame(a, 2));
        let Take::Batch(batch) = q.take_batch(2, Duration::ZERO, Duration::ZERO) else { panic!("batch") };
        assert_eq!(cams(&batch), vec![a]);
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
}
