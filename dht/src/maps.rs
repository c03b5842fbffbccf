//! Where a key lives: keys hash into a fixed number of slots, slot ranges map to replica groups
//! (the partition map), and each group lists its members, a leader hint and an epoch (the
//! replica-group map).
//!
//! Clients cache a [`Maps`]; every request carries the epoch of the group it was routed by, and
//! a server whose view differs answers with a [`Redirect`] that the client applies before
//! retrying. Pure data and functions: no I/O.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize, Serialize};

/// How many slots keys hash into. Fixed for the life of a cluster: moving a slot between
/// groups changes the partition map, never a key's slot.
pub const SLOTS: u32 = 4096;

/// A replica group's id.
pub type GroupId = u64;
/// A node's id within the table (raft peer ids are node ids).
pub type NodeId = u64;

/// The metadata group: a replica group like the others, whose only key ([`MAPS_KEY`]) holds
/// the maps themselves. No slot range names it, so no client key can reach it.
pub const META_GROUP: GroupId = 0;
/// The metadata group's key holding the encoded [`Maps`].
pub const MAPS_KEY: &[u8] = b"maps";

/// The voter that should lead `group` when it can (`voters` sorted): the voters taken in turn
/// by group id, so that groups with the same members are led by different ones. Leaders hand
/// over to it (see [`crate::replica::ReplicaConfig::balance_leaders`]).
pub fn preferred_leader(group: GroupId, voters: &[NodeId]) -> Option<NodeId> {
    (!voters.is_empty()).then(|| voters[(group % voters.len() as u64) as usize])
}

/// The slot a key hashes to: FNV-1a, stable across processes, versions and platforms.
pub fn slot_of(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits alone mix poorly for short keys.
    ((h ^ (h >> 32)) % u64::from(SLOTS)) as u32
}

/// One replica group as clients see it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Group {
    /// Its id.
    pub id: GroupId,
    /// Raised at every change of members or slots, so stale routes are recognised.
    pub epoch: u64,
    /// Voting members (node ids).
    pub members: Vec<NodeId>,
    /// The member last known to lead, if any.
    pub leader_hint: Option<NodeId>,
}

/// The partition map and replica-group map together.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Maps {
    /// `(first slot, group)`, sorted by first slot; a range runs to the next entry's first slot.
    ranges: Vec<(u32, GroupId)>,
    groups: BTreeMap<GroupId, Group>,
}

/// Why a map is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The ranges do not start at slot 0, are out of order, or name an unknown group.
    #[error("partition map is malformed: {0}")]
    Malformed(String),
}

/// A server's answer to a request it will not serve: where to go instead.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Redirect {
    /// The group as the server sees it (newer epoch, or the same with a better leader hint).
    pub group: Group,
}

