//! One replica of one group: a raft-rs `RawNode` over a [`GroupLog`], the [`StateMachine`] it
//! applies to, and the bookkeeping between them. Sans-IO: the caller moves messages, writes
//! records to disk and keeps time; this type only decides.
//!
//! The caller's loop, per turn:
//! 1. feed inputs: [`Replica::step`] for messages, [`Replica::tick`] on its timer,
//!    [`Replica::propose`] and [`Replica::read`] for clients;
//! 2. [`Replica::ready`]: send [`ReplicaReady::messages`] at once, answer the writes and reads
//!    it reports, and write [`ReplicaReady::records`] (after saving
//!    [`ReplicaReady::snapshot_to_save`]) to disk — batched with other groups' records under
//!    one sync, which may take its time: the replica keeps taking inputs meanwhile;
//! 3. once those records are durable, [`Replica::persisted`], then send
//!    [`ReplicaReady::persisted_messages`] (votes and acknowledgements must not go out before
//!    what they promise is on disk).
//!
//! This is raft-rs's asynchronous ready protocol (`advance_append_async` and
//! `on_persist_ready`): committed entries a ready hands out are already durable on a majority,
//! so they are applied at once, and a leader's appends leave before its own write completes.

use std::collections::{BTreeMap, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{Config, RawNode, ReadOnlyOption, StateRole};

use crate::command::{self, Command};
use crate::maps::{GroupId, NodeId};
use crate::sm::{Applied, StateMachine};
use crate::storage::{GroupLog, Record, RecoverError};

/// How a replica behaves; every replica of a group should agree on the timing fields.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Ticks without a heartbeat before a follower stands for election (randomised up to twice
    /// this by raft).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between snapshots of the state machine (at least).
    pub snapshot_every: u64,
    /// A snapshot also waits until the entries logged since the last one add up to this many
    /// times its size: taking snapshots then costs about as much as writing the log at most,
    /// however large the state grows (a state of gigabytes is not copied every
    /// `snapshot_every` writes), and the log kept between snapshots stays within this ratio of
    /// the state. 0: `snapshot_every` alone decides.
    pub snapshot_log_ratio: f64,
    /// Entries kept behind a snapshot so followers a little behind catch up from the log.
    pub keep_behind_snapshot: u64,
    /// The most entries a leader may hold proposed but not yet applied before it answers
    /// [`ProposeError::Busy`].
    pub max_pending: u64,
    /// The most bytes of entries sent in one append message.
    pub max_append_bytes: u64,
    /// Hand leadership to the group's preferred voter ([`Replica::preferred_leader`]) once it
    /// is nearly caught up, so that a cluster's groups are led by different nodes: a leader
    /// does most of its group's work, and one node leading every group would be the bound.
    pub balance_leaders: bool,
    /// Stand for election after exactly `election_ticks` without a leader instead of a random
    /// time up to twice that. raft-rs draws that time from the thread's random generator, which
    /// a seeded simulation cannot replay; with this set, the caller must vary the timing
    /// itself (the simulator skips ticks by its seed), or replicas time out in lockstep.
    pub fixed_election_timeout: bool,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            snapshot_log_ratio: 1.0,
            keep_behind_snapshot: 1_000,
            max_pending: 4096,
            max_append_bytes: 1024 * 1024,
            balance_leaders: true,
            fixed_election_timeout: false,
        }
    }
}

/// How far behind the leader's log the preferred voter may be when asked to take over.
const HAND_OVER_LAG: u64 = 1024;

/// Election timeouts the preferred voter must have answered a leader without a stall (see
/// [`Heard`]) before it is handed leadership. A voter that just lost leadership for want of a
/// quorum (a lossy link, a host too busy to answer in time) would otherwise get it back at
/// once and lose it again, each round costing its group an election's worth of writes.
const HAND_OVER_STEADY_ELECTIONS: u64 = 10;

/// What a leader has heard from one voter, in ticks of its own clock.
#[derive(Debug, Clone, Copy)]
struct Heard {
    /// When it last heard from the voter.
    last: u64,
    /// Since when every silence was a stall at most: shorter than half an election timeout
    /// (heartbeats go out every `heartbeat_ticks`, so a voter that keeps up answers several
    /// times in that span).
    steady_since: u64,
}

/// Why a proposal was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica does not lead its group; `leader` is who does, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// Too many proposals are waiting; try again later.
    #[error("busy: {pending} proposals waiting")]
    Busy {
        /// How many are waiting.
        pending: u64,
    },
    /// Raft refused the proposal (e.g. a leadership transfer is under way).
    #[error("proposal dropped: {0}")]
    Dropped(String),
}

/// A linearizable read that may now be served from the local state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReady {
    /// The id the caller gave [`Replica::read`].
    pub id: u64,
}

