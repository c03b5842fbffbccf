//! The reliable (TCP) server: accept connections, read request frames, dispatch them to
//! service handlers as tasks, write responses in completion order.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::conn::{ConnConfig, FrameReader, Outbox, ReadError};
use super::dgram::DgramEndpoint;
use super::error::ServeError;
use super::error::Status;
use super::service::{CallContext, Dispatched, Reply, Service};
use crate::net::{TcpListener, TcpStream, UdpSocket};
use crate::proto::frame::{ErrorCode, FrameError, FrameKind, Header};
use crate::runtime::{spawn, JoinHandle};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Per-connection limits.
    pub conn: ConnConfig,
    /// Connections served at once on this core; further ones are closed on accept.
    pub max_connections: usize,
    /// Bind with SO_REUSEPORT so every core can listen on the same address.
    pub reuse_port: bool,
    /// Also serve reliable calls over UDP on the same port number (the datagram transport,
    /// for clients configured with [`Transport::Udp`](crate::Transport::Udp)). Plain only:
    /// a server configured with TLS refuses to start with it. Default off.
    pub datagram: bool,
    /// Datagram sessions kept open at once (default 10 000); at the limit the idlest is
    /// dropped, or a new session refused if every one has calls running.
    pub max_sessions: usize,
    /// A datagram session silent this long is forgotten (default 2 min); its client opens a
    /// new one on its next call, transparently.
    pub session_idle: Duration,
    /// Bytes of datagram replies kept for retransmissions, over all sessions (default
    /// 64 MiB; each reply counts its buffer). Past it the oldest are dropped: a
    /// retransmission of such a call gets an `Internal` error saying it ran but its reply is
    /// gone — it never runs twice.
    pub reply_cache_bytes: usize,
}

impl Default for ServerConfig {
    /// This core's connection settings ([`ConnConfig::for_this_core`]), 10 000 connections,
    /// `SO_REUSEPORT`.
    fn default() -> Self {
        ServerConfig {
            conn: ConnConfig::for_this_core(),
            max_connections: 10_000,
            reuse_port: true,
            datagram: false,
            max_sessions: 10_000,
            session_idle: Duration::from_secs(120),
            reply_cache_bytes: 64 << 20,
        }
    }
}

/// A set of services answering on one TCP address, on the current core.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    datagrams: Option<Rc<DgramEndpoint>>,
    services: Rc<[Service]>,
    config: ServerConfig,
    load: Rc<ServerState>,
}

/// What a server's connections share: how busy it is, and whether it is draining.
#[derive(Debug, Default)]
pub(crate) struct ServerState {
    pub(crate) in_flight: Cell<u32>,
    pub(crate) draining: Cell<bool>,
}

/// A live view of how busy a server is, and its lame-duck switch (usable while it serves).
#[derive(Debug, Clone)]
pub struct ServerLoad(Rc<ServerState>);

impl ServerLoad {
    /// Handlers running now, over all connections (calls that finished inside dispatch do
    /// not count).
    pub fn in_flight(&self) -> u32 {
        self.0.in_flight.get()
    }

    /// Lame-duck mode: from now on every new call is refused with `ShuttingDown` (which
    /// clients and redirectors know did not run, so they retry elsewhere), while the calls
    /// already running finish and get their replies. Connections stay open meanwhile.
    pub fn drain(&self) {
        self.0.draining.set(true);
    }

    /// True once [`ServerLoad::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.0.draining.get()
    }
}

/// One connection's state shared by its reader loop and its handlers' replies.
pub(crate) struct ServerConn {
    pub(crate) outbox: Rc<Outbox>,
    inflight: RefCell<HashMap<u64, JoinHandle<()>>>,
    /// The server-wide count of running handlers this connection adds to, and its drain flag.
    load: Rc<ServerState>,
}

