//! Choosing an instance for a redirected call, and deciding what to do when a call fails.
//! Pure functions over a snapshot of the instances: every policy is tested without sockets
//! or clocks. The redirector (`Redirector`) feeds them.

use std::hash::{Hash, Hasher};

/// How a redirector spreads calls over the instances of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Policy {
    /// Uniformly at random.
    Random,
    /// In turn.
    #[default]
    RoundRobin,
    /// The instance with the fewest calls in flight: this redirector's own, plus the load
    /// the instance last reported (beaconed by its node). Ties in turn.
    LeastOutstanding,
    /// Methods that name a key go to the instance the key hashes to (rendezvous hashing:
    /// adding or removing an instance moves only the keys it gains or loses, and a failed
    /// instance's keys fail over to the same second choice from every client). Methods
    /// without a key use [`Policy::LeastOutstanding`].
    KeyAffinity,
}

/// What the chooser knows about one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Stable identity (a hash of the instance's address), the same in every client.
    pub id: u64,
    /// Calls in flight to it from this redirector.
    pub outstanding: u32,
    /// The load it last reported (calls in flight there, from every client), 0 if unknown.
    pub load: u32,
    /// Recently failed: chosen only when every untried instance is down.
    pub down: bool,
    /// Already tried for this call: never chosen again for it.
    pub tried: bool,
}

/// A redirector's choosing state: the policy, a round-robin cursor and a random generator.
#[derive(Debug, Clone)]
pub struct Chooser {
    policy: Policy,
    cursor: usize,
    rng: u64,
}

impl Chooser {
    /// A chooser; `seed` feeds the random policy (any value; 0 is replaced).
    pub fn new(policy: Policy, seed: u64) -> Chooser {
        Chooser { policy, cursor: 0, rng: seed | 1 }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The index of the instance to call, or `None` if every instance has been tried.
    /// Instances that are up are preferred; down ones are used only when no untried instance
    /// is up (the failure may have passed, and trying beats failing outright).
    pub fn pick(&mut self, cands: &[Candidate], key: Option<u64>) -> Option<usize> {
        let up = |c: &Candidate| !c.tried && !c.down;
        let untried = |c: &Candidate| !c.tried;
        if cands.iter().any(up) {
            self.pick_among(cands, key, up)
        } else if cands.iter().any(untried) {
            self.pick_among(cands, key, untried)
        } else {
            None
        }
    }

    fn pick_among(&mut self, cands: &[Candidate], key: Option<u64>, ok: impl Fn(&Candidate) -> bool) -> Option<usize> {
        let n = cands.len();
        let eligible = || cands.iter().enumerate().filter(|(_, c)| ok(c)).map(|(i, _)| i);
        let chosen = match (self.policy, key) {
            (Policy::KeyAffinity, Some(key)) => eligible().max_by_key(|&i| (mix(key ^ cands[i].id), cands[i].id)),
            (Policy::Random, _) => {
                let count = eligible().count();
                let r = (self.next_random() % count as u64) as usize;
                eligible().nth(r)
            }
            (Policy::RoundRobin, _) => (0..n).map(|k| (self.cursor + k) % n).find(|&i| ok(&cands[i])),
            (Policy::LeastOutstanding | Policy::KeyAffinity, _) => (0..n)
                .map(|k| (self.cursor + k) % n)
                .filter(|&i| ok(&cands[i]))
                .min_by_key(|&i| cands[i].outstanding.saturating_add(cands[i].load)),
        }?;
        if matches!(self.policy, Policy::RoundRobin | Policy::LeastOutstanding | Policy::KeyAffinity) {
            self.cursor = (chosen + 1) % n;
        }
        Some(chosen)
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: plenty for spreading load, and no dependency.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// splitmix64's finalizer: a well-spread 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a: a hasher whose output is the same in every process and build, so clients agree
/// on key placement (std's `DefaultHasher` promises neither).
#[derive(Debug, Clone)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        mix(self.0)
    }
}

/// The placement hash of a key (for [`Policy::KeyAffinity`]).
pub fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut h = StableHasher::default();
    key.hash(&mut h);
    h.finish()
}

/// What a failed attempt says about the call and the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureClass {
    /// The call certainly did not run on that instance.
    pub did_not_run: bool,
    /// Another instance might succeed (the failure is the instance's, not the request's).
    pub instance_fault: bool,
    /// Avoid the instance for a while.
    pub mark_down: bool,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try another instance.
    FailOver,
    /// Give up and report the error.
    Stop,
}

