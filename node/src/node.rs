//! The node's I/O: the control server, the beacon sender and receiver, catching up by
//! pulling tables, expiry, the instance host, and redirectors fed from the registry. All of
//! it runs as tasks on the core that started the node. The decisions — what a beacon says,
//! whether a received one is authentic, fresh and new, when to send — are the sans-IO
//! [`LocalTable`], [`BeaconAuth`], [`Registry`] and [`Pacer`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use multispace_rpc::rkyv::Archived;
use multispace_rpc::runtime::time::sleep;
use multispace_rpc::runtime::JoinHandle;
use multispace_rpc::{
    spawn, CallContext, CallOptions, Message, MulticastGroup, OneWaySender, OneWayServer, RedirectConfig, Redirector,
    Server, Service, Status, WeakRedirector,
};

use crate::beacon::{unix_ms, BeaconAuth, ClusterKey, KeyId, Keyring, KeyringError, LocalTable, SignedBeacon};
use crate::control::{self, BeaconCounters, InstanceRecord, MemberRecord, NodeControlClient, NodeTable};
use crate::pacer::Pacer;
use crate::registry::{BeaconOutcome, Registry};

/// How beacons travel.
#[derive(Debug, Clone)]
pub enum BeaconTransport {
    /// To a multicast group every node joins (loopback by default).
    Multicast(MulticastGroup),
    /// Where multicast is unavailable: listen on `listen`, send to every address in `peers`.
    Unicast {
        /// Where this node receives beacons.
        listen: SocketAddr,
        /// Where the other nodes receive theirs.
        peers: Vec<SocketAddr>,
    },
}

/// Node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id, unique in the cluster (default: random).
    pub id: u64,
    /// The address instances and the control server bind to.
    pub ip: IpAddr,
    /// The control server's port (0 for any).
    pub control_port: u16,
    /// How beacons travel.
    pub beacons: BeaconTransport,
    /// The cluster's name, signed into every beacon: clusters that share a key or a network
    /// do not take in each other's beacons.
    pub cluster: String,
    /// The keys beacons are signed (primary) and accepted (any) with; change them while the
    /// node runs with [`Node::keyring`].
    pub keys: Keyring,
    /// Time between beacons.
    pub beacon_period: Duration,
    /// Random deviation of each period, in per cent of it either way (at most 50), so nodes
    /// do not beacon in lockstep.
    pub beacon_jitter_percent: u32,
    /// Most beacons sent in any interval of one period, early ones for changes included;
    /// changes coming faster go out together in the next beacon allowed.
    pub max_beacons_per_period: u32,
    /// A beacon sent further than this from the receiver's clock is dropped as stale.
    pub beacon_window: Duration,
    /// A node silent this long is dropped from the registry.
    pub expiry: Duration,
    /// Who may start and stop instances through the control interface, as
    /// [`AccessList`](multispace_rpc::AccessList) patterns of TLS principals (default: `admin`
    /// and `node-*`). Enforced when the node's core runs mutual TLS; reading the registry
    /// needs only a certificate from the cluster CA. On plain TCP nothing is enforced: plain
    /// TCP is for loopback-only setups.
    pub admins: Vec<String>,
}

