//! The replicated table's client interface. Every node serves it for the replica groups it
//! hosts; clients route each request to the group owning its key (see `maps`).

use crate::command::{Op, WriteResult};
use crate::maps::{Group, Maps};
use multispace_rpc::rkyv::{Archive, Deserialize, Serialize};

/// Why a node did not do what was asked; the client library acts on each.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv, derive(Debug))]
pub enum Refusal {
    /// This node does not lead the group, or the request's epoch is stale: the group as this
    /// node sees it (newer epoch or a leader hint).
    Redirect(Group),
    /// This node holds no replica of the group.
    NotHosted,
    /// Too many writes are waiting in the group; back off and retry.
    Busy,
    /// No answer in time (a leader change may be under way); retry, with the same sequence
    /// number for a write.
    Timeout,
    /// The request breaks a limit or is malformed; retrying will not help.
    Invalid(String),
    /// The node cannot serve (its disk failed, or it is shutting down).
    Unavailable(String),
}

/// The answer to a read.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv, derive(Debug))]
pub enum ReadAnswer {
    /// The key's value (`None`: absent).
    Value(Option<Vec<u8>>),
    /// Not done.
    Refused(Refusal),
}

/// The answer to a write.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv, derive(Debug))]
pub enum WriteAnswer {
    /// Replicated to a majority and applied.
    Done(WriteResult),
    /// Not done (a retry with the same sequence number is safe).
    Refused(Refusal),
}

/// A change to a group's members.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv, derive(Debug))]
pub enum MemberChange {
    /// Add `node` (serving at `addr`, `ip:port`) as a learner: it receives the group's state
    /// (a snapshot, then the log) while writes go on, and does not vote.
    AddLearner {
        /// The new node's id.
        node: u64,
        /// Where it serves.
        addr: String,
    },
    /// Make a learner a voting member.
    Promote {
        /// The learner.
        node: u64,
    },
    /// Remove a member (voter or learner).
    Remove {
        /// The member.
        node: u64,
    },
}

/// The answer to a membership change.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv, derive(Debug))]
pub enum ChangeAnswer {
    /// Applied: the group's new epoch.
    Done(u64),
    /// Not done.
    Refused(Refusal),
}

/// One replica as its node sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv, derive(Debug))]
pub struct ReplicaStatus {
    /// The group.
    pub group: u64,
    /// The group's epoch as this replica has applied it.
    pub epoch: u64,
    /// "leader", "follower", "candidate" or "pre-candidate".
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader it knows, if any.
    pub leader: Option<u64>,
    /// Last applied log index.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Keys held.
    pub keys: u64,
    /// Voting members.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
}

/// A node's view of the cluster: what a client needs to route.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv, derive(Debug))]
pub struct ClusterView {
    /// The answering node.
    pub node: u64,
    /// Partition and replica-group maps.
    pub maps: Maps,
    /// Where the answering node got them: "metadata group", or "configuration" while it has
    /// not yet read the metadata group (or the maps have none).
    pub maps_from: String,
    /// Every node's id and client address (`ip:port`).
    pub nodes: Vec<(u64, String)>,
    /// The answering node's replicas.
    pub replicas: Vec<ReplicaStatus>,
    /// "durable" or "memory".
    pub durability: String,
    /// Why the node stopped serving the table (its disk failed), if it did.
    pub failed: Option<String>,
}

/// The table, as clients call it.
pub trait Table {
    /// The value of `key` in `group`. Linearizable unless `stale` (then any replica answers
    /// from what it has applied, which may lag).
    #[idempotent]
    async fn get(&self, group: u64, epoch: u64, #[key] key: Vec<u8>, stale: bool) -> ReadAnswer;

    /// Applies `ops` (all keys in `group`) atomically. Retries reuse `client` and `seq` and
    /// take effect once; `acked_below` lets replicas forget answers the client has.
    #[idempotent]
    async fn write(&self, group: u64, epoch: u64, client: u64, seq: u64, acked_below: u64, ops: Vec<Op>) -> WriteAnswer;

    /// Changes the members of `group` (ask its leader). One change at a time: the answer comes
    /// once it is applied.
    async fn change_members(&self, group: u64, change: MemberChange) -> ChangeAnswer;

    /// The cluster as this node sees it.
    #[idempotent]
    async fn cluster(&self) -> ClusterView;
}
