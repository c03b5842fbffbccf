//! Beacons on the wire, their authentication, and the sending side's table (sans-IO).
//!
//! A beacon is small in steady state: the node's identity, incarnation, sequence number, send
//! time, control address and table version — no instance list. When the table changes, the
//! next few beacons carry the changes since a version a few beacons back (so one lost beacon
//! loses nothing); a registry that is further behind, or new, pulls the whole table over rpc.
//!
//! Every beacon is signed: HMAC-SHA256, under a key from the cluster's [`Keyring`], over the
//! cluster label, the key id and the archived beacon (node, incarnation, sequence number, send
//! time and payload). A receiver checks the MAC before it reads anything else, then drops a
//! beacon sent too far from its own clock ([`BeaconAuth`]); the registry drops one it has seen
//! (same or older incarnation and sequence number). So a stray or hostile sender can neither
//! inject a beacon, nor replay an old one, nor carry one over from another cluster.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

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
    /// Its incarnation (boot epoch): greater after every restart.
    pub incarnation: u64,
    /// Counter within the incarnation, strictly increasing (replay guard).
    pub seq: u64,
    /// When it was sent, in milliseconds since the Unix epoch (old beacons are dropped).
    pub sent_ms: u64,
    /// The node is stopping: forget it and its instances now rather than at expiry.
    pub goodbye: bool,
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

/// Names a key in a [`Keyring`] (sent in the clear with every beacon).
pub type KeyId = u8;

/// A beacon as sent: the archived [`Beacon`], the id of the key that signed it, and the MAC.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv)]
pub struct SignedBeacon {
    /// The signing key's id.
    pub key_id: KeyId,
    /// The archived beacon.
    pub body: Vec<u8>,
    /// HMAC-SHA256 of the cluster label, `key_id` and `body` (see [`BeaconAuth`]).
    pub mac: [u8; 32],
}

/// A received beacon before authentication, borrowed from the datagram.
#[derive(Debug, Clone, Copy)]
pub struct SignedRef<'a> {
    /// The id of the key it claims to be signed with.
    pub key_id: KeyId,
    /// The archived beacon (not to be read before the MAC verifies).
    pub body: &'a [u8],
    /// Its MAC.
    pub mac: &'a [u8; 32],
}

impl SignedBeacon {
    /// Borrow it as received.
    pub fn view(&self) -> SignedRef<'_> {
        SignedRef { key_id: self.key_id, body: &self.body, mac: &self.mac }
    }
}

impl ArchivedSignedBeacon {
    /// Borrow it as received (in place, from the datagram).
    pub fn view(&self) -> SignedRef<'_> {
        SignedRef { key_id: self.key_id, body: self.body.as_slice(), mac: &self.mac }
    }
}

/// A secret every node of a cluster shares.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A key from 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        ClusterKey(bytes)
    }

    /// A key derived from a passphrase (SHA-256 of it: for demos and tests; use random bytes
    /// in production).
    pub fn from_passphrase(p: &str) -> Self {
        use sha2::Digest;
        ClusterKey(Sha256::digest(p.as_bytes()).into())
    }

    /// A key from 64 hex digits; `None` if `s` is not that.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16);
        let mut bytes = [0u8; 32];
        for (b, pair) in bytes.iter_mut().zip(s.chunks_exact(2)) {
            *b = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(ClusterKey(bytes))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// Why a keyring could not be changed or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// No key with this id in the ring.
    #[error("no key with id {0} in the keyring")]
    UnknownKey(KeyId),
    /// The primary key signs this node's beacons: make another key primary first.
    #[error("key {0} is the primary key; make another key primary before retiring it")]
    RetirePrimary(KeyId),
    /// The id already names a different key (retire it first; ids are not reused in place,
    /// so a node never verifies with a key other than the one the sender meant).
    #[error("key id {0} already names a different key")]
    IdInUse(KeyId),
    /// A key file line is not `id:secret`.
    #[error("key file line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A key file with no key in it.
    #[error("the key file has no key")]
    Empty,
}