impl NodeConfig {
    /// Loopback defaults: multicast group 239.255.77.1 on `port`, cluster `multispace`, 200 ms
    /// beacons ±10%, at most two a period, a 30 s freshness window, expiry after five missed
    /// beacons. `keys` is a [`Keyring`] or a single [`ClusterKey`] (id 0).
    pub fn loopback(port: u16, keys: impl Into<Keyring>) -> Self {
        NodeConfig {
            id: random_u64(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            control_port: 0,
            beacons: BeaconTransport::Multicast(MulticastGroup::loopback(Ipv4Addr::new(239, 255, 77, 1), port)),
            cluster: "multispace".into(),
            keys: keys.into(),
            beacon_period: Duration::from_millis(200),
            beacon_jitter_percent: 10,
            max_beacons_per_period: 2,
            beacon_window: crate::beacon::DEFAULT_WINDOW,
            expiry: Duration::from_millis(1000),
            admins: vec!["admin".into(), "node-*".into()],
        }
    }
}

/// The control service with its access list when the core runs mutual TLS: any cluster
/// member reads, only `admins` start and stop instances.
fn control_service(imp: ControlImpl, admins: &[String]) -> multispace_rpc::Service {
    let svc = control::service(imp);
    if multispace_rpc::ConnConfig::for_this_core().tls.is_none() {
        return svc;
    }
    use control::method_id as m;
    let mut acl = multispace_rpc::AccessList::new();
    for id in [m::TABLE, m::LOOKUP, m::MEMBERS, m::INSTANCES, m::BEACON_COUNTERS, m::SERVICE_TYPES, m::INTERFACE] {
        acl = acl.allow_method(id, "*");
    }
    for admin in admins {
        acl = acl
            .allow_method(m::START_INSTANCE, admin)
            .allow_method(m::STOP_INSTANCE, admin)
            .allow_method(m::DRAIN, admin);
    }
    svc.with_access(acl)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A socket could not be bound or joined.
    #[error("node I/O setup failed")]
    Io(#[from] std::io::Error),
    /// A server could not be started.
    #[error("could not serve")]
    Serve(#[from] multispace_rpc::ServeError),
    /// The node does not know this service type.
    #[error("unknown service type `{0}`")]
    UnknownService(String),
}

/// Builds a fresh instance of a service type. It gets the hosting node, so an instance can
/// find its peers (`Node::lookup`) or make redirectors of its own; an instance that keeps it
/// must keep [`Node::downgrade`], not the node.
pub type ServiceFactory = Rc<dyn Fn(&Node) -> Service>;

/// A service's health probe (the paper's `doProbe`): a method the node calls on each of its
/// instances with an empty request. Any reply is healthy; an error or no reply within the
/// timeout marks the instance down in the beacons at once, so stubs stop choosing it before
/// its beacons would expire. A later good reply marks it up again.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// The method to call (one taking no arguments).
    pub method_id: u32,
    /// Time between probes.
    pub period: Duration,
    /// How long a reply may take.
    pub timeout: Duration,
}

/// What the node knows of one local instance's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Up (last probe answered, or no probe).
    pub up: bool,
    /// Time up since it started, summed over its up periods.
    pub uptime: Duration,
    /// Probes that failed.
    pub probes_failed: u64,
}

struct ServiceType {
    factory: ServiceFactory,
    probe: Option<Probe>,
}

/// What [`Node::drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Calls running on local instances when the drain began.
    pub in_flight_at_start: u32,
    /// Calls still running when the grace period ran out (cut off by the stop).
    pub abandoned: u32,
    /// How long the drain took.
    pub took: Duration,
}

/// Counters a node keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Beacons sent (the goodbye not counted).
    pub beacons_sent: u64,
    /// Changes that wanted an early beacon but had to wait for the rate limit.
    pub beacons_deferred: u64,
    /// Beacons dropped because they failed authentication or were stale (the registry
    /// counts each reason apart: [`Node::registry_stats`]).
    pub beacons_rejected: u64,
    /// Tables pulled to catch up.
    pub pulls: u64,
}

struct Running {
    /// The instance's server; dropping it stops the instance.
    _server: JoinHandle<Result<(), multispace_rpc::ServeError>>,
    /// Its prober, if the type has a probe.
    _probe: Option<JoinHandle<()>>,
    started: Instant,
    health: Rc<RefCell<HealthState>>,
    load: multispace_rpc::ServerLoad,
}

struct HealthState {
    up_since: Option<Instant>,
    uptime: Duration,
    probes_failed: u64,
}

impl HealthState {
    fn snapshot(&self, now: Instant) -> Health {
        Health {
            up: self.up_since.is_some(),
            uptime: self.uptime + self.up_since.map_or(Duration::ZERO, |t| now - t),
            probes_failed: self.probes_failed,
        }
    }
}

