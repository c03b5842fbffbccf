use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use bytes::BytesMut;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::Registered;
use crate::driver::op::{self, Op};

/// A UDP socket on the current core.
#[derive(Debug)]
pub struct UdpSocket {
    inner: Registered,
    /// The peer fixed by [`UdpSocket::connect_to`]: datagrams to it are sent without an
    /// address, on the route the kernel cached at connect time.
    peer: std::cell::Cell<Option<SocketAddr>>,
}

impl UdpSocket {
    fn from_socket(sock: Socket) -> io::Result<UdpSocket> {
        Ok(UdpSocket { inner: Registered::new(sock)?, peer: std::cell::Cell::new(None) })
    }

    /// Bind to `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        sock.bind(&addr.into())?;
        Self::from_socket(sock)
    }

    /// Bind to `addr` with `SO_REUSEPORT` when `reuse_port` (so every core can serve the
    /// same address; the kernel keeps each peer on one socket).
    pub fn bind_reuse(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        if reuse_port {
            sock.set_reuse_port(true)?;
        }
        sock.bind(&addr.into())?;
        Self::from_socket(sock)
    }

    /// Bind an ephemeral port on the local address that routes to `peer` and connect to it:
    /// only `peer`'s datagrams are received, and an ICMP port-unreachable from it (no one
    /// listening) comes back as `ECONNREFUSED` on the next send or receive.
    pub fn connect(peer: SocketAddr) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::for_address(peer), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        sock.connect(&peer.into())?;
        let sock = Self::from_socket(sock)?;
        sock.peer.set(Some(peer));
        Ok(sock)
    }

    /// Send one datagram on a connected socket now, without waiting: `WouldBlock` when the
    /// socket buffer is full. For protocols that retransmit anyway, this is cheaper than a
    /// queued send.
    pub fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.sock.send(buf)
    }

    /// Fix this (bound) socket's peer: sends without an address go to `peer`, routed once
    /// instead of per datagram; only `peer`'s datagrams are received after this, and an ICMP
    /// port-unreachable from it fails the next send or receive with `ECONNREFUSED`.
    pub fn connect_to(&self, peer: SocketAddr) -> io::Result<()> {
        self.inner.sock.connect(&peer.into())?;
        self.peer.set(Some(peer));
        Ok(())
    }

    /// [`UdpSocket::try_send`] to `to` (without an address when `to` is the peer fixed by
    /// [`UdpSocket::connect_to`]).
    pub fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        if self.peer.get() == Some(to) {
            return self.inner.sock.send(buf);
        }
        self.inner.sock.send_to(buf, &to.into())
    }

    /// Bind to `port` on all addresses and join `group` on the interface with address
    /// `interface` (loopback by default in the rpc layer). Several sockets on this host may
    /// join the same group and port; each receives every datagram.
    pub fn bind_multicast(group: Ipv4Addr, port: u16, interface: Ipv4Addr) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        sock.set_reuse_address(true)?;
        sock.set_reuse_port(true)?;
        // Binding the group address (not INADDR_ANY) keeps unicast traffic to the port out.
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(group, port)).into())?;
        sock.join_multicast_v4(&group, &interface)?;
        Self::from_socket(sock)
    }

    /// Bind a sender for multicast: outgoing interface `interface`, hop limit `ttl`, and
    /// loop-back on so receivers on this host hear it.
    pub fn bind_multicast_sender(interface: Ipv4Addr, ttl: u32) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        sock.set_multicast_if_v4(&interface)?;
        sock.set_multicast_ttl_v4(ttl)?;
        sock.set_multicast_loop_v4(true)?;
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(interface, 0)).into())?;
        Self::from_socket(sock)
    }

    /// Receive one datagram into the spare capacity of `buf` (reserve first).
    pub async fn recv_from(&self, buf: BytesMut) -> (io::Result<(usize, SocketAddr)>, BytesMut) {
        let (res, buf) = Op::new(op::RecvFrom::new(self.inner.fd(), buf), self.inner.reg).await;
        let res = res.and_then(|(n, a)| crate::sys::ip_addr(&a).map(|a| (n, a)));
        (res, buf)
    }

    /// A receiver for a stream of datagrams on this socket: on io_uring one multishot receive
    /// with a provided-buffer ring stays armed across datagrams. It must not outlive the socket.
    pub(crate) fn receiver(&self) -> crate::driver::multishot::MultiReceiver {
        use crate::driver::multishot::{Kind, MultiReceiver};
        MultiReceiver::new(self.inner.fd(), self.inner.reg, Kind::Datagram)
    }

    /// Send `buf` as one datagram to `to`.
    ///
    /// On a busy-polling core the datagram goes out at once with a non-blocking `sendto`, as
    /// a spinning raw socket sends it, instead of waiting for the loop's next io_uring enter
    /// and a turn for the completion; the driver is used only when the socket's buffer is full.
    pub async fn send_to(&self, buf: BytesMut, to: SocketAddr) -> (io::Result<usize>, BytesMut) {
        if crate::runtime::busy_poll_mode() {
            return self.send_to_now(buf, to).await;
        }
        Op::new(op::SendTo::new(self.inner.fd(), buf, &SockAddr::from(to)), self.inner.reg).await
    }

    /// Send `buf` as one datagram to `to` at once, with a non-blocking `sendto`, in every wait
    /// mode; the driver only when the socket's buffer is full. For senders with no reply to
    /// share a loop turn's io_uring enter with (one-way calls).
    pub async fn send_to_now(&self, buf: BytesMut, to: SocketAddr) -> (io::Result<usize>, BytesMut) {
        match self.try_send_to(&buf, to) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            res => return (res, buf),
        }
        Op::new(op::SendTo::new(self.inner.fd(), buf, &SockAddr::from(to)), self.inner.reg).await
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sock.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
    }
}
