//! Reliable request/response over loopback, on both drivers.

mod common;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use common::{each_driver, must, until};
use multispace_rpc::runtime::time::sleep;
use multispace_rpc::{
    spawn, CallError, CallOptions, Client, ConnConfig, ErrorCode, Message, Server, ServerConfig, Service, Status,
};

const ECHO: u32 = 1;
const ADD: u32 = 2;
const BYTES: u32 = 3;
const PANIC: u32 = 4;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
struct Pair {
    a: u64,
    b: u64,
    label: String,
}

fn service() -> Service {
    Service::builder("test")
        .method(ECHO, |_ctx, req: Message<String>| async move { Ok::<String, Status>(req.as_str().to_owned()) })
        .method(ADD, |_ctx, req: Message<Pair>| async move {
            Ok::<Pair, Status>(Pair {
                a: req.a.to_native() + req.b.to_native(),
                b: 0,
                label: format!("sum:{}", req.label),
            })
        })
        .method(BYTES, |_ctx, req: Message<Vec<u8>>| async move {
            Ok::<Vec<u8>, Status>(req.iter().rev().copied().collect())
        })
        .method(PANIC, |_ctx, _req: Message<()>| async move {
            if true {
                panic!("handler bug");
            }
            Ok::<(), Status>(())
        })
        .build()
}

fn start(svc: Service) -> SocketAddr {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
    let addr = server.local_addr();
    spawn(server.serve()).detach();
    addr
}

#[test]
fn echo_typed_values() {
    each_driver(|_| async {
        let client = Client::new(start(service()));
        let r = client.call::<String, String>(ECHO, &"hello".to_string(), CallOptions::default()).await.unwrap();
        assert_eq!(r.as_str(), "hello");
        let p = Pair { a: 40, b: 2, label: "x".into() };
        let r = client.call::<Pair, Pair>(ADD, &p, CallOptions::default()).await.unwrap();
        assert_eq!(r.to_owned().unwrap(), Pair { a: 42, b: 0, label: "sum:x".into() });
        for size in [0usize, 1, 15, 16, 17, 100, 1000, 10_000, 100_000, 1 << 20] {
            let v: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let r = client.call::<Vec<u8>, Vec<u8>>(BYTES, &v, CallOptions::default()).await.unwrap();
            let expect: Vec<u8> = v.iter().rev().copied().collect();
            assert_eq!(r.as_slice(), &expect[..], "size {size}");
        }
    });
}

/// Large frames are read straight into the frame buffer and small ones through the receive
/// ring (io_uring); switching between the two, one after another and many in flight at
/// once, loses, duplicates or reorders no byte.
#[test]
fn large_and_small_calls_mixed_on_one_connection_arrive_intact() {
    const SIZES: [usize; 8] = [10, 40_000, 3, 300_000, 17, 70_000, 0, 1 << 20];
    let payload = |i: usize| -> Vec<u8> { (0..SIZES[i % SIZES.len()]).map(|b| (b * 7 + i) as u8).collect() };
    each_driver(|_| async move {
        let client = Client::new(start(service()));
        for i in 0..2 * SIZES.len() {
            let v = payload(i);
            let r = client.call::<Vec<u8>, Vec<u8>>(BYTES, &v, CallOptions::default()).await.unwrap();
            assert!(r.iter().eq(v.iter().rev()), "call {i} of {} bytes, one at a time", v.len());
        }
        let tasks: Vec<_> = (0..6 * SIZES.len())
            .map(|i| {
                let client = client.clone();
                spawn(async move {
                    let v = payload(i);
                    let r = client.call::<Vec<u8>, Vec<u8>>(BYTES, &v, CallOptions::default()).await.unwrap();
                    assert!(r.iter().eq(v.iter().rev()), "call {i} of {} bytes, all in flight", v.len());
                })
            })
            .collect();
        for t in tasks {
            must("call completes", t).await;
        }
    });
}

