//! tarpc in its normal setup: tokio, TCP, the bincode serde transport. Server on a
//! current-thread tokio runtime pinned to CPU 0; the client on a current-thread runtime driven
//! by the measuring thread (CPU 1). tarpc has no busy-poll mode, so it runs in the sleeping
//! style only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context, serde_transport::tcp};

use crate::shapes::Shape;
use crate::{pin, record, PingPong};

#[tarpc::service]
trait Table1 {
    async fn void();
    async fn int(x: i32);
    async fn int_int(x: i32) -> i32;
    async fn int4(a: i32, b: i32, c: i32, d: i32) -> i32;
    async fn bytes(b: Vec<u8>);
    async fn ret_bytes(n: i32) -> Vec<u8>;
}

#[derive(Clone)]
struct Server;

impl Table1 for Server {
    async fn void(self, _: context::Context) {}
    async fn int(self, _: context::Context, x: i32) {
        std::hint::black_box(x);
    }
    async fn int_int(self, _: context::Context, x: i32) -> i32 {
        x.wrapping_add(1)
    }
    async fn int4(self, _: context::Context, a: i32, b: i32, c: i32, d: i32) -> i32 {
        a.wrapping_add(b).wrapping_add(c).wrapping_add(d)
    }
    async fn bytes(self, _: context::Context, b: Vec<u8>) {
        std::hint::black_box(b.len());
    }
    async fn ret_bytes(self, _: context::Context, n: i32) -> Vec<u8> {
        vec![7u8; n.clamp(0, 1 << 20) as usize]
    }
}

/// tarpc round trips of one shape.
pub struct Tarpc {
    rt: tokio::runtime::Runtime,
    client: Table1Client,
    shape: Shape,
    _server: super::ServerThread,
}

impl Tarpc {
    /// Start the server thread, connect, warm up.
    pub fn new(shape: Shape) -> anyhow::Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            pin(0);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(async move {
                let mut incoming = match tcp::listen("127.0.0.1:0", Bincode::default).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                let _ = addr_tx.send(Ok(incoming.local_addr()));
                let serve = async move {
                    while let Some(Ok(transport)) = incoming.next().await {
                        let channel = BaseChannel::with_defaults(transport);
                        tokio::spawn(channel.execute(Server.serve()).for_each(|f| async move {
                            tokio::spawn(f);
                        }));
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
        let client = rt.block_on(async {
            let transport = tcp::connect(addr, Bincode::default).await?;
            Ok::<_, std::io::Error>(Table1Client::new(client::Config::default(), transport).spawn())
        })?;
        let mut me = Tarpc { rt, client, shape, _server: super::ServerThread::new(stop, server) };
        me.run(1000, None);
        Ok(me)
    }
}

fn ctx() -> context::Context {
    let mut c = context::current();
    // Generous: a benchmark call never should time out.
    c.deadline = Instant::now() + Duration::from_secs(30);
    c
}

impl PingPong for Tarpc {
    fn run(&mut self, n: u64, mut hist: Option<&mut Histogram<u64>>) -> Duration {
        let (client, shape) = (&self.client, self.shape);
        let payload = match shape {
            Shape::Bytes(len) => vec![7u8; len],
            _ => Vec::new(),
        };
        self.rt.block_on(async {
            let start = Instant::now();
            for _ in 0..n {
                let t = Instant::now();
                let r = match shape {
                    Shape::Void => client.void(ctx()).await.map(drop),
                    Shape::Int => client.int(ctx(), 7).await.map(drop),
                    Shape::IntInt => client.int_int(ctx(), 7).await.map(drop),
                    Shape::Int4 => client.int4(ctx(), 1, 2, 3, 4).await.map(drop),
                    Shape::Bytes(_) => client.bytes(ctx(), payload.clone()).await.map(drop),
                    Shape::ReturnBytes(len) => client.ret_bytes(ctx(), len as i32).await.map(|v| {
                        std::hint::black_box(v.len());
                    }),
                };
                r.expect("tarpc call");
                record(&mut hist, t);
            }
            start.elapsed()
        })
    }
}

impl crate::Windowed for Tarpc {
    fn run_window(&mut self, n: u64, window: usize) -> Duration {
        let client = &self.client;
        self.rt.block_on(async {
            let remaining = std::cell::Cell::new(n);
            let worker = || async {
                while remaining.get() > 0 {
                    remaining.set(remaining.get() - 1);
                    client.void(ctx()).await.expect("tarpc call");
                }
            };
            let start = Instant::now();
            futures::future::join_all((0..window).map(|_| worker())).await;
            start.elapsed()
        })
    }
}
