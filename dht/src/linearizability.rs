//! A linearizability checker for histories of one-key registers (put, delete, get and
//! compare-and-swap), in the style of Wing & Gong with Lowe's memoization, as Porcupine does it.
//!
//! Linearizability is compositional (local), so a history over many keys is linearizable if
//! and only if each key's sub-history is: [`check`] splits by key and searches each alone.
//!
//! An operation whose outcome the client never learned (its call timed out, or the node it
//! asked died) has no return time and no known result: it may have taken effect at any point
//! after its call, or never. Reads with unknown results are simply left out.

use std::collections::{BTreeMap, HashSet};

/// What an operation did, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Wrote a value (`None`: deleted the key).
    Put(Option<u64>),
    /// Read this value.
    Get(Option<u64>),
    /// Compare-and-swap: `ok` is `Some(true)` if it swapped, `Some(false)` if the compare
    /// failed (then `seen` is the value the key held), `None` if unknown.
    Cas {
        /// Expected value.
        expected: Option<u64>,
        /// New value.
        new: Option<u64>,
        /// Outcome, if known.
        ok: Option<bool>,
        /// The value reported on a failed compare.
        seen: Option<u64>,
    },
}

/// One operation of a history. Values are small integers standing for byte strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The key.
    pub key: u64,
    /// When the client called (any monotonic clock, e.g. nanoseconds since start).
    pub call: u64,
    /// When it returned; `None` if the outcome is unknown.
    pub ret: Option<u64>,
    /// What it did.
    pub kind: Kind,
}

/// A key whose history has no linearization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: u64,
    /// How many operations its history holds.
    pub ops: usize,
}

/// Checks every key's history; returns the keys that are not linearizable.
pub fn check(history: &[Operation]) -> Vec<Violation> {
    let mut by_key: BTreeMap<u64, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if matches!(op.kind, Kind::Get(_)) && op.ret.is_none() {
            continue;
        }
        by_key.entry(op.key).or_default().push(op);
    }
    by_key.into_iter().filter(|(_, ops)| !check_key(ops)).map(|(key, ops)| Violation { key, ops: ops.len() }).collect()
}

/// The register after `op`, if `op` can take effect on `state`.
fn step(state: Option<u64>, op: &Kind, known: bool) -> Option<Option<u64>> {
    match op {
        Kind::Put(v) => Some(*v),
        Kind::Get(v) => (state == *v).then_some(state),
        Kind::Cas { expected, new, ok, seen } => match ok {
            Some(true) => (state == *expected).then_some(*new),
            Some(false) => (state != *expected && state == *seen).then_some(state),
            None if state == *expected => Some(*new),
            // An unknown swap whose compare would fail leaves the key as it was.
            None => {
                debug_assert!(!known);
                Some(state)
            }
        },
    }
}

