//! # multispace-dht
//!
//! A partitioned, replicated hash table that keeps a consistent view through node failures
//! and recovers crashed replicas on line (the paper's distributed hash table, section 3.3.1,
//! shaped like its successor the Ninja DDS, without the DDS's weaknesses).
//!
//! What this crate owns:
//! - [`maps`]: keys → slots → replica groups (the partition map), and each group's members,
//!   leader hint and epoch (the replica-group map), with the redirect rules clients follow;
//!   the maps themselves are stored in the metadata group ([`maps::META_GROUP`], a replica
//!   group no slot maps to), kept current by the groups' leaders and read by every node;
//! - [`command`]: the writes (put, delete, compare-and-swap, atomic batches) as they travel in
//!   the log, their answers, and the key and value limits;
//! - [`sm`]: the state machine each replica applies the log to, with client sessions that
//!   make retried writes take effect exactly once;
//! - [`storage`]: a group's raft log in memory behind raft-rs's `Storage`, and the records
//!   that make it durable in the node's shared write-ahead log;
//! - [`replica`]: one replica of one group, sans-IO: messages, ticks, proposals and reads
//!   in; messages, records to persist, answers and snapshots out; a leader hands over to its
//!   group's preferred voter ([`maps::preferred_leader`]) so groups are led by different nodes;
//! - [`wal`] and [`disk`]: the node's write-ahead log shared by all its groups (checksummed
//!   records, group commit, torn-tail repair, segment release, zeros written ahead so syncs
//!   rarely grow the file), its snapshot files, and the list of groups the node was removed
//!   from;
//! - [`server`]: a table node — the thin I/O driver hosting its replicas on one core of our
//!   runtime, moving raft messages over our rpc (batched per peer, unanswered one-way calls
//!   once the peer answered a first call) and answering clients ([`api`] holds the
//!   generated stubs of both interfaces); a node a membership change removes from a group
//!   drops that replica and its disk state and never hosts the group again — one that was
//!   down or cut off at the time learns it from the members, which tell it "you were
//!   removed" in their next messages to it (the removed ids are replicated state, in
//!   snapshots too), and a removed id is never added back;
//! - [`transfer`]: raft messages too large for one rpc (snapshots of big partitions) sent
//!   and put back together in pieces;
//! - [`client`]: the client library — routing by key, redirects and leader hints, retries
//!   that take effect once;
//! - [`linearizability`]: a checker (Wing–Gong search with memoization, per key) for the
//!   client histories the fault tests record;
//! - [`sim`]: a deterministic in-memory network (drop, delay, duplicate, reorder, partition,
//!   crash and restart, all from a seed) that the consensus tests run on without sockets.
//!
//! ## Why raft-rs
//! Each replica group is replicated by raft-rs (the TiKV Raft core), not by a protocol of our
//! own: consensus is where home-made protocols lose data, and raft-rs has years of production
//! use behind it. It is sans-IO — it neither owns threads nor does I/O, it hands back
//! messages to send and entries to persist — which fits our thread-per-core runtime: each
//! group's `RawNode` lives on one core with its log, its state machine and its share of the
//! node's write-ahead log, and its messages travel over our rpc. openraft, the other mature
//! choice, drives its own async tasks and storage traits on a tokio-style runtime, which would
//! bring a second runtime into every node.
#![forbid(unsafe_code)]

/// Generated stubs of the table's interfaces (`interfaces/*.rs`).
#[allow(missing_docs)]
pub mod api {
    /// What clients call.
    pub mod table {
        include!(concat!(env!("OUT_DIR"), "/table.rs"));
    }
    /// What nodes call on each other.
    pub mod peer {
        include!(concat!(env!("OUT_DIR"), "/peer.rs"));
    }
}

pub mod client;
pub mod command;
pub mod disk;
pub mod linearizability;
pub mod maps;
pub mod replica;
pub mod server;
pub mod sim;
pub mod sm;
pub mod storage;
pub mod thread;
pub mod transfer;
pub mod wal;
