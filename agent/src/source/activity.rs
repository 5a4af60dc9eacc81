//! Decode only what moved: whether anything moved since a camera's last analysed frame,
//! judged from the compressed stream alone, so a static scene's keyframes are not even
//! decoded. Pure logic, driven by the pipeline's probe before the decoder.
//!
//! **The signal.** A delta frame codes what changed since its reference: with motion its
//! size rises, on a static scene it is mostly skipped blocks. A keyframe codes the whole
//! picture: on a static scene its size hardly changes from one to the next, and someone
//! who appeared in it changes it. The *activity* since the last decoded frame is the
//! largest of the delta frames' sizes since then and of the due keyframe's size change
//! against the last decoded keyframe, in bytes (the largest, not the mean: someone who
//! walked through in a fraction of an interval, or left, still counts).
//!
//! **Calibration, per camera.** No byte threshold fits every camera (resolution,
//! bitrate, codec, scene and noise all move it), so each camera learns its own from the
//! frames it does decode: for each, the pixel motion gate ([`super::motion`]) says
//! whether the picture changed since the previous decoded frame, which labels that
//! frame's activity *static* or *moving*. The gate keeps the last [`SAMPLES`] of each.
//! It skips decoding only while the two are clearly apart: the smallest moving activity
//! at least [`SEPARATION`] times the largest static one. The threshold then sits a
//! quarter of the way from the static to the moving level (closer to static: a wrong
//! decode costs a few milliseconds, a wrong skip an event).
//!
//! **Switching itself off.** Where the signal carries no information the two overlap and
//! every due keyframe is decoded, as without this gate: constant-bitrate cameras pad
//! static frames to the same size as moving ones, night noise inflates static frames.
//! Until both kinds were seen ([`MIN_STATIC`], [`MIN_MOVING`]) it only learns. Learning
//! never stops: frames decoded for tracks or at the keepalive are audited, and one whose
//! picture moved although its activity was below the threshold (a *miss*) becomes a
//! moving sample that pulls the threshold down or switches skipping off.
//!
//! Never skipped: while the camera has live tracks, at least every `keepalive`, and
//! whatever is not a due keyframe in keyframes-only mode (the caller's business).

use std::collections::VecDeque;
use std::time::Duration;

/// Labelled activities kept per kind.
pub const SAMPLES: usize = 32;
/// Static and moving samples needed before anything is skipped.
pub const MIN_STATIC: usize = 8;
pub const MIN_MOVING: usize = 3;
/// How far apart moving and static activity must be: min(moving) / max(static).
pub const SEPARATION: f64 = 1.5;

/// Whether a camera skips decoding keyframes of a static scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressedMotionPolicy {
    /// Learn per camera whether frame sizes tell motion; skip only while they do.
    #[default]
    Auto,
    /// Decode every due keyframe (the pixel motion gate still applies after decoding).
    Off,
}

/// Where a camera's gate stands (exported as a metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// Off by config, or no delta frames to judge by (every frame a keyframe).
    Disabled,
    /// Not enough labelled frames of both kinds yet: decoding every due keyframe.
    Learning,
    /// Static and moving activity overlap here: decoding every due keyframe.
    Uninformative,
    /// Skipping keyframes whose activity is below the threshold.
    Active,
}

impl GateState {
    pub fn as_str(self) -> &'static str {
        match self {
            GateState::Disabled => "disabled",
            GateState::Learning => "learning",
            GateState::Uninformative => "uninformative",
            GateState::Active => "active",
        }
    }
}

/// The decision for a due keyframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Decode,
    /// Nothing moved since the last decoded frame, by the compressed stream.
    Skip,
}

/// A keyframe let through to the decoder, until the motion gate labels it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    pts_ns: u64,
    activity: f64,
    /// Below the threshold: it would have been skipped but for a track or the keepalive.
    quiet: bool,
    /// The decoded keyframe size it replaced (restored if it is not decoded after all).
    previous_key_bytes: Option<u64>,
}

