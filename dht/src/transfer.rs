//! Raft messages too large for one rpc — snapshots of big partitions — travel as pieces.
//!
//! The sender splits a message's encoding into pieces of at most [`PIECE_BYTES`] and sends
//! them in order, one rpc each, between its ordinary batches (so heartbeats and appends of the
//! other groups keep flowing); the receiver's [`Assembler`] puts them back together and hands
//! the whole message on once the last piece is in. Pure data and functions: no I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::maps::{GroupId, NodeId};

/// The largest piece of a message per rpc (well under the rpc's 16 MiB payload limit). A raft
/// message larger than this is sent in pieces.
pub const PIECE_BYTES: usize = 1024 * 1024;

/// The largest message an [`Assembler`] puts together (a snapshot's encoding).
pub const MAX_MESSAGE_BYTES: u64 = 4 << 30;

/// A transfer that has not moved for this long is dropped (its sender died or gave up; raft
/// sends the snapshot again).
pub const IDLE_TRANSFER: Duration = Duration::from_secs(30);

/// Why a piece was refused; the sender abandons the transfer and raft retries it later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The message would be larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {total} bytes is larger than the {max} bytes a transfer may carry")]
    TooLarge {
        /// Its announced size.
        total: u64,
        /// The limit.
        max: u64,
    },
    /// Not the next piece of the transfer under way (or of none): a piece was lost, or the
    /// transfer was dropped.
    #[error("piece at offset {offset} of transfer {transfer} is not the next one expected")]
    OutOfOrder {
        /// The transfer.
        transfer: u64,
        /// Where the piece starts.
        offset: u64,
    },
    /// The piece runs past the announced size, or an empty piece does not finish the message.
    #[error("piece of {len} bytes at offset {offset} does not fit a message of {total} bytes")]
    Malformed {
        /// Where the piece starts.
        offset: u64,
        /// Its length.
        len: usize,
        /// The announced size.
        total: u64,
    },
}

struct Partial {
    transfer: u64,
    total: u64,
    bytes: Vec<u8>,
    last: Instant,
}

/// Puts messages back together, one transfer at a time per sender and group.
#[derive(Default)]
pub struct Assembler {
    partial: HashMap<(NodeId, GroupId), Partial>,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler").field("transfers", &self.partial.len()).finish()
    }
}

impl Assembler {
    /// Takes the piece of `transfer` (from `from`, for `group`) that starts `offset` bytes into
    /// a message of `total` bytes. Returns the whole message once this piece completes it.
    /// A piece at offset 0 starts the transfer afresh, replacing any other from the same
    /// sender for the same group.
    pub fn piece(
        &mut self,
        key: (NodeId, GroupId),
        transfer: u64,
        offset: u64,
        total: u64,
        piece: &[u8],
        now: Instant,
    ) -> Result<Option<Vec<u8>>, PieceError> {
        if total > MAX_MESSAGE_BYTES {
            self.partial.remove(&key);
            return Err(PieceError::TooLarge { total, max: MAX_MESSAGE_BYTES });
        }
        let end = offset.checked_add(piece.len() as u64).filter(|e| *e <= total);
        if end.is_none() || (piece.is_empty() && offset != total) {
            self.partial.remove(&key);
            return Err(PieceError::Malformed { offset, len: piece.len(), total });
        }
        if offset == 0 {
            // Grown piece by piece rather than reserved up front: `total` is the peer's word.
            self.partial.insert(key, Partial { transfer, total, bytes: Vec::new(), last: now });
        }
        let Some(p) = self.partial.get_mut(&key) else {
            return Err(PieceError::OutOfOrder { transfer, offset });
        };
        if p.transfer != transfer || p.total != total || p.bytes.len() as u64 != offset {
            self.partial.remove(&key);
            return Err(PieceError::OutOfOrder { transfer, offset });
        }
        p.bytes.extend_from_slice(piece);
        p.last = now;
        if p.bytes.len() as u64 == total {
            return Ok(self.partial.remove(&key).map(|p| p.bytes));
        }
        Ok(None)
    }

    /// Drops transfers idle for [`IDLE_TRANSFER`] or longer.
    pub fn expire(&mut self, now: Instant) {
        self.partial.retain(|_, p| now.saturating_duration_since(p.last) < IDLE_TRANSFER);
    }