impl Maps {
    /// Maps from `(first slot, group)` ranges and the groups they name.
    pub fn new(mut ranges: Vec<(u32, GroupId)>, groups: Vec<Group>) -> Result<Self, MapError> {
        ranges.sort_by_key(|r| r.0);
        let groups: BTreeMap<GroupId, Group> = groups.into_iter().map(|g| (g.id, g)).collect();
        match ranges.first() {
            Some((0, _)) => {}
            _ => return Err(MapError::Malformed("the first range must start at slot 0".into())),
        }
        for w in ranges.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(MapError::Malformed(format!("two ranges start at slot {}", w[0].0)));
            }
        }
        if let Some((s, _)) = ranges.iter().find(|(s, _)| *s >= SLOTS) {
            return Err(MapError::Malformed(format!("range starts at slot {s}, past the last slot")));
        }
        if let Some((_, g)) = ranges.iter().find(|(_, g)| !groups.contains_key(g)) {
            return Err(MapError::Malformed(format!("range names unknown group {g}")));
        }
        if ranges.iter().any(|(_, g)| *g == META_GROUP) {
            return Err(MapError::Malformed(format!("a range names the metadata group {META_GROUP}")));
        }
        if let Some(g) = groups.values().find(|g| g.members.is_empty()) {
            return Err(MapError::Malformed(format!("group {} has no members", g.id)));
        }
        Ok(Maps { ranges, groups })
    }

    /// The same maps, if they pass [`Maps::new`]'s checks. Maps deserialized from a peer (a
    /// node's `ClusterView`) skip those checks, and routing with broken maps would panic.
    pub fn checked(self) -> Result<Self, MapError> {
        Maps::new(self.ranges, self.groups.into_values().collect())
    }

    /// `partitions` groups over equal slot ranges, each replicated on `replicas` consecutive
    /// nodes of `nodes` (round-robin), all at epoch 1, and the metadata group on the first
    /// `replicas` nodes.
    pub fn even(nodes: &[NodeId], partitions: u32, replicas: usize) -> Result<Self, MapError> {
        if nodes.is_empty() || partitions == 0 || partitions > SLOTS || replicas == 0 || replicas > nodes.len() {
            return Err(MapError::Malformed(format!(
                "cannot place {partitions} partitions x {replicas} replicas on {} nodes",
                nodes.len()
            )));
        }
        let mut ranges = Vec::new();
        let mut groups = Vec::new();
        for p in 0..partitions {
            let id = u64::from(p) + 1;
            ranges.push(((u64::from(p) * u64::from(SLOTS) / u64::from(partitions)) as u32, id));
            let members = (0..replicas).map(|r| nodes[(p as usize + r) % nodes.len()]).collect();
            groups.push(Group { id, epoch: 1, members, leader_hint: None });
        }
        groups.push(Group { id: META_GROUP, epoch: 1, members: nodes[..replicas].to_vec(), leader_hint: None });
        Maps::new(ranges, groups)
    }

    /// The metadata group, if these maps have one (maps built by hand may not: their nodes
    /// then serve the maps they were configured with).
    pub fn meta(&self) -> Option<&Group> {
        self.groups.get(&META_GROUP)
    }

    /// The maps as the metadata group stores them (an rkyv archive; no leader hints, which
    /// change too often to be worth a write).
    pub fn encode(&self) -> Vec<u8> {
        let mut plain = self.clone();
        for g in plain.groups.values_mut() {
            g.leader_hint = None;
        }
        rkyv::to_bytes::<rkyv::rancor::Error>(&plain).map(|b| b.into_vec()).unwrap_or_default()
    }

    /// Maps stored by [`Maps::encode`], validated and checked: they came from the network.
    pub fn decode(bytes: &[u8]) -> Result<Maps, MapError> {
        let maps = rkyv::from_bytes::<Maps, rkyv::rancor::Error>(bytes)
            .map_err(|e| MapError::Malformed(format!("stored maps do not decode: {e}")))?;
        maps.checked()
    }

    /// What the metadata group should store once it knows `news` (groups as their replicas
    /// see them): `stored` (or, nothing stored yet, `initial`) with every newer epoch taken
    /// in. `None` when the stored maps already say all of it.
    pub fn recorded(stored: Option<&Maps>, initial: &Maps, news: &[Group]) -> Option<Maps> {
        let mut maps = stored.unwrap_or(initial).clone();
        let mut changed = stored.is_none();
        for g in news {
            let newer = maps.groups.get(&g.id).is_some_and(|old| g.epoch > old.epoch);
            if newer && !g.members.is_empty() {
                maps.groups.insert(g.id, Group { leader_hint: None, ..g.clone() });
                changed = true;
            }
        }
        changed.then_some(maps)
    }

    /// The group owning `slot`.
    pub fn group_of_slot(&self, slot: u32) -> &Group {
        let i = self.ranges.partition_point(|(first, _)| *first <= slot) - 1;
        &self.groups[&self.ranges[i].1]
    }

    /// The group owning `key`.
    pub fn group_of(&self, key: &[u8]) -> &Group {
        self.group_of_slot(slot_of(key))
    }

    /// A group by id.
    pub fn group(&self, id: GroupId) -> Option<&Group> {
        self.groups.get(&id)
    }

    /// Every group.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// The slot ranges as `(first, last inclusive, group)`.
    pub fn ranges(&self) -> impl Iterator<Item = (u32, u32, GroupId)> + '_ {
        self.ranges.iter().enumerate().map(|(i, (first, g))| {
            let last = self.ranges.get(i + 1).map_or(SLOTS, |r| r.0) - 1;
            (*first, last, *g)
        })
    }

    /// Takes in what a server said: a newer epoch replaces the group; the same epoch only
    /// updates the leader hint. Returns whether anything changed. A group with no members is
    /// ignored: no node sends one, and clients pick among a group's members.
    pub fn learn(&mut self, redirect: &Redirect) -> bool {
        let new = &redirect.group;
        if new.members.is_empty() {
            return false;
        }
        match self.groups.get_mut(&new.id) {
            Some(g) if new.epoch > g.epoch => {
                *g = new.clone();
                true
            }
            Some(g) if new.epoch == g.epoch && new.leader_hint.is_some() && new.leader_hint != g.leader_hint => {
                g.leader_hint = new.leader_hint;
                true
            }
            _ => false,
        }
    }

    /// Drops the leader hint of a group (its leader did not answer as leader).
    pub fn forget_leader(&mut self, group: GroupId) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.leader_hint = None;
        }
    }

    /// Whether all keys of `keys` fall in one group (atomic batches must).
    pub fn same_group<'a>(&self, mut keys: impl Iterator<Item = &'a [u8]>) -> Option<GroupId> {
        let first = self.group_of(keys.next()?).id;
        keys.all(|k| self.group_of(k).id == first).then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_spread() {
        // Pinned values: a change here would move every key of every existing cluster.
        let pinned: Vec<u32> = [&b""[..], b"a", b"key-1", b"user:42"].iter().map(|k| slot_of(k)).collect();
        assert_eq!(pinned, vec![4033, 192, 1108, 3942]);
        let mut counts = vec![0u32; SLOTS as usize];
        for i in 0..(SLOTS * 16) {
            counts[slot_of(format!("key-{i}").as_bytes()) as usize] += 1;
        }
        let empty = counts.iter().filter(|c| **c == 0).count();
        assert!(empty < (SLOTS / 100) as usize, "{empty} of {SLOTS} slots got no key");
        assert!(*counts.iter().max().unwrap() < 64);
    }

    #[test]
    fn even_maps_cover_every_slot_once() {
        let maps = Maps::even(&[1, 2, 3, 4], 8, 3).unwrap();
        let ranges: Vec<_> = maps.ranges().collect();
        assert_eq!(ranges.first().unwrap().0, 0);
        assert_eq!(ranges.last().unwrap().1, SLOTS - 1);
        for w in ranges.windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0);
        }
        for g in maps.groups() {
            assert_eq!(g.members.len(), 3);
            let mut m = g.members.clone();
            m.dedup();
            assert_eq!(m.len(), 3);
        }
        assert_eq!(maps.group_of_slot(0).id, 1);
        assert_eq!(maps.group_of_slot(SLOTS - 1).id, 8);
        assert_eq!(maps.group_of_slot(SLOTS / 8).id, 2);
        assert_eq!(maps.group_of_slot(SLOTS / 8 - 1).id, 1);
    }

    #[test]
    fn malformed_maps_are_refused() {
        let g = |id| Group { id, epoch: 1, members: vec![1], leader_hint: None };
        assert!(Maps::new(vec![(1, 1)], vec![g(1)]).is_err());
        assert!(Maps::new(vec![(0, 1), (0, 1)], vec![g(1)]).is_err());
        assert!(Maps::new(vec![(0, 2)], vec![g(1)]).is_err());
        assert!(Maps::new(vec![(0, 1), (SLOTS, 1)], vec![g(1)]).is_err());
        assert!(Maps::new(vec![(0, 1)], vec![Group { members: vec![], ..g(1) }]).is_err());
        assert!(Maps::even(&[1, 2], 4, 3).is_err());
    }

    #[test]
    fn redirects_only_move_forward() {
        let mut maps = Maps::even(&[1, 2, 3], 1, 3).unwrap();
        let hinted = Group { leader_hint: Some(2), ..maps.group(1).unwrap().clone() };
        assert!(maps.learn(&Redirect { group: hinted.clone() }));
        assert!(!maps.learn(&Redirect { group: hinted }), "same news twice changes nothing");
        let older = Group { id: 1, epoch: 0, members: vec![9], leader_hint: Some(9) };
        assert!(!maps.learn(&Redirect { group: older }));
        let newer = Group { id: 1, epoch: 2, members: vec![1, 2, 4], leader_hint: Some(4) };
        assert!(maps.learn(&Redirect { group: newer.clone() }));
        assert_eq!(maps.group(1), Some(&newer));
        assert!(!maps.learn(&Redirect { group: Group { id: 77, ..newer } }), "unknown groups are ignored");
    }

    #[test]
    fn maps_from_a_peer_are_checked_and_groups_without_members_not_learned() {
        let good = Maps::even(&[1, 2, 3], 2, 3).unwrap();
        assert_eq!(good.clone().checked(), Ok(good.clone()));
        // What deserializing builds without `Maps::new`: no ranges, a range to a missing group.
        assert!(Maps { ranges: vec![], groups: good.groups.clone() }.checked().is_err());
        assert!(Maps { ranges: vec![(0, 9)], groups: good.groups.clone() }.checked().is_err());
        let mut maps = good;
        let empty = Group { id: 1, epoch: 9, members: vec![], leader_hint: None };
        assert!(!maps.learn(&Redirect { group: empty }));
        assert!(maps.checked().is_ok());
    }

    #[test]
    fn the_metadata_group_is_no_partition_and_stores_only_newer_epochs() {
        let initial = Maps::even(&[1, 2, 3, 4], 4, 3).unwrap();
        assert_eq!(initial.meta().map(|g| g.members.clone()), Some(vec![1, 2, 3]));
        assert!(initial.ranges().all(|(_, _, g)| g != META_GROUP));
        let meta = initial.meta().unwrap().clone();
        assert!(Maps::new(vec![(0, META_GROUP)], vec![meta]).is_err(), "no range may name it");
        // Nothing stored: the initial maps, with news taken in.
        assert_eq!(Maps::recorded(None, &initial, &[]), Some(initial.clone()));
        let moved = Group { id: 2, epoch: 3, members: vec![2, 3, 5], leader_hint: Some(5) };
        let stored = Maps::recorded(None, &initial, std::slice::from_ref(&moved)).unwrap();
        assert_eq!(stored.group(2), Some(&Group { leader_hint: None, ..moved.clone() }));
        // The same news again, an older epoch, an unknown group, no members: nothing to write.
        let stale = Group { id: 2, epoch: 2, members: vec![9], leader_hint: None };
        let unknown = Group { id: 77, ..moved.clone() };
        let empty = Group { id: 1, epoch: 9, members: vec![], leader_hint: None };
        assert_eq!(Maps::recorded(Some(&stored), &initial, &[moved, stale, unknown, empty]), None);
        // Stored bytes round-trip without leader hints; garbage and broken maps are refused.
        let mut hinted = stored.clone();
        hinted.learn(&Redirect { group: Group { leader_hint: Some(3), ..stored.group(1).unwrap().clone() } });
        assert_eq!(Maps::decode(&hinted.encode()), Ok(stored));
        assert!(Maps::decode(b"not maps at all").is_err());
        let broken = Maps { ranges: vec![(0, 9)], groups: initial.groups.clone() };
        assert!(Maps::decode(&broken.encode()).is_err());
    }

    #[test]
    fn batches_must_stay_in_one_group() {
        let maps = Maps::even(&[1, 2, 3], 3, 1).unwrap();
        let k1 = b"a".as_slice();
        let same = (0..1000).map(|i| format!("k{i}")).find(|k| maps.group_of(k.as_bytes()).id == maps.group_of(k1).id);
        let other = (0..1000).map(|i| format!("k{i}")).find(|k| maps.group_of(k.as_bytes()).id != maps.group_of(k1).id);
        let (same, other) = (same.unwrap(), other.unwrap());
        assert!(maps.same_group([k1, same.as_bytes()].into_iter()).is_some());
        assert!(maps.same_group([k1, other.as_bytes()].into_iter()).is_none());
    }
}
