//! The replicated table against etcd and Redis, side by side in one run: 500-byte puts and
//! gets with many concurrent clients, single-client latency, and leader failover time.
//!
//! Systems: our 3-replica table (durable: acknowledged after a majority fdatasynced; memory:
//! after a majority holds it), a 3-member etcd cluster (its default: every write fsynced by a
//! majority), and one Redis server with `appendfsync always` and with no persistence. Every
//! server runs on loopback on this machine; data directories live under `target/` (a real
//! disk, not tmpfs, so fsyncs cost what they cost). etcd and Redis come from Debian's packages
//! (`bench/table.sh` installs them); a system whose binary is missing is skipped and reported.
//!
//! Clients: ours are `DhtClient`s on one core of our runtime; etcd's are gRPC clients (tonic,
//! one HTTP/2 channel per client, spread over the three members) and Redis's are RESP
//! connections, both on one tokio thread. Each client runs one operation at a time.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use multispace_dht::client::{ClientConfig, DhtClient};
use multispace_dht::maps::{preferred_leader, Maps};
use multispace_dht::server::{DhtConfig, Durability};
use multispace_dht::thread::DhtThread;
use multispace_rpc::LocalRuntime;
use serde::Serialize;

/// What every system is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Concurrent clients in the throughput phase.
    pub clients: usize,
    /// How long each throughput phase runs.
    pub duration: Duration,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Distinct keys written and read.
    pub keys: u64,
    /// Operations of the single-client latency phase.
    pub single_ops: u64,
}

/// Put or get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvOp {
    /// Write a 500-byte value.
    Put,
    /// Read one back.
    Get,
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct TableRow {
    /// System and mode, e.g. "multispace durable".
    pub system: String,
    /// The operation.
    pub op: KvOp,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations completed in the throughput phase.
    pub ops: u64,
    /// Throughput.
    pub ops_per_s: f64,
    /// Latency under load.
    pub p50_us: f64,
    /// Latency under load.
    pub p99_us: f64,
    /// Latency with one client.
    pub single_p50_us: f64,
    /// Latency with one client.
    pub single_p99_us: f64,
    /// CPU time per operation under load, for systems running inside the benchmark process
    /// (ours: its three nodes and the clients together); `None` for external servers.
    pub cpu_us_per_op: Option<f64>,
}

/// Latencies and a count from one phase.
#[derive(Debug)]
pub struct Measured {
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    /// CPU time (user and system, every thread) this process spent in the phase, when the
    /// system measured runs inside it (ours: nodes and clients together).
    cpu: Option<Duration>,
}

/// CPU time (user and system) of every thread of this process so far, from /proc/self/stat
/// (in USER_HZ ticks, 100 a second on Linux: fine for phases of seconds).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

impl Measured {
    /// Wall time of the phase.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn key(n: u64) -> Vec<u8> {
    format!("key-{n:08}").into_bytes()
}

/// A per-client key sequence (xorshift), so clients spread over the key space.
fn next_key(state: &mut u64, keys: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % keys
}

