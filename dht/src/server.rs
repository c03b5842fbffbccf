//! A table node: hosts one replica of each group the partition map gives it, on one core of
//! our runtime, with one disk shared by all of them. The I/O driver around the sans-IO
//! [`Replica`]s: it moves raft messages over our rpc, keeps the tick, makes records durable
//! (group commit: one fdatasync per turn for every group), and answers clients.
//!
//! A turn: every group's ready is collected (its messages posted, its answers sent, its
//! records queued for the disk thread). In durable mode the turn does not wait for the disk:
//! the disk thread takes every write queued while it was busy and syncs once, and a persist
//! loop finishes turns in order as their writes complete (raft hears its entries are durable,
//! votes and acknowledgements go out) — raft-rs's asynchronous ready protocol, with several
//! turns in flight. Clients wait on their write's `(client, seq)` or their read's id; a
//! leader change fails the waiters with a redirect, and the client library retries elsewhere
//! with the same sequence number.
//!
//! Disk failure is fail-stop: the node stops taking part and answers `Unavailable`; the other
//! replicas carry on, and nothing half-written is acknowledged.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use multispace_rpc::rkyv::{self, rancor, Archived};
use multispace_rpc::runtime::time::{sleep, timeout_at};
use multispace_rpc::runtime::JoinHandle;
use multispace_rpc::{spawn, CallContext, CallOptions, Server, Status};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use crate::api::peer::{self, RaftPeer, RaftPeerClient};
use crate::api::table::{
    self, ChangeAnswer, ClusterView, MemberChange, ReadAnswer, Refusal, ReplicaStatus, Table, WriteAnswer,
};
use crate::command::{check_key, check_ops, Command, Op};
use crate::disk::{Disk, DiskError, DiskWorker, GroupWrite};
use crate::maps::{Group, GroupId, Maps, NodeId, MAPS_KEY, META_GROUP};
use crate::replica::{ProposeError, Replica, ReplicaConfig, StartError};
use crate::transfer::{Assembler, PieceError, PIECE_BYTES};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After a majority of replicas wrote it to their log and fdatasynced.
    Durable,
    /// After a majority of replicas hold it in memory. A node that restarts has lost its
    /// replicas' state, so it must come back as a new member (a new node id), never as itself.
    Memory,
}

impl Durability {
    fn name(self) -> &'static str {
        match self {
            Durability::Durable => "durable",
            Durability::Memory => "memory",
        }
    }
}

/// A node's configuration.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// This node's id.
    pub id: NodeId,
    /// Where it serves clients and peers.
    pub listen: SocketAddr,
    /// Every node's address, this one's included.
    pub nodes: BTreeMap<NodeId, SocketAddr>,
    /// Which groups exist and who replicates them.
    pub maps: Maps,
    /// When writes are acknowledged.
    pub durability: Durability,
    /// Where the log and snapshots live (required for [`Durability::Durable`]).
    pub data_dir: Option<PathBuf>,
    /// Raft's clock.
    pub tick: Duration,
    /// Replica behaviour.
    pub replica: ReplicaConfig,
    /// How long a request waits for its answer before the node says `Timeout`.
    pub request_timeout: Duration,
    /// Start hosting no group of the partition map: this node is a replacement or an addition,
    /// and takes on a group's replica when that group's leader adds it (membership change).
    pub join: bool,
}

