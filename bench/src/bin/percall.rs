//! A null-call workload for instruction counting: client and server on one core, `--calls`
//! sequential calls. Run under callgrind by `bench/callgrind.sh`, which runs it at two call
//! counts and reports the difference per call (user-space instructions only: the kernel is
//! not counted, so this is our own CPU per call, deterministic unlike time).
//!
//! `cargo run --release -p multispace-bench --bin percall -- --calls N [--driver epoll] [--stub] [--udp] [--tls] [--bytes N]`

use clap::Parser;
use multispace_rpc::{
    spawn, CallOptions, Client, Config, ConnConfig, DriverChoice, DriverKind, LocalRuntime, Message, Server,
    ServerConfig, Service, Status, Transport,
};
use multispace_services::calc::{self, CalcClient};
use multispace_services::Calculator;

#[derive(Parser)]
struct Args {
    /// Sequential null calls.
    #[arg(long, default_value_t = 1000)]
    calls: u64,
    /// `uring` or `epoll`.
    #[arg(long, default_value = "uring")]
    driver: String,
    /// Call through the generated calculator stub instead of a hand-registered method.
    #[arg(long)]
    stub: bool,
    /// Call over UDP datagram sessions instead of TCP.
    #[arg(long)]
    udp: bool,
    /// Call over mutual TLS (TCP).
    #[arg(long)]
    tls: bool,
    /// Each call carries a request of this many bytes (a `Vec<u8>`) instead of nothing:
    /// the per-call cost of large transfers.
    #[arg(long, default_value_t = 0)]
    bytes: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kind = if args.driver == "epoll" { DriverKind::Epoll } else { DriverKind::Uring };
    let rt = LocalRuntime::new(Config { driver: DriverChoice::Force(kind), ..Config::default() })?;
    rt.block_on(async move {
        let svc = if args.stub {
            calc::service(Calculator::new("percall"))
        } else {
            Service::builder("null")
                .method(1, |_ctx, _r: Message<()>| async { Ok::<(), Status>(()) })
                .method(2, |_ctx, r: Message<Vec<u8>>| async move {
                    std::hint::black_box(r.len());
                    Ok::<(), Status>(())
                })
                .build()
        };
        let (server_tls, client_tls) = match args.tls {
            true => multispace_bench::ours::tls_pair().map(|(s, c)| (Some(s), Some(c)))?,
            false => (None, None),
        };
        let config = ServerConfig {
            datagram: args.udp,
            conn: ConnConfig { tls: server_tls, ..ConnConfig::default() },
            ..ServerConfig::default()
        };
        let server = Server::bind_with("127.0.0.1:0".parse()?, [svc], config)?;
        let addr = server.local_addr();
        spawn(server.serve()).detach();
        if args.stub {
            let c = CalcClient::new(addr);
            for _ in 0..args.calls {
                c.ping().await?;
            }
        } else {
            let transport = if args.udp { Transport::Udp } else { Transport::Tcp };
            let c = Client::with_config(addr, ConnConfig { transport, tls: client_tls, ..ConnConfig::default() });
            let payload = vec![7u8; args.bytes];
            for _ in 0..args.calls {
                match args.bytes {
                    0 => c.call::<(), ()>(1, &(), CallOptions::default()).await?,
                    _ => c.call::<Vec<u8>, ()>(2, &payload, CallOptions::default()).await?,
                };
            }
        }
        Ok::<_, anyhow::Error>(())
    })
}
