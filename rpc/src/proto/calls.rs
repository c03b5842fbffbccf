//! The client side of a connection's calls: request ids, waiting callers, bounded in-flight.
//!
//! Request ids pack a slab key (low 32 bits) and that slot's own use count (high 32 bits), so
//! a response is matched in O(1) and a late response to a cancelled call (whose slot may have
//! been reused) is recognised and dropped. The count is per slot, so two consecutive uses of a
//! slot always differ by exactly one, however long the slot sat unused: a datagram server
//! orders a slot's calls by it (see `session`).

use std::task::{Poll, Waker};

use slab::Slab;

enum Slot<R> {
    Waiting { id: u64, waker: Option<Waker> },
    Done { id: u64, result: R },
}

impl<R> Slot<R> {
    fn id(&self) -> u64 {
        match self {
            Slot::Waiting { id, .. } | Slot::Done { id, .. } => *id,
        }
    }
}

/// Too many calls in flight on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// In-flight calls of one connection. `R` is what completes a call (a response frame or an
/// error).
pub struct CallTable<R> {
    slots: Slab<Slot<R>>,
    /// Per slab key: how many calls have used it (never 0 once used).
    uses: Vec<u32>,
    max_in_flight: usize,
}

impl<R> std::fmt::Debug for CallTable<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTable").field("in_flight", &self.slots.len()).field("max", &self.max_in_flight).finish()
    }
}

impl<R> CallTable<R> {
    /// A table admitting at most `max_in_flight` concurrent calls.
    pub fn new(max_in_flight: usize) -> Self {
        CallTable { slots: Slab::with_capacity(max_in_flight.min(1024)), uses: Vec::new(), max_in_flight }
    }

    /// Calls started and not yet taken or cancelled.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Start a call; returns its request id.
    pub fn start(&mut self) -> Result<u64, TableFull> {
        if self.slots.len() >= self.max_in_flight {
            return Err(TableFull);
        }
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        if self.uses.len() <= key {
            self.uses.resize(key + 1, 0);
        }
        // Count 0 is skipped so that no request id is 0 (0 marks connection-level errors).
        let uses = self.uses[key].wrapping_add(1).max(1);
        self.uses[key] = uses;
        let id = (u64::from(uses) << 32) | key as u64;
        entry.insert(Slot::Waiting { id, waker: None });
        Ok(id)
    }

    fn key_of(&self, id: u64) -> Option<usize> {
        let key = (id & 0xffff_ffff) as usize;
        (self.slots.get(key)?.id() == id).then_some(key)
    }

    /// Deliver the outcome of call `id`. Returns false (and drops `result`) if the id is
    /// unknown: never issued, already completed, or cancelled.
    pub fn complete(&mut self, id: u64, result: R) -> bool {
        let Some(key) = self.key_of(id) else { return false };
        match std::mem::replace(&mut self.slots[key], Slot::Done { id, result }) {
            Slot::Waiting { waker, .. } => {
                if let Some(w) = waker {
                    w.wake();
                }
                true
            }
            done @ Slot::Done { .. } => {
                self.slots[key] = done;
                false
            }
        }
    }

    /// Take the outcome of call `id` if it has arrived, else remember `waker`.
    pub fn poll_result(&mut self, id: u64, waker: &Waker) -> Poll<Option<R>> {
        let Some(key) = self.key_of(id) else { return Poll::Ready(None) };
        match &mut self.slots[key] {
            Slot::Waiting { waker: w, .. } => {
                match w {
                    Some(w) if w.will_wake(waker) => {}
                    _ => *w = Some(waker.clone()),
                }
                Poll::Pending
            }
            Slot::Done { .. } => match self.slots.remove(key) {
                Slot::Done { result, .. } => Poll::Ready(Some(result)),
                Slot::Waiting { .. } => unreachable!(),
            },
        }
    }

    /// The caller gave up on `id`. Returns true if the call was still waiting (so the peer
    /// should be told to cancel it).
    pub fn cancel(&mut self, id: u64) -> bool {
        let Some(key) = self.key_of(id) else { return false };
        matches!(self.slots.remove(key), Slot::Waiting { .. })
    }

