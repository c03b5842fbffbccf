use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use bytes::BytesMut;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::Registered;
use crate::driver::op::{self, Op};

/// A TCP stream on the current core. `TCP_NODELAY` is on: RPC frames are sent whole.
#[derive(Debug)]
pub struct TcpStream {
    inner: Registered,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").field("fd", &self.fd()).finish()
    }
}

impl TcpStream {
    /// Connect to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
        sock.set_nodelay(true)?;
        let inner = Registered::new(sock)?;
        Op::new(op::Connect::new(inner.fd(), SockAddr::from(addr)), inner.reg).await?;
        Ok(TcpStream { inner })
    }

    fn from_fd(fd: RawFd) -> io::Result<TcpStream> {
        let sock = crate::sys::socket_from_accepted(fd);
        sock.set_nodelay(true)?;
        Ok(TcpStream { inner: Registered::new(sock)? })
    }

    /// Abort the connection when sent data stays unacknowledged for `timeout`
    /// (TCP_USER_TIMEOUT); `None` restores the kernel's behaviour.
    pub fn set_user_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.sock.set_tcp_user_timeout(timeout)
    }

    /// Receive into the spare capacity of `buf` (reserve first). `Ok(0)` is end of stream.
    pub async fn recv(&self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        Op::new(op::Recv { fd: self.inner.fd(), buf }, self.inner.reg).await
    }

    /// A receiver for this stream's bytes: on io_uring one multishot receive over a small
    /// provided-buffer ring stays armed, so a busy connection costs no submission and no poll
    /// re-arm per read. It must not outlive the stream.
    pub(crate) fn receiver(&self) -> crate::driver::multishot::MultiReceiver {
        use crate::driver::multishot::{Kind, MultiReceiver};
        MultiReceiver::new(self.inner.fd(), self.inner.reg, Kind::Stream)
    }

    /// Send `buf[pos..]` once; returns how many bytes went.
    ///
    /// On a busy-polling core the bytes go out at once with a non-blocking `send`, as a
    /// spinning raw socket loop sends them, rather than as a submission that waits for the
    /// loop's next io_uring enter and whose completion takes another turn; the driver is used
    /// only when the socket's buffer is full.
    pub async fn send(&self, buf: BytesMut, pos: usize) -> (io::Result<usize>, BytesMut) {
        if crate::runtime::busy_poll_mode() {
            match crate::sys::send(self.inner.fd(), &buf[pos..]) {
                Ok(n) if n > 0 => return (Ok(n), buf),
                Err(e) if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                    return (Err(e), buf)
                }
                _ => {}
            }
        }
        Op::new(op::Send { fd: self.inner.fd(), buf, pos }, self.inner.reg).await
    }

    /// Send all of `buf`.
    pub async fn send_all(&self, mut buf: BytesMut) -> (io::Result<()>, BytesMut) {
        let mut pos = 0;
        while pos < buf.len() {
            let (res, b) = self.send(buf, pos).await;
            buf = b;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => pos += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sock.peer_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// This end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sock.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Shut down one or both directions (wakes a pending receive on either end).
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.inner.sock.shutdown(how)
    }
}

/// A TCP listener on the current core.
#[derive(Debug)]
pub struct TcpListener {
    inner: Registered,
}

impl TcpListener {
    /// Bind and listen. With `reuse_port`, several cores may bind the same address and the
    /// kernel spreads connections across them (thread-per-core accept).
    pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
        sock.set_reuse_address(true)?;
        if reuse_port {
            sock.set_reuse_port(true)?;
        }
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        Ok(TcpListener { inner: Registered::new(sock)? })
    }

    /// Accept one connection.
    pub async fn accept(&self) -> io::Result<TcpStream> {
        let fd = Op::new(op::Accept { fd: self.inner.fd() }, self.inner.reg).await?;
        TcpStream::from_fd(fd)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.sock.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
    }
}
