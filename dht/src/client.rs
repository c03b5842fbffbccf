//! The client library: routes each request to the group owning its key, follows redirects and
//! leader hints, asks another member when the one it asked stays silent (a leader cut off or
//! frozen: see [`ClientConfig::probe_after`]), retries writes with the same sequence number (so
//! they take effect once), and gives up with a clear error when no replica answers in time.
//!
//! A client handle lives on one core of our runtime (it is `!Send`, cheap to clone, and its
//! clones share routing knowledge and the session). Many requests may be in flight at once.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::{poll_fn, Future};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use multispace_rpc::runtime::time::sleep;
use multispace_rpc::{CallError, CallOptions};

use crate::api::table::{ChangeAnswer, ClusterView, MemberChange, ReadAnswer, Refusal, TableClient, WriteAnswer};
use crate::command::{check_key, check_ops, LimitError, Op, WriteResult};
use crate::maps::{Group, GroupId, Maps, NodeId, MAPS_KEY, META_GROUP};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhtError {
    /// A key, value or batch breaks a limit.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The keys of an atomic batch live in different groups.
    #[error("the keys of an atomic batch must all live in one partition")]
    CrossGroup,
    /// No replica answered in time. A write may or may not have taken effect.
    #[error("no answer within {after:?}: {last}")]
    Unavailable {
        /// How long the client tried.
        after: Duration,
        /// The last thing that went wrong.
        last: String,
    },
    /// A node refused the request as malformed.
    #[error("refused: {0}")]
    Invalid(String),
    /// The table applied a deterministic rejection (should not happen for checked requests).
    #[error("rejected by the table: {0}")]
    Rejected(String),
    /// No node of the seed list described the cluster.
    #[error("could not learn the cluster: {0}")]
    Connect(String),
}

/// How hard a client tries.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Give up on a request after this long.
    pub deadline: Duration,
    /// Give up on one attempt (one node) after this long.
    pub attempt_timeout: Duration,
    /// While an attempt goes unanswered this long, ask another member of the group the same,
    /// again every time it passes: a leader cut off or frozen answers nothing until
    /// `attempt_timeout`, while its group elects another in about half a second (see
    /// `DhtClient::hedged`). Keep it above the table's slowest normal answers.
    pub probe_after: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            probe_after: Duration::from_millis(300),
        }
    }
}

struct Inner {
    id: u64,
    config: ClientConfig,
    maps: RefCell<Maps>,
    nodes: RefCell<BTreeMap<NodeId, SocketAddr>>,
    stubs: RefCell<HashMap<NodeId, TableClient>>,
    next_seq: Cell<u64>,
    in_flight: RefCell<BTreeSet<u64>>,
}

/// A handle on the table.
#[derive(Clone)]
pub struct DhtClient {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for DhtClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtClient").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

/// Who to ask next: the leader hint unless it failed during this request, else the members
/// that have not failed, in turn (all of them again once every one has failed).
/// How long a node that failed during a request is passed over (about two elections here).
const SKIP_FAILED: Duration = Duration::from_millis(1_000);

fn pick(members: &[NodeId], hint: Option<NodeId>, failed: &[NodeId], n: usize) -> Option<NodeId> {
    if let Some(l) = hint.filter(|l| !failed.contains(l)) {
        return Some(l);
    }
    let fresh: Vec<NodeId> = members.iter().copied().filter(|m| !failed.contains(m)).collect();
    let from = if fresh.is_empty() { members } else { &fresh };
    (!from.is_empty()).then(|| from[n % from.len()])
}

/// One attempt's result.
enum Outcome<T> {
    Done(T),
    Refused(Refusal),
    /// The answer did not decode.
    Broken(String),
}

enum Next {
    /// Try again at once (new routing knowledge).
    Now,
    /// Try the next member.
    Other(String),
    /// Wait a little (an election or overload), then try.
    Later(String),
}

pub(crate) fn random_id() -> u64 {
    // RandomState is seeded from the OS per process; mix in time for handles made together.
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    RandomState::new().hash_one((t, std::process::id()))
}

impl DhtClient {
    /// A client that already knows the maps and node addresses.
    pub fn new(maps: Maps, nodes: BTreeMap<NodeId, SocketAddr>, config: ClientConfig) -> Self {
        DhtClient {
            inner: Rc::new(Inner {
                id: random_id(),
                config,
                maps: RefCell::new(maps),
                nodes: RefCell::new(nodes),
                stubs: RefCell::new(HashMap::new()),
                next_seq: Cell::new(1),
                in_flight: RefCell::new(BTreeSet::new()),
            }),
        }
    }

