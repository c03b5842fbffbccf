//! The thread-safe client handle and the multi-core runtime, used from plain threads.

mod common;

use std::time::Duration;

use multispace_rpc::runtime::block_on_thread;
use multispace_rpc::{
    spawn, CallError, CallOptions, ClientHandle, DriverChoice, Message, RuntimeBuilder, Server, Service, Status,
};

const DOUBLE: u32 = 1;

fn runtime(kind: multispace_rpc::DriverKind, cores: usize) -> multispace_rpc::Runtime {
    RuntimeBuilder::new().cores(cores).pin(false).driver(DriverChoice::Force(kind)).build().unwrap()
}

#[test]
fn calls_from_plain_threads_blocking_and_awaited() {
    for kind in common::drivers() {
        let rt = runtime(kind, 2);
        // A server on every core, sharing the port (SO_REUSEPORT).
        let addr = rt
            .core(0)
            .run(|| async {
                let svc = Service::builder("math")
                    .method(DOUBLE, |_ctx, r: Message<u64>| async move { Ok::<u64, Status>(r.to_native() * 2) })
                    .build();
                let server = Server::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
                let addr = server.local_addr();
                spawn(server.serve()).detach();
                addr
            })
            .unwrap();
        rt.core(1)
            .run(move || async move {
                let svc = Service::builder("math")
                    .method(DOUBLE, |_ctx, r: Message<u64>| async move { Ok::<u64, Status>(r.to_native() * 2) })
                    .build();
                spawn(Server::bind(addr, [svc]).unwrap().serve()).detach();
            })
            .unwrap();

        let handles: Vec<ClientHandle> = rt.cores().iter().map(|c| ClientHandle::new(c.clone(), addr)).collect();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let h = handles[t as usize % handles.len()].clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let v = t * 1000 + i;
                        let r: Message<u64> =
                            h.call_blocking(DOUBLE, &v, CallOptions::timeout(Duration::from_secs(20))).unwrap();
                        assert_eq!(r.to_native(), v * 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Awaited from a foreign executor (here a plain thread-parking one).
        let h = handles[0].clone();
        let r: Result<Message<u64>, CallError> = block_on_thread(h.call(DOUBLE, &21u64, CallOptions::default()));
        assert_eq!(r.unwrap().to_native(), 42);
        rt.shutdown();
    }
}

#[test]
fn client_handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ClientHandle>();
    assert_send_sync::<multispace_rpc::runtime::CoreHandle>();
}

#[test]
fn work_sent_to_a_core_whose_thread_panicked_fails_instead_of_hanging() {
    for kind in common::drivers() {
        let rt = runtime(kind, 1);
        // A task panics: the core's thread unwinds and its loop is gone.
        let first = rt.core(0).run(|| async { panic!("a handler bug (expected by this test)") });
        assert!(first.is_err(), "{kind:?}: the panicking task has no result");
        // Later work must report the dead core; run it on a helper thread so a regression
        // fails the test at a bounded deadline instead of hanging it.
        let core = rt.core(0).clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(core.run(|| async { 7 }));
        });
        let later = rx.recv_timeout(Duration::from_secs(30)).expect("run() on a dead core returned");
        assert_eq!(later, Err(multispace_rpc::runtime::CoreGone), "{kind:?}");
        drop(rt);
    }
}
