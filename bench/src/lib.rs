//! Benchmark fixtures and measurement for multispace against its floors and peers.
//!
//! Every system under test implements [`PingPong`]: set up once, then driven for a given
//! number of round trips, so criterion (`cargo bench`) and the report binaries (`table1`,
//! `nullcall`) measure exactly the same thing. Systems: the raw UDP and TCP floors
//! ([`raw`]), multispace reliable calls and one-way UDP calls ([`ours`]), for each of the
//! ten call shapes of the NinjaRMI paper's Table 1 ([`shapes`]), in both waiting styles.
//!
//! Layout on a 2-core machine: the answering side is pinned to CPU 0, the calling side to
//! CPU 1, for every system alike. Only one system exists at a time: an idle system's spinning
//! threads would steal a core from the one being measured.

#![deny(unsafe_code)]
// Fixtures hold threads and runtimes; Debug output would say nothing useful.
#![allow(missing_debug_implementations)]

pub mod ours;
pub mod peers;
pub mod raw;
pub mod report;
pub mod shapes;
#[cfg(feature = "tonic")]
pub mod table;
pub mod table2;
// setsockopt and sysconf for the raw floors.
#[allow(unsafe_code)]
pub mod throughput;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use multispace_rpc::DriverKind;
use serde::Serialize;

use shapes::Shape;

/// How both ends wait for the next message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
pub(crate) fn pin(cpu: usize) {
    static CPUS: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    let ids = CPUS.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default());
    if !ids.is_empty() {
        core_affinity::set_for_current(ids[cpu % ids.len()]);
    }
}

/// Pin the calling thread to CPU 1 (the answering sides sit on CPU 0).
pub fn pin_caller() {
    pin(1);
}

/// Something that can do `n` round trips and report each one's latency.
pub trait PingPong {
    /// Run `n` round trips; returns the total time and records each in `hist` (ns) if given.
    fn run(&mut self, n: u64, hist: Option<&mut Histogram<u64>>) -> Duration;
}

/// A system that can keep several calls in flight (throughput runs).
pub trait Windowed {
    /// Make `n` null calls with `window` of them in flight at a time; returns the total time.
    fn run_window(&mut self, n: u64, window: usize) -> Duration;
}

pub(crate) fn record(hist: &mut Option<&mut Histogram<u64>>, start: Instant) {
    if let Some(h) = hist.as_deref_mut() {
        let _ = h.record(start.elapsed().as_nanos() as u64);
    }
}

/// The systems measured side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum System {
    /// Raw UDP ping-pong, std sockets (blocking or spinning): the floor.
    RawUdp,
    /// Raw UDP ping-pong through io_uring submit-and-wait (sleeping style only).
    RawUringUdp,
    /// Raw UDP ping-pong whose echo serves any client from one unconnected socket
    /// (`recvfrom`/`sendto`, routed per datagram), as a server of many clients must.
    RawUdpUnconnected,
    /// Raw UDP ping-pong carrying the bytes of our null call over UDP (a 48-byte request:
    /// header and session block; a 32-byte reply: header), where [`System::RawUdp`] sends
    /// empty datagrams, which the kernel handles a little faster than any non-empty one.
    /// Null call (`Shape::Void`) only.
    RawUdpCallBytes,
    /// Both of the above: the null call's bytes, answered from one unconnected socket. The
    /// floor of a server of many clients carrying our null call, with no code of ours at all.
    RawUdpCallBytesUnconnected,
    /// Raw TCP ping-pong, std sockets: the kernel's TCP cost.
    RawTcp,
    /// Multispace reliable call on the io_uring driver.
    RpcUring,
    /// Multispace reliable call on the epoll driver.
    RpcEpoll,
    /// Multispace reliable call over UDP datagram sessions, io_uring driver.
    RpcUdpUring,
    /// The same on the epoll driver.
    RpcUdpEpoll,
    /// Multispace reliable call with mutual TLS 1.3, io_uring driver.
    RpcTlsUring,
    /// Multispace one-way UDP call plus one-way acknowledgement, io_uring driver.
    OneWayUring,
    /// The same on the epoll driver.
    OneWayEpoll,
    /// The null call through the generated stub and dispatcher (io_uring); `f()` only.
    StubUring,
    /// tarpc (tokio, TCP, bincode), sleeping style only.
    Tarpc,
    /// tonic (gRPC over HTTP/2), sleeping style only.
    Tonic,
    /// capnp-rpc (two-party over TCP), sleeping style only; needs the `capnp` tool at build.
    Capnp,
}

