//! Past decoding: raft messages from a peer stepped into a live replica, as
//! `dht::server`'s `deliver` does after its protobuf decode (`Replica::step`, then the turn
//! the server runs: `ready`, `persisted`). A node accepts these from anyone who can reach its
//! peer port, so a forged message must not take the node down.
//!
//! Not in `tools/fuzz.sh`'s default set: raft-rs ends the process (`fatal!`) on several
//! messages an honest peer never sends. Found so far: a heartbeat committing past the log; an
//! append conflicting with a committed entry; a snapshot of term 0 past the log, which raft-rs
//! takes as matching its log; a pre-vote request of term 0. `known_fatal` skips the first so
//! that fuzzing gets past it; the others turn up within seconds. Until peer traffic is
//! authenticated, each is a way to take a node down. Run it by name: `tools/fuzz.sh raft_step`.
//!
//! Input: byte 0 picks the replica's start (follower, or candidate after `campaign`); then
//! records (see `multispace_fuzz::records`), each one protobuf raft message (its `to` is set
//! to the replica, which ignores messages for others) or, if empty, a clock tick.
#![no_main]

use libfuzzer_sys::fuzz_target;
use multispace_dht::replica::{Replica, ReplicaConfig};
use multispace_fuzz::records;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};

const ME: u64 = 1;

/// Messages that raft-rs answers with a panic (its `fatal!`: a "can't happen" between honest
/// peers), skipped here so that fuzzing gets past them to whatever else there is. Each is a
/// way for anyone who can reach a node's peer port to take the node down.
fn known_fatal(msg: &Message, replica: &Replica) -> bool {
    match msg.get_msg_type() {
        // `RaftLog::commit_to`: "to_commit {} is out of range [last_index {}]".
        MessageType::MsgHeartbeat => msg.commit > replica.last_index(),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let [start, rest @ ..] = data else { return };
    let Ok((mut replica, _init)) = Replica::bootstrap(ME, 1, &[1, 2, 3], ReplicaConfig::default()) else { return };
    if start % 2 == 1 {
        replica.campaign();
    }
    for rec in records(rest).take(32) {
        if rec.is_empty() {
            replica.tick();
        } else {
            let Ok(mut msg) = Message::parse_from_bytes(rec) else { continue };
            msg.to = ME;
            if !known_fatal(&msg, &replica) {
                replica.step(msg);
            }
        }
        // The server's turn: everything written is taken as durable at once.
        while let Some(rd) = replica.ready() {
            replica.persisted(rd.number());
        }
    }
});
