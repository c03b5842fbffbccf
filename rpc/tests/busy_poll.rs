//! Busy-polling cores (`WaitMode::BusyPoll`), on both drivers: datagram sockets, and TCP
//! connections that carried a frame lately, are then read directly every loop turn instead
//! of through the driver (and TCP frames sent directly). Calls over UDP and TCP and
//! one-way datagrams work as on a sleeping core; a core with `idle_after` still falls
//! asleep when idle (the direct readers hand back to the driver) and wakes for the next
//! datagram; retransmission still recovers lost datagrams exactly once.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use common::relay::lossy_relay;
use common::{each_driver_waiting, must, until};
use multispace_rpc::runtime::current_driver_stats;
use multispace_rpc::runtime::time::sleep;
use multispace_rpc::{
    spawn, CallOptions, Client, ConnConfig, DriverKind, Message, OneWaySender, OneWayServer, Server, ServerConfig,
    Service, Status, Transport, WaitMode,
};

const BUMP: u32 = 1;
const NOTE: u32 = 2;
const ECHO: u32 = 3;

/// `BUMP` counts (not idempotent: a call run twice shows); `ECHO` returns its bytes; `NOTE`
/// is one-way.
fn service(count: Rc<Cell<u64>>, notes: Rc<RefCell<Vec<u32>>>) -> Service {
    Service::builder("busy")
        .method(BUMP, move |_ctx, _r: Message<()>| {
            let count = count.clone();
            async move {
                count.set(count.get() + 1);
                Ok::<u64, Status>(count.get())
            }
        })
        .method(ECHO, |_ctx, r: Message<Vec<u8>>| {
            let v = r.as_slice().to_vec();
            async move { Ok::<Vec<u8>, Status>(v) }
        })
        .one_way(NOTE, move |_ctx, n: Message<u32>| {
            notes.borrow_mut().push(n.to_native());
            async {}
        })
        .build()
}

const SPIN_FOREVER: WaitMode = WaitMode::BusyPoll { idle_after: None };
const SPIN_THEN_SLEEP: WaitMode = WaitMode::BusyPoll { idle_after: Some(Duration::from_millis(2)) };

fn calls_work(wait: WaitMode) {
    each_driver_waiting(wait, |kind| async move {
        let (count, notes) = (Rc::new(Cell::new(0)), Rc::new(RefCell::new(Vec::new())));
        let config = ServerConfig { datagram: true, ..ServerConfig::default() };
        let server =
            Server::bind_with("127.0.0.1:0".parse().unwrap(), [service(count.clone(), notes.clone())], config).unwrap();
        let addr = server.local_addr();
        spawn(server.serve()).detach();
        let udp = Client::with_config(addr, ConnConfig { transport: Transport::Udp, ..ConnConfig::default() });
        let tcp = Client::new(addr);

        // TCP: once a connection has had a frame, both ends read it (and write it) directly.
        must("a first TCP call", tcp.call::<(), u64>(BUMP, &(), CallOptions::default())).await.unwrap();
        let before = current_driver_stats().expect("on a core");
        for _ in 0..20 {
            must("a TCP call", tcp.call::<(), u64>(BUMP, &(), CallOptions::default())).await.unwrap();
        }
        let after = current_driver_stats().expect("on a core");
        let direct = after.direct_reads - before.direct_reads;
        assert!(direct >= 20, "{kind}: only {direct} of 40 TCP frames were read directly");
        if kind == DriverKind::Uring && wait == SPIN_FOREVER {
            let reaped = after.completions - before.completions;
            assert!(reaped < 20, "{kind}: {reaped} io_uring completions for 20 TCP calls read and sent directly");
        }
        assert_eq!(count.get(), 21);

        let before = current_driver_stats().expect("on a core");
        for i in 1..=50u64 {
            let n = must("a UDP call", udp.call::<(), u64>(BUMP, &(), CallOptions::default())).await.unwrap();
            assert_eq!(n.to_native(), 21 + i, "{kind}: call {i} ran once, in order");
        }
        let after = current_driver_stats().expect("on a core");
        // 100 datagrams (and the session's hello and its echo): read directly, not by the driver.
        let direct = after.direct_reads - before.direct_reads;
        assert!(direct >= 50, "{kind}: only {direct} of 102 datagrams were read directly");
        if kind == DriverKind::Uring && wait == SPIN_FOREVER {
            let reaped = after.completions - before.completions;
            assert!(reaped < 50, "{kind}: {reaped} io_uring completions for 50 calls read directly");
        }
        if kind == DriverKind::Epoll && wait == SPIN_FOREVER {
            // Spinning with nothing to read: at most four sockets spin here (UDP and TCP, each
            // end), and epoll is polled once per eight empty direct reads, so at most every other
            // turn rather than every turn.
            let before = current_driver_stats().expect("on a core");
            sleep(Duration::from_millis(2)).await;
            let after = current_driver_stats().expect("on a core");
            let (turns, enters) = (after.turns - before.turns, after.enters - before.enters);
            assert!(enters * 3 < turns * 2, "{kind}: {enters} epoll_waits in {turns} spinning turns");
        }
        let many: Vec<_> = (0..200)
            .map(|_| {
                let udp = udp.clone();
                spawn(
                    async move { udp.call::<(), u64>(BUMP, &(), CallOptions::default()).await.map(|m| m.to_native()) },
                )
            })
            .collect();
        for t in many {
            must("a concurrent UDP call", t).await.expect("call");
        }
        // Large and small frames mixed: the receive ring hands over to direct reads and back
        // without losing or reordering a byte.
        for (i, size) in [10usize, 100_000, 3, 1 << 20, 0, 40_000, 17].into_iter().enumerate() {
            let v: Vec<u8> = (0..size).map(|b| (b * 3 + i) as u8).collect();
            let r = must("a TCP echo", tcp.call::<Vec<u8>, Vec<u8>>(ECHO, &v, CallOptions::default())).await.unwrap();
            assert!(r.as_slice() == v.as_slice(), "{kind}: {size} bytes echoed intact");
        }

        let notes_server =
            OneWayServer::bind("127.0.0.1:0".parse().unwrap(), [service(count.clone(), notes.clone())]).unwrap();
        let notes_addr = notes_server.local_addr();
        spawn(notes_server.serve()).detach();
        let sender = OneWaySender::new().unwrap();
        for i in 0..20u32 {
            sender.send(notes_addr, NOTE, &i).await.unwrap();
            until("one-way datagram delivered", || notes.borrow().len() == i as usize + 1).await;
        }
        assert_eq!(*notes.borrow(), (0..20).collect::<Vec<_>>());

        // Idle for 15 idle_after periods: a core allowed to fall asleep must, although its
        // datagram readers were spinning; one spinning for ever never sleeps.
        let before = current_driver_stats().expect("on a core").sleeps;
        sleep(Duration::from_millis(30)).await;
        let after = current_driver_stats().expect("on a core").sleeps;
        match wait {
            WaitMode::BusyPoll { idle_after: Some(_) } => assert!(after > before, "{kind}: an idle core slept"),
            _ => assert_eq!(after, before, "{kind}: a core spinning for ever never sleeps"),
        }
        // And the next datagrams are still read, by the driver first, then directly again.
        for _ in 0..5 {
            must("a call after the idle spell", udp.call::<(), u64>(BUMP, &(), CallOptions::default())).await.unwrap();
        }
        must("a TCP call after the idle spell", tcp.call::<(), u64>(BUMP, &(), CallOptions::default())).await.unwrap();
        assert_eq!(count.get(), 277);
    });
}

