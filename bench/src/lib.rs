//! Benchmark fixtures: raw UDP and TCP ping-pong floors and multispace null calls, each in
//! both waiting styles, set up once and driven for a given number of round trips so that
//! criterion and the report binaries measure exactly the same thing.
//!
//! Layout on a 2-core machine: the echoing side is pinned to CPU 0, the calling side to CPU 1,
//! for every system alike.

#![forbid(unsafe_code)]
// Fixtures hold threads and runtimes; Debug output would say nothing useful.
#![allow(missing_debug_implementations)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use multispace_rpc::{
    spawn, CallOptions, Client, DriverChoice, DriverKind, Message, Runtime, RuntimeBuilder, Server, Service, Status,
    WaitMode,
};

/// How both ends wait for the next message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Waiting {
    /// Block in the kernel (blocking sockets; the runtime's default sleeping mode).
    Sleep,
    /// Spin on non-blocking sockets (the runtime's busy-poll mode).
    Spin,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Waiting::Sleep => "sleep",
            Waiting::Spin => "spin",
        })
    }
}

/// Pin the current thread to the `cpu`-th CPU the process was allowed at its first pin.
/// The set is read once: a thread spawned by an already pinned thread inherits one CPU, and
/// asking it for "all" CPUs would put every side of a benchmark on the same core.
fn pin(cpu: usize) {
    static CPUS: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    let ids = CPUS.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default());
    if !ids.is_empty() {
        core_affinity::set_for_current(ids[cpu % ids.len()]);
    }
}

/// Something that can do `n` round trips and report each one's latency.
pub trait PingPong {
    /// Run `n` round trips; returns the total time and records each in `hist` (ns) if given.
    fn run(&mut self, n: u64, hist: Option<&mut Histogram<u64>>) -> Duration;
}

fn spin_recv<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            r => return r,
        }
    }
}

/// Raw UDP ping-pong between two threads (the paper's floor: two C programs, here two Rust
/// threads with plain sockets).
pub struct RawUdp {
    sock: UdpSocket,
    buf: Vec<u8>,
    payload: usize,
    waiting: Waiting,
    stop: Arc<AtomicBool>,
    echo: Option<JoinHandle<()>>,
}

impl RawUdp {
    /// Echo thread on CPU 0; the caller should run on CPU 1 (see [`pin_caller`]).
    pub fn new(payload: usize, waiting: Waiting) -> std::io::Result<Self> {
        let server = UdpSocket::bind("127.0.0.1:0")?;
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server.local_addr()?)?;
        server.connect(sock.local_addr()?)?;
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
            while !stop2.load(Ordering::Relaxed) {
                match server.recv(&mut buf) {
                    Ok(n) => {
                        // A non-blocking send can refuse for a moment; dropping the reply
                        // would leave the caller waiting forever.
                        while let Err(e) = server.send(&buf[..n]) {
                            if e.kind() != ErrorKind::WouldBlock || stop2.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                    Err(e) => eprintln!("raw udp echo: {e}"),
                }
            }
        });
        Ok(RawUdp { sock, buf: vec![0u8; 65536], payload, waiting, stop, echo: Some(echo) })
    }
}