/// Our null call over UDP as datagrams: the request's header and session block, the reply's
/// header (the raw rows that carry the same bytes).
const NULL_CALL_REQUEST: usize =
    multispace_rpc::proto::frame::HEADER_LEN + multispace_rpc::proto::session::SESSION_BLOCK_LEN;
const NULL_CALL_REPLY: usize = multispace_rpc::proto::frame::HEADER_LEN;

/// The systems of the quick null-call comparison (`nullcall`, `benches/null_call.rs`).
pub const NULL_CALL_SYSTEMS: [System; 10] = [
    System::RawUdp,
    System::RawUdpUnconnected,
    System::RawUdpCallBytes,
    System::RawUdpCallBytesUnconnected,
    System::RawTcp,
    System::RpcUring,
    System::RpcEpoll,
    System::RpcUdpUring,
    System::RpcUdpEpoll,
    System::StubUring,
];

/// Every system, floors first.
pub const SYSTEMS: [System; 14] = [
    System::RawUdp,
    System::RawUringUdp,
    System::RawTcp,
    System::RpcUring,
    System::RpcTlsUring,
    System::RpcEpoll,
    System::RpcUdpUring,
    System::RpcUdpEpoll,
    System::OneWayUring,
    System::OneWayEpoll,
    System::StubUring,
    System::Tarpc,
    System::Tonic,
    System::Capnp,
];

