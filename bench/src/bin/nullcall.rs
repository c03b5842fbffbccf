//! Quick side-by-side benchmark of the null call: multispace against raw UDP (and raw TCP)
//! round trips, in the same process and run, sleeping and spinning.
//!
//! `cargo run --release -p multispace-bench --bin nullcall -- [--calls N] [--json PATH]`
//! (the full ten-row table is the `table1` binary).

use clap::Parser;
use multispace_bench::shapes::Shape;
use multispace_bench::{measure, pin_caller, Row, System, Waiting};

#[derive(Parser)]
struct Args {
    /// Round trips per system and waiting style (per round).
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
    /// Interleaved rounds; each row reports the round with the median p50.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Only systems whose name contains this (e.g. `io_uring`), beside raw UDP; for profiling.
    #[arg(long)]
    only: Option<String>,
    /// Only this waiting style (`sleep` or `spin`).
    #[arg(long)]
    waiting: Option<String>,
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const SYSTEMS: [System; 10] = multispace_bench::NULL_CALL_SYSTEMS;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    pin_caller();
    let mut rows: Vec<Row> = Vec::new();
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        if args.waiting.as_deref().is_some_and(|w| w != waiting.to_string()) {
            continue;
        }
        // Interleave rounds so drift on the machine hits every system alike.
        let mut per_system: Vec<Vec<Row>> = vec![Vec::new(); SYSTEMS.len()];
        for _ in 0..args.rounds {
            for (i, sys) in SYSTEMS.iter().enumerate() {
                if i != 0 && args.only.as_deref().is_some_and(|o| !sys.name().contains(o)) {
                    continue;
                }
                let mut s = sys.build(Shape::Void, waiting)?;
                s.run(2000, None);
                let (row, _) = measure("f()", sys.name(), waiting, s.as_mut(), args.calls);
                eprintln!("{} ({waiting}): p50 {:.1} µs", sys.name(), row.p50_us);
                per_system[i].push(row);
            }
        }
        let merged: Vec<Row> = per_system.into_iter().filter(|r| !r.is_empty()).map(merge).collect();
        let floor = (merged[0].p50_us, merged[0].p99_us);
        rows.extend(merged.into_iter().map(|mut r| {
            r.ratio_to_raw_udp = Some(r.p50_us / floor.0);
            r.p99_ratio_to_raw_udp = Some(r.p99_us / floor.1);
            r
        }));
    }
    println!("| system | waiting | p50 µs | p99 µs | p99.9 µs | max µs | calls/s | p50 ÷ raw UDP | p99 ÷ raw UDP |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2}× | {:.2}× |",
            r.system,
            r.waiting,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.max_us,
            r.calls_per_s,
            r.ratio_to_raw_udp.unwrap_or(f64::NAN),
            r.p99_ratio_to_raw_udp.unwrap_or(f64::NAN),
        );
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Combine rounds: the round with the median p50 (robust to one disturbed round), with the
/// worst tail of all rounds.
fn merge(mut rounds: Vec<Row>) -> Row {
    rounds.sort_by(|a, b| a.p50_us.total_cmp(&b.p50_us));
    let mut r = rounds[rounds.len() / 2].clone();
    r.calls = rounds.iter().map(|x| x.calls).sum();
    r.p99_us = rounds.iter().map(|x| x.p99_us).fold(0.0, f64::max);
    r.p999_us = rounds.iter().map(|x| x.p999_us).fold(0.0, f64::max);
    r.max_us = rounds.iter().map(|x| x.max_us).fold(0.0, f64::max);
    r
}
