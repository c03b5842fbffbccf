//! `cargo bench`: null round trips — multispace rpc on each driver against raw UDP and raw
//! TCP, in sleeping and spinning styles, in one criterion group so the numbers sit side by
//! side. For percentiles and ratios, run the `nullcall` report binary.

use criterion::{criterion_group, criterion_main, Criterion};
use multispace_bench::{pin_caller, PingPong, RawTcp, RawUdp, RpcNull, Waiting};
use multispace_rpc::DriverKind;

fn null_call(c: &mut Criterion) {
    pin_caller();
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        let mut g = c.benchmark_group(format!("null_round_trip/{waiting}"));
        let mut systems: Vec<(&str, Box<dyn PingPong>)> = vec![
            ("raw_udp", Box::new(RawUdp::new(1, waiting).expect("udp"))),
            ("raw_tcp", Box::new(RawTcp::new(1, waiting).expect("tcp"))),
            ("rpc_uring", Box::new(RpcNull::new(DriverKind::Uring, waiting).expect("uring rpc"))),
            ("rpc_epoll", Box::new(RpcNull::new(DriverKind::Epoll, waiting).expect("epoll rpc"))),
        ];
        for (name, s) in systems.iter_mut() {
            g.bench_function(*name, |b| b.iter_custom(|n| s.run(n, None)));
        }
        g.finish();
    }
}

criterion_group!(benches, null_call);
criterion_main!(benches);