/// What a turn asks of the caller.
#[derive(Debug, Default)]
pub struct ReplicaReady {
    number: u64,
    /// Send now (a leader's appends may go out before its own write completes).
    pub messages: Vec<Message>,
    /// Write to the log; call [`Replica::persisted`] with [`ReplicaReady::number`] once durable.
    pub records: Vec<Record>,
    /// `records` hold only a hard state that moved the commit index (same term and vote): it
    /// need not wait for a sync of its own. A commit index lost in a crash is learned again
    /// from the leader, and the log has every entry it names before it (earlier readies).
    pub commit_only: bool,
    /// A snapshot from the leader: save it (durably) before the records, which refer to it.
    pub snapshot_to_save: Option<Snapshot>,
    /// Send only after `records` are durable.
    pub persisted_messages: Vec<Message>,
    /// Writes that took effect, in log order: answer whoever waits on `(client, seq)`.
    pub applied: Vec<Applied>,
    /// Writes [`Replica::propose`] took that raft then dropped, as `(client, seq)`: the
    /// replica stopped leading, or a leadership hand-over began, before the turn. Redirect
    /// whoever waits on them.
    pub dropped: Vec<(u64, u64)>,
    /// Reads that may now be served.
    pub reads: Vec<ReadReady>,
    /// The role or leader changed: fail waiting requests that need a leader here.
    pub role_changed: Option<(StateRole, Option<NodeId>)>,
    /// A snapshot this replica took of its own state: save it, then write `local_records` (the
    /// hard state), then let the log release what the snapshot covers. Not urgent.
    pub local_snapshot: Option<Snapshot>,
    /// Records to write after `local_snapshot`.
    pub local_records: Vec<Record>,
    /// Membership changes applied in this turn (their context carries a new member's address).
    pub member_updates: Vec<MemberUpdate>,
}

/// A membership change as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberUpdate {
    /// The node added, promoted or removed.
    pub node: NodeId,
    /// What happened to it.
    pub change: ConfChangeType,
    /// What the proposer attached (the node's address, for additions).
    pub context: Vec<u8>,
}

impl ReplicaReady {
    /// The ready's number, for [`Replica::persisted`].
    pub fn number(&self) -> u64 {
        self.number
    }
}

/// One replica of one group.
pub struct Replica {
    id: NodeId,
    group: GroupId,
    raw: RawNode<GroupLog>,
    log: GroupLog,
    sm: StateMachine,
    config: ReplicaConfig,
    /// Reads waiting for their read index to be applied: (index, id).
    reads: VecDeque<(u64, u64)>,
    last_role: (StateRole, u64),
    /// A snapshot taken between turns, reported by the next [`Replica::ready`].
    snapshot_taken: Option<Snapshot>,
    /// Per ready not yet persisted: the state machine's applied index after it.
    apply_after_persist: VecDeque<(u64, u64)>,
    /// Ticks of this replica's clock, and (while it leads, since it last tried to hand over)
    /// what it heard from each voter (see `balance_leader`).
    ticks: u64,
    heard: BTreeMap<NodeId, Heard>,
    /// Writes proposed since the last turn, as `(client, seq)` and entry, for raft as one
    /// batch (see `propose_queued`).
    proposals: Vec<((u64, u64), Entry)>,
    /// Reads asked since the last turn, and those asked of raft by batch number (the read
    /// index request's context), waiting for its answer.
    queued_reads: Vec<u64>,
    read_batches: BTreeMap<u64, Vec<u64>>,
    next_read_batch: u64,
    /// Size of the last snapshot's state, and bytes of entries logged since it (see
    /// `ReplicaConfig::snapshot_log_ratio`).
    snapshot_bytes: u64,
    logged_bytes: u64,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("group", &self.group)
            .field("role", &self.raw.raft.state)
            .field("term", &self.raw.raft.term)
            .field("last_index", &self.log.last_index())
            .field("applied", &self.sm.applied())
            .finish_non_exhaustive()
    }
}

/// slog → tracing, so raft-rs's logs land with ours.
#[derive(Debug)]
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let msg = record.msg();
        // The record's and the logger's key-values (node, group, term, ...), formatted only
        // if the event is enabled.
        let kv = Kvs(record, values);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}{kv}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{kv}"),
            slog::Level::Info => tracing::debug!(target: "raft", "{msg}{kv}"),
            slog::Level::Debug | slog::Level::Trace => tracing::trace!(target: "raft", "{msg}{kv}"),
        }
        Ok(())
    }
}

/// A slog record's key-values, then its logger's, as ` key=value` pairs.
struct Kvs<'a>(&'a slog::Record<'a>, &'a slog::OwnedKVList);

impl std::fmt::Display for Kvs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use slog::KV as _;
        let mut out = KvWriter(f);
        self.0.kv().serialize(self.0, &mut out).map_err(|_| std::fmt::Error)?;
        self.1.serialize(self.0, &mut out).map_err(|_| std::fmt::Error)
    }
}

struct KvWriter<'a, 'b>(&'a mut std::fmt::Formatter<'b>);

impl slog::Serializer for KvWriter<'_, '_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        write!(self.0, " {key}={val}").map_err(slog::Error::Fmt)
    }
}

