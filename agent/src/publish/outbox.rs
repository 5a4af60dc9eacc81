//! The durable outbox: every message that carries a `seq` is appended here before it is
//! published and forgotten only after the broker's PUBACK. After a reconnect or a restart
//! everything unacknowledged is published again, oldest first, byte for byte as first
//! written. Synchronous, plain `std` I/O: callers run it off the async workers.
//!
//! # On-disk format
//!
//! The directory holds:
//!
//! - `<first_seq:020>.seg`: segment files, records back to back in seq order. A segment
//!   is named after the first seq written into it. Only the newest (active) segment is
//!   appended to; it rolls when the next record would take it past `segment_bytes` (a
//!   larger record gets a segment of its own).
//! - `state`: 24 bytes, replaced atomically (write `state.tmp`, fsync, rename):
//!   `b"LKS1"`, watermark u64, next seq u64, CRC-32 of the preceding 20 bytes (u32). Every
//!   seq ≤ watermark is done: acknowledged, or dropped and reported as a gap. The next seq
//!   is kept so seq never goes backwards, even once every segment has been deleted.
//! - `lock`: held with an exclusive `flock` while open, so two agents never share a
//!   directory.
//!
//! A record, integers little-endian:
//!
//! ```text
//! offset size
//!  0      4   magic        b"LKO1" (the last byte is the format version)
//!  4      4   len          length of the body (bytes 12..12+len)
//!  8      4   crc          CRC-32 (IEEE) of the len field and the body
//! 12      8   seq
//! 20      8   created_ms   unix ms at append, for max_age
//! 28      2   topic_len
//! 30          topic (UTF-8), then the payload up to the end of the body
//! ```
//!
//! The magic lets recovery resynchronise after damage: it scans forward byte by byte for
//! the next magic whose length and CRC check out, so one bad record never hides the ones
//! after it. The CRC covers the length too, so a damaged length cannot pass as a shorter
//! or longer record.
//!
//! # Crash guarantees
//!
//! - Process crash (kill -9, panic, OOM): no appended record is lost. An append is a
//!   single `write()` with no user-space buffering, so it is in the kernel when
//!   [`Outbox::append`] returns. Acks since the last [`Outbox::sync`] may be forgotten:
//!   those records are published again (consumers de-duplicate by message id).
//! - Power cut: records appended since the last `sync()` may be lost or torn; everything
//!   synced before is intact. Damage is found by the CRC and skipped. A torn tail of the
//!   active segment is cut off; the record it held (the seq after the last intact one) is
//!   reported as a [`GapReason::Corrupt`] gap and its seq is never reused. If a torn tail
//!   held several records, only the first seq is known; the later ones' seqs may be
//!   reused. Callers that must never reuse a seq that left the process publish only up to
//!   [`Outbox::durable_seq`].
//! - Damage elsewhere (a scribbled record, a hole of zeros after a power cut) is skipped;
//!   the seqs it held are known from the intact records or segment names around it and
//!   reported as a `Corrupt` gap. Damage in seqs at or below the watermark is not reported:
//!   those were delivered already.
//! - Ack state and drops reach the disk in `sync()`, which also writes the `state` file
//!   before deleting any segment. Records dropped (gap announced) since the last `sync()`
//!   may be delivered after a crash after all; a gap means "not delivered by this run".
//!
//! # Bounds
//!
//! `max_bytes` bounds the bytes of unacknowledged records (headers included); when an
//! append would exceed it, [`OutboxFullPolicy`] decides. Records older than `max_age` go
//! in [`Outbox::expire`]. Acknowledged or dropped records stay on disk until their whole
//! segment is done (deleted in `sync()`), so with acks arriving in order (MQTT's case)
//! disk use stays below about `max_bytes + 2 × segment_bytes`. Every drop is reported by
//! [`Outbox::take_gaps`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

const MAGIC: [u8; 4] = *b"LKO1";
/// magic + len + crc.
const HEADER: usize = 12;
/// seq + created_ms + topic_len.
const BODY_FIXED: usize = 18;
/// Largest record body accepted. Also the largest length recovery believes, so a damaged
/// length field cannot send it looking far beyond the record.
pub const MAX_BODY: usize = 16 << 20;

const STATE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const STATE_MAGIC: [u8; 4] = *b"LKS1";
const STATE_LEN: usize = 24;
const SEGMENT_EXT: &str = ".seg";

/// 2020-01-01 in unix ms. A gateway without a real-time clock starts in 1970 until NTP
/// answers; records stamped before this are not expired by age, or the first NTP sync
/// would drop them all at once.
const CLOCK_SET_MS: u64 = 1_577_836_800_000;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("outbox {0} is in use by another process")]
    Locked(PathBuf),
    #[error("invalid outbox settings: {0}")]
    Config(&'static str),
    #[error("message of {bytes} bytes does not fit in the outbox (at most {max} bytes)")]
    TooLarge { bytes: u64, max: u64 },
    #[error("topic of {0} bytes is longer than 65535 bytes")]
    TopicTooLong(usize),
    /// Not an I/O failure: the outbox is full under [`OutboxFullPolicy::DropNewest`]. The
    /// seq is used up and reported as a [`GapReason::Full`] gap; do not publish the message.
    #[error("outbox full: message seq {seq} refused (full_policy drop_newest) and reported as a gap")]
    Refused { seq: u64 },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Created if missing.
    pub dir: PathBuf,
    /// Bytes of unacknowledged records (headers included) the outbox may hold.
    pub max_bytes: u64,
    /// Unacknowledged records older than this are dropped by [`Outbox::expire`].
    pub max_age: Duration,
    /// A segment file rolls when the next record would take it past this.
    pub segment_bytes: u64,
    pub full_policy: OutboxFullPolicy,
}

impl OutboxConfig {
    /// Gateway defaults: 256 MiB, 7 days, 8 MiB segments, drop oldest.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(7 * 24 * 3600),
            segment_bytes: 8 << 20,
            full_policy: OutboxFullPolicy::DropOldest,
        }
    }
}

/// What happens when an append would take the unacknowledged bytes past `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutboxFullPolicy {
    /// Drop the oldest unacknowledged records until the new one fits: fresh data matters
    /// more than old data on a long outage.
    #[default]
    DropOldest,
    /// Refuse the new record ([`OutboxError::Refused`]): keeps the start of an outage.
    DropNewest,
}

