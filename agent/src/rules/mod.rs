//! Rules over one camera's tracks: object lifecycles, zones (enter, exit, loiter,
//! crowding), lines (crossings by direction) and interval counts. Pure logic: the caller
//! feeds the tracker's events with the frame time and gets rule events back.
//!
//! Positions are each track's *reference point* (bottom-centre of the box by default:
//! where a person stands), taken from matched detections only; a track the detector
//! misses for a few frames keeps its last position and its zones until it ends.
//!
//! - **Zones**: `zone.enter` / `zone.exit` when the reference point moves in or out of
//!   the polygon (a track that ends inside exits with it); `zone.loiter` once per visit
//!   after `loiter_seconds` inside; with `max_objects`, `zone.crowded` when more objects
//!   than that are inside and `zone.crowd_cleared` when it falls back.
//! - **Lines**: `line.cross` when the segment between two successive reference points
//!   crosses the line *segment* A→B; `directions[0]` names the crossing from the side
//!   where (B−A)×(P−A) > 0 to the side where it is < 0. A point exactly on the line
//!   keeps the side it came from, so jitter on the line never counts twice.
//! - **Lifecycle**: `object.new` on confirmation, `object.update` when its zones change
//!   or every `update_interval`, `object.end` when the tracker ends it.

pub mod geometry;

use std::collections::BTreeMap;
use std::time::Duration;

use geometry::{Point, contains, segments_intersect, side};

use crate::infer::detection::BBox;
use crate::track::{Track, TrackEvent};

/// Which point of a box stands for the object in zones and lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReferencePoint {
    /// Bottom-centre: where a person or vehicle touches the ground. The default.
    #[default]
    BottomCenter,
    /// Centre of the box: for top-down views.
    Center,
}

impl ReferencePoint {
    pub fn of(self, b: &BBox) -> Point {
        match self {
            ReferencePoint::BottomCenter => Point::new(b.x + b.w / 2.0, b.y + b.h),
            ReferencePoint::Center => Point::new(b.x + b.w / 2.0, b.y + b.h / 2.0),
        }
    }
}

/// A polygon zone.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneRule {
    pub name: String,
    pub polygon: Vec<Point>,
    pub loiter: Option<Duration>,
    pub max_objects: Option<usize>,
    /// Class ids the zone cares about; empty: all.
    pub classes: Vec<u32>,
}

/// A counting line: two points and a name for each direction.
#[derive(Debug, Clone, PartialEq)]
pub struct LineRule {
    pub name: String,
    pub a: Point,
    pub b: Point,
    /// `[0]`: from the (B−A)×(P−A) > 0 side to the < 0 side; `[1]`: the other way.
    pub directions: [String; 2],
    /// Class ids the line counts; empty: all.
    pub classes: Vec<u32>,
}

/// A camera's rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RulesConfig {
    pub zones: Vec<ZoneRule>,
    pub lines: Vec<LineRule>,
    pub reference: ReferencePoint,
    /// Periodic `object.update` while nothing else changes; `None`: only on zone changes.
    pub update_interval: Option<Duration>,
}

/// Most points kept in an object's path; older ones are thinned out, never the first.
pub const PATH_POINTS: usize = 16;
/// A new path point is kept once the object has moved this far (normalised).
const PATH_STEP: f32 = 0.01;

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    ObjectNew,
    ObjectUpdate,
    ObjectEnd,
    ZoneEnter { zone: usize },
    ZoneExit { zone: usize },
    ZoneLoiter { zone: usize, seconds: f64 },
    ZoneCrowded { zone: usize, count: usize },
    ZoneCrowdCleared { zone: usize, count: usize },
    LineCross { line: usize, direction: usize },
}

