//! Multispace fixtures: reliable calls of every Table 1 shape, and one-way UDP calls
//! answered by a one-way acknowledgement (two datagrams, like the raw UDP ping-pong).
//! Server core pinned to CPU 0, client core to CPU 1, both with the same driver and waiting
//! style.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use multispace_rpc::runtime::time::timeout;
use multispace_rpc::tls::certs::{Authority, Leaf};
use multispace_rpc::{
    spawn, CallOptions, Client, ConnConfig, DriverChoice, DriverKind, Message, OneWaySender, OneWayServer, Payload,
    Runtime, RuntimeBuilder, Server, ServerConfig, Service, Status, TlsConfig, Transport, Validate, WaitMode,
};

use multispace_services::calc::{self, CalcClient};
use multispace_services::Calculator;

use crate::shapes::Shape;
use crate::{pin, PingPong, Waiting};

pub(crate) fn runtimes(driver: DriverKind, waiting: Waiting) -> anyhow::Result<(Runtime, Runtime)> {
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
    Ok((server_rt, client_rt))
}

/// The Table 1 service: one method per shape.
fn table1_service() -> Service {
    let shared = Bytes::from(vec![7u8; 1 << 20]);
    Service::builder("table1")
        .method(Shape::Void.method_id(), |_ctx, _r: Message<()>| async { Ok::<(), Status>(()) })
        .method(Shape::Int.method_id(), |_ctx, _r: Message<i32>| async { Ok::<(), Status>(()) })
        .method(Shape::IntInt.method_id(), |_ctx, r: Message<i32>| async move {
            Ok::<i32, Status>(r.to_native().wrapping_add(1))
        })
        .method(Shape::Int4.method_id(), |_ctx, r: Message<[i32; 4]>| async move {
            Ok::<i32, Status>(r.iter().fold(0i32, |a, v| a.wrapping_add(v.to_native())))
        })
        .method(Shape::Bytes(0).method_id(), |_ctx, r: Message<Vec<u8>>| async move {
            std::hint::black_box(r.len());
            Ok::<(), Status>(())
        })
        .method(Shape::ReturnBytes(0).method_id(), |_ctx, r: Message<i32>| async move {
            Ok::<Vec<u8>, Status>(vec![7u8; r.to_native().clamp(0, 1 << 20) as usize])
        })
        .method(SHARED_REPLY_METHOD, move |_ctx, r: Message<i32>| {
            let reply = shared.slice(..r.to_native().clamp(0, 1 << 20) as usize);
            async move { Ok::<Bytes, Status>(reply) }
        })
        .build()
}

/// `byte[n] f(int)` answered from a buffer the server built once (a `Bytes` slice, archived
/// like a `Vec<u8>`), as a raw TCP echo answers: the large-transfer rows measure moving the
/// bytes, not making them. Table 1 builds the array per call, as its peers do.
const SHARED_REPLY_METHOD: u32 = 7;

/// Reliable calls of one shape over TCP, plain or with mutual TLS.
pub struct Rpc {
    // Field order: the client runtime goes first, so its connection closes before the server.
    client_rt: Runtime,
    _server_rt: Runtime,
    addr: SocketAddr,
    shape: Shape,
    /// The method called: the shape's, or [`SHARED_REPLY_METHOD`].
    method: u32,
    conn: ConnConfig,
}

/// Server and client TLS configurations from a throwaway cluster CA.
pub fn tls_pair() -> anyhow::Result<(TlsConfig, TlsConfig)> {
    let ca = Authority::create("bench CA", 1)?;
    Ok((tls_config(&ca, "bench-server")?, tls_config(&ca, "bench-client")?))
}

/// A configuration with a newly issued certificate from `ca`: a peer no one has seen.
pub fn tls_config(ca: &Authority, name: &str) -> anyhow::Result<TlsConfig> {
    let issued = ca.issue(&Leaf::new(name, 1))?;
    Ok(TlsConfig::from_pem(ca.cert_pem().as_bytes(), issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())?)
}

impl Rpc {
    /// Start both runtimes and the server, connect and warm up.
    pub fn new(driver: DriverKind, waiting: Waiting, shape: Shape) -> anyhow::Result<Self> {
        Self::with_tls(driver, waiting, shape, None)
    }

    /// `byte[len] f(int)` answered from a buffer the server built once: for transfer rates
    /// against raw TCP, whose echo does not build its reply per call either.
    pub fn shared_reply(driver: DriverKind, waiting: Waiting, len: usize) -> anyhow::Result<Self> {
        Self::build(driver, waiting, Shape::ReturnBytes(len), None, Transport::Tcp, SHARED_REPLY_METHOD)
    }

