//! Reliable calls over UDP, sans-IO: the session block, the server's at-most-once table and
//! the client's retransmission schedule. No sockets, no clock (callers pass `now`).
//!
//! A client opens a *session* with a server (a `Hello` exchange naming a random 64-bit id)
//! and sends each request as one datagram carrying that id in a [`SESSION_BLOCK_LEN`]-byte
//! block before the archive (header flag [`FLAG_SESSION`]). It retransmits a request until
//! the reply arrives; the server runs each request at most once and answers a retransmission
//! from its cache. Request ids are `(sequence << 32) | slot` (see [`super::calls`]): the
//! server keeps, per session and slot, the newest sequence it saw and its reply, so a new
//! request on a slot releases the previous reply (the client only reuses a slot once it has
//! its answer or has given up), and the table is bounded by sessions × slots whatever the
//! call rate. The cached replies also have a byte budget: past it the oldest are dropped
//! (a retransmission of such a call is answered with an error saying it ran but its reply is
//! gone, never by running it again). A server that does not know a session (it restarted,
//! or expired the session while idle) refuses with `SessionUnknown` and runs nothing.
//!
//! Block layout (little-endian): session id `u64` (never 0), then 8 reserved zero bytes.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::frame::{FrameError, FrameKind, Header, FRAME_ALIGN};

/// Header flag (must-understand): the payload starts with a session block.
pub const FLAG_SESSION: u16 = 0x0200;
/// Size of the session block.
pub const SESSION_BLOCK_LEN: usize = 16;
const _: () = assert!(SESSION_BLOCK_LEN.is_multiple_of(FRAME_ALIGN), "the archive after the block stays aligned");

/// The block naming session `id`.
pub fn encode_block(id: u64) -> [u8; SESSION_BLOCK_LEN] {
    let mut b = [0u8; SESSION_BLOCK_LEN];
    b[..8].copy_from_slice(&id.to_le_bytes());
    b
}

/// Check the session flag against a parsed header: only requests, cancels and hellos carry
/// a block, hellos always do, and the payload must hold it.
pub(crate) fn check_header(h: &Header) -> Result<(), FrameError> {
    let flagged = h.flags & FLAG_SESSION != 0;
    if !flagged {
        return match h.kind {
            FrameKind::Hello => Err(FrameError::BadSession("a hello must carry a session block")),
            _ => Ok(()),
        };
    }
    if !matches!(h.kind, FrameKind::Request | FrameKind::Cancel | FrameKind::Hello) {
        return Err(FrameError::BadSession("only requests, cancels and hellos carry a session block"));
    }
    if (h.payload_len as usize) < SESSION_BLOCK_LEN {
        return Err(FrameError::BadSession("payload shorter than the session block"));
    }
    Ok(())
}

/// Split a received payload into its session id (if the header says there is one) and the
/// rest.
pub fn split(header: &Header, payload: Bytes) -> Result<(Option<u64>, Bytes), FrameError> {
    if header.flags & FLAG_SESSION == 0 {
        return Ok((None, payload));
    }
    let block: &[u8; SESSION_BLOCK_LEN] = payload
        .get(..SESSION_BLOCK_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::BadSession("payload shorter than the session block"))?;
    let id = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
    if id == 0 {
        return Err(FrameError::BadSession("session id 0"));
    }
    if block[8..].iter().any(|&x| x != 0) {
        return Err(FrameError::BadSession("reserved bytes are not zero"));
    }
    Ok((Some(id), payload.slice(SESSION_BLOCK_LEN..)))
}

/// When to send a request again: after `initial`, then doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Instant,
    rto: Duration,
    max: Duration,
    /// Transmissions so far.
    pub sent: u32,
}

impl Backoff {
    /// A schedule for a request first sent at `now`.
    pub fn new(now: Instant, initial: Duration, max: Duration) -> Backoff {
        Backoff { next: now + initial, rto: initial, max: max.max(initial), sent: 1 }
    }

    /// When the next transmission is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Record a retransmission at `now` and schedule the next one.
    pub fn resent(&mut self, now: Instant) {
        self.sent += 1;
        self.rto = (self.rto * 2).min(self.max);
        self.next = now + self.rto;
    }
}