impl PingPong for RawUdp {
    fn run(&mut self, n: u64, mut hist: Option<&mut Histogram<u64>>) -> Duration {
        let start = Instant::now();
        let msg = vec![0u8; self.payload.max(1)];
        for _ in 0..n {
            let t = Instant::now();
            while let Err(e) = self.sock.send(&msg) {
                assert!(e.kind() == ErrorKind::WouldBlock, "udp send: {e}");
            }
            let r = match self.waiting {
                Waiting::Spin => spin_recv(|| self.sock.recv(&mut self.buf)),
                Waiting::Sleep => self.sock.recv(&mut self.buf),
            };
            r.expect("udp recv");
            if let Some(h) = hist.as_deref_mut() {
                let _ = h.record(t.elapsed().as_nanos() as u64);
            }
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
    payload: usize,
    waiting: Waiting,
    echo: Option<JoinHandle<()>>,
}

impl RawTcp {
    /// Echo thread on CPU 0.
    pub fn new(payload: usize, waiting: Waiting) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let stream = TcpStream::connect(listener.local_addr()?)?;
        let (mut server, _) = listener.accept()?;
        let spin = waiting == Waiting::Spin;
        for s in [&stream, &server] {
            s.set_nodelay(true)?;
            s.set_nonblocking(spin)?;
        }
        let len = payload.max(1);
        let echo = std::thread::spawn(move || {
            pin(0);
            let mut buf = vec![0u8; len];
            loop {
                // Ends when the client closes (read of 0) or errors.
                let mut got = 0;
                while got < len {
                    match server.read(&mut buf[got..]) {
                        Ok(0) => return,
                        Ok(k) => got += k,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                        Err(_) => return,
                    }
                }
                let mut sent = 0;
                while sent < len {
                    match server.write(&buf[sent..]) {
                        Ok(k) => sent += k,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                        Err(_) => return,
                    }
                }
            }
        });
        Ok(RawTcp { stream, buf: vec![0u8; len], payload: len, waiting, echo: Some(echo) })
    }
}

impl PingPong for RawTcp {
    fn run(&mut self, n: u64, mut hist: Option<&mut Histogram<u64>>) -> Duration {
        let start = Instant::now();
        let msg = vec![0u8; self.payload];
        let _ = self.waiting;
        for _ in 0..n {
            let t = Instant::now();
            let mut sent = 0;
            while sent < msg.len() {
                match self.stream.write(&msg[sent..]) {
                    Ok(k) => sent += k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                    Err(e) => panic!("tcp write: {e}"),
                }
            }
            let mut got = 0;
            while got < self.payload {
                match self.stream.read(&mut self.buf[got..]) {
                    Ok(0) => panic!("tcp echo closed"),
                    Ok(k) => got += k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                    Err(e) => panic!("tcp read: {e}"),
                }
            }
            if let Some(h) = hist.as_deref_mut() {
                let _ = h.record(t.elapsed().as_nanos() as u64);
            }
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

/// Method ids of the benchmark service.
pub mod methods {
    /// `f()`
    pub const NULL: u32 = 1;
    /// `f(byte[n])` — returns nothing.
    pub const SINK: u32 = 2;
}

/// Multispace reliable null calls: server on a runtime core on CPU 0, client on a runtime core
/// on CPU 1, both with the given driver and waiting style.
pub struct RpcNull {
    server_rt: Runtime,
    client_rt: Runtime,
    addr: SocketAddr,
}

impl RpcNull {
    /// Start both runtimes and the server.
    pub fn new(driver: DriverKind, waiting: Waiting) -> anyhow::Result<Self> {
        let wait = match waiting {
            Waiting::Sleep => WaitMode::Sleep,
            Waiting::Spin => WaitMode::BusyPoll { idle_after: None },
        };
        let build = |name: &str| {
            RuntimeBuilder::new().cores(1).pin(false).name(name).driver(DriverChoice::Force(driver)).wait(wait).build()
        };
        let server_rt = build("bench-server")?;
        let client_rt = build("bench-client")?;
        server_rt.core(0).run(|| async { pin(0) })?;
        client_rt.core(0).run(|| async { pin(1) })?;
        let addr = server_rt.core(0).run(|| async {
            let svc = Service::builder("bench")
                .method(methods::NULL, |_ctx, _req: Message<()>| async { Ok::<(), Status>(()) })
                .method(methods::SINK, |_ctx, _req: Message<Vec<u8>>| async { Ok::<(), Status>(()) })
                .build();
            let server = Server::bind("127.0.0.1:0".parse().expect("address"), [svc])?;
            let addr = server.local_addr();
            spawn(server.serve()).detach();
            Ok::<_, multispace_rpc::ServeError>(addr)
        })??;
        let mut me = RpcNull { server_rt, client_rt, addr };
        me.run(1000, None); // connect and warm up
        Ok(me)
    }
}

thread_local! {
    static CLIENT: std::cell::RefCell<Option<Client>> = const { std::cell::RefCell::new(None) };
}

impl PingPong for RpcNull {
    fn run(&mut self, n: u64, hist: Option<&mut Histogram<u64>>) -> Duration {
        let addr = self.addr;
        let record = hist.is_some();
        let (elapsed, h) = self
            .client_rt
            .core(0)
            .run(move || async move {
                let client = CLIENT.with(|c| c.borrow_mut().get_or_insert_with(|| Client::new(addr)).clone());
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let start = Instant::now();
                for _ in 0..n {
                    let t = Instant::now();
                    client.call::<(), ()>(methods::NULL, &(), CallOptions::default()).await.expect("null call");
                    if record {
                        let _ = h.record(t.elapsed().as_nanos() as u64);
                    }
                }
                (start.elapsed(), h)
            })
            .expect("client core alive");
        if let Some(out) = hist {
            out.add(h).expect("same histogram bounds");
        }
        elapsed
    }
}

impl Drop for RpcNull {
    fn drop(&mut self) {
        let _ = &self.server_rt;
        let _ = &self.client_rt;
    }
}

/// Pin the calling thread to CPU 1 (the echo sides sit on CPU 0).
pub fn pin_caller() {
    pin(1);
}

/// Summary of one measured row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// What was measured.
    pub system: String,
    /// Waiting style.
    pub waiting: Waiting,
    /// Round trips timed.
    pub calls: u64,
    /// Median round trip.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// Round trips per second, one at a time.
    pub calls_per_s: f64,
    /// Median relative to raw UDP's median in the same waiting style, same run.
    pub ratio_to_raw_udp: Option<f64>,
}

/// Time `n` round trips of `p` into a row.
pub fn measure(system: &str, waiting: Waiting, p: &mut dyn PingPong, n: u64) -> Row {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let total = p.run(n, Some(&mut h));
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Row {
        system: system.to_string(),
        waiting,
        calls: n,
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: h.max() as f64 / 1000.0,
        calls_per_s: n as f64 / total.as_secs_f64(),
        ratio_to_raw_udp: None,
    }
}
