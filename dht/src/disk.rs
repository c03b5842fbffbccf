//! A node's durable state: one write-ahead log shared by all its replica groups (group commit:
//! one fdatasync covers every group's records of a turn), and one snapshot file per group.
//!
//! Snapshot files are written to a temporary name, synced, renamed over the old one and the
//! directory synced, so a crash leaves either the old snapshot or the new one. They carry a
//! magic, a length and a crc32 so a damaged one is an error, not a wrong state.
//!
//! Log release: once a group's snapshot at index S is durable and a newer hard state has been
//! logged after it, the group's oldest records that S covers ([`Record::covered_by`]) are
//! released, and the log deletes segments nobody needs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::Snapshot;

use crate::maps::GroupId;
use crate::storage::Record;
use crate::wal::{Wal, WalError, WalOptions};

const SNAP_MAGIC: &[u8; 8] = b"MSDHTSNP";

/// Why the disk failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The write-ahead log failed.
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    /// A snapshot file could not be written or read.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A snapshot file is damaged.
    #[error("snapshot file {path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// How.
        reason: String,
    },
    /// A log record of a group does not decode.
    #[error("log record {lsn} of group {group}: {reason}")]
    BadRecord {
        /// Its LSN.
        lsn: u64,
        /// Its group.
        group: GroupId,
        /// Why.
        reason: String,
    },
}

/// What a node finds on its disk at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Per group: its latest snapshot (if any) and its records in log order.
    pub groups: BTreeMap<GroupId, (Option<Snapshot>, Vec<Record>)>,
    /// Bytes of a torn final write the log cut away.
    pub torn_bytes: u64,
    /// Groups this node was removed from: never hosted again (their leftovers, if a crash
    /// interrupted the clean-up, are dropped at open and are not in `groups`).
    pub removed: BTreeSet<GroupId>,
}

/// Per group: the records still held in the log, oldest first, as (lsn, record summary).
#[derive(Debug, Default)]
struct Held {
    records: VecDeque<(u64, Record)>,
}

/// The node's disk.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    wal: Wal,
    held: BTreeMap<GroupId, Held>,
    unsynced: bool,
    removed: BTreeSet<GroupId>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io { path: path.to_path_buf(), source }
}

impl Disk {
    /// Opens (or creates) the node's disk in `dir` and reads back what it holds.
    pub fn open(dir: &Path) -> Result<(Disk, Recovered), DiskError> {
        let snap_dir = dir.join("snapshots");
        fs::create_dir_all(&snap_dir).map_err(io_err(&snap_dir))?;
        let (wal, replay) = Wal::open(&dir.join("wal"), WalOptions::default())?;
        let mut recovered = Recovered { torn_bytes: replay.torn_bytes, ..Recovered::default() };
        let mut held: BTreeMap<GroupId, Held> = BTreeMap::new();
        for r in replay.records {
            let record = Record::decode(&r.payload).map_err(|e| DiskError::BadRecord {
                lsn: r.lsn,
                group: r.group,
                reason: e.to_string(),
            })?;
            held.entry(r.group).or_default().records.push_back((r.lsn, summary(&record)));
            recovered.groups.entry(r.group).or_default().1.push(record);
        }
        let mut disk = Disk { dir: dir.to_path_buf(), wal, held, unsynced: false, removed: BTreeSet::new() };
        disk.removed = disk.load_removed()?;
        for entry in fs::read_dir(&snap_dir).map_err(io_err(&snap_dir))? {
            let entry = entry.map_err(io_err(&snap_dir))?;
            let name = entry.file_name();
            let Some(group) = name.to_str().and_then(|n| n.strip_prefix('g')?.strip_suffix(".snap")?.parse().ok())
            else {
                continue;
            };
            let snap = disk.load_snapshot(group)?;
            recovered.groups.entry(group).or_default().0 = Some(snap);
        }
        // A removal whose clean-up a crash cut short: finish it.
        for group in disk.removed.clone() {
            if recovered.groups.remove(&group).is_some() {
                disk.drop_group(group)?;
            }
        }
        recovered.removed = disk.removed.clone();
        Ok((disk, recovered))
    }

    fn removed_path(&self) -> PathBuf {
        self.dir.join("removed")
    }

