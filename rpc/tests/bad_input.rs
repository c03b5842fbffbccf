//! Hostile and broken peers: each gets a clear error or a closed connection, never a panic or
//! a hang, and the server keeps serving everyone else. Both drivers.

mod common;

use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use common::{each_driver, must};
use multispace_rpc::net::TcpStream;
use multispace_rpc::proto::frame::{decode_frame, Decoded, ErrorCode, Header, HEADER_LEN};
use multispace_rpc::{spawn, CallOptions, Client, ConnConfig, Message, Server, ServerConfig, Service, Status};

const ECHO: u32 = 1;
const BIG: u32 = 2;
const FLAG: u32 = 3;
const NEVER: u32 = 4;

fn service() -> Service {
    Service::builder("victim")
        .method(ECHO, |_ctx, req: Message<String>| async move { Ok::<String, Status>(req.as_str().to_owned()) })
        .method(BIG, |_ctx, _req: Message<()>| async move { Ok::<Vec<u8>, Status>(vec![1u8; 64 << 10]) })
        .method(FLAG, |_ctx, req: Message<bool>| async move { Ok::<bool, Status>(*req) })
        .method(NEVER, |_ctx, _req: Message<()>| std::future::pending::<Result<(), Status>>())
        .build()
}

fn start_with(config: ServerConfig) -> SocketAddr {
    let server = Server::bind_with("127.0.0.1:0".parse().unwrap(), [service()], config).unwrap();
    let addr = server.local_addr();
    spawn(server.serve()).detach();
    addr
}

fn start() -> SocketAddr {
    start_with(ServerConfig::default())
}

/// Send `bytes` (optionally half-closing), then read until the server closes. Returns what it
/// sent back.
async fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (res, _) = s.send_all(BytesMut::from(bytes)).await;
    res.unwrap();
    if half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    read_to_end(&s).await
}

async fn read_to_end(s: &TcpStream) -> Vec<u8> {
    let out = must("server closes the connection", async {
        let mut out = BytesMut::with_capacity(4096);
        loop {
            out.reserve(4096);
            let (res, b) = s.recv(out).await;
            out = b;
            match res {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("read failed: {e}"),
            }
        }
        out
    })
    .await;
    out.to_vec()
}

/// The single error frame the server sent before closing.
fn error_code(reply: &[u8]) -> ErrorCode {
    match decode_frame(reply, 1 << 20).unwrap() {
        Decoded::Frame { header, .. } => {
            assert_eq!(header.kind, multispace_rpc::proto::frame::FrameKind::Error);
            ErrorCode::from_u16(header.status)
        }
        Decoded::NeedMore(_) => panic!("no complete error frame in {reply:?}"),
    }
}

/// The server still answers a well-behaved client.
async fn still_serving(addr: SocketAddr) {
    let c = Client::new(addr);
    let r =
        must("good call", c.call::<String, String>(ECHO, &"alive".to_string(), CallOptions::default())).await.unwrap();
    assert_eq!(r.as_str(), "alive");
}

fn request(method: u32, payload: &[u8]) -> Vec<u8> {
    request_with_id(9, method, payload)
}

fn request_with_id(id: u64, method: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Header::request(id, method, 0, payload.len() as u32).encode().to_vec();
    v.extend_from_slice(payload);
    v.resize(HEADER_LEN + payload.len().next_multiple_of(16), 0);
    v
}

#[test]
fn random_bytes_get_malformed_and_close() {
    each_driver(|_| async {
        let addr = start();
        let junk: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let reply = exchange(addr, &junk, false).await;
        assert_eq!(error_code(&reply), ErrorCode::Malformed);
        still_serving(addr).await;
    });
}

#[test]
fn truncated_header_then_eof_closes() {
    each_driver(|_| async {
        let addr = start();
        let h = Header::request(1, ECHO, 0, 0).encode();
        let reply = exchange(addr, &h[..10], true).await;
        assert!(reply.is_empty(), "nothing to answer for half a header");
        still_serving(addr).await;
    });
}

#[test]
fn length_over_the_limit_is_refused_before_the_payload_arrives() {
    each_driver(|_| async {
        let addr = start();
        let h = Header::request(1, ECHO, 0, 100 << 20).encode();
        // Only the header is sent; the server must not wait for (or allocate) 100 MiB.
        let reply = exchange(addr, &h, false).await;
        assert_eq!(error_code(&reply), ErrorCode::TooLarge);
        still_serving(addr).await;
    });
}

#[test]
fn length_lying_about_the_payload_closes_at_eof() {
    each_driver(|_| async {
        let addr = start();
        let mut bytes = Header::request(1, ECHO, 0, 100).encode().to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        let reply = exchange(addr, &bytes, true).await;
        assert!(reply.is_empty());
        still_serving(addr).await;
    });
}