impl ServerConn {
    /// Change the running-handler table, keeping the server's load count in step.
    fn with_inflight<R>(&self, f: impl FnOnce(&mut HashMap<u64, JoinHandle<()>>) -> R) -> R {
        let mut map = self.inflight.borrow_mut();
        let before = map.len() as u32;
        let r = f(&mut map);
        let after = map.len() as u32;
        // This connection's handlers are part of the total, so it never goes below zero.
        let n = &self.load.in_flight;
        n.set((n.get() + after).saturating_sub(before));
        r
    }

    /// A handler is replying: it no longer needs cancelling.
    pub(crate) fn finish(&self, request_id: u64) {
        if let Some(task) = self.with_inflight(|m| m.remove(&request_id)) {
            task.detach();
        }
    }
}

impl Server {
    /// Bind `addr` and serve `services` (method ids must not collide across them), with this
    /// core's connection settings (TLS if the runtime was configured with it).
    pub fn bind(addr: SocketAddr, services: impl IntoIterator<Item = Service>) -> Result<Server, ServeError> {
        Self::bind_with(addr, services, ServerConfig::default())
    }

    /// [`Server::bind`] with explicit settings.
    pub fn bind_with(
        addr: SocketAddr,
        services: impl IntoIterator<Item = Service>,
        config: ServerConfig,
    ) -> Result<Server, ServeError> {
        let services: Rc<[Service]> = services.into_iter().collect();
        // Requests carry only a method id: two services answering one id would be ambiguous.
        for (i, a) in services.iter().enumerate() {
            for b in &services[i + 1..] {
                if let Some(id) = a.method_ids().find(|&id| b.has_method(id)) {
                    return Err(ServeError::DuplicateMethod {
                        method_id: id,
                        first: a.name().into(),
                        second: b.name().into(),
                    });
                }
            }
        }
        if config.datagram && config.conn.tls.is_some() {
            return Err(ServeError::DatagramWithTls);
        }
        let bind_tcp = || TcpListener::bind(addr, config.reuse_port);
        let load: Rc<ServerState> = Rc::default();
        let (listener, datagrams) = match config.datagram {
            false => (bind_tcp().map_err(ServeError::Bind)?, None),
            true => {
                // The same port number as the listener (an ephemeral one is known only now).
                let (listener, sock) = bind_same_port(addr.port() == 0, bind_tcp, |l| {
                    UdpSocket::bind_reuse(l.local_addr()?, config.reuse_port)
                })
                .map_err(ServeError::Bind)?;
                (listener, Some(DgramEndpoint::new(sock, services.clone(), load.clone(), &config)))
            }
        };
        Ok(Server { listener, datagrams, services, config, load })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The UDP address datagram calls are served on (the same port), if enabled.
    pub fn datagram_addr(&self) -> Option<SocketAddr> {
        self.datagrams.as_ref().and_then(|d| d.local_addr().ok())
    }

    /// Its load (take it before `serve`, which consumes the server).
    pub fn load(&self) -> ServerLoad {
        ServerLoad(self.load.clone())
    }

    /// Accept and serve connections until the future is dropped. Dropping it stops the
    /// server: the listener closes and every connection it accepted is cancelled and closed
    /// (as when the instance is stopped), so clients see the loss at once.
    pub async fn serve(self) -> Result<(), ServeError> {
        // The connection tasks, owned here so they end with the server. A task that finishes
        // removes (and detaches) its own handle.
        let conns: Rc<RefCell<slab::Slab<JoinHandle<()>>>> = Rc::new(RefCell::new(slab::Slab::new()));
        let _cancel_on_drop = CancelAll(conns.clone());
        // Datagram calls are served beside, and stop with, the listener.
        let _datagrams = self.datagrams.clone().map(|d| spawn(d.serve()));
        loop {
            let stream = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) if is_transient_accept_error(&e) => {
                    // Out of descriptors or memory: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed; backing off");
                    crate::runtime::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) => return Err(ServeError::Accept(e)),
            };
            if let Err(e) = stream.set_user_timeout(self.config.conn.tcp_user_timeout) {
                tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT on an accepted connection");
            }
            if conns.borrow().len() >= self.config.max_connections {
                tracing::warn!(limit = self.config.max_connections, "connection limit reached; closing new connection");
                continue;
            }
            let (services, config, load) = (self.services.clone(), self.config.conn.clone(), self.load.clone());
            let mut slab = conns.borrow_mut();
            let entry = slab.vacant_entry();
            let key = entry.key();
            let weak = Rc::downgrade(&conns);
            // Spawned tasks first run after this turn, so the handle is in place before the
            // task can remove it.
            entry.insert(spawn(async move {
                serve_conn(stream, services, config, load).await;
                if let Some(conns) = weak.upgrade() {
                    if let Some(me) = conns.borrow_mut().try_remove(key) {
                        me.detach();
                    }
                }
            }));
        }
    }
}

