//! The dht's decoders of replica-to-replica traffic and of what travels inside it: raft
//! messages as `RaftPeer::deliver` receives them (protobuf), the commands in their entries
//! (rkyv), membership changes, the state-machine snapshots a leader ships, and the records of
//! the write-ahead log (disk, not network, but the same kind of decoder).
//!
//! Input: byte 0 picks the decoder (below), the rest is its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multispace_dht::api::peer::DeliverArgs;
use multispace_dht::command;
use multispace_dht::sm::StateMachine;
use multispace_dht::storage::Record;
use multispace_fuzz::{bytes_at, records};
use multispace_rpc::Message as RpcMessage;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType, Message};

/// Decode a raft message as `dht::server` does on delivery, then everything inside it that a
/// replica decodes itself: entry commands, membership changes, snapshot state.
fn raft_message(bytes: &[u8]) {
    let Ok(msg) = Message::parse_from_bytes(bytes) else { return };
    // The first re-encoding may differ from the input (protobuf keeps quirks such as an
    // empty unknown-field set, which is not equal to none); from then on it must be stable.
    if let Ok(once) = msg.write_to_bytes() {
        let a = Message::parse_from_bytes(&once).expect("a re-encoded message parses");
        let b = Message::parse_from_bytes(&a.write_to_bytes().expect("encodes")).expect("parses");
        assert_eq!(a, b, "protobuf round trip changed the message");
    }
    let mut sm = StateMachine::new();
    apply(&mut sm, msg.get_entries());
    let data = msg.get_snapshot().get_data();
    if !data.is_empty() {
        if let Ok(restored) = StateMachine::restore(data) {
            round_trip(&restored);
        }
    }
}

/// Apply entries as `Replica::apply` does (the state machine's part of it).
fn apply(sm: &mut StateMachine, entries: &[Entry]) {
    for e in entries {
        match e.get_entry_type() {
            EntryType::EntryNormal if !e.data.is_empty() => {
                std::hint::black_box(sm.apply(e.index, &e.data));
            }
            EntryType::EntryNormal => sm.skip(e.index),
            EntryType::EntryConfChange => {
                let mut v1 = ConfChange::default();
                if v1.merge_from_bytes(&e.data).is_ok() {
                    std::hint::black_box(raft_proto::ConfChangeI::into_v2(v1));
                }
            }
            EntryType::EntryConfChangeV2 => {
                let mut v2 = ConfChangeV2::default();
                if v2.merge_from_bytes(&e.data).is_ok() {
                    std::hint::black_box(v2.get_changes().len());
                }
            }
        }
    }
}

/// A state machine's snapshot restores to an equal state machine.
fn round_trip(sm: &StateMachine) {
    let bytes = sm.snapshot();
    let again = StateMachine::restore(&bytes).expect("a fresh snapshot restores");
    assert_eq!(&again, sm, "snapshot round trip changed the state");
}

fuzz_target!(|data: &[u8]| {
    let [pick, rest @ ..] = data else { return };
    match pick % 6 {
        // One raft message, as carried in a deliver call.
        0 => raft_message(rest),
        // A whole deliver call: the rkyv archive, then each protobuf message in it.
        1 => {
            if let Ok(args) = RpcMessage::<DeliverArgs>::new(bytes_at(rest, 0)) {
                for m in args.messages.iter() {
                    std::hint::black_box(m.0.to_native());
                    raft_message(&m.1);
                }
            }
        }
        // A command from a log entry.
        2 => {
            if let Ok(cmd) = command::decode(rest) {
                assert_eq!(command::decode(&command::encode(&cmd)).as_ref(), Ok(&cmd), "command round trip");
                let _ = command::check_ops(&cmd.ops);
            }
        }
        // A run of entries applied to one state machine, whose snapshot must then restore.
        3 => {
            let mut sm = StateMachine::new();
            for (i, rec) in records(rest).enumerate() {
                std::hint::black_box(sm.apply(i as u64 + 1, rec));
            }
            round_trip(&sm);
        }
        // A state-machine snapshot, as a leader sends it to a follower that fell behind.
        4 => {
            if let Ok(sm) = StateMachine::restore(rest) {
                round_trip(&sm);
            }
        }
        // A write-ahead-log record.
        _ => {
            if let Ok(rec) = Record::decode(rest) {
                // Stable from the first re-encoding on (see `raft_message`).
                let once = Record::decode(&rec.encode()).expect("a re-encoded record decodes");
                assert_eq!(Record::decode(&once.encode()), Ok(once), "log record round trip");
            }
        }
    }
});
