//! Replica-to-replica traffic: raft messages between the nodes of the table.

/// What nodes call on each other. `incarnation` names the sender's run: 0 for a durable node
/// (its raft state survives restarts), a random number per start for a memory-mode node. A
/// node that sees another incarnation of a memory-mode peer than before refuses it: that peer
/// restarted without its votes and log, and letting it take part again under its old id could
/// elect two leaders in one term.
pub trait RaftPeer {
    /// Raft messages from node `from`, each `(group, protobuf-encoded raft message)`. Raft
    /// tolerates loss, duplication and reordering, so this is safe to repeat. The answer says
    /// only that the receiver takes this run of `from` (see above); a sender posts its later
    /// messages instead (`post`).
    #[idempotent]
    async fn deliver(&self, from: u64, incarnation: u64, messages: Vec<(u64, Vec<u8>)>);

    /// Raft messages from node `from` as in `deliver`, without an answer: the steady stream,
    /// once a `deliver` on the connection was answered (nothing to send back or wait for).
    /// `removed`: groups the sender applied the receiver's removal from, which the receiver
    /// still sent messages for — a node that was down or cut off when it was removed learns
    /// it this way and drops its stale replica.
    #[oneway]
    async fn post(&self, from: u64, incarnation: u64, messages: Vec<(u64, Vec<u8>)>, removed: Vec<u64>);

    /// A piece of one raft message for `group` too large for a single call (a snapshot):
    /// `offset` bytes into its encoding of `total` bytes, pieces in order, one transfer at a
    /// time per sender and group (offset 0 starts one afresh). The last piece steps the whole
    /// message as `deliver` does. A piece that is not the next one expected fails the call,
    /// and the sender gives up the transfer (raft sends the snapshot again later). Not idempotent: a repeated piece is out of order.
    async fn deliver_piece(
        &self,
        from: u64,
        incarnation: u64,
        group: u64,
        transfer: u64,
        offset: u64,
        total: u64,
        piece: Vec<u8>,
    );
}
