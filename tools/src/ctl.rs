//! Operator commands against a running node's control interface: `members`, `svc ls`,
//! `svc types`, `svc start`, `svc stop`. Any node answers for the whole cluster (its
//! registry); starting and stopping go to the node that hosts (or is to host) the instance.
//!
//! ```text
//! multispace members --node 10.77.0.1:47901 --watch
//! multispace svc ls -o json
//! multispace svc start keiretsu --on 2
//! multispace svc stop 0x200000001
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use multispace_node::control::{InstanceRecord, MemberRecord, NodeControlClient};
use multispace_rpc::{Client, Config, LocalRuntime};
use serde_json::json;

use crate::out::{self, Format, Table, Tone};
use crate::security::TlsArgs;

/// The node's control port when `multispace node` is not told otherwise.
pub const DEFAULT_CONTROL_PORT: u16 = 47_901;

/// Which node to ask, and as whom.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeConn {
    /// A node's control address (any node answers for the cluster).
    #[arg(long = "node", env = "MULTISPACE_NODE", default_value = "127.0.0.1:47901")]
    pub node: SocketAddr,
    /// Give up on a call after this many milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `--trace`: follow one command's calls across hosts.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct TraceArg {
    /// Start a trace for this command's calls and print its id on stderr. Every node and
    /// table process the calls reach logs them with that id (`multispace_rpc::calls` at
    /// INFO, on by default), hop by hop.
    #[arg(long)]
    pub trace: bool,
}

impl TraceArg {
    /// Run `f` (the command) inside a new trace if `--trace` was given.
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        if !self.trace {
            return f();
        }
        let t = multispace_rpc::trace::start();
        eprintln!("trace {}", t.trace_id);
        // The command's runtime runs on this thread, so every call it makes carries the trace.
        multispace_rpc::trace::scope(t, f)
    }
}

#[derive(clap::Args, Debug)]
pub struct MembersArgs {
    /// Redraw as the membership changes, until interrupted.
    #[arg(long, short = 'w')]
    watch: bool,
    /// Milliseconds between refreshes with --watch.
    #[arg(long, default_value_t = 1_000)]
    interval_ms: u64,
    /// With --watch: stop after this many refreshes (for scripts).
    #[arg(long)]
    count: Option<u64>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    output: Format,
    #[command(flatten)]
    conn: NodeConn,
}

#[derive(clap::Args, Debug)]
pub struct SvcArgs {
    #[command(subcommand)]
    command: SvcCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SvcCommand {
    /// Every service instance in the cluster: where it runs, its load, whether it is up.
    Ls {
        /// Only instances of this service (any case).
        service: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
        #[command(flatten)]
        conn: NodeConn,
    },
    /// The service types the node can start.
    Types {
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
        #[command(flatten)]
        conn: NodeConn,
    },
    /// Start an instance of SERVICE (on the node asked, or on node --on).
    Start {
        service: String,
        /// The id of the node to start it on (looked up in the cluster).
        #[arg(long)]
        on: Option<u64>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
        #[command(flatten)]
        conn: NodeConn,
    },
    /// Stop the instance ID (decimal or 0x hex, as `svc ls` shows it) on whichever node hosts
    /// it. Exit code 3 if there is no such instance.
    Stop {
        #[arg(value_parser = parse_id)]
        id: u64,
        #[command(flatten)]
        conn: NodeConn,
    },
}

pub(crate) fn parse_id(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("`{s}` is not an instance id (decimal or 0x hex): {e}"))
}

pub(crate) fn runtime(conn: &NodeConn) -> anyhow::Result<LocalRuntime> {
    let conn = conn.tls.conn("admin")?;
    LocalRuntime::new(Config { conn, ..Config::default() }).context("starting the runtime")
}

pub(crate) fn control(addr: SocketAddr) -> NodeControlClient {
    NodeControlClient::from_client(Client::new(addr))
}

/// Await `f` for at most the connection's timeout.
pub(crate) async fn bounded<T>(
    conn: &NodeConn,
    what: &str,
    f: impl std::future::Future<Output = Result<T, multispace_rpc::CallError>>,
) -> anyhow::Result<T> {
    match multispace_rpc::runtime::time::timeout(Duration::from_millis(conn.timeout_ms), f).await {
        Ok(r) => r.with_context(|| format!("{what} (node {})", conn.node)),
        Err(_) => Err(anyhow::Error::new(multispace_rpc::CallError::DeadlineExceeded))
            .with_context(|| format!("{what} (node {})", conn.node)),
    }
}

async fn members(conn: &NodeConn) -> anyhow::Result<Vec<MemberRecord>> {
    let m = bounded(conn, "listing members", control(conn.node).members()).await?;
    Ok(m.to_owned()?)
}

async fn instances(conn: &NodeConn) -> anyhow::Result<Vec<InstanceRecord>> {
    let v = bounded(conn, "listing instances", control(conn.node).instances()).await?;
    Ok(v.to_owned()?)
}

fn node_of(instance: u64) -> u64 {
    instance >> 32
}

