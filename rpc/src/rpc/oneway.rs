//! Best-effort one-way calls: one UDP datagram per call, no reply, no retransmission — for
//! beacons, log entries and other messages where the latest one matters more than each one.
//! The same path carries multicast calls to every member of a group.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;

use bytes::BytesMut;

use super::service::{CallContext, Dispatched, Service};
use crate::buf::{encode_frame, EncodeError, Payload};
use crate::net::UdpSocket;
use crate::proto::frame::{decode_datagram, FrameKind, Header, HEADER_LEN};
use crate::proto::trace::FLAG_TRACE;

/// The largest UDP payload over IPv4 (65535 − 8 − 20).
pub const MAX_DATAGRAM: usize = 65_507;

/// Why a one-way call was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The call does not fit in one datagram (or the configured limit).
    #[error("one-way call of {len} bytes does not fit in a datagram of at most {max}")]
    TooLarge {
        /// Frame size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value could not be serialized.
    #[error("serialization failed")]
    Encode(#[source] EncodeError),
    /// The socket refused it.
    #[error("send failed")]
    Io(#[source] std::io::Error),
}

/// A multicast group on an interface. Defaults keep traffic on this host: interface
/// 127.0.0.1 and TTL 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastGroup {
    /// Group address (239.0.0.0/8 is the organisation-local scope).
    pub group: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// Address of the interface to send and join on.
    pub interface: Ipv4Addr,
    /// Hop limit of sent datagrams.
    pub ttl: u32,
}

impl MulticastGroup {
    /// `group:port` on loopback with TTL 1.
    pub fn loopback(group: Ipv4Addr, port: u16) -> Self {
        MulticastGroup { group, port, interface: Ipv4Addr::LOCALHOST, ttl: 1 }
    }

    /// The group's socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.group, self.port))
    }
}

/// Sends one-way calls, unicast or to a multicast group, on the current core.
#[derive(Debug)]
pub struct OneWaySender {
    sock: UdpSocket,
    max_datagram: usize,
    /// Reused send buffer: no allocation per call once warm.
    buf: RefCell<Option<BytesMut>>,
}

impl OneWaySender {
    /// A unicast sender bound to an ephemeral loopback port (reaches loopback addresses
    /// only; use [`OneWaySender::bind`] to send to other hosts).
    pub fn new() -> std::io::Result<Self> {
        Self::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    /// A unicast sender bound to `local` (e.g. `0.0.0.0:0` or a node's own address, port 0
    /// for an ephemeral one).
    pub fn bind(local: SocketAddr) -> std::io::Result<Self> {
        Self::from_socket(UdpSocket::bind(local)?)
    }

    /// A sender for `group` (its interface and TTL); can also send unicast.
    pub fn multicast(group: &MulticastGroup) -> std::io::Result<Self> {
        Self::from_socket(UdpSocket::bind_multicast_sender(group.interface, group.ttl)?)
    }

    fn from_socket(sock: UdpSocket) -> std::io::Result<Self> {
        Ok(OneWaySender { sock, max_datagram: MAX_DATAGRAM, buf: RefCell::new(None) })
    }

    /// Fix the usual destination (a unicast or group address): calls to `peer` go out without
    /// the kernel's per-datagram route lookup, about a quarter of a sender's time on loopback
    /// (`throughput --only one-way` under `perf record`). Calls to other addresses still work.
    /// Only `peer`'s datagrams can reach this socket afterwards, which a sender does not read
    /// anyway; if nothing listens at a unicast `peer`, the kernel's port-unreachable answer
    /// fails one later call with `SendError::Io` (`ConnectionRefused`), that call's datagram
    /// unsent.
    pub fn connect(self, peer: SocketAddr) -> std::io::Result<Self> {
        self.sock.connect_to(peer)?;
        Ok(self)
    }

    /// Lower the datagram limit (e.g. to stay under a path MTU).
    pub fn with_max_datagram(mut self, max: usize) -> Self {
        self.max_datagram = max.min(MAX_DATAGRAM);
        self
    }

    /// Send a one-way call of `method_id` to `to` (a unicast address or a group address).
    pub async fn send<T: Payload>(&self, to: SocketAddr, method_id: u32, value: &T) -> Result<(), SendError> {
        let mut buf = self.buf.borrow_mut().take().unwrap_or_else(|| BytesMut::with_capacity(1024));
        buf.clear();
        let max_payload = self.max_datagram.saturating_sub(HEADER_LEN);
        // A one-way call made inside a trace carries it (one-way calls never start one).
        let trace = crate::trace::current().map(|t| t.encode());
        let prefix: &[u8] = trace.as_ref().map_or(&[], |b| b);
        let res = encode_frame(&mut buf, max_payload, prefix, value, |len| {
            let mut h = Header::one_way(method_id, len);
            if trace.is_some() {
                h.flags |= FLAG_TRACE;
            }
            h
        });
        let res = match res {
            Ok(()) => {
                // The trailing padding is optional on datagrams; leave it off.
                let len = HEADER_LEN + u32::from_le_bytes(buf[24..28].try_into().expect("4 bytes")) as usize;
                buf.truncate(len);
                // Sent at once, in every wait mode: a one-way call has no reply to share a
                // loop turn's io_uring enter with, so queueing it would cost a turn and an
                // enter per call.
                let (res, b) = self.sock.send_to_now(buf, to).await;
                buf = b;
                res.map(drop).map_err(SendError::Io)
            }
            Err(EncodeError::TooLarge { len, .. }) => {
                Err(SendError::TooLarge { len: len + HEADER_LEN, max: self.max_datagram })
            }
            Err(e) => Err(SendError::Encode(e)),
        };
        *self.buf.borrow_mut() = Some(buf);
        res
    }

    /// Send to every member of `group`.
    pub async fn send_group<T: Payload>(
        &self,
        group: &MulticastGroup,
        method_id: u32,
        value: &T,
    ) -> Result<(), SendError> {
        self.send(group.addr(), method_id, value).await
    }
}

/// Counters of a one-way server.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OneWayStats {
    /// Datagrams dispatched to a handler.
    pub dispatched: u64,
    /// Datagrams dropped: malformed, wrong kind, or unknown method.
    pub dropped: u64,
}

