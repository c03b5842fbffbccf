//! Beacon bytes per node as the number of instances grows: a steady-state heartbeat against
//! the full table the 1999 MultiSpace re-sent in every beacon, and a one-instance change.
//!
//! `cargo run --release -p multispace-bench --bin beacons`

use multispace_node::beacon::{LocalTable, DEFAULT_WINDOW, DELTA_REPEATS};
use multispace_node::control::InstanceRecord;
use multispace_node::{BeaconAuth, ClusterKey};

fn record(id: u64) -> InstanceRecord {
    InstanceRecord {
        id,
        service: format!("service{}", id % 7),
        addr: format!("10.0.0.{}:{}", id % 250, 40_000 + id),
        load: 3,
        up: true,
    }
}

fn main() {
    let auth = BeaconAuth::new("multispace", ClusterKey::from_passphrase("beacon sizes"), DEFAULT_WINDOW);
    // Any send time: it is a fixed-size field.
    let now_ms = 1_800_000_000_000;
    println!("| instances on the node | steady-state beacon bytes | one change, bytes | full table, bytes |");
    println!("|---|---|---|---|");
    for n in [1u64, 10, 100, 1000] {
        let mut t = LocalTable::new(1, 1, "10.0.0.1:7000".into());
        for i in 0..n {
            t.upsert(record(i));
        }
        for _ in 0..=DELTA_REPEATS {
            t.next_beacon(now_ms);
        }
        // The archived signed beacon: the frame's payload.
        let wire = |b| {
            multispace_rpc::rkyv::to_bytes::<multispace_rpc::rkyv::rancor::Error>(&auth.seal(&b))
                .map(|b| b.len())
                .unwrap_or(0)
        };
        let steady = wire(t.next_beacon(now_ms));
        t.upsert(InstanceRecord { load: 9, ..record(0) });
        let change = wire(t.next_beacon(now_ms));
        let full = multispace_rpc::rkyv::to_bytes::<multispace_rpc::rkyv::rancor::Error>(&t.snapshot())
            .map(|b| b.len())
            .unwrap_or(0);
        println!("| {n} | {steady} | {change} | {full} |");
    }
    println!("\nThe archived signed beacon (body with node, incarnation, sequence number and send time; key id; 32-byte HMAC), after the 32-byte frame header. Beacons repeat a change {DELTA_REPEATS} times, then go back to the steady-state size.");
}