fn ago(ms: u64) -> String {
    match ms {
        0 => "-".into(),
        ms if ms < 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        ms => format!("{}s", ms / 1000),
    }
}

fn members_table(m: &[MemberRecord]) -> Table {
    let mut t = Table::new(&["NODE", "CONTROL", ">INCARNATION", ">INSTANCES", ">UP", ">HEARD", "KEY"]);
    for r in m {
        let node = if r.this_node { format!("{}*", r.node) } else { r.node.to_string() };
        let up_tone = if r.up < r.instances { Tone::Bad } else { Tone::Good };
        t.toned_row(vec![
            (node, Tone::Plain),
            (r.control.clone(), Tone::Plain),
            (r.incarnation.to_string(), Tone::Dim),
            (r.instances.to_string(), Tone::Plain),
            (r.up.to_string(), up_tone),
            (ago(r.last_heard_ms), Tone::Plain),
            (r.key_id.map_or("-".into(), |k| k.to_string()), Tone::Plain),
        ]);
    }
    t
}

fn members_json(m: &[MemberRecord]) -> serde_json::Value {
    json!(m
        .iter()
        .map(|r| json!({
            "node": r.node,
            "control": r.control,
            "incarnation": r.incarnation,
            "instances": r.instances,
            "up": r.up,
            "last_heard_ms": r.last_heard_ms,
            "key_id": r.key_id,
            "this_node": r.this_node,
        }))
        .collect::<Vec<_>>())
}

fn instances_table(v: &[InstanceRecord]) -> Table {
    let mut t = Table::new(&["ID", "SERVICE", ">NODE", "ADDRESS", ">LOAD", "STATE"]);
    for r in v {
        let state = if r.up { ("up".to_string(), Tone::Good) } else { ("down".to_string(), Tone::Bad) };
        t.toned_row(vec![
            (format!("{:#x}", r.id), Tone::Plain),
            (r.service.clone(), Tone::Plain),
            (node_of(r.id).to_string(), Tone::Plain),
            (r.addr.clone(), Tone::Plain),
            (r.load.to_string(), Tone::Plain),
            state,
        ]);
    }
    t
}

fn instance_json(r: &InstanceRecord) -> serde_json::Value {
    json!({
        "id": r.id,
        "id_hex": format!("{:#x}", r.id),
        "service": r.service,
        "node": node_of(r.id),
        "addr": r.addr,
        "load": r.load,
        "up": r.up,
    })
}

