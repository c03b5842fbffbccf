//! A table of three nodes in one process (each node on its own core, durable on its own
//! temporary directory), driven through the client library over loopback rpc.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use multispace_dht::client::{ClientConfig, DhtClient, DhtError};
use multispace_dht::command::{LimitError, Op, WriteResult, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use multispace_dht::maps::Maps;
use multispace_dht::server::{DhtConfig, Durability};
use multispace_dht::thread::DhtThread;
use multispace_rpc::runtime::time::sleep;
use multispace_rpc::LocalRuntime;

/// Logs to the test's output when RUST_LOG is set (shown for failing tests).
fn log() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

struct Cluster {
    configs: BTreeMap<u64, DhtConfig>,
    nodes: BTreeMap<u64, DhtThread>,
    _dirs: Vec<tempfile::TempDir>,
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

impl Cluster {
    fn start(n: u64, partitions: u32, durability: Durability) -> Cluster {
        Self::start_with(n, partitions, durability, |_| {})
    }

    /// [`Cluster::start`] with every node's configuration adjusted by `tweak` first.
    fn start_with(n: u64, partitions: u32, durability: Durability, tweak: impl Fn(&mut DhtConfig)) -> Cluster {
        log();
        let addrs = free_addrs(n as usize);
        let nodes: BTreeMap<u64, SocketAddr> = (1..=n).zip(addrs).collect();
        let ids: Vec<u64> = nodes.keys().copied().collect();
        let maps = Maps::even(&ids, partitions, 3.min(n as usize)).unwrap();
        let mut dirs = Vec::new();
        let mut configs = BTreeMap::new();
        for &id in &ids {
            let mut c = DhtConfig::new(id, nodes.clone(), maps.clone(), durability);
            if durability == Durability::Durable {
                let d = tempfile::tempdir().unwrap();
                c.data_dir = Some(d.path().to_path_buf());
                dirs.push(d);
            }
            tweak(&mut c);
            configs.insert(id, c);
        }
        let nodes = configs.iter().map(|(id, c)| (*id, DhtThread::start(c.clone()).unwrap())).collect();
        Cluster { configs, nodes, _dirs: dirs }
    }

    /// Starts node `id` as a joiner (it knows the cluster and hosts nothing until a leader
    /// adds it), configured by `tweak`; returns its address.
    fn start_joiner(&mut self, id: u64, tweak: impl Fn(&mut DhtConfig)) -> SocketAddr {
        let addr = free_addrs(1)[0];
        let dir = tempfile::tempdir().unwrap();
        let any = self.configs.values().next().unwrap();
        let mut nodes = any.nodes.clone();
        nodes.insert(id, addr);
        let mut c = DhtConfig::new(id, nodes, any.maps.clone(), Durability::Durable);
        c.data_dir = Some(dir.path().to_path_buf());
        c.join = true;
        tweak(&mut c);
        self.nodes.insert(id, DhtThread::start(c.clone()).unwrap());
        self.configs.insert(id, c);
        self._dirs.push(dir);
        addr
    }

    fn client(&self) -> DhtClient {
        let any = self.configs.values().next().unwrap();
        DhtClient::new(any.maps.clone(), any.nodes.clone(), ClientConfig::default())
    }

    fn leader_of(&self, group: u64) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(_, t)| t.is_alive())
            .flat_map(|(id, t)| t.status().into_iter().map(move |s| (*id, s)))
            .filter(|(_, s)| s.group == group && s.role == "leader")
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }

    fn restart(&mut self, id: u64) {
        let t = DhtThread::start(self.configs[&id].clone()).unwrap();
        self.nodes.insert(id, t);
    }

    /// Writes `writes` keys, kills a follower of `group`, removes it from the group while
    /// it is down, and writes as many again; returns the follower.
    fn remove_a_follower_while_down(
        &mut self,
        rt: &LocalRuntime,
        client: &DhtClient,
        group: u64,
        writes: usize,
    ) -> u64 {
        use multispace_dht::api::table::MemberChange;
        let put_keys = |range: std::ops::Range<usize>| async move {
            for i in range {
                client.put(format!("k-{i}").as_bytes(), b"v").await.unwrap();
            }
        };
        rt.block_on(put_keys(0..writes));
        let leader = self.leader_of(group).expect("a leader after the first writes");
        let down = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
        self.nodes.get_mut(&down).unwrap().kill();
        rt.block_on(async {
            client.change_members(group, MemberChange::Remove { node: down }).await.expect("removed while down");
            put_keys(writes..2 * writes).await;
        });
        down
    }

    /// Waits (bounded) until node `id` no longer hosts `group`, then checks it is gone for
    /// good: a restart does not bring the replica back, and the node's other groups
    /// (per `maps`) come back with it.
    fn assert_drops_group_for_good(&mut self, id: u64, group: u64, maps: &Maps) {
        let hosts = |cluster: &Cluster| cluster.nodes[&id].status().iter().any(|s| s.group == group);
        let deadline = Instant::now() + Duration::from_secs(20);
        while hosts(self) {
            assert!(Instant::now() < deadline, "removed node {id} still hosts group {group}");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.nodes.get_mut(&id).unwrap().kill();
        self.restart(id);
        assert!(!hosts(self), "a restart brought the removed replica back");
        let others: Vec<u64> =
            maps.groups().filter(|g| g.id != group && g.members.contains(&id)).map(|g| g.id).collect();
        let hosted: Vec<u64> = self.nodes[&id].status().iter().map(|s| s.group).collect();
        assert!(others.iter().all(|g| hosted.contains(g)), "its other groups are back: {hosted:?} ⊇ {others:?}");
    }
}

fn rt() -> LocalRuntime {
    LocalRuntime::new(Default::default()).unwrap()
}

/// Two keys of the same partition, and one of another.
fn keys(maps: &Maps) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let k1 = b"k-0".to_vec();
    let g = maps.group_of(&k1).id;
    let same = (1..).map(|i| format!("k-{i}").into_bytes()).find(|k| maps.group_of(k).id == g).unwrap();
    let other = (1..).map(|i| format!("k-{i}").into_bytes()).find(|k| maps.group_of(k).id != g).unwrap();
    (k1, same, other)
}