impl EventKind {
    /// The `type` of the event message.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::ObjectNew => "object.new",
            EventKind::ObjectUpdate => "object.update",
            EventKind::ObjectEnd => "object.end",
            EventKind::ZoneEnter { .. } => "zone.enter",
            EventKind::ZoneExit { .. } => "zone.exit",
            EventKind::ZoneLoiter { .. } => "zone.loiter",
            EventKind::ZoneCrowded { .. } => "zone.crowded",
            EventKind::ZoneCrowdCleared { .. } => "zone.crowd_cleared",
            EventKind::LineCross { .. } => "line.cross",
        }
    }
}

/// The object as an event reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectView {
    pub track: Track,
    /// Zones visited, in order of first entry (indices into the config's zones).
    pub zones: Vec<usize>,
    /// Zones it is in now.
    pub in_zones: Vec<usize>,
    pub path: Vec<Point>,
}

/// One rule event at time `t` (seconds, the caller's clock).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleEvent {
    pub kind: EventKind,
    pub t: f64,
    /// The object concerned; `None` for zone-wide events (crowding).
    pub object: Option<ObjectView>,
}

#[derive(Debug)]
struct ObjectState {
    track: Track,
    path: Vec<Point>,
    /// Per zone: since when the object is inside, and whether it was reported loitering.
    inside: Vec<Option<(f64, bool)>>,
    visited: Vec<usize>,
    /// Per line: the last side (±1) the object was seen on and where; side 0 before any.
    sides: Vec<(i8, Point)>,
    last_report: f64,
}

impl ObjectState {
    fn view(&self) -> ObjectView {
        ObjectView {
            track: self.track.clone(),
            zones: self.visited.clone(),
            in_zones: self.inside.iter().enumerate().filter_map(|(i, v)| v.map(|_| i)).collect(),
            path: self.path.clone(),
        }
    }

    fn push_path(&mut self, p: Point) {
        if self.path.last().is_some_and(|l| l.dist(p) < PATH_STEP) {
            return;
        }
        self.path.push(p);
        if self.path.len() > PATH_POINTS {
            // Keep every other point (the first included) and the newest.
            let newest = p;
            let mut i = 0;
            self.path.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            if self.path.last() != Some(&newest) {
                self.path.push(newest);
            }
        }
    }
}

/// Counts over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    pub start: f64,
    pub end: f64,
    /// Objects present at the end, per class id.
    pub present: Vec<(u32, usize)>,
    /// Occupancy of each zone at the end (config order).
    pub zones: Vec<usize>,
    /// The same by class id: only classes with an object inside.
    pub zone_classes: Vec<BTreeMap<u32, usize>>,
    /// Crossings per line during the interval: `[directions[0], directions[1]]`.
    pub lines: Vec<[u64; 2]>,
    /// The same by class id: only classes that crossed.
    pub line_classes: Vec<BTreeMap<u32, [u64; 2]>>,
}

/// One camera's rule state.
#[derive(Debug)]
pub struct Rules {
    cfg: RulesConfig,
    objects: Vec<ObjectState>,
    crowded: Vec<bool>,
    crossings: Vec<[u64; 2]>,
    class_crossings: Vec<BTreeMap<u32, [u64; 2]>>,
    interval_start: f64,
}

impl Rules {
    /// `t0` starts the first counting interval.
    pub fn new(cfg: RulesConfig, t0: f64) -> Self {
        let (nz, nl) = (cfg.zones.len(), cfg.lines.len());
        Self {
            cfg,
            objects: Vec::new(),
            crowded: vec![false; nz],
            crossings: vec![[0; 2]; nl],
            class_crossings: vec![BTreeMap::new(); nl],
            interval_start: t0,
        }
    }

    pub fn config(&self) -> &RulesConfig {
        &self.cfg
    }

    /// The zone of `next` that zone `z` carries over to: same name and the same
    /// definition (shape, limits, classes, reference point).
    fn zone_kept(&self, z: usize, next: &RulesConfig) -> Option<usize> {
        let zone = &self.cfg.zones[z];
        next.zones.iter().position(|n| n == zone).filter(|_| next.reference == self.cfg.reference)
    }

