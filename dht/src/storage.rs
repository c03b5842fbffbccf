//! One replica group's raft log in memory, behind raft-rs's [`Storage`] trait, and the records
//! that make it durable.
//!
//! The in-memory [`GroupLog`] is what raft reads. Every change to it that must survive a crash
//! is also described by a [`Record`], which the node writes to its shared write-ahead log
//! (group commit across groups) before telling raft the change is persisted. After a crash,
//! [`GroupLog::recover`] rebuilds the log from the group's latest snapshot and its records in
//! log order.
//!
//! Record kinds:
//! - `Init`: the voters a brand-new group starts with (superseded by any snapshot);
//! - `Entries`: entries appended, possibly replacing a conflicting suffix;
//! - `HardState`: term, vote and commit;
//! - `Installed`: a snapshot from the leader replaced the whole log (its data is in a snapshot
//!   file, saved before this record): entries from before this record are void.

use std::cell::RefCell;
use std::rc::Rc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// A durable change to one group's log.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The voters of a new group.
    Init(ConfState),
    /// Entries appended (replacing any entries at or after the first one's index).
    Entries(Vec<Entry>),
    /// The latest term, vote and commit index.
    HardState(HardState),
    /// A snapshot from the leader replaced the log.
    Installed(SnapshotMetadata),
}

/// A record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable log record: {0}")]
pub struct RecordError(String);

/// Why a group's log cannot be rebuilt from its records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// A record does not decode.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Entries do not continue the log (a record is missing).
    #[error("entries starting at index {first} do not continue a log ending at {last}")]
    Gap {
        /// First index of the record's entries.
        first: u64,
        /// Last index of the log so far.
        last: u64,
    },
    /// The snapshot's data does not decode.
    #[error("snapshot: {0}")]
    Snapshot(String),
}

const INIT: u8 = 1;
const ENTRIES: u8 = 2;
const HARD_STATE: u8 = 3;
const INSTALLED: u8 = 4;

fn pb_err(e: protobuf::ProtobufError) -> RecordError {
    RecordError(e.to_string())
}

impl Record {
    /// The record's bytes for the write-ahead log.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding well-formed protobuf messages into a vector does not fail.
        let body = |m: &dyn protobuf::Message| m.write_to_bytes().unwrap_or_default();
        let mut out = Vec::new();
        match self {
            Record::Init(cs) => {
                out.push(INIT);
                out.extend(body(cs));
            }
            Record::Entries(es) => {
                // Sized once and written in place: no buffer per entry, no regrowing (this runs
                // for every write a node logs).
                let sizes: Vec<u32> = es.iter().map(protobuf::Message::compute_size).collect();
                out.reserve_exact(1 + sizes.iter().map(|s| 4 + *s as usize).sum::<usize>());
                out.push(ENTRIES);
                for (e, size) in es.iter().zip(sizes) {
                    out.extend(size.to_le_bytes());
                    let _ = e.write_to_vec(&mut out);
                }
            }
            Record::HardState(hs) => {
                out.push(HARD_STATE);
                out.extend(body(hs));
            }
            Record::Installed(meta) => {
                out.push(INSTALLED);
                out.extend(body(meta));
            }
        }
        out
    }

    /// Decodes a record's bytes.
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        let (&kind, body) = bytes.split_first().ok_or_else(|| RecordError("empty record".into()))?;
        Ok(match kind {
            INIT => Record::Init(ConfState::parse_from_bytes(body).map_err(pb_err)?),
            HARD_STATE => Record::HardState(HardState::parse_from_bytes(body).map_err(pb_err)?),
            INSTALLED => Record::Installed(SnapshotMetadata::parse_from_bytes(body).map_err(pb_err)?),
            ENTRIES => {
                let mut es = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (len, tail) =
                        rest.split_first_chunk::<4>().ok_or_else(|| RecordError("entry length cut short".into()))?;
                    let len = u32::from_le_bytes(*len) as usize;
                    if tail.len() < len {
                        return Err(RecordError(format!("entry of {len} bytes cut short at {}", tail.len())));
                    }
                    es.push(Entry::parse_from_bytes(&tail[..len]).map_err(pb_err)?);
                    rest = &tail[len..];
                }
                Record::Entries(es)
            }
            k => return Err(RecordError(format!("unknown record kind {k}"))),
        })
    }

    /// Whether a log may forget this record once the group's snapshot at `snapshot_index` is
    /// durable and a newer hard state has been written after it. A log releases a prefix of
    /// records, so it stops at the first record this refuses.
    pub fn covered_by(&self, snapshot_index: u64) -> bool {
        match self {
            Record::Init(_) | Record::HardState(_) => true,
            Record::Entries(_) | Record::Installed(_) => self.last_index() <= snapshot_index,
        }
    }

    /// The highest entry index the record holds (0 for records without entries).
    pub fn last_index(&self) -> u64 {
        match self {
            Record::Entries(es) => es.last().map_or(0, |e| e.index),
            Record::Installed(meta) => meta.index,
            _ => 0,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot, data included: what a lagging follower is sent.
    snapshot: Snapshot,
    /// Entries after the snapshot's index (and possibly some at or before it, kept as a tail
    /// so slightly lagging followers catch up from the log rather than a snapshot).
    entries: Vec<Entry>,
    /// Raft asked for a snapshot newer than `snapshot`.
    snapshot_wanted: bool,
    /// Index and term of the entry just before the first one held (the snapshot's, or the
    /// last one compacted away): raft asks for that term when matching logs.
    dummy: (u64, u64),
}

impl Inner {
    fn first_index(&self) -> u64 {
        self.entries.first().map_or(self.dummy.0 + 1, |e| e.index)
    }

    fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.dummy.0, |e| e.index)
    }
}