fn logger(id: NodeId, group: GroupId) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("node" => id, "group" => group))
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// raft-rs refused the configuration or the recovered state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The log could not be rebuilt.
    #[error(transparent)]
    Recover(#[from] RecoverError),
    /// The snapshot's state does not decode.
    #[error("snapshot: {0}")]
    Snapshot(String),
}

impl Replica {
    fn raft_config(id: NodeId, applied: u64, c: &ReplicaConfig) -> Config {
        Config {
            id,
            election_tick: c.election_ticks,
            heartbeat_tick: c.heartbeat_ticks,
            applied,
            max_size_per_msg: c.max_append_bytes,
            max_inflight_msgs: 256,
            // A partitioned node must not disrupt the majority when it comes back (pre-vote),
            // and a leader cut off from the majority steps down (check quorum).
            pre_vote: true,
            check_quorum: true,
            read_only_option: ReadOnlyOption::Safe,
            skip_bcast_commit: true,
            // raft-rs draws from [min, max): one value only.
            min_election_tick: if c.fixed_election_timeout { c.election_ticks } else { 0 },
            max_election_tick: if c.fixed_election_timeout { c.election_ticks + 1 } else { 0 },
            ..Config::default()
        }
    }

    fn with_log(
        id: NodeId,
        group: GroupId,
        log: GroupLog,
        sm: StateMachine,
        config: ReplicaConfig,
    ) -> Result<Self, StartError> {
        let raw = RawNode::new(&Self::raft_config(id, sm.applied(), &config), log.clone(), &logger(id, group))?;
        Ok(Replica {
            id,
            group,
            raw,
            log,
            sm,
            config,
            reads: VecDeque::new(),
            last_role: (StateRole::Follower, 0),
            snapshot_taken: None,
            apply_after_persist: VecDeque::new(),
            ticks: 0,
            heard: BTreeMap::new(),
            proposals: Vec::new(),
            queued_reads: Vec::new(),
            read_batches: BTreeMap::new(),
            next_read_batch: 1,
            snapshot_bytes: 0,
            logged_bytes: 0,
        })
    }

    /// A member of a new group with the given voters; also returns the record that makes its
    /// birth durable (write it before anything else).
    pub fn bootstrap(
        id: NodeId,
        group: GroupId,
        voters: &[NodeId],
        config: ReplicaConfig,
    ) -> Result<(Self, Record), StartError> {
        let (log, init) = GroupLog::bootstrap(voters);
        Ok((Self::with_log(id, group, log, StateMachine::new(), config)?, init))
    }

    /// A replica joining an existing group (as a learner first): it starts empty and receives
    /// a snapshot from the leader.
    pub fn joining(id: NodeId, group: GroupId, config: ReplicaConfig) -> Result<Self, StartError> {
        Self::with_log(id, group, GroupLog::joining(), StateMachine::new(), config)
    }

    /// A replica restarted from its latest snapshot and its records.
    pub fn recover(
        id: NodeId,
        group: GroupId,
        snapshot: Option<Snapshot>,
        records: impl IntoIterator<Item = Record>,
        config: ReplicaConfig,
    ) -> Result<Self, StartError> {
        let sm = match &snapshot {
            Some(s) if !s.get_data().is_empty() => StateMachine::restore(s.get_data()).map_err(StartError::Snapshot)?,
            _ => StateMachine::new(),
        };
        let snapshot_bytes = snapshot.as_ref().map_or(0, |s| s.get_data().len() as u64);
        let from = snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
        let records: Vec<Record> = records.into_iter().collect();
        let logged_bytes = records
            .iter()
            .map(|r| match r {
                Record::Entries(es) => entry_bytes(es.iter().filter(|e| e.index > from)),
                _ => 0,
            })
            .sum();
        let log = GroupLog::recover(snapshot, records)?;
        let mut replica = Self::with_log(id, group, log, sm, config)?;
        replica.snapshot_bytes = snapshot_bytes;
        replica.logged_bytes = logged_bytes;
        Ok(replica)
    }

    /// This replica's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Its group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The state machine (for reads once [`Replica::read`] said so, or stale reads at any time).
    pub fn state(&self) -> &StateMachine {
        &self.sm
    }

