//! The replicated table as real processes on loopback, under faults: `kill -9` of a leader
//! under load (then a restart from its disk), and a node paused with SIGSTOP (then resumed),
//! while clients write, compare-and-swap and read shared keys. Afterwards: every
//! acknowledged write is there, and the recorded client history is linearizable.
//!
//! `DHT_FAULT_CYCLES=<n>` runs more fault cycles (a soak); the default keeps CI short.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use multispace_dht::client::{ClientConfig, DhtClient, DhtError};
use multispace_dht::linearizability::{self, Kind, Operation};
use multispace_rpc::runtime::time::sleep;
use multispace_rpc::LocalRuntime;

struct Node {
    id: u64,
    addr: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_multispace"))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a table node");
        self.child = Some(child);
        self.stopped = false;
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&mut self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill").args([sig, &c.id().to_string()]).status().is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} failed");
            self.stopped = sig == "-STOP";
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.stopped {
            self.signal("-CONT");
        }
        self.kill9();
    }
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// Certificates for the three nodes and the test's client (`admin`), made by the CLI itself:
/// the fault test runs the secure default, mutual TLS.
fn certs(dir: &Path) -> std::path::PathBuf {
    let certs = dir.join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_multispace"))
        .args(["cert", "init", "--nodes", "3", "--clients", "admin", "--dir"])
        .arg(&certs)
        .output()
        .expect("run multispace cert init");
    assert!(out.status.success(), "cert init: {}", String::from_utf8_lossy(&out.stderr));
    certs
}

fn cluster(dir: &Path) -> Vec<Node> {
    let certs = certs(dir);
    let addrs = free_addrs(3);
    let list: Vec<String> = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
    (1..=3u64)
        .map(|id| {
            let data = dir.join(format!("n{id}"));
            let args = vec![
                "dht".into(),
                "serve".into(),
                "--id".into(),
                id.to_string(),
                "--nodes".into(),
                list.join(","),
                "--partitions".into(),
                "3".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--tls-dir".into(),
                certs.display().to_string(),
            ];
            let mut n = Node {
                id,
                addr: addrs[id as usize - 1],
                args,
                log: dir.join(format!("n{id}.log")),
                child: None,
                stopped: false,
            };
            n.start();
            n
        })
        .collect()
}

/// A small deterministic generator for the workload and the fault schedule.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const REGISTERS: u64 = 8;

fn parse(v: Option<Vec<u8>>) -> Option<u64> {
    v.map(|b| String::from_utf8(b).unwrap().parse().unwrap())
}

#[derive(Default)]
struct Record {
    history: Vec<Operation>,
    acked: Vec<(Vec<u8>, Vec<u8>)>,
    unknown_writes: u64,
}

