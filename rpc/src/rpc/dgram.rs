//! Reliable calls over UDP (the datagram transport): the client's session, retransmissions
//! and TCP fallback, and the server's datagram endpoint, which runs each request at most
//! once and answers retransmissions from its reply cache. The protocol state (sessions,
//! slots, the backoff schedule) is sans-IO in [`crate::proto::session`]; this is the I/O
//! around it.
//!
//! Why: a request/response pair as two datagrams costs the kernel less than TCP's segments,
//! acknowledgements and timers, which is most of a null call's time on a fast path (eRPC's
//! observation); the price is doing the retransmission and duplicate suppression here.
//! Sends are non-blocking syscalls made straight from the caller (no writer task): a full
//! socket buffer only drops the datagram, and the retransmission covers it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::client::wire_budget;
use super::error::{CallError, Status};
use super::server::ServerState;
use super::service::{CallContext, Dispatched, Reply, Service};
use crate::buf::{encode_frame, encode_raw, EncodeError, Payload};
use crate::net::UdpSocket;
use crate::proto::calls::CallTable;
use crate::proto::frame::{decode_datagram, ErrorCode, FrameKind, Header, HEADER_LEN};
use crate::proto::session::{self, Admit, Backoff, Kept, Released, Sessions, FLAG_SESSION, SESSION_BLOCK_LEN};
use crate::proto::trace::{FLAG_TRACE, TRACE_BLOCK_LEN};
use crate::rpc::oneway::MAX_DATAGRAM;
use crate::runtime::time::{sleep_until, Sleep};
use crate::runtime::{self, spawn, JoinHandle};

/// Settings of the datagram transport.
#[derive(Debug, Clone)]
pub struct DatagramConfig {
    /// A request unanswered this long is sent again (default 5 ms); the gap doubles with
    /// each retransmission up to `max_retransmit`.
    pub retransmit: Duration,
    /// The longest gap between retransmissions (default 250 ms).
    pub max_retransmit: Duration,
    /// A call fails with `ConnectionLost` once the server has sent nothing at all for this
    /// long while the call waits (default 5 s). A server that is only slow is not cut off:
    /// it answers each retransmission of a running call with a `Pending` frame.
    pub peer_timeout: Duration,
    /// The largest datagram sent (default 65 507 bytes, the IPv4 maximum; lower it to stay
    /// under a path MTU). A request that does not fit goes over TCP to the same address.
    pub max_datagram: usize,
}

impl Default for DatagramConfig {
    fn default() -> Self {
        DatagramConfig {
            retransmit: Duration::from_millis(5),
            max_retransmit: Duration::from_millis(250),
            peer_timeout: Duration::from_secs(5),
            max_datagram: MAX_DATAGRAM,
        }
    }
}

pub(crate) type Outcome = Result<(Header, Bytes), CallError>;

/// Encodes a request into a buffer: (buffer, largest payload, prefix blocks, header maker).
pub(crate) type Encoder<'a> =
    dyn Fn(&mut BytesMut, usize, &[u8], &mut dyn FnMut(u32) -> Header) -> Result<(), EncodeError> + 'a;

/// Why a datagram call did not complete: a call error, or a request too large for a
/// datagram (the caller sends it over TCP instead).
pub(crate) enum DgramError {
    Call(CallError),
    TooLarge,
}

