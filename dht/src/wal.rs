//! Write-ahead log shared by every raft group hosted on a node.
//!
//! Groups append opaque `(group, payload)` records (raft entries, hard state, snapshot markers: the caller
//! encodes them). [`Wal::append`] only buffers; [`Wal::sync`] writes everything appended since the last sync
//! as one *batch*, closed by a commit record, and covers it with a single `fdatasync` (group commit).
//!
//! # On-disk format
//!
//! A directory holding a `LOCK` file (see [Limits](#limits)) and segment files named
//! `wal-{first_lsn:020}.log`, so that names sort by LSN. All integers are little-endian. Each segment starts
//! with a 24-byte header:
//!
//! | offset | size | field                                                  |
//! |--------|------|--------------------------------------------------------|
//! | 0      | 8    | magic `b"MSDHTWAL"`                                    |
//! | 8      | 4    | format version, currently 2 (version 1 is not read)    |
//! | 12     | 4    | crc32 of bytes 0..12 and 16..24                        |
//! | 16     | 8    | `first_lsn`, which must match the file name            |
//!
//! followed by records back to back, with no padding:
//!
//! | offset | size  | field                                                 |
//! |--------|-------|-------------------------------------------------------|
//! | 0      | 4     | `len`: payload length                                 |
//! | 4      | 4     | crc32 of `lsn`, `group`, `len` (as encoded) and payload |
//! | 8      | 8     | `lsn`                                                 |
//! | 16     | 8     | `group`                                               |
//! | 24     | `len` | payload                                               |
//!
//! LSNs strictly increase through the log but are not dense: the WAL's own records use some, and a failed
//! sync skips those of the records it dropped. Two groups are reserved for those own records, and
//! [`Wal::append`] rejects them:
//!
//! - [`RELEASE_GROUP`] (`u64::MAX`): the payload is a list of `(group: u64, upto: u64)` release points.
//! - [`COMMIT_GROUP`] (`u64::MAX - 1`): the commit record that ends every batch. Its payload is 8 bytes, the
//!   LSN of the batch's first record (a cross-check for replay).
//!
//! # Batches and commit records
//!
//! Each sync writes the records appended since the previous one, then a commit record; replay accepts a record
//! only once it has read a commit record after it. A batch that fills the active segment continues in a new
//! one, so a batch can span segments: its commit record is in the last segment it touches, and the tail of an
//! older segment may belong to a batch committed in a newer one. Segment rollover keeps room for the commit
//! record, so it always lands in the segment holding its batch's last record, and rollover names the new
//! segment after the LSN that follows the older segment's last record: a batch continues from one segment file
//! into the next only if their LSNs are contiguous that way.
//!
//! # Durability
//!
//! A record is durable once the `sync` that wrote it returned `Ok`; [`Wal::durable_lsn`] is then at least its
//! LSN. When a batch spans segments, the older one is fdatasynced before the new file is created, and the
//! directory is fsynced before the batch counts as durable. So at any crash point every segment but the last
//! is complete, and only the end of the last one can hold a partial write. An unacknowledged batch is dropped
//! as a whole on replay, even the part of it in older segments.
//!
//! # Replay: torn versus corrupt
//!
//! [`Wal::open`] reads every segment in order. The *torn tail* is what a crash left of the batch being
//! written: it starts at the first record after the last commit record (possibly in an older segment) and runs
//! to the end of the log. Replay cuts it off (segments it fills entirely are cut back to their header), and
//! counts it in [`Replay::torn_bytes`]. A record that fails to parse (short header, short payload, length above
//! `max_record_bytes`, LSN not increasing, or checksum mismatch) belongs to the torn tail if it lies in the last
//! segment and no valid commit record starts anywhere after it: then the crash may have persisted the batch's
//! pages out of order, leaving a hole before intact records of the same unacknowledged batch. A last segment
//! shorter than its header (or all zeros) died while being created and is removed. Any other failure is
//! [`WalError::Corrupt`]: damage in a segment that is not the last, or damage followed by a valid commit
//! record, i.e. inside a committed batch or before a later one.
//!
//! The commit record cannot tell everything apart:
//!
//! - Damage to the final commit record itself, with no valid commit record after it, looks like a crash just
//!   before that record reached the disk, so the final batch is dropped as torn although its sync may have
//!   returned (that loses at most what a crash at that moment would). This holds even when records of a later,
//!   unacknowledged batch follow, which proves the damaged batch was acknowledged: nothing in those records says
//!   which batch they belong to.
//! - A batch and its commit record share one `fdatasync`, so a crash can persist the page holding the commit
//!   record before an earlier page of the same batch. That unacknowledged batch then looks committed and
//!   damaged, and replay reports [`WalError::Corrupt`]. Ruling this out would take a second `fdatasync` per
//!   sync (records, then the commit record).
//!
//! Deleting released segments (below) can remove the segment holding a batch's commit record while an older
//! segment holding the batch's first records survives. Such a segment was deleted only because a newer one
//! existed, which means its batches were committed, so replay accepts the tail of a segment whose successor
//! file does not continue it (non-contiguous LSNs) as committed.
//!
//! # Release
//!
//! [`Wal::release`] records that a group no longer needs its records up to some LSN (it took a snapshot, which
//! must already be durable). Release points are themselves logged, as `RELEASE_GROUP` records that become
//! durable with the next sync, and every new segment restates all current release points at its head, so
//! deleting old segments never forgets one. A segment file is deleted once every group that wrote into it has
//! released all its records there, unless it is the active segment. Replay skips records covered by a durable
//! release point, but a record released shortly before a crash may be returned again if its segment still
//! exists (the release record or the unlink may not have reached the disk): callers must skip records older
//! than their snapshot.
//!
//! # Limits
//!
//! One `Wal` per directory: [`Wal::open`] takes an exclusive lock on the directory's `LOCK` file
//! ([`File::try_lock`], `flock` on Linux) before reading anything, and holds it until the `Wal` is dropped. A
//! second open, from this process or another, fails with [`WalError::Locked`] once the lock has stayed held for
//! 100 ms: a child process being spawned holds copies of our descriptors until it execs, so a lock released by
//! dropping a `Wal` can look held for a moment. The lock is advisory, so it only keeps out other `Wal`s, and it
//! is only as reliable as the filesystem's `flock` (not on every network filesystem).
//!
//! Never lower `max_record_bytes` for an existing log, since longer records would then look damaged on replay.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const MAGIC: [u8; 8] = *b"MSDHTWAL";
const VERSION: u32 = 2;
const SEG_HEADER_LEN: u64 = 24;
const REC_HEADER_LEN: usize = 24;
/// One release point in a release record: `(group: u64, upto: u64)`.
const PAIR_LEN: usize = 16;
/// A commit record's payload: the LSN of its batch's first record.
const COMMIT_PAYLOAD_LEN: usize = 8;
/// A commit record's size on disk.
const COMMIT_LEN: u64 = (REC_HEADER_LEN + COMMIT_PAYLOAD_LEN) as u64;
/// Name of the lock file in the log directory.
const LOCK_FILE: &str = "LOCK";
/// How long `open` retries a held lock before reporting [`WalError::Locked`]. The lock belongs to the open file,
/// and a child process being spawned by another thread holds copies of our descriptors until it execs, so a
/// lock released by dropping a `Wal` can look held for a moment.
const LOCK_WAIT: Duration = Duration::from_millis(100);

/// Group id reserved for the WAL's own release records; `append` and `release` reject it.
pub const RELEASE_GROUP: u64 = u64::MAX;
/// Group id reserved for the commit record ending every batch; `append` and `release` reject it.
pub const COMMIT_GROUP: u64 = u64::MAX - 1;

/// Whether `group` is one of the WAL's own ([`RELEASE_GROUP`], [`COMMIT_GROUP`]).
fn is_reserved(group: u64) -> bool {
    group >= COMMIT_GROUP
}

/// Tuning for a [`Wal`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Start a new segment when the next record, plus a commit record after it, would make the active one exceed
    /// this size. A record larger than this gets a segment of its own.
    pub segment_bytes: u64,
    /// Largest payload `append` accepts (at least 16, the size of one release point).
    pub max_record_bytes: u32,
    /// Zeros written ahead of the active segment's end, this many bytes at a time (0: none). A sync that grows
    /// its file must also make the new size durable (a journal commit on ext4); one that overwrites blocks
    /// already written flushes data only, which costs about 0.6x as much on this VM's disk (`dd oflag=dsync
    /// bs=4k`, appending vs overwriting). Replay takes zeros after the last record for this fill, not for a
    /// torn write.
    pub prefill_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self { segment_bytes: 64 << 20, max_record_bytes: 16 << 20, prefill_bytes: 1 << 20 }
    }
}

/// One record as returned by replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub lsn: u64,
    pub group: u64,
    pub payload: Vec<u8>,
}

/// What [`Wal::open`] recovered.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every committed, unreleased record, in LSN order.
    pub records: Vec<Record>,
    /// Bytes cut off the end of the log because the process died before committing them: the last batch if
    /// its commit record is missing (in every segment it reached), damaged bytes after it, and segment files
    /// that died while being created.
    pub torn_bytes: u64,
}

#[derive(thiserror::Error, Debug)]
pub enum WalError {
    #[error("WAL I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// ENOSPC or EDQUOT. From `sync`: nothing of that batch is durable, the log on disk is unchanged and valid,
    /// and a later sync may succeed once space is freed.
    #[error("disk full writing WAL file {}", path.display())]
    DiskFull { path: PathBuf },
    /// Damage that cannot be a torn tail: a valid commit record follows it, or it is not in the last segment.
    #[error("corrupt WAL segment {} at offset {offset}: {reason}", segment.display())]
    Corrupt { segment: PathBuf, offset: u64, reason: String },
    #[error("WAL record of {len} bytes exceeds max_record_bytes ({max})")]
    RecordTooLarge { len: usize, max: u32 },
    #[error("group id {0} is reserved for the WAL's own records")]
    ReservedGroup(u64),
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    /// A failed sync could not be rolled back, so the files may hold records the caller was told failed.
    /// Every later call fails; reopen the log to recover.
    #[error("WAL unusable, reopen it: {0}")]
    Poisoned(String),
    /// Another open [`Wal`], in this process or another, holds the directory's lock file `path`. Nothing was
    /// read or changed.
    #[error("WAL directory is already open: {} is locked", path.display())]
    Locked { path: PathBuf },
}

fn io_err(path: &Path, source: io::Error) -> WalError {
    match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => WalError::DiskFull { path: path.to_owned() },
        _ => WalError::Io { path: path.to_owned(), source },
    }
}

