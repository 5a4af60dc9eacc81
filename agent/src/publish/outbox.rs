//! The durable outbox: every message that carries a `seq` is appended here before it is
//! published and forgotten only after the broker's PUBACK. After a reconnect or a restart
//! everything unacknowledged is published again, oldest first, byte for byte as first
//! written. Synchronous, plain `std` I/O: callers run it off the async workers.
//!
//! One long file on purpose: the format, recovery, appends, syncs and deletion share one
//! set of invariants (when a record is durable, when a segment may go, which state copy
//! wins), and each part is checked against the others; its last third is tests.
//!
//! # On-disk format
//!
//! The directory holds:
//!
//! - `<first_seq:020>.seg`: segment files, records back to back in seq order. A segment
//!   is named after the first seq written into it. Only the newest (active) segment is
//!   appended to; it rolls when the next record would take it past `segment_bytes` (a
//!   larger record gets a segment of its own).
//! - `state.a`, `state.b`: two copies of the ack state, 32 bytes each, both written in
//!   place at every state write, one after the other (write, fsync, then the other):
//!   `b"LKS2"`, generation u64, watermark u64, next seq u64, CRC-32 of the preceding 28
//!   bytes (u32). The valid copy with the higher generation wins, so a torn or rotten copy
//!   leaves the other one, equal or one write older. Every seq ≤ watermark is done:
//!   acknowledged, or dropped and reported as a gap. The next seq is kept so seq never
//!   goes backwards, even once every segment has been deleted: segments are deleted only
//!   after both copies are written, so whichever single file is damaged, the other copy
//!   or the segments still on disk tell where seq stood. (`state`, the single
//!   24-byte `LKS1` file of earlier versions, is read once and replaced.)
//! - `<first_seq:020>.seg.unreadable`: a segment that could not be read at open (I/O
//!   error), moved aside for inspection; its seqs are reported as a `Corrupt` gap and
//!   seq continues past the most records its size could hold.
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
//!   active segment is cut off; the records it held (from the seq after the last intact
//!   one) are reported as a [`GapReason::Corrupt`] gap and their seqs are never reused:
//!   their count is unknown, so seq moves past as many as the damaged bytes could hold
//!   (one per 30 bytes, the smallest record), announcing seqs perhaps never used rather
//!   than reusing one. Callers that must never reuse a seq that left the process publish
//!   only up to [`Outbox::durable_seq`].
//! - Damage elsewhere (a scribbled record, a hole of zeros after a power cut) is skipped;
//!   the seqs it held are known from the intact records or segment names around it and
//!   reported as a `Corrupt` gap. Damage in seqs at or below the watermark is not reported:
//!   those were delivered already.
//! - Ack state and drops reach the disk in `sync()`, which also writes the state before
//!   deleting any segment. Records dropped (gap announced) since the last `sync()` may be
//!   delivered after a crash after all; a gap means "not delivered by this run".
//!
//! # Disk errors
//!
//! Nothing read from or written to the disk can stop the outbox or make it panic:
//!
//! - An append whose write fails (ENOSPC, EROFS, EIO, EMFILE…) still uses up its seq,
//!   which is reported as a [`GapReason::WriteFailed`] gap; a partial record is cut off
//!   again, or the segment is sealed and the next append starts a new one.
//! - A failed fsync (segment, directory or state) is retried by the next `sync()`;
//!   meanwhile [`Outbox::durable_seq`] stays where it was, so nothing new is published.
//!   The segment is sealed: Linux may have dropped the unsynced pages, so later records go
//!   to a fresh file whose fsync means something.
//! - A record that cannot be read (EIO on a bad sector) is skipped as `Corrupt`, like a
//!   damaged one; a segment that cannot be read at open is moved aside (see above).
//! - Failures are counted ([`OutboxStats`]); [`Outbox::health`] turns unhealthy after
//!   [`UNHEALTHY_AFTER`] failures in a row, and healthy again at the first success.
//!
//! [`Outbox::sync`] fsyncs while holding `&mut self`; a caller that shares the outbox
//! behind a lock uses [`Outbox::begin_sync`] / [`SyncJob::run`] / [`Outbox::finish_sync`]
//! instead, so the lock is never held across an fsync.
//!
//! # Bounds
//!
//! `max_bytes` bounds the bytes of unacknowledged records (headers included); when an
//! append would exceed it, [`OutboxFullPolicy`] decides. Records older than `max_age` go
//! in [`Outbox::expire`]. Acknowledged or dropped records stay on disk until their whole
//! segment is done (deleted in `sync()`), so with acks arriving in order (MQTT's case)
//! disk use stays below about `max_bytes + 2 × segment_bytes`. A message whose topic and
//! payload exceed `max_message_bytes` (what the transport can carry) is refused at append,
//! its seq reported as a [`GapReason::TooLarge`] gap, so no record can stall delivery.
//! Every drop is reported by [`Outbox::take_gaps`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// The smallest record: header and fixed body fields. Bounds how many records a segment
/// of a given size can hold.
const MIN_RECORD: u64 = (HEADER + BODY_FIXED) as u64;
/// Seqs above this are not something this code wrote (it would take 10^10 years at 10^9
/// messages a second): records or state claiming one are treated as damaged, which also
/// keeps every `seq + n` far from overflow.
const MAX_SEQ: u64 = 1 << 62;

/// The pre-two-copy state file, read once for an upgrade.
const LEGACY_STATE: &str = "state";
const LEGACY_STATE_TMP: &str = "state.tmp";
const LEGACY_STATE_MAGIC: [u8; 4] = *b"LKS1";
const LEGACY_STATE_LEN: usize = 24;
const STATE_FILES: [&str; 2] = ["state.a", "state.b"];
const STATE_MAGIC: [u8; 4] = *b"LKS2";
const STATE_LEN: usize = 32;
const SEGMENT_EXT: &str = ".seg";
const UNREADABLE_EXT: &str = ".unreadable";

/// Failures in a row (appends, or syncs) after which [`Outbox::health`] reports the disk.
pub const UNHEALTHY_AFTER: u64 = 3;

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
    /// The seq is used up and reported as a [`GapReason::TooLarge`] gap.
    #[error("message seq {seq} of {bytes} bytes is larger than allowed ({max} bytes); reported as a gap")]
    TooLarge { seq: u64, bytes: u64, max: u64 },
    /// The write failed; the seq is used up and reported as a [`GapReason::WriteFailed`] gap.
    #[error("message seq {seq} could not be written to {path} ({source}); reported as a gap")]
    WriteFailed { seq: u64, path: PathBuf, source: io::Error },
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
    /// Largest topic + payload accepted: what the transport can deliver.
    pub max_message_bytes: u64,
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
            max_message_bytes: MAX_BODY as u64,
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
    /// Damaged or unreadable on disk (torn by a power cut, corrupted, a bad sector).
    Corrupt,
    /// The append's write failed (disk full, read-only, I/O error).
    WriteFailed,
    /// Larger than `max_message_bytes` (or `max_bytes`): it could never be delivered.
    TooLarge,
}