    /// Transfers under way.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    /// Whether no transfer is under way.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

/// The pieces of `message`: `(offset, piece)` in order, each at most [`PIECE_BYTES`].
pub fn pieces(message: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    message.chunks(PIECE_BYTES).scan(0u64, |offset, piece| {
        let at = *offset;
        *offset += piece.len() as u64;
        Some((at, piece))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn pieces_in_order_give_back_the_message() {
        let msg = message(3 * PIECE_BYTES + 17);
        let mut a = Assembler::default();
        let now = Instant::now();
        let all: Vec<_> = pieces(&msg).collect();
        assert_eq!(all.len(), 4);
        for (i, (offset, piece)) in all.iter().enumerate() {
            let got = a.piece((1, 9), 5, *offset, msg.len() as u64, piece, now).unwrap();
            assert_eq!(got.is_some(), i == 3);
            if let Some(m) = got {
                assert_eq!(m, msg);
            }
        }
        assert!(a.is_empty());
    }

    #[test]
    fn a_lost_or_repeated_piece_is_refused_and_the_transfer_dropped() {
        let msg = message(3 * PIECE_BYTES);
        let p: Vec<_> = pieces(&msg).collect();
        let total = msg.len() as u64;
        let now = Instant::now();
        let mut a = Assembler::default();
        a.piece((1, 9), 5, p[0].0, total, p[0].1, now).unwrap();
        // Piece 1 lost: piece 2 does not follow piece 0.
        assert_eq!(
            a.piece((1, 9), 5, p[2].0, total, p[2].1, now),
            Err(PieceError::OutOfOrder { transfer: 5, offset: p[2].0 })
        );
        assert!(a.is_empty());
        // A piece of no transfer under way.
        assert!(matches!(a.piece((1, 9), 5, p[1].0, total, p[1].1, now), Err(PieceError::OutOfOrder { .. })));
        // A repeated piece.
        a.piece((1, 9), 6, p[0].0, total, p[0].1, now).unwrap();
        a.piece((1, 9), 6, p[1].0, total, p[1].1, now).unwrap();
        assert!(a.piece((1, 9), 6, p[1].0, total, p[1].1, now).is_err());
        // Another transfer's piece in the middle of this one.
        a.piece((1, 9), 7, p[0].0, total, p[0].1, now).unwrap();
        assert!(a.piece((1, 9), 8, p[1].0, total, p[1].1, now).is_err());
    }

    #[test]
    fn a_restart_at_offset_zero_replaces_the_transfer_and_others_are_independent() {
        let msg = message(2 * PIECE_BYTES + 1);
        let p: Vec<_> = pieces(&msg).collect();
        let total = msg.len() as u64;
        let now = Instant::now();
        let mut a = Assembler::default();
        a.piece((1, 9), 1, p[0].0, total, p[0].1, now).unwrap();
        a.piece((1, 9), 1, p[1].0, total, p[1].1, now).unwrap();
        // Same sender and group start over; another group and another sender go on alongside.
        a.piece((1, 9), 2, p[0].0, total, p[0].1, now).unwrap();
        a.piece((1, 8), 1, p[0].0, total, p[0].1, now).unwrap();
        a.piece((2, 9), 1, p[0].0, total, p[0].1, now).unwrap();
        assert_eq!(a.len(), 3);
        for (offset, piece) in &p[1..] {
            a.piece((1, 8), 1, *offset, total, piece, now).unwrap();
        }
        a.piece((1, 9), 2, p[1].0, total, p[1].1, now).unwrap();
        assert_eq!(a.piece((1, 9), 2, p[2].0, total, p[2].1, now).unwrap(), Some(msg));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn oversized_malformed_and_idle_transfers_are_refused_or_dropped() {
        let now = Instant::now();
        let mut a = Assembler::default();
        assert!(matches!(a.piece((1, 9), 1, 0, MAX_MESSAGE_BYTES + 1, b"x", now), Err(PieceError::TooLarge { .. })));
        assert!(matches!(a.piece((1, 9), 1, 0, 4, b"abcde", now), Err(PieceError::Malformed { .. })));
        assert!(matches!(a.piece((1, 9), 1, u64::MAX, 4, b"ab", now), Err(PieceError::Malformed { .. })));
        assert!(matches!(a.piece((1, 9), 1, 0, 4, b"", now), Err(PieceError::Malformed { .. })));
        assert!(a.is_empty());
        a.piece((1, 9), 1, 0, 4, b"ab", now).unwrap();
        a.expire(now + IDLE_TRANSFER / 2);
        assert_eq!(a.len(), 1);
        a.expire(now + IDLE_TRANSFER);
        assert!(a.is_empty());
    }
}