/// Receives one-way calls on a UDP socket (unicast or a joined multicast group) and runs them.
#[derive(Debug)]
pub struct OneWayServer {
    sock: UdpSocket,
    services: Rc<[Service]>,
    stats: Rc<RefCell<OneWayStats>>,
}

impl OneWayServer {
    /// Listen for unicast one-way calls on `addr`.
    pub fn bind(addr: SocketAddr, services: impl IntoIterator<Item = Service>) -> std::io::Result<Self> {
        Ok(Self::from_socket(UdpSocket::bind(addr)?, services))
    }

    /// Join `group` and serve the calls sent to it.
    pub fn join(group: &MulticastGroup, services: impl IntoIterator<Item = Service>) -> std::io::Result<Self> {
        Ok(Self::from_socket(UdpSocket::bind_multicast(group.group, group.port, group.interface)?, services))
    }

    fn from_socket(sock: UdpSocket, services: impl IntoIterator<Item = Service>) -> Self {
        OneWayServer { sock, services: services.into_iter().collect(), stats: Rc::default() }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("a bound socket has an address")
    }

    /// Shared counters (readable while serving).
    pub fn stats(&self) -> Rc<RefCell<OneWayStats>> {
        self.stats.clone()
    }

    /// Receive and dispatch until dropped.
    pub async fn serve(self) -> std::io::Result<()> {
        let mut failed = None;
        super::dgram::receive_loop(
            &self.sock,
            || true,
            false,
            |item| {
                let (datagram, n, peer) = match item {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        self.stats.borrow_mut().dropped += 1;
                        return true;
                    }
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                };
                self.on_datagram(datagram, n, peer);
                true
            },
        )
        .await;
        failed.map_or(Ok(()), Err)
    }

    fn on_datagram(&self, datagram: bytes::Bytes, n: usize, peer: SocketAddr) {
        match decode_datagram(&datagram[..n], MAX_DATAGRAM as u32) {
            Ok(h) if h.kind == FrameKind::OneWay => {
                let payload = datagram.slice(HEADER_LEN..HEADER_LEN + h.payload_len as usize);
                let (trace, payload) = match crate::proto::trace::split(&h, payload) {
                    Ok(split) => split,
                    Err(e) => {
                        tracing::debug!(error = %e, %peer, "datagram with a bad trace context dropped");
                        self.stats.borrow_mut().dropped += 1;
                        return;
                    }
                };
                let ctx = CallContext {
                    method_id: h.method_id,
                    request_id: 0,
                    deadline: None,
                    peer: Some(peer),
                    principal: None,
                    trace,
                };
                match self.services.iter().find(|s| s.has_method(h.method_id)) {
                    // Datagrams carry no identity: a service with an access list refuses them.
                    Some(svc) if svc.check_access(h.method_id, None).is_err() => {
                        tracing::debug!(method_id = h.method_id, %peer, "one-way datagram to a restricted service dropped");
                        self.stats.borrow_mut().dropped += 1;
                    }
                    Some(svc) => {
                        if let Dispatched::Running(task) = svc.dispatch(ctx, payload, None) {
                            task.detach();
                        }
                        self.stats.borrow_mut().dispatched += 1;
                    }
                    None => {
                        tracing::debug!(method_id = h.method_id, %peer, "one-way call to unknown method dropped");
                        self.stats.borrow_mut().dropped += 1;
                    }
                }
            }
            Ok(h) => {
                tracing::debug!(kind = ?h.kind, %peer, "unexpected frame kind on a one-way socket dropped");
                self.stats.borrow_mut().dropped += 1;
            }
            Err(e) => {
                tracing::debug!(error = %e, %peer, "malformed datagram dropped");
                self.stats.borrow_mut().dropped += 1;
            }
        }
    }
}
