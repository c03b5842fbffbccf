//! The reliable (TCP) client: many calls in flight on one connection, matched by request id,
//! with deadlines, cancellation on drop, and reconnection on next use.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::conn::{ConnConfig, FrameReader, Outbox, ReadError, Transport};
use super::dgram::{DgramConn, DgramError, Encoder};
use super::error::CallError;
use super::service::current_deadline;
use crate::buf::{encode_frame, encode_raw, Message, Payload, Validate};
use crate::net::TcpStream;
use crate::proto::calls::CallTable;
use crate::proto::frame::{ErrorCode, FrameError, FrameKind, Header};
use crate::proto::trace::{FLAG_TRACE, TRACE_BLOCK_LEN};
use crate::runtime::time::timeout_at;
use crate::runtime::{spawn, JoinHandle};

/// Per-call options.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// Give up after this long. Combined with (never longer than) the deadline inherited from
    /// the handler this call is made from, if any.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// Options with a timeout.
    pub fn timeout(d: Duration) -> Self {
        CallOptions { timeout: Some(d) }
    }
}

use super::dgram::Outcome;

struct Conn {
    outbox: Rc<Outbox>,
    calls: RefCell<CallTable<Outcome>>,
    stream: Rc<TcpStream>,
    _reader: JoinHandle<()>,
    _writer: JoinHandle<()>,
}

impl Conn {
    fn alive(&self) -> bool {
        !self.outbox.is_closed()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// A client of one server address, on the current core. Cheap to clone (shares the
/// connection).
#[derive(Clone)]
pub struct Client {
    inner: Rc<ClientInner>,
}

struct ClientInner {
    addr: SocketAddr,
    config: ConnConfig,
    conn: RefCell<Option<Rc<Conn>>>,
    /// The datagram session, with [`Transport::Udp`].
    dgram: RefCell<Option<Rc<DgramConn>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addr", &self.inner.addr).finish()
    }
}

impl Client {
    /// A client for `addr` with this core's connection settings
    /// ([`ConnConfig::for_this_core`]: TLS if the runtime was configured with it); connects on
    /// first use.
    pub fn new(addr: SocketAddr) -> Client {
        Client::with_config(addr, ConnConfig::for_this_core())
    }

    /// [`Client::new`] with explicit limits.
    pub fn with_config(addr: SocketAddr, config: ConnConfig) -> Client {
        Client { inner: Rc::new(ClientInner { addr, config, conn: RefCell::new(None), dgram: RefCell::new(None) }) }
    }

    /// Connect now (instead of on first call).
    pub async fn connect(addr: SocketAddr) -> Result<Client, CallError> {
        let c = Client::new(addr);
        c.connection().await?;
        Ok(c)
    }

    /// Connect (and with TLS, run the handshake) now instead of on the first call; a no-op
    /// while a connection is up.
    pub async fn connect_now(&self) -> Result<(), CallError> {
        self.connection().await.map(drop)
    }

    /// The server address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Calls in flight on the current connection (and datagram session).
    pub fn in_flight(&self) -> usize {
        self.inner.conn.borrow().as_ref().map_or(0, |c| c.calls.borrow().len())
            + self.inner.dgram.borrow().as_ref().map_or(0, |d| d.calls.borrow().len())
    }

    /// The datagram session's client, made on first use.
    fn dgram(&self) -> Result<Rc<DgramConn>, CallError> {
        if let Some(d) = self.inner.dgram.borrow().as_ref() {
            return Ok(d.clone());
        }
        let config = &self.inner.config;
        if config.tls.is_some() {
            // Never send calls unprotected when TLS was asked for.
            return Err(CallError::Connect(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the UDP transport carries no TLS; use Transport::Tcp with TLS",
            )));
        }
        let d = DgramConn::new(self.inner.addr, config.datagram.clone(), config.max_in_flight)
            .map_err(CallError::Connect)?;
        *self.inner.dgram.borrow_mut() = Some(d.clone());
        Ok(d)
    }

