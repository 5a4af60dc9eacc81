//! Which frames of a camera are decoded and analysed: pure logic, driven by the
//! pipeline's pad probes (see `pipeline.rs`).
//!
//! Two decisions, made as early as possible because every frame that reaches the decoder
//! costs CPU:
//! - **Keyframes only.** When the camera's keyframe rate is at least the analysis rate
//!   (`decode = "auto"`), delta frames are dropped before the decoder: decoding one
//!   keyframe per analysed frame costs about a quarter of full decoding (measured, see
//!   docs/BENCHMARKS.md). The keyframe interval is measured from the stream itself; the
//!   mode only changes on a keyframe, so the decoder never sees a delta frame whose
//!   reference it skipped.
//! - **Sampling.** At most one frame per analysis interval passes. Intervals are anchored
//!   at the first frame and a frame may be early by a small tolerance (a quarter interval,
//!   at most 50 ms), so frames that arrive at exactly the analysis rate with timestamp
//!   jitter are all kept, and faster streams are thinned to evenly spaced frames.

use std::time::Duration;

use crate::config::DecodePolicy;

/// Picks at most one frame per `interval`.
#[derive(Debug, Clone)]
pub struct Sampler {
    interval_ns: u64,
    origin_ns: Option<i128>,
    last_index: Option<i128>,
}

impl Sampler {
    pub fn new(fps: f64) -> Self {
        Self { interval_ns: (1e9 / fps.max(1e-3)) as u64, origin_ns: None, last_index: None }
    }

    /// Whether a frame with this timestamp is due; a `true` answer consumes the interval.
    pub fn accept(&mut self, pts_ns: u64) -> bool {
        let (pts, interval) = (pts_ns as i128, self.interval_ns.max(1) as i128);
        let tolerance = (interval / 4).min(50_000_000);
        let origin = *self.origin_ns.get_or_insert(pts);
        if pts < origin {
            // Timestamps went backwards (stream restart): start over.
            self.reset();
            return self.accept(pts_ns);
        }
        let index = (pts - origin + tolerance) / interval;
        match self.last_index {
            Some(last) if index <= last => false,
            _ => {
                self.last_index = Some(index);
                true
            }
        }
    }

    pub fn reset(&mut self) {
        self.origin_ns = None;
        self.last_index = None;
    }
}

/// What to do with one encoded frame before the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateVerdict {
    /// Decode it.
    Pass,
    /// Do not decode it.
    Drop,
}

/// Keyframe gate plus sampler for one camera.
#[derive(Debug, Clone)]
pub struct Gate {
    policy: DecodePolicy,
    pub sampler: Sampler,
    last_key_ns: Option<u64>,
    key_interval_ns: Option<u64>,
    /// The last few keyframe intervals, newest last.
    recent_ns: Vec<u64>,
    keyframes_only: bool,
}

/// Keyframe intervals remembered: the shortest of them is the camera's GOP. A loaded
/// gateway stretches arrival-based timestamps, and taking one stretched interval for
/// a longer GOP would switch to full decoding, four times the cost, just when the
/// machine can least afford it.
const RECENT_INTERVALS: usize = 4;

impl Gate {
    pub fn new(policy: DecodePolicy, fps: f64) -> Self {
        Self {
            policy,
            sampler: Sampler::new(fps),
            last_key_ns: None,
            key_interval_ns: None,
            recent_ns: Vec::with_capacity(RECENT_INTERVALS),
            // Until the keyframe interval is known, assume it is short: cheap, and corrected
            // at the second keyframe.
            keyframes_only: policy != DecodePolicy::All,
        }
    }

    /// Whether only keyframes reach the decoder (then the gate also samples).
    pub fn keyframes_only(&self) -> bool {
        self.keyframes_only
    }

    /// The measured keyframe interval, once two keyframes were seen.
    pub fn key_interval(&self) -> Option<Duration> {
        self.key_interval_ns.map(Duration::from_nanos)
    }

    /// Decides for an encoded frame at the decoder's input.
    pub fn on_encoded(&mut self, pts_ns: u64, is_key: bool) -> GateVerdict {
        if is_key {
            match self.last_key_ns {
                Some(last) if pts_ns > last => {
                    if self.recent_ns.len() == RECENT_INTERVALS {
                        self.recent_ns.remove(0);
                    }
                    self.recent_ns.push(pts_ns - last);
                    self.key_interval_ns = self.recent_ns.iter().min().copied();
                }
                // Timestamps went back (stream restart): measure again.
                Some(_) => self.recent_ns.clear(),
                None => {}
            }
            self.last_key_ns = Some(pts_ns);
            self.keyframes_only = match self.policy {
                DecodePolicy::All => false,
                DecodePolicy::Keyframes => true,
                // 10 % slack so a GOP that matches the analysis interval, give or take
                // timestamp jitter, still counts as fast enough.
                DecodePolicy::Auto => {
                    self.key_interval_ns.is_none_or(|k| k as f64 <= self.sampler.interval_ns as f64 * 1.1)
                }
            };
        }
        if !self.keyframes_only {
            return GateVerdict::Pass;
        }
        if is_key && self.sampler.accept(pts_ns) { GateVerdict::Pass } else { GateVerdict::Drop }
    }