/// An unacknowledged record, as appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Seqs `first..=last` (all of them, `count` = last - first + 1) will never be delivered
/// by this run of the agent, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub first: u64,
    pub last: u64,
    pub count: u64,
    pub reason: GapReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// Dropped to respect `max_bytes`.
    Full,
    /// Older than `max_age`.
    Expired,
    /// Damaged on disk (torn by a power cut, or corrupted).
    Corrupt,
}

/// What [`Outbox::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Unacknowledged records, to be published again.
    pub pending: u64,
    /// Unacknowledged records lost to damage (each reported as a `Corrupt` gap).
    pub corrupt_records: u64,
    /// Bytes cut from the end of the active segment (an incomplete last write).
    pub torn_bytes: u64,
}

/// Counters since [`Outbox::open`], except the first two and `next_seq`, which are current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    pub pending_records: u64,
    pub pending_bytes: u64,
    /// Records reported in gaps (full, expired, corrupt).
    pub dropped_total: u64,
    pub appended_total: u64,
    pub acked_total: u64,
    pub next_seq: u64,
    /// Size of the segment files, acknowledged records not yet deleted included.
    pub disk_bytes: u64,
}

/// Where an unacknowledged record lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    created_ms: u64,
}

struct Segment {
    /// Opened for reading and appending; only the active segment is appended to.
    file: File,
    len: u64,
    /// Unacknowledged records in it; at 0 the segment can go (unless it is the active one).
    live: u64,
    /// Written since the last fsync.
    dirty: bool,
    /// A failed write left its length unknown: never append to it again.
    sealed: bool,
}

pub struct Outbox {
    cfg: OutboxConfig,
    _lock: File,
    /// By first seq; the last one is the active segment.
    segments: BTreeMap<u64, Segment>,
    /// Unacknowledged records, so `pending()` reads exactly what it returns.
    index: BTreeMap<u64, Loc>,
    pending_bytes: u64,
    next_seq: u64,
    /// Every record below this seq has been fsynced.
    durable_next: u64,
    /// Watermark in the `state` file.
    persisted_watermark: u64,
    /// `next_seq` moved past what the segments and watermark show (refusals, a torn tail).
    seq_dirty: bool,
    /// A segment was created since the directory was last fsynced.
    dir_dirty: bool,
    gaps: Vec<Gap>,
    /// Seqs `pending()` (which only has `&self`) found damaged; turned into gaps by the
    /// next `&mut self` call.
    unreadable: Mutex<Vec<u64>>,
    dropped_total: u64,
    appended_total: u64,
    acked_total: u64,
    sync_on_drop: bool,
}

