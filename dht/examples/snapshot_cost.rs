//! What a state-machine snapshot costs: time per snapshot of a 400 000-key table of 500-byte
//! values (about 211 MB archived). `/usr/bin/time -f %M` around it gives the peak memory.
//!
//! `cargo run --release -p multispace-dht --example snapshot_cost`

use multispace_dht::command::{encode, Command, Op};
use multispace_dht::sm::StateMachine;

fn main() {
    let mut sm = StateMachine::new();
    for i in 0..400_000u64 {
        let ops = vec![Op::Put { key: format!("key-{i:08}").into_bytes(), value: vec![0x5a; 500] }];
        let c = Command { client: i % 50, seq: i / 50 + 1, acked_below: i / 50 + 1, ops };
        sm.apply(i + 1, &encode(&c));
    }
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let bytes = (0..5).map(|_| sm.snapshot().len()).sum::<usize>() / 5;
        println!("snapshot of {bytes} bytes: {:?} each (mean of 5)", t.elapsed() / 5);
    }
}
