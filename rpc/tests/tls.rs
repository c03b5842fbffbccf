//! Mutual TLS on reliable connections, on both drivers: calls with certificates from the
//! cluster CA work and carry the caller's principal; each bad certificate fails the handshake
//! with an error that says why; access lists refuse principals before the handler runs.

mod common;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use common::each_driver;
use multispace_rpc::tls::certs::{Authority, Leaf};
use multispace_rpc::{
    spawn, AccessList, CallError, CallOptions, Client, ConnConfig, Message, Server, ServerConfig, Service, Status,
    TlsConfig,
};

const WHO: u32 = 1;
const BIG: u32 = 2;

struct Pki {
    ca: Authority,
}

impl Pki {
    fn new() -> Pki {
        Pki::named_ca("test cluster CA")
    }
    fn named_ca(name: &str) -> Pki {
        Pki { ca: Authority::create(name, 30).unwrap() }
    }
    fn config(&self, leaf: &Leaf) -> TlsConfig {
        let issued = self.ca.issue(leaf).unwrap();
        TlsConfig::from_pem(self.ca.cert_pem().as_bytes(), issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap()
    }
    fn named(&self, name: &str) -> TlsConfig {
        self.config(&Leaf::new(name, 1))
    }
    /// Trusts this CA, but holds a certificate `other` issued.
    fn foreign(&self, other: &Pki, name: &str) -> TlsConfig {
        let issued = other.ca.issue(&Leaf::new(name, 1)).unwrap();
        TlsConfig::from_pem(self.ca.cert_pem().as_bytes(), issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap()
    }
}

fn conn(tls: Option<TlsConfig>) -> ConnConfig {
    ConnConfig { tls, ..ConnConfig::default() }
}

/// A service answering the caller's principal, counting the calls that ran.
fn service(ran: Rc<Cell<u32>>) -> Service {
    Service::builder("who")
        .method(WHO, move |ctx, _req: Message<()>| {
            let ran = ran.clone();
            async move {
                ran.set(ran.get() + 1);
                Ok::<String, Status>(ctx.principal.as_deref().unwrap_or("anonymous").to_string())
            }
        })
        .method(
            BIG,
            |_ctx, req: Message<Vec<u8>>| async move { Ok::<Vec<u8>, Status>(req.iter().rev().copied().collect()) },
        )
        .build()
}

fn serve(svc: Service, tls: Option<TlsConfig>) -> SocketAddr {
    let config = ServerConfig { conn: conn(tls), ..ServerConfig::default() };
    let server = Server::bind_with("127.0.0.1:0".parse().unwrap(), [svc], config).unwrap();
    let addr = server.local_addr();
    spawn(server.serve()).detach();
    addr
}

async fn who(addr: SocketAddr, tls: Option<TlsConfig>) -> Result<String, CallError> {
    let client = Client::with_config(addr, conn(tls));
    let r = client.call::<(), String>(WHO, &(), CallOptions::timeout(Duration::from_secs(20))).await?;
    Ok(r.as_str().to_string())
}

#[test]
fn calls_over_mutual_tls_carry_the_callers_principal_and_large_payloads_survive() {
    let pki = Pki::new();
    each_driver(|_| async {
        let addr = serve(service(Rc::default()), Some(pki.named("node-1")));
        assert_eq!(who(addr, Some(pki.named("client-7"))).await.unwrap(), "client-7");
        // Payloads larger than a TLS record and than rustls' buffers, both directions, with
        // several calls in flight on one connection.
        let client = Client::with_config(addr, conn(Some(pki.named("client-7"))));
        let calls = (0..4u8).map(|i| {
            let client = client.clone();
            async move {
                let data: Vec<u8> = (0..(300_000 + i as usize)).map(|j| (j % 251) as u8).collect();
                let r = client.call::<Vec<u8>, Vec<u8>>(BIG, &data, CallOptions::default()).await.unwrap();
                assert_eq!(r.as_slice(), data.iter().rev().copied().collect::<Vec<_>>().as_slice());
            }
        });
        for c in calls.map(spawn).collect::<Vec<_>>() {
            c.await;
        }
    });
}

#[test]
fn a_server_checks_the_name_it_was_dialled_by() {
    let pki = Pki::new();
    each_driver(|_| async {
        // Its certificate names 127.0.0.1 (Leaf::new's default), so dialling the address works.
        let addr = serve(service(Rc::default()), Some(pki.named("node-1")));
        let expect_other = pki.named("client-1").with_server_name("node-2").unwrap();
        let e = who(addr, Some(expect_other)).await.unwrap_err();
        let text = format!("{e}");
        assert!(matches!(e, CallError::Tls(_)), "{e:?}");
        assert!(text.contains("not valid for name \"node-2\""), "wrong name: {text}");
        println!("wrong name -> {text}");
        let expect_right = pki.named("client-1").with_server_name("node-1").unwrap();
        assert_eq!(who(addr, Some(expect_right)).await.unwrap(), "client-1");
    });
}

#[test]
fn bad_certificates_fail_the_handshake_with_a_clear_error_and_run_nothing() {
    let pki = Pki::new();
    let other = Pki::named_ca("another CA");
    let expired = {
        let mut leaf = Leaf::new("client-old", 1);
        leaf.not_before = SystemTime::now() - Duration::from_secs(10 * 86_400);
        leaf.not_after = SystemTime::now() - Duration::from_secs(86_400);
        pki.config(&leaf)
    };
    let no_cert = TlsConfig::client_without_certificate(pki.ca.cert_pem().as_bytes()).unwrap();
    each_driver(|_| {
        let (expired, no_cert) = (expired.clone(), no_cert.clone());
        let (pki, other) = (&pki, &other);
        async move {
            let ran = Rc::new(Cell::new(0));
            let addr = serve(service(ran.clone()), Some(pki.named("node-1")));
            let cases: [(&str, Option<TlsConfig>, &str); 4] = [
                ("no certificate", Some(no_cert), "CertificateRequired"),
                ("another CA's certificate", Some(pki.foreign(other, "client-1")), "UnknownCA"),
                ("an expired certificate", Some(expired), "CertificateExpired"),
                ("plain TCP to a TLS server", None, ""),
            ];
            for (what, tls, alert) in cases {
                let e = who(addr, tls).await.expect_err(what);
                let text = e.to_string();
                println!("{what} -> {text}");
                if alert.is_empty() {
                    assert!(matches!(e, CallError::ConnectionLost), "{what}: {e:?}");
                } else {
                    assert!(text.contains(alert), "{what}: {text}");
                    assert!(e.did_not_run(), "{what}: a refused certificate means nothing ran: {e:?}");
                }
            }
            // The client's own checks: a server from another CA, or one whose certificate expired.
            let rogue = serve(service(ran.clone()), Some(other.named("node-1")));
            let e = who(rogue, Some(pki.named("client-1"))).await.unwrap_err();
            println!("server from another CA -> {e}");
            assert!(e.to_string().contains("UnknownIssuer"), "{e}");
            let mut old = Leaf::new("node-1", 1);
            old.not_after = SystemTime::now() - Duration::from_secs(86_400);
            old.not_before = SystemTime::now() - Duration::from_secs(2 * 86_400);
            let stale = serve(service(ran.clone()), Some(pki.config(&old)));
            let e = who(stale, Some(pki.named("client-1"))).await.unwrap_err();
            println!("expired server certificate -> {e}");
            assert!(e.to_string().contains("certificate expired"), "{e}");
            // A TLS client talking to a plain server.
            let plain = serve(service(ran.clone()), None);
            let e = who(plain, Some(pki.named("client-1"))).await.unwrap_err();
            println!("TLS client to a plain server -> {e}");
            assert!(matches!(e, CallError::Tls(_)), "{e:?}");
            assert_eq!(ran.get(), 0, "no handler ran for any refused connection");
            // And the server still serves good clients.
            assert_eq!(who(addr, Some(pki.named("client-1"))).await.unwrap(), "client-1");
        }
    });
}

#[test]
fn an_access_list_refuses_principals_before_the_handler_runs() {
    let pki = Pki::new();
    each_driver(|_| async {
        let ran = Rc::new(Cell::new(0));
        let acl = AccessList::new().allow("admin").allow_method(WHO, "node-*");
        let addr = serve(service(ran.clone()).with_access(acl), Some(pki.named("node-1")));
        assert_eq!(who(addr, Some(pki.named("admin"))).await.unwrap(), "admin");
        assert_eq!(who(addr, Some(pki.named("node-3"))).await.unwrap(), "node-3");
        assert_eq!(ran.get(), 2);
        let e = who(addr, Some(pki.named("mallory"))).await.unwrap_err();
        println!("unauthorized principal -> {e}");
        match &e {
            CallError::PermissionDenied(why) => assert!(why.contains("mallory"), "{why}"),
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
        assert!(e.did_not_run());
        // node-* may call WHO only.
        let client = Client::with_config(addr, conn(Some(pki.named("node-3"))));
        let e = client.call::<Vec<u8>, Vec<u8>>(BIG, &vec![1, 2], CallOptions::default()).await.unwrap_err();
        assert!(matches!(e, CallError::PermissionDenied(_)), "{e:?}");
        assert_eq!(ran.get(), 2, "refused calls did not run");
        // Without TLS there is no principal: a service with an access list refuses everyone.
        let plain = serve(service(ran.clone()).with_access(AccessList::new().allow("*")), None);
        let e = who(plain, None).await.unwrap_err();
        assert!(matches!(e, CallError::PermissionDenied(_)), "{e:?}");
        assert_eq!(ran.get(), 2);
    });
}

#[test]
fn a_runtime_configured_with_tls_uses_it_for_every_client_and_server_it_makes() {
    let pki = Pki::new();
    for kind in common::drivers() {
        let conn = ConnConfig { tls: Some(pki.named("node-5")), ..ConnConfig::default() };
        let config =
            multispace_rpc::Config { driver: multispace_rpc::DriverChoice::Force(kind), conn, ..Default::default() };
        let rt = multispace_rpc::LocalRuntime::new(config).unwrap();
        rt.block_on(async {
            // Plain constructors: the core's settings apply.
            let server = Server::bind("127.0.0.1:0".parse().unwrap(), [service(Rc::default())]).unwrap();
            let addr = server.local_addr();
            spawn(server.serve()).detach();
            let client = Client::new(addr);
            let r = client.call::<(), String>(WHO, &(), CallOptions::default()).await.unwrap();
            assert_eq!(r.as_str(), "node-5", "{kind:?}");
            // Plain TCP only when asked for explicitly — and this server refuses it.
            let e = who(addr, None).await.unwrap_err();
            assert!(matches!(e, CallError::ConnectionLost), "{e:?}");
        });
    }
}

#[test]
fn a_reconnecting_client_resumes_with_its_principal_and_access_checks_intact() {
    let pki = Pki::new();
    each_driver(|_| async {
        let ran = Rc::new(Cell::new(0));
        let acl = AccessList::new().allow_method(WHO, "client-*");
        let addr = serve(service(ran.clone()).with_access(acl), Some(pki.named("node-1")));
        let before = multispace_rpc::tls::handshake_counts();
        // One configuration, shared by its connections as a core's is: the first call's
        // connection reads the server's ticket, the next connections resume with it.
        let client_tls = pki.named("client-7");
        for _ in 0..3 {
            assert_eq!(who(addr, Some(client_tls.clone())).await.unwrap(), "client-7");
        }
        let after = multispace_rpc::tls::handshake_counts();
        assert_eq!(after.client_full - before.client_full, 1, "{after:?}");
        assert_eq!(after.client_resumed - before.client_resumed, 2, "{after:?}");
        assert_eq!(after.server_resumed - before.server_resumed, 2, "{after:?}");
        // A resumed session still answers to the access list: BIG is not allowed to anyone.
        let client = Client::with_config(addr, conn(Some(client_tls.clone())));
        let e = client.call::<Vec<u8>, Vec<u8>>(BIG, &vec![1], CallOptions::default()).await.unwrap_err();
        assert!(matches!(e, CallError::PermissionDenied(_)), "{e:?}");
        let resumed = multispace_rpc::tls::handshake_counts().client_resumed - after.client_resumed;
        assert_eq!(resumed, 1, "that connection resumed too");
        assert_eq!(ran.get(), 3);
        // Without resumption every handshake is a full one.
        let full = client_tls.without_resumption();
        let before = multispace_rpc::tls::handshake_counts();
        for _ in 0..2 {
            assert_eq!(who(addr, Some(full.clone())).await.unwrap(), "client-7");
        }
        let after = multispace_rpc::tls::handshake_counts();
        assert_eq!((after.client_full - before.client_full, after.client_resumed - before.client_resumed), (2, 0));
    });
}