#[test]
fn operations_work_and_bad_requests_get_clear_errors() {
    let cluster = Cluster::start(3, 4, Durability::Durable);
    let client = cluster.client();
    let (k1, k2, other) = keys(&client.maps());
    rt().block_on(async {
        assert_eq!(client.get(b"absent").await.unwrap(), None);
        client.put(&k1, b"one").await.unwrap();
        assert_eq!(client.get(&k1).await.unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(client.cas(&k1, Some(b"one"), Some(b"two")).await.unwrap(), Ok(()));
        assert_eq!(client.cas(&k1, Some(b"one"), Some(b"three")).await.unwrap(), Err(Some(b"two".to_vec())));
        assert_eq!(client.cas(&k2, None, Some(b"new")).await.unwrap(), Ok(()));
        // An atomic batch in one partition: all or nothing.
        let failing = vec![
            Op::Put { key: k2.clone(), value: b"changed".to_vec() },
            Op::Cas { key: k1.clone(), expected: Some(b"wrong".to_vec()), new: None },
        ];
        assert!(matches!(client.batch(failing).await.unwrap(), WriteResult::CompareFailed { index: 1, .. }));
        assert_eq!(client.get(&k2).await.unwrap().as_deref(), Some(&b"new"[..]));
        let ok = vec![Op::Delete { key: k1.clone() }, Op::Put { key: k2.clone(), value: b"changed".to_vec() }];
        assert_eq!(client.batch(ok).await.unwrap(), WriteResult::Applied);
        assert_eq!(client.get(&k1).await.unwrap(), None);
        assert_eq!(client.get_stale(&k2).await.map(|v| v.is_some()), Ok(true));
        // Bad requests.
        let cross = vec![Op::Delete { key: k1.clone() }, Op::Delete { key: other.clone() }];
        assert_eq!(client.batch(cross).await, Err(DhtError::CrossGroup));
        let big_key = vec![b'k'; MAX_KEY_BYTES + 1];
        assert_eq!(
            client.put(&big_key, b"v").await,
            Err(DhtError::Limit(LimitError::KeyTooLarge { len: MAX_KEY_BYTES + 1 }))
        );
        assert_eq!(
            client.get(&big_key).await,
            Err(DhtError::Limit(LimitError::KeyTooLarge { len: MAX_KEY_BYTES + 1 }))
        );
        let big_value = vec![0; MAX_VALUE_BYTES + 1];
        assert_eq!(
            client.put(b"k", &big_value).await,
            Err(DhtError::Limit(LimitError::ValueTooLarge { len: MAX_VALUE_BYTES + 1 }))
        );
        // A value at the limit goes through.
        client.put(b"big", &vec![7; MAX_VALUE_BYTES]).await.unwrap();
        assert_eq!(client.get(b"big").await.unwrap().map(|v| v.len()), Some(MAX_VALUE_BYTES));
    });
}

#[test]
fn writes_continue_when_a_leader_dies_and_it_recovers_from_disk() {
    let mut cluster = Cluster::start(3, 2, Durability::Durable);
    let client = cluster.client();
    let rt = rt();
    rt.block_on(async {
        for i in 0..200 {
            client.put(format!("before-{i}").as_bytes(), format!("v{i}").as_bytes()).await.unwrap();
        }
    });
    let group = client.maps().group_of(b"before-0").id;
    let leader = cluster.leader_of(group).expect("a leader after 200 writes");
    cluster.nodes.get_mut(&leader).unwrap().kill();
    rt.block_on(async {
        // The client finds the new leader by itself.
        for i in 0..200 {
            client.put(format!("after-{i}").as_bytes(), format!("v{i}").as_bytes()).await.unwrap();
        }
        for i in 0..200 {
            let want = format!("v{i}").into_bytes();
            assert_eq!(client.get(format!("before-{i}").as_bytes()).await.unwrap(), Some(want.clone()));
            assert_eq!(client.get(format!("after-{i}").as_bytes()).await.unwrap(), Some(want));
        }
    });
    assert_ne!(cluster.leader_of(group), Some(leader));
    // The dead node comes back from its log and catches up on what it missed.
    cluster.restart(leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    rt.block_on(async {
        loop {
            let statuses = cluster.nodes[&leader].status();
            let leader_now = cluster.leader_of(group).unwrap();
            let target = cluster.nodes[&leader_now].status().into_iter().find(|s| s.group == group).unwrap();
            let mine = statuses.into_iter().find(|s| s.group == group).unwrap();
            if mine.applied >= target.applied && mine.keys == target.keys {
                break;
            }
            assert!(Instant::now() < deadline, "node {leader} did not catch up: {mine:?} vs {target:?}");
            sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn many_clients_at_once_and_memory_mode() {
    let cluster = Cluster::start(3, 4, Durability::Memory);
    let rt = rt();
    let clients: Vec<DhtClient> = (0..16).map(|_| cluster.client()).collect();
    rt.block_on(async {
        let tasks: Vec<_> = clients
            .iter()
            .cloned()
            .enumerate()
            .map(|(c, client)| {
                multispace_rpc::spawn(async move {
                    for i in 0..50 {
                        client.put(format!("c{c}-{i}").as_bytes(), &[c as u8; 500]).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        for c in 0..16 {
            for i in 0..50 {
                let v = clients[0].get(format!("c{c}-{i}").as_bytes()).await.unwrap();
                assert_eq!(v, Some(vec![c as u8; 500]));
            }
        }
    });
}

#[test]
fn a_memory_mode_node_restarted_under_its_old_id_is_refused_and_the_others_go_on() {
    let mut cluster = Cluster::start(3, 2, Durability::Memory);
    let client = cluster.client();
    let rt = rt();
    rt.block_on(async {
        for i in 0..30 {
            client.put(format!("k-{i}").as_bytes(), b"before").await.unwrap();
        }
    });
    // Node 3 comes back with empty replicas under its old id: it forgot its votes and log, so
    // the others must not let it take part (it could vote twice in one term).
    cluster.nodes.get_mut(&3).unwrap().kill();
    cluster.restart(3);
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        if let Some(why) = cluster.nodes[&3].with(|s| s.failed()).flatten() {
            break why;
        }
        assert!(Instant::now() < deadline, "the restarted memory-mode node was let back in");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(why.contains("must rejoin under a new id"), "{why}");
    // Nodes 1 and 2 keep every acknowledged write and go on taking new ones.
    rt.block_on(async {
        for i in 0..30 {
            assert_eq!(client.get(format!("k-{i}").as_bytes()).await.unwrap(), Some(b"before".to_vec()));
            client.put(format!("k-{i}").as_bytes(), b"after").await.unwrap();
        }
    });
    // A durable node restarted under its old id is the same node (its state is on disk): see
    // `writes_continue_when_a_leader_dies_and_it_recovers_from_disk`.
}

#[test]
fn a_replacement_node_joins_is_promoted_and_the_old_one_removed_while_writes_continue() {
    use multispace_dht::api::table::MemberChange;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    let mut cluster = Cluster::start(3, 2, Durability::Durable);
    let client = cluster.client();
    let group = client.maps().group_of(b"w-0").id;
    let rt = rt();
    let addr4 = cluster.start_joiner(4, |_| {});
    let acked: Rc<RefCell<Vec<u64>>> = Rc::default();
    let stop = Rc::new(Cell::new(false));
    let old_member = Cell::new(0);
    rt.block_on(async {
        // Writes go on throughout.
        let writer = {
            let (client, acked, stop) = (cluster.client(), acked.clone(), stop.clone());
            multispace_rpc::spawn(async move {
                let mut i = 0;
                while !stop.get() {
                    if client.put(format!("w-{i}").as_bytes(), &[7; 500]).await.is_ok() {
                        acked.borrow_mut().push(i);
                    }
                    i += 1;
                }
            })
        };
        while acked.borrow().len() < 300 {
            sleep(Duration::from_millis(10)).await;
        }
        let e1 = client
            .change_members(group, MemberChange::AddLearner { node: 4, addr: addr4.to_string() })
            .await
            .expect("learner added");
        // The learner catches up (by snapshot if the log was compacted) while writes go on.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leader = cluster.leader_of(group).unwrap();
            let target = cluster.nodes[&leader].status().into_iter().find(|s| s.group == group).unwrap();
            if let Some(mine) = cluster.nodes[&4].status().into_iter().find(|s| s.group == group) {
                if mine.applied + 50 >= target.applied && mine.keys > 0 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "node 4 did not catch up");
            sleep(Duration::from_millis(20)).await;
        }
        let e2 = client.change_members(group, MemberChange::Promote { node: 4 }).await.expect("promoted");
        // The member that leaves is the leader, the hardest case: it must hand over first.
        let old = cluster.leader_of(group).filter(|l| *l != 4).unwrap_or(1);
        old_member.set(old);
        let e3 = client.change_members(group, MemberChange::Remove { node: old }).await.expect("old member removed");
        assert!(e1 < e2 && e2 < e3, "epochs rise with each change: {e1} {e2} {e3}");
        let before = acked.borrow().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.borrow().len() < before + 300 {
            let status: Vec<_> = cluster.nodes.values().map(|n| n.status()).collect();
            assert!(Instant::now() < deadline, "writes stopped after the removal: {status:?}");
            sleep(Duration::from_millis(10)).await;
        }
        stop.set(true);
        writer.await;
    });
    // The old member applied its removal: it drops its replica (and refuses the group from
    // now on), and a restart does not bring the replica back.
    let old = old_member.get();
    cluster.assert_drops_group_for_good(old, group, &client.maps());
    // Now it goes away for good; group `group` lives on the other two and node 4.
    cluster.nodes.get_mut(&old).unwrap().kill();
    let status4 = cluster.nodes[&4].status().into_iter().find(|s| s.group == group).unwrap();
    let mut expected: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|n| *n != old).collect();
    expected.sort_unstable();
    assert_eq!(status4.voters, expected);
    // A client that knows only the old members and epoch finds its way.
    let fresh = cluster.client();
    rt.block_on(async {
        let sample: Vec<u64> = acked.borrow().iter().copied().filter(|i| i.is_multiple_of(7)).collect();
        for i in sample {
            let k = format!("w-{i}");
            if fresh.maps().group_of(k.as_bytes()).id != group {
                continue;
            }
            assert_eq!(fresh.get(k.as_bytes()).await.unwrap(), Some(vec![7; 500]), "{k}");
        }
        fresh.put(b"w-0", b"after").await.unwrap();
    });
    assert!(fresh.maps().group(group).unwrap().members.contains(&4));
}

#[test]
fn the_metadata_group_holds_the_maps_records_member_changes_and_a_joiner_hands_them_out() {
    use multispace_dht::api::table::MemberChange;
    use multispace_dht::maps::META_GROUP;

    let mut cluster = Cluster::start(3, 2, Durability::Durable);
    let initial = cluster.configs[&1].maps.clone();
    let client = cluster.client();
    let rt = rt();
    // Waits (bounded) until the metadata group stores maps that pass `ok`.
    let stored_when = |ok: &dyn Fn(&Maps) -> bool, what: &str| {
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(maps)) = client.stored_maps().await {
                    if ok(&maps) {
                        return maps;
                    }
                }
                assert!(Instant::now() < deadline, "the metadata group never stored {what}");
                sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // The first leader elected stores the configured maps (leader hints are not stored).
    let stored = stored_when(&|_| true, "any maps");
    assert_eq!(stored, Maps::decode(&initial.encode()).unwrap());
    assert!(cluster.nodes[&1].status().iter().any(|s| s.group == META_GROUP));

    // A joiner configured with other maps (four partitions, not two) learns the stored ones
    // and hands them out; a client that knows only the joiner routes every key right.
    let addr4 = cluster.start_joiner(4, |c| {
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        c.maps = Maps::even(&ids, 4, 3).unwrap();
    });
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let view = DhtClient::view_of(addr4, Duration::from_secs(1)).await.unwrap();
            if view.maps_from == "metadata group" {
                assert_eq!(view.maps.ranges().collect::<Vec<_>>(), initial.ranges().collect::<Vec<_>>());
                break;
            }
            assert!(Instant::now() < deadline, "the joiner still hands out its configured maps");
            sleep(Duration::from_millis(20)).await;
        }
        let via4 = DhtClient::connect(&[addr4], ClientConfig::default()).await.unwrap();
        for i in 0..40 {
            via4.put(format!("m-{i}").as_bytes(), b"v").await.unwrap();
        }
        for i in 0..40 {
            assert_eq!(client.get(format!("m-{i}").as_bytes()).await.unwrap(), Some(b"v".to_vec()));
        }
    });

    // A membership change is recorded: new members at the epoch the change returned.
    let epoch = rt.block_on(async {
        client.change_members(1, MemberChange::AddLearner { node: 4, addr: addr4.to_string() }).await.unwrap();
        client.change_members(1, MemberChange::Promote { node: 4 }).await.unwrap()
    });
    let stored = stored_when(&|m| m.group(1).is_some_and(|g| g.epoch >= epoch), "group 1's new epoch");
    let mut members = stored.group(1).unwrap().members.clone();
    members.sort_unstable();
    assert_eq!(members, vec![1, 2, 3, 4]);
    // So is a change to the metadata group itself, and its leader's death loses nothing.
    let meta_epoch = rt.block_on(async {
        client.change_members(META_GROUP, MemberChange::AddLearner { node: 4, addr: addr4.to_string() }).await.unwrap()
    });
    stored_when(&|m| m.meta().is_some_and(|g| g.epoch >= meta_epoch), "the metadata group's own change");
    let leader = cluster.leader_of(META_GROUP).unwrap();
    cluster.nodes.get_mut(&leader).unwrap().kill();
    let after = stored_when(&|_| true, "maps after its leader died");
    assert_eq!(after.group(1).map(|g| g.epoch), Some(stored.group(1).unwrap().epoch));
}

#[test]
fn a_member_that_was_down_when_removed_learns_it_and_drops_its_replica() {
    let mut cluster = Cluster::start(3, 2, Durability::Durable);
    let client = cluster.client();
    let group = client.maps().group_of(b"k-0").id;
    let rt = rt();
    let down = cluster.remove_a_follower_while_down(&rt, &client, group, 50);
    // It comes back with the replica it had, still a member as far as it knows; the members
    // answer its messages with "you were removed" and it drops the group.
    cluster.restart(down);
    cluster.assert_drops_group_for_good(down, group, &client.maps());
    // The group goes on with the two members left.
    rt.block_on(async {
        client.put(b"k-0", b"after").await.unwrap();
        assert_eq!(client.get(b"k-0").await.unwrap(), Some(b"after".to_vec()));
    });
}

#[test]
fn a_member_paused_when_removed_learns_it_from_the_members_posts_and_drops_its_replica() {
    use multispace_dht::api::table::MemberChange;
    // As above, but the member is frozen (its core blocked), not restarted: its links to the
    // others stay answered, so its messages go as posts. It learns of the removal from the
    // log (entries queued on its connections while it was frozen) or from a member's post
    // ("you were removed", the path the restarted member above takes), and must drop the
    // group either way.
    let mut cluster = Cluster::start(3, 2, Durability::Durable);
    let client = cluster.client();
    let group = client.maps().group_of(b"k-0").id;
    let rt = rt();
    rt.block_on(async {
        for i in 0..50 {
            client.put(format!("k-{i}").as_bytes(), b"v").await.unwrap();
        }
    });
    let leader = cluster.leader_of(group).expect("a leader after the first writes");
    let paused = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
    std::thread::scope(|s| {
        let (frozen_tx, frozen_rx) = std::sync::mpsc::channel::<()>();
        let (thaw_tx, thaw_rx) = std::sync::mpsc::channel::<()>();
        let node = &cluster.nodes[&paused];
        s.spawn(move || {
            node.with(move |_| {
                let _ = frozen_tx.send(());
                let _ = thaw_rx.recv_timeout(Duration::from_secs(60));
            })
        });
        frozen_rx.recv_timeout(Duration::from_secs(10)).expect("the node froze");
        rt.block_on(async {
            client.change_members(group, MemberChange::Remove { node: paused }).await.expect("removed while frozen");
            for i in 50..100 {
                client.put(format!("k-{i}").as_bytes(), b"v").await.unwrap();
            }
        });
        thaw_tx.send(()).unwrap();
    });
    cluster.assert_drops_group_for_good(paused, group, &client.maps());
    rt.block_on(async {
        client.put(b"k-0", b"after").await.unwrap();
        assert_eq!(client.get(b"k-0").await.unwrap(), Some(b"after".to_vec()));
    });
}

#[test]
fn a_removal_compacted_into_snapshots_is_still_told_after_every_member_restarts_and_the_id_cannot_rejoin() {
    use multispace_dht::api::table::MemberChange;

    // Snapshots every 10 entries: the removal ends up inside the members' snapshots, and
    // their logs start after it.
    let mut cluster = Cluster::start_with(3, 1, Durability::Durable, |c| c.replica.snapshot_every = 10);
    let client = cluster.client();
    let group = client.maps().group_of(b"k-0").id;
    let rt = rt();
    let down = cluster.remove_a_follower_while_down(&rt, &client, group, 20);
    let down_addr = cluster.configs[&down].listen;
    // Both members restart from their disks: what they know of the removal now comes from
    // their snapshots, not from memory or a log replay.
    let members: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != down).collect();
    for &m in &members {
        cluster.nodes.get_mut(&m).unwrap().kill();
    }
    for &m in &members {
        cluster.restart(m);
    }
    cluster.restart(down);
    cluster.assert_drops_group_for_good(down, group, &client.maps());
    rt.block_on(async {
        client.put(b"k-0", b"after").await.unwrap();
        assert_eq!(client.get(b"k-0").await.unwrap(), Some(b"after".to_vec()));
        // The same id may not come back: it would rejoin with its old votes and log.
        let again = MemberChange::AddLearner { node: down, addr: down_addr.to_string() };
        match client.change_members(group, again).await {
            Err(DhtError::Invalid(why)) => assert!(why.contains("cannot rejoin under the same id"), "{why}"),
            other => panic!("re-adding removed node {down} was not refused: {other:?}"),
        }
    });
}

#[test]
fn a_learner_catches_up_from_a_snapshot_larger_than_one_rpc_may_carry() {
    use multispace_dht::api::table::MemberChange;

    // Snapshots every 4 entries, so the learner cannot be sent the log: it needs the
    // snapshot, about 24 MiB here, more than the rpc's 16 MiB message limit.
    let mut cluster = Cluster::start_with(3, 1, Durability::Durable, |c| c.replica.snapshot_every = 4);
    let client = cluster.client();
    let group = client.maps().group_of(b"big-0").id;
    let value = vec![0x42; 1_000_000];
    let rt = rt();
    rt.block_on(async {
        for i in 0..24 {
            client.put(format!("big-{i}").as_bytes(), &value).await.unwrap();
        }
    });
    let addr4 = cluster.start_joiner(4, |c| c.replica.snapshot_every = 4);
    rt.block_on(async {
        client
            .change_members(group, MemberChange::AddLearner { node: 4, addr: addr4.to_string() })
            .await
            .expect("learner added");
        // Writes go on while the snapshot travels.
        for i in 0..20 {
            client.put(format!("small-{i}").as_bytes(), b"v").await.unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mine = cluster.nodes[&4].status().into_iter().find(|s| s.group == group);
        if mine.as_ref().is_some_and(|s| s.keys >= 24) {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 did not receive the large snapshot: {mine:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Promoted, it holds the data: with a majority of 3 of 4, it now takes part in commits.
    rt.block_on(async {
        client.change_members(group, MemberChange::Promote { node: 4 }).await.expect("promoted");
        client.put(b"after", b"1").await.unwrap();
        assert_eq!(client.get(b"big-23").await.unwrap(), Some(value.clone()));
    });
}

/// A tmpfs of `size` mounted on a new temporary directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill a node's disk and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_stops_one_node_cleanly_and_it_recovers_once_space_is_back() {
    use multispace_dht::client::DhtClient;
    let mut cluster = Cluster::start(3, 1, Durability::Durable);
    // Node 3 moves to a disk with little room.
    let tmpfs = Tmpfs::mount("8m");
    cluster.nodes.get_mut(&3).unwrap().kill();
    let data3 = tmpfs.0.path().join("n3");
    cluster.configs.get_mut(&3).unwrap().data_dir = Some(data3.clone());
    cluster.restart(3);
    let client = cluster.client();
    let rt = rt();
    let addr3 = cluster.configs[&3].listen;
    let filler = tmpfs.0.path().join("filler");
    rt.block_on(async {
        client.put(b"first", b"1").await.unwrap();
        // Leave about 300 KiB free.
        let free = {
            let out =
                std::process::Command::new("df").args(["-B1", "--output=avail"]).arg(tmpfs.0.path()).output().unwrap();
            String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse::<u64>().unwrap()
        };
        std::fs::write(&filler, vec![0u8; free.saturating_sub(300 * 1024) as usize]).unwrap();
        // Writes go on (two of three replicas suffice) until node 3's disk is full and it stops.
        let mut i = 0;
        let failed = loop {
            client.put(format!("k{i}").as_bytes(), &[1; 500]).await.expect("the majority keeps writing");
            i += 1;
            if i % 50 == 0 {
                if let Ok(view) = DhtClient::view_of(addr3, Duration::from_secs(1)).await {
                    if let Some(f) = view.failed {
                        break f;
                    }
                }
            }
            assert!(i < 20_000, "node 3 never ran out of disk");
        };
        assert!(failed.contains("disk full") || failed.contains("No space"), "{failed}");
        for j in 0..100 {
            client.put(format!("after-{j}").as_bytes(), b"x").await.unwrap();
        }
    });
    // Space comes back; node 3 restarts from its log, intact, and catches up.
    std::fs::remove_file(&filler).unwrap();
    cluster.nodes.get_mut(&3).unwrap().kill();
    cluster.restart(3);
    let deadline = Instant::now() + Duration::from_secs(20);
    rt.block_on(async {
        loop {
            let leader = cluster.leader_of(1).unwrap();
            let target = cluster.nodes[&leader].status().into_iter().next().unwrap();
            let mine = cluster.nodes[&3].status().into_iter().next().unwrap();
            if mine.applied >= target.applied && mine.keys == target.keys {
                break;
            }
            assert!(Instant::now() < deadline, "node 3 did not catch up: {mine:?} vs {target:?}");
            sleep(Duration::from_millis(20)).await;
        }
    });
    drop(cluster);
}

#[test]
fn requests_to_a_frozen_leader_go_to_its_successor_before_the_attempt_times_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // A leader frozen (its core blocked) keeps its connections open and answers nothing, unlike
    // a dead process whose sockets close at once. With an attempt timeout of an hour, a put and
    // a get of its group succeed while it is still frozen only if the client asks the other
    // members meanwhile and follows them to the leader they elect.
    let cluster = Cluster::start(3, 2, Durability::Memory);
    let any = cluster.configs.values().next().unwrap();
    let config = ClientConfig {
        deadline: Duration::from_secs(7200),
        attempt_timeout: Duration::from_secs(3600),
        ..ClientConfig::default()
    };
    let client = DhtClient::new(any.maps.clone(), any.nodes.clone(), config);
    let group = client.maps().group_of(b"k-0").id;
    let rt = rt();
    // The client learns the leader, which is then asked first.
    rt.block_on(async { client.put(b"k-0", b"before").await.unwrap() });
    let leader = cluster.leader_of(group).expect("a leader after the first write");
    let thawed = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let (frozen_tx, frozen_rx) = std::sync::mpsc::channel::<()>();
        let (thaw_tx, thaw_rx) = std::sync::mpsc::channel::<()>();
        let (node, flag) = (&cluster.nodes[&leader], thawed.clone());
        s.spawn(move || {
            node.with(move |_| {
                let _ = frozen_tx.send(());
                let _ = thaw_rx.recv_timeout(Duration::from_secs(60));
                flag.store(true, Ordering::SeqCst);
            })
        });
        frozen_rx.recv_timeout(Duration::from_secs(10)).expect("the leader froze");
        rt.block_on(async {
            client.put(b"k-0", b"after").await.unwrap();
            assert_eq!(client.get(b"k-0").await.unwrap(), Some(b"after".to_vec()));
        });
        assert!(!thawed.load(Ordering::SeqCst), "the requests waited for the frozen leader {leader} to thaw");
        thaw_tx.send(()).unwrap();
    });
    assert_ne!(client.maps().group(group).unwrap().leader_hint, Some(leader), "the client follows the new leader");
}
