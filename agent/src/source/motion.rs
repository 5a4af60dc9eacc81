//! Motion gating: whether a sampled frame is worth running the model on. Pure logic; the
//! pipeline feeds it the luma plane of each sampled frame, after the decoder and before
//! scaling, so a skipped frame costs neither scaling, colour conversion nor inference.
//!
//! Cheaper than Frigate's (which blurs, diffs and contours a resized frame): the frame is
//! reduced to a 32×18 grid of cell means read from a sparse set of luma samples (8×8 per
//! cell, ~37 k reads per frame whatever its size), compared with the previous sampled
//! frame's grid. Motion is at least [`MIN_CELLS`] cells whose mean changed by more than
//! `threshold` luma levels: averaging over a cell removes sensor and compression noise,
//! and a walking person changes several cells between frames even at 0.5 fps.
//!
//! A frame is analysed when there is motion, when the camera still has live tracks (a
//! person standing still must not be lost to the gate), and at least every `keepalive`
//! otherwise, so tracks end properly and a static scene is still looked at.

use std::time::Duration;

pub use super::activity::CompressedMotionPolicy;

/// Grid the frame is reduced to (16:9, the usual camera aspect).
pub const GRID_W: usize = 32;
pub const GRID_H: usize = 18;
/// Samples per cell side.
const SAMPLES: usize = 8;
/// Changed cells that make motion (a small distant person covers one or two).
pub const MIN_CELLS: usize = 2;

/// A camera's motion gate settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionPolicy {
    pub enabled: bool,
    /// Luma levels (0–255) a cell's mean must change by.
    pub threshold: u8,
    /// Longest time between analysed frames of a static scene.
    pub keepalive: Duration,
    /// Whether keyframes of a static scene are skipped before decoding, judged from the
    /// compressed stream ([`super::activity`]); needs `enabled` (its labels come from here).
    pub compressed: CompressedMotionPolicy,
}

impl Default for MotionPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 8,
            keepalive: Duration::from_secs(10),
            compressed: CompressedMotionPolicy::Auto,
        }
    }
}

/// Why a frame goes to inference, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Gating is off, or first frame.
    Analyse,
    Motion,
    /// The camera has live tracks.
    Tracking,
    Keepalive,
    Skip,
}

impl Verdict {
    pub fn analyse(self) -> bool {
        self != Verdict::Skip
    }
}

/// The cell means of a luma plane (`stride` bytes per row).
pub fn grid(luma: &[u8], width: usize, height: usize, stride: usize) -> Option<Vec<u8>> {
    if width < GRID_W || height < GRID_H || stride < width || luma.len() < stride * (height - 1) + width {
        return None;
    }
    let mut out = Vec::with_capacity(GRID_W * GRID_H);
    for gy in 0..GRID_H {
        for gx in 0..GRID_W {
            let mut sum = 0u32;
            for sy in 0..SAMPLES {
                // Sample centres spread evenly over the cell.
                let y = (gy * SAMPLES + sy) * height / (GRID_H * SAMPLES) + height / (GRID_H * SAMPLES * 2);
                let row = &luma[y.min(height - 1) * stride..];
                for sx in 0..SAMPLES {
                    let x = (gx * SAMPLES + sx) * width / (GRID_W * SAMPLES) + width / (GRID_W * SAMPLES * 2);
                    sum += u32::from(row[x.min(width - 1)]);
                }
            }
            out.push((sum / (SAMPLES * SAMPLES) as u32) as u8);
        }
    }
    Some(out)
}

/// Cells whose means differ by more than `threshold`.
pub fn changed_cells(a: &[u8], b: &[u8], threshold: u8) -> usize {
    a.iter().zip(b).filter(|(x, y)| x.abs_diff(**y) > threshold).count()
}

/// One camera's gate.
#[derive(Debug)]
pub struct MotionGate {
    policy: MotionPolicy,
    previous: Option<Vec<u8>>,
    last_analysed_ns: Option<u64>,
}

impl MotionGate {
    pub fn new(policy: MotionPolicy) -> Self {
        Self { policy, previous: None, last_analysed_ns: None }
    }

    /// Whether gating is on (else there is no need to read frames for it).
    pub fn enabled(&self) -> bool {
        self.policy.enabled
    }

