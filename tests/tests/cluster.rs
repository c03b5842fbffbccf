//! Several nodes on loopback, each on a core of its own: registries converge from beacons,
//! a killed node drops out, a stopped one says goodbye, forged, foreign, stale and replayed
//! beacons change nothing, keys rotate under a running cluster, and redirectors follow the
//! registry as instances start and stop. Both drivers.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use multispace_node::beacon::{unix_ms, LocalTable, SignedBeacon};
use multispace_node::control::InstanceRecord;
use multispace_node::{BeaconAuth, BeaconTransport, ClusterKey, Keyring, Node, NodeConfig, BEACON_METHOD};
use multispace_rpc::{spawn, DriverKind, Message, MulticastGroup, OneWaySender, OneWayServer, RedirectConfig, Service};
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

fn group(port: u16) -> MulticastGroup {
    MulticastGroup::loopback(Ipv4Addr::new(239, 255, 77, 1), port)
}

/// Records every beacon sent to the group, as an eavesdropper would (to replay them later).
fn spy(port: u16) -> Rc<RefCell<Vec<SignedBeacon>>> {
    let seen: Rc<RefCell<Vec<SignedBeacon>>> = Rc::default();
    let s = seen.clone();
    let svc = Service::builder("spy")
        .one_way(BEACON_METHOD, move |_ctx, m: Message<SignedBeacon>| {
            s.borrow_mut().extend(m.to_owned().ok());
            async {}
        })
        .build();
    let server = OneWayServer::join(&group(port), [svc]).unwrap();
    spawn(server.serve()).detach();
    seen
}

