//! Valid values of the wire types, archived into the seed corpora.

use multispace_dht::api::table::{
    ChangeAnswer, ClusterView, MemberChange, ReadAnswer, Refusal, ReplicaStatus, WriteAnswer,
};
use multispace_dht::command::{Command, Op, WriteResult};
use multispace_dht::maps::{Group, Maps};
use multispace_node::beacon::{Beacon, BeaconAuth, LocalTable, SignedBeacon, DEFAULT_WINDOW};
use multispace_node::control::{BeaconCounters, InstanceRecord, NodeTable};
use multispace_node::{ClusterKey, Keyring};
use multispace_rpc::stub::{InterfaceInfo, MethodInfo};
use multispace_services::calc::Point;

use crate::{FUZZ_KEY, FUZZ_KEY_ID, FUZZ_LABEL, FUZZ_NOW_MS};

/// An instance record as a node announces it.
pub fn instance(id: u64, service: &str) -> InstanceRecord {
    InstanceRecord { id, service: service.into(), addr: format!("127.0.0.1:{}", 7000 + id % 1000), load: 3, up: true }
}

/// A node's table with two instances.
pub fn node_table() -> NodeTable {
    NodeTable {
        node: 2,
        incarnation: 5,
        version: 9,
        instances: vec![instance(2 << 32 | 1, "calc"), instance(2 << 32 | 2, "Keiretsu")],
    }
}

/// An interface description as a server reports it.
pub fn interface_info() -> InterfaceInfo {
    InterfaceInfo {
        service: "Calc".into(),
        fingerprint: 0x0123_4567_89ab_cdef,
        methods: vec![MethodInfo { name: "add".into(), id: 0x1234_5678 }, MethodInfo { name: "ping".into(), id: 7 }],
    }
}

/// A write batch touching every operation.
pub fn ops() -> Vec<Op> {
    vec![
        Op::Put { key: b"user:1".to_vec(), value: b"alice".to_vec() },
        Op::Cas { key: b"user:2".to_vec(), expected: None, new: Some(b"bob".to_vec()) },
        Op::Cas { key: b"user:3".to_vec(), expected: Some(b"x".to_vec()), new: None },
        Op::Delete { key: b"user:4".to_vec() },
    ]
}

/// A command as it travels in a raft entry.
pub fn command() -> Command {
    Command { client: 0xfeed, seq: 3, acked_below: 2, ops: ops() }
}

/// A replica group as clients see it.
pub fn group() -> Group {
    Group { id: 1, epoch: 4, members: vec![1, 2, 3], leader_hint: Some(2) }
}

/// Every refusal a node can answer with.
pub fn refusals() -> Vec<Refusal> {
    vec![
        Refusal::Redirect(group()),
        Refusal::NotHosted,
        Refusal::Busy,
        Refusal::Timeout,
        Refusal::Invalid("key too long".into()),
        Refusal::Unavailable("disk failed".into()),
    ]
}

/// The answers to reads.
pub fn read_answers() -> Vec<ReadAnswer> {
    vec![ReadAnswer::Value(Some(b"alice".to_vec())), ReadAnswer::Value(None), ReadAnswer::Refused(Refusal::Busy)]
}

/// The answers to writes.
pub fn write_answers() -> Vec<WriteAnswer> {
    vec![
        WriteAnswer::Done(WriteResult::Applied),
        WriteAnswer::Done(WriteResult::CompareFailed { index: 1, current: Some(b"old".to_vec()) }),
        WriteAnswer::Done(WriteResult::Rejected { reason: "empty batch".into() }),
        WriteAnswer::Done(WriteResult::Forgotten),
        WriteAnswer::Refused(Refusal::Redirect(group())),
    ]
}

/// Membership changes.
pub fn member_changes() -> Vec<MemberChange> {
    vec![
        MemberChange::AddLearner { node: 4, addr: "127.0.0.1:7104".into() },
        MemberChange::Promote { node: 4 },
        MemberChange::Remove { node: 1 },
    ]
}

/// The answers to membership changes.
pub fn change_answers() -> Vec<ChangeAnswer> {
    vec![ChangeAnswer::Done(5), ChangeAnswer::Refused(Refusal::Timeout)]
}

/// A node's view of a small cluster.
pub fn cluster_view() -> ClusterView {
    ClusterView {
        node: 1,
        maps: Maps::even(&[1, 2, 3], 4, 3).expect("valid even maps"),
        maps_from: "metadata group".into(),
        nodes: vec![(1, "127.0.0.1:7101".into()), (2, "127.0.0.1:7102".into()), (3, "127.0.0.1:7103".into())],
        replicas: vec![ReplicaStatus {
            group: 1,
            epoch: 1,
            role: "leader".into(),
            term: 3,
            leader: Some(1),
            applied: 40,
            last_index: 41,
            keys: 12,
            voters: vec![1, 2, 3],
            learners: vec![4],
        }],
        durability: "durable".into(),
        failed: None,
    }
}

/// A point.
pub fn point() -> Point {
    Point { x: -3, y: 7 }
}

/// Beacon counters as a node reports them.
pub fn beacon_counters() -> BeaconCounters {
    BeaconCounters {
        sent: 10,
        accepted: 30,
        replayed: 1,
        unknown_key: 2,
        bad_mac: 3,
        malformed: 0,
        stale: 1,
        goodbyes: 1,
        expired: 0,
        primary_key: FUZZ_KEY_ID,
        key_ids: vec![FUZZ_KEY_ID, 9],
    }
}

/// The keys of the beacon target's receiver, by id: the fuzz key (primary) and one other
/// (so that key ids matter).
pub const KEYS: [(u8, [u8; 32]); 2] = [(FUZZ_KEY_ID, FUZZ_KEY), (9, *b"the other key of the fuzz ring!!")];

/// How the beacon target's receiver authenticates: the fuzz cluster's label, [`KEYS`] (the
/// first one primary), the default freshness window.
pub fn auth() -> BeaconAuth {
    let mut ring = Keyring::new(KEYS[0].0, ClusterKey::new(KEYS[0].1));
    for (id, key) in &KEYS[1..] {
        ring.install(*id, ClusterKey::new(*key)).expect("distinct ids");
    }
    BeaconAuth::new(FUZZ_LABEL, ring, DEFAULT_WINDOW)
}

/// Beacons as one node sends them, around [`FUZZ_NOW_MS`]: a first one with its whole table
/// as a delta, a later one with a removal, a bare heartbeat, and a goodbye.
pub fn beacons() -> Vec<Beacon> {
    let mut t = LocalTable::new(3, 11, "127.0.0.1:7003".into());
    t.upsert(instance(3 << 32 | 1, "calc"));
    t.upsert(instance(3 << 32 | 2, "Keiretsu"));
    let first = t.next_beacon(FUZZ_NOW_MS - 2000);
    t.remove(3 << 32 | 1);
    let second = t.next_beacon(FUZZ_NOW_MS - 1000);
    let mut bare = second.clone();
    for i in 0..4 {
        bare = t.next_beacon(FUZZ_NOW_MS - 900 + i * 100);
    }
    let goodbye = t.goodbye(FUZZ_NOW_MS);
    vec![first, second, bare, goodbye]
}

/// Beacons as they travel, signed by [`auth`].
pub fn signed_beacons() -> Vec<SignedBeacon> {
    let auth = auth();
    beacons().iter().map(|b| auth.seal(b)).collect()
}
