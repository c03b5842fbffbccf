//! `multispace demo` (alias `cluster`): the main demo. Starts a local cluster of node processes on loopback,
//! runs Keiretsu with a speedometer and a driver, kills nodes one by one while the driver
//! keeps going, restarts them, and reports what it saw.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use multispace_node::Node;
use multispace_rpc::runtime::time::{sleep, timeout};
use multispace_rpc::{spawn, Config, LocalRuntime, Policy, RedirectConfig, Server};
use multispace_services::keiretsu::{api, drive, keep_identified, DriverStats, Speedometer};

use crate::node::NodeArgs;
use crate::security::TlsArgs;

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 4)]
    nodes: u64,
    /// Client names the speedometer keeps bound.
    #[arg(long, default_value_t = 20)]
    names: usize,
    /// Milliseconds between the demo's steps (kills and restarts).
    #[arg(long, default_value_t = 1000)]
    step_ms: u64,
    /// Plain TCP between the processes instead of mutual TLS (by default the demo makes a
    /// throwaway cluster CA and certificates for its nodes and itself).
    #[arg(long)]
    insecure_plain: bool,
}

/// The demo's throwaway certificates, removed when it ends.
struct CertDir(std::path::PathBuf);

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The node processes; killed when this goes away, whatever happens.
struct Children {
    exe: std::path::PathBuf,
    base: NodeArgs,
    procs: Vec<Option<Child>>,
}