/// What a new call on a slot displaced.
#[derive(Debug, PartialEq, Eq)]
pub enum Released<R, H> {
    /// The previous call's cached reply (its buffer can be reused).
    Reply(R),
    /// The previous call, still running: the client gave up on it (its cancel was lost),
    /// so dropping the task stops it.
    Running(Option<H>),
}

/// What the server does with a received request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<'a, R> {
    /// New: run it (the slot now records it as running).
    Run,
    /// A retransmission of a call still running: tell the client it is (a `Pending` frame).
    Running,
    /// A retransmission of a finished call: send this reply again.
    Replay(&'a R),
    /// A retransmission of a finished call whose reply was dropped to stay within the byte
    /// budget: tell the client it ran and its reply is gone (it must not run again).
    ReplyDropped,
    /// Older than the slot's newest call: the client has moved on; drop it.
    Stale,
    /// The session is not open here: refuse (it did not run).
    UnknownSession,
    /// The slot index is beyond the server's limit: refuse as overloaded (it did not run).
    TooManySlots,
}

enum SlotState<R, H> {
    /// Running; the task handle once the handler is waiting on something.
    Running(Option<H>),
    /// Answered, the reply kept for retransmissions.
    Done(R),
    /// Answered, the reply dropped (byte budget).
    Dropped,
    /// The client cancelled it: a late copy of the request must not run it again.
    Cancelled,
}

struct Slot<R, H> {
    seq: u32,
    state: SlotState<R, H>,
}

struct Session<R, H> {
    /// Indexed by slot: clients use small dense slot numbers (slab keys).
    slots: Vec<Option<Slot<R, H>>>,
    last_seen: Instant,
}

impl<R, H> Session<R, H> {
    fn any_running(&self) -> bool {
        self.slots.iter().flatten().any(|sl| matches!(sl.state, SlotState::Running(_)))
    }
}

/// A cached reply's cost against the byte budget.
pub trait CacheSize {
    /// Bytes this reply holds (its buffer's capacity, not just its length).
    fn cache_size(&self) -> usize;
}

impl CacheSize for bytes::BytesMut {
    fn cache_size(&self) -> usize {
        self.capacity()
    }
}

/// What became of a finished call's reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept<R> {
    /// Cached for retransmissions.
    Cached,
    /// The call ran here but its reply is not kept (larger than the whole budget): handed
    /// back; a retransmission is answered as [`Admit::ReplyDropped`].
    Dropped(R),
    /// The call is no longer running here (cancelled, the slot moved on, or the session is
    /// gone): handed back.
    NotRunning(R),
}

/// Why a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionsFull;

/// Serial-number order on 32-bit sequences (RFC 1982): `a` is newer than `b`.
fn newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

/// The slot `request_id` names in session `(peer, id)`, if it still holds that call.
fn slot<P: Hash + Eq, R, H>(
    map: &HashMap<(P, u64), Session<R, H>, foldhash::fast::RandomState>,
    peer: P,
    id: u64,
    request_id: u64,
) -> Option<&Slot<R, H>> {
    let sl = map.get(&(peer, id))?.slots.get(request_id as u32 as usize)?.as_ref()?;
    (sl.seq == (request_id >> 32) as u32).then_some(sl)
}

/// A cached reply leaves the cache: take it off the byte and reply counts.
fn uncount<R: CacheSize>(bytes: &mut usize, replies: &mut usize, r: &R) {
    *bytes -= r.cache_size();
    *replies -= 1;
}

/// The server's sessions, keyed by `P` (the peer address) and session id; `R` is a cached
/// reply, `H` a running call's task handle.
pub struct Sessions<P, R, H> {
    // Seeded fast hashing: looked up twice per call, keyed by what peers send.
    map: HashMap<(P, u64), Session<R, H>, foldhash::fast::RandomState>,
    max_sessions: usize,
    max_slots: u32,
    idle: Duration,
    /// Bytes of cached replies, and the budget.
    cached_bytes: usize,
    max_cached_bytes: usize,
    /// Cached replies, oldest first, as (peer, session, request id); entries whose slot has
    /// moved on are skipped when met (and compacted away so the queue stays bounded).
    order: VecDeque<(P, u64, u64)>,
    /// Slots holding a cached reply.
    cached: usize,
    /// Replies dropped for the budget, for the caller to reuse ([`Sessions::pop_evicted`]).
    evicted: Vec<R>,
}

