//! The replicated state machine: the key-value map of one replica group, and the client sessions
//! that make retried writes take effect exactly once.
//!
//! Everything here is a pure function of the log: two replicas that applied the same entries hold
//! the same map and the same sessions, including which sessions were evicted (eviction is decided
//! by log index, never by clock).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};

use crate::command::{self, check_ops, Command, Op, WriteResult};
use crate::maps::NodeId;

/// How many client sessions a group remembers; the least recently written one is forgotten first.
/// A client idle for longer than it takes this many other clients to write may, if it then
/// retries a write from before its idleness, see it applied a second time.
pub const MAX_SESSIONS: usize = 10_000;
/// How many unacknowledged answers one session holds; a client keeps fewer writes in flight.
pub const MAX_ANSWERS_PER_SESSION: usize = 4096;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
struct Session {
    acked_below: u64,
    last_index: u64,
    answers: BTreeMap<u64, WriteResult>,
}

/// A replica's applied state.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StateMachine {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    sessions: HashMap<u64, Session>,
    applied: u64,
    /// Index of the last membership change applied (1 for a group's first members): the
    /// group's epoch, the same on every replica.
    conf_epoch: u64,
    /// Nodes a membership change removed from the group (and no later change added back).
    /// Replicated and in snapshots, so every member, after any restart, can tell a removed
    /// node that comes back that it was removed.
    removed: BTreeSet<NodeId>,
}

#[derive(Archive, Serialize, Deserialize)]
struct SnapshotData {
    applied: u64,
    conf_epoch: u64,
    data: Vec<(Vec<u8>, Vec<u8>)>,
    sessions: Vec<(u64, Session)>,
    removed: Vec<NodeId>,
}

/// A [`SnapshotData`] archived straight from the state machine's map: the same bytes, without
/// first copying every key and value (a state of gigabytes would need as much again).
struct SnapshotRef<'a> {
    applied: u64,
    conf_epoch: u64,
    data: MapAsPairs<'a>,
    sessions: Vec<(u64, Session)>,
    removed: Vec<NodeId>,
}

// By hand: the derive's `as = ArchivedSnapshotData` does not see through the borrowed field.
impl Archive for SnapshotRef<'_> {
    type Archived = ArchivedSnapshotData;
    type Resolver = [rkyv::vec::VecResolver; 3];

    fn resolve(&self, [data_r, sessions_r, removed_r]: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::munge::munge!(let ArchivedSnapshotData { applied, conf_epoch, data, sessions, removed } = out);
        self.applied.resolve((), applied);
        self.conf_epoch.resolve((), conf_epoch);
        self.data.resolve(data_r, data);
        self.sessions.resolve(sessions_r, sessions);
        self.removed.resolve(removed_r, removed);
    }
}

impl<S> Serialize<S> for SnapshotRef<'_>
where
    S: rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
    S::Error: rancor::Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        // In field order, as the derived `SnapshotData` serializes: the same bytes.
        Ok([
            self.data.serialize(serializer)?,
            self.sessions.serialize(serializer)?,
            self.removed.serialize(serializer)?,
        ])
    }
}

/// A map archived as its `(key, value)` pairs in order, as a `Vec<(Vec<u8>, Vec<u8>)>` is.
struct MapAsPairs<'a>(&'a BTreeMap<Vec<u8>, Vec<u8>>);

/// A byte slice archived as a `Vec<u8>` is.
struct BytesAsVec<'a>(&'a [u8]);

impl Archive for BytesAsVec<'_> {
    type Archived = rkyv::vec::ArchivedVec<u8>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::vec::ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S: rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized> Serialize<S> for BytesAsVec<'_> {
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::vec::ArchivedVec::<u8>::serialize_from_slice(self.0, serializer)
    }
}