async fn client_loop(c: u64, client: DhtClient, t0: Instant, stop: Rc<RefCell<bool>>, rec: Rc<RefCell<Record>>) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (c + 1));
    let mut next_value = c * 1_000_000;
    let mut last_seen: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let now = || t0.elapsed().as_nanos() as u64;
    let mut i = 0u64;
    while !*stop.borrow() {
        i += 1;
        // Now and then start from no leader hint, so requests also reach followers and
        // deposed leaders, as a client with stale routing would.
        if i.is_multiple_of(8) {
            client.forget_leaders();
        }
        // A ledger write: a key only this client writes, checked for at the end.
        if i.is_multiple_of(4) {
            let (k, v) = (format!("ledger-{c}-{i}").into_bytes(), format!("{c}:{i}").into_bytes());
            match client.put(&k, &v).await {
                Ok(()) => rec.borrow_mut().acked.push((k, v)),
                Err(_) => rec.borrow_mut().unknown_writes += 1,
            }
            continue;
        }
        let key = rng.below(REGISTERS);
        let k = format!("reg-{key}").into_bytes();
        next_value += 1;
        let call = now();
        let (kind, known) = match rng.below(3) {
            0 => {
                let r = client.put(&k, next_value.to_string().as_bytes()).await;
                (Kind::Put(Some(next_value)), r.is_ok())
            }
            1 => match client.get(&k).await {
                Ok(v) => {
                    let v = parse(v);
                    last_seen.insert(key, v);
                    (Kind::Get(v), true)
                }
                Err(_) => continue,
            },
            _ => {
                let expected = last_seen.get(&key).copied().flatten();
                let exp_bytes = expected.map(|e| e.to_string().into_bytes());
                let r = client.cas(&k, exp_bytes.as_deref(), Some(next_value.to_string().as_bytes())).await;
                match r {
                    Ok(Ok(())) => {
                        last_seen.insert(key, Some(next_value));
                        (Kind::Cas { expected, new: Some(next_value), ok: Some(true), seen: None }, true)
                    }
                    Ok(Err(current)) => {
                        let current = parse(current);
                        last_seen.insert(key, current);
                        (Kind::Cas { expected, new: Some(next_value), ok: Some(false), seen: current }, true)
                    }
                    Err(DhtError::Unavailable { .. }) => {
                        (Kind::Cas { expected, new: Some(next_value), ok: None, seen: None }, false)
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        };
        let ret = known.then(now);
        rec.borrow_mut().history.push(Operation { key, call, ret, kind });
    }
}

#[test]
fn leaders_killed_and_nodes_paused_lose_no_acknowledged_write_and_stay_linearizable() {
    let cycles: u64 = std::env::var("DHT_FAULT_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path());
    let addrs: BTreeMap<u64, SocketAddr> = nodes.iter().map(|n| (n.id, n.addr)).collect();
    let certs = dir.path().join("certs");
    let tls = multispace_rpc::TlsConfig::from_files(
        &certs.join("ca.pem"),
        &certs.join("admin.pem"),
        &certs.join("admin.key"),
    )
    .unwrap();
    let conn = multispace_rpc::ConnConfig { tls: Some(tls), ..Default::default() };
    let rt = LocalRuntime::new(multispace_rpc::Config { conn, ..Default::default() }).unwrap();
    let config = ClientConfig {
        deadline: Duration::from_secs(15),
        attempt_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let seeds: Vec<SocketAddr> = addrs.values().copied().collect();
    let t0 = Instant::now();
    let rec = Rc::new(RefCell::new(Record::default()));
    let stop = Rc::new(RefCell::new(false));
    let (mut kills, mut pauses) = (0, 0);
    rt.block_on(async {
        // The first contact waits for the nodes to come up and elect leaders.
        let mut probe = None;
        for _ in 0..200 {
            if let Ok(c) = DhtClient::connect(&seeds, config).await {
                if c.put(b"hello", b"world").await.is_ok() {
                    probe = Some(c);
                    break;
                }
            }
            sleep(Duration::from_millis(50)).await;
        }
        let probe = probe.expect("the table came up");
        // The maps live in the metadata group, which only nodes may write: this client's
        // certificate (`admin`) may read them but not record a made-up epoch.
        // (The first leader of the metadata group stores them: wait for that, bounded.)
        let mut stored = None;
        for _ in 0..200 {
            stored = probe.stored_maps().await.expect("read the metadata group");
            if stored.is_some() {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        let stored = stored.expect("the metadata group stored the maps");
        let forged = multispace_dht::maps::Group { epoch: 1_000, ..stored.group(1).unwrap().clone() };
        match probe.record_groups(&stored, &[forged]).await {
            Err(multispace_dht::client::DhtError::Invalid(why)) => {
                assert!(why.contains("only nodes write the metadata group"), "{why}")
            }
            other => panic!("a client wrote the metadata group: {other:?}"),
        }
        let tasks: Vec<_> = (0..6u64)
            .map(|c| {
                let client = DhtClient::new(probe.maps(), probe.nodes(), config);
                multispace_rpc::spawn(client_loop(c, client, t0, stop.clone(), rec.clone()))
            })
            .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for cycle in 0..cycles {
            sleep(Duration::from_millis(300 + rng.below(300))).await;
            if cycle % 3 == 2 {
                // Pause a node (it holds leaders and followers alike), then resume it.
                let i = rng.below(3) as usize;
                nodes[i].signal("-STOP");
                sleep(Duration::from_millis(400)).await;
                nodes[i].signal("-CONT");
                pauses += 1;
            } else {
                // kill -9 the leader of a random group, let the others carry on, restart it.
                let group = rng.below(3) + 1;
                let mut victim = None;
                for n in nodes.iter() {
                    if let Ok(view) = DhtClient::view_of(n.addr, Duration::from_millis(500)).await {
                        if view.replicas.iter().any(|r| r.group == group && r.role == "leader") {
                            victim = Some(n.id);
                        }
                    }
                }
                let victim = victim.unwrap_or(group);
                let i = nodes.iter().position(|n| n.id == victim).unwrap();
                nodes[i].kill9();
                kills += 1;
                sleep(Duration::from_millis(500)).await;
                nodes[i].start();
            }
        }
        *stop.borrow_mut() = true;
        for t in tasks {
            t.await;
        }
        // Every acknowledged ledger write must be there, read linearizably.
        let checker = DhtClient::new(probe.maps(), probe.nodes(), config);
        assert_eq!(checker.stored_maps().await.expect("metadata group after the faults"), Some(stored));
        let acked = rec.borrow().acked.clone();
        for (k, v) in &acked {
            let got = checker.get(k).await.expect("read after the faults");
            assert_eq!(got.as_deref(), Some(v.as_slice()), "lost acknowledged write {}", String::from_utf8_lossy(k));
        }
    });
    let rec = rec.borrow();
    let violations = linearizability::check(&rec.history);
    eprintln!(
        "{} register ops ({} with unknown outcome), {} acknowledged ledger writes ({} unknown), {kills} leader kills, {pauses} pauses: {} non-linearizable keys",
        rec.history.len(),
        rec.history.iter().filter(|o| o.ret.is_none()).count(),
        rec.acked.len(),
        rec.unknown_writes,
        violations.len()
    );
    assert!(rec.acked.len() > 50, "too little work got done to mean anything");
    assert!(violations.is_empty(), "not linearizable: {violations:?}");
}
