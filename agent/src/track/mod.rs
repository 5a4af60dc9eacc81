//! Multi-object tracking per camera: pure logic, no I/O, driven by analysed frames.
//!
//! ByteTrack-style, adapted to the low analysis rates Lookout runs at (0.5–5 fps), where a
//! walking person moves more than a box width between frames and plain IoU matching fails:
//!
//! - **Prediction** is time-aware: each track keeps a velocity of its box centre (per
//!   second, smoothed) and is moved by `velocity × Δt` before matching.
//! - **Cost** of pairing a track with a detection of the same class: `1 − IoU` when the
//!   predicted box overlaps it (IoU ≥ 0.1), otherwise `1 + d` where `d` is the centre
//!   distance in units of the larger box's diagonal, gated at `max_jump` (wider for tracks
//!   without a velocity yet). Overlap always wins over distance.
//! - **Two stages** (ByteTrack's idea): detections at or above `high` are matched first;
//!   then detections between `low` and `high` may keep *existing* tracks alive through
//!   partial occlusion, but never start new ones.
//! - **Lifecycle**: an unmatched high-score detection starts a *tentative* track; it is
//!   *confirmed* after `confirm_hits` matches (`TrackEvent::New`). A confirmed track not
//!   seen for `lost_after` ends (`TrackEvent::End`); a tentative one that misses a frame is
//!   dropped silently, so one-frame false positives never reach the platform.
//!
//! Assignment is greedy by ascending cost: with the handful of objects per camera this
//! matches the Hungarian optimum in practice and keeps the code small.

use std::time::Duration;

use crate::infer::detection::{BBox, Detection};

/// Tracker knobs; defaults suit 0.5–5 fps.
#[derive(Debug, Clone, Copy)]
pub struct TrackerConfig {
    /// Detections at or above this start and continue tracks (the camera's `min_score`).
    pub high: f32,
    /// Detections from here to `high` only continue existing tracks.
    pub low: f32,
    /// Matches before a track is confirmed (reported).
    pub confirm_hits: u32,
    /// A confirmed track unseen this long ends.
    pub lost_after: Duration,
    /// Largest centre jump accepted between frames, in box diagonals, for a track with a
    /// velocity (after prediction); tracks without one get twice this.
    pub max_jump: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self { high: 0.5, low: 0.3, confirm_hits: 2, lost_after: Duration::from_secs(5), max_jump: 1.5 }
    }
}

/// A tracked object as the rules and events see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: u64,
    pub class_id: u32,
    /// Last matched box (normalised).
    pub bbox: BBox,
    pub score: f32,
    pub best_score: f32,
    /// Seconds since the tracker's epoch (the caller's clock).
    pub first_seen: f64,
    pub last_seen: f64,
    pub hits: u32,
    pub confirmed: bool,
    /// Centre velocity in frame widths/heights per second.
    velocity: Option<(f32, f32)>,
}

impl Track {
    fn center(b: &BBox) -> (f32, f32) {
        (b.x + b.w / 2.0, b.y + b.h / 2.0)
    }

    fn predicted(&self, t: f64) -> BBox {
        let dt = (t - self.last_seen) as f32;
        let (vx, vy) = self.velocity.unwrap_or((0.0, 0.0));
        BBox { x: self.bbox.x + vx * dt, y: self.bbox.y + vy * dt, ..self.bbox }
    }
}

/// What an update changed.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackEvent {
    /// A track was confirmed.
    New(Track),
    /// A confirmed track was matched again.
    Update(Track),
    /// A confirmed track was not seen for `lost_after`.
    End(Track),
}

