//! `multispace dht`: a replicated-table node process, and a command-line client of the table.
//!
//! ```text
//! multispace dht serve --id 1 --nodes 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103 --data-dir /tmp/n1
//! multispace dht put greeting hello --seeds 127.0.0.1:7101
//! multispace dht get greeting --seeds 127.0.0.1:7101
//! multispace dht stat --seeds 127.0.0.1:7101 -o json
//! multispace dht serve --id 4 --nodes 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103,4=127.0.0.1:7104 --data-dir /tmp/n4 --join
//! multispace dht member --group 1 add-learner 4 127.0.0.1:7104
//! multispace dht member --group 1 promote 4
//! multispace dht member --group 1 remove 1
//! ```
//! Exit codes: as `multispace --help` lists them (3: key not found, 4: compare failed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use multispace_dht::api::table::{ClusterView, MemberChange, ReplicaStatus};
use multispace_dht::client::{ClientConfig, DhtClient};
use multispace_dht::maps::{Maps, META_GROUP};
use multispace_dht::server::{DhtConfig, DhtServer, Durability};
use multispace_rpc::{Config, LocalRuntime};

use serde_json::json;

use crate::ctl;
use crate::out::{self, Format, Table, Tone};
use crate::security::TlsArgs;
use multispace_node::admin::{self, AdminServer, Response as AdminResponse};

#[derive(clap::Args, Debug)]
pub struct DhtArgs {
    #[command(subcommand)]
    command: DhtCommand,
}