/// Wakes the beacon loop early (a change that must go out at once, or the node stopping).
#[derive(Default)]
struct Kick {
    kicked: Cell<bool>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl Kick {
    fn kick(&self) {
        self.kicked.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Sleep for `d`, or less if kicked.
    async fn sleep(&self, d: Duration) {
        let mut timer = std::pin::pin!(sleep(d));
        std::future::poll_fn(|cx| {
            if self.kicked.replace(false) || timer.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

/// Opens once; any number of tasks can wait for it.
#[derive(Default)]
struct Latch {
    open: Cell<bool>,
    wakers: RefCell<Vec<std::task::Waker>>,
}

impl Latch {
    fn open(&self) {
        self.open.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.open.get() {
                return std::task::Poll::Ready(());
            }
            self.wakers.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }
}

/// What the beacon task shares with the node. The task holds it itself (not through the
/// node), so it can still send the goodbye after the node is gone.
struct BeaconLink {
    sender: OneWaySender,
    targets: Vec<SocketAddr>,
    kick: Kick,
    /// The node stopped: the task sends `goodbye`, if any, and ends.
    closing: Cell<bool>,
    goodbye: RefCell<Option<SignedBeacon>>,
    /// The task has ended.
    ended: Latch,
}

impl BeaconLink {
    async fn send(&self, signed: &SignedBeacon) {
        for &to in &self.targets {
            if let Err(e) = self.sender.send(to, BEACON_METHOD, signed).await {
                tracing::debug!(%to, error = %e, "beacon send failed");
            }
        }
    }
}

struct Inner {
    config: NodeConfig,
    incarnation: u64,
    control_addr: SocketAddr,
    table: RefCell<LocalTable>,
    registry: RefCell<Registry>,
    auth: RefCell<BeaconAuth>,
    pacer: RefCell<Pacer>,
    link: Rc<BeaconLink>,
    stopped: Cell<bool>,
    factories: RefCell<BTreeMap<String, ServiceType>>,
    running: RefCell<HashMap<u64, Running>>,
    next_instance: Cell<u32>,
    watchers: RefCell<Vec<(String, WeakRedirector)>>,
    watched_generation: Cell<u64>,
    stats: RefCell<NodeStats>,
    /// Pulls in flight, by node (one at a time per node).
    pulling: RefCell<Vec<u64>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
}

impl Inner {
    /// End the beacon task, after a goodbye if `goodbye`.
    fn close_beacons(&self, goodbye: bool) {
        if goodbye {
            let bye = self.table.borrow_mut().goodbye(unix_ms(SystemTime::now()));
            *self.link.goodbye.borrow_mut() = Some(self.auth.borrow().seal(&bye));
            tracing::info!(id = self.config.id, "node stopping; saying goodbye");
        }
        self.link.closing.set(true);
        self.link.kick.kick();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without `stop`: still a clean end, so the cluster hears goodbye.
        if !self.stopped.get() {
            self.close_beacons(true);
        }
    }
}

/// A Base node on the current core: hosts instances, beacons them, and keeps the registry of
/// the whole cluster. Cheap to clone; stops when [`Node::stop`] is called, the last clone is
/// dropped (both say goodbye to the cluster), or the core ends (which does not).
#[derive(Clone)]
pub struct Node {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id()).field("control", &self.inner.control_addr).finish()
    }
}

/// A [`Node`] that may have stopped. Instances keep one of these, never a `Node`: an
/// instance that held its node would keep it (and itself) alive for ever.
#[derive(Clone)]
pub struct WeakNode(std::rc::Weak<Inner>);

impl std::fmt::Debug for WeakNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakNode")
    }
}

impl WeakNode {
    /// The node, if it still runs.
    pub fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

/// The method id of beacons (a one-way call).
pub const BEACON_METHOD: u32 = 0x6d73_6263;

impl Node {
    /// Start a node on the current core: its control server, beacon receiver and sender.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let incarnation = u64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros(),
        )
        .unwrap_or(u64::MAX);
        // The control service reaches the node through a slot filled once the node exists.
        let slot: Rc<std::cell::OnceCell<std::rc::Weak<Inner>>> = Rc::default();
        let server = Server::bind(
            SocketAddr::new(config.ip, config.control_port),
            [control_service(ControlImpl(slot.clone()), &config.admins)],
        )?;
        let control_addr = server.local_addr();
        let (sender, targets) = match &config.beacons {
            BeaconTransport::Multicast(g) => (OneWaySender::multicast(g)?, vec![g.addr()]),
            BeaconTransport::Unicast { peers, .. } => {
                (OneWaySender::bind(SocketAddr::new(config.ip, 0))?, peers.clone())
            }
        };
        let link = Rc::new(BeaconLink {
            sender,
            targets,
            kick: Kick::default(),
            closing: Cell::new(false),
            goodbye: RefCell::new(None),
            ended: Latch::default(),
        });
        let pacer = Pacer::new(
            config.beacon_period,
            config.beacon_jitter_percent,
            config.max_beacons_per_period,
            random_u64() ^ config.id,
            Instant::now(),
        );
        let inner = Rc::new(Inner {
            table: RefCell::new(LocalTable::new(config.id, incarnation, control_addr.to_string())),
            registry: RefCell::new(Registry::new(Some(config.id), config.expiry)),
            auth: RefCell::new(BeaconAuth::new(config.cluster.clone(), config.keys.clone(), config.beacon_window)),
            pacer: RefCell::new(pacer),
            link: link.clone(),
            stopped: Cell::new(false),
            incarnation,
            control_addr,
            factories: RefCell::new(BTreeMap::new()),
            running: RefCell::new(HashMap::new()),
            next_instance: Cell::new(1),
            watchers: RefCell::new(Vec::new()),
            watched_generation: Cell::new(0),
            stats: RefCell::new(NodeStats::default()),
            pulling: RefCell::new(Vec::new()),
            tasks: RefCell::new(Vec::new()),
            config,
        });
        let node = Node { inner };
        let _ = slot.set(Rc::downgrade(&node.inner));
        let receiver = match &node.inner.config.beacons {
            BeaconTransport::Multicast(g) => OneWayServer::join(g, [node.beacon_service()])?,
            BeaconTransport::Unicast { listen, .. } => OneWayServer::bind(*listen, [node.beacon_service()])?,
        };
        let mut tasks = node.inner.tasks.borrow_mut();
        tasks.push(spawn(async move {
            if let Err(e) = server.serve().await {
                tracing::error!(error = %e, "node control server stopped");
            }
        }));
        tasks.push(spawn(async move {
            if let Err(e) = receiver.serve().await {
                tracing::error!(error = %e, "beacon receiver stopped");
            }
        }));
        drop(tasks);
        // Detached, not in `tasks`: it ends by itself once the node stops or goes, after
        // sending the goodbye.
        spawn(beacon_loop(Rc::downgrade(&node.inner), link)).detach();
        tracing::info!(id = node.id(), control = %control_addr, "node started");
        Ok(node)
    }

    /// A handle that does not keep the node alive (what instances should hold).
    pub fn downgrade(&self) -> WeakNode {
        WeakNode(Rc::downgrade(&self.inner))
    }

    /// The node's id.
    pub fn id(&self) -> u64 {
        self.inner.config.id
    }

    /// The node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Where the node answers control calls.
    pub fn control_addr(&self) -> SocketAddr {
        self.inner.control_addr
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            beacons_deferred: self.inner.pacer.borrow().deferred(),
            beacons_rejected: self.inner.registry.borrow().stats().rejected(),
            ..self.inner.stats.borrow().clone()
        }
    }

