//! Several nodes on loopback, each on a core of its own: registries converge from beacons,
//! a killed node drops out, forged and replayed beacons are rejected, and redirectors follow
//! the registry as instances start and stop. Both drivers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use multispace_node::beacon::LocalTable;
use multispace_node::control::InstanceRecord;
use multispace_node::{BeaconTransport, ClusterKey, Node, NodeConfig, BEACON_METHOD};
use multispace_rpc::{DriverKind, MulticastGroup, OneWaySender, RedirectConfig};
use multispace_services::calc::{self, CalcRedirector};
use multispace_services::Calculator;
use multispace_tests::{each_driver, until, TestNode};

fn start(kind: DriverKind, config: NodeConfig) -> TestNode {
    TestNode::start(kind, config, |node| node.register_type(calc::SERVICE, |_| calc::service(Calculator::new("calc"))))
        .expect("node starts")
}

fn config(id: u64, port: u16, key: &ClusterKey) -> NodeConfig {
    NodeConfig {
        id,
        beacon_period: Duration::from_millis(50),
        expiry: Duration::from_millis(400),
        ..NodeConfig::loopback(port, key.clone())
    }
}

/// A multicast port per test and driver, so concurrent tests cannot hear each other.
fn port(test: u16, kind: DriverKind) -> u16 {
    47_700 + test * 2 + u16::from(kind == DriverKind::Epoll)
}

fn key() -> ClusterKey {
    ClusterKey::from_passphrase("multispace tests")
}

#[test]
fn registries_converge_and_a_killed_node_drops_out() {
    each_driver(|kind| async move {
        let key = key();
        let p = port(0, kind);
        let mut nodes: Vec<TestNode> = (1..=3).map(|i| start(kind, config(i, p, &key))).collect();
        let rec = nodes[0].with(|n| n.start_instance(calc::SERVICE).unwrap());
        // Every other node learns of the instance from beacons alone.
        until("instance in every registry", || nodes.iter().all(|n| n.with(|n| n.lookup(calc::SERVICE).len()) == 1))
            .await;
        for n in &nodes[1..] {
            assert_eq!(n.with(|n| n.lookup(calc::SERVICE)), std::slice::from_ref(&rec));
        }
        until("every node hears the other two", || nodes.iter().all(|n| n.with(|n| n.peers().len()) == 2)).await;
        // Node 1 dies: the others forget it and its instance after the expiry.
        nodes[0].kill();
        until("dead node expired everywhere", || {
            nodes[1..].iter().all(|n| n.with(|n| n.peers() == [if n.id() == 2 { 3 } else { 2 }]))
        })
        .await;
        assert!(nodes[1].with(|n| n.lookup(calc::SERVICE)).is_empty());
    });
}

#[test]
fn a_late_joiner_catches_up_by_pulling_tables() {
    each_driver(|kind| async move {
        let key = key();
        let p = port(1, kind);
        let a = start(kind, config(1, p, &key));
        for _ in 0..3 {
            a.with(|n| n.start_instance(calc::SERVICE).unwrap());
        }
        // Let node 1's beacons stop carrying the change, so the joiner must pull.
        let sent = a.with(|n| n.stats().beacons_sent);
        let repeats = multispace_node::beacon::DELTA_REPEATS;
        until("change no longer in beacons", || a.with(|n| n.stats().beacons_sent) > sent + repeats).await;
        let b = start(kind, config(2, p, &key));
        until("joiner knows all three", || b.with(|n| n.lookup(calc::SERVICE).len()) == 3).await;
        assert!(b.with(|n| n.stats().pulls) >= 1, "caught up by a pull");
    });
}