fn fake_instance(id: u64) -> InstanceRecord {
    InstanceRecord { id, service: calc::SERVICE.into(), addr: "127.0.0.1:9".into(), load: 0, up: true }
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// How many of `beacons` another node than `me` sent.
fn not_from(beacons: &[SignedBeacon], me: u64, key: &ClusterKey) -> u64 {
    let auth = BeaconAuth::new("multispace", key.clone(), Duration::from_secs(30));
    beacons.iter().filter(|b| auth.open(b.view(), now_ms()).is_ok_and(|b| b.node != me)).count() as u64
}

/// What a node's registry shows.
fn view(n: &TestNode) -> (Vec<InstanceRecord>, Vec<u64>) {
    n.with(|n| (n.lookup(calc::SERVICE), n.peers()))
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
fn forged_and_replayed_beacons_change_nothing_in_any_registry() {
    each_driver(|kind| async move {
        let key = key();
        let p = port(2, kind);
        let captured = spy(p);
        let victims = [start(kind, config(1, p, &key)), start(kind, config(2, p, &key))];
        for v in &victims {
            v.with(|n| n.start_instance(calc::SERVICE).unwrap());
        }
        until("each victim knows both instances", || victims.iter().all(|v| view(v).0.len() == 2)).await;
        let before: Vec<_> = victims.iter().map(view).collect();
        let inc = victims[0].with(|n| n.incarnation());
        // Every genuine beacon captured so far, to replay.
        until("beacons of both captured", || {
            let c = captured.borrow();
            not_from(&c, 1, &key) > 0 && not_from(&c, 2, &key) > 0
        })
        .await;
        let replays: Vec<SignedBeacon> = captured.borrow().clone();

        let g = group(p);
        let sender = OneWaySender::multicast(&g).unwrap();
        let ours = |ring: Keyring, label: &str| BeaconAuth::new(label, ring, Duration::from_secs(30));
        let mut evil = LocalTable::new(666, 1, "127.0.0.1:9".into());
        evil.upsert(fake_instance(666 << 32));
        // A goodbye in node 1's name, from an incarnation later than any it had: were it
        // accepted, node 1 would vanish from node 2's registry.
        let mut bye = LocalTable::new(1, inc + 1, "127.0.0.1:9".into());
        let wrong = ClusterKey::from_passphrase("not the cluster key");
        let now = now_ms();
        let forgeries = [
            ours(Keyring::new(0, wrong.clone()), "multispace").seal(&evil.next_beacon(now)),
            ours(Keyring::new(0, wrong), "multispace").seal(&bye.goodbye(now)),
            // The cluster key under a key id the cluster does not use.
            ours(Keyring::new(9, key.clone()), "multispace").seal(&evil.next_beacon(now)),
            // The cluster key, another cluster's label.
            ours(Keyring::new(0, key.clone()), "elsewhere").seal(&evil.next_beacon(now)),
            ours(Keyring::new(0, key.clone()), "elsewhere").seal(&bye.goodbye(now)),
            // Signed right, but an hour old (captured long ago).
            ours(Keyring::new(0, key.clone()), "multispace").seal(&evil.next_beacon(now - 3_600_000)),
        ];
        for f in &forgeries {
            sender.send(g.addr(), BEACON_METHOD, f).await.unwrap();
        }
        for r in &replays {
            sender.send(g.addr(), BEACON_METHOD, r).await.unwrap();
        }
        // Each victim counts the other's beacons as replays (its own it ignores).
        let expected_replays = [not_from(&replays, 1, &key), not_from(&replays, 2, &key)];
        until("every forgery and replay counted by both victims", || {
            victims.iter().zip(expected_replays).all(|(v, replays)| {
                let s = v.with(|n| n.registry_stats());
                (s.bad_mac, s.unknown_key, s.stale) == (4, 1, 1) && s.replayed >= replays
            })
        })
        .await;
        let after: Vec<_> = victims.iter().map(view).collect();
        assert_eq!(after, before, "registries changed");
        for v in &victims {
            let s = v.with(|n| n.registry_stats());
            assert_eq!((s.goodbyes, s.expired, s.malformed), (0, 0, 0), "{s:?}");
            assert_eq!(v.with(|n| n.stats().beacons_rejected), 6);
        }
    });
}

#[test]
fn a_stopped_node_says_goodbye_and_leaves_every_registry_before_expiry() {
    each_driver(|kind| async move {
        let key = key();
        let p = port(7, kind);
        // An expiry longer than the tests' bound on any wait: a node leaving a registry
        // within the wait can only have said goodbye.
        let config = |id| NodeConfig { expiry: Duration::from_secs(60), ..config(id, p, &key) };
        let captured = spy(p);
        let mut nodes: Vec<TestNode> = (1..=3).map(|i| start(kind, config(i))).collect();
        nodes[0].with(|n| n.start_instance(calc::SERVICE).unwrap());
        until("everyone sees everyone", || nodes.iter().all(|n| n.with(|n| n.peers().len()) == 2)).await;
        until("instance everywhere", || nodes[1..].iter().all(|n| view(n).0.len() == 1)).await;

        nodes[0].stop();
        until("node 1 gone from both registries", || {
            nodes[1..].iter().all(|n| n.with(|n| !n.peers().contains(&1) && n.lookup(calc::SERVICE).is_empty()))
        })
        .await;
        for n in &nodes[1..] {
            let s = n.with(|n| n.registry_stats());
            assert_eq!((s.goodbyes, s.expired), (1, 0), "{s:?}");
        }

        // Node 1 comes back (a new incarnation); replaying everything it sent before,
        // goodbye included, does not remove it again.
        nodes[0] = start(kind, config(1));
        nodes[0].with(|n| n.start_instance(calc::SERVICE).unwrap());
        until("node 1 back everywhere", || nodes[1..].iter().all(|n| view(n).0.len() == 1)).await;
        let auth = BeaconAuth::new("multispace", key.clone(), Duration::from_secs(30));
        let is_goodbye = |b: &SignedBeacon| auth.open(b.view(), now_ms()).is_ok_and(|b| b.goodbye && b.node == 1);
        until("node 1's goodbye captured", || captured.borrow().iter().any(is_goodbye)).await;
        let old: Vec<SignedBeacon> = captured.borrow().clone();
        let replayed_before: Vec<u64> = nodes[1..].iter().map(|n| n.with(|n| n.registry_stats().replayed)).collect();
        let sender = OneWaySender::multicast(&group(p)).unwrap();
        for b in &old {
            sender.send(group(p).addr(), BEACON_METHOD, b).await.unwrap();
        }
        // Every one is a replay: node 1's old beacons (goodbye included) and the other's.
        until("replays counted", || {
            nodes[1..].iter().zip(&replayed_before).all(|(n, before)| {
                n.with(|n| n.registry_stats().replayed) == before + not_from(&old, n.with(|n| n.id()), &key)
            })
        })
        .await;
        for n in &nodes[1..] {
            assert_eq!(n.with(|n| n.registry_stats().goodbyes), 1);
            assert!(n.with(|n| n.peers().contains(&1)));
            assert_eq!(view(n).0.len(), 1);
        }

        // Dropping a node (no stop) says goodbye too.
        let dropped = Node::start(config(9)).await.unwrap();
        until("node 9 known", || nodes[1].with(|n| n.peers().contains(&9))).await;
        drop(dropped);
        until("node 9 gone", || nodes[1].with(|n| !n.peers().contains(&9))).await;
        assert_eq!(nodes[1].with(|n| n.registry_stats()).goodbyes, 2);
        assert_eq!(nodes[1].with(|n| n.registry_stats()).expired, 0);
    });
}

#[test]
fn keys_rotate_under_a_running_cluster_and_a_node_with_only_the_retired_key_is_refused() {
    each_driver(|kind| async move {
        let (old, new) = (ClusterKey::from_passphrase("old key"), ClusterKey::from_passphrase("new key"));
        let p = port(8, kind);
        let config = |id, ring: Keyring| NodeConfig {
            // Long, so "no peer lost" below rests on counters, not on timing.
            expiry: Duration::from_secs(60),
            ..NodeConfig { id, beacon_period: Duration::from_millis(50), ..NodeConfig::loopback(p, ring) }
        };
        let nodes: Vec<TestNode> = (1..=3).map(|i| start(kind, config(i, Keyring::new(1, old.clone())))).collect();
        for n in &nodes {
            n.with(|n| n.start_instance(calc::SERVICE).unwrap());
        }
        until("everyone sees every instance", || nodes.iter().all(|n| view(n).0.len() == 3)).await;
        // Fresh beacons from both peers are accepted after each step.
        let progress = |what: &'static str| {
            let before: Vec<u64> = nodes.iter().map(|n| n.with(|n| n.registry_stats().accepted)).collect();
            let nodes = &nodes;
            async move {
                until(what, || nodes.iter().zip(&before).all(|(n, b)| n.with(|n| n.registry_stats().accepted) >= b + 6))
                    .await
            }
        };
        let everywhere = |f: fn(&Node)| {
            for n in &nodes {
                n.with(f);
            }
        };

        // 1. Every node learns the new key; all still sign with the old one.
        let k = new.clone();
        for n in &nodes {
            let k = k.clone();
            n.with(move |n| n.keyring().install(2, k).unwrap());
        }
        progress("beacons after installing the new key").await;
        // 2. The new key becomes primary, node by node: meanwhile both are accepted.
        everywhere(|n| n.keyring().set_primary(2).unwrap());
        until("every peer seen signing with the new key", || {
            nodes.iter().all(|n| {
                let keys = n.with(|n| n.peer_keys());
                keys.len() == 2 && keys.values().all(|&k| k == 2)
            })
        })
        .await;
        // 3. The old key is retired everywhere.
        everywhere(|n| n.keyring().retire(1).unwrap());
        progress("beacons after retiring the old key").await;
        for n in &nodes {
            let s = n.with(|n| n.registry_stats());
            assert_eq!((s.bad_mac, s.unknown_key, s.stale, s.expired), (0, 0, 0, 0), "a beacon was lost: {s:?}");
            assert_eq!(view(n).0.len(), 3);
            assert_eq!(n.with(|n| n.peers().len()), 2);
            assert_eq!(n.with(|n| n.keyring().get().ids()), [2]);
        }

        // A node that still has only the old key is refused, and refuses the cluster.
        let stale_node = start(kind, config(4, Keyring::new(1, old)));
        stale_node.with(|n| n.start_instance(calc::SERVICE).unwrap());
        until("its beacons refused everywhere", || {
            nodes.iter().all(|n| n.with(|n| n.registry_stats().unknown_key) >= 2)
                && stale_node.with(|n| n.registry_stats().unknown_key) >= 2
        })
        .await;
        for n in &nodes {
            assert_eq!(n.with(|n| n.peers().len()), 2);
            assert_eq!(view(n).0.len(), 3);
        }
        assert!(stale_node.with(|n| n.peers()).is_empty());
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

#[test]
fn under_mutual_tls_nodes_see_each_other_and_only_admins_start_instances() {
    use multispace_node::control::NodeControlClient;
    use multispace_rpc::tls::certs::{Authority, Leaf};
    use multispace_rpc::{CallError, Client, ConnConfig, TlsConfig};
    let ca = Authority::create("test cluster CA", 1).unwrap();
    let conn = |name: &str| {
        let issued = ca.issue(&Leaf::new(name, 1)).unwrap();
        let tls = TlsConfig::from_pem(ca.cert_pem().as_bytes(), issued.cert_pem.as_bytes(), issued.key_pem.as_bytes());
        ConnConfig { tls: Some(tls.unwrap()), ..ConnConfig::default() }
    };
    each_driver(|kind| {
        let conn = &conn;
        async move {
            let key = key();
            let p = port(12, kind);
            let register = |node: &Node| node.register_type(calc::SERVICE, |_| calc::service(Calculator::new("calc")));
            let host = TestNode::start_with(kind, conn("node-1"), config(1, p, &key), register).unwrap();
            let other = TestNode::start_with(kind, conn("node-2"), config(2, p, &key), register).unwrap();
            host.with(|n| n.start_instance(calc::SERVICE).unwrap());
            // Node 2 learns the instance by pulling node 1's table over mutual TLS.
            until("node 2 sees node 1's instance", || other.with(|n| n.lookup(calc::SERVICE).len()) == 1).await;
            let control = host.with(|n| n.control_addr());
            let as_who = |name: &str| NodeControlClient::from_client(Client::with_config(control, conn(name)));
            // Any cluster member reads; only admins (and nodes) start instances.
            let mallory = as_who("mallory");
            assert_eq!(mallory.lookup(calc::SERVICE.to_string()).await.unwrap().len(), 1);
            match mallory.start_instance(calc::SERVICE.to_string()).await {
                Err(CallError::PermissionDenied(why)) => assert!(why.contains("mallory"), "{why}"),
                Err(other) => panic!("expected PermissionDenied, got {other:?}"),
                Ok(_) => panic!("mallory started an instance"),
            }
            assert_eq!(host.with(|n| n.local_instances().len()), 1, "the refused call did not run");
            as_who("admin").start_instance(calc::SERVICE.to_string()).await.unwrap();
            assert_eq!(host.with(|n| n.local_instances().len()), 2);
            // Plain TCP gets nowhere.
            let plain = NodeControlClient::from_client(Client::with_config(control, ConnConfig::default()));
            assert!(plain.table().await.is_err());
        }
    });
}

#[test]
fn any_node_lists_every_member_and_instance_over_its_control_interface() {
    use multispace_node::control::NodeControlClient;
    use multispace_rpc::Client;
    each_driver(|kind| async move {
        let key = key();
        let p = port(13, kind);
        let a = start(kind, config(1, p, &key));
        let b = start(kind, config(2, p, &key));
        let c = start(kind, config(3, p, &key));
        let on_b = b.with(|n| n.start_instance(calc::SERVICE).unwrap());
        let on_c = c.with(|n| n.start_instance(calc::SERVICE).unwrap());
        let down = on_c.id;
        c.with(move |n| n.set_up(down, false));
        let ctl = NodeControlClient::from_client(Client::new(a.with(|n| n.control_addr())));
        let settled = |n: &Node| {
            let m = n.members();
            m.len() == 3 && m.iter().map(|m| m.instances).sum::<u32>() == 2 && m.iter().map(|m| m.up).sum::<u32>() == 1
        };
        until("node 1 knows both instances and which is down", || a.with(settled)).await;
        let members = ctl.members().await.unwrap().to_owned().unwrap();
        // The answering node first, then the others by id, with what each hosts.
        let ids: Vec<(u64, bool, u32, u32)> =
            members.iter().map(|m| (m.node, m.this_node, m.instances, m.up)).collect();
        assert_eq!(ids, [(1, true, 0, 0), (2, false, 1, 1), (3, false, 1, 0)], "{members:?}");
        assert_eq!(members[1].control, b.with(|n| n.control_addr()).to_string());
        assert_eq!(members[2].incarnation, c.with(|n| n.incarnation()));
        assert!(members.iter().all(|m| m.key_id == Some(0)), "{members:?}");
        let all = ctl.instances().await.unwrap().to_owned().unwrap();
        let got: Vec<(u64, bool)> = all.iter().map(|r| (r.id, r.up)).collect();
        let mut want = vec![(on_b.id, true), (on_c.id, false)];
        want.sort_unstable();
        assert_eq!(got, want);
        // A node that leaves is gone from the listing once its goodbye arrives.
        drop(c);
        until("node 3's goodbye", || a.with(|n| n.members().len()) == 2).await;
        assert_eq!(ctl.members().await.unwrap().len(), 2);
    });
}

/// `GET path` over our own runtime's TCP (the test's core must not block): status and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use multispace_rpc::net::TcpStream;
    let stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.send_all(bytes::BytesMut::from(req.as_bytes())).await.0.unwrap();
    let mut all = Vec::new();
    let mut buf = bytes::BytesMut::with_capacity(64 << 10);
    loop {
        buf.clear();
        buf.reserve(64 << 10);
        let (n, b) = stream.recv(buf).await;
        buf = b;
        if n.unwrap() == 0 {
            break;
        }
        all.extend_from_slice(&buf);
    }
    let text = String::from_utf8(all).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

#[test]
fn the_admin_endpoint_serves_metrics_health_and_the_cluster_status() {
    use multispace_node::admin::AdminServer;
    use multispace_services::calc::CalcClient;
    each_driver(|kind| async move {
        let key = key();
        let p = port(14, kind);
        let (tx, rx) = std::sync::mpsc::channel();
        let b = TestNode::start(kind, config(2, p, &key), move |node| {
            node.register_type(calc::SERVICE, |_| calc::service(Calculator::new("calc")));
            let admin = AdminServer::bind(node, "127.0.0.1:0".parse().unwrap()).unwrap();
            tx.send(admin.detach()).unwrap();
        })
        .unwrap();
        let admin = rx.recv().unwrap();
        let a = start(kind, config(1, p, &key));
        let rec = b.with(|n| n.start_instance(calc::SERVICE).unwrap());
        let calc = CalcClient::new(rec.addr.parse().unwrap());
        for i in 0..5 {
            assert_eq!(calc.add(i, 1).await.unwrap().to_native(), i + 1);
        }
        until("node 2 knows node 1", || b.with(|n| n.members().len()) == 2).await;
        drop(a);

        let (status, body) = http_get(admin, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        let (status, metrics) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        // Calls counted on the core that served them, per method, with latency buckets.
        let calls: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("multispace_rpc_calls_total{service=\"Calc\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(calls, 5, "{metrics}");
        assert!(metrics.contains("multispace_rpc_call_seconds_bucket{service=\"Calc\",method=\"add\""), "{metrics}");
        assert!(metrics.contains("multispace_beacons_sent_total "), "{metrics}");
        assert!(metrics.contains("multispace_registry_instances{state=\"up\"} 1"), "{metrics}");
        let driver = format!("driver=\"{kind}\"");
        assert!(metrics.contains(&driver), "{metrics}");
        // The core's driver counters: it has turned, and reaped events for these calls.
        let sample = |name: &str| -> u64 {
            let line =
                metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(sample("multispace_driver_turns_total") > 0, "{metrics}");
        assert!(sample("multispace_driver_completions_total") > 0, "{metrics}");
        assert!(sample("multispace_driver_enters_total") <= sample("multispace_driver_turns_total"));
        // Every sample line is `name{labels} value` or `name value` with a number.
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
        }

        let (status, json) = http_get(admin, "/status.json").await;
        assert_eq!(status, 200);
        let s: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(s["node"], 2);
        assert_eq!(s["instances"][0]["service"], "Calc");
        assert_eq!(s["instances"][0]["up"], true);
        let (status, page) = http_get(admin, "/status").await;
        assert_eq!(status, 200);
        assert!(page.contains("/status.json"));
        assert_eq!(http_get(admin, "/nope").await.0, 404);
    });
}

#[test]
fn a_draining_node_says_goodbye_refuses_new_calls_and_finishes_those_in_flight() {
    use multispace_rpc::{CallOptions, Client, Status};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const SLOW: u32 = 1;
    each_driver(|kind| async move {
        let key = key();
        let p = port(15, kind);
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let b = TestNode::start(kind, config(2, p, &key), move |node| {
            node.register_type("slow", move |_| {
                let r = r.clone();
                Service::builder("slow")
                    .method(SLOW, move |_ctx, _req: Message<()>| {
                        let r = r.clone();
                        async move {
                            until("released", || r.load(Ordering::SeqCst)).await;
                            Ok::<u32, Status>(7)
                        }
                    })
                    .build()
            });
        })
        .unwrap();
        let a = start(kind, config(1, p, &key));
        let rec = b.with(|n| n.start_instance("slow").unwrap());
        until("node 1 sees the instance", || a.with(|n| n.lookup("slow").len()) == 1).await;
        let client = Client::new(rec.addr.parse().unwrap());
        let slow = spawn({
            let client = client.clone();
            async move { client.call::<(), u32>(SLOW, &(), CallOptions::default()).await.map(|r| r.to_native()) }
        });
        until("the call is running", || b.with(|n| n.in_flight()) == 1).await;
        let (tx, rx) = std::sync::mpsc::channel();
        b.with(move |n| {
            let n = n.clone();
            spawn(async move { tx.send(n.drain(Duration::from_secs(20)).await).unwrap() }).detach();
        });
        // The goodbye reaches node 1 at once: redirectors there stop choosing node 2.
        until("node 1 forgets node 2", || a.with(|n| n.lookup("slow").is_empty() && n.peers().is_empty())).await;
        // A call that still arrives is refused as not run (so a redirector retries elsewhere).
        let e = client.call::<(), u32>(SLOW, &(), CallOptions::default()).await.unwrap_err();
        assert!(e.did_not_run() && e.is_retryable(), "{e:?}");
        release.store(true, Ordering::SeqCst);
        assert_eq!(slow.await.unwrap(), 7, "the call in flight finished");
        let report = rx.recv().unwrap();
        assert_eq!((report.in_flight_at_start, report.abandoned), (1, 0), "{report:?}");
        assert!(b.with(|n| n.is_stopped()));
    });
}
