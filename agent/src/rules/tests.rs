use super::*;
use crate::infer::detection::Detection;
use crate::track::{Tracker, TrackerConfig};

/// A person box whose bottom-centre is at (x, y).
fn at(x: f32, y: f32) -> Detection {
    Detection { class_id: 0, score: 0.9, bbox: BBox { x: x - 0.025, y: y - 0.15, w: 0.05, h: 0.15 } }
}

fn p(x: f32, y: f32) -> Point {
    Point::new(x, y)
}

fn gate() -> LineRule {
    LineRule {
        name: "gate".into(),
        a: p(0.5, 0.0),
        b: p(0.5, 1.0),
        directions: ["east".into(), "west".into()],
        classes: vec![],
    }
}

fn zone(name: &str, x0: f32, x1: f32) -> ZoneRule {
    ZoneRule {
        name: name.into(),
        polygon: vec![p(x0, 0.5), p(x1, 0.5), p(x1, 1.0), p(x0, 1.0)],
        loiter: None,
        max_objects: None,
        classes: vec![],
    }
}

/// Tracker + rules, one frame per second.
struct World {
    tracker: Tracker,
    rules: Rules,
    events: Vec<RuleEvent>,
}

impl World {
    fn new(cfg: RulesConfig) -> Self {
        let tc = TrackerConfig { lost_after: Duration::from_secs(3), ..TrackerConfig::default() };
        Self { tracker: Tracker::new(tc), rules: Rules::new(cfg, 0.0), events: Vec::new() }
    }

    fn frame(&mut self, t: f64, dets: &[Detection]) {
        let te = self.tracker.update(t, dets);
        self.events.extend(self.rules.update(t, &te));
    }

    fn finish(&mut self, t: f64) {
        let te = self.tracker.finish();
        self.events.extend(self.rules.update(t, &te));
    }

    fn types(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.kind.type_name()).collect()
    }

    fn count(&self, ty: &str) -> usize {
        self.types().iter().filter(|t| **t == ty).count()
    }
}

#[test]
fn crossings_are_named_by_direction_and_counted_per_interval() {
    let mut w = World::new(RulesConfig { lines: vec![gate()], ..RulesConfig::default() });
    // One walks east at y = 0.3 while another walks west at y = 0.8.
    for i in 0..10 {
        let t = i as f64;
        w.frame(t, &[at(0.1 + 0.08 * i as f32, 0.3), at(0.9 - 0.08 * i as f32, 0.8)]);
    }
    let crossings: Vec<(u64, usize)> = w
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::LineCross { line: 0, direction } => {
                Some((e.object.as_ref().map_or(0, |o| o.track.id), direction))
            }
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(crossings, vec![(1, 0), (2, 1)], "east for track 1, west for track 2");
    let c = w.rules.take_counts(10.0, 1);
    assert_eq!(c.lines, vec![[1, 1]]);
    assert_eq!(c.present, vec![(0, 2)]);
    assert_eq!((c.start, c.end), (0.0, 10.0));
    // The next interval starts empty.
    assert_eq!(w.rules.take_counts(20.0, 1).lines, vec![[0, 0]]);
}

#[test]
fn jitter_on_the_line_counts_once() {
    let mut w = World::new(RulesConfig { lines: vec![gate()], ..RulesConfig::default() });
    let xs = [0.40, 0.45, 0.50, 0.50, 0.51, 0.50, 0.52, 0.60, 0.70];
    for (i, x) in xs.iter().enumerate() {
        w.frame(i as f64, &[at(*x, 0.5)]);
    }
    assert_eq!(w.count("line.cross"), 1, "{:?}", w.types());
}

#[test]
fn turning_back_counts_both_ways_and_passing_beyond_the_segment_counts_nothing() {
    let short = LineRule { a: p(0.5, 0.0), b: p(0.5, 0.5), ..gate() };
    let mut w = World::new(RulesConfig { lines: vec![short], ..RulesConfig::default() });
    // Below the segment's end (y = 0.5): no crossing.
    for (i, x) in [0.3, 0.4, 0.5, 0.6, 0.7].iter().enumerate() {
        w.frame(i as f64, &[at(*x, 0.9)]);
    }
    assert_eq!(w.count("line.cross"), 0);
    // Another person crosses east and comes back west above it.
    for (i, x) in [0.35, 0.4, 0.45, 0.55, 0.6, 0.55, 0.45, 0.4].iter().enumerate() {
        w.frame(10.0 + i as f64, &[at(0.9, 0.9), at(*x, 0.3)]);
    }
    let dirs: Vec<usize> = w
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::LineCross { direction, .. } => Some(direction),
            _ => None,
        })
        .collect();
    assert_eq!(dirs, vec![0, 1], "{:?}", w.types());
}