#[test]
fn calls_and_one_way_datagrams_work_on_a_core_that_spins_for_ever() {
    calls_work(SPIN_FOREVER);
}

#[test]
fn a_busy_polling_core_falls_asleep_when_idle_and_wakes_for_the_next_datagram() {
    calls_work(SPIN_THEN_SLEEP);
}

#[test]
fn every_call_runs_exactly_once_through_loss_while_busy_polling() {
    for wait in [SPIN_FOREVER, SPIN_THEN_SLEEP] {
        each_driver_waiting(wait, |kind| async move {
            let (count, notes) = (Rc::new(Cell::new(0)), Rc::new(RefCell::new(Vec::new())));
            let config = ServerConfig { datagram: true, ..ServerConfig::default() };
            let server =
                Server::bind_with("127.0.0.1:0".parse().unwrap(), [service(count.clone(), notes)], config).unwrap();
            let addr = server.local_addr();
            spawn(server.serve()).detach();
            let (relay, dropped) = lossy_relay(addr);
            let client = Client::with_config(relay, ConnConfig { transport: Transport::Udp, ..ConnConfig::default() });
            for i in 1..=100u64 {
                let n =
                    must("a call through the lossy relay", client.call::<(), u64>(BUMP, &(), CallOptions::default()))
                        .await
                        .expect("retransmission recovers every loss");
                assert_eq!(n.to_native(), i, "{kind}: call {i} ran once, in order");
            }
            assert!(dropped.get() > 30, "{kind}: the relay did drop datagrams ({})", dropped.get());
        });
    }
}

#[test]
fn more_datagram_sockets_than_spin_directly_all_get_their_datagrams() {
    // 24 servers with 24 UDP and 24 TCP clients on one core: 96 sockets wanting to spin, more
    // than a core reads directly; the rest wait on the driver and must still be served.
    each_driver_waiting(SPIN_FOREVER, |kind| async move {
        let count = Rc::new(Cell::new(0));
        let clients: Vec<Client> = (0..24)
            .map(|_| {
                let config = ServerConfig { datagram: true, ..ServerConfig::default() };
                let svc = service(count.clone(), Rc::default());
                let server = Server::bind_with("127.0.0.1:0".parse().unwrap(), [svc], config).unwrap();
                let addr = server.local_addr();
                spawn(server.serve()).detach();
                Client::with_config(addr, ConnConfig { transport: Transport::Udp, ..ConnConfig::default() })
            })
            .collect();
        // And 24 TCP connections to the same servers: more connections than spin directly.
        let tcp: Vec<Client> = clients.iter().map(|c| Client::new(c.addr())).collect();
        let clients: Vec<Client> = clients.into_iter().chain(tcp).collect();
        let tasks: Vec<_> = clients
            .iter()
            .cloned()
            .map(|c| {
                spawn(async move {
                    for _ in 0..20 {
                        c.call::<(), u64>(BUMP, &(), CallOptions::default()).await.expect("call");
                    }
                })
            })
            .collect();
        for t in tasks {
            must("20 calls on each of 24 connections", t).await;
        }
        assert_eq!(count.get(), 960, "{kind}: every call ran once");
    });
}
