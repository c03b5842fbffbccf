//! `multispace`: operator command line — a node process, the local cluster demo, and the
//! two-core null-call demo.

mod call;
mod cluster;
mod ctl;
mod demo;
mod dht;
mod node;
mod out;
mod security;

use clap::{Parser, Subcommand};

// Nodes allocate on several threads per request (rpc, raft, disk); mimalloc does that at a
// fraction of glibc's cost (bench/src/bin/dht.rs measures the table with it too).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "multispace", version, about = "multispace cluster substrate", after_help = out::EXIT_CODES)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main demo: a local cluster of node processes running Keiretsu, with nodes killed
    /// and restarted while messages flow.
    #[command(alias = "cluster")]
    Demo(cluster::ClusterArgs),
    /// One node process (what `demo` starts): `node [start]` runs one, `node drain` retires
    /// one gracefully.
    Node(Box<node::NodeCmd>),
    /// The cluster's nodes as one node sees them (any node answers).
    Members(ctl::MembersArgs),
    /// Service instances: list them, start and stop them anywhere in the cluster.
    Svc(ctl::SvcArgs),
    /// Call SERVICE.METHOD of a running instance with JSON arguments and print the JSON result.
    Call(call::CallArgs),
    /// The replicated table: run a node, or get/put/del/cas/stat as a client.
    Dht(dht::DhtArgs),
    /// Ping-pong null calls between two cores on loopback and print their latency.
    Pingpong(demo::DemoArgs),
    /// Print a shell completion script: `source <(multispace completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// A cluster CA and node/client certificates for mutual TLS.
    Cert(security::CertArgs),
}

/// Logging without `RUST_LOG`: warnings, and the calls served as part of a trace (what
/// `--trace` asks every process to show).
const DEFAULT_LOG: &str = "warn,multispace_rpc::calls=info";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(out::exit_code(&e));
    }
}

fn run() -> anyhow::Result<()> {
    // `multispace node [start] --config FILE`: the file's settings become defaults that the
    // environment and flags override (read before clap, which reads the environment).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("node") && argv.get(2).map(String::as_str) != Some("drain") {
        let flag = argv.iter().position(|a| a == "--config").and_then(|i| argv.get(i + 1).cloned());
        let inline = argv.iter().find_map(|a| a.strip_prefix("--config=").map(str::to_string));
        let env = std::env::var("MULTISPACE_CONFIG").ok();
        if let Some(path) = flag.or(inline).or(env) {
            node::apply_config_file(std::path::Path::new(&path))?;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG.into()))
        .with_writer(std::io::stderr)
        .with_ansi(out::log_colour())
        .init();
    match Cli::parse().command {
        Command::Demo(args) => cluster::run(args),
        Command::Node(args) => node::run(*args),
        Command::Pingpong(args) => demo::run(args),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "multispace", &mut text);
            out::print(&String::from_utf8_lossy(&text));
            Ok(())
        }
        Command::Dht(args) => dht::run(args),
        Command::Cert(args) => security::run(args),
        Command::Members(args) => ctl::run_members(args),
        Command::Svc(args) => ctl::run_svc(args),
        Command::Call(args) => args.trace.run(|| call::run(args)),
    }
}
