//! The soft-state registry of every instance in the cluster, built from beacons alone
//! (sans-IO: the caller passes the time). Beacons that fail authentication, are stale, or
//! were seen before change nothing here; they are only counted.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::beacon::{Beacon, BeaconAuth, BeaconError, KeyId, SignedRef};
use crate::control::{InstanceRecord, MemberRecord, NodeTable};

/// What the registry made of a beacon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeaconOutcome {
    /// Nothing changed (a heartbeat, or a change already applied); the node is alive.
    Heartbeat,
    /// The node's instances changed.
    Applied,
    /// The registry is behind (new node, new incarnation, or too many lost beacons): pull the
    /// node's table from `control` and hand it to [`Registry::on_table`].
    NeedSync {
        /// The node.
        node: u64,
        /// Its control address.
        control: String,
    },
    /// Not newer than a beacon already seen from that node: a replay or a duplicate.
    Replayed,
    /// The node said goodbye (it is stopping): it and its instances are gone now.
    Goodbye,
    /// This node's own beacon.
    Own,
    /// Dropped before reading it (unknown key, bad MAC, malformed, or stale).
    Rejected(BeaconError),
}

#[derive(Debug)]
struct NodeState {
    incarnation: u64,
    /// `None` until the table is known (pulled, or a delta from version 0 applied).
    version: Option<u64>,
    control: String,
    last_heard: Instant,
    /// The key its last accepted beacon was signed with (known once beacons arrive signed).
    key: Option<KeyId>,
    instances: BTreeMap<u64, InstanceRecord>,
}

/// Counters of what the registry saw. Each beacon dropped is counted under exactly one of
/// `unknown_key`, `bad_mac`, `malformed`, `stale` and `replayed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Beacons accepted.
    pub accepted: u64,
    /// Beacons dropped as replays or duplicates.
    pub replayed: u64,
    /// Beacons dropped for a key id not in the keyring (never installed, or retired).
    pub unknown_key: u64,
    /// Beacons dropped because their MAC did not verify (forged, altered, or another
    /// cluster's).
    pub bad_mac: u64,
    /// Beacons dropped because the signed body did not parse.
    pub malformed: u64,
    /// Beacons dropped because they were sent too far from this node's clock.
    pub stale: u64,
    /// Goodbyes taken in (nodes removed at once).
    pub goodbyes: u64,
    /// Nodes dropped because their beacons stopped.
    pub expired: u64,
    /// Pulls asked for.
    pub syncs: u64,
}

impl RegistryStats {
    /// Beacons dropped before reaching the registry's tables: failed authentication or stale
    /// (replays not included).
    pub fn rejected(&self) -> u64 {
        self.unknown_key + self.bad_mac + self.malformed + self.stale
    }
}

/// Every node's instances, as last beaconed.
#[derive(Debug)]
pub struct Registry {
    me: Option<u64>,
    expiry: Duration,
    nodes: HashMap<u64, NodeState>,
    /// Highest (incarnation, seq) seen per node, kept after expiry so an old beacon cannot
    /// be replayed to resurrect a node.
    seen: HashMap<u64, (u64, u64)>,
    generation: u64,
    stats: RegistryStats,
}

impl Registry {
    /// A registry that forgets a node after `expiry` without beacons; `me` (if any) is the
    /// local node, whose own beacons are ignored.
    pub fn new(me: Option<u64>, expiry: Duration) -> Self {
        Registry { me, expiry, nodes: HashMap::new(), seen: HashMap::new(), generation: 0, stats: Default::default() }
    }

    /// Bumped on every change to the set of instances: watchers compare it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Counters.
    pub fn stats(&self) -> &RegistryStats {
        &self.stats
    }

    /// Take in a beacon as received at `now` (`now_ms`: the same instant on the wall clock, ms
    /// since the Unix epoch): authenticated and checked for freshness by `auth` first, and
    /// only counted if that fails.
    pub fn on_signed(&mut self, auth: &BeaconAuth, signed: SignedRef<'_>, now: Instant, now_ms: u64) -> BeaconOutcome {
        let b = match auth.open(signed, now_ms) {
            Ok(b) => b,
            Err(e) => {
                let counter = match e {
                    BeaconError::UnknownKey(_) => &mut self.stats.unknown_key,
                    BeaconError::BadMac => &mut self.stats.bad_mac,
                    BeaconError::Malformed(_) => &mut self.stats.malformed,
                    BeaconError::Stale { .. } => &mut self.stats.stale,
                };
                *counter += 1;
                return BeaconOutcome::Rejected(e);
            }
        };
        let outcome = self.on_beacon(&b, now);
        if let Some(state) = self.nodes.get_mut(&b.node) {
            if !matches!(outcome, BeaconOutcome::Replayed) {
                state.key = Some(signed.key_id);
            }
        }
        outcome
    }