/// One camera's gate.
#[derive(Debug)]
pub struct ActivityGate {
    policy: CompressedMotionPolicy,
    keepalive_ns: u64,
    /// Delta frames since the last due keyframe.
    delta_frames: u64,
    /// Largest activity since the last decoded frame.
    since_decoded: f64,
    /// When the motion gate last let a frame through to the model: the keepalive counts
    /// from there, as the motion gate's does (a decoded frame it skipped does not count).
    last_analysed_ns: Option<u64>,
    /// Size of the last decoded keyframe (none for a stream's first: encoders put one-off
    /// headers in it, x264 its settings as a ~600-byte SEI).
    decoded_key_bytes: Option<u64>,
    first_key_seen: bool,
    /// The keyframe let through, waiting for its label.
    pending: Option<Pending>,
    statics: VecDeque<f64>,
    movings: VecDeque<f64>,
    /// Derived from the samples whenever they change.
    threshold: Option<f64>,
    /// Keyframes seen without a delta frame between them (MJPEG, all-intra streams).
    intra_only: u32,
    pub misses: u64,
    /// The state last returned by [`ActivityGate::state_change`].
    reported: GateState,
}

impl ActivityGate {
    pub fn new(policy: CompressedMotionPolicy, keepalive: Duration) -> Self {
        Self {
            policy,
            keepalive_ns: keepalive.as_nanos().min(u64::MAX as u128) as u64,
            delta_frames: 0,
            since_decoded: 0.0,
            last_analysed_ns: None,
            decoded_key_bytes: None,
            first_key_seen: false,
            pending: None,
            statics: VecDeque::with_capacity(SAMPLES),
            movings: VecDeque::with_capacity(SAMPLES),
            threshold: None,
            intra_only: 0,
            misses: 0,
            reported: if policy == CompressedMotionPolicy::Off { GateState::Disabled } else { GateState::Learning },
        }
    }

    pub fn state(&self) -> GateState {
        if self.policy == CompressedMotionPolicy::Off || self.intra_only >= 3 {
            GateState::Disabled
        } else if self.threshold.is_some() {
            GateState::Active
        } else if self.statics.len() < MIN_STATIC || self.movings.len() < MIN_MOVING {
            GateState::Learning
        } else {
            GateState::Uninformative
        }
    }

    /// The state, when it changed since the last call (for the camera's log).
    pub fn state_change(&mut self) -> Option<GateState> {
        let now = self.state();
        (now != self.reported).then(|| {
            self.reported = now;
            now
        })
    }

    /// The activity below which a keyframe is skipped, while active.
    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }

    /// A delta frame of `bytes` arrived (decoded or not).
    pub fn on_delta(&mut self, bytes: usize) {
        self.since_decoded = self.since_decoded.max(bytes as f64);
        self.delta_frames += 1;
    }

    /// A keyframe of `bytes` due for analysis arrived: decode it or not. `tracking`: the
    /// camera has live tracks. A `Decode` answer expects [`ActivityGate::label`] for the
    /// same `pts_ns` once the pixel motion gate has seen the frame (or
    /// [`ActivityGate::not_decoded`]).
    pub fn on_due_keyframe(&mut self, pts_ns: u64, bytes: usize, tracking: bool) -> Decision {
        let bytes = bytes as u64;
        if self.delta_frames == 0 {
            self.intra_only = self.intra_only.saturating_add(1);
        } else {
            self.intra_only = 0;
        }
        self.delta_frames = 0;
        if let Some(key) = self.decoded_key_bytes {
            self.since_decoded = self.since_decoded.max(bytes.abs_diff(key) as f64);
        }
        let quiet = self.threshold.is_some_and(|t| self.since_decoded < t);
        let keepalive_due = match self.last_analysed_ns {
            None => true,
            // Timestamps going backwards (a restarted stream) count as due.
            Some(last) => pts_ns < last || pts_ns - last >= self.keepalive_ns,
        };
        if quiet && !tracking && !keepalive_due && self.state() == GateState::Active {
            return Decision::Skip;
        }
        self.pending = Some(Pending {
            pts_ns,
            activity: self.since_decoded,
            quiet,
            previous_key_bytes: std::mem::replace(&mut self.decoded_key_bytes, self.first_key_seen.then_some(bytes)),
        });
        self.first_key_seen = true;
        self.since_decoded = 0.0;
        Decision::Decode
    }

    /// The keyframe allowed by [`ActivityGate::on_due_keyframe`] was not decoded after
    /// all (its activity then counts towards the next one).
    pub fn not_decoded(&mut self) {
        if let Some(p) = self.pending.take() {
            self.since_decoded = self.since_decoded.max(p.activity);
            self.decoded_key_bytes = p.previous_key_bytes;
        }
    }

    /// What the pixel motion gate made of the decoded keyframe at `pts_ns`: whether the
    /// picture changed since the previous decoded frame (`None`: it could not compare, e.g.
    /// the first frame) and whether it went to the model. Returns true for a miss.
    pub fn label(&mut self, pts_ns: u64, moved: Option<bool>, analysed: bool) -> bool {
        if analysed {
            self.last_analysed_ns = Some(pts_ns);
        }
        let Some(Pending { pts_ns: pts, activity, quiet, .. }) = self.pending.take() else { return false };
        let Some(moved) = moved else { return false };
        if pts != pts_ns || self.state() == GateState::Disabled {
            return false;
        }
        let kind = if moved { &mut self.movings } else { &mut self.statics };
        if kind.len() == SAMPLES {
            kind.pop_front();
        }
        kind.push_back(activity);
        self.threshold = threshold(&self.statics, &self.movings);
        let miss = moved && quiet;
        if miss {
            self.misses += 1;
        }
        miss
    }
}