/// One group's log, shared between its raft node (through [`Storage`]) and the replica that
/// feeds it. Single-threaded by design: each group lives on one core.
#[derive(Debug, Clone, Default)]
pub struct GroupLog {
    inner: Rc<RefCell<Inner>>,
}

impl GroupLog {
    /// A new group's log with its first voters.
    ///
    /// A group starts from a snapshot at index 1 (term 1) that holds its first voters and an
    /// empty state, so its log begins at index 2: a member added later can never replay the
    /// log from nothing (it would miss the first voters, which no entry holds); it receives a
    /// snapshot first, as every member's state then agrees.
    pub fn bootstrap(voters: &[u64]) -> (Self, Record) {
        let cs = ConfState::from((voters.to_vec(), Vec::<u64>::new()));
        let log = GroupLog::default();
        log.install(initial_snapshot(cs.clone()));
        (log, Record::Init(cs))
    }

    /// An empty log for a replica that joins an existing group: it learns everything from the
    /// leader's snapshot.
    pub fn joining() -> Self {
        GroupLog::default()
    }

    /// Rebuilds a log after a restart from the group's latest snapshot (if any) and its records
    /// in log order. Records older than the snapshot are skipped.
    pub fn recover(
        snapshot: Option<Snapshot>,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Self, RecoverError> {
        let log = GroupLog::default();
        {
            let mut s = log.inner.borrow_mut();
            let has_snapshot = snapshot.is_some();
            if let Some(snap) = snapshot {
                s.conf_state = snap.get_metadata().get_conf_state().clone();
                s.hard_state.term = snap.get_metadata().term;
                s.hard_state.commit = snap.get_metadata().index;
                s.dummy = (snap.get_metadata().index, snap.get_metadata().term);
                s.snapshot = snap;
            }
            for record in records {
                match record {
                    Record::Init(cs) => {
                        if !has_snapshot && s.snapshot.get_metadata().index == 0 {
                            let snap = initial_snapshot(cs);
                            s.conf_state = snap.get_metadata().get_conf_state().clone();
                            s.hard_state.term = s.hard_state.term.max(1);
                            s.hard_state.commit = s.hard_state.commit.max(1);
                            s.dummy = (1, 1);
                            s.snapshot = snap;
                        }
                    }
                    Record::HardState(hs) => s.hard_state = hs,
                    // Whatever came before the install was replaced by the snapshot we hold
                    // (the file is saved before the record, and only newer files replace it).
                    Record::Installed(_) => s.entries.clear(),
                    Record::Entries(es) => {
                        let floor = s.snapshot.get_metadata().index;
                        let es: Vec<Entry> = es.into_iter().filter(|e| e.index > floor).collect();
                        append(&mut s, es)?;
                    }
                }
            }
            let snap_index = s.snapshot.get_metadata().index;
            s.hard_state.commit = s.hard_state.commit.max(snap_index);
        }
        Ok(log)
    }

    /// Appends entries from a ready, replacing a conflicting suffix.
    pub fn append(&self, entries: &[Entry]) -> Result<(), RecoverError> {
        append(&mut self.inner.borrow_mut(), entries.to_vec())
    }

    /// Records the latest hard state.
    pub fn set_hard_state(&self, hs: HardState) {
        self.inner.borrow_mut().hard_state = hs;
    }

    /// The hard state now.
    pub fn hard_state(&self) -> HardState {
        self.inner.borrow().hard_state.clone()
    }

    /// Records the configuration after a membership change was applied.
    pub fn set_conf_state(&self, cs: ConfState) {
        self.inner.borrow_mut().conf_state = cs;
    }

    /// The configuration now.
    pub fn conf_state(&self) -> ConfState {
        self.inner.borrow().conf_state.clone()
    }

    /// Replaces the log with a snapshot received from the leader.
    pub fn install(&self, snapshot: Snapshot) {
        let mut s = self.inner.borrow_mut();
        let meta = snapshot.get_metadata();
        s.hard_state.term = s.hard_state.term.max(meta.term);
        s.hard_state.commit = meta.index;
        s.conf_state = meta.get_conf_state().clone();
        s.dummy = (meta.index, meta.term);
        s.entries.clear();
        s.snapshot = snapshot;
    }

    /// Keeps a snapshot this replica took of its own state at `index` (which must be applied)
    /// and drops entries before `index - keep`, so followers a little behind can still catch up
    /// from the log — and none after `raft_applied`: raft reads the entries it has not yet
    /// been told are applied (an election scans them for membership changes, and fails hard
    /// if they are gone), and the state machine may run ahead of it until a write is durable.
    pub fn take_snapshot(&self, index: u64, data: Vec<u8>, keep: u64, raft_applied: u64) -> Snapshot {
        let mut s = self.inner.borrow_mut();
        let term = term_of(&s, index).unwrap_or(s.hard_state.term);
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(s.conf_state.clone());
        s.snapshot = snap.clone();
        s.snapshot_wanted = false;
        let compact_below = index.saturating_sub(keep).min(raft_applied) + 1;
        if let Some(last_dropped) = s.entries.iter().take_while(|e| e.index < compact_below).last() {
            s.dummy = (last_dropped.index, last_dropped.term);
        }
        s.entries.retain(|e| e.index >= compact_below);
        snap
    }

    /// The latest snapshot's index.
    pub fn snapshot_index(&self) -> u64 {
        self.inner.borrow().snapshot.get_metadata().index
    }

    /// Whether raft asked for a newer snapshot than the one held (a follower needs one).
    pub fn snapshot_wanted(&self) -> bool {
        self.inner.borrow().snapshot_wanted
    }

    /// Index of the last entry.
    pub fn last_index(&self) -> u64 {
        self.inner.borrow().last_index()
    }
}

/// A new group's starting point: index 1, term 1, its first voters, an empty state.
fn initial_snapshot(cs: ConfState) -> Snapshot {
    let mut snap = Snapshot::default();
    let meta = snap.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.set_conf_state(cs);
    snap
}

fn append(s: &mut Inner, entries: Vec<Entry>) -> Result<(), RecoverError> {
    let Some(first) = entries.first().map(|e| e.index) else { return Ok(()) };
    let last = s.last_index();
    if first > last + 1 {
        return Err(RecoverError::Gap { first, last });
    }
    if first < s.first_index() {
        // Raft never rewrites entries covered by a snapshot; drop the compacted part.
        let floor = s.first_index();
        s.entries.clear();
        s.entries.extend(entries.into_iter().filter(|e| e.index >= floor));
        return Ok(());
    }
    let keep = (first - s.first_index()) as usize;
    s.entries.truncate(keep);
    s.entries.extend(entries);
    Ok(())
}

fn term_of(s: &Inner, idx: u64) -> Option<u64> {
    if idx == s.dummy.0 {
        return Some(s.dummy.1);
    }
    let meta = s.snapshot.get_metadata();
    if idx == meta.index {
        return Some(meta.term);
    }
    let first = s.entries.first()?.index;
    if idx < first {
        return None;
    }
    s.entries.get((idx - first) as usize).map(|e| e.term)
}

impl Storage for GroupLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let s = self.inner.borrow();
        Ok(RaftState::new(s.hard_state.clone(), s.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let s = self.inner.borrow();
        if low < s.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > s.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let first = s.first_index();
        let mut out = s.entries[(low - first) as usize..(high - first) as usize].to_vec();
        let max = max_size.into().unwrap_or(u64::MAX);
        // Like raft's own limit_size: at least one entry, then stop before exceeding `max`.
        let mut size = 0u64;
        let keep = out
            .iter()
            .take_while(|e| {
                size += u64::from(e.compute_size());
                size <= max
            })
            .count()
            .max(1);
        out.truncate(keep);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let s = self.inner.borrow();
        if let Some(t) = term_of(&s, idx) {
            return Ok(t);
        }
        if idx < s.first_index() {
            Err(raft::Error::Store(StorageError::Compacted))
        } else {
            Err(raft::Error::Store(StorageError::Unavailable))
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.inner.borrow().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.inner.borrow().last_index())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut s = self.inner.borrow_mut();
        let meta = s.snapshot.get_metadata();
        // The receiver refuses a snapshot whose configuration does not name it (a member
        // added after the snapshot was taken): it needs a newer one.
        let cs = meta.get_conf_state();
        let names_receiver = cs.voters.iter().chain(&cs.learners).chain(&cs.voters_outgoing).any(|id| *id == to);
        if meta.index >= request_index && meta.index > 0 && names_receiver {
            return Ok(s.snapshot.clone());
        }
        // The replica takes a fresh one at its next turn; raft retries.
        s.snapshot_wanted = true;
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: format!("e{index}t{term}").into_bytes().into(), ..Default::default() }
    }