    async fn connection(&self) -> Result<Rc<Conn>, CallError> {
        if let Some(c) = self.inner.conn.borrow().as_ref() {
            if c.alive() {
                return Ok(c.clone());
            }
        }
        let stream = Rc::new(TcpStream::connect(self.inner.addr).await.map_err(CallError::Connect)?);
        stream.set_user_timeout(self.inner.config.tcp_user_timeout).map_err(CallError::Connect)?;
        // Another task may have connected while we did; keep theirs if it is alive.
        if let Some(c) = self.inner.conn.borrow().as_ref() {
            if c.alive() {
                return Ok(c.clone());
            }
        }
        let config = &self.inner.config;
        let session = match &config.tls {
            None => None,
            Some(tls) => {
                let deadline = Instant::now() + config.frame_timeout;
                let side = crate::tls::Side::Client(tls);
                let s =
                    crate::tls::handshake(&stream, side, self.inner.addr, deadline).await.map_err(CallError::Tls)?;
                Some(Rc::new(s))
            }
        };
        let outbox = Outbox::new(config);
        let conn = Rc::new_cyclic(|weak: &std::rc::Weak<Conn>| {
            let writer = spawn({
                let (outbox, stream, session) = (outbox.clone(), stream.clone(), session.clone());
                async move {
                    let _ = outbox.run_writer(stream, session).await;
                }
            });
            let reader = match session {
                Some(s) => FrameReader::with_tls(config, s, outbox.clone()),
                None => FrameReader::new(config),
            };
            let reader = spawn(read_responses(weak.clone(), stream.clone(), reader));
            Conn {
                outbox,
                calls: RefCell::new(CallTable::new(config.max_in_flight)),
                stream,
                _reader: reader,
                _writer: writer,
            }
        });
        *self.inner.conn.borrow_mut() = Some(conn.clone());
        Ok(conn)
    }

    /// Call `method_id` with `req`; the result is the server's archived response, validated.
    pub async fn call<Req, Resp>(
        &self,
        method_id: u32,
        req: &Req,
        opts: CallOptions,
    ) -> Result<Message<Resp>, CallError>
    where
        Req: Payload,
        Resp: Validate,
    {
        let payload = self
            .call_raw(method_id, opts, &|buf, max, prefix, header| encode_frame(buf, max, prefix, req, header))
            .await?;
        Message::new(payload).map_err(CallError::InvalidResponse)
    }

    /// Call with an already-archived request payload (the thread-safe handle serializes on the
    /// caller's thread). Returns the raw response payload.
    pub async fn call_bytes(&self, method_id: u32, req: &[u8], opts: CallOptions) -> Result<Bytes, CallError> {
        self.call_raw(method_id, opts, &|buf, max, prefix, header| encode_raw(buf, max, prefix, req, header)).await
    }

    /// A one-way call over the reliable (TCP) connection, whatever the transport setting: in
    /// order with this client's other frames, with no answer, so it costs the server no reply
    /// (for streams of messages whose receiver answers in its own calls, as raft peers do).
    /// `Ok` means queued on a live connection: it arrives unless the connection breaks first.
    /// Waits while the connection's outgoing queue is over its limit (back-pressure).
    pub async fn one_way<Req: Payload>(&self, method_id: u32, req: &Req) -> Result<(), CallError> {
        let conn = self.connection().await?;
        conn.outbox.ready().await;
        if !conn.alive() {
            return Err(CallError::ConnectionLost);
        }
        let trace = crate::trace::outgoing().map(|t| t.encode());
        let prefix: &[u8] = trace.as_ref().map_or(&[], |b| b);
        let header = |len| {
            let mut h = Header::one_way(method_id, len);
            if trace.is_some() {
                h.flags |= FLAG_TRACE;
            }
            h
        };
        conn.outbox.push_with(|buf, max| encode_frame(buf, max, prefix, req, header)).map_err(CallError::Encode)
    }

    async fn call_raw(&self, method_id: u32, opts: CallOptions, encode: &Encoder<'_>) -> Result<Bytes, CallError> {
        let deadline = match (opts.timeout, current_deadline()) {
            (None, None) => None,
            (timeout, inherited) => {
                // The clock is read only for calls that have a deadline.
                let now = Instant::now();
                let earliest = [timeout.map(|t| now + t), inherited].into_iter().flatten().min();
                if earliest.is_some_and(|d| d <= now) {
                    return Err(CallError::DeadlineExceeded);
                }
                earliest
            }
        };
        // The trace this call belongs to goes with it (a block before the archive).
        let trace = crate::trace::outgoing().map(|t| t.encode());
        let work = async {
            if self.inner.config.transport == Transport::Udp {
                match self.dgram()?.call(method_id, deadline, trace, encode).await {
                    Ok(payload) => return Ok(payload),
                    Err(DgramError::Call(e)) => return Err(e),
                    // Too large for a datagram: over TCP to the same address instead.
                    Err(DgramError::TooLarge) => {}
                }
            }
            self.call_stream(method_id, deadline, trace, encode).await
        };
        match deadline {
            Some(d) => timeout_at(d, work).await.unwrap_or(Err(CallError::DeadlineExceeded)),
            None => work.await,
        }
    }