impl<P, R, H> std::fmt::Debug for Sessions<P, R, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("open", &self.map.len()).field("max", &self.max_sessions).finish()
    }
}

impl<P: Hash + Eq + Copy, R: CacheSize, H> Sessions<P, R, H> {
    /// At most `max_sessions` sessions of at most `max_slots` slots each, and at most
    /// `max_cached_bytes` of cached replies; sessions silent for `idle` are forgotten by
    /// [`Sessions::expire`].
    pub fn new(max_sessions: usize, max_slots: u32, idle: Duration, max_cached_bytes: usize) -> Self {
        Sessions {
            map: HashMap::default(),
            max_sessions,
            max_slots,
            idle,
            cached_bytes: 0,
            max_cached_bytes,
            order: VecDeque::new(),
            cached: 0,
            evicted: Vec::new(),
        }
    }

    /// Bytes of replies cached now.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// A reply dropped from the cache to stay within the budget, to reuse or free.
    pub fn pop_evicted(&mut self) -> Option<R> {
        self.evicted.pop()
    }

    /// Account for the cached replies of a session being dropped.
    fn forget(&mut self, s: &Session<R, H>) {
        for sl in s.slots.iter().flatten() {
            if let SlotState::Done(r) = &sl.state {
                uncount(&mut self.cached_bytes, &mut self.cached, r);
            }
        }
    }

    /// Drop the oldest cached replies until the cache is within its budget.
    fn evict(&mut self) {
        while self.cached_bytes > self.max_cached_bytes {
            let Some((peer, id, request_id)) = self.order.pop_front() else { break };
            let cached = |sl: &&mut Slot<R, H>| matches!(sl.state, SlotState::Done(_));
            let Some(sl) = self.slot_mut(peer, id, request_id).filter(cached) else { continue };
            if let SlotState::Done(r) = std::mem::replace(&mut sl.state, SlotState::Dropped) {
                uncount(&mut self.cached_bytes, &mut self.cached, &r);
                self.evicted.push(r);
            }
        }
        // Entries of replies released since: compact once they outnumber the live ones.
        if self.order.len() > 2 * self.cached + 64 {
            let map = &self.map;
            self.order.retain(|&(peer, id, request_id)| {
                slot(map, peer, id, request_id).is_some_and(|sl| matches!(sl.state, SlotState::Done(_)))
            });
        }
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True with no session open.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Calls running over all sessions.
    pub fn running(&self) -> usize {
        self.map
            .values()
            .flat_map(|s| s.slots.iter().flatten())
            .filter(|s| matches!(s.state, SlotState::Running(_)))
            .count()
    }

    /// A hello for `(peer, id)`: open the session, or refresh it if open (a retransmitted
    /// hello). At the limit, a session idle for longest is evicted first if it has no call
    /// running; otherwise the hello is refused.
    pub fn hello(&mut self, peer: P, id: u64, now: Instant) -> Result<(), SessionsFull> {
        if let Some(s) = self.map.get_mut(&(peer, id)) {
            s.last_seen = now;
            return Ok(());
        }
        if self.map.len() >= self.max_sessions {
            let victim =
                self.map.iter().filter(|(_, s)| !s.any_running()).min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k);
            match victim {
                Some(k) => {
                    if let Some(s) = self.map.remove(&k) {
                        self.forget(&s);
                    }
                }
                None => return Err(SessionsFull),
            }
        }
        self.map.insert((peer, id), Session { slots: Vec::new(), last_seen: now });
        Ok(())
    }