#[test]
fn unknown_version_is_refused() {
    each_driver(|_| async {
        let addr = start();
        let mut h = Header::request(1, ECHO, 0, 0).encode();
        h[4] = 99;
        let reply = exchange(addr, &h, false).await;
        assert_eq!(error_code(&reply), ErrorCode::UnsupportedVersion);
        still_serving(addr).await;
    });
}

#[test]
fn payload_failing_validation_gets_invalid_payload_and_connection_stays_open() {
    each_driver(|_| async {
        let addr = start();
        let s = TcpStream::connect(addr).await.unwrap();
        // An archived bool must be 0 or 1.
        let mut bytes = request(FLAG, &[2u8]);
        // Then a valid call on the same connection.
        let good = rkyv::to_bytes::<rkyv::rancor::Error>(&"after".to_string()).unwrap();
        let mut second = Header::request(10, ECHO, 0, good.len() as u32).encode().to_vec();
        second.extend_from_slice(&good);
        second.resize(HEADER_LEN + good.len().next_multiple_of(16), 0);
        bytes.extend_from_slice(&second);
        let (res, _) = s.send_all(BytesMut::from(&bytes[..])).await;
        res.unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let reply = read_to_end(&s).await;
        let mut frames = Vec::new();
        let mut rest = &reply[..];
        while let Ok(Decoded::Frame { header, len }) = decode_frame(rest, 1 << 20) {
            frames.push(header);
            rest = &rest[len..];
        }
        let first = frames.iter().find(|h| h.request_id == 9).expect("answer to the bad call");
        assert_eq!(ErrorCode::from_u16(first.status), ErrorCode::InvalidPayload);
        let second = frames.iter().find(|h| h.request_id == 10).expect("answer to the good call");
        assert_eq!(second.kind, multispace_rpc::proto::frame::FrameKind::Response);
    });
}

#[test]
fn half_a_frame_then_stall_is_closed_after_the_frame_timeout() {
    each_driver(|_| async {
        let conn = ConnConfig { frame_timeout: Duration::from_millis(100), ..ConnConfig::default() };
        let addr = start_with(ServerConfig { conn, ..ServerConfig::default() });
        let h = Header::request(1, ECHO, 0, 64).encode();
        // Not half-closed: the peer just stops sending.
        let reply = exchange(addr, &h[..20], false).await;
        assert!(reply.is_empty());
        still_serving(addr).await;
    });
}