/// The skip threshold the samples support, if they are clearly apart.
fn threshold(statics: &VecDeque<f64>, movings: &VecDeque<f64>) -> Option<f64> {
    if statics.len() < MIN_STATIC || movings.len() < MIN_MOVING {
        return None;
    }
    // The static level is a high quantile, not the maximum: a walk-through between two
    // keyframes leaves a static-looking picture with motion-level activity, and one such
    // sample must not lift the threshold over real motion. (Lower is the safe side: it
    // decodes more.) The moving level is the minimum: one low sample only makes it
    // decode more.
    let mut sorted: Vec<f64> = statics.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let quiet = sorted[(sorted.len() - 1) * 9 / 10];
    let moving = movings.iter().copied().fold(f64::INFINITY, f64::min);
    (moving >= SEPARATION * quiet && moving > 0.0).then(|| quiet + (moving - quiet) / 4.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    /// A static scene's keyframe size.
    const KEY: usize = 20_000;

    /// A camera at 10 fps with a 1 s GOP, analysed at 1 fps: each second 9 delta frames of
    /// the given sizes, then the due keyframe. Returns the decisions; the pixel gate's
    /// label for a decoded frame is `moved(second)`.
    struct Cam {
        gate: ActivityGate,
        t: u64,
        decoded: u32,
        skipped: u32,
        /// The motion gate's last analysed frame (it analyses motion, tracks, keepalives).
        analysed_at: Option<u64>,
    }

    impl Cam {
        fn new() -> Self {
            Self {
                gate: ActivityGate::new(CompressedMotionPolicy::Auto, Duration::from_secs(10)),
                t: 0,
                decoded: 0,
                skipped: 0,
                analysed_at: None,
            }
        }

        /// A camera that learnt 20 s of a quiet scene (~300 B deltas) and three seconds of
        /// motion of `moving` bytes: skipping is on (t = 23 s, last analysed then).
        fn active(moving: usize) -> Self {
            let mut cam = Self::new();
            for i in 0..20 {
                cam.second(jitter(300, i, 10), false, false);
            }
            for _ in 0..3 {
                cam.second(moving, true, false);
            }
            assert_eq!(cam.gate.state(), GateState::Active);
            cam
        }

        /// One second: deltas of `bytes` each, then the keyframe; `moved` is the truth the
        /// pixel gate sees when it decodes. Returns whether it was decoded.
        fn second(&mut self, bytes: usize, moved: bool, tracking: bool) -> bool {
            for _ in 0..9 {
                self.gate.on_delta(bytes);
            }
            self.t += S;
            match self.gate.on_due_keyframe(self.t, KEY, tracking) {
                Decision::Decode => {
                    let analysed = moved || tracking || self.analysed_at.is_none_or(|a| self.t - a >= 10 * S);
                    if analysed {
                        self.analysed_at = Some(self.t);
                    }
                    self.gate.label(self.t, Some(moved), analysed);
                    self.decoded += 1;
                    true
                }
                Decision::Skip => {
                    self.skipped += 1;
                    false
                }
            }
        }
    }

    /// Deterministic jitter of ±`pct` % around `base`.
    fn jitter(base: usize, i: u64, pct: u64) -> usize {
        let r = (i.wrapping_mul(2_654_435_761) >> 7) % (2 * pct + 1);
        (base as u64 * (100 + r - pct) / 100) as usize
    }

    #[test]
    fn learns_a_quiet_scene_then_skips_its_keyframes_but_never_a_moving_one() {
        let mut cam = Cam::new();
        // 20 s empty scene (~300 B deltas), then a person crossing for 5 s (~3 kB).
        for i in 0..20 {
            assert!(cam.second(jitter(300, i, 20), false, false), "learning decodes everything");
        }
        assert_eq!(cam.gate.state(), GateState::Learning, "no moving sample yet");
        for i in 0..5 {
            assert!(cam.second(jitter(3000, i, 30), true, i > 0));
        }
        assert_eq!(cam.gate.state(), GateState::Active);
        let t = cam.gate.threshold().unwrap();
        assert!(t > 360.0 && t < 2100.0, "{t}");
        // Quiet again for 60 s: only keepalives are decoded (every 10 s).
        let before = cam.decoded;
        for i in 0..60 {
            cam.second(jitter(300, i + 7, 20), false, false);
        }
        assert_eq!(cam.decoded - before, 6, "one keepalive per 10 s");
        assert_eq!(cam.skipped, 54);
        // Someone appears exactly at a keyframe (the deltas before it are quiet): the
        // keyframe's size changed, so it is decoded.
        for _ in 0..9 {
            cam.gate.on_delta(300);
        }
        cam.t += S;
        assert_eq!(cam.gate.on_due_keyframe(cam.t, KEY + 2500, false), Decision::Decode);
        cam.gate.label(cam.t, Some(true), true);
        // Someone enters: decoded at once, every second.
        for i in 0..5 {
            assert!(cam.second(jitter(2500, i, 30), true, false), "second {i} of motion");
        }
        assert_eq!(cam.gate.misses, 0);
    }

    #[test]
    fn brief_motion_within_an_interval_is_decoded() {
        let mut cam = Cam::active(3000);
        assert!(!cam.second(300, false, false), "quiet: skipped");
        // One frame of change (someone leaving), then nothing: the keyframe is decoded.
        for i in 0..9 {
            cam.gate.on_delta(if i == 0 { 2000 } else { 300 });
        }
        cam.t += S;
        assert_eq!(cam.gate.on_due_keyframe(cam.t, KEY, false), Decision::Decode);
    }

    #[test]
    fn someone_walking_through_between_two_keyframes_does_not_lift_the_threshold() {
        let mut cam = Cam::active(3000);
        let before = cam.gate.threshold().unwrap();
        // Someone crosses between two keyframes: big deltas, but the two keyframes look
        // alike, so the motion gate labels it static.
        assert!(cam.second(2000, false, false), "decoded: the stream said something moved");
        let after = cam.gate.threshold().unwrap();
        // (The quantile moves by one sample at most; the maximum would have made it 2250.)
        assert!(after < before * 1.05, "{before} -> {after}");
        // Real motion of that size is still decoded.
        assert!(cam.second(2000, true, false));
    }

    #[test]
    fn a_decoded_frame_the_motion_gate_skipped_does_not_reset_the_keepalive() {
        let mut cam = Cam::active(3000);
        // Analysed last at t = 23. A noisy interval at t = 28 is decoded, but the picture
        // did not change, so the motion gate does not analyse it: the keepalive still
        // falls due at t = 33, not 38.
        for _ in 0..4 {
            cam.second(300, false, false);
        }
        assert!(cam.second(1500, false, false));
        let decoded: Vec<bool> = (0..6).map(|_| cam.second(300, false, false)).collect();
        assert_eq!(decoded, [false, false, false, false, true, false], "keepalive at t = 33");
    }

    #[test]
    fn tracks_and_the_keepalive_always_decode() {
        let mut cam = Cam::active(3000);
        assert_eq!(cam.gate.state(), GateState::Active);
        // A person standing still: quiet stream, but tracked.
        for _ in 0..15 {
            assert!(cam.second(300, false, true));
        }
        let mut decoded = 0;
        for _ in 0..30 {
            decoded += u32::from(cam.second(300, false, false));
        }
        assert_eq!(decoded, 3);
    }

    #[test]
    fn constant_bitrate_padding_switches_it_off() {
        // A CBR camera pads every frame to ~12 kB whether anything moves or not.
        let mut cam = Cam::new();
        for i in 0..40 {
            let moved = (i / 5) % 2 == 1;
            assert!(cam.second(jitter(12_000, i, 3), moved, false), "second {i}");
        }
        assert_eq!(cam.gate.state(), GateState::Uninformative);
        assert_eq!(cam.skipped, 0);
    }

    #[test]
    fn night_noise_that_inflates_static_frames_switches_it_off() {
        let mut cam = Cam::new();
        // Day: clear signal; skipping starts.
        for i in 0..20 {
            cam.second(jitter(300, i, 10), false, false);
        }
        for _ in 0..3 {
            cam.second(3000, true, false);
        }
        assert_eq!(cam.gate.state(), GateState::Active);
        // Night: noise makes static frames 2.5 kB. Each is decoded (above the threshold)
        // and labelled static, until the levels overlap.
        let mut skipped_at_night = 0;
        for i in 0..40 {
            skipped_at_night += u32::from(!cam.second(jitter(2500, i, 15), false, false));
        }
        assert_eq!(cam.gate.state(), GateState::Uninformative);
        assert_eq!(skipped_at_night, 0);
        // A person at night is decoded.
        assert!(cam.second(3500, true, false));
    }

    #[test]
    fn a_miss_found_at_the_keepalive_lowers_the_threshold() {
        let mut cam = Cam::active(5000);
        let before = cam.gate.threshold().unwrap();
        // Something slow changes the picture while frames stay small (600 B: below the
        // threshold): skipped until the keepalive, whose decode finds the picture moved.
        let mut missed = false;
        for _ in 0..12 {
            if cam.second(600, true, false) {
                missed = true;
                break;
            }
        }
        assert!(missed);
        assert_eq!(cam.gate.misses, 1);
        // 600 is now a moving level: 600 < 1.5 × 330 is false, so still active but lower.
        let after = cam.gate.threshold().unwrap();
        assert!(after < before && after < 600.0, "{before} -> {after}");
        assert!(cam.second(600, true, false), "the same activity is decoded now");
    }

    #[test]
    fn off_by_policy_or_on_an_all_intra_stream() {
        let mut off = ActivityGate::new(CompressedMotionPolicy::Off, Duration::from_secs(10));
        for i in 1..50 {
            off.on_delta(100);
            assert_eq!(off.on_due_keyframe(i * S, KEY, false), Decision::Decode);
            off.label(i * S, Some(false), true);
        }
        assert_eq!(off.state(), GateState::Disabled);
        let mut mjpeg = ActivityGate::new(CompressedMotionPolicy::Auto, Duration::from_secs(10));
        for i in 1..50 {
            assert_eq!(mjpeg.on_due_keyframe(i * S, KEY, false), Decision::Decode);
            mjpeg.label(i * S, Some(i % 3 == 0), true);
        }
        assert_eq!(mjpeg.state(), GateState::Disabled);
    }

    #[test]
    fn a_frame_not_decoded_after_all_carries_its_activity_on() {
        let mut cam = Cam::active(3000);
        cam.second(300, false, false);
        for _ in 0..9 {
            cam.gate.on_delta(3000);
        }
        cam.t += S;
        assert_eq!(cam.gate.on_due_keyframe(cam.t, KEY, false), Decision::Decode);
        cam.gate.not_decoded();
        // Quiet second, but the motion before it was never seen.
        for _ in 0..9 {
            cam.gate.on_delta(300);
        }
        cam.t += S;
        assert_eq!(cam.gate.on_due_keyframe(cam.t, KEY, false), Decision::Decode);
        // A label for a stale pts is ignored.
        assert!(!cam.gate.label(cam.t - S, Some(true), true));
    }
}
