//! The floors: raw UDP and TCP ping-pong between two threads with plain sockets (the paper's
//! "two C programs"), and raw UDP through io_uring submit-and-wait. No protocol, no
//! marshalling: what the kernel costs before any RPC layer.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::{pin, record, PingPong, Waiting};

fn spin_recv<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            r => return r,
        }
    }
}

fn send_retrying(sock: &UdpSocket, msg: &[u8]) {
    // A non-blocking send can refuse for a moment; dropping the datagram would stall the
    // ping-pong forever.
    while let Err(e) = sock.send(msg) {
        assert!(e.kind() == ErrorKind::WouldBlock, "udp send: {e}");
    }
}

/// [`send_retrying`] to `to` on an unconnected socket.
fn send_to_retrying(sock: &UdpSocket, msg: &[u8], to: std::net::SocketAddr) {
    while let Err(e) = sock.send_to(msg, to) {
        assert!(e.kind() == ErrorKind::WouldBlock, "udp send: {e}");
    }
}

/// Raw UDP ping-pong: `request` bytes out, `response` bytes back.
pub struct RawUdp {
    sock: UdpSocket,
    buf: Vec<u8>,
    request: usize,
    waiting: Waiting,
    stop: Arc<AtomicBool>,
    echo: Option<JoinHandle<()>>,
}

impl RawUdp {
    /// Echo thread on CPU 0; the caller should run on CPU 1 (see [`crate::pin_caller`]).
    pub fn new(request: usize, response: usize, waiting: Waiting) -> std::io::Result<Self> {
        Self::with_echo(request, response, waiting, true)
    }

    /// [`RawUdp::new`] with an echo that answers whoever sent (`recv_from`/`send_to` on an
    /// unconnected socket), as a server of many clients does.
    pub fn unconnected(request: usize, response: usize, waiting: Waiting) -> std::io::Result<Self> {
        Self::with_echo(request, response, waiting, false)
    }

    fn with_echo(request: usize, response: usize, waiting: Waiting, connected: bool) -> std::io::Result<Self> {
        let server = UdpSocket::bind("127.0.0.1:0")?;
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server.local_addr()?)?;
        if connected {
            server.connect(sock.local_addr()?)?;
        }
        let spin = waiting == Waiting::Spin;
        server.set_nonblocking(spin)?;
        sock.set_nonblocking(spin)?;
        // A blocking echo thread is released at the end by a read timeout.
        server.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let echo = std::thread::spawn(move || {
            pin(0);
            let mut buf = vec![0u8; 65536];
            let reply = vec![0u8; response];
            while !stop2.load(Ordering::Relaxed) {
                if !connected {
                    match server.recv_from(&mut buf) {
                        Ok((_, peer)) => send_to_retrying(&server, &reply, peer),
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) => eprintln!("raw udp echo: {e}"),
                    }
                    continue;
                }
                match server.recv(&mut buf) {
                    Ok(_) => send_retrying(&server, &reply),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                    Err(e) => eprintln!("raw udp echo: {e}"),
                }
            }
        });
        Ok(RawUdp { sock, buf: vec![0u8; 65536], request, waiting, stop, echo: Some(echo) })
    }
}

impl PingPong for RawUdp {
    fn run(&mut self, n: u64, mut hist: Option<&mut Histogram<u64>>) -> Duration {
        let start = Instant::now();
        let msg = vec![0u8; self.request];
        for _ in 0..n {
            let t = Instant::now();
            send_retrying(&self.sock, &msg);
            let r = match self.waiting {
                Waiting::Spin => spin_recv(|| self.sock.recv(&mut self.buf)),
                Waiting::Sleep => self.sock.recv(&mut self.buf),
            };
            r.expect("udp recv");
            record(&mut hist, t);
        }
        start.elapsed()
    }
}

impl Drop for RawUdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.echo.take() {
            let _ = t.join();
        }
    }
}

/// Raw TCP ping-pong (`TCP_NODELAY`): what the kernel's TCP costs before any RPC protocol.
pub struct RawTcp {
    stream: TcpStream,
    buf: Vec<u8>,
    request: usize,
    response: usize,
    echo: Option<JoinHandle<()>>,
}

