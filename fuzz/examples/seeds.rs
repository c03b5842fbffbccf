//! Writes the seed corpora, `corpus/<target>/`, from valid encodings made by the crates' own
//! encoders: `cargo run --example seeds` inside `fuzz/` (add `-- DIR` to write elsewhere).
//! Each target's directory is emptied first, so the seeds always match the current encoders.
// Protobuf messages are built field by field from `default()`, as raft-rs's own code does.
#![allow(clippy::field_reassign_with_default)]

use std::fs;
use std::path::{Path, PathBuf};

use multispace_dht::api::peer::DeliverArgs;
use multispace_dht::command;
use multispace_dht::sm::StateMachine;
use multispace_dht::storage::Record;
use multispace_dht::wal::{Wal, WalOptions};
use multispace_fuzz::wire::WIRE_TYPES;
use multispace_fuzz::{join_records, samples};
use multispace_node::BEACON_METHOD;
use multispace_rpc::proto::frame::{padded_len, ErrorCode, Header, HEADER_LEN};
use multispace_rpc::rkyv::{self, rancor};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message,
    MessageType, Snapshot, SnapshotMetadata,
};

type Seeds = Vec<(String, Vec<u8>)>;

fn archive<T: multispace_fuzz::Encode>(value: &T) -> Vec<u8> {
    rkyv::to_bytes::<rancor::Error>(value).expect("archives").to_vec()
}

/// A frame as a stream carries it: header, payload, padding.
fn frame(h: Header, payload: &[u8]) -> Vec<u8> {
    let mut out = h.encode().to_vec();
    out.extend_from_slice(payload);
    out.resize(HEADER_LEN + padded_len(payload.len()), 0);
    out
}

fn frame_seeds() -> Seeds {
    let add = archive(&multispace_services::calc::AddArgs { a: 2, b: 3 });
    let detail = b"no such method";
    let request = frame(Header::request(1 << 32 | 1, 0x1234_5678, 250_000, add.len() as u32), &add);
    let response = frame(Header::response(1 << 32 | 1, 0x1234_5678, 8), &5i64.to_le_bytes());
    let error = frame(Header::error(7, 9, ErrorCode::UnknownMethod, detail.len() as u32), detail);
    let one_way = frame(Header::one_way(0x42, add.len() as u32), &add);
    let cancel = frame(Header::cancel(1 << 32 | 1), &[]);
    let mut stream = [request.clone(), cancel.clone(), response.clone()].concat();
    stream.extend_from_slice(&request[..40]); // and the start of another
                                              // A datagram leaves off the padding.
    let datagram = one_way[..HEADER_LEN + add.len()].to_vec();
    // Byte 0 picks the limit (0: the default), byte 1 the read size less one.
    let with = |limit: u8, chunk: u8, bytes: &[u8]| [&[limit, chunk][..], bytes].concat();
    vec![
        ("request".into(), with(0, 255, &request)),
        ("response".into(), with(0, 3, &response)),
        ("error".into(), with(1, 31, &error)),
        ("one-way".into(), with(0, 15, &one_way)),
        ("cancel".into(), with(2, 0, &cancel)),
        ("stream".into(), with(0, 12, &stream)),
        ("datagram".into(), with(1, 64, &datagram)),
    ]
}

fn wire_seeds() -> Seeds {
    let mut out = Vec::new();
    for (i, ty) in WIRE_TYPES.iter().enumerate() {
        for (j, sample) in (ty.samples)().into_iter().enumerate() {
            // Byte 0 picks the type, byte 1 the alignment: mostly in place, sometimes copied.
            let misalign = if j == 1 { 8 } else { 0 };
            let name: String = ty.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
            out.push((format!("{i:02}-{name}-{j}"), [&[i as u8, misalign][..], &sample].concat()));
        }
    }
    out
}

fn entry(index: u64, term: u64, kind: EntryType, data: Vec<u8>) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.set_entry_type(kind);
    e.data = data.into();
    e
}