    /// Decides for a decoded frame at the decoder's output: in keyframes-only mode the
    /// gate has sampled already.
    pub fn on_decoded(&mut self, pts_ns: u64) -> bool {
        self.keyframes_only || self.sampler.accept(pts_ns)
    }
}

/// Timestamps for frames that arrive without a jitter buffer (the shared RTSP client):
/// arrival times smoothed by the stream's own clock (its RTP timestamps).
///
/// Raw arrival times jitter by tens of milliseconds, and the [`Sampler`]'s grid is
/// anchored at the first frame with a 50 ms tolerance: once the first keyframe arrived a
/// little late, every later keyframe sat on a grid line and about one in four was dropped
/// as "not due". Here a frame's timestamp is its media time plus the smallest delay seen
/// so far (the least-delayed frame's `arrival − media`), so keyframes are exactly their
/// media interval apart and a late packet moves nothing. A frame that would lag its
/// arrival by more than [`Timeline::MAX_LAG_NS`] (a camera clock slower than ours, or
/// its timestamps jumped) sets a new anchor. Timestamps never go back: at worst 1 ns past
/// the previous one.
#[derive(Debug, Default)]
pub struct Timeline {
    /// The least `arrival − media` seen, in ns.
    anchor: Option<i128>,
    last: Option<u64>,
}

impl Timeline {
    pub const MAX_LAG_NS: i128 = 250_000_000;

