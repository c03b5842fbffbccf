//! tonic (gRPC over HTTP/2, prost messages) in its normal setup. Server on a current-thread
//! tokio runtime pinned to CPU 0; the client on a current-thread runtime driven by the
//! measuring thread (CPU 1). Sleeping style only.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::shapes::Shape;
use crate::{pin, record, PingPong};

#[allow(clippy::all, missing_docs, missing_debug_implementations, rust_2018_idioms)]
mod pb {
    tonic::include_proto!("table1");
}

use pb::table1_client::Table1Client;
use pb::table1_server::{Table1, Table1Server};
use pb::{Blob, Empty, Int4Args, IntArg as Int};

struct Svc;

#[tonic::async_trait]
impl Table1 for Svc {
    async fn void(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }
    async fn int(&self, r: Request<Int>) -> Result<Response<Empty>, Status> {
        std::hint::black_box(r.into_inner().x);
        Ok(Response::new(Empty {}))
    }
    async fn int_int(&self, r: Request<Int>) -> Result<Response<Int>, Status> {
        Ok(Response::new(Int { x: r.into_inner().x.wrapping_add(1) }))
    }
    async fn int4(&self, r: Request<Int4Args>) -> Result<Response<Int>, Status> {
        let v = r.into_inner();
        Ok(Response::new(Int { x: v.a.wrapping_add(v.b).wrapping_add(v.c).wrapping_add(v.d) }))
    }
    async fn bytes(&self, r: Request<Blob>) -> Result<Response<Empty>, Status> {
        std::hint::black_box(r.into_inner().b.len());
        Ok(Response::new(Empty {}))
    }
    async fn ret_bytes(&self, r: Request<Int>) -> Result<Response<Blob>, Status> {
        Ok(Response::new(Blob { b: vec![7u8; r.into_inner().x.clamp(0, 1 << 20) as usize] }))
    }
}

/// tonic round trips of one shape.
pub struct Tonic {
    // Options so Drop can close the client side before asking the server to stop: tonic's
    // graceful shutdown waits for open connections.
    rt: Option<tokio::runtime::Runtime>,
    client: Option<Table1Client<Channel>>,
    shape: Shape,
    _server: super::ServerThread,
}

impl Tonic {
    /// Start the server thread, connect, warm up.
    pub fn new(shape: Shape) -> anyhow::Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            pin(0);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(async move {
                let incoming = match TcpIncoming::bind("127.0.0.1:0".parse().expect("address")) {
                    Ok(i) => i.with_nodelay(Some(true)),
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                let _ = addr_tx.send(incoming.local_addr());
                let _ = Server::builder()
                    .add_service(Table1Server::new(Svc))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx.recv()??;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = rt.block_on(Table1Client::connect(format!("http://{addr}")))?;
        let mut me =
            Tonic { rt: Some(rt), client: Some(client), shape, _server: super::ServerThread::new(stop, server) };
        me.run(1000, None);
        Ok(me)
    }
}

impl PingPong for Tonic {
    fn run(&mut self, n: u64, mut hist: Option<&mut Histogram<u64>>) -> Duration {
        let shape = self.shape;
        let (Some(rt), Some(client)) = (&self.rt, &mut self.client) else { return Duration::ZERO };
        let payload = match shape {
            Shape::Bytes(len) => vec![7u8; len],
            _ => Vec::new(),
        };
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                let r = match shape {
                    Shape::Void => client.void(Empty {}).await.map(drop),
                    Shape::Int => client.int(Int { x: 7 }).await.map(drop),
                    Shape::IntInt => client.int_int(Int { x: 7 }).await.map(drop),
                    Shape::Int4 => client.int4(Int4Args { a: 1, b: 2, c: 3, d: 4 }).await.map(drop),
                    Shape::Bytes(_) => client.bytes(Blob { b: payload.clone() }).await.map(drop),
                    Shape::ReturnBytes(len) => client.ret_bytes(Int { x: len as i32 }).await.map(|r| {
                        std::hint::black_box(r.into_inner().b.len());
                    }),
                };
                r.expect("tonic call");
                record(&mut hist, t);
            }
            start.elapsed()
        })
    }
}

impl crate::Windowed for Tonic {
    fn run_window(&mut self, n: u64, window: usize) -> Duration {
        let (Some(rt), Some(client)) = (&self.rt, &self.client) else { return Duration::ZERO };
        rt.block_on(async {
            let remaining = std::cell::Cell::new(n);
            let worker = |mut client: Table1Client<Channel>| {
                let remaining = &remaining;
                async move {
                    while remaining.get() > 0 {
                        remaining.set(remaining.get() - 1);
                        client.void(Empty {}).await.expect("tonic call");
                    }
                }
            };
            let start = Instant::now();
            let workers: Vec<_> = (0..window).map(|_| worker(client.clone())).collect();
            futures::future::join_all(workers).await;
            start.elapsed()
        })
    }
}

impl Drop for Tonic {
    fn drop(&mut self) {
        // Dropping the client runtime cancels the connection task and closes the socket.
        self.client = None;
        self.rt = None;
    }
}