impl From<CallError> for DgramError {
    fn from(e: CallError) -> Self {
        DgramError::Call(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No session: the next call opens one.
    Closed,
    /// A hello for this id is out.
    Opening(u64),
    Open(u64),
    /// The server refused the hello (too many sessions).
    Refused(ErrorCode),
    /// Nothing listens at the address (ICMP port unreachable).
    Unreachable,
}

/// Send buffers for reuse: a call or reply takes one and puts it back, so the steady state
/// does not allocate.
#[derive(Default)]
struct BufPool(RefCell<Vec<BytesMut>>);

impl BufPool {
    /// Buffers kept at most.
    const MAX: usize = 16;

    fn take(&self) -> BytesMut {
        self.0.borrow_mut().pop().unwrap_or_else(|| BytesMut::with_capacity(1024))
    }

    fn put(&self, mut buf: BytesMut) {
        buf.clear();
        let mut bufs = self.0.borrow_mut();
        if bufs.len() < Self::MAX {
            bufs.push(buf);
        }
    }
}

/// A client's datagram session with one server address.
pub(crate) struct DgramConn {
    // Declared first, so the reader (and its multishot receive) goes before the socket.
    reader: RefCell<Option<JoinHandle<()>>>,
    sock: Rc<UdpSocket>,
    pub(crate) calls: RefCell<CallTable<Outcome>>,
    state: Cell<State>,
    /// Callers waiting for the session to open.
    waiters: RefCell<Vec<Waker>>,
    /// Datagrams received from the server so far: a call that sees it unchanged over
    /// `peer_timeout` gives up. A counter rather than a timestamp: no clock read per reply.
    heard: Cell<u64>,
    /// When a datagram last came (the loop's clock, no read of its own): a busy-polling
    /// reader keeps spinning while calls wait and for `SPIN_LINGER` after that.
    active_at: Cell<Instant>,
    bufs: BufPool,
    config: DatagramConfig,
}

/// How long a busy-polling client keeps reading its socket directly after the last call or
/// datagram: back-to-back calls find the reader spinning, an idle connection costs nothing.
const SPIN_LINGER: Duration = Duration::from_millis(50);

impl DgramConn {
    pub(crate) fn new(addr: SocketAddr, mut config: DatagramConfig, max_in_flight: usize) -> io::Result<Rc<DgramConn>> {
        // Nothing larger can be sent; larger requests go over TCP.
        config.max_datagram = config.max_datagram.min(MAX_DATAGRAM);
        let sock = Rc::new(UdpSocket::connect(addr)?);
        let conn = Rc::new(DgramConn {
            reader: RefCell::new(None),
            sock: sock.clone(),
            calls: RefCell::new(CallTable::new(max_in_flight)),
            state: Cell::new(State::Closed),
            waiters: RefCell::new(Vec::new()),
            heard: Cell::new(0),
            active_at: Cell::new(Instant::now()),
            bufs: BufPool::default(),
            config,
        });
        *conn.reader.borrow_mut() = Some(spawn(read_replies(Rc::downgrade(&conn), sock)));
        Ok(conn)
    }

    /// A reply may come soon: calls are waiting, or the connection was used just now.
    fn expecting(&self) -> bool {
        !self.calls.borrow().is_empty()
            || runtime::turn_now().saturating_duration_since(self.active_at.get()) < SPIN_LINGER
    }

    fn set_state(&self, s: State) {
        self.state.set(s);
        self.waiters.borrow_mut().drain(..).for_each(Waker::wake);
    }

    /// Send one datagram now. Loss (a full socket buffer, a transient error) is left to the
    /// retransmission; `Err` only when nothing listens at the address.
    fn transmit(&self, datagram: &[u8]) -> Result<(), ()> {
        match self.sock.try_send(datagram) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                self.unreachable();
                Err(())
            }
            Err(e) => {
                tracing::trace!(error = %e, "datagram not sent; the retransmission covers it");
                Ok(())
            }
        }
    }

    /// Nothing listens at the server's address: fail every call (each may have run before
    /// the server went away) and make the next call reopen.
    fn unreachable(&self) {
        tracing::debug!("datagram server unreachable (port closed)");
        self.set_state(State::Unreachable);
        self.calls.borrow_mut().fail_all(|| Err(CallError::ConnectionLost));
    }

    fn send_hello(&self, id: u64) -> Result<(), ()> {
        let mut d = [0u8; HEADER_LEN + SESSION_BLOCK_LEN];
        let h = Header {
            kind: FrameKind::Hello,
            flags: FLAG_SESSION,
            request_id: 0,
            method_id: 0,
            deadline_us: 0,
            payload_len: SESSION_BLOCK_LEN as u32,
            status: 0,
        };
        h.write_to(&mut d);
        d[HEADER_LEN..].copy_from_slice(&session::encode_block(id));
        self.transmit(&d)
    }