impl DhtConfig {
    /// A node of a cluster where every node knows every other's address, with defaults tuned
    /// for a local network: 20 ms ticks, so a leader is replaced within about 200-400 ms.
    pub fn new(id: NodeId, nodes: BTreeMap<NodeId, SocketAddr>, maps: Maps, durability: Durability) -> Self {
        DhtConfig {
            id,
            listen: nodes.get(&id).copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            nodes,
            maps,
            durability,
            data_dir: None,
            tick: Duration::from_millis(20),
            replica: ReplicaConfig::default(),
            request_timeout: Duration::from_secs(2),
            join: false,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The disk could not be read.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A replica could not start.
    #[error("group {group}: {source}")]
    Replica {
        /// The group.
        group: GroupId,
        /// Why.
        source: StartError,
    },
    /// The server could not bind.
    #[error("serve: {0}")]
    Serve(#[from] multispace_rpc::ServeError),
}

/// A single-threaded wake-up flag: set by anyone, awaited by one task.
#[derive(Debug, Default)]
struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Raft messages waiting to go to one peer.
#[derive(Debug, Default)]
struct PeerLink {
    queue: RefCell<Vec<(GroupId, Message)>>,
    /// Groups the peer was removed from (this node applied it) whose messages it still sends:
    /// told in the next post to it (see [`Inner::tell_removed`]).
    removed: RefCell<Vec<GroupId>>,
    notify: Notify,
}

/// Messages held for a peer that does not take them (a bound on memory; raft resends).
const MAX_QUEUED_PER_PEER: usize = 16_384;
/// Bytes of raft messages per rpc to a peer.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Messages larger than a piece waiting to go to a peer, beyond which the queue holds them.
const MAX_LARGE_QUEUED: usize = 8;
/// How long a post waits for room in the connection to a peer before the batch is dropped
/// (and raft told the peer is unreachable; it sends again).
const POST_WAIT: Duration = Duration::from_secs(1);

struct GroupSlot {
    replica: Replica,
    writes: HashMap<(u64, u64), oneshot::Sender<WriteAnswer>>,
    reads: HashMap<u64, (Vec<u8>, oneshot::Sender<ReadAnswer>)>,
}

impl GroupSlot {
    fn new(replica: Replica) -> Self {
        GroupSlot { replica, writes: HashMap::new(), reads: HashMap::new() }
    }

    /// Answers every waiting write and read with `refusal`.
    fn refuse_all(&mut self, refusal: &Refusal) {
        for (_, tx) in self.writes.drain() {
            let _ = tx.send(WriteAnswer::Refused(refusal.clone()));
        }
        for (_, (_, tx)) in self.reads.drain() {
            let _ = tx.send(ReadAnswer::Refused(refusal.clone()));
        }
    }
}

struct State {
    groups: BTreeMap<GroupId, GroupSlot>,
    /// Groups a membership change removed this node from: no longer hosted, never rejoined.
    removed: BTreeSet<GroupId>,
    /// Groups that just applied this node's removal: served one more turn, so the messages
    /// the change produced (a leader's hand-over) go out, then dropped.
    leaving: BTreeSet<GroupId>,
    next_read: u64,
    failed: Option<String>,
}

struct Inner {
    config: DhtConfig,
    state: RefCell<State>,
    disk: Option<DiskWorker>,
    wake: Notify,
    /// Every node this one knows: the configured ones and members added since.
    nodes: RefCell<BTreeMap<NodeId, SocketAddr>>,
    peers: RefCell<BTreeMap<NodeId, Rc<PeerLink>>>,
    /// Send loops of peers added at run time (cleared on drop: they hold the `Inner`).
    extra_tasks: RefCell<Vec<JoinHandle<()>>>,
    /// Membership changes waiting to be applied, per group: answered with the new epoch.
    changes: RefCell<HashMap<GroupId, Vec<oneshot::Sender<u64>>>>,
    /// Turns whose writes are on their way to disk, oldest first, with what waits on each.
    persisting: RefCell<VecDeque<(Option<DiskDone>, Vec<Persisted>)>>,
    persist_notify: Notify,
    /// Raft messages arriving in pieces (snapshots too large for one rpc).
    pieces: RefCell<Assembler>,
    /// Groups this node leads that the metadata group should record (new members or epoch).
    meta_news: RefCell<Vec<Group>>,
    meta_notify: Notify,
    /// The maps as this node last read them from (or wrote them to) the metadata group.
    meta_maps: RefCell<Option<Maps>>,
    /// Mutual TLS is on: only nodes may write the metadata group.
    tls: bool,
    /// This run of the node, as its raft messages name it (see the peer interface): 0 when
    /// durable, random per start in memory mode.
    incarnation: u64,
    /// The incarnation each memory-mode peer's messages carried first.
    peer_incarnations: RefCell<HashMap<NodeId, u64>>,
    /// A peer has taken this run's raft messages (always, when durable). Until then a
    /// memory-mode node steps none of theirs: if it restarted, their messages speak of a log it
    /// no longer has (raft-rs panics on a commit index past its log), and a refusal is coming.
    accepted: Cell<bool>,
}

/// Why a node refuses a memory-mode peer's messages (the peer stops when it hears it).
const LOST_STATE: &str = "restarted in memory mode, without its raft state: it must rejoin under a new id";

/// A ready whose records must be durable before raft hears so and its messages go out.
type Persisted = (GroupId, u64, Vec<Message>);
/// The disk thread's word on a queued write.
type DiskDone = oneshot::Receiver<Result<(), String>>;

/// A running table node. Dropping it stops its tasks and closes its sockets.
pub struct DhtServer {
    inner: Rc<Inner>,
    addr: SocketAddr,
    _tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DhtServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtServer").field("id", &self.inner.config.id).field("addr", &self.addr).finish()
    }
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

impl DhtServer {
    /// Starts the node on the current core: reads its disk (durable mode), starts or recovers
    /// its replicas, binds, and begins serving. Must run inside our runtime.
    pub fn start(config: DhtConfig) -> Result<DhtServer, ServerError> {
        let id = config.id;
        if !config.nodes.contains_key(&id) {
            return Err(ServerError::Config(format!("node {id} is not in the node list")));
        }
        let (mut disk, recovered, removed) = match (config.durability, &config.data_dir) {
            (Durability::Durable, Some(dir)) => {
                let (disk, rec) = Disk::open(dir)?;
                if rec.torn_bytes > 0 {
                    tracing::warn!(node = id, bytes = rec.torn_bytes, "cut a torn final write from the log");
                }
                (Some(disk), rec.groups, rec.removed)
            }
            (Durability::Durable, None) => {
                return Err(ServerError::Config("durable mode needs a data directory".into()));
            }
            (Durability::Memory, _) => (None, BTreeMap::new(), BTreeSet::new()),
        };
        let mut groups = BTreeMap::new();
        // Groups the map gives this node (unless it joins later), bootstrapped on first start.
        let mine: Vec<_> = if config.join {
            Vec::new()
        } else {
            config.maps.groups().filter(|g| g.members.contains(&id)).cloned().collect()
        };
        for g in mine {
            if recovered.contains_key(&g.id) || removed.contains(&g.id) {
                continue;
            }
            let (replica, init) = Replica::bootstrap(id, g.id, &g.members, config.replica.clone())
                .map_err(|source| ServerError::Replica { group: g.id, source })?;
            if let Some(disk) = disk.as_mut() {
                disk.append(g.id, &init)?;
            }
            groups.insert(g.id, GroupSlot::new(replica));
        }
        // Every group the disk holds, including ones joined at run time.
        let mut removed = removed;
        for (gid, (snapshot, records)) in recovered {
            let replica = Replica::recover(id, gid, snapshot, records, config.replica.clone())
                .map_err(|source| ServerError::Replica { group: gid, source })?;
            if !replica.is_member(id) {
                // Its own snapshot already leaves this node out (a crash came between saving
                // it and recording the removal): finish the removal now.
                tracing::info!(node = id, group = gid, "recovered a group this node was removed from; dropping it");
                if let Some(disk) = disk.as_mut() {
                    disk.remove_group(gid)?;
                }
                removed.insert(gid);
                continue;
            }
            groups.insert(gid, GroupSlot::new(replica));
        }
        if let Some(disk) = disk.as_mut() {
            disk.sync()?;
        }
        let peers: BTreeMap<NodeId, Rc<PeerLink>> =
            config.nodes.keys().filter(|n| **n != id).map(|n| (*n, Rc::new(PeerLink::default()))).collect();
        let disk = match disk {
            Some(d) => Some(
                DiskWorker::spawn(d, format!("dht-disk-{id}"))
                    .map_err(|e| ServerError::Config(format!("disk thread: {e}")))?,
            ),
            None => None,
        };
        let inner = Rc::new(Inner {
            state: RefCell::new(State { groups, next_read: 1, failed: None, removed, leaving: BTreeSet::new() }),
            disk,
            wake: Notify::default(),
            nodes: RefCell::new(config.nodes.clone()),
            peers: RefCell::new(peers),
            extra_tasks: RefCell::new(Vec::new()),
            changes: RefCell::new(HashMap::new()),
            persisting: RefCell::new(VecDeque::new()),
            persist_notify: Notify::default(),
            pieces: RefCell::new(Assembler::default()),
            meta_news: RefCell::new(Vec::new()),
            meta_notify: Notify::default(),
            meta_maps: RefCell::new(None),
            tls: multispace_rpc::ConnConfig::for_this_core().tls.is_some(),
            incarnation: match config.durability {
                Durability::Durable => 0,
                Durability::Memory => crate::client::random_id().max(1),
            },
            peer_incarnations: RefCell::new(HashMap::new()),
            accepted: Cell::new(config.durability == Durability::Durable),
            config,
        });
        let mut peer_service = peer::service(PeerImpl(inner.clone()));
        if inner.tls {
            // With mutual TLS, only nodes (certificates named node-*) may speak raft to us;
            // any authenticated client may use the table.
            peer_service = peer_service.with_access(nodes_only());
        }
        let server = Server::bind(inner.config.listen, [table::service(TableImpl(inner.clone())), peer_service])?;
        let addr = server.local_addr();
        let mut tasks = vec![spawn(async move {
            if let Err(e) = server.serve().await {
                tracing::error!(error = %e, "table server stopped");
            }
        })];
        tasks.push(spawn(drive(inner.clone())));
        if inner.disk.is_some() {
            tasks.push(spawn(persist_loop(inner.clone())));
        }
        for (&to, link) in inner.peers.borrow().iter() {
            tasks.push(spawn(send_loop(inner.clone(), link.clone(), to, inner.config.nodes[&to])));
        }
        if inner.config.maps.meta().is_some() {
            tasks.push(spawn(meta_loop(inner.clone())));
        }
        tracing::info!(node = id, %addr, durability = inner.config.durability.name(), "table node up");
        Ok(DhtServer { inner, addr, _tasks: tasks })
    }

    /// Where it serves.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its replicas now.
    pub fn status(&self) -> Vec<ReplicaStatus> {
        self.inner.status()
    }

    /// fdatasyncs done by its log (0 in memory mode).
    pub fn fsyncs(&self) -> u64 {
        self.inner.disk.as_ref().map_or(0, DiskWorker::fsyncs)
    }

    /// Why it stopped serving the table (its disk failed), if it did.
    pub fn failed(&self) -> Option<String> {
        self.inner.state.borrow().failed.clone()
    }
}

impl Drop for DhtServer {
    fn drop(&mut self) {
        // The added peers' send loops hold the Inner; cancel them so it can go.
        self.inner.extra_tasks.borrow_mut().clear();
    }
}

impl Inner {
    /// Learns a node's address (a member added at run time) and starts sending to it.
    fn add_node(self: &Rc<Self>, node: NodeId, addr: SocketAddr) {
        if node == self.config.id {
            return;
        }
        self.nodes.borrow_mut().insert(node, addr);
        if self.peers.borrow().contains_key(&node) {
            return;
        }
        let link = Rc::new(PeerLink::default());
        self.peers.borrow_mut().insert(node, link.clone());
        self.extra_tasks.borrow_mut().push(spawn(send_loop(self.clone(), link, node, addr)));
        tracing::info!(node = self.config.id, peer = node, %addr, "learned a new member");
    }

    fn status(&self) -> Vec<ReplicaStatus> {
        let st = self.state.borrow();
        st.groups
            .iter()
            .map(|(g, slot)| {
                let r = &slot.replica;
                let (voters, learners) = r.members();
                ReplicaStatus {
                    group: *g,
                    epoch: r.epoch(),
                    role: role_name(r.role()).into(),
                    term: r.term(),
                    leader: r.leader(),
                    applied: r.state().applied(),
                    last_index: r.last_index(),
                    keys: r.state().len() as u64,
                    voters,
                    learners,
                }
            })
            .collect()
    }

    fn post(&self, group: GroupId, msgs: Vec<Message>) {
        for m in msgs {
            let peers = self.peers.borrow();
            let Some(link) = peers.get(&m.to) else { continue };
            let mut q = link.queue.borrow_mut();
            if q.len() >= MAX_QUEUED_PER_PEER {
                q.remove(0);
            }
            q.push((group, m));
            drop(q);
            link.notify.notify();
        }
    }

    fn tick(&self) {
        self.pieces.borrow_mut().expire(Instant::now());
        let mut st = self.state.borrow_mut();
        if st.failed.is_some() {
            return;
        }
        for slot in st.groups.values_mut() {
            slot.replica.tick();
        }
    }

    /// One turn: see the module docs.
    fn turn(self: &Rc<Self>) {
        // Phase 1: every group's ready. Messages go out now; so do answers (what a ready
        // applies is already durable on a majority).
        let mut pending: Vec<Persisted> = Vec::new();
        let mut writes: Vec<GroupWrite> = Vec::new();
        let mut added = Vec::new();
        let mut leaving = Vec::new();
        let mut meta_news = Vec::new();
        {
            let mut st = self.state.borrow_mut();
            if st.failed.is_some() {
                return;
            }
            // Marked last turn: this turn's ready is their last.
            let last_turn = std::mem::take(&mut st.leaving);
            for (gid, slot) in st.groups.iter_mut() {
                let Some(mut rd) = slot.replica.ready() else { continue };
                self.post(*gid, std::mem::take(&mut rd.messages));
                for a in rd.applied.drain(..) {
                    if let Some(tx) = slot.writes.remove(&(a.client, a.seq)) {
                        let _ = tx.send(WriteAnswer::Done(a.result));
                    }
                }
                for w in rd.dropped.drain(..) {
                    if let Some(tx) = slot.writes.remove(&w) {
                        let _ = tx.send(WriteAnswer::Refused(Refusal::Redirect(group_view(&slot.replica))));
                    }
                }
                for r in rd.reads.drain(..) {
                    if let Some((key, tx)) = slot.reads.remove(&r.id) {
                        let _ = tx.send(ReadAnswer::Value(slot.replica.state().get(&key).map(<[u8]>::to_vec)));
                    }
                }
                let conf_changed = !rd.member_updates.is_empty();
                added.extend(rd.member_updates.drain(..).map(|u| (*gid, u)));
                let mut elected = false;
                if let Some((role, leader)) = rd.role_changed {
                    tracing::debug!(node = self.config.id, group = *gid, ?role, ?leader, "role changed");
                    if role != StateRole::Leader {
                        slot.refuse_all(&Refusal::Redirect(group_view(&slot.replica)));
                    }
                    elected = role == StateRole::Leader;
                }
                // A group's leader tells the metadata group of its members: after a change,
                // and when elected (a leader that died before telling is covered by the next).
                if (elected || conf_changed) && slot.replica.role() == StateRole::Leader {
                    meta_news.push(group_view(&slot.replica));
                }
                // Applied a change that leaves this node out: serve one more turn (what the
                // change produced goes out), then drop the group, on disk after this turn's
                // records.
                if conf_changed && !slot.replica.is_member(self.config.id) {
                    leaving.push(*gid);
                }
                let remove = last_turn.contains(gid);
                let write = GroupWrite {
                    group: *gid,
                    snapshot: rd.snapshot_to_save.take(),
                    records: std::mem::take(&mut rd.records),
                    local_snapshot: rd.local_snapshot.take(),
                    local_records: std::mem::take(&mut rd.local_records),
                    remove,
                    commit_only: rd.commit_only,
                };
                if write.snapshot.is_some() || !write.records.is_empty() || write.local_snapshot.is_some() || remove {
                    writes.push(write);
                }
                pending.push((*gid, rd.number(), std::mem::take(&mut rd.persisted_messages)));
            }
            st.leaving.extend(leaving.iter().copied());
            if !st.leaving.is_empty() {
                self.wake.notify();
            }
            for gid in last_turn {
                // No ready this turn: the removal still goes to disk, after what is queued.
                if !writes.iter().any(|w| w.group == gid && w.remove) {
                    writes.push(GroupWrite { group: gid, remove: true, ..GroupWrite::default() });
                }
                if let Some(mut slot) = st.groups.remove(&gid) {
                    tracing::info!(node = self.config.id, group = gid, "removed from the group: replica dropped");
                    // Whoever waits here is sent to the members that remain.
                    slot.refuse_all(&Refusal::Redirect(group_view(&slot.replica)));
                }
                st.removed.insert(gid);
            }
        }
        self.members_changed(added);
        if !meta_news.is_empty() && self.config.maps.meta().is_some() {
            self.meta_news.borrow_mut().extend(meta_news);
            self.meta_notify.notify();
        }
        if pending.is_empty() && writes.is_empty() {
            return;
        }
        match &self.disk {
            // Phase 2, durable: queue the writes (one fdatasync covers every group's, and every
            // turn's queued while the disk was busy) and go on; the persist loop finishes the
            // turn when they are durable. Readies without records queue too: raft must hear
            // of persistence in order.
            Some(disk) => {
                let done = if writes.iter().all(GroupWrite::can_wait) {
                    // Nothing that needs a sync of its own (commit indexes at most): finished in
                    // order without waiting for the disk.
                    if !writes.is_empty() {
                        disk.write_later(writes);
                    }
                    None
                } else {
                    Some(disk.write(writes))
                };
                self.persisting.borrow_mut().push_back((done, pending));
                self.persist_notify.notify();
            }
            // In memory, "persisted" is now.
            None => self.persisted(pending),
        }
    }

    /// Phase 3: a turn's records are durable; what waited on that goes out.
    fn persisted(&self, pending: Vec<Persisted>) {
        let mut again = false;
        {
            let mut st = self.state.borrow_mut();
            for (gid, number, msgs) in pending {
                if let Some(slot) = st.groups.get_mut(&gid) {
                    slot.replica.persisted(number);
                    again |= slot.replica.has_ready();
                }
                self.post(gid, msgs);
            }
        }
        if again {
            self.wake.notify();
        }
    }

    /// What a peer's answer to this node's raft messages says of this run: taken (the node may
    /// step peers' messages), or refused as a memory-mode restart under an old id (the node
    /// stops; returns false).
    fn heard<T>(&self, peer: NodeId, answer: &Result<T, multispace_rpc::CallError>) -> bool {
        match answer {
            Ok(_) => self.accepted.set(true),
            Err(multispace_rpc::CallError::Status(s)) if s.message().contains(LOST_STATE) => {
                self.stop(format!("node {peer} refused this node: {}", s.message()));
                return false;
            }
            Err(_) => {}
        }
        true
    }

    /// A disk error stops the node (fail-stop): nothing more is written or acknowledged.
    fn fail(&self, reason: String) {
        self.stop(format!("disk failed: {reason}"));
    }

    /// Stops taking part in the table for good (fail-stop): waiters and later requests are
    /// answered `Unavailable` with `reason`.
    fn stop(&self, reason: String) {
        let mut st = self.state.borrow_mut();
        if st.failed.is_some() {
            return;
        }
        tracing::error!(node = self.config.id, %reason, "this node stops serving the table");
        let refusal = Refusal::Unavailable(reason.clone());
        for slot in st.groups.values_mut() {
            slot.refuse_all(&refusal);
        }
        st.failed = Some(reason);
    }

    /// Applied membership changes: learn added members' addresses, answer who waited.
    fn members_changed(self: &Rc<Self>, updates: Vec<(GroupId, crate::replica::MemberUpdate)>) {
        use raft::eraftpb::ConfChangeType;
        for (gid, u) in updates {
            if matches!(u.change, ConfChangeType::AddNode | ConfChangeType::AddLearnerNode) {
                match std::str::from_utf8(&u.context).ok().and_then(|a| a.parse().ok()) {
                    Some(addr) => self.add_node(u.node, addr),
                    None if self.nodes.borrow().contains_key(&u.node) => {}
                    None => tracing::warn!(group = gid, node = u.node, "member added without a usable address"),
                }
            }
            let epoch = self.state.borrow().groups.get(&gid).map_or(0, |s| s.replica.epoch());
            for tx in self.changes.borrow_mut().remove(&gid).unwrap_or_default() {
                let _ = tx.send(epoch);
            }
        }
    }

    async fn change_members(&self, group: GroupId, change: MemberChange) -> ChangeAnswer {
        use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
        // Any epoch: a membership change is not routed by the member list.
        if let Err(r) = self.refuse_unless_ready(group, u64::MAX) {
            return ChangeAnswer::Refused(r);
        }
        let (node, change_type, context) = match change {
            MemberChange::AddLearner { node, addr } => {
                if addr.parse::<SocketAddr>().is_err() {
                    return ChangeAnswer::Refused(Refusal::Invalid(format!("`{addr}` is not ip:port")));
                }
                (node, ConfChangeType::AddLearnerNode, addr.into_bytes())
            }
            MemberChange::Promote { node } => (node, ConfChangeType::AddNode, Vec::new()),
            MemberChange::Remove { node } => (node, ConfChangeType::RemoveNode, Vec::new()),
        };
        if change_type != ConfChangeType::RemoveNode {
            let st = self.state.borrow();
            if st.groups.get(&group).is_some_and(|slot| slot.replica.was_removed(node)) {
                return ChangeAnswer::Refused(Refusal::Invalid(format!(
                    "node {node} was removed from group {group} and cannot rejoin under the same id (its old log \
                     and votes could break raft's safety): start it under a new id"
                )));
            }
        }
        let mut single = ConfChangeSingle { node_id: node, ..Default::default() };
        single.set_change_type(change_type);
        let mut cc = ConfChangeV2 { context: context.into(), ..Default::default() };
        cc.set_changes(vec![single].into());
        let rx = {
            let mut st = self.state.borrow_mut();
            let slot = st.groups.get_mut(&group).expect("checked above");
            match slot.replica.propose_conf_change(cc) {
                Ok(()) => {}
                Err(ProposeError::Dropped(why)) => {
                    return ChangeAnswer::Refused(Refusal::Invalid(format!(
                    "refused ({why}): one membership change at a time, and a learner must exist before it is promoted"
                )))
                }
                // An earlier change (or, just after an election, possibly one) is unapplied.
                Err(ProposeError::Busy { .. }) => return ChangeAnswer::Refused(Refusal::Busy),
                Err(_) => return ChangeAnswer::Refused(Refusal::Redirect(group_view(&slot.replica))),
            }
            let (tx, rx) = oneshot::channel();
            self.changes.borrow_mut().entry(group).or_default().push(tx);
            rx
        };
        self.wake.notify();
        match timeout_at(Instant::now() + self.config.request_timeout * 2, rx).await {
            Ok(Ok(epoch)) => ChangeAnswer::Done(epoch),
            _ => ChangeAnswer::Refused(Refusal::Timeout),
        }
    }

    fn refuse_unless_ready(&self, group: GroupId, epoch: u64) -> Result<(), Refusal> {
        let st = self.state.borrow();
        if let Some(reason) = &st.failed {
            return Err(Refusal::Unavailable(reason.clone()));
        }
        let Some(slot) = st.groups.get(&group) else { return Err(Refusal::NotHosted) };
        if epoch < slot.replica.epoch() {
            return Err(Refusal::Redirect(group_view(&slot.replica)));
        }
        Ok(())
    }

    /// Whether `key` belongs to `group`: by its slot, or the metadata group's one key.
    fn key_in(&self, key: &[u8], group: GroupId) -> bool {
        if group == META_GROUP {
            key == MAPS_KEY
        } else {
            self.config.maps.group_of(key).id == group
        }
    }

    /// The maps to hand clients: the metadata group's (this node's replica of it if it has
    /// one, else what it last read from the group), else the configured ones; updated with
    /// what the hosted replicas know (members, epochs, leaders). Says where they came from.
    fn maps(&self) -> (Maps, &'static str) {
        let st = self.state.borrow();
        let local = st
            .groups
            .get(&META_GROUP)
            .and_then(|slot| slot.replica.state().get(MAPS_KEY))
            .and_then(|bytes| Maps::decode(bytes).ok());
        let (mut maps, source) = match local.or_else(|| self.meta_maps.borrow().clone()) {
            Some(maps) => (maps, "metadata group"),
            None => (self.config.maps.clone(), "configuration"),
        };
        for slot in st.groups.values() {
            maps.learn(&crate::maps::Redirect { group: group_view(&slot.replica) });
        }
        (maps, source)
    }

    async fn write(&self, group: GroupId, epoch: u64, cmd: Command) -> WriteAnswer {
        if let Err(e) = check_ops(&cmd.ops) {
            return WriteAnswer::Refused(Refusal::Invalid(e.to_string()));
        }
        if let Err(r) = self.refuse_unless_ready(group, epoch) {
            return WriteAnswer::Refused(r);
        }
        if cmd.ops.iter().any(|op| !self.key_in(op.key(), group)) {
            return WriteAnswer::Refused(Refusal::Invalid(format!("a key of the batch is not in group {group}")));
        }
        let rx = {
            let mut st = self.state.borrow_mut();
            let slot = st.groups.get_mut(&group).expect("checked above");
            match slot.replica.propose(&cmd) {
                Ok(()) => {}
                Err(ProposeError::NotLeader { .. }) => {
                    return WriteAnswer::Refused(Refusal::Redirect(group_view(&slot.replica)));
                }
                Err(ProposeError::Busy { .. }) => return WriteAnswer::Refused(Refusal::Busy),
                Err(ProposeError::Dropped(why)) => {
                    tracing::debug!(group, %why, "proposal dropped");
                    return WriteAnswer::Refused(Refusal::Redirect(group_view(&slot.replica)));
                }
            }
            let (tx, rx) = oneshot::channel();
            // A retry of a write still waiting here replaces the older waiter (which times out).
            slot.writes.insert((cmd.client, cmd.seq), tx);
            rx
        };
        self.wake.notify();
        match timeout_at(Instant::now() + self.config.request_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            _ => WriteAnswer::Refused(Refusal::Timeout),
        }
    }

    async fn read(&self, group: GroupId, epoch: u64, key: Vec<u8>, stale: bool) -> ReadAnswer {
        if let Err(e) = check_key(&key) {
            return ReadAnswer::Refused(Refusal::Invalid(e.to_string()));
        }
        if let Err(r) = self.refuse_unless_ready(group, epoch) {
            return ReadAnswer::Refused(r);
        }
        if !self.key_in(&key, group) {
            return ReadAnswer::Refused(Refusal::Invalid(format!("the key is not in group {group}")));
        }
        let rx = {
            let mut guard = self.state.borrow_mut();
            let st = &mut *guard;
            let slot = st.groups.get_mut(&group).expect("checked above");
            if stale {
                return ReadAnswer::Value(slot.replica.state().get(&key).map(<[u8]>::to_vec));
            }
            let id = st.next_read;
            st.next_read += 1;
            if slot.replica.read(id).is_err() {
                return ReadAnswer::Refused(Refusal::Redirect(group_view(&slot.replica)));
            }
            let (tx, rx) = oneshot::channel();
            slot.reads.insert(id, (key, tx));
            rx
        };
        self.wake.notify();
        match timeout_at(Instant::now() + self.config.request_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            _ => ReadAnswer::Refused(Refusal::Timeout),
        }
    }

    /// Steps `from`'s messages, except those of groups `from` was removed from, which it is
    /// told (see [`Inner::tell_removed`]). Only applied removals count (replicated in the state
    /// machine, so they survive restarts and snapshots) — a node merely missing from the
    /// configuration may be one this replica has not yet seen added.
    fn deliver(&self, from: NodeId, messages: Vec<(GroupId, Vec<u8>)>) {
        let mut gone: Vec<GroupId> = Vec::new();
        let mut st = self.state.borrow_mut();
        if st.failed.is_some() || !self.accepted.get() {
            return;
        }
        for (group, bytes) in messages {
            let Ok(msg) = Message::parse_from_bytes(&bytes) else {
                tracing::warn!(from, group, "undecodable raft message dropped");
                continue;
            };
            if msg.from != from {
                tracing::warn!(from, claimed = msg.from, "raft message with a forged sender dropped");
                continue;
            }
            if !st.groups.contains_key(&group) && self.config.join && !st.removed.contains(&group) {
                // A group whose leader added this node: start empty; its snapshot follows.
                match Replica::joining(self.config.id, group, self.config.replica.clone()) {
                    Ok(replica) => {
                        tracing::info!(node = self.config.id, group, from, "joining a group");
                        st.groups.insert(group, GroupSlot::new(replica));
                    }
                    Err(e) => tracing::error!(group, error = %e, "cannot start a joining replica"),
                }
            }
            if let Some(slot) = st.groups.get_mut(&group) {
                if slot.replica.was_removed(from) && !slot.replica.is_member(from) {
                    if !gone.contains(&group) {
                        gone.push(group);
                    }
                    continue;
                }
                slot.replica.step(msg);
            }
        }
        drop(st);
        self.wake.notify();
        self.tell_removed(from, gone);
    }

    /// A piece of a large raft message from `from` (see [`crate::transfer`]); the last one
    /// steps the whole message as [`Inner::deliver`] does.
    fn deliver_piece(
        &self,
        from: NodeId,
        group: GroupId,
        transfer: u64,
        offset: u64,
        total: u64,
        piece: &[u8],
    ) -> Result<(), PieceError> {
        let whole = self.pieces.borrow_mut().piece((from, group), transfer, offset, total, piece, Instant::now())?;
        if let Some(message) = whole {
            self.deliver(from, vec![(group, message)]);
        }
        Ok(())
    }

    /// Member `by` told this node it was removed from `groups`: a removal this node missed (it
    /// was down or cut off when the change was applied). Each is dropped as if it had applied
    /// the change: served one more turn, then removed, durably.
    fn removed_by(&self, by: NodeId, groups: Vec<GroupId>) {
        if groups.is_empty() {
            return;
        }
        let mut st = self.state.borrow_mut();
        let mut any = false;
        for gid in groups {
            if st.groups.contains_key(&gid) && !st.leaving.contains(&gid) {
                tracing::info!(
                    node = self.config.id,
                    group = gid,
                    by,
                    "a member says this node was removed: dropping the replica"
                );
                st.leaving.insert(gid);
                any = true;
            }
        }
        drop(st);
        if any {
            self.wake.notify();
        }
    }

    /// `to` sent messages for `groups` after this node applied its removal from them: tell
    /// it with the next post (as a `deliver` answer would), so it drops its stale replicas.
    fn tell_removed(&self, to: NodeId, groups: Vec<GroupId>) {
        if groups.is_empty() {
            return;
        }
        let peers = self.peers.borrow();
        let Some(link) = peers.get(&to) else { return };
        let mut removed = link.removed.borrow_mut();
        for g in groups {
            if !removed.contains(&g) {
                removed.push(g);
            }
        }
        drop(removed);
        link.notify.notify();
    }

    fn report_delivery(&self, to: NodeId, batch: &[(GroupId, MessageType)], delivered: bool) {
        let mut st = self.state.borrow_mut();
        for (group, kind) in batch {
            let Some(slot) = st.groups.get_mut(group) else { continue };
            if *kind == MessageType::MsgSnapshot {
                slot.replica.report_snapshot(to, delivered);
            }
            if !delivered {
                slot.replica.report_unreachable(to);
            }
        }
    }
}

/// A hosted group as clients should see it: its voters, epoch and leader.
fn group_view(replica: &Replica) -> crate::maps::Group {
    crate::maps::Group {
        id: replica.group(),
        epoch: replica.epoch(),
        members: replica.members().0,
        leader_hint: replica.leader(),
    }
}

/// The node's clock and turn loop.
async fn drive(inner: Rc<Inner>) {
    let tick = inner.config.tick;
    let mut next_tick = Instant::now() + tick;
    loop {
        let _ = timeout_at(next_tick, inner.wake.wait()).await;
        let now = Instant::now();
        if now >= next_tick {
            inner.tick();
            // After a stall, tick once and resume the cadence rather than bursting ticks
            // (a burst would start elections everywhere at once).
            next_tick = (next_tick + tick).max(now + tick / 2);
        }
        inner.turn();
    }
}

/// Finishes durable turns in order as their writes complete.
async fn persist_loop(inner: Rc<Inner>) {
    loop {
        inner.persist_notify.wait().await;
        loop {
            let Some((done, pending)) = inner.persisting.borrow_mut().pop_front() else { break };
            if let Some(done) = done {
                match done.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return inner.fail(e),
                    Err(_) => return inner.fail("the disk thread is gone".into()),
                }
            }
            inner.persisted(pending);
        }
    }
}

/// Posts `messages` and `removed` to a peer; false if they were not queued on a live
/// connection within [`POST_WAIT`] (the wait is for room in a connection to a peer that
/// stopped reading).
async fn post(client: &RaftPeerClient, inner: &Inner, messages: Vec<(u64, Vec<u8>)>, removed: Vec<u64>) -> bool {
    let posted = client.post_unacked(inner.config.id, inner.incarnation, messages, removed);
    matches!(timeout_at(Instant::now() + POST_WAIT, posted).await, Ok(Ok(())))
}

/// Moves one peer's queued raft messages, a batch per rpc; a message too large for one
/// (a snapshot) goes in pieces, one piece between batches, so the other groups' heartbeats
/// and appends to this peer keep flowing while it travels.
///
/// Batches go as `deliver` calls until the peer has answered one (the answer says whether it
/// takes this run of the node: see [`Inner::heard`]), and after that as unanswered `post`s
/// queued on the connection, as do batches holding a snapshot (raft wants to know whether
/// one arrived): an answer to every batch would double the messages between the nodes,
/// and waiting for it would hold back the next batch a round trip.
async fn send_loop(inner: Rc<Inner>, link: Rc<PeerLink>, to: NodeId, addr: SocketAddr) {
    let client = RaftPeerClient::new(addr).with_options(CallOptions::timeout(Duration::from_secs(1)));
    let me = inner.config.id;
    // Messages going in pieces, in order: group and kind, encoding, and how much has gone.
    let mut large: VecDeque<(GroupId, MessageType, Vec<u8>, usize)> = VecDeque::new();
    let mut transfers = 0u64;
    // A `deliver` to this peer was answered: batches may go as posts.
    let mut answered = false;
    // A memory-mode node asks at once whether its peers take this run (see `accepted`).
    if !inner.accepted.get() {
        let answer = client.deliver(me, inner.incarnation, Vec::new()).await;
        if !inner.heard(to, &answer) {
            return;
        }
        answered = answer.is_ok();
    }
    loop {
        link.notify.wait().await;
        loop {
            // Encode each message once; a batch stops at the message that crosses the limit.
            // Large ones join the transfers, sent a piece per round after the batch.
            let (batch, encoded, removed) = {
                let mut q = link.queue.borrow_mut();
                let removed = std::mem::take(&mut *link.removed.borrow_mut());
                if q.is_empty() && large.is_empty() && removed.is_empty() {
                    break;
                }
                let mut bytes = 0;
                let mut taken = 0;
                let mut kinds: Vec<(GroupId, MessageType)> = Vec::new();
                let mut encoded: Vec<(u64, Vec<u8>)> = Vec::new();
                for (g, m) in q.iter() {
                    taken += 1;
                    let b = m.write_to_bytes().unwrap_or_default();
                    if b.len() > PIECE_BYTES {
                        if large.len() >= MAX_LARGE_QUEUED {
                            // Left queued (and bounded there) until transfers drain.
                            taken -= 1;
                            break;
                        }
                        large.push_back((*g, m.get_msg_type(), b, 0));
                        continue;
                    }
                    bytes += b.len();
                    kinds.push((*g, m.get_msg_type()));
                    encoded.push((*g, b));
                    if bytes > MAX_BATCH_BYTES {
                        break;
                    }
                }
                q.drain(..taken);
                (kinds, encoded, removed)
            };
            let snapshot = batch.iter().any(|(_, kind)| *kind == MessageType::MsgSnapshot);
            if !encoded.is_empty() && (!answered || snapshot) {
                if !removed.is_empty() {
                    let _ = post(&client, &inner, Vec::new(), removed).await;
                }
                let answer = client.deliver(me, inner.incarnation, encoded).await;
                answered |= answer.is_ok();
                if !inner.heard(to, &answer) {
                    return;
                }
                inner.report_delivery(to, &batch, answer.is_ok());
            } else if (!encoded.is_empty() || !removed.is_empty()) && !post(&client, &inner, encoded, removed).await {
                inner.report_delivery(to, &batch, false);
            }
            if let Some((group, kind, message, sent)) = large.front_mut() {
                if *sent == 0 {
                    transfers += 1;
                }
                let piece = &message[*sent..(*sent + PIECE_BYTES).min(message.len())];
                let total = message.len() as u64;
                let answer = client
                    .deliver_piece(me, inner.incarnation, *group, transfers, *sent as u64, total, piece.to_vec())
                    .await;
                if !inner.heard(to, &answer) {
                    return;
                }
                *sent += piece.len();
                if answer.is_err() || *sent == message.len() {
                    if answer.is_err() {
                        tracing::debug!(to, group = *group, "large raft message not delivered; raft retries");
                    }
                    inner.report_delivery(to, &[(*group, *kind)], answer.is_ok());
                    large.pop_front();
                }
            }
        }
    }
}

/// With mutual TLS, nodes are those whose certificates are named `node-*`.
fn nodes_only() -> multispace_rpc::AccessList {
    multispace_rpc::AccessList::new().allow("node-*")
}

/// Keeps the metadata group's maps current from this node's side: records the groups this
/// node leads when their members change or it is elected (the first record also stores the
/// configured maps, when the group holds none yet), and re-reads the maps now and then so a
/// node that hosts no replica of the group (a joiner) hands clients the group's maps rather
/// than its own configuration.
async fn meta_loop(inner: Rc<Inner>) {
    use crate::client::{ClientConfig, DhtClient};
    const REREAD: Duration = Duration::from_secs(5);
    let config = ClientConfig {
        deadline: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let client = DhtClient::new(inner.config.maps.clone(), inner.nodes.borrow().clone(), config);
    let mut failures = 0u32;
    // Re-read at once: a joiner's configuration may be out of date.
    let mut reread_at = Instant::now();
    loop {
        let _ = timeout_at(reread_at, inner.meta_notify.wait()).await;
        let news: Vec<Group> = std::mem::take(&mut *inner.meta_news.borrow_mut());
        if news.is_empty() {
            if Instant::now() < reread_at {
                continue;
            }
            if inner.state.borrow().groups.contains_key(&META_GROUP) {
                // Its own replica is where this node reads the maps.
                reread_at = Instant::now() + REREAD;
                continue;
            }
        }
        let result = if news.is_empty() {
            client.stored_maps().await
        } else {
            client.record_groups(&inner.config.maps, &news).await.map(Some)
        };
        match result {
            Ok(maps) => {
                failures = 0;
                if maps.is_some() {
                    *inner.meta_maps.borrow_mut() = maps;
                }
                reread_at = Instant::now() + REREAD;
            }
            Err(e) => {
                // Kept for the next try; newer news for the same group wins when recorded.
                tracing::debug!(node = inner.config.id, error = %e, "metadata group not reached");
                inner.meta_news.borrow_mut().extend(news);
                failures += 1;
                let back_off = Duration::from_millis(100 << failures.min(5));
                sleep(back_off).await;
                reread_at = Instant::now();
                if !inner.meta_news.borrow().is_empty() {
                    inner.meta_notify.notify();
                }
            }
        }
    }
}

fn owned<T>(archived: &T::Archived) -> Result<T, Status>
where
    T: rkyv::Archive,
    T::Archived: rkyv::Deserialize<T, rancor::Strategy<rkyv::de::Pool, rancor::Error>>,
{
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| Status::application(format!("bad argument: {e}")))
}

struct TableImpl(Rc<Inner>);

impl Table for TableImpl {
    async fn get(
        &self,
        _ctx: &CallContext,
        group: &Archived<u64>,
        epoch: &Archived<u64>,
        key: &Archived<Vec<u8>>,
        stale: &Archived<bool>,
    ) -> Result<ReadAnswer, Status> {
        Ok(self.0.read(group.to_native(), epoch.to_native(), key.to_vec(), *stale).await)
    }

    async fn write(
        &self,
        ctx: &CallContext,
        group: &Archived<u64>,
        epoch: &Archived<u64>,
        client: &Archived<u64>,
        seq: &Archived<u64>,
        acked_below: &Archived<u64>,
        ops: &Archived<Vec<Op>>,
    ) -> Result<WriteAnswer, Status> {
        if *group == META_GROUP && self.0.tls && !nodes_only().permits(0, ctx.principal.as_deref()) {
            let who = ctx.principal.as_deref().unwrap_or("anonymous");
            return Ok(WriteAnswer::Refused(Refusal::Invalid(format!(
                "only nodes write the metadata group, not `{who}`"
            ))));
        }
        let cmd = Command {
            client: client.to_native(),
            seq: seq.to_native(),
            acked_below: acked_below.to_native(),
            ops: owned::<Vec<Op>>(ops)?,
        };
        Ok(self.0.write(group.to_native(), epoch.to_native(), cmd).await)
    }

    async fn change_members(
        &self,
        _ctx: &CallContext,
        group: &Archived<u64>,
        change: &Archived<MemberChange>,
    ) -> Result<ChangeAnswer, Status> {
        Ok(self.0.change_members(group.to_native(), owned::<MemberChange>(change)?).await)
    }

    async fn cluster(&self, _ctx: &CallContext) -> Result<ClusterView, Status> {
        let c = &self.0.config;
        let (maps, source) = self.0.maps();
        Ok(ClusterView {
            node: c.id,
            maps,
            maps_from: source.into(),
            nodes: self.0.nodes.borrow().iter().map(|(id, a)| (*id, a.to_string())).collect(),
            replicas: self.0.status(),
            durability: c.durability.name().into(),
            failed: self.0.state.borrow().failed.clone(),
        })
    }
}

struct PeerImpl(Rc<Inner>);

impl PeerImpl {
    /// `from` as a node id, if this node knows it and it is the run of `from` this node has
    /// heard from before (a memory-mode node that restarted is refused: see the interface).
    fn known(&self, from: &Archived<u64>, incarnation: &Archived<u64>) -> Result<NodeId, Status> {
        let (from, incarnation) = (from.to_native(), incarnation.to_native());
        if !self.0.nodes.borrow().contains_key(&from) {
            return Err(Status::application(format!("unknown node {from}")));
        }
        if incarnation != 0 {
            let first = *self.0.peer_incarnations.borrow_mut().entry(from).or_insert(incarnation);
            if first != incarnation {
                tracing::warn!(
                    node = self.0.config.id,
                    peer = from,
                    "a memory-mode peer restarted under its old id: refused"
                );
                return Err(Status::application(format!("node {from} {LOST_STATE}")));
            }
        }
        Ok(from)
    }
}

impl RaftPeer for PeerImpl {
    async fn deliver(
        &self,
        _ctx: &CallContext,
        from: &Archived<u64>,
        incarnation: &Archived<u64>,
        messages: &Archived<Vec<(u64, Vec<u8>)>>,
    ) -> Result<(), Status> {
        let from = self.known(from, incarnation)?;
        self.0.deliver(from, owned::<Vec<(u64, Vec<u8>)>>(messages)?);
        Ok(())
    }

    async fn post(
        &self,
        ctx: &CallContext,
        from: &Archived<u64>,
        incarnation: &Archived<u64>,
        messages: &Archived<Vec<(u64, Vec<u8>)>>,
        removed: &Archived<Vec<u64>>,
    ) {
        // A refused sender learns it from the answer to its `deliver`s, which come first.
        if let Err(e) = self.deliver(ctx, from, incarnation, messages).await {
            tracing::debug!(from = from.to_native(), error = %e, "raft post dropped");
            return;
        }
        let from = from.to_native();
        self.0.removed_by(from, removed.iter().map(|g| g.to_native()).collect());
    }

    async fn deliver_piece(
        &self,
        _ctx: &CallContext,
        from: &Archived<u64>,
        incarnation: &Archived<u64>,
        group: &Archived<u64>,
        transfer: &Archived<u64>,
        offset: &Archived<u64>,
        total: &Archived<u64>,
        piece: &Archived<Vec<u8>>,
    ) -> Result<(), Status> {
        let from = self.known(from, incarnation)?;
        let (group, transfer) = (group.to_native(), transfer.to_native());
        self.0.deliver_piece(from, group, transfer, offset.to_native(), total.to_native(), piece.as_slice()).map_err(
            |e| {
                tracing::debug!(from, group, transfer, error = %e, "raft message piece refused");
                Status::application(e.to_string())
            },
        )
    }
}
