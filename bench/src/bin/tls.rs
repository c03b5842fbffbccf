//! What mutual TLS costs, side by side with plain TCP in one run (io_uring driver): the
//! handshake (connect until ready for calls; full, and resumed from a ticket), the null call's latency in both waiting
//! styles, and null calls per second with 16 and 256 in flight on one connection.
//!
//! `cargo run --release -p multispace-bench --bin tls -- [--quick] [--json PATH]`

use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use multispace_bench::ours::{tls_config, tls_pair, Rpc};
use multispace_bench::shapes::Shape;
use multispace_bench::{measure, pin_caller, PingPong, Waiting, Windowed};
use multispace_rpc::tls::certs::Authority;
use multispace_rpc::DriverKind;
use multispace_rpc::TlsConfig;
use serde::Serialize;

#[derive(Parser)]
struct Args {
    /// Fewer calls and connections: a smoke run of a few seconds.
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds; each figure is the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Only run this many full handshakes in memory and exit: for profiling the handshake's
    /// CPU (e.g. instructions per handshake under callgrind, at two counts).
    #[arg(long)]
    memory_only: Option<u64>,
}

#[derive(Serialize, Clone, Debug)]
struct Figure {
    /// What was measured.
    what: String,
    /// `plain` or `mtls`.
    transport: &'static str,
    /// Waiting style of both runtimes.
    waiting: String,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    calls_per_s: Option<f64>,
    /// TLS figure over plain TCP's (latency: p50 ratio; throughput: rate ratio).
    ratio_to_plain: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn build(tls: bool, waiting: Waiting) -> anyhow::Result<Rpc> {
    Rpc::with_tls(DriverKind::Uring, waiting, Shape::Void, if tls { Some(tls_pair()?) } else { None })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.memory_only {
        let (server, client) = tls_pair()?;
        let (server, client) = (server.without_resumption(), client.without_resumption());
        for _ in 0..n {
            multispace_rpc::tls::handshake_in_memory(&client, &server)?;
        }
        return Ok(());
    }
    pin_caller();
    let (calls, conns, window_calls) = if args.quick { (3_000, 100, 30_000) } else { (20_000, 500, 300_000) };
    let mut figures = Vec::new();
    let name = |tls: bool| if tls { "mtls" } else { "plain" };

    // Handshakes: fresh connections one after another — plain TCP; full TLS handshakes
    // between peers that have seen each other's certificates before (each end remembers the
    // chains it verified, so it checks only the handshake signature and the dates); full
    // handshakes at first contact (every connection with a newly issued client certificate
    // and a new client configuration, made beforehand, so both ends verify the other's chain
    // in full); and TLS resumed from the previous connection's ticket (a client reconnecting
    // to a server it already knows: after a failure, or a short-lived CLI client).
    // Both waiting styles: sleeping, each message of the handshake wakes the other core;
    // spinning shows the handshake without those wake-ups.
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Plain,
        Known,
        FirstContact,
        Resumed,
    }
    let kinds = [Kind::Plain, Kind::Known, Kind::FirstContact, Kind::Resumed];
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        let mut p50 = vec![Vec::new(); kinds.len()];
        let mut p99 = vec![Vec::new(); kinds.len()];
        for _ in 0..args.rounds {
            for (i, &kind) in kinds.iter().enumerate() {
                let ca = Authority::create("bench CA", 1)?;
                let tls = (kind != Kind::Plain)
                    .then(|| anyhow::Ok((tls_config(&ca, "bench-server")?, tls_config(&ca, "bench-client")?)))
                    .transpose()?;
                let mut rpc = Rpc::with_tls(DriverKind::Uring, waiting, Shape::Void, tls)?;
                let fresh = if kind == Kind::FirstContact {
                    (0..conns).map(|i| tls_config(&ca, &format!("client-{i}"))).collect::<anyhow::Result<_>>()?
                } else {
                    Vec::new()
                };
                let mut h = Histogram::<u64>::new(3)?;
                rpc.connects_as(conns, &mut h, kind == Kind::Resumed, fresh);
                p50[i].push(h.value_at_quantile(0.5) as f64 / 1000.0);
                p99[i].push(h.value_at_quantile(0.99) as f64 / 1000.0);
            }
        }
        for (i, &kind) in kinds.iter().enumerate() {
            let (what, transport) = match kind {
                Kind::Plain => ("connect until ready (TCP)", "plain"),
                Kind::Known => ("connect until ready (TCP + full handshake, peers seen before)", "mtls"),
                Kind::FirstContact => ("connect until ready (TCP + full handshake, first contact)", "mtls"),
                Kind::Resumed => ("reconnect until ready (TCP + resumed handshake)", "mtls"),
            };
            figures.push(Figure {
                what: what.into(),
                transport,
                waiting: waiting.to_string(),
                p50_us: Some(median(p50[i].clone())),
                p99_us: Some(median(p99[i].clone())),
                calls_per_s: None,
                ratio_to_plain: None,
            });
        }
    }

    // The same handshakes in memory: cryptography and certificate checks alone.
    for kind in [Kind::Known, Kind::FirstContact, Kind::Resumed] {
        let resume = kind == Kind::Resumed;
        let ca = Authority::create("bench CA", 1)?;
        let pair = |ca: &Authority| -> anyhow::Result<(TlsConfig, TlsConfig)> {
            let (server, client) = (tls_config(ca, "bench-server")?, tls_config(ca, "bench-client")?);
            Ok(if resume { (server, client) } else { (server.without_resumption(), client.without_resumption()) })
        };
        let (server, client) = pair(&ca)?;
        // The first handshake of a pair is a full one that verifies the chains and, when
        // resuming, fetches the ticket.
        multispace_rpc::tls::handshake_in_memory(&client, &server)?;
        let mut h = Histogram::<u64>::new(3)?;
        for _ in 0..conns {
            // First contact: new configurations and certificates each time, made untimed.
            let fresh = if kind == Kind::FirstContact { Some(pair(&ca)?) } else { None };
            let (server, client) = fresh.as_ref().map_or((&server, &client), |(s, c)| (s, c));
            let t = std::time::Instant::now();
            let resumed = multispace_rpc::tls::handshake_in_memory(client, server)?;
            let _ = h.record(t.elapsed().as_nanos() as u64);
            anyhow::ensure!(resumed == resume, "handshake kind: resumed {resumed}, expected {resume}");
        }
        let what = match kind {
            Kind::Resumed => "resumed handshake in memory (crypto, no I/O)",
            Kind::FirstContact => "full handshake in memory, first contact (crypto + chain checks, no I/O)",
            _ => "full handshake in memory, peers seen before (crypto, no I/O)",
        };
        figures.push(Figure {
            what: what.into(),
            transport: "mtls",
            waiting: "-".into(),
            p50_us: Some(h.value_at_quantile(0.5) as f64 / 1000.0),
            p99_us: Some(h.value_at_quantile(0.99) as f64 / 1000.0),
            calls_per_s: None,
            ratio_to_plain: None,
        });
    }

    // Null call latency, one at a time.
    for waiting in [Waiting::Sleep, Waiting::Spin] {
        let mut rows = [Vec::new(), Vec::new()];
        for _ in 0..args.rounds {
            for tls in [false, true] {
                let mut rpc = build(tls, waiting)?;
                rpc.run(2000, None);
                let (row, _) = measure("f()", name(tls), waiting, &mut rpc, calls);
                rows[tls as usize].push(row);
            }
        }
        for tls in [false, true] {
            figures.push(Figure {
                what: "null call f()".into(),
                transport: name(tls),
                waiting: waiting.to_string(),
                p50_us: Some(median(rows[tls as usize].iter().map(|r| r.p50_us).collect())),
                p99_us: Some(median(rows[tls as usize].iter().map(|r| r.p99_us).collect())),
                calls_per_s: None,
                ratio_to_plain: None,
            });
        }
    }

    // Throughput on one connection, one client core.
    for window in [16usize, 256] {
        let mut rates = [Vec::new(), Vec::new()];
        for _ in 0..args.rounds {
            for tls in [false, true] {
                let mut rpc = build(tls, Waiting::Sleep)?;
                rpc.run_window(window_calls / 10, window);
                let t: Duration = rpc.run_window(window_calls, window);
                rates[tls as usize].push(window_calls as f64 / t.as_secs_f64());
            }
        }
        for tls in [false, true] {
            figures.push(Figure {
                what: format!("null calls, {window} in flight"),
                transport: name(tls),
                waiting: "sleep".into(),
                p50_us: None,
                p99_us: None,
                calls_per_s: Some(median(rates[tls as usize].clone())),
                ratio_to_plain: None,
            });
        }
    }

    // Ratios: each TLS figure against the latest plain figure measured the same way (the
    // in-memory handshakes have no plain counterpart).
    let mut plain: Option<Figure> = None;
    for f in figures.iter_mut() {
        if f.transport == "plain" {
            plain = Some(f.clone());
            continue;
        }
        let Some(p) = plain.as_ref().filter(|p| p.waiting == f.waiting) else { continue };
        f.ratio_to_plain = match (p.p50_us, f.p50_us, p.calls_per_s, f.calls_per_s) {
            (Some(a), Some(b), _, _) => Some(b / a),
            (_, _, Some(a), Some(b)) => Some(b / a),
            _ => None,
        };
    }

    println!("| measurement | transport | waiting | p50 µs | p99 µs | calls/s | TLS vs plain |");
    println!("|---|---|---|---:|---:|---:|---:|");
    let opt = |v: Option<f64>, d: usize| v.map_or("".to_string(), |v| format!("{v:.d$}"));
    for f in &figures {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            f.what,
            f.transport,
            f.waiting,
            opt(f.p50_us, 1),
            opt(f.p99_us, 1),
            opt(f.calls_per_s, 0),
            f.ratio_to_plain.map_or(String::new(), |r| format!("{r:.2}x")),
        );
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