impl Outbox {
    /// Opens (or creates) the outbox in `cfg.dir` and recovers it: scans every segment,
    /// cuts a torn tail off the active segment, skips damaged records (reported as
    /// `Corrupt` gaps, see [`Outbox::take_gaps`]) and indexes what is unacknowledged.
    pub fn open(cfg: OutboxConfig) -> Result<(Outbox, OpenReport), OutboxError> {
        if cfg.max_bytes == 0 || cfg.segment_bytes == 0 {
            return Err(OutboxError::Config("max_bytes and segment_bytes must be above 0"));
        }
        fs::create_dir_all(&cfg.dir).map_err(io_at(&cfg.dir))?;
        let lock_path = cfg.dir.join("lock");
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OutboxError::Locked(cfg.dir.clone())),
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
        }
        let tmp = cfg.dir.join(STATE_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&tmp)(e)),
        }
        let (watermark, state_next) = read_state(&cfg.dir)?;
        let names = list_segments(&cfg.dir)?;

        let mut ob = Outbox {
            cfg,
            _lock: lock,
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            pending_bytes: 0,
            next_seq: 1,
            durable_next: 1,
            persisted_watermark: watermark,
            seq_dirty: false,
            dir_dirty: false,
            gaps: Vec::new(),
            unreadable: Mutex::new(Vec::new()),
            dropped_total: 0,
            appended_total: 0,
            acked_total: 0,
            sync_on_drop: true,
        };
        let mut rec = Recovery { watermark, expect: 1, last_seq: 0, damaged: false, report: OpenReport::default() };
        for (i, &first) in names.iter().enumerate() {
            ob.recover_segment(first, i + 1 == names.len(), &mut rec)?;
        }
        ob.next_seq = rec.expect.max(watermark + 1).max(state_next);
        ob.seq_dirty = ob.next_seq != state_next;
        // After a process crash the page cache may still hold unsynced records: make them
        // durable before anyone publishes them.
        for (&first, seg) in &mut ob.segments {
            seg.file.sync_data().map_err(io_at(&segment_path(&ob.cfg.dir, first)))?;
            seg.dirty = false;
        }
        ob.durable_next = ob.next_seq;
        ob.collect()?;
        rec.report.pending = ob.index.len() as u64;
        Ok((ob, rec.report))
    }

    fn recover_segment(&mut self, first: u64, is_last: bool, rec: &mut Recovery) -> Result<(), OutboxError> {
        let path = segment_path(&self.cfg.dir, first);
        let mut file = OpenOptions::new().read(true).append(true).open(&path).map_err(io_at(&path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_at(&path))?;
        // Damage at the end of the previous segment held the seqs up to this one's name.
        if rec.damaged && first > rec.expect {
            self.lost(rec, rec.expect, first - 1);
        }
        rec.damaged = false;
        rec.expect = rec.expect.max(first);
        let mut seg = Segment { file, len: data.len() as u64, live: 0, dirty: false, sealed: false };
        for found in scan(&data) {
            match found {
                Scanned::Record { offset, len, seq, created_ms } => {
                    if seq <= rec.last_seq {
                        // Out of order: not something we wrote here. Ignore it.
                        continue;
                    }
                    if rec.damaged {
                        self.lost(rec, rec.expect, seq - 1);
                        rec.damaged = false;
                    }
                    rec.expect = seq + 1;
                    rec.last_seq = seq;
                    if seq > rec.watermark {
                        self.index.insert(seq, Loc { segment: first, offset, len, created_ms });
                        seg.live += 1;
                        self.pending_bytes += u64::from(len);
                    }
                }
                Scanned::Damaged { start, end } if is_last && end == data.len() as u64 => {
                    // Torn tail: the write of the record after the last intact one. Cut it off
                    // so appends continue from clean bytes; its seq is lost, never reused.
                    seg.file.set_len(start).map_err(io_at(&path))?;
                    seg.len = start;
                    rec.report.torn_bytes += end - start;
                    self.lost(rec, rec.expect, rec.expect);
                    rec.expect += 1;
                }
                Scanned::Damaged { .. } => rec.damaged = true,
            }
        }
        self.segments.insert(first, seg);
        Ok(())
    }

    /// Records seqs `first..=last` lost to damage, leaving out those already done.
    fn lost(&mut self, rec: &mut Recovery, first: u64, last: u64) {
        let first = first.max(rec.watermark + 1);
        if first <= last {
            rec.report.corrupt_records += last - first + 1;
            for seq in first..=last {
                self.gap(seq, GapReason::Corrupt);
            }
        }
    }

    /// Assigns the next seq, builds the payload with it and appends the record with one
    /// `write()`. Enforces `max_bytes` with the policy; drops show in [`Outbox::take_gaps`].
    /// On `TooLarge`, `TopicTooLong` or an I/O error the seq is not used up (the next
    /// append gets it again); on `Refused` it is, and reported as a gap.
    pub fn append(&mut self, topic: &str, build: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, OutboxError> {
        self.append_at(topic, build, SystemTime::now())
    }

    fn append_at(
        &mut self,
        topic: &str,
        build: impl FnOnce(u64) -> Vec<u8>,
        now: SystemTime,
    ) -> Result<u64, OutboxError> {
        self.absorb_unreadable();
        if topic.len() > usize::from(u16::MAX) {
            return Err(OutboxError::TopicTooLong(topic.len()));
        }
        let seq = self.next_seq;
        let payload = build(seq);
        let body_len = BODY_FIXED + topic.len() + payload.len();
        let rec_len = (HEADER + body_len) as u64;
        let max = self.cfg.max_bytes.min((HEADER + MAX_BODY) as u64);
        if rec_len > max {
            return Err(OutboxError::TooLarge { bytes: rec_len, max });
        }
        if self.pending_bytes + rec_len > self.cfg.max_bytes {
            match self.cfg.full_policy {
                OutboxFullPolicy::DropNewest => {
                    self.next_seq += 1;
                    self.seq_dirty = true;
                    self.gap(seq, GapReason::Full);
                    return Err(OutboxError::Refused { seq });
                }
                OutboxFullPolicy::DropOldest => {
                    while self.pending_bytes + rec_len > self.cfg.max_bytes {
                        let Some((&oldest, _)) = self.index.first_key_value() else { break };
                        self.forget(oldest);
                        self.gap(oldest, GapReason::Full);
                    }
                }
            }
        }
        let buf = encode(seq, unix_ms(now), topic, &payload);
        let roll = match self.segments.last_key_value() {
            None => true,
            Some((_, s)) => s.sealed || (s.len > 0 && s.len + rec_len > self.cfg.segment_bytes),
        };
        if roll {
            self.roll(seq)?;
        }
        let Some((&first, seg)) = self.segments.iter_mut().next_back() else {
            return Err(io_at(&self.cfg.dir)(io::Error::other("no active segment after roll")));
        };
        let offset = seg.len;
        if let Err(e) = seg.file.write_all(&buf) {
            // A partial record must not sit in front of the next one: cut it off, or, if
            // even that fails, never append to this segment again (offsets would be wrong).
            seg.dirty = true;
            if seg.file.set_len(offset).is_err() {
                seg.sealed = true;
            }
            return Err(io_at(&segment_path(&self.cfg.dir, first))(e));
        }
        seg.len += rec_len;
        seg.live += 1;
        seg.dirty = true;
        self.index.insert(seq, Loc { segment: first, offset, len: rec_len as u32, created_ms: unix_ms(now) });
        self.pending_bytes += rec_len;
        self.appended_total += 1;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Starts a new active segment whose first record will be `seq`.
    fn roll(&mut self, seq: u64) -> Result<(), OutboxError> {
        // The old segment reaches the disk before anything of the new one can, so a power
        // cut never leaves a silently shortened segment in front of a newer one.
        if let Some((&first, seg)) = self.segments.iter_mut().next_back()
            && seg.dirty
        {
            seg.file.sync_data().map_err(io_at(&segment_path(&self.cfg.dir, first)))?;
            seg.dirty = false;
        }
        let path = segment_path(&self.cfg.dir, seq);
        let file = OpenOptions::new().read(true).append(true).create_new(true).open(&path).map_err(io_at(&path))?;
        self.segments.insert(seq, Segment { file, len: 0, live: 0, dirty: false, sealed: false });
        self.dir_dirty = true;
        Ok(())
    }

    /// Makes everything appended so far durable (fsync of the segments written since the
    /// last sync and of the directory when segments were created), then writes the ack
    /// state and deletes fully done segments. Does nothing when nothing changed, so it is
    /// cheap to call on a timer. Call it after acks too: that is when segments are freed.
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        self.absorb_unreadable();
        for (&first, seg) in &mut self.segments {
            if seg.dirty {
                seg.file.sync_data().map_err(io_at(&segment_path(&self.cfg.dir, first)))?;
                seg.dirty = false;
            }
        }
        if self.dir_dirty {
            sync_dir(&self.cfg.dir)?;
            self.dir_dirty = false;
        }
        self.durable_next = self.next_seq;
        self.collect()
    }

    /// Whether [`Outbox::sync`] has anything to do.
    pub fn needs_sync(&self) -> bool {
        self.dir_dirty
            || self.state_stale()
            || self.segments.values().any(|s| s.dirty)
            || self.done_segments().next().is_some()
    }

    fn state_stale(&self) -> bool {
        self.seq_dirty || self.watermark() != self.persisted_watermark
    }

    /// Segments with nothing unacknowledged left, except the active one unless it is empty.
    fn done_segments(&self) -> impl Iterator<Item = u64> + '_ {
        let active = self.segments.last_key_value().map(|(&k, _)| k);
        self.segments.iter().filter(move |&(&k, s)| s.live == 0 && (Some(k) != active || s.len == 0)).map(|(&k, _)| k)
    }

    /// Writes the ack state if it changed, then deletes the segments that are done.
    fn collect(&mut self) -> Result<(), OutboxError> {
        let done: Vec<u64> = self.done_segments().collect();
        if done.is_empty() && !self.state_stale() {
            return Ok(());
        }
        self.write_state()?;
        if done.is_empty() {
            return Ok(());
        }
        // The new state must be on disk before the segments disappear, or a power cut
        // could leave neither to tell where seq stood.
        sync_dir(&self.cfg.dir)?;
        for first in done {
            let path = segment_path(&self.cfg.dir, first);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&path)(e)),
            }
            self.segments.remove(&first);
        }
        Ok(())
    }

    fn write_state(&mut self) -> Result<(), OutboxError> {
        let watermark = self.watermark();
        let mut buf = Vec::with_capacity(STATE_LEN);
        buf.extend_from_slice(&STATE_MAGIC);
        buf.extend_from_slice(&watermark.to_le_bytes());
        buf.extend_from_slice(&self.next_seq.to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&buf).to_le_bytes());
        let tmp = self.cfg.dir.join(STATE_TMP);
        let mut f = File::create(&tmp).map_err(io_at(&tmp))?;
        f.write_all(&buf).map_err(io_at(&tmp))?;
        f.sync_data().map_err(io_at(&tmp))?;
        drop(f);
        let path = self.cfg.dir.join(STATE);
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        self.persisted_watermark = watermark;
        self.seq_dirty = false;
        Ok(())
    }

    /// Every seq at or below this is done: the seq before the first pending record, or the
    /// last seq used when nothing is pending.
    fn watermark(&self) -> u64 {
        match self.index.first_key_value() {
            Some((&seq, _)) => seq - 1,
            None => self.next_seq - 1,
        }
    }

    /// Unacknowledged records with seq > `after_seq`, oldest first, at most `max`. Reads
    /// the files (records appended but not yet synced included). A record that no longer
    /// checks out is skipped and reported as a `Corrupt` gap.
    pub fn pending(&self, after_seq: u64, max: usize) -> Result<Vec<Record>, OutboxError> {
        let mut out = Vec::new();
        for (&seq, loc) in self.index.range((Bound::Excluded(after_seq), Bound::Unbounded)) {
            if out.len() >= max {
                break;
            }
            let mut buf = vec![0; loc.len as usize];
            let read = match self.segments.get(&loc.segment) {
                Some(seg) => seg.file.read_exact_at(&mut buf, loc.offset),
                None => Err(io::ErrorKind::UnexpectedEof.into()),
            };
            match read {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(io_at(&segment_path(&self.cfg.dir, loc.segment))(e)),
            }
            match decode(&buf) {
                Some(r) if r.seq == seq => out.push(r),
                _ => {
                    warn!(seq, segment = loc.segment, "outbox record damaged on disk; dropping it");
                    self.unreadable.lock().unwrap_or_else(|e| e.into_inner()).push(seq);
                }
            }
        }
        Ok(out)
    }

    /// Marks `seq` delivered. Idempotent; unknown or already done seqs are ignored. Memory
    /// only: the next [`Outbox::sync`] records it on disk.
    pub fn ack(&mut self, seq: u64) -> Result<(), OutboxError> {
        self.absorb_unreadable();
        if self.forget(seq).is_some() {
            self.acked_total += 1;
        }
        Ok(())
    }

    /// Drops unacknowledged records older than `max_age` at `now` (gap `Expired`).
    pub fn expire(&mut self, now: SystemTime) -> Result<(), OutboxError> {
        self.absorb_unreadable();
        let max_age = u64::try_from(self.cfg.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = unix_ms(now).saturating_sub(max_age);
        let old: Vec<u64> = self
            .index
            .iter()
            .filter(|(_, l)| l.created_ms >= CLOCK_SET_MS && l.created_ms < cutoff)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in old {
            self.forget(seq);
            self.gap(seq, GapReason::Expired);
        }
        Ok(())
    }

    /// Gaps recorded since the last call, oldest first, for the caller to announce.
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        self.absorb_unreadable();
        std::mem::take(&mut self.gaps)
    }

    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            pending_records: self.index.len() as u64,
            pending_bytes: self.pending_bytes,
            dropped_total: self.dropped_total,
            appended_total: self.appended_total,
            acked_total: self.acked_total,
            next_seq: self.next_seq,
            disk_bytes: self.segments.values().map(|s| s.len).sum(),
        }
    }

    pub fn first_pending_seq(&self) -> Option<u64> {
        self.index.first_key_value().map(|(&seq, _)| seq)
    }

    /// Every record with a seq at or below this has reached the disk (fsync).
    pub fn durable_seq(&self) -> u64 {
        self.durable_next - 1
    }

    /// `sync()`, reporting its error; dropping the outbox does the same but can only log.
    pub fn close(mut self) -> Result<(), OutboxError> {
        self.sync_on_drop = false;
        self.sync()
    }

    /// Removes `seq` from the pending records.
    fn forget(&mut self, seq: u64) -> Option<Loc> {
        let loc = self.index.remove(&seq)?;
        self.pending_bytes -= u64::from(loc.len);
        if let Some(seg) = self.segments.get_mut(&loc.segment) {
            seg.live -= 1;
        }
        Some(loc)
    }

    /// Records one dropped seq, extending the last gap when it continues it.
    fn gap(&mut self, seq: u64, reason: GapReason) {
        self.dropped_total += 1;
        if let Some(g) = self.gaps.last_mut()
            && g.reason == reason
            && g.last + 1 == seq
        {
            g.last = seq;
            g.count += 1;
            return;
        }
        self.gaps.push(Gap { first: seq, last: seq, count: 1, reason });
    }

    fn absorb_unreadable(&mut self) {
        let bad = std::mem::take(self.unreadable.get_mut().unwrap_or_else(|e| e.into_inner()));
        for seq in bad {
            if self.forget(seq).is_some() {
                self.gap(seq, GapReason::Corrupt);
            }
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.sync_on_drop
            && let Err(e) = self.sync()
        {
            warn!(error = %e, "cannot sync the outbox while closing it; acks since the last sync may be replayed");
        }
    }
}