/// Raft messages of the kinds peers exchange, carrying commands, membership changes and a
/// state-machine snapshot.
fn raft_messages() -> Vec<Message> {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddLearnerNode);
    cc.node_id = 4;
    cc.context = b"127.0.0.1:7104".to_vec().into();
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddNode);
    single.node_id = 4;
    let mut cc2 = ConfChangeV2::default();
    cc2.mut_changes().push(single);

    let mut append = Message::default();
    append.set_msg_type(MessageType::MsgAppend);
    append.to = 1;
    append.from = 2;
    append.term = 3;
    append.log_term = 3;
    append.index = 10;
    append.commit = 10;
    append.set_entries(
        vec![
            entry(11, 3, EntryType::EntryNormal, command::encode(&samples::command())),
            entry(12, 3, EntryType::EntryNormal, vec![]),
            entry(13, 3, EntryType::EntryConfChange, cc.write_to_bytes().expect("encodes")),
            entry(14, 3, EntryType::EntryConfChangeV2, cc2.write_to_bytes().expect("encodes")),
        ]
        .into(),
    );

    let mut heartbeat = Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.to = 1;
    heartbeat.from = 2;
    heartbeat.term = 3;
    heartbeat.commit = 9;

    let mut vote = Message::default();
    vote.set_msg_type(MessageType::MsgRequestPreVote);
    vote.to = 1;
    vote.from = 3;
    vote.term = 4;
    vote.log_term = 3;
    vote.index = 14;

    // A snapshot's state is applied up to its metadata's index.
    let mut sm = StateMachine::new();
    sm.apply(20, &command::encode(&samples::command()));
    let mut snap = Snapshot::default();
    snap.data = sm.snapshot().into();
    let meta = snap.mut_metadata();
    meta.index = 20;
    meta.term = 3;
    meta.set_conf_state(ConfState::from((vec![1, 2, 3], vec![4])));
    let mut install = Message::default();
    install.set_msg_type(MessageType::MsgSnapshot);
    install.to = 4;
    install.from = 1;
    install.term = 3;
    install.set_snapshot(snap);

    vec![append, heartbeat, vote, install]
}

fn dht_seeds() -> Seeds {
    let messages = raft_messages();
    let encoded: Vec<Vec<u8>> = messages.iter().map(|m| m.write_to_bytes().expect("encodes")).collect();
    let mut out: Seeds = Vec::new();
    // Byte 0 picks the decoder (see fuzz_targets/dht.rs).
    for (m, bytes) in messages.iter().zip(&encoded) {
        out.push((format!("0-raft-{:?}", m.get_msg_type()), [&[0u8][..], bytes].concat()));
    }
    let deliver =
        DeliverArgs { from: 2, incarnation: 0, messages: encoded.iter().take(2).map(|b| (1, b.clone())).collect() };
    out.push(("1-deliver".into(), [&[1u8][..], &archive(&deliver)].concat()));
    out.push(("2-command".into(), [&[2u8][..], &command::encode(&samples::command())].concat()));
    let cas = command::Command {
        client: 9,
        seq: 1,
        acked_below: 0,
        ops: vec![command::Op::Cas { key: b"user:1".to_vec(), expected: Some(b"alice".to_vec()), new: None }],
    };
    let entries = [command::encode(&samples::command()), command::encode(&cas), b"not a command".to_vec()];
    out.push(("3-apply".into(), [&[3u8][..], &join_records(entries.iter().map(Vec::as_slice))].concat()));
    let mut sm = StateMachine::new();
    sm.apply(1, &entries[0]);
    sm.apply(2, &entries[1]);
    out.push(("4-snapshot".into(), [&[4u8][..], &sm.snapshot()].concat()));
    let mut hs = HardState::default();
    hs.term = 3;
    hs.vote = 2;
    hs.commit = 12;
    let mut meta = SnapshotMetadata::default();
    meta.index = 20;
    meta.term = 3;
    meta.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
    let records = [
        Record::Init(ConfState::from((vec![1, 2, 3], vec![]))),
        Record::Entries(messages[0].get_entries().to_vec()),
        Record::HardState(hs),
        Record::Installed(meta),
    ];
    for (i, r) in records.iter().enumerate() {
        out.push((format!("5-record-{i}"), [&[5u8][..], &r.encode()].concat()));
    }
    out
}

/// Message runs a follower (byte 0 even) or a candidate (odd) might receive from its peers:
/// appends from a new leader, heartbeats, votes, a snapshot; an empty record is a tick.
fn raft_step_seeds() -> Seeds {
    let mut msgs = raft_messages();
    // The first append continues the bootstrapped log (empty but for its initial state).
    let append = &mut msgs[0];
    append.index = 0;
    append.log_term = 0;
    append.commit = 2;
    for (i, e) in append.mut_entries().iter_mut().enumerate() {
        e.index = i as u64 + 1;
    }
    let mut vote_resp = Message::default();
    vote_resp.set_msg_type(MessageType::MsgRequestVoteResponse);
    vote_resp.from = 2;
    vote_resp.term = 1;
    let enc: Vec<Vec<u8>> = msgs.iter().chain([&vote_resp]).map(|m| m.write_to_bytes().expect("encodes")).collect();
    let tick: &[u8] = &[];
    let run = |start: u8, recs: &[&[u8]]| [&[start][..], &join_records(recs.iter().copied())].concat();
    vec![
        ("follower-append-heartbeat".into(), run(0, &[&enc[0], &enc[1], tick, &enc[1]])),
        ("follower-vote-snapshot".into(), run(0, &[&enc[2], tick, &enc[3], &enc[1]])),
        ("candidate-wins".into(), run(1, &[&enc[4], tick, &enc[0]])),
    ]
}