/// The keys a node accepts beacons under, each with a small id, and the primary one it signs
/// its own beacons with. Rotation without a restart: [`Keyring::install`] the new key on every
/// node, then [`Keyring::set_primary`] it everywhere, then [`Keyring::retire`] the old one
/// once no peer signs with it (`Node::peer_keys`).
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    primary: KeyId,
    keys: BTreeMap<KeyId, ClusterKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring").field("primary", &self.primary).field("ids", &self.ids()).finish()
    }
}

impl From<ClusterKey> for Keyring {
    /// A ring of one key, id 0.
    fn from(key: ClusterKey) -> Self {
        Keyring::new(0, key)
    }
}

impl Keyring {
    /// A ring of one key, which is primary.
    pub fn new(id: KeyId, key: ClusterKey) -> Self {
        Keyring { primary: id, keys: BTreeMap::from([(id, key)]) }
    }

    /// The id of the key this node signs with.
    pub fn primary(&self) -> KeyId {
        self.primary
    }

    /// Every key id in the ring, ascending.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.keys().copied().collect()
    }

    /// Whether `id` is in the ring.
    pub fn contains(&self, id: KeyId) -> bool {
        self.keys.contains_key(&id)
    }

    /// Accept beacons signed with `key` as `id` from now on. Installing the same key again is
    /// a no-op; a different key under an id in use is refused.
    pub fn install(&mut self, id: KeyId, key: ClusterKey) -> Result<(), KeyringError> {
        match self.keys.get(&id) {
            Some(k) if *k != key => Err(KeyringError::IdInUse(id)),
            Some(_) => Ok(()),
            None => {
                self.keys.insert(id, key);
                Ok(())
            }
        }
    }

    /// Sign this node's beacons with key `id` from now on.
    pub fn set_primary(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if !self.keys.contains_key(&id) {
            return Err(KeyringError::UnknownKey(id));
        }
        self.primary = id;
        Ok(())
    }

    /// Stop accepting key `id` (not the primary).
    pub fn retire(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if id == self.primary {
            return Err(KeyringError::RetirePrimary(id));
        }
        self.keys.remove(&id).map(drop).ok_or(KeyringError::UnknownKey(id))
    }

    /// Read a key file: one key a line, `id:secret`, where `id` is 0–255 and `secret` is 64
    /// hex digits (32 key bytes) or else a passphrase (the rest of the line, hashed with
    /// SHA-256). The first key is the primary. Blank lines and lines starting with `#` are
    /// skipped; an id may appear once.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut ring: Option<Keyring> = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| KeyringError::Parse { line: i + 1, reason: reason.to_owned() };
            let (id, secret) = line.split_once(':').ok_or_else(|| bad("expected `id:secret`"))?;
            let id: KeyId = id.trim().parse().map_err(|_| bad("the key id must be a number from 0 to 255"))?;
            let secret = secret.trim();
            if secret.is_empty() {
                return Err(bad("empty secret"));
            }
            let key = ClusterKey::from_hex(secret).unwrap_or_else(|| ClusterKey::from_passphrase(secret));
            match &mut ring {
                None => ring = Some(Keyring::new(id, key)),
                Some(r) if r.contains(id) => return Err(bad("key id given twice")),
                Some(r) => r.install(id, key)?,
            }
        }
        ring.ok_or(KeyringError::Empty)
    }

    fn get(&self, id: KeyId) -> Option<&ClusterKey> {
        self.keys.get(&id)
    }
}

/// Why a received beacon was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    /// Signed with a key id not in the ring (never installed, or retired).
    #[error("beacon signed with key id {0}, which is not in the keyring")]
    UnknownKey(KeyId),
    /// The MAC does not match: not from a holder of the key, from another cluster (label), or
    /// altered.
    #[error("beacon MAC does not verify")]
    BadMac,
    /// The signed body is not a valid beacon.
    #[error("beacon body is malformed: {0}")]
    Malformed(String),
    /// Sent further from this node's clock than the freshness window allows: an old beacon
    /// replayed, or a sender with a badly wrong clock.
    #[error("beacon sent at {sent_ms} ms is more than {window_ms} ms from this node's clock ({now_ms} ms)")]
    Stale {
        /// Its send time (ms since the Unix epoch).
        sent_ms: u64,
        /// The receiver's time.
        now_ms: u64,
        /// The window.
        window_ms: u64,
    },
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Signs and checks beacons for one cluster: its label, its keyring, and how far a beacon's
/// send time may be from the receiver's clock.
#[derive(Debug, Clone)]
pub struct BeaconAuth {
    label: String,
    keys: Keyring,
    window: Duration,
}