struct Recovery {
    watermark: u64,
    /// The seq the next record should have.
    expect: u64,
    last_seq: u64,
    /// Damage seen since the last intact record.
    damaged: bool,
    report: OpenReport,
}

enum Scanned {
    Record { offset: u64, len: u32, seq: u64, created_ms: u64 },
    Damaged { start: u64, end: u64 },
}

/// Splits a segment into intact records and damaged stretches between them.
fn scan(data: &[u8]) -> Vec<Scanned> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        if let Some(p) = parse(&data[at..]) {
            out.push(Scanned::Record { offset: at as u64, len: p.len as u32, seq: p.seq, created_ms: p.created_ms });
            at += p.len;
            continue;
        }
        let start = at;
        at = resync(data, at + 1);
        out.push(Scanned::Damaged { start: start as u64, end: at as u64 });
    }
    out
}

/// The offset of the next intact record at or after `from`, or the end of `data`.
fn resync(data: &[u8], mut from: usize) -> usize {
    while let Some(pos) = data.get(from..).and_then(|rest| rest.windows(MAGIC.len()).position(|w| w == MAGIC)) {
        let candidate = from + pos;
        if parse(&data[candidate..]).is_some() {
            return candidate;
        }
        from = candidate + 1;
    }
    data.len()
}

