//! One-way UDP and multicast calls, on both drivers.

mod common;

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;

use common::{each_driver, until};
use multispace_rpc::{spawn, Message, MulticastGroup, OneWaySender, OneWayServer, SendError, Service, MAX_DATAGRAM};

const LOG: u32 = 7;

fn collector(seen: Rc<RefCell<Vec<String>>>) -> Service {
    Service::builder("log")
        .one_way(LOG, move |_ctx, m: Message<String>| {
            seen.borrow_mut().push(m.as_str().to_owned());
            async {}
        })
        .build()
}

#[test]
fn one_way_datagrams_reach_the_handler() {
    each_driver(|_| async {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let server = OneWayServer::bind("127.0.0.1:0".parse().unwrap(), [collector(seen.clone())]).unwrap();
        let addr = server.local_addr();
        spawn(server.serve()).detach();
        let sender = OneWaySender::new().unwrap();
        for i in 0..50 {
            sender.send(addr, LOG, &format!("entry {i}")).await.unwrap();
            // One in flight at a time keeps loopback from dropping any (best effort is
            // lossy under pressure; this test checks delivery and decoding, not loss).
            until("datagram delivered", || seen.borrow().len() == i + 1).await;
        }
        let expect: Vec<String> = (0..50).map(|i| format!("entry {i}")).collect();
        assert_eq!(*seen.borrow(), expect);
    });
}

#[test]
fn a_sender_with_a_fixed_destination_still_reaches_others() {
    each_driver(|_| async {
        let (a_seen, b_seen) = (Rc::new(RefCell::new(Vec::new())), Rc::new(RefCell::new(Vec::new())));
        let a = OneWayServer::bind("127.0.0.1:0".parse().unwrap(), [collector(a_seen.clone())]).unwrap();
        let b = OneWayServer::bind("127.0.0.1:0".parse().unwrap(), [collector(b_seen.clone())]).unwrap();
        let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
        spawn(a.serve()).detach();
        spawn(b.serve()).detach();
        let sender = OneWaySender::new().unwrap().connect(a_addr).unwrap();
        for i in 0..20 {
            let (to, seen) = if i % 2 == 0 { (a_addr, &a_seen) } else { (b_addr, &b_seen) };
            sender.send(to, LOG, &format!("entry {i}")).await.unwrap();
            until("datagram delivered", || seen.borrow().len() == i / 2 + 1).await;
        }
        let evens: Vec<String> = (0..20).step_by(2).map(|i| format!("entry {i}")).collect();
        let odds: Vec<String> = (1..20).step_by(2).map(|i| format!("entry {i}")).collect();
        assert_eq!((&*a_seen.borrow(), &*b_seen.borrow()), (&evens, &odds));
    });
}

#[test]
fn one_way_call_too_big_for_a_datagram_is_refused() {
    each_driver(|_| async {
        let sender = OneWaySender::new().unwrap();
        let big = vec![7u8; MAX_DATAGRAM];
        let err = sender.send("127.0.0.1:9".parse().unwrap(), LOG, &big).await.unwrap_err();
        assert!(matches!(err, SendError::TooLarge { max, .. } if max == MAX_DATAGRAM), "{err:?}");
        let small = OneWaySender::new().unwrap().with_max_datagram(100);
        let err = small.send("127.0.0.1:9".parse().unwrap(), LOG, &vec![0u8; 200]).await.unwrap_err();
        assert!(matches!(err, SendError::TooLarge { max: 100, .. }), "{err:?}");
    });
}

#[test]
fn multicast_call_reaches_every_member() {
    each_driver(|kind| async move {
        // A port per driver run so the two runs cannot hear each other.
        let port = match kind {
            multispace_rpc::DriverKind::Uring => 47_611,
            multispace_rpc::DriverKind::Epoll => 47_612,
        };
        let group = MulticastGroup::loopback(Ipv4Addr::new(239, 255, 42, 17), port);
        let members: Vec<Rc<RefCell<Vec<String>>>> = (0..3).map(|_| Rc::default()).collect();
        for seen in &members {
            let server = OneWayServer::join(&group, [collector(seen.clone())]).unwrap();
            spawn(server.serve()).detach();
        }
        let sender = OneWaySender::multicast(&group).unwrap();
        sender.send_group(&group, LOG, &"to all".to_string()).await.unwrap();
        until("every member heard it", || members.iter().all(|m| m.borrow().len() == 1)).await;
        for m in &members {
            assert_eq!(m.borrow()[0], "to all");
        }
    });
}