    /// Learns the cluster from the first of `seeds` that answers.
    pub async fn connect(seeds: &[SocketAddr], config: ClientConfig) -> Result<Self, DhtError> {
        let mut last = "no seeds given".to_string();
        for addr in seeds {
            match Self::view_of(*addr, config.attempt_timeout).await {
                Ok(view) => {
                    // The maps came off the wire: route with them only if they are whole.
                    let maps = match view.maps.checked() {
                        Ok(maps) => maps,
                        Err(e) => {
                            last = format!("{addr}: {e}");
                            continue;
                        }
                    };
                    let mut nodes = BTreeMap::new();
                    for (id, a) in &view.nodes {
                        let a = a.parse().map_err(|e| DhtError::Connect(format!("node {id} address {a}: {e}")))?;
                        nodes.insert(*id, a);
                    }
                    return Ok(Self::new(maps, nodes, config));
                }
                // The reason alone: the error returned says "could not learn the cluster" once.
                Err(DhtError::Connect(why)) => last = format!("{addr}: {why}"),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(DhtError::Connect(last))
    }

    /// What the node at `addr` says of the cluster.
    pub async fn view_of(addr: SocketAddr, timeout: Duration) -> Result<ClusterView, DhtError> {
        let stub = TableClient::new(addr).with_options(CallOptions::timeout(timeout));
        let view = stub.cluster().await.map_err(|e| DhtError::Connect(e.to_string()))?;
        view.to_owned().map_err(|e| DhtError::Connect(e.to_string()))
    }

    /// This client's id (its writes carry it).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The maps as this client knows them now.
    pub fn maps(&self) -> Maps {
        self.inner.maps.borrow().clone()
    }

    /// The nodes this client knows.
    pub fn nodes(&self) -> BTreeMap<NodeId, SocketAddr> {
        self.inner.nodes.borrow().clone()
    }

    /// Forgets every leader hint, so the next request per group starts from the members in
    /// turn (after a network change, or in tests that want requests to reach followers).
    pub fn forget_leaders(&self) {
        let mut maps = self.inner.maps.borrow_mut();
        let groups: Vec<GroupId> = maps.groups().map(|g| g.id).collect();
        for g in groups {
            maps.forget_leader(g);
        }
    }

    fn stub(&self, node: NodeId) -> Option<TableClient> {
        let addr = *self.inner.nodes.borrow().get(&node)?;
        let timeout = self.inner.config.attempt_timeout;
        Some(
            self.inner
                .stubs
                .borrow_mut()
                .entry(node)
                .or_insert_with(|| TableClient::new(addr).with_options(CallOptions::timeout(timeout)))
                .clone(),
        )
    }

    /// Who to ask on attempt `n`: the leader hint if there is one, else the members in turn,
    /// skipping those that already failed in this request.
    fn target(&self, group: GroupId, n: usize, failed: &[NodeId]) -> Option<(NodeId, u64)> {
        let maps = self.inner.maps.borrow();
        let g = maps.group(group)?;
        Some((pick(&g.members, g.leader_hint, failed, n)?, g.epoch))
    }

    fn on_refusal(&self, group: GroupId, node: NodeId, refusal: Refusal) -> Result<Next, DhtError> {
        let mut maps = self.inner.maps.borrow_mut();
        Ok(match refusal {
            Refusal::Redirect(g) => {
                // Newer members or epoch, or a leader we did not know: go again at once.
                if maps.learn(&crate::maps::Redirect { group: g }) {
                    Next::Now
                } else {
                    maps.forget_leader(group);
                    Next::Later(format!("node {node} does not lead group {group} and knows no other leader"))
                }
            }
            Refusal::NotHosted => {
                maps.forget_leader(group);
                Next::Other(format!("node {node} holds no replica of group {group}"))
            }
            Refusal::Busy => Next::Later(format!("group {group} is busy")),
            Refusal::Timeout => {
                maps.forget_leader(group);
                Next::Other(format!("node {node} timed out"))
            }
            Refusal::Unavailable(why) => {
                maps.forget_leader(group);
                Next::Other(format!("node {node}: {why}"))
            }
            Refusal::Invalid(why) => return Err(DhtError::Invalid(why)),
        })
    }

    async fn pause(attempt: usize) {
        // Elections take a few hundred ms here; back off from 5 ms to 50 ms.
        sleep(Duration::from_millis((5 * (attempt as u64 + 1)).min(50))).await;
    }

    fn transport_failed(&self, group: GroupId, node: NodeId, e: impl std::fmt::Display) -> Next {
        self.inner.maps.borrow_mut().forget_leader(group);
        Next::Other(format!("node {node}: {e}"))
    }

    async fn read(&self, key: &[u8], stale: bool) -> Result<Option<Vec<u8>>, DhtError> {
        check_key(key)?;
        let group = self.inner.maps.borrow().group_of(key).id;
        self.read_in(group, key, stale).await
    }

    async fn read_in(&self, group: GroupId, key: &[u8], stale: bool) -> Result<Option<Vec<u8>>, DhtError> {
        self.route(group, |stub, epoch| {
            let key = key.to_vec();
            async move {
                stub.get(group, epoch, key, stale).await.map(|m| match m.to_owned() {
                    Ok(ReadAnswer::Value(v)) => Outcome::Done(v),
                    Ok(ReadAnswer::Refused(r)) => Outcome::Refused(r),
                    Err(e) => Outcome::Broken(e.to_string()),
                })
            }
        })
        .await
    }

    /// Sends a request for `group` to its leader (or, not knowing it, its members in turn),
    /// following redirects and retrying until it is done or the deadline passes.
    async fn route<T, F, Fut>(&self, group: GroupId, attempt_with: F) -> Result<T, DhtError>
    where
        F: Fn(TableClient, u64) -> Fut,
        Fut: Future<Output = Result<Outcome<T>, CallError>>,
    {
        let started = Instant::now();
        let (mut attempt, mut pauses) = (0, 0);
        // Nodes that timed out or could not be reached during this request, and when: not
        // asked again for a while, even if named leader, while other members are there to ask
        // (a dead leader is not retried before its live peers, which may elect a new one). The
        // while is bounded: a leader that was only slow is asked again once peers still name it.
        let mut failed: Vec<(NodeId, Instant)> = Vec::new();
        loop {
            failed.retain(|(_, at)| at.elapsed() < SKIP_FAILED);
            let skip: Vec<NodeId> = failed.iter().map(|(n, _)| *n).collect();
            let (node, epoch) = self
                .target(group, attempt, &skip)
                .ok_or_else(|| DhtError::Invalid(format!("unknown group {group}")))?;
            let stub = match self.stub(node) {
                Some(stub) => Some(stub),
                // A member this client has not heard of: ask the cluster for its address.
                None => {
                    self.refresh().await;
                    self.stub(node)
                }
            };
            let next = match stub {
                None => Next::Other(format!("no address for node {node}")),
                Some(stub) => {
                    let (by, outcome) = self.hedged(group, node, epoch, attempt_with(stub, epoch), &attempt_with).await;
                    if by != node && !skip.contains(&node) {
                        // A probe found the group led elsewhere while `node` kept silent.
                        failed.push((node, Instant::now()));
                    }
                    match outcome {
                        Ok(Outcome::Done(v)) => {
                            if by != node {
                                self.led_by(group, by);
                            }
                            return Ok(v);
                        }
                        Ok(Outcome::Refused(r)) => self.on_refusal(group, by, r)?,
                        Ok(Outcome::Broken(e)) => self.transport_failed(group, by, e),
                        Err(e) => self.transport_failed(group, by, e),
                    }
                }
            };
            if matches!(next, Next::Other(_)) && !skip.contains(&node) {
                failed.push((node, Instant::now()));
            }
            self.after(next, started, &mut attempt, &mut pauses).await?;
        }
    }

    /// A probe got its answer from `node`: the group's leader (only leaders answer writes
    /// and linearizable reads; a stale read's answer may come from a follower, whose next
    /// write there is redirected).
    fn led_by(&self, group: GroupId, node: NodeId) {
        let mut maps = self.inner.maps.borrow_mut();
        if let Some(g) = maps.group(group).filter(|g| g.members.contains(&node)).cloned() {
            maps.learn(&crate::maps::Redirect { group: Group { leader_hint: Some(node), ..g } });
        }
    }

    /// Awaits `first`, an attempt at `node`; while it goes unanswered, every `probe_after`
    /// the same request goes to another member of the group (one probe at a time, members in
    /// turn). A probe's `Done` (it reached a new leader: a write carries its sequence number,
    /// so it takes effect once whichever copy lands), or its redirect to another leader or a
    /// newer epoch, ends the wait (dropping `first` cancels it); any other answer, such as a
    /// follower naming `node` as leader still, is ignored. Returns who answered, and what.
    async fn hedged<T, F, Fut>(
        &self,
        group: GroupId,
        node: NodeId,
        epoch: u64,
        first: Fut,
        attempt_with: &F,
    ) -> (NodeId, Result<Outcome<T>, CallError>)
    where
        F: Fn(TableClient, u64) -> Fut,
        Fut: Future<Output = Result<Outcome<T>, CallError>>,
    {
        enum Event<T> {
            First(Result<Outcome<T>, CallError>),
            Probe(NodeId, Result<Outcome<T>, CallError>),
            Tick,
        }
        let mut first = std::pin::pin!(first);
        let mut probe: Option<(NodeId, Pin<Box<Fut>>)> = None;
        let mut timer = sleep(self.inner.config.probe_after);
        let mut asked = 0;
        loop {
            let event = poll_fn(|cx| {
                if let Poll::Ready(r) = first.as_mut().poll(cx) {
                    return Poll::Ready(Event::First(r));
                }
                if let Some((p, f)) = probe.as_mut() {
                    if let Poll::Ready(r) = f.as_mut().poll(cx) {
                        let p = *p;
                        probe = None;
                        return Poll::Ready(Event::Probe(p, r));
                    }
                }
                Pin::new(&mut timer).poll(cx).map(|()| Event::Tick)
            })
            .await;
            match event {
                Event::First(r) => return (node, r),
                Event::Probe(p, Ok(Outcome::Done(v))) => return (p, Ok(Outcome::Done(v))),
                Event::Probe(p, Ok(Outcome::Refused(Refusal::Redirect(g))))
                    if g.epoch > epoch || g.leader_hint.is_some_and(|l| l != node) =>
                {
                    return (p, Ok(Outcome::Refused(Refusal::Redirect(g))))
                }
                Event::Probe(..) => {}
                Event::Tick => {
                    timer = sleep(self.inner.config.probe_after);
                    if probe.is_some() {
                        continue;
                    }
                    let others: Vec<NodeId> = match self.inner.maps.borrow().group(group) {
                        Some(g) => g.members.iter().copied().filter(|m| *m != node).collect(),
                        None => Vec::new(),
                    };
                    if others.is_empty() {
                        continue;
                    }
                    let p = others[asked % others.len()];
                    asked += 1;
                    if let Some(stub) = self.stub(p) {
                        probe = Some((p, Box::pin(attempt_with(stub, epoch))));
                    }
                }
            }
        }
    }

    /// Learns node addresses and group members from whichever node answers first.
    pub async fn refresh(&self) {
        let nodes: Vec<SocketAddr> = self.inner.nodes.borrow().values().copied().collect();
        for addr in nodes {
            if let Ok(view) = Self::view_of(addr, self.inner.config.attempt_timeout).await {
                for (id, a) in &view.nodes {
                    if let Ok(a) = a.parse() {
                        self.inner.nodes.borrow_mut().insert(*id, a);
                    }
                }
                let mut maps = self.inner.maps.borrow_mut();
                for g in view.maps.groups() {
                    maps.learn(&crate::maps::Redirect { group: g.clone() });
                }
                return;
            }
        }
    }

    async fn after(
        &self,
        next: Next,
        started: Instant,
        attempt: &mut usize,
        pauses: &mut usize,
    ) -> Result<(), DhtError> {
        let last = match next {
            // Redirects may chase a leader that just moved; after a few, pause like any retry.
            Next::Now if *attempt < 3 || !(*attempt).is_multiple_of(4) => {
                *attempt += 1;
                return Ok(());
            }
            Next::Now => {
                *attempt += 1;
                Self::pause(*pauses).await;
                *pauses += 1;
                "redirected repeatedly".to_string()
            }
            Next::Other(why) => {
                *attempt += 1;
                why
            }
            Next::Later(why) => {
                *attempt += 1;
                Self::pause(*pauses).await;
                *pauses += 1;
                why
            }
        };
        if started.elapsed() >= self.inner.config.deadline {
            return Err(DhtError::Unavailable { after: started.elapsed(), last });
        }
        Ok(())
    }

    /// Applies `ops` atomically (all keys must be in one partition).
    pub async fn batch(&self, ops: Vec<Op>) -> Result<WriteResult, DhtError> {
        check_ops(&ops)?;
        let group = self.inner.maps.borrow().same_group(ops.iter().map(Op::key)).ok_or(DhtError::CrossGroup)?;
        self.write_in(group, ops).await
    }

    /// Applies `ops` atomically in `group`, under this client's next sequence number.
    async fn write_in(&self, group: GroupId, ops: Vec<Op>) -> Result<WriteResult, DhtError> {
        let seq = self.inner.next_seq.get();
        self.inner.next_seq.set(seq + 1);
        self.inner.in_flight.borrow_mut().insert(seq);
        let result = self.write(group, seq, ops).await;
        self.inner.in_flight.borrow_mut().remove(&seq);
        result
    }

    async fn write(&self, group: GroupId, seq: u64, ops: Vec<Op>) -> Result<WriteResult, DhtError> {
        let client = self.inner.id;
        let result = self
            .route(group, |stub, epoch| {
                // Every write of ours below the oldest still in flight has its answer.
                let acked_below = self.inner.in_flight.borrow().first().copied().unwrap_or(seq);
                let ops = ops.clone();
                async move {
                    stub.write(group, epoch, client, seq, acked_below, ops).await.map(|m| match m.to_owned() {
                        Ok(WriteAnswer::Done(r)) => Outcome::Done(r),
                        Ok(WriteAnswer::Refused(r)) => Outcome::Refused(r),
                        Err(e) => Outcome::Broken(e.to_string()),
                    })
                }
            })
            .await?;
        match result {
            WriteResult::Rejected { reason } => Err(DhtError::Rejected(reason)),
            r => Ok(r),
        }
    }

    /// Changes the members of `group` through its leader; returns the group's new epoch once
    /// the change is applied.
    pub async fn change_members(&self, group: GroupId, change: MemberChange) -> Result<u64, DhtError> {
        let epoch = self
            .route(group, |stub, _| {
                let change = change.clone();
                async move {
                    stub.change_members(group, change).await.map(|m| match m.to_owned() {
                        Ok(ChangeAnswer::Done(e)) => Outcome::Done(e),
                        Ok(ChangeAnswer::Refused(r)) => Outcome::Refused(r),
                        Err(e) => Outcome::Broken(e.to_string()),
                    })
                }
            })
            .await?;
        self.refresh().await;
        Ok(epoch)
    }

    /// The value of `key`, linearizable: reflects every write acknowledged before the call.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DhtError> {
        self.read(key, false).await
    }

    /// The value of `key` as some replica has it now: cheaper, possibly stale.
    pub async fn get_stale(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DhtError> {
        self.read(key, true).await
    }

    /// Stores `value` under `key`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), DhtError> {
        self.batch(vec![Op::Put { key: key.to_vec(), value: value.to_vec() }]).await.map(drop)
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &[u8]) -> Result<(), DhtError> {
        self.batch(vec![Op::Delete { key: key.to_vec() }]).await.map(drop)
    }

    /// Sets `key` to `new` (`None`: removes it) if it holds `expected` (`None`: is absent).
    /// `Ok(Err(current))` when the compare failed.
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Result<(), Option<Vec<u8>>>, DhtError> {
        let op = Op::Cas { key: key.to_vec(), expected: expected.map(<[u8]>::to_vec), new: new.map(<[u8]>::to_vec) };
        match self.batch(vec![op]).await? {
            WriteResult::CompareFailed { current, .. } => Ok(Err(current)),
            _ => Ok(Ok(())),
        }
    }
}

/// The maps in the metadata group: read, and kept up to date by the nodes.
impl DhtClient {
    /// The maps as the metadata group stores them now (a linearizable read), with the stored
    /// bytes; `None` before the group's first write.
    async fn stored(&self) -> Result<Option<(Maps, Vec<u8>)>, DhtError> {
        match self.read_in(META_GROUP, MAPS_KEY, false).await? {
            None => Ok(None),
            Some(bytes) => {
                let maps = Maps::decode(&bytes).map_err(|e| DhtError::Rejected(e.to_string()))?;
                Ok(Some((maps, bytes)))
            }
        }
    }