    /// The open session's id, opening one first if needed (a hello, retransmitted like a
    /// request).
    async fn session(&self) -> Result<u64, CallError> {
        let mut timer: Option<(Backoff, Sleep)> = None;
        // Read the clock only while opening: an open session is the per-call path.
        let mut heard: Option<(u64, Instant)> = None;
        // Whether this caller has taken part in an opening (sent or waited on a hello): an
        // earlier refusal is news about the past, only one after that is an answer.
        let mut tried = false;
        poll_fn(|cx| loop {
            match self.state.get() {
                State::Open(id) => return Poll::Ready(Ok(id)),
                State::Closed => {
                    let id = crate::trace::next_u64();
                    self.state.set(State::Opening(id));
                    tried = true;
                    let _ = self.send_hello(id);
                }
                State::Unreachable if !tried => self.state.set(State::Closed),
                State::Unreachable => {
                    self.state.set(State::Closed);
                    return Poll::Ready(Err(CallError::Connect(io::Error::from_raw_os_error(libc::ECONNREFUSED))));
                }
                State::Refused(_) if !tried => self.state.set(State::Closed),
                State::Refused(code) => {
                    self.state.set(State::Closed);
                    return Poll::Ready(Err(CallError::from_wire(code, 0, b"session refused")));
                }
                State::Opening(id) => {
                    tried = true;
                    let (backoff, sleep) = timer.get_or_insert_with(|| {
                        let now = Instant::now();
                        heard = Some((self.heard.get(), now));
                        let b = Backoff::new(now, self.config.retransmit, self.config.max_retransmit);
                        (b, sleep_until(b.due()))
                    });
                    let mut waiters = self.waiters.borrow_mut();
                    if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        waiters.push(cx.waker().clone());
                    }
                    drop(waiters);
                    if Pin::new(&mut *sleep).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let now = Instant::now();
                    let heard = heard.get_or_insert((self.heard.get(), now));
                    if self.heard.get() != heard.0 {
                        *heard = (self.heard.get(), now);
                    } else if now.saturating_duration_since(heard.1) >= self.config.peer_timeout {
                        self.set_state(State::Closed);
                        let e = io::Error::new(io::ErrorKind::TimedOut, "no answer to the datagram session hello");
                        return Poll::Ready(Err(CallError::Connect(e)));
                    }
                    let _ = self.send_hello(id);
                    backoff.resent(now);
                    *sleep = sleep_until(backoff.due());
                }
            }
        })
        .await
    }

    fn take_buf(&self) -> BytesMut {
        self.bufs.take()
    }

    fn recycle(&self, buf: BytesMut) {
        self.bufs.put(buf);
    }

    /// One call as a datagram, retransmitted until answered. `TooLarge` when the request
    /// does not fit a datagram (nothing was sent).
    pub(crate) async fn call(
        &self,
        method_id: u32,
        deadline: Option<Instant>,
        trace: Option<[u8; TRACE_BLOCK_LEN]>,
        encode: &Encoder<'_>,
    ) -> Result<Bytes, DgramError> {
        // A call refused as "unknown session" after one transmission ran nowhere (the one
        // server that got it did not know the session), so it may go again on a new one.
        let mut fresh_session_retries = 2;
        loop {
            let sid = self.session().await?;
            let id = self.calls.borrow_mut().start().map_err(|_| CallError::Overloaded { remote: false })?;
            let mut guard = PendingCall { conn: self, id, sid, done: false };
            let mut prefix = [0u8; SESSION_BLOCK_LEN + TRACE_BLOCK_LEN];
            prefix[..SESSION_BLOCK_LEN].copy_from_slice(&session::encode_block(sid));
            let mut plen = SESSION_BLOCK_LEN;
            if let Some(t) = &trace {
                prefix[SESSION_BLOCK_LEN..].copy_from_slice(t);
                plen += TRACE_BLOCK_LEN;
            }
            let budget_us = wire_budget(deadline);
            let mut buf = self.take_buf();
            let max_payload = self.config.max_datagram.saturating_sub(HEADER_LEN);
            let res = encode(&mut buf, max_payload, &prefix[..plen], &mut |len| {
                let mut h = Header::request(id, method_id, budget_us, len);
                h.flags |= FLAG_SESSION | if trace.is_some() { FLAG_TRACE } else { 0 };
                h
            });
            if let Err(e) = res {
                guard.forget();
                self.recycle(buf);
                return Err(match e {
                    EncodeError::TooLarge { .. } => DgramError::TooLarge,
                    e => CallError::Encode(e).into(),
                });
            }
            // The trailing padding is optional in a datagram: leave it off.
            buf.truncate(datagram_len(&buf));
            if self.transmit(&buf).is_err() {
                guard.forget();
                self.recycle(buf);
                self.state.set(State::Closed);
                let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
                return Err(CallError::Connect(refused).into());
            }
            // After the send, so off the caller's critical path.
            let now = Instant::now();
            let mut backoff = Backoff::new(now, self.config.retransmit, self.config.max_retransmit);
            let mut timer = sleep_until(backoff.due());
            let mut heard = (self.heard.get(), now);
            // Failed here rather than answered: the slot is still taken and the server may
            // still run the call, so the guard frees the one and cancels the other.
            let mut gave_up = false;
            let outcome = poll_fn(|cx| {
                if let Poll::Ready(r) = self.calls.borrow_mut().poll_result(id, cx.waker()) {
                    return Poll::Ready(r);
                }
                loop {
                    if Pin::new(&mut timer).poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let now = Instant::now();
                    if self.heard.get() != heard.0 {
                        heard = (self.heard.get(), now);
                    } else if now.saturating_duration_since(heard.1) >= self.config.peer_timeout {
                        gave_up = true;
                        return Poll::Ready(Some(Err(CallError::ConnectionLost)));
                    }
                    if deadline.is_some() {
                        // The copy carries what is left of the budget, not the first one's.
                        buf[20..24].copy_from_slice(&wire_budget(deadline).to_le_bytes());
                    }
                    if self.transmit(&buf).is_err() {
                        gave_up = true;
                        return Poll::Ready(Some(Err(CallError::ConnectionLost)));
                    }
                    backoff.resent(now);
                    timer = sleep_until(backoff.due());
                }
            })
            .await;
            guard.done = !gave_up;
            drop(guard);
            self.recycle(buf);
            match outcome {
                Some(Ok((h, payload))) if h.kind == FrameKind::Response => return Ok(payload),
                Some(Ok((h, _))) if ErrorCode::from_u16(h.status) == ErrorCode::SessionUnknown => {
                    if self.state.get() == State::Open(sid) {
                        self.state.set(State::Closed);
                    }
                    if backoff.sent == 1 && fresh_session_retries > 0 {
                        fresh_session_retries -= 1;
                        continue;
                    }
                    return Err(CallError::ConnectionLost.into());
                }
                Some(Ok((h, payload))) => {
                    return Err(CallError::from_wire(ErrorCode::from_u16(h.status), method_id, &payload).into())
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(CallError::ConnectionLost.into()),
            }
        }
    }

    fn on_datagram(&self, datagram: Bytes, n: usize) {
        let h = match decode_datagram(&datagram[..n], MAX_DATAGRAM as u32) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "malformed datagram from the server dropped");
                return;
            }
        };
        self.heard.set(self.heard.get().wrapping_add(1));
        self.active_at.set(runtime::turn_now());
        let payload = datagram.slice(HEADER_LEN..HEADER_LEN + h.payload_len as usize);
        match h.kind {
            FrameKind::Response | FrameKind::Error if h.request_id != 0 => {
                // Unknown ids are late answers to calls given up on: dropped.
                self.calls.borrow_mut().complete(h.request_id, Ok((h, payload)));
            }
            FrameKind::Error => {
                // Connection-level: the server refused our hello.
                if let State::Opening(_) = self.state.get() {
                    self.set_state(State::Refused(ErrorCode::from_u16(h.status)));
                }
            }
            FrameKind::Hello => match session::split(&h, payload) {
                Ok((Some(id), _)) if self.state.get() == State::Opening(id) => self.set_state(State::Open(id)),
                _ => {}
            },
            FrameKind::Pending => {}
            kind => tracing::debug!(?kind, "unexpected frame kind from a datagram server dropped"),
        }
    }
}

