//! The NinjaRMI Table 1 microbenchmarks, side by side with raw UDP (and raw TCP), in both
//! waiting styles, in one run: markdown table, JSON summary and a percentile plot per row.
//!
//! `cargo run --release -p multispace-bench --bin table1 -- [--quick] [--json PATH] [--plots DIR]`

use std::path::PathBuf;

use clap::Parser;
use hdrhistogram::Histogram;
use multispace_bench::report::{markdown, percentile_plot};
use multispace_bench::shapes::TABLE1;
use multispace_bench::{measure, pin_caller, Row, System, Waiting, SYSTEMS};

#[derive(Parser)]
struct Args {
    /// Smoke run: fewer calls, one round (finishes in well under a minute).
    #[arg(long)]
    quick: bool,
    /// Round trips per row, system and round.
    #[arg(long)]
    calls: Option<u64>,
    /// Rounds; systems are interleaved within each round so drift hits all alike.
    #[arg(long)]
    rounds: Option<u32>,
    /// Only rows whose signature contains this (e.g. `byte[1000]`).
    #[arg(long)]
    row: Option<String>,
    /// Only this waiting style (`sleep` or `spin`).
    #[arg(long)]
    waiting: Option<String>,
    /// Write the JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory for the SVG percentile plots.
    #[arg(long, default_value = "target/table1")]
    plots: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let calls = args.calls.unwrap_or(if args.quick { 2_000 } else { 20_000 });
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    pin_caller();
    std::fs::create_dir_all(&args.plots)?;
    let mut rows: Vec<Row> = Vec::new();
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        if args.waiting.as_deref().is_some_and(|w| w != waiting.to_string()) {
            continue;
        }
        for shape in TABLE1 {
            if args.row.as_deref().is_some_and(|r| !shape.name().contains(r)) {
                continue;
            }
            let systems: Vec<System> = SYSTEMS.into_iter().filter(|s| s.applies(shape, waiting)).collect();
            let mut hists: Vec<Histogram<u64>> = systems.iter().map(|_| Histogram::new(3).expect("hist")).collect();
            let mut rates: Vec<f64> = vec![0.0; systems.len()];
            for _ in 0..rounds {
                for (i, sys) in systems.iter().enumerate() {
                    let mut p = sys.build(shape, waiting)?;
                    p.run(calls / 10 + 100, None);
                    let (r, h) = measure(&shape.name(), sys.name(), waiting, p.as_mut(), calls);
                    hists[i].add(h).expect("same bounds");
                    rates[i] += r.calls_per_s / f64::from(rounds);
                }
            }
            let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let floor = (us(&hists[0], 0.5), us(&hists[0], 0.99));
            for (i, sys) in systems.iter().enumerate() {
                let h = &hists[i];
                let row = Row {
                    row: shape.name(),
                    system: sys.name().to_string(),
                    waiting,
                    calls: h.len(),
                    p50_us: us(h, 0.5),
                    p99_us: us(h, 0.99),
                    p999_us: us(h, 0.999),
                    max_us: h.max() as f64 / 1000.0,
                    calls_per_s: rates[i],
                    ratio_to_raw_udp: Some(us(h, 0.5) / floor.0),
                    p99_ratio_to_raw_udp: Some(us(h, 0.99) / floor.1),
                };
                eprintln!("{} {} ({waiting}): p50 {:.1} µs", row.row, row.system, row.p50_us);
                rows.push(row);
            }
            let series: Vec<(String, &Histogram<u64>)> =
                systems.iter().zip(&hists).map(|(s, h)| (s.name().to_string(), h)).collect();
            let path = args.plots.join(format!("{}_{waiting}.svg", shape.id()));
            percentile_plot(&path, &format!("{} — {waiting}ing waits", shape.name()), &series)?;
        }
    }
    println!("{}", markdown(&rows, &TABLE1));
    println!("Plots: {}/<row>_<waiting>.svg", args.plots.display());
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("JSON: {}", path.display());
    }
    Ok(())
}