/// The tracker of one camera.
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    pub fn new(cfg: TrackerConfig) -> Self {
        Self::with_first_id(cfg, 1)
    }

    /// A tracker whose first track gets `first_id`.
    pub fn with_first_id(cfg: TrackerConfig, first_id: u64) -> Self {
        Self { cfg, tracks: Vec::new(), next_id: first_id }
    }

    /// Tracks held, tentative ones included.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Confirmed tracks currently alive.
    pub fn tracks(&self) -> impl Iterator<Item = &Track> {
        self.tracks.iter().filter(|t| t.confirmed)
    }

    /// Feeds one analysed frame taken at `t` seconds (monotonic, the caller's clock).
    pub fn update(&mut self, t: f64, detections: &[Detection]) -> Vec<TrackEvent> {
        let mut events = Vec::new();
        let mut matched_track = vec![false; self.tracks.len()];
        let mut used = vec![false; detections.len()];
        for stage_high in [true, false] {
            let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
            for (ti, tr) in self.tracks.iter().enumerate() {
                if matched_track[ti] || (!stage_high && !tr.confirmed) {
                    continue;
                }
                let pred = tr.predicted(t);
                for (di, d) in detections.iter().enumerate() {
                    let in_stage = if stage_high {
                        d.score >= self.cfg.high
                    } else {
                        d.score >= self.cfg.low && d.score < self.cfg.high
                    };
                    if used[di] || !in_stage || d.class_id != tr.class_id {
                        continue;
                    }
                    if let Some(c) = self.cost(tr, &pred, &d.bbox) {
                        pairs.push((c, ti, di));
                    }
                }
            }
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (_, ti, di) in pairs {
                if matched_track[ti] || used[di] {
                    continue;
                }
                matched_track[ti] = true;
                used[di] = true;
                let was_confirmed = self.tracks[ti].confirmed;
                self.apply(ti, t, &detections[di]);
                let tr = &self.tracks[ti];
                if tr.confirmed {
                    events.push(if was_confirmed {
                        TrackEvent::Update(tr.clone())
                    } else {
                        TrackEvent::New(tr.clone())
                    });
                }
            }
        }
        // Unmatched: tentative tracks go at once; confirmed ones after lost_after.
        let lost_after = self.cfg.lost_after.as_secs_f64();
        let mut kept = Vec::with_capacity(self.tracks.len());
        for (ti, tr) in self.tracks.drain(..).enumerate() {
            if matched_track[ti] || (tr.confirmed && t - tr.last_seen < lost_after) {
                kept.push(tr);
            } else if tr.confirmed {
                events.push(TrackEvent::End(tr));
            }
        }
        self.tracks = kept;
        // New tentative tracks from unmatched confident detections.
        for (di, d) in detections.iter().enumerate() {
            if used[di] || d.score < self.cfg.high {
                continue;
            }
            let mut tr = Track {
                id: self.next_id,
                class_id: d.class_id,
                bbox: d.bbox,
                score: d.score,
                best_score: d.score,
                first_seen: t,
                last_seen: t,
                hits: 1,
                confirmed: false,
                velocity: None,
            };
            self.next_id += 1;
            if self.cfg.confirm_hits <= 1 {
                tr.confirmed = true;
                events.push(TrackEvent::New(tr.clone()));
            }
            self.tracks.push(tr);
        }
        events
    }

    /// Ends every confirmed track (camera stopped).
    pub fn finish(&mut self) -> Vec<TrackEvent> {
        self.tracks.drain(..).filter(|t| t.confirmed).map(TrackEvent::End).collect()
    }

    fn cost(&self, tr: &Track, pred: &BBox, det: &BBox) -> Option<f32> {
        let iou = pred.iou(det);
        if iou >= 0.1 {
            return Some(1.0 - iou);
        }
        let (pc, dc) = (Track::center(pred), Track::center(det));
        let diag = |b: &BBox| (b.w * b.w + b.h * b.h).sqrt();
        let scale = diag(pred).max(diag(det)).max(1e-6);
        let d = ((pc.0 - dc.0).powi(2) + (pc.1 - dc.1).powi(2)).sqrt() / scale;
        let gate = if tr.velocity.is_some() { self.cfg.max_jump } else { 2.0 * self.cfg.max_jump };
        (d <= gate).then_some(1.0 + d)
    }

    fn apply(&mut self, ti: usize, t: f64, d: &Detection) {
        let tr = &mut self.tracks[ti];
        let dt = (t - tr.last_seen) as f32;
        if dt > 0.0 {
            let (old, new) = (Track::center(&tr.bbox), Track::center(&d.bbox));
            let v = ((new.0 - old.0) / dt, (new.1 - old.1) / dt);
            // Smoothed: detections jitter, people rarely turn on the spot.
            tr.velocity = Some(match tr.velocity {
                Some((vx, vy)) => (0.5 * vx + 0.5 * v.0, 0.5 * vy + 0.5 * v.1),
                None => v,
            });
        }
        tr.bbox = d.bbox;
        tr.score = d.score;
        tr.best_score = tr.best_score.max(d.score);
        tr.last_seen = t;
        tr.hits += 1;
        if tr.hits >= self.cfg.confirm_hits {
            tr.confirmed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, score: f32) -> Detection {
        Detection { class_id: 0, score, bbox: BBox { x, y, w: 0.05, h: 0.15 } }
    }

    fn ids(events: &[TrackEvent]) -> Vec<(char, u64)> {
        events
            .iter()
            .map(|e| match e {
                TrackEvent::New(t) => ('n', t.id),
                TrackEvent::Update(t) => ('u', t.id),
                TrackEvent::End(t) => ('e', t.id),
            })
            .collect()
    }

    #[test]
    fn a_person_walking_fast_at_one_fps_keeps_one_id() {
        // 0.08 of the frame per second: more than 1.5 box widths between frames, no overlap.
        let mut tr = Tracker::new(TrackerConfig::default());
        let mut seen = Vec::new();
        for i in 0..10 {
            for e in tr.update(i as f64, &[det(0.05 + 0.08 * i as f32, 0.5, 0.9)]) {
                seen.push(e);
            }
        }
        let all: Vec<u64> = seen.iter().map(|e| ids(std::slice::from_ref(e))[0].1).collect();
        assert!(all.iter().all(|&id| id == 1), "{:?}", ids(&seen));
        assert_eq!(ids(&seen)[0], ('n', 1), "confirmed on the second frame");
        assert_eq!(tr.tracks().count(), 1);
    }

    #[test]
    fn a_fast_walker_overtaking_a_slow_one_keeps_both_ids() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let mut last = Vec::new();
        for i in 0..7 {
            // Same line: A (fast) catches B (slow) at i = 3. At i = 4 A's last position is
            // nearer B's new box than A's own, so matching by position alone swaps them;
            // the predicted positions do not.
            let a = det(0.10 + 0.12 * i as f32, 0.5, 0.9);
            let b = det(0.40 + 0.02 * i as f32, 0.5, 0.9);
            last = tr.update(i as f64, &[a, b]);
        }
        let x_of = |id: u64| {
            last.iter()
                .find_map(|e| match e {
                    TrackEvent::Update(t) if t.id == id => Some(t.bbox.x),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("track {id} not updated: {last:?}"))
        };
        // A (id 1) ends ahead, at 0.82; B (id 2) behind, at 0.52.
        assert!((x_of(1) - 0.82).abs() < 1e-4 && (x_of(2) - 0.52).abs() < 1e-4, "ids swapped: {last:?}");
    }

    #[test]
    fn missed_frames_within_lost_after_keep_the_id() {
        let mut tr = Tracker::new(TrackerConfig::default());
        tr.update(0.0, &[det(0.10, 0.5, 0.9)]);
        tr.update(1.0, &[det(0.18, 0.5, 0.9)]);
        assert!(tr.update(2.0, &[]).is_empty());
        assert!(tr.update(3.0, &[]).is_empty());
        // Reappears where its velocity says (0.42): two box diagonals from where it was last
        // seen, beyond the distance gate, so only the prediction can link it.
        assert_eq!(ids(&tr.update(4.0, &[det(0.42, 0.5, 0.9)])), vec![('u', 1)]);
    }

    #[test]
    fn a_track_lost_for_lost_after_ends_and_a_return_is_a_new_object() {
        let cfg = TrackerConfig { lost_after: Duration::from_secs(3), ..TrackerConfig::default() };
        let mut tr = Tracker::new(cfg);
        tr.update(0.0, &[det(0.1, 0.5, 0.9)]);
        tr.update(1.0, &[det(0.1, 0.5, 0.9)]);
        assert!(tr.update(3.0, &[]).is_empty());
        assert_eq!(ids(&tr.update(4.0, &[])), vec![('e', 1)]);
        tr.update(5.0, &[det(0.1, 0.5, 0.9)]);
        assert_eq!(ids(&tr.update(6.0, &[det(0.1, 0.5, 0.9)])), vec![('n', 2)]);
    }

    #[test]
    fn low_score_detections_keep_a_track_alive_but_never_start_one() {
        let mut tr = Tracker::new(TrackerConfig::default());
        tr.update(0.0, &[det(0.1, 0.5, 0.9)]);
        tr.update(1.0, &[det(0.1, 0.5, 0.9)]);
        // Partly occluded: 0.35 continues track 1; a 0.35 elsewhere starts nothing.
        let e = tr.update(2.0, &[det(0.1, 0.5, 0.35), det(0.7, 0.2, 0.35)]);
        assert_eq!(ids(&e), vec![('u', 1)]);
        assert!(tr.update(3.0, &[det(0.7, 0.2, 0.35)]).is_empty());
        assert_eq!(tr.tracks().count(), 1);
    }

    #[test]
    fn a_one_frame_false_positive_is_never_reported() {
        let mut tr = Tracker::new(TrackerConfig::default());
        assert!(tr.update(0.0, &[det(0.4, 0.4, 0.9)]).is_empty());
        assert!(tr.update(1.0, &[]).is_empty());
        assert!(tr.update(10.0, &[]).is_empty());
        assert!(tr.finish().is_empty());
    }

    #[test]
    fn classes_never_match_each_other() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let car = |x| Detection { class_id: 1, score: 0.9, bbox: BBox { x, y: 0.5, w: 0.05, h: 0.15 } };
        tr.update(0.0, &[det(0.1, 0.5, 0.9)]);
        tr.update(1.0, &[det(0.1, 0.5, 0.9)]);
        // Same place, other class: person 1 unmatched, the car starts its own (tentative) track.
        assert!(tr.update(2.0, &[car(0.1)]).is_empty());
        assert_eq!(ids(&tr.update(3.0, &[car(0.1)])), vec![('n', 2)]);
        assert!(tr.finish().iter().any(|e| matches!(e, TrackEvent::End(t) if t.id == 1)));
    }
}
