//! Keiretsu on four nodes (each on a core of its own): a speedometer keeps ten names bound,
//! a driver sends messages through a redirector stub that follows the registry, and three of
//! the four nodes are killed one after another while it runs — the paper's claim. No call
//! may fail and every message must arrive. Both drivers.

use std::net::SocketAddr;
use std::time::Duration;

use multispace_node::{ClusterKey, Node, NodeConfig};
use multispace_rpc::{spawn, DriverKind, RedirectConfig, Server};
use multispace_services::keiretsu::{api, drive, keep_identified, KeiretsuServer, Speedometer};
use multispace_tests::{each_driver, must, until, TestNode};

fn config(id: u64, kind: DriverKind, key: &ClusterKey) -> NodeConfig {
    let port = 47_760 + u16::from(kind == DriverKind::Epoll);
    NodeConfig {
        id,
        beacon_period: Duration::from_millis(50),
        expiry: Duration::from_millis(400),
        ..NodeConfig::loopback(port, key.clone())
    }
}

#[test]
fn keiretsu_keeps_delivering_while_three_of_four_nodes_die() {
    each_driver(|kind| async move {
        let key = ClusterKey::from_passphrase("keiretsu test");
        let mut nodes: Vec<TestNode> = (1..=4)
            .map(|i| {
                TestNode::start(kind, config(i, kind, &key), |node| {
                    node.register_type(api::SERVICE, |node| api::service(KeiretsuServer::new(Some(node))));
                    node.start_instance(api::SERVICE).expect("instance");
                })
                .expect("node starts")
            })
            .collect();
        // The client side: a node of its own (no instances), a speedometer and a driver.
        let me = Node::start(config(100, kind, &key)).await.unwrap();
        until("four instances known", || me.lookup(api::SERVICE).len() == 4).await;
        let rc =
            RedirectConfig { attempt_timeout: Some(Duration::from_secs(2)), max_attempts: 4, ..Default::default() };
        let keiretsu = api::KeiretsuRedirector::from_redirector(me.redirector(api::SERVICE, rc));

        let speedometer = Speedometer::new();
        let endpoint = Server::bind("127.0.0.1:0".parse().unwrap(), [speedometer.service()]).unwrap();
        let endpoint_addr: SocketAddr = endpoint.local_addr();
        spawn(endpoint.serve()).detach();
        let names: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
        let _renew = keep_identified(keiretsu.clone(), names.clone(), endpoint_addr, Duration::from_millis(900));
        // Every instance has learnt every binding.
        until("bindings shared", || {
            nodes.iter().all(|n| n.with(|node| node.local_instances()[0].addr.clone()).parse::<SocketAddr>().is_ok())
        })
        .await;
        for n in &nodes {
            let addr: SocketAddr = n.with(|node| node.local_instances()[0].addr.clone()).parse().unwrap();
            let direct = api::KeiretsuClient::new(addr);
            must("bindings shared", async {
                while direct.get_client_list().await.map(|l| l.len()).unwrap_or(0) < names.len() {
                    multispace_rpc::runtime::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        }

        // The driver runs on; nodes die under it as messages arrive.
        let total_msgs = 800u64;
        let driver = spawn({
            let (keiretsu, names) = (keiretsu.clone(), names.clone());
            async move { drive(&keiretsu, &names, total_msgs, 0).await }
        });
        let received = speedometer.received();
        for (i, node) in nodes.iter_mut().take(3).enumerate() {
            let at = (i as u64 + 1) * total_msgs / 4;
            until("messages flowing", || received.unique.get() >= at).await;
            node.kill();
        }
        let total = must("driver finishes", driver).await;
        assert_eq!(total.failed, 0, "no failed calls: {total:?}");
        assert_eq!(total.unbound, 0, "every binding known everywhere: {total:?}");
        assert_eq!(total.delivered, total_msgs);
        until("every message arrived", || received.unique.get() == total_msgs).await;
        me.stop();
    });
}
