//! `multispace`: operator command line. For now it runs the loopback demo; node, cluster and
//! table commands arrive with their issues.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "multispace", version, about = "multispace cluster substrate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ping-pong null calls between two cores on loopback and print their latency.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args),
    }
}
