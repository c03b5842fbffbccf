//! Throughput: null calls per second with 1, 16, 32 and 256 in flight on one client core against
//! one server core (ours, raw windowed UDP echo, the peers); one-way and multicast messages
//! per second against a raw UDP blast; and how calls per second grow from one core to all.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multispace_rpc::{
    spawn, Client, DriverKind, Message, MulticastGroup, OneWaySender, OneWayServer, RuntimeBuilder, Server, Service,
    Status,
};
use serde::Serialize;

use crate::ours::{runtimes, windowed_null_calls};
use crate::{pin, Waiting, Windowed};

/// Null-call payload of the raw floors, the size of our request frame.
const RAW_LEN: usize = 32;

/// Give a raw socket a receive buffer big enough for a full window (the default drops
/// datagrams beyond a few hundred in flight, and each drop would cost the floor a timeout).
fn big_rcvbuf(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt reads `size` (a live c_int of the given length) during the call.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Number of CPUs online (not the caller's affinity mask, which benchmarks narrow).
pub fn cpus_online() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Send `n` copies of `msg` on the connected `tx`, `batch` per `sendmmsg`.
fn send_batched(tx: &UdpSocket, msg: &[u8], n: u64, batch: usize) {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec { iov_base: msg.as_ptr() as *mut libc::c_void, iov_len: msg.len() };
    // SAFETY: an all-zero mmsghdr is valid (null name, no control data); each points at `iov`.
    let mut hdrs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect();
    for h in &mut hdrs {
        h.msg_hdr.msg_iov = &mut iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    let mut left = n;
    while left > 0 {
        let k = (left as usize).min(batch);
        // SAFETY: `hdrs` holds `k` initialised headers whose single iovec points at `msg`,
        // which outlives the call; the kernel only reads them (and writes msg_len).
        let sent = unsafe { libc::sendmmsg(tx.as_raw_fd(), hdrs.as_mut_ptr(), k as u32, 0) };
        // A failed call (buffer full) drops that batch, as a failed `send` drops a datagram.
        left -= if sent > 0 { sent as u64 } else { k as u64 };
    }
}

/// Let the calling thread run on every online CPU (undoing an earlier pin).
fn allow_all_cpus() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it (CPU numbers
    // past its size are ignored by the macro's bounds), and sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus_online() {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Raw UDP echo with a window: the client keeps `window` datagrams in flight, sending one
/// for each echo received (blocking sockets, one syscall per datagram).
pub struct RawWindowedUdp {
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
    echo: Option<std::thread::JoinHandle<()>>,
}

impl RawWindowedUdp {
    /// Echo thread on CPU 0.
    pub fn new() -> std::io::Result<Self> {
        let server = UdpSocket::bind("127.0.0.1:0")?;
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server.local_addr()?)?;
        server.connect(sock.local_addr()?)?;
        big_rcvbuf(&server);
        big_rcvbuf(&sock);
        server.set_read_timeout(Some(Duration::from_millis(50)))?;
        // A datagram lost on loopback (buffer overflow) must not stall the run for ever.
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let echo = std::thread::spawn(move || {
            pin(0);
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(n) = server.recv(&mut buf) {
                    let _ = server.send(&buf[..n]);
                }
            }
        });
        Ok(RawWindowedUdp { sock, stop, echo: Some(echo) })
    }
}

impl Windowed for RawWindowedUdp {
    fn run_window(&mut self, n: u64, window: usize) -> Duration {
        let msg = [7u8; RAW_LEN];
        let mut buf = [0u8; 2048];
        let start = Instant::now();
        let first = (window as u64).min(n);
        for _ in 0..first {
            let _ = self.sock.send(&msg);
        }
        let (mut sent, mut done) = (first, 0u64);
        while done < sent {
            // A timeout means the datagram was lost: count it done and keep the window full.
            let _ = self.sock.recv(&mut buf);
            done += 1;
            if sent < n {
                let _ = self.sock.send(&msg);
                sent += 1;
            }
        }
        start.elapsed()
    }
}

impl Drop for RawWindowedUdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.echo.take() {
            let _ = t.join();
        }
    }
}

/// One measured throughput figure.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    /// What was measured (`calls`, `one-way`, `multicast`, `transfer MB/s, ...`, `scaling`).
    pub kind: String,
    /// The system.
    pub system: String,
    /// Calls in flight (calls), or cores (scaling), or 0.
    pub window: usize,
    /// Completed calls (or delivered messages) per second.
    pub per_s: f64,
    /// Ratio to the raw floor of the same kind and window in this run.
    pub ratio_to_raw: Option<f64>,
    /// Messages sent but not delivered (one-way kinds only).
    pub lost: Option<u64>,
}

/// Calls per second of `sys` for `n` calls with `window` in flight (best of `rounds`).
pub fn rate(sys: &mut dyn Windowed, n: u64, window: usize, rounds: u32) -> f64 {
    sys.run_window(n.min(2000), window);
    (0..rounds).map(|_| n as f64 / sys.run_window(n, window).as_secs_f64()).fold(0.0, f64::max)
}