    /// Beacon counters and key ids, as the control interface reports them.
    pub fn beacon_counters(&self) -> BeaconCounters {
        let s = self.registry_stats();
        let keys = self.keyring().get();
        BeaconCounters {
            sent: self.inner.stats.borrow().beacons_sent,
            accepted: s.accepted,
            replayed: s.replayed,
            unknown_key: s.unknown_key,
            bad_mac: s.bad_mac,
            malformed: s.malformed,
            stale: s.stale,
            goodbyes: s.goodbyes,
            expired: s.expired,
            primary_key: keys.primary(),
            key_ids: keys.ids(),
        }
    }

    /// The keys this node signs and accepts beacons with, to rotate them while it runs.
    pub fn keyring(&self) -> KeyringHandle<'_> {
        KeyringHandle { node: self }
    }

    /// The key each peer signed its last accepted beacon with: once every peer shows the new
    /// key, the old one can be retired.
    pub fn peer_keys(&self) -> BTreeMap<u64, KeyId> {
        self.inner.registry.borrow().keys_in_use()
    }

    /// Registry counters.
    pub fn registry_stats(&self) -> crate::registry::RegistryStats {
        self.inner.registry.borrow().stats().clone()
    }

    /// Teach the node a service type it can start instances of.
    pub fn register_type(&self, service: &str, factory: impl Fn(&Node) -> Service + 'static) {
        let t = ServiceType { factory: Rc::new(factory), probe: None };
        self.inner.factories.borrow_mut().insert(service.to_owned(), t);
    }

    /// [`Node::register_type`] with a health probe run against every instance.
    pub fn register_type_with_probe(&self, service: &str, factory: impl Fn(&Node) -> Service + 'static, probe: Probe) {
        let t = ServiceType { factory: Rc::new(factory), probe: Some(probe) };
        self.inner.factories.borrow_mut().insert(service.to_owned(), t);
    }

    /// Health of a local instance.
    pub fn health(&self, id: u64) -> Option<Health> {
        self.inner.running.borrow().get(&id).map(|r| r.health.borrow().snapshot(Instant::now()))
    }

    /// Start an instance of `service` on an ephemeral port; it is beaconed from the next
    /// beacon on.
    pub fn start_instance(&self, service: &str) -> Result<InstanceRecord, NodeError> {
        let (factory, probe) = match self.inner.factories.borrow().get(service) {
            Some(t) => (t.factory.clone(), t.probe),
            None => return Err(NodeError::UnknownService(service.to_owned())),
        };
        let server = Server::bind(SocketAddr::new(self.inner.config.ip, 0), [factory(self)])?;
        let n = self.inner.next_instance.get();
        self.inner.next_instance.set(n.wrapping_add(1));
        let rec = InstanceRecord {
            id: (self.id() << 32) | u64::from(n),
            service: service.to_owned(),
            addr: server.local_addr().to_string(),
            load: 0,
            up: true,
        };
        let now = Instant::now();
        let health =
            Rc::new(RefCell::new(HealthState { up_since: Some(now), uptime: Duration::ZERO, probes_failed: 0 }));
        let prober = probe.map(|p| {
            let addr = server.local_addr();
            spawn(probe_loop(Rc::downgrade(&self.inner), rec.id, addr, p, health.clone()))
        });
        let load = server.load();
        let running = Running { _server: spawn(server.serve()), _probe: prober, started: now, health, load };
        self.inner.running.borrow_mut().insert(rec.id, running);
        self.inner.table.borrow_mut().upsert(rec.clone());
        self.urge_beacon();
        tracing::info!(id = rec.id, service, addr = %rec.addr, "instance started");
        Ok(rec)
    }

    /// Stop a local instance: its server and every connection to it close now; it leaves the
    /// registries with the next beacon (early, unless the rate limit holds it back).
    pub fn stop_instance(&self, id: u64) -> bool {
        let Some(r) = self.inner.running.borrow_mut().remove(&id) else { return false };
        tracing::info!(id, uptime_s = r.started.elapsed().as_secs_f64(), "instance stopped");
        drop(r);
        let removed = self.inner.table.borrow_mut().remove(id);
        self.urge_beacon();
        removed
    }

    /// Send the table's changes soon: now if the rate limit allows, else with the next
    /// beacon it allows.
    fn urge_beacon(&self) {
        self.inner.pacer.borrow_mut().urge(Instant::now());
        self.inner.link.kick.kick();
    }

    /// Mark a local instance up or down (what a failed health probe does).
    pub fn set_up(&self, id: u64, up: bool) -> bool {
        let mut table = self.inner.table.borrow_mut();
        let Some(rec) = table.get(id).cloned() else { return false };
        if rec.up != up {
            table.upsert(InstanceRecord { up, ..rec });
            // Down must reach the stubs now, not a beacon period later.
            self.urge_beacon();
        }
        true
    }

    /// This node's instances.
    pub fn local_instances(&self) -> Vec<InstanceRecord> {
        self.inner.table.borrow().instances().cloned().collect()
    }

    /// Every instance of `service` in the cluster that is up, this node's included.
    pub fn lookup(&self, service: &str) -> Vec<InstanceRecord> {
        let mut v: Vec<InstanceRecord> =
            self.inner.registry.borrow().instances_of(service).filter(|r| r.up).cloned().collect();
        v.extend(self.inner.table.borrow().instances().filter(|r| r.service == service && r.up).cloned());
        v.sort_unstable_by_key(|r| r.id);
        v
    }

    /// What a redirector over `service` needs: each up instance's address and load.
    fn targets(&self, service: &str) -> Vec<(SocketAddr, u32)> {
        self.lookup(service).iter().filter_map(|x| x.addr.parse().ok().map(|a| (a, x.load))).collect()
    }

    /// Every node known, this one first, then the others by id.
    pub fn members(&self) -> Vec<MemberRecord> {
        let table = self.inner.table.borrow().snapshot();
        let me = MemberRecord {
            node: self.id(),
            incarnation: self.incarnation(),
            control: self.control_addr().to_string(),
            last_heard_ms: 0,
            instances: table.instances.len() as u32,
            up: table.instances.iter().filter(|r| r.up).count() as u32,
            key_id: Some(self.keyring().get().primary()),
            this_node: true,
        };
        let mut v = vec![me];
        v.extend(self.inner.registry.borrow().members(Instant::now()));
        v
    }

    /// Every instance in the cluster, up or down, this node's included, by id.
    pub fn all_instances(&self) -> Vec<InstanceRecord> {
        let mut v = self.inner.registry.borrow().all();
        v.extend(self.inner.table.borrow().instances().cloned());
        v.sort_unstable_by_key(|r| r.id);
        v
    }

    /// Nodes heard from (not counting this one).
    pub fn peers(&self) -> Vec<u64> {
        self.inner.registry.borrow().nodes()
    }

    /// A redirector over every up instance of `service`, whose instance set follows the
    /// registry for as long as it lives. Wrap it in a generated stub with
    /// `NameRedirector::from_redirector`.
    pub fn redirector(&self, service: &str, config: RedirectConfig) -> Redirector {
        let r = Redirector::with_config([], config);
        r.set_instances_with_load(self.targets(service));
        self.inner.watchers.borrow_mut().push((service.to_owned(), r.downgrade()));
        r
    }

    /// Stop serving and every instance, and stop beaconing after a goodbye beacon, so every
    /// registry forgets this node at once rather than at expiry. The goodbye is sent by a
    /// task on this core; [`Node::shutdown`] waits for it.
    pub fn stop(&self) {
        self.halt(true);
    }

    /// Lame-duck exit. Says goodbye at once (every registry drops this node's instances, so
    /// redirectors stop choosing them), refuses new calls on every local instance with
    /// `ShuttingDown` (callers that still arrive retry elsewhere: the call did not run), lets
    /// the calls in flight finish for up to `grace`, then stops the node as [`Node::stop`]
    /// does. The control interface answers until the end.
    pub async fn drain(&self, grace: Duration) -> DrainReport {
        let started = Instant::now();
        let at_start = self.in_flight();
        for r in self.inner.running.borrow().values() {
            r.load.drain();
        }
        if !self.inner.stopped.get() {
            self.inner.close_beacons(true);
        }
        tracing::info!(id = self.id(), in_flight = at_start, grace_ms = grace.as_millis() as u64, "draining");
        while self.in_flight() > 0 && started.elapsed() < grace {
            multispace_rpc::runtime::time::sleep(Duration::from_millis(5)).await;
        }
        let abandoned = self.in_flight();
        self.halt(false);
        self.inner.link.ended.wait().await;
        let report = DrainReport { in_flight_at_start: at_start, abandoned, took: started.elapsed() };
        tracing::info!(id = self.id(), ?report, "drained");
        report
    }

    /// Calls running now on this node's instances.
    pub fn in_flight(&self) -> u32 {
        self.inner.running.borrow().values().map(|r| r.load.in_flight()).sum()
    }

    /// True once the node was stopped (or drained): the process hosting it may exit.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.get()
    }

    /// [`Node::stop`], and wait until the goodbye has been sent.
    pub async fn shutdown(&self) {
        self.stop();
        self.inner.link.ended.wait().await;
    }

    /// Stop; with a goodbye or, as when a process dies, without one.
    pub(crate) fn halt(&self, goodbye: bool) {
        if self.inner.stopped.replace(true) {
            return;
        }
        self.inner.tasks.borrow_mut().clear();
        self.inner.running.borrow_mut().clear();
        self.inner.close_beacons(goodbye);
    }

    fn beacon_service(&self) -> Service {
        let weak = Rc::downgrade(&self.inner);
        Service::builder("beacons")
            .one_way(BEACON_METHOD, move |_ctx, m: Message<SignedBeacon>| {
                if let Some(inner) = weak.upgrade() {
                    on_beacon(&inner, &m);
                }
                async {}
            })
            .build()
    }
}