#[test]
fn malformed_datagrams_are_dropped_and_counted() {
    each_driver(|_| async {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let server = OneWayServer::bind("127.0.0.1:0".parse().unwrap(), [collector(seen.clone())]).unwrap();
        let addr = server.local_addr();
        let stats = server.stats();
        spawn(server.serve()).detach();
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        raw.send_to(b"definitely not a frame", addr).unwrap();
        let mut unknown = multispace_rpc::proto::frame::Header::one_way(999, 0).encode().to_vec();
        unknown.extend_from_slice(&[0; 0]);
        raw.send_to(&unknown, addr).unwrap();
        until("both dropped", || stats.borrow().dropped == 2).await;
        // A good one still goes through.
        OneWaySender::new().unwrap().send(addr, LOG, &"fine".to_string()).await.unwrap();
        until("good datagram delivered", || seen.borrow().len() == 1).await;
    });
}

#[test]
fn a_burst_larger_than_the_receive_ring_is_all_delivered() {
    // On io_uring the server receives through a multishot op over a ring of 16 buffers; a
    // burst of 4× that, sent before the server runs, exhausts the ring (the kernel ends the
    // multishot with ENOBUFS) and must be picked up again after re-arming, with buffers
    // recycled. 64 small datagrams fit the default socket receive buffer, so none is dropped.
    each_driver(|_| async {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let server = OneWayServer::bind("127.0.0.1:0".parse().unwrap(), [collector(seen.clone())]).unwrap();
        let addr = server.local_addr();
        let sender = OneWaySender::new().unwrap();
        for i in 0..64 {
            sender.send(addr, LOG, &format!("burst {i}")).await.unwrap();
        }
        spawn(server.serve()).detach();
        until("whole burst delivered", || seen.borrow().len() == 64).await;
        let expect: Vec<String> = (0..64).map(|i| format!("burst {i}")).collect();
        assert_eq!(*seen.borrow(), expect);
        // And the re-armed receive keeps working for later datagrams.
        sender.send(addr, LOG, &"after".to_string()).await.unwrap();
        until("datagram after the burst delivered", || seen.borrow().len() == 65).await;
    });
}

#[test]
fn one_way_calls_over_tcp_arrive_in_order_without_answers_and_oversized_ones_are_refused() {
    use multispace_rpc::{CallError, CallOptions, Client, ConnConfig, Server, Status};
    const ECHO: u32 = 8;
    each_driver(|_| async {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let svc = Service::builder("log")
            .one_way(LOG, {
                let seen = seen.clone();
                move |_ctx, m: Message<String>| {
                    seen.borrow_mut().push(m.as_str().to_owned());
                    async {}
                }
            })
            .method(ECHO, |_ctx, m: Message<String>| async move { Ok::<String, Status>(m.as_str().to_owned()) })
            .build();
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
        let addr = server.local_addr();
        spawn(server.serve()).detach();
        let config = ConnConfig { max_payload: 4096, ..ConnConfig::default() };
        let client = Client::with_config(addr, config);
        // Queued back to back, none waiting for the one before: reliable, so none is lost.
        for i in 0..500 {
            client.one_way(LOG, &format!("entry {i}")).await.unwrap();
        }
        // One to a method the server lacks is dropped there; the connection goes on.
        client.one_way(999, &"nobody".to_string()).await.unwrap();
        let too_big = "x".repeat(5000);
        assert!(matches!(client.one_way(LOG, &too_big).await, Err(CallError::Encode(_))));
        let r = client.call::<String, String>(ECHO, &"after".to_string(), CallOptions::default()).await.unwrap();
        assert_eq!(r.as_str(), "after");
        // The server reads frames in order and runs a handler that finishes at once as its
        // frame is read, so every one-way call before the call was handled by its answer.
        let expect: Vec<String> = (0..500).map(|i| format!("entry {i}")).collect();
        assert_eq!(*seen.borrow(), expect);
        assert_eq!(client.in_flight(), 0);
    });
}
