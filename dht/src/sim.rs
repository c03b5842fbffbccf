//! A deterministic simulation of one replica group: replicas, their disks, clients and a network
//! that drops, delays, duplicates, reorders and partitions messages — all driven by one seed, so
//! a failing seed replays exactly.
//!
//! Time is counted in turns. Each turn delivers the messages due, ticks every live replica,
//! lets clients act, then runs each replica's ready → persist → advance cycle. Crashes lose
//! whatever a replica had not yet persisted (a crash can strike between a ready and its write).
//!
//! Clients are sequential and retry a write with the same sequence number until answered.
//! Each alternates two kinds of write: a put to a key of its own that no one else writes, and
//! a compare-and-swap increment of its own counter; between them it reads its counter back
//! through a linearizable read. [`Sim::check`] then verifies, after healing everything: every
//! replica holds the same state, every acknowledged put is there, every counter equals the
//! number of increments its client saw acknowledged (a retried increment applied twice, or lost,
//! would break that), and no read returned less than what its client had already seen.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Message, MessageType, Snapshot};

use crate::command::{Command, Op, WriteResult};
use crate::maps::{GroupId, NodeId};
use crate::replica::{ProposeError, Replica, ReplicaConfig};
use crate::storage::Record;

/// Chance (per mille) that a live replica's clock ticks in a turn.
const TICK_CHANCE: u32 = 700;

/// A small deterministic generator (SplitMix64): enough for fault schedules, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// What the network and the nodes do wrong, per event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Messages lost, per mille.
    pub drop: u32,
    /// Messages delivered twice, per mille.
    pub duplicate: u32,
    /// Each message is delayed by a uniform 0..=`max_delay` turns (so messages reorder).
    pub max_delay: u64,
    /// Each write takes a uniform 0..=`max_disk_delay` turns to become durable, in order; the
    /// replica goes on meanwhile (raft's asynchronous persistence, several readies in flight).
    pub max_disk_delay: u64,
    /// Per turn, per mille: crash a live node (never more than a minority at once).
    pub crash: u32,
    /// Per ready, per mille: crash the node after it sent its messages but before its write.
    pub crash_mid_write: u32,
    /// Per turn, per mille: restart a crashed node.
    pub restart: u32,
    /// Per turn, per mille: cut the network into two random sides.
    pub partition: u32,
    /// Per turn, per mille: heal all cuts.
    pub heal: u32,
}

impl Faults {
    /// Everything that can go wrong, at rates that still let work get done.
    pub fn harsh() -> Self {
        Faults {
            drop: 50,
            duplicate: 20,
            max_delay: 3,
            max_disk_delay: 2,
            crash: 4,
            crash_mid_write: 2,
            restart: 30,
            partition: 5,
            heal: 30,
        }
    }
}

/// Counts of what happened, for reports and for checking a run exercised something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost (dropped, cut off, or to a dead node).
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Crashes (including mid-write ones).
    pub crashes: u64,
    /// Crashes between a ready and its write.
    pub crashes_mid_write: u64,
    /// Restarts from disk.
    pub restarts: u64,
    /// Partitions made.
    pub partitions: u64,
    /// Snapshots sent to followers.
    pub snapshots_sent: u64,
    /// Snapshots replicas took of their own state.
    pub snapshots_taken: u64,
    /// Writes acknowledged to clients.
    pub writes_acked: u64,
    /// Linearizable reads answered.
    pub reads_answered: u64,
    /// Client attempts that timed out and were retried.
    pub retries: u64,
}

#[derive(Debug, Default)]
struct Disk {
    snapshot: Option<Snapshot>,
    records: Vec<Record>,
}

#[derive(Debug)]
struct Slot {
    replica: Option<Replica>,
    disk: Disk,
    /// Readies whose writes are still on their way to disk, oldest first, with the turn each
    /// completes: a crash loses them.
    writing: std::collections::VecDeque<(u64, crate::replica::ReplicaReady)>,
}

