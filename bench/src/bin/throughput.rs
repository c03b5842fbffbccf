//! Throughput report: null calls per second with 1, 16, 32 and 256 in flight (ours on both
//! drivers, raw windowed UDP echo, tarpc, tonic), one-way and multicast messages per second
//! against a raw UDP blast, calls per second from one core to all cores, and large
//! transfers (64 KiB to 1 MiB carried by one call, either way) against raw TCP.
//!
//! `cargo run --release -p multispace-bench --bin throughput -- [--quick] [--json PATH] [--only calls,one-way,transfers,scaling]`

use clap::Parser;
use multispace_bench::raw::RawTcp;
use multispace_bench::shapes::Shape;
use multispace_bench::throughput::{
    oneway_blast, rate, raw_udp_blast, raw_udp_blast_batched, scaling, Rate, RawWindowedUdp,
};
use multispace_bench::{pin_caller, PingPong, Waiting, Windowed};
use multispace_rpc::DriverKind;

#[derive(Parser)]
struct Args {
    /// Smoke run: fewer calls (well under a minute).
    #[arg(long)]
    quick: bool,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Run only these parts (comma-separated): calls, one-way, transfers, scaling.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Calls,
    OneWay,
    Transfers,
    Scaling,
}

// 32 in flight is the window the throughput target names.
const WINDOWS: [usize; 4] = [1, 16, 32, 256];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    pin_caller();
    let (n, rounds) = if args.quick { (5_000, 1) } else { (50_000, 3) };
    let part = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let mut rates: Vec<Rate> = Vec::new();
    let mut push = |kind: &str, system: &str, window: usize, per_s: f64, lost: Option<u64>| {
        eprintln!("{kind} {system} w={window}: {per_s:.0}/s");
        rates.push(Rate { kind: kind.into(), system: system.into(), window, per_s, ratio_to_raw: None, lost });
    };

    if part(Part::Calls) {
        let mut systems: Vec<(&str, Box<dyn Windowed>)> = vec![
            ("raw UDP (windowed echo)", Box::new(RawWindowedUdp::new()?)),
            (
                "multispace rpc (io_uring)",
                Box::new(multispace_bench::ours::Rpc::new(DriverKind::Uring, Waiting::Sleep, Shape::Void)?),
            ),
            (
                "multispace rpc (epoll)",
                Box::new(multispace_bench::ours::Rpc::new(DriverKind::Epoll, Waiting::Sleep, Shape::Void)?),
            ),
        ];
        #[cfg(feature = "tarpc")]
        systems
            .push(("tarpc (tokio, bincode)", Box::new(multispace_bench::peers::tarpc_peer::Tarpc::new(Shape::Void)?)));
        #[cfg(feature = "tonic")]
        systems.push(("tonic (gRPC, HTTP/2)", Box::new(multispace_bench::peers::tonic_peer::Tonic::new(Shape::Void)?)));
        #[cfg(has_capnp)]
        systems
            .push(("capnp-rpc (two-party)", Box::new(multispace_bench::peers::capnp_peer::Capnp::new(Shape::Void)?)));
        for w in WINDOWS {
            for (name, sys) in systems.iter_mut() {
                push("calls", name, w, rate(sys.as_mut(), n, w, rounds), None);
            }
        }
        drop(systems);
    }

    if part(Part::OneWay) {
        let blast = n * 4;
        let (raw, lost) = raw_udp_blast(blast)?;
        push("one-way", "raw UDP (blast)", 0, raw, Some(lost));
        let (raw, lost) = raw_udp_blast_batched(blast, 32)?;
        push("one-way", "raw UDP (sendmmsg blast, 32 a call)", 0, raw, Some(lost));
        for driver in [DriverKind::Uring, DriverKind::Epoll] {
            let (r, lost) = oneway_blast(driver, blast, false)?;
            push("one-way", &format!("multispace one-way ({driver})"), 0, r, Some(lost));
            let (r, lost) = oneway_blast(driver, blast, true)?;
            push("multicast", &format!("multispace multicast ({driver})"), 0, r, Some(lost));
        }
    }

    if part(Part::Transfers) {
        // Large transfers: one call at a time carrying `size` bytes one way (an empty answer or
        // a 4-byte request the other way), in MB/s, against a raw TCP ping-pong of the same sizes
        // (blocking sockets, TCP_NODELAY). Best of `rounds`.
        let per_size_bytes: u64 = if args.quick { 16 << 20 } else { 128 << 20 };
        for size in [64usize << 10, 256 << 10, 1 << 20] {
            for (dir, reply, (request, response)) in [("request", false, (size, 1)), ("reply", true, (4, size))] {
                let kind = format!("transfer MB/s, {} KiB {dir}", size >> 10);
                let calls = per_size_bytes / size as u64;
                let mut systems: Vec<(String, Box<dyn PingPong>)> = vec![
                    ("raw TCP (ping-pong)".into(), Box::new(RawTcp::new(request, response, Waiting::Sleep)?)),
                    ("multispace rpc (io_uring)".into(), Box::new(transfer(DriverKind::Uring, reply, size)?)),
                    ("multispace rpc (epoll)".into(), Box::new(transfer(DriverKind::Epoll, reply, size)?)),
                ];
                let mut best = vec![0f64; systems.len()];
                for _ in 0..rounds {
                    for (i, (_, sys)) in systems.iter_mut().enumerate() {
                        sys.run(calls / 10 + 1, None);
                        let t = sys.run(calls, None);
                        best[i] = best[i].max((calls * size as u64) as f64 / t.as_secs_f64() / 1e6);
                    }
                }
                for ((name, _), mbps) in systems.iter().zip(best) {
                    push(&kind, name, 1, mbps, None);
                }
            }
        }
    }

    if part(Part::Scaling) {
        let cores = multispace_bench::throughput::cpus_online();
        for k in 1..=cores {
            let mut best = 0f64;
            for _ in 0..rounds {
                best = best.max(scaling(DriverKind::Uring, k, n * 4, 16)?);
            }
            push("scaling", "multispace rpc (io_uring), 16 in flight per core", k, best, None);
        }
    }

    // Ratios against the raw floor of the same kind (and window).
    let floor = |r: &Rate| -> Option<f64> {
        let kind = if r.kind == "multicast" { "one-way" } else { r.kind.as_str() };
        match kind {
            "calls" => rates.iter().find(|x| x.kind == "calls" && x.window == r.window && x.system.starts_with("raw")),
            // The faster of the raw blasts (per-datagram sends or sendmmsg batches).
            "one-way" => rates
                .iter()
                .filter(|x| x.kind == "one-way" && x.system.starts_with("raw"))
                .max_by(|a, b| a.per_s.total_cmp(&b.per_s)),
            k if k.starts_with("transfer") => rates.iter().find(|x| x.kind == k && x.system.starts_with("raw")),
            _ => rates.iter().find(|x| x.kind == "scaling" && x.window == 1),
        }
        .map(|f| r.per_s / f.per_s)
    };
    let ratios: Vec<Option<f64>> = rates.iter().map(floor).collect();
    for (r, ratio) in rates.iter_mut().zip(ratios) {
        r.ratio_to_raw = ratio;
    }

    println!("| kind | system | in flight / cores | per second | ÷ floor | lost |");
    println!("|---|---|---|---|---|---|");
    for r in &rates {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} |",
            r.kind,
            r.system,
            if r.window == 0 { "-".to_string() } else { r.window.to_string() },
            r.per_s,
            r.ratio_to_raw.map_or("-".into(), |x| format!("{x:.2}×")),
            r.lost.map_or("-".into(), |l| l.to_string()),
        );
    }
    println!(
        "\nFloors: `calls` against raw windowed UDP echo with the same window; `one-way` and `multicast` against a raw \
         UDP blast (delivered messages per second); `transfer` (MB/s, one call at a time) against a raw TCP \
         ping-pong of the same sizes; `scaling` against one core."
    );
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rates)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Our side of a large-transfer row: `size` bytes as the request, or as the reply (served
/// from a buffer built once, like the raw echo's).
fn transfer(driver: DriverKind, reply: bool, size: usize) -> anyhow::Result<multispace_bench::ours::Rpc> {
    use multispace_bench::ours::Rpc;
    match reply {
        true => Rpc::shared_reply(driver, Waiting::Sleep, size),
        false => Rpc::new(driver, Waiting::Sleep, Shape::Bytes(size)),
    }
}
