//! Hierarchical hashed timer wheel: the per-core store of deadlines (sans-IO, no clock).
//!
//! Time is an abstract `u64` tick (the core uses milliseconds since it started). Six levels of
//! 64 slots cover 64^6 ticks (about 2.2 years at 1 ms); a timer goes to the level of the
//! highest bit in which its deadline differs from the wheel's current time, and moves down a
//! level (cascades) when its slot comes due. Insert, remove and re-arm are O(1); advancing is
//! O(fired + cascaded). Entries live in one slab linked into per-slot lists by index, so once
//! the slab has grown to the peak number of live timers no operation allocates; a call's
//! deadline costs no heap traffic on the hot path.

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// Furthest a timer is placed ahead of the current time; later deadlines are parked in the
/// top level's last slot before wrap-around and re-placed when that slot comes due.
const MAX_AHEAD: u64 = (1 << (SLOT_BITS * LEVELS as u32)) - (1 << (SLOT_BITS * (LEVELS as u32 - 1)));
const NIL: u32 = u32::MAX;
/// Pseudo-level of the list of timers whose deadline had already passed when inserted.
const EXPIRED: u8 = u8::MAX;

/// Names one armed timer. Stale keys (timer fired or removed) are detected by generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimerKey {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry<T> {
    value: Option<T>,
    deadline: u64,
    generation: u32,
    prev: u32,
    /// Next in the slot list, or next free entry when vacant.
    next: u32,
    level: u8,
    slot: u8,
}

/// The wheel. `T` is what a timer carries (the core stores task wakers).
#[derive(Debug)]
pub(crate) struct TimerWheel<T> {
    entries: Vec<Entry<T>>,
    free: u32,
    len: usize,
    /// Current time: every timer with a deadline at or before it has fired.
    elapsed: u64,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    expired: u32,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose current time is `now`.
    pub(crate) fn new(now: u64) -> Self {
        TimerWheel {
            entries: Vec::new(),
            free: NIL,
            len: 0,
            elapsed: now,
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            expired: NIL,
        }
    }

