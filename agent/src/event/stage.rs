//! The event stage of one camera: analysed frames → tracker → rules → messages, with
//! snapshots and interval counts. No I/O here: the caller appends what comes out to the
//! outbox, in order (a snapshot always precedes the event that references it).
//!
//! **Snapshot memory.** Per live track the stage keeps one JPEG of its best-scoring frame
//! (at most `max_side` px, typically 20–60 kB at 640 px), for at most
//! [`MAX_SNAPSHOT_TRACKS`] tracks per camera: 64 × a JPEG, a few MB in the worst case.
//! A JPEG is encoded only when a track's score beats its kept one by
//! [`SNAPSHOT_MIN_GAIN`], once per frame however many tracks improve in it. Raw frames
//! are never kept beyond the frame being processed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::snapshot::{self, Jpeg};
use super::{
    BBoxOut, COUNTS_SCHEMA, CountsMessage, EVENT_SCHEMA, EventMessage, IntervalOut, LineOut, ModelOut, ObjectOut,
    SnapshotRef, Topics, ZoneCountOut, ZoneOut, new_id, rfc3339_millis, round, to_json,
};
use crate::camera::ScoreThresholds;
use crate::config::SnapshotPolicy;
use crate::infer::Analysed;
use crate::infer::detection::BBox;
use crate::rules::{EventKind, ObjectView, RuleEvent, Rules, RulesConfig};
use crate::track::{TrackEvent, Tracker, TrackerConfig};

/// Most live tracks per camera holding a snapshot; later ones get theirs at `object.new`
/// only (from the frame at hand).
pub const MAX_SNAPSHOT_TRACKS: usize = 64;
/// A track's snapshot is replaced only by a frame scoring at least this much higher.
pub const SNAPSHOT_MIN_GAIN: f32 = 0.02;

/// What one camera's event stage needs to know.
#[derive(Debug, Clone)]
pub struct CameraSpec {
    pub id: String,
    pub scores: ScoreThresholds,
    pub lost_after: Duration,
    pub count_interval: Duration,
    pub rules: RulesConfig,
    pub snapshots: SnapshotPolicy,
    pub labels: Arc<[String]>,
    /// `[class_groups]` as class ids of this camera's model; groups without any left out.
    pub groups: Arc<[(String, Vec<u32>)]>,
    pub model: ModelOut,
}

/// What can change on a running camera without restarting its pipeline: its rules,
/// counting interval and snapshot settings (see [`CameraEvents::apply`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub rules: RulesConfig,
    pub count_interval: Duration,
    pub snapshots: SnapshotPolicy,
}

/// A message to append to the outbox.
#[derive(Debug, Clone)]
pub enum StageMessage {
    Event(Box<EventMessage>),
    Counts(Box<CountsMessage>),
    /// Raw JPEG bytes.
    Snapshot {
        topic: String,
        jpeg: Arc<Jpeg>,
    },
}

#[derive(Debug, Clone)]
struct Best {
    score: f32,
    t: f64,
    bbox: BBox,
    jpeg: Arc<Jpeg>,
}

impl StageMessage {
    pub fn topic(&self, topics: &Topics) -> String {
        match self {
            StageMessage::Event(m) => topics.events(&m.camera),
            StageMessage::Counts(m) => topics.counts(&m.camera),
            StageMessage::Snapshot { topic, .. } => topic.clone(),
        }
    }

    /// The payload numbered `seq`. An event referencing a snapshot also gets
    /// `snapshot_seq`: the `seq` its JPEG was appended with, just before it.
    pub fn into_payload(self, seq: u64, snapshot_seq: Option<u64>) -> Vec<u8> {
        match self {
            StageMessage::Event(mut m) => {
                m.seq = seq;
                // A snapshot the outbox could not take (larger than max_bytes, I/O error)
                // is not referenced.
                match snapshot_seq {
                    Some(ss) => {
                        if let Some(s) = m.snapshot.as_mut() {
                            s.seq = ss;
                        }
                    }
                    None => m.snapshot = None,
                }
                to_json(&m)
            }
            StageMessage::Counts(mut m) => {
                m.seq = seq;
                to_json(&m)
            }
            StageMessage::Snapshot { jpeg, .. } => jpeg.bytes.clone(),
        }
    }
}

/// One camera's tracker, rules, snapshots and counters.
pub struct CameraEvents {
    spec: CameraSpec,
    site: String,
    agent: String,
    topics: Topics,
    tracker: Tracker,
    rules: Rules,
    best: HashMap<u64, Best>,
    last_frame: Option<f64>,
    analysed: u64,
    next_count: f64,
    snapshot_failed: bool,
}

/// Seconds since the Unix epoch.
pub fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn time(t: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0))
}

fn ts(t: f64) -> String {
    rfc3339_millis(time(t))
}