/// Cancels a connection's running handlers when its task goes away.
struct CancelHandlers(Rc<ServerConn>);

impl Drop for CancelHandlers {
    fn drop(&mut self) {
        let tasks: Vec<JoinHandle<()>> = self.0.with_inflight(|m| m.drain().map(|(_, t)| t).collect());
        drop(tasks);
    }
}

/// Cancels every connection task when the serve future goes away.
struct CancelAll(Rc<RefCell<slab::Slab<JoinHandle<()>>>>);

impl Drop for CancelAll {
    fn drop(&mut self) {
        // Take them out first: a cancelled task's destructor must not find the slab borrowed.
        let tasks: Vec<JoinHandle<()>> = self.0.borrow_mut().drain().collect();
        drop(tasks);
    }
}

/// Binds a listener, then a UDP socket on its port. An ephemeral TCP port may already be
/// some other socket's UDP port (ports are allocated per protocol), so when the port was
/// left to the kernel (`ephemeral`) and the UDP bind finds it taken, another listener is
/// bound (before the last is closed, so the kernel offers a new port), a bounded number of
/// times.
fn bind_same_port<L, U>(
    ephemeral: bool,
    mut bind_tcp: impl FnMut() -> std::io::Result<L>,
    mut bind_udp: impl FnMut(&L) -> std::io::Result<U>,
) -> std::io::Result<(L, U)> {
    const ATTEMPTS: usize = 64;
    let mut listener = bind_tcp()?;
    let mut attempt = 1;
    loop {
        match bind_udp(&listener) {
            Ok(sock) => return Ok((listener, sock)),
            Err(e) if ephemeral && e.kind() == std::io::ErrorKind::AddrInUse && attempt < ATTEMPTS => {
                attempt += 1;
                listener = bind_tcp()?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

async fn serve_conn(stream: TcpStream, services: Rc<[Service]>, config: ConnConfig, load: Rc<ServerState>) {
    let peer = stream.peer_addr().ok();
    let stream = Rc::new(stream);
    let session = match &config.tls {
        None => None,
        Some(tls) => {
            let deadline = Instant::now() + config.frame_timeout;
            let addr = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            match crate::tls::handshake(&stream, crate::tls::Side::Server(tls), addr, deadline).await {
                Ok(s) => Some(Rc::new(s)),
                Err(e) => {
                    // Clients that cannot prove who they are get nothing but the alert.
                    tracing::info!(?peer, error = %e, "TLS handshake refused");
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
    };
    let principal = session.as_ref().and_then(|s| s.principal());
    let outbox = Outbox::new(&config);
    let writer = spawn(outbox.clone().run_writer(stream.clone(), session.clone()));
    let conn = Rc::new(ServerConn { outbox: outbox.clone(), inflight: RefCell::new(HashMap::new()), load });
    // If this task is cancelled (the server stopped), its running handlers go with it.
    let _handlers = CancelHandlers(conn.clone());
    let mut reader = match &session {
        Some(s) => FrameReader::with_tls(&config, s.clone(), outbox.clone()),
        None => FrameReader::new(&config),
    };
    let clean = loop {
        // Back-pressure: a peer that does not read its responses stops being read.
        outbox.ready().await;
        if outbox.is_closed() {
            break false;
        }
        let (header, payload) = match reader.next(&stream).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break true,
            Err(ReadError::Protocol(e)) => {
                tracing::debug!(?peer, error = %e, "malformed frame; closing connection");
                outbox.push_error(0, 0, e.code(), &e.to_string());
                break false;
            }
            Err(ReadError::Truncated) => {
                tracing::debug!(?peer, "connection ended or stalled inside a frame; closing");
                break false;
            }
            Err(ReadError::Io(e)) => {
                tracing::debug!(?peer, error = %e, "connection read failed");
                break false;
            }
            Err(ReadError::Tls(e)) => {
                // rustls queued an alert saying why; the writer sends it before closing.
                tracing::debug!(?peer, error = %e, "TLS session failed");
                break false;
            }
        };
        match header.kind {
            FrameKind::Request => {
                if let Err(e) = on_request(&conn, &services, &config, header, payload, peer, &principal) {
                    // A client that breaks the id rules would mismatch replies: stop it.
                    tracing::debug!(?peer, error = %e, "protocol violation; closing connection");
                    outbox.push_error(0, 0, e.code(), &e.to_string());
                    break false;
                }
            }
            FrameKind::OneWay => {
                let (trace, payload) = match crate::proto::trace::split(&header, payload) {
                    Ok(split) => split,
                    Err(e) => {
                        tracing::debug!(?peer, error = %e, "bad trace context; closing connection");
                        outbox.push_error(0, 0, e.code(), &e.to_string());
                        break false;
                    }
                };
                let ctx = CallContext {
                    method_id: header.method_id,
                    request_id: 0,
                    deadline: None,
                    peer,
                    principal: principal.clone(),
                    trace,
                };
                let svc = find(&services, header.method_id);
                let allowed = svc.map(|s| s.check_access(header.method_id, principal.as_deref()));
                if let Some(Err(why)) = allowed {
                    tracing::debug!(?peer, %why, "one-way call refused");
                    continue;
                }
                match svc.map(|svc| svc.dispatch(ctx, payload, None)) {
                    Some(Dispatched::Running(task)) => task.detach(),
                    Some(Dispatched::Done) => {}
                    Some(Dispatched::Unknown) | None => {
                        tracing::debug!(method_id = header.method_id, "one-way call to unknown method dropped")
                    }
                }
            }
            FrameKind::Cancel => {
                // Dropping the task's handle cancels the handler; no reply is sent.
                drop(conn.with_inflight(|m| m.remove(&header.request_id)));
            }
            kind @ (FrameKind::Response | FrameKind::Error | FrameKind::Hello | FrameKind::Pending) => {
                let e = FrameError::UnexpectedKind { kind, receiver: "server" };
                outbox.push_error(0, 0, e.code(), &e.to_string());
                break false;
            }
        }
    };
    if clean {
        // The peer finished sending: let in-flight handlers answer before closing.
        let pending: Vec<JoinHandle<()>> = conn.with_inflight(|m| m.drain().map(|(_, t)| t).collect());
        for t in pending {
            t.await;
        }
    } else {
        conn.with_inflight(HashMap::clear);
    }
    outbox.close();
    if let Err(e) = writer.await {
        tracing::debug!(?peer, error = %e, "connection write failed");
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn find(services: &[Service], method_id: u32) -> Option<&Service> {
    services.iter().find(|s| s.has_method(method_id))
}

fn on_request(
    conn: &Rc<ServerConn>,
    services: &[Service],
    config: &ConnConfig,
    header: Header,
    payload: Bytes,
    peer: Option<SocketAddr>,
    principal: &Option<crate::tls::Principal>,
) -> Result<(), FrameError> {
    let (id, method_id) = (header.request_id, header.method_id);
    if id == 0 {
        return Err(FrameError::ReservedRequestId);
    }
    if conn.inflight.borrow().contains_key(&id) {
        return Err(FrameError::DuplicateRequestId(id));
    }
    if header.flags & crate::proto::session::FLAG_SESSION != 0 {
        return Err(FrameError::BadSession("session blocks belong to the datagram transport, not TCP"));
    }
    let (trace, payload) = crate::proto::trace::split(&header, payload)?;
    if conn.inflight.borrow().len() >= config.max_in_flight {
        crate::metrics::refused(ErrorCode::Overloaded);
        conn.outbox.push_error(id, method_id, ErrorCode::Overloaded, "too many calls in flight on this connection");
        return Ok(());
    }
    let svc = match admit(services, &conn.load, method_id, principal.as_deref()) {
        Ok(svc) => svc,
        Err(status) => {
            conn.outbox.push_error(id, method_id, status.code(), status.wire_detail());
            return Ok(());
        }
    };
    // The budget is relative: convert on arrival so clock skew between hosts cannot matter.
    let deadline = (header.deadline_us > 0).then(|| Instant::now() + Duration::from_micros(header.deadline_us.into()));
    let ctx = CallContext { method_id, request_id: id, deadline, peer, principal: principal.clone(), trace };
    match svc.dispatch(ctx, payload, Some(Reply::stream(conn.clone(), id))) {
        Dispatched::Running(task) => {
            conn.with_inflight(|m| m.insert(id, task));
        }
        Dispatched::Done => {}
        Dispatched::Unknown => {
            crate::metrics::refused(ErrorCode::UnknownMethod);
            conn.outbox.push_error(id, method_id, ErrorCode::UnknownMethod, "no such method")
        }
    }
    Ok(())
}

/// The checks every new call passes before it runs, on any transport: the server is not
/// draining, the method exists, the caller may call it. A refusal is counted and returned
/// as the status to send (the call did not run).
pub(crate) fn admit<'s>(
    services: &'s [Service],
    load: &ServerState,
    method_id: u32,
    principal: Option<&str>,
) -> Result<&'s Service, Status> {
    let refuse = |code, detail: String| {
        crate::metrics::refused(code);
        Err(Status::new(code, detail))
    };
    if load.draining.get() {
        return refuse(ErrorCode::ShuttingDown, "draining: not taking new calls".into());
    }
    let Some(svc) = find(services, method_id) else {
        return refuse(ErrorCode::UnknownMethod, "no such method".into());
    };
    if let Err(why) = svc.check_access(method_id, principal) {
        return refuse(ErrorCode::PermissionDenied, why);
    }
    Ok(svc)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io;

    use super::bind_same_port;

    fn in_use() -> io::Error {
        io::ErrorKind::AddrInUse.into()
    }

    #[test]
    fn an_ephemeral_port_taken_for_udp_is_exchanged_for_another() {
        let next = Cell::new(40_000u16);
        let tcp = || {
            next.set(next.get() + 1);
            Ok(next.get())
        };
        // Ports 40 001 and 40 002 are taken for UDP; 40 003 is free.
        let (tcp_port, udp_port) =
            bind_same_port(true, tcp, |&p| if p < 40_003 { Err(in_use()) } else { Ok(p) }).unwrap();
        assert_eq!((tcp_port, udp_port), (40_003, 40_003));
    }

    #[test]
    fn a_port_the_caller_chose_is_not_exchanged_and_other_errors_are_not_retried() {
        let binds = Cell::new(0);
        let tcp = || {
            binds.set(binds.get() + 1);
            Ok(7000u16)
        };
        let err = bind_same_port(false, tcp, |_| Err::<u16, _>(in_use())).unwrap_err();
        assert_eq!((err.kind(), binds.get()), (io::ErrorKind::AddrInUse, 1));
        let denied = || io::Error::from(io::ErrorKind::PermissionDenied);
        let err = bind_same_port(true, || Ok(0u16), |_| Err::<u16, _>(denied())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn retries_are_bounded() {
        let binds = Cell::new(0);
        let tcp = || {
            binds.set(binds.get() + 1);
            Ok(binds.get())
        };
        let err = bind_same_port(true, tcp, |_| Err::<u32, _>(in_use())).unwrap_err();
        assert_eq!((err.kind(), binds.get()), (io::ErrorKind::AddrInUse, 64));
    }
}