    /// A request `request_id` on session `(peer, id)`. On [`Admit::Run`] whatever the slot
    /// held for the previous call is handed back through `released`.
    pub fn admit(
        &mut self,
        peer: P,
        id: u64,
        request_id: u64,
        now: Instant,
        released: &mut Option<Released<R, H>>,
    ) -> Admit<'_, R> {
        // Fields apart: a replayed reply borrows the map while the byte count changes.
        let Sessions { map, max_slots, cached_bytes, cached, .. } = self;
        let Some(s) = map.get_mut(&(peer, id)) else { return Admit::UnknownSession };
        s.last_seen = now;
        let (seq, slot) = ((request_id >> 32) as u32, request_id as u32);
        if slot >= *max_slots {
            return Admit::TooManySlots;
        }
        let index = slot as usize;
        if s.slots.len() <= index {
            s.slots.resize_with(index + 1, || None);
        }
        let sl = match &mut s.slots[index] {
            empty @ None => {
                *empty = Some(Slot { seq, state: SlotState::Running(None) });
                return Admit::Run;
            }
            Some(sl) => sl,
        };
        if sl.seq == seq {
            return match &sl.state {
                SlotState::Running(_) => Admit::Running,
                SlotState::Done(r) => Admit::Replay(r),
                SlotState::Dropped => Admit::ReplyDropped,
                SlotState::Cancelled => Admit::Stale,
            };
        }
        if !newer(seq, sl.seq) {
            return Admit::Stale;
        }
        // The client reuses a slot only after it is done with the previous call, so that
        // call's reply is no longer needed (and a handler still running for it was given up
        // on by the client).
        let old = std::mem::replace(sl, Slot { seq, state: SlotState::Running(None) });
        *released = match old.state {
            SlotState::Done(r) => {
                uncount(cached_bytes, cached, &r);
                Some(Released::Reply(r))
            }
            SlotState::Running(h) => Some(Released::Running(h)),
            SlotState::Dropped | SlotState::Cancelled => None,
        };
        Admit::Run
    }

    /// The handler of `request_id` is waiting on something and continues as `task`. Returns
    /// the task back if the call is no longer running here (it was cancelled meanwhile).
    pub fn attach(&mut self, peer: P, id: u64, request_id: u64, task: H) -> Option<H> {
        match self.slot_mut(peer, id, request_id) {
            Some(Slot { state: SlotState::Running(h), .. }) => {
                *h = Some(task);
                None
            }
            _ => Some(task),
        }
    }

    /// The call finished with `reply`: keep it for retransmissions, dropping the oldest
    /// cached replies if the budget needs it ([`Sessions::pop_evicted`] hands them out).
    /// Also returns the task handle if there was one.
    pub fn finish(&mut self, peer: P, id: u64, request_id: u64, reply: R) -> (Kept<R>, Option<H>) {
        let size = reply.cache_size();
        let max = self.max_cached_bytes;
        let Some(sl) = self.slot_mut(peer, id, request_id).filter(|sl| matches!(sl.state, SlotState::Running(_)))
        else {
            return (Kept::NotRunning(reply), None);
        };
        let (kept, state) = match size > max {
            true => (Kept::Dropped(reply), SlotState::Dropped),
            false => (Kept::Cached, SlotState::Done(reply)),
        };
        let task = match std::mem::replace(&mut sl.state, state) {
            SlotState::Running(h) => h,
            _ => None,
        };
        if matches!(kept, Kept::Cached) {
            self.cached_bytes += size;
            self.cached += 1;
            self.order.push_back((peer, id, request_id));
            self.evict();
        }
        (kept, task)
    }

    /// The client cancelled `request_id`: mark it so, returning the running task (dropping
    /// it stops the handler).
    pub fn cancel(&mut self, peer: P, id: u64, request_id: u64) -> Option<H> {
        let sl = self.slot_mut(peer, id, request_id)?;
        if !matches!(sl.state, SlotState::Running(_)) {
            return None;
        }
        // The slot remembers the call as cancelled, so a delayed copy is stale, not new.
        match std::mem::replace(&mut sl.state, SlotState::Cancelled) {
            SlotState::Running(h) => h,
            _ => None,
        }
    }

    fn slot_mut(&mut self, peer: P, id: u64, request_id: u64) -> Option<&mut Slot<R, H>> {
        let sl = self.map.get_mut(&(peer, id))?.slots.get_mut(request_id as u32 as usize)?.as_mut()?;
        (sl.seq == (request_id >> 32) as u32).then_some(sl)
    }

    /// Forget sessions silent for longer than the idle limit; returns how many, and the tasks
    /// of calls they still had running (dropping them stops the handlers). A live client
    /// retransmits a running call at least every few hundred milliseconds, which counts as
    /// hearing from it, so a silent session's client is gone.
    pub fn expire(&mut self, now: Instant) -> (usize, Vec<H>) {
        let idle = self.idle;
        let gone: Vec<(P, u64)> = self
            .map
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_seen) >= idle)
            .map(|(k, _)| *k)
            .collect();
        let mut tasks = Vec::new();
        for k in &gone {
            if let Some(s) = self.map.remove(k) {
                self.forget(&s);
                tasks.extend(s.slots.into_iter().flatten().filter_map(|sl| match sl.state {
                    SlotState::Running(h) => h,
                    _ => None,
                }));
            }
        }
        (gone.len(), tasks)
    }

    /// Drop every session (the server stops), returning the running tasks.
    pub fn clear(&mut self) -> Vec<H> {
        (self.cached_bytes, self.cached) = (0, 0);
        self.order.clear();
        let mut tasks = Vec::new();
        for (_, s) in self.map.drain() {
            for sl in s.slots.into_iter().flatten() {
                if let SlotState::Running(Some(h)) = sl.state {
                    tasks.push(h);
                }
            }
        }
        tasks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type T = Sessions<u8, &'static str, u32>;

    impl CacheSize for &'static str {
        fn cache_size(&self) -> usize {
            self.len()
        }
    }

    fn id(seq: u32, slot: u32) -> u64 {
        (u64::from(seq) << 32) | u64::from(slot)
    }

    fn table() -> (T, Instant) {
        let mut t = T::new(2, 4, Duration::from_secs(10), 1 << 20);
        let now = Instant::now();
        t.hello(1, 77, now).unwrap();
        (t, now)
    }

    #[test]
    fn a_request_runs_once_and_its_retransmissions_are_answered_from_the_cache() {
        let (mut t, now) = table();
        let mut rel = None;
        assert_eq!(t.admit(1, 77, id(1, 0), now, &mut rel), Admit::Run);
        assert_eq!(t.admit(1, 77, id(1, 0), now, &mut rel), Admit::Running, "retransmitted while running");
        assert_eq!(t.finish(1, 77, id(1, 0), "reply"), (Kept::Cached, None));
        assert_eq!(t.admit(1, 77, id(1, 0), now, &mut rel), Admit::Replay(&"reply"));
        assert_eq!(t.admit(1, 77, id(1, 0), now, &mut rel), Admit::Replay(&"reply"), "as often as it comes");
        assert_eq!(rel, None);
    }

    #[test]
    fn a_new_call_on_a_slot_releases_the_previous_reply_and_older_calls_are_stale() {
        let (mut t, now) = table();
        let mut rel = None;
        assert_eq!(t.admit(1, 77, id(1, 0), now, &mut rel), Admit::Run);
        t.finish(1, 77, id(1, 0), "first");
        assert_eq!(t.admit(1, 77, id(5, 0), now, &mut rel), Admit::Run);
        assert_eq!(rel, Some(Released::Reply("first")), "the client moved on: the old reply is released");
        assert_eq!(t.admit(1, 77, id(1, 0), now, &mut rel), Admit::Stale, "a late duplicate of the old call");
        assert_eq!(t.admit(1, 77, id(4, 0), now, &mut rel), Admit::Stale);
        t.attach(1, 77, id(5, 0), 3);
        assert_eq!(t.admit(1, 77, id(6, 0), now, &mut rel), Admit::Run);
        assert_eq!(rel, Some(Released::Running(Some(3))), "a call given up on is handed back to be stopped");
    }

    #[test]
    fn sequences_compare_across_wraparound() {
        let (mut t, now) = table();
        let mut rel = None;
        assert_eq!(t.admit(1, 77, id(u32::MAX, 1), now, &mut rel), Admit::Run);
        t.finish(1, 77, id(u32::MAX, 1), "a");
        assert_eq!(t.admit(1, 77, id(1, 1), now, &mut rel), Admit::Run, "1 follows u32::MAX");
        assert_eq!(t.admit(1, 77, id(u32::MAX, 1), now, &mut rel), Admit::Stale);
    }

    #[test]
    fn unknown_sessions_and_slots_beyond_the_limit_are_refused_without_running() {
        let (mut t, now) = table();
        let mut rel = None;
        assert_eq!(t.admit(1, 78, id(1, 0), now, &mut rel), Admit::UnknownSession, "other session id");
        assert_eq!(t.admit(2, 77, id(1, 0), now, &mut rel), Admit::UnknownSession, "other peer");
        assert_eq!(t.admit(1, 77, id(1, 4), now, &mut rel), Admit::TooManySlots);
        assert_eq!(t.running(), 0);
    }

    #[test]
    fn a_cancelled_call_is_forgotten_and_returns_its_task() {
        let (mut t, now) = table();
        let mut rel = None;
        assert_eq!(t.admit(1, 77, id(1, 2), now, &mut rel), Admit::Run);
        assert_eq!(t.attach(1, 77, id(1, 2), 9), None);
        assert_eq!(t.cancel(1, 77, id(1, 2)), Some(9));
        assert_eq!(t.attach(1, 77, id(1, 2), 10), Some(10), "not running any more");
        let (back, task) = t.finish(1, 77, id(1, 2), "late");
        assert_eq!((back, task), (Kept::NotRunning("late"), None), "a reply for a cancelled call is handed back");
        assert_eq!(t.admit(1, 77, id(1, 2), now, &mut rel), Admit::Stale, "a delayed copy does not run it again");
        assert_eq!(t.cancel(1, 77, id(1, 2)), None);
        assert_eq!(t.admit(1, 77, id(2, 2), now, &mut rel), Admit::Run, "the slot's next call runs");
        assert_eq!(rel, None, "nothing to release after a cancel");
    }

    #[test]
    fn idle_sessions_expire_unless_a_call_is_running_and_the_limit_evicts_the_idlest() {
        let (mut t, now) = table();
        let mut rel = None;
        t.hello(1, 88, now + Duration::from_secs(1)).unwrap();
        assert_eq!(t.hello(3, 99, now), Ok(()), "at the limit the idlest idle session goes");
        assert_eq!(t.admit(1, 77, id(1, 0), now, &mut rel), Admit::UnknownSession, "77 was evicted");
        assert_eq!(t.admit(3, 99, id(1, 0), now, &mut rel), Admit::Run);
        assert_eq!(t.admit(1, 88, id(1, 0), now + Duration::from_secs(1), &mut rel), Admit::Run);
        assert_eq!(t.hello(4, 1, now), Err(SessionsFull), "both sessions have calls running");
        t.finish(1, 88, id(1, 0), "x");
        t.attach(3, 99, id(1, 0), 5);
        assert_eq!(t.expire(now + Duration::from_secs(5)), (0, vec![]), "not idle long enough");
        let (gone, tasks) = t.expire(now + Duration::from_secs(30));
        assert_eq!((gone, tasks), (2, vec![5]), "silent sessions go, and the call still running is handed back");
        assert!(t.is_empty());
        assert_eq!(t.clear(), Vec::<u32>::new());
    }

    #[test]
    fn cached_replies_stay_within_the_byte_budget_oldest_dropped_first_and_never_run_again() {
        let now = Instant::now();
        let mut t = T::new(4, 8, Duration::from_secs(10), 10);
        t.hello(1, 77, now).unwrap();
        t.hello(2, 88, now).unwrap();
        let mut rel = None;
        for (peer, sid, slot, reply) in [(1, 77, 0, "aaaa"), (2, 88, 0, "bbbb"), (1, 77, 1, "cccc")] {
            assert_eq!(t.admit(peer, sid, id(1, slot), now, &mut rel), Admit::Run);
            assert_eq!(t.finish(peer, sid, id(1, slot), reply), (Kept::Cached, None));
            assert!(t.cached_bytes() <= 10, "{} bytes cached", t.cached_bytes());
        }
        assert_eq!(t.pop_evicted(), Some("aaaa"), "the oldest reply made room");
        assert_eq!(t.pop_evicted(), None);
        assert_eq!(t.cached_bytes(), 8);
        assert_eq!(t.admit(1, 77, id(1, 0), now, &mut rel), Admit::ReplyDropped, "ran once: not run again");
        assert_eq!(t.admit(2, 88, id(1, 0), now, &mut rel), Admit::Replay(&"bbbb"));
        // A reply larger than the whole budget is not kept at all.
        assert_eq!(t.admit(2, 88, id(1, 1), now, &mut rel), Admit::Run);
        assert_eq!(t.finish(2, 88, id(1, 1), "far too large"), (Kept::Dropped("far too large"), None));
        assert_eq!(t.admit(2, 88, id(1, 1), now, &mut rel), Admit::ReplyDropped);
        // Releasing (a new call on the slot), expiring and evicting sessions give bytes back.
        assert_eq!(t.admit(2, 88, id(2, 0), now, &mut rel), Admit::Run);
        assert_eq!(rel.take(), Some(Released::Reply("bbbb")));
        assert_eq!(t.cached_bytes(), 4);
        assert_eq!(t.admit(1, 77, id(2, 0), now, &mut rel), Admit::Run, "a dropped reply's slot moves on");
        assert_eq!(rel.take(), None);
        t.expire(now + Duration::from_secs(60));
        assert_eq!(t.cached_bytes(), 0);
    }

    #[test]
    fn the_eviction_queue_stays_bounded_when_replies_are_released_instead() {
        let now = Instant::now();
        let mut t = T::new(1, 1, Duration::from_secs(10), 1 << 20);
        t.hello(1, 77, now).unwrap();
        let mut rel = None;
        for seq in 1..10_000 {
            assert_eq!(t.admit(1, 77, id(seq, 0), now, &mut rel), Admit::Run);
            t.finish(1, 77, id(seq, 0), "r");
        }
        assert_eq!(t.cached_bytes(), 1);
        assert!(t.order.len() <= 2 * t.cached + 65, "{} queued", t.order.len());
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let now = Instant::now();
        let mut b = Backoff::new(now, Duration::from_millis(5), Duration::from_millis(18));
        assert_eq!(b.due(), now + Duration::from_millis(5));
        b.resent(now);
        assert_eq!(b.due(), now + Duration::from_millis(10));
        b.resent(now);
        assert_eq!(b.due(), now + Duration::from_millis(18), "capped");
        assert_eq!(b.sent, 3);
    }

    #[test]
    fn session_blocks_round_trip_and_bad_ones_are_refused() {
        let mut payload = encode_block(0x1234).to_vec();
        payload.extend_from_slice(b"archive!");
        let mut h = Header::request(id(1, 0), 2, 0, payload.len() as u32);
        h.flags |= FLAG_SESSION;
        check_header(&h).unwrap();
        let (sid, rest) = split(&h, Bytes::from(payload)).unwrap();
        assert_eq!((sid, &rest[..]), (Some(0x1234), &b"archive!"[..]));
        assert!(split(&h, Bytes::from(encode_block(0).to_vec())).is_err(), "id 0");
        let mut bad = encode_block(5);
        bad[12] = 1;
        assert!(split(&h, Bytes::from(bad.to_vec())).is_err(), "reserved bytes");
        let mut resp = Header::response(1, 2, 16);
        resp.flags |= FLAG_SESSION;
        assert!(check_header(&resp).is_err(), "responses carry no session");
        let hello = Header { kind: FrameKind::Hello, ..Header::cancel(0) };
        assert!(check_header(&hello).is_err(), "a hello without its block");
        let (none, _) = split(&Header::request(1, 2, 0, 0), Bytes::new()).unwrap();
        assert_eq!(none, None);
    }
}