fn read_exact_spinning(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(k) => got += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn write_all_spinning(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < buf.len() {
        match s.write(&buf[sent..]) {
            Ok(k) => sent += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl RawTcp {
    /// Echo thread on CPU 0. Sizes of at least one byte (a stream has no empty messages).
    pub fn new(request: usize, response: usize, waiting: Waiting) -> std::io::Result<Self> {
        let (request, response) = (request.max(1), response.max(1));
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let stream = TcpStream::connect(listener.local_addr()?)?;
        let (mut server, _) = listener.accept()?;
        let spin = waiting == Waiting::Spin;
        for s in [&stream, &server] {
            s.set_nodelay(true)?;
            s.set_nonblocking(spin)?;
        }
        let echo = std::thread::spawn(move || {
            pin(0);
            let mut buf = vec![0u8; request];
            let reply = vec![0u8; response];
            // Ends when the client closes (read of 0) or errors.
            while let Ok(true) = read_exact_spinning(&mut server, &mut buf) {
                if write_all_spinning(&mut server, &reply).is_err() {
                    return;
                }
            }
        });
        Ok(RawTcp { stream, buf: vec![0u8; response], request, response, echo: Some(echo) })
    }
}

impl PingPong for RawTcp {
    fn run(&mut self, n: u64, mut hist: Option<&mut Histogram<u64>>) -> Duration {
        let start = Instant::now();
        let msg = vec![0u8; self.request];
        for _ in 0..n {
            let t = Instant::now();
            write_all_spinning(&mut self.stream, &msg).expect("tcp write");
            assert!(read_exact_spinning(&mut self.stream, &mut self.buf[..self.response]).expect("tcp read"));
            record(&mut hist, t);
        }
        start.elapsed()
    }
}

impl Drop for RawTcp {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.echo.take() {
            let _ = t.join();
        }
    }
}

/// Raw UDP ping-pong where both ends use io_uring (one ring each, SINGLE_ISSUER +
/// DEFER_TASKRUN, one submit-and-wait per step): the io_uring floor in the sleeping style.
pub struct RawUringUdp {
    // Dropped before the socket whose fd it uses.
    client: uring_udp::Endpoint,
    _client_sock: UdpSocket,
    request: usize,
    stop: Arc<AtomicBool>,
    echo: Option<JoinHandle<()>>,
    _server_sock: Arc<UdpSocket>,
}

impl RawUringUdp {
    /// Echo thread on CPU 0.
    pub fn new(request: usize, response: usize) -> std::io::Result<Self> {
        let server = Arc::new(UdpSocket::bind("127.0.0.1:0")?);
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server.local_addr()?)?;
        server.connect(sock.local_addr()?)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, server2) = (stop.clone(), server.clone());
        let echo = std::thread::spawn(move || {
            pin(0);
            let mut ep = uring_udp::Endpoint::new(server2.as_raw_fd()).expect("io_uring");
            let reply = vec![0u8; response];
            while !stop2.load(Ordering::Relaxed) {
                // Bounded waits so the thread notices `stop`.
                match ep.recv(Some(Duration::from_millis(50))) {
                    Ok(Some(_)) => ep.send(&reply).expect("uring send"),
                    Ok(None) => {}
                    Err(e) => eprintln!("raw io_uring echo: {e}"),
                }
            }
        });
        let client = uring_udp::Endpoint::new(sock.as_raw_fd())?;
        Ok(RawUringUdp { client, _client_sock: sock, request, stop, echo: Some(echo), _server_sock: server })
    }
}

impl PingPong for RawUringUdp {
    fn run(&mut self, n: u64, mut hist: Option<&mut Histogram<u64>>) -> Duration {
        let start = Instant::now();
        let msg = vec![0u8; self.request];
        for _ in 0..n {
            let t = Instant::now();
            self.client.send(&msg).expect("uring send");
            self.client.recv(None).expect("uring recv").expect("no timeout given");
            record(&mut hist, t);
        }
        start.elapsed()
    }
}

impl Drop for RawUringUdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.echo.take() {
            let _ = t.join();
        }
    }
}

/// A minimal io_uring datagram endpoint for the floor (kept apart: the only unsafe code in
/// the benchmarks).
#[allow(unsafe_code)]
mod uring_udp {
    use std::io;
    use std::os::fd::RawFd;
    use std::time::Duration;

    use io_uring::{opcode, types, IoUring};

    pub(super) struct Endpoint {
        ring: IoUring,
        fd: RawFd,
        buf: Vec<u8>,
    }

    impl Endpoint {
        pub(super) fn new(fd: RawFd) -> io::Result<Self> {
            let ring = IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(8)?;
            Ok(Endpoint { ring, fd, buf: vec![0u8; 65536] })
        }

        fn complete_one(&mut self, timeout: Option<Duration>) -> io::Result<Option<i32>> {
            let res = match timeout {
                None => self.ring.submit_and_wait(1),
                Some(d) => {
                    let ts = types::Timespec::from(d);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
            };
            match res {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => return Ok(None),
                Err(e) => return Err(e),
            }
            Ok(self.ring.completion().next().map(|c| c.result()))
        }

        pub(super) fn send(&mut self, msg: &[u8]) -> io::Result<()> {
            let e = opcode::Send::new(types::Fd(self.fd), msg.as_ptr(), msg.len() as u32).build();
            // SAFETY: `msg` outlives the operation: we wait for its completion right here.
            unsafe { self.ring.submission().push(&e) }.map_err(|_| io::Error::other("sq full"))?;
            match self.complete_one(None)? {
                Some(r) if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                _ => Ok(()),
            }
        }

        /// One datagram, or `None` if `timeout` passed first (the receive is then cancelled
        /// and reaped before returning, so the buffer is free again).
        pub(super) fn recv(&mut self, timeout: Option<Duration>) -> io::Result<Option<usize>> {
            let e = opcode::Recv::new(types::Fd(self.fd), self.buf.as_mut_ptr(), self.buf.len() as u32).build();
            // SAFETY: `self.buf` outlives the operation: it completes (or is cancelled and
            // reaped) before this function returns.
            unsafe { self.ring.submission().push(&e) }.map_err(|_| io::Error::other("sq full"))?;
            match self.complete_one(timeout)? {
                Some(r) if r < 0 => Err(io::Error::from_raw_os_error(-r)),
                Some(r) => Ok(Some(r as usize)),
                None => {
                    let c = opcode::AsyncCancel::new(0).build().user_data(1);
                    // SAFETY: a cancel request points at no memory.
                    unsafe { self.ring.submission().push(&c) }.map_err(|_| io::Error::other("sq full"))?;
                    // Reap both the cancel and the receive (which may have completed after all).
                    let mut left = 2;
                    while left > 0 {
                        self.ring.submit_and_wait(1)?;
                        left -= self.ring.completion().count();
                    }
                    Ok(None)
                }
            }
        }
    }
}
