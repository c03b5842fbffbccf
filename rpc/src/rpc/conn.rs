//! What clients and servers share about a TCP connection: limits, the frame reader and the
//! outbox with its writer task.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::dgram::DatagramConfig;
use crate::buf::{encode_frame, encode_raw, EncodeError, Payload};
use crate::driver::multishot::MultiReceiver;
use crate::net::TcpStream;
use crate::proto::frame::{decode_frame, Decoded, ErrorCode, FrameError, Header, DEFAULT_MAX_PAYLOAD};
use crate::runtime::{self, time::timeout_at};
use crate::tls::{Session, TlsConfig, TlsError};

/// Limits and timeouts of reliable connections, shared by clients and servers.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// Largest payload accepted or sent (default 16 MiB).
    pub max_payload: usize,
    /// Calls in flight per connection; more get `Overloaded` (default 1024).
    pub max_in_flight: usize,
    /// Stop reading from a connection while this many response bytes wait to be sent to it
    /// (a peer that never reads cannot make us buffer without bound). Default 4 MiB.
    pub max_outbox: usize,
    /// A frame begun but not finished within this time closes the connection, however the
    /// peer paces its bytes (a peer that sends half a frame, or one byte now and then, cannot
    /// hold the connection open). Default 10 s.
    pub frame_timeout: Duration,
    /// Bytes read per receive, and the initial buffer size (default 64 KiB).
    pub read_chunk: usize,
    /// Sent data left unacknowledged this long aborts the connection (TCP_USER_TIMEOUT;
    /// default 5 s; `None`: the kernel's, which retries for many minutes). A peer cut off by
    /// a partition or a dead host then fails the connection, and the next call reconnects
    /// as soon as the path is back — instead of waiting out TCP's retransmission backoff,
    /// which doubles for as long as the cut lasted. Idle connections are not affected.
    pub tcp_user_timeout: Option<Duration>,
    /// Mutual TLS for every connection made or accepted with this configuration; `None`
    /// (the default) is plain TCP. Never a fallback: with TLS configured, a connection
    /// whose handshake fails carries no calls. The handshake must finish within
    /// `frame_timeout`.
    pub tls: Option<TlsConfig>,
    /// What a client carries its calls over (default TCP). Servers answer on TCP always, and
    /// also over UDP when their [`ServerConfig::datagram`](crate::ServerConfig) is on.
    pub transport: Transport,
    /// Retransmission and size settings of the datagram transport.
    pub datagram: DatagramConfig,
}

/// How a client carries reliable calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// A TCP connection (with TLS if configured). The default.
    #[default]
    Tcp,
    /// Datagrams with retransmission and at-most-once execution at the server (see
    /// `PROTOCOL.md`, "Datagram sessions"): the lowest latency for small calls. Requests too
    /// large for a datagram go over TCP to the same address; a reply too large for one fails
    /// with `TooLarge`. Plain only: a client configured with TLS fails its calls with a
    /// connect error rather than send them unprotected.
    Udp,
}

thread_local! {
    static CORE_DEFAULT: std::cell::RefCell<Option<ConnConfig>> = const { std::cell::RefCell::new(None) };
}

pub(crate) fn set_core_default(config: ConnConfig) {
    CORE_DEFAULT.with(|c| *c.borrow_mut() = Some(config));
}

impl ConnConfig {
    /// The settings this core was started with ([`crate::Config::conn`]): what
    /// [`Client::new`](crate::Client::new) and [`Server::bind`](crate::Server::bind) use.
    /// Outside a runtime, the defaults (plain TCP).
    pub fn for_this_core() -> ConnConfig {
        CORE_DEFAULT.with(|c| c.borrow().clone()).unwrap_or_default()
    }
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            max_payload: DEFAULT_MAX_PAYLOAD as usize,
            max_in_flight: 1024,
            max_outbox: 4 << 20,
            frame_timeout: Duration::from_secs(10),
            read_chunk: 64 << 10,
            tcp_user_timeout: Some(Duration::from_secs(5)),
            tls: None,
            transport: Transport::Tcp,
            datagram: DatagramConfig::default(),
        }
    }
}