#[test]
fn thousands_of_concurrent_calls_on_one_connection() {
    each_driver(|_| async {
        let limits = ConnConfig { max_in_flight: 10_000, ..ConnConfig::default() };
        let config = ServerConfig { conn: limits.clone(), ..ServerConfig::default() };
        let server = Server::bind_with("127.0.0.1:0".parse().unwrap(), [service()], config).unwrap();
        let client = Client::with_config(server.local_addr(), limits);
        spawn(server.serve()).detach();
        let n = 5000;
        let done = Rc::new(Cell::new(0));
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (client, done) = (client.clone(), done.clone());
                spawn(async move {
                    let s = format!("call-{i}");
                    let r = client.call::<String, String>(ECHO, &s, CallOptions::default()).await.unwrap();
                    assert_eq!(r.as_str(), s);
                    done.set(done.get() + 1);
                })
            })
            .collect();
        for t in tasks {
            must("call completes", t).await;
        }
        assert_eq!(done.get(), n);
    });
}

#[test]
fn local_in_flight_limit_gives_overloaded() {
    each_driver(|_| async {
        let gate = Rc::new(RefCell::new(Vec::<futures_channel::oneshot::Sender<()>>::new()));
        let svc = {
            let gate = gate.clone();
            Service::builder("slow")
                .method(40, move |_ctx, _req: Message<()>| {
                    let (tx, rx) = futures_channel::oneshot::channel();
                    gate.borrow_mut().push(tx);
                    async move {
                        let _ = rx.await;
                        Ok::<(), Status>(())
                    }
                })
                .build()
        };
        let addr = start(svc);
        let client = Client::with_config(addr, ConnConfig { max_in_flight: 2, ..ConnConfig::default() });
        let a = spawn({
            let c = client.clone();
            async move { c.call::<(), ()>(40, &(), CallOptions::default()).await }
        });
        let b = spawn({
            let c = client.clone();
            async move { c.call::<(), ()>(40, &(), CallOptions::default()).await }
        });
        until("two calls in flight", || client.in_flight() == 2).await;
        let err = client.call::<(), ()>(40, &(), CallOptions::default()).await.unwrap_err();
        assert!(matches!(err, CallError::Overloaded { remote: false }), "{err:?}");
        assert!(err.did_not_run());
        until("both handlers started", || gate.borrow().len() == 2).await;
        for tx in gate.borrow_mut().drain(..) {
            let _ = tx.send(());
        }
        must("a", a).await.unwrap();
        must("b", b).await.unwrap();
    });
}

#[test]
fn concurrent_calls_within_the_limit_all_complete() {
    each_driver(|_| async {
        let client = Client::new(start(service()));
        let done = Rc::new(Cell::new(0));
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let (client, done) = (client.clone(), done.clone());
                spawn(async move {
                    let s = format!("call-{i}");
                    let r = client.call::<String, String>(ECHO, &s, CallOptions::default()).await.unwrap();
                    assert_eq!(r.as_str(), s);
                    done.set(done.get() + 1);
                })
            })
            .collect();
        for t in tasks {
            must("call completes", t).await;
        }
        assert_eq!(done.get(), 1000);
    });
}

#[test]
fn responses_complete_out_of_order() {
    each_driver(|_| async {
        // The first call's handler waits on a gate the test holds; the second call, made on
        // the same connection afterwards, must complete while the first is still in flight.
        let gate: Rc<RefCell<Option<futures_channel::oneshot::Receiver<()>>>> = Rc::default();
        let (open, rx) = futures_channel::oneshot::channel();
        *gate.borrow_mut() = Some(rx);
        let svc = {
            let gate = gate.clone();
            Service::builder("order")
                .method(10, move |_ctx, _req: Message<()>| {
                    let rx = gate.borrow_mut().take();
                    async move {
                        rx.expect("called once").await.expect("gate opened");
                        Ok::<u32, Status>(1)
                    }
                })
                .method(11, |_ctx, _req: Message<()>| async { Ok::<u32, Status>(2) })
                .build()
        };
        let client = Client::new(start(svc));
        let first = spawn({
            let c = client.clone();
            async move { c.call::<(), u32>(10, &(), CallOptions::default()).await.unwrap().to_native() }
        });
        until("first call is in flight", || client.in_flight() == 1).await;
        let second = client.call::<(), u32>(11, &(), CallOptions::default()).await.unwrap();
        assert_eq!(second.to_native(), 2);
        assert_eq!(client.in_flight(), 1, "the first call is still waiting");
        assert!(!first.is_finished());
        open.send(()).unwrap();
        assert_eq!(must("first call completes", first).await, 1);
    });
}