    async fn call_stream(
        &self,
        method_id: u32,
        deadline: Option<Instant>,
        trace: Option<[u8; TRACE_BLOCK_LEN]>,
        encode: &Encoder<'_>,
    ) -> Result<Bytes, CallError> {
        let conn = self.connection().await?;
        let id = conn.calls.borrow_mut().start().map_err(|_| CallError::Overloaded { remote: false })?;
        let guard = PendingCall { conn: &conn, id, done: false };
        let budget_us = wire_budget(deadline);
        let prefix: &[u8] = trace.as_ref().map_or(&[], |b| b);
        let header = &mut |len| {
            let mut h = Header::request(id, method_id, budget_us, len);
            if trace.is_some() {
                h.flags |= FLAG_TRACE;
            }
            h
        };
        if let Err(e) = conn.outbox.push_with(|buf, max| encode(buf, max, prefix, header)) {
            conn.calls.borrow_mut().cancel(id);
            std::mem::forget(guard);
            return Err(CallError::Encode(e));
        }
        let outcome = poll_fn(|cx| conn.calls.borrow_mut().poll_result(id, cx.waker())).await;
        let mut guard = guard;
        guard.done = true;
        match outcome {
            Some(Ok((h, payload))) if h.kind == FrameKind::Response => Ok(payload),
            Some(Ok((h, payload))) => Err(CallError::from_wire(ErrorCode::from_u16(h.status), method_id, &payload)),
            Some(Err(e)) => Err(e),
            None => Err(CallError::ConnectionLost),
        }
    }
}

/// The `deadline_us` a request sent now carries: the time left, at least 1 (0 means none;
/// the clock is read only for a call with a deadline). A budget too long for the field (over ~71 minutes) is sent as none: the client
/// still enforces it, and a shortened one would make the server give up early.
pub(crate) fn wire_budget(deadline: Option<Instant>) -> u32 {
    deadline.map_or(0, |d| u32::try_from(d.saturating_duration_since(Instant::now()).as_micros().max(1)).unwrap_or(0))
}

/// Cancels the call if its future is dropped before the response arrives.
struct PendingCall<'a> {
    conn: &'a Conn,
    id: u64,
    done: bool,
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        if !self.done && self.conn.calls.borrow_mut().cancel(self.id) && self.conn.alive() {
            // Tell the server to stop working on it; no reply comes back.
            let _ = self.conn.outbox.push_raw(&[], |_| Header::cancel(self.id));
        }
    }
}

async fn read_responses(conn: std::rc::Weak<Conn>, stream: Rc<TcpStream>, mut reader: FrameReader) {
    let err = loop {
        let frame = reader.next(&stream).await;
        let Some(conn) = conn.upgrade() else { return };
        match frame {
            Ok(Some((h, payload))) => match h.kind {
                FrameKind::Response | FrameKind::Error if h.request_id != 0 => {
                    // Unknown ids are late answers to cancelled calls: dropped.
                    conn.calls.borrow_mut().complete(h.request_id, Ok((h, payload)));
                }
                FrameKind::Error => {
                    // A connection-level error: the server is about to close.
                    let code = ErrorCode::from_u16(h.status);
                    tracing::debug!(%code, "server reported a connection error");
                    break CallError::from_wire(code, 0, &payload);
                }
                FrameKind::Response => break CallError::Protocol(FrameError::ReservedRequestId),
                kind => break CallError::Protocol(FrameError::UnexpectedKind { kind, receiver: "client" }),
            },
            Ok(None) | Err(ReadError::Truncated) | Err(ReadError::Io(_)) => break CallError::ConnectionLost,
            Err(ReadError::Tls(e)) => break CallError::Tls(e),
            Err(ReadError::Protocol(e)) => break CallError::Protocol(e),
        }
    };
    if let Some(conn) = conn.upgrade() {
        tracing::debug!(error = %err, "client connection closed");
        conn.outbox.close();
        let mut first = Some(err);
        conn.calls.borrow_mut().fail_all(|| Err(first.take().unwrap_or(CallError::ConnectionLost)));
    }
}
