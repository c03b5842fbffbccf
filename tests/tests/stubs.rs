//! Generated stubs end to end: every method shape of the calculator over every transport
//! (reliable, one-way UDP, multicast), and the interface check between builds. Both drivers.

use std::net::Ipv4Addr;
use std::rc::Rc;

use multispace_rpc::stub::{InterfaceInfo, InterfaceMismatch, MethodInfo};
use multispace_rpc::{
    spawn, CallError, CallOptions, Client, ErrorCode, Message, MulticastGroup, OneWayServer, Server, Service, Status,
};
use multispace_services::calc::{self, CalcClient, CalcMulticast, CalcOneWay, Point};
use multispace_services::Calculator;
use multispace_tests::{each_driver, must, until};

fn serve(svc: Service) -> std::net::SocketAddr {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
    let addr = server.local_addr();
    spawn(server.serve()).detach();
    addr
}

#[test]
fn every_call_shape_over_the_reliable_client() {
    each_driver(|_| async {
        let imp = Rc::new(Calculator::new("one"));
        let c = CalcClient::new(serve(calc::service_rc(imp.clone())));
        must("ping", c.ping()).await.unwrap();
        assert_eq!(must("add", c.add(40, 2)).await.unwrap().to_native(), 42);
        assert_eq!(must("divide", c.divide(9, 3)).await.unwrap().to_native(), 3);
        match must("divide by zero", c.divide(1, 0)).await.unwrap_err() {
            CallError::Status(s) => {
                assert_eq!(s.code(), ErrorCode::Application);
                assert_eq!(s.message(), "division by zero");
            }
            other => panic!("expected an application error, got {other:?}"),
        }
        assert_eq!(must("accumulate", c.accumulate(5)).await.unwrap().to_native(), 5);
        assert_eq!(must("accumulate", c.accumulate(6)).await.unwrap().to_native(), 11);
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        assert_eq!(must("echo", c.echo(data.clone())).await.unwrap().as_slice(), &data[..]);
        let sum =
            must("centroid_sum", c.centroid_sum(vec![Point { x: 1, y: 2 }, Point { x: 10, y: 20 }])).await.unwrap();
        assert_eq!((sum.x.to_native(), sum.y.to_native()), (11, 22));
        assert_eq!(must("get missing", c.get("k".into())).await.unwrap().as_ref().map(|v| v.to_native()), None);
        must("set", c.set("k".into(), 7)).await.unwrap();
        assert_eq!(must("get", c.get("k".into())).await.unwrap().as_ref().map(|v| v.to_native()), Some(7));
        assert_eq!(must("whoami", c.whoami()).await.unwrap().as_str(), "one");
        // One-way methods are also callable reliably (acknowledged).
        must("log", c.log("acked".into())).await.unwrap();
        // Or unacknowledged on the same connection, in order: the call after them is answered
        // once they were handled.
        must("log", c.log_unacked("unacked".into())).await.unwrap();
        must("announce", c.announce(Point { x: 3, y: 4 })).await.unwrap();
        assert_eq!(imp.log_lines(), ["acked", "unacked"]);
        assert_eq!(imp.announcements(), [Point { x: 3, y: 4 }]);
        assert_eq!(imp.register(), 11);
        must("interface check", c.check_interface()).await.unwrap();
    });
}

#[test]
fn one_way_calls_over_udp() {
    each_driver(|_| async {
        let imp = Rc::new(Calculator::new("udp"));
        let server = OneWayServer::bind("127.0.0.1:0".parse().unwrap(), [calc::service_rc(imp.clone())]).unwrap();
        let addr = server.local_addr();
        spawn(server.serve()).detach();
        let stub = CalcOneWay::new(addr).unwrap();
        stub.log("first".into()).await.unwrap();
        stub.announce(Point { x: 1, y: 1 }).await.unwrap();
        stub.log("second".into()).await.unwrap();
        until("both lines logged", || imp.log_lines().len() == 2).await;
        until("announcement heard", || imp.announcements().len() == 1).await;
        // Loopback UDP does not reorder datagrams from one socket.
        assert_eq!(imp.log_lines(), ["first", "second"]);
    });
}