/// Change the node's keyring while it runs (see [`Keyring`] for the rotation steps). Changes
/// apply from the next beacon sent or received.
#[derive(Debug)]
pub struct KeyringHandle<'a> {
    node: &'a Node,
}

impl KeyringHandle<'_> {
    /// A copy of the current ring.
    pub fn get(&self) -> Keyring {
        self.node.inner.auth.borrow().keys().clone()
    }

    fn change(&self, f: impl FnOnce(&mut Keyring) -> Result<(), KeyringError>) -> Result<(), KeyringError> {
        let mut auth = self.node.inner.auth.borrow_mut();
        f(auth.keys_mut())?;
        tracing::info!(node = self.node.id(), keys = ?auth.keys(), "keyring changed");
        Ok(())
    }

    /// Accept beacons signed with `key` as `id`.
    pub fn install(&self, id: KeyId, key: ClusterKey) -> Result<(), KeyringError> {
        self.change(|k| k.install(id, key))
    }

    /// Sign this node's beacons with key `id`.
    pub fn set_primary(&self, id: KeyId) -> Result<(), KeyringError> {
        self.change(|k| k.set_primary(id))
    }

    /// Stop accepting key `id` (not the primary).
    pub fn retire(&self, id: KeyId) -> Result<(), KeyringError> {
        self.change(|k| k.retire(id))
    }

    /// Replace the whole ring (what re-reading a key file does).
    pub fn replace(&self, ring: Keyring) {
        let _ = self.change(|k| {
            *k = ring;
            Ok(())
        });
    }
}