/// First track id of a camera started at `now`: ids stay unique across restarts as
/// long as a run averages under a million new tracks per second, and below 2^53 (exact
/// in JSON doubles) until the year 2255.
pub fn first_track_id(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(1, |d| d.as_secs().max(1) * 1_000_000)
}

impl CameraEvents {
    /// `now` starts the first counting interval.
    pub fn new(spec: CameraSpec, site: &str, agent: &str, topics: Topics, now: SystemTime) -> Self {
        let tc = TrackerConfig {
            high: spec.scores.report,
            low: spec.scores.track_floor,
            lost_after: spec.lost_after,
            ..TrackerConfig::default()
        };
        let t0 = secs(now);
        Self {
            tracker: Tracker::with_first_id(tc, first_track_id(now)),
            rules: Rules::new(spec.rules.clone(), t0),
            next_count: t0 + spec.count_interval.as_secs_f64(),
            spec,
            site: site.to_string(),
            agent: agent.to_string(),
            topics,
            best: HashMap::new(),
            last_frame: None,
            analysed: 0,
            snapshot_failed: false,
        }
    }

    /// Live (confirmed) tracks.
    pub fn live_tracks(&self) -> usize {
        self.rules.objects().count()
    }

    /// Tracks held, tentative ones included (the motion gate stays open while any).
    pub fn held_tracks(&self) -> usize {
        self.tracker.len()
    }

    /// Confirmed tracks now (the console labels its boxes with their ids).
    pub fn tracks(&self) -> impl Iterator<Item = &crate::track::Track> {
        self.tracker.tracks()
    }

    /// One analysed frame.
    pub fn on_frame(&mut self, a: &Analysed) -> Vec<StageMessage> {
        let t = secs(a.captured);
        self.last_frame = Some(t);
        self.analysed += 1;
        if *a.model_version != *self.spec.model.version || *a.model_sha256 != *self.spec.model.sha256 {
            self.spec.model = ModelOut {
                name: a.model_name.to_string(),
                version: a.model_version.to_string(),
                sha256: a.model_sha256.to_string(),
            };
        }
        let track_events = self.tracker.update(t, &a.detections);
        self.keep_best_frames(t, a, &track_events);
        let rule_events = self.rules.update(t, &track_events);
        self.messages(rule_events, Some(a))
    }

    /// Periodic work at `now`: counts when due; ends the tracks of a camera that stopped
    /// delivering frames (they would otherwise never end).
    pub fn tick(&mut self, now: SystemTime) -> Vec<StageMessage> {
        let mut out = Vec::new();
        let lost = self.spec.lost_after.as_secs_f64();
        let n = secs(now);
        if let Some(last) = self.last_frame
            && n - last > lost
            && self.live_tracks() > 0
        {
            // As if an empty frame came just late enough: every confirmed track ends.
            let t = last + lost;
            let te = self.tracker.update(t, &[]);
            let re = self.rules.update(t, &te);
            out.extend(self.messages(re, None));
        }
        if n >= self.next_count {
            out.push(self.counts(n));
            let interval = self.spec.count_interval.as_secs_f64();
            self.next_count += interval;
            if self.next_count <= n {
                // Fell behind (suspended?): realign rather than burst.
                self.next_count = n + interval;
            }
        }
        out
    }

    /// Takes new rules, counting interval and snapshot settings while the camera runs:
    /// tracks go on, zones and lines change as [`Rules::leave_changed_zones`] and
    /// [`Rules::replace_config`] say, and the counting interval that runs keeps its start
    /// (it ends `count_interval` after it, at the next tick if that is past).
    pub fn apply(&mut self, live: LiveSettings, now: SystemTime) -> Vec<StageMessage> {
        let t = self.last_frame.map_or(secs(now), |last| last.max(secs(now)));
        let left = self.rules.leave_changed_zones(&live.rules, t);
        let out = self.messages(left, None);
        self.rules.replace_config(live.rules.clone());
        self.next_count += live.count_interval.as_secs_f64() - self.spec.count_interval.as_secs_f64();
        if !live.snapshots.enabled {
            self.best.clear();
        }
        self.spec.rules = live.rules;
        self.spec.count_interval = live.count_interval;
        self.spec.snapshots = live.snapshots;
        out
    }

    /// The camera stops: every track ends, and the counts of the partial interval.
    pub fn finish(&mut self, now: SystemTime) -> Vec<StageMessage> {
        let n = secs(now);
        let te = self.tracker.finish();
        let t = self.last_frame.unwrap_or(n);
        let re = self.rules.update(t, &te);
        let mut out = self.messages(re, None);
        out.push(self.counts(n));
        out
    }