#[test]
fn multicast_calls_reach_every_member() {
    each_driver(|kind| async move {
        // A port per driver run so the two runs cannot hear each other.
        let port = match kind {
            multispace_rpc::DriverKind::Uring => 47_631,
            multispace_rpc::DriverKind::Epoll => 47_632,
        };
        let group = MulticastGroup::loopback(Ipv4Addr::new(239, 255, 42, 31), port);
        let members: Vec<Rc<Calculator>> = (0..3).map(|i| Rc::new(Calculator::new(format!("m{i}")))).collect();
        for m in &members {
            let server = OneWayServer::join(&group, [calc::service_rc(m.clone())]).unwrap();
            spawn(server.serve()).detach();
        }
        let stub = CalcMulticast::new(group).unwrap();
        stub.announce(Point { x: 7, y: 8 }).await.unwrap();
        until("every member heard it", || members.iter().all(|m| m.announcements().len() == 1)).await;
        for m in &members {
            assert_eq!(m.announcements(), [Point { x: 7, y: 8 }]);
        }
    });
}

/// A server built from an older version of the interface: it lacks `whoami`, and its `add`
/// took other arguments (so another id).
fn older_build() -> Service {
    let mut info = calc::interface_info();
    info.methods.retain(|m| m.name != "whoami");
    for m in &mut info.methods {
        if m.name == "add" {
            m.id ^= 0x5a5a;
        }
    }
    info.fingerprint ^= 1;
    let ping = info.methods.iter().find(|m| m.name == "ping").unwrap().id;
    Service::builder(calc::SERVICE)
        .method(ping, |_ctx, _req: Message<calc::PingArgs>| async { Ok::<(), Status>(()) })
        .method(calc::method_id::INTERFACE, move |_ctx, _req: Message<()>| {
            let info = info.clone();
            async move { Ok::<InterfaceInfo, Status>(info) }
        })
        .build()
}

#[test]
fn a_client_finds_out_when_the_server_was_built_from_another_interface() {
    each_driver(|_| async {
        let c = CalcClient::new(serve(older_build()));
        // The unchanged method still works...
        must("ping", c.ping()).await.unwrap();
        // ...a changed one is refused by id instead of misread...
        let err = must("add", c.add(1, 2)).await.unwrap_err();
        assert!(matches!(err, CallError::UnknownMethod { method_id } if method_id == calc::method_id::ADD), "{err:?}");
        // ...and the check names what differs.
        match must("check", c.check_interface()).await.unwrap_err() {
            InterfaceMismatch::Differs { client_only, server_only, .. } => {
                assert!(client_only.contains(&"whoami".to_string()) && client_only.contains(&"add".to_string()));
                assert_eq!(server_only, ["add"], "the old `add` is only on the server");
            }
            other => panic!("expected Differs, got {other:?}"),
        }
    });
}

#[test]
fn a_server_that_only_added_methods_passes_the_check() {
    each_driver(|_| async {
        let mut info = calc::interface_info();
        info.methods.push(MethodInfo { name: "added_later".into(), id: 0x1234_5678 });
        info.fingerprint ^= 1;
        let svc = Service::builder(calc::SERVICE)
            .method(calc::method_id::INTERFACE, move |_ctx, _req: Message<()>| {
                let info = info.clone();
                async move { Ok::<InterfaceInfo, Status>(info) }
            })
            .build();
        let c = CalcClient::new(serve(svc));
        must("check", c.check_interface()).await.unwrap();
    });
}

#[test]
fn a_server_without_the_interface_is_reported_as_such() {
    each_driver(|_| async {
        let other =
            Service::builder("other").method(1, |_ctx, _req: Message<()>| async { Ok::<(), Status>(()) }).build();
        let c = CalcClient::new(serve(other)).with_options(CallOptions::default());
        let err = must("check", c.check_interface()).await.unwrap_err();
        assert!(matches!(err, InterfaceMismatch::NotServed { .. }), "{err:?}");
        assert!(err.to_string().contains("Calc"));
        // The raw client still works against it.
        let raw = Client::new(c.client().addr());
        must("raw", raw.call::<(), ()>(1, &(), CallOptions::default())).await.unwrap();
    });
}

#[test]
fn two_services_answering_one_method_id_are_refused_at_bind() {
    let a = calc::service(Calculator::new("a"));
    let b = calc::service(Calculator::new("b"));
    let err = Server::bind("127.0.0.1:0".parse().unwrap(), [a, b]).unwrap_err();
    assert!(matches!(err, multispace_rpc::ServeError::DuplicateMethod { .. }), "{err:?}");
}

#[test]
fn stopping_a_server_closes_its_connections_too() {
    each_driver(|_| async {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), [calc::service(Calculator::new("x"))]).unwrap();
        let c = CalcClient::new(server.local_addr());
        let serving = spawn(server.serve());
        must("ping", c.ping()).await.unwrap();
        // Stop it: the established connection must not go on being served.
        drop(serving);
        let err = must("call after stop", c.ping()).await.unwrap_err();
        assert!(matches!(err, CallError::ConnectionLost | CallError::Connect(_)), "{err:?}");
    });
}