/// A segment file on disk. The last one in [`Wal::segments`] is the active one.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Synced length.
    len: u64,
    /// Highest LSN each group wrote here; the WAL's own records are not listed.
    groups: HashMap<u64, u64>,
}

/// Records appended since the last sync that go to one segment: the active one, or one that sync creates.
#[derive(Debug, Default)]
struct Chunk {
    new_segment: Option<u64>,
    bytes: Vec<u8>,
    groups: HashMap<u64, u64>,
}

/// The syscalls sync depends on, in one place so tests can count fdatasyncs and inject failures.
#[derive(Debug, Default)]
struct Disk {
    fsyncs: u64,
    #[cfg(test)]
    fault: Option<Fault>,
}

/// Test hook: after `skip` matching operations, fail the next `count` with `errno`.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
struct Fault {
    op: FaultOp,
    skip: u32,
    count: u32,
    errno: i32,
}

#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultOp {
    /// The write stores half its bytes, then fails, like a real short write on a full disk.
    Write,
    /// A segment's fdatasync fails.
    Sync,
}

impl Disk {
    #[cfg(test)]
    fn injected(&mut self, op: FaultOp) -> Option<io::Error> {
        let fault = self.fault.as_mut().filter(|f| f.op == op && f.count > 0)?;
        if fault.skip > 0 {
            fault.skip -= 1;
            return None;
        }
        fault.count -= 1;
        Some(io::Error::from_raw_os_error(fault.errno))
    }

    fn write_at(&mut self, file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<(), WalError> {
        #[cfg(test)]
        if let Some(err) = self.injected(FaultOp::Write) {
            file.write_all_at(&buf[..buf.len() / 2], offset).map_err(|e| io_err(path, e))?;
            return Err(io_err(path, err));
        }
        file.write_all_at(buf, offset).map_err(|e| io_err(path, e))
    }

    fn sync_data(&mut self, file: &File, path: &Path) -> Result<(), WalError> {
        self.fsyncs += 1;
        #[cfg(test)]
        if let Some(err) = self.injected(FaultOp::Sync) {
            return Err(io_err(path, err));
        }
        file.sync_data().map_err(|e| io_err(path, e))
    }

    /// Makes file creations and removals in `dir` durable.
    fn sync_dir(&mut self, dir: &Path) -> Result<(), WalError> {
        self.fsyncs += 1;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
    }
}

/// The write-ahead log. See the module docs for format and guarantees.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    /// By first LSN; never empty.
    segments: BTreeMap<u64, Segment>,
    /// Open handle on the last segment.
    active: File,
    pending: Vec<Chunk>,
    /// LSN of the first record in `pending`, named by the batch's commit record; stale while it is empty.
    batch_first: u64,
    /// Length the segment receiving the next record will have once `pending` is written.
    tail_len: u64,
    /// Length of the active segment's file: its records, then zeros written ahead (`prefill_bytes`).
    filled: u64,
    next_lsn: u64,
    durable_lsn: u64,
    /// Group -> highest LSN it released.
    released: HashMap<u64, u64>,
    disk: Disk,
    poisoned: Option<String>,
    /// The directory's lock file, exclusively locked; closing it on drop releases the lock.
    _lock: File,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and replays it: returns every committed record in LSN
    /// order, minus those covered by a durable release point. A torn tail is truncated away and reported in
    /// [`Replay::torn_bytes`]; other damage is [`WalError::Corrupt`]. Fails with [`WalError::Locked`] while
    /// another `Wal` has `dir` open.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Replay), WalError> {
        if (opts.max_record_bytes as usize) < PAIR_LEN {
            return Err(WalError::InvalidOptions(format!("max_record_bytes must be at least {PAIR_LEN}")));
        }
        let mut disk = Disk::default();
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            disk.sync_dir(parent)?;
        }
        // Before reading anything: replay truncates files, which must not happen under another open Wal.
        let lock = lock_dir(dir)?;

        let scan = scan_log(dir, &opts)?;
        let mut replay = Replay { records: scan.records, torn_bytes: 0 };
        // Zeros after the last record of the last segment are the fill written ahead (when this log writes
        // one), kept for reuse: neither torn nor cut.
        let last_path = scan.segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let is_fill =
            |s: &ScannedSegment, keep: u64| opts.prefill_bytes > 0 && s.path == last_path && keep >= s.zeros_from;
        let mut filled =
            scan.segments.last().and_then(|s| Some(if is_fill(s, s.keep?) { s.disk_len } else { s.keep? }));
        // Newest first, each change durable before the next: whatever prefix of them a crash keeps, the log
        // replays to the same records.
        for seg in scan.segments.iter().rev() {
            match seg.keep {
                None => {
                    replay.torn_bytes += seg.disk_len;
                    fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
                    disk.sync_dir(dir)?;
                }
                Some(keep) if is_fill(seg, keep) => {}
                Some(keep) if keep < seg.disk_len => {
                    replay.torn_bytes += seg.disk_len - keep;
                    let file = OpenOptions::new().write(true).open(&seg.path).map_err(|e| io_err(&seg.path, e))?;
                    file.set_len(keep).map_err(|e| io_err(&seg.path, e))?;
                    disk.sync_data(&file, &seg.path)?;
                }
                Some(_) => {}
            }
        }
        let mut segments: BTreeMap<u64, Segment> = scan
            .segments
            .into_iter()
            .filter_map(|s| Some((s.first_lsn, Segment { path: s.path, len: s.keep?, groups: s.groups })))
            .collect();

        let mut next_lsn = scan.last_lsn + 1;
        match segments.last_key_value() {
            // A last segment holding no record yet still claims the LSNs from its name on.
            Some((&first, _)) => next_lsn = next_lsn.max(first),
            None => {
                let path = segment_path(dir, next_lsn);
                let file = create_file(&path)?;
                disk.write_at(&file, &path, &segment_header(next_lsn), 0)?;
                disk.sync_data(&file, &path)?;
                disk.sync_dir(dir)?;
                segments.insert(next_lsn, Segment { path, len: SEG_HEADER_LEN, groups: HashMap::new() });
                filled = Some(SEG_HEADER_LEN);
            }
        }
        let (_, last) = segments.last_key_value().expect("at least one segment");
        let active = OpenOptions::new().read(true).write(true).open(&last.path).map_err(|e| io_err(&last.path, e))?;

        let mut released = scan.released;
        replay.records.retain(|r| released.get(&r.group).is_none_or(|&upto| r.lsn > upto));
        released.retain(|g, _| segments.values().any(|s| s.groups.contains_key(g)));
        let wal = Wal {
            dir: dir.to_owned(),
            opts,
            tail_len: last.len,
            filled: filled.unwrap_or(0).max(last.len),
            segments,
            active,
            pending: Vec::new(),
            batch_first: next_lsn,
            next_lsn,
            durable_lsn: next_lsn - 1,
            released,
            disk,
            poisoned: None,
            _lock: lock,
        };
        Ok((wal, replay))
    }

    /// Buffers a record and returns its LSN. LSNs increase monotonically and a durable one is never handed out
    /// again, even across restarts (one lost unsynced in a crash may be). Not durable until [`Wal::sync`].
    pub fn append(&mut self, group: u64, payload: &[u8]) -> Result<u64, WalError> {
        self.check_usable()?;
        if is_reserved(group) {
            return Err(WalError::ReservedGroup(group));
        }
        if payload.len() > self.opts.max_record_bytes as usize {
            return Err(WalError::RecordTooLarge { len: payload.len(), max: self.opts.max_record_bytes });
        }
        Ok(self.push(group, payload))
    }

    /// Writes everything appended since the last sync, closed by a commit record, and fdatasyncs it once (once
    /// per segment if the batch fills one). On error the batch is dropped and the files are cut back to their
    /// last synced state, so no partial record remains; the `Wal` stays usable unless the error is
    /// [`WalError::Poisoned`].
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        // `push` left room for it in the segment of the batch's last record.
        let first = self.batch_first.to_le_bytes();
        self.encode(COMMIT_GROUP, &first);
        let chunks = std::mem::take(&mut self.pending);
        let base_len = self.active_segment().len;
        let mut created = Vec::new();
        let filled = match self.write_batch(&chunks, &mut created) {
            Ok(filled) => filled,
            Err(err) => {
                self.tail_len = base_len;
                self.filled = base_len;
                return Err(match self.undo_batch(base_len, created) {
                    Ok(()) => err,
                    Err(undo) => {
                        let msg = format!("sync failed ({err}) and undoing it failed ({undo})");
                        self.poisoned = Some(msg.clone());
                        WalError::Poisoned(msg)
                    }
                });
            }
        };
        self.filled = filled;

        let mut created = created.into_iter();
        for chunk in chunks {
            if chunk.new_segment.is_some() {
                let (first, path, file) = created.next().expect("one file per new segment");
                self.segments.insert(first, Segment { path, len: SEG_HEADER_LEN, groups: HashMap::new() });
                self.active = file;
            }
            let seg = self.segments.values_mut().next_back().expect("at least one segment");
            seg.len += chunk.bytes.len() as u64;
            // The chunk's LSNs are all newer than the segment's, so overwriting keeps the maximum.
            seg.groups.extend(chunk.groups);
        }
        self.tail_len = self.active_segment().len;
        self.durable_lsn = self.next_lsn - 1;
        Ok(())
    }

    /// The LSN of the last durable record (the commit record of the last successful sync): every LSN up to it
    /// was synced, or dropped by a sync that failed.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    /// `group` no longer needs its records with `lsn <= upto` (clamped to LSNs already handed out). Deletes the
    /// segment files, other than the active one, whose records are all released. The release point becomes
    /// durable with the next sync.
    pub fn release(&mut self, group: u64, upto: u64) -> Result<(), WalError> {
        self.check_usable()?;
        if is_reserved(group) {
            return Err(WalError::ReservedGroup(group));
        }
        // A future record of this group must never count as released.
        let upto = upto.min(self.next_lsn - 1);
        if upto <= self.released.get(&group).copied().unwrap_or(0) {
            return Ok(());
        }
        self.released.insert(group, upto);
        self.push(RELEASE_GROUP, &release_pair(group, upto));
        self.delete_released()
    }

    /// Number of segment files on disk.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Total synced bytes in the segment files.
    pub fn total_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// Number of fdatasync/fsync calls made so far (a metric, and how tests check group commit).
    pub fn fsyncs(&self) -> u64 {
        self.disk.fsyncs
    }

    fn check_usable(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(msg) => Err(WalError::Poisoned(msg.clone())),
            None => Ok(()),
        }
    }

    fn active_segment(&self) -> &Segment {
        self.segments.values().next_back().expect("at least one segment")
    }

    /// Buffers a record, first starting a new segment if it and the commit record that may follow it would
    /// overflow the current one.
    fn push(&mut self, group: u64, payload: &[u8]) -> u64 {
        if self.pending.is_empty() {
            self.batch_first = self.next_lsn;
        }
        let size = (REC_HEADER_LEN + payload.len()) as u64;
        if self.tail_len > SEG_HEADER_LEN && self.tail_len + size + COMMIT_LEN > self.opts.segment_bytes {
            // Named after the next LSN: replay relies on that to see that a batch continues here.
            self.pending.push(Chunk { new_segment: Some(self.next_lsn), ..Chunk::default() });
            self.tail_len = SEG_HEADER_LEN;
            // Restate every release point, so deleting the segments holding the original release records
            // never loses one.
            let mut points: Vec<(u64, u64)> = self.released.iter().map(|(&g, &u)| (g, u)).collect();
            points.sort_unstable();
            for part in points.chunks(self.opts.max_record_bytes as usize / PAIR_LEN) {
                let bytes: Vec<u8> = part.iter().flat_map(|&(g, u)| release_pair(g, u)).collect();
                self.encode(RELEASE_GROUP, &bytes);
            }
        }
        self.encode(group, payload)
    }

    fn encode(&mut self, group: u64, payload: &[u8]) -> u64 {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        if self.pending.is_empty() {
            self.pending.push(Chunk::default());
        }
        let chunk = self.pending.last_mut().expect("just ensured");
        encode_record(&mut chunk.bytes, lsn, group, payload);
        if !is_reserved(group) {
            chunk.groups.insert(group, lsn);
        }
        self.tail_len += (REC_HEADER_LEN + payload.len()) as u64;
        lsn
    }

    /// Writes and syncs a batch, returning the length of the file it ends in (zeros written ahead included).
    /// New segment files go into `created` as soon as they exist, for undo.
    fn write_batch(&mut self, chunks: &[Chunk], created: &mut Vec<(u64, PathBuf, File)>) -> Result<u64, WalError> {
        let active = self.segments.values().next_back().expect("at least one segment");
        let mut offset = active.len;
        // Length of the file being written: only the active one may hold zeros written ahead.
        let mut file_len = self.filled;
        let mut unsynced = false;
        let mut dir_dirty = false;
        for chunk in chunks {
            if let Some(first) = chunk.new_segment {
                // Replay forgives damage only in the last segment, so a segment must be complete (data and
                // directory entry) before any newer one exists, and end at its last record: zeros written ahead
                // are cut off first, as replay takes zeros only at the end of the last segment for fill.
                if file_len > offset {
                    let (path, file) = current(created, &active.path, &self.active);
                    file.set_len(offset).map_err(|e| io_err(path, e))?;
                    unsynced = true;
                }
                if unsynced {
                    let (path, file) = current(created, &active.path, &self.active);
                    self.disk.sync_data(file, path)?;
                }
                if dir_dirty {
                    self.disk.sync_dir(&self.dir)?;
                }
                let path = segment_path(&self.dir, first);
                let file = create_file(&path)?;
                created.push((first, path, file));
                dir_dirty = true;
                let (path, file) = current(created, &active.path, &self.active);
                self.disk.write_at(file, path, &segment_header(first), 0)?;
                offset = SEG_HEADER_LEN;
                file_len = SEG_HEADER_LEN;
            }
            let (path, file) = current(created, &active.path, &self.active);
            self.disk.write_at(file, path, &chunk.bytes, offset)?;
            offset += chunk.bytes.len() as u64;
            file_len = file_len.max(offset);
            unsynced = true;
        }
        let (path, file) = current(created, &active.path, &self.active);
        // The batch grew the file: write zeros ahead, so the next syncs overwrite instead of growing it.
        let step = self.opts.prefill_bytes;
        if step > 0 && offset == file_len {
            let target = (offset / step + 1).saturating_mul(step).min(self.opts.segment_bytes.max(offset));
            if target > offset {
                self.disk.write_at(file, path, &vec![0; (target - offset) as usize], offset)?;
                file_len = target;
            }
        }
        self.disk.sync_data(file, path)?;
        if dir_dirty {
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(file_len)
    }

    /// Returns the files to their state before a failed batch.
    fn undo_batch(&mut self, base_len: u64, created: Vec<(u64, PathBuf, File)>) -> Result<(), WalError> {
        // Newest first, each removal durable before the next, so a crash part-way leaves an uncommitted batch
        // (torn on replay) rather than a gap.
        for (_, path, file) in created.into_iter().rev() {
            drop(file);
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            self.disk.sync_dir(&self.dir)?;
        }
        let path = &self.segments.values().next_back().expect("at least one segment").path;
        self.active.set_len(base_len).map_err(|e| io_err(path, e))?;
        self.disk.sync_data(&self.active, path)
    }

    fn delete_released(&mut self) -> Result<(), WalError> {
        let active = *self.segments.keys().next_back().expect("at least one segment");
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|&(&first, seg)| {
                first != active
                    && seg.groups.iter().all(|(g, &max)| self.released.get(g).is_some_and(|&upto| upto >= max))
            })
            .map(|(&first, _)| first)
            .collect();
        for first in done {
            let path = &self.segments[&first].path;
            // No directory fsync: an unlink lost in a crash just brings back a valid, released segment.
            fs::remove_file(path).map_err(|e| io_err(path, e))?;
            self.segments.remove(&first);
        }
        // A release point matters only while its group has records on disk or pending: later records get
        // higher LSNs anyway.
        let (segments, pending) = (&self.segments, &self.pending);
        self.released.retain(|g, _| {
            segments.values().any(|s| s.groups.contains_key(g)) || pending.iter().any(|c| c.groups.contains_key(g))
        });
        Ok(())
    }
}

