//! `cargo bench`: calls per second with 16 and 256 in flight on one client core (ours on both
//! drivers against raw windowed UDP echo and the peers), reported as elements per second.
//! One-way, multicast and scaling figures, and ratios: the `throughput` bin.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use multispace_bench::shapes::Shape;
use multispace_bench::throughput::RawWindowedUdp;
use multispace_bench::{pin_caller, Waiting, Windowed};
use multispace_rpc::DriverKind;

/// Calls per measured batch: enough that the window is full most of the time.
const BATCH: u64 = 4096;

fn systems() -> Vec<(&'static str, Box<dyn Windowed>)> {
    let mut v: Vec<(&'static str, Box<dyn Windowed>)> = vec![
        ("raw_udp", Box::new(RawWindowedUdp::new().expect("raw udp"))),
        (
            "rpc_uring",
            Box::new(multispace_bench::ours::Rpc::new(DriverKind::Uring, Waiting::Sleep, Shape::Void).expect("rpc")),
        ),
        (
            "rpc_epoll",
            Box::new(multispace_bench::ours::Rpc::new(DriverKind::Epoll, Waiting::Sleep, Shape::Void).expect("rpc")),
        ),
    ];
    #[cfg(feature = "tarpc")]
    v.push(("tarpc", Box::new(multispace_bench::peers::tarpc_peer::Tarpc::new(Shape::Void).expect("tarpc"))));
    #[cfg(feature = "tonic")]
    v.push(("tonic", Box::new(multispace_bench::peers::tonic_peer::Tonic::new(Shape::Void).expect("tonic"))));
    #[cfg(has_capnp)]
    v.push(("capnp", Box::new(multispace_bench::peers::capnp_peer::Capnp::new(Shape::Void).expect("capnp"))));
    v
}

fn throughput(c: &mut Criterion) {
    pin_caller();
    for window in [16usize, 256] {
        let mut g = c.benchmark_group(format!("calls_in_flight/{window}"));
        g.throughput(Throughput::Elements(BATCH));
        g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        for (name, mut sys) in systems() {
            g.bench_function(name, |b| b.iter_custom(|iters| (0..iters).map(|_| sys.run_window(BATCH, window)).sum()));
        }
        g.finish();
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