#[test]
fn forged_and_replayed_beacons_are_rejected() {
    each_driver(|kind| async move {
        let key = key();
        let p = port(2, kind);
        let victim = start(kind, config(1, p, &key));
        let group = MulticastGroup::loopback(Ipv4Addr::new(239, 255, 77, 1), p);
        let sender = OneWaySender::multicast(&group).unwrap();
        let mut fake = LocalTable::new(666, 1, "127.0.0.1:9".into());
        fake.upsert(InstanceRecord {
            id: 1,
            service: calc::SERVICE.into(),
            addr: "127.0.0.1:9".into(),
            load: 0,
            up: true,
        });
        // Signed with the wrong key: dropped and counted.
        let forged = ClusterKey::from_passphrase("not the cluster key").seal(&fake.next_beacon());
        sender.send(group.addr(), BEACON_METHOD, &forged).await.unwrap();
        until("forgery counted", || victim.with(|n| n.stats().beacons_rejected) == 1).await;
        // Signed with the right key (a key holder's beacon captured on the wire), then
        // replayed: the copy is dropped.
        let genuine = key.seal(&fake.next_beacon());
        sender.send(group.addr(), BEACON_METHOD, &genuine).await.unwrap();
        until("genuine accepted", || victim.with(|n| n.peers()) == [666]).await;
        sender.send(group.addr(), BEACON_METHOD, &genuine).await.unwrap();
        until("replay counted", || victim.with(|n| n.registry_stats().replayed) == 1).await;
        assert!(victim.with(|n| n.lookup(calc::SERVICE).iter().all(|r| r.addr == "127.0.0.1:9")));
    });
}

#[test]
fn a_redirector_follows_the_registry() {
    each_driver(|kind| async move {
        let key = key();
        let p = port(3, kind);
        let host = start(kind, config(1, p, &key));
        let first = host.with(|n| n.start_instance(calc::SERVICE).unwrap());
        // The client side is a node too (it needs no instances of its own).
        let client = Node::start(config(2, p, &key)).await.unwrap();
        until("instance visible", || client.lookup(calc::SERVICE).len() == 1).await;
        let calc = CalcRedirector::from_redirector(client.redirector(calc::SERVICE, RedirectConfig::default()));
        assert_eq!(calc.add(1, 2).await.unwrap().to_native(), 3);
        // A second instance starts and the first stops: the redirector moves with them.
        let second = host.with(|n| n.start_instance(calc::SERVICE).unwrap());
        until("two instances", || calc.redirector().instances().len() == 2).await;
        assert!(host.with(move |n| n.stop_instance(first.id)));
        let second_addr: SocketAddr = second.addr.parse().unwrap();
        until("only the second", || calc.redirector().instances() == [second_addr]).await;
        for i in 0..20 {
            assert_eq!(calc.add(i, 1).await.unwrap().to_native(), i + 1);
        }
        client.stop();
    });
}

#[test]
fn beacons_go_by_unicast_to_seed_peers_where_multicast_is_unavailable() {
    each_driver(|kind| async move {
        let key = key();
        let free = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (la, lb) = (free(), free());
        let unicast = |id, listen, peer| NodeConfig {
            beacons: BeaconTransport::Unicast { listen, peers: vec![peer] },
            ..config(id, 0, &key)
        };
        let a = start(kind, unicast(1, la, lb));
        let b = start(kind, unicast(2, lb, la));
        a.with(|n| n.start_instance(calc::SERVICE).unwrap());
        until("b learns a's instance", || b.with(|n| n.lookup(calc::SERVICE).len()) == 1).await;
        until("a hears b", || a.with(|n| n.peers()) == [2]).await;
    });
}

#[test]
fn a_failed_probe_takes_an_instance_out_of_every_registry_before_expiry() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    each_driver(|kind| async move {
        let key = key();
        let p = port(4, kind);
        let sick = Arc::new(AtomicBool::new(false));
        let host = start(kind, config(1, p, &key));
        let flag = sick.clone();
        let rec = host.with(move |n| {
            let probe = multispace_node::Probe {
                method_id: calc::method_id::PING,
                period: Duration::from_millis(20),
                timeout: Duration::from_millis(500),
            };
            n.register_type_with_probe(
                "Flaky",
                move |_| {
                    let flag = flag.clone();
                    multispace_rpc::Service::builder(calc::SERVICE)
                        .method(calc::method_id::PING, move |_ctx, _r: multispace_rpc::Message<calc::PingArgs>| {
                            let sick = flag.load(Ordering::Relaxed);
                            async move {
                                if sick {
                                    Err(multispace_rpc::Status::internal("sick"))
                                } else {
                                    Ok(())
                                }
                            }
                        })
                        .build()
                },
                probe,
            );
            n.start_instance("Flaky").unwrap()
        });
        let observer = Node::start(config(2, p, &key)).await.unwrap();
        until("instance visible", || observer.lookup("Flaky").len() == 1).await;
        sick.store(true, Ordering::Relaxed);
        until("marked down everywhere", || observer.lookup("Flaky").is_empty()).await;
        // The host is still beaconing: the instance left because of its probe, not expiry.
        assert_eq!(observer.peers(), [1]);
        let id = rec.id;
        let health = host.with(move |n| n.health(id).unwrap());
        assert!(!health.up && health.probes_failed >= 1, "{health:?}");
        sick.store(false, Ordering::Relaxed);
        until("back up", || observer.lookup("Flaky").len() == 1).await;
        observer.stop();
    });
}

