//! Quick side-by-side benchmark: multispace null call vs raw UDP (and raw TCP) round trips,
//! in the same process and run, sleeping and spinning.
//!
//! `cargo run --release -p multispace-bench --bin nullcall -- [--calls N] [--json PATH]`

use clap::Parser;
use multispace_bench::{measure, pin_caller, PingPong, RawTcp, RawUdp, Row, RpcNull, Waiting};
use multispace_rpc::DriverKind;

#[derive(Parser)]
struct Args {
    /// Round trips per system and waiting style (per round).
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
    /// Interleaved rounds; medians of each row are taken over all rounds together.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Only systems whose name contains this (e.g. `io_uring`, `raw`); for profiling.
    #[arg(long)]
    only: Option<String>,
    /// Only this waiting style.
    #[arg(long)]
    waiting: Option<String>,
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    pin_caller();
    let mut rows: Vec<Row> = Vec::new();
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        if args.waiting.as_deref().is_some_and(|w| w != waiting.to_string()) {
            continue;
        }
        let systems = ["raw UDP", "raw TCP", "multispace rpc (io_uring)", "multispace rpc (epoll)"];
        // Interleave rounds so drift on the machine hits every system alike. Each system is
        // built just before it is measured and torn down after: spinning echo threads of idle
        // systems would otherwise steal the two cores.
        let mut per_system: Vec<Vec<Row>> = vec![Vec::new(); systems.len()];
        for _ in 0..args.rounds {
            for (i, name) in systems.iter().enumerate() {
                if args.only.as_deref().is_some_and(|o| !name.contains(o)) && i != 0 {
                    continue;
                }
                let mut s = build(i, waiting)?;
                s.run(2000, None);
                let row = measure(name, waiting, s.as_mut(), args.calls);
                eprintln!("{name} ({waiting}): p50 {:.1} µs", row.p50_us);
                per_system[i].push(row);
            }
        }
        let merged: Vec<Row> = per_system.into_iter().filter(|r| !r.is_empty()).map(merge).collect();
        let floor = merged[0].p50_us;
        rows.extend(merged.into_iter().map(|mut r| {
            r.ratio_to_raw_udp = Some(r.p50_us / floor);
            r
        }));
    }
    println!("| system | waiting | p50 µs | p99 µs | p99.9 µs | max µs | calls/s | p50 ÷ raw UDP p50 |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2}× |",
            r.system,
            r.waiting,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.max_us,
            r.calls_per_s,
            r.ratio_to_raw_udp.unwrap_or(f64::NAN)
        );
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn build(i: usize, waiting: Waiting) -> anyhow::Result<Box<dyn PingPong>> {
    Ok(match i {
        0 => Box::new(RawUdp::new(1, waiting)?),
        1 => Box::new(RawTcp::new(1, waiting)?),
        2 => Box::new(RpcNull::new(DriverKind::Uring, waiting)?),
        _ => Box::new(RpcNull::new(DriverKind::Epoll, waiting)?),
    })
}

/// Combine rounds: the median of the rounds' medians (robust to one disturbed round), and the
/// worst tail.
fn merge(mut rounds: Vec<Row>) -> Row {
    rounds.sort_by(|a, b| a.p50_us.total_cmp(&b.p50_us));
    let mid = rounds.len() / 2;
    let mut r = rounds[mid].clone();
    r.calls = rounds.iter().map(|x| x.calls).sum();
    r.p99_us = rounds.iter().map(|x| x.p99_us).fold(0.0, f64::max);
    r.p999_us = rounds.iter().map(|x| x.p999_us).fold(0.0, f64::max);
    r.max_us = rounds.iter().map(|x| x.max_us).fold(0.0, f64::max);
    r
}