impl GapReason {
    /// The `reason` of a `delivery.gap` message.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Full => "full",
            GapReason::Expired => "expired",
            GapReason::Corrupt => "corrupt",
            GapReason::WriteFailed => "write_failed",
            GapReason::TooLarge => "too_large",
        }
    }
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
    /// Segments that could not be read, moved aside (`.seg.unreadable`).
    pub unreadable_segments: u64,
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
    /// Appends whose write failed (each seq reported as a `WriteFailed` gap).
    pub write_failures_total: u64,
    /// Failed fsyncs or state writes (retried by the next sync).
    pub fsync_failures_total: u64,
    /// Records that could not be read back (I/O errors; reported as `Corrupt` gaps).
    pub read_failures_total: u64,
}

/// Where an unacknowledged record lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
    created_ms: u64,
}

/// The file operations a fault hook can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Open,
    Read,
    Write,
    Sync,
    Rename,
}

/// Decides, before each file operation, whether it fails instead: the seam through which
/// tests reach the error paths (disk full, read-only, bad sectors). `None` in production.
pub type FaultHook = Arc<dyn Fn(FileOp, &Path) -> io::Result<()> + Send + Sync>;

fn fault(hook: &Option<FaultHook>, op: FileOp, path: &Path) -> io::Result<()> {
    match hook {
        Some(h) => h(op, path),
        None => Ok(()),
    }
}

struct Segment {
    /// Opened for reading and appending; only the active segment is appended to.
    file: File,
    len: u64,
    /// Unacknowledged records in it; at 0 the segment can go (unless it is the active one).
    live: u64,
    /// Written since the last fsync.
    dirty: bool,
    /// A failed write left its length unknown, or a failed fsync its contents: never
    /// append to it again.
    sealed: bool,
}

pub struct Outbox {
    cfg: OutboxConfig,
    _lock: File,
    faults: Option<FaultHook>,
    /// By first seq; the last one is the active segment.
    segments: BTreeMap<u64, Segment>,
    /// Unacknowledged records, so `pending()` reads exactly what it returns.
    index: BTreeMap<u64, Loc>,
    pending_bytes: u64,
    next_seq: u64,
    /// Every record below this seq has been fsynced.
    durable_next: u64,
    /// Watermark in the newest state copy.
    persisted_watermark: u64,
    /// Generation of the newest state copy.
    state_gen: u64,
    /// `next_seq` moved past what the segments and watermark show (refusals, failed
    /// writes, a torn tail, an unreadable segment).
    seq_dirty: bool,
    /// A segment was created since the directory was last fsynced.
    dir_dirty: bool,
    /// The next state write goes to both copies (one is missing or damaged).
    rewrite_state: bool,
    /// The single state file of earlier versions is still there: removed once both
    /// copies are written.
    legacy_state: bool,
    gaps: Vec<Gap>,
    /// Seqs `pending()` (which only has `&self`) found damaged; turned into gaps by the
    /// next `&mut self` call.
    unreadable: Mutex<Vec<u64>>,
    dropped_total: u64,
    appended_total: u64,
    acked_total: u64,
    write_failures_total: u64,
    fsync_failures_total: u64,
    read_failures_total: AtomicU64,
    /// Failures since the last success, and the last one's text, for [`Outbox::health`].
    writes_failing: u64,
    syncs_failing: u64,
    /// The active segment was started while appends were failing.
    rolled_while_failing: bool,
    last_write_error: String,
    last_sync_error: String,
    sync_on_drop: bool,
}

impl Outbox {
    /// Opens (or creates) the outbox in `cfg.dir` and recovers it: scans every segment,
    /// cuts a torn tail off the active segment, skips damaged records (reported as
    /// `Corrupt` gaps, see [`Outbox::take_gaps`]), moves unreadable segments aside and
    /// indexes what is unacknowledged. Fails only when the directory itself cannot be
    /// used (not creatable, not listable, locked by another process).
    pub fn open(cfg: OutboxConfig) -> Result<(Outbox, OpenReport), OutboxError> {
        Self::open_with(cfg, None)
    }

    /// [`Outbox::open`] with every file operation first put to `faults`.
    pub fn open_with(cfg: OutboxConfig, faults: Option<FaultHook>) -> Result<(Outbox, OpenReport), OutboxError> {
        if cfg.max_bytes == 0 || cfg.segment_bytes == 0 || cfg.max_message_bytes == 0 {
            return Err(OutboxError::Config("max_bytes, segment_bytes and max_message_bytes must be above 0"));
        }
        fs::create_dir_all(&cfg.dir).map_err(io_at(&cfg.dir))?;
        let lock_path = cfg.dir.join("lock");
        // Read-only is enough for flock: a file system remounted read-only still opens.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .or_else(|_| File::open(&lock_path))
            .map_err(io_at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(OutboxError::Locked(cfg.dir.clone())),
            Err(fs::TryLockError::Error(e)) => return Err(io_at(&lock_path)(e)),
        }
        let tmp = cfg.dir.join(LEGACY_STATE_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %tmp.display(), error = %e, "cannot remove a stale state file"),
        }
        let state = read_state(&cfg.dir, &faults);
        let names = list_segments(&cfg.dir)?;

