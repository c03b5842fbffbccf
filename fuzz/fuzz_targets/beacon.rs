//! The beacon receive path, from the bytes of a UDP datagram to the registry: frame decode,
//! the `SignedBeacon` archive (`Message::new`), authentication (`BeaconAuth::open`, through
//! `Registry::on_signed` exactly as `node::Node` calls it), and what the registry does with
//! beacons and with pulled tables.
//!
//! Input: records (see `multispace_fuzz::records`), each an event, picked by its first byte:
//! - 0: a datagram as it comes off the socket;
//! - 1: a key id and a body that the target signs itself (a key holder with bugs: what
//!   decoding does after the MAC passes);
//! - 2: a `NodeTable` archive, as pulled from a node's control interface;
//! - 3: time passes (the next byte, in units of 50 ms), then expiry runs.
//!
//! Checked beyond "no panic": the MAC is checked before anything in the body is read. A
//! beacon under an unknown key id is refused as such and one whose MAC is wrong as a bad MAC,
//! whatever its body holds; only a beacon whose MAC is right gets further.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use multispace_fuzz::{beacon_mac, bytes_at, records, samples, FUZZ_LABEL, FUZZ_NOW_MS};
use multispace_node::beacon::{SignedBeacon, SignedRef};
use multispace_node::control::NodeTable;
use multispace_node::{BeaconAuth, BeaconError, BeaconOutcome, Registry, BEACON_METHOD};
use multispace_rpc::proto::frame::{decode_datagram, FrameKind, HEADER_LEN};
use multispace_rpc::rkyv::{self, rancor};
use multispace_rpc::{Message, MAX_DATAGRAM};

/// This node's id (its own beacons are ignored).
const ME: u64 = 1;

struct Receiver {
    auth: BeaconAuth,
    registry: Registry,
    now: Instant,
    now_ms: u64,
}

impl Receiver {
    /// One signed beacon, as `Node`'s beacon service hands it to the registry.
    fn signed(&mut self, signed: SignedRef<'_>) {
        let outcome = self.registry.on_signed(&self.auth, signed, self.now, self.now_ms);
        let key = samples::KEYS.iter().find(|(id, _)| *id == signed.key_id).map(|(_, k)| k);
        assert_eq!(key.is_some(), self.auth.keys().contains(signed.key_id), "the ring is samples::KEYS");
        let mac_ok = key.is_some_and(|k| beacon_mac(FUZZ_LABEL, k, signed.key_id, signed.body) == *signed.mac);
        match &outcome {
            BeaconOutcome::Rejected(BeaconError::UnknownKey(id)) => {
                assert!(key.is_none() && *id == signed.key_id, "key id {id} in the ring refused as unknown")
            }
            BeaconOutcome::Rejected(BeaconError::BadMac) => {
                assert!(key.is_some() && !mac_ok, "a correct MAC refused")
            }
            _ => assert!(mac_ok, "a beacon with a wrong MAC or unknown key passed authentication: {outcome:?}"),
        }
        if let BeaconOutcome::NeedSync { control, .. } = &outcome {
            let _ = control.parse::<std::net::SocketAddr>();
        }
        self.read_back();
    }

    /// What `Node` asks the registry for after a change.
    fn read_back(&self) {
        std::hint::black_box(self.registry.nodes());
        std::hint::black_box(self.registry.all());
        std::hint::black_box(self.registry.addrs_of("calc"));
        std::hint::black_box(self.registry.stats().rejected());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rx = Receiver {
        auth: samples::auth(),
        registry: Registry::new(Some(ME), Duration::from_secs(3)),
        now: Instant::now(),
        now_ms: FUZZ_NOW_MS,
    };
    for event in records(data).take(16) {
        let [kind, rest @ ..] = event else { continue };
        match kind % 4 {
            0 => {
                // `OneWayServer::serve`: one datagram, one one-way frame, dispatched by method.
                let Ok(h) = decode_datagram(rest, MAX_DATAGRAM as u32) else { continue };
                if h.kind != FrameKind::OneWay || h.method_id != BEACON_METHOD {
                    continue;
                }
                let payload = &rest[HEADER_LEN..HEADER_LEN + h.payload_len as usize];
                let Ok(m) = Message::<SignedBeacon>::new(bytes_at(payload, 0)) else { continue };
                rx.signed(m.view());
            }
            1 => {
                let [key_id, body @ ..] = rest else { continue };
                // Signed with whichever ring key the id names (the fuzz key for unknown ids).
                let key = samples::KEYS.iter().find(|(id, _)| id == key_id).map_or(&samples::KEYS[0].1, |(_, k)| k);
                let signed = SignedBeacon {
                    key_id: *key_id,
                    body: body.to_vec(),
                    mac: beacon_mac(FUZZ_LABEL, key, *key_id, body),
                };
                let archived = rkyv::to_bytes::<rancor::Error>(&signed).expect("archives");
                let m = Message::<SignedBeacon>::new(bytes_at(&archived, 0)).expect("a fresh archive validates");
                rx.signed(m.view());
            }
            2 => {
                // `node::pull`: the table is validated, deserialized, then applied.
                let Ok(m) = Message::<NodeTable>::new(bytes_at(rest, 0)) else { continue };
                let Ok(table) = m.to_owned() else { continue };
                rx.registry.on_table(&table, rx.now);
                rx.read_back();
            }
            _ => {
                let step = u64::from(rest.first().copied().unwrap_or(1)) * 50;
                rx.now += Duration::from_millis(step);
                rx.now_ms += step;
                std::hint::black_box(rx.registry.expire(rx.now));
                rx.read_back();
            }
        }
    }
});
