//! `cargo bench`: null round trips — multispace rpc on each driver against raw UDP and raw
//! TCP, in sleeping and spinning styles, in one criterion group so the numbers sit side by
//! side; `stub_uring` is the same call through the generated stub (its cost over `rpc_uring`
//! is what the stubs add). For percentiles and ratios, run the `nullcall` or `table1` binaries.

use criterion::{criterion_group, criterion_main, Criterion};
use multispace_bench::shapes::Shape;
use multispace_bench::{pin_caller, Waiting};

fn null_call(c: &mut Criterion) {
    pin_caller();
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        let mut g = c.benchmark_group(format!("null_round_trip/{waiting}"));
        for sys in multispace_bench::NULL_CALL_SYSTEMS {
            // One system alive at a time: a spinning thread of an idle system would steal a
            // core from the one being measured.
            let mut s = sys.build(Shape::Void, waiting).expect("system set up");
            g.bench_function(sys.id(), |b| b.iter_custom(|n| s.run(n, None)));
        }
        g.finish();
    }
}

criterion_group!(benches, null_call);
criterion_main!(benches);