fn check_key(ops: &[&Operation]) -> bool {
    let n = ops.len();
    let known = ops.iter().filter(|o| o.ret.is_some()).count();
    let ret = |i: usize| ops[i].ret.unwrap_or(u64::MAX);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ops[i].call);
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // Depth-first search with an explicit stack: (state before, op linearized, next candidate).
    let mut stack: Vec<(Option<u64>, usize, usize)> = Vec::new();
    let mut state: Option<u64> = None;
    let mut linearized_known = 0;
    let mut cursor = 0;
    loop {
        if linearized_known == known {
            return true;
        }
        // The earliest return among operations not yet linearized bounds which may go next.
        let min_ret = (0..n).filter(|&i| done[i / 64] & (1 << (i % 64)) == 0).map(ret).min().unwrap_or(u64::MAX);
        let mut advanced = false;
        while cursor < n {
            let i = order[cursor];
            cursor += 1;
            if ops[i].call > min_ret {
                cursor = n;
                break;
            }
            if done[i / 64] & (1 << (i % 64)) != 0 {
                continue;
            }
            let Some(next) = step(state, &ops[i].kind, ops[i].ret.is_some()) else { continue };
            done[i / 64] |= 1 << (i % 64);
            if !seen.insert((done.clone(), next)) {
                done[i / 64] &= !(1 << (i % 64));
                continue;
            }
            stack.push((state, i, cursor));
            state = next;
            if ops[i].ret.is_some() {
                linearized_known += 1;
            }
            cursor = 0;
            advanced = true;
            break;
        }
        if advanced {
            continue;
        }
        // Dead end: undo the last choice and try its next alternative.
        let Some((prev, i, next_cursor)) = stack.pop() else { return false };
        done[i / 64] &= !(1 << (i % 64));
        if ops[i].ret.is_some() {
            linearized_known -= 1;
        }
        state = prev;
        cursor = next_cursor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: Option<u64>, kind: Kind) -> Operation {
        Operation { key: 1, call, ret, kind }
    }

    #[test]
    fn sequential_and_overlapping_histories() {
        // put 1, then get 1: fine.
        let h = vec![op(0, Some(1), Kind::Put(Some(1))), op(2, Some(3), Kind::Get(Some(1)))];
        assert!(check(&h).is_empty());
        // A stale read after a completed write is not.
        let h = vec![op(0, Some(1), Kind::Put(Some(1))), op(2, Some(3), Kind::Get(None))];
        assert_eq!(check(&h), vec![Violation { key: 1, ops: 2 }]);
        // Overlapping: the read may see either.
        for seen in [None, Some(1)] {
            let h = vec![op(0, Some(5), Kind::Put(Some(1))), op(1, Some(4), Kind::Get(seen))];
            assert!(check(&h).is_empty(), "{seen:?}");
        }
        // Two reads that see the write and then not: not linearizable.
        let h = vec![
            op(0, Some(10), Kind::Put(Some(1))),
            op(1, Some(2), Kind::Get(Some(1))),
            op(3, Some(4), Kind::Get(None)),
        ];
        assert!(!check(&h).is_empty());
    }

    #[test]
    fn compare_and_swap_outcomes() {
        let cas = |expected, new, ok, seen| Kind::Cas { expected, new, ok, seen };
        let h = vec![
            op(0, Some(1), Kind::Put(Some(1))),
            op(2, Some(3), cas(Some(1), Some(2), Some(true), None)),
            op(4, Some(5), cas(Some(1), Some(3), Some(false), Some(2))),
            op(6, Some(7), Kind::Get(Some(2))),
        ];
        assert!(check(&h).is_empty());
        // Two swaps from the same value cannot both succeed.
        let h = vec![
            op(0, Some(1), Kind::Put(Some(1))),
            op(2, Some(5), cas(Some(1), Some(2), Some(true), None)),
            op(3, Some(6), cas(Some(1), Some(3), Some(true), None)),
        ];
        assert!(!check(&h).is_empty());
        // A failed compare must report the value held.
        let h = vec![op(0, Some(1), Kind::Put(Some(1))), op(2, Some(3), cas(Some(9), None, Some(false), Some(7)))];
        assert!(!check(&h).is_empty());
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // A write that timed out may show up later...
        let h = vec![op(0, None, Kind::Put(Some(1))), op(5, Some(6), Kind::Get(Some(1)))];
        assert!(check(&h).is_empty());
        // ...or never.
        let h = vec![op(0, None, Kind::Put(Some(1))), op(5, Some(6), Kind::Get(None))];
        assert!(check(&h).is_empty());
        // But not before it was called.
        let h = vec![op(0, Some(1), Kind::Get(Some(1))), op(5, None, Kind::Put(Some(1)))];
        assert!(!check(&h).is_empty());
        // And not twice: once seen and then overwritten, it cannot come back.
        let h = vec![
            op(0, None, Kind::Put(Some(1))),
            op(5, Some(6), Kind::Get(Some(1))),
            op(7, Some(8), Kind::Put(Some(2))),
            op(9, Some(10), Kind::Get(Some(1))),
        ];
        assert!(!check(&h).is_empty());
    }

    #[test]
    fn keys_are_checked_apart_and_large_histories_finish() {
        let mut h = Vec::new();
        // 4 clients on one key, 300 rounds each of overlapping put-then-get, all consistent:
        // every get returns the value of the put it overlaps or the last one before it.
        let mut t = 0;
        for round in 0..300u64 {
            for c in 0..4u64 {
                h.push(Operation { key: 7, call: t + c, ret: Some(t + 10 + c), kind: Kind::Put(Some(round * 4 + c)) });
            }
            // After all four puts returned, a read sees the last linearized one; any of them
            // could be last since they all overlap.
            h.push(Operation { key: 7, call: t + 20, ret: Some(t + 21), kind: Kind::Get(Some(round * 4 + 2)) });
            t += 30;
        }
        h.push(Operation { key: 8, call: 0, ret: Some(1), kind: Kind::Get(Some(5)) });
        assert_eq!(check(&h), vec![Violation { key: 8, ops: 1 }]);
    }
}
