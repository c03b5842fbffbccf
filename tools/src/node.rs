//! `multispace node`: one Base node process hosting the demo services, beaconing on a
//! multicast group (on loopback unless `--ip`/`--multicast-if` say otherwise), until it is
//! killed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::security::TlsArgs;
use anyhow::Context as _;
use multispace_node::{BeaconTransport, ClusterKey, Keyring, Node, NodeConfig};
use multispace_rpc::{Config, LocalRuntime, MulticastGroup};
use multispace_services::calc;
use multispace_services::keiretsu::{api, KeiretsuServer};
use multispace_services::Calculator;

const KEY_FILE_HELP: &str = "\
A file of beacon keys, instead of --key: one key a line, `id:secret`, where id is 0-255 and \
secret is 64 hex digits (32 key bytes) or else a passphrase (the rest of the line). The first \
key signs this node's beacons; beacons signed with any key in the file are accepted. Blank \
lines and lines starting with # are skipped. The file is re-read when it changes (checked \
once a beacon period), so keys rotate without a restart: add the new key on every node, then \
move it to the first line on every node, then remove the old key once every peer signs with \
the new one. A file that does not parse is reported and the keys in use are kept.";

/// `multispace node [start] ...` and `multispace node drain`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeCmd {
    #[command(subcommand)]
    sub: Option<NodeSub>,
    /// `multispace node --id N ...` is short for `multispace node start --id N ...`.
    #[command(flatten)]
    start: NodeArgs,
}

#[derive(clap::Subcommand, Debug)]
enum NodeSub {
    /// Run a node until it is killed, drained, or gets SIGTERM/Ctrl-C (which drain it).
    Start(NodeArgs),
    /// Lame-duck exit of a running node: it says goodbye (the cluster stops routing to it at
    /// once), refuses new calls (callers retry elsewhere), lets calls in flight finish for
    /// up to --grace-ms, then exits. Waits until the node is gone.
    Drain(DrainArgs),
}

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// Longest time calls in flight get to finish.
    #[arg(long, default_value_t = 10_000)]
    grace_ms: u64,
    #[command(flatten)]
    conn: crate::ctl::NodeConn,
}