    /// Arm a timer for `deadline`. A deadline already past fires on the next `advance`.
    pub(crate) fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let index = if self.free != NIL {
            let i = self.free;
            let e = &mut self.entries[i as usize];
            self.free = e.next;
            e.value = Some(value);
            e.deadline = deadline;
            i
        } else {
            let i = u32::try_from(self.entries.len()).expect("more than 2^32 timers");
            assert!(i != NIL, "more than 2^32 timers");
            self.entries.push(Entry {
                value: Some(value),
                deadline,
                generation: 0,
                prev: NIL,
                next: NIL,
                level: 0,
                slot: 0,
            });
            i
        };
        self.len += 1;
        self.place(index);
        TimerKey { index, generation: self.entries[index as usize].generation }
    }

    /// Disarm a timer, returning its value; `None` if it already fired or was removed.
    pub(crate) fn remove(&mut self, key: TimerKey) -> Option<T> {
        self.live(key)?;
        self.unlink(key.index);
        Some(self.release(key.index))
    }

    /// The value of a still-armed timer (to swap a waker without re-arming).
    pub(crate) fn get_mut(&mut self, key: TimerKey) -> Option<&mut T> {
        self.live(key)?;
        self.entries[key.index as usize].value.as_mut()
    }

    /// Move time forward to `now`, handing every timer with a deadline `<= now` to `fired`.
    /// Never fires a timer early; time never moves backwards (an earlier `now` is a no-op).
    pub(crate) fn advance(&mut self, now: u64, fired: &mut impl FnMut(TimerKey, T)) {
        if now <= self.elapsed && self.expired == NIL {
            // Nothing can be due: a spinning core calls this every turn within one tick.
            return;
        }
        loop {
            while self.expired != NIL {
                let i = self.expired;
                self.unlink(i);
                let key = TimerKey { index: i, generation: self.entries[i as usize].generation };
                let value = self.release(i);
                fired(key, value);
            }
            match self.next_slot() {
                Some((level, slot, start)) if start <= now => {
                    // Everything in this slot is due at or after `start`; re-place each entry
                    // against the new current time: due ones land in `expired`, the rest in a
                    // lower level.
                    self.elapsed = start;
                    let mut i = self.heads[level][slot];
                    self.heads[level][slot] = NIL;
                    self.occupied[level] &= !(1u64 << slot);
                    while i != NIL {
                        let next = self.entries[i as usize].next;
                        self.place(i);
                        i = next;
                    }
                }
                _ => break,
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    /// A time at or before the earliest armed deadline (the start of the earliest occupied
    /// slot, which for higher levels may be earlier than the timer itself: waking then just
    /// cascades). `None` when nothing is armed.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        if self.expired != NIL {
            return Some(self.elapsed);
        }
        self.next_slot().map(|(_, _, start)| start)
    }

    /// Number of armed timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The earliest occupied slot as (level, slot, start time). Lower levels always hold
    /// earlier timers than higher ones, so the first level with anything wins.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let bits = self.occupied[level];
            if bits == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let pos = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
            let slot = (pos + bits.rotate_right(pos as u32).trailing_zeros() as usize) & (SLOTS - 1);
            let level_range = 1u64 << (shift + SLOT_BITS);
            let mut start = (self.elapsed & !(level_range - 1)) + ((slot as u64) << shift);
            if start <= self.elapsed && level > 0 {
                // Only the top level wraps: far-future timers parked behind the current slot.
                start = start.saturating_add(level_range);
            }
            return Some((level, slot, start.max(self.elapsed)));
        }
        None
    }

    fn live(&self, key: TimerKey) -> Option<()> {
        let e = self.entries.get(key.index as usize)?;
        (e.generation == key.generation && e.value.is_some()).then_some(())
    }

    /// Link entry `i` into the list its deadline belongs to, relative to `elapsed`.
    fn place(&mut self, i: u32) {
        let deadline = self.entries[i as usize].deadline;
        if deadline <= self.elapsed {
            self.push_front(i, EXPIRED, 0);
            return;
        }
        let when = deadline.min(self.elapsed.saturating_add(MAX_AHEAD));
        let significant = 63 - ((self.elapsed ^ when) | (SLOTS as u64 - 1)).leading_zeros();
        let level = ((significant / SLOT_BITS) as usize).min(LEVELS - 1);
        let slot = ((when >> (SLOT_BITS * level as u32)) as usize) & (SLOTS - 1);
        self.push_front(i, level as u8, slot as u8);
    }

    fn push_front(&mut self, i: u32, level: u8, slot: u8) {
        let head = if level == EXPIRED {
            &mut self.expired
        } else {
            self.occupied[level as usize] |= 1u64 << slot;
            &mut self.heads[level as usize][slot as usize]
        };
        let old = std::mem::replace(head, i);
        if old != NIL {
            self.entries[old as usize].prev = i;
        }
        let e = &mut self.entries[i as usize];
        e.prev = NIL;
        e.next = old;
        e.level = level;
        e.slot = slot;
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, level, slot) = {
            let e = &self.entries[i as usize];
            (e.prev, e.next, e.level, e.slot)
        };
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else if level == EXPIRED {
            self.expired = next;
        } else {
            self.heads[level as usize][slot as usize] = next;
            if next == NIL {
                self.occupied[level as usize] &= !(1u64 << slot);
            }
        }
    }

    /// Free an unlinked entry and return its value.
    fn release(&mut self, i: u32) -> T {
        let free = self.free;
        let e = &mut self.entries[i as usize];
        e.generation = e.generation.wrapping_add(1);
        e.next = free;
        e.prev = NIL;
        self.free = i;
        self.len -= 1;
        e.value.take().expect("released a vacant timer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn fire_all(w: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        w.advance(now, &mut |_, v| out.push(v));
        out.sort_unstable();
        out
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = TimerWheel::new(0);
        w.insert(5, 1);
        w.insert(70, 2);
        w.insert(5000, 3);
        assert_eq!(w.next_deadline(), Some(5));
        assert!(fire_all(&mut w, 4).is_empty());
        assert_eq!(fire_all(&mut w, 5), vec![1]);
        assert!(fire_all(&mut w, 69).is_empty());
        assert_eq!(fire_all(&mut w, 70), vec![2]);
        assert!(fire_all(&mut w, 4999).is_empty());
        assert_eq!(fire_all(&mut w, 10_000), vec![3]);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        let mut w = TimerWheel::new(100);
        w.insert(50, 7);
        w.insert(100, 8);
        assert_eq!(w.next_deadline(), Some(100));
        assert_eq!(fire_all(&mut w, 100), vec![7, 8]);
    }

    #[test]
    fn remove_and_stale_keys() {
        let mut w = TimerWheel::new(0);
        let a = w.insert(10, 1);
        let b = w.insert(10, 2);
        assert_eq!(w.remove(a), Some(1));
        assert_eq!(w.remove(a), None);
        *w.get_mut(b).unwrap() = 20;
        assert_eq!(fire_all(&mut w, 10), vec![20]);
        assert_eq!(w.get_mut(b), None);
        // The slot is reused with a new generation; the old key stays dead.
        let c = w.insert(30, 3);
        assert_eq!(c.index, b.index);
        assert_ne!(c, b);
        assert_eq!(w.remove(b), None);
        assert_eq!(w.remove(c), Some(3));
    }

    #[test]
    fn far_future_timers_wait_for_their_deadline() {
        let mut w = TimerWheel::new(3);
        let far = MAX_AHEAD * 5 + 12_345;
        w.insert(far, 1);
        w.insert(MAX_AHEAD * 3 + 17, 2);
        w.insert(MAX_AHEAD + 1, 0);
        let mut now = 3;
        let mut fired = Vec::new();
        // Follow next_deadline like the core does; each step must make progress.
        for _ in 0..10_000 {
            let Some(next) = w.next_deadline() else { break };
            assert!(next >= now, "next deadline went backwards");
            now = next;
            for v in fire_all(&mut w, now) {
                fired.push((v, now));
            }
        }
        assert_eq!(fired, vec![(0, MAX_AHEAD + 1), (2, MAX_AHEAD * 3 + 17), (1, far)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop_oneof![0u64..70, 0u64..5000, 0u64..300_000, 0u64..(1 << 40)].prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Remove),
            3 => prop_oneof![0u64..70, 0u64..5000, 0u64..(1 << 38)].prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Against a sorted-map model: exactly the due timers fire, never early, and
        /// next_deadline never overshoots the earliest armed deadline.
        #[test]
        fn matches_model(start in 0u64..1_000_000, ops in proptest::collection::vec(op(), 1..200)) {
            let mut w = TimerWheel::new(start);
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            let mut keys: Vec<(u32, TimerKey)> = Vec::new();
            let mut now = start;
            let mut id = 0u32;
            for op in ops {
                match op {
                    Op::Insert(delta) => {
                        let d = now.saturating_sub(3) + delta;
                        keys.push((id, w.insert(d, id)));
                        model.insert(id, d);
                        id += 1;
                    }
                    Op::Remove(i) if !keys.is_empty() => {
                        let (v, k) = keys[i % keys.len()];
                        prop_assert_eq!(w.remove(k), model.remove(&v).map(|_| v));
                    }
                    Op::Remove(_) => {}
                    Op::Advance(delta) => {
                        now += delta;
                        let mut fired = Vec::new();
                        w.advance(now, &mut |_, v| fired.push(v));
                        fired.sort_unstable();
                        let due: Vec<u32> = model.iter().filter(|(_, &d)| d <= now).map(|(&v, _)| v).collect();
                        for v in &due {
                            model.remove(v);
                        }
                        prop_assert_eq!(fired, due);
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                match (w.next_deadline(), model.values().min()) {
                    (None, None) => {}
                    (Some(next), Some(&min)) => prop_assert!(next <= min.max(now)),
                    (a, b) => prop_assert!(false, "next_deadline {:?} but model min {:?}", a, b),
                }
            }
        }
    }
}