#[test]
fn handler_panic_becomes_internal_error_and_server_keeps_serving() {
    each_driver(|_| async {
        let client = Client::new(start(service()));
        let err = client.call::<(), ()>(PANIC, &(), CallOptions::default()).await.unwrap_err();
        match err {
            CallError::Status(s) => assert_eq!(s.code(), ErrorCode::Internal),
            other => panic!("expected an internal status, got {other:?}"),
        }
        let r = client.call::<String, String>(ECHO, &"still here".to_string(), CallOptions::default()).await.unwrap();
        assert_eq!(r.as_str(), "still here");
    });
}

#[test]
fn a_panic_in_a_handlers_synchronous_part_is_caught_too() {
    each_driver(|_| async {
        let svc = Service::builder("eager")
            .method(21, |_ctx, _req: Message<()>| -> std::future::Ready<Result<(), Status>> {
                panic!("before returning a future")
            })
            .method(ECHO, |_ctx, req: Message<String>| async move { Ok::<String, Status>(req.as_str().to_owned()) })
            .build();
        let client = Client::new(start(svc));
        match client.call::<(), ()>(21, &(), CallOptions::default()).await.unwrap_err() {
            CallError::Status(s) => assert_eq!(s.code(), ErrorCode::Internal),
            other => panic!("expected an internal status, got {other:?}"),
        }
        let r = client.call::<String, String>(ECHO, &"still here".to_string(), CallOptions::default()).await.unwrap();
        assert_eq!(r.as_str(), "still here");
    });
}

#[test]
fn unknown_method_is_a_typed_error_and_connection_survives() {
    each_driver(|_| async {
        let client = Client::new(start(service()));
        let err = client.call::<(), ()>(0xdead, &(), CallOptions::default()).await.unwrap_err();
        assert!(matches!(err, CallError::UnknownMethod { method_id: 0xdead }), "{err:?}");
        assert!(err.did_not_run());
        let r = client.call::<String, String>(ECHO, &"ok".to_string(), CallOptions::default()).await.unwrap();
        assert_eq!(r.as_str(), "ok");
    });
}

#[test]
fn application_status_reaches_the_caller() {
    each_driver(|_| async {
        let svc = Service::builder("fail")
            .method(20, |_ctx, _req: Message<()>| async move { Err::<(), Status>(Status::application("no such user")) })
            .build();
        let client = Client::new(start(svc));
        match client.call::<(), ()>(20, &(), CallOptions::default()).await.unwrap_err() {
            CallError::Status(s) => {
                assert_eq!(s.code(), ErrorCode::Application);
                assert_eq!(s.message(), "no such user");
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn nested_calls_from_a_handler() {
    each_driver(|_| async {
        let inner = start(service());
        let svc = Service::builder("outer")
            .method(30, move |_ctx, req: Message<String>| {
                let s = req.as_str().to_owned();
                async move {
                    let c = Client::new(inner);
                    let r = c
                        .call::<String, String>(ECHO, &format!("nested {s}"), CallOptions::default())
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?;
                    Ok::<String, Status>(r.as_str().to_owned())
                }
            })
            .build();
        let client = Client::new(start(svc));
        let r = client.call::<String, String>(30, &"x".to_string(), CallOptions::default()).await.unwrap();
        assert_eq!(r.as_str(), "nested x");
        // Keep the runtime's timers honest: nothing above slept.
        sleep(Duration::ZERO).await;
    });
}

#[test]
fn the_driver_counts_its_turns_and_completions() {
    each_driver(|kind| async move {
        let before = multispace_rpc::runtime::current_driver_stats().expect("inside a core");
        let client = Client::new(start(service()));
        for _ in 0..10 {
            client.call::<String, String>(ECHO, &"x".to_string(), CallOptions::default()).await.unwrap();
        }
        let after = multispace_rpc::runtime::current_driver_stats().unwrap();
        assert!(after.turns > before.turns && after.completions > before.completions, "{before:?} {after:?}");
        assert!(after.enters <= after.turns && after.sleeps <= after.enters, "{after:?}");
        match kind {
            // Every send and receive was an operation handed to the ring.
            multispace_rpc::DriverKind::Uring => assert!(after.submissions >= before.submissions + 20, "{after:?}"),
            multispace_rpc::DriverKind::Epoll => assert_eq!(after.submissions, 0),
        }
    });
    assert_eq!(multispace_rpc::runtime::current_driver_stats(), None, "outside a core");
}