#[test]
fn zone_visits_enter_loiter_once_and_exit_when_leaving_or_ending() {
    let bench = ZoneRule { loiter: Some(Duration::from_secs(5)), ..zone("bench", 0.1, 0.5) };
    let mut w = World::new(RulesConfig { zones: vec![bench], ..RulesConfig::default() });
    // Walk in, stay 8 s, walk out.
    let mut t = 0.0;
    for x in [0.6, 0.55, 0.45, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.45, 0.55, 0.6] {
        w.frame(t, &[at(x, 0.8)]);
        t += 1.0;
    }
    // Back in, then lost inside.
    w.frame(t, &[at(0.45, 0.8)]);
    w.frame(t + 1.0, &[at(0.4, 0.8)]);
    for k in 2..7 {
        w.frame(t + k as f64, &[]);
    }
    let zone_types: Vec<&str> = w.types().into_iter().filter(|t| t.starts_with("zone.")).collect();
    assert_eq!(zone_types, vec!["zone.enter", "zone.loiter", "zone.exit", "zone.enter", "zone.exit"]);
    let loiter = w.events.iter().find(|e| matches!(e.kind, EventKind::ZoneLoiter { .. })).expect("loiter");
    assert_eq!(loiter.t, 7.0, "entered at 2, loitering from 5 s later");
    // The exit on loss is dated when the object was last seen, before its end.
    let last_two: Vec<(&str, f64)> = w.events.iter().rev().take(2).map(|e| (e.kind.type_name(), e.t)).collect();
    assert_eq!(last_two, vec![("object.end", t + 1.0), ("zone.exit", t + 1.0)]);
    let end = w.events.last().and_then(|e| e.object.clone()).expect("end");
    assert_eq!(end.zones, vec![0]);
    assert!(end.in_zones.is_empty());
}

#[test]
fn crowding_fires_above_max_objects_and_clears_at_or_below() {
    let plaza = ZoneRule { max_objects: Some(1), ..zone("plaza", 0.0, 1.0) };
    let mut w = World::new(RulesConfig { zones: vec![plaza], ..RulesConfig::default() });
    w.frame(0.0, &[at(0.2, 0.8)]);
    w.frame(1.0, &[at(0.2, 0.8), at(0.7, 0.8)]);
    w.frame(2.0, &[at(0.2, 0.8), at(0.7, 0.8)]);
    w.frame(3.0, &[at(0.2, 0.8), at(0.7, 0.8), at(0.45, 0.6)]);
    w.frame(4.0, &[at(0.2, 0.8), at(0.7, 0.8), at(0.45, 0.6)]);
    for k in 5..10 {
        w.frame(k as f64, &[at(0.2, 0.8)]);
    }
    let crowd: Vec<(&str, f64)> = w
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::ZoneCrowded { count, .. } | EventKind::ZoneCrowdCleared { count, .. } => {
                Some((e.kind.type_name(), count as f64))
            }
            _ => None,
        })
        .collect();
    assert_eq!(crowd, vec![("zone.crowded", 2.0), ("zone.crowd_cleared", 1.0)]);
    assert_eq!(w.rules.take_counts(10.0, 1).zones, vec![1]);
}

#[test]
fn zones_and_lines_ignore_classes_they_do_not_list() {
    let cars_only = ZoneRule { classes: vec![1], ..zone("road", 0.0, 1.0) };
    let line = LineRule { classes: vec![1], ..gate() };
    let mut w = World::new(RulesConfig { zones: vec![cars_only], lines: vec![line], ..RulesConfig::default() });
    for i in 0..8 {
        w.frame(i as f64, &[at(0.2 + 0.1 * i as f32, 0.8)]);
    }
    assert_eq!(w.count("zone.enter") + w.count("line.cross"), 0, "{:?}", w.types());
}