    /// [`Rpc::new`] over UDP datagram sessions.
    pub fn udp(driver: DriverKind, waiting: Waiting, shape: Shape) -> anyhow::Result<Self> {
        Self::build(driver, waiting, shape, None, Transport::Udp, shape.method_id())
    }

    /// [`Rpc::new`], with mutual TLS when `tls` is (server, client) configurations.
    pub fn with_tls(
        driver: DriverKind,
        waiting: Waiting,
        shape: Shape,
        tls: Option<(TlsConfig, TlsConfig)>,
    ) -> anyhow::Result<Self> {
        Self::build(driver, waiting, shape, tls, Transport::Tcp, shape.method_id())
    }

    fn build(
        driver: DriverKind,
        waiting: Waiting,
        shape: Shape,
        tls: Option<(TlsConfig, TlsConfig)>,
        transport: Transport,
        method: u32,
    ) -> anyhow::Result<Self> {
        let (server_rt, client_rt) = runtimes(driver, waiting)?;
        let (server_tls, client_tls) = tls.map_or((None, None), |(s, c)| (Some(s), Some(c)));
        let addr = server_rt.core(0).run(move || async move {
            let config = ServerConfig {
                conn: ConnConfig { tls: server_tls, ..ConnConfig::default() },
                datagram: transport == Transport::Udp,
                ..ServerConfig::default()
            };
            let server = Server::bind_with("127.0.0.1:0".parse().expect("address"), [table1_service()], config)?;
            let addr = server.local_addr();
            spawn(server.serve()).detach();
            Ok::<_, multispace_rpc::ServeError>(addr)
        })??;
        let conn = ConnConfig { tls: client_tls, transport, ..ConnConfig::default() };
        let mut me = Rpc { client_rt, _server_rt: server_rt, addr, shape, method, conn };
        me.run(1000, None);
        Ok(me)
    }

    /// Opens `n` fresh connections one after another (each with its handshake when TLS is
    /// on) and records how long each took until it was ready for calls. With `resume`, each
    /// connection also makes one (untimed) null call before it closes, which reads the
    /// server's resumption ticket, so the next connection resumes; without, TLS clients
    /// offer no ticket and every handshake is a full one.
    pub fn connects(&mut self, n: u64, hist: &mut Histogram<u64>, resume: bool) {
        self.connects_as(n, hist, resume, Vec::new());
    }

    /// [`Rpc::connects`], the i-th connection with `fresh[i]` as its TLS configuration when
    /// given (configurations made beforehand, untimed: e.g. each with a certificate neither
    /// end has seen, so both check the other's chain in full).
    pub fn connects_as(&mut self, n: u64, hist: &mut Histogram<u64>, resume: bool, fresh: Vec<TlsConfig>) {
        let (addr, mut conn) = (self.addr, self.conn.clone());
        if !resume {
            conn.tls = conn.tls.map(TlsConfig::without_resumption);
        }
        let h = self
            .client_rt
            .core(0)
            .run(move || async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let mut fresh = fresh.into_iter();
                for _ in 0..n {
                    let mut conn = conn.clone();
                    if let Some(tls) = fresh.next() {
                        conn.tls = Some(if resume { tls } else { tls.without_resumption() });
                    }
                    let t = Instant::now();
                    let client = Client::with_config(addr, conn);
                    client.connect_now().await.expect("benchmark connect");
                    let _ = h.record(t.elapsed().as_nanos() as u64);
                    if resume {
                        let m = Shape::Void.method_id();
                        client.call::<(), ()>(m, &(), CallOptions::default()).await.expect("benchmark call");
                    }
                }
                h
            })
            .expect("client core alive");
        hist.add(h).expect("same histogram bounds");
    }
}

thread_local! {
    static CLIENT: RefCell<Option<Client>> = const { RefCell::new(None) };
}

async fn timed<Req: Payload, Resp: Validate>(client: &Client, method: u32, req: &Req, n: u64, h: &mut Histogram<u64>) {
    for _ in 0..n {
        let t = Instant::now();
        let resp = client.call::<Req, Resp>(method, req, CallOptions::default()).await.expect("benchmark call");
        std::hint::black_box(resp.bytes().len());
        let _ = h.record(t.elapsed().as_nanos() as u64);
    }
}