/// Creates `dir`'s lock file if needed and locks it exclusively, failing if it stays held for [`LOCK_WAIT`].
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
            Err(TryLockError::WouldBlock) => return Err(WalError::Locked { path }),
            Err(TryLockError::Error(e)) => return Err(io_err(&path, e)),
        }
    }
}

/// The file the batch is currently writing: the newest created segment, else the active one.
fn current<'a>(created: &'a [(u64, PathBuf, File)], path: &'a Path, file: &'a File) -> (&'a Path, &'a File) {
    match created.last() {
        Some((_, p, f)) => (p, f),
        None => (path, file),
    }
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("wal-{first_lsn:020}.log"))
}

fn create_file(path: &Path) -> Result<File, WalError> {
    OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(|e| io_err(path, e))
}

/// Segment files in `dir`, sorted by first LSN; other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let first = name
            .to_str()
            .and_then(|n| n.strip_prefix("wal-")?.strip_suffix(".log"))
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok());
        if let Some(first) = first {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn segment_header(first_lsn: u64) -> [u8; SEG_HEADER_LEN as usize] {
    let mut h = [0; SEG_HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = header_crc(&h);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

fn header_crc(h: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..12]);
    c.update(&h[16..24]);
    c.finalize()
}

fn record_crc(lsn: u64, group: u64, len: u32, payload: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&lsn.to_le_bytes());
    c.update(&group.to_le_bytes());
    c.update(&len.to_le_bytes());
    c.update(payload);
    c.finalize()
}

fn encode_record(out: &mut Vec<u8>, lsn: u64, group: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(lsn, group, len, payload).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(payload);
}

fn release_pair(group: u64, upto: u64) -> [u8; PAIR_LEN] {
    let mut p = [0; PAIR_LEN];
    p[..8].copy_from_slice(&group.to_le_bytes());
    p[8..].copy_from_slice(&upto.to_le_bytes());
    p
}

fn apply_release(released: &mut HashMap<u64, u64>, payload: &[u8]) -> Result<(), &'static str> {
    if !payload.len().is_multiple_of(PAIR_LEN) {
        return Err("release record length is not a multiple of 16");
    }
    for pair in payload.chunks_exact(PAIR_LEN) {
        let upto = released.entry(le_u64(pair, 0)).or_insert(0);
        *upto = (*upto).max(le_u64(pair, 8));
    }
    Ok(())
}

/// A record found in a segment, borrowing its payload from the file contents.
#[derive(Debug)]
struct Parsed<'a> {
    offset: usize,
    lsn: u64,
    group: u64,
    payload: &'a [u8],
}

/// Parses the record at `offset`, or says why there is no valid one there.
fn parse_at(data: &[u8], offset: usize, max: u32, min_lsn: u64) -> Result<Parsed<'_>, &'static str> {
    let rest = &data[offset..];
    if rest.len() < REC_HEADER_LEN {
        return Err("short record header");
    }
    let len = le_u32(rest, 0);
    if len > max {
        return Err("record length exceeds max_record_bytes");
    }
    let end = REC_HEADER_LEN + len as usize;
    if rest.len() < end {
        return Err("short record payload");
    }
    let (lsn, group) = (le_u64(rest, 8), le_u64(rest, 16));
    if lsn < min_lsn {
        return Err("record lsn does not follow the previous one");
    }
    let payload = &rest[REC_HEADER_LEN..end];
    if record_crc(lsn, group, len, payload) != le_u32(rest, 4) {
        return Err("record checksum mismatch");
    }
    Ok(Parsed { offset, lsn, group, payload })
}

/// Whether a valid commit record with an LSN of at least `min_lsn` starts anywhere in `data` from `from` on.
fn commit_record_after(data: &[u8], from: usize, min_lsn: u64) -> bool {
    let last_start = data.len().saturating_sub(COMMIT_LEN as usize);
    (from..=last_start).any(|o| {
        le_u32(data, o) as usize == COMMIT_PAYLOAD_LEN
            && le_u64(data, o + 16) == COMMIT_GROUP
            && parse_at(data, o, COMMIT_PAYLOAD_LEN as u32, min_lsn).is_ok()
    })
}

/// Checks a segment's header. `Ok(false)` means the last segment died while being created.
fn check_header(path: &Path, first_lsn: u64, data: &[u8], is_last: bool) -> Result<bool, WalError> {
    let corrupt = |offset: u64, reason: String| WalError::Corrupt { segment: path.to_owned(), offset, reason };
    let header_len = SEG_HEADER_LEN as usize;
    if is_last && (data.len() < header_len || data.iter().all(|&b| b == 0)) {
        return Ok(false);
    }
    if data.len() < header_len {
        return Err(corrupt(0, format!("short segment header: {} of {header_len} bytes", data.len())));
    }
    if data[..8] != MAGIC {
        return Err(corrupt(0, "bad magic: not a multispace WAL segment".into()));
    }
    let version = le_u32(data, 8);
    if version != VERSION {
        return Err(corrupt(8, format!("unsupported segment format version {version} (expected {VERSION})")));
    }
    if header_crc(data) != le_u32(data, 12) {
        return Err(corrupt(12, "segment header checksum mismatch".into()));
    }
    if le_u64(data, 16) != first_lsn {
        return Err(corrupt(
            16,
            format!("header says first lsn {} but the file name says {first_lsn}", le_u64(data, 16)),
        ));
    }
    Ok(true)
}