/// Gives up on a call whose future is dropped: forgets it, and tells the server (best
/// effort; a lost cancel only means the handler runs to the end).
struct PendingCall<'a> {
    conn: &'a DgramConn,
    id: u64,
    sid: u64,
    done: bool,
}

impl PendingCall<'_> {
    /// Nothing was sent: just free the id.
    fn forget(mut self) {
        self.conn.calls.borrow_mut().cancel(self.id);
        self.done = true;
    }
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        if !self.done && self.conn.calls.borrow_mut().cancel(self.id) {
            let mut d = [0u8; HEADER_LEN + SESSION_BLOCK_LEN];
            let mut h = Header::cancel(self.id);
            h.flags = FLAG_SESSION;
            h.payload_len = SESSION_BLOCK_LEN as u32;
            h.write_to(&mut d);
            d[HEADER_LEN..].copy_from_slice(&session::encode_block(self.sid));
            let _ = self.conn.sock.try_send(&d);
        }
    }
}

/// A frame's length without its trailing padding.
fn datagram_len(frame: &[u8]) -> usize {
    HEADER_LEN + u32::from_le_bytes(frame[24..28].try_into().expect("a whole header")) as usize
}

/// Receive datagrams into a shared buffer, each padded to 16 so the next starts aligned, and
/// hand each on as a `Bytes` view (its payload is read in place).
///
/// Buffers are recycled rather than reallocated: when the current one runs short it is
/// retired as a spare, and a spare whose datagrams have all been dropped is reused in place
/// (the datagram just handed out is usually still alive when the next receive begins, so
/// growing the current buffer would allocate every time).
///
/// `spin` says whether a datagram is expected soon: on a busy-polling core the socket is then
/// read directly every loop turn (see `MultiReceiver::recv_from`). A `client` lets the callers
/// each reply woke run before it reads again.
pub(crate) async fn receive_loop(
    sock: &UdpSocket,
    spin: impl Fn() -> bool,
    client: bool,
    mut on: impl FnMut(io::Result<(Bytes, usize, SocketAddr)>) -> bool,
) {
    const CHUNK: usize = 4 * MAX_DATAGRAM;
    const ROOM: usize = MAX_DATAGRAM + 16;
    let mut buf = BytesMut::with_capacity(CHUNK);
    let mut spares: VecDeque<BytesMut> = VecDeque::with_capacity(4);
    // Dropped (its multishot receive cancelled) before the caller drops the socket.
    let mut rx = sock.receiver();
    loop {
        if buf.capacity() - buf.len() < ROOM && !buf.try_reclaim(ROOM) {
            let next = spares.iter_mut().position(|b| b.try_reclaim(CHUNK)).and_then(|i| spares.remove(i));
            let old = std::mem::replace(&mut buf, next.unwrap_or_else(|| BytesMut::with_capacity(CHUNK)));
            if spares.len() == spares.capacity() {
                spares.pop_front();
            }
            spares.push_back(old);
        }
        let (res, b) = rx.recv_from(buf, &spin, client).await;
        buf = b;
        let item = match res {
            Ok((n, peer)) => {
                buf.resize(buf.len() + n.next_multiple_of(16) - n, 0);
                Ok((buf.split().freeze(), n, peer))
            }
            Err(e) => {
                buf.clear();
                Err(e)
            }
        };
        if !on(item) {
            return;
        }
    }
}