/// Default freshness window: wide enough for ordinary clock skew between hosts.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

impl BeaconAuth {
    /// For the cluster named `label`, keys `keys`, beacons accepted within `window` of the
    /// receiver's clock.
    pub fn new(label: impl Into<String>, keys: impl Into<Keyring>, window: Duration) -> Self {
        BeaconAuth { label: label.into(), keys: keys.into(), window }
    }

    /// The cluster label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The keyring.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// The keyring, to change.
    pub fn keys_mut(&mut self) -> &mut Keyring {
        &mut self.keys
    }

    /// The MAC state over everything signed but the body: a domain tag (no other use of the
    /// key can produce a valid beacon MAC), the label, length-prefixed so label and body
    /// cannot trade bytes, and the key id.
    fn mac_for(&self, key: &ClusterKey, key_id: KeyId) -> Hmac<Sha256> {
        let mut m = key.mac();
        m.update(b"multispace beacon v1\0");
        m.update(&(self.label.len() as u64).to_le_bytes());
        m.update(self.label.as_bytes());
        m.update(&[key_id]);
        m
    }

    /// Archive and sign a beacon with the primary key.
    pub fn seal(&self, beacon: &Beacon) -> SignedBeacon {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(beacon).expect("a beacon always archives").to_vec();
        let key_id = self.keys.primary;
        let key = self.keys.get(key_id).expect("the primary key is always in the ring");
        let mut m = self.mac_for(key, key_id);
        m.update(&body);
        SignedBeacon { key_id, body, mac: m.finalize().into_bytes().into() }
    }

    /// Check a received beacon: its key id, then its MAC (in constant time) before anything
    /// else is read, then its body, then its send time against `now_ms` (the receiver's clock,
    /// ms since the Unix epoch).
    pub fn open(&self, signed: SignedRef<'_>, now_ms: u64) -> Result<Beacon, BeaconError> {
        let key = self.keys.get(signed.key_id).ok_or(BeaconError::UnknownKey(signed.key_id))?;
        let mut m = self.mac_for(key, signed.key_id);
        m.update(signed.body);
        m.verify_slice(signed.mac).map_err(|_| BeaconError::BadMac)?;
        // The body is trusted now, but still validated: a key holder can have bugs.
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(signed.body.len());
        aligned.extend_from_slice(signed.body);
        let beacon = rkyv::from_bytes::<Beacon, rkyv::rancor::Error>(&aligned)
            .map_err(|e| BeaconError::Malformed(e.to_string()))?;
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        if beacon.sent_ms.abs_diff(now_ms) > window_ms {
            return Err(BeaconError::Stale { sent_ms: beacon.sent_ms, now_ms, window_ms });
        }
        Ok(beacon)
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

    /// The next beacon, sent at `sent_ms` (ms since the Unix epoch): with the changes since
    /// the version of the beacon sent [`DELTA_REPEATS`] beacons ago, if there were any and
    /// they fit.
    pub fn next_beacon(&mut self, sent_ms: u64) -> Beacon {
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
            sent_ms,
            goodbye: false,
            control: self.control.clone(),
            version: self.version,
            delta,
        }
    }