    /// The removed groups, one decimal id per line (a missing file: none).
    fn load_removed(&self) -> Result<BTreeSet<GroupId>, DiskError> {
        let path = self.removed_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.trim()
                    .parse()
                    .map_err(|_| DiskError::Corrupt { path: path.clone(), reason: format!("bad line {l:?}") })
            })
            .collect()
    }

    /// This node left `group` (a membership change removed it): record that durably first,
    /// so a restart never hosts it again, then delete its snapshot and release its records.
    pub fn remove_group(&mut self, group: GroupId) -> Result<(), DiskError> {
        if self.removed.insert(group) {
            let path = self.removed_path();
            let tmp = path.with_extension("tmp");
            let text: String = self.removed.iter().map(|g| format!("{g}\n")).collect();
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
            f.sync_data().map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        }
        self.drop_group(group)
    }

    /// Deletes a removed group's snapshot and releases every record it has in the log.
    fn drop_group(&mut self, group: GroupId) -> Result<(), DiskError> {
        let snap = self.snap_path(group);
        match fs::remove_file(&snap) {
            Ok(()) => {
                let dir = self.dir.join("snapshots");
                File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&snap)(e)),
        }
        if let Some(held) = self.held.remove(&group) {
            if let Some((last, _)) = held.records.back() {
                self.wal.release(group, *last)?;
                self.unsynced = true;
            }
        }
        self.sync()
    }

    fn snap_path(&self, group: GroupId) -> PathBuf {
        self.dir.join("snapshots").join(format!("g{group}.snap"))
    }

    fn load_snapshot(&self, group: GroupId) -> Result<Snapshot, DiskError> {
        let path = self.snap_path(group);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let corrupt = |reason: &str| DiskError::Corrupt { path: path.clone(), reason: reason.into() };
        if bytes.len() < 16 || &bytes[..8] != SNAP_MAGIC {
            return Err(corrupt("not a snapshot file"));
        }
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let body = &bytes[16..];
        if body.len() != len {
            return Err(corrupt("length does not match"));
        }
        if crc32fast::hash(body) != crc {
            return Err(corrupt("checksum does not match"));
        }
        Snapshot::parse_from_bytes(body).map_err(|e| corrupt(&e.to_string()))
    }

    /// Saves a group's snapshot durably, replacing the previous one.
    pub fn save_snapshot(&mut self, group: GroupId, snap: &Snapshot) -> Result<(), DiskError> {
        let path = self.snap_path(group);
        let tmp = path.with_extension("tmp");
        let body =
            snap.write_to_bytes().map_err(|e| DiskError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(SNAP_MAGIC).map_err(io_err(&tmp))?;
        f.write_all(&(body.len() as u32).to_le_bytes()).map_err(io_err(&tmp))?;
        f.write_all(&crc32fast::hash(&body).to_le_bytes()).map_err(io_err(&tmp))?;
        f.write_all(&body).map_err(io_err(&tmp))?;
        f.sync_data().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        let dir = self.dir.join("snapshots");
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
        Ok(())
    }

    /// Queues a group's record; durable after the next [`Disk::sync`].
    pub fn append(&mut self, group: GroupId, record: &Record) -> Result<u64, DiskError> {
        let lsn = self.wal.append(group, &record.encode())?;
        self.held.entry(group).or_default().records.push_back((lsn, summary(record)));
        self.unsynced = true;
        Ok(lsn)
    }

    /// Makes every queued record durable with one fdatasync.
    pub fn sync(&mut self) -> Result<(), DiskError> {
        if self.unsynced {
            self.wal.sync()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// After a group's snapshot at `index` is saved and a hard state logged after it (at
    /// `hard_state_lsn`) is durable: forgets the group's records that the snapshot covers.
    pub fn release(&mut self, group: GroupId, index: u64, hard_state_lsn: u64) -> Result<(), DiskError> {
        let Some(held) = self.held.get_mut(&group) else { return Ok(()) };
        let mut upto = None;
        while let Some((lsn, r)) = held.records.front() {
            if *lsn >= hard_state_lsn || !r.covered_by(index) {
                break;
            }
            upto = Some(*lsn);
            held.records.pop_front();
        }
        if let Some(upto) = upto {
            self.wal.release(group, upto)?;
        }
        Ok(())
    }

    /// fdatasyncs done by the log so far.
    pub fn fsyncs(&self) -> u64 {
        self.wal.fsyncs()
    }
}

/// What release needs to know of a record, without holding its entries.
fn summary(record: &Record) -> Record {
    match record {
        Record::Entries(es) => {
            // Keep only the last entry: covered_by looks at the highest index alone.
            Record::Entries(
                es.last()
                    .cloned()
                    .map(|mut e| {
                        e.data = Default::default();
                        e.context = Default::default();
                        e
                    })
                    .into_iter()
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Entry, HardState};

    fn entries(r: std::ops::RangeInclusive<u64>) -> Record {
        Record::Entries(
            r.map(|index| Entry { index, term: 1, data: vec![7; 100].into(), ..Default::default() }).collect(),
        )
    }

    #[test]
    fn records_and_snapshots_come_back_and_release_frees_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut disk, rec) = Disk::open(dir.path()).unwrap();
            assert!(rec.groups.is_empty());
            disk.append(1, &entries(1..=10)).unwrap();
            disk.append(2, &entries(1..=3)).unwrap();
            disk.append(1, &entries(11..=20)).unwrap();
            disk.sync().unwrap();
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 10;
            snap.set_data(b"state".to_vec().into());
            disk.save_snapshot(1, &snap).unwrap();
            let hs =
                disk.append(1, &Record::HardState(HardState { term: 1, commit: 10, ..Default::default() })).unwrap();
            disk.sync().unwrap();
            disk.release(1, 10, hs).unwrap();
            // Held: group 1's 11..20 and its hard state.
            assert_eq!(disk.held[&1].records.len(), 2);
        }
        let (_, rec) = Disk::open(dir.path()).unwrap();
        let (snap, records) = &rec.groups[&1];
        assert_eq!(snap.as_ref().unwrap().get_data(), b"state");
        // The released record may still be returned while its segment lives; the rest must be.
        assert!(records.contains(&entries(11..=20)));
        assert!(matches!(records.last(), Some(Record::HardState(_))));
        assert_eq!(rec.groups[&2].1, vec![entries(1..=3)]);
    }

    #[test]
    fn a_removed_group_is_gone_after_a_restart_and_its_log_is_released() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut disk, _) = Disk::open(dir.path()).unwrap();
            disk.append(1, &entries(1..=10)).unwrap();
            disk.append(2, &entries(1..=3)).unwrap();
            disk.sync().unwrap();
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 5;
            disk.save_snapshot(1, &snap).unwrap();
            disk.remove_group(1).unwrap();
            assert!(!disk.held.contains_key(&1), "nothing of group 1 is held");
            assert!(!dir.path().join("snapshots/g1.snap").exists());
        }
        let (mut disk, rec) = Disk::open(dir.path()).unwrap();
        assert!(!rec.groups.contains_key(&1), "a removed group is not recovered");
        assert_eq!(rec.removed, BTreeSet::from([1]));
        assert_eq!(rec.groups[&2].1, vec![entries(1..=3)]);
        // Removal is idempotent, and the list keeps every removed group.
        disk.remove_group(1).unwrap();
        disk.remove_group(2).unwrap();
        drop(disk);
        let (_, rec) = Disk::open(dir.path()).unwrap();
        assert!(rec.groups.is_empty());
        assert_eq!(rec.removed, BTreeSet::from([1, 2]));
    }

    #[test]
    fn damaged_snapshot_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, _) = Disk::open(dir.path()).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 5;
        snap.set_data(vec![1; 1000].into());
        disk.save_snapshot(3, &snap).unwrap();
        drop(disk);
        let path = dir.path().join("snapshots/g3.snap");
        let mut bytes = fs::read(&path).unwrap();
        bytes[500] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        match Disk::open(dir.path()) {
            Err(DiskError::Corrupt { reason, .. }) => assert!(reason.contains("checksum"), "{reason}"),
            other => panic!("expected a checksum error, got {other:?}"),
        }
    }
}

