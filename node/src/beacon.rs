//! Beacons on the wire, their authentication, and the sending side's table (sans-IO).
//!
//! A beacon is small in steady state: the node's identity, incarnation, sequence number,
//! control address and table version — no instance list. When the table changes, the next
//! few beacons carry the changes since a version a few beacons back (so one lost beacon loses
//! nothing); a registry that is further behind, or new, pulls the whole table over rpc. Every
//! beacon is signed (HMAC-SHA256 with the cluster key) and carries a counter, so a stray or
//! hostile sender can neither inject nor replay one.

use std::collections::{BTreeMap, VecDeque};

use hmac::{Hmac, Mac};
use multispace_rpc::rkyv::{self, Archive, Deserialize, Serialize};
use sha2::Sha256;

use crate::control::{InstanceRecord, NodeTable};

/// What one beacon says.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv)]
pub struct Beacon {
    /// The sending node.
    pub node: u64,
    /// Its incarnation: greater after every restart.
    pub incarnation: u64,
    /// Counter within the incarnation, strictly increasing (replay guard).
    pub seq: u64,
    /// Where the node answers control calls (to pull its table).
    pub control: String,
    /// The table version this beacon describes.
    pub version: u64,
    /// Changes since `Delta::from_version`, when the table changed lately and they fit.
    pub delta: Option<Delta>,
}

/// Table changes between two versions: the current state of every instance added or changed,
/// and the ids removed. Applying it to any version from `from_version` on gives `version`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv)]
pub struct Delta {
    /// The oldest version this applies to.
    pub from_version: u64,
    /// Instances added or changed since then.
    pub upserts: Vec<InstanceRecord>,
    /// Instances removed since then.
    pub removes: Vec<u64>,
}

/// A beacon as sent: the archived [`Beacon`] and its MAC.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv)]
pub struct SignedBeacon {
    /// The archived beacon.
    pub body: Vec<u8>,
    /// HMAC-SHA256 of `body` under the cluster key.
    pub mac: [u8; 32],
}

/// The secret every node of a cluster shares.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a received beacon was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    /// The MAC does not match: not from a holder of the cluster key, or altered.
    #[error("beacon MAC does not verify")]
    BadMac,
    /// The signed body is not a valid beacon.
    #[error("beacon body is malformed: {0}")]
    Malformed(String),
}

impl ClusterKey {
    /// A key from 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        ClusterKey(bytes)
    }

    /// A key derived from a passphrase (for demos and tests; use random bytes in production).
    pub fn from_passphrase(p: &str) -> Self {
        use sha2::Digest;
        ClusterKey(Sha256::digest(p.as_bytes()).into())
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// Archive and sign a beacon.
    pub fn seal(&self, beacon: &Beacon) -> SignedBeacon {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(beacon).expect("a beacon always archives").to_vec();
        let mut m = self.mac();
        m.update(&body);
        SignedBeacon { body, mac: m.finalize().into_bytes().into() }
    }

    /// Verify the MAC (in constant time), then validate and read the beacon.
    pub fn open(&self, body: &[u8], mac: &[u8; 32]) -> Result<Beacon, BeaconError> {
        let mut m = self.mac();
        m.update(body);
        m.verify_slice(mac).map_err(|_| BeaconError::BadMac)?;
        // The body is trusted now, but still validated: a key holder can have bugs.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        rkyv::from_bytes::<Beacon, rkyv::rancor::Error>(&aligned).map_err(|e| BeaconError::Malformed(e.to_string()))
    }
}

/// How many beacons repeat a change (a registry that misses fewer than this many in a row
/// still applies it without pulling).
pub const DELTA_REPEATS: u64 = 3;

/// Largest delta put in a beacon (bytes of records, roughly); beyond it registries pull.
const MAX_DELTA_BYTES: usize = 16 << 10;

/// The sending node's own table, versioned, and the beacons describing it.
#[derive(Debug)]
pub struct LocalTable {
    node: u64,
    incarnation: u64,
    control: String,
    version: u64,
    seq: u64,
    instances: BTreeMap<u64, InstanceRecord>,
    /// Version at which each live instance last changed.
    changed_at: BTreeMap<u64, u64>,
    /// Removed ids and the version they went at (kept while a delta may mention them).
    removed: VecDeque<(u64, u64)>,
    /// Versions of the last few beacons sent (oldest first).
    sent_versions: VecDeque<u64>,
}