    /// Take in an authenticated, fresh beacon received at `now`.
    pub fn on_beacon(&mut self, b: &Beacon, now: Instant) -> BeaconOutcome {
        if Some(b.node) == self.me {
            return BeaconOutcome::Own;
        }
        let seen = self.seen.entry(b.node).or_insert((0, 0));
        if (b.incarnation, b.seq) <= *seen {
            self.stats.replayed += 1;
            return BeaconOutcome::Replayed;
        }
        *seen = (b.incarnation, b.seq);
        self.stats.accepted += 1;
        if b.goodbye {
            // Its (incarnation, seq) stays in `seen`, so its earlier beacons cannot bring it
            // back; a restart (greater incarnation) can.
            self.stats.goodbyes += 1;
            if self.nodes.remove(&b.node).is_some_and(|s| !s.instances.is_empty()) {
                self.generation += 1;
            }
            return BeaconOutcome::Goodbye;
        }
        let fresh = || NodeState {
            incarnation: b.incarnation,
            version: None,
            control: b.control.clone(),
            last_heard: now,
            key: None,
            instances: BTreeMap::new(),
        };
        let state = self.nodes.entry(b.node).or_insert_with(fresh);
        if state.incarnation != b.incarnation {
            // Restarted: its old instances are gone.
            let had = !state.instances.is_empty();
            *state = fresh();
            if had {
                self.generation += 1;
            }
        }
        state.last_heard = now;
        state.control.clone_from(&b.control);
        let known = state.version;
        if known == Some(b.version) {
            return BeaconOutcome::Heartbeat;
        }
        // A delta applies to any version from its base on (a table unknown so far counts as
        // version 0 only if the delta starts there).
        let base = known.unwrap_or(0);
        match &b.delta {
            Some(d) if d.from_version <= base && known.is_none_or(|k| k < b.version) => {
                let state = self.nodes.get_mut(&b.node).expect("inserted above");
                for id in &d.removes {
                    state.instances.remove(id);
                }
                for r in &d.upserts {
                    state.instances.insert(r.id, r.clone());
                }
                state.version = Some(b.version);
                self.generation += 1;
                BeaconOutcome::Applied
            }
            // Older than what we have (reordered): ignore.
            _ if known.is_some_and(|k| k > b.version) => BeaconOutcome::Heartbeat,
            _ => self.need_sync(b),
        }
    }

    fn need_sync(&mut self, b: &Beacon) -> BeaconOutcome {
        self.stats.syncs += 1;
        BeaconOutcome::NeedSync { node: b.node, control: b.control.clone() }
    }

    /// Take in a node's whole table (pulled after [`BeaconOutcome::NeedSync`]). Ignored if the
    /// node has restarted since, or the registry already has a newer version.
    pub fn on_table(&mut self, t: &NodeTable, now: Instant) -> bool {
        let Some(state) = self.nodes.get_mut(&t.node) else { return false };
        if state.incarnation != t.incarnation || state.version.is_some_and(|v| v >= t.version) {
            return false;
        }
        state.instances = t.instances.iter().map(|r| (r.id, r.clone())).collect();
        state.version = Some(t.version);
        state.last_heard = now;
        self.generation += 1;
        true
    }