#[test]
fn redirectors_steer_away_from_instances_reporting_load() {
    use multispace_rpc::{Message, Policy, Service, Status};
    each_driver(|kind| async move {
        let key = key();
        let p = port(5, kind);
        // Each instance answers `add` with its own number; `accumulate` never answers.
        let host = TestNode::start(kind, config(1, p, &key), |n| {
            let made = std::rc::Rc::new(std::cell::Cell::new(0i64));
            n.register_type("Busy", move |_| {
                made.set(made.get() + 1);
                let me = made.get();
                Service::builder(calc::SERVICE)
                    .method(calc::method_id::ADD, move |_ctx, _r: Message<calc::AddArgs>| async move {
                        Ok::<i64, Status>(me)
                    })
                    .method(calc::method_id::ACCUMULATE, |_ctx, _r: Message<calc::AccumulateArgs>| async {
                        std::future::pending::<()>().await;
                        Ok::<i64, Status>(0)
                    })
                    .build()
            });
        })
        .expect("node starts");
        let a = host.with(|n| n.start_instance("Busy").unwrap());
        let b = host.with(|n| n.start_instance("Busy").unwrap());
        let observer = Node::start(config(2, p, &key)).await.unwrap();
        until("both visible", || observer.lookup("Busy").len() == 2).await;
        // Another client keeps eight calls waiting on instance a.
        let other = calc::CalcClient::new(a.addr.parse().unwrap());
        let _waiting: Vec<_> = (0..8)
            .map(|i| {
                let other = other.clone();
                multispace_rpc::spawn(async move { other.accumulate(i).await.map(drop) })
            })
            .collect();
        until("a's load beaconed", || observer.lookup("Busy").iter().any(|r| r.id == a.id && r.load == 8)).await;
        let rc = RedirectConfig { policy: Policy::LeastOutstanding, ..RedirectConfig::default() };
        let r = CalcRedirector::from_redirector(observer.redirector("Busy", rc));
        until("redirector has the loads", || r.redirector().instances().len() == 2).await;
        for _ in 0..20 {
            assert_eq!(r.add(0, 0).await.unwrap().to_native(), 2, "instance b ({}) answers", b.addr);
        }
        observer.stop();
    });
}

#[test]
fn a_client_outside_the_cluster_follows_it_through_any_node() {
    each_driver(|kind| async move {
        let key = key();
        let p = port(6, kind);
        let a = start(kind, config(1, p, &key));
        let b = start(kind, config(2, p, &key));
        a.with(|n| n.start_instance(calc::SERVICE).unwrap());
        // The outsider knows two control addresses, has no key and hears no beacons.
        let controls = vec![a.with(|n| n.control_addr()), b.with(|n| n.control_addr())];
        let (r, _keep) = multispace_node::remote_redirector(
            controls,
            calc::SERVICE,
            RedirectConfig::default(),
            Duration::from_millis(50),
        );
        let calc = CalcRedirector::from_redirector(r);
        until("instance known", || calc.redirector().instances().len() == 1).await;
        assert_eq!(calc.add(2, 2).await.unwrap().to_native(), 4);
        // A second instance on b; then a (the first node asked) dies: the outsider asks b.
        let second = b.with(|n| n.start_instance(calc::SERVICE).unwrap());
        until("both known", || calc.redirector().instances().len() == 2).await;
        drop(a);
        let second_addr: SocketAddr = second.addr.parse().unwrap();
        until("only b's instance", || calc.redirector().instances() == [second_addr]).await;
        assert_eq!(calc.add(3, 4).await.unwrap().to_native(), 7);
    });
}