    /// The timestamp of a frame that arrived at `arrival_ns` (pipeline running time) with
    /// media time `media_ns` (its RTP timestamp in ns since the stream's start).
    pub fn pts(&mut self, arrival_ns: u64, media_ns: i64) -> u64 {
        let offset = i128::from(arrival_ns) - i128::from(media_ns);
        let anchor = match self.anchor {
            Some(a) if offset >= a && offset - a <= Self::MAX_LAG_NS => a,
            _ => offset,
        };
        self.anchor = Some(anchor);
        let mapped = (i128::from(media_ns) + anchor).clamp(0, i128::from(u64::MAX)) as u64;
        let pts = match self.last {
            Some(last) if mapped <= last => last.saturating_add(1),
            _ => mapped,
        };
        self.last = Some(pts);
        pts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn arrival_jitter_drops_no_keyframe_once_timestamps_follow_the_stream_clock() {
        // 1 s GOP, analysed at 1 fps; the first keyframe arrives 50 ms late (the grid's
        // tolerance), later ones with ±20 ms of jitter. Raw arrival times lose about a
        // quarter of them; the timeline keeps every one after the first few.
        let jitter = |k: u64| -> i64 { [15, -18, 7, -3, 20, -12, 0, -20, 9, 4][(k % 10) as usize] };
        let arrival = |k: u64| -> u64 {
            let late = if k == 0 { 50 } else { 0 };
            ((1000 * k as i64 + late + 100 + jitter(k)) * MS as i64) as u64
        };
        let passed = |pts: &dyn Fn(u64) -> u64| {
            let mut g = Gate::new(DecodePolicy::Auto, 1.0);
            (0..60).filter(|&k| g.on_encoded(pts(k), true) == GateVerdict::Pass).count()
        };
        assert!(passed(&arrival) < 50, "raw arrival times drop keyframes: {}", passed(&arrival));
        let tl = std::cell::RefCell::new(Timeline::default());
        let smoothed = |k: u64| tl.borrow_mut().pts(arrival(k), (1000 * k * MS) as i64);
        assert!(passed(&smoothed) >= 59, "{} of 60", passed(&smoothed));
    }

    #[test]
    fn the_timeline_follows_the_least_delayed_frame_re_anchors_after_a_long_lag_and_never_goes_back() {
        let mut t = Timeline::default();
        assert_eq!(t.pts(1000 * MS, 0), 1000 * MS);
        // 30 ms late: the timeline keeps to the stream clock.
        assert_eq!(t.pts(1130 * MS, 100 * MS as i64), 1100 * MS);
        // 10 ms earlier than the first frame's delay: the new least delay takes over.
        assert_eq!(t.pts(1190 * MS, 200 * MS as i64), 1190 * MS);
        assert_eq!(t.pts(1295 * MS, 300 * MS as i64), 1290 * MS);
        // Lagging by more than MAX_LAG (a slow camera clock, a jump): re-anchored.
        assert_eq!(t.pts(1700 * MS, 400 * MS as i64), 1700 * MS);
        assert_eq!(t.pts(1800 * MS, 500 * MS as i64), 1800 * MS);
        // Media time going back a little (B-frames): never before the last.
        assert_eq!(t.pts(1805 * MS, 450 * MS as i64), 1800 * MS + 1);
        // Far back (the camera restarted its clock): lags too much, re-anchored.
        assert_eq!(t.pts(1810 * MS, 0), 1810 * MS);
        // Nonsense from the network never panics.
        let mut t = Timeline::default();
        for (a, m) in [(0, i64::MAX), (u64::MAX, i64::MIN), (0, i64::MIN), (u64::MAX, i64::MAX)] {
            t.pts(a, m);
        }
    }

    #[test]
    fn one_stretched_keyframe_interval_does_not_switch_to_full_decoding() {
        // 1 s GOP at 10 fps, analysed at 1 fps; one keyframe arrives 600 ms late (a
        // loaded machine stretches arrival-based timestamps).
        let mut g = Gate::new(DecodePolicy::Auto, 1.0);
        let mut t = 0u64;
        for gop in 0..6 {
            let late = if gop == 3 { 600 * MS } else { 0 };
            t += late;
            g.on_encoded(t, true);
            assert!(g.keyframes_only(), "GOP {gop}: {:?}", g.key_interval());
            t += 1000 * MS - late;
        }
        // A GOP that really is longer (3 s) is seen once the short ones age out.
        let mut g = Gate::new(DecodePolicy::Auto, 1.0);
        for k in 0..8u64 {
            g.on_encoded(k * 3000 * MS, true);
        }
        assert!(!g.keyframes_only(), "{:?}", g.key_interval());
    }

    #[test]
    fn sampler_passes_one_frame_per_interval_despite_jitter() {
        // 10 fps input with ±3 ms jitter, analysed at 2 fps: exactly 2 frames a second.
        let mut s = Sampler::new(2.0);
        let jitter = [0i64, 3, -3, 2, -2, 1, -1, 3, -3, 0];
        let accepted = (0..100u64)
            .filter(|&i| s.accept(((i * 100 + 1000) as i64 * MS as i64 + jitter[(i % 10) as usize] * MS as i64) as u64))
            .count();
        assert_eq!(accepted, 20);
    }

    #[test]
    fn sampler_at_the_input_rate_keeps_every_frame() {
        let mut s = Sampler::new(1.0);
        // Keyframes every 1 s with jitter right at the boundary case that a naive
        // floor(pts/interval) sampler gets wrong (0.999 s and 2.001 s).
        let pts = [0, 999 * MS, 2001 * MS, 3000 * MS, 3998 * MS];
        assert!(pts.iter().all(|&p| s.accept(p)));
    }

    #[test]
    fn sampler_restarts_when_time_goes_backwards() {
        let mut s = Sampler::new(1.0);
        assert!(s.accept(50_000 * MS));
        assert!(s.accept(10 * MS));
    }

    fn run(gate: &mut Gate, gop: u64, frames: u64) -> (u64, u64) {
        // 10 fps stream with a keyframe every `gop` frames; returns (decoded, analysed).
        let (mut decoded, mut analysed) = (0, 0);
        for i in 0..frames {
            let pts = i * 100 * MS;
            if gate.on_encoded(pts, i % gop == 0) == GateVerdict::Pass {
                decoded += 1;
                if gate.on_decoded(pts) {
                    analysed += 1;
                }
            }
        }
        (decoded, analysed)
    }

    #[test]
    fn auto_decodes_only_keyframes_when_they_come_often_enough() {
        // 1 s GOP, analysed at 1 fps: 10 s of video decodes 10 frames, not 100.
        let mut g = Gate::new(DecodePolicy::Auto, 1.0);
        assert_eq!(run(&mut g, 10, 100), (10, 10));
        assert!(g.keyframes_only());
        assert_eq!(g.key_interval(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn auto_decodes_everything_when_keyframes_are_too_rare() {
        // 2 s GOP but 2 fps wanted: after the second keyframe everything is decoded and
        // sampled at 2 fps.
        let mut g = Gate::new(DecodePolicy::Auto, 2.0);
        let (decoded, analysed) = run(&mut g, 20, 100);
        assert!(!g.keyframes_only());
        // First GOP: the keyframe alone; from 2 s on: all 80 frames.
        assert_eq!(decoded, 81);
        assert_eq!(analysed, 17);
    }

    #[test]
    fn keyframes_policy_never_decodes_delta_frames() {
        let mut g = Gate::new(DecodePolicy::Keyframes, 5.0);
        assert_eq!(run(&mut g, 20, 100), (5, 5));
    }

    #[test]
    fn all_policy_decodes_every_frame() {
        let mut g = Gate::new(DecodePolicy::All, 1.0);
        assert_eq!(run(&mut g, 10, 100), (100, 10));
    }
}