impl Children {
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let a = &self.base;
        let child = Command::new(&self.exe)
            .args(["node", "--id", &(i as u64 + 1).to_string(), "--port", &a.port.to_string(), "--control-port", "0"])
            .args(["--admin", "127.0.0.1:0"])
            .args(["--cluster", &a.cluster, "--key", &a.key])
            .args(["--beacon-ms", &a.beacon_ms.to_string(), "--service", "keiretsu"])
            .args(a.tls.to_args())
            .spawn()
            .context("starting a node process")?;
        self.procs[i] = Some(child);
        Ok(())
    }

    fn kill(&mut self, i: usize) -> Option<u32> {
        let mut c = self.procs[i].take()?;
        let pid = c.id();
        let _ = c.kill();
        let _ = c.wait();
        Some(pid)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// Wait (bounded) until `cond` holds; the time it took.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    timeout(limit, async {
        while !cond() {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("gave up waiting for {what} after {limit:?}"))?;
    Ok(start.elapsed())
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let pid = std::process::id();
    // A port, cluster label and key of this run's own, so concurrent runs (or tests) cannot mix.
    let base = NodeArgs {
        id: None,
        port: 47_900 + (pid % 40) as u16 * 2,
        cluster: format!("demo {pid}"),
        key: format!("multispace demo {pid}"),
        key_file: None,
        ip: std::net::Ipv4Addr::LOCALHOST,
        control_port: 0,
        admin: "127.0.0.1:0".parse().expect("address"),
        no_admin: false,
        drain_grace_ms: 10_000,
        config: None,
        multicast_if: None,
        services: vec![],
        beacon_ms: 100,
        beacon_window_ms: 30_000,
        trace_sample: 0.0,
        dht: vec![],
        tls: Default::default(),
    };
    let n = args.nodes as usize;
    let (base, _certs) = if args.insecure_plain {
        println!("security: plain TCP (--insecure-plain)");
        (NodeArgs { tls: TlsArgs { insecure_plain: true, ..TlsArgs::default() }, ..base }, None)
    } else {
        let dir = std::env::temp_dir().join(format!("multispace-demo-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        crate::security::init(&dir, n as u32, &["demo".to_string()], 1, &[], false)?;
        println!("security: mutual TLS, a throwaway cluster CA and certificates in {}", dir.display());
        let tls = TlsArgs { tls_dir: Some(dir.clone()), ..TlsArgs::default() };
        (NodeArgs { tls, ..base }, Some(CertDir(dir)))
    };
    let mut children =
        Children { exe: std::env::current_exe()?, base: base.clone(), procs: (0..n).map(|_| None).collect() };
    println!("multispace cluster demo: {n} node processes on loopback, Keiretsu on each, beacons every 100 ms");
    for i in 0..n {
        children.start(i)?;
    }
    let step = Duration::from_millis(args.step_ms);
    // The demo's own node, speedometer endpoint and clients: identity `demo`.
    let conn = TlsArgs { tls_name: Some("demo".into()), ..base.tls.clone() }.conn("demo")?;
    let rt = LocalRuntime::new(Config { conn, ..Config::default() })?;
    rt.block_on(async move {
        let me = Node::start(NodeArgs { id: Some(1_000), ..base }.config()?).await?;
        let t =
            wait_for("every instance in the registry", Duration::from_secs(20), || me.lookup(api::SERVICE).len() == n)
                .await?;
        println!("registry: {n} Keiretsu instances known after {} ms (from beacons alone)", t.as_millis());

        let config = RedirectConfig {
            policy: Policy::LeastOutstanding,
            attempt_timeout: Some(Duration::from_secs(1)),
            max_attempts: n as u32,
            ..RedirectConfig::default()
        };
        let keiretsu = api::KeiretsuRedirector::from_redirector(me.redirector(api::SERVICE, config));
        let speedometer = Speedometer::new();
        let endpoint = Server::bind("127.0.0.1:0".parse()?, [speedometer.service()])?;
        let endpoint_addr: SocketAddr = endpoint.local_addr();
        spawn(endpoint.serve()).detach();
        let names: Vec<String> = (0..args.names).map(|i| format!("user{i}")).collect();
        let _renew = keep_identified(keiretsu.clone(), names.clone(), endpoint_addr, Duration::from_millis(1500));
        let want = names.len();
        let listed = Rc::new(Cell::new(0usize));
        {
            let (k, listed) = (keiretsu.clone(), listed.clone());
            timeout(Duration::from_secs(20), async move {
                while listed.get() < want {
                    listed.set(k.get_client_list().await.map(|l| l.len()).unwrap_or(0));
                    sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .map_err(|_| anyhow::anyhow!("speedometer names never all bound"))?;
        }
        println!("speedometer: {want} names bound at {endpoint_addr}");

        // The driver: 75-byte messages to the names in turn, as fast as replies allow.
        let stats = Rc::new(RefCell::new(DriverStats::default()));
        let running = Rc::new(Cell::new(true));
        let started = Instant::now();
        let driver = spawn({
            let (k, names, stats, running) = (keiretsu.clone(), names.clone(), stats.clone(), running.clone());
            async move {
                let mut next = 0u64;
                while running.get() {
                    let s = drive(&k, &names, 50, next).await;
                    next += 50;
                    let mut t = stats.borrow_mut();
                    t.delivered += s.delivered;
                    t.unbound += s.unbound;
                    t.failed += s.failed;
                }
            }
        });
        let received = speedometer.received();
        let report = |what: &str| {
            let s = stats.borrow();
            println!(
                "t={:>5.1}s  {what:<44} delivered {:>6}  received {:>6}  failovers {:>3}",
                started.elapsed().as_secs_f64(),
                s.delivered,
                received.unique.get(),
                keiretsu.redirector().failovers()
            );
        };
        report("driver running");
        for i in 0..n - 1 {
            sleep(step).await;
            let pid = children.kill(i);
            report(&format!("killed node {} (pid {})", i + 1, pid.unwrap_or(0)));
            let t = wait_for("the dead node to leave the registry", Duration::from_secs(10), || {
                me.lookup(api::SERVICE).len() == n - 1 - i
            })
            .await?;
            report(&format!("registry dropped node {} after {} ms", i + 1, t.as_millis()));
        }
        sleep(step).await;
        for i in 0..n - 1 {
            children.start(i)?;
        }
        report(&format!("restarted nodes 1..{}", n - 1));
        let t =
            wait_for("restarted nodes in the registry", Duration::from_secs(20), || me.lookup(api::SERVICE).len() == n)
                .await?;
        report(&format!("registry back to {n} instances after {} ms", t.as_millis()));
        sleep(step).await;
        running.set(false);
        driver.await;
        let elapsed = started.elapsed();
        let s = stats.borrow().clone();
        let _ = wait_for("every acknowledged message to arrive", Duration::from_secs(5), || {
            received.unique.get() >= s.delivered
        })
        .await;
        let lost = s.delivered.saturating_sub(received.unique.get());
        report("driver stopped");
        println!(
            "summary: {} messages acknowledged in {:.1} s ({:.0}/s) with {} of {n} nodes killed and restarted; \
             {} failed calls, {} to unbound names, {} failovers, {} duplicate deliveries, {} acknowledged but lost",
            s.delivered,
            elapsed.as_secs_f64(),
            s.delivered as f64 / elapsed.as_secs_f64(),
            n - 1,
            s.failed,
            s.unbound,
            keiretsu.redirector().failovers(),
            received.duplicates.get(),
            lost
        );
        me.stop();
        if lost > 0 || s.failed > 0 {
            bail!("{lost} acknowledged messages lost, {} calls failed", s.failed);
        }
        Ok(())
    })
}
