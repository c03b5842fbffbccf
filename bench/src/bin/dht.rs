//! The replicated table against etcd and Redis: 500-byte puts and gets with 50 concurrent
//! clients, single-client latency, and leader failover; markdown and JSON.
//!
//! `bash bench/table.sh [--quick] [--rounds N] [--json PATH]` (installs etcd and Redis from Debian's
//! packages, then runs `cargo run --release -p multispace-bench --bin dht -- ...`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use multispace_bench::table::{put_get_rows, Etcd, KvOp, OurTable, Redis, TableRow, Workload};
use multispace_dht::server::Durability;
use serde::Serialize;

// As the `multispace` binary's nodes run: glibc's malloc, with allocations and frees spread
// over the node, disk and client threads, cost ~20% of this benchmark's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Smoke run: 1 s phases, fewer keys, 3 failovers.
    #[arg(long)]
    quick: bool,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Leader kills to time.
    #[arg(long, default_value_t = 10)]
    failovers: usize,
    /// Where servers keep their data (a real disk: fsync must cost what it costs).
    #[arg(long, default_value = "target/dht-bench")]
    data: PathBuf,
    /// Only our table (no etcd, no Redis): for profiling.
    #[arg(long)]
    ours_only: bool,
    /// Only the memory mode of ours (with --ours-only), e.g. to profile the CPU path.
    #[arg(long, conflicts_with = "durable_only")]
    memory_only: bool,
    /// Only the durable mode of ours (with --ours-only).
    #[arg(long)]
    durable_only: bool,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Rounds: every system is measured once per round, in turn, and each row reports the
    /// round with the median throughput (runs on this VM vary by up to ~15%; ratios are taken
    /// between medians, and each round's are listed too). Failovers are timed in round 1.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

#[derive(Serialize)]
struct Summary {
    rounds: usize,
    /// Per system and operation, the round with the median throughput.
    rows: Vec<TableRow>,
    /// Every round's rows, in the order measured.
    all_rounds: Vec<Vec<TableRow>>,
    failover_ms: Vec<f64>,
    skipped: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let w = Workload {
        clients: args.clients,
        duration: Duration::from_secs_f64(if args.quick { 1.0 } else { args.seconds }),
        value_bytes: 500,
        keys: if args.quick { 2_000 } else { 10_000 },
        single_ops: if args.quick { 300 } else { 2_000 },
    };
    std::fs::create_dir_all(&args.data)?;
    let data = args.data.canonicalize()?;
    let mut skipped = Vec::new();
    let mut failover_ms = Vec::new();

    let ours: &[(&str, Durability)] = if args.memory_only {
        &[("multispace memory", Durability::Memory)]
    } else if args.durable_only {
        &[("multispace durable", Durability::Durable)]
    } else {
        &[("multispace durable", Durability::Durable), ("multispace memory", Durability::Memory)]
    };
    let mut rounds: Vec<Vec<TableRow>> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        if args.rounds > 1 {
            eprintln!("round {round} of {}", args.rounds);
        }
        let mut rows = Vec::new();
        let kills = if round > 1 {
            0
        } else if args.quick {
            3
        } else {
            args.failovers
        };
        for &(name, durability) in ours {
            let mut t = OurTable::start(durability, &data)?;
            rows.extend(put_get_rows(name, &w, &|op, c, d, n| Ok(t.measure(op, c, d, n, &w)), &|| {
                t.preload(&w);
                Ok(())
            })?);
            if durability == Durability::Durable {
                for _ in 0..kills {
                    let d = t.failover()?;
                    eprintln!(
                        "failover: first acknowledged put {:.0} ms after killing the leader",
                        d.as_secs_f64() * 1e3
                    );
                    failover_ms.push(d.as_secs_f64() * 1e3);
                }
            }
        }
        let peers = !args.ours_only;
        match if peers { Etcd::start(&data)? } else { None } {
            Some(e) => {
                rows.extend(put_get_rows("etcd 3 members", &w, &|op, c, d, n| e.measure(op, c, d, n, &w), &|| {
                    e.preload(&w)
                })?)
            }
            None if peers && round == 1 => {
                skipped.push("etcd (not installed: apt-get install etcd-server)".to_string())
            }
            None => {}
        }
        for (name, aof) in [("redis appendfsync always", true), ("redis no persistence", false)] {
            match if peers { Redis::start(&data, aof)? } else { None } {
                Some(r) => {
                    rows.extend(put_get_rows(name, &w, &|op, c, d, n| r.measure(op, c, d, n, &w), &|| r.preload(&w))?)
                }
                None if peers && round == 1 => {
                    skipped.push(format!("{name} (not installed: apt-get install redis-server)"))
                }
                None => {}
            }
        }
        rounds.push(rows);
    }
    let rows = median_rows(&rounds);

    println!("| system | op | clients | ops/s | p50 µs | p99 µs | 1-client p50 µs | 1-client p99 µs |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:?} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.system, r.op, r.clients, r.ops_per_s, r.p50_us, r.p99_us, r.single_p50_us, r.single_p99_us
        );
    }
    let rate =
        |rows: &[TableRow], sys: &str| rows.iter().find(|r| r.system == sys && r.op == KvOp::Put).map(|r| r.ops_per_s);
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or("n/a".to_string(), |(a, b)| format!("{:.2}x", a / b));
    println!();
    for (what, ours, peer) in [
        ("durable puts vs etcd", "multispace durable", "etcd 3 members"),
        ("durable puts vs redis appendfsync always", "multispace durable", "redis appendfsync always"),
        ("memory puts vs redis no persistence", "multispace memory", "redis no persistence"),
    ] {
        let each: Vec<String> = rounds.iter().map(|r| ratio(rate(r, ours), rate(r, peer))).collect();
        let each = if rounds.len() > 1 { format!(" (each round: {})", each.join(", ")) } else { String::new() };
        println!("{what}: {}{each}", ratio(rate(&rows, ours), rate(&rows, peer)));
    }
    if !failover_ms.is_empty() {
        let mut f = failover_ms.clone();
        f.sort_by(f64::total_cmp);
        println!(
            "failover (kill leader -> first acknowledged put), {} kills: median {:.0} ms, max {:.0} ms",
            f.len(),
            f[f.len() / 2],
            f[f.len() - 1]
        );
    }
    for s in &skipped {
        println!("skipped: {s}");
    }
    if let Some(path) = args.json {
        let summary = Summary { rounds: rounds.len(), rows, all_rounds: rounds, failover_ms, skipped };
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Per system and operation (in the order first measured), the round with the median
/// throughput (the lower middle one for an even count).
fn median_rows(rounds: &[Vec<TableRow>]) -> Vec<TableRow> {
    let mut out = Vec::new();
    for first in rounds.first().into_iter().flatten() {
        let mut same: Vec<&TableRow> =
            rounds.iter().flatten().filter(|r| r.system == first.system && r.op == first.op).collect();
        same.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
        out.push(same[(same.len() - 1) / 2].clone());
    }
    out
}