fn on_beacon(inner: &Rc<Inner>, m: &Message<SignedBeacon>) {
    let outcome = {
        let auth = inner.auth.borrow();
        inner.registry.borrow_mut().on_signed(&auth, m.view(), Instant::now(), unix_ms(SystemTime::now()))
    };
    match outcome {
        BeaconOutcome::Applied => refresh_watchers(inner),
        BeaconOutcome::Goodbye => {
            tracing::info!("a node said goodbye");
            refresh_watchers(inner);
        }
        BeaconOutcome::NeedSync { node, control } => pull(inner, node, control),
        BeaconOutcome::Rejected(e) => tracing::debug!(error = %e, "beacon rejected"),
        _ => {}
    }
}

/// Fetch a node's table over rpc (one pull per node at a time).
fn pull(inner: &Rc<Inner>, node: u64, control: String) {
    let Ok(addr) = control.parse::<SocketAddr>() else { return };
    if inner.pulling.borrow().contains(&node) {
        return;
    }
    inner.pulling.borrow_mut().push(node);
    inner.stats.borrow_mut().pulls += 1;
    let weak = Rc::downgrade(inner);
    let timeout = inner.config.beacon_period * 4;
    spawn(async move {
        let client = NodeControlClient::new(addr).with_options(CallOptions::timeout(timeout));
        let table = client.table().await;
        let Some(inner) = weak.upgrade() else { return };
        inner.pulling.borrow_mut().retain(|&n| n != node);
        match table {
            Ok(t) => {
                let t: NodeTable = match t.to_owned() {
                    Ok(t) => t,
                    Err(e) => return tracing::debug!(error = %e, "bad table"),
                };
                if inner.registry.borrow_mut().on_table(&t, Instant::now()) {
                    refresh_watchers(&inner);
                }
            }
            Err(e) => tracing::debug!(node, error = %e, "table pull failed"),
        }
    })
    .detach();
}