/// Decide whether a failed attempt may be repeated on another instance: only if the failure
/// is the instance's, and the call either did not run or is idempotent, and attempts remain.
/// A non-idempotent call that may have run is never repeated.
pub fn after_failure(class: FailureClass, idempotent: bool, attempts: u32, max_attempts: u32) -> Next {
    if class.instance_fault && (class.did_not_run || idempotent) && attempts < max_attempts {
        Next::FailOver
    } else {
        Next::Stop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(n: usize) -> Vec<Candidate> {
        (0..n).map(|i| Candidate { id: key_hash(&i), outstanding: 0, load: 0, down: false, tried: false }).collect()
    }

    #[test]
    fn round_robin_takes_turns_and_skips_tried_and_down() {
        let mut c = Chooser::new(Policy::RoundRobin, 1);
        let mut v = cands(3);
        let picks: Vec<_> = (0..6).map(|_| c.pick(&v, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        v[1].down = true;
        let picks: Vec<_> = (0..4).map(|_| c.pick(&v, None).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        v[0].tried = true;
        assert_eq!(c.pick(&v, None), Some(2));
    }

    #[test]
    fn down_instances_are_a_last_resort_and_tried_ones_never_return() {
        let mut c = Chooser::new(Policy::LeastOutstanding, 1);
        let mut v = cands(2);
        v[0].down = true;
        v[1].tried = true;
        assert_eq!(c.pick(&v, None), Some(0), "a down instance beats failing outright");
        v[0].tried = true;
        assert_eq!(c.pick(&v, None), None);
        assert_eq!(c.pick(&[], None), None);
    }

    #[test]
    fn least_outstanding_prefers_the_idlest() {
        let mut c = Chooser::new(Policy::LeastOutstanding, 1);
        let mut v = cands(3);
        v[0].outstanding = 5;
        v[1].outstanding = 2;
        v[2].outstanding = 9;
        assert_eq!(c.pick(&v, None), Some(1));
        v[1].outstanding = 10;
        assert_eq!(c.pick(&v, None), Some(0));
    }

    #[test]
    fn least_outstanding_counts_the_reported_load_too() {
        let mut c = Chooser::new(Policy::LeastOutstanding, 1);
        let mut v = cands(2);
        v[0].outstanding = 1;
        v[1].load = 8;
        assert_eq!(c.pick(&v, None), Some(0), "8 calls elsewhere outweigh our 1");
        v[0].outstanding = 9;
        assert_eq!(c.pick(&v, None), Some(1));
    }

    #[test]
    fn random_spreads_over_every_eligible_instance() {
        let mut c = Chooser::new(Policy::Random, 42);
        let mut v = cands(4);
        v[3].down = true;
        let mut seen = [0u32; 4];
        for _ in 0..3000 {
            seen[c.pick(&v, None).unwrap()] += 1;
        }
        assert_eq!(seen[3], 0);
        // Each of three gets its share within a generous margin (deterministic seed).
        assert!(seen[..3].iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");
    }

    #[test]
    fn key_affinity_is_stable_and_moves_few_keys_when_membership_changes() {
        let mut c = Chooser::new(Policy::KeyAffinity, 1);
        let v = cands(5);
        let keys: Vec<u64> = (0..1000u32).map(|k| key_hash(&k)).collect();
        let before: Vec<u64> = keys.iter().map(|&k| v[c.pick(&v, Some(k)).unwrap()].id).collect();
        // Same answer every time, whatever else happened in between.
        let again: Vec<u64> = keys.iter().map(|&k| v[c.pick(&v, Some(k)).unwrap()].id).collect();
        assert_eq!(before, again);
        // Remove instance 2: only its keys move.
        let fewer: Vec<Candidate> = v.iter().copied().filter(|x| x.id != v[2].id).collect();
        for (k, old) in keys.iter().zip(&before) {
            let new = fewer[c.pick(&fewer, Some(*k)).unwrap()].id;
            if *old != v[2].id {
                assert_eq!(new, *old, "a key whose instance stayed must not move");
            }
        }
        // Every instance owns some keys.
        for x in &v {
            assert!(before.contains(&x.id));
        }
    }

    #[test]
    fn key_affinity_fails_over_to_the_same_second_choice() {
        let mut a = Chooser::new(Policy::KeyAffinity, 1);
        let mut b = Chooser::new(Policy::KeyAffinity, 99);
        let mut v = cands(4);
        let k = key_hash("alice");
        let first = a.pick(&v, Some(k)).unwrap();
        v[first].tried = true;
        assert_eq!(a.pick(&v, Some(k)), b.pick(&v, Some(k)));
        assert_ne!(a.pick(&v, Some(k)), Some(first));
    }

    #[test]
    fn key_hash_is_stable_across_builds() {
        // Fixed value: changing the hash would move every key in a running cluster.
        assert_eq!(key_hash("multispace"), key_hash(&String::from("multispace")));
        assert_eq!(key_hash(&7u64), 0xae25_3598_b337_821e);
    }

    #[test]
    fn only_safe_failures_are_repeated() {
        let lost = FailureClass { did_not_run: false, instance_fault: true, mark_down: true };
        let refused = FailureClass { did_not_run: true, instance_fault: true, mark_down: true };
        let app = FailureClass { did_not_run: false, instance_fault: false, mark_down: false };
        assert_eq!(after_failure(lost, true, 1, 3), Next::FailOver);
        assert_eq!(after_failure(lost, false, 1, 3), Next::Stop, "may have run: not repeated");
        assert_eq!(after_failure(refused, false, 1, 3), Next::FailOver, "did not run: safe to repeat");
        assert_eq!(after_failure(refused, true, 3, 3), Next::Stop, "budget spent");
        assert_eq!(after_failure(app, true, 1, 3), Next::Stop, "the service answered");
    }
}