/// Why reading frames stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Protocol(FrameError),
    /// End of stream in the middle of a frame, or a frame that stalled.
    Truncated,
    /// The TLS session failed (a bad record, or the peer's alert).
    Tls(TlsError),
}

/// A frame still missing at least this many bytes is read without the receive ring in
/// between (see `MultiReceiver::recv_direct`); smaller reads keep the multishot armed.
const DIRECT_READ: usize = 32 << 10;

/// On a busy-polling core, a connection that received a frame this recently is read directly
/// on every loop turn (see `MultiReceiver::recv_spinning`, at most 16 sockets per core);
/// quieter ones wait on the driver, so idle connections cost the spinning core nothing.
const SPIN_LINGER: Duration = Duration::from_millis(50);

/// Retired read buffers kept for reuse per connection.
const MAX_SPARES: usize = 4;

/// Reads whole frames from a stream into a shared buffer; each frame is handed out as a
/// `Bytes` view of that buffer (no copy).
///
/// Buffers are recycled rather than reallocated: when the current one runs out of room it is
/// kept as a spare, and a spare whose frames have all been dropped is reclaimed in place, so
/// a steady stream of calls reads without touching the heap.
pub(crate) struct FrameReader {
    // Declared before the stream it reads, so it is dropped (its receive cancelled) first.
    rx: Option<MultiReceiver>,
    stream: Option<Rc<TcpStream>>,
    buf: BytesMut,
    spares: VecDeque<BytesMut>,
    max_payload: u32,
    chunk: usize,
    frame_timeout: Duration,
    /// When the frame now partly read must be complete.
    frame_deadline: Option<Instant>,
    /// With TLS: the session, ciphertext received but not yet decrypted into `buf`, and the
    /// outbox whose writer sends what rustls queues while reading (alerts, key updates).
    tls: Option<(Rc<Session>, BytesMut, Rc<Outbox>)>,
    /// The peer closed its TLS side (close_notify).
    peer_closed: bool,
    /// The last frame was large: read the next one directly too.
    large: bool,
    /// Busy-poll: when the last frame arrived (see [`SPIN_LINGER`]).
    last_frame: Option<Instant>,
}

impl FrameReader {
    pub(crate) fn new(config: &ConnConfig) -> Self {
        FrameReader {
            rx: None,
            stream: None,
            buf: BytesMut::with_capacity(config.read_chunk),
            spares: VecDeque::with_capacity(MAX_SPARES),
            max_payload: config.max_payload.min(u32::MAX as usize) as u32,
            chunk: config.read_chunk,
            frame_timeout: config.frame_timeout,
            frame_deadline: None,
            tls: None,
            peer_closed: false,
            large: false,
            last_frame: None,
        }
    }

    /// A reader of frames decrypted by `session`.
    pub(crate) fn with_tls(config: &ConnConfig, session: Rc<Session>, outbox: Rc<Outbox>) -> Self {
        let mut r = FrameReader::new(config);
        r.tls = Some((session, BytesMut::with_capacity(config.read_chunk), outbox));
        r
    }