impl Archive for MapAsPairs<'_> {
    type Archived =
        rkyv::vec::ArchivedVec<rkyv::tuple::ArchivedTuple2<rkyv::vec::ArchivedVec<u8>, rkyv::vec::ArchivedVec<u8>>>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::vec::ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S: rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized> Serialize<S> for MapAsPairs<'_> {
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        let pairs = self.0.iter().map(|(k, v)| (BytesAsVec(k), BytesAsVec(v)));
        rkyv::vec::ArchivedVec::serialize_from_iter::<(BytesAsVec<'_>, BytesAsVec<'_>), _, _>(pairs, serializer)
    }
}

/// The answer a write produced, for whoever waits on `(client, seq)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The writing client.
    pub client: u64,
    /// Its sequence number.
    pub seq: u64,
    /// What happened.
    pub result: WriteResult,
}

impl StateMachine {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the last log entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The group's epoch: the index of the last membership change applied, or 1.
    pub fn conf_epoch(&self) -> u64 {
        self.conf_epoch.max(1)
    }

    /// Records a membership change applied at `index`.
    pub fn conf_changed(&mut self, index: u64) {
        self.applied = self.applied.max(index);
        self.conf_epoch = self.conf_epoch.max(index);
    }

    /// Records a member's removal (`removed`) or addition, as a membership change applies.
    pub fn member_changed(&mut self, node: NodeId, removed: bool) {
        if removed {
            self.removed.insert(node);
        } else {
            self.removed.remove(&node);
        }
    }

    /// Whether a membership change removed `node` from the group.
    pub fn was_removed(&self, node: NodeId) -> bool {
        self.removed.contains(&node)
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Every key and value, in key order (for tests and checks).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.data.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Marks `index` applied for an entry that carries no command (a leader's empty entry or
    /// a membership change).
    pub fn skip(&mut self, index: u64) {
        self.applied = self.applied.max(index);
    }

    /// Applies the log entry at `index`. Returns whom to answer, unless the entry could not even
    /// be decoded (then nobody can be waiting on it by name).
    pub fn apply(&mut self, index: u64, entry: &[u8]) -> Option<Applied> {
        self.applied = self.applied.max(index);
        let cmd = match command::decode(entry) {
            Ok(cmd) => cmd,
            Err(reason) => {
                tracing::warn!(index, %reason, "skipping an undecodable log entry");
                return None;
            }
        };
        let Command { client, seq, acked_below, ops } = cmd;
        let session = self.sessions.entry(client).or_default();
        session.last_index = index;
        session.acked_below = session.acked_below.max(acked_below);
        let floor = session.acked_below;
        // Answers are kept in sequence order: drop from the front (`retain` would visit all).
        while session.answers.first_key_value().is_some_and(|(s, _)| *s < floor) {
            session.answers.pop_first();
        }
        let result = if seq < floor {
            WriteResult::Forgotten
        } else if let Some(answer) = session.answers.get(&seq) {
            answer.clone()
        } else {
            let result = match check_ops(&ops) {
                Ok(()) => execute(&mut self.data, ops),
                Err(e) => WriteResult::Rejected { reason: e.to_string() },
            };
            if session.answers.len() >= MAX_ANSWERS_PER_SESSION {
                session.answers.pop_first();
            }
            session.answers.insert(seq, result.clone());
            result
        };
        self.evict_sessions();
        Some(Applied { client, seq, result })
    }

    fn evict_sessions(&mut self) {
        while self.sessions.len() > MAX_SESSIONS {
            // Deterministic: oldest write first, ties by client id.
            let Some(victim) = self.sessions.iter().map(|(c, s)| (s.last_index, *c)).min().map(|(_, c)| c) else {
                return;
            };
            self.sessions.remove(&victim);
        }
    }

    /// The client sessions by client id, as a snapshot holds them (the same order on every
    /// replica, so equal states give equal snapshots).
    fn sorted_sessions(&self) -> Vec<(u64, Session)> {
        let mut sessions: Vec<(u64, Session)> = self.sessions.iter().map(|(c, s)| (*c, s.clone())).collect();
        sessions.sort_by_key(|(c, _)| *c);
        sessions
    }

    /// The state as bytes, for a raft snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        let snap = SnapshotRef {
            applied: self.applied,
            conf_epoch: self.conf_epoch,
            data: MapAsPairs(&self.data),
            sessions: self.sorted_sessions(),
            removed: self.removed.iter().copied().collect(),
        };
        // Sized up front (the archive holds the keys and values and a few words for each) and
        // written straight into the Vec the snapshot keeps: no regrowth copies, and no copy out
        // of an aligned buffer (`restore` copies into one before reading).
        let estimate = self.data.iter().map(|(k, v)| k.len() + v.len() + 32).sum::<usize>() + 4096;
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(&snap, Vec::with_capacity(estimate)).unwrap_or_default()
    }