    /// A live rules change, first half: everyone inside a zone that `next` removes or
    /// changes leaves it (`zone.exit` at `t`) and a crowded one is cleared, so every
    /// `zone.enter` the platform saw is paired with an exit under the definition it was
    /// made with. The events name the current config's zones: turn them into messages,
    /// then call [`Rules::replace_config`].
    pub fn leave_changed_zones(&mut self, next: &RulesConfig, t: f64) -> Vec<RuleEvent> {
        let mut out = Vec::new();
        for z in 0..self.cfg.zones.len() {
            if self.zone_kept(z, next).is_some() {
                continue;
            }
            for o in &mut self.objects {
                if o.inside[z].take().is_some() {
                    out.push(RuleEvent { kind: EventKind::ZoneExit { zone: z }, t, object: Some(o.view()) });
                }
            }
            if std::mem::take(&mut self.crowded[z]) {
                out.push(RuleEvent { kind: EventKind::ZoneCrowdCleared { zone: z, count: 0 }, t, object: None });
            }
        }
        out
    }

    /// A live rules change, second half: `next` becomes the rules; tracks go on. By name,
    /// an unchanged zone keeps who is inside since when and its crowding state; a changed
    /// or new zone starts empty (an object inside it enters at its next update). A line
    /// keeps the interval's crossings (the counting interval goes on); an unchanged one
    /// keeps each object's side, a changed or new one starts each object on the side its
    /// last position is on, so a crossing counts from the next move.
    pub fn replace_config(&mut self, next: RulesConfig) {
        let zone_from: Vec<Option<usize>> = (0..self.cfg.zones.len()).map(|z| self.zone_kept(z, &next)).collect();
        let old_zone = |nz: usize| zone_from.iter().position(|k| *k == Some(nz));
        let line_from: Vec<Option<usize>> =
            next.lines.iter().map(|l| self.cfg.lines.iter().position(|o| o.name == l.name)).collect();
        let same_line = |nl: usize| {
            line_from[nl].filter(|&ol| self.cfg.lines[ol] == next.lines[nl] && self.cfg.reference == next.reference)
        };
        for o in &mut self.objects {
            let p = next.reference.of(&o.track.bbox);
            o.inside = (0..next.zones.len()).map(|nz| old_zone(nz).and_then(|oz| o.inside[oz])).collect();
            o.visited = o
                .visited
                .iter()
                .filter_map(|&oz| next.zones.iter().position(|n| n.name == self.cfg.zones[oz].name))
                .collect();
            o.sides = (0..next.lines.len())
                .map(|nl| match same_line(nl) {
                    Some(ol) => o.sides[ol],
                    None => (side(next.lines[nl].a, next.lines[nl].b, p), p),
                })
                .collect();
        }
        self.crowded = (0..next.zones.len()).map(|nz| old_zone(nz).is_some_and(|oz| self.crowded[oz])).collect();
        self.crossings = line_from.iter().map(|ol| ol.map_or([0; 2], |ol| self.crossings[ol])).collect();
        self.class_crossings =
            line_from.iter().map(|ol| ol.map(|ol| self.class_crossings[ol].clone()).unwrap_or_default()).collect();
        self.cfg = next;
    }

    /// Live objects (confirmed tracks).
    pub fn objects(&self) -> impl Iterator<Item = &Track> {
        self.objects.iter().map(|o| &o.track)
    }

    /// Applies the tracker's events for the frame at `t`.
    pub fn update(&mut self, t: f64, track_events: &[TrackEvent]) -> Vec<RuleEvent> {
        let mut out = Vec::new();
        // Ends last, so an object that ends and one that starts in the same frame are
        // both counted in this frame's crowding check.
        for ev in track_events {
            match ev {
                TrackEvent::New(tr) => self.on_new(t, tr, &mut out),
                TrackEvent::Update(tr) => self.on_update(t, tr, &mut out),
                TrackEvent::End(_) => {}
            }
        }
        for ev in track_events {
            if let TrackEvent::End(tr) = ev {
                self.on_end(tr, &mut out);
            }
        }
        self.check_loiter(t, &mut out);
        self.check_crowding(t, &mut out);
        out
    }

