//! `multispace node`: one Base node process hosting the demo services, beaconing on a
//! loopback multicast group, until it is killed.

use std::time::Duration;

use anyhow::Context as _;
use multispace_node::{ClusterKey, Node, NodeConfig};
use multispace_rpc::{Config, LocalRuntime};
use multispace_services::calc;
use multispace_services::keiretsu::{api, KeiretsuServer};
use multispace_services::Calculator;

#[derive(clap::Args, Clone, Debug)]
pub struct NodeArgs {
    /// The node's id, unique in the cluster.
    #[arg(long)]
    pub id: u64,
    /// The loopback multicast port the cluster beacons on (group 239.255.77.1).
    #[arg(long, default_value_t = 47_900)]
    pub port: u16,
    /// The cluster's shared secret.
    #[arg(long, default_value = "multispace demo")]
    pub key: String,
    /// Services to start an instance of (`keiretsu`, `calc`); may repeat.
    #[arg(long = "service", default_values_t = [String::from("keiretsu")])]
    pub services: Vec<String>,
    /// Milliseconds between beacons.
    #[arg(long, default_value_t = 100)]
    pub beacon_ms: u64,
}

impl NodeArgs {
    /// The node configuration these arguments describe.
    pub fn config(&self) -> NodeConfig {
        let period = Duration::from_millis(self.beacon_ms);
        NodeConfig {
            id: self.id,
            beacon_period: period,
            expiry: period * 5,
            ..NodeConfig::loopback(self.port, ClusterKey::from_passphrase(&self.key))
        }
    }
}

/// Teach a node the demo service types.
pub fn register_demo_types(node: &Node) {
    node.register_type(api::SERVICE, |node| api::service(KeiretsuServer::new(Some(node))));
    node.register_type(calc::SERVICE, |_| calc::service(Calculator::new("calc")));
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let rt = LocalRuntime::new(Config::default()).context("starting the runtime")?;
    rt.block_on(async move {
        let node = Node::start(args.config()).await.context("starting the node")?;
        register_demo_types(&node);
        for s in &args.services {
            let name = match s.as_str() {
                "keiretsu" => api::SERVICE,
                "calc" => calc::SERVICE,
                other => anyhow::bail!("unknown service `{other}` (keiretsu, calc)"),
            };
            let rec = node.start_instance(name)?;
            println!("node {}: {} instance {:#x} at {}", args.id, rec.service, rec.id, rec.addr);
        }
        println!("node {}: control at {}, beaconing every {} ms", args.id, node.control_addr(), args.beacon_ms);
        let mut peers = Vec::new();
        loop {
            multispace_rpc::runtime::time::sleep(Duration::from_millis(args.beacon_ms)).await;
            let now = node.peers();
            if now != peers {
                println!("node {}: peers {:?}", args.id, now);
                peers = now;
            }
        }
    })
}