pub fn run_members(args: MembersArgs) -> anyhow::Result<()> {
    runtime(&args.conn)?.block_on(async move {
        if !args.watch {
            let m = members(&args.conn).await?;
            match args.output {
                Format::Table => out::print(&members_table(&m).render(out::colour())),
                Format::Json => out::print_json(&members_json(&m)),
            }
            return Ok(());
        }
        // On a terminal: redraw in place. Piped: print a snapshot (JSON: one line each) only
        // when the membership changes, so `--watch | tee` makes a log of changes.
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let mut last: Option<Vec<(u64, u64, u32, u32)>> = None;
        let mut refreshes = 0u64;
        loop {
            let text = match members(&args.conn).await {
                Ok(m) => {
                    let shape: Vec<_> = m.iter().map(|r| (r.node, r.incarnation, r.instances, r.up)).collect();
                    let changed = last.as_ref() != Some(&shape);
                    last = Some(shape);
                    match args.output {
                        _ if !terminal && !changed => None,
                        Format::Json => Some(format!("{}\n", members_json(&m))),
                        Format::Table => {
                            let stamp = humantime_now();
                            Some(format!(
                                "{stamp}  via {}\n{}",
                                args.conn.node,
                                members_table(&m).render(out::colour())
                            ))
                        }
                    }
                }
                // A watch outlives a node restart: say so and keep trying.
                Err(e) => Some(format!("{}  {e:#}\n", humantime_now())),
            };
            if let Some(text) = text {
                if terminal {
                    out::print("\x1b[H\x1b[2J");
                } else if args.output == Format::Table && refreshes > 0 {
                    out::print("\n");
                }
                out::print(&text);
            }
            refreshes += 1;
            if args.count.is_some_and(|n| refreshes >= n) {
                return Ok(());
            }
            multispace_rpc::runtime::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    })
}

/// Wall-clock time of day, UTC, to the second (for watch headers).
fn humantime_now() -> String {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    format!("{:02}:{:02}:{:02}Z", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

pub fn run_svc(args: SvcArgs) -> anyhow::Result<()> {
    match args.command {
        SvcCommand::Ls { service, output, conn } => runtime(&conn)?.block_on(async move {
            let mut v = instances(&conn).await?;
            if let Some(s) = &service {
                v.retain(|r| r.service.eq_ignore_ascii_case(s));
            }
            match output {
                Format::Table => out::print(&instances_table(&v).render(out::colour())),
                Format::Json => out::print_json(&json!(v.iter().map(instance_json).collect::<Vec<_>>())),
            }
            Ok(())
        }),
        SvcCommand::Types { output, conn } => runtime(&conn)?.block_on(async move {
            let types = bounded(&conn, "listing service types", control(conn.node).service_types()).await?;
            let types: Vec<String> = types.to_owned()?;
            match output {
                Format::Table => out::print(&types.iter().map(|t| format!("{t}\n")).collect::<String>()),
                Format::Json => out::print_json(&json!(types)),
            }
            Ok(())
        }),
        SvcCommand::Start { service, on, output, conn } => runtime(&conn)?.block_on(async move {
            let target = match on {
                None => conn.node,
                Some(id) => control_of(&conn, id).await?,
            };
            // Service type names are matched without regard to case (`keiretsu` or `Keiretsu`).
            let types = bounded(&conn, "listing service types", control(target).service_types()).await?;
            let types: Vec<String> = types.to_owned()?;
            let Some(service) = types.iter().find(|t| t.eq_ignore_ascii_case(&service)).cloned() else {
                eprintln!("node {target} cannot start `{service}` (it knows: {})", types.join(", "));
                std::process::exit(out::exit::NOT_FOUND);
            };
            let rec = bounded(&conn, "starting the instance", control(target).start_instance(service)).await?;
            let rec: InstanceRecord = rec.to_owned()?;
            match output {
                Format::Table => out::print(&instances_table(std::slice::from_ref(&rec)).render(out::colour())),
                Format::Json => out::print_json(&instance_json(&rec)),
            }
            Ok(())
        }),
        SvcCommand::Stop { id, conn } => runtime(&conn)?.block_on(async move {
            let target = control_of(&conn, node_of(id)).await?;
            let stopped = bounded(&conn, "stopping the instance", control(target).stop_instance(id)).await?;
            if !*stopped {
                eprintln!("no instance {id:#x} on node {}", node_of(id));
                std::process::exit(out::exit::NOT_FOUND);
            }
            out::print(&format!("stopped {id:#x} on node {}\n", node_of(id)));
            Ok(())
        }),
    }
}

/// `multispace node drain`: start the drain, then wait until the node is gone.
pub fn drain(conn: &NodeConn, grace_ms: u64) -> anyhow::Result<()> {
    runtime(conn)?.block_on(async move {
        let started = std::time::Instant::now();
        let in_flight = bounded(conn, "starting the drain", control(conn.node).drain(grace_ms)).await?;
        out::print(&format!(
            "node at {}: draining ({} calls in flight, at most {grace_ms} ms)\n",
            conn.node,
            in_flight.to_native()
        ));
        // Gone when its control server stops answering; bounded by the grace period plus a
        // margin for the goodbye and the exit.
        let limit = Duration::from_millis(grace_ms) + Duration::from_secs(10);
        while started.elapsed() < limit {
            multispace_rpc::runtime::time::sleep(Duration::from_millis(100)).await;
            let ctl = control(conn.node);
            // A refused or lost connection means the node is gone; a slow answer does not.
            if let Ok(Err(_)) = multispace_rpc::runtime::time::timeout(Duration::from_millis(500), ctl.members()).await
            {
                out::print(&format!("node at {}: gone after {} ms\n", conn.node, started.elapsed().as_millis()));
                return Ok(());
            }
        }
        anyhow::bail!("node at {} still answers {} ms after the drain began", conn.node, limit.as_millis())
    })
}

/// The control address of node `id`, from the cluster's membership as `conn.node` sees it.
async fn control_of(conn: &NodeConn, id: u64) -> anyhow::Result<SocketAddr> {
    let m = members(conn).await?;
    let Some(r) = m.iter().find(|r| r.node == id) else {
        let known: Vec<u64> = m.iter().map(|r| r.node).collect();
        eprintln!("node {id} is not a member (members: {known:?})");
        std::process::exit(out::exit::NOT_FOUND);
    };
    r.control.parse().with_context(|| format!("node {id}'s control address `{}`", r.control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_read_as_decimal_or_hex() {
        assert_eq!(parse_id("0x200000001"), Ok(0x2_0000_0001));
        assert_eq!(parse_id("42"), Ok(42));
        assert!(parse_id("0xzz").is_err());
        assert_eq!(node_of(0x2_0000_0001), 2);
    }

    #[test]
    fn member_rows_mark_the_answering_node_and_missing_instances() {
        let m = vec![
            MemberRecord {
                node: 1,
                incarnation: 7,
                control: "127.0.0.1:1".into(),
                last_heard_ms: 0,
                instances: 1,
                up: 1,
                key_id: Some(0),
                this_node: true,
            },
            MemberRecord {
                node: 2,
                incarnation: 9,
                control: "127.0.0.1:2".into(),
                last_heard_ms: 1500,
                instances: 2,
                up: 1,
                key_id: None,
                this_node: false,
            },
        ];
        let text = members_table(&m).render(false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("1*") && lines[2].contains("1.5s") && lines[2].ends_with('-'), "{text}");
        let j = members_json(&m);
        assert_eq!(j[1]["key_id"], serde_json::Value::Null);
        assert_eq!(j[0]["this_node"], true);
    }
}
