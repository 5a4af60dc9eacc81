//! The events thread: analysed frames in, messages appended to the outbox out. It owns
//! every camera's [`CameraEvents`] (cameras join and leave through [`EventsCtl`]), syncs
//! the outbox on its cadence and announces what the outbox dropped as `delivery.gap`
//! messages. Below it only delivery (`publish`) and the console's copies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use tracing::{error, warn};

use super::stage::{CameraEvents, LiveSettings, StageMessage};
use super::{Topics, detections_message, gap_message, snapshot};
use crate::camera::CameraCtx;
use crate::console::{self, ConsoleHub};
use crate::infer::Analysed;
use crate::latency::{STAGES, Stage};
use crate::publish::Delivery;
use crate::publish::gaps::{GapAnnouncer, Range};
use crate::publish::outbox::OutboxError;

/// Capacity of the inference → event channel, in analysed frames. When full, inference
/// waits (see `infer`).
pub const ANALYSED_CHANNEL: usize = 256;

/// Append times kept for the durable-stage histogram between two fsyncs.
const UNSYNCED_TIMINGS: usize = 4096;

/// Cameras joining and leaving the event thread.
pub enum EventsCtl {
    Add(Arc<CameraCtx>, Box<CameraEvents>),
    /// Ends the camera's tracks and sends its partial counts; ignored if the stage now
    /// belongs to a newer context of the same id.
    Remove(Arc<CameraCtx>),
    /// New rules, counting interval or snapshot settings for the running camera (no
    /// restart); ignored like `Remove` for a stage of another context.
    Apply(Arc<CameraCtx>, Box<LiveSettings>),
}