impl LocalTable {
    /// An empty table for `node` in `incarnation`, controlled at `control`.
    pub fn new(node: u64, incarnation: u64, control: String) -> Self {
        LocalTable {
            node,
            incarnation,
            control,
            version: 0,
            seq: 0,
            instances: BTreeMap::new(),
            changed_at: BTreeMap::new(),
            removed: VecDeque::new(),
            sent_versions: VecDeque::new(),
        }
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Add or change an instance (no-op if identical).
    pub fn upsert(&mut self, rec: InstanceRecord) {
        if self.instances.get(&rec.id) == Some(&rec) {
            return;
        }
        self.version += 1;
        self.changed_at.insert(rec.id, self.version);
        self.instances.insert(rec.id, rec);
    }

    /// Remove an instance; false if absent.
    pub fn remove(&mut self, id: u64) -> bool {
        if self.instances.remove(&id).is_none() {
            return false;
        }
        self.version += 1;
        self.changed_at.remove(&id);
        self.removed.push_back((id, self.version));
        true
    }

    /// One instance.
    pub fn get(&self, id: u64) -> Option<&InstanceRecord> {
        self.instances.get(&id)
    }

    /// Every instance.
    pub fn instances(&self) -> impl Iterator<Item = &InstanceRecord> {
        self.instances.values()
    }

    /// The whole table (what a pull returns).
    pub fn snapshot(&self) -> NodeTable {
        NodeTable {
            node: self.node,
            incarnation: self.incarnation,
            version: self.version,
            instances: self.instances.values().cloned().collect(),
        }
    }

    /// The next beacon: with the changes since the version of the beacon sent
    /// [`DELTA_REPEATS`] beacons ago, if there were any and they fit.
    pub fn next_beacon(&mut self) -> Beacon {
        self.seq += 1;
        let from = if self.sent_versions.len() as u64 >= DELTA_REPEATS {
            self.sent_versions[0]
        } else {
            // Early on, describe everything since the empty table.
            0
        };
        let delta = (from < self.version).then(|| Delta {
            from_version: from,
            upserts: self
                .changed_at
                .iter()
                .filter(|&(_, &v)| v > from)
                .filter_map(|(id, _)| self.instances.get(id).cloned())
                .collect(),
            removes: self.removed.iter().filter(|&&(_, v)| v > from).map(|&(id, _)| id).collect(),
        });
        let delta = delta.filter(|d| {
            d.upserts.iter().map(|r| 48 + r.service.len() + r.addr.len()).sum::<usize>() + 8 * d.removes.len()
                <= MAX_DELTA_BYTES
        });
        self.sent_versions.push_back(self.version);
        while self.sent_versions.len() as u64 > DELTA_REPEATS {
            self.sent_versions.pop_front();
        }
        // Tombstones older than any delta still to be sent are no longer needed.
        let oldest = self.sent_versions[0];
        while self.removed.front().is_some_and(|&(_, v)| v <= oldest) {
            self.removed.pop_front();
        }
        Beacon {
            node: self.node,
            incarnation: self.incarnation,
            seq: self.seq,
            control: self.control.clone(),
            version: self.version,
            delta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rec(id: u64, service: &str) -> InstanceRecord {
        InstanceRecord { id, service: service.into(), addr: format!("127.0.0.1:{}", 1000 + id), load: 0, up: true }
    }

    #[test]
    fn sealed_beacons_open_only_with_the_key_and_unaltered() {
        let key = ClusterKey::from_passphrase("k");
        let mut t = LocalTable::new(1, 7, "127.0.0.1:9".into());
        t.upsert(rec(1, "calc"));
        let b = t.next_beacon();
        let s = key.seal(&b);
        assert_eq!(key.open(&s.body, &s.mac), Ok(b));
        let other = ClusterKey::from_passphrase("not k");
        assert_eq!(other.open(&s.body, &s.mac), Err(BeaconError::BadMac));
        let mut tampered = s.body.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(key.open(&tampered, &s.mac), Err(BeaconError::BadMac));
    }

    #[test]
    fn a_signed_but_garbled_body_is_malformed_not_a_panic() {
        let key = ClusterKey::from_passphrase("k");
        let body = vec![0xffu8; 40];
        let mut m = key.mac();
        m.update(&body);
        let mac: [u8; 32] = m.finalize().into_bytes().into();
        assert!(matches!(key.open(&body, &mac), Err(BeaconError::Malformed(_))));
    }

    #[test]
    fn steady_state_beacons_carry_no_instances() {
        let mut t = LocalTable::new(1, 1, "c".into());
        for i in 0..100 {
            t.upsert(rec(i, "svc"));
        }
        let first = t.next_beacon();
        assert_eq!(first.delta.as_ref().map(|d| d.upserts.len()), Some(100));
        // The change is repeated DELTA_REPEATS times, then beacons are bare heartbeats.
        for _ in 1..DELTA_REPEATS {
            assert!(t.next_beacon().delta.is_some());
        }
        let bare = t.next_beacon();
        assert!(bare.delta.is_none());
        let key = ClusterKey::from_passphrase("k");
        let bytes = key.seal(&bare).body.len() + 32;
        assert!(bytes < 128, "a heartbeat for 100 instances is {bytes} bytes");
    }

    #[test]
    fn deltas_cover_the_last_few_beacons_and_removals() {
        let mut t = LocalTable::new(1, 1, "c".into());
        t.upsert(rec(1, "a"));
        t.upsert(rec(2, "a"));
        for _ in 0..DELTA_REPEATS + 1 {
            t.next_beacon();
        }
        let v = t.version();
        t.remove(1);
        t.upsert(InstanceRecord { load: 5, ..rec(2, "a") });
        let b = t.next_beacon();
        let d = b.delta.unwrap();
        assert_eq!(d.from_version, v);
        assert_eq!(d.removes, [1]);
        assert_eq!(d.upserts, [InstanceRecord { load: 5, ..rec(2, "a") }]);
        // An identical upsert changes nothing.
        let v = t.version();
        t.upsert(InstanceRecord { load: 5, ..rec(2, "a") });
        assert_eq!(t.version(), v);
    }
}