async fn read_replies(conn: Weak<DgramConn>, sock: Rc<UdpSocket>) {
    let spin = || conn.upgrade().is_some_and(|c| c.expecting());
    receive_loop(&sock, spin, true, |item| {
        let Some(conn) = conn.upgrade() else { return false };
        match item {
            Ok((d, n, _)) => conn.on_datagram(d, n),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => conn.unreachable(),
            Err(e) => tracing::debug!(error = %e, "datagram receive failed"),
        }
        true
    })
    .await;
}

/// The server side: one UDP socket beside a server's TCP listener, on the same port.
pub(crate) struct DgramEndpoint {
    sock: UdpSocket,
    services: Rc<[Service]>,
    load: Rc<ServerState>,
    // Replies are cached as the buffers they were encoded in: freezing one into `Bytes`
    // would allocate a shared header per call.
    sessions: RefCell<Sessions<SocketAddr, BytesMut, JoinHandle<()>>>,
    bufs: BufPool,
    last_sweep: Cell<Instant>,
    idle: Duration,
}

impl std::fmt::Debug for DgramEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DgramEndpoint").field("sessions", &self.sessions.borrow().len()).finish()
    }
}

impl DgramEndpoint {
    pub(crate) fn new(
        sock: UdpSocket,
        services: Rc<[Service]>,
        load: Rc<ServerState>,
        config: &super::server::ServerConfig,
    ) -> Rc<DgramEndpoint> {
        let slots = u32::try_from(config.conn.max_in_flight).unwrap_or(u32::MAX);
        let idle = config.session_idle;
        let sessions = Sessions::new(config.max_sessions, slots, idle, config.reply_cache_bytes);
        Rc::new(DgramEndpoint {
            sock,
            services,
            load,
            sessions: RefCell::new(sessions),
            bufs: BufPool::default(),
            last_sweep: Cell::new(Instant::now()),
            idle,
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Serve datagrams until dropped; then every handler still running is cancelled.
    pub(crate) async fn serve(self: Rc<Self>) {
        let _stop = CancelRunning(self.clone());
        receive_loop(
            &self.sock,
            || true,
            false,
            |item| {
                match item {
                    Ok((d, n, peer)) => self.on_datagram(d, n, peer),
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => tracing::debug!("oversized datagram dropped"),
                    // A client that went away answers our reply with an ICMP error: not ours to act on.
                    Err(e) => tracing::trace!(error = %e, "datagram receive error"),
                }
                true
            },
        )
        .await;
    }

    fn send(&self, datagram: &[u8], peer: SocketAddr) {
        if let Err(e) = self.sock.try_send_to(datagram, peer) {
            // Lost like any datagram: the client's retransmission brings the cached reply.
            tracing::trace!(error = %e, %peer, "reply datagram not sent");
        }
    }

    /// Send a header-only or short frame that is not cached.
    fn send_uncached(&self, peer: SocketAddr, header: Header, payload: &[u8]) {
        let mut buf = self.take_buf();
        if encode_raw(&mut buf, MAX_DATAGRAM, &[], payload, |_| header).is_ok() {
            buf.truncate(datagram_len(&buf));
            self.send(&buf, peer);
        }
        self.recycle(buf);
    }

    fn take_buf(&self) -> BytesMut {
        self.bufs.take()
    }

    fn recycle(&self, buf: BytesMut) {
        self.bufs.put(buf);
    }

    fn on_datagram(self: &Rc<Self>, d: Bytes, n: usize, peer: SocketAddr) {
        let h = match decode_datagram(&d[..n], MAX_DATAGRAM as u32) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, %peer, "malformed datagram dropped");
                return;
            }
        };
        let payload = d.slice(HEADER_LEN..HEADER_LEN + h.payload_len as usize);
        // The loop's clock, within a turn of now: no clock read per request.
        let now = runtime::turn_now();
        if now.saturating_duration_since(self.last_sweep.get()) >= self.idle / 8 {
            self.last_sweep.set(now);
            let (gone, tasks) = self.sessions.borrow_mut().expire(now);
            if gone > 0 {
                tracing::debug!(sessions = gone, stopped = tasks.len(), "silent datagram sessions expired");
            }
            for task in tasks {
                self.leave();
                drop(task);
            }
        }
        match h.kind {
            FrameKind::Hello => {
                let Ok((Some(sid), _)) = session::split(&h, payload) else { return };
                match self.sessions.borrow_mut().hello(peer, sid, now) {
                    // The echo accepts: the hello's own bytes.
                    Ok(()) => self.send(&d[..n], peer),
                    Err(session::SessionsFull) => {
                        tracing::warn!(%peer, "datagram session refused: too many sessions");
                        let detail = b"too many datagram sessions";
                        self.send_uncached(
                            peer,
                            Header::error(0, 0, ErrorCode::Overloaded, detail.len() as u32),
                            detail,
                        );
                    }
                }
            }
            FrameKind::Request => self.on_request(h, payload, peer, now),
            FrameKind::Cancel => {
                let Ok((Some(sid), _)) = session::split(&h, payload) else { return };
                let task = self.sessions.borrow_mut().cancel(peer, sid, h.request_id);
                if task.is_some() {
                    self.leave();
                }
                // Dropping the handle stops the handler; no reply is sent.
                drop(task);
            }
            kind => tracing::debug!(?kind, %peer, "unexpected frame kind on a datagram endpoint dropped"),
        }
    }

