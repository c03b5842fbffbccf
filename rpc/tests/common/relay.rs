//! A deterministic lossy UDP relay, for retransmission tests.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::BytesMut;
use multispace_rpc::net::UdpSocket;
use multispace_rpc::spawn;

/// A UDP relay between a client and a server that drops and duplicates datagrams by a fixed
/// pattern (deterministic loss, no timing involved).
pub fn lossy_relay(server: SocketAddr) -> (SocketAddr, Rc<Cell<u64>>) {
    let front = Rc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
    let back = Rc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
    let addr = front.local_addr().unwrap();
    let client: Rc<Cell<Option<SocketAddr>>> = Rc::default();
    let dropped = Rc::new(Cell::new(0u64));
    let relay = |from: Rc<UdpSocket>, to: Rc<UdpSocket>, towards_server: bool| {
        let (client, dropped) = (client.clone(), dropped.clone());
        spawn(async move {
            let mut buf = BytesMut::with_capacity(70_000);
            for i in 0u64.. {
                buf.clear();
                let (res, b) = from.recv_from(buf).await;
                buf = b;
                let Ok((n, peer)) = res else { continue };
                let dest = if towards_server {
                    client.set(Some(peer));
                    server
                } else {
                    match client.get() {
                        Some(c) => c,
                        None => continue,
                    }
                };
                // Requests: lose every third; replies: lose every fourth; duplicate every fifth.
                if (towards_server && i % 3 == 1) || (!towards_server && i % 4 == 2) {
                    dropped.set(dropped.get() + 1);
                    continue;
                }
                let copies = if i % 5 == 4 { 2 } else { 1 };
                for _ in 0..copies {
                    let mut out = BytesMut::with_capacity(n);
                    out.extend_from_slice(&buf[..n]);
                    let _ = to.send_to(out, dest).await;
                }
            }
        })
        .detach();
    };
    relay(front.clone(), back.clone(), true);
    relay(back, front, false);
    (addr, dropped)
}