struct Parsed {
    seq: u64,
    created_ms: u64,
    topic_len: usize,
    /// Whole record, header included.
    len: usize,
}

/// Checks the record at the start of `buf`.
fn parse(buf: &[u8]) -> Option<Parsed> {
    let header = buf.get(..HEADER)?;
    if header[..4] != MAGIC {
        return None;
    }
    let body_len = le_u32(header, 4) as usize;
    if !(BODY_FIXED..=MAX_BODY).contains(&body_len) {
        return None;
    }
    let body = buf.get(HEADER..HEADER + body_len)?;
    if crc(&header[4..8], body) != le_u32(header, 8) {
        return None;
    }
    let topic_len = usize::from(u16::from_le_bytes([body[16], body[17]]));
    if BODY_FIXED + topic_len > body_len {
        return None;
    }
    Some(Parsed { seq: le_u64(body, 0), created_ms: le_u64(body, 8), topic_len, len: HEADER + body_len })
}

/// The record filling `buf` exactly.
fn decode(buf: &[u8]) -> Option<Record> {
    let p = parse(buf)?;
    if p.len != buf.len() {
        return None;
    }
    let topic_start = HEADER + BODY_FIXED;
    let topic = std::str::from_utf8(&buf[topic_start..topic_start + p.topic_len]).ok()?;
    Some(Record { seq: p.seq, topic: topic.to_owned(), payload: buf[topic_start + p.topic_len..].to_vec() })
}

fn encode(seq: u64, created_ms: u64, topic: &str, payload: &[u8]) -> Vec<u8> {
    let body_len = BODY_FIXED + topic.len() + payload.len();
    let mut buf = Vec::with_capacity(HEADER + body_len);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&created_ms.to_le_bytes());
    buf.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    buf.extend_from_slice(topic.as_bytes());
    buf.extend_from_slice(payload);
    let crc = crc(&buf[4..8], &buf[HEADER..]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn crc(len_field: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_field);
    h.update(body);
    h.finalize()
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_EXT}"))
}

/// First seqs of the segment files, ascending; other files are left alone.
fn list_segments(dir: &Path) -> Result<Vec<u64>, OutboxError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_EXT)) else { continue };
        if stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(first) = stem.parse::<u64>()
        {
            names.push(first);
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// (watermark, next seq) from the `state` file; a fresh outbox has (0, 1).
fn read_state(dir: &Path) -> Result<(u64, u64), OutboxError> {
    let path = dir.join(STATE);
    let buf = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 1)),
        Err(e) => return Err(io_at(&path)(e)),
    };
    let intact = buf.len() == STATE_LEN
        && buf[..4] == STATE_MAGIC
        && crc32fast::hash(&buf[..STATE_LEN - 4]) == le_u32(&buf, STATE_LEN - 4);
    if !intact {
        // Only bit rot gets here (the file is replaced by rename). Without it every record
        // on disk is replayed: duplicates, which consumers absorb.
        warn!(path = %path.display(), "outbox state file is damaged; replaying every record on disk");
        return Ok((0, 1));
    }
    Ok((le_u64(&buf, 4), le_u64(&buf, 12).max(1)))
}

fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// A fresh, empty folder under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!("lookout-outbox-{tag}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const TOPIC: &str = "lookout/site-1/agent-1/detections/cam-1";

    /// Same length for every seq, so records have a known size ([`rec_len`]).
    fn payload(seq: u64) -> Vec<u8> {
        format!("{{\"seq\":{seq:08},\"detections\":[]}}").into_bytes()
    }

    fn rec_len() -> u64 {
        (HEADER + BODY_FIXED + TOPIC.len() + payload(1).len()) as u64
    }

    fn cfg(dir: &Path, max_bytes: u64, segment_bytes: u64, full_policy: OutboxFullPolicy) -> OutboxConfig {
        OutboxConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            max_age: Duration::from_secs(3600),
            segment_bytes,
            full_policy,
        }
    }

    fn open(c: &OutboxConfig) -> (Outbox, OpenReport) {
        Outbox::open(c.clone()).expect("open outbox")
    }

    fn append(ob: &mut Outbox) -> u64 {
        ob.append(TOPIC, payload).expect("append")
    }

    fn seqs(ob: &Outbox) -> Vec<u64> {
        ob.pending(0, usize::MAX).expect("pending").iter().map(|r| r.seq).collect()
    }

    /// Drops the outbox without its final sync, like a killed process (files closed,
    /// page cache kept).
    fn crash(mut ob: Outbox) {
        ob.sync_on_drop = false;
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(SEGMENT_EXT))
            .collect();
        names.sort();
        names
    }

    fn gap(first: u64, last: u64, reason: GapReason) -> Gap {
        Gap { first, last, count: last - first + 1, reason }
    }

    /// xorshift64*: deterministic randomness without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn replays_unacked_records_in_order_after_reopen() {
        let tmp = TempDir::new("replay");
        let c = cfg(&tmp.0, 1 << 20, 10 * rec_len(), OutboxFullPolicy::DropOldest);
        let (mut ob, report) = open(&c);
        assert_eq!(report, OpenReport::default());
        for i in 1..=100 {
            assert_eq!(append(&mut ob), i);
        }
        let mut acks: Vec<u64> = (1..=40).filter(|&s| s != 17).collect();
        acks.sort_by_key(|&s| (s * 7919) % 41);
        for s in acks {
            ob.ack(s).expect("ack");
        }
        // Idempotent; unknown seqs ignored.
        ob.ack(5).expect("ack");
        ob.ack(1000).expect("ack");
        assert_eq!(ob.stats().acked_total, 39);
        assert_eq!(ob.first_pending_seq(), Some(17));
        assert_eq!(seqs(&ob), std::iter::once(17).chain(41..=100).collect::<Vec<_>>());
        drop(ob);

        let (mut ob, report) = open(&c);
        // The watermark is 16. 18..=20 share 17's segment, so they come back as duplicates;
        // the segments of 21..=40 were wholly acknowledged and deleted.
        let want: Vec<u64> = (17..=20).chain(41..=100).collect();
        assert_eq!(report, OpenReport { pending: want.len() as u64, corrupt_records: 0, torn_bytes: 0 });
        let records = ob.pending(0, usize::MAX).expect("pending");
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), want);
        for r in &records {
            assert_eq!(r.topic, TOPIC);
            assert_eq!(r.payload, payload(r.seq));
        }
        let page: Vec<u64> = ob.pending(19, 4).expect("pending").iter().map(|r| r.seq).collect();
        assert_eq!(page, vec![20, 41, 42, 43]);
        assert_eq!(append(&mut ob), 101);
        assert!(ob.take_gaps().is_empty());
    }

    #[test]
    fn seq_never_goes_backwards_after_everything_is_acked_and_deleted() {
        let tmp = TempDir::new("seq");
        // One record per segment.
        let c = cfg(&tmp.0, 1 << 20, rec_len(), OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        for _ in 0..10 {
            append(&mut ob);
        }
        for s in 1..=10 {
            ob.ack(s).expect("ack");
        }
        ob.sync().expect("sync");
        assert_eq!(segment_files(&tmp.0), vec![format!("{:020}.seg", 10)], "only the active segment is kept");
        ob.close().expect("close");

        for f in segment_files(&tmp.0) {
            fs::remove_file(tmp.0.join(f)).expect("remove segment");
        }
        let (mut ob, report) = open(&c);
        assert_eq!(report.pending, 0);
        assert_eq!(ob.stats().next_seq, 11);
        assert_eq!(append(&mut ob), 11);
        crash(ob);
        let (mut ob, _) = open(&c);
        assert_eq!(seqs(&ob), vec![11]);
        assert_eq!(append(&mut ob), 12);
    }

    #[test]
    fn torn_tail_is_truncated_and_later_appends_survive() {
        let tmp = TempDir::new("torn");
        let c = cfg(&tmp.0, 1 << 20, 1 << 20, OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        for _ in 0..5 {
            append(&mut ob);
        }
        crash(ob);
        let seg = tmp.0.join(format!("{:020}.seg", 1));
        let len = fs::metadata(&seg).expect("stat").len();
        assert_eq!(len, 5 * rec_len());
        let f = OpenOptions::new().write(true).open(&seg).expect("open segment");
        f.set_len(len - 7).expect("tear the last record");
        drop(f);

        let (mut ob, report) = open(&c);
        assert_eq!(report, OpenReport { pending: 4, corrupt_records: 1, torn_bytes: rec_len() - 7 });
        assert_eq!(fs::metadata(&seg).expect("stat").len(), 4 * rec_len());
        let records = ob.pending(0, usize::MAX).expect("pending");
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert!(records.iter().all(|r| r.payload == payload(r.seq)));
        assert_eq!(ob.take_gaps(), vec![gap(5, 5, GapReason::Corrupt)]);
        // The torn record's seq is not reused.
        assert_eq!(append(&mut ob), 6);
        assert_eq!(append(&mut ob), 7);
        ob.close().expect("close");

        let (mut ob, report) = open(&c);
        assert_eq!(report, OpenReport { pending: 6, corrupt_records: 0, torn_bytes: 0 });
        assert_eq!(seqs(&ob), vec![1, 2, 3, 4, 6, 7]);
        assert!(ob.take_gaps().is_empty());
    }

    #[test]
    fn scribbled_record_is_skipped_without_losing_later_records() {
        let tmp = TempDir::new("scribble");
        let c = cfg(&tmp.0, 1 << 20, 1 << 20, OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        for _ in 0..10 {
            append(&mut ob);
        }
        ob.close().expect("close");
        let seg = tmp.0.join(format!("{:020}.seg", 1));
        let mut data = fs::read(&seg).expect("read segment");
        let r = rec_len() as usize;
        // Record 5: its body. Record 8: its magic, so recovery must hunt for the next one.
        data[4 * r + 40..4 * r + 46].fill(0xFF);
        data[7 * r..7 * r + 4].copy_from_slice(b"XXXX");
        fs::write(&seg, &data).expect("write segment");

        let (mut ob, report) = open(&c);
        assert_eq!(report, OpenReport { pending: 8, corrupt_records: 2, torn_bytes: 0 });
        assert_eq!(ob.take_gaps(), vec![gap(5, 5, GapReason::Corrupt), gap(8, 8, GapReason::Corrupt)]);
        let records = ob.pending(0, usize::MAX).expect("pending");
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 6, 7, 9, 10]);
        assert!(records.iter().all(|r| r.payload == payload(r.seq) && r.topic == TOPIC));
        assert_eq!(append(&mut ob), 11);
    }

    #[test]
    fn damage_at_a_segment_boundary_is_reported_by_seq() {
        let tmp = TempDir::new("boundary");
        let c = cfg(&tmp.0, 1 << 20, 3 * rec_len(), OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        for _ in 0..9 {
            append(&mut ob);
        }
        ob.close().expect("close");
        // The last record of segment 1 and the first of segment 4: only the names tell
        // which seqs they held.
        let r = rec_len() as usize;
        for (name, at) in [(1, 2 * r + 20), (4, 20)] {
            let seg = tmp.0.join(format!("{name:020}.seg"));
            let mut data = fs::read(&seg).expect("read segment");
            data[at] ^= 0x5A;
            fs::write(&seg, &data).expect("write segment");
        }
        let (mut ob, report) = open(&c);
        assert_eq!(report.corrupt_records, 2);
        assert_eq!(ob.take_gaps(), vec![gap(3, 4, GapReason::Corrupt)]);
        assert_eq!(seqs(&ob), vec![1, 2, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn drop_oldest_when_full_reports_exact_gap() {
        let tmp = TempDir::new("oldest");
        let c = cfg(&tmp.0, 10 * rec_len(), 4 * rec_len(), OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        for _ in 0..10 {
            append(&mut ob);
        }
        assert!(ob.take_gaps().is_empty());
        ob.ack(2).expect("ack");
        assert_eq!(append(&mut ob), 11, "fits in the room the ack made");
        assert!(ob.take_gaps().is_empty());
        for _ in 12..=15 {
            append(&mut ob);
        }
        // 1, 3, 4, 5 dropped; 2 was delivered, so it is not in any gap.
        assert_eq!(ob.take_gaps(), vec![gap(1, 1, GapReason::Full), gap(3, 5, GapReason::Full)]);
        assert_eq!(seqs(&ob), (6..=15).collect::<Vec<_>>());
        let stats = ob.stats();
        assert_eq!((stats.pending_bytes, stats.dropped_total), (10 * rec_len(), 4));
        ob.sync().expect("sync");
        assert_eq!(segment_files(&tmp.0).len(), 3, "segment 1..=4 is done and deleted");
        ob.close().expect("close");

        let (mut ob, report) = open(&c);
        assert_eq!(report.pending, 10);
        assert_eq!(seqs(&ob), (6..=15).collect::<Vec<_>>(), "dropped records do not come back");
        assert!(ob.take_gaps().is_empty());
    }

    #[test]
    fn drop_newest_policy_refuses_and_reports_gap() {
        let tmp = TempDir::new("newest");
        let c = cfg(&tmp.0, 3 * rec_len(), 1 << 20, OutboxFullPolicy::DropNewest);
        let (mut ob, _) = open(&c);
        for _ in 0..3 {
            append(&mut ob);
        }
        assert!(matches!(ob.append(TOPIC, payload), Err(OutboxError::Refused { seq: 4 })));
        assert!(matches!(ob.append(TOPIC, payload), Err(OutboxError::Refused { seq: 5 })));
        assert_eq!(ob.take_gaps(), vec![gap(4, 5, GapReason::Full)]);
        ob.ack(1).expect("ack");
        assert_eq!(append(&mut ob), 6);
        assert!(matches!(ob.append(TOPIC, payload), Err(OutboxError::Refused { seq: 7 })));
        assert_eq!(seqs(&ob), vec![2, 3, 6]);
        assert_eq!(ob.stats().dropped_total, 3);
        ob.close().expect("close");

        // The refused 7 is beyond every record on disk; the state file remembers it.
        let (mut ob, _) = open(&c);
        assert_eq!(seqs(&ob), vec![2, 3, 6]);
        ob.ack(2).expect("ack");
        assert_eq!(append(&mut ob), 8);
    }

    #[test]
    fn expired_records_are_dropped_and_reported() {
        let tmp = TempDir::new("expire");
        let c = cfg(&tmp.0, 1 << 20, 1 << 20, OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        let t0 = SystemTime::now();
        let hour = Duration::from_secs(3600);
        for _ in 0..3 {
            ob.append_at(TOPIC, payload, t0 - 2 * hour).expect("append");
        }
        for _ in 0..2 {
            ob.append_at(TOPIC, payload, t0).expect("append");
        }
        // Written while the clock still said 1970: kept until NTP gives a real age.
        ob.append_at(TOPIC, payload, UNIX_EPOCH + Duration::from_secs(60)).expect("append");

        ob.expire(t0).expect("expire");
        assert_eq!(ob.take_gaps(), vec![gap(1, 3, GapReason::Expired)]);
        ob.expire(t0 + hour - Duration::from_secs(1)).expect("expire");
        assert!(ob.take_gaps().is_empty());
        ob.expire(t0 + 10 * 24 * hour).expect("expire");
        assert_eq!(ob.take_gaps(), vec![gap(4, 5, GapReason::Expired)]);
        assert_eq!(seqs(&ob), vec![6]);
        assert_eq!(ob.stats().dropped_total, 5);
        ob.close().expect("close");

        let (ob, report) = open(&c);
        assert_eq!(report.pending, 1);
        assert_eq!(seqs(&ob), vec![6]);
    }

    #[test]
    fn fully_acked_segments_are_deleted() {
        let tmp = TempDir::new("delete");
        let c = cfg(&tmp.0, 1 << 20, 3 * rec_len(), OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        for _ in 0..12 {
            append(&mut ob);
        }
        let name = |s: u64| format!("{s:020}.seg");
        assert_eq!(segment_files(&tmp.0), vec![name(1), name(4), name(7), name(10)]);
        for s in (1..=6).rev() {
            ob.ack(s).expect("ack");
        }
        assert!(ob.needs_sync());
        ob.sync().expect("sync");
        assert!(!ob.needs_sync());
        assert_eq!(segment_files(&tmp.0), vec![name(7), name(10)]);
        assert_eq!(ob.stats().disk_bytes, 6 * rec_len());

        for s in 7..=12 {
            ob.ack(s).expect("ack");
        }
        ob.sync().expect("sync");
        assert_eq!(segment_files(&tmp.0), vec![name(10)], "the active segment stays");
        assert_eq!(append(&mut ob), 13);
        ob.sync().expect("sync");
        assert_eq!(segment_files(&tmp.0), vec![name(13)]);
        ob.close().expect("close");

        let (mut ob, report) = open(&c);
        assert_eq!(report.pending, 1);
        assert_eq!(append(&mut ob), 14);
    }

    #[test]
    fn crash_loses_no_append_and_replays_acks_since_the_last_sync() {
        let tmp = TempDir::new("crash");
        let c = cfg(&tmp.0, 1 << 20, 8 * rec_len(), OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        for _ in 0..20 {
            append(&mut ob);
        }
        ob.sync().expect("sync");
        assert_eq!(ob.durable_seq(), 20);
        for s in 1..=10 {
            ob.ack(s).expect("ack");
        }
        crash(ob);

        let (mut ob, _) = open(&c);
        assert_eq!(seqs(&ob), (1..=20).collect::<Vec<_>>(), "acks were not synced: sent again");
        for s in 1..=10 {
            ob.ack(s).expect("ack");
        }
        ob.sync().expect("sync");
        for _ in 0..5 {
            append(&mut ob);
        }
        assert_eq!(ob.durable_seq(), 20);
        crash(ob);

        let (ob, report) = open(&c);
        assert_eq!(report, OpenReport { pending: 15, corrupt_records: 0, torn_bytes: 0 });
        assert_eq!(seqs(&ob), (11..=25).collect::<Vec<_>>());
        assert_eq!(ob.durable_seq(), 25, "open makes what it found durable");
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let tmp = TempDir::new("lock");
        let c = OutboxConfig::new(&tmp.0);
        let (ob, _) = open(&c);
        assert!(matches!(Outbox::open(c.clone()), Err(OutboxError::Locked(_))));
        drop(ob);
        let (_ob, _) = open(&c);
    }

    #[test]
    fn oversized_records_are_refused_without_using_a_seq() {
        let tmp = TempDir::new("large");
        let c = cfg(&tmp.0, 4 * rec_len(), 1 << 20, OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        let big = ob.append(TOPIC, |_| vec![0; 4 * rec_len() as usize]);
        assert!(matches!(big, Err(OutboxError::TooLarge { .. })));
        let long_topic = "t".repeat(70_000);
        assert!(matches!(ob.append(&long_topic, payload), Err(OutboxError::TopicTooLong(70_000))));
        assert_eq!(append(&mut ob), 1);
    }

    /// Random appends, acks, syncs, reads, clean reopens and crashes against a model: no
    /// unacknowledged record is ever lost or altered, and seq only moves forward.
    #[test]
    fn random_operations_never_lose_or_alter_a_record() {
        let tmp = TempDir::new("model");
        let c = cfg(&tmp.0, 1 << 30, 700, OutboxFullPolicy::DropOldest);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let body = |seq: u64, n: u64| -> Vec<u8> { (0..n).map(|i| (seq.wrapping_mul(31) + i) as u8).collect() };
        let (mut ob, _) = open(&c);
        let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut last_seq = 0;
        for _ in 0..2000 {
            match rng.below(100) {
                0..45 => {
                    let n = rng.below(300);
                    let seq = ob.append("t/x", |s| body(s, n)).expect("append");
                    assert_eq!(seq, last_seq + 1);
                    last_seq = seq;
                    pending.insert(seq, body(seq, n));
                }
                45..75 => {
                    let seq = if pending.is_empty() || rng.below(10) == 0 {
                        rng.below(last_seq + 5)
                    } else {
                        *pending.keys().nth(rng.below(pending.len() as u64) as usize).expect("key")
                    };
                    ob.ack(seq).expect("ack");
                    if let Some(p) = pending.remove(&seq) {
                        acked.insert(seq, p);
                    }
                }
                75..85 => ob.sync().expect("sync"),
                85..92 => {
                    let after = rng.below(last_seq + 2);
                    let max = rng.below(20) as usize;
                    let got: Vec<(u64, Vec<u8>)> =
                        ob.pending(after, max).expect("pending").into_iter().map(|r| (r.seq, r.payload)).collect();
                    let want: Vec<(u64, Vec<u8>)> =
                        pending.range(after + 1..).take(max).map(|(&s, p)| (s, p.clone())).collect();
                    assert_eq!(got, want);
                }
                n => {
                    let first_pending = pending.keys().next().copied();
                    if n < 96 {
                        drop(ob);
                    } else {
                        crash(ob);
                    }
                    let (reopened, report) = open(&c);
                    ob = reopened;
                    assert_eq!((report.corrupt_records, report.torn_bytes), (0, 0));
                    assert!(ob.take_gaps().is_empty());
                    let got: BTreeMap<u64, Vec<u8>> =
                        ob.pending(0, usize::MAX).expect("pending").into_iter().map(|r| (r.seq, r.payload)).collect();
                    for (seq, p) in &pending {
                        assert_eq!(got.get(seq), Some(p), "pending seq {seq} must survive a reopen");
                    }
                    for (seq, p) in &got {
                        assert!(
                            pending.get(seq) == Some(p) || acked.get(seq) == Some(p),
                            "seq {seq} came from nowhere"
                        );
                    }
                    if n < 96 {
                        assert_eq!(got.keys().next().copied(), first_pending, "a clean close keeps the watermark");
                    }
                    assert_eq!(ob.stats().next_seq, last_seq + 1);
                    pending = got;
                }
            }
        }
    }

    /// Random byte flips across several segments: every untouched record is still returned
    /// intact, and every damaged seq is reported (only the first of a torn tail is known).
    #[test]
    fn random_damage_never_costs_an_intact_record() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let r = rec_len();
        for round in 0..30 {
            let tmp = TempDir::new(&format!("damage{round}"));
            let c = cfg(&tmp.0, 1 << 20, 8 * r, OutboxFullPolicy::DropOldest);
            let (mut ob, _) = open(&c);
            for _ in 0..40 {
                append(&mut ob);
            }
            ob.close().expect("close");
            let mut touched = BTreeSet::new();
            for _ in 0..=rng.below(4) {
                let seq = 1 + rng.below(40);
                let first = 1 + (seq - 1) / 8 * 8;
                let seg = tmp.0.join(format!("{first:020}.seg"));
                let mut data = fs::read(&seg).expect("read segment");
                let at = ((seq - first) * r + rng.below(r)) as usize;
                data[at] ^= 1 + rng.below(255) as u8;
                fs::write(&seg, &data).expect("write segment");
                touched.insert(seq);
            }
            let (mut ob, _) = open(&c);
            let got: Vec<u64> = seqs(&ob);
            let intact: Vec<u64> = (1..=40).filter(|s| !touched.contains(s)).collect();
            assert_eq!(got, intact, "round {round}, damaged {touched:?}");
            let reported: BTreeSet<u64> = ob.take_gaps().iter().flat_map(|g| g.first..=g.last).collect();
            let mut expected = touched.clone();
            // A damaged run reaching the end of the last segment is a torn tail: only its
            // first seq can be known.
            let mut s = 40;
            while touched.contains(&s) && touched.contains(&(s - 1)) && s > 33 {
                expected.remove(&s);
                s -= 1;
            }
            assert_eq!(reported, expected, "round {round}, damaged {touched:?}");
        }
    }
}