    /// Replaces the state with a snapshot's, after validating it.
    pub fn restore(bytes: &[u8]) -> Result<Self, String> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let snap = rkyv::from_bytes::<SnapshotData, rancor::Error>(&aligned)
            .map_err(|e| format!("undecodable snapshot: {e}"))?;
        Ok(StateMachine {
            data: snap.data.into_iter().collect(),
            sessions: snap.sessions.into_iter().collect(),
            applied: snap.applied,
            conf_epoch: snap.conf_epoch,
            removed: snap.removed.into_iter().collect(),
        })
    }
}

/// Runs a batch all-or-nothing: compares first, then changes.
fn execute(data: &mut BTreeMap<Vec<u8>, Vec<u8>>, ops: Vec<Op>) -> WriteResult {
    // A batch may compare a key an earlier op in it changes, so check against a staged view.
    let mut staged: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Put { key, value } => {
                staged.insert(key, Some(value));
            }
            Op::Delete { key } => {
                staged.insert(key, None);
            }
            Op::Cas { key, expected, new } => {
                let now = match staged.get(key.as_slice()) {
                    Some(v) => *v,
                    None => data.get(key).map(Vec::as_slice),
                };
                if now != expected.as_deref() {
                    return WriteResult::CompareFailed { index: i as u32, current: now.map(<[u8]>::to_vec) };
                }
                staged.insert(key, new.as_deref());
            }
        }
    }
    let changes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        staged.into_iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
    for (k, v) in changes {
        match v {
            Some(v) => data.insert(k, v),
            None => data.remove(&k),
        };
    }
    WriteResult::Applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::encode;

    fn put(k: &str, v: &str) -> Op {
        Op::Put { key: k.into(), value: v.into() }
    }

    fn cmd(client: u64, seq: u64, ops: Vec<Op>) -> Vec<u8> {
        encode(&Command { client, seq, acked_below: 0, ops })
    }

    #[test]
    fn retried_writes_take_effect_once() {
        let mut sm = StateMachine::new();
        let inc = |expected: Option<&str>, new: &str| Op::Cas {
            key: b"n".to_vec(),
            expected: expected.map(Into::into),
            new: Some(new.into()),
        };
        let a = sm.apply(1, &cmd(1, 1, vec![inc(None, "1")])).unwrap();
        assert_eq!(a.result, WriteResult::Applied);
        // The same (client, seq) again, as after a lost answer: same answer, no second effect.
        let again = sm.apply(2, &cmd(1, 1, vec![inc(None, "1")])).unwrap();
        assert_eq!(again.result, WriteResult::Applied);
        assert_eq!(sm.get(b"n"), Some(&b"1"[..]));
        // A different seq runs for real and fails its compare.
        let b = sm.apply(3, &cmd(1, 2, vec![inc(None, "1")])).unwrap();
        assert_eq!(b.result, WriteResult::CompareFailed { index: 0, current: Some(b"1".to_vec()) });
        // Once acknowledged, an old seq is reported forgotten rather than run again.
        let ack = encode(&Command { client: 1, seq: 3, acked_below: 3, ops: vec![put("x", "y")] });
        sm.apply(4, &ack).unwrap();
        assert_eq!(sm.apply(5, &cmd(1, 1, vec![inc(None, "1")])).unwrap().result, WriteResult::Forgotten);
        assert_eq!(sm.applied(), 5);
    }

    #[test]
    fn batches_are_all_or_nothing_and_see_their_own_writes() {
        let mut sm = StateMachine::new();
        sm.apply(1, &cmd(1, 1, vec![put("a", "1")]));
        let failing = vec![put("b", "2"), Op::Cas { key: b"a".to_vec(), expected: Some(b"wrong".to_vec()), new: None }];
        let r = sm.apply(2, &cmd(1, 2, failing)).unwrap().result;
        assert_eq!(r, WriteResult::CompareFailed { index: 1, current: Some(b"1".to_vec()) });
        assert_eq!(sm.get(b"b"), None, "nothing of a failed batch takes effect");
        let chained = vec![
            put("c", "1"),
            Op::Cas { key: b"c".to_vec(), expected: Some(b"1".to_vec()), new: Some(b"2".to_vec()) },
            Op::Delete { key: b"a".to_vec() },
        ];
        assert_eq!(sm.apply(3, &cmd(1, 3, chained)).unwrap().result, WriteResult::Applied);
        assert_eq!(sm.get(b"c"), Some(&b"2"[..]));
        assert_eq!(sm.get(b"a"), None);
    }

    #[test]
    fn bad_entries_are_deterministic_no_ops() {
        let mut sm = StateMachine::new();
        assert_eq!(sm.apply(1, b"garbage"), None);
        let huge = Op::Put { key: vec![1; crate::command::MAX_KEY_BYTES + 1], value: vec![] };
        assert!(matches!(sm.apply(2, &cmd(1, 1, vec![huge])).unwrap().result, WriteResult::Rejected { .. }));
        assert!(sm.is_empty());
        assert_eq!(sm.applied(), 2);
    }

    #[test]
    fn a_snapshot_archives_the_map_in_place_with_the_bytes_of_the_owned_form() {
        let mut sm = StateMachine::new();
        for i in 0..300u64 {
            // Keys and values of varied lengths, empty values among them.
            let value = "v".repeat((i * 7 % 40) as usize);
            sm.apply(i + 1, &cmd(i % 5, i, vec![put(&format!("k{i}"), &value)]));
        }
        sm.member_changed(4, true);
        let owned = SnapshotData {
            applied: sm.applied,
            conf_epoch: sm.conf_epoch,
            data: sm.data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            sessions: sm.sorted_sessions(),
            removed: sm.removed.iter().copied().collect(),
        };
        let expected = rkyv::to_bytes::<rancor::Error>(&owned).unwrap();
        assert_eq!(sm.snapshot(), expected.as_slice());
    }

    #[test]
    fn snapshots_restore_the_same_state_and_reject_garbage() {
        let mut sm = StateMachine::new();
        for i in 0..100u64 {
            sm.apply(i + 1, &cmd(i % 7, i, vec![put(&format!("k{i}"), &format!("v{i}"))]));
        }
        sm.member_changed(4, true);
        sm.member_changed(5, true);
        sm.member_changed(5, false);
        let restored = StateMachine::restore(&sm.snapshot()).unwrap();
        assert_eq!(restored, sm);
        assert!(restored.was_removed(4) && !restored.was_removed(5));
        // Sessions survive too: a retry after restore is still answered from memory.
        let mut r2 = restored.clone();
        assert_eq!(r2.apply(101, &cmd(3, 3, vec![put("k3", "other")])).unwrap().result, WriteResult::Applied);
        assert_eq!(r2.get(b"k3"), Some(&b"v3"[..]));
        assert!(StateMachine::restore(b"nope").is_err());
    }

    #[test]
    fn session_eviction_is_by_log_index() {
        let mut sm = StateMachine::new();
        for c in 0..(MAX_SESSIONS as u64 + 5) {
            sm.apply(c + 1, &cmd(c, 1, vec![put("k", "v")]));
        }
        assert_eq!(sm.sessions.len(), MAX_SESSIONS);
        assert!(!sm.sessions.contains_key(&0) && sm.sessions.contains_key(&(MAX_SESSIONS as u64 + 4)));
    }
}