    fn on_new(&mut self, t: f64, tr: &Track, out: &mut Vec<RuleEvent>) {
        let p = self.cfg.reference.of(&tr.bbox);
        let mut o = ObjectState {
            track: tr.clone(),
            path: Vec::new(),
            inside: vec![None; self.cfg.zones.len()],
            visited: Vec::new(),
            sides: self.cfg.lines.iter().map(|l| (side(l.a, l.b, p), p)).collect(),
            last_report: t,
        };
        o.push_path(p);
        // object.new already shows the zones it starts in; their zone.enter follow it.
        let mut entered = Vec::new();
        self.move_zones(&mut o, t, p, &mut entered);
        out.push(RuleEvent { kind: EventKind::ObjectNew, t, object: Some(o.view()) });
        out.extend(entered);
        self.objects.push(o);
    }

    fn on_update(&mut self, t: f64, tr: &Track, out: &mut Vec<RuleEvent>) {
        let Some(idx) = self.objects.iter().position(|o| o.track.id == tr.id) else {
            // An update for an object we never saw confirmed: treat it as new.
            return self.on_new(t, tr, out);
        };
        // Taken out while lines and zones (which update `self`) look at it, then put back
        // where it was: objects stay in the order they were confirmed.
        let mut o = self.objects.remove(idx);
        o.track = tr.clone();
        let p = self.cfg.reference.of(&tr.bbox);
        o.push_path(p);
        self.cross_lines(&mut o, t, p, out);
        let zones_changed = self.move_zones(&mut o, t, p, out);
        let due = self.cfg.update_interval.is_some_and(|i| t - o.last_report >= i.as_secs_f64());
        if zones_changed || due {
            o.last_report = t;
            out.push(RuleEvent { kind: EventKind::ObjectUpdate, t, object: Some(o.view()) });
        }
        self.objects.insert(idx, o);
    }

    fn on_end(&mut self, tr: &Track, out: &mut Vec<RuleEvent>) {
        let Some(idx) = self.objects.iter().position(|o| o.track.id == tr.id) else { return };
        let mut o = self.objects.remove(idx);
        o.track = tr.clone();
        // Ending inside a zone is leaving it, at the last time the object was seen.
        let t = tr.last_seen;
        for z in 0..o.inside.len() {
            if o.inside[z].take().is_some() {
                out.push(RuleEvent { kind: EventKind::ZoneExit { zone: z }, t, object: Some(o.view()) });
            }
        }
        out.push(RuleEvent { kind: EventKind::ObjectEnd, t, object: Some(o.view()) });
    }

    /// Zone transitions for an object now at `p`; whether any happened.
    fn move_zones(&self, o: &mut ObjectState, t: f64, p: Point, out: &mut Vec<RuleEvent>) -> bool {
        let mut changed = false;
        for (z, zone) in self.cfg.zones.iter().enumerate() {
            if !zone.classes.is_empty() && !zone.classes.contains(&o.track.class_id) {
                continue;
            }
            let now_inside = contains(&zone.polygon, p);
            match (o.inside[z].is_some(), now_inside) {
                (false, true) => {
                    o.inside[z] = Some((t, false));
                    if !o.visited.contains(&z) {
                        o.visited.push(z);
                    }
                    out.push(RuleEvent { kind: EventKind::ZoneEnter { zone: z }, t, object: Some(o.view()) });
                    changed = true;
                }
                (true, false) => {
                    o.inside[z] = None;
                    out.push(RuleEvent { kind: EventKind::ZoneExit { zone: z }, t, object: Some(o.view()) });
                    changed = true;
                }
                _ => {}
            }
        }
        changed
    }

