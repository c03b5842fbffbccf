//! Replica-to-replica traffic: raft messages between the nodes of the table.

/// What nodes call on each other.
pub trait RaftPeer {
    /// Raft messages from node `from`, each `(group, protobuf-encoded raft message)`. Raft
    /// tolerates loss, duplication and reordering, so this is safe to repeat.
    #[idempotent]
    async fn deliver(&self, from: u64, messages: Vec<(u64, Vec<u8>)>);
}