#[derive(clap::Args, Clone, Debug)]
pub struct NodeArgs {
    /// The node's id, unique in the cluster (required).
    #[arg(long, env = "MULTISPACE_ID")]
    pub id: Option<u64>,
    /// The multicast port the cluster beacons on (group 239.255.77.1).
    #[arg(long, env = "MULTISPACE_PORT", default_value_t = 47_900)]
    pub port: u16,
    /// The address the control server and instances bind to, and so the address they are
    /// advertised at in beacons: peers dial it, and under mutual TLS this node's certificate
    /// must name it. Loopback keeps the node on this host.
    #[arg(long, env = "MULTISPACE_IP", default_value_t = Ipv4Addr::LOCALHOST, value_parser = unicast_ipv4)]
    pub ip: Ipv4Addr,
    /// The control server's port, where `multispace members`/`svc` reach this node (0: any
    /// free port; the one chosen is printed). Nodes sharing an address need different ports.
    #[arg(long, env = "MULTISPACE_CONTROL_PORT", default_value_t = crate::ctl::DEFAULT_CONTROL_PORT)]
    pub control_port: u16,
    /// Where the admin endpoint serves /metrics (Prometheus), /healthz and the /status page
    /// (HTTP; loopback by default — expose it deliberately).
    #[arg(long, env = "MULTISPACE_ADMIN", default_value = "127.0.0.1:47902")]
    pub admin: std::net::SocketAddr,
    /// No admin endpoint.
    #[arg(long, env = "MULTISPACE_NO_ADMIN", conflicts_with = "admin")]
    pub no_admin: bool,
    /// The address of the interface beacons are sent from and the group is joined on
    /// (default: --ip). Beacons go out with TTL 1, so they never leave that link.
    #[arg(long, env = "MULTISPACE_MULTICAST_IF", value_parser = unicast_ipv4)]
    pub multicast_if: Option<Ipv4Addr>,
    /// The cluster's name, signed into every beacon: clusters sharing a key or a network do
    /// not take in each other's beacons.
    #[arg(long, env = "MULTISPACE_CLUSTER", default_value = "multispace")]
    pub cluster: String,
    /// The cluster's shared secret, as a passphrase (key id 0).
    #[arg(long, env = "MULTISPACE_KEY", hide_env_values = true, default_value = "multispace demo")]
    pub key: String,
    /// A file of beacon keys, re-read when it changes (see --help).
    #[arg(long, env = "MULTISPACE_KEY_FILE", conflicts_with = "key", long_help = KEY_FILE_HELP)]
    pub key_file: Option<PathBuf>,
    /// Services to start an instance of (`keiretsu`, `calc`); may repeat.
    #[arg(long = "service", env = "MULTISPACE_SERVICE", value_delimiter = ',', default_values_t = [String::from("keiretsu")])]
    pub services: Vec<String>,
    /// Milliseconds between beacons (each ±10%).
    #[arg(long, env = "MULTISPACE_BEACON_MS", default_value_t = 100)]
    pub beacon_ms: u64,
    /// Beacons sent further than this many milliseconds from this node's clock are dropped as
    /// stale.
    #[arg(long, env = "MULTISPACE_BEACON_WINDOW_MS", default_value_t = 30_000)]
    pub beacon_window_ms: u64,
    /// On SIGTERM or Ctrl-C: drain (goodbye, refuse new calls, let calls in flight finish)
    /// for at most this many milliseconds, then exit.
    #[arg(long, env = "MULTISPACE_DRAIN_GRACE_MS", default_value_t = 10_000)]
    pub drain_grace_ms: u64,
    /// A file of settings, one `flag = value` a line with the long flag names (`id = 3`,
    /// `service = keiretsu,calc`, `tls-dir = /etc/multispace`); `#` starts a comment.
    /// Precedence: flags, then MULTISPACE_* environment variables, then this file, then the
    /// defaults.
    #[arg(long, env = "MULTISPACE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Start a trace for this fraction (0 to 1) of the calls this node makes outside any
    /// trace; the processes they reach log them under the trace id. Calls that arrive with a
    /// trace are always followed.
    #[arg(long, env = "MULTISPACE_TRACE_SAMPLE", default_value_t = 0.0, value_parser = fraction)]
    pub trace_sample: f64,
    /// Replicated-table nodes (`ip:port`, comma-separated) whose partitions, leaders and
    /// replicas the status page shows, refreshed every second.
    #[arg(long = "dht", env = "MULTISPACE_DHT", value_delimiter = ',')]
    pub dht: Vec<std::net::SocketAddr>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("`{s}` is not a fraction from 0 to 1")),
    }
}

impl NodeArgs {
    /// The node configuration these arguments describe (reading the key file, if any).
    pub fn config(&self) -> anyhow::Result<NodeConfig> {
        let keys = match &self.key_file {
            Some(path) => KeyFile::open(path)?.1,
            None => Keyring::from(ClusterKey::from_passphrase(&self.key)),
        };
        Ok(self.config_with(keys))
    }

    fn config_with(&self, keys: Keyring) -> NodeConfig {
        let period = Duration::from_millis(self.beacon_ms);
        let group = MulticastGroup {
            group: Ipv4Addr::new(239, 255, 77, 1),
            port: self.port,
            interface: self.multicast_if.unwrap_or(self.ip),
            ttl: 1,
        };
        NodeConfig {
            id: self.id.unwrap_or_default(),
            ip: self.ip.into(),
            control_port: self.control_port,
            beacons: BeaconTransport::Multicast(group),
            cluster: self.cluster.clone(),
            beacon_period: period,
            beacon_window: Duration::from_millis(self.beacon_window_ms),
            expiry: period * 5,
            ..NodeConfig::loopback(self.port, keys)
        }
    }
}

/// An address a node can bind to and be reached at: not 0.0.0.0 (peers could not dial what
/// it advertises), multicast or broadcast.
fn unicast_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s.parse().map_err(|e| format!("{e}"))?;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err(format!("{ip} is not a unicast address peers can reach"));
    }
    Ok(ip)
}

/// A key file, re-read when it changes.
pub struct KeyFile {
    path: PathBuf,
    /// Modification time and size when last read (`None`: unreadable).
    stamp: Option<(SystemTime, u64)>,
}