    fn counts(&mut self, n: f64) -> StageMessage {
        let c = self.rules.take_counts(n, self.spec.labels.len());
        let cfg = self.rules.config();
        let label = |id: u32| self.spec.labels.get(id as usize).cloned().unwrap_or_else(|| format!("class_{id}"));
        let groups = &self.spec.groups;
        // The groups a rule counts: those with a class in its filter (all for no filter).
        let groups_of = |filter: &[u32]| -> Vec<&(String, Vec<u32>)> {
            groups.iter().filter(|(_, ids)| filter.is_empty() || ids.iter().any(|i| filter.contains(i))).collect()
        };
        let sum = |by_class: &BTreeMap<u32, usize>, ids: &[u32]| -> usize {
            ids.iter().map(|i| by_class.get(i).copied().unwrap_or(0)).sum()
        };
        let present: BTreeMap<u32, usize> = c.present.iter().copied().collect();
        let dirs = |l: &crate::rules::LineRule, n: [u64; 2]| -> BTreeMap<String, u64> {
            [(l.directions[0].clone(), n[0]), (l.directions[1].clone(), n[1])].into_iter().collect()
        };
        let mut line_classes = BTreeMap::new();
        let mut line_groups = BTreeMap::new();
        for (l, by_class) in cfg.lines.iter().zip(&c.line_classes) {
            let mut per = BTreeMap::new();
            for id in &l.classes {
                per.insert(label(*id), dirs(l, [0, 0]));
            }
            for (id, n) in by_class {
                per.insert(label(*id), dirs(l, *n));
            }
            line_classes.insert(l.name.clone(), per);
            let per_group = groups_of(&l.classes)
                .into_iter()
                .map(|(g, ids)| {
                    let n = ids.iter().filter_map(|i| by_class.get(i)).fold([0, 0], |a, b| [a[0] + b[0], a[1] + b[1]]);
                    (g.clone(), dirs(l, n))
                })
                .collect();
            line_groups.insert(l.name.clone(), per_group);
        }
        let zones = cfg
            .zones
            .iter()
            .zip(c.zones.iter().zip(&c.zone_classes))
            .map(|(z, (n, by_class))| {
                let mut classes: BTreeMap<String, usize> = z.classes.iter().map(|id| (label(*id), 0)).collect();
                classes.extend(by_class.iter().map(|(id, n)| (label(*id), *n)));
                let groups =
                    groups_of(&z.classes).into_iter().map(|(g, ids)| (g.clone(), sum(by_class, ids))).collect();
                (z.name.clone(), ZoneCountOut { occupancy: *n, classes, groups })
            })
            .collect();
        let msg = CountsMessage {
            schema: COUNTS_SCHEMA,
            id: new_id(),
            seq: 0,
            ts: ts(c.end),
            site: self.site.clone(),
            agent: self.agent.clone(),
            camera: self.spec.id.clone(),
            model: self.spec.model.clone(),
            interval: IntervalOut {
                start: ts(c.start),
                end: ts(c.end),
                seconds: ((c.end - c.start) * 1000.0).round() / 1000.0,
            },
            analysed_frames: std::mem::take(&mut self.analysed),
            classes: c.present.iter().map(|(id, n)| (label(*id), *n)).collect(),
            groups: groups.iter().map(|(g, ids)| (g.clone(), sum(&present, ids))).collect(),
            zones,
            lines: cfg.lines.iter().zip(&c.lines).map(|(l, n)| (l.name.clone(), dirs(l, *n))).collect(),
            line_classes,
            line_groups,
        };
        StageMessage::Counts(Box::new(msg))
    }

    /// Keeps, per confirmed track, a JPEG of its best frame so far.
    fn keep_best_frames(&mut self, t: f64, a: &Analysed, track_events: &[TrackEvent]) {
        let (Some(original), true) = (&a.original, self.spec.snapshots.enabled) else { return };
        let mut frame_jpeg: Option<Option<Arc<Jpeg>>> = None;
        for ev in track_events {
            let (TrackEvent::New(tr) | TrackEvent::Update(tr)) = ev else { continue };
            let improves = match self.best.get(&tr.id) {
                Some(b) => tr.score >= b.score + SNAPSHOT_MIN_GAIN,
                None => self.best.len() < MAX_SNAPSHOT_TRACKS,
            };
            if !improves {
                continue;
            }
            let jpeg = frame_jpeg.get_or_insert_with(|| self.encode(original));
            if let Some(j) = jpeg {
                self.best.insert(tr.id, Best { score: tr.score, t, bbox: tr.bbox, jpeg: j.clone() });
            }
        }
    }