/// Wait until `count` stops moving (or reaches `target`), bounded; returns when it last moved.
fn settle(count: &AtomicU64, target: u64, since: Instant) -> Instant {
    let mut last = (count.load(Ordering::Relaxed), Instant::now());
    let give_up = since + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let now = count.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        if now >= target || last.1.elapsed() > Duration::from_millis(100) || Instant::now() > give_up {
            return last.1;
        }
    }
}

/// Raw UDP blast: one thread sends `n` datagrams as fast as it can, another counts them.
/// Returns (delivered per second, lost).
pub fn raw_udp_blast(n: u64) -> std::io::Result<(f64, u64)> {
    raw_blast(n, 1)
}

/// [`raw_udp_blast`] with the sender batching `batch` datagrams per `sendmmsg` call.
pub fn raw_udp_blast_batched(n: u64, batch: usize) -> std::io::Result<(f64, u64)> {
    raw_blast(n, batch)
}

fn raw_blast(n: u64, batch: usize) -> std::io::Result<(f64, u64)> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    rx.set_read_timeout(Some(Duration::from_millis(50)))?;
    big_rcvbuf(&rx);
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    tx.connect(rx.local_addr()?)?;
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (count, stop) = (count.clone(), stop.clone());
        std::thread::spawn(move || {
            pin(0);
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if rx.recv(&mut buf).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let msg = [7u8; RAW_LEN];
    let start = Instant::now();
    if batch <= 1 {
        for _ in 0..n {
            let _ = tx.send(&msg);
        }
    } else {
        send_batched(&tx, &msg, n, batch);
    }
    let end = settle(&count, n, start);
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    let got = count.load(Ordering::Relaxed);
    Ok((got as f64 / (end - start).as_secs_f64(), n - got.min(n)))
}

/// Our one-way calls (unicast, or to a loopback multicast group with one member): the
/// sender's core sends `n` calls as fast as it can, the server's core counts them.
pub fn oneway_blast(driver: DriverKind, n: u64, multicast: bool) -> anyhow::Result<(f64, u64)> {
    let (server_rt, client_rt) = runtimes(driver, Waiting::Sleep)?;
    let count = Arc::new(AtomicU64::new(0));
    let group = MulticastGroup::loopback(std::net::Ipv4Addr::new(239, 255, 42, 77), 47_677);
    let target = {
        let count = count.clone();
        server_rt.core(0).run(move || async move {
            let svc = Service::builder("sink")
                .one_way(1, move |_ctx, _m: Message<u64>| {
                    count.fetch_add(1, Ordering::Relaxed);
                    async {}
                })
                .build();
            let server = if multicast {
                OneWayServer::join(&group, [svc])?
            } else {
                OneWayServer::bind("127.0.0.1:0".parse().expect("address"), [svc])?
            };
            let addr = if multicast { group.addr() } else { server.local_addr() };
            spawn(server.serve()).detach();
            Ok::<_, std::io::Error>(addr)
        })??
    };
    let start = Instant::now();
    client_rt.core(0).run(move || async move {
        // One destination, as the raw blast's connected socket has.
        let sender = if multicast { OneWaySender::multicast(&group) } else { OneWaySender::new() }
            .and_then(|s| s.connect(target))
            .expect("sender");
        for i in 0..n {
            let _ = sender.send(target, 1, &i).await;
        }
    })?;
    let end = settle(&count, n, start);
    let got = count.load(Ordering::Relaxed);
    Ok((got as f64 / (end - start).as_secs_f64(), n - got.min(n)))
}

/// Thread-per-core scaling: `cores` cores, each running its own server and a client keeping
/// `window` null calls in flight to it, nothing shared. Total calls per second.
pub fn scaling(driver: DriverKind, cores: usize, n_per_core: u64, window: usize) -> anyhow::Result<f64> {
    // The runtime pins its cores among the CPUs the building thread may use; the report's
    // caller is pinned to one CPU, so build from a thread that may use all of them.
    let rt = std::thread::spawn(move || {
        allow_all_cpus();
        RuntimeBuilder::new().cores(cores).pin(true).driver(multispace_rpc::DriverChoice::Force(driver)).build()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("runtime builder thread panicked"))??;
    // A plain fn item: it captures nothing, so each core can be handed its own copy.
    async fn work(n_per_core: u64, window: usize) {
        let server = Server::bind(
            "127.0.0.1:0".parse().expect("address"),
            [Service::builder("null").method(1, |_ctx, _r: Message<()>| async { Ok::<(), Status>(()) }).build()],
        )
        .expect("bind");
        let client = Client::new(server.local_addr());
        spawn(server.serve()).detach();
        windowed_null_calls(&client, 1, n_per_core, window).await;
    }
    // Warm up every core, then start them together.
    let warm: Vec<_> = rt.cores().iter().map(|c| c.spawn(move || work(n_per_core.min(2000), window))).collect();
    for w in warm {
        multispace_rpc::runtime::block_on_thread(w)?;
    }
    let start = Instant::now();
    let runs: Vec<_> = rt.cores().iter().map(|c| c.spawn(move || work(n_per_core, window))).collect();
    for r in runs {
        multispace_rpc::runtime::block_on_thread(r)?;
    }
    Ok((n_per_core * cores as u64) as f64 / start.elapsed().as_secs_f64())
}
