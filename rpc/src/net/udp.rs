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
}

impl UdpSocket {
    /// Bind to `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        sock.bind(&addr.into())?;
        Ok(UdpSocket { inner: Registered::new(sock)? })
    }

    /// Bind to `addr` with `SO_REUSEPORT` when `reuse_port` (so every core can serve the
    /// same address; the kernel keeps each peer on one socket).
    pub fn bind_reuse(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::for_address(addr), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        if reuse_port {
            sock.set_reuse_port(true)?;
        }
        sock.bind(&addr.into())?;
        Ok(UdpSocket { inner: Registered::new(sock)? })
    }

    /// Bind an ephemeral port on the local address that routes to `peer` and connect to it:
    /// only `peer`'s datagrams are received, and an ICMP port-unreachable from it (no one
    /// listening) comes back as `ECONNREFUSED` on the next send or receive.
    pub fn connect(peer: SocketAddr) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::for_address(peer), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        sock.connect(&peer.into())?;
        Ok(UdpSocket { inner: Registered::new(sock)? })
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
        self.inner.sock.connect(&peer.into())
    }

    /// [`UdpSocket::try_send`] to `to` on an unconnected socket.
    pub fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
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
        Ok(UdpSocket { inner: Registered::new(sock)? })
    }

    /// Bind a sender for multicast: outgoing interface `interface`, hop limit `ttl`, and
    /// loop-back on so receivers on this host hear it.
    pub fn bind_multicast_sender(interface: Ipv4Addr, ttl: u32) -> io::Result<UdpSocket> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
        sock.set_multicast_if_v4(&interface)?;
        sock.set_multicast_ttl_v4(ttl)?;
        sock.set_multicast_loop_v4(true)?;
        sock.bind(&SocketAddr::V4(SocketAddrV4::new(interface, 0)).into())?;
        Ok(UdpSocket { inner: Registered::new(sock)? })
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
            match self.try_send_to(&buf, to) {
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                res => return (res, buf),
            }
        }
        Op::new(op::SendTo::new(self.inner.fd(), buf, &SockAddr::from(to)), self.inner.reg).await
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sock.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
    }
}