    fn leave(&self) {
        let n = &self.load.in_flight;
        n.set(n.get().saturating_sub(1));
    }

    fn on_request(self: &Rc<Self>, h: Header, payload: Bytes, peer: SocketAddr, now: Instant) {
        let (id, method_id) = (h.request_id, h.method_id);
        let (sid, payload) = match session::split(&h, payload) {
            Ok((Some(sid), rest)) if id != 0 => (sid, rest),
            _ => {
                // Without a session (or with id 0) the call cannot be deduplicated: refuse.
                tracing::debug!(%peer, "datagram request without a session block (or id 0) dropped");
                return;
            }
        };
        let mut released = None;
        let mut sessions = self.sessions.borrow_mut();
        match sessions.admit(peer, sid, id, now, &mut released) {
            Admit::Run => {}
            Admit::Running => {
                drop(sessions);
                return self.send_uncached(peer, Header { kind: FrameKind::Pending, ..Header::cancel(id) }, &[]);
            }
            Admit::Replay(reply) => return self.send(reply, peer),
            Admit::ReplyDropped => {
                drop(sessions);
                tracing::debug!(%peer, "retransmitted call whose reply was dropped from the cache");
                let detail = b"the call ran, but its reply was dropped from the server's reply cache (memory budget); it does not run again";
                let h = Header::error(id, method_id, ErrorCode::Internal, detail.len() as u32);
                return self.send_uncached(peer, h, detail);
            }
            Admit::Stale => return,
            Admit::UnknownSession => {
                drop(sessions);
                let detail = b"no such datagram session here (server restarted, or the session expired)";
                let h = Header::error(id, method_id, ErrorCode::SessionUnknown, detail.len() as u32);
                return self.send_uncached(peer, h, detail);
            }
            Admit::TooManySlots => {
                drop(sessions);
                crate::metrics::refused(ErrorCode::Overloaded);
                let detail = b"request slot beyond the server's in-flight limit";
                let h = Header::error(id, method_id, ErrorCode::Overloaded, detail.len() as u32);
                return self.send_uncached(peer, h, detail);
            }
        }
        drop(sessions);
        match released {
            Some(Released::Reply(r)) => self.recycle(r),
            Some(Released::Running(task)) => {
                self.leave();
                drop(task);
            }
            None => {}
        }
        let n = &self.load.in_flight;
        n.set(n.get() + 1);
        // Admitted: from here every answer is cached, so a retransmission gets the same one.
        let reply = Reply::datagram(self.clone(), peer, sid, id);
        let (trace, payload) = match crate::proto::trace::split(&h, payload) {
            Ok(split) => split,
            Err(e) => return reply.err(method_id, &Status::new(e.code(), e.to_string())),
        };
        let svc = match super::server::admit(&self.services, &self.load, method_id, None) {
            Ok(svc) => svc,
            Err(status) => return reply.err(method_id, &status),
        };
        // From a fresh clock: the loop's may be a turn's worth of handlers old.
        let deadline = (h.deadline_us > 0).then(|| Instant::now() + Duration::from_micros(h.deadline_us.into()));
        let ctx = CallContext { method_id, request_id: id, deadline, peer: Some(peer), principal: None, trace };
        match svc.dispatch(ctx, payload, Some(reply)) {
            Dispatched::Running(task) => {
                if let Some(task) = self.sessions.borrow_mut().attach(peer, sid, id, task) {
                    drop(task);
                }
            }
            Dispatched::Done => {}
            // `admit` found the method, so this is not expected; answer rather than panic.
            Dispatched::Unknown => {
                self.reply_error(peer, sid, id, method_id, ErrorCode::UnknownMethod, "no such method")
            }
        }
    }