#[derive(Debug)]
struct Flight {
    at: u64,
    order: u64,
    msg: Message,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { cmd: Command, increment: bool },
    Read { id: u64, floor: u64 },
}

#[derive(Debug)]
struct Client {
    id: u64,
    next_seq: u64,
    step: u64,
    target: NodeId,
    pending: Option<(Pending, NodeId, u64)>,
    acked_puts: Vec<(Vec<u8>, Vec<u8>)>,
    counter: u64,
    increments_acked: u64,
}

impl Client {
    fn counter_key(&self) -> Vec<u8> {
        format!("counter-{}", self.id).into_bytes()
    }
}

/// Turns a client waits for an answer before retrying elsewhere.
const CLIENT_TIMEOUT: u64 = 30;

/// One simulated replica group.
#[derive(Debug)]
pub struct Sim {
    /// The run's randomness.
    pub rng: Rng,
    /// The faults in force.
    pub faults: Faults,
    /// What happened so far.
    pub stats: Stats,
    group: GroupId,
    config: ReplicaConfig,
    nodes: BTreeMap<NodeId, Slot>,
    net: Vec<Flight>,
    order: u64,
    now: u64,
    cut: BTreeSet<(NodeId, NodeId)>,
    clients: Vec<Client>,
    issuing: bool,
    violations: Vec<String>,
}

impl Sim {
    /// A group of `voters`, bootstrapped and durable, with `clients` clients and no faults yet.
    pub fn new(seed: u64, voters: &[NodeId], clients: u64, config: ReplicaConfig) -> Self {
        let group = 1;
        // Election timing from the seed (see `turn`), not from raft-rs's thread-local generator.
        let config = ReplicaConfig { fixed_election_timeout: true, ..config };
        let mut nodes = BTreeMap::new();
        for &id in voters {
            let (replica, init) = Replica::bootstrap(id, group, voters, config.clone()).expect("valid config");
            nodes.insert(
                id,
                Slot {
                    replica: Some(replica),
                    disk: Disk { snapshot: None, records: vec![init] },
                    writing: Default::default(),
                },
            );
        }
        let clients = (1..=clients)
            .map(|id| Client {
                id,
                next_seq: 1,
                step: 0,
                target: voters[0],
                pending: None,
                acked_puts: Vec::new(),
                counter: 0,
                increments_acked: 0,
            })
            .collect();
        Sim {
            rng: Rng::new(seed),
            faults: Faults::default(),
            stats: Stats::default(),
            group,
            config,
            nodes,
            net: Vec::new(),
            order: 0,
            now: 0,
            cut: BTreeSet::new(),
            clients,
            issuing: true,
            violations: Vec::new(),
        }
    }

    /// The replica on `id`, if it is up.
    pub fn replica(&self, id: NodeId) -> Option<&Replica> {
        self.nodes.get(&id).and_then(|s| s.replica.as_ref())
    }