/// The event stage: analysed frames become messages appended to the outbox (per-frame
/// detections, then each camera's tracks, rules and snapshots; counts on their interval).
/// Syncs the outbox at most every `fsync` (0: after every message) and wakes the MQTT
/// task when more is on disk; expires old messages; announces every drop as `delivery.gap`.
/// At the end every camera's tracks end and its partial counts go out. The console keeps
/// copies of what it shows (see `console`).
#[allow(clippy::too_many_arguments)]
pub fn run(
    rx: Receiver<Analysed>,
    ctl: Receiver<EventsCtl>,
    delivery: &Delivery,
    topics: &Topics,
    site: &str,
    agent: &str,
    fsync: Duration,
    console: &ConsoleHub,
) {
    let mut stages: BTreeMap<String, (Arc<CameraCtx>, CameraEvents)> = BTreeMap::new();
    let mut last_tick = Instant::now();
    let mut gaps = GapAnnouncer::default();
    let mut last_sync = Instant::now();
    let mut last_expire = Instant::now();
    let mut last_announce: Option<Instant> = None;
    let mut sync_failures = 0u64;
    // When each analysed frame's messages were appended, until the fsync that makes them
    // durable (stage timings only: bounded, the oldest are forgotten first).
    let mut unsynced: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let mut open = true;
    while open {
        // Cameras joining and leaving (the supervisor); a leaving camera ends its tracks
        // and sends its partial counts, as at shutdown.
        while let Ok(c) = ctl.try_recv() {
            match c {
                EventsCtl::Add(ctx, stage) => {
                    stages.insert(ctx.id.clone(), (ctx, *stage));
                }
                EventsCtl::Remove(ctx) => {
                    if stages.get(&ctx.id).is_some_and(|(c, _)| Arc::ptr_eq(c, &ctx))
                        && let Some((ctx, mut stage)) = stages.remove(&ctx.id)
                    {
                        append_outgoing(delivery, &ctx, topics, stage.finish(SystemTime::now()), console);
                    }
                }
                EventsCtl::Apply(ctx, live) => {
                    if let Some((c, stage)) = stages.get_mut(&ctx.id)
                        && Arc::ptr_eq(c, &ctx)
                    {
                        append_outgoing(delivery, &ctx, topics, stage.apply(*live, SystemTime::now()), console);
                    }
                }
            }
        }
        match rx.recv_timeout(fsync.clamp(Duration::from_millis(10), Duration::from_secs(1))) {
            Ok(a) => {
                let messages_before = a.camera.stats.messages.load(Ordering::Relaxed);
                if a.detections.iter().any(|d| d.score >= a.camera.scores.report) {
                    let topic = topics.detections(&a.camera.id);
                    append(delivery, &a.camera, &topic, |seq| detections_message(&a, site, agent, seq));
                }
                // Frames analysed for a camera since removed (or replaced) have no stage.
                if let Some((ctx, stage)) = stages.get_mut(&a.camera.id)
                    && Arc::ptr_eq(ctx, &a.camera)
                {
                    append_outgoing(delivery, &a.camera, topics, stage.on_frame(&a), console);
                    a.camera.live_tracks.store(stage.held_tracks(), Ordering::Relaxed);
                    console.on_frame(&a, stage.tracks());
                }
                let appended = Instant::now();
                STAGES.record(Stage::Events, appended.saturating_duration_since(a.analysed_at).as_secs_f64());
                // Only a frame that appended something waits for an fsync.
                if a.camera.stats.messages.load(Ordering::Relaxed) != messages_before {
                    if unsynced.len() == UNSYNCED_TIMINGS {
                        unsynced.pop_front();
                    }
                    unsynced.push_back(appended);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        if last_tick.elapsed() >= Duration::from_millis(250) || !open {
            let now = SystemTime::now();
            for (ctx, stage) in stages.values_mut() {
                let outs = if open { stage.tick(now) } else { stage.finish(now) };
                append_outgoing(delivery, ctx, topics, outs, console);
                ctx.live_tracks.store(stage.held_tracks(), Ordering::Relaxed);
            }
            last_tick = Instant::now();
        }
        if last_expire.elapsed() >= Duration::from_secs(60) {
            if let Err(e) = delivery.outbox().expire(SystemTime::now()) {
                warn!(error = %e, "cannot expire old outbox records");
            }
            last_expire = Instant::now();
        }
        collect_gaps(delivery, &mut gaps);
        // Coalesce announcements: while the outbox is full each one costs a record.
        if !gaps.is_idle() && (!open || last_announce.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))) {
            announce_gaps(delivery, &mut gaps, topics, site, agent);
            last_announce = Some(Instant::now());
        }
        if !open {
            announce_remaining(delivery, &mut gaps, topics, site, agent);
        }
        let needs_sync = delivery.outbox().needs_sync();
        if needs_sync && (!open || last_sync.elapsed() >= fsync) {
            // Outside the outbox lock: async tasks keep acking and reading meanwhile.
            match delivery.sync() {
                Ok(()) => {
                    sync_failures = 0;
                    let synced = Instant::now();
                    for t in unsynced.drain(..) {
                        STAGES.record(Stage::Durable, synced.saturating_duration_since(t).as_secs_f64());
                    }
                }
                Err(e) => {
                    sync_failures += 1;
                    // Retried every interval: say so once, then now and then.
                    if sync_failures % 100 == 1 {
                        error!(error = %e, failures_in_a_row = sync_failures, "cannot sync the outbox to disk; nothing new is published until it works");
                    }
                }
            }
            last_sync = Instant::now();
            delivery.wake.notify_one();
        }
    }
}

/// Appends one message, counting it for its camera; returns its `seq` when it is in the
/// outbox. A message that used up its seq without being stored (refused when full, too
/// large, its write failed) is counted by the outbox and announced as a gap like any
/// other drop.
fn append(delivery: &Delivery, camera: &CameraCtx, topic: &str, build: impl FnOnce(u64) -> Vec<u8>) -> Option<u64> {
    match delivery.append(topic, build) {
        Ok(seq) => {
            camera.stats.messages.fetch_add(1, Ordering::Relaxed);
            Some(seq)
        }
        Err(OutboxError::Refused { seq }) => {
            warn!(camera = %camera.id, seq, "outbox full: message refused (full_policy = drop_newest)");
            None
        }
        Err(e @ OutboxError::WriteFailed { .. }) => {
            // A full or failing disk fails every append: log the first and then now and then.
            let failures = delivery.outbox().stats().write_failures_total;
            if failures % 100 == 1 {
                error!(camera = %camera.id, error = %e, write_failures_total = failures, "cannot write to the outbox; the messages are announced as lost");
            }
            None
        }
        Err(e) => {
            error!(camera = %camera.id, error = %e, "cannot append a message to the outbox");
            None
        }
    }
}

/// Appends a camera's messages in order; an event gets the `seq` of the snapshot
/// appended just before it. The console keeps a copy of events, counts and snapshots.
fn append_outgoing(
    delivery: &Delivery,
    camera: &CameraCtx,
    topics: &Topics,
    outs: Vec<StageMessage>,
    console: &ConsoleHub,
) {
    let mut snapshot_seq = None;
    // Width and height of a snapshot made smaller to fit, for the event that names it.
    let mut shrunk: Option<(u32, u32)> = None;
    let max_message = delivery.outbox().max_message_bytes();
    for mut out in outs {
        let is_snapshot = matches!(out, StageMessage::Snapshot { .. });
        match &mut out {
            StageMessage::Snapshot { topic, jpeg } => {
                shrunk = None;
                let room = max_message.saturating_sub(topic.len() as u64);
                if jpeg.bytes.len() as u64 > room {
                    match snapshot::shrink(jpeg, room as usize) {
                        Some(j) => {
                            shrunk = Some((j.width, j.height));
                            *jpeg = Arc::new(j);
                        }
                        None => {
                            // Left out: the event that follows goes without a snapshot.
                            warn!(camera = %camera.id, bytes = jpeg.bytes.len(), max = room, "snapshot too large for an MQTT message even made smaller; leaving it out");
                            snapshot_seq = None;
                            continue;
                        }
                    }
                }
            }
            StageMessage::Event(m) => {
                if let (Some((w, h)), Some(s)) = (shrunk.take(), m.snapshot.as_mut()) {
                    (s.width, s.height) = (w, h);
                }
            }
            StageMessage::Counts(_) => {}
        }
        let kind = console::MessageKind::of(&out);
        let mut kept = None;
        let seq = append(delivery, camera, &out.topic(topics), |seq| {
            let payload = out.into_payload(seq, snapshot_seq);
            kept = kind.wants_payload().then(|| payload.clone());
            payload
        });
        if seq.is_some() {
            console.on_message(&camera.id, kind, kept);
        }
        snapshot_seq = if is_snapshot { seq } else { None };
    }
}

/// Takes what the outbox dropped since the last call.
fn collect_gaps(delivery: &Delivery, gaps: &mut GapAnnouncer) {
    let mut outbox = delivery.outbox();
    for gap in outbox.take_gaps() {
        let reason = gap.reason.as_str();
        warn!(
            first_seq = gap.first,
            last_seq = gap.last,
            count = gap.count,
            reason,
            "messages dropped from the outbox"
        );
        gaps.dropped(gap.first, gap.last, reason);
    }
    let stats = outbox.stats();
    gaps.delivered_below(outbox.first_pending_seq().unwrap_or(stats.next_seq));
}

/// Last round: appending a gap message into a full outbox can drop older records (even
/// an earlier gap message); announce until nothing is left unannounced. Each round merges
/// ranges, so this settles in a few rounds.
fn announce_remaining(delivery: &Delivery, gaps: &mut GapAnnouncer, topics: &Topics, site: &str, agent: &str) {
    let mut rounds = 0;
    while !gaps.is_idle() && rounds < 16 {
        announce_gaps(delivery, gaps, topics, site, agent);
        rounds += 1;
    }
    if !gaps.is_idle() {
        // Only when the announcements outnumber what the full outbox holds; say so
        // rather than stop without a word.
        let left = gaps.take();
        let seqs: u64 = left.iter().map(Range::count).sum();
        error!(
            ranges = left.len(),
            seqs, "stopping with dropped messages not announced: the outbox cannot hold the gap messages"
        );
    }
}

/// Appends one `delivery.gap` message per range waiting to be announced.
fn announce_gaps(delivery: &Delivery, gaps: &mut GapAnnouncer, topics: &Topics, site: &str, agent: &str) {
    for r in gaps.take() {
        let Range { first, last, reason } = r;
        let appended =
            delivery.append(&topics.delivery(), |seq| gap_message(site, agent, seq, first, last, r.count(), reason));
        match appended {
            Ok(seq) => gaps.sent(seq, r),
            Err(e) => {
                // Refused or a failed write (its own seq is a new gap, merged with this
                // one when adjacent): kept here and tried again later, until the disk
                // takes it.
                warn!(error = %e, "cannot append the delivery.gap message yet");
                gaps.add(r);
            }
        }
    }
    collect_gaps(delivery, gaps);
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use super::*;
    use crate::publish::outbox::{Outbox, OutboxConfig, OutboxFullPolicy};

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// What a platform that received `got` can account for: delivered seqs and the ranges
    /// its gap messages announced.
    fn accounted(got: &[Vec<u8>]) -> (BTreeSet<u64>, Vec<(u64, u64)>) {
        let mut seqs = BTreeSet::new();
        let mut ranges = Vec::new();
        for p in got {
            let v: serde_json::Value = serde_json::from_slice(p).expect("json");
            seqs.insert(v["seq"].as_u64().expect("seq"));
            if v["type"] == "delivery.gap" {
                ranges.push((v["first_seq"].as_u64().expect("first"), v["last_seq"].as_u64().expect("last")));
            }
        }
        (seqs, ranges)
    }

    /// A small full outbox, a connection that comes and goes, acks in order, snapshots
    /// too large for the outbox: whatever the interleaving, once everything left is
    /// delivered, every seq up to the highest received arrived or was announced.
    #[test]
    fn every_seq_is_delivered_or_announced_under_a_full_outbox() {
        for case in 0..100u64 {
            let dir = std::env::temp_dir().join(format!("lookout-gapsim-{}-{case}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let mut cfg = OutboxConfig::new(&dir);
            cfg.max_bytes = 16384;
            cfg.segment_bytes = 4096;
            cfg.full_policy = OutboxFullPolicy::DropOldest;
            cfg.max_message_bytes = 16384;
            let (outbox, _) = Outbox::open(cfg).expect("open");
            let delivery = Delivery::new(outbox);
            let topics = Topics::new("s", "a");
            let mut gaps = GapAnnouncer::default();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (case + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let mut connected = false;
            let mut cursor = 0;
            let mut inflight: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
            let mut got: Vec<Vec<u8>> = Vec::new();
            let publish = |delivery: &Delivery, cursor: &mut u64, inflight: &mut VecDeque<(u64, Vec<u8>)>| {
                let outbox = delivery.outbox();
                let durable = outbox.durable_seq();
                let room = 10usize.saturating_sub(inflight.len());
                for r in outbox.pending(*cursor, room).expect("pending") {
                    if r.seq > durable {
                        break;
                    }
                    *cursor = r.seq;
                    inflight.push_back((r.seq, r.payload));
                }
            };
            let ack = |delivery: &Delivery, inflight: &mut VecDeque<(u64, Vec<u8>)>, got: &mut Vec<Vec<u8>>, n: u64| {
                for _ in 0..n {
                    let Some((seq, payload)) = inflight.pop_front() else { break };
                    got.push(payload);
                    delivery.outbox().ack(seq).expect("ack");
                }
            };
            for _ in 0..400 {
                match rng.below(20) {
                    0..=8 => {
                        // An event, or now and then a snapshot larger than the outbox.
                        let size = if rng.below(4) == 0 { 20_000 } else { 200 + rng.below(900) as usize };
                        let _ = delivery.append("t/events", |seq| {
                            let mut p = format!("{{\"seq\":{seq},\"pad\":\"").into_bytes();
                            p.resize(p.len() + size, b'x');
                            p.extend_from_slice(b"\"}");
                            p
                        });
                    }
                    9..=10 => delivery.sync().expect("sync"),
                    11..=12 if connected => publish(&delivery, &mut cursor, &mut inflight),
                    13..=14 if connected => {
                        let n = rng.below(5);
                        ack(&delivery, &mut inflight, &mut got, n)
                    }
                    15 => collect_gaps(&delivery, &mut gaps),
                    16..=17 => announce_gaps(&delivery, &mut gaps, &topics, "s", "a"),
                    18 => {
                        connected = !connected;
                        // What was in flight on the lost connection is sent again.
                        inflight.clear();
                        cursor = 0;
                    }
                    _ => {}
                }
            }
            collect_gaps(&delivery, &mut gaps);
            announce_remaining(&delivery, &mut gaps, &topics, "s", "a");
            delivery.sync().expect("sync");
            inflight.clear();
            cursor = 0;
            while delivery.outbox().stats().pending_records > 0 {
                publish(&delivery, &mut cursor, &mut inflight);
                ack(&delivery, &mut inflight, &mut got, 10);
            }
            assert!(gaps.is_idle(), "case {case}: ranges left unannounced: {:?}", gaps.take());
            let (seqs, ranges) = accounted(&got);
            let max = seqs.iter().next_back().copied().unwrap_or(0);
            let missing: Vec<u64> =
                (1..=max).filter(|s| !seqs.contains(s) && !ranges.iter().any(|(f, l)| (f..=l).contains(&s))).collect();
            assert!(missing.is_empty(), "case {case}: never delivered nor announced: {missing:?} of 1..={max}");
            // Ranges overlap, but only over dropped seqs: their union is the drop count.
            let announced: BTreeSet<u64> = ranges.iter().flat_map(|&(f, l)| f..=l).collect();
            assert_eq!(announced.len() as u64, delivery.outbox().stats().dropped_total, "case {case}");
            drop(delivery);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