    /// The maps as the metadata group stores them now (a linearizable read); `None` if it
    /// has not stored any yet. Leader hints are not stored: routing learns them.
    pub async fn stored_maps(&self) -> Result<Option<Maps>, DhtError> {
        Ok(self.stored().await?.map(|(maps, _)| maps))
    }

    /// Makes the metadata group store `news` (groups as their replicas see them) where they
    /// are newer than what it holds, starting from `initial` if it holds nothing yet; returns
    /// the maps stored afterwards. Compare-and-swap on the stored bytes, so nodes recording
    /// at once each see the other's write and none is lost.
    pub async fn record_groups(&self, initial: &Maps, news: &[Group]) -> Result<Maps, DhtError> {
        loop {
            let stored = self.stored().await?;
            let Some(next) = Maps::recorded(stored.as_ref().map(|(m, _)| m), initial, news) else {
                return Ok(stored.map(|(m, _)| m).unwrap_or_else(|| initial.clone()));
            };
            let expected = stored.map(|(_, bytes)| bytes);
            let op = Op::Cas { key: MAPS_KEY.to_vec(), expected, new: Some(next.encode()) };
            match self.write_in(META_GROUP, vec![op]).await? {
                WriteResult::CompareFailed { .. } => continue,
                _ => return Ok(next),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn a_node_that_failed_is_not_asked_again_before_the_others() {
        let members = [3, 1, 2];
        // The hint first while it has not failed.
        assert_eq!(pick(&members, Some(1), &[], 0), Some(1));
        // Node 1 (the old leader) timed out: the hint is skipped, and so is node 1 in turn,
        // on every attempt number.
        for n in 0..6 {
            let next = pick(&members, Some(1), &[1], n).unwrap();
            assert!(next == 3 || next == 2, "attempt {n} asked {next}");
        }
        assert_eq!(pick(&members, None, &[1, 3], 7), Some(2));
        // All failed: ask them all again rather than nobody.
        assert!(pick(&members, None, &[1, 2, 3], 4).is_some());
        assert_eq!(pick(&[], None, &[], 0), None);
    }
}