impl KeyFile {
    fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
        std::fs::metadata(path).and_then(|m| Ok((m.modified()?, m.len()))).ok()
    }

    /// Read it for the first time.
    pub fn open(path: &Path) -> anyhow::Result<(KeyFile, Keyring)> {
        let mut f = KeyFile { path: path.to_owned(), stamp: None };
        let ring = f.read()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                eprintln!("warning: key file {} is readable by others (chmod 600 it)", path.display());
            }
        }
        Ok((f, ring))
    }

    fn read(&mut self) -> anyhow::Result<Keyring> {
        self.stamp = Self::stamp(&self.path);
        let text =
            std::fs::read_to_string(&self.path).with_context(|| format!("reading key file {}", self.path.display()))?;
        Keyring::parse(&text).with_context(|| format!("key file {}", self.path.display()))
    }

    /// The keys, if the file changed since it was last read; an error if it changed but could
    /// not be read or parsed (reported once per change).
    pub fn poll(&mut self) -> anyhow::Result<Option<Keyring>> {
        if Self::stamp(&self.path) == self.stamp {
            return Ok(None);
        }
        self.read().map(Some)
    }
}

/// Teach a node the demo service types.
pub fn register_demo_types(node: &Node) {
    node.register_type(api::SERVICE, |node| api::service(KeiretsuServer::new(Some(node))));
    node.register_type(calc::SERVICE, |_| calc::service(Calculator::new("calc")));
}

pub fn run(cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd.sub {
        Some(NodeSub::Start(args)) => start(args),
        None => start(cmd.start),
        Some(NodeSub::Drain(args)) => crate::ctl::drain(&args.conn, args.grace_ms),
    }
}

/// Settings from `--config FILE` (or MULTISPACE_CONFIG) become MULTISPACE_* environment
/// variables where those are not set already, before the command line is parsed: so flags
/// beat the environment, which beats the file, which beats the defaults. A key that is not
/// a `multispace node` flag is an error that names the line.
pub fn apply_config_file(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    let cmd = <NodeArgs as clap::Args>::augment_args(clap::Command::new("node"));
    let settings: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?.to_string(), a.get_env()?.to_str()?.to_string())))
        .filter(|(long, _)| long != "config")
        .collect();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let where_ = || format!("{} line {}", path.display(), n + 1);
        let (key, value) = line.split_once('=').with_context(|| format!("{}: expected `flag = value`", where_()))?;
        let (key, value) = (key.trim(), value.trim().trim_matches('"'));
        let Some((_, env)) = settings.iter().find(|(long, _)| long == key) else {
            let known: Vec<&str> = settings.iter().map(|(l, _)| l.as_str()).collect();
            anyhow::bail!("{}: unknown setting `{key}` (known: {})", where_(), known.join(", "));
        };
        if std::env::var_os(env).is_none() {
            std::env::set_var(env, value);
        }
    }
    Ok(())
}

