//! The paper's Table 2 for Keiretsu: maximum message throughput with 1–4 nodes and 10, 50
//! and 100 receivers per node, beside the paper's figures; markdown and JSON.
//!
//! `cargo run --release -p multispace-bench --bin table2 -- [--quick] [--json PATH]`

use clap::Parser;
use multispace_bench::table2::{run, Table2Row};
use multispace_rpc::DriverKind;

#[derive(Parser)]
struct Args {
    /// Smoke run: fewer messages, 1 and 2 nodes only.
    #[arg(long)]
    quick: bool,
    /// Messages per configuration.
    #[arg(long)]
    messages: Option<u64>,
    /// Runs per configuration; the one with the median rate is reported (runs are short and
    /// this machine is noisy).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Messages in flight (driver connections).
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let messages = args.messages.unwrap_or(if args.quick { 3_000 } else { 100_000 });
    let rounds = if args.quick { 1 } else { args.rounds.max(1) };
    let max_nodes = if args.quick { 2 } else { 4 };
    let mut rows: Vec<Table2Row> = Vec::new();
    let mut n_run = 0;
    for nodes in 1..=max_nodes {
        for receivers in [10, 50, 100] {
            let mut runs = Vec::new();
            for _ in 0..rounds {
                runs.push(run(DriverKind::Uring, nodes, receivers, messages, args.in_flight, n_run)?);
                n_run += 1;
            }
            runs.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
            let row = runs.swap_remove(runs.len() / 2);
            eprintln!("{nodes} nodes x {receivers} receivers: {:.0} msgs/s", row.msgs_per_s);
            rows.push(row);
        }
    }
    println!("| nodes | receivers per node | msgs/s | msgs/s per node-core | paper msgs/s | failed | unbound |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
            r.nodes,
            r.receivers_per_node,
            r.msgs_per_s,
            r.msgs_per_s_per_node_core,
            r.paper_msgs_per_s,
            r.failed,
            r.unbound
        );
    }
    println!(
        "\n75-byte messages, {} in flight, all in one process on {} cores (nodes share cores; the driver and \
         speedometers share the caller's). Paper: 400 MHz Pentium IIs, one per node, 100 Mb/s Ethernet.",
        args.in_flight,
        multispace_bench::throughput::cpus_online()
    );
    for nodes in 1..=max_nodes {
        let r10 = rows.iter().find(|r| r.nodes == nodes && r.receivers_per_node == 10);
        let r100 = rows.iter().find(|r| r.nodes == nodes && r.receivers_per_node == 100);
        if let (Some(a), Some(b)) = (r10, r100) {
            println!(
                "{nodes} nodes: 100 receivers per node at {:.0}% of 10 receivers per node",
                100.0 * b.msgs_per_s / a.msgs_per_s
            );
        }
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
