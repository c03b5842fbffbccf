//! Deadlines, cancellation, server death and reconnection, on both drivers.

mod common;

use std::cell::Cell;
use std::future::pending;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use common::{each_driver, must, until};
use multispace_rpc::runtime::time::timeout;
use multispace_rpc::{
    current_deadline, spawn, CallError, CallOptions, Client, Message, RuntimeBuilder, Server, Service, Status,
};

const HANG: u32 = 1;
const DEADLINE_OF: u32 = 2;
const ECHO: u32 = 3;

/// Sets a flag when dropped: proves a handler was cancelled.
struct DropFlag(Rc<Cell<bool>>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

fn start(svc: Service) -> SocketAddr {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
    let addr = server.local_addr();
    spawn(server.serve()).detach();
    addr
}

#[test]
fn call_past_its_deadline_fails_with_deadline_exceeded_and_server_drops_the_handler() {
    each_driver(|_| async {
        let started = Rc::new(Cell::new(false));
        let dropped = Rc::new(Cell::new(false));
        let svc = {
            let (started, dropped) = (started.clone(), dropped.clone());
            Service::builder("hang")
                .method(HANG, move |_ctx, _req: Message<()>| {
                    started.set(true);
                    let flag = DropFlag(dropped.clone());
                    async move {
                        let _flag = flag;
                        pending::<()>().await;
                        Ok::<(), Status>(())
                    }
                })
                .build()
        };
        let client = Client::new(start(svc));
        let err = client.call::<(), ()>(HANG, &(), CallOptions::timeout(Duration::from_millis(30))).await.unwrap_err();
        assert!(matches!(err, CallError::DeadlineExceeded), "{err:?}");
        assert!(started.get());
        // The server enforces the same (relative) budget and drops the handler at its deadline.
        until("server drops the expired handler", || dropped.get()).await;
    });
}

#[test]
fn nested_calls_inherit_the_remaining_budget() {
    each_driver(|_| async {
        let leaf = Service::builder("leaf")
            .method(DEADLINE_OF, |ctx: multispace_rpc::CallContext, _req: Message<()>| async move {
                // Remaining budget in ms as the leaf sees it (0 = no deadline).
                let left = ctx
                    .deadline
                    .map_or(0, |d| d.saturating_duration_since(std::time::Instant::now()).as_millis() as u64);
                Ok::<u64, Status>(left)
            })
            .build();
        let leaf_addr = start(leaf);
        let mid = Service::builder("mid")
            .method(DEADLINE_OF, move |_ctx, _req: Message<()>| async move {
                assert!(current_deadline().is_some(), "handler sees its deadline");
                let c = Client::new(leaf_addr);
                // No explicit timeout: the inherited deadline must travel.
                let r = c
                    .call::<(), u64>(DEADLINE_OF, &(), CallOptions::default())
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok::<u64, Status>(r.to_native())
            })
            .build();
        let client = Client::new(start(mid));
        let left =
            client.call::<(), u64>(DEADLINE_OF, &(), CallOptions::timeout(Duration::from_secs(60))).await.unwrap();
        let left = left.to_native();
        assert!(left > 0 && left <= 60_000, "leaf saw a budget of {left} ms");
        // Without a deadline, none is invented.
        let c = Client::new(leaf_addr);
        assert_eq!(c.call::<(), u64>(DEADLINE_OF, &(), CallOptions::default()).await.unwrap().to_native(), 0);
    });
}

#[test]
fn dropping_a_call_cancels_the_handler_at_the_server() {
    each_driver(|_| async {
        let started = Rc::new(Cell::new(false));
        let dropped = Rc::new(Cell::new(false));
        let svc = {
            let (started, dropped) = (started.clone(), dropped.clone());
            Service::builder("hang")
                .method(HANG, move |_ctx, _req: Message<()>| {
                    started.set(true);
                    let flag = DropFlag(dropped.clone());
                    async move {
                        let _flag = flag;
                        pending::<()>().await;
                        Ok::<(), Status>(())
                    }
                })
                .build()
                .clone()
        };
        let client = Client::new(start(svc));
        let call = spawn({
            let c = client.clone();
            async move { c.call::<(), ()>(HANG, &(), CallOptions::default()).await.map(drop) }
        });
        until("handler started", || started.get()).await;
        drop(call); // cancels the task, dropping the call future
        until("handler cancelled by the Cancel frame", || dropped.get()).await;
        assert_eq!(client.in_flight(), 0);
        // The connection is still good.
        let svc_ok = client.call::<(), ()>(HANG + 100, &(), CallOptions::default()).await.unwrap_err();
        assert!(matches!(svc_ok, CallError::UnknownMethod { .. }));
    });
}

#[test]
fn server_death_mid_call_fails_the_call_then_reconnects() {
    each_driver(|kind| async move {
        // The server runs on its own core thread so it can die while the client waits.
        let server_rt = RuntimeBuilder::new()
            .cores(1)
            .pin(false)
            .driver(multispace_rpc::DriverChoice::Force(kind))
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        server_rt
            .core(0)
            .run(move || async move {
                let svc = Service::builder("hang")
                    .method(HANG, |_ctx, _req: Message<()>| async move {
                        pending::<()>().await;
                        Ok::<(), Status>(())
                    })
                    .build();
                let server = Server::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
                tx.send(server.local_addr()).unwrap();
                spawn(server.serve()).detach();
            })
            .unwrap();
        let addr = rx.recv().unwrap();
        let client = Client::new(addr);
        let call = spawn({
            let c = client.clone();
            async move { c.call::<(), ()>(HANG, &(), CallOptions::default()).await.map(drop) }
        });
        until("call in flight", || client.in_flight() == 1).await;
        // Kill the server's core: its sockets close with it.
        let shutdown = std::thread::spawn(move || server_rt.shutdown());
        let err = must("call fails promptly", call).await.unwrap_err();
        assert!(matches!(err, CallError::ConnectionLost), "{err:?}");
        assert!(!err.did_not_run(), "a lost call may have run");
        // Rebind only once the old listener is closed: with SO_REUSEPORT the bind succeeds
        // beside a listener still being torn down, which could take the reconnect and then
        // reset it.
        shutdown.join().unwrap();

        // A new server on the same address; the client reconnects on next use.
        let svc = Service::builder("echo")
            .method(ECHO, |_ctx, r: Message<u32>| async move { Ok::<u32, Status>(r.to_native()) })
            .build();
        let server = must("rebind", async {
            loop {
                match Server::bind(addr, [svc.clone()]) {
                    Ok(s) => break s,
                    Err(_) => multispace_rpc::runtime::yield_now().await,
                }
            }
        })
        .await;
        spawn(server.serve()).detach();
        let r = timeout(Duration::from_secs(20), client.call::<u32, u32>(ECHO, &5, CallOptions::default()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.to_native(), 5);
    });
}

#[test]
fn connect_refused_is_a_typed_error() {
    each_driver(|_| async {
        // Bind then drop a listener to get a port nobody listens on.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = Client::new(addr).call::<(), ()>(1, &(), CallOptions::default()).await.unwrap_err();
        assert!(matches!(err, CallError::Connect(_)), "{err:?}");
        assert!(err.is_retryable() && err.did_not_run());
    });
}

#[test]
fn a_draining_server_finishes_calls_in_flight_and_refuses_new_ones_as_not_run() {
    each_driver(|_| async {
        // SLOW waits until released; ECHO answers at once.
        let release = Rc::new(Cell::new(false));
        let svc = {
            let release = release.clone();
            Service::builder("drain")
                .method(HANG, move |_ctx, _req: Message<()>| {
                    let release = release.clone();
                    async move {
                        until("released", || release.get()).await;
                        Ok::<u32, Status>(7)
                    }
                })
                .method(ECHO, |_ctx, req: Message<u32>| async move { Ok::<u32, Status>(req.to_native()) })
                .build()
        };
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
        let (addr, load) = (server.local_addr(), server.load());
        spawn(server.serve()).detach();
        let client = Client::new(addr);
        let slow = spawn({
            let client = client.clone();
            async move { client.call::<(), u32>(HANG, &(), CallOptions::default()).await.map(|r| r.to_native()) }
        });
        until("the slow call runs", || load.in_flight() == 1).await;
        load.drain();
        assert!(load.is_draining());
        let e = client.call::<u32, u32>(ECHO, &5, CallOptions::default()).await.unwrap_err();
        assert!(e.did_not_run() && e.is_retryable(), "{e:?}");
        assert!(e.to_string().contains("draining"), "{e}");
        release.set(true);
        assert_eq!(must("the call in flight finishes", slow).await.unwrap(), 7);
        assert_eq!(load.in_flight(), 0);
    });
}