/// Push the registry's current instance sets into every live redirector.
fn refresh_watchers(inner: &Rc<Inner>) {
    let generation = inner.registry.borrow().generation() ^ inner.table.borrow().version().rotate_left(32);
    if generation == inner.watched_generation.get() {
        return;
    }
    inner.watched_generation.set(generation);
    let node = Node { inner: inner.clone() };
    inner.watchers.borrow_mut().retain(|(service, weak)| match weak.upgrade() {
        Some(r) => {
            r.set_instances_with_load(node.targets(service));
            true
        }
        None => false,
    });
}

/// Sends beacons when the pacer says (every jittered period, early for a change within the
/// rate limit), expires silent nodes, and sends the goodbye at the end.
async fn beacon_loop(weak: std::rc::Weak<Inner>, link: Rc<BeaconLink>) {
    while !link.closing.get() {
        let Some(inner) = weak.upgrade() else { break };
        let now = Instant::now();
        let due = inner.pacer.borrow().due();
        let signed = (due <= now).then(|| {
            update_loads(&inner);
            let beacon = inner.table.borrow_mut().next_beacon(unix_ms(SystemTime::now()));
            inner.pacer.borrow_mut().on_sent(now);
            inner.stats.borrow_mut().beacons_sent += 1;
            inner.auth.borrow().seal(&beacon)
        });
        let expired = inner.registry.borrow_mut().expire(now);
        if !expired.is_empty() {
            tracing::info!(?expired, "nodes expired");
        }
        // Local changes (started, stopped, marked down) and expiries reach redirectors here.
        refresh_watchers(&inner);
        let due = inner.pacer.borrow().due();
        // The node is not held across the send, so dropping it meanwhile still says goodbye.
        drop(inner);
        if let Some(signed) = signed {
            link.send(&signed).await;
        }
        link.kick.sleep(due.saturating_duration_since(Instant::now())).await;
    }
    let goodbye = link.goodbye.borrow_mut().take();
    if let Some(bye) = goodbye {
        link.send(&bye).await;
    }
    link.ended.open();
}

