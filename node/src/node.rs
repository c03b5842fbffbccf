//! The node's I/O: the control server, the beacon sender and receiver, catching up by
//! pulling tables, expiry, the instance host, and redirectors fed from the registry. All of
//! it runs as tasks on the core that started the node.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use multispace_rpc::rkyv::Archived;
use multispace_rpc::runtime::time::sleep;
use multispace_rpc::runtime::JoinHandle;
use multispace_rpc::{
    spawn, CallContext, CallOptions, Message, MulticastGroup, OneWaySender, OneWayServer, RedirectConfig, Redirector,
    Server, Service, Status, WeakRedirector,
};

use crate::beacon::{ClusterKey, LocalTable, SignedBeacon};
use crate::control::{self, InstanceRecord, NodeControlClient, NodeTable};
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
    /// The cluster's shared key.
    pub key: ClusterKey,
    /// Time between beacons.
    pub beacon_period: Duration,
    /// A node silent this long is dropped from the registry.
    pub expiry: Duration,
}

impl NodeConfig {
    /// Loopback defaults: multicast group 239.255.77.1 on `port`, 200 ms beacons, expiry after
    /// five missed beacons.
    pub fn loopback(port: u16, key: ClusterKey) -> Self {
        NodeConfig {
            id: random_u64(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            control_port: 0,
            beacons: BeaconTransport::Multicast(MulticastGroup::loopback(Ipv4Addr::new(239, 255, 77, 1), port)),
            key,
            beacon_period: Duration::from_millis(200),
            expiry: Duration::from_millis(1000),
        }
    }
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

/// Counters a node keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Beacons sent.
    pub beacons_sent: u64,
    /// Beacons dropped because their MAC did not verify or they did not parse.
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

/// Wakes the beacon loop early (a change that must go out at once).
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

struct Inner {
    config: NodeConfig,
    incarnation: u64,
    control_addr: SocketAddr,
    table: RefCell<LocalTable>,
    registry: RefCell<Registry>,
    factories: RefCell<BTreeMap<String, ServiceType>>,
    kick: Kick,
    running: RefCell<HashMap<u64, Running>>,
    next_instance: Cell<u32>,
    watchers: RefCell<Vec<(String, WeakRedirector)>>,
    watched_generation: Cell<u64>,
    sender: OneWaySender,
    stats: RefCell<NodeStats>,
    /// Pulls in flight, by node (one at a time per node).
    pulling: RefCell<Vec<u64>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
}

/// A Base node on the current core: hosts instances, beacons them, and keeps the registry of
/// the whole cluster. Cheap to clone; stops when [`Node::stop`] is called or the core ends.
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
            [control::service(ControlImpl(slot.clone()))],
        )?;
        let control_addr = server.local_addr();
        let sender = match &config.beacons {
            BeaconTransport::Multicast(g) => OneWaySender::multicast(g)?,
            BeaconTransport::Unicast { .. } => OneWaySender::bind(SocketAddr::new(config.ip, 0))?,
        };
        let inner = Rc::new(Inner {
            table: RefCell::new(LocalTable::new(config.id, incarnation, control_addr.to_string())),
            registry: RefCell::new(Registry::new(Some(config.id), config.expiry)),
            incarnation,
            control_addr,
            factories: RefCell::new(BTreeMap::new()),
            running: RefCell::new(HashMap::new()),
            next_instance: Cell::new(1),
            watchers: RefCell::new(Vec::new()),
            watched_generation: Cell::new(0),
            sender,
            stats: RefCell::new(NodeStats::default()),
            pulling: RefCell::new(Vec::new()),
            tasks: RefCell::new(Vec::new()),
            kick: Kick::default(),
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
        tasks.push(spawn(beacon_loop(Rc::downgrade(&node.inner))));
        drop(tasks);
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
        self.inner.stats.borrow().clone()
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
        tracing::info!(id = rec.id, service, addr = %rec.addr, "instance started");
        Ok(rec)
    }

    /// Stop a local instance: its server and every connection to it close now; it leaves the
    /// registries with the next beacons.
    pub fn stop_instance(&self, id: u64) -> bool {
        let Some(r) = self.inner.running.borrow_mut().remove(&id) else { return false };
        tracing::info!(id, uptime_s = r.started.elapsed().as_secs_f64(), "instance stopped");
        drop(r);
        self.inner.table.borrow_mut().remove(id)
    }

    /// Mark a local instance up or down (what a failed health probe does).
    pub fn set_up(&self, id: u64, up: bool) -> bool {
        let mut table = self.inner.table.borrow_mut();
        let Some(rec) = table.get(id).cloned() else { return false };
        if rec.up != up {
            table.upsert(InstanceRecord { up, ..rec });
            // Down must reach the stubs now, not a beacon period later.
            self.inner.kick.kick();
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

    /// Stop beaconing, serving and every instance.
    pub fn stop(&self) {
        self.inner.tasks.borrow_mut().clear();
        self.inner.running.borrow_mut().clear();
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

fn on_beacon(inner: &Rc<Inner>, m: &Message<SignedBeacon>) {
    let beacon = match inner.config.key.open(&m.body, &m.mac) {
        Ok(b) => b,
        Err(e) => {
            inner.stats.borrow_mut().beacons_rejected += 1;
            tracing::debug!(error = %e, "beacon rejected");
            return;
        }
    };
    let outcome = inner.registry.borrow_mut().on_beacon(&beacon, Instant::now());
    match outcome {
        BeaconOutcome::Applied => refresh_watchers(inner),
        BeaconOutcome::NeedSync { node, control } => pull(inner, node, control),
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

async fn beacon_loop(weak: std::rc::Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let period = inner.config.beacon_period;
        update_loads(&inner);
        let beacon = inner.table.borrow_mut().next_beacon();
        let signed = inner.config.key.seal(&beacon);
        let targets: Vec<SocketAddr> = match &inner.config.beacons {
            BeaconTransport::Multicast(g) => vec![g.addr()],
            BeaconTransport::Unicast { peers, .. } => peers.clone(),
        };
        for to in targets {
            if let Err(e) = inner.sender.send(to, BEACON_METHOD, &signed).await {
                tracing::debug!(%to, error = %e, "beacon send failed");
            }
        }
        inner.stats.borrow_mut().beacons_sent += 1;
        let expired = inner.registry.borrow_mut().expire(Instant::now());
        if !expired.is_empty() {
            tracing::info!(?expired, "nodes expired");
        }
        // Local changes (started, stopped, marked down) and expiries reach redirectors here.
        refresh_watchers(&inner);
        let inner2 = inner.clone();
        drop(inner);
        inner2.kick.sleep(period).await;
    }
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

    async fn service_types(&self, _ctx: &CallContext) -> Result<Vec<String>, Status> {
        Ok(self.node()?.inner.factories.borrow().keys().cloned().collect())
    }

    async fn start_instance(&self, _ctx: &CallContext, service: &Archived<String>) -> Result<InstanceRecord, Status> {
        self.node()?.start_instance(service.as_str()).map_err(|e| Status::application(e.to_string()))
    }

    async fn stop_instance(&self, _ctx: &CallContext, id: &Archived<u64>) -> Result<bool, Status> {
        Ok(self.node()?.stop_instance(id.to_native()))
    }
}