    /// Whether this replica leads its group.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Leader, follower or candidate.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// The leader as this replica knows it.
    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            l => Some(l),
        }
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// Voters and learners now.
    pub fn members(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let cs = self.log.conf_state();
        let (mut voters, mut learners) = (cs.voters, cs.learners);
        voters.sort_unstable();
        learners.sort_unstable();
        (voters, learners)
    }

    /// Whether node `id` is a voter or learner of the group as last applied. A replica that
    /// joined and has not yet received its first snapshot knows no members: it counts as one.
    pub fn is_member(&self, id: NodeId) -> bool {
        let cs = self.log.conf_state();
        (cs.voters.is_empty() && cs.learners.is_empty()) || cs.voters.contains(&id) || cs.learners.contains(&id)
    }

    /// Index of the last log entry.
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// Advances raft's clock one tick.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        if !self.is_leader() {
            self.heard.clear();
        }
        if self.config.balance_leaders {
            self.balance_leader();
        }
        // Raft may have asked for a snapshot (for a lagging follower) without anything else
        // to do; take it now so its next attempt finds one.
        self.maybe_snapshot();
    }

    /// The voter that should lead the group when it can ([`crate::maps::preferred_leader`]).
    pub fn preferred_leader(&self) -> Option<NodeId> {
        crate::maps::preferred_leader(self.group, &self.members().0)
    }

    /// Half an election timeout: a voter silent longer than this stalled.
    fn stall_ticks(&self) -> u64 {
        self.config.election_ticks as u64 / 2
    }

    /// A leader notes when it hears from a voter (any message), for `balance_leader`.
    fn note_heard(&mut self, from: NodeId) {
        if !self.config.balance_leaders || !self.is_leader() {
            return;
        }
        let (now, stall) = (self.ticks, self.stall_ticks());
        let h = self.heard.entry(from).or_insert(Heard { last: now, steady_since: now });
        if now - h.last > stall {
            h.steady_since = now;
        }
        h.last = now;
    }

    /// A leader asks the preferred voter to take over once that one is nearly caught up and
    /// has answered without a stall for `HAND_OVER_STEADY_ELECTIONS` election timeouts of this
    /// leadership (so never right after an election), with no membership change or hand-over
    /// under way (raft sends it the rest and refuses proposals until it took over, or an
    /// election timeout passed).
    fn balance_leader(&mut self) {
        let Some(to) = self.preferred_leader().filter(|p| *p != self.id) else { return };
        let (now, stall) = (self.ticks, self.stall_ticks());
        let steady_for = HAND_OVER_STEADY_ELECTIONS * self.config.election_ticks as u64;
        let steady = self.heard.get(&to).is_some_and(|h| now - h.last <= stall && now - h.steady_since >= steady_for);
        let raft = &self.raw.raft;
        let ready = steady
            && raft.lead_transferee.is_none()
            && !raft.has_pending_conf()
            && raft.prs().get(to).is_some_and(|p| p.matched + HAND_OVER_LAG >= raft.raft_log.last_index());
        if !ready {
            return;
        }
        tracing::debug!(group = self.group, from = self.id, to, "handing leadership to the preferred voter");
        self.raw.transfer_leader(to);
        // Should the hand-over fail, the voter has to prove steady again before another.
        self.heard.clear();
    }

    /// Stands for election at once (tests and leadership hand-over).
    pub fn campaign(&mut self) {
        let _ = self.raw.campaign();
    }

    /// The transport's word on a snapshot sent to `to`: delivered, or lost (raft then sends
    /// another; until it hears, it sends that follower nothing else).
    pub fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        let status = if delivered { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        self.raw.report_snapshot(to, status);
    }

    /// The transport could not reach `to`: raft slows down sending to it.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.raw.report_unreachable(to);
    }

    /// Hands leadership to `to`.
    pub fn transfer_leader(&mut self, to: NodeId) {
        self.raw.transfer_leader(to);
    }

    /// Takes a message from a peer. Messages for another group or node are ignored; raft
    /// itself ignores stale ones.
    pub fn step(&mut self, msg: Message) {
        if msg.to != self.id {
            return;
        }
        self.note_heard(msg.from);
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(group = self.group, error = %e, "raft refused a message");
        }
    }

    fn check_leader(&self) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader: self.leader() });
        }
        Ok(())
    }

    /// Proposes a write: queued, and handed to raft with the others of this turn by the next
    /// [`Replica::ready`]. Its answer arrives in a later [`ReplicaReady::applied`] or (raft
    /// dropped it) [`ReplicaReady::dropped`], here, or (after a leader change) not at all: the
    /// client retries with the same sequence number.
    pub fn propose(&mut self, cmd: &Command) -> Result<(), ProposeError> {
        self.check_leader()?;
        let pending = self.log.last_index().saturating_sub(self.sm.applied()) + self.proposals.len() as u64;
        if pending >= self.config.max_pending {
            return Err(ProposeError::Busy { pending });
        }
        self.proposals.push(((cmd.client, cmd.seq), Entry { data: command::encode(cmd).into(), ..Entry::default() }));
        Ok(())
    }

    /// Hands raft the proposals queued since the last turn as one batch: the leader then sends
    /// each follower one append for all of them, where proposing each alone would send one per
    /// proposal (and each follower answer it): four messages a write with three replicas.
    /// Returns the writes raft dropped (the replica stopped leading, or a hand-over started).
    fn propose_queued(&mut self) -> Vec<(u64, u64)> {
        if self.proposals.is_empty() {
            return Vec::new();
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.id;
        let (proposers, entries): (Vec<_>, Vec<_>) = std::mem::take(&mut self.proposals).into_iter().unzip();
        m.set_entries(entries.into());
        match self.raw.raft.step(m) {
            Ok(()) => Vec::new(),
            Err(e) => {
                tracing::debug!(group = self.group, error = %e, writes = proposers.len(), "proposals dropped");
                proposers
            }
        }
    }

    /// Starts a linearizable read: once a later [`ReplicaReady::reads`] names `id`, the state
    /// machine reflects every write acknowledged before this call.
    pub fn read(&mut self, id: u64) -> Result<(), ProposeError> {
        self.check_leader()?;
        self.queued_reads.push(id);
        Ok(())
    }

    /// Asks raft for one read index covering every read queued since the last turn: with the
    /// safe option each ask costs a heartbeat round to the followers, so one per read would
    /// send four messages a read with three replicas.
    fn read_queued(&mut self) {
        if self.queued_reads.is_empty() {
            return;
        }
        let batch = self.next_read_batch;
        self.next_read_batch += 1;
        self.raw.read_index(batch.to_le_bytes().to_vec());
        self.read_batches.insert(batch, std::mem::take(&mut self.queued_reads));
    }

    /// Proposes a membership change (add a learner, promote it, remove a member); `cc.context`
    /// travels with it to every replica.
    ///
    /// A leader asked to remove itself hands leadership to its most caught-up voter and
    /// answers [`ProposeError::NotLeader`]: the caller retries at the new leader.
    pub fn propose_conf_change(&mut self, cc: ConfChangeV2) -> Result<(), ProposeError> {
        self.check_leader()?;
        let me = self.raw.raft.id;
        let removes_me =
            |c: &raft::eraftpb::ConfChangeSingle| c.node_id == me && c.get_change_type() == ConfChangeType::RemoveNode;
        if cc.get_changes().iter().any(removes_me) {
            let to = self.successor();
            tracing::debug!(group = self.group, ?to, "asked to remove myself; handing over");
            if let Some(to) = to {
                self.raw.transfer_leader(to);
            }
            return Err(ProposeError::NotLeader { leader: to });
        }
        // raft-rs turns a change proposed while another may be unapplied into an empty entry
        // and still answers Ok, so its waiter would never hear back. A new leader counts its
        // whole log as possibly unapplied until it catches up: refuse, to be retried shortly.
        if self.raw.raft.has_pending_conf() {
            let pending = self.log.last_index().saturating_sub(self.sm.applied());
            return Err(ProposeError::Busy { pending });
        }
        self.raw.propose_conf_change(Vec::new(), cc).map_err(|e| ProposeError::Dropped(e.to_string()))
    }

    /// Whether an applied membership change removed `node` from the group (replicated, and
    /// kept across restarts and snapshots).
    pub fn was_removed(&self, node: NodeId) -> bool {
        self.sm.was_removed(node)
    }

    /// The group's epoch: the log index of the last membership change applied (1 before any).
    pub fn epoch(&self) -> u64 {
        self.sm.conf_epoch()
    }

    /// A turn, if raft has anything to do: see the module docs.
    pub fn ready(&mut self) -> Option<ReplicaReady> {
        let dropped = self.propose_queued();
        self.read_queued();
        if !self.raw.has_ready() {
            // Dropped proposals alone come back in a ready without records (number 0: there
            // is nothing to persist, and `persisted(0)` is a no-op).
            return (!dropped.is_empty()).then(|| ReplicaReady { dropped, ..ReplicaReady::default() });
        }
        let mut rd = self.raw.ready();
        let mut out =
            ReplicaReady { number: rd.number(), messages: rd.take_messages(), dropped, ..ReplicaReady::default() };
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            // A group's initial snapshot carries no state: it starts empty.
            let restored = if snap.get_data().is_empty() {
                let mut sm = StateMachine::new();
                sm.skip(snap.get_metadata().index);
                Ok(sm)
            } else {
                // The state must be the one the metadata names: raft applies up to the state's
                // index next, and raft-rs panics on an index past its log (fuzz target raft_step).
                StateMachine::restore(snap.get_data()).and_then(|sm| match sm.applied() {
                    a if a == snap.get_metadata().index => Ok(sm),
                    a => Err(format!("state applied to {a}, metadata says {}", snap.get_metadata().index)),
                })
            };
            match restored {
                Ok(sm) => {
                    self.sm = sm;
                    out.records.push(Record::Installed(snap.get_metadata().clone()));
                    self.log.install(snap.clone());
                    (self.snapshot_bytes, self.logged_bytes) = (snap.get_data().len() as u64, 0);
                    out.snapshot_to_save = Some(snap);
                }
                // A leader sent state we cannot read: keep ours and say so loudly.
                Err(e) => tracing::error!(group = self.group, error = %e, "refusing an undecodable snapshot"),
            }
        }
        if !rd.entries().is_empty() {
            self.logged_bytes += entry_bytes(rd.entries());
            if let Err(e) = self.log.append(rd.entries()) {
                tracing::error!(group = self.group, error = %e, "raft handed entries that do not continue the log");
            }
            out.records.push(Record::Entries(rd.take_entries()));
        }
        if let Some(hs) = rd.hs() {
            let before = self.log.hard_state();
            out.commit_only = out.records.is_empty()
                && out.snapshot_to_save.is_none()
                && hs.term == before.term
                && hs.vote == before.vote;
            self.log.set_hard_state(hs.clone());
            out.records.push(Record::HardState(hs.clone()));
        }
        out.persisted_messages = rd.take_persisted_messages();
        // Committed entries handed out here are durable on a majority: apply them now.
        let committed = rd.take_committed_entries();
        let read_states = rd.take_read_states();
        self.apply(committed, &mut out);
        self.raw.advance_append_async(rd);
        // raft-rs lets its applied index pass only what is persisted here too (a snapshot
        // ready is not, until its write completes): tell it after `persisted`.
        self.apply_after_persist.push_back((out.number, self.sm.applied()));
        for rs in read_states {
            let batch = rs.request_ctx.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
            // Earlier batches still here were dropped by raft (e.g. asked before this leader
            // committed in its term); they were asked before this one, so its index serves them.
            let later = self.read_batches.split_off(&(batch + 1));
            for (_, ids) in std::mem::replace(&mut self.read_batches, later) {
                self.reads.extend(ids.into_iter().map(|id| (rs.index, id)));
            }
        }
        while let Some(&(index, id)) = self.reads.front() {
            if index > self.sm.applied() {
                break;
            }
            self.reads.pop_front();
            out.reads.push(ReadReady { id });
        }
        let role = (self.raw.raft.state, self.raw.raft.leader_id);
        if role != self.last_role {
            self.last_role = role;
            out.role_changed = Some((role.0, self.leader()));
            if role.0 != StateRole::Leader {
                // Reads started as leader will never be confirmed now.
                self.reads.clear();
                self.read_batches.clear();
                self.queued_reads.clear();
            }
        }
        self.maybe_snapshot();
        if let Some(snap) = self.snapshot_taken.take() {
            out.local_snapshot = Some(snap);
            out.local_records.push(Record::HardState(self.log.hard_state()));
        }
        Some(out)
    }

    /// Whether raft has something for a turn.
    pub fn has_ready(&self) -> bool {
        !self.proposals.is_empty() || !self.queued_reads.is_empty() || self.raw.has_ready()
    }

    /// The records of ready `number` (and of every ready before it) are durable.
    pub fn persisted(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        let mut applied = None;
        while let Some(&(n, a)) = self.apply_after_persist.front() {
            if n > number {
                break;
            }
            applied = Some(a);
            self.apply_after_persist.pop_front();
        }
        if let Some(a) = applied {
            if a > self.raw.raft.raft_log.applied {
                self.raw.advance_apply_to(a);
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut ReplicaReady) {
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => {
                    if let Some(a) = self.sm.apply(e.index, &e.data) {
                        out.applied.push(a);
                    }
                }
                EntryType::EntryNormal => self.sm.skip(e.index),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cc = if e.get_entry_type() == EntryType::EntryConfChange {
                        let mut v1 = ConfChange::default();
                        v1.merge_from_bytes(&e.data).ok().map(|_| raft_proto::ConfChangeI::into_v2(v1))
                    } else {
                        let mut v2 = ConfChangeV2::default();
                        v2.merge_from_bytes(&e.data).ok().map(|_| v2)
                    };
                    if let Some(cc) = cc.filter(|cc| self.apply_conf_change(cc)) {
                        for c in cc.get_changes() {
                            let change = MemberUpdate {
                                node: c.node_id,
                                change: c.get_change_type(),
                                context: cc.context.to_vec(),
                            };
                            out.member_updates.push(change);
                            self.sm.member_changed(c.node_id, c.get_change_type() == ConfChangeType::RemoveNode);
                        }
                        self.sm.conf_changed(e.index);
                    }
                    self.sm.skip(e.index);
                }
            }
        }
    }

    fn apply_conf_change(&mut self, cc: &ConfChangeV2) -> bool {
        match self.raw.apply_conf_change(cc) {
            Ok(cs) => {
                // raft-rs keeps a leader that was removed in charge, and then panics on its
                // own missing progress entry (its `post_conf_change` marks this untested).
                // `propose_conf_change` never removes a leader, but a leader elected with
                // such an entry still in its log applies it: hand over and step down.
                if self.raw.raft.state == StateRole::Leader && !cs.voters.contains(&self.raw.raft.id) {
                    let to = self.successor();
                    tracing::info!(group = self.group, ?to, "removed from the group while leading; stepping down");
                    if let Some(to) = to {
                        self.raw.transfer_leader(to);
                    }
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
                self.log.set_conf_state(cs);
                true
            }
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "membership change refused");
                false
            }
        }
    }

    /// The voter other than this one that holds the most of the log, to lead after it.
    fn successor(&self) -> Option<NodeId> {
        let me = self.raw.raft.id;
        let prs = self.raw.raft.prs();
        prs.conf()
            .voters()
            .ids()
            .iter()
            .filter(|v| *v != me)
            .filter_map(|v| prs.get(v).map(|p| (p.matched, v)))
            .max()
            .map(|(_, v)| v)
    }

    fn maybe_snapshot(&mut self) {
        let applied = self.sm.applied();
        let since = applied.saturating_sub(self.log.snapshot_index());
        let log_enough = self.logged_bytes as f64 >= self.snapshot_bytes as f64 * self.config.snapshot_log_ratio;
        let due = (since >= self.config.snapshot_every && log_enough) || (self.log.snapshot_wanted() && since > 0);
        if !due {
            return;
        }
        let raft_applied = self.raw.raft.raft_log.applied;
        let snap = self.log.take_snapshot(applied, self.sm.snapshot(), self.config.keep_behind_snapshot, raft_applied);
        (self.snapshot_bytes, self.logged_bytes) = (snap.get_data().len() as u64, 0);
        self.snapshot_taken = Some(snap);
    }
}