        let mut ob = Outbox {
            cfg,
            _lock: lock,
            faults,
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            pending_bytes: 0,
            next_seq: 1,
            durable_next: 1,
            persisted_watermark: state.watermark,
            state_gen: state.generation,
            seq_dirty: false,
            dir_dirty: false,
            rewrite_state: false,
            legacy_state: false,
            gaps: Vec::new(),
            unreadable: Mutex::new(Vec::new()),
            dropped_total: 0,
            appended_total: 0,
            acked_total: 0,
            write_failures_total: 0,
            fsync_failures_total: 0,
            read_failures_total: AtomicU64::new(0),
            writes_failing: 0,
            syncs_failing: 0,
            rolled_while_failing: false,
            last_write_error: String::new(),
            last_sync_error: String::new(),
            sync_on_drop: true,
        };
        let mut rec = Recovery {
            watermark: state.watermark,
            expect: 1,
            last_seq: 0,
            damaged: false,
            report: OpenReport::default(),
        };
        for (i, &first) in names.iter().enumerate() {
            let next_name = names.get(i + 1).copied();
            if let Err(e) = ob.recover_segment(first, next_name.is_none(), &mut rec) {
                ob.set_aside(first, next_name, state.next_seq, &mut rec, &e);
            }
        }
        ob.next_seq = rec.expect.max(state.watermark + 1).max(state.next_seq);
        ob.seq_dirty = ob.next_seq != state.next_seq;
        // A fresh or upgraded outbox, or one with a damaged copy, gets both copies now.
        ob.rewrite_state = !state.both_copies;
        ob.legacy_state = state.legacy;
        // After a process crash the page cache may still hold unsynced records: make them
        // durable before anyone publishes them (a failure leaves them to the next sync).
        ob.segments.values_mut().for_each(|s| s.dirty = true);
        ob.dir_dirty = true;
        if let Err(e) = ob.sync() {
            warn!(error = %e, "cannot sync the outbox at open; records found wait for a later sync");
        }
        rec.report.pending = ob.index.len() as u64;
        Ok((ob, rec.report))
    }

    /// A segment that cannot be read: renamed `*.seg.unreadable` (kept for inspection, out
    /// of the way of later opens), its seqs reported as `Corrupt`, and seq moved past the
    /// most records its size could hold, since some of them may have been published.
    fn set_aside(&mut self, first: u64, next_name: Option<u64>, state_next: u64, rec: &mut Recovery, e: &OutboxError) {
        let path = segment_path(&self.cfg.dir, first);
        self.segments.remove(&first);
        let len = fs::symlink_metadata(&path).map_or(0, |m| m.len());
        let aside = PathBuf::from(format!("{}{UNREADABLE_EXT}", path.display()));
        let moved = fault(&self.faults, FileOp::Rename, &path).and_then(|()| fs::rename(&path, &aside));
        match &moved {
            Ok(()) => {
                warn!(segment = %path.display(), moved_to = %aside.display(), error = %e, "outbox segment unreadable; moved aside, its messages are reported lost")
            }
            Err(re) => {
                warn!(segment = %path.display(), error = %e, rename_error = %re, "outbox segment unreadable and cannot be moved aside; skipping it")
            }
        }
        rec.report.unreadable_segments += 1;
        let first = first.clamp(1, MAX_SEQ);
        // Its seqs end before the next segment's name; for the last one, at most one per
        // smallest record (or what the state remembers, if more).
        let end = match next_name {
            Some(n) => n.min(MAX_SEQ),
            None => first.saturating_add(len.div_ceil(MIN_RECORD).max(1)).min(MAX_SEQ).max(state_next.min(MAX_SEQ)),
        };
        // Damage reported before this segment ends here: the seqs up to its name.
        if rec.damaged && first > rec.expect {
            self.lost(rec, rec.expect, first - 1);
        }
        rec.damaged = false;
        let from = rec.expect.max(first);
        if end > from {
            self.lost(rec, from, end - 1);
        }
        rec.expect = rec.expect.max(end);
        rec.last_seq = rec.last_seq.max(end - 1);
        self.seq_dirty = true;
    }

    fn recover_segment(&mut self, first: u64, is_last: bool, rec: &mut Recovery) -> Result<(), OutboxError> {
        let path = segment_path(&self.cfg.dir, first);
        let (file, data) = (|| {
            fault(&self.faults, FileOp::Open, &path)?;
            // Read-only if it must: a segment on a file system remounted read-only can
            // still be delivered (it is sealed below).
            let (mut file, writable) = match OpenOptions::new().read(true).append(true).open(&path) {
                Ok(f) => (f, true),
                Err(_) => (File::open(&path)?, false),
            };
            fault(&self.faults, FileOp::Read, &path)?;
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            Ok::<_, io::Error>(((file, writable), data))
        })()
        .map_err(io_at(&path))?;
        let (file, writable) = file;
        // Damage at the end of the previous segment held the seqs up to this one's name.
        if rec.damaged && first > rec.expect {
            self.lost(rec, rec.expect, first - 1);
        }
        rec.damaged = false;
        rec.expect = rec.expect.max(first);
        let mut seg = Segment { file, len: data.len() as u64, live: 0, dirty: false, sealed: !writable };
        for found in scan(&data) {
            match found {
                Scanned::Record { offset, len, seq, created_ms } => {
                    if seq <= rec.last_seq || seq < first {
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
                    // If it cannot be cut, nothing more is appended to this segment.
                    match fault(&self.faults, FileOp::Write, &path).and_then(|()| seg.file.set_len(start)) {
                        Ok(()) => seg.len = start,
                        Err(e) => {
                            warn!(segment = %path.display(), error = %e, "cannot cut a torn record off; sealing the segment");
                            seg.sealed = true;
                        }
                    }
                    rec.report.torn_bytes += end - start;
                    // Its seqs start at the next expected one; seq moves past as many
                    // records as the damaged bytes could have held, so none is reused.
                    let held = (end - start).div_ceil(MIN_RECORD).max(1);
                    self.lost(rec, rec.expect, rec.expect + held - 1);
                    rec.expect += held;
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
            self.gap_range(first, last, GapReason::Corrupt);
        }
    }

    /// Assigns the next seq, builds the payload with it and appends the record with one
    /// `write()`. Enforces `max_bytes` with the policy; drops show in [`Outbox::take_gaps`].
    /// Every outcome but `TopicTooLong` uses up the seq: `Refused`, `TooLarge` and
    /// `WriteFailed` report it as a gap, so no seq is ever silently missing.
    pub fn append(&mut self, topic: &str, build: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, OutboxError> {
        self.append_at(topic, build, SystemTime::now())
    }

    fn append_at(
        &mut self,
        topic: &str,
        build: impl FnOnce(u64) -> Vec<u8>,
        now: SystemTime,
    ) -> Result<u64, OutboxError> {
        let p = self.prepare_at(topic, build, now)?;
        if self.rolls_dirty(&p) {
            // Without a lock around us, the fsync before a roll can happen right here.
            if let Err(e) = self.sync() {
                warn!(error = %e, "cannot sync the outbox before starting a new segment");
            }
        }
        self.commit(p)
    }

    /// First half of an append: assigns the seq and builds the record, without writing it.
    /// A message too large uses up its seq (reported `TooLarge`). Between `prepare` and
    /// [`Outbox::commit`] nothing else may append.
    pub fn prepare(&mut self, topic: &str, build: impl FnOnce(u64) -> Vec<u8>) -> Result<Prepared, OutboxError> {
        self.prepare_at(topic, build, SystemTime::now())
    }

    fn prepare_at(
        &mut self,
        topic: &str,
        build: impl FnOnce(u64) -> Vec<u8>,
        now: SystemTime,
    ) -> Result<Prepared, OutboxError> {
        self.absorb_unreadable();
        if topic.len() > usize::from(u16::MAX) {
            return Err(OutboxError::TopicTooLong(topic.len()));
        }
        let seq = self.next_seq;
        let payload = build(seq);
        let body_len = BODY_FIXED + topic.len() + payload.len();
        let rec_len = (HEADER + body_len) as u64;
        let message = (topic.len() + payload.len()) as u64;
        let max = self.cfg.max_bytes.min((HEADER + MAX_BODY) as u64);
        if rec_len > max || message > self.cfg.max_message_bytes {
            self.use_seq(seq, GapReason::TooLarge);
            let (bytes, max) = if rec_len > max { (rec_len, max) } else { (message, self.cfg.max_message_bytes) };
            return Err(OutboxError::TooLarge { seq, bytes, max });
        }
        let created_ms = unix_ms(now);
        Ok(Prepared { seq, created_ms, buf: encode(seq, created_ms, topic, &payload) })
    }

    /// Whether committing `p` starts a new segment while the active one has unsynced
    /// writes: the caller then syncs first (see [`Outbox::commit`]).
    pub fn rolls_dirty(&self, p: &Prepared) -> bool {
        match self.segments.last_key_value() {
            None => false,
            Some((_, s)) => s.dirty && self.would_roll(s, p.buf.len() as u64),
        }
    }

    fn would_roll(&self, s: &Segment, rec_len: u64) -> bool {
        s.sealed || (s.len > 0 && s.len + rec_len > self.cfg.segment_bytes)
    }

    /// Second half of an append: applies the full policy and writes the record. A new
    /// segment is started without an fsync of the old one: callers sync first when
    /// [`Outbox::rolls_dirty`] says so, so a power cut never leaves a silently shortened
    /// segment in front of a newer one (and the fsync need not happen under their lock).
    pub fn commit(&mut self, p: Prepared) -> Result<u64, OutboxError> {
        let Prepared { seq, created_ms, buf } = p;
        if seq != self.next_seq {
            return Err(OutboxError::Config("a prepared record was committed out of turn"));
        }
        let rec_len = buf.len() as u64;
        if self.pending_bytes + rec_len > self.cfg.max_bytes {
            match self.cfg.full_policy {
                OutboxFullPolicy::DropNewest => {
                    self.use_seq(seq, GapReason::Full);
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
        // While every write fails, a segment sealed by a failure would be followed by a
        // new file per append: one started during the failures is cut back to its
        // length and reused instead, or the append fails without a new file.
        if self.rolled_while_failing
            && let Some((&first, seg)) = self.segments.iter_mut().next_back()
            && seg.sealed
        {
            let path = segment_path(&self.cfg.dir, first);
            match fault(&self.faults, FileOp::Write, &path).and_then(|()| seg.file.set_len(seg.len)) {
                Ok(()) => seg.sealed = false,
                Err(e) => return Err(self.write_failed(seq, path, e)),
            }
        }
        let roll = match self.segments.last_key_value() {
            None => true,
            Some((_, s)) => self.would_roll(s, rec_len),
        };
        if roll {
            self.rolled_while_failing = self.writes_failing > 0;
            if let Err((path, e)) = self.roll(seq) {
                return Err(self.write_failed(seq, path, e));
            }
        }
        let Some((&first, seg)) = self.segments.iter_mut().next_back() else {
            return Err(self.write_failed(seq, self.cfg.dir.clone(), io::Error::other("no active segment")));
        };
        let offset = seg.len;
        let path = segment_path(&self.cfg.dir, first);
        if let Err(e) = fault(&self.faults, FileOp::Write, &path).and_then(|()| seg.file.write_all(&buf)) {
            // A partial record must not sit in front of the next one: cut it off, or, if
            // even that fails, never append to this segment again (offsets would be wrong).
            seg.dirty = true;
            if fault(&self.faults, FileOp::Write, &path).and_then(|()| seg.file.set_len(offset)).is_err() {
                seg.sealed = true;
            }
            return Err(self.write_failed(seq, path, e));
        }
        seg.len += rec_len;
        seg.live += 1;
        seg.dirty = true;
        self.index.insert(seq, Loc { segment: first, offset, len: rec_len as u32, created_ms });
        self.pending_bytes += rec_len;
        self.appended_total += 1;
        self.next_seq += 1;
        self.writes_failing = 0;
        self.rolled_while_failing = false;
        Ok(seq)
    }

    /// Uses up `seq` without a record: it is reported as a gap, and the state remembers it.
    fn use_seq(&mut self, seq: u64, reason: GapReason) {
        self.next_seq = seq + 1;
        self.seq_dirty = true;
        self.gap(seq, reason);
    }

    fn write_failed(&mut self, seq: u64, path: PathBuf, source: io::Error) -> OutboxError {
        self.use_seq(seq, GapReason::WriteFailed);
        self.write_failures_total += 1;
        self.writes_failing += 1;
        self.last_write_error = format!("{}: {source}", path.display());
        OutboxError::WriteFailed { seq, path, source }
    }

    /// Starts a new active segment whose first record will be `seq`.
    fn roll(&mut self, seq: u64) -> Result<(), (PathBuf, io::Error)> {
        let path = segment_path(&self.cfg.dir, seq);
        let file = fault(&self.faults, FileOp::Open, &path)
            .and_then(|()| OpenOptions::new().read(true).append(true).create_new(true).open(&path))
            .map_err(|e| (path.clone(), e))?;
        self.segments.insert(seq, Segment { file, len: 0, live: 0, dirty: false, sealed: false });
        self.dir_dirty = true;
        Ok(())
    }

    /// Makes everything appended so far durable (fsync of the segments written since the
    /// last sync and of the directory when segments were created), then writes the ack
    /// state and deletes fully done segments. Does nothing when nothing changed, so it is
    /// cheap to call on a timer. Call it after acks too: that is when segments are freed.
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        match self.begin_sync() {
            Some(mut job) => {
                job.run();
                self.finish_sync(job)
            }
            None => Ok(()),
        }
    }

    /// The first third of a sync, quick: what needs an fsync, the state to write and the
    /// segments that are done, with the file handles cloned, for [`SyncJob::run`] to do
    /// the slow I/O without `&mut self` (outside the caller's lock), then
    /// [`Outbox::finish_sync`]. `None` when there is nothing to do. Nothing may append
    /// between `begin_sync` and `finish_sync`; acks and reads may.
    pub fn begin_sync(&mut self) -> Option<SyncJob> {
        self.absorb_unreadable();
        if !self.needs_sync() {
            return None;
        }
        let mut segments = Vec::new();
        for (&first, seg) in &mut self.segments {
            if seg.dirty {
                segments.push((first, seg.file.try_clone()));
                seg.dirty = false;
            }
        }
        let sync_dir = std::mem::take(&mut self.dir_dirty);
        let delete: Vec<u64> = self.done_segments().collect();
        let watermark = self.watermark();
        let mut state = Vec::new();
        if !delete.is_empty() || self.state_stale() {
            // Both copies, one after the other: a torn write damages one, and the other
            // then says the same or what the previous sync said (no segment was deleted
            // in between: deletion waits for both).
            for generation in self.state_gen + 1..=self.state_gen + 2 {
                state.push((generation, encode_state(generation, watermark, self.next_seq)));
            }
        }
        Some(SyncJob {
            faults: self.faults.clone(),
            dir: self.cfg.dir.clone(),
            segments,
            sync_dir,
            state_new: self.rewrite_state && !state.is_empty(),
            state,
            watermark,
            next_seq: self.next_seq,
            delete,
            results: SyncResults::default(),
        })
    }

    /// The last third of a sync: records what [`SyncJob::run`] achieved. Failed fsyncs
    /// are retried by the next sync; their segments are sealed.
    pub fn finish_sync(&mut self, job: SyncJob) -> Result<(), OutboxError> {
        let r = job.results;
        // Sealed at the first failure only: while fsyncs keep failing, a new segment per
        // attempt would only pile up files.
        let first_failure = self.syncs_failing == 0;
        for &first in &r.failed_segments {
            if let Some(seg) = self.segments.get_mut(&first) {
                seg.dirty = true;
                seg.sealed |= first_failure;
            }
        }
        if r.dir_failed {
            self.dir_dirty = true;
        }
        if r.failed_segments.is_empty() && !r.dir_failed {
            self.durable_next = self.durable_next.max(job.next_seq);
        }
        if let Some(generation) = r.state_written {
            self.state_gen = generation;
            self.persisted_watermark = job.watermark;
            if self.next_seq == job.next_seq {
                self.seq_dirty = false;
            }
            if r.state_written == job.state.last().map(|s| s.0) {
                self.rewrite_state = false;
                if std::mem::take(&mut self.legacy_state) {
                    let _ = fs::remove_file(self.cfg.dir.join(LEGACY_STATE));
                }
            }
        }
        if r.state_written != job.state.last().map(|s| s.0) {
            // A copy may be half written, or missing: write both next time.
            self.rewrite_state = true;
        }
        for first in &r.deleted {
            self.segments.remove(first);
        }
        match r.error {
            None => {
                self.syncs_failing = 0;
                Ok(())
            }
            Some(e) => {
                self.fsync_failures_total += 1;
                self.syncs_failing += 1;
                self.last_sync_error = e.to_string();
                Err(e)
            }
        }
    }

    /// Whether [`Outbox::sync`] has anything to do.
    pub fn needs_sync(&self) -> bool {
        self.dir_dirty
            || self.state_stale()
            || self.segments.values().any(|s| s.dirty)
            || self.done_segments().next().is_some()
    }

    fn state_stale(&self) -> bool {
        self.seq_dirty || self.rewrite_state || self.watermark() != self.persisted_watermark
    }

    /// Segments with nothing unacknowledged left, except the active one unless it is empty.
    fn done_segments(&self) -> impl Iterator<Item = u64> + '_ {
        let active = self.segments.last_key_value().map(|(&k, _)| k);
        self.segments.iter().filter(move |&(&k, s)| s.live == 0 && (Some(k) != active || s.len == 0)).map(|(&k, _)| k)
    }

    /// `Err` with the reason while the disk keeps failing: [`UNHEALTHY_AFTER`] appends or
    /// syncs in a row failed (and none succeeded since).
    pub fn health(&self) -> Result<(), String> {
        if self.writes_failing >= UNHEALTHY_AFTER {
            return Err(format!(
                "outbox: the last {} appends failed, their messages are reported lost ({})",
                self.writes_failing, self.last_write_error
            ));
        }
        if self.syncs_failing >= UNHEALTHY_AFTER {
            return Err(format!(
                "outbox: the last {} syncs failed, nothing new is published ({})",
                self.syncs_failing, self.last_sync_error
            ));
        }
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
            let path = segment_path(&self.cfg.dir, loc.segment);
            let read = match self.segments.get(&loc.segment) {
                Some(seg) => {
                    fault(&self.faults, FileOp::Read, &path).and_then(|()| seg.file.read_exact_at(&mut buf, loc.offset))
                }
                None => Err(io::ErrorKind::UnexpectedEof.into()),
            };
            match read {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Err(e) => {
                    // A bad sector: this record is lost, the ones behind it are not. The
                    // all-zero buffer fails to decode, so it is skipped as damaged below.
                    self.read_failures_total.fetch_add(1, Ordering::Relaxed);
                    warn!(seq, segment = %path.display(), error = %e, "cannot read an outbox record");
                }
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
            write_failures_total: self.write_failures_total,
            fsync_failures_total: self.fsync_failures_total,
            read_failures_total: self.read_failures_total.load(Ordering::Relaxed),
        }
    }

    /// The largest topic + payload [`Outbox::append`] accepts.
    pub fn max_message_bytes(&self) -> u64 {
        self.cfg.max_message_bytes
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
        self.gap_range(seq, seq, reason);
    }

    /// Records dropped seqs `first..=last`.
    fn gap_range(&mut self, first: u64, last: u64, reason: GapReason) {
        let count = last - first + 1;
        self.dropped_total += count;
        if let Some(g) = self.gaps.last_mut()
            && g.reason == reason
            && g.last + 1 == first
        {
            g.last = last;
            g.count += count;
            return;
        }
        self.gaps.push(Gap { first, last, count, reason });
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

/// A record built by [`Outbox::prepare`], not yet written.
pub struct Prepared {
    seq: u64,
    created_ms: u64,
    buf: Vec<u8>,
}

impl Prepared {
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// The slow part of a sync (fsyncs, state writes, deletions), detached from the outbox:
/// from [`Outbox::begin_sync`], to [`Outbox::finish_sync`].
pub struct SyncJob {
    faults: Option<FaultHook>,
    dir: PathBuf,
    /// Segments written since the last sync, by first seq, with a clone of their handle.
    segments: Vec<(u64, io::Result<File>)>,
    sync_dir: bool,
    /// State copies to write, by generation.
    state: Vec<(u64, [u8; STATE_LEN])>,
    /// The copies may not exist yet: the directory is synced after them.
    state_new: bool,
    watermark: u64,
    next_seq: u64,
    /// Done segments, deleted once the state is on disk.
    delete: Vec<u64>,
    results: SyncResults,
}

#[derive(Default)]
struct SyncResults {
    failed_segments: Vec<u64>,
    dir_failed: bool,
    /// Generation of the last state copy written.
    state_written: Option<u64>,
    deleted: Vec<u64>,
    /// The first failure.
    error: Option<OutboxError>,
}

impl SyncJob {
    /// Does the I/O; what happened is applied by [`Outbox::finish_sync`].
    pub fn run(&mut self) {
        let r = &mut self.results;
        let fail = |r: &mut SyncResults, e: OutboxError| {
            r.error.get_or_insert(e);
        };
        for (first, file) in &self.segments {
            let path = segment_path(&self.dir, *first);
            let done = match file {
                Ok(f) => fault(&self.faults, FileOp::Sync, &path).and_then(|()| f.sync_data()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            if let Err(e) = done {
                r.failed_segments.push(*first);
                fail(r, io_at(&path)(e));
            }
        }
        if self.sync_dir
            && let Err(e) = sync_dir(&self.dir, &self.faults)
        {
            r.dir_failed = true;
            fail(r, e);
        }
        for (generation, bytes) in &self.state {
            let path = self.dir.join(STATE_FILES[(*generation % 2) as usize]);
            let written = (|| {
                fault(&self.faults, FileOp::Write, &path)?;
                let f = OpenOptions::new().write(true).create(true).truncate(false).open(&path)?;
                f.write_all_at(bytes, 0)?;
                fault(&self.faults, FileOp::Sync, &path)?;
                f.sync_data()
            })();
            match written {
                Ok(()) => r.state_written = Some(*generation),
                Err(e) => {
                    fail(r, io_at(&path)(e));
                    break;
                }
            }
        }
        // Copies just created (or replacing damaged ones): their names must be durable too
        // before anything is deleted.
        let state_ok = self.state.is_empty() || r.state_written == self.state.last().map(|s| s.0);
        if state_ok
            && self.state_new
            && let Err(e) = sync_dir(&self.dir, &self.faults)
        {
            fail(r, e);
            return;
        }
        if !state_ok {
            return;
        }
        for &first in &self.delete {
            let path = segment_path(&self.dir, first);
            match fs::remove_file(&path) {
                Ok(()) => r.deleted.push(first),
                Err(e) if e.kind() == io::ErrorKind::NotFound => r.deleted.push(first),
                Err(e) => fail(r, io_at(&path)(e)),
            }
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
    let seq = le_u64(body, 0);
    if !(1..=MAX_SEQ).contains(&seq) {
        return None;
    }
    Some(Parsed { seq, created_ms: le_u64(body, 8), topic_len, len: HEADER + body_len })
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
            && (1..=MAX_SEQ).contains(&first)
        {
            names.push(first);
        }
    }
    names.sort_unstable();
    Ok(names)
}

fn encode_state(generation: u64, watermark: u64, next_seq: u64) -> [u8; STATE_LEN] {
    let mut buf = [0; STATE_LEN];
    buf[..4].copy_from_slice(&STATE_MAGIC);
    buf[4..12].copy_from_slice(&generation.to_le_bytes());
    buf[12..20].copy_from_slice(&watermark.to_le_bytes());
    buf[20..28].copy_from_slice(&next_seq.to_le_bytes());
    let crc = crc32fast::hash(&buf[..STATE_LEN - 4]);
    buf[STATE_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// What the state copies say.
struct StateRead {
    generation: u64,
    watermark: u64,
    next_seq: u64,
    /// Both copies were intact.
    both_copies: bool,
    /// Only the single file of earlier versions was there.
    legacy: bool,
}

/// (generation, watermark, next seq) of one copy, if it is intact and sane.
fn parse_state(buf: &[u8]) -> Option<(u64, u64, u64)> {
    if buf.len() != STATE_LEN || buf[..4] != STATE_MAGIC || crc32fast::hash(&buf[..STATE_LEN - 4]) != le_u32(buf, 28) {
        return None;
    }
    let (generation, watermark, next) = (le_u64(buf, 4), le_u64(buf, 12), le_u64(buf, 20));
    (watermark < next && next <= MAX_SEQ && generation < MAX_SEQ).then_some((generation, watermark, next))
}

/// The newest intact state copy; a fresh outbox has watermark 0 and next seq 1. A copy
/// that cannot be read counts as damaged: the other one, or the segments, still tell.
fn read_state(dir: &Path, faults: &Option<FaultHook>) -> StateRead {
    let read = |name: &str| -> Option<Vec<u8>> {
        let path = dir.join(name);
        match fault(faults, FileOp::Read, &path).and_then(|()| fs::read(&path)) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read an outbox state copy");
                Some(Vec::new())
            }
        }
    };
    let copies: Vec<Option<Vec<u8>>> = STATE_FILES.iter().map(|n| read(n)).collect();
    let parsed: Vec<Option<(u64, u64, u64)>> = copies.iter().map(|c| c.as_deref().and_then(parse_state)).collect();
    for (name, (raw, ok)) in STATE_FILES.iter().zip(copies.iter().zip(&parsed)) {
        if raw.is_some() && ok.is_none() {
            warn!(path = %dir.join(name).display(), "outbox state copy is damaged; using the other one");
        }
    }
    let both_copies = parsed.iter().all(Option::is_some);
    if let Some((generation, watermark, next_seq)) = parsed.iter().flatten().max_by_key(|p| p.0).copied() {
        return StateRead { generation, watermark, next_seq, both_copies, legacy: false };
    }
    // Earlier versions: one file, replaced by rename.
    let legacy = read(LEGACY_STATE);
    let mut st = StateRead { generation: 0, watermark: 0, next_seq: 1, both_copies: false, legacy: legacy.is_some() };
    if let Some(buf) = legacy {
        let intact = buf.len() == LEGACY_STATE_LEN
            && buf[..4] == LEGACY_STATE_MAGIC
            && crc32fast::hash(&buf[..LEGACY_STATE_LEN - 4]) == le_u32(&buf, LEGACY_STATE_LEN - 4);
        let (watermark, next) = if intact { (le_u64(&buf, 4), le_u64(&buf, 12).max(1)) } else { (0, 1) };
        if intact && watermark < next && next <= MAX_SEQ {
            (st.watermark, st.next_seq) = (watermark, next);
        } else {
            warn!(path = %dir.join(LEGACY_STATE).display(), "outbox state file is damaged; replaying every record on disk");
        }
    } else if copies.iter().any(Option::is_some) {
        warn!(dir = %dir.display(), "both outbox state copies are damaged; replaying every record on disk");
    }
    st
}

fn sync_dir(dir: &Path, faults: &Option<FaultHook>) -> Result<(), OutboxError> {
    fault(faults, FileOp::Sync, dir).and_then(|()| File::open(dir)).and_then(|d| d.sync_all()).map_err(io_at(dir))
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
            max_message_bytes: MAX_BODY as u64,
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
        assert_eq!(
            report,
            OpenReport { pending: want.len() as u64, corrupt_records: 0, torn_bytes: 0, unreadable_segments: 0 }
        );
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
        // The torn bytes could have held this many records: all their seqs are lost.
        let held = (rec_len() - 7).div_ceil(MIN_RECORD);
        let want = OpenReport { pending: 4, corrupt_records: held, torn_bytes: rec_len() - 7, unreadable_segments: 0 };
        assert_eq!(report, want);
        assert_eq!(fs::metadata(&seg).expect("stat").len(), 4 * rec_len());
        let records = ob.pending(0, usize::MAX).expect("pending");
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert!(records.iter().all(|r| r.payload == payload(r.seq)));
        assert_eq!(ob.take_gaps(), vec![gap(5, 4 + held, GapReason::Corrupt)]);
        // The torn record's seq is not reused.
        let (a, b) = (append(&mut ob), append(&mut ob));
        assert_eq!((a, b), (5 + held, 6 + held));
        ob.close().expect("close");

        let (mut ob, report) = open(&c);
        assert_eq!(report, OpenReport { pending: 6, corrupt_records: 0, torn_bytes: 0, unreadable_segments: 0 });
        assert_eq!(seqs(&ob), vec![1, 2, 3, 4, a, b]);
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
        assert_eq!(report, OpenReport { pending: 8, corrupt_records: 2, torn_bytes: 0, unreadable_segments: 0 });
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
        // 25 started a new segment: the one before was synced first; 25 was not.
        assert_eq!(ob.durable_seq(), 24);
        crash(ob);

        let (ob, report) = open(&c);
        assert_eq!(report, OpenReport { pending: 15, corrupt_records: 0, torn_bytes: 0, unreadable_segments: 0 });
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
    fn oversized_records_use_their_seq_and_are_announced_as_a_gap() {
        let tmp = TempDir::new("large");
        let mut c = cfg(&tmp.0, 8 * 1024, 1 << 20, OutboxFullPolicy::DropOldest);
        c.max_message_bytes = 1000;
        let (mut ob, _) = open(&c);
        let big = ob.append(TOPIC, |_| vec![0; 10_000]);
        assert!(matches!(big, Err(OutboxError::TooLarge { seq: 1, .. })), "larger than max_bytes: {big:?}");
        let over = ob.append(TOPIC, |_| vec![0; 1000 - TOPIC.len() + 1]);
        assert!(
            matches!(over, Err(OutboxError::TooLarge { seq: 2, max: 1000, .. })),
            "over max_message_bytes: {over:?}"
        );
        assert_eq!(ob.append(TOPIC, |_| vec![0; 1000 - TOPIC.len()]).expect("exactly the limit fits"), 3);
        let long_topic = "t".repeat(70_000);
        assert!(matches!(ob.append(&long_topic, payload), Err(OutboxError::TopicTooLong(70_000))));
        assert_eq!(ob.take_gaps(), vec![gap(1, 2, GapReason::TooLarge)]);
        ob.ack(3).expect("ack");
        assert_eq!(append(&mut ob), 4);
        assert_eq!(ob.stats().dropped_total, 2);
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
            // A damaged run reaching the end of the last segment is a torn tail: seqs past
            // 40 are reported too (as many as its bytes could hold), intact ones never.
            assert!(reported.is_superset(&touched), "round {round}, damaged {touched:?}, reported {reported:?}");
            assert!(reported.iter().all(|s| touched.contains(s) || *s > 40), "round {round}: {reported:?}");
            assert!(append(&mut ob) > reported.last().copied().unwrap_or(40).max(40), "round {round}");
        }
    }

    /// A fault hook failing the operations `when` picks with OS error `errno`.
    fn failing(errno: i32, when: impl Fn(FileOp, &Path) -> bool + Send + Sync + 'static) -> Option<FaultHook> {
        Some(Arc::new(move |op, path| if when(op, path) { Err(io::Error::from_raw_os_error(errno)) } else { Ok(()) }))
    }

    const ENOSPC: i32 = 28;
    const EIO: i32 = 5;

    fn is_segment(p: &Path) -> bool {
        p.extension().is_some_and(|e| e == "seg")
    }

    #[test]
    fn failed_append_uses_its_seq_and_is_announced_as_a_gap() {
        let tmp = TempDir::new("enospc");
        let c = cfg(&tmp.0, 1 << 20, 1 << 20, OutboxFullPolicy::DropOldest);
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = full.clone();
        let hook = failing(ENOSPC, move |op, p| op == FileOp::Write && is_segment(p) && f.load(Ordering::SeqCst));
        let (mut ob, _) = Outbox::open_with(c.clone(), hook).expect("open");
        assert_eq!((append(&mut ob), append(&mut ob)), (1, 2));
        full.store(true, Ordering::SeqCst);
        for want in 3..=5 {
            match ob.append(TOPIC, payload) {
                Err(OutboxError::WriteFailed { seq, .. }) => assert_eq!(seq, want),
                other => panic!("expected a failed write, got {other:?}"),
            }
            assert_eq!(ob.health().is_err(), want - 2 >= UNHEALTHY_AFTER, "after {} failures", want - 2);
        }
        let why = ob.health().expect_err("unhealthy after 3 failed appends");
        assert!(why.contains("appends failed") && why.contains("No space"), "{why}");
        assert_eq!(ob.take_gaps(), vec![gap(3, 5, GapReason::WriteFailed)]);
        let st = ob.stats();
        assert_eq!((st.write_failures_total, st.dropped_total, st.appended_total), (3, 3, 2));

        full.store(false, Ordering::SeqCst);
        assert_eq!(append(&mut ob), 6, "the failed seqs are used up");
        assert!(ob.health().is_ok(), "healthy again at the first append that works");
        ob.close().expect("close");
        let (mut ob, report) = open(&c);
        assert_eq!(report.corrupt_records, 0);
        assert_eq!(seqs(&ob), vec![1, 2, 6]);
        assert!(ob.take_gaps().is_empty(), "reported once, by the run that lost them");
        assert_eq!(append(&mut ob), 7);
    }

    #[test]
    fn failed_fsync_holds_back_publishing_until_a_sync_succeeds() {
        let tmp = TempDir::new("fsync");
        let c = cfg(&tmp.0, 1 << 20, 1 << 20, OutboxFullPolicy::DropOldest);
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b = broken.clone();
        let hook = failing(EIO, move |op, p| op == FileOp::Sync && is_segment(p) && b.load(Ordering::SeqCst));
        let (mut ob, _) = Outbox::open_with(c.clone(), hook).expect("open");
        append(&mut ob);
        append(&mut ob);
        broken.store(true, Ordering::SeqCst);
        for n in 1..=UNHEALTHY_AFTER {
            assert!(ob.sync().is_err());
            assert_eq!(ob.durable_seq(), 0, "nothing unsynced may be published");
            assert_eq!(ob.stats().fsync_failures_total, n);
            assert!(ob.needs_sync(), "retried by the next sync");
        }
        let why = ob.health().expect_err("unhealthy after failed syncs");
        assert!(why.contains("syncs failed"), "{why}");

        broken.store(false, Ordering::SeqCst);
        // The segment whose fsync failed takes no more records: 3 starts a new one.
        assert_eq!(append(&mut ob), 3);
        assert_eq!(segment_files(&tmp.0).len(), 2);
        ob.sync().expect("sync");
        assert_eq!(ob.durable_seq(), 3);
        assert!(ob.health().is_ok());
        ob.close().expect("close");
        let (ob, _) = open(&c);
        assert_eq!(seqs(&ob), vec![1, 2, 3]);
    }

    #[test]
    fn unreadable_record_is_skipped_and_the_records_behind_it_delivered() {
        let tmp = TempDir::new("eio");
        let c = cfg(&tmp.0, 1 << 20, 1 << 20, OutboxFullPolicy::DropOldest);
        // Armed: the third record read gets EIO (a bad sector under record 3).
        let reads = Arc::new(AtomicU64::new(u64::MAX / 2));
        let r = reads.clone();
        let hook =
            failing(EIO, move |op, p| op == FileOp::Read && is_segment(p) && r.fetch_add(1, Ordering::SeqCst) == 2);
        let (mut ob, _) = Outbox::open_with(c, hook).expect("open");
        for _ in 0..5 {
            append(&mut ob);
        }
        reads.store(0, Ordering::SeqCst);
        assert_eq!(seqs(&ob), vec![1, 2, 4, 5]);
        assert_eq!(ob.take_gaps(), vec![gap(3, 3, GapReason::Corrupt)]);
        assert_eq!(ob.stats().read_failures_total, 1);
        assert_eq!(seqs(&ob), vec![1, 2, 4, 5], "skipped for good");
        assert_eq!(ob.stats().pending_records, 4);
    }

    #[test]
    fn unreadable_segment_at_open_is_moved_aside_and_the_outbox_opens() {
        let tmp = TempDir::new("badseg");
        let c = cfg(&tmp.0, 1 << 20, 3 * rec_len(), OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        for _ in 0..9 {
            append(&mut ob);
        }
        ob.close().expect("close");
        let name = |s: u64| format!("{s:020}.seg");

        let bad = name(4);
        let hook = failing(EIO, move |op, p| op == FileOp::Read && p.ends_with(&bad));
        let (mut ob, report) = Outbox::open_with(c.clone(), hook).expect("opens despite the bad segment");
        assert_eq!((report.unreadable_segments, report.corrupt_records, report.pending), (1, 3, 6));
        assert_eq!(seqs(&ob), vec![1, 2, 3, 7, 8, 9]);
        assert_eq!(ob.take_gaps(), vec![gap(4, 6, GapReason::Corrupt)]);
        assert!(tmp.0.join(format!("{}.unreadable", name(4))).is_file(), "kept aside for inspection");
        assert_eq!(segment_files(&tmp.0), vec![name(1), name(7)]);
        assert_eq!(append(&mut ob), 10);
        ob.close().expect("close");

        // The last segment: how many records it held is unknown; seq moves past all it could.
        let bad = name(10);
        let hook = failing(EIO, move |op, p| op == FileOp::Read && p.ends_with(&bad));
        let (mut ob, report) = Outbox::open_with(c.clone(), hook).expect("opens");
        assert_eq!(report.unreadable_segments, 1);
        assert_eq!(seqs(&ob), vec![1, 2, 3, 7, 8, 9]);
        let gaps = ob.take_gaps();
        assert_eq!((gaps.len(), gaps[0].first, gaps[0].reason), (1, 10, GapReason::Corrupt));
        assert!(gaps[0].last >= 10, "{gaps:?}");
        let next = append(&mut ob);
        assert!(next > gaps[0].last, "seq {next} reused one of {gaps:?}");
        drop(ob);
        let (mut ob, _) = open(&c);
        assert!(append(&mut ob) > next);
    }

    #[test]
    fn a_damaged_state_copy_with_no_segments_left_does_not_restart_seq() {
        for damaged in STATE_FILES {
            let tmp = TempDir::new("statecopy");
            let c = cfg(&tmp.0, 1 << 20, rec_len(), OutboxFullPolicy::DropOldest);
            let (mut ob, _) = open(&c);
            for _ in 0..10 {
                append(&mut ob);
            }
            for s in 1..=10 {
                ob.ack(s).expect("ack");
            }
            ob.close().expect("close");
            for f in segment_files(&tmp.0) {
                fs::remove_file(tmp.0.join(f)).expect("remove segment");
            }
            let path = tmp.0.join(damaged);
            let mut data = fs::read(&path).expect("state copy");
            data[14] ^= 0x40;
            fs::write(&path, &data).expect("damage it");
            let (mut ob, _) = open(&c);
            assert_eq!(append(&mut ob), 11, "{damaged} damaged");
        }
    }

    /// Whichever one file of the outbox is damaged (filled with garbage), the next seq is
    /// beyond every seq ever appended.
    #[test]
    fn no_single_damaged_file_makes_seq_go_backwards() {
        let src = TempDir::new("anyfile");
        let c = cfg(&src.0, 1 << 20, 3 * rec_len(), OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        for _ in 0..12 {
            append(&mut ob);
        }
        for s in 1..=6 {
            ob.ack(s).expect("ack");
        }
        ob.sync().expect("sync");
        // Appended after the last state write: only the segments know these.
        for _ in 0..3 {
            append(&mut ob);
        }
        crash(ob);
        let mut files: Vec<String> = fs::read_dir(&src.0)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock")
            .collect();
        files.sort();
        assert_eq!(files.len(), 5, "{files:?}");
        for victim in &files {
            let tmp = TempDir::new("anyfile-copy");
            for f in &files {
                fs::copy(src.0.join(f), tmp.0.join(f)).expect("copy");
            }
            let path = tmp.0.join(victim);
            let len = fs::metadata(&path).expect("stat").len() as usize;
            fs::write(&path, vec![0xA5; len]).expect("damage");
            let (mut ob, _) = open(&OutboxConfig { dir: tmp.0.clone(), ..c.clone() });
            let next = append(&mut ob);
            assert!(next > 15, "{victim} damaged: seq {next} came back");
        }
    }

    #[test]
    fn a_disk_that_keeps_failing_does_not_pile_up_segment_files() {
        let tmp = TempDir::new("eio-files");
        let c = cfg(&tmp.0, 1 << 20, 1 << 20, OutboxFullPolicy::DropOldest);
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b = broken.clone();
        // EIO on every segment write, the cut-off of a partial record included.
        let hook = failing(EIO, move |op, p| op == FileOp::Write && is_segment(p) && b.load(Ordering::SeqCst));
        let (mut ob, _) = Outbox::open_with(c, hook).expect("open");
        append(&mut ob);
        broken.store(true, Ordering::SeqCst);
        for _ in 0..200 {
            assert!(matches!(ob.append(TOPIC, payload), Err(OutboxError::WriteFailed { .. })));
        }
        let files = segment_files(&tmp.0).len();
        assert!(files <= 2, "{files} segment files for 200 failed appends");
        broken.store(false, Ordering::SeqCst);
        assert_eq!(append(&mut ob), 202, "the first append after the disk recovers works");
        assert_eq!(seqs(&ob), vec![1, 202]);
    }

    #[test]
    fn the_single_state_file_of_earlier_versions_is_taken_over() {
        let tmp = TempDir::new("legacy");
        let mut buf = b"LKS1".to_vec();
        buf.extend_from_slice(&41u64.to_le_bytes());
        buf.extend_from_slice(&50u64.to_le_bytes());
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        fs::write(tmp.0.join(LEGACY_STATE), &buf).expect("legacy state");
        let c = cfg(&tmp.0, 1 << 20, 1 << 20, OutboxFullPolicy::DropOldest);
        let (mut ob, _) = open(&c);
        assert_eq!(append(&mut ob), 50, "seq continues where the old state left it");
        ob.close().expect("close");
        assert!(!tmp.0.join(LEGACY_STATE).exists(), "replaced by the two copies");
        assert!(STATE_FILES.iter().all(|f| tmp.0.join(f).is_file()));
        let (mut ob, _) = open(&c);
        assert_eq!(append(&mut ob), 51);
    }

    /// A slow fsync (here: one that waits until the test lets it go) must not keep
    /// PUBACKs, `/metrics` or the health loop from the outbox.
    #[test]
    fn the_outbox_lock_is_free_while_an_fsync_waits_on_the_disk() {
        use crate::publish::Delivery;
        use std::sync::mpsc::{Receiver, Sender, channel};
        let tmp = TempDir::new("slowsync");
        let c = cfg(&tmp.0, 1 << 20, 2 * rec_len(), OutboxFullPolicy::DropOldest);
        let (entered_tx, entered) = channel::<()>();
        let (release, release_rx) = channel::<()>();
        let gate: Arc<Mutex<(Sender<()>, Receiver<()>)>> = Arc::new(Mutex::new((entered_tx, release_rx)));
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, a) = (gate.clone(), armed.clone());
        let hook: FaultHook = Arc::new(move |op, p| {
            if op == FileOp::Sync && is_segment(p) && a.load(Ordering::SeqCst) {
                let g = g.lock().expect("gate");
                let _ = g.0.send(());
                let _ = g.1.recv();
            }
            Ok(())
        });
        let (ob, _) = Outbox::open_with(c, Some(hook)).expect("open");
        let delivery = Arc::new(Delivery::new(ob));
        for seq in 1..=2 {
            assert_eq!(delivery.append(TOPIC, payload).expect("append"), seq);
        }
        armed.store(true, Ordering::SeqCst);
        // Both ways the events thread fsyncs: its timed sync, and before a new segment.
        for (what, seq) in [("sync", None), ("append starting a segment", Some(3))] {
            let d = delivery.clone();
            let worker = std::thread::spawn(move || match seq {
                None => d.sync().map(|()| 0),
                Some(_) => d.append(TOPIC, payload),
            });
            entered.recv().expect("the fsync started");
            assert!(delivery.outbox.try_lock().is_ok(), "{what}: the outbox lock is held across an fsync");
            let _ = delivery.outbox().stats();
            release.send(()).expect("release");
            let got = worker.join().expect("worker").expect("no error");
            if let Some(seq) = seq {
                assert_eq!(got, seq);
            }
            if what == "sync" {
                assert_eq!(delivery.outbox().durable_seq(), 2);
                // Dirty again, so that the append's roll has something to sync.
                armed.store(false, Ordering::SeqCst);
                delivery.outbox.lock().expect("lock").segments.values_mut().for_each(|s| s.dirty = true);
                armed.store(true, Ordering::SeqCst);
            }
        }
        // The final sync when the outbox is dropped must not wait for the test.
        armed.store(false, Ordering::SeqCst);
    }
}