    /// The last beacon of this incarnation, sent at `sent_ms`: the node is going away.
    pub fn goodbye(&mut self, sent_ms: u64) -> Beacon {
        self.seq += 1;
        Beacon {
            node: self.node,
            incarnation: self.incarnation,
            seq: self.seq,
            sent_ms,
            goodbye: true,
            control: self.control.clone(),
            version: self.version,
            delta: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rec(id: u64, service: &str) -> InstanceRecord {
        InstanceRecord { id, service: service.into(), addr: format!("127.0.0.1:{}", 1000 + id), load: 0, up: true }
    }

    const T: u64 = 1_800_000_000_000;

    fn auth(label: &str, ring: Keyring) -> BeaconAuth {
        BeaconAuth::new(label, ring, DEFAULT_WINDOW)
    }

    fn key(p: &str) -> ClusterKey {
        ClusterKey::from_passphrase(p)
    }

    fn beacon() -> Beacon {
        let mut t = LocalTable::new(1, 7, "127.0.0.1:9".into());
        t.upsert(rec(1, "calc"));
        t.next_beacon(T)
    }

    #[test]
    fn sealed_beacons_open_only_with_the_key_and_unaltered() {
        let a = auth("c", key("k").into());
        let b = beacon();
        let s = a.seal(&b);
        assert_eq!(a.open(s.view(), T), Ok(b));
        let other = auth("c", key("not k").into());
        assert_eq!(other.open(s.view(), T), Err(BeaconError::BadMac));
        let mut tampered = s.clone();
        *tampered.body.last_mut().unwrap() ^= 1;
        assert_eq!(a.open(tampered.view(), T), Err(BeaconError::BadMac));
        // The key id is covered too: relabelled to another id holding the same key, it fails.
        let mut ring = Keyring::new(0, key("k"));
        ring.install(1, key("k")).unwrap();
        let relabelled = SignedBeacon { key_id: 1, ..s };
        assert_eq!(auth("c", ring).open(relabelled.view(), T), Err(BeaconError::BadMac));
    }

    #[test]
    fn another_clusters_beacons_fail_even_under_the_same_key() {
        let s = auth("blue", key("k").into()).seal(&beacon());
        assert_eq!(auth("green", key("k").into()).open(s.view(), T), Err(BeaconError::BadMac));
        // Label and body cannot trade bytes (the label is length-prefixed).
        assert_eq!(auth("blu", key("k").into()).open(s.view(), T), Err(BeaconError::BadMac));
    }

    #[test]
    fn a_key_id_not_in_the_ring_is_refused_before_the_mac_is_checked() {
        let s = auth("c", Keyring::new(3, key("k"))).seal(&beacon());
        assert_eq!(auth("c", Keyring::new(4, key("k"))).open(s.view(), T), Err(BeaconError::UnknownKey(3)));
    }

    #[test]
    fn beacons_sent_outside_the_window_are_stale_in_either_direction() {
        let a = auth("c", key("k").into());
        let s = a.seal(&beacon());
        let w = DEFAULT_WINDOW.as_millis() as u64;
        assert!(a.open(s.view(), T + w).is_ok());
        assert!(a.open(s.view(), T - w).is_ok());
        assert_eq!(
            a.open(s.view(), T + w + 1),
            Err(BeaconError::Stale { sent_ms: T, now_ms: T + w + 1, window_ms: w })
        );
        assert!(matches!(a.open(s.view(), T - w - 1), Err(BeaconError::Stale { .. })));
    }

    #[test]
    fn rotation_accepts_old_and_new_during_the_overlap_and_refuses_the_retired_key() {
        let (old, new) = (key("old"), key("new"));
        let mut sender = auth("c", Keyring::new(1, old.clone()));
        let mut receiver = auth("c", Keyring::new(1, old));
        let before = sender.seal(&beacon());
        // Step 1: every node installs the new key; nodes still sign with the old one.
        receiver.keys_mut().install(2, new.clone()).unwrap();
        sender.keys_mut().install(2, new).unwrap();
        assert!(receiver.open(before.view(), T).is_ok());
        // Step 2: the new key becomes primary; both are accepted meanwhile.
        sender.keys_mut().set_primary(2).unwrap();
        let after = sender.seal(&beacon());
        assert_eq!(after.key_id, 2);
        assert!(receiver.open(before.view(), T).is_ok());
        assert!(receiver.open(after.view(), T).is_ok());
        // Step 3: the old key is retired; what it signs is refused.
        receiver.keys_mut().set_primary(2).unwrap();
        receiver.keys_mut().retire(1).unwrap();
        assert_eq!(receiver.open(before.view(), T), Err(BeaconError::UnknownKey(1)));
        assert!(receiver.open(after.view(), T).is_ok());
    }

    #[test]
    fn keyring_changes_are_checked() {
        let mut r = Keyring::new(1, key("a"));
        assert_eq!(r.retire(1), Err(KeyringError::RetirePrimary(1)));
        assert_eq!(r.retire(2), Err(KeyringError::UnknownKey(2)));
        assert_eq!(r.set_primary(2), Err(KeyringError::UnknownKey(2)));
        assert_eq!(r.install(1, key("b")), Err(KeyringError::IdInUse(1)));
        assert_eq!(r.install(1, key("a")), Ok(()));
        r.install(2, key("b")).unwrap();
        r.set_primary(2).unwrap();
        r.retire(1).unwrap();
        assert_eq!((r.primary(), r.ids()), (2, vec![2]));
    }

    #[test]
    fn key_files_parse_ids_hex_keys_and_passphrases() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let text = format!("# rotated 2026-11\n\n 7:{hex}\n3: a passphrase: with colons \n");
        let r = Keyring::parse(&text).unwrap();
        assert_eq!((r.primary(), r.ids()), (7, vec![3, 7]));
        assert_eq!(r.get(7), ClusterKey::from_hex(hex).as_ref());
        assert_eq!(r.get(3), Some(&key("a passphrase: with colons")));
        let err = |t: &str| Keyring::parse(t).unwrap_err();
        assert_eq!(err("# nothing\n"), KeyringError::Empty);
        assert!(matches!(err("1:a\nno colon"), KeyringError::Parse { line: 2, .. }));
        assert!(matches!(err("256:a"), KeyringError::Parse { line: 1, .. }));
        assert!(matches!(err("1:a\n1:b"), KeyringError::Parse { line: 2, .. }));
        assert!(matches!(err("1:  "), KeyringError::Parse { line: 1, .. }));
        // Not 64 hex digits: a passphrase.
        assert_eq!(Keyring::parse("1:abcd").unwrap().get(1), Some(&key("abcd")));
    }

    #[test]
    fn a_signed_but_garbled_body_is_malformed_not_a_panic() {
        let a = auth("c", key("k").into());
        let body = vec![0xffu8; 40];
        let mut m = a.mac_for(&key("k"), 0);
        m.update(&body);
        let mac: [u8; 32] = m.finalize().into_bytes().into();
        let s = SignedBeacon { key_id: 0, body, mac };
        assert!(matches!(a.open(s.view(), T), Err(BeaconError::Malformed(_))));
    }

    #[test]
    fn a_goodbye_follows_the_last_beacon() {
        let mut t = LocalTable::new(1, 1, "c".into());
        t.upsert(rec(1, "svc"));
        let last = t.next_beacon(T);
        let bye = t.goodbye(T + 1);
        assert!(bye.goodbye && !last.goodbye);
        assert_eq!((bye.seq, bye.incarnation, bye.delta), (last.seq + 1, 1, None));
    }

    #[test]
    fn steady_state_beacons_carry_no_instances() {
        let mut t = LocalTable::new(1, 1, "c".into());
        for i in 0..100 {
            t.upsert(rec(i, "svc"));
        }
        let first = t.next_beacon(T);
        assert_eq!(first.delta.as_ref().map(|d| d.upserts.len()), Some(100));
        // The change is repeated DELTA_REPEATS times, then beacons are bare heartbeats.
        for _ in 1..DELTA_REPEATS {
            assert!(t.next_beacon(T).delta.is_some());
        }
        let bare = t.next_beacon(T);
        assert!(bare.delta.is_none());
        let s = auth("multispace", key("k").into()).seal(&bare);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&s).unwrap().len();
        assert!(bytes < 160, "a heartbeat for 100 instances is {bytes} bytes");
    }

    #[test]
    fn deltas_cover_the_last_few_beacons_and_removals() {
        let mut t = LocalTable::new(1, 1, "c".into());
        t.upsert(rec(1, "a"));
        t.upsert(rec(2, "a"));
        for _ in 0..DELTA_REPEATS + 1 {
            t.next_beacon(T);
        }
        let v = t.version();
        t.remove(1);
        t.upsert(InstanceRecord { load: 5, ..rec(2, "a") });
        let b = t.next_beacon(T);
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