    fn cross_lines(&mut self, o: &mut ObjectState, t: f64, p: Point, out: &mut Vec<RuleEvent>) {
        for (l, line) in self.cfg.lines.iter().enumerate() {
            if !line.classes.is_empty() && !line.classes.contains(&o.track.class_id) {
                continue;
            }
            let s = side(line.a, line.b, p);
            if s == 0 {
                continue;
            }
            // From the last point off the line, so a stop exactly on it still counts once.
            let (before, from) = o.sides[l];
            o.sides[l] = (s, p);
            if before != 0 && before != s && segments_intersect(from, p, line.a, line.b) {
                let direction = if before > 0 { 0 } else { 1 };
                self.crossings[l][direction] += 1;
                self.class_crossings[l].entry(o.track.class_id).or_default()[direction] += 1;
                out.push(RuleEvent { kind: EventKind::LineCross { line: l, direction }, t, object: Some(o.view()) });
            }
        }
    }

    fn check_loiter(&mut self, t: f64, out: &mut Vec<RuleEvent>) {
        for o in &mut self.objects {
            for (z, zone) in self.cfg.zones.iter().enumerate() {
                let (Some(limit), Some((since, reported))) = (zone.loiter, o.inside[z]) else { continue };
                if !reported && t - since >= limit.as_secs_f64() {
                    o.inside[z] = Some((since, true));
                    let seconds = t - since;
                    out.push(RuleEvent { kind: EventKind::ZoneLoiter { zone: z, seconds }, t, object: Some(o.view()) });
                }
            }
        }
    }

    fn occupancy(&self, z: usize) -> usize {
        self.objects.iter().filter(|o| o.inside[z].is_some()).count()
    }

    fn check_crowding(&mut self, t: f64, out: &mut Vec<RuleEvent>) {
        for z in 0..self.cfg.zones.len() {
            let Some(max) = self.cfg.zones[z].max_objects else { continue };
            let count = self.occupancy(z);
            if count > max && !self.crowded[z] {
                self.crowded[z] = true;
                out.push(RuleEvent { kind: EventKind::ZoneCrowded { zone: z, count }, t, object: None });
            } else if count <= max && self.crowded[z] {
                self.crowded[z] = false;
                out.push(RuleEvent { kind: EventKind::ZoneCrowdCleared { zone: z, count }, t, object: None });
            }
        }
    }

    /// Closes the counting interval at `t` and starts the next. `classes` is the number
    /// of the model's classes (each gets a count, zero included).
    pub fn take_counts(&mut self, t: f64, classes: usize) -> Counts {
        let mut present: Vec<(u32, usize)> = (0..classes as u32).map(|c| (c, 0)).collect();
        for o in &self.objects {
            match present.iter_mut().find(|(c, _)| *c == o.track.class_id) {
                Some((_, n)) => *n += 1,
                None => present.push((o.track.class_id, 1)),
            }
        }
        let nl = self.cfg.lines.len();
        let zone_classes = (0..self.cfg.zones.len())
            .map(|z| {
                let mut by_class = BTreeMap::new();
                for o in self.objects.iter().filter(|o| o.inside[z].is_some()) {
                    *by_class.entry(o.track.class_id).or_default() += 1;
                }
                by_class
            })
            .collect();
        let counts = Counts {
            start: self.interval_start,
            end: t,
            present,
            zones: (0..self.cfg.zones.len()).map(|z| self.occupancy(z)).collect(),
            zone_classes,
            lines: std::mem::replace(&mut self.crossings, vec![[0; 2]; nl]),
            line_classes: std::mem::replace(&mut self.class_crossings, vec![BTreeMap::new(); nl]),
        };
        self.interval_start = t;
        counts
    }
}

#[cfg(test)]
mod tests;