/// Bytes of entry data, as `ReplicaConfig::snapshot_log_ratio` counts the log.
fn entry_bytes<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> u64 {
    entries.into_iter().map(|e| e.data.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Capture(Arc<Mutex<Vec<String>>>);

    impl slog::Drain for Capture {
        type Ok = ();
        type Err = slog::Never;

        fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
            self.0.lock().unwrap().push(format!("{}{}", record.msg(), Kvs(record, values)));
            Ok(())
        }
    }

    #[test]
    fn raft_log_lines_carry_their_node_group_and_fields() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = slog::Logger::root(Capture(lines.clone()), slog::o!("node" => 1u64, "group" => 7u64));
        slog::info!(log, "became leader"; "term" => 3);
        let line = lines.lock().unwrap()[0].clone();
        assert!(line.starts_with("became leader term=3"), "{line}");
        assert!(line.contains(" group=7") && line.contains(" node=1"), "{line}");
    }

    /// Three replicas of group 1 whose messages the test moves by hand; node 1 leads.
    fn led_group() -> Vec<Replica> {
        led_group_with(ReplicaConfig::default())
    }

    fn led_group_with(config: ReplicaConfig) -> Vec<Replica> {
        let mut rs: Vec<Replica> =
            (1..=3).map(|id| Replica::bootstrap(id, 1, &[1, 2, 3], config.clone()).unwrap().0).collect();
        rs[0].campaign();
        exchange(&mut rs, Vec::new());
        assert!(rs[0].is_leader());
        rs
    }

    /// Delivers `msgs`, then runs turns (each ready persisted at once) until no message is
    /// left; returns every ready.
    fn exchange(rs: &mut [Replica], msgs: Vec<Message>) -> Vec<ReplicaReady> {
        exchange_where(rs, msgs, |_| true)
    }

    /// As `exchange`, losing the messages `deliver` refuses.
    fn exchange_where(
        rs: &mut [Replica],
        mut msgs: Vec<Message>,
        deliver: impl Fn(&Message) -> bool,
    ) -> Vec<ReplicaReady> {
        let mut readies = Vec::new();
        for _ in 0..100 {
            for m in msgs.drain(..).filter(|m| deliver(m)) {
                let to = m.to as usize - 1;
                rs[to].step(m);
            }
            for r in rs.iter_mut() {
                while let Some(mut rd) = r.ready() {
                    r.persisted(rd.number());
                    msgs.append(&mut rd.messages);
                    msgs.append(&mut rd.persisted_messages);
                    readies.push(rd);
                }
            }
            if msgs.is_empty() {
                return readies;
            }
        }
        panic!("messages never stopped");
    }

    /// The leader's turn: its ready (persisted at once), then the exchange its messages start.
    /// Returns those messages, and every ready, the leader's first.
    fn leader_turn(rs: &mut [Replica]) -> (Vec<Message>, Vec<ReplicaReady>) {
        let mut rd = rs[0].ready().expect("a turn");
        rs[0].persisted(rd.number());
        let sent = std::mem::take(&mut rd.messages);
        let mut readies = exchange(rs, sent.clone());
        readies.insert(0, rd);
        (sent, readies)
    }

    fn put(seq: u64) -> Command {
        put_sized(seq, format!("k{seq}"), 100)
    }

    fn put_sized(seq: u64, key: String, value_bytes: usize) -> Command {
        let op = crate::command::Op::Put { key: key.into_bytes(), value: vec![7; value_bytes] };
        Command { client: 9, seq, acked_below: seq, ops: vec![op] }
    }

    /// Snapshots the leader took while `cmds` were written, one per turn.
    fn snapshots_while_writing(rs: &mut [Replica], cmds: impl Iterator<Item = Command>) -> usize {
        let mut taken = 0;
        for cmd in cmds {
            rs[0].propose(&cmd).unwrap();
            let (_, readies) = leader_turn(rs);
            taken += readies.iter().filter(|r| r.local_snapshot.is_some()).count();
        }
        taken
    }

    #[test]
    fn snapshots_wait_for_as_many_log_bytes_as_the_state_holds() {
        let config = ReplicaConfig { snapshot_every: 10, ..ReplicaConfig::default() };
        let mut rs = led_group_with(config.clone());
        // 40 KB of state in 20 writes: the log grows as fast as the state, so snapshots come
        // about every `snapshot_every` writes (each replica takes its own).
        let big = snapshots_while_writing(&mut rs, (1..=20).map(|s| put_sized(s, format!("k{s}"), 2000)));
        assert!(big >= 3, "{big} snapshots");
        // 100 small overwrites log ~6 KB, much less than the ~40 KB a snapshot copies: none.
        let small = snapshots_while_writing(&mut rs, (21..=120).map(|s| put_sized(s, format!("k{}", s % 20), 10)));
        assert_eq!(small, 0);
        // Without the ratio, every ten writes snapshot the whole state again.
        let mut rs = led_group_with(ReplicaConfig { snapshot_log_ratio: 0.0, ..config });
        snapshots_while_writing(&mut rs, (1..=20).map(|s| put_sized(s, format!("k{s}"), 2000)));
        let small = snapshots_while_writing(&mut rs, (21..=120).map(|s| put_sized(s, format!("k{}", s % 20), 10)));
        assert!(small >= 9 * 3, "{small} snapshots");
    }

    #[test]
    fn writes_proposed_in_one_turn_reach_each_follower_in_one_append() {
        let mut rs = led_group();
        for seq in 1..=10 {
            rs[0].propose(&put(seq)).unwrap();
        }
        let (sent, readies) = leader_turn(&mut rs);
        let appends: Vec<_> = sent.iter().filter(|m| m.get_msg_type() == MessageType::MsgAppend).collect();
        assert_eq!(appends.len(), 2, "{sent:?}");
        assert!(appends.iter().all(|m| m.entries.len() == 10), "{appends:?}");
        let acked: Vec<u64> = readies.iter().flat_map(|r| &r.applied).map(|a| a.seq).collect();
        // The leader applies all ten, in order (followers learn the commit with the next
        // append or heartbeat).
        assert_eq!(acked, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn reads_asked_in_one_turn_share_one_heartbeat_round() {
        let mut rs = led_group();
        for id in 1..=10 {
            rs[0].read(id).unwrap();
        }
        let (sent, readies) = leader_turn(&mut rs);
        let beats = sent.iter().filter(|m| m.get_msg_type() == MessageType::MsgHeartbeat).count();
        assert_eq!(beats, 2, "{sent:?}");
        let served: Vec<u64> = readies.iter().flat_map(|r| &r.reads).map(|r| r.id).collect();
        assert_eq!(served, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn leadership_goes_to_the_preferred_voter_only_once_it_answers_without_stalls() {
        let mut rs = led_group();
        let preferred = rs[0].preferred_leader().unwrap();
        assert_eq!(preferred, 2, "node 1 leads, node 2 is group 1's preferred voter");
        let election = ReplicaConfig::default().election_ticks as u64;
        // Tick everyone once and deliver what follows, losing what node 2 sends when `stalled`.
        let tick = |rs: &mut [Replica], stalled: bool| {
            for r in rs.iter_mut() {
                r.tick();
            }
            exchange_where(rs, Vec::new(), |m| !(stalled && m.from == 2));
        };
        // Node 2 goes silent for most of an election timeout in every three (the loop's last
        // ticks among them): it stays a follower (it hears the leader), node 1 keeps its quorum
        // through node 3, and never hands over although node 2 is caught up and answered within
        // every election timeout.
        for t in 0..30 * election {
            tick(&mut rs, t % (3 * election) >= 2 * election + 2);
            assert!(rs[0].is_leader(), "node 1 lost leadership at tick {t}");
            assert!(rs[0].raw.raft.lead_transferee.is_none(), "a hand-over to a stalling voter at tick {t}");
        }
        // Once node 2 answers steadily, it gets leadership: not before the steady span.
        let mut steady = 0;
        while !rs[1].is_leader() {
            tick(&mut rs, false);
            steady += 1;
            assert!(steady <= 2 * HAND_OVER_STEADY_ELECTIONS * election, "no hand-over after {steady} steady ticks");
        }
        assert!(steady >= HAND_OVER_STEADY_ELECTIONS * election, "handed over after only {steady} steady ticks");
    }

    #[test]
    fn writes_raft_drops_before_the_turn_come_back_as_dropped() {
        let mut rs = led_group();
        rs[0].propose(&put(1)).unwrap();
        rs[0].propose(&put(2)).unwrap();
        // A hand-over starts before the turn: raft refuses proposals until it is done.
        rs[0].transfer_leader(2);
        let rd = rs[0].ready().expect("a turn");
        assert_eq!(rd.dropped, vec![(9, 1), (9, 2)]);
        assert!(rd.applied.is_empty());
    }
}