/// Real segment files: records of two groups over two segments, a release point, and a torn
/// last batch; each seed holds every segment of one log.
fn wal_seeds() -> Seeds {
    let dir = std::env::temp_dir().join(format!("multispace-fuzz-seeds-wal-{}", std::process::id()));
    let segments = |dir: &Path| -> Vec<u8> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir).expect("wal dir").flatten().map(|e| e.path()).collect();
        files.retain(|p| p.extension().is_some_and(|e| e == "log"));
        files.sort();
        let segs: Vec<Vec<u8>> = files
            .iter()
            .map(|p| {
                let name = p.file_stem().and_then(|s| s.to_str()).expect("segment name");
                let first: u8 = name.trim_start_matches("wal-").parse().expect("a small first lsn");
                [&[first][..], &fs::read(p).expect("segment")].concat()
            })
            .collect();
        join_records(segs.iter().map(Vec::as_slice))
    };
    let _ = fs::remove_dir_all(&dir);
    // Segments small enough that a few records fill one.
    let opts = WalOptions { segment_bytes: 160, max_record_bytes: 4096, prefill_bytes: 0 };
    let mut out = Vec::new();
    {
        let (mut wal, _) = Wal::open(&dir, opts.clone()).expect("open a new wal");
        wal.append(1, &Record::HardState(HardState::default()).encode()).expect("append");
        wal.append(2, b"second group").expect("append");
        wal.sync().expect("sync");
        out.push(("one-batch".to_string(), segments(&dir)));
        wal.append(1, &[7; 40]).expect("append");
        wal.append(2, &[8; 40]).expect("append");
        wal.sync().expect("sync");
        wal.release(1, 2).expect("release");
        wal.append(2, b"after release").expect("append");
        wal.sync().expect("sync");
        out.push(("two-segments".to_string(), segments(&dir)));
    }
    // A torn tail: the last segment cut in the middle of its last record.
    let mut torn = out[0].1.clone();
    torn.truncate(torn.len() - 5);
    out.push(("torn".to_string(), torn));
    let _ = fs::remove_dir_all(&dir);
    out
}

fn beacon_seeds() -> Seeds {
    let datagram = |signed| {
        let payload = archive(&signed);
        [&Header::one_way(BEACON_METHOD, payload.len() as u32).encode()[..], &payload].concat()
    };
    let signed = samples::signed_beacons();
    let beacons = samples::beacons();
    // Events: 0 a datagram, 1 a key id and a body the target signs, 2 a pulled table, 3 time.
    let event = |kind: u8, bytes: &[u8]| [&[kind][..], bytes].concat();
    let first = event(0, &datagram(signed[0].clone()));
    let second = event(0, &datagram(signed[1].clone()));
    let bare = event(0, &datagram(signed[2].clone()));
    let bye = event(0, &datagram(signed[3].clone()));
    let body = event(1, &[&[0u8][..], &archive(&beacons[1])].concat());
    let table = event(2, &archive(&samples::node_table()));
    let wait = event(3, &[20]);
    let join = |events: &[&Vec<u8>]| join_records(events.iter().map(|e| e.as_slice()));
    vec![
        ("beacons".into(), join(&[&first, &second, &wait, &bare, &bye])),
        ("replayed".into(), join(&[&second, &second, &first])),
        ("signed-body".into(), join(&[&body, &table, &wait, &wait, &wait])),
        ("pull-then-expire".into(), join(&[&table, &bare, &event(3, &[100])])),
    ]
}

fn write(root: &Path, target: &str, seeds: Seeds) {
    let dir = root.join(target);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the corpus directory");
    let total: usize = seeds.iter().map(|(_, s)| s.len()).sum();
    for (name, bytes) in &seeds {
        fs::write(dir.join(name), bytes).expect("write a seed");
    }
    println!("{target:>8}: {:3} seeds, {total:6} bytes", seeds.len());
}

fn main() {
    let root =
        std::env::args().nth(1).map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"), PathBuf::from);
    write(&root, "frame", frame_seeds());
    write(&root, "wire", wire_seeds());
    write(&root, "dht", dht_seeds());
    write(&root, "wal", wal_seeds());
    write(&root, "beacon", beacon_seeds());
    write(&root, "raft_step", raft_step_seeds());
}
