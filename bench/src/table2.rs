//! The paper's Table 2: maximum Keiretsu message throughput with 1–4 nodes and 10, 50 and 100
//! receivers per node. Nodes run in this process, each on a core (thread) of its own; the
//! speedometers and the driver share the calling thread's core. 75-byte messages, sent
//! through a redirector stub with many calls in flight (the paper added driver connections
//! until delivery saturated).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use multispace_node::{ClusterKey, Node, NodeConfig, NodeThread};
use multispace_rpc::runtime::time::{sleep, timeout};
use multispace_rpc::{spawn, Config, DriverChoice, DriverKind, LocalRuntime, Policy, RedirectConfig, Server};
use multispace_services::keiretsu::{api, drive, keep_identified, DriverStats, KeiretsuServer, Speedometer};
use serde::Serialize;

/// The paper's figures (msgs/s), by nodes (1–4) and receivers per node (10, 50, 100).
pub const PAPER: [[f64; 3]; 4] =
    [[246.0, 200.0, 195.0], [420.0, 300.0, 260.0], [490.0, 370.0, 160.0], [570.0, 210.0, 120.0]];

/// One configuration's result.
#[derive(Debug, Clone, Serialize)]
pub struct Table2Row {
    /// Keiretsu nodes.
    pub nodes: usize,
    /// Receivers (bound names) per node.
    pub receivers_per_node: usize,
    /// Messages delivered per second.
    pub msgs_per_s: f64,
    /// The same per core the nodes had (nodes share cores when there are more nodes than
    /// cores).
    pub msgs_per_s_per_node_core: f64,
    /// The paper's figure for this configuration.
    pub paper_msgs_per_s: f64,
    /// Messages delivered.
    pub delivered: u64,
    /// Calls that failed (should be 0).
    pub failed: u64,
    /// Messages to names not bound (should be 0).
    pub unbound: u64,
}

/// Run one configuration: `messages` messages with `in_flight` senders. `run` makes the
/// multicast port and cluster key unique, so beacons of earlier runs cannot leak in.
pub fn run(
    kind: DriverKind,
    nodes: usize,
    receivers_per_node: usize,
    messages: u64,
    in_flight: usize,
    run: u16,
) -> anyhow::Result<Table2Row> {
    let key = ClusterKey::from_passphrase(&format!("table2 {} {run}", std::process::id()));
    let port = 47_800 + run * 2;
    let config = |id: u64| NodeConfig {
        id,
        beacon_period: Duration::from_millis(100),
        expiry: Duration::from_millis(1000),
        ..NodeConfig::loopback(port, key.clone())
    };
    let threads: Vec<NodeThread> = (1..=nodes as u64)
        .map(|i| {
            NodeThread::start(kind, config(i), |node| {
                node.register_type(api::SERVICE, |node| api::service(KeiretsuServer::new(Some(node))));
                if let Err(e) = node.start_instance(api::SERVICE) {
                    tracing::error!(error = %e, "instance did not start");
                }
            })
        })
        .collect::<Result<_, _>>()?;
    let rt = LocalRuntime::new(Config { driver: DriverChoice::Force(kind), ..Config::default() })?;
    let stats = rt.block_on(async move {
        let me = Node::start(config(1_000)).await?;
        timeout(Duration::from_secs(20), async {
            while me.lookup(api::SERVICE).len() < nodes {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .context("nodes never all visible")?;
        let rc = RedirectConfig { policy: Policy::LeastOutstanding, ..RedirectConfig::default() };
        let keiretsu = api::KeiretsuRedirector::from_redirector(me.redirector(api::SERVICE, rc));
        // One speedometer endpoint per node's worth of receivers.
        let mut names_all = Vec::new();
        let mut renewals = Vec::new();
        for n in 0..nodes {
            let speedometer = Speedometer::new();
            let server = Server::bind("127.0.0.1:0".parse()?, [speedometer.service()])?;
            let addr: SocketAddr = server.local_addr();
            spawn(server.serve()).detach();
            let names: Vec<String> = (0..receivers_per_node).map(|r| format!("n{n}r{r}")).collect();
            names_all.extend(names.iter().cloned());
            renewals.push(keep_identified(keiretsu.clone(), names, addr, Duration::from_secs(10)));
        }
        let want = names_all.len();
        timeout(Duration::from_secs(20), async {
            while keiretsu.get_client_list().await.map(|l| l.len()).unwrap_or(0) < want {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .context("receivers never all bound")?;
        // Warm up, then measure.
        drive(&keiretsu, &names_all, 200, u64::MAX / 2).await;
        let total = Rc::new(RefCell::new(DriverStats::default()));
        let per_sender = messages / in_flight as u64;
        let start = Instant::now();
        let senders: Vec<_> = (0..in_flight as u64)
            .map(|s| {
                let (k, names, total) = (keiretsu.clone(), names_all.clone(), total.clone());
                // Each sender has its own message ids (which also seed its random receivers).
                spawn(async move {
                    let st = drive(&k, &names, per_sender, s * per_sender).await;
                    let mut t = total.borrow_mut();
                    t.delivered += st.delivered;
                    t.unbound += st.unbound;
                    t.failed += st.failed;
                })
            })
            .collect();
        for s in senders {
            s.await;
        }
        let elapsed = start.elapsed();
        drop(renewals);
        me.stop();
        let t = total.borrow().clone();
        Ok::<_, anyhow::Error>((t, elapsed))
    })?;
    drop(threads);
    let (t, elapsed) = stats;
    let msgs_per_s = t.delivered as f64 / elapsed.as_secs_f64();
    let cores = crate::throughput::cpus_online().min(nodes).max(1);
    let col = match receivers_per_node {
        10 => 0,
        50 => 1,
        _ => 2,
    };
    Ok(Table2Row {
        nodes,
        receivers_per_node,
        msgs_per_s,
        msgs_per_s_per_node_core: msgs_per_s / cores as f64,
        paper_msgs_per_s: PAPER[(nodes - 1).min(3)][col],
        delivered: t.delivered,
        failed: t.failed,
        unbound: t.unbound,
    })
}
