//! `multispace pingpong`: a server on one core, a client on another, null calls between them.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use multispace_rpc::{
    spawn, CallOptions, Client, ClientHandle, ConnConfig, DriverChoice, DriverKind, Message, RuntimeBuilder, Server,
    ServerConfig, Service, Status, Transport, WaitMode,
};

const NULL: u32 = 1;
const ECHO: u32 = 2;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Null calls to time.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Force a driver (default: io_uring if available, else epoll).
    #[arg(long, value_parser = ["uring", "epoll"])]
    driver: Option<String>,
    /// Spin instead of sleeping while idle (lowest latency, burns both cores).
    #[arg(long)]
    busy_poll: bool,
    /// Call over UDP datagram sessions instead of TCP.
    #[arg(long)]
    udp: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let driver = match args.driver.as_deref() {
        Some("uring") => DriverChoice::Force(DriverKind::Uring),
        Some("epoll") => DriverChoice::Force(DriverKind::Epoll),
        _ => DriverChoice::Auto,
    };
    let wait = if args.busy_poll { WaitMode::BusyPoll { idle_after: None } } else { WaitMode::Sleep };
    let rt = RuntimeBuilder::new().cores(2).driver(driver).wait(wait).build().context("starting the runtime")?;
    println!(
        "multispace demo: 2 cores, {} driver, {} waits",
        rt.core(0).driver_kind(),
        if args.busy_poll { "busy-poll" } else { "sleeping" }
    );

    let udp = args.udp;
    let addr =
        rt.core(0)
            .run(move || async move {
                let svc = Service::builder("demo")
                    .method(NULL, |_ctx, _req: Message<()>| async { Ok::<(), Status>(()) })
                    .method(ECHO, |_ctx, req: Message<String>| async move {
                        Ok::<String, Status>(req.as_str().to_uppercase())
                    })
                    .build();
                let config = ServerConfig { datagram: udp, ..ServerConfig::default() };
                let server = Server::bind_with("127.0.0.1:0".parse().expect("valid address"), [svc], config)?;
                let addr = server.local_addr();
                spawn(server.serve()).detach();
                Ok::<_, multispace_rpc::ServeError>(addr)
            })
            .context("server core stopped")??;
    println!("server listening on {addr} (core 0)");

    let calls = args.calls.max(100);
    let samples = rt
        .core(1)
        .run(move || async move {
            let transport = if udp { Transport::Udp } else { Transport::Tcp };
            let client = Client::with_config(addr, ConnConfig { transport, ..ConnConfig::for_this_core() });
            let hello =
                client.call::<String, String>(ECHO, &"hello, multispace".to_string(), CallOptions::default()).await?;
            println!("echo call -> {:?}", hello.as_str());
            for _ in 0..1000 {
                client.call::<(), ()>(NULL, &(), CallOptions::default()).await?;
            }
            let mut samples = Vec::with_capacity(calls);
            for _ in 0..calls {
                let t = Instant::now();
                client.call::<(), ()>(NULL, &(), CallOptions::default()).await?;
                samples.push(t.elapsed());
            }
            Ok::<_, multispace_rpc::CallError>(samples)
        })
        .context("client core stopped")??;
    let mut sorted = samples;
    sorted.sort();
    println!(
        "null call round trip over {} calls (core 1 -> core 0, {} loopback): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        sorted.len(),
        if udp { "UDP" } else { "TCP" },
        percentile(&sorted, 0.5).as_secs_f64() * 1e6,
        percentile(&sorted, 0.99).as_secs_f64() * 1e6,
        sorted.last().expect("non-empty").as_secs_f64() * 1e6,
    );

    // The same server from a plain thread through the thread-safe handle.
    let handle = ClientHandle::new(rt.core(1).clone(), addr);
    let r: Message<String> =
        handle.call_blocking(ECHO, &"from a plain thread".to_string(), CallOptions::timeout(Duration::from_secs(5)))?;
    println!("thread-safe handle call -> {:?}", r.as_str());
    rt.shutdown();
    Ok(())
}