    /// Forget nodes not heard from within the expiry; their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let expiry = self.expiry;
        let dead: Vec<u64> =
            self.nodes.iter().filter(|(_, s)| now.duration_since(s.last_heard) > expiry).map(|(&n, _)| n).collect();
        for n in &dead {
            if let Some(s) = self.nodes.remove(n) {
                self.stats.expired += 1;
                if !s.instances.is_empty() {
                    self.generation += 1;
                }
            }
        }
        dead
    }

    /// The key each live node signed its last accepted beacon with (what tells an operator
    /// that an old key is no longer in use and can be retired).
    pub fn keys_in_use(&self) -> BTreeMap<u64, KeyId> {
        self.nodes.iter().filter_map(|(&n, s)| s.key.map(|k| (n, k))).collect()
    }

    /// Live nodes.
    pub fn nodes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.nodes.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Every known instance of `service`, up or down.
    pub fn instances_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a InstanceRecord> + 'a {
        self.nodes.values().flat_map(|s| s.instances.values()).filter(move |r| r.service == service)
    }

    /// The addresses of the instances of `service` that are up (what a redirector uses).
    pub fn addrs_of(&self, service: &str) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> =
            self.instances_of(service).filter(|r| r.up).filter_map(|r| r.addr.parse().ok()).collect();
        v.sort_unstable();
        v
    }

    /// Every node heard from, as of `now`, by id.
    pub fn members(&self, now: Instant) -> Vec<MemberRecord> {
        let mut v: Vec<MemberRecord> = self
            .nodes
            .iter()
            .map(|(&node, s)| MemberRecord {
                node,
                incarnation: s.incarnation,
                control: s.control.clone(),
                last_heard_ms: now.saturating_duration_since(s.last_heard).as_millis() as u64,
                instances: s.instances.len() as u32,
                up: s.instances.values().filter(|r| r.up).count() as u32,
                key_id: s.key,
                this_node: false,
            })
            .collect();
        v.sort_unstable_by_key(|m| m.node);
        v
    }

    /// Every instance known.
    pub fn all(&self) -> Vec<InstanceRecord> {
        let mut v: Vec<InstanceRecord> = self.nodes.values().flat_map(|s| s.instances.values().cloned()).collect();
        v.sort_unstable_by_key(|r| r.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beacon::{ClusterKey, Keyring, LocalTable, DELTA_REPEATS};

    fn rec(id: u64, service: &str) -> InstanceRecord {
        InstanceRecord { id, service: service.into(), addr: format!("127.0.0.1:{}", 1000 + id), load: 0, up: true }
    }

    const EXPIRY: Duration = Duration::from_secs(3);

    #[test]
    fn a_new_node_is_learned_from_its_first_delta_and_heartbeats_change_nothing() {
        let t0 = Instant::now();
        let mut node = LocalTable::new(7, 1, "127.0.0.1:70".into());
        node.upsert(rec(1, "calc"));
        node.upsert(rec(2, "kv"));
        let mut r = Registry::new(Some(99), EXPIRY);
        assert_eq!(r.on_beacon(&node.next_beacon(0), t0), BeaconOutcome::Applied);
        assert_eq!(r.addrs_of("calc"), ["127.0.0.1:1001".parse::<SocketAddr>().unwrap()]);
        let g = r.generation();
        for _ in 0..5 {
            assert_eq!(r.on_beacon(&node.next_beacon(0), t0), BeaconOutcome::Heartbeat);
        }
        assert_eq!(r.generation(), g);
    }

    #[test]
    fn a_registry_that_joins_late_pulls_the_table() {
        let t0 = Instant::now();
        let mut node = LocalTable::new(7, 1, "127.0.0.1:70".into());
        node.upsert(rec(1, "calc"));
        for _ in 0..DELTA_REPEATS + 1 {
            node.next_beacon(0);
        }
        let mut r = Registry::new(None, EXPIRY);
        let b = node.next_beacon(0);
        assert!(b.delta.is_none());
        assert_eq!(r.on_beacon(&b, t0), BeaconOutcome::NeedSync { node: 7, control: "127.0.0.1:70".into() });
        assert!(r.on_table(&node.snapshot(), t0));
        assert_eq!(r.addrs_of("calc").len(), 1);
        assert_eq!(r.on_beacon(&node.next_beacon(0), t0), BeaconOutcome::Heartbeat);
        // A stale pull (older version) is ignored.
        let old = NodeTable { version: 0, ..node.snapshot() };
        assert!(!r.on_table(&old, t0));
    }

    #[test]
    fn losing_fewer_beacons_than_the_repeats_loses_no_change() {
        let t0 = Instant::now();
        let mut node = LocalTable::new(7, 1, "c".into());
        node.upsert(rec(1, "a"));
        let mut r = Registry::new(None, EXPIRY);
        r.on_beacon(&node.next_beacon(0), t0);
        node.upsert(rec(2, "a"));
        node.remove(1);
        // The first DELTA_REPEATS - 1 beacons after the change are lost.
        for _ in 0..DELTA_REPEATS - 1 {
            node.next_beacon(0);
        }
        assert_eq!(r.on_beacon(&node.next_beacon(0), t0), BeaconOutcome::Applied);
        assert_eq!(r.all(), [rec(2, "a")]);
    }

    #[test]
    fn losing_more_beacons_than_the_repeats_leads_to_a_pull() {
        let t0 = Instant::now();
        let mut node = LocalTable::new(7, 1, "c".into());
        node.upsert(rec(1, "a"));
        let mut r = Registry::new(None, EXPIRY);
        r.on_beacon(&node.next_beacon(0), t0);
        for _ in 0..DELTA_REPEATS {
            node.next_beacon(0);
        }
        node.upsert(rec(2, "a"));
        for _ in 0..DELTA_REPEATS + 1 {
            node.next_beacon(0);
        }
        assert!(matches!(r.on_beacon(&node.next_beacon(0), t0), BeaconOutcome::NeedSync { .. }));
    }

    #[test]
    fn replays_and_duplicates_are_dropped_and_counted() {
        let t0 = Instant::now();
        let mut node = LocalTable::new(7, 5, "c".into());
        node.upsert(rec(1, "a"));
        let b1 = node.next_beacon(0);
        let b2 = node.next_beacon(0);
        let mut r = Registry::new(None, EXPIRY);
        r.on_beacon(&b1, t0);
        r.on_beacon(&b2, t0);
        assert_eq!(r.on_beacon(&b1, t0), BeaconOutcome::Replayed);
        assert_eq!(r.on_beacon(&b2, t0), BeaconOutcome::Replayed);
        assert_eq!(r.stats().replayed, 2);
        // After the node expires, its old beacons still cannot bring it back.
        r.expire(t0 + EXPIRY * 2);
        assert!(r.nodes().is_empty());
        assert_eq!(r.on_beacon(&b2, t0 + EXPIRY * 2), BeaconOutcome::Replayed);
        assert!(r.nodes().is_empty());
    }

    #[test]
    fn silent_nodes_expire_and_a_restart_replaces_the_old_instances() {
        let t0 = Instant::now();
        let mut a = LocalTable::new(1, 1, "a".into());
        a.upsert(rec(10, "calc"));
        let mut b = LocalTable::new(2, 1, "b".into());
        b.upsert(rec(20, "calc"));
        let mut r = Registry::new(None, EXPIRY);
        r.on_beacon(&a.next_beacon(0), t0);
        r.on_beacon(&b.next_beacon(0), t0);
        assert_eq!(r.addrs_of("calc").len(), 2);
        // b keeps beaconing, a stops.
        let later = t0 + EXPIRY + Duration::from_millis(1);
        r.on_beacon(&b.next_beacon(0), later);
        assert_eq!(r.expire(later), [1]);
        assert_eq!(r.addrs_of("calc"), ["127.0.0.1:1020".parse::<SocketAddr>().unwrap()]);
        // b restarts with a new incarnation and different instances.
        let mut b2 = LocalTable::new(2, 2, "b".into());
        b2.upsert(rec(21, "calc"));
        assert_eq!(r.on_beacon(&b2.next_beacon(0), later), BeaconOutcome::Applied);
        assert_eq!(r.all(), [rec(21, "calc")]);
    }

    #[test]
    fn down_instances_are_known_but_not_offered() {
        let t0 = Instant::now();
        let mut n = LocalTable::new(1, 1, "c".into());
        n.upsert(rec(1, "calc"));
        n.upsert(InstanceRecord { up: false, ..rec(2, "calc") });
        let mut r = Registry::new(None, EXPIRY);
        r.on_beacon(&n.next_beacon(0), t0);
        assert_eq!(r.instances_of("calc").count(), 2);
        assert_eq!(r.addrs_of("calc"), ["127.0.0.1:1001".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn own_beacons_are_ignored() {
        let mut n = LocalTable::new(1, 1, "c".into());
        n.upsert(rec(1, "calc"));
        let mut r = Registry::new(Some(1), EXPIRY);
        assert_eq!(r.on_beacon(&n.next_beacon(0), Instant::now()), BeaconOutcome::Own);
        assert!(r.nodes().is_empty());
    }

    const T: u64 = 1_800_000_000_000;

    fn auth(label: &str, ring: Keyring) -> BeaconAuth {
        BeaconAuth::new(label, ring, crate::beacon::DEFAULT_WINDOW)
    }

    /// What a registry shows: instances, nodes and generation.
    fn view(r: &Registry) -> (Vec<InstanceRecord>, Vec<u64>, u64) {
        (r.all(), r.nodes(), r.generation())
    }

    #[test]
    fn forged_stale_replayed_and_foreign_beacons_change_nothing_and_are_counted_apart() {
        let t0 = Instant::now();
        let key = ClusterKey::from_passphrase("k");
        let ours = auth("prod", Keyring::new(1, key.clone()));
        let mut r = Registry::new(Some(99), EXPIRY);
        let mut node = LocalTable::new(7, 1, "c".into());
        node.upsert(rec(1, "calc"));
        let first = ours.seal(&node.next_beacon(T));
        assert_eq!(r.on_signed(&ours, first.view(), t0, T), BeaconOutcome::Applied);
        let before = view(&r);

        // An attacker's node, and a goodbye in the name of node 7, under other keys / labels.
        let mut evil = LocalTable::new(666, 1, "e".into());
        evil.upsert(rec(2, "calc"));
        let mut forged_bye = LocalTable::new(7, 1, "c".into());
        let attempts = [
            (auth("prod", Keyring::new(1, ClusterKey::from_passphrase("guess"))).seal(&evil.next_beacon(T)), "bad mac"),
            (auth("prod", Keyring::new(9, key.clone())).seal(&evil.next_beacon(T)), "unknown key"),
            (auth("staging", Keyring::new(1, key.clone())).seal(&evil.next_beacon(T)), "other cluster"),
            (auth("staging", Keyring::new(1, key.clone())).seal(&forged_bye.goodbye(T)), "other cluster's goodbye"),
            (ours.seal(&evil.next_beacon(T - 31_000)), "stale"),
            (ours.seal(&evil.next_beacon(T + 31_000)), "from the future"),
            (first.clone(), "replayed"),
        ];
        for (s, what) in &attempts {
            let outcome = r.on_signed(&ours, s.view(), t0, T);
            assert!(matches!(outcome, BeaconOutcome::Rejected(_) | BeaconOutcome::Replayed), "{what}: {outcome:?}");
            assert_eq!(view(&r), before, "{what} changed the registry");
        }
        let s = r.stats();
        assert_eq!((s.bad_mac, s.unknown_key, s.stale, s.replayed, s.malformed), (3, 1, 2, 1, 0), "{s:?}");
        assert_eq!((s.accepted, s.goodbyes, s.rejected()), (1, 0, 6));
    }

    #[test]
    fn the_registry_knows_which_key_each_node_signs_with() {
        let t0 = Instant::now();
        let mut ring = Keyring::new(1, ClusterKey::from_passphrase("old"));
        ring.install(2, ClusterKey::from_passphrase("new")).unwrap();
        let mut sender = auth("c", ring.clone());
        let receiver = auth("c", ring);
        let mut node = LocalTable::new(7, 1, "c".into());
        let mut r = Registry::new(None, EXPIRY);
        r.on_signed(&receiver, sender.seal(&node.next_beacon(T)).view(), t0, T);
        assert_eq!(r.keys_in_use(), BTreeMap::from([(7, 1)]));
        sender.keys_mut().set_primary(2).unwrap();
        let b = sender.seal(&node.next_beacon(T));
        r.on_signed(&receiver, b.view(), t0, T);
        assert_eq!(r.keys_in_use(), BTreeMap::from([(7, 2)]));
    }

    #[test]
    fn a_goodbye_removes_the_node_at_once_and_its_old_beacons_cannot_bring_it_back() {
        let t0 = Instant::now();
        let mut a = LocalTable::new(1, 1, "a".into());
        a.upsert(rec(10, "calc"));
        let mut b = LocalTable::new(2, 1, "b".into());
        b.upsert(rec(20, "calc"));
        let mut r = Registry::new(None, EXPIRY);
        let old = a.next_beacon(0);
        r.on_beacon(&old, t0);
        r.on_beacon(&b.next_beacon(0), t0);
        let g = r.generation();
        // Well within the expiry.
        let bye = a.goodbye(0);
        assert_eq!(r.on_beacon(&bye, t0), BeaconOutcome::Goodbye);
        assert_eq!(r.nodes(), [2]);
        assert_eq!(r.all(), [rec(20, "calc")]);
        assert!(r.generation() > g);
        assert_eq!((r.stats().goodbyes, r.stats().expired), (1, 0));
        // Neither the goodbye nor an earlier beacon, replayed, changes anything.
        let g = r.generation();
        assert_eq!(r.on_beacon(&bye, t0), BeaconOutcome::Replayed);
        assert_eq!(r.on_beacon(&old, t0), BeaconOutcome::Replayed);
        assert_eq!((r.nodes(), r.generation()), (vec![2], g));
        // Nothing left to expire.
        assert!(r.expire(t0 + EXPIRY * 2).contains(&2));
        assert_eq!(r.stats().expired, 1);
        // A restart (new incarnation) is welcome again.
        let mut a2 = LocalTable::new(1, 2, "a".into());
        a2.upsert(rec(11, "calc"));
        assert_eq!(r.on_beacon(&a2.next_beacon(0), t0), BeaconOutcome::Applied);
        assert_eq!(r.nodes(), [1]);
    }
}