    fn entries(r: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        r.map(|i| entry(i, term)).collect()
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let hs = HardState { term: 3, vote: 2, commit: 9, ..Default::default() };
        let meta = SnapshotMetadata { index: 40, term: 2, ..Default::default() };
        for r in [
            Record::Init(ConfState::from((vec![1, 2, 3], vec![]))),
            Record::Entries(entries(1..=5, 1)),
            Record::Entries(vec![]),
            Record::HardState(hs),
            Record::Installed(meta),
        ] {
            assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        }
        assert!(Record::decode(&[]).is_err());
        assert!(Record::decode(&[99, 1, 2]).is_err());
        let mut cut = Record::Entries(entries(1..=2, 1)).encode();
        cut.truncate(cut.len() - 2);
        assert!(Record::decode(&cut).is_err());
    }

    #[test]
    fn recovery_replays_appends_conflicts_and_installs() {
        let (_, init) = GroupLog::bootstrap(&[1, 2, 3]);
        let hs = HardState { term: 2, vote: 1, commit: 4, ..Default::default() };
        let records = vec![
            init,
            Record::Entries(entries(1..=6, 1)),
            // A new leader replaced 5..6 with its own entries.
            Record::Entries(entries(5..=7, 2)),
            Record::HardState(hs.clone()),
        ];
        let log = GroupLog::recover(None, records.clone()).unwrap();
        assert_eq!(log.last_index(), 7);
        assert_eq!(log.term(6).unwrap(), 2);
        assert_eq!(log.term(4).unwrap(), 1);
        assert_eq!(log.hard_state(), hs);
        assert_eq!(log.conf_state().voters, vec![1, 2, 3]);

        // A missing record is a gap, not a silently shorter log.
        let gap = vec![Record::Entries(entries(1..=3, 1)), Record::Entries(entries(6..=7, 1))];
        assert_eq!(GroupLog::recover(None, gap).unwrap_err(), RecoverError::Gap { first: 6, last: 3 });

        // An install voids what came before it; what follows continues from the snapshot.
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().set_conf_state(ConfState::from((vec![1, 2, 4], vec![])));
        let mut with_install = records;
        with_install.push(Record::Entries(entries(8..=25, 2)));
        with_install.push(Record::Installed(snap.get_metadata().clone()));
        with_install.push(Record::Entries(entries(21..=22, 3)));
        let log = GroupLog::recover(Some(snap), with_install).unwrap();
        assert_eq!(log.first_index().unwrap(), 21);
        assert_eq!(log.last_index(), 22);
        assert_eq!(log.term(22).unwrap(), 3);
        assert_eq!(log.term(20).unwrap(), 3);
        assert_eq!(log.conf_state().voters, vec![1, 2, 4]);
        assert!(log.hard_state().commit >= 20);
    }