    /// Ids of every node, up or down.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|s| s.replica.as_ref())
            .filter(|r| r.is_leader())
            .max_by_key(|r| r.term())
            .map(Replica::id)
    }

    /// Turns so far.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Whether clients start new operations (they always finish the ones they started).
    pub fn set_issuing(&mut self, on: bool) {
        self.issuing = on;
    }

    /// Writes acknowledged to all clients so far.
    pub fn acked_writes(&self) -> u64 {
        self.stats.writes_acked
    }

    /// Crashes `id`: it loses everything not on its disk.
    pub fn crash(&mut self, id: NodeId) {
        if let Some(slot) = self.nodes.get_mut(&id) {
            if slot.replica.take().is_some() {
                self.stats.crashes += 1;
            }
            slot.writing.clear();
        }
    }

    /// Restarts `id` from its disk.
    pub fn restart(&mut self, id: NodeId) {
        let (group, config) = (self.group, self.config.clone());
        let Some(slot) = self.nodes.get_mut(&id) else { return };
        if slot.replica.is_some() {
            return;
        }
        match Replica::recover(id, group, slot.disk.snapshot.clone(), slot.disk.records.clone(), config) {
            Ok(r) => {
                slot.replica = Some(r);
                self.stats.restarts += 1;
            }
            Err(e) => self.violations.push(format!("node {id} could not recover from its disk: {e}")),
        }
    }

    /// Cuts every link between `side` and the rest.
    pub fn partition(&mut self, side: &[NodeId]) {
        let ids = self.node_ids();
        for &a in side {
            for &b in ids.iter().filter(|b| !side.contains(b)) {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
        self.stats.partitions += 1;
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Adds an empty node that joins the group: first as a learner, then (once it has caught up)
    /// as a voter through [`Sim::promote`]. Returns whether the leader took the change.
    pub fn add_learner(&mut self, id: NodeId) -> bool {
        let replica = Replica::joining(id, self.group, self.config.clone()).expect("valid config");
        self.nodes.insert(id, Slot { replica: Some(replica), disk: Disk::default(), writing: Default::default() });
        self.conf_change(id, ConfChangeType::AddLearnerNode)
    }

    /// Makes `id` a voter.
    pub fn promote(&mut self, id: NodeId) -> bool {
        self.conf_change(id, ConfChangeType::AddNode)
    }

    /// Removes `id` from the group.
    pub fn remove(&mut self, id: NodeId) -> bool {
        self.conf_change(id, ConfChangeType::RemoveNode)
    }

    fn conf_change(&mut self, id: NodeId, change_type: ConfChangeType) -> bool {
        let Some(leader) = self.leader() else { return false };
        let mut single = ConfChangeSingle { node_id: id, ..Default::default() };
        single.set_change_type(change_type);
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        self.nodes.get_mut(&leader).and_then(|s| s.replica.as_mut()).is_some_and(|r| r.propose_conf_change(cc).is_ok())
    }

    fn live(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, s)| s.replica.is_some()).map(|(id, _)| *id).collect()
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.stats.snapshots_sent += 1;
            }
            let copies = if self.rng.chance(self.faults.duplicate) {
                self.stats.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = if self.faults.max_delay > 0 { self.rng.below(self.faults.max_delay + 1) } else { 0 };
                self.order += 1;
                self.net.push(Flight { at: self.now + 1 + delay, order: self.order, msg: msg.clone() });
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due: Vec<Flight> = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|f| (f.at, f.order));
        for f in due {
            let (from, to) = (f.msg.from, f.msg.to);
            let lost = self.cut.contains(&(from, to))
                || self.rng.chance(self.faults.drop)
                || self.nodes.get(&to).is_none_or(|s| s.replica.is_none());
            let is_snapshot = f.msg.get_msg_type() == MessageType::MsgSnapshot;
            if lost {
                self.stats.dropped += 1;
            } else {
                self.stats.delivered += 1;
                if let Some(r) = self.nodes.get_mut(&to).and_then(|s| s.replica.as_mut()) {
                    r.step(f.msg);
                }
            }
            if is_snapshot {
                // The transport tells the sender how its snapshot fared.
                if let Some(r) = self.nodes.get_mut(&from).and_then(|s| s.replica.as_mut()) {
                    r.report_snapshot(to, !lost);
                }
            }
        }
    }

    fn inject_faults(&mut self) {
        let ids = self.node_ids();
        let live = self.live();
        let majority = ids.len() / 2 + 1;
        if live.len() > majority && self.rng.chance(self.faults.crash) {
            let victim = live[self.rng.below(live.len() as u64) as usize];
            self.crash(victim);
        }
        let down: Vec<NodeId> = ids.iter().copied().filter(|id| !live.contains(id)).collect();
        if !down.is_empty() && self.rng.chance(self.faults.restart) {
            let id = down[self.rng.below(down.len() as u64) as usize];
            self.restart(id);
        }
        if self.cut.is_empty() && self.rng.chance(self.faults.partition) {
            let side: Vec<NodeId> = ids.iter().copied().filter(|_| self.rng.chance(500)).collect();
            if !side.is_empty() && side.len() < ids.len() {
                self.partition(&side);
            }
        } else if !self.cut.is_empty() && self.rng.chance(self.faults.heal) {
            self.heal();
        }
    }

    fn clients_act(&mut self) {
        let ids = self.node_ids();
        for ci in 0..self.clients.len() {
            // Time out a pending request: the client retries it, elsewhere.
            if let Some((_, _, sent)) = &self.clients[ci].pending {
                if self.now - sent < CLIENT_TIMEOUT {
                    continue;
                }
                self.stats.retries += 1;
                let pick = ids[self.rng.below(ids.len() as u64) as usize];
                self.clients[ci].target = pick;
            }
            let pending = match self.clients[ci].pending.take() {
                Some((p, _, _)) => p,
                None if !self.issuing => continue,
                None => self.next_request(ci),
            };
            let target = self.clients[ci].target;
            let result = match self.nodes.get_mut(&target).and_then(|s| s.replica.as_mut()) {
                None => Err(ProposeError::NotLeader { leader: None }),
                Some(r) => match &pending {
                    Pending::Write { cmd, .. } => r.propose(cmd),
                    Pending::Read { id, .. } => r.read(*id),
                },
            };
            let c = &mut self.clients[ci];
            match result {
                Ok(()) => c.pending = Some((pending, target, self.now)),
                Err(ProposeError::NotLeader { leader: Some(l) }) => {
                    // Follow the hint next turn.
                    c.target = l;
                    c.pending = Some((pending, target, self.now.saturating_sub(CLIENT_TIMEOUT)));
                }
                Err(_) => {
                    c.target = ids[self.rng.below(ids.len() as u64) as usize];
                    c.pending = Some((pending, target, self.now.saturating_sub(CLIENT_TIMEOUT)));
                }
            }
        }
    }

    fn next_request(&mut self, ci: usize) -> Pending {
        let c = &mut self.clients[ci];
        c.step += 1;
        if c.step.is_multiple_of(3) {
            return Pending::Read { id: (c.id << 32) | c.step, floor: c.counter };
        }
        let seq = c.next_seq;
        c.next_seq += 1;
        let increment = c.step % 3 == 2;
        let op = if increment {
            let expected = (c.counter > 0).then(|| c.counter.to_string().into_bytes());
            Op::Cas { key: c.counter_key(), expected, new: Some((c.counter + 1).to_string().into_bytes()) }
        } else {
            Op::Put { key: format!("c{}-s{seq}", c.id).into_bytes(), value: format!("v{seq}").into_bytes() }
        };
        Pending::Write { cmd: Command { client: c.id, seq, acked_below: seq, ops: vec![op] }, increment }
    }

    /// A write the node took was dropped by raft before it reached the log: the client retries
    /// next turn, elsewhere if the node named no leader.
    fn on_dropped(&mut self, node: NodeId, client: u64, seq: u64) {
        let Some(c) = self.clients.iter_mut().find(|c| c.id == client) else { return };
        if let Some((Pending::Write { cmd, .. }, at, sent)) = &mut c.pending {
            if *at == node && cmd.seq == seq {
                *sent = self.now.saturating_sub(CLIENT_TIMEOUT);
            }
        }
    }

    fn on_applied(&mut self, node: NodeId, client: u64, seq: u64, result: &WriteResult) {
        let Some(c) = self.clients.iter_mut().find(|c| c.id == client) else { return };
        let Some((Pending::Write { cmd, increment }, at, _)) = &c.pending else { return };
        if *at != node || cmd.seq != seq {
            return;
        }
        let (cmd, increment) = (cmd.clone(), *increment);
        match result {
            WriteResult::Applied if increment => {
                c.counter += 1;
                c.increments_acked += 1;
            }
            WriteResult::Applied => {
                if let Some(Op::Put { key, value }) = cmd.ops.first() {
                    c.acked_puts.push((key.clone(), value.clone()));
                }
            }
            WriteResult::CompareFailed { current, .. } if increment => {
                let current = current.as_deref().and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
                self.violations.push(format!(
                    "client {client} seq {seq}: its own increment failed its compare (counter {:?}, expected {}): \
                     a retry ran twice or a write was lost",
                    current, c.counter
                ));
            }
            other => self.violations.push(format!("client {client} seq {seq}: unexpected answer {other:?}")),
        }
        c.pending = None;
        self.stats.writes_acked += 1;
    }

    fn on_read(&mut self, node: NodeId, id: u64) {
        let client = id >> 32;
        let Some(ci) = self.clients.iter().position(|c| c.id == client) else { return };
        let c = &self.clients[ci];
        let Some((Pending::Read { id: want, floor }, at, _)) = &c.pending else { return };
        if *at != node || *want != id {
            return;
        }
        let floor = *floor;
        let key = c.counter_key();
        let value = self
            .replica(node)
            .and_then(|r| r.state().get(&key))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        if value < floor {
            self.violations.push(format!(
                "client {client}: linearizable read on node {node} saw counter {value} after it had seen {floor}"
            ));
        }
        self.clients[ci].pending = None;
        self.stats.reads_answered += 1;
    }

    /// Runs one turn.
    pub fn turn(&mut self) {
        self.now += 1;
        self.deliver();
        self.inject_faults();
        for id in self.live() {
            if let Some(r) = self.nodes.get_mut(&id).and_then(|s| s.replica.as_mut()) {
                // Ticks skipped at random stand in for raft's randomized election timeouts, which
                // are fixed here so that a seed replays exactly.
                if self.rng.chance(TICK_CHANCE) {
                    r.tick();
                }
            }
        }
        self.clients_act();
        for id in self.live() {
            let Some(mut rd) = self.nodes.get_mut(&id).and_then(|s| s.replica.as_mut()).and_then(Replica::ready) else {
                continue;
            };
            self.send(std::mem::take(&mut rd.messages));
            // Answers go out at once: what a ready applies is durable on a majority already.
            for a in std::mem::take(&mut rd.applied) {
                self.on_applied(id, a.client, a.seq, &a.result);
            }
            for r in std::mem::take(&mut rd.reads) {
                self.on_read(id, r.id);
            }
            for (client, seq) in std::mem::take(&mut rd.dropped) {
                self.on_dropped(id, client, seq);
            }
            if self.rng.chance(self.faults.crash_mid_write) {
                self.stats.crashes_mid_write += 1;
                self.crash(id);
                continue;
            }
            let done_at = self.now + self.rng.below(self.faults.max_disk_delay + 1);
            let slot = self.nodes.get_mut(&id).expect("live node");
            // Writes complete in order: one never overtakes an earlier one.
            let done_at = slot.writing.back().map_or(done_at, |(t, _)| done_at.max(*t));
            slot.writing.push_back((done_at, rd));
        }
        for id in self.live() {
            self.complete_writes(id);
        }
    }

    /// Makes durable, in order, the writes of `id` due by now.
    fn complete_writes(&mut self, id: NodeId) {
        loop {
            let slot = self.nodes.get_mut(&id).expect("live node");
            if slot.writing.front().is_none_or(|(t, _)| *t > self.now) {
                return;
            }
            let (_, mut rd) = slot.writing.pop_front().expect("checked");
            if let Some(snap) = rd.snapshot_to_save.take() {
                slot.disk.snapshot = Some(snap);
            }
            slot.disk.records.append(&mut rd.records);
            if let Some(snap) = rd.local_snapshot.take() {
                let index = snap.get_metadata().index;
                slot.disk.snapshot = Some(snap);
                slot.disk.records.append(&mut rd.local_records);
                // Forget the covered prefix, as the write-ahead log releases whole segments;
                // the hard state just written stays.
                let keep_from = slot.disk.records.len() - 1;
                let covered = slot.disk.records[..keep_from].iter().take_while(|r| r.covered_by(index)).count();
                slot.disk.records.drain(..covered);
                self.stats.snapshots_taken += 1;
            }
            slot.replica.as_mut().expect("live node").persisted(rd.number());
            self.send(std::mem::take(&mut rd.persisted_messages));
        }
    }

    /// Runs `turns` turns.
    pub fn run(&mut self, turns: u64) {
        for _ in 0..turns {
            self.turn();
        }
    }

    /// Heals the network, restarts every node, stops new client work and runs until every
    /// client has its answer and all replicas applied the same log, or `max_turns` pass.
    /// Returns whether it settled.
    pub fn settle(&mut self, max_turns: u64) -> bool {
        self.faults = Faults::default();
        self.heal();
        for id in self.node_ids() {
            self.restart(id);
        }
        self.set_issuing(false);
        for _ in 0..max_turns {
            self.turn();
            let idle = self.clients.iter().all(|c| c.pending.is_none());
            let Some(leader) = self.leader().and_then(|l| self.replica(l)) else { continue };
            // Nodes removed from the group stop hearing from it; only members must agree.
            let (voters, learners) = leader.members();
            let members: Vec<&Replica> = voters.iter().chain(&learners).filter_map(|id| self.replica(*id)).collect();
            let applied: BTreeSet<u64> = members.iter().map(|r| r.state().applied()).collect();
            let last: BTreeSet<u64> = members.iter().map(|r| r.last_index()).collect();
            if idle && applied.len() == 1 && last.len() == 1 && applied == last {
                return true;
            }
        }
        false
    }

    /// Every invariant, checked now: returns what is wrong, empty if nothing.
    pub fn check(&self) -> Vec<String> {
        let mut wrong = self.violations.clone();
        // Members as the leader sees them: a node removed while down never learns it was.
        let members: Vec<NodeId> = match self.leader().and_then(|l| self.replica(l)) {
            Some(l) => {
                let (v, l) = l.members();
                v.into_iter().chain(l).collect()
            }
            None => self.node_ids(),
        };
        let live: Vec<(NodeId, &Replica)> =
            members.iter().filter_map(|id| self.replica(*id).map(|r| (*id, r))).collect();
        type Table = Vec<(Vec<u8>, Vec<u8>)>;
        let states: Vec<(NodeId, Table)> = live
            .iter()
            .map(|(id, r)| (*id, r.state().iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()))
            .collect();
        for w in states.windows(2) {
            if w[0].1 != w[1].1 {
                wrong.push(format!("nodes {} and {} hold different tables", w[0].0, w[1].0));
            }
        }
        // Every member agrees on who the members are.
        type Members = (Vec<NodeId>, Vec<NodeId>);
        let configs: Vec<(NodeId, Members)> = live.iter().map(|(id, r)| (*id, r.members())).collect();
        for w in configs.windows(2) {
            if w[0].1 != w[1].1 {
                wrong
                    .push(format!("nodes {} and {} disagree on members: {:?} vs {:?}", w[0].0, w[1].0, w[0].1, w[1].1));
            }
        }
        for (id, r) in live {
            for c in &self.clients {
                for (k, v) in &c.acked_puts {
                    if r.state().get(k) != Some(v.as_slice()) {
                        wrong.push(format!(
                            "node {id} lost acknowledged put {} (client {})",
                            String::from_utf8_lossy(k),
                            c.id
                        ));
                    }
                }
                let counter = r
                    .state()
                    .get(&c.counter_key())
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
                if counter != c.increments_acked {
                    wrong.push(format!(
                        "node {id}: client {}'s counter is {counter} but {} increments were acknowledged",
                        c.id, c.increments_acked
                    ));
                }
            }
        }
        wrong
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic() {
        let a: Vec<u64> = (0..5).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..5).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, (0..5).scan(Rng::new(8), |r, _| Some(r.next_u64())).collect::<Vec<_>>());
    }
}
