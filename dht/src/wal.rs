//! Write-ahead log shared by every raft group hosted on a node.
//!
//! Groups append opaque `(group, payload)` records (raft entries, hard state, snapshot markers: the caller
//! encodes them). [`Wal::append`] only buffers; [`Wal::sync`] writes everything appended since the last sync
//! and covers it with a single `fdatasync` (group commit).
//!
//! # On-disk format
//!
//! A directory of segment files named `wal-{first_lsn:020}.log`, so that names sort by LSN. All integers are
//! little-endian. Each segment starts with a 24-byte header:
//!
//! | offset | size | field                                                  |
//! |--------|------|--------------------------------------------------------|
//! | 0      | 8    | magic `b"MSDHTWAL"`                                    |
//! | 8      | 4    | format version, currently 1                            |
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
//! sync skips those of the records it dropped. Group [`RELEASE_GROUP`] (`u64::MAX`) is reserved for those
//! own records: their payload is a list of `(group: u64, upto: u64)` release points.
//!
//! # Durability
//!
//! A record is durable once the `sync` that wrote it returned `Ok`; [`Wal::durable_lsn`] is then at least its
//! LSN. A batch that fills the active segment continues in a new one; before the new file is created the older
//! one is fdatasynced, and the directory is fsynced before the batch counts as durable. So at any crash point
//! every segment but the last is complete, and only the end of the last one can hold a partial write.
//!
//! # Replay: torn versus corrupt
//!
//! [`Wal::open`] reads every segment in order. A record that fails to parse (short header, short payload,
//! length above `max_record_bytes`, LSN not increasing, or checksum mismatch) is a *torn tail* if it lies in
//! the last segment and no valid record starts anywhere after it: the process died mid-write, so it is cut off
//! and counted in [`Replay::torn_bytes`]. A last segment shorter than its header (or all zeros) died while being
//! created and is removed the same way. Any other failure is [`WalError::Corrupt`].
//!
//! A flipped bit in the final record is indistinguishable from a torn write, so it is also treated as torn:
//! that record was the last thing written, and dropping it loses at most what a crash at that moment would.
//! Conversely, if a crash mid-batch persisted the batch's pages out of order (a hole followed by intact
//! records of the same unacknowledged batch), valid data follows the hole and replay reports `Corrupt`.
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
//! One `Wal` per directory: nothing locks it against a second opener. Never lower `max_record_bytes` for an
//! existing log, since longer records would then look damaged on replay.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"MSDHTWAL";
const VERSION: u32 = 1;
const SEG_HEADER_LEN: u64 = 24;
const REC_HEADER_LEN: usize = 24;
/// One release point in a release record: `(group: u64, upto: u64)`.
const PAIR_LEN: usize = 16;

/// Group id reserved for the WAL's own release records; `append` and `release` reject it.
pub const RELEASE_GROUP: u64 = u64::MAX;