impl System {
    /// Human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            System::RawUdp => "raw UDP",
            System::RawUringUdp => "raw UDP (io_uring)",
            System::RawUdpUnconnected => "raw UDP, unconnected echo",
            System::RawUdpCallBytes => "raw UDP, the null call's bytes",
            System::RawUdpCallBytesUnconnected => "raw UDP, the null call's bytes, unconnected echo",
            System::RawTcp => "raw TCP",
            System::RpcUring => "multispace rpc (io_uring)",
            System::RpcEpoll => "multispace rpc (epoll)",
            System::RpcUdpUring => "multispace rpc UDP (io_uring)",
            System::RpcUdpEpoll => "multispace rpc UDP (epoll)",
            System::RpcTlsUring => "multispace rpc mTLS (io_uring)",
            System::OneWayUring => "multispace one-way+ack (io_uring)",
            System::OneWayEpoll => "multispace one-way+ack (epoll)",
            System::StubUring => "multispace generated stub (io_uring)",
            System::Tarpc => "tarpc (tokio, bincode)",
            System::Tonic => "tonic (gRPC, HTTP/2)",
            System::Capnp => "capnp-rpc (two-party)",
        }
    }

    /// A short identifier for criterion ids and file names.
    pub fn id(self) -> &'static str {
        match self {
            System::RawUdp => "raw_udp",
            System::RawUringUdp => "raw_udp_uring",
            System::RawUdpUnconnected => "raw_udp_unconnected",
            System::RawUdpCallBytes => "raw_udp_call_bytes",
            System::RawUdpCallBytesUnconnected => "raw_udp_call_bytes_unconnected",
            System::RawTcp => "raw_tcp",
            System::RpcUring => "rpc_uring",
            System::RpcEpoll => "rpc_epoll",
            System::RpcUdpUring => "rpc_udp_uring",
            System::RpcUdpEpoll => "rpc_udp_epoll",
            System::RpcTlsUring => "rpc_tls_uring",
            System::OneWayUring => "oneway_uring",
            System::OneWayEpoll => "oneway_epoll",
            System::StubUring => "stub_uring",
            System::Tarpc => "tarpc",
            System::Tonic => "tonic",
            System::Capnp => "capnp",
        }
    }

    /// Whether this system has a row for `shape` in `waiting` style.
    pub fn applies(self, shape: Shape, waiting: Waiting) -> bool {
        match self {
            System::RawUringUdp => waiting == Waiting::Sleep,
            System::OneWayUring | System::OneWayEpoll => shape.no_result(),
            System::StubUring | System::RawUdpCallBytes | System::RawUdpCallBytesUnconnected => shape == Shape::Void,
            // Peers run only when built in, and only in their own (sleeping) style.
            System::Tarpc => cfg!(feature = "tarpc") && waiting == Waiting::Sleep,
            System::Tonic => cfg!(feature = "tonic") && waiting == Waiting::Sleep,
            System::Capnp => cfg!(has_capnp) && waiting == Waiting::Sleep,
            _ => true,
        }
    }

    /// Set the system up for `shape` (connected and warmed up).
    pub fn build(self, shape: Shape, waiting: Waiting) -> anyhow::Result<Box<dyn PingPong>> {
        let (req, resp) = (shape.request_len(), shape.response_len());
        Ok(match self {
            System::RawUdp => Box::new(raw::RawUdp::new(req, resp, waiting)?),
            System::RawUdpUnconnected => Box::new(raw::RawUdp::unconnected(req, resp, waiting)?),
            System::RawUdpCallBytes => Box::new(raw::RawUdp::new(NULL_CALL_REQUEST, NULL_CALL_REPLY, waiting)?),
            System::RawUdpCallBytesUnconnected => {
                Box::new(raw::RawUdp::unconnected(NULL_CALL_REQUEST, NULL_CALL_REPLY, waiting)?)
            }
            System::RawUringUdp => Box::new(raw::RawUringUdp::new(req, resp)?),
            System::RawTcp => Box::new(raw::RawTcp::new(req, resp, waiting)?),
            System::RpcUring => Box::new(ours::Rpc::new(DriverKind::Uring, waiting, shape)?),
            System::RpcEpoll => Box::new(ours::Rpc::new(DriverKind::Epoll, waiting, shape)?),
            System::RpcUdpUring => Box::new(ours::Rpc::udp(DriverKind::Uring, waiting, shape)?),
            System::RpcUdpEpoll => Box::new(ours::Rpc::udp(DriverKind::Epoll, waiting, shape)?),
            System::RpcTlsUring => {
                Box::new(ours::Rpc::with_tls(DriverKind::Uring, waiting, shape, Some(ours::tls_pair()?))?)
            }
            System::OneWayUring => Box::new(ours::OneWayPair::new(DriverKind::Uring, waiting, shape)?),
            System::OneWayEpoll => Box::new(ours::OneWayPair::new(DriverKind::Epoll, waiting, shape)?),
            System::StubUring => Box::new(ours::Stub::new(DriverKind::Uring, waiting)?),
            #[cfg(feature = "tarpc")]
            System::Tarpc => Box::new(peers::tarpc_peer::Tarpc::new(shape)?),
            #[cfg(not(feature = "tarpc"))]
            System::Tarpc => anyhow::bail!("built without the `tarpc` feature"),
            #[cfg(feature = "tonic")]
            System::Tonic => Box::new(peers::tonic_peer::Tonic::new(shape)?),
            #[cfg(not(feature = "tonic"))]
            System::Tonic => anyhow::bail!("built without the `tonic` feature"),
            #[cfg(has_capnp)]
            System::Capnp => Box::new(peers::capnp_peer::Capnp::new(shape)?),
            #[cfg(not(has_capnp))]
            System::Capnp => anyhow::bail!("built without capnp-rpc (feature `capnp` and the capnp tool)"),
        })
    }
}

/// Summary of one measured row and system.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The Table 1 row (call shape), e.g. `int f(int)`.
    pub row: String,
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
    /// Median relative to raw UDP's median for the same shape, same waiting style, same run.
    pub ratio_to_raw_udp: Option<f64>,
    /// p99 relative to raw UDP's p99, likewise.
    pub p99_ratio_to_raw_udp: Option<f64>,
}

/// Time `n` round trips of `p` into a row, also returning the histogram (ns).
pub fn measure(row: &str, system: &str, waiting: Waiting, p: &mut dyn PingPong, n: u64) -> (Row, Histogram<u64>) {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let total = p.run(n, Some(&mut h));
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let r = Row {
        row: row.to_string(),
        system: system.to_string(),
        waiting,
        calls: h.len(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: h.max() as f64 / 1000.0,
        calls_per_s: n as f64 / total.as_secs_f64(),
        ratio_to_raw_udp: None,
        p99_ratio_to_raw_udp: None,
    };
    (r, h)
}
