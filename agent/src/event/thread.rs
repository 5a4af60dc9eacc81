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

use super::stage::{CameraEvents, StageMessage};
use super::{Topics, detections_message, gap_message, snapshot};
use crate::camera::CameraCtx;
use crate::console::{self, ConsoleHub};
use crate::infer::Analysed;
use crate::publish::Delivery;
use crate::publish::gaps::{GapAnnouncer, Range};
use crate::publish::outbox::OutboxError;

/// Capacity of the inference → event channel, in analysed frames. When full, inference
/// waits (see `infer`).
pub const ANALYSED_CHANNEL: usize = 256;

/// Cameras joining and leaving the event thread.
pub enum EventsCtl {
    Add(Arc<CameraCtx>, Box<CameraEvents>),
    /// Ends the camera's tracks and sends its partial counts; ignored if the stage now
    /// belongs to a newer context of the same id.
    Remove(Arc<CameraCtx>),
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
            }
        }
        match rx.recv_timeout(fsync.clamp(Duration::from_millis(10), Duration::from_secs(1))) {
            Ok(a) => {
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
        // Last round: appending a gap message into a full outbox can drop older records
        // (even an earlier gap message); announce until nothing is left unannounced. Each
        // round merges ranges, so this settles in a few rounds.
        let mut rounds = 0;
        while !open && !gaps.is_idle() && rounds < 16 {
            announce_gaps(delivery, &mut gaps, topics, site, agent);
            rounds += 1;
        }
        let needs_sync = delivery.outbox().needs_sync();
        if needs_sync && (!open || last_sync.elapsed() >= fsync) {
            // Outside the outbox lock: async tasks keep acking and reading meanwhile.
            match delivery.sync() {
                Ok(()) => sync_failures = 0,
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