/// Calls in flight, rounded up to a power of two: changes of a call or two do not change
/// the figure, so a steady load costs no beacon bytes.
fn quantize(in_flight: u32) -> u32 {
    if in_flight == 0 {
        0
    } else {
        in_flight.checked_next_power_of_two().unwrap_or(u32::MAX)
    }
}

/// Put each local instance's current load into the table (a change goes out as a delta).
fn update_loads(inner: &Inner) {
    let loads: Vec<(u64, u32)> =
        inner.running.borrow().iter().map(|(&id, r)| (id, quantize(r.load.in_flight()))).collect();
    let mut table = inner.table.borrow_mut();
    for (id, load) in loads {
        if let Some(rec) = table.get(id).filter(|r| r.load != load).cloned() {
            table.upsert(InstanceRecord { load, ..rec });
        }
    }
}

async fn probe_loop(
    weak: std::rc::Weak<Inner>,
    id: u64,
    addr: SocketAddr,
    probe: Probe,
    health: Rc<RefCell<HealthState>>,
) {
    let client = multispace_rpc::Client::new(addr);
    loop {
        sleep(probe.period).await;
        let ok = client.call_bytes(probe.method_id, &[], CallOptions::timeout(probe.timeout)).await;
        let Some(inner) = weak.upgrade() else { return };
        let now = Instant::now();
        let mut h = health.borrow_mut();
        match ok {
            Ok(_) if h.up_since.is_none() => {
                tracing::info!(id, "probe answered again; instance up");
                h.up_since = Some(now);
                drop(h);
                Node { inner }.set_up(id, true);
            }
            Ok(_) => {}
            Err(e) => {
                h.probes_failed += 1;
                if let Some(since) = h.up_since.take() {
                    h.uptime += now - since;
                    tracing::warn!(id, error = %e, "probe failed; instance marked down");
                    drop(h);
                    Node { inner }.set_up(id, false);
                }
            }
        }
    }
}

/// The control interface, served by the node itself.
struct ControlImpl(Rc<std::cell::OnceCell<std::rc::Weak<Inner>>>);

impl ControlImpl {
    fn node(&self) -> Result<Node, Status> {
        self.0
            .get()
            .and_then(std::rc::Weak::upgrade)
            .map(|inner| Node { inner })
            .ok_or_else(|| Status::internal("node stopped"))
    }
}

impl control::NodeControl for ControlImpl {
    async fn table(&self, _ctx: &CallContext) -> Result<NodeTable, Status> {
        Ok(self.node()?.inner.table.borrow().snapshot())
    }

    async fn lookup(&self, _ctx: &CallContext, service: &Archived<String>) -> Result<Vec<InstanceRecord>, Status> {
        Ok(self.node()?.lookup(service.as_str()))
    }

    async fn members(&self, _ctx: &CallContext) -> Result<Vec<MemberRecord>, Status> {
        Ok(self.node()?.members())
    }

    async fn instances(&self, _ctx: &CallContext) -> Result<Vec<InstanceRecord>, Status> {
        Ok(self.node()?.all_instances())
    }

    async fn beacon_counters(&self, _ctx: &CallContext) -> Result<BeaconCounters, Status> {
        Ok(self.node()?.beacon_counters())
    }

    async fn service_types(&self, _ctx: &CallContext) -> Result<Vec<String>, Status> {
        Ok(self.node()?.inner.factories.borrow().keys().cloned().collect())
    }

    async fn start_instance(&self, _ctx: &CallContext, service: &Archived<String>) -> Result<InstanceRecord, Status> {
        self.node()?.start_instance(service.as_str()).map_err(|e| Status::application(e.to_string()))
    }

    async fn stop_instance(&self, _ctx: &CallContext, id: &Archived<u64>) -> Result<bool, Status> {
        Ok(self.node()?.stop_instance(id.to_native()))
    }

    async fn drain(&self, _ctx: &CallContext, grace_ms: &Archived<u64>) -> Result<u32, Status> {
        let node = self.node()?;
        let in_flight = node.in_flight();
        // The drain outlives this call and ends by stopping the node, control server included:
        // begin it a moment after this reply is on its way, so the caller hears it.
        let grace = Duration::from_millis(grace_ms.to_native());
        spawn(async move {
            multispace_rpc::runtime::time::sleep(Duration::from_millis(50)).await;
            node.drain(grace).await;
        })
        .detach();
        Ok(in_flight)
    }
}