/// Tuning for a [`Wal`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Start a new segment when the next record would make the active one exceed this size. A record larger
    /// than this gets a segment of its own.
    pub segment_bytes: u64,
    /// Largest payload `append` accepts (at least 16, the size of one release point).
    pub max_record_bytes: u32,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self { segment_bytes: 64 << 20, max_record_bytes: 16 << 20 }
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
    /// Every intact, unreleased record, in LSN order.
    pub records: Vec<Record>,
    /// Bytes cut off the end of the log because the process died while writing them.
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
    /// Damage that cannot be a torn tail: valid data follows it, or it is not in the last segment.
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
    /// Highest LSN each group wrote here; release records are not listed.
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
    /// Length the segment receiving the next record will have once `pending` is written.
    tail_len: u64,
    next_lsn: u64,
    durable_lsn: u64,
    /// Group -> highest LSN it released.
    released: HashMap<u64, u64>,
    disk: Disk,
    poisoned: Option<String>,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and replays it: returns every intact record in LSN order,
    /// minus those covered by a durable release point. A torn tail is truncated away and reported in
    /// [`Replay::torn_bytes`]; other damage is [`WalError::Corrupt`].
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

        let mut replay = Replay::default();
        let mut segments = BTreeMap::new();
        let mut released = HashMap::new();
        let mut last_lsn = 0;
        let files = list_segments(dir)?;
        let count = files.len();
        for (i, (first_lsn, path)) in files.into_iter().enumerate() {
            let data = fs::read(&path).map_err(|e| io_err(&path, e))?;
            let scan = scan_segment(&path, first_lsn, &data, i + 1 == count, &opts, last_lsn + 1)?;
            let Some((records, valid_len)) = scan else {
                // Died while creating it, so it never held a durable record.
                replay.torn_bytes += data.len() as u64;
                fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
                disk.sync_dir(dir)?;
                continue;
            };
            if valid_len < data.len() {
                replay.torn_bytes += (data.len() - valid_len) as u64;
                let file = OpenOptions::new().write(true).open(&path).map_err(|e| io_err(&path, e))?;
                file.set_len(valid_len as u64).map_err(|e| io_err(&path, e))?;
                disk.sync_data(&file, &path)?;
            }
            let mut groups = HashMap::new();
            for rec in records {
                last_lsn = rec.lsn;
                if rec.group == RELEASE_GROUP {
                    apply_release(&mut released, rec.payload).map_err(|reason| WalError::Corrupt {
                        segment: path.clone(),
                        offset: rec.offset as u64,
                        reason: reason.into(),
                    })?;
                } else {
                    groups.insert(rec.group, rec.lsn);
                    replay.records.push(Record { lsn: rec.lsn, group: rec.group, payload: rec.payload.to_vec() });
                }
            }
            segments.insert(first_lsn, Segment { path, len: valid_len as u64, groups });
        }

        let mut next_lsn = last_lsn + 1;
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
            }
        }
        let (_, last) = segments.last_key_value().expect("at least one segment");
        let active = OpenOptions::new().read(true).write(true).open(&last.path).map_err(|e| io_err(&last.path, e))?;

        replay.records.retain(|r| released.get(&r.group).is_none_or(|&upto| r.lsn > upto));
        released.retain(|g, _| segments.values().any(|s| s.groups.contains_key(g)));
        let wal = Wal {
            dir: dir.to_owned(),
            opts,
            tail_len: last.len,
            segments,
            active,
            pending: Vec::new(),
            next_lsn,
            durable_lsn: next_lsn - 1,
            released,
            disk,
            poisoned: None,
        };
        Ok((wal, replay))
    }

    /// Buffers a record and returns its LSN. LSNs increase monotonically and a durable one is never handed out
    /// again, even across restarts (one lost unsynced in a crash may be). Not durable until [`Wal::sync`].
    pub fn append(&mut self, group: u64, payload: &[u8]) -> Result<u64, WalError> {
        self.check_usable()?;
        if group == RELEASE_GROUP {
            return Err(WalError::ReservedGroup(group));
        }
        if payload.len() > self.opts.max_record_bytes as usize {
            return Err(WalError::RecordTooLarge { len: payload.len(), max: self.opts.max_record_bytes });
        }
        Ok(self.push(group, payload))
    }

    /// Writes everything appended since the last sync and fdatasyncs it once (once per segment if the batch
    /// fills one). On error the batch is dropped and the files are cut back to their last synced state, so no
    /// partial record remains; the `Wal` stays usable unless the error is [`WalError::Poisoned`].
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunks = std::mem::take(&mut self.pending);
        let base_len = self.active_segment().len;
        let mut created = Vec::new();
        if let Err(err) = self.write_batch(&chunks, &mut created) {
            self.tail_len = base_len;
            return Err(match self.undo_batch(base_len, created) {
                Ok(()) => err,
                Err(undo) => {
                    let msg = format!("sync failed ({err}) and undoing it failed ({undo})");
                    self.poisoned = Some(msg.clone());
                    WalError::Poisoned(msg)
                }
            });
        }

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

    /// The LSN of the last durable record: every LSN up to it was synced, or dropped by a sync that failed.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    /// `group` no longer needs its records with `lsn <= upto` (clamped to LSNs already handed out). Deletes the
    /// segment files, other than the active one, whose records are all released. The release point becomes
    /// durable with the next sync.
    pub fn release(&mut self, group: u64, upto: u64) -> Result<(), WalError> {
        self.check_usable()?;
        if group == RELEASE_GROUP {
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

    /// Buffers a record, first starting a new segment if it would overflow the current one.
    fn push(&mut self, group: u64, payload: &[u8]) -> u64 {
        let size = (REC_HEADER_LEN + payload.len()) as u64;
        if self.tail_len > SEG_HEADER_LEN && self.tail_len + size > self.opts.segment_bytes {
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
        if group != RELEASE_GROUP {
            chunk.groups.insert(group, lsn);
        }
        self.tail_len += (REC_HEADER_LEN + payload.len()) as u64;
        lsn
    }

    /// Writes and syncs a batch. New segment files go into `created` as soon as they exist, for undo.
    fn write_batch(&mut self, chunks: &[Chunk], created: &mut Vec<(u64, PathBuf, File)>) -> Result<(), WalError> {
        let active = self.segments.values().next_back().expect("at least one segment");
        let mut offset = active.len;
        let mut unsynced = false;
        let mut dir_dirty = false;
        for chunk in chunks {
            if let Some(first) = chunk.new_segment {
                // Replay forgives a torn record only in the last segment, so a segment must be complete
                // (data and directory entry) before any newer one exists.
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
            }
            let (path, file) = current(created, &active.path, &self.active);
            self.disk.write_at(file, path, &chunk.bytes, offset)?;
            offset += chunk.bytes.len() as u64;
            unsynced = true;
        }
        let (path, file) = current(created, &active.path, &self.active);
        self.disk.sync_data(file, path)?;
        if dir_dirty {
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Returns the files to their state before a failed batch.
    fn undo_batch(&mut self, base_len: u64, created: Vec<(u64, PathBuf, File)>) -> Result<(), WalError> {
        // Newest first, each removal durable before the next, so a crash part-way leaves a prefix of the batch
        // (unacknowledged but intact) rather than a gap.
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
    if payload.len() % PAIR_LEN != 0 {
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

/// Checks a segment's header and parses its records. `None` means the last segment died while being created.
/// Otherwise returns the intact records and the length they span; anything after that is a torn tail.
fn scan_segment<'a>(
    path: &Path,
    first_lsn: u64,
    data: &'a [u8],
    is_last: bool,
    opts: &WalOptions,
    mut min_lsn: u64,
) -> Result<Option<(Vec<Parsed<'a>>, usize)>, WalError> {
    let corrupt =
        |offset: usize, reason: String| WalError::Corrupt { segment: path.to_owned(), offset: offset as u64, reason };
    let header_len = SEG_HEADER_LEN as usize;
    if is_last && (data.len() < header_len || data.iter().all(|&b| b == 0)) {
        return Ok(None);
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

    min_lsn = min_lsn.max(first_lsn);
    let max = opts.max_record_bytes;
    let mut records = Vec::new();
    let mut offset = header_len;
    while offset < data.len() {
        match parse_at(data, offset, max, min_lsn) {
            Ok(rec) => {
                offset += REC_HEADER_LEN + rec.payload.len();
                min_lsn = rec.lsn.saturating_add(1);
                records.push(rec);
            }
            Err(reason) => {
                let valid_after = (offset + 1..data.len()).any(|o| parse_at(data, o, max, min_lsn).is_ok());
                if is_last && !valid_after {
                    return Ok(Some((records, offset)));
                }
                return Err(corrupt(offset, reason.into()));
            }
        }
    }
    Ok(Some((records, offset)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    fn opts(segment_bytes: u64) -> WalOptions {
        WalOptions { segment_bytes, max_record_bytes: 4096 }
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
        let o = WalOptions::default();
        let (mut wal, replay) = open(dir.path(), &o);
        assert!(replay.records.is_empty());
        let mut expect = Vec::new();
        for batch in 0..5 {
            for group in 1..=3 {
                expect.push(add(&mut wal, group, payload(batch * 10 + group, 10 * group as usize)));
            }
            wal.sync().unwrap();
            assert_eq!(wal.durable_lsn(), expect.last().unwrap().lsn);
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
        assert_eq!(wal.durable_lsn(), last);
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
        let (mut wal, _) = open(dir.path(), &WalOptions::default());
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
        let (mut wal, _) = open(dir.path(), &opts(SEG_HEADER_LEN + 2 * 64));
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
        // Three 40-byte-payload records (64 bytes each) fill a segment.
        let o = opts(SEG_HEADER_LEN + 3 * 64);
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

    /// Three synced records; returns the dir, the records, and where the last one starts in the file.
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
        let o = WalOptions::default();
        let (dir, recs, start) = three_records(&o);
        let seg = only_file(dir.path());
        let full = fs::read(&seg).unwrap();
        assert_eq!(full.len() as u64, start + REC_HEADER_LEN as u64 + 40);
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
        let o = WalOptions::default();
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
    fn flipped_bit_before_the_last_record_is_corrupt() {
        let o = WalOptions::default();
        let (dir, _, start3) = three_records(&o);
        let seg = only_file(dir.path());
        let full = fs::read(&seg).unwrap();
        let start2 = SEG_HEADER_LEN + REC_HEADER_LEN as u64 + 40;
        for pos in start2..start3 {
            let mut bytes = full.clone();
            bytes[pos as usize] ^= 1 << (pos % 8);
            let d = dir_with(&seg, &bytes);
            match Wal::open(d.path(), o.clone()) {
                Err(WalError::Corrupt { segment, offset, .. }) => {
                    assert_eq!(segment, d.path().join(seg.file_name().unwrap()));
                    assert_eq!(offset, start2, "flip at {pos}");
                }
                other => panic!("flip at {pos}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn flipped_bit_in_the_last_record_is_torn() {
        let o = WalOptions::default();
        let (dir, recs, start3) = three_records(&o);
        let seg = only_file(dir.path());
        let full = fs::read(&seg).unwrap();
        for pos in start3..full.len() as u64 {
            let mut bytes = full.clone();
            bytes[pos as usize] ^= 1 << (pos % 8);
            let d = dir_with(&seg, &bytes);
            let (_, replay) = open(d.path(), &o);
            assert_eq!(replay.records, recs[..2], "flip at {pos}");
            assert_eq!(replay.torn_bytes, full.len() as u64 - start3);
        }
    }

    #[test]
    fn damage_at_the_end_of_an_older_segment_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(SEG_HEADER_LEN + 2 * 64);
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
        let o = WalOptions::default();
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
        let tiny = WalOptions { segment_bytes: 1 << 20, max_record_bytes: 8 };
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
        assert_eq!(durable, synced.last().unwrap().lsn);
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
        let o = WalOptions::default();
        let (dir, mut wal, synced) = log_with_failing_batch(&o);
        let len = wal.total_bytes();
        inject(&mut wal, FaultOp::Write, 0, 1, libc::ENOSPC);
        assert!(matches!(wal.sync(), Err(WalError::DiskFull { .. })));
        assert_eq!(wal.total_bytes(), len);
        check_recovers(dir.path(), wal, synced, &o);
    }

    #[test]
    fn injected_edquot_is_disk_full_too() {
        let o = WalOptions::default();
        let (dir, mut wal, synced) = log_with_failing_batch(&o);
        inject(&mut wal, FaultOp::Write, 0, 1, libc::EDQUOT);
        assert!(matches!(wal.sync(), Err(WalError::DiskFull { .. })));
        check_recovers(dir.path(), wal, synced, &o);
    }

    #[test]
    fn injected_fdatasync_failure_drops_the_batch() {
        let o = WalOptions::default();
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
        // The active segment has room for one more record only, so the batch spans two segments.
        let o = opts(SEG_HEADER_LEN + 4 * (REC_HEADER_LEN as u64 + 50));
        let (dir, mut wal, synced) = log_with_failing_batch(&o);
        // Writes: the active segment's part, the new segment's header, then its records: fail the last.
        inject(&mut wal, FaultOp::Write, 2, 1, libc::ENOSPC);
        assert!(matches!(wal.sync(), Err(WalError::DiskFull { .. })));
        assert_eq!(wal.segments(), 1);
        check_recovers(dir.path(), wal, synced, &o);
    }

    #[test]
    fn failed_undo_poisons_the_wal() {
        let o = WalOptions::default();
        let (dir, mut wal, synced) = log_with_failing_batch(&o);
        // Both the batch's fdatasync and the one making the truncation durable fail.
        inject(&mut wal, FaultOp::Sync, 0, 2, libc::EIO);
        assert!(matches!(wal.sync(), Err(WalError::Poisoned(_))));
        assert!(matches!(wal.append(1, b"x"), Err(WalError::Poisoned(_))));
        assert!(matches!(wal.sync(), Err(WalError::Poisoned(_))));
        drop(wal);
        assert_eq!(open(dir.path(), &o).1.records, synced, "reopening recovers");
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
        /// Sync, then lose everything the batch wrote to the last segment after `cut` (a fraction of it).
        CrashMidWrite {
            cut: u16,
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
            1 => any::<u16>().prop_map(|cut| Op::CrashMidWrite { cut }),
            1 => (0..3u32).prop_map(|at_write| Op::FailSync { at_write }),
        ]
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
                    Op::Reopen => {
                        drop(wal);
                        let replay;
                        (wal, replay) = open(dir.path(), &o);
                        pending.clear();
                        prop_assert_eq!(&replay.records, &synced);
                        prop_assert_eq!(replay.torn_bytes, 0);
                    }
                    Op::CrashMidWrite { cut } => {
                        let before = sizes(dir.path());
                        wal.sync().unwrap();
                        drop(wal);
                        let (last, end) = sizes(dir.path()).pop().unwrap();
                        let old_len = before.iter().find(|(p, _)| *p == last).map_or(0, |&(_, l)| l);
                        let cut = old_len + (end - old_len) * u64::from(cut) / u64::from(u16::MAX);
                        fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(cut).unwrap();

                        // The batch's records in earlier segments were synced before the last one existed;
                        // those in the last one survive only if they lie entirely before the cut.
                        let first_in_last = list_segments(dir.path()).unwrap().last().unwrap().0;
                        let mut offset = if old_len == 0 { SEG_HEADER_LEN } else { old_len };
                        let mut survivors = 0;
                        for rec in &pending {
                            if rec.lsn >= first_in_last {
                                if cut < offset + (REC_HEADER_LEN + rec.payload.len()) as u64 {
                                    break;
                                }
                                offset += (REC_HEADER_LEN + rec.payload.len()) as u64;
                            }
                            survivors += 1;
                        }
                        let torn = if cut < SEG_HEADER_LEN { cut } else { cut - offset };
                        synced.extend(pending.drain(..).take(survivors));

                        let replay;
                        (wal, replay) = open(dir.path(), &o);
                        prop_assert_eq!(&replay.records, &synced);
                        prop_assert_eq!(replay.torn_bytes, torn);
                    }
                    Op::FailSync { at_write } => {
                        inject(&mut wal, FaultOp::Write, at_write, 1, libc::ENOSPC);
                        match wal.sync() {
                            Ok(()) => synced.append(&mut pending),
                            Err(WalError::DiskFull { .. }) => pending.clear(),
                            Err(e) => panic!("unexpected {e}"),
                        }
                        wal.disk.fault = None;
                    }
                }
            }
            drop(wal);
            let (_, replay) = open(dir.path(), &o);
            prop_assert_eq!(&replay.records, &synced);
        }
    }
}
