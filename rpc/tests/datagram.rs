//! Reliable calls over UDP datagram sessions (`Transport::Udp`), on both drivers: results,
//! concurrency, at-most-once execution through loss and duplication, deadlines, cancellation,
//! server death, session expiry, the TCP fallback for large requests, and bad datagrams.

mod common;

use std::cell::Cell;
use std::future::pending;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use common::relay::lossy_relay;
use common::{each_driver, must, until};
use multispace_rpc::net::UdpSocket;
use multispace_rpc::runtime::time::sleep;
use multispace_rpc::{
    spawn, CallError, CallOptions, Client, ConnConfig, DatagramConfig, ErrorCode, Message, ServeError, Server,
    ServerConfig, Service, Status, Transport,
};

const BUMP: u32 = 1;
const SLOW_BUMP: u32 = 2;
const ECHO: u32 = 3;
const HANG: u32 = 4;
const BIG_REPLY: u32 = 5;

/// Sets a flag when dropped: shows a handler was stopped.
struct Dropped(Rc<Cell<bool>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

/// A counter service: `BUMP` is not idempotent, so a call run twice shows up in the count.
fn service(count: Rc<Cell<u64>>, hang_dropped: Rc<Cell<bool>>) -> Service {
    let c2 = count.clone();
    Service::builder("counter")
        .method(BUMP, move |_ctx, _r: Message<()>| {
            let count = count.clone();
            async move {
                count.set(count.get() + 1);
                Ok::<u64, Status>(count.get())
            }
        })
        .method(SLOW_BUMP, move |_ctx, ms: Message<u64>| {
            let count = c2.clone();
            async move {
                // Long enough for retransmissions to arrive while it runs.
                sleep(Duration::from_millis(ms.to_native())).await;
                count.set(count.get() + 1);
                Ok::<u64, Status>(count.get())
            }
        })
        .method(ECHO, |_ctx, r: Message<Vec<u8>>| async move { Ok::<u64, Status>(r.len() as u64) })
        .method(HANG, move |_ctx, _r: Message<()>| {
            let guard = Dropped(hang_dropped.clone());
            async move {
                let _guard = guard;
                pending::<()>().await;
                Ok::<(), Status>(())
            }
        })
        .method(
            BIG_REPLY,
            |_ctx, n: Message<u32>| async move { Ok::<Vec<u8>, Status>(vec![1u8; n.to_native() as usize]) },
        )
        .build()
}

struct Fixture {
    addr: SocketAddr,
    count: Rc<Cell<u64>>,
    hang_dropped: Rc<Cell<bool>>,
    server: Option<multispace_rpc::runtime::JoinHandle<Result<(), ServeError>>>,
}

fn start_with(config: ServerConfig) -> Fixture {
    let (count, hang_dropped) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
    let server =
        Server::bind_with("127.0.0.1:0".parse().unwrap(), [service(count.clone(), hang_dropped.clone())], config)
            .unwrap();
    let addr = server.local_addr();
    assert_eq!(server.datagram_addr().map(|a| a.port()), Some(addr.port()), "UDP on the same port");
    Fixture { addr, count, hang_dropped, server: Some(spawn(server.serve())) }
}

fn start() -> Fixture {
    start_with(ServerConfig { datagram: true, ..ServerConfig::default() })
}

fn udp_config() -> ConnConfig {
    ConnConfig { transport: Transport::Udp, ..ConnConfig::default() }
}

fn udp_client(addr: SocketAddr) -> Client {
    Client::with_config(addr, udp_config())
}

#[test]
fn calls_over_udp_return_results_and_many_run_at_once() {
    each_driver(|_| async {
        let f = start();
        let client = udp_client(f.addr);
        let n = client.call::<(), u64>(BUMP, &(), CallOptions::default()).await.unwrap();
        assert_eq!(n.to_native(), 1);
        let len = client.call::<Vec<u8>, u64>(ECHO, &vec![7u8; 1000], CallOptions::default()).await.unwrap();
        assert_eq!(len.to_native(), 1000);
        // A thousand at once (the default in-flight limit is 1024), finishing out of order (the slow ones in reverse of their start).
        let tasks: Vec<_> = (0..1000u64)
            .map(|i| {
                let client = client.clone();
                spawn(async move {
                    if i % 100 == 0 {
                        let ms = 20 - i / 100; // 20 ms down to 11 ms
                        client.call::<u64, u64>(SLOW_BUMP, &ms, CallOptions::default()).await.map(|m| m.to_native())
                    } else {
                        client.call::<(), u64>(BUMP, &(), CallOptions::default()).await.map(|m| m.to_native())
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(must("a concurrent call", t).await.expect("call"));
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 1000, "every call ran exactly once");
        assert_eq!(f.count.get(), 1001);
        assert_eq!(client.in_flight(), 0);
    });
}

#[test]
fn every_call_runs_exactly_once_through_loss_and_duplication() {
    each_driver(|_| async {
        let f = start();
        let (relay, dropped) = lossy_relay(f.addr);
        let client = udp_client(relay);
        let mut total = 0;
        for i in 0..150u64 {
            let got = must("a call through the lossy relay", client.call::<(), u64>(BUMP, &(), CallOptions::default()))
                .await
                .expect("retransmission recovers every loss");
            total += 1;
            assert_eq!(got.to_native(), total, "call {i} ran once, in order");
        }
        // Slow calls: retransmissions arrive while they run and are answered `Pending`.
        let slow: Vec<_> = (0..10)
            .map(|_| {
                let client = client.clone();
                spawn(async move { client.call::<u64, u64>(SLOW_BUMP, &30, CallOptions::default()).await })
            })
            .collect();
        for t in slow {
            must("a slow call through the relay", t).await.expect("slow call");
        }
        assert_eq!(f.count.get(), 160, "no call ran twice, none was lost");
        assert!(dropped.get() > 50, "the relay did drop datagrams ({})", dropped.get());
    });
}

#[test]
fn past_the_reply_cache_budget_a_lost_reply_is_reported_and_the_call_never_runs_twice() {
    each_driver(|_| async {
        // No reply fits the budget: every retransmission after a lost reply finds it gone.
        let f = start_with(ServerConfig { datagram: true, reply_cache_bytes: 16, ..ServerConfig::default() });
        let (relay, dropped) = lossy_relay(f.addr);
        let client = udp_client(relay);
        let (mut ok, mut gone) = (0u64, 0u64);
        for _ in 0..60u64 {
            match must("a call through the lossy relay", client.call::<(), u64>(BUMP, &(), CallOptions::default()))
                .await
            {
                Ok(n) => {
                    ok += 1;
                    assert_eq!(n.to_native(), ok + gone, "each call runs once, in order");
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(text.contains("reply was dropped"), "a clear error: {text}");
                    gone += 1;
                }
            }
        }
        assert_eq!(f.count.get(), 60, "every call ran exactly once, answered or not");
        assert!(gone > 0 && ok > 0, "{ok} answered, {gone} reported gone ({} datagrams dropped)", dropped.get());
    });
}

#[test]
fn deadlines_cancellation_and_unknown_methods() {
    each_driver(|_| async {
        let f = start();
        let client = udp_client(f.addr);
        let err = client.call::<(), ()>(HANG, &(), CallOptions::timeout(Duration::from_millis(50))).await.unwrap_err();
        assert!(matches!(err, CallError::DeadlineExceeded), "{err:?}");
        // The server dropped the handler at the deadline it was sent.
        until("the hung handler is dropped", || f.hang_dropped.get()).await;

        f.hang_dropped.set(false);
        let call = spawn({
            let client = client.clone();
            async move { client.call::<(), ()>(HANG, &(), CallOptions::default()).await }
        });
        until("the call is in flight", || client.in_flight() == 1).await;
        drop(call);
        until("the cancel stops the handler", || f.hang_dropped.get()).await;

        let err = client.call::<(), ()>(999, &(), CallOptions::default()).await.unwrap_err();
        assert!(matches!(err, CallError::UnknownMethod { method_id: 999 }), "{err:?}");
        assert!(err.did_not_run());
    });
}

#[test]
fn server_death_mid_call_fails_it_and_a_new_server_is_used_after() {
    each_driver(|_| async {
        let mut f = start();
        let client = udp_client(f.addr);
        client.call::<(), u64>(BUMP, &(), CallOptions::default()).await.unwrap();
        let call = spawn({
            let client = client.clone();
            async move { client.call::<(), ()>(HANG, &(), CallOptions::default()).await }
        });
        until("the call is running at the server", || client.in_flight() == 1).await;
        drop(f.server.take());
        let err = must("the call fails once the server is gone", call).await.unwrap_err();
        assert!(matches!(err, CallError::ConnectionLost), "{err:?}");
        assert_eq!(client.in_flight(), 0, "a failed call frees its slot");
        let err = client.call::<(), u64>(BUMP, &(), CallOptions::default()).await.unwrap_err();
        assert!(matches!(err, CallError::Connect(_)), "nothing listens: {err:?}");
        assert!(err.did_not_run());
        // A new server on the same address: the next call opens a session with it.
        let config = ServerConfig { datagram: true, ..ServerConfig::default() };
        let again = Server::bind_with(f.addr, [service(f.count.clone(), f.hang_dropped.clone())], config).unwrap();
        let _serving = spawn(again.serve());
        let n = client.call::<(), u64>(BUMP, &(), CallOptions::default()).await.expect("the new server answers");
        assert_eq!(n.to_native(), 2);
    });
}

#[test]
fn an_expired_session_is_reopened_without_the_caller_noticing() {
    each_driver(|_| async {
        let idle = Duration::from_millis(2);
        let f = start_with(ServerConfig { datagram: true, session_idle: idle, ..ServerConfig::default() });
        let client = udp_client(f.addr);
        client.call::<(), u64>(BUMP, &(), CallOptions::default()).await.unwrap();
        // Idle past the limit (the condition here is the passing of time itself); the next
        // datagram to arrive lets the server sweep the session away.
        sleep(idle * 20).await;
        let other = udp_client(f.addr);
        other.call::<(), u64>(BUMP, &(), CallOptions::default()).await.unwrap();
        let n = client.call::<(), u64>(BUMP, &(), CallOptions::default()).await.expect("reopened transparently");
        assert_eq!(n.to_native(), 3);
        assert_eq!(f.count.get(), 3);
    });
}

#[test]
fn large_requests_go_over_tcp_and_oversized_replies_are_refused_clearly() {
    each_driver(|_| async {
        let f = start();
        let config =
            ConnConfig { datagram: DatagramConfig { max_datagram: 512, ..DatagramConfig::default() }, ..udp_config() };
        let client = Client::with_config(f.addr, config);
        let len = client.call::<Vec<u8>, u64>(ECHO, &vec![1u8; 100_000], CallOptions::default()).await.unwrap();
        assert_eq!(len.to_native(), 100_000, "sent over TCP");
        let small = client.call::<Vec<u8>, u64>(ECHO, &vec![1u8; 10], CallOptions::default()).await.unwrap();
        assert_eq!(small.to_native(), 10);
        let err = client.call::<u32, Vec<u8>>(BIG_REPLY, &100_000, CallOptions::default()).await.unwrap_err();
        match err {
            CallError::Status(s) => {
                assert_eq!(s.code(), ErrorCode::TooLarge);
                assert!(s.message().contains("does not fit a datagram"), "{s}");
            }
            e => panic!("expected TooLarge, got {e:?}"),
        }
    });
}

#[test]
fn bad_datagrams_are_dropped_or_refused_and_the_server_keeps_serving() {
    each_driver(|_| async {
        let f = start();
        let raw = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let send = |bytes: Vec<u8>| {
            let mut b = BytesMut::new();
            b.extend_from_slice(&bytes);
            raw.send_to(b, f.addr)
        };
        // Garbage, a truncated header, and a request with no session block: dropped.
        let _ = send(vec![0xde; 100]).await;
        let _ = send(b"MSRP\x01\x01".to_vec()).await;
        let mut plain = multispace_rpc::proto::frame::Header::request(1 << 32, BUMP, 0, 0).encode().to_vec();
        let _ = send(plain.clone()).await;
        // A request on a session the server never opened: refused as SessionUnknown, not run.
        let mut h = multispace_rpc::proto::frame::Header::request(1 << 32, BUMP, 0, 16);
        h.flags |= multispace_rpc::proto::session::FLAG_SESSION;
        plain = h.encode().to_vec();
        plain.extend_from_slice(&multispace_rpc::proto::session::encode_block(42));
        let _ = send(plain).await;
        let (res, buf) = must("the refusal", raw.recv_from(BytesMut::with_capacity(2048))).await;
        let (n, _) = res.unwrap();
        let head = multispace_rpc::proto::frame::decode_datagram(&buf[..n], 4096).unwrap();
        assert_eq!(ErrorCode::from_u16(head.status), ErrorCode::SessionUnknown);
        assert_eq!(f.count.get(), 0, "nothing ran");
        let client = udp_client(f.addr);
        assert_eq!(client.call::<(), u64>(BUMP, &(), CallOptions::default()).await.unwrap().to_native(), 1);
    });
}

#[test]
fn the_datagram_transport_is_never_mixed_with_tls() {
    each_driver(|_| async {
        let ca = multispace_rpc::tls::certs::Authority::create("test CA", 1).unwrap();
        let leaf = ca.issue(&multispace_rpc::tls::certs::Leaf::new("node-a", 1)).unwrap();
        let tls = multispace_rpc::TlsConfig::from_pem(
            ca.cert_pem().as_bytes(),
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
        )
        .unwrap();
        let config = ServerConfig {
            conn: ConnConfig { tls: Some(tls.clone()), ..ConnConfig::default() },
            datagram: true,
            ..ServerConfig::default()
        };
        let err = Server::bind_with("127.0.0.1:0".parse().unwrap(), [], config).unwrap_err();
        assert!(matches!(err, ServeError::DatagramWithTls), "{err:?}");
        let f = start();
        let client = Client::with_config(f.addr, ConnConfig { tls: Some(tls), ..udp_config() });
        let err = client.call::<(), u64>(BUMP, &(), CallOptions::default()).await.unwrap_err();
        assert!(matches!(err, CallError::Connect(_)), "{err:?}");
        assert_eq!(f.count.get(), 0);
    });
}