    #[test]
    fn storage_answers_ranges_terms_and_snapshots() {
        let (log, _) = GroupLog::bootstrap(&[1]);
        // A new group's log starts after its initial snapshot at index 1.
        assert_eq!((log.first_index().unwrap(), log.last_index()), (2, 1));
        assert_eq!(log.term(1).unwrap(), 1);
        log.append(&entries(2..=10, 1)).unwrap();
        let ctx = GetEntriesContext::empty(false);
        assert_eq!(log.entries(3, 6, None, ctx).unwrap().len(), 3);
        let one = entry(2, 1).compute_size() as u64;
        assert_eq!(log.entries(2, 11, one * 2, GetEntriesContext::empty(false)).unwrap().len(), 2);
        assert_eq!(log.entries(2, 11, 0, GetEntriesContext::empty(false)).unwrap().len(), 1);
        assert!(log.entries(2, 12, None, GetEntriesContext::empty(false)).is_err());
        assert!(log.entries(1, 5, None, GetEntriesContext::empty(false)).is_err());
        // The initial snapshot answers requests up to index 1 from its members; newer requests
        // and nodes it does not name ask for a new one.
        assert_eq!(log.snapshot(1, 1).unwrap().get_metadata().index, 1);
        assert!(log.snapshot(1, 2).is_err());
        // Nothing that new yet: raft is told to come back, and the replica to take one.
        assert!(log.snapshot(5, 2).is_err());
        assert!(log.snapshot_wanted());
        // Raft has been told of fewer applied entries than the snapshot holds: the log keeps
        // every entry after the ones raft knows are applied.
        let snap = log.take_snapshot(8, b"state".to_vec(), 2, 4);
        assert_eq!(log.first_index().unwrap(), 5);
        let snap_again = log.take_snapshot(8, b"state".to_vec(), 2, 8);
        assert_eq!(snap_again.get_metadata(), snap.get_metadata());
        assert!(!log.snapshot_wanted());
        assert_eq!(snap.get_metadata().index, 8);
        assert_eq!(log.snapshot(5, 1).unwrap().get_data(), b"state");
        // Entries from 7 on are kept as a tail; 6 and before are gone.
        assert_eq!(log.first_index().unwrap(), 7);
        assert!(log.entries(5, 8, None, GetEntriesContext::empty(false)).is_err());
        assert_eq!(log.term(8).unwrap(), 1);
        assert!(log.term(3).is_err());
    }
}