    /// A handler's reply: send it and keep it for retransmissions.
    pub(crate) fn reply_value<T: Payload>(&self, peer: SocketAddr, sid: u64, id: u64, method_id: u32, value: &T) {
        let mut buf = self.take_buf();
        if let Err(e) =
            encode_frame(&mut buf, MAX_DATAGRAM - HEADER_LEN, &[], value, |len| Header::response(id, method_id, len))
        {
            tracing::warn!(method_id, error = %e, "datagram reply could not be encoded");
            let (code, detail) = match e {
                EncodeError::TooLarge { len, max } => (
                    ErrorCode::TooLarge,
                    format!("reply of {len} bytes does not fit a datagram (at most {max}); call over TCP"),
                ),
                e => (ErrorCode::Internal, e.to_string()),
            };
            return self.reply_error(peer, sid, id, method_id, code, &detail);
        }
        self.finish(peer, sid, id, buf);
    }

    pub(crate) fn reply_error(
        &self,
        peer: SocketAddr,
        sid: u64,
        id: u64,
        method_id: u32,
        code: ErrorCode,
        detail: &str,
    ) {
        let mut buf = self.take_buf();
        let detail = crate::proto::frame::truncate_detail(detail);
        let res =
            encode_raw(&mut buf, MAX_DATAGRAM, &[], detail.as_bytes(), |len| Header::error(id, method_id, code, len));
        debug_assert!(res.is_ok(), "a bounded error detail always fits");
        self.finish(peer, sid, id, buf);
    }