    /// Decides for a sampled frame at `pts_ns` with cell grid `cells` (`None`: the frame
    /// could not be read, so it is analysed). `tracking`: the camera has live tracks.
    pub fn decide(&mut self, pts_ns: u64, cells: Option<Vec<u8>>, tracking: bool) -> Verdict {
        if !self.policy.enabled {
            return Verdict::Analyse;
        }
        let Some(cells) = cells else { return self.analysed(pts_ns, Verdict::Analyse) };
        let moved = self.previous.as_ref().map(|p| changed_cells(p, &cells, self.policy.threshold) >= MIN_CELLS);
        self.previous = Some(cells);
        let keepalive_due = match self.last_analysed_ns {
            None => true,
            // Timestamps going backwards (a restarted stream) count as due.
            Some(last) => pts_ns < last || pts_ns - last >= self.policy.keepalive.as_nanos() as u64,
        };
        let verdict = match moved {
            None => Verdict::Analyse,
            Some(true) => Verdict::Motion,
            Some(false) if tracking => Verdict::Tracking,
            Some(false) if keepalive_due => Verdict::Keepalive,
            Some(false) => Verdict::Skip,
        };
        if verdict.analyse() { self.analysed(pts_ns, verdict) } else { verdict }
    }

    fn analysed(&mut self, pts_ns: u64, v: Verdict) -> Verdict {
        self.last_analysed_ns = Some(pts_ns);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// A 320×180 grey frame with a dark 20×40 "person" at `x` (None: empty).
    fn frame(person_x: Option<usize>, noise: u8) -> Vec<u8> {
        let (w, h) = (320, 180);
        let mut f = vec![128u8; w * h];
        for (i, p) in f.iter_mut().enumerate() {
            // Deterministic per-pixel noise of ±noise.
            let n = ((i * 2654435761) >> 7) % (2 * noise as usize + 1);
            *p = (128 + n - noise as usize) as u8;
        }
        if let Some(x0) = person_x {
            for y in 100..140 {
                for x in x0..x0 + 20 {
                    f[y * w + x] = 40;
                }
            }
        }
        f
    }

    fn cells(f: &[u8]) -> Option<Vec<u8>> {
        grid(f, 320, 180, 320)
    }

    #[test]
    fn a_static_noisy_scene_is_skipped_until_the_keepalive() {
        let mut g = MotionGate::new(MotionPolicy::default());
        assert_eq!(g.decide(0, cells(&frame(None, 20)), false), Verdict::Analyse);
        for i in 1..10 {
            // Different noise each frame would be ideal; the same amplitude suffices to show
            // that cell means do not move with it.
            assert_eq!(g.decide(i * S, cells(&frame(None, 20 - i as u8)), false), Verdict::Skip, "frame {i}");
        }
        assert_eq!(g.decide(10 * S, cells(&frame(None, 20)), false), Verdict::Keepalive);
        assert_eq!(g.decide(11 * S, cells(&frame(None, 20)), false), Verdict::Skip);
    }

    #[test]
    fn a_small_walking_person_is_motion() {
        let mut g = MotionGate::new(MotionPolicy::default());
        g.decide(0, cells(&frame(None, 5)), false);
        assert_eq!(g.decide(S, cells(&frame(Some(100), 5)), false), Verdict::Motion);
        assert_eq!(g.decide(2 * S, cells(&frame(Some(130), 5)), false), Verdict::Motion);
        // Standing still: no motion, but while tracked it is still analysed.
        assert_eq!(g.decide(3 * S, cells(&frame(Some(130), 5)), true), Verdict::Tracking);
        assert_eq!(g.decide(4 * S, cells(&frame(Some(130), 5)), false), Verdict::Skip);
    }

    #[test]
    fn gating_off_or_unreadable_frames_are_always_analysed() {
        let mut off = MotionGate::new(MotionPolicy { enabled: false, ..MotionPolicy::default() });
        for i in 0..3 {
            assert_eq!(off.decide(i * S, cells(&frame(None, 0)), false), Verdict::Analyse);
        }
        let mut g = MotionGate::new(MotionPolicy::default());
        g.decide(0, cells(&frame(None, 0)), false);
        assert_eq!(g.decide(S, None, false), Verdict::Analyse);
        assert!(grid(&[0u8; 10], 10, 1, 10).is_none(), "too small for the grid");
    }

    #[test]
    fn a_restarted_stream_is_analysed_at_once() {
        let mut g = MotionGate::new(MotionPolicy::default());
        g.decide(100 * S, cells(&frame(None, 0)), false);
        assert_eq!(g.decide(S, cells(&frame(None, 0)), false), Verdict::Keepalive);
    }
}