    fn messages(&mut self, events: Vec<RuleEvent>, frame: Option<&Analysed>) -> Vec<StageMessage> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let id = new_id();
            let cfg = self.rules.config();
            let (zone, line) = match &ev.kind {
                EventKind::ZoneEnter { zone } | EventKind::ZoneExit { zone } => {
                    (Some(self.zone_out(*zone, None, None)), None)
                }
                EventKind::ZoneLoiter { zone, seconds } => (Some(self.zone_out(*zone, Some(*seconds), None)), None),
                EventKind::ZoneCrowded { zone, count } | EventKind::ZoneCrowdCleared { zone, count } => {
                    (Some(self.zone_out(*zone, None, Some(*count))), None)
                }
                EventKind::LineCross { line, direction } => {
                    let l = &cfg.lines[*line];
                    (None, Some(LineOut { name: l.name.clone(), direction: l.directions[*direction].clone() }))
                }
                EventKind::ObjectNew | EventKind::ObjectUpdate | EventKind::ObjectEnd => (None, None),
            };
            let mut snapshot = None;
            if let (EventKind::ObjectNew | EventKind::ObjectEnd, Some(obj), true) =
                (&ev.kind, &ev.object, self.spec.snapshots.enabled)
            {
                let tid = obj.track.id;
                let best =
                    if ev.kind == EventKind::ObjectEnd { self.best.remove(&tid) } else { self.best_or_now(tid, frame) };
                if let Some(b) = best {
                    let topic = self.topics.snapshot(&self.spec.id, &id);
                    snapshot = Some(SnapshotRef {
                        id: id.clone(),
                        topic: topic.clone(),
                        content_type: "image/jpeg",
                        width: b.jpeg.width,
                        height: b.jpeg.height,
                        ts: ts(b.t),
                        score: round(b.score, 4),
                        bbox: BBoxOut::from(b.bbox),
                        seq: 0,
                    });
                    out.push(StageMessage::Snapshot { topic, jpeg: b.jpeg });
                }
            }
            let msg = EventMessage {
                schema: EVENT_SCHEMA,
                id,
                seq: 0,
                ts: ts(ev.t),
                site: self.site.clone(),
                agent: self.agent.clone(),
                camera: self.spec.id.clone(),
                kind: ev.kind.type_name(),
                model: self.spec.model.clone(),
                object: ev.object.as_ref().map(|o| self.object_out(o)),
                zone,
                line,
                snapshot,
            };
            out.push(StageMessage::Event(Box::new(msg)));
        }
        out
    }

    /// The kept best frame of a new track, else (over the snapshot cap, or encoding
    /// failed before) one made from the frame at hand.
    fn best_or_now(&mut self, tid: u64, frame: Option<&Analysed>) -> Option<Best> {
        if let Some(b) = self.best.get(&tid) {
            return Some(b.clone());
        }
        let a = frame?;
        let jpeg = self.encode(a.original.as_ref()?)?;
        let tr = self.rules.objects().find(|t| t.id == tid)?;
        Some(Best { score: tr.score, t: secs(a.captured), bbox: tr.bbox, jpeg })
    }

    /// A snapshot of `original` per the camera's policy; a failure is logged once per camera.
    fn encode(&mut self, original: &crate::camera::Original) -> Option<Arc<Jpeg>> {
        let p = self.spec.snapshots;
        match snapshot::encode(original, p.max_side, p.quality) {
            Ok(j) => Some(Arc::new(j)),
            Err(e) => {
                if !std::mem::replace(&mut self.snapshot_failed, true) {
                    warn!(camera = %self.spec.id, error = %e, "cannot make a snapshot; events go without");
                }
                None
            }
        }
    }

    fn zone_out(&self, z: usize, seconds: Option<f64>, count: Option<usize>) -> ZoneOut {
        let zone = &self.rules.config().zones[z];
        ZoneOut {
            name: zone.name.clone(),
            seconds: seconds.map(|s| (s * 1000.0).round() / 1000.0),
            count,
            max_objects: count.and(zone.max_objects),
        }
    }

    fn object_out(&self, o: &ObjectView) -> ObjectOut {
        let tr = &o.track;
        let zones = &self.rules.config().zones;
        let names = |idx: &[usize]| idx.iter().filter_map(|&i| zones.get(i).map(|z| z.name.clone())).collect();
        ObjectOut {
            track_id: tr.id,
            class: self.spec.labels.get(tr.class_id as usize).cloned().unwrap_or_else(|| "unknown".into()),
            class_id: tr.class_id,
            groups: self
                .spec
                .groups
                .iter()
                .filter(|(_, ids)| ids.contains(&tr.class_id))
                .map(|(g, _)| g.clone())
                .collect(),
            score: round(tr.score, 4),
            bbox: BBoxOut::from(tr.bbox),
            first_seen: ts(tr.first_seen),
            last_seen: ts(tr.last_seen),
            dwell_seconds: ((tr.last_seen - tr.first_seen) * 1000.0).round() / 1000.0,
            best_score: round(tr.best_score, 4),
            zones: names(&o.zones),
            in_zones: names(&o.in_zones),
            path: o.path.iter().map(|p| [round(p.x, 4), round(p.y, 4)]).collect(),
        }
    }
}