#[test]
fn counts_split_crossings_and_occupancy_by_class() {
    let car =
        |x: f32, y: f32| Detection { class_id: 2, score: 0.8, bbox: BBox { x: x - 0.05, y: y - 0.1, w: 0.1, h: 0.1 } };
    let cfg = RulesConfig { zones: vec![zone("right", 0.5, 1.0)], lines: vec![gate()], ..RulesConfig::default() };
    let mut w = World::new(cfg);
    // A person and a car both cross eastwards and end up in the right half; another person
    // walks west and stays in the left half.
    for i in 0..10 {
        let d = 0.06 * i as f32;
        w.frame(i as f64, &[at(0.2 + d, 0.9), car(0.25 + d, 0.7), at(0.8 - d, 0.6)]);
    }
    let c = w.rules.take_counts(10.0, 3);
    assert_eq!(c.lines, vec![[2, 1]]);
    assert_eq!(c.line_classes, vec![BTreeMap::from([(0, [1, 1]), (2, [1, 0])])]);
    assert_eq!(c.zones, vec![2]);
    assert_eq!(c.zone_classes, vec![BTreeMap::from([(0, 1), (2, 1)])]);
    assert_eq!(c.present, vec![(0, 2), (1, 0), (2, 1)]);
    // Crossings start again with the interval; occupancy is a state and stays.
    let next = w.rules.take_counts(20.0, 3);
    assert_eq!(next.line_classes, vec![BTreeMap::new()]);
    assert_eq!(next.zone_classes, c.zone_classes);
}

#[test]
fn updates_follow_zone_changes_and_the_update_interval() {
    let cfg = RulesConfig {
        zones: vec![zone("left", 0.0, 0.5)],
        update_interval: Some(Duration::from_secs(3)),
        ..RulesConfig::default()
    };
    let mut w = World::new(cfg);
    for i in 0..10 {
        w.frame(i as f64, &[at(0.32 + 0.04 * i as f32, 0.8)]);
    }
    let updates: Vec<f64> = w.events.iter().filter(|e| e.kind == EventKind::ObjectUpdate).map(|e| e.t).collect();
    // Confirmed at 1 (new, inside "left"); 4 by interval; exit at x = 0.52 (t = 5); 8 by interval.
    assert_eq!(updates, vec![4.0, 5.0, 8.0]);
    // Without an interval, only the zone change.
    let mut w = World::new(RulesConfig { zones: vec![zone("left", 0.0, 0.5)], ..RulesConfig::default() });
    for i in 0..10 {
        w.frame(i as f64, &[at(0.32 + 0.04 * i as f32, 0.8)]);
    }
    assert_eq!(w.count("object.update"), 1);
}

#[test]
fn an_object_starting_inside_a_zone_is_new_then_enters() {
    let mut w = World::new(RulesConfig { zones: vec![zone("left", 0.0, 0.5)], ..RulesConfig::default() });
    w.frame(0.0, &[at(0.2, 0.8)]);
    w.frame(1.0, &[at(0.2, 0.8)]);
    assert_eq!(w.types(), vec!["object.new", "zone.enter"]);
    let new = w.events[0].object.as_ref().expect("object");
    assert_eq!(new.in_zones, vec![0], "object.new already lists the zone it starts in");
    w.finish(2.0);
    assert_eq!(w.types()[2..], ["zone.exit", "object.end"]);
}

#[test]
fn paths_stay_short_and_keep_both_ends() {
    let mut w = World::new(RulesConfig::default());
    for i in 0..100 {
        w.frame(i as f64 * 0.2, &[at(0.1 + 0.008 * i as f32, 0.8)]);
    }
    w.finish(20.0);
    let end = w.events.iter().find(|e| e.kind == EventKind::ObjectEnd).and_then(|e| e.object.clone()).expect("end");
    assert!(end.path.len() <= PATH_POINTS && end.path.len() >= PATH_POINTS / 2, "{}", end.path.len());
    let (first, last) = (end.path[0], end.path[end.path.len() - 1]);
    assert!((first.x - 0.108).abs() < 1e-4, "first point is where it was confirmed: {first:?}");
    assert!((last.x - (0.1 + 0.008 * 99.0)).abs() < 1e-4, "{last:?}");
    // Ordered along the walk.
    assert!(end.path.windows(2).all(|w| w[0].x < w[1].x));
}

impl World {
    fn reconfigure(&mut self, t: f64, next: RulesConfig) -> Vec<RuleEvent> {
        let left = self.rules.leave_changed_zones(&next, t);
        self.rules.replace_config(next);
        left
    }
}