#[derive(clap::Subcommand, Debug)]
enum DhtCommand {
    /// Run a table node until killed.
    Serve(ServeArgs),
    /// Print the value of a key (exit code 3 if absent).
    Get {
        key: String,
        /// Any replica's value, possibly stale, instead of a linearizable read.
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Store a value under a key.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Remove a key.
    Del {
        key: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Set a key to NEW only if it holds EXPECTED ("" for absent); exit code 4 if it did not.
    Cas {
        key: String,
        expected: String,
        new: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Change a group's members through its leader: add a learner (it catches up by
    /// snapshot while writes go on), promote it to a voter, or remove a member.
    Member {
        /// The group (partition) to change.
        #[arg(long)]
        group: u64,
        #[command(subcommand)]
        change: MemberCmd,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Every node's replicas: role, term, leader, applied index, keys.
    Stat {
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: Format,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

#[derive(clap::Subcommand, Debug)]
enum MemberCmd {
    /// Add NODE (serving at ADDR, started with `serve --join`) as a learner.
    AddLearner { node: u64, addr: SocketAddr },
    /// Make learner NODE a voter.
    Promote { node: u64 },
    /// Remove NODE from the group.
    Remove { node: u64 },
}

#[derive(clap::Args, Debug)]
struct ConnArgs {
    /// Nodes to learn the cluster from (comma-separated `ip:port`).
    #[arg(long, env = "MULTISPACE_DHT_SEEDS", value_delimiter = ',', default_value = "127.0.0.1:7101")]
    seeds: Vec<SocketAddr>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    trace: ctl::TraceArg,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// This node's id.
    #[arg(long)]
    pub id: u64,
    /// Every node of the table as `id=ip:port`, comma-separated (the same list on every node).
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Partitions (replica groups) the key space is split into.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Replicas per partition.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Where the log and snapshots live; writes are acknowledged once a majority fsynced.
    #[arg(long, conflicts_with = "memory")]
    pub data_dir: Option<PathBuf>,
    /// Keep everything in memory: writes are acknowledged once a majority holds them. A node
    /// restarted in this mode has lost its state and must rejoin under a new id (`--join`):
    /// the others refuse it under its old id, and it stops.
    #[arg(long)]
    pub memory: bool,
    /// Host no group at start: wait to be added to groups (`multispace dht member ...
    /// add-learner`), as a replacement or an extra node.
    #[arg(long)]
    pub join: bool,
    /// Raft tick in milliseconds (elections after 10-20 ticks without a leader).
    #[arg(long, default_value_t = 20)]
    pub tick_ms: u64,
    /// Where the admin endpoint serves /metrics (Prometheus: rpc calls per method, the
    /// replicas' role, term, applied index and keys, fsyncs, the I/O driver), /healthz and
    /// /status.json (HTTP). The default is a free loopback port, printed at start (several
    /// table nodes may share a host).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin: SocketAddr,
    /// No admin endpoint.
    #[arg(long, conflicts_with = "admin")]
    pub no_admin: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ServeArgs {
    pub fn config(&self) -> anyhow::Result<DhtConfig> {
        let mut nodes = BTreeMap::new();
        for n in &self.nodes {
            let (id, addr) = n.split_once('=').with_context(|| format!("`{n}` is not id=ip:port"))?;
            let id: u64 = id.parse().with_context(|| format!("node id in `{n}`"))?;
            let addr: SocketAddr = addr.parse().with_context(|| format!("address in `{n}`"))?;
            nodes.insert(id, addr);
        }
        let ids: Vec<u64> = nodes.keys().copied().collect();
        // A joining node's map only routes keys to groups (slot ranges depend on the partition
        // count alone); it learns each group's members from the group.
        let replicas = if self.join { self.replicas.min(ids.len()) } else { self.replicas };
        let maps = Maps::even(&ids, self.partitions, replicas)?;
        let durability = match (&self.data_dir, self.memory) {
            (Some(_), _) => Durability::Durable,
            (None, true) => Durability::Memory,
            (None, false) => bail!("say where the data lives (--data-dir DIR) or choose --memory"),
        };
        let mut config = DhtConfig::new(self.id, nodes, maps, durability);
        config.data_dir = self.data_dir.clone();
        config.tick = Duration::from_millis(self.tick_ms);
        config.join = self.join;
        Ok(config)
    }
}

/// A runtime whose connections are secured as `tls` says, presenting `name` by default.
fn rt(tls: &TlsArgs, name: &str) -> anyhow::Result<LocalRuntime> {
    let conn = tls.conn(name)?;
    LocalRuntime::new(Config { conn, ..Config::default() }).context("starting the runtime")
}

async fn client(conn: &ConnArgs) -> anyhow::Result<DhtClient> {
    let config = ClientConfig {
        deadline: Duration::from_millis(conn.timeout_ms),
        attempt_timeout: Duration::from_millis(conn.timeout_ms.min(3000)),
        ..ClientConfig::default()
    };
    Ok(DhtClient::connect(&conn.seeds, config).await?)
}

fn print_value(v: &[u8]) {
    match std::str::from_utf8(v) {
        Ok(s) => out::print(&format!("{s}\n")),
        Err(_) => out::print(&format!("{v:?}\n")),
    }
}

pub fn run(args: DhtArgs) -> anyhow::Result<()> {
    let trace = match &args.command {
        DhtCommand::Serve(_) => ctl::TraceArg::default(),
        DhtCommand::Get { conn, .. }
        | DhtCommand::Put { conn, .. }
        | DhtCommand::Del { conn, .. }
        | DhtCommand::Cas { conn, .. }
        | DhtCommand::Member { conn, .. }
        | DhtCommand::Stat { conn, .. } => conn.trace,
    };
    trace.run(|| run_command(args.command))
}

fn run_command(command: DhtCommand) -> anyhow::Result<()> {
    match command {
        DhtCommand::Serve(s) => serve(s),
        DhtCommand::Get { key, stale, conn } => rt(&conn.tls, "admin")?.block_on(async move {
            let c = client(&conn).await?;
            let v = if stale { c.get_stale(key.as_bytes()).await? } else { c.get(key.as_bytes()).await? };
            match v {
                Some(v) => print_value(&v),
                None => {
                    eprintln!("{key}: not found");
                    std::process::exit(out::exit::NOT_FOUND);
                }
            }
            Ok(())
        }),
        DhtCommand::Put { key, value, conn } => rt(&conn.tls, "admin")?.block_on(async move {
            client(&conn).await?.put(key.as_bytes(), value.as_bytes()).await?;
            Ok(())
        }),
        DhtCommand::Del { key, conn } => rt(&conn.tls, "admin")?.block_on(async move {
            client(&conn).await?.delete(key.as_bytes()).await?;
            Ok(())
        }),
        DhtCommand::Cas { key, expected, new, conn } => rt(&conn.tls, "admin")?.block_on(async move {
            let expected = (!expected.is_empty()).then_some(expected.as_bytes());
            match client(&conn).await?.cas(key.as_bytes(), expected, Some(new.as_bytes())).await? {
                Ok(()) => Ok(()),
                Err(current) => {
                    eprintln!(
                        "{key}: compare failed, it holds {:?}",
                        current.map(|v| String::from_utf8_lossy(&v).into_owned())
                    );
                    std::process::exit(out::exit::COMPARE_FAILED);
                }
            }
        }),
        DhtCommand::Member { group, change, conn } => rt(&conn.tls, "admin")?.block_on(async move {
            let change = match change {
                MemberCmd::AddLearner { node, addr } => MemberChange::AddLearner { node, addr: addr.to_string() },
                MemberCmd::Promote { node } => MemberChange::Promote { node },
                MemberCmd::Remove { node } => MemberChange::Remove { node },
            };
            let epoch = client(&conn).await?.change_members(group, change).await?;
            println!("group {group}: done, epoch {epoch}");
            Ok(())
        }),
        DhtCommand::Stat { output, conn } => rt(&conn.tls, "admin")?.block_on(stat(output, conn)),
    }
}

/// Each table node with what it says of its replicas (`None`: it did not answer).
pub(crate) type NodeViews = Vec<(u64, SocketAddr, Option<ClusterView>)>;

/// Ask every node the client knows for its view, `timeout` each.
pub(crate) async fn views(c: &DhtClient, timeout: Duration) -> NodeViews {
    let mut rows = Vec::new();
    for (id, addr) in c.nodes() {
        rows.push((id, addr, DhtClient::view_of(addr, timeout).await.ok()));
    }
    rows
}

/// The table by partition, as the node's status page shows it: each group's leader (the
/// replica that says it leads, in the highest term), term, members and every replica's role,
/// applied index and keys; the metadata group (which holds the maps) the same way, apart;
/// and how many table nodes answered.
pub(crate) fn partitions_json(rows: &NodeViews) -> serde_json::Value {
    let mut groups: BTreeMap<u64, Vec<(u64, &ReplicaStatus)>> = BTreeMap::new();
    for (id, _, view) in rows {
        for r in view.iter().flat_map(|v| &v.replicas) {
            groups.entry(r.group).or_default().push((*id, r));
        }
    }
    let mut partitions: Vec<serde_json::Value> = groups
        .iter()
        .map(|(group, replicas)| {
            let leader = replicas.iter().filter(|(_, r)| r.role == "leader").max_by_key(|(_, r)| r.term);
            // Membership as the most advanced replica has applied it.
            let newest = replicas.iter().max_by_key(|(_, r)| (r.epoch, r.applied)).map(|(_, r)| *r);
            json!({
                "group": group,
                "leader": leader.map(|(id, _)| id),
                "term": replicas.iter().map(|(_, r)| r.term).max(),
                "epoch": newest.map(|r| r.epoch),
                "voters": newest.map(|r| r.voters.clone()),
                "learners": newest.map(|r| r.learners.clone()),
                "keys": leader.or(replicas.first()).map(|(_, r)| r.keys),
                "replicas": replicas.iter().map(|(id, r)| json!({
                    "node": id, "role": r.role, "applied": r.applied, "keys": r.keys,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let failed: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|(id, _, v)| v.as_ref()?.failed.as_ref().map(|why| json!({ "node": id, "failed": why })))
        .collect();
    let metadata = match groups.keys().next() {
        Some(&META_GROUP) => partitions.remove(0),
        _ => serde_json::Value::Null,
    };
    json!({
        "nodes": rows.len(),
        "reachable": rows.iter().filter(|(_, _, v)| v.is_some()).count(),
        "failed": failed,
        "partitions": partitions,
        "metadata": metadata,
    })
}

/// Keep `into` up to date with the table's partitions (for a node's status page): asks
/// every table node once a second, learning them from `seeds`. Runs until its core stops.
pub(crate) async fn watch_partitions(seeds: Vec<SocketAddr>, into: std::rc::Rc<std::cell::RefCell<serde_json::Value>>) {
    let config = ClientConfig {
        deadline: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let mut client = None;
    loop {
        if client.is_none() {
            match DhtClient::connect(&seeds, config).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    *into.borrow_mut() = json!({ "partitions": [], "error": format!("no table node answered: {e}") })
                }
            }
        }
        if let Some(c) = &client {
            let rows = views(c, Duration::from_millis(500)).await;
            *into.borrow_mut() = partitions_json(&rows);
        }
        multispace_rpc::runtime::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn stat(output: Format, conn: ConnArgs) -> anyhow::Result<()> {
    let c = client(&conn).await?;
    let rows = views(&c, Duration::from_millis(conn.timeout_ms.min(2000))).await;
    match output {
        Format::Table => {
            let mut t = Table::new(&["NODE", "ADDRESS", ">GROUP", "ROLE", ">TERM", ">LEADER", ">APPLIED", ">KEYS"]);
            for (id, addr, view) in &rows {
                let (id, addr) = ((id.to_string(), Tone::Plain), (addr.to_string(), Tone::Plain));
                match view {
                    None => t.toned_row(vec![id, addr, ("-".into(), Tone::Plain), ("unreachable".into(), Tone::Bad)]),
                    Some(v) if v.failed.is_some() => {
                        let why = v.failed.clone().unwrap_or_default();
                        t.toned_row(vec![id, addr, ("-".into(), Tone::Plain), (why, Tone::Bad)]);
                    }
                    Some(v) => {
                        for r in &v.replicas {
                            let role = if r.role == "leader" { Tone::Good } else { Tone::Plain };
                            t.toned_row(vec![
                                id.clone(),
                                addr.clone(),
                                (r.group.to_string(), Tone::Plain),
                                (r.role.clone(), role),
                                (r.term.to_string(), Tone::Plain),
                                (r.leader.map_or("-".to_string(), |l| l.to_string()), Tone::Plain),
                                (r.applied.to_string(), Tone::Plain),
                                (r.keys.to_string(), Tone::Plain),
                            ]);
                        }
                    }
                }
            }
            out::print(&t.render(out::colour()));
        }
        Format::Json => {
            let nodes: Vec<serde_json::Value> = rows
                .iter()
                .map(|(id, addr, view)| match view {
                    None => json!({ "node": id, "address": addr.to_string(), "reachable": false }),
                    Some(v) => json!({
                        "node": id,
                        "address": addr.to_string(),
                        "reachable": true,
                        "durability": v.durability.to_string(),
                        "maps_from": v.maps_from.to_string(),
                        "failed": v.failed,
                        "replicas": v.replicas.iter().map(|r| json!({
                            "group": r.group,
                            "role": r.role,
                            "term": r.term,
                            "leader": r.leader,
                            "applied": r.applied,
                            "last_index": r.last_index,
                            "keys": r.keys,
                            "voters": r.voters,
                            "learners": r.learners,
                        })).collect::<Vec<_>>(),
                    }),
                })
                .collect();
            out::print_json(&json!(nodes));
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let rt = rt(&args.tls, &format!("node-{}", args.id))?;
    rt.block_on(async move {
        let server = std::rc::Rc::new(DhtServer::start(config).context("starting the table node")?);
        println!("dht node {}: serving at {}", args.id, server.local_addr());
        let _admin = match args.no_admin {
            true => None,
            false => {
                let (s, id, durability) = (server.clone(), args.id, if args.memory { "memory" } else { "durable" });
                let admin = AdminServer::serve(args.admin, move |method, path| {
                    let view = TableNodeView {
                        node: id,
                        durability,
                        replicas: s.status(),
                        fsyncs: s.fsyncs(),
                        failed: s.failed(),
                    };
                    table_route(method, path, &view)
                })
                .with_context(|| {
                    format!("admin endpoint on {} (--admin HOST:0 picks a free port, --no-admin for none)", args.admin)
                })?;
                println!("dht node {}: admin at http://{}/metrics", args.id, admin.local_addr());
                Some(admin)
            }
        };
        // Serve until killed.
        std::future::pending::<()>().await;
        drop(server);
        Ok(())
    })
}

/// What a table node's admin endpoint reports, read fresh for each request.
struct TableNodeView {
    node: u64,
    durability: &'static str,
    replicas: Vec<ReplicaStatus>,
    fsyncs: u64,
    failed: Option<String>,
}

/// A table node's admin endpoint (sans-IO): `/healthz` (503 once its disk failed),
/// `/metrics` (its replicas, fsyncs, and the core's rpc and driver metrics) and
/// `/status.json` (its replicas).
fn table_route(method: &str, path: &str, v: &TableNodeView) -> AdminResponse {
    if method != "GET" && method != "HEAD" {
        return AdminResponse::text(405, "only GET\n");
    }
    match path {
        "/healthz" => match &v.failed {
            None => AdminResponse::text(200, "ok\n"),
            Some(why) => AdminResponse::text(503, format!("{why}\n")),
        },
        "/metrics" => {
            let mut out = String::new();
            let info = format!("node=\"{}\",durability=\"{}\"", v.node, v.durability);
            admin::counter(&mut out, "multispace_dht_info", "This table node.", "gauge", &[(info, 1)]);
            let failed = u64::from(v.failed.is_some());
            admin::counter(
                &mut out,
                "multispace_dht_failed",
                "1 once the node stopped serving (disk failure).",
                "gauge",
                &[(String::new(), failed)],
            );
            admin::counter(
                &mut out,
                "multispace_dht_fsyncs_total",
                "Log fdatasyncs (0 in memory mode).",
                "counter",
                &[(String::new(), v.fsyncs)],
            );
            // Per-group gauges: name, help, value.
            type Gauge = (&'static str, &'static str, fn(&ReplicaStatus) -> u64);
            const GAUGES: [Gauge; 5] = [
                ("multispace_dht_replica_leader", "1 if this replica leads its group.", |r| {
                    u64::from(r.role == "leader")
                }),
                ("multispace_dht_replica_term", "The replica's raft term.", |r| r.term),
                ("multispace_dht_replica_applied_index", "Last log index applied.", |r| r.applied),
                ("multispace_dht_replica_last_index", "Last log index.", |r| r.last_index),
                ("multispace_dht_replica_keys", "Keys held.", |r| r.keys),
            ];
            for (name, help, value) in GAUGES {
                let lines: Vec<(String, u64)> =
                    v.replicas.iter().map(|r| (format!("group=\"{}\"", r.group), value(r))).collect();
                admin::counter(&mut out, name, help, "gauge", &lines);
            }
            admin::core_metrics(&mut out);
            AdminResponse::new(200, "text/plain; version=0.0.4; charset=utf-8", out)
        }
        "/status.json" => {
            let replicas: Vec<serde_json::Value> = v
                .replicas
                .iter()
                .map(|r| {
                    json!({
                        "group": r.group, "role": r.role, "term": r.term, "leader": r.leader, "epoch": r.epoch,
                        "applied": r.applied, "last_index": r.last_index, "keys": r.keys,
                        "voters": r.voters, "learners": r.learners,
                    })
                })
                .collect();
            let body = json!({ "node": v.node, "durability": v.durability, "failed": v.failed, "fsyncs": v.fsyncs, "replicas": replicas });
            AdminResponse::new(200, "application/json", body.to_string())
        }
        _ => AdminResponse::text(404, "not found: try /metrics, /healthz, /status.json\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(group: u64, role: &str, term: u64, leader: Option<u64>, applied: u64, keys: u64) -> ReplicaStatus {
        ReplicaStatus {
            group,
            epoch: 1,
            role: role.into(),
            term,
            leader,
            applied,
            last_index: applied,
            keys,
            voters: vec![1, 2, 3],
            learners: vec![],
        }
    }

    fn view(node: u64, replicas: Vec<ReplicaStatus>) -> Option<ClusterView> {
        let maps = Maps::even(&[1, 2, 3], 1, 3).unwrap();
        Some(ClusterView {
            node,
            maps,
            maps_from: "metadata group".into(),
            nodes: vec![],
            replicas,
            durability: "durable".into(),
            failed: None,
        })
    }

    #[test]
    fn a_table_nodes_admin_endpoint_reports_its_replicas() {
        let mut v = TableNodeView {
            node: 2,
            durability: "durable",
            replicas: vec![replica(1, "leader", 3, Some(2), 12, 5), replica(2, "follower", 4, Some(1), 7, 2)],
            fsyncs: 40,
            failed: None,
        };
        let m = table_route("GET", "/metrics", &v);
        assert_eq!(m.status, 200);
        for line in [
            "multispace_dht_info{node=\"2\",durability=\"durable\"} 1",
            "multispace_dht_fsyncs_total 40",
            "multispace_dht_replica_leader{group=\"1\"} 1",
            "multispace_dht_replica_leader{group=\"2\"} 0",
            "multispace_dht_replica_term{group=\"2\"} 4",
            "multispace_dht_replica_keys{group=\"1\"} 5",
        ] {
            assert!(m.body.lines().any(|l| l == line), "no `{line}` in\n{}", m.body);
        }
        let s: serde_json::Value = serde_json::from_str(&table_route("GET", "/status.json", &v).body).unwrap();
        assert_eq!((s["node"].as_u64(), s["replicas"][0]["role"].as_str()), (Some(2), Some("leader")));
        assert_eq!(table_route("GET", "/healthz", &v).status, 200);
        assert_eq!(table_route("POST", "/healthz", &v).status, 405);
        assert_eq!(table_route("GET", "/nope", &v).status, 404);
        v.failed = Some("disk failed: no space".into());
        let h = table_route("GET", "/healthz", &v);
        assert_eq!((h.status, h.body.as_str()), (503, "disk failed: no space\n"));
    }

    #[test]
    fn partitions_show_the_leader_in_the_highest_term_and_unreachable_nodes() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let rows: NodeViews = vec![
            // Node 1 still thinks it leads, in an old term; node 2 leads in the newer one.
            (1, addr, view(1, vec![replica(1, "leader", 2, Some(1), 9, 4)])),
            (2, addr, view(2, vec![replica(1, "leader", 3, Some(2), 12, 5)])),
            (3, addr, None),
        ];
        let j = partitions_json(&rows);
        assert_eq!((j["nodes"].as_u64(), j["reachable"].as_u64()), (Some(3), Some(2)));
        let p = &j["partitions"][0];
        assert_eq!(p["group"], 1);
        assert_eq!(p["leader"], 2);
        assert_eq!(p["term"], 3);
        assert_eq!(p["keys"], 5, "the leader's count");
        assert_eq!(p["voters"], json!([1, 2, 3]));
        assert_eq!(p["replicas"].as_array().unwrap().len(), 2);
        // No leader anywhere: null, which the page shows as `none`.
        let rows: NodeViews = vec![(1, addr, view(1, vec![replica(1, "candidate", 4, None, 9, 4)]))];
        assert!(partitions_json(&rows)["partitions"][0]["leader"].is_null());
    }
}