    /// Ensure room for the rest of this frame (it may be large) and at least a quarter chunk.
    fn make_room(&mut self, need: usize) {
        let want = need.max(self.chunk / 4);
        if self.buf.capacity() - self.buf.len() >= want || self.buf.try_reclaim(want) {
            return;
        }
        // Frames handed out still pin the current buffer: move the partial frame (less than
        // one frame) to a reclaimable spare, or to a new buffer if every spare is pinned.
        let total = want + self.buf.len();
        let next = self.spares.iter_mut().position(|b| b.try_reclaim(total)).and_then(|i| self.spares.remove(i));
        let mut next = next.unwrap_or_else(|| BytesMut::with_capacity(total.max(self.chunk)));
        next.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, next);
        old.clear();
        if self.spares.len() == MAX_SPARES {
            self.spares.pop_front();
        }
        self.spares.push_back(old);
    }

    /// The next frame's header and payload, `Ok(None)` at a clean end of stream.
    pub(crate) async fn next(&mut self, stream: &Rc<TcpStream>) -> Result<Option<(Header, Bytes)>, ReadError> {
        if self.rx.is_none() {
            self.rx = Some(stream.receiver());
            self.stream = Some(stream.clone());
        }
        loop {
            let need = match decode_frame(&self.buf, self.max_payload) {
                Ok(Decoded::Frame { header, len }) => {
                    self.frame_deadline = None;
                    self.large = len >= DIRECT_READ;
                    if runtime::busy_poll_mode() {
                        self.last_frame = Some(runtime::turn_now());
                    }
                    let frame = self.buf.split_to(len).freeze();
                    let start = crate::proto::frame::HEADER_LEN;
                    let payload = frame.slice(start..start + header.payload_len as usize);
                    return Ok(Some((header, payload)));
                }
                Ok(Decoded::NeedMore(n)) => n,
                Err(e) => return Err(ReadError::Protocol(e)),
            };
            self.make_room(if self.large { need.max(self.chunk) } else { need });
            if self.peer_closed {
                return if self.buf.is_empty() { Ok(None) } else { Err(ReadError::Truncated) };
            }
            if let Some((session, _, _)) = &self.tls {
                if session.has_early() {
                    let session = session.clone();
                    self.peer_closed = session.decrypt(&[], &mut self.buf).map_err(ReadError::Tls)?;
                    continue;
                }
            }
            let partial = !self.buf.is_empty();
            // Plain TCP receives straight into the frame buffer; TLS into its ciphertext buffer.
            let target = match &mut self.tls {
                None => std::mem::take(&mut self.buf),
                Some((_, cipher, _)) => {
                    let mut c = std::mem::take(cipher);
                    c.clear();
                    c.reserve(self.chunk);
                    c
                }
            };
            let rx = self.rx.as_mut().expect("set above");
            // The rest of a large frame is read straight into its buffer; after a large frame
            // so is the next one's start, since the kernel would otherwise fill the whole
            // receive ring (and we copy it out) before we learn the frame is large again.
            let direct = need >= DIRECT_READ || self.large;
            let spin_until = self.last_frame.map(|t| t + SPIN_LINGER);
            let read = async move {
                // `last_frame` is only ever set on a busy-polling core.
                let target = match spin_until {
                    Some(until) => match rx.recv_spinning(target, &|| runtime::turn_now() < until).await {
                        (Some(res), target) => return (res, target),
                        (None, target) => target,
                    },
                    None => target,
                };
                if direct {
                    rx.recv_direct(target).await
                } else {
                    rx.recv(target).await
                }
            };
            let (res, received) = if partial {
                // One deadline per frame, set when its first bytes arrive. A timeout ends the
                // connection, so what a dropped receive had read does not matter.
                let deadline = *self.frame_deadline.get_or_insert_with(|| Instant::now() + self.frame_timeout);
                match timeout_at(deadline, read).await {
                    Ok(r) => r,
                    Err(_) => return Err(ReadError::Truncated),
                }
            } else {
                read.await
            };
            match &mut self.tls {
                None => self.buf = received,
                Some((_, cipher, _)) => *cipher = received,
            }
            match res {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err(ReadError::Truncated),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
            let Some((session, cipher, outbox)) = &self.tls else { continue };
            self.peer_closed = session.decrypt(cipher, &mut self.buf).map_err(ReadError::Tls)?;
            if session.wants_write() {
                outbox.wake_writer();
            }
        }
    }
}

/// Frames waiting to be written to one connection, and the writer task's wake-up.
pub(crate) struct Outbox {
    pending: RefCell<BytesMut>,
    writer: RefCell<Option<Waker>>,
    /// Tasks waiting for the outbox to drain below its limit.
    drained: RefCell<Vec<Waker>>,
    closed: Cell<bool>,
    max_payload: usize,
    max_outbox: usize,
}