/// One group's share of a turn's write.
#[derive(Debug, Default)]
pub struct GroupWrite {
    /// The group.
    pub group: GroupId,
    /// A snapshot received from the leader: saved before `records`, which refer to it.
    pub snapshot: Option<Snapshot>,
    /// Records to log.
    pub records: Vec<Record>,
    /// A snapshot the replica took of its own state: saved after the sync, then
    /// `local_records` (the hard state) are logged and the log releases what it covers.
    pub local_snapshot: Option<Snapshot>,
    /// Records to log after `local_snapshot`.
    pub local_records: Vec<Record>,
    /// This node was removed from the group: after this write, forget it on disk for good
    /// ([`Disk::remove_group`]).
    pub remove: bool,
    /// `records` only move the commit index ([`crate::replica::ReplicaReady::commit_only`]).
    pub commit_only: bool,
}

impl GroupWrite {
    /// Whether this write may reach the disk with whichever sync comes next instead of one
    /// of its own.
    pub fn can_wait(&self) -> bool {
        self.commit_only && self.snapshot.is_none() && self.local_snapshot.is_none() && !self.remove
    }
}

struct Job {
    writes: Vec<GroupWrite>,
    /// `None` for writes that wait for the next sync ([`DiskWorker::write_later`]).
    done: Option<futures_channel::oneshot::Sender<Result<(), String>>>,
}