    fn finish(&self, peer: SocketAddr, sid: u64, id: u64, mut buf: BytesMut) {
        buf.truncate(datagram_len(&buf));
        self.send(&buf, peer);
        let mut sessions = self.sessions.borrow_mut();
        let (kept, task) = sessions.finish(peer, sid, id, buf);
        match kept {
            Kept::Cached => self.leave(),
            // Larger than the whole cache budget: sent once, not kept.
            Kept::Dropped(b) => {
                self.leave();
                self.recycle(b);
            }
            // The client cancelled the call (already counted out) or moved on.
            Kept::NotRunning(b) => self.recycle(b),
        }
        // Older replies that made room for this one.
        while let Some(b) = sessions.pop_evicted() {
            self.recycle(b);
        }
        drop(sessions);
        // The handler's own task is finishing now: let it, rather than cancel it by drop.
        if let Some(t) = task {
            t.detach();
        }
    }
}

/// Cancels the handlers still running when the endpoint stops serving.
struct CancelRunning(Rc<DgramEndpoint>);

impl Drop for CancelRunning {
    fn drop(&mut self) {
        let tasks = self.0.sessions.borrow_mut().clear();
        let n = &self.0.load.in_flight;
        n.set(n.get().saturating_sub(tasks.len() as u32));
        drop(tasks);
    }
}
