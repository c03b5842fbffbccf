//! capnp-rpc in its normal setup: tokio with a LocalSet (capnp-rpc is single-threaded),
//! two-party VatNetwork over TCP, the schema compiled by Debian's `capnp` tool. Server on a
//! current-thread runtime pinned to CPU 0; the client on one driven by the measuring thread.
//! Sleeping style only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use futures::AsyncReadExt;
use hdrhistogram::Histogram;
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::shapes::Shape;
use crate::{pin, record, PingPong};

#[allow(clippy::all, missing_docs, missing_debug_implementations, unused_qualifications, rust_2018_idioms)]
mod schema {
    capnp::generated_code!(pub mod table1_capnp);
}
use schema::table1_capnp::table1;

struct Svc;

impl table1::Server for Svc {
    async fn void(
        self: capnp::capability::Rc<Self>,
        _: table1::VoidParams,
        _: table1::VoidResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }
    async fn int(
        self: capnp::capability::Rc<Self>,
        p: table1::IntParams,
        _: table1::IntResults,
    ) -> Result<(), capnp::Error> {
        std::hint::black_box(p.get()?.get_x());
        Ok(())
    }
    async fn int_int(
        self: capnp::capability::Rc<Self>,
        p: table1::IntIntParams,
        mut r: table1::IntIntResults,
    ) -> Result<(), capnp::Error> {
        r.get().set_y(p.get()?.get_x().wrapping_add(1));
        Ok(())
    }
    async fn int4(
        self: capnp::capability::Rc<Self>,
        p: table1::Int4Params,
        mut r: table1::Int4Results,
    ) -> Result<(), capnp::Error> {
        let a = p.get()?;
        r.get().set_y(a.get_a().wrapping_add(a.get_b()).wrapping_add(a.get_c()).wrapping_add(a.get_d()));
        Ok(())
    }
    async fn bytes(
        self: capnp::capability::Rc<Self>,
        p: table1::BytesParams,
        _: table1::BytesResults,
    ) -> Result<(), capnp::Error> {
        std::hint::black_box(p.get()?.get_b()?.len());
        Ok(())
    }
    async fn ret_bytes(
        self: capnp::capability::Rc<Self>,
        p: table1::RetBytesParams,
        mut r: table1::RetBytesResults,
    ) -> Result<(), capnp::Error> {
        let n = p.get()?.get_n().clamp(0, 1 << 20) as usize;
        r.get().set_b(&vec![7u8; n]);
        Ok(())
    }
}

fn network(
    stream: tokio::net::TcpStream,
    side: Side,
) -> Box<
    twoparty::VatNetwork<
        futures::io::BufReader<futures::io::ReadHalf<tokio_util::compat::Compat<tokio::net::TcpStream>>>,
    >,
> {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.compat().split();
    Box::new(twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        side,
        Default::default(),
    ))
}

/// capnp-rpc round trips of one shape.
pub struct Capnp {
    rt: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    client: table1::Client,
    shape: Shape,
    _server: super::ServerThread,
}

impl Capnp {
    /// Start the server thread, connect, warm up.
    pub fn new(shape: Shape) -> anyhow::Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            pin(0);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                let _ = addr_tx.send(listener.local_addr());
                let bootstrap: table1::Client = capnp_rpc::new_client(Svc);
                let serve = async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let rpc = RpcSystem::new(network(stream, Side::Server), Some(bootstrap.clone().client));
                        tokio::task::spawn_local(rpc);
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        let addr = addr_rx.recv()??;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let local = tokio::task::LocalSet::new();
        let client = local.block_on(&rt, async {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let mut rpc = RpcSystem::new(network(stream, Side::Client), None);
            let client: table1::Client = rpc.bootstrap(Side::Server);
            tokio::task::spawn_local(rpc);
            Ok::<_, std::io::Error>(client)
        })?;
        let mut me = Capnp { rt, local, client, shape, _server: super::ServerThread::new(stop, server) };
        me.run(1000, None);
        Ok(me)
    }
}

async fn call(client: &table1::Client, shape: Shape, payload: &[u8]) -> Result<(), capnp::Error> {
    match shape {
        Shape::Void => client.void_request().send().promise.await.map(drop),
        Shape::Int => {
            let mut r = client.int_request();
            r.get().set_x(7);
            r.send().promise.await.map(drop)
        }
        Shape::IntInt => {
            let mut r = client.int_int_request();
            r.get().set_x(7);
            let resp = r.send().promise.await?;
            std::hint::black_box(resp.get()?.get_y());
            Ok(())
        }
        Shape::Int4 => {
            let mut r = client.int4_request();
            let mut a = r.get();
            a.set_a(1);
            a.set_b(2);
            a.set_c(3);
            a.set_d(4);
            let resp = r.send().promise.await?;
            std::hint::black_box(resp.get()?.get_y());
            Ok(())
        }
        Shape::Bytes(_) => {
            let mut r = client.bytes_request();
            r.get().set_b(payload);
            r.send().promise.await.map(drop)
        }
        Shape::ReturnBytes(len) => {
            let mut r = client.ret_bytes_request();
            r.get().set_n(len as i32);
            let resp = r.send().promise.await?;
            std::hint::black_box(resp.get()?.get_b()?.len());
            Ok(())
        }
    }
}

impl PingPong for Capnp {
    fn run(&mut self, n: u64, mut hist: Option<&mut Histogram<u64>>) -> Duration {
        let (client, shape) = (&self.client, self.shape);
        let payload = match shape {
            Shape::Bytes(len) => vec![7u8; len],
            _ => Vec::new(),
        };
        self.local.block_on(&self.rt, async {
            let start = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                call(client, shape, &payload).await.expect("capnp call");
                record(&mut hist, t);
            }
            start.elapsed()
        })
    }
}

impl crate::Windowed for Capnp {
    fn run_window(&mut self, n: u64, window: usize) -> Duration {
        let client = &self.client;
        self.local.block_on(&self.rt, async {
            let remaining = std::cell::Cell::new(n);
            let worker = || async {
                while remaining.get() > 0 {
                    remaining.set(remaining.get() - 1);
                    call(client, Shape::Void, &[]).await.expect("capnp call");
                }
            };
            let start = Instant::now();
            futures::future::join_all((0..window).map(|_| worker())).await;
            start.elapsed()
        })
    }
}