#[test]
fn a_live_change_keeps_unchanged_zones_and_pairs_every_enter_of_a_changed_one_with_an_exit() {
    let cfg = RulesConfig { zones: vec![zone("left", 0.0, 0.5), zone("right", 0.5, 1.0)], ..RulesConfig::default() };
    let mut w = World::new(cfg);
    w.frame(0.0, &[at(0.2, 0.8), at(0.8, 0.8)]);
    w.frame(1.0, &[at(0.2, 0.8), at(0.8, 0.8)]);
    assert_eq!(w.count("zone.enter"), 2);
    let ids: Vec<u64> = w.rules.objects().map(|t| t.id).collect();
    let right_one = w.rules.objects().find(|t| t.bbox.x > 0.5).map(|t| t.id).expect("the object on the right");
    // "left" is unchanged; "right" moves; "new" is added.
    let next = RulesConfig {
        zones: vec![zone("left", 0.0, 0.5), zone("right", 0.6, 1.0), zone("new", 0.7, 0.9)],
        ..RulesConfig::default()
    };
    let left = w.reconfigure(1.5, next);
    let exits: Vec<(usize, u64)> = left
        .iter()
        .map(|e| match e.kind {
            EventKind::ZoneExit { zone } => (zone, e.object.as_ref().map_or(0, |o| o.track.id)),
            ref k => panic!("only exits of the changed zone, got {k:?}"),
        })
        .collect();
    assert_eq!(exits, vec![(1, right_one)], "the one inside the changed zone leaves it, under its old index");
    w.events.clear();
    w.frame(2.0, &[at(0.2, 0.8), at(0.8, 0.8)]);
    assert_eq!(w.rules.objects().map(|t| t.id).collect::<Vec<_>>(), ids, "tracks go on");
    let entered: Vec<usize> = w
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::ZoneEnter { zone } => Some(zone),
            _ => None,
        })
        .collect();
    assert_eq!(entered, vec![1, 2], "no second enter into the unchanged zone; the changed and the new one start fresh");
    assert_eq!(w.rules.take_counts(3.0, 1).zones, vec![1, 1, 1]);
}

#[test]
fn a_moved_line_counts_from_the_next_move_and_the_interval_keeps_its_crossings() {
    let mut w = World::new(RulesConfig { lines: vec![gate()], ..RulesConfig::default() });
    for (i, x) in [0.3, 0.45, 0.55, 0.6].into_iter().enumerate() {
        w.frame(i as f64, &[at(x, 0.8)]);
    }
    assert_eq!(w.count("line.cross"), 1);
    // The line moves to x = 0.7, ahead of the walker (at 0.6), and a second line comes.
    let moved = LineRule { a: p(0.7, 0.0), b: p(0.7, 1.0), ..gate() };
    let other = LineRule { name: "other".into(), ..gate() };
    assert!(w.reconfigure(3.5, RulesConfig { lines: vec![moved, other], ..RulesConfig::default() }).is_empty());
    for (i, x) in [0.65, 0.75, 0.8].into_iter().enumerate() {
        w.frame(4.0 + i as f64, &[at(x, 0.8)]);
    }
    let crossed: Vec<usize> = w
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::LineCross { line, .. } => Some(line),
            _ => None,
        })
        .collect();
    assert_eq!(crossed, vec![0, 0], "the moved line counts the walker once more; the new one (behind it) never");
    assert_eq!(w.rules.take_counts(7.0, 1).lines, vec![[2, 0], [0, 0]], "the interval's first crossing is kept");
}

#[test]
fn a_changed_crowded_zone_is_cleared_at_the_change() {
    let plaza = ZoneRule { max_objects: Some(0), ..zone("plaza", 0.0, 1.0) };
    let mut w = World::new(RulesConfig { zones: vec![plaza], ..RulesConfig::default() });
    w.frame(0.0, &[at(0.2, 0.8)]);
    w.frame(1.0, &[at(0.2, 0.8)]);
    assert_eq!(w.count("zone.crowded"), 1);
    let roomier = ZoneRule { max_objects: Some(3), ..zone("plaza", 0.0, 1.0) };
    let types: Vec<&str> = w
        .reconfigure(1.5, RulesConfig { zones: vec![roomier], ..RulesConfig::default() })
        .iter()
        .map(|e| e.kind.type_name())
        .collect();
    assert_eq!(types, vec!["zone.exit", "zone.crowd_cleared"]);
    w.events.clear();
    w.frame(2.0, &[at(0.2, 0.8)]);
    assert_eq!(w.types(), vec!["zone.enter", "object.update"], "back in under the new definition, not crowded");
}