#[test]
fn a_frame_dripped_a_byte_at_a_time_is_closed_at_its_deadline() {
    each_driver(|_| async {
        let conn = ConnConfig { frame_timeout: Duration::from_millis(100), ..ConnConfig::default() };
        let addr = start_with(ServerConfig { conn, ..ServerConfig::default() });
        let s = std::rc::Rc::new(TcpStream::connect(addr).await.unwrap());
        // A 1 MiB frame, one byte every 10 ms: each read is prompt, but the frame would take
        // hours. The server must close at the frame's deadline, well before the drip ends
        // (3000 bytes, 30 s, longer than the test's event bound).
        let frame = request(ECHO, &vec![0u8; 1 << 20]);
        let drip = {
            let s = s.clone();
            spawn(async move {
                for b in frame.into_iter().take(3000) {
                    let (res, _) = s.send_all(BytesMut::from(&[b][..])).await;
                    if res.is_err() {
                        return;
                    }
                    multispace_rpc::runtime::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let reply = read_to_end(&s).await;
        assert!(reply.is_empty(), "a stalled frame is closed without an answer");
        drop(drip);
        still_serving(addr).await;
    });
}

#[test]
fn request_id_zero_is_a_protocol_error() {
    each_driver(|_| async {
        let addr = start();
        let good = rkyv::to_bytes::<rkyv::rancor::Error>(&"x".to_string()).unwrap();
        let reply = exchange(addr, &request_with_id(0, ECHO, &good), false).await;
        assert_eq!(error_code(&reply), ErrorCode::Malformed);
        still_serving(addr).await;
    });
}

#[test]
fn reusing_a_live_request_id_is_a_protocol_error() {
    each_driver(|_| async {
        let addr = start();
        let unit = rkyv::to_bytes::<rkyv::rancor::Error>(&()).unwrap();
        let mut bytes = request_with_id(5, NEVER, &unit);
        bytes.extend(request_with_id(5, NEVER, &unit));
        let reply = exchange(addr, &bytes, false).await;
        match decode_frame(&reply, 1 << 20).unwrap() {
            Decoded::Frame { header, .. } => assert_eq!(header.request_id, 0, "a connection-level error"),
            Decoded::NeedMore(_) => panic!("no error frame"),
        }
        assert_eq!(error_code(&reply), ErrorCode::Malformed);
        still_serving(addr).await;
    });
}

#[test]
fn peers_that_never_read_are_throttled_and_others_are_served() {
    each_driver(|_| async {
        let conn = ConnConfig { max_outbox: 256 << 10, ..ConnConfig::default() };
        let addr = start_with(ServerConfig { conn, ..ServerConfig::default() });
        // Each hog asks for 64 KiB responses it never reads: without back-pressure the server
        // would buffer 2000 × 64 KiB per connection.
        let unit = rkyv::to_bytes::<rkyv::rancor::Error>(&()).unwrap();
        let mut burst = Vec::new();
        for i in 0..2000u64 {
            let mut f = Header::request(i + 1, BIG, 0, unit.len() as u32).encode().to_vec();
            f.resize(HEADER_LEN + unit.len().next_multiple_of(16), 0);
            burst.extend_from_slice(&f);
        }
        let mut hogs = Vec::new();
        for _ in 0..20 {
            let s = TcpStream::connect(addr).await.unwrap();
            let burst = BytesMut::from(&burst[..]);
            // Sending may itself block once the server stops reading; do it in the background.
            let s = std::rc::Rc::new(s);
            let s2 = s.clone();
            hogs.push((s, spawn(async move { s2.send_all(burst).await.0 })));
        }
        still_serving(addr).await;
        drop(hogs);
        still_serving(addr).await;
    });
}

#[test]
fn oversized_request_is_refused_by_the_client_before_sending() {
    each_driver(|_| async {
        let addr = start();
        let c = Client::with_config(addr, ConnConfig { max_payload: 1024, ..ConnConfig::default() });
        let err = c.call::<String, String>(ECHO, &"x".repeat(2000), CallOptions::default()).await.unwrap_err();
        assert!(
            matches!(err, multispace_rpc::CallError::Encode(multispace_rpc::EncodeError::TooLarge { max: 1024, .. })),
            "{err:?}"
        );
        assert!(err.did_not_run());
        // The connection is unaffected.
        let r = c.call::<String, String>(ECHO, &"small".to_string(), CallOptions::default()).await.unwrap();
        assert_eq!(r.as_str(), "small");
    });
}

/// A request carrying `block` as its trace context before a good archive.
fn traced_request(block: [u8; 32]) -> Vec<u8> {
    let good = rkyv::to_bytes::<rkyv::rancor::Error>(&"x".to_string()).unwrap();
    let mut payload = block.to_vec();
    payload.extend_from_slice(&good);
    let mut h = Header::request(9, ECHO, 0, payload.len() as u32);
    h.flags |= multispace_rpc::proto::trace::FLAG_TRACE;
    let mut v = h.encode().to_vec();
    v.extend_from_slice(&payload);
    v.resize(HEADER_LEN + payload.len().next_multiple_of(16), 0);
    v
}

#[test]
fn a_bad_trace_context_is_malformed_and_a_good_one_is_served() {
    use multispace_rpc::trace::{SpanId, TraceContext, TraceId};
    each_driver(|_| async {
        let addr = start();
        let good = TraceContext { trace_id: TraceId::new(7), span_id: SpanId(9) }.encode();
        let mut zero_trace = good;
        zero_trace[..16].fill(0);
        let mut reserved = good;
        reserved[28] = 1;
        for bad in [zero_trace, reserved] {
            let reply = exchange(addr, &traced_request(bad), false).await;
            assert_eq!(error_code(&reply), ErrorCode::Malformed);
        }
        // The flag on a payload too short to hold the block is refused from the header alone.
        let mut short = Header::request(9, ECHO, 0, 16);
        short.flags |= multispace_rpc::proto::trace::FLAG_TRACE;
        let mut bytes = short.encode().to_vec();
        bytes.resize(HEADER_LEN + 16, 0);
        assert_eq!(error_code(&exchange(addr, &bytes, false).await), ErrorCode::Malformed);
        // A valid block: the archive after it is read as usual.
        let reply = exchange(addr, &traced_request(good), true).await;
        match decode_frame(&reply, 1 << 20).unwrap() {
            Decoded::Frame { header, .. } => {
                assert_eq!(header.kind, multispace_rpc::proto::frame::FrameKind::Response);
                let mut archive = rkyv::util::AlignedVec::<16>::new();
                archive.extend_from_slice(&reply[HEADER_LEN..HEADER_LEN + header.payload_len as usize]);
                let s = rkyv::access::<rkyv::string::ArchivedString, rkyv::rancor::Error>(&archive).unwrap();
                assert_eq!(s.as_str(), "x");
            }
            Decoded::NeedMore(_) => panic!("no response frame"),
        }
        still_serving(addr).await;
    });
}