/// The node's disk on a thread of its own, so a core never blocks in fdatasync. Writes are
/// queued without waiting; the thread takes every write queued while it was busy, appends
/// them all and syncs once (group commit across turns as well as across groups), then
/// answers each in order.
#[derive(Debug)]
pub struct DiskWorker {
    tx: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    fsyncs: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("groups", &self.writes.len()).finish()
    }
}

/// Appends a batch of jobs, syncs once (unless every job may wait for a later sync), then
/// saves the local snapshots they carry.
fn write_jobs(disk: &mut Disk, jobs: &[Job]) -> Result<(), DiskError> {
    for w in jobs.iter().flat_map(|j| &j.writes) {
        if let Some(snap) = &w.snapshot {
            disk.save_snapshot(w.group, snap)?;
        }
        for r in &w.records {
            disk.append(w.group, r)?;
        }
    }
    if jobs.iter().all(|j| j.done.is_none()) {
        return Ok(());
    }
    disk.sync()?;
    let mut released = Vec::new();
    for w in jobs.iter().flat_map(|j| &j.writes) {
        if let Some(snap) = &w.local_snapshot {
            disk.save_snapshot(w.group, snap)?;
            let mut last = 0;
            for r in &w.local_records {
                last = disk.append(w.group, r)?;
            }
            released.push((w.group, snap.get_metadata().index, last));
        }
    }
    if !released.is_empty() {
        disk.sync()?;
        for (group, index, lsn) in released {
            disk.release(group, index, lsn)?;
        }
    }
    for w in jobs.iter().flat_map(|j| &j.writes).filter(|w| w.remove) {
        disk.remove_group(w.group)?;
    }
    Ok(())
}

impl DiskWorker {
    /// Moves `disk` to a new thread.
    pub fn spawn(mut disk: Disk, name: String) -> io::Result<DiskWorker> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let fsyncs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(disk.fsyncs()));
        let counter = fsyncs.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut failed: Option<String> = None;
            while let Ok(first) = rx.recv() {
                let mut jobs = vec![first];
                jobs.extend(rx.try_iter());
                // After a failure nothing more is written: the node is stopping.
                let result = match &failed {
                    Some(e) => Err(e.clone()),
                    None => write_jobs(&mut disk, &jobs).map_err(|e| e.to_string()),
                };
                if let Err(e) = &result {
                    failed = Some(e.clone());
                }
                counter.store(disk.fsyncs(), std::sync::atomic::Ordering::Relaxed);
                for done in jobs.into_iter().filter_map(|j| j.done) {
                    let _ = done.send(result.clone());
                }
            }
        })?;
        Ok(DiskWorker { tx: Some(tx), thread: Some(thread), fsyncs })
    }

    /// Queues `writes`; the answer arrives once they are durable (or failed). Answers come in
    /// the order writes were queued.
    pub fn write(&self, writes: Vec<GroupWrite>) -> futures_channel::oneshot::Receiver<Result<(), String>> {
        let (done, rx) = futures_channel::oneshot::channel();
        if let Some(tx) = &self.tx {
            // If the thread is gone, `done` is dropped and the receiver reports cancellation.
            let _ = tx.send(Job { writes, done: Some(done) });
        }
        rx
    }

    /// Queues writes that may wait: they reach the disk with the next sync any later
    /// [`DiskWorker::write`] makes, or are lost in a crash before it (see
    /// [`GroupWrite::can_wait`]).
    pub fn write_later(&self, writes: Vec<GroupWrite>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job { writes, done: None });
        }
    }

    /// fdatasyncs done so far.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for DiskWorker {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