fn start(args: NodeArgs) -> anyhow::Result<()> {
    let Some(id) = args.id else {
        // clap's usage error (exit code 2), as for any missing flag.
        use clap::CommandFactory as _;
        crate::Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--id N is required (or MULTISPACE_ID, or `id = N` in --config)",
            )
            .exit();
    };
    multispace_rpc::trace::set_sample_rate(args.trace_sample);
    let (mut key_file, config) = match &args.key_file {
        Some(path) => {
            let (f, keys) = KeyFile::open(path)?;
            (Some(f), args.config_with(keys))
        }
        None => (None, args.config()?),
    };
    // Its control server, instances and every client it makes: mutual TLS as node-ID
    // (or plain TCP if explicitly asked).
    let conn = args.tls.conn(&format!("node-{}", id))?;
    let rt = LocalRuntime::new(Config { conn, ..Config::default() }).context("starting the runtime")?;
    // SIGTERM (what service managers send) and Ctrl-C drain the node instead of killing it.
    let term = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone()).context("installing the signal handler")?;
    }
    rt.block_on(async move {
        let (ip, port) = (config.ip, config.control_port);
        let node = Node::start(config).await.with_context(|| {
            format!("starting the node (control server on {ip}:{port}; --control-port 0 picks a free port)")
        })?;
        register_demo_types(&node);
        let _admin = match args.no_admin {
            true => None,
            false => {
                let mut sections = multispace_node::admin::Sections::new();
                if !args.dht.is_empty() {
                    let table = std::rc::Rc::new(std::cell::RefCell::new(serde_json::json!({ "partitions": [] })));
                    multispace_rpc::spawn(crate::dht::watch_partitions(args.dht.clone(), table.clone())).detach();
                    sections = sections.with("table", move || table.borrow().clone());
                }
                let admin =
                    multispace_node::admin::AdminServer::bind_with(&node, args.admin, sections).with_context(|| {
                        format!(
                            "admin endpoint on {} (--admin HOST:0 picks a free port, --no-admin for none)",
                            args.admin
                        )
                    })?;
                println!("node {}: admin at http://{}/status", id, admin.local_addr());
                Some(admin)
            }
        };
        for s in &args.services {
            let name = match s.as_str() {
                "keiretsu" => api::SERVICE,
                "calc" => calc::SERVICE,
                other => anyhow::bail!("unknown service `{other}` (keiretsu, calc)"),
            };
            let rec = node.start_instance(name)?;
            println!("node {}: {} instance {:#x} at {}", id, rec.service, rec.id, rec.addr);
        }
        println!("node {}: control at {}, beaconing every {} ms", id, node.control_addr(), args.beacon_ms);
        let mut peers = Vec::new();
        let mut peer_keys = std::collections::BTreeMap::new();
        let mut dropped = (0, 0);
        loop {
            multispace_rpc::runtime::time::sleep(Duration::from_millis(args.beacon_ms)).await;
            if term.load(std::sync::atomic::Ordering::Relaxed) {
                println!("node {}: signalled; draining (at most {} ms)", id, args.drain_grace_ms);
                let r = node.drain(Duration::from_millis(args.drain_grace_ms)).await;
                println!(
                    "node {}: drained in {} ms: {} calls were in flight, {} cut off; exiting",
                    id,
                    r.took.as_millis(),
                    r.in_flight_at_start,
                    r.abandoned
                );
                return Ok(());
            }
            if node.is_stopped() {
                // Drained through the control interface: wait for the goodbye, then exit.
                node.shutdown().await;
                println!("node {}: drained; exiting", id);
                return Ok(());
            }
            let now = node.peers();
            if now != peers {
                println!("node {}: peers {:?}", id, now);
                peers = now;
            }
            // What tells the operator an old key can be retired: no peer signs with it.
            let keys = node.peer_keys();
            if keys != peer_keys && key_file.is_some() {
                println!("node {}: keys peers sign with (peer: key id) {keys:?}", id);
            }
            peer_keys = keys;
            let s = node.registry_stats();
            if (s.rejected(), s.replayed) != dropped {
                dropped = (s.rejected(), s.replayed);
                println!(
                    "node {}: beacons dropped: {} bad MAC, {} unknown key, {} stale, {} malformed, {} replayed",
                    id, s.bad_mac, s.unknown_key, s.stale, s.malformed, s.replayed
                );
            }
            match key_file.as_mut().map(KeyFile::poll) {
                Some(Ok(Some(ring))) => {
                    println!("node {}: key file re-read: keys {:?}, primary {}", id, ring.ids(), ring.primary());
                    node.keyring().replace(ring);
                }
                Some(Err(e)) => eprintln!("node {}: {e:#}; keeping the keys in use", id),
                Some(Ok(None)) | None => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_re_read_when_it_changes_and_a_bad_one_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "1:old\n").unwrap();
        let (mut f, ring) = KeyFile::open(&path).unwrap();
        assert_eq!((ring.primary(), ring.ids()), (1, vec![1]));
        assert!(f.poll().unwrap().is_none());
        // Each rewrite has another size, so the change shows even within one mtime tick.
        std::fs::write(&path, "1:old\n2:new\n").unwrap();
        let ring = f.poll().unwrap().expect("changed");
        assert_eq!((ring.primary(), ring.ids()), (1, vec![1, 2]));
        std::fs::write(&path, "2:new\n1:old\n# primary now 2\n").unwrap();
        assert_eq!(f.poll().unwrap().expect("changed").primary(), 2);
        std::fs::write(&path, "2 new\n").unwrap();
        assert!(f.poll().is_err());
        assert!(f.poll().unwrap().is_none(), "reported once");
        std::fs::write(&path, "2:new\n").unwrap();
        assert_eq!(f.poll().unwrap().expect("changed").ids(), [2]);
    }
}