    /// Fail every waiting call (connection lost), waking their callers.
    pub fn fail_all(&mut self, mut result: impl FnMut() -> R) {
        for (_, slot) in self.slots.iter_mut() {
            if let Slot::Waiting { id, waker } = slot {
                let id = *id;
                let waker = waker.take();
                *slot = Slot::Done { id, result: result() };
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Waker, Arc<Count>) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (Waker::from(c.clone()), c)
    }

    #[test]
    fn complete_wakes_and_delivers_once() {
        let mut t = CallTable::new(4);
        let id = t.start().unwrap();
        let (w, n) = waker();
        assert_eq!(t.poll_result(id, &w), Poll::Pending);
        assert!(t.complete(id, 7));
        assert_eq!(n.0.load(Ordering::SeqCst), 1);
        assert!(!t.complete(id, 8), "second response for the same id is refused");
        assert_eq!(t.poll_result(id, &w), Poll::Ready(Some(7)));
        assert!(t.is_empty());
    }

    #[test]
    fn out_of_order_completion() {
        let mut t = CallTable::new(16);
        let ids: Vec<u64> = (0..10).map(|_| t.start().unwrap()).collect();
        let (w, _) = waker();
        for (i, id) in ids.iter().enumerate().rev() {
            assert!(t.complete(*id, i));
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(t.poll_result(*id, &w), Poll::Ready(Some(i)));
        }
    }

    #[test]
    fn bounded_in_flight() {
        let mut t = CallTable::<()>::new(2);
        let a = t.start().unwrap();
        t.start().unwrap();
        assert_eq!(t.start(), Err(TableFull));
        assert!(t.cancel(a));
        assert!(t.start().is_ok(), "a cancelled call frees its slot");
    }

    #[test]
    fn late_response_after_cancel_and_reuse_is_dropped() {
        let mut t = CallTable::new(1);
        let old = t.start().unwrap();
        assert!(t.cancel(old));
        let new = t.start().unwrap();
        assert_ne!(old, new, "same slot, different id");
        assert!(!t.complete(old, 1), "the old call's response must not complete the new call");
        assert!(t.complete(new, 2));
    }

    #[test]
    fn cancel_after_completion_reports_nothing_to_cancel() {
        let mut t = CallTable::new(1);
        let id = t.start().unwrap();
        t.complete(id, ());
        assert!(!t.cancel(id));
    }

    #[test]
    fn fail_all_wakes_every_waiter() {
        let mut t = CallTable::new(8);
        let (w, n) = waker();
        let ids: Vec<u64> = (0..5).map(|_| t.start().unwrap()).collect();
        for id in &ids {
            let _ = t.poll_result(*id, &w);
        }
        t.fail_all(|| "lost");
        assert_eq!(n.0.load(Ordering::SeqCst), 5);
        for id in ids {
            assert_eq!(t.poll_result(id, &w), Poll::Ready(Some("lost")));
        }
    }

    #[test]
    fn a_slot_s_consecutive_ids_differ_by_one_use_however_long_it_sat_idle() {
        let mut t = CallTable::<()>::new(4);
        let a = t.start().unwrap();
        let b = t.start().unwrap();
        // Slot of `a` is reused many times while `b` stays in flight.
        t.cancel(a);
        let mut last = a;
        for _ in 0..1000 {
            let id = t.start().unwrap();
            assert_eq!(id as u32, a as u32, "the freed slot is reused");
            assert_eq!((id >> 32) as u32, (last >> 32) as u32 + 1);
            last = id;
            t.cancel(id);
        }
        t.cancel(b);
        let again = t.start().unwrap();
        let b_again = t.start().unwrap();
        let (older, newer) = if again as u32 == b as u32 { (b, again) } else { (b, b_again) };
        assert_eq!((newer >> 32) as u32, (older >> 32) as u32 + 1, "b's slot continues from its own count");
    }

    #[test]
    fn request_ids_are_never_zero() {
        let mut t = CallTable::<()>::new(1);
        for _ in 0..1000 {
            let id = t.start().unwrap();
            assert_ne!(id, 0);
            t.cancel(id);
        }
    }
}