impl Outbox {
    pub(crate) fn new(config: &ConnConfig) -> Rc<Outbox> {
        Rc::new(Outbox {
            pending: RefCell::new(BytesMut::with_capacity(config.read_chunk)),
            writer: RefCell::new(None),
            drained: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            max_payload: config.max_payload,
            max_outbox: config.max_outbox,
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    pub(crate) fn wake_writer(&self) {
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    /// Serialize a frame with `value` as payload straight into the outbox.
    pub(crate) fn push<T: Payload>(&self, value: &T, header: impl FnOnce(u32) -> Header) -> Result<(), EncodeError> {
        self.push_after(&[], value, header)
    }

    /// [`Outbox::push`] with `prefix` (a trace-context block) before the archive.
    pub(crate) fn push_after<T: Payload>(
        &self,
        prefix: &[u8],
        value: &T,
        header: impl FnOnce(u32) -> Header,
    ) -> Result<(), EncodeError> {
        encode_frame(&mut self.pending.borrow_mut(), self.max_payload, prefix, value, header)?;
        self.wake_writer();
        Ok(())
    }

    /// Queue a frame that `encode` appends to the outbox's buffer (given the payload limit).
    pub(crate) fn push_with(
        &self,
        encode: impl FnOnce(&mut BytesMut, usize) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        encode(&mut self.pending.borrow_mut(), self.max_payload)?;
        self.wake_writer();
        Ok(())
    }

    /// Queue a frame with a raw payload.
    pub(crate) fn push_raw(&self, payload: &[u8], header: impl FnOnce(u32) -> Header) -> Result<(), EncodeError> {
        self.push_raw_after(&[], payload, header)
    }

    /// [`Outbox::push_raw`] with `prefix` (a trace-context block) before the payload.
    pub(crate) fn push_raw_after(
        &self,
        prefix: &[u8],
        payload: &[u8],
        header: impl FnOnce(u32) -> Header,
    ) -> Result<(), EncodeError> {
        encode_raw(&mut self.pending.borrow_mut(), self.max_payload, prefix, payload, header)?;
        self.wake_writer();
        Ok(())
    }

    /// Queue an error frame with a text detail. Never fails: the detail is bounded.
    pub(crate) fn push_error(&self, request_id: u64, method_id: u32, code: ErrorCode, detail: &str) {
        let detail = crate::proto::frame::truncate_detail(detail);
        let res = self.push_raw(detail.as_bytes(), |len| Header::error(request_id, method_id, code, len));
        debug_assert!(res.is_ok(), "a bounded error detail always fits");
    }

    /// Close: the writer flushes what is queued, then stops.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        self.wake_writer();
        self.drained.borrow_mut().drain(..).for_each(Waker::wake);
    }

    /// Wait until queued bytes are under the limit (back-pressure for readers).
    pub(crate) async fn ready(&self) {
        poll_fn(|cx| {
            if self.closed.get() || self.pending.borrow().len() < self.max_outbox {
                Poll::Ready(())
            } else {
                self.drained.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The writer task's body: send whatever is queued, batching every frame queued since
    /// the last send into one syscall, until closed (then flush and stop) or a send fails.
    pub(crate) async fn run_writer(self: Rc<Self>, stream: Rc<TcpStream>, tls: Option<Rc<Session>>) -> io::Result<()> {
        let mut spare = BytesMut::with_capacity(self.pending.borrow().capacity());
        let mut cipher = BytesMut::new();
        loop {
            let batch = poll_fn(|cx| {
                let mut pending = self.pending.borrow_mut();
                // With TLS, records rustls queued while reading (alerts, key updates) go too.
                if !pending.is_empty() || tls.as_ref().is_some_and(|t| t.wants_write()) {
                    // Double-buffer: new frames go into `spare` while this batch is in flight.
                    std::mem::swap(&mut *pending, &mut spare);
                    return Poll::Ready(Some(std::mem::take(&mut spare)));
                }
                if self.closed.get() {
                    return Poll::Ready(None);
                }
                *self.writer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            let Some(mut batch) = batch else { return Ok(()) };
            let res = match &tls {
                None => {
                    let (res, buf) = stream.send_all(batch).await;
                    batch = buf;
                    res
                }
                Some(session) => {
                    cipher.clear();
                    match session.encrypt(&batch, &mut cipher) {
                        Ok(()) => {
                            let (res, buf) = stream.send_all(std::mem::take(&mut cipher)).await;
                            cipher = buf;
                            res
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = res {
                self.close();
                return Err(e);
            }
            batch.clear();
            spare = batch;
            if self.pending.borrow().len() < self.max_outbox {
                self.drained.borrow_mut().drain(..).for_each(Waker::wake);
            }
        }
    }
}
