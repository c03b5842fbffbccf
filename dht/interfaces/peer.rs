//! Replica-to-replica traffic: raft messages between the nodes of the table.

/// What nodes call on each other.
pub trait RaftPeer {
    /// Raft messages from node `from`, each `(group, protobuf-encoded raft message)`. Raft
    /// tolerates loss, duplication and reordering, so this is safe to repeat. Returns the
    /// groups among them that `from` was removed from (a member applied its removal): a node
    /// that was down or cut off when it was removed learns it this way and drops its stale
    /// replica.
    #[idempotent]
    async fn deliver(&self, from: u64, messages: Vec<(u64, Vec<u8>)>) -> Vec<u64>;
}