impl PingPong for Rpc {
    fn run(&mut self, n: u64, hist: Option<&mut Histogram<u64>>) -> Duration {
        let (addr, shape, m, conn) = (self.addr, self.shape, self.method, self.conn.clone());
        let (elapsed, h) = self
            .client_rt
            .core(0)
            .run(move || async move {
                let client =
                    CLIENT.with(|c| c.borrow_mut().get_or_insert_with(|| Client::with_config(addr, conn)).clone());
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let start = Instant::now();
                match shape {
                    Shape::Void => timed::<(), ()>(&client, m, &(), n, &mut h).await,
                    Shape::Int => timed::<i32, ()>(&client, m, &7, n, &mut h).await,
                    Shape::IntInt => timed::<i32, i32>(&client, m, &7, n, &mut h).await,
                    Shape::Int4 => timed::<[i32; 4], i32>(&client, m, &[1, 2, 3, 4], n, &mut h).await,
                    Shape::Bytes(len) => timed::<Vec<u8>, ()>(&client, m, &vec![7u8; len], n, &mut h).await,
                    Shape::ReturnBytes(len) => timed::<i32, Vec<u8>>(&client, m, &(len as i32), n, &mut h).await,
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

/// `n` null calls of `method` on `client`, `window` of them in flight at a time.
pub(crate) async fn windowed_null_calls(client: &Client, method: u32, n: u64, window: usize) {
    let remaining = Rc::new(Cell::new(n));
    let workers: Vec<_> = (0..window)
        .map(|_| {
            let (client, remaining) = (client.clone(), remaining.clone());
            spawn(async move {
                while remaining.get() > 0 {
                    remaining.set(remaining.get() - 1);
                    client.call::<(), ()>(method, &(), CallOptions::default()).await.expect("benchmark call");
                }
            })
        })
        .collect();
    for w in workers {
        w.await;
    }
}

impl crate::Windowed for Rpc {
    fn run_window(&mut self, n: u64, window: usize) -> Duration {
        let (addr, m, conn) = (self.addr, Shape::Void.method_id(), self.conn.clone());
        self.client_rt
            .core(0)
            .run(move || async move {
                let client =
                    CLIENT.with(|c| c.borrow_mut().get_or_insert_with(|| Client::with_config(addr, conn)).clone());
                let start = Instant::now();
                windowed_null_calls(&client, m, n, window).await;
                start.elapsed()
            })
            .expect("client core alive")
    }
}

/// Null calls through the generated calculator stub (`CalcClient::ping`), served by the
/// generated dispatcher: the same path as [`Rpc`]'s `f()` plus whatever the stubs add.
pub struct Stub {
    client_rt: Runtime,
    _server_rt: Runtime,
    addr: SocketAddr,
}

impl Stub {
    /// Start both runtimes and the calculator, connect and warm up.
    pub fn new(driver: DriverKind, waiting: Waiting) -> anyhow::Result<Self> {
        let (server_rt, client_rt) = runtimes(driver, waiting)?;
        let addr = server_rt.core(0).run(|| async {
            let svc = calc::service(Calculator::new("bench"));
            let server = Server::bind("127.0.0.1:0".parse().expect("address"), [svc])?;
            let addr = server.local_addr();
            spawn(server.serve()).detach();
            Ok::<_, multispace_rpc::ServeError>(addr)
        })??;
        let mut me = Stub { client_rt, _server_rt: server_rt, addr };
        me.run(1000, None);
        Ok(me)
    }
}

thread_local! {
    static STUB: RefCell<Option<CalcClient>> = const { RefCell::new(None) };
}

impl PingPong for Stub {
    fn run(&mut self, n: u64, hist: Option<&mut Histogram<u64>>) -> Duration {
        let addr = self.addr;
        let (elapsed, h) = self
            .client_rt
            .core(0)
            .run(move || async move {
                let stub = STUB.with(|c| c.borrow_mut().get_or_insert_with(|| CalcClient::new(addr)).clone());
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let start = Instant::now();
                for _ in 0..n {
                    let t = Instant::now();
                    stub.ping().await.expect("benchmark call");
                    let _ = h.record(t.elapsed().as_nanos() as u64);
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

/// Method id of the acknowledgement the one-way server sends back.
const ACK: u32 = 100;

/// Acknowledgements seen by the client core, and the task waiting for the next one.
#[derive(Default)]
struct Acks {
    seen: Cell<u64>,
    waiter: RefCell<Option<Waker>>,
}

struct OneWayClient {
    sender: OneWaySender,
    acks: Rc<Acks>,
}

thread_local! {
    static ONE_WAY: RefCell<Option<Rc<OneWayClient>>> = const { RefCell::new(None) };
}

/// One-way UDP calls of a shape with no result, each answered by a one-way acknowledgement:
/// a round trip of two best-effort datagrams carrying our framing, comparable with the raw
/// UDP ping-pong. A lost datagram costs a 100 ms timeout and is counted.
pub struct OneWayPair {
    client_rt: Runtime,
    _server_rt: Runtime,
    server: SocketAddr,
    shape: Shape,
    /// Round trips that timed out (datagram lost).
    pub lost: u64,
}

impl OneWayPair {
    /// Start both sides. Panics if `shape` has a result.
    pub fn new(driver: DriverKind, waiting: Waiting, shape: Shape) -> anyhow::Result<Self> {
        assert!(shape.no_result(), "one-way calls carry no result");
        let (server_rt, client_rt) = runtimes(driver, waiting)?;
        let ack_addr = client_rt.core(0).run(|| async {
            let acks = Rc::new(Acks::default());
            let a = acks.clone();
            let svc = Service::builder("acks")
                .one_way(ACK, move |_ctx, _m: Message<()>| {
                    a.seen.set(a.seen.get() + 1);
                    if let Some(w) = a.waiter.borrow_mut().take() {
                        w.wake();
                    }
                    async {}
                })
                .build();
            let server = OneWayServer::bind("127.0.0.1:0".parse().expect("address"), [svc])?;
            let addr = server.local_addr();
            spawn(server.serve()).detach();
            let client = OneWayClient { sender: OneWaySender::new()?, acks };
            ONE_WAY.with(|c| *c.borrow_mut() = Some(Rc::new(client)));
            Ok::<_, std::io::Error>(addr)
        })??;
        let server = server_rt.core(0).run(move || async move {
            let sender = Rc::new(OneWaySender::new()?);
            let ack = move || {
                let s = sender.clone();
                async move {
                    let _ = s.send(ack_addr, ACK, &()).await;
                }
            };
            let (a1, a2, a3) = (ack.clone(), ack.clone(), ack);
            let svc = Service::builder("table1-oneway")
                .one_way(Shape::Void.method_id(), move |_ctx, _m: Message<()>| a1())
                .one_way(Shape::Int.method_id(), move |_ctx, _m: Message<i32>| a2())
                .one_way(Shape::Bytes(0).method_id(), move |_ctx, m: Message<Vec<u8>>| {
                    std::hint::black_box(m.len());
                    a3()
                })
                .build();
            let server = OneWayServer::bind("127.0.0.1:0".parse().expect("address"), [svc])?;
            let addr = server.local_addr();
            spawn(server.serve()).detach();
            Ok::<_, std::io::Error>(addr)
        })??;
        let mut me = OneWayPair { client_rt, _server_rt: server_rt, server, shape, lost: 0 };
        me.run(1000, None);
        Ok(me)
    }
}

async fn one_way_timed<Req: Payload>(
    c: &OneWayClient,
    to: SocketAddr,
    method: u32,
    req: &Req,
    n: u64,
    h: &mut Histogram<u64>,
) -> u64 {
    let mut lost = 0;
    for _ in 0..n {
        let before = c.acks.seen.get();
        let t = Instant::now();
        c.sender.send(to, method, req).await.expect("one-way send");
        let acked = std::future::poll_fn(|cx| {
            if c.acks.seen.get() > before {
                Poll::Ready(())
            } else {
                *c.acks.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        match timeout(Duration::from_millis(100), acked).await {
            Ok(()) => {
                let _ = h.record(t.elapsed().as_nanos() as u64);
            }
            Err(_) => lost += 1,
        }
    }
    lost
}

impl PingPong for OneWayPair {
    fn run(&mut self, n: u64, hist: Option<&mut Histogram<u64>>) -> Duration {
        let (to, shape) = (self.server, self.shape);
        let (elapsed, h, lost) = self
            .client_rt
            .core(0)
            .run(move || async move {
                let c = ONE_WAY.with(|c| c.borrow().clone()).expect("one-way client set up");
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let m = shape.method_id();
                let start = Instant::now();
                let lost = match shape {
                    Shape::Void => one_way_timed(&c, to, m, &(), n, &mut h).await,
                    Shape::Int => one_way_timed(&c, to, m, &7i32, n, &mut h).await,
                    Shape::Bytes(len) => one_way_timed(&c, to, m, &vec![7u8; len], n, &mut h).await,
                    _ => unreachable!("checked in new"),
                };
                (start.elapsed(), h, lost)
            })
            .expect("client core alive");
        self.lost += lost;
        if let Some(out) = hist {
            out.add(h).expect("same histogram bounds");
        }
        elapsed
    }
}
