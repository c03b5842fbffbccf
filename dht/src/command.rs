//! What clients ask of a replica group, as it travels in raft log entries, and what comes back.
//!
//! A write is a [`Command`]: the client's id and sequence number (for exactly-once retries), the
//! lowest sequence number whose answer the client may still need, and the operation. Commands are
//! rkyv archives inside raft entries; they came over the network from a leader, so a replica
//! validates every entry before applying it and treats a bad one as a deterministic no-op error
//! (every replica sees the same bytes, so every replica reaches the same state).

use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};

/// The longest key the table accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// The longest value the table accepts, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The most operations one atomic batch may hold.
pub const MAX_BATCH_OPS: usize = 256;
/// The most key and value bytes one atomic batch may carry.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// One change to one key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Op {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
    },
    /// Remove `key` (removing an absent key succeeds).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Set `key` to `new` (or remove it, if `new` is `None`) only if its value is now `expected`
    /// (`None`: only if absent).
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value the key must hold now.
        expected: Option<Vec<u8>>,
        /// What it holds afterwards.
        new: Option<Vec<u8>>,
    },
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => key,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::Cas { key, expected, new } => {
                key.len() + expected.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len)
            }
        }
    }
}

/// A write as replicated: who sent it, which of theirs it is, and what it does.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Command {
    /// The client's id (random 64 bits, chosen once per client handle).
    pub client: u64,
    /// The client's sequence number for this write; a retry reuses it.
    pub seq: u64,
    /// Every write of this client numbered below this has had its answer delivered, so the
    /// replicas may forget those answers.
    pub acked_below: u64,
    /// The operations, applied atomically: all of them or (if a compare fails) none.
    pub ops: Vec<Op>,
}

/// Why a request was refused before it reached the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("key of {len} bytes is over the {MAX_KEY_BYTES}-byte limit")]
    KeyTooLarge {
        /// Its length.
        len: usize,
    },
    /// The value is longer than [`MAX_VALUE_BYTES`].
    #[error("value of {len} bytes is over the {MAX_VALUE_BYTES}-byte limit")]
    ValueTooLarge {
        /// Its length.
        len: usize,
    },
    /// The batch holds more than [`MAX_BATCH_OPS`] operations or [`MAX_BATCH_BYTES`] bytes.
    #[error(
        "batch of {ops} operations and {bytes} bytes is over the limits ({MAX_BATCH_OPS} ops, {MAX_BATCH_BYTES} bytes)"
    )]
    BatchTooLarge {
        /// Operations in it.
        ops: usize,
        /// Key and value bytes in it.
        bytes: usize,
    },
    /// A batch with no operations.
    #[error("empty batch")]
    EmptyBatch,
}

/// Checks one key against the limits.
pub fn check_key(key: &[u8]) -> Result<(), LimitError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(LimitError::KeyTooLarge { len: key.len() });
    }
    Ok(())
}

/// Checks a list of operations against the limits.
pub fn check_ops(ops: &[Op]) -> Result<(), LimitError> {
    if ops.is_empty() {
        return Err(LimitError::EmptyBatch);
    }
    let bytes: usize = ops.iter().map(Op::bytes).sum();
    if ops.len() > MAX_BATCH_OPS || bytes > MAX_BATCH_BYTES {
        return Err(LimitError::BatchTooLarge { ops: ops.len(), bytes });
    }
    for op in ops {
        check_key(op.key())?;
        let values = match op {
            Op::Put { value, .. } => [Some(value), None],
            Op::Delete { .. } => [None, None],
            Op::Cas { expected, new, .. } => [expected.as_ref(), new.as_ref()],
        };
        if let Some(v) = values.into_iter().flatten().find(|v| v.len() > MAX_VALUE_BYTES) {
            return Err(LimitError::ValueTooLarge { len: v.len() });
        }
    }
    Ok(())
}

/// What a write did, as every replica computes it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WriteResult {
    /// Every operation took effect.
    Applied,
    /// The compare at position `index` of the batch failed; nothing took effect. `current` is
    /// the value the key held.
    CompareFailed {
        /// Which operation's compare failed.
        index: u32,
        /// The key's value when the compare ran.
        current: Option<Vec<u8>>,
    },
    /// The entry could not be decoded or broke a limit; nothing took effect.
    Rejected {
        /// Why.
        reason: String,
    },
    /// The client had already said it received this answer (`seq` below its `acked_below`), so
    /// the replicas no longer hold it; the write took effect once, earlier.
    Forgotten,
}

/// Encodes a command for a log entry.
pub fn encode(command: &Command) -> Vec<u8> {
    // Serializing plain vectors and integers cannot fail.
    rkyv::to_bytes::<rancor::Error>(command).map(|b| b.into_vec()).unwrap_or_default()
}

/// Decodes and validates a log entry's command.
pub fn decode(bytes: &[u8]) -> Result<Command, String> {
    // Entry data is not aligned in the protobuf buffer, so copy into an aligned buffer first.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<Command, rancor::Error>(&aligned).map_err(|e| format!("undecodable command: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_an_error() {
        let c = Command {
            client: 7,
            seq: 9,
            acked_below: 3,
            ops: vec![
                Op::Put { key: b"k".to_vec(), value: b"v".to_vec() },
                Op::Cas { key: b"c".to_vec(), expected: None, new: Some(b"1".to_vec()) },
                Op::Delete { key: b"d".to_vec() },
            ],
        };
        let bytes = encode(&c);
        assert_eq!(decode(&bytes).unwrap(), c);
        assert!(decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(decode(b"definitely not an archive").is_err());
    }

    #[test]
    fn limits_are_enforced_with_clear_errors() {
        let big_key = vec![0; MAX_KEY_BYTES + 1];
        assert_eq!(check_key(&big_key), Err(LimitError::KeyTooLarge { len: MAX_KEY_BYTES + 1 }));
        let put = |v: usize| Op::Put { key: b"k".to_vec(), value: vec![0; v] };
        assert!(check_ops(&[put(MAX_VALUE_BYTES)]).is_ok());
        assert_eq!(check_ops(&[put(MAX_VALUE_BYTES + 1)]), Err(LimitError::ValueTooLarge { len: MAX_VALUE_BYTES + 1 }));
        assert_eq!(check_ops(&[]), Err(LimitError::EmptyBatch));
        let many: Vec<Op> = (0..=MAX_BATCH_OPS).map(|_| put(1)).collect();
        assert!(matches!(check_ops(&many), Err(LimitError::BatchTooLarge { .. })));
        let cas = Op::Cas { key: b"k".to_vec(), expected: Some(vec![0; MAX_VALUE_BYTES + 1]), new: None };
        assert!(matches!(check_ops(&[cas]), Err(LimitError::ValueTooLarge { .. })));
    }
}
