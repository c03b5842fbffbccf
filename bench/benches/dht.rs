//! `cargo bench`: the replicated table (3 nodes in this process, 3 partitions x 3 replicas),
//! 500-byte puts and gets, durable and in-memory: one client (latency) and 50 clients
//! (throughput, reported as elements per second). etcd and Redis beside it: `bench/table.sh`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use multispace_bench::table::{KvOp, OurTable, Workload};
use multispace_dht::server::Durability;

fn table(c: &mut Criterion) {
    let w = Workload { clients: 50, duration: Duration::ZERO, value_bytes: 500, keys: 10_000, single_ops: 0 };
    let data = std::env::temp_dir().join(format!("multispace-dht-criterion-{}", std::process::id()));
    // A real disk for durable mode: target/ if we can find it, else the temp dir.
    let data = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::current_dir().ok().map(|d| d.join("../target")))
        .filter(|d| d.is_dir())
        .map(|d| d.join("dht-criterion"))
        .unwrap_or(data);
    std::fs::create_dir_all(&data).expect("data dir");
    for (mode, durability) in [("durable", Durability::Durable), ("memory", Durability::Memory)] {
        let t = OurTable::start(durability, &data).expect("table");
        t.preload(&Workload { keys: 2_000, ..w });
        for op in [KvOp::Put, KvOp::Get] {
            let name = format!("{op:?}").to_lowercase();
            let mut g = c.benchmark_group(format!("table_{mode}/{name}"));
            g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3)).sample_size(10);
            g.bench_function("1_client", |b| {
                b.iter_custom(|iters| t.measure(op, 1, Duration::from_secs(3600), Some(iters), &w).elapsed())
            });
            const BATCH: u64 = 2_000;
            g.throughput(Throughput::Elements(BATCH));
            g.bench_function("50_clients", |b| {
                b.iter_custom(|iters| {
                    (0..iters).map(|_| t.measure(op, 50, Duration::from_secs(3600), Some(BATCH), &w).elapsed()).sum()
                })
            });
            g.finish();
        }
    }
    let _ = std::fs::remove_dir_all(&data);
}

criterion_group!(benches, table);
criterion_main!(benches);
