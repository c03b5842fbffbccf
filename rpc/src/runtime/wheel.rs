//! Temporary timer store (BTreeMap); replaced by the hashed wheel.
use std::collections::BTreeMap;

/// Key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey(u64, u64);

/// Wheel.
pub struct TimerWheel<T> {
    map: BTreeMap<(u64, u64), T>,
    seq: u64,
}

impl<T> TimerWheel<T> {
    /// New.
    pub fn new(_now: u64) -> Self {
        TimerWheel { map: BTreeMap::new(), seq: 0 }
    }
    /// Insert.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        self.seq += 1;
        self.map.insert((deadline, self.seq), value);
        TimerKey(deadline, self.seq)
    }
    /// Remove.
    pub fn remove(&mut self, key: TimerKey) -> Option<T> {
        self.map.remove(&(key.0, key.1))
    }
    /// Get.
    pub fn get_mut(&mut self, key: TimerKey) -> Option<&mut T> {
        self.map.get_mut(&(key.0, key.1))
    }
    /// Advance.
    pub fn advance(&mut self, now: u64, fired: &mut impl FnMut(TimerKey, T)) {
        while let Some(e) = self.map.first_entry() {
            if e.key().0 > now {
                break;
            }
            let ((d, s), v) = e.remove_entry();
            fired(TimerKey(d, s), v);
        }
    }
    /// Next.
    pub fn next_deadline(&self) -> Option<u64> {
        self.map.keys().next().map(|k| k.0)
    }
    /// Len.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
