//! The steady-state call path does not touch the heap: after warm-up, a null call (client
//! and server on one core, over loopback TCP or UDP datagram sessions) performs no allocation
//! on either side.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::each_driver_waiting;
use multispace_rpc::{
    spawn, CallOptions, Client, ConnConfig, Message, Server, ServerConfig, Service, Status, Transport, WaitMode,
};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NULL: u32 = 1;
const ECHO_U64: u32 = 2;

#[test]
fn steady_state_calls_do_not_allocate() {
    let waits = [WaitMode::Sleep, WaitMode::BusyPoll { idle_after: None }];
    for (transport, wait) in [Transport::Tcp, Transport::Udp].into_iter().flat_map(|t| waits.map(|w| (t, w))) {
        each_driver_waiting(wait, |kind| async move {
            let svc = Service::builder("null")
                .method(NULL, |_ctx, _r: Message<()>| async { Ok::<(), Status>(()) })
                .method(ECHO_U64, |_ctx, r: Message<u64>| async move { Ok::<u64, Status>(r.to_native()) })
                .build();
            let config = ServerConfig { datagram: transport == Transport::Udp, ..ServerConfig::default() };
            let server = Server::bind_with("127.0.0.1:0".parse().unwrap(), [svc], config).unwrap();
            let addr = server.local_addr();
            spawn(server.serve()).detach();
            let client = Client::with_config(addr, ConnConfig { transport, ..ConnConfig::default() });
            let run = |n: u64| {
                let client = client.clone();
                async move {
                    for i in 0..n {
                        client.call::<(), ()>(NULL, &(), CallOptions::default()).await.unwrap();
                        let v = client.call::<u64, u64>(ECHO_U64, &i, CallOptions::default()).await.unwrap();
                        assert_eq!(v.to_native(), i);
                    }
                }
            };
            // Warm-up long enough for the datagram receivers to retire and reuse a buffer.
            run(6000).await;
            if wait != WaitMode::Sleep {
                // And through an idle spell, so a busy-polling reader has also waited on the
                // driver once (its pooled state is warm if a stall sends it there again).
                multispace_rpc::runtime::time::sleep(std::time::Duration::from_millis(80)).await;
                run(100).await;
            }
            ALLOCS.store(0, Ordering::Relaxed);
            COUNTING.store(true, Ordering::Relaxed);
            run(1000).await;
            COUNTING.store(false, Ordering::Relaxed);
            let n = ALLOCS.load(Ordering::Relaxed);
            eprintln!("{kind} {transport:?} {wait:?}: {n} allocations in 2000 calls");
            assert_eq!(n, 0, "{kind} {transport:?} {wait:?}: {n} heap allocations in 2000 steady-state calls");
        });
    }
}
