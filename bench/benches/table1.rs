//! `cargo bench`: the ten NinjaRMI Table 1 rows, one criterion group per row and waiting
//! style, each with every applicable system (raw UDP floors, multispace reliable calls on both
//! drivers, one-way calls for shapes without a result). Ratios and percentiles: `table1` bin.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use multispace_bench::shapes::TABLE1;
use multispace_bench::{pin_caller, Waiting, SYSTEMS};

fn table1(c: &mut Criterion) {
    pin_caller();
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        for shape in TABLE1 {
            let mut g = c.benchmark_group(format!("table1/{}/{waiting}", shape.id()));
            // About a hundred system/row pairs: keep the whole suite to minutes.
            g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
            for sys in SYSTEMS.into_iter().filter(|s| s.applies(shape, waiting)) {
                let mut s = sys.build(shape, waiting).expect("system set up");
                g.bench_function(sys.id(), |b| b.iter_custom(|n| s.run(n, None)));
            }
            g.finish();
        }
    }
}

criterion_group!(benches, table1);
criterion_main!(benches);