/// A segment file as replay found it.
#[derive(Debug)]
struct ScannedSegment {
    first_lsn: u64,
    path: PathBuf,
    disk_len: u64,
    /// Length to cut the file back to, dropping its torn part; `None` removes it (it died while being created).
    keep: Option<u64>,
    /// Where the zeros that end the file start (`disk_len` if it does not end in zeros).
    zeros_from: u64,
    /// Highest committed LSN each group has here.
    groups: HashMap<u64, u64>,
}

/// A record read from a segment, kept until a commit record shows its batch committed.
#[derive(Debug)]
struct Uncommitted {
    segment: usize,
    offset: u64,
    lsn: u64,
    group: u64,
    payload: Vec<u8>,
}

/// What replay read from the log, before cutting off the torn tail.
#[derive(Debug, Default)]
struct Scan {
    segments: Vec<ScannedSegment>,
    /// Committed records outside the reserved groups.
    records: Vec<Record>,
    released: HashMap<u64, u64>,
    /// LSN of the last committed record, 0 if none.
    last_lsn: u64,
}

impl Scan {
    /// Accepts the records of a batch known to be committed.
    fn commit(&mut self, batch: &mut Vec<Uncommitted>) -> Result<(), WalError> {
        for rec in batch.drain(..) {
            let seg = &mut self.segments[rec.segment];
            if rec.group == RELEASE_GROUP {
                apply_release(&mut self.released, &rec.payload).map_err(|reason| WalError::Corrupt {
                    segment: seg.path.clone(),
                    offset: rec.offset,
                    reason: reason.into(),
                })?;
            } else {
                seg.groups.insert(rec.group, rec.lsn);
                self.records.push(Record { lsn: rec.lsn, group: rec.group, payload: rec.payload });
            }
            self.last_lsn = rec.lsn;
        }
        Ok(())
    }
}