fn row(system: &str, op: KvOp, clients: usize, load: &Measured, single: &Measured) -> TableRow {
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    TableRow {
        system: system.into(),
        op,
        clients,
        ops: load.ops,
        ops_per_s: load.ops as f64 / load.elapsed.as_secs_f64(),
        p50_us: us(&load.hist, 0.5),
        p99_us: us(&load.hist, 0.99),
        single_p50_us: us(&single.hist, 0.5),
        single_p99_us: us(&single.hist, 0.99),
        cpu_us_per_op: load.cpu.map(|c| c.as_secs_f64() * 1e6 / load.ops.max(1) as f64),
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    ls.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

fn fresh_dir(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let d = root.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

// ---------------------------------------------------------------------------------------------
// Ours

/// Our 3-node table, each node on its own core thread.
pub struct OurTable {
    nodes: Vec<DhtThread>,
    maps: Maps,
    addrs: BTreeMap<u64, SocketAddr>,
    configs: Vec<DhtConfig>,
}

impl OurTable {
    /// Starts 3 nodes with 3 partitions (one leader per node once elections settle).
    pub fn start(durability: Durability, root: &Path) -> anyhow::Result<Self> {
        let ports = free_ports(3);
        let addrs: BTreeMap<u64, SocketAddr> =
            (1..=3).zip(ports).map(|(id, p)| (id, SocketAddr::from(([127, 0, 0, 1], p)))).collect();
        let maps = Maps::even(&[1, 2, 3], 3, 3)?;
        let mut configs = Vec::new();
        for id in 1..=3 {
            let mut c = DhtConfig::new(id, addrs.clone(), maps.clone(), durability);
            if durability == Durability::Durable {
                c.data_dir = Some(fresh_dir(root, &format!("multispace-{id}"))?);
            }
            configs.push(c);
        }
        let nodes = configs.iter().map(|c| DhtThread::start(c.clone())).collect::<Result<_, _>>()?;
        let table = OurTable { nodes, maps, addrs, configs };
        table.wait_balanced();
        Ok(table)
    }

    /// Waits (at most 10 s) until every group is led by its preferred voter, as a cluster is
    /// once its leaders have spread after start-up: measuring before would find one node
    /// leading every group (whichever won the first elections), which does all the work.
    fn wait_balanced(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let balanced = |t: &Self| {
            let statuses: Vec<_> = t.nodes.iter().map(|n| n.status()).collect();
            t.maps.groups().all(|g| {
                statuses
                    .iter()
                    .flatten()
                    .any(|s| s.group == g.id && s.role == "leader" && preferred_leader(s.group, &s.voters) == s.leader)
            })
        };
        while !balanced(self) {
            if Instant::now() > deadline {
                eprintln!("  leaders not spread after 10 s: {}", self.leaders());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Which node leads which groups now, e.g. "node 1: 1 0, node 2: 2, node 3: 3" (group 0 is
    /// the metadata group).
    pub fn leaders(&self) -> String {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let led: Vec<String> =
                n.status().iter().filter(|s| s.role == "leader").map(|s| s.group.to_string()).collect();
            out.push(format!("node {}: {}", i + 1, if led.is_empty() { "-".to_string() } else { led.join(" ") }));
        }
        out.join(", ")
    }

    fn client(&self) -> DhtClient {
        DhtClient::new(self.maps.clone(), self.addrs.clone(), ClientConfig::default())
    }

    /// Runs `clients` clients doing `op` for `duration` (or `ops` operations if given).
    pub fn measure(&self, op: KvOp, clients: usize, duration: Duration, ops: Option<u64>, w: &Workload) -> Measured {
        // Where the load went: who led which group, and how often each node's log synced.
        let fsyncs = |t: &Self| -> Vec<u64> { t.nodes.iter().map(|n| n.with(|s| s.fsyncs()).unwrap_or(0)).collect() };
        let f0 = fsyncs(self);
        let leaders = self.leaders();
        let rt = LocalRuntime::new(Default::default()).expect("client runtime");
        let value = vec![0x5a; w.value_bytes];
        let keys = w.keys;
        let cpu_before = process_cpu();
        rt.block_on(async {
            let hist = Rc::new(RefCell::new(hist()));
            let count = Rc::new(Cell::new(0u64));
            let started = Instant::now();
            let end = started + duration;
            let tasks: Vec<_> = (0..clients)
                .map(|c| {
                    let client = self.client();
                    let (hist, count, value) = (hist.clone(), count.clone(), value.clone());
                    multispace_rpc::spawn(async move {
                        let mut state = 0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1);
                        loop {
                            if ops.map_or(Instant::now() >= end, |n| count.get() >= n) {
                                break;
                            }
                            let k = key(next_key(&mut state, keys));
                            let t0 = Instant::now();
                            let ok = match op {
                                KvOp::Put => client.put(&k, &value).await.is_ok(),
                                KvOp::Get => client.get(&k).await.is_ok(),
                            };
                            if ok {
                                let _ = hist.borrow_mut().record(t0.elapsed().as_nanos() as u64);
                                count.set(count.get() + 1);
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            let elapsed = started.elapsed();
            let h = hist.borrow().clone();
            let rates: Vec<String> = fsyncs(self)
                .iter()
                .zip(&f0)
                .map(|(a, b)| format!("{:.0}", (a - b) as f64 / elapsed.as_secs_f64()))
                .collect();
            eprintln!("  {} ops; leaders {leaders}; fdatasyncs/s per node {}", count.get(), rates.join(" "));
            Measured { ops: count.get(), elapsed, hist: h, cpu: Some(process_cpu() - cpu_before) }
        })
    }

    /// Writes every key once (so gets find values).
    pub fn preload(&self, w: &Workload) {
        let rt = LocalRuntime::new(Default::default()).expect("client runtime");
        let value = vec![0x5a; w.value_bytes];
        rt.block_on(async {
            let client = self.client();
            let keys = w.keys;
            let per = keys.div_ceil(16);
            let tasks: Vec<_> = (0..16u64)
                .map(|t| {
                    let (client, value) = (client.clone(), value.clone());
                    multispace_rpc::spawn(async move {
                        for k in (t * per)..((t + 1) * per).min(keys) {
                            let _ = client.put(&key(k), &value).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
        });
    }

    /// Kills the leader of the group owning a key and times the first acknowledged put to
    /// that group afterwards; then restarts the killed node from its disk.
    pub fn failover(&mut self) -> anyhow::Result<Duration> {
        let probe = b"failover-probe".to_vec();
        let group = self.maps.group_of(&probe).id;
        let rt = LocalRuntime::new(Default::default())?;
        let client = self.client();
        rt.block_on(async { client.put(&probe, b"before").await })?;
        let leader = self
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.status().iter().any(|s| s.group == group && s.role == "leader"))
            .map(|(i, _)| i)
            .context("no leader for the probe's group")?;
        let killed_at = Instant::now();
        self.nodes[leader].kill();
        let elapsed = rt.block_on(async {
            let mut i = 0u64;
            loop {
                i += 1;
                if client.put(&probe, format!("after-{i}").as_bytes()).await.is_ok() {
                    return Ok::<_, anyhow::Error>(killed_at.elapsed());
                }
                if killed_at.elapsed() > Duration::from_secs(30) {
                    bail!("no put succeeded within 30 s of killing the leader");
                }
            }
        })?;
        self.nodes[leader] = DhtThread::start(self.configs[leader].clone())?;
        Ok(elapsed)
    }
}

// ---------------------------------------------------------------------------------------------
// External servers

/// Child processes killed (and reaped) on drop.
pub struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn have(binary: &str) -> bool {
    Command::new(binary).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Polls `probe` until it says the server answers, or fails after `within`.
fn wait_ready<F, Fut>(what: &str, within: Duration, probe: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    tokio_rt().block_on(async {
        while !probe().await {
            if Instant::now() > deadline {
                bail!("{what} did not start serving within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    })
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// Runs `clients` tokio tasks, each calling `call(client_index, key)` until the time or count
/// is reached.
fn measure_tokio<S, F, Fut>(
    setup: S,
    clients: usize,
    duration: Duration,
    ops: Option<u64>,
    keys: u64,
    call: F,
) -> anyhow::Result<Measured>
where
    S: AsyncSetup,
    F: Fn(Rc<S::Conn>, Vec<u8>) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = bool> + 'static,
{
    let rt = tokio_rt();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut conns = Vec::new();
        for c in 0..clients {
            conns.push(Rc::new(setup.connect(c).await?));
        }
        let hist = Rc::new(RefCell::new(hist()));
        let count = Rc::new(Cell::new(0u64));
        let started = Instant::now();
        let end = started + duration;
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(c, conn)| {
                let (hist, count, call) = (hist.clone(), count.clone(), call.clone());
                tokio::task::spawn_local(async move {
                    let mut state = 0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1);
                    loop {
                        if ops.map_or(Instant::now() >= end, |n| count.get() >= n) {
                            break;
                        }
                        let k = key(next_key(&mut state, keys));
                        let t0 = Instant::now();
                        if call(conn.clone(), k).await {
                            let _ = hist.borrow_mut().record(t0.elapsed().as_nanos() as u64);
                            count.set(count.get() + 1);
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        let elapsed = started.elapsed();
        let h = hist.borrow().clone();
        Ok(Measured { ops: count.get(), elapsed, hist: h, cpu: None })
    })
}

/// Opens a client connection of an external system.
pub trait AsyncSetup: 'static {
    /// One client's connection.
    type Conn: 'static;
    /// Connects client number `c`.
    fn connect(&self, c: usize) -> impl std::future::Future<Output = anyhow::Result<Self::Conn>>;
}

// etcd ----------------------------------------------------------------------------------------

#[allow(clippy::all, missing_docs, missing_debug_implementations, rust_2018_idioms)]
mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

type EtcdConn = RefCell<etcdpb::kv_client::KvClient<tonic::transport::Channel>>;

/// A 3-member etcd cluster on loopback.
pub struct Etcd {
    _procs: Procs,
    endpoints: Vec<String>,
}

impl Etcd {
    /// Starts the cluster (data under `root`) and waits until it serves writes.
    pub fn start(root: &Path) -> anyhow::Result<Option<Etcd>> {
        if !have("etcd") {
            return Ok(None);
        }
        let ports = free_ports(6);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[3 + i]);
        let client = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
        let cluster: Vec<String> = (0..3).map(|i| format!("e{i}={}", peer(i))).collect();
        let mut procs = Procs(Vec::new());
        for i in 0..3 {
            let dir = fresh_dir(root, &format!("etcd-{i}"))?;
            let child = Command::new("etcd")
                .args(["--name", &format!("e{i}"), "--data-dir"])
                .arg(&dir)
                .args(["--listen-client-urls", &client(i), "--advertise-client-urls", &client(i)])
                .args(["--listen-peer-urls", &peer(i), "--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
                .args(["--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting etcd")?;
            procs.0.push(child);
        }
        let etcd = Etcd { _procs: procs, endpoints: (0..3).map(client).collect() };
        let endpoints = etcd.endpoints.clone();
        wait_ready("etcd", Duration::from_secs(30), || {
            let setup = EtcdSetup { endpoints: endpoints.clone() };
            async move {
                let Ok(conn) = setup.connect(0).await else { return false };
                let req = etcdpb::PutRequest { key: b"ready".to_vec(), value: b"1".to_vec(), ..Default::default() };
                conn.into_inner().put(req).await.is_ok()
            }
        })?;
        Ok(Some(etcd))
    }

    /// Runs the clients.
    pub fn measure(
        &self,
        op: KvOp,
        clients: usize,
        duration: Duration,
        ops: Option<u64>,
        w: &Workload,
    ) -> anyhow::Result<Measured> {
        let value = vec![0x5a; w.value_bytes];
        let endpoints = self.endpoints.clone();
        let setup = EtcdSetup { endpoints };
        measure_tokio(setup, clients, duration, ops, w.keys, move |conn: Rc<EtcdConn>, k: Vec<u8>| {
            let value = value.clone();
            async move {
                // The client is cheap to clone (it shares the channel); no borrow across await.
                let mut c = conn.borrow().clone();
                match op {
                    KvOp::Put => c.put(etcdpb::PutRequest { key: k, value, ..Default::default() }).await.is_ok(),
                    KvOp::Get => c.range(etcdpb::RangeRequest { key: k, ..Default::default() }).await.is_ok(),
                }
            }
        })
    }

    /// Writes every key once.
    pub fn preload(&self, w: &Workload) -> anyhow::Result<()> {
        self.measure(KvOp::Put, 16, Duration::from_secs(3600), Some(w.keys), w).map(drop)
    }
}

struct EtcdSetup {
    endpoints: Vec<String>,
}

impl AsyncSetup for EtcdSetup {
    type Conn = EtcdConn;
    async fn connect(&self, c: usize) -> anyhow::Result<EtcdConn> {
        let ep = self.endpoints[c % self.endpoints.len()].clone();
        let ch = tonic::transport::Endpoint::from_shared(ep)?.connect().await?;
        Ok(RefCell::new(etcdpb::kv_client::KvClient::new(ch)))
    }
}

// Redis ---------------------------------------------------------------------------------------

/// One Redis server on loopback.
pub struct Redis {
    _procs: Procs,
    addr: SocketAddr,
}

type RedisConn = RefCell<Option<tokio::io::BufStream<tokio::net::TcpStream>>>;

struct RedisSetup {
    addr: SocketAddr,
}

impl AsyncSetup for RedisSetup {
    type Conn = RedisConn;
    async fn connect(&self, _c: usize) -> anyhow::Result<RedisConn> {
        let s = tokio::net::TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(RefCell::new(Some(tokio::io::BufStream::new(s))))
    }
}

/// Sends one RESP command and reads its reply: `Ok(Some(bytes))` for a bulk string, `Ok(None)`
/// for a simple string or nil.
async fn resp(s: &mut tokio::io::BufStream<tokio::net::TcpStream>, args: &[&[u8]]) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend(b"\r\n");
    }
    s.write_all(&out).await?;
    s.flush().await?;
    let mut line = String::new();
    s.read_line(&mut line).await?;
    match line.as_bytes().first() {
        Some(b'+') => Ok(None),
        Some(b'$') => {
            let len: i64 = line[1..].trim().parse().map_err(std::io::Error::other)?;
            if len < 0 {
                return Ok(None);
            }
            let mut buf = vec![0; len as usize + 2];
            s.read_exact(&mut buf).await?;
            buf.truncate(len as usize);
            Ok(Some(buf))
        }
        _ => Err(std::io::Error::other(format!("redis said: {}", line.trim()))),
    }
}

impl Redis {
    /// Starts a server: `aof_always` logs every write with fsync before replying; otherwise no
    /// persistence at all.
    pub fn start(root: &Path, aof_always: bool) -> anyhow::Result<Option<Redis>> {
        if !have("redis-server") {
            return Ok(None);
        }
        let port = free_ports(1)[0];
        let dir = fresh_dir(root, if aof_always { "redis-aof" } else { "redis-mem" })?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""]).arg("--dir").arg(&dir);
        if aof_always {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().context("starting redis-server")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let redis = Redis { _procs: Procs(vec![child]), addr };
        wait_ready("redis", Duration::from_secs(20), || async move {
            let Ok(conn) = (RedisSetup { addr }).connect(0).await else { return false };
            let mut s = conn.borrow_mut().take().expect("fresh connection");
            resp(&mut s, &[b"PING"]).await.is_ok()
        })?;
        Ok(Some(redis))
    }

    /// Runs the clients.
    pub fn measure(
        &self,
        op: KvOp,
        clients: usize,
        duration: Duration,
        ops: Option<u64>,
        w: &Workload,
    ) -> anyhow::Result<Measured> {
        let value = vec![0x5a; w.value_bytes];
        measure_tokio(
            RedisSetup { addr: self.addr },
            clients,
            duration,
            ops,
            w.keys,
            move |conn: Rc<RedisConn>, k: Vec<u8>| {
                let value = value.clone();
                async move {
                    // One operation at a time per connection: take the stream out for the call.
                    let Some(mut s) = conn.borrow_mut().take() else { return false };
                    let r = match op {
                        KvOp::Put => resp(&mut s, &[b"SET", &k, &value]).await,
                        KvOp::Get => resp(&mut s, &[b"GET", &k]).await,
                    };
                    *conn.borrow_mut() = Some(s);
                    r.is_ok()
                }
            },
        )
    }

    /// Writes every key once.
    pub fn preload(&self, w: &Workload) -> anyhow::Result<()> {
        self.measure(KvOp::Put, 16, Duration::from_secs(3600), Some(w.keys), w).map(drop)
    }
}

// ---------------------------------------------------------------------------------------------

/// Measures puts then gets (after a preload) for one system: throughput with `w.clients`
/// clients, then single-client latency.
pub fn put_get_rows(
    system: &str,
    w: &Workload,
    measure: &dyn Fn(KvOp, usize, Duration, Option<u64>) -> anyhow::Result<Measured>,
    preload: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<TableRow>> {
    let mut rows = Vec::new();
    for op in [KvOp::Put, KvOp::Get] {
        if op == KvOp::Get {
            preload()?;
        }
        // A short warm-up: connections, elections settled, caches.
        measure(op, w.clients, Duration::from_millis(300), None)?;
        let load = measure(op, w.clients, w.duration, None)?;
        let single = measure(op, 1, Duration::from_secs(3600), Some(w.single_ops))?;
        let r = row(system, op, w.clients, &load, &single);
        let cpu = r.cpu_us_per_op.map_or(String::new(), |c| format!("  | CPU {c:.1} us/op, nodes and clients"));
        eprintln!(
            "{system:<28} {:<4} {:>9.0} ops/s  p50 {:>8.0} us  p99 {:>8.0} us  | 1 client p50 {:>7.0} us p99 {:>7.0} us{cpu}",
            format!("{:?}", op).to_lowercase(),
            r.ops_per_s,
            r.p50_us,
            r.p99_us,
            r.single_p50_us,
            r.single_p99_us
        );
        rows.push(r);
    }
    Ok(rows)
}
