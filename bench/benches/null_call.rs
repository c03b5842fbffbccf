//! `cargo bench`: null round trips — multispace rpc on each driver against raw UDP and raw
//! TCP, in sleeping and spinning styles, in one criterion group so the numbers sit side by
//! side. For percentiles and ratios, run the `nullcall` report binary.

use criterion::{criterion_group, criterion_main, Criterion};
use multispace_bench::{pin_caller, PingPong, RawTcp, RawUdp, RpcNull, Waiting};
use multispace_rpc::DriverKind;

type Make = fn(Waiting) -> Box<dyn PingPong>;

fn null_call(c: &mut Criterion) {
    pin_caller();
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        let mut g = c.benchmark_group(format!("null_round_trip/{waiting}"));
        // One system alive at a time: a spinning echo thread of an idle system would steal a
        // core from the one being measured.
        let build: [(&str, Make); 4] = [
            ("raw_udp", |w| Box::new(RawUdp::new(1, w).expect("udp"))),
            ("raw_tcp", |w| Box::new(RawTcp::new(1, w).expect("tcp"))),
            ("rpc_uring", |w| Box::new(RpcNull::new(DriverKind::Uring, w).expect("uring rpc"))),
            ("rpc_epoll", |w| Box::new(RpcNull::new(DriverKind::Epoll, w).expect("epoll rpc"))),
        ];
        for (name, make) in build {
            let mut s = make(waiting);
            g.bench_function(name, |b| b.iter_custom(|n| s.run(n, None)));
        }
        g.finish();
    }
}

criterion_group!(benches, null_call);
criterion_main!(benches);