/// Reads every segment, keeping the records of committed batches, and works out which bytes are torn.
fn scan_log(dir: &Path, opts: &WalOptions) -> Result<Scan, WalError> {
    let files = list_segments(dir)?;
    let count = files.len();
    let mut scan = Scan::default();
    // Records read since the last commit record.
    let mut batch: Vec<Uncommitted> = Vec::new();
    // Just past the last commit record (segment index, offset): a batch starting there is seen from its start.
    let mut after_commit = None;
    let mut min_lsn = 1;
    for (i, (first_lsn, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let corrupt =
            |offset: usize, reason: String| WalError::Corrupt { segment: path.clone(), offset: offset as u64, reason };
        let data = fs::read(&path).map_err(|e| io_err(&path, e))?;
        scan.segments.push(ScannedSegment {
            first_lsn,
            path: path.clone(),
            disk_len: data.len() as u64,
            keep: None,
            zeros_from: data.iter().rposition(|b| *b != 0).map_or(0, |i| i as u64 + 1),
            groups: HashMap::new(),
        });
        if !check_header(&path, first_lsn, &data, is_last)? {
            continue;
        }
        // A batch continues into this segment only if rollover created it for the batch's next record. If not,
        // the segment that continued it was deleted, which happens only once a newer segment exists, i.e. once
        // the batch committed. Checked only past the header: a last segment that died while being created is
        // removed by this replay, so it cannot vouch for a batch (the next replay would call the batch torn).
        if batch.last().is_some_and(|r| r.lsn.saturating_add(1) != first_lsn) {
            scan.commit(&mut batch)?;
        }

        min_lsn = min_lsn.max(first_lsn);
        let mut offset = SEG_HEADER_LEN as usize;
        while offset < data.len() {
            let rec = match parse_at(&data, offset, opts.max_record_bytes, min_lsn) {
                Ok(rec) => rec,
                // A crash damages only the last segment, and only the batch it interrupted: a valid commit
                // record after the damage means it hit a committed batch.
                Err(reason) if !is_last || commit_record_after(&data, offset + 1, min_lsn) => {
                    return Err(corrupt(offset, reason.into()));
                }
                Err(_) => break,
            };
            offset += REC_HEADER_LEN + rec.payload.len();
            min_lsn = rec.lsn.saturating_add(1);
            if rec.group != COMMIT_GROUP {
                batch.push(Uncommitted {
                    segment: i,
                    offset: rec.offset as u64,
                    lsn: rec.lsn,
                    group: rec.group,
                    payload: rec.payload.to_vec(),
                });
                continue;
            }
            if rec.payload.len() != COMMIT_PAYLOAD_LEN {
                return Err(corrupt(rec.offset, "commit record payload is not 8 bytes".into()));
            }
            let named = le_u64(rec.payload, 0);
            // The batch may have started in a deleted segment unless the previous commit record is right before.
            let plausible = match batch.first() {
                Some(r) if after_commit == Some((r.segment, r.offset)) => named == r.lsn,
                Some(r) => named <= r.lsn,
                None => named < rec.lsn,
            };
            if !plausible {
                let seen = batch.first().map_or("none".to_string(), |r| r.lsn.to_string());
                return Err(corrupt(
                    rec.offset,
                    format!("commit record names batch start {named}, but the batch read starts at {seen}"),
                ));
            }
            scan.commit(&mut batch)?;
            scan.last_lsn = rec.lsn;
            after_commit = Some((i, offset as u64));
        }
        scan.segments[i].keep = Some(offset as u64);
    }
    // No commit record followed these: the batch being written when the process died, torn from its first
    // record on.
    if let Some(first) = batch.first() {
        for seg in &mut scan.segments[first.segment + 1..] {
            if let Some(keep) = &mut seg.keep {
                *keep = SEG_HEADER_LEN;
            }
        }
        scan.segments[first.segment].keep = Some(first.offset);
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;
    use std::process::Command;

    fn opts(segment_bytes: u64) -> WalOptions {
        WalOptions { segment_bytes, max_record_bytes: 4096, prefill_bytes: 0 }
    }

    /// The default options without zeros written ahead: tests that damage files at exact offsets expect them
    /// to end at their last record.
    fn plain() -> WalOptions {
        WalOptions { prefill_bytes: 0, ..WalOptions::default() }
    }

    fn open(dir: &Path, o: &WalOptions) -> (Wal, Replay) {
        Wal::open(dir, o.clone()).expect("open")
    }

    fn payload(seed: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (seed as usize * 31 + i) as u8).collect()
    }

    /// Appends and returns the record as replay should later return it.
    fn add(wal: &mut Wal, group: u64, payload: Vec<u8>) -> Record {
        let lsn = wal.append(group, &payload).expect("append");
        Record { lsn, group, payload }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir).unwrap().into_iter().map(|(_, p)| p).collect()
    }

    fn only_file(dir: &Path) -> PathBuf {
        let f = files(dir);
        assert_eq!(f.len(), 1, "expected one segment file: {f:?}");
        f[0].clone()
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    /// A fresh log directory holding exactly one segment with these bytes.
    fn dir_with(name: &Path, bytes: &[u8]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(name.file_name().unwrap()), bytes).unwrap();
        d
    }

    #[test]
    fn round_trip_across_syncs_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let o = plain();
        let (mut wal, replay) = open(dir.path(), &o);
        assert!(replay.records.is_empty());
        let mut expect = Vec::new();
        for batch in 0..5 {
            for group in 1..=3 {
                expect.push(add(&mut wal, group, payload(batch * 10 + group, 10 * group as usize)));
            }
            wal.sync().unwrap();
            // The batch's commit record took the LSN after its last record.
            assert_eq!(wal.durable_lsn(), expect.last().unwrap().lsn + 1);
        }
        expect.push(add(&mut wal, 4, Vec::new())); // empty payloads are records too
        wal.sync().unwrap();
        wal.append(9, b"appended, never synced").unwrap();
        drop(wal);

        let (mut wal, replay) = open(dir.path(), &o);
        assert_eq!(replay.records, expect);
        assert_eq!(replay.torn_bytes, 0);
        assert!(expect.windows(2).all(|w| w[0].lsn < w[1].lsn));
        let last = expect.last().unwrap().lsn;
        assert_eq!(wal.durable_lsn(), last + 1);
        let next = add(&mut wal, 1, b"after reopen".to_vec());
        assert!(next.lsn > last, "LSNs continue after reopen");
        wal.sync().unwrap();
        drop(wal);
        expect.push(next);
        assert_eq!(open(dir.path(), &o).1.records, expect);
    }

    #[test]
    fn group_commit_is_one_fdatasync_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), &plain());
        let before = wal.fsyncs();
        for i in 0..100 {
            wal.append(i % 7, &payload(i, 100)).unwrap();
        }
        wal.sync().unwrap();
        assert_eq!(wal.fsyncs() - before, 1);
        wal.sync().unwrap();
        assert_eq!(wal.fsyncs() - before, 1, "an empty sync does no I/O");
    }

    #[test]
    fn a_batch_spanning_segments_syncs_the_older_one_first() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), &opts(SEG_HEADER_LEN + 2 * 64 + COMMIT_LEN));
        let before = wal.fsyncs();
        for i in 0..3 {
            wal.append(1, &payload(i, 40)).unwrap();
        }
        wal.sync().unwrap();
        assert_eq!(wal.segments(), 2);
        // fdatasync the full segment before the new one exists, then the new one, then the directory.
        assert_eq!(wal.fsyncs() - before, 3);
    }

    #[test]
    fn release_cannot_cover_records_not_yet_appended() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(1 << 20);
        let (mut wal, _) = open(dir.path(), &o);
        wal.append(1, b"old").unwrap();
        wal.sync().unwrap();
        wal.release(1, u64::MAX).unwrap();
        let later = add(&mut wal, 1, b"new".to_vec());
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(open(dir.path(), &o).1.records, vec![later]);
    }

    #[test]
    fn rotation_and_release_delete_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(512);
        let (mut wal, _) = open(dir.path(), &o);
        let (mut last1, mut last2, mut mid2) = (0, 0, 0);
        for i in 0..40 {
            last1 = wal.append(1, &payload(i, 40)).unwrap();
            last2 = wal.append(2, &payload(i, 40)).unwrap();
            if i == 20 {
                mid2 = last2;
            }
            if i % 4 == 3 {
                wal.sync().unwrap();
            }
        }
        let n = wal.segments();
        assert!(n >= 5, "only {n} segments");
        assert_eq!(files(dir.path()).len(), n);
        assert!(files(dir.path()).iter().all(|f| file_len(f) <= 512));

        wal.release(1, last1).unwrap();
        assert_eq!(wal.segments(), n, "group 2 still needs every segment");
        wal.release(2, mid2).unwrap();
        let m = wal.segments();
        assert!(1 < m && m < n, "{m} segments left of {n}");
        wal.release(2, last2).unwrap();
        assert_eq!(wal.segments(), 1, "only the active segment survives");
        assert_eq!(files(dir.path()).len(), 1);
        wal.sync().unwrap();
        assert_eq!(wal.total_bytes(), file_len(&only_file(dir.path())));
        drop(wal);

        let (mut wal, replay) = open(dir.path(), &o);
        assert!(replay.records.is_empty(), "released records are skipped: {:?}", replay.records);
        assert_eq!(wal.segments(), 1);
        let new = add(&mut wal, 3, b"fresh".to_vec());
        assert!(new.lsn > last2);
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(open(dir.path(), &o).1.records, vec![new]);
    }

    #[test]
    fn release_points_survive_restart_via_segment_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        // Three 40-byte-payload records (64 bytes each) and a commit record fill a segment.
        let o = opts(SEG_HEADER_LEN + 3 * 64 + COMMIT_LEN);
        let p = [7u8; 40];
        let (mut wal, _) = open(dir.path(), &o);
        // Segment A: groups 3, 1, 2.
        let g3 = add(&mut wal, 3, p.to_vec());
        let g1 = wal.append(1, &p).unwrap();
        wal.append(2, &p).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.segments(), 1);
        // Segment B: group 2, group 1's release record, group 2.
        wal.append(2, &p).unwrap();
        wal.release(1, g1).unwrap();
        wal.append(2, &p).unwrap();
        // Segment C starts with a checkpoint restating group 1's release point.
        let last2 = wal.append(2, &p).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.segments(), 3);
        // B goes (only group 2 wrote there); A stays, group 3 still needs it.
        wal.release(2, last2).unwrap();
        assert_eq!(wal.segments(), 2);
        wal.sync().unwrap();
        drop(wal);

        // Group 1's original release record went with B: its point must come from C's checkpoint.
        let (mut wal, replay) = open(dir.path(), &o);
        assert_eq!(replay.records, vec![g3.clone()]);
        assert_eq!(wal.released.get(&1), Some(&g1));
        wal.release(3, g3.lsn).unwrap();
        assert_eq!(wal.segments(), 1, "A is deletable only if group 1's release point was restored");
    }

    /// Two batches: two synced records, then a third; returns the dir, the records, and where the second
    /// batch starts in the file.
    fn three_records(o: &WalOptions) -> (tempfile::TempDir, Vec<Record>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), o);
        let mut recs = Vec::new();
        for g in 1..=2 {
            recs.push(add(&mut wal, g, payload(g, 40)));
        }
        wal.sync().unwrap();
        let start = wal.total_bytes();
        recs.push(add(&mut wal, 3, payload(3, 40)));
        wal.sync().unwrap();
        (dir, recs, start)
    }

    #[test]
    fn torn_tail_at_every_cut_point_is_truncated() {
        let o = plain();
        let (dir, recs, start) = three_records(&o);
        let seg = only_file(dir.path());
        let full = fs::read(&seg).unwrap();
        assert_eq!(full.len() as u64, start + REC_HEADER_LEN as u64 + 40 + COMMIT_LEN);
        for cut in start + 1..full.len() as u64 {
            let d = dir_with(&seg, &full[..cut as usize]);
            let (mut wal, replay) = open(d.path(), &o);
            assert_eq!(replay.records, recs[..2], "cut at {cut}");
            assert_eq!(replay.torn_bytes, cut - start, "cut at {cut}");
            assert_eq!(file_len(&only_file(d.path())), start, "torn bytes are gone from the file");
            let next = add(&mut wal, 9, b"next".to_vec());
            wal.sync().unwrap();
            drop(wal);
            let (_, replay) = open(d.path(), &o);
            assert_eq!(replay.records, [&recs[..2], &[next]].concat(), "cut at {cut}");
            assert_eq!(replay.torn_bytes, 0);
        }
    }

    #[test]
    fn segment_torn_during_creation_is_removed() {
        let o = plain();
        let (dir, recs, _) = three_records(&o);
        let next_name = segment_path(dir.path(), 1000);
        for bytes in [segment_header(1000)[..10].to_vec(), vec![0; SEG_HEADER_LEN as usize]] {
            fs::write(&next_name, &bytes).unwrap();
            let (wal, replay) = open(dir.path(), &o);
            assert_eq!(replay.records, recs);
            assert_eq!(replay.torn_bytes, bytes.len() as u64);
            assert_eq!(wal.segments(), 1);
            assert!(!next_name.exists());
        }
    }

    #[test]
    fn a_segment_that_died_while_being_created_does_not_commit_the_batch_before_it() {
        // Found by fuzzing (fuzz/ target `wal`): a committed batch, then a segment whose batch has no commit
        // record, then a dead segment with a non-contiguous name. The first replay took the dead segment as proof
        // that the batch before it committed, returned its record, and removed the dead segment; the second
        // replay then cut the same record off as torn.
        let dir = tempfile::tempdir().unwrap();
        let mut seg = segment_header(1).to_vec();
        encode_record(&mut seg, 1, 1, b"committed");
        encode_record(&mut seg, 2, COMMIT_GROUP, &1u64.to_le_bytes());
        fs::write(segment_path(dir.path(), 1), &seg).unwrap();
        let mut seg = segment_header(3).to_vec();
        encode_record(&mut seg, 3, 1, b"never committed");
        fs::write(segment_path(dir.path(), 3), &seg).unwrap();
        fs::write(segment_path(dir.path(), 255), &segment_header(255)[..10]).unwrap();
        let o = plain();
        let committed = [Record { lsn: 1, group: 1, payload: b"committed".to_vec() }];
        let (wal, first) = open(dir.path(), &o);
        assert_eq!(first.records, committed);
        drop(wal);
        let (_, second) = open(dir.path(), &o);
        assert_eq!(second.records, committed);
        assert_eq!(second.torn_bytes, 0);
    }

    #[test]
    fn flipped_bit_in_a_committed_record_is_corrupt() {
        let o = plain();
        let (dir, _, start2) = three_records(&o);
        let seg = only_file(dir.path());
        let full = fs::read(&seg).unwrap();
        // Two records and a commit record, then the last batch's record; its commit record comes next.
        let rec = REC_HEADER_LEN as u64 + 40;
        let starts = [SEG_HEADER_LEN, SEG_HEADER_LEN + rec, SEG_HEADER_LEN + 2 * rec, start2];
        assert_eq!(starts[2] + COMMIT_LEN, start2);
        let final_commit = full.len() as u64 - COMMIT_LEN;
        for pos in SEG_HEADER_LEN..final_commit {
            let mut bytes = full.clone();
            bytes[pos as usize] ^= 1 << (pos % 8);
            let d = dir_with(&seg, &bytes);
            match Wal::open(d.path(), o.clone()) {
                Err(WalError::Corrupt { segment, offset, .. }) => {
                    assert_eq!(segment, d.path().join(seg.file_name().unwrap()));
                    let hit = *starts.iter().rev().find(|&&s| s <= pos).unwrap();
                    assert_eq!(offset, hit, "flip at {pos}");
                }
                other => panic!("flip at {pos}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn flipped_bit_in_the_final_commit_record_is_torn() {
        let o = plain();
        let (dir, recs, start2) = three_records(&o);
        let seg = only_file(dir.path());
        let full = fs::read(&seg).unwrap();
        // Indistinguishable from a crash before the commit record was complete: the batch is dropped.
        for pos in full.len() as u64 - COMMIT_LEN..full.len() as u64 {
            let mut bytes = full.clone();
            bytes[pos as usize] ^= 1 << (pos % 8);
            let d = dir_with(&seg, &bytes);
            let (_, replay) = open(d.path(), &o);
            assert_eq!(replay.records, recs[..2], "flip at {pos}");
            assert_eq!(replay.torn_bytes, full.len() as u64 - start2);
        }
    }

    /// Zeroes `bytes`, or garbles them so that every byte changes.
    fn punch(bytes: &mut [u8], garble: bool) {
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = if garble { *b ^ (0xA5u8.wrapping_add(i as u8) | 1) } else { 0 };
        }
    }

    const REC40: u64 = REC_HEADER_LEN as u64 + 40;

    /// Two committed batches of two records, then a final batch of four, all with 40-byte payloads, in one
    /// segment. Returns the dir, the records of the first two batches, and where the final batch starts.
    fn two_batches_and_a_final_one(o: &WalOptions) -> (tempfile::TempDir, Vec<Record>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), o);
        let mut committed = Vec::new();
        for batch in 0..2 {
            for g in 1..=2 {
                committed.push(add(&mut wal, g, payload(batch * 2 + g, 40)));
            }
            wal.sync().unwrap();
        }
        let start = wal.total_bytes();
        for i in 0..4 {
            wal.append(5 + i, &payload(10 + i, 40)).unwrap();
        }
        wal.sync().unwrap();
        assert_eq!(wal.total_bytes(), start + 4 * REC40 + COMMIT_LEN);
        (dir, committed, start)
    }

    #[test]
    fn hole_in_the_final_uncommitted_batch_is_torn() {
        let o = plain();
        let (dir, committed, start) = two_batches_and_a_final_one(&o);
        let seg = only_file(dir.path());
        let full = fs::read(&seg).unwrap();
        // The crash came before the commit record reached the disk, and the batch's pages arrived out of order.
        let end = full.len() - COMMIT_LEN as usize;
        let last_rec = end - REC40 as usize;
        let mut cases = 0;
        for hole_start in (start as usize..last_rec).step_by(11) {
            for hole_len in [1, 9, 40, 64, 150] {
                let hole_end = (hole_start + hole_len).min(last_rec);
                for garble in [false, true] {
                    let mut bytes = full[..end].to_vec();
                    punch(&mut bytes[hole_start..hole_end], garble);
                    let case = format!("hole {hole_start}..{hole_end}, garble {garble}");
                    // Intact records of the same batch follow the hole.
                    assert!(parse_at(&bytes, last_rec, o.max_record_bytes, 0).is_ok(), "{case}");
                    let d = dir_with(&seg, &bytes);
                    let (mut wal, replay) = open(d.path(), &o);
                    assert_eq!(replay.records, committed, "{case}");
                    assert_eq!(replay.torn_bytes, end as u64 - start, "{case}");
                    assert_eq!(file_len(&only_file(d.path())), start, "{case}");
                    let next = add(&mut wal, 9, b"next".to_vec());
                    wal.sync().unwrap();
                    drop(wal);
                    let (_, replay) = open(d.path(), &o);
                    assert_eq!(replay.records, [&committed[..], &[next]].concat(), "{case}");
                    assert_eq!(replay.torn_bytes, 0, "{case}");
                    cases += 1;
                }
            }
        }
        assert!(cases > 100);
    }

    #[test]
    fn hole_in_a_committed_batch_is_corrupt() {
        let o = plain();
        let (dir, _, start) = two_batches_and_a_final_one(&o);
        let seg = only_file(dir.path());
        let full = fs::read(&seg).unwrap();
        let expect_corrupt = |bytes: &[u8], offset: u64, case: &str| {
            let d = dir_with(&seg, bytes);
            match Wal::open(d.path(), o.clone()) {
                Err(WalError::Corrupt { offset: got, .. }) => assert_eq!(got, offset, "{case}"),
                other => panic!("{case}: expected Corrupt, got {other:?}"),
            }
        };
        // The same holes as in the uncommitted case, but the batch's commit record is intact.
        let end = full.len() - COMMIT_LEN as usize;
        let mut cases = 0;
        for hole_start in (start as usize..end).step_by(11) {
            for hole_len in [1, 9, 40, 64, 150] {
                let hole_end = (hole_start + hole_len).min(end);
                for garble in [false, true] {
                    let mut bytes = full.clone();
                    punch(&mut bytes[hole_start..hole_end], garble);
                    // Zeroing bytes that were zero already damages nothing.
                    let Some(first) = (hole_start..hole_end).find(|&i| bytes[i] != full[i]) else { continue };
                    let hit = start + (first as u64 - start) / REC40 * REC40;
                    expect_corrupt(&bytes, hit, &format!("hole {hole_start}..{hole_end}, garble {garble}"));
                    cases += 1;
                }
            }
        }
        assert!(cases > 100);

        // A hole in an earlier batch is Corrupt even when the final batch is uncommitted, and so is a hole in
        // a commit record that a later committed batch follows.
        let first_commit = SEG_HEADER_LEN + 2 * REC40;
        for (hole, uncommitted_tail, hit) in [
            (SEG_HEADER_LEN + 30..SEG_HEADER_LEN + 90, true, SEG_HEADER_LEN),
            (first_commit + 4..first_commit + 12, false, first_commit),
            (first_commit + 4..first_commit + 12, true, first_commit),
        ] {
            let mut bytes = if uncommitted_tail { full[..end].to_vec() } else { full.clone() };
            punch(&mut bytes[hole.start as usize..hole.end as usize], true);
            expect_corrupt(&bytes, hit, &format!("hole {hole:?}, uncommitted tail {uncommitted_tail}"));
        }
    }

    #[test]
    fn crash_between_the_last_record_and_its_commit_record_drops_the_whole_batch() {
        let o = plain();
        let (dir, committed, start) = two_batches_and_a_final_one(&o);
        let seg = only_file(dir.path());
        let full = fs::read(&seg).unwrap();
        let end = full.len() as u64;
        for cut in end - COMMIT_LEN..end {
            let bytes = &full[..cut as usize];
            // All four records are intact.
            let mut at = start as usize;
            while at < (end - COMMIT_LEN) as usize {
                at += REC_HEADER_LEN + parse_at(bytes, at, o.max_record_bytes, 0).unwrap().payload.len();
            }
            let d = dir_with(&seg, bytes);
            let (mut wal, replay) = open(d.path(), &o);
            assert_eq!(replay.records, committed, "cut at {cut}");
            assert_eq!(replay.torn_bytes, cut - start, "cut at {cut}");
            assert_eq!(file_len(&only_file(d.path())), start);
            let next = add(&mut wal, 9, b"next".to_vec());
            assert!(next.lsn > committed.last().unwrap().lsn + 1, "after the last durable commit record");
            wal.sync().unwrap();
            drop(wal);
            assert_eq!(open(d.path(), &o).1.records, [&committed[..], &[next]].concat());
        }
    }

    #[test]
    fn uncommitted_batch_spanning_segments_is_torn_in_every_segment() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two records and two commit records.
        let o = opts(SEG_HEADER_LEN + 2 * REC40 + 2 * COMMIT_LEN);
        let (mut wal, _) = open(dir.path(), &o);
        let a = add(&mut wal, 1, payload(1, 40));
        wal.sync().unwrap();
        // Segment 1 gets one record of the batch, segment 2 two, segment 3 the last one and the commit record.
        for i in 0..4 {
            wal.append(2, &payload(10 + i, 40)).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let segs = files(dir.path());
        let lens: Vec<u64> = segs.iter().map(|p| file_len(p)).collect();
        assert_eq!(
            lens,
            [SEG_HEADER_LEN + 2 * REC40 + COMMIT_LEN, SEG_HEADER_LEN + 2 * REC40, SEG_HEADER_LEN + REC40 + COMMIT_LEN]
        );
        let last = segs.last().unwrap();
        fs::OpenOptions::new().write(true).open(last).unwrap().set_len(lens[2] - COMMIT_LEN).unwrap();

        let (mut wal, replay) = open(dir.path(), &o);
        assert_eq!(replay.records, std::slice::from_ref(&a));
        assert_eq!(replay.torn_bytes, 4 * REC40);
        let cut: Vec<u64> = segs.iter().map(|p| file_len(p)).collect();
        assert_eq!(cut, [SEG_HEADER_LEN + REC40 + COMMIT_LEN, SEG_HEADER_LEN, SEG_HEADER_LEN]);
        assert_eq!(wal.total_bytes(), cut.iter().sum::<u64>());
        let next = add(&mut wal, 3, b"next".to_vec());
        wal.sync().unwrap();
        drop(wal);
        // The batch's records in the older segments must not come back with the next commit record.
        let (_, replay) = open(dir.path(), &o);
        assert_eq!(replay.records, [a, next]);
        assert_eq!(replay.torn_bytes, 0);
    }

    #[test]
    fn batch_tail_whose_commit_segment_was_deleted_stays_committed() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two records and a commit record.
        let o = opts(SEG_HEADER_LEN + 2 * REC40 + COMMIT_LEN);
        let (mut wal, _) = open(dir.path(), &o);
        // One batch: segment 1 gets b1 (group 1) and b2, segment 2 gets b3 and the commit record.
        let b1 = add(&mut wal, 1, payload(1, 40));
        let b2 = add(&mut wal, 2, payload(2, 40));
        let b3 = add(&mut wal, 2, payload(3, 40));
        wal.sync().unwrap();
        // A batch that creates segment 3, torn by a crash: replay cuts segment 3 back to its header.
        wal.append(2, &payload(4, 40)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let segs = files(dir.path());
        assert_eq!(segs.len(), 3);
        let len = file_len(&segs[2]);
        fs::OpenOptions::new().write(true).open(&segs[2]).unwrap().set_len(len - COMMIT_LEN).unwrap();
        let (mut wal, replay) = open(dir.path(), &o);
        assert_eq!(replay.records, [b1.clone(), b2.clone(), b3.clone()]);
        assert_eq!(file_len(&segs[2]), SEG_HEADER_LEN);

        // Segment 2 goes (group 2 released all it has there); segment 1 stays for group 1, its tail now without
        // a commit record after it in any file.
        wal.release(2, b3.lsn).unwrap();
        assert!(!segs[1].exists() && segs[0].exists());
        // Another crash before a commit record.
        wal.append(3, &payload(5, 40)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let len = file_len(&segs[2]);
        fs::OpenOptions::new().write(true).open(&segs[2]).unwrap().set_len(len - COMMIT_LEN).unwrap();

        // b2 comes back (its release was in the torn batch), b3 went with its segment; b1 and b2 must survive.
        let (_, replay) = open(dir.path(), &o);
        assert_eq!(replay.records, [b1, b2]);
        assert_eq!(replay.torn_bytes, len - COMMIT_LEN - SEG_HEADER_LEN);
        assert_eq!(file_len(&segs[0]), SEG_HEADER_LEN + 2 * REC40);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_locked_out() {
        let dir = tempfile::tempdir().unwrap();
        let o = plain();
        let (mut wal, _) = open(dir.path(), &o);
        let rec = add(&mut wal, 1, b"synced".to_vec());
        wal.sync().unwrap();
        // Bytes after the last commit record, which a replay would cut off.
        let seg = only_file(dir.path());
        let synced_len = file_len(&seg);
        fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[0xEE; 10]).unwrap();

        match Wal::open(dir.path(), o.clone()) {
            Err(WalError::Locked { path }) => assert_eq!(path, dir.path().join(LOCK_FILE)),
            other => panic!("expected Locked, got {other:?}"),
        }
        assert_eq!(file_len(&seg), synced_len + 10, "the locked-out open changed nothing");
        assert_eq!(wal.durable_lsn(), rec.lsn + 1, "and the first Wal is unaffected");
        drop(wal);

        let (wal, replay) = open(dir.path(), &o);
        assert_eq!(replay.records, [rec]);
        assert_eq!(replay.torn_bytes, 10);
        assert!(matches!(Wal::open(dir.path(), o.clone()), Err(WalError::Locked { .. })));
        drop(wal);
        open(dir.path(), &o);
    }

    #[test]
    fn damage_at_the_end_of_an_older_segment_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(SEG_HEADER_LEN + 2 * 64 + COMMIT_LEN);
        let (mut wal, _) = open(dir.path(), &o);
        for i in 0..4 {
            wal.append(1, &payload(i, 40)).unwrap();
        }
        wal.sync().unwrap();
        drop(wal);
        let segs = files(dir.path());
        assert_eq!(segs.len(), 2);
        let mut bytes = fs::read(&segs[0]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        fs::write(&segs[0], &bytes).unwrap();
        match Wal::open(dir.path(), o) {
            Err(WalError::Corrupt { segment, offset, .. }) => {
                assert_eq!(segment, segs[0]);
                assert_eq!(offset, SEG_HEADER_LEN + 64);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn foreign_or_damaged_segment_headers_are_corrupt() {
        let o = plain();
        let name = segment_path(Path::new("/"), 1);
        let mut bad_version = segment_header(1);
        bad_version[8] = 9;
        let mut bad_crc = segment_header(1);
        bad_crc[20] ^= 1;
        let cases: [(&[u8], &str); 4] = [
            (b"this is not a write-ahead log, it is a shopping list", "magic"),
            (&bad_version, "version"),
            (&bad_crc, "checksum"),
            (&segment_header(2), "file name"),
        ];
        for (bytes, want) in cases {
            let d = dir_with(&name, bytes);
            match Wal::open(d.path(), o.clone()) {
                Err(WalError::Corrupt { reason, .. }) => assert!(reason.contains(want), "{reason}"),
                other => panic!("expected Corrupt mentioning {want}, got {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_appends_and_options_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), &opts(1 << 20));
        assert!(matches!(wal.append(1, &[0; 4097]), Err(WalError::RecordTooLarge { len: 4097, max: 4096 })));
        assert!(matches!(wal.append(RELEASE_GROUP, b"x"), Err(WalError::ReservedGroup(_))));
        assert!(matches!(wal.release(RELEASE_GROUP, 1), Err(WalError::ReservedGroup(_))));
        assert!(matches!(wal.append(COMMIT_GROUP, b"x"), Err(WalError::ReservedGroup(_))));
        assert!(matches!(wal.release(COMMIT_GROUP, 1), Err(WalError::ReservedGroup(_))));
        let tiny = WalOptions { segment_bytes: 1 << 20, max_record_bytes: 8, prefill_bytes: 0 };
        assert!(matches!(Wal::open(dir.path(), tiny), Err(WalError::InvalidOptions(_))));
    }

    fn inject(wal: &mut Wal, op: FaultOp, skip: u32, count: u32, errno: i32) {
        wal.disk.fault = Some(Fault { op, skip, count, errno });
    }

    /// A log with three synced records, and two more appended on top that the caller will make fail.
    fn log_with_failing_batch(o: &WalOptions) -> (tempfile::TempDir, Wal, Vec<Record>) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open(dir.path(), o);
        let synced: Vec<Record> = (0..3).map(|i| add(&mut wal, i, payload(i, 50))).collect();
        wal.sync().unwrap();
        wal.append(7, &payload(7, 50)).unwrap();
        wal.append(8, &payload(8, 50)).unwrap();
        (dir, wal, synced)
    }

    /// After a failed sync: nothing partial on disk, the Wal still works, and replay returns exactly the
    /// records that synced.
    fn check_recovers(dir: &Path, mut wal: Wal, mut synced: Vec<Record>, o: &WalOptions) {
        let durable = wal.durable_lsn();
        assert_eq!(durable, synced.last().unwrap().lsn + 1, "the commit record of the last good sync");
        assert_eq!(files(dir).len(), 1, "segments created by the failed batch are removed");
        assert_eq!(file_len(&only_file(dir)), wal.total_bytes(), "file cut back to its synced length");
        let after = add(&mut wal, 9, b"after the failure".to_vec());
        wal.sync().unwrap();
        assert!(after.lsn > durable);
        drop(wal);
        synced.push(after);
        let (_, replay) = open(dir, o);
        assert_eq!(replay.records, synced);
        assert_eq!(replay.torn_bytes, 0);
    }

    #[test]
    fn injected_enospc_on_write_drops_the_batch() {
        let o = plain();
        let (dir, mut wal, synced) = log_with_failing_batch(&o);
        let len = wal.total_bytes();
        inject(&mut wal, FaultOp::Write, 0, 1, libc::ENOSPC);
        assert!(matches!(wal.sync(), Err(WalError::DiskFull { .. })));
        assert_eq!(wal.total_bytes(), len);
        check_recovers(dir.path(), wal, synced, &o);
    }

    #[test]
    fn injected_edquot_is_disk_full_too() {
        let o = plain();
        let (dir, mut wal, synced) = log_with_failing_batch(&o);
        inject(&mut wal, FaultOp::Write, 0, 1, libc::EDQUOT);
        assert!(matches!(wal.sync(), Err(WalError::DiskFull { .. })));
        check_recovers(dir.path(), wal, synced, &o);
    }

    #[test]
    fn injected_fdatasync_failure_drops_the_batch() {
        let o = plain();
        let (dir, mut wal, synced) = log_with_failing_batch(&o);
        inject(&mut wal, FaultOp::Sync, 0, 1, libc::EIO);
        match wal.sync() {
            Err(WalError::Io { path, source }) => {
                assert_eq!(path, only_file(dir.path()));
                assert_eq!(source.raw_os_error(), Some(libc::EIO));
            }
            other => panic!("expected Io, got {other:?}"),
        }
        check_recovers(dir.path(), wal, synced, &o);
    }

    #[test]
    fn injected_enospc_in_a_new_segment_undoes_the_whole_batch() {
        // The active segment has room for one more record only (with two commit records), so the batch spans
        // two segments.
        let o = opts(SEG_HEADER_LEN + 4 * (REC_HEADER_LEN as u64 + 50) + 2 * COMMIT_LEN);
        let (dir, mut wal, synced) = log_with_failing_batch(&o);
        // Writes: the active segment's part, the new segment's header, then its records: fail the last.
        inject(&mut wal, FaultOp::Write, 2, 1, libc::ENOSPC);
        assert!(matches!(wal.sync(), Err(WalError::DiskFull { .. })));
        assert_eq!(wal.segments(), 1);
        check_recovers(dir.path(), wal, synced, &o);
    }

    #[test]
    fn failed_undo_poisons_the_wal() {
        let o = plain();
        let (dir, mut wal, synced) = log_with_failing_batch(&o);
        // Both the batch's fdatasync and the one making the truncation durable fail.
        inject(&mut wal, FaultOp::Sync, 0, 2, libc::EIO);
        assert!(matches!(wal.sync(), Err(WalError::Poisoned(_))));
        assert!(matches!(wal.append(1, b"x"), Err(WalError::Poisoned(_))));
        assert!(matches!(wal.sync(), Err(WalError::Poisoned(_))));
        drop(wal);
        assert_eq!(open(dir.path(), &o).1.records, synced, "reopening recovers");
    }

    #[test]
    fn reopening_while_another_thread_spawns_processes_is_not_locked_out() {
        // A spawned child holds copies of this process's descriptors until it execs, the lock file's among
        // them, so a lock dropped a moment ago can still look held.
        let dir = tempfile::tempdir().unwrap();
        let o = plain();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    Command::new("true").status().unwrap();
                }
            });
            for i in 0..300 {
                let res = Wal::open(dir.path(), o.clone());
                stop.store(res.is_err() || i == 299, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = res {
                    panic!("open {i}: {e:?}");
                }
            }
        });
    }

    /// A tmpfs mounted for one test, unmounted on drop (also when the test panics).
    struct TmpfsMount(PathBuf);

    impl TmpfsMount {
        fn new(at: &Path, size: &str) -> Self {
            let out =
                Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output();
            match out {
                Ok(out) if out.status.success() => TmpfsMount(at.to_owned()),
                Ok(out) => panic!(
                    "the real-ENOSPC test needs to mount a {size} tmpfs (run as root or with CAP_SYS_ADMIN); \
                     `mount` exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => panic!("the real-ENOSPC test could not run `mount` to create a tmpfs: {e}"),
            }
        }
    }

    impl Drop for TmpfsMount {
        fn drop(&mut self) {
            let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
            if !ok {
                // Still busy (a panic left a file open): detach it rather than leak the mount.
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }

    /// Appends 3 KB records, syncing each, until sync reports DiskFull; checks that the failed sync
    /// changed nothing and returns.
    fn fill_until_disk_full(wal: &mut Wal, synced: &mut Vec<Record>) {
        for i in 0..1000 {
            let rec = add(wal, 1, payload(i, 3000));
            let (durable, len) = (wal.durable_lsn(), wal.total_bytes());
            match wal.sync() {
                Ok(()) => synced.push(rec),
                Err(WalError::DiskFull { .. }) => {
                    assert_eq!((wal.durable_lsn(), wal.total_bytes()), (durable, len));
                    return;
                }
                Err(e) => panic!("expected DiskFull, got {e}"),
            }
        }
        panic!("a 256 KiB tmpfs never filled up");
    }

    #[test]
    fn real_enospc_on_a_tiny_tmpfs() {
        let base = tempfile::tempdir().unwrap();
        let _mount = TmpfsMount::new(base.path(), "256k");
        let dir = base.path().join("wal");
        let filler = base.path().join("filler");
        fs::write(&filler, vec![0xAB; 96 * 1024]).unwrap();
        let o = opts(1 << 20);

        let (mut wal, _) = open(&dir, &o);
        let mut synced = Vec::new();
        fill_until_disk_full(&mut wal, &mut synced);
        assert!(synced.len() > 10, "only {} records fit", synced.len());
        let seg = only_file(&dir);
        assert_eq!(file_len(&seg), wal.total_bytes(), "no partial record left behind");
        drop(wal);

        // Reopening works on the still-full disk and returns exactly what synced.
        let (mut wal, replay) = open(&dir, &o);
        assert_eq!(replay.records, synced);
        assert_eq!(replay.torn_bytes, 0);
        fill_until_disk_full(&mut wal, &mut synced);

        // The same instance recovers once space is freed.
        fs::remove_file(&filler).unwrap();
        synced.push(add(&mut wal, 2, b"space is back".to_vec()));
        wal.sync().expect("sync after freeing space");
        drop(wal);
        assert_eq!(open(&dir, &o).1.records, synced);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append {
            group: u64,
            len: usize,
        },
        Sync,
        /// Clean restart: unsynced records are lost.
        Reopen,
        /// Sync, then lose everything the batch wrote to the last segment after `cut` (a fraction of it; `None`
        /// keeps it all), and maybe punch a hole `(where, length, garble)` into what is left of it, as if its
        /// pages had reached the disk out of order.
        CrashMidWrite {
            cut: Option<u16>,
            hole: Option<(u16, u8, bool)>,
        },
        /// Sync with an injected ENOSPC at one of its first writes (or none, if the batch is shorter).
        FailSync {
            at_write: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..4u64, 0..200usize).prop_map(|(group, len)| Op::Append { group, len }),
            2 => Just(Op::Sync),
            1 => Just(Op::Reopen),
            2 => (
                proptest::option::weighted(0.4, any::<u16>()),
                proptest::option::of((any::<u16>(), 1..=100u8, any::<bool>())),
            )
                .prop_map(|(cut, hole)| Op::CrashMidWrite { cut, hole }),
            1 => (0..3u32).prop_map(|at_write| Op::FailSync { at_write }),
        ]
    }

    /// A clean restart: the unsynced records are lost, the synced ones all come back, nothing is torn.
    fn reopen(
        dir: &Path,
        o: &WalOptions,
        wal: Wal,
        synced: &[Record],
        pending: &mut Vec<Record>,
    ) -> Result<Wal, TestCaseError> {
        drop(wal);
        let (wal, replay) = open(dir, o);
        pending.clear();
        prop_assert_eq!(replay.records.as_slice(), synced);
        prop_assert_eq!(replay.torn_bytes, 0);
        Ok(wal)
    }

    /// A sync with ENOSPC injected at its write `at_write` (none, if the batch makes fewer): the batch is
    /// synced or dropped whole.
    fn sync_failing_at(wal: &mut Wal, at_write: u32, synced: &mut Vec<Record>, pending: &mut Vec<Record>) {
        inject(wal, FaultOp::Write, at_write, 1, libc::ENOSPC);
        match wal.sync() {
            Ok(()) => synced.append(pending),
            Err(WalError::DiskFull { .. }) => pending.clear(),
            Err(e) => panic!("unexpected {e}"),
        }
        wal.disk.fault = None;
    }

    /// Damage inside a batch whose commit record survived: replay must call it corrupt. Then `last` gets its
    /// `original` bytes back, so the run goes on with the batch committed.
    fn corrupt_then_restore(dir: &Path, o: &WalOptions, last: &Path, original: &[u8]) -> Result<(), TestCaseError> {
        let res = Wal::open(dir, o.clone());
        prop_assert!(matches!(res, Err(WalError::Corrupt { .. })), "{:?}", res.map(|r| r.1));
        fs::write(last, original).unwrap();
        Ok(())
    }

    fn sizes(dir: &Path) -> Vec<(PathBuf, u64)> {
        files(dir).into_iter().map(|p| (p.clone(), file_len(&p))).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn synced_records_survive_and_torn_ones_never_return(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let o = opts(400);
            let (mut wal, _) = open(dir.path(), &o);
            let (mut synced, mut pending): (Vec<Record>, Vec<Record>) = (Vec::new(), Vec::new());
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append { group, len } => {
                        let rec = add(&mut wal, group, payload(i as u64, len));
                        let newest = pending.last().or(synced.last()).map_or(0, |r| r.lsn);
                        prop_assert!(rec.lsn > newest);
                        pending.push(rec);
                    }
                    Op::Sync => {
                        wal.sync().unwrap();
                        synced.append(&mut pending);
                    }
                    Op::Reopen => wal = reopen(dir.path(), &o, wal, &synced, &mut pending)?,
                    Op::CrashMidWrite { cut, hole } => {
                        let before = sizes(dir.path());
                        wal.sync().unwrap();
                        drop(wal);
                        let after = sizes(dir.path());
                        let old_len = |p: &PathBuf| before.iter().find(|(q, _)| q == p).map(|&(_, l)| l);
                        let (last, end) = after.last().unwrap().clone();
                        // What the batch wrote to the last segment: all of it if the batch created it.
                        let region = old_len(&last).unwrap_or(0);
                        let cut = cut.map_or(end, |c| region + (end - region) * u64::from(c) / u64::from(u16::MAX));
                        let original = fs::read(&last).unwrap();
                        let mut bytes = original[..cut as usize].to_vec();
                        let rec_start = region.max(SEG_HEADER_LEN);
                        if let Some((at, len, garble)) = hole.filter(|_| cut > rec_start) {
                            let from = rec_start + (cut - rec_start - 1) * u64::from(at) / u64::from(u16::MAX);
                            let to = (from + u64::from(len)).min(cut);
                            punch(&mut bytes[from as usize..to as usize], garble);
                        }
                        fs::write(&last, &bytes).unwrap();
                        let changed = |from: u64, to: u64| (from..to.min(cut)).any(|i| bytes[i as usize] != original[i as usize]);

                        let torn = if pending.is_empty() {
                            0 // nothing written
                        } else if cut == end && !changed(end - COMMIT_LEN, end) {
                            // The commit record made it: the batch is committed, and damage to it is Corrupt.
                            if changed(rec_start, end - COMMIT_LEN) {
                                corrupt_then_restore(dir.path(), &o, &last, &original)?;
                            }
                            synced.append(&mut pending);
                            0
                        } else {
                            // The whole batch is torn, in every segment it reached. Segments it created are
                            // cut back to their header, or removed if the header itself is incomplete.
                            pending.clear();
                            let older: u64 = after[..after.len() - 1]
                                .iter()
                                .map(|(p, len)| len - old_len(p).unwrap_or(SEG_HEADER_LEN))
                                .sum();
                            older + if region == 0 && cut < SEG_HEADER_LEN { cut } else { cut - rec_start }
                        };
                        let replay;
                        (wal, replay) = open(dir.path(), &o);
                        prop_assert_eq!(&replay.records, &synced);
                        prop_assert_eq!(replay.torn_bytes, torn);
                    }
                    Op::FailSync { at_write } => sync_failing_at(&mut wal, at_write, &mut synced, &mut pending),
                }
            }
            drop(wal);
            let (_, replay) = open(dir.path(), &o);
            prop_assert_eq!(&replay.records, &synced);
        }

        /// The same with zeros written ahead: a crash leaves zeros (the fill) wherever the batch's pages did not
        /// reach the disk, and replay must still return exactly the synced records.
        #[test]
        fn with_zeros_written_ahead_synced_records_survive_crashes(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let o = WalOptions { segment_bytes: 1200, max_record_bytes: 4096, prefill_bytes: 256 };
            let (mut wal, _) = open(dir.path(), &o);
            let (mut synced, mut pending): (Vec<Record>, Vec<Record>) = (Vec::new(), Vec::new());
            let active = |wal: &Wal| (wal.active_segment().path.clone(), wal.active_segment().len);
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append { group, len } => pending.push(add(&mut wal, group, payload(i as u64, len))),
                    Op::Sync => {
                        wal.sync().unwrap();
                        synced.append(&mut pending);
                        let (path, len) = active(&wal);
                        prop_assert!(file_len(&path) >= len);
                    }
                    Op::Reopen => wal = reopen(dir.path(), &o, wal, &synced, &mut pending)?,
                    Op::CrashMidWrite { cut, hole } => {
                        let (path_before, len_before) = active(&wal);
                        wal.sync().unwrap();
                        let (last, end) = active(&wal);
                        drop(wal);
                        // Where the batch's records start in the last segment (the header, if it made the file).
                        let rec_start = if last == path_before { len_before } else { SEG_HEADER_LEN };
                        let cut = cut.map_or(end, |c| rec_start + (end - rec_start) * u64::from(c) / u64::from(u16::MAX));
                        let original = fs::read(&last).unwrap();
                        let mut bytes = original.clone();
                        // Pages past the cut never reached the disk: they hold what they held, zeros written ahead.
                        bytes[cut as usize..end as usize].fill(0);
                        if let Some((at, len, garble)) = hole.filter(|_| cut > rec_start) {
                            let from = rec_start + (cut - rec_start - 1) * u64::from(at) / u64::from(u16::MAX);
                            let to = (from + u64::from(len)).min(cut);
                            punch(&mut bytes[from as usize..to as usize], garble);
                        }
                        fs::write(&last, &bytes).unwrap();
                        let changed = |from: u64, to: u64| (from..to).any(|i| bytes[i as usize] != original[i as usize]);
                        if !pending.is_empty() {
                            if !changed(end - COMMIT_LEN, end) {
                                // The commit record made it: the batch is committed, and damage to it is Corrupt.
                                if changed(rec_start, end - COMMIT_LEN) {
                                    corrupt_then_restore(dir.path(), &o, &last, &original)?;
                                }
                                synced.append(&mut pending);
                            } else {
                                pending.clear();
                            }
                        }
                        let replay;
                        (wal, replay) = open(dir.path(), &o);
                        prop_assert_eq!(&replay.records, &synced);
                    }
                    Op::FailSync { at_write } => sync_failing_at(&mut wal, at_write, &mut synced, &mut pending),
                }
            }
            drop(wal);
            let (_, replay) = open(dir.path(), &o);
            prop_assert_eq!(&replay.records, &synced);
        }
    }

    #[test]
    fn zeros_written_ahead_spare_most_syncs_a_size_change_and_are_not_torn_on_replay() {
        let dir = tempfile::tempdir().unwrap();
        let o = WalOptions { segment_bytes: 16 << 10, max_record_bytes: 4096, prefill_bytes: 4096 };
        let (mut wal, _) = open(dir.path(), &o);
        let mut expect = Vec::new();
        let mut sizes = std::collections::BTreeSet::new();
        for i in 0..200 {
            expect.push(add(&mut wal, 1 + i % 3, payload(i, 100)));
            wal.sync().unwrap();
            let seg = wal.active_segment();
            let len = file_len(&seg.path);
            assert!(len >= seg.len && (len == seg.len || len.is_multiple_of(4096)), "{len} for {} of records", seg.len);
            sizes.insert((seg.path.clone(), len));
        }
        // About 25 KiB of records over 16 KiB segments: a few file sizes each, not one per sync.
        assert!(wal.segments() >= 2);
        assert!(sizes.len() <= 2 * 16384 / 4096 + 2, "{} file sizes over 200 syncs", sizes.len());
        // Segments left behind end at their last record: replay reads zeros only at the end of the last.
        let active = wal.active_segment().path.clone();
        for seg in wal.segments.values().filter(|s| s.path != active) {
            assert_eq!(file_len(&seg.path), seg.len, "{:?} holds more than its records", seg.path);
        }
        drop(wal);
        let (mut wal, replay) = open(dir.path(), &o);
        assert_eq!(replay.records, expect);
        assert_eq!(replay.torn_bytes, 0, "the fill is not a torn write");
        assert!(file_len(&active) > wal.active_segment().len, "the fill is kept for reuse");
        expect.push(add(&mut wal, 7, b"after reopen".to_vec()));
        wal.sync().unwrap();
        // A batch torn inside the fill is cut back, zeros and all.
        wal.append(8, &payload(9, 300)).unwrap();
        let tail = wal.active_segment().len;
        drop(wal);
        let mut bytes = fs::read(&active).unwrap();
        bytes[tail as usize..tail as usize + 100].fill(0xEE);
        fs::write(&active, &bytes).unwrap();
        let (wal, replay) = open(dir.path(), &o);
        assert_eq!(replay.records, expect);
        assert!(replay.torn_bytes >= 100);
        assert_eq!(file_len(&active), wal.active_segment().len);
    }
}
