//! Mutual TLS 1.3 for reliable connections (rustls).
//!
//! rustls does no I/O of its own, so a session is driven here by the same drivers as plain
//! TCP: ciphertext is received into a buffer and fed to rustls, plaintext frames are written
//! to rustls and the records it produces are sent. Both ends present certificates from the
//! cluster CA; the peer's verified certificate gives the [`Principal`] handlers see and access
//! lists check. Plain TCP is what a [`ConnConfig`](crate::ConnConfig) without a
//! [`TlsConfig`] means: chosen in configuration, never a fallback.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection};

use crate::net::TcpStream;
use crate::runtime::time::timeout_at;

#[cfg(feature = "certgen")]
pub mod certs;
mod chains;
mod validity;

/// Why TLS could not be set up or a session failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file or buffer could not be read.
    #[error("cannot read {what}: {detail}")]
    Pem {
        /// Which input (CA, certificate, key).
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the certificates or key as a configuration.
    #[error("TLS configuration refused: {0}")]
    Config(#[source] rustls::Error),
    /// The handshake failed; `source` says why (e.g. `invalid peer certificate: UnknownIssuer`,
    /// `... Expired`, `... NotValidForName`, `peer sent no certificates`, or an alert the peer
    /// sent: `received fatal alert: CertificateRequired`).
    #[error("TLS handshake with {peer} failed: {source}")]
    Handshake {
        /// The other end.
        peer: SocketAddr,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The peer closed or stalled during the handshake.
    #[error("TLS handshake with {peer} did not finish: {detail}")]
    Incomplete {
        /// The other end.
        peer: SocketAddr,
        /// What happened.
        detail: String,
    },
    /// The established session failed (a bad record, or an alert from the peer).
    #[error("TLS session failed: {0}")]
    Session(#[source] rustls::Error),
}

impl TlsError {
    /// True if the peer refused this side's certificate or identity, so nothing was run there.
    pub fn is_rejection(&self) -> bool {
        use rustls::AlertDescription as A;
        let e = match self {
            TlsError::Handshake { source, .. } | TlsError::Session(source) => source,
            _ => return false,
        };
        matches!(
            e,
            rustls::Error::AlertReceived(
                A::BadCertificate
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
                    | A::CertificateExpired
                    | A::CertificateUnknown
                    | A::UnknownCA
                    | A::AccessDenied
                    | A::CertificateRequired
                    | A::HandshakeFailure
            )
        )
    }
}

/// Who is on the other end of a connection: the first DNS name (else URI) in the subject
/// alternative names of the certificate it proved it holds.
pub type Principal = Arc<str>;

/// A node's or client's TLS identity and trust: its certificate chain and key, and the
/// cluster CA whose certificates it accepts from peers. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    client: Arc<ClientConfig>,
    server: Option<Arc<ServerConfig>>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// aws-lc-rs's provider (X25519 first; with its X25519 and Ed25519, most of a handshake's
/// CPU, a handshake costs about half what it did with ring's) with the SHA-256 suites first: TLS 1.3 hashes its
/// transcript and derives its keys with the suite's hash, and SHA-256 has hardware help
/// (SHA-NI) on current x86 cores where SHA-384 has none; AES-128 is also the cheaper cipher
/// per record. (On this project's 2-core VM the suite's effect on the handshake was within
/// run-to-run noise.) AES-256-GCM-SHA384 stays on offer for other peers.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

/// A resumed session skipped the certificate checks. The chain its ticket carried was
/// verified by the full handshake that issued it, under the same trust anchors, so only time
/// can have made it unacceptable: check every certificate's validity at `now`.
fn recheck_resumed(conn: &Connection, now: UnixTime) -> Result<(), rustls::Error> {
    if conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
        return Ok(());
    }
    match conn.peer_certificates() {
        Some(chain) if !chain.is_empty() => validity::check(chain, now),
        _ => Err(rustls::Error::NoCertificatesPresented),
    }
}

impl TlsConfig {
    /// From PEM: the cluster CA certificate(s), this end's certificate chain, its private key.
    pub fn from_pem(ca: &[u8], cert_chain: &[u8], key: &[u8]) -> Result<TlsConfig, TlsError> {
        let pem =
            |what: &'static str| move |e: rustls::pki_types::pem::Error| TlsError::Pem { what, detail: e.to_string() };
        let cas: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(ca).collect::<Result<_, _>>().map_err(pem("CA certificate"))?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_chain).collect::<Result<_, _>>().map_err(pem("certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(pem("private key"))?;
        TlsConfig::from_der(cas, chain, key)
    }

    /// [`TlsConfig::from_pem`] reading three files.
    pub fn from_files(ca: &Path, cert_chain: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        let read = |what: &'static str, p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::Pem { what, detail: format!("{}: {e}", p.display()) })
        };
        TlsConfig::from_pem(&read("CA certificate", ca)?, &read("certificate", cert_chain)?, &read("private key", key)?)
    }

    /// From DER certificates and key.
    pub fn from_der(
        cas: Vec<CertificateDer<'static>>,
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsConfig, TlsError> {
        if cas.is_empty() {
            return Err(TlsError::Pem { what: "CA certificate", detail: "no certificate found".into() });
        }
        if cert_chain.is_empty() {
            return Err(TlsError::Pem { what: "certificate", detail: "no certificate found".into() });
        }
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca).map_err(TlsError::Config)?;
        }
        let roots = Arc::new(roots);
        let config_error =
            |e: rustls::server::VerifierBuilderError| TlsError::Config(rustls::Error::General(e.to_string()));
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build().map_err(config_error)?;
        let verifier = Arc::new(chains::RememberingClientVerifier::new(verifier));
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots, provider()).build().map_err(config_error)?;
        let server_verifier = Arc::new(chains::RememberingServerVerifier::new(server_verifier));
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert_chain.clone(), key.clone_key())
            .map_err(TlsError::Config)?;
        // Resumption: a client reconnecting to a server it already talked to (after a
        // failure, a restart of its side, or a short-lived CLI client) skips the certificate
        // signatures and checks, about half the handshake's CPU. Tickets are stateless
        // (sealed with a key every clone of this config shares, rotated by rustls; they live
        // at most 6 hours) and carry the client's certificate chain, so a resumed connection
        // has the same principal; `handshake` re-checks that certificate against the CA and
        // the clock on every resumed connection, so one that expired is refused at the next
        // connection as with a full handshake. No early data: a replayed ClientHello gains nothing. One
        // ticket per connection: each resumption consumes one and receives the next.
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Config)?;
        server.send_tls13_tickets = 1;
        // webpki's checks against the same roots, remembering the chains they accepted.
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(cert_chain, key)
            .map_err(TlsError::Config)?;
        Ok(TlsConfig { client: Arc::new(client), server: Some(Arc::new(server)), server_name: None })
    }

    /// A client that checks servers against `ca` (PEM) but has no certificate of its own.
    /// Servers of this crate refuse it — they require mutual TLS — so this is for probes and
    /// for testing that refusal; it cannot serve.
    pub fn client_without_certificate(ca: &[u8]) -> Result<TlsConfig, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca) {
            let ca = ca.map_err(|e| TlsError::Pem { what: "CA certificate", detail: e.to_string() })?;
            roots.add(ca).map_err(TlsError::Config)?;
        }
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConfig { client: Arc::new(client), server: None, server_name: None })
    }

    /// Every handshake a full one: this end neither offers nor issues resumption tickets, so
    /// certificates are sent and checked on every connection (for deployments that want a
    /// revoked or expired certificate refused at the next reconnect rather than when the
    /// ticket runs out, and for measuring what resumption saves).
    pub fn without_resumption(mut self) -> TlsConfig {
        let mut client = (*self.client).clone();
        client.resumption = rustls::client::Resumption::disabled();
        self.client = Arc::new(client);
        self.server = self.server.map(|s| {
            let mut s = (*s).clone();
            s.send_tls13_tickets = 0;
            Arc::new(s)
        });
        self
    }

    /// The name a server must have when this end connects to it. Without one, the server's
    /// certificate must name the IP address connected to.
    pub fn with_server_name(mut self, name: &str) -> Result<TlsConfig, TlsError> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| TlsError::Config(rustls::Error::General(format!("server name `{name}`: {e}"))))?;
        self.server_name = Some(name);
        Ok(self)
    }
}

/// One established TLS session over a connection, shared by its reader and writer tasks
/// (both on the connection's core; neither holds the borrow across an await).
pub(crate) struct Session {
    conn: RefCell<Connection>,
    peer: Option<Principal>,
    /// Until the first `decrypt`: records that came in the handshake's last read (rustls
    /// may also hold plaintext decrypted from it).
    early: RefCell<Option<BytesMut>>,
}

impl Session {
    /// The verified identity of the other end.
    pub(crate) fn principal(&self) -> Option<Principal> {
        self.peer.clone()
    }

    /// Whether rustls has records to send (e.g. an alert) that no frame will carry.
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.borrow().wants_write()
    }

    /// Decrypts `ciphertext` and appends the plaintext to `dst`; returns whether the peer
    /// has closed its side (close_notify). Plaintext is taken out as each chunk is processed,
    /// so rustls' own buffer never fills whatever the amount fed.
    pub(crate) fn decrypt(&self, ciphertext: &[u8], dst: &mut BytesMut) -> Result<bool, TlsError> {
        // The first call also takes what came with the handshake's last read, and whatever
        // rustls already decrypted from it.
        let early = self.early.borrow_mut().take();
        if let Some(early) = early {
            self.decrypt_one(&early, dst)?;
        }
        self.decrypt_one(ciphertext, dst)
    }

    /// Whether data from the handshake's last read waits to be decrypted or taken.
    pub(crate) fn has_early(&self) -> bool {
        self.early.borrow().is_some()
    }

    fn decrypt_one(&self, mut ciphertext: &[u8], dst: &mut BytesMut) -> Result<bool, TlsError> {
        let mut conn = self.conn.borrow_mut();
        let session = |e: rustls::Error| TlsError::Session(e);
        let mut closed = false;
        loop {
            let state = conn.process_new_packets().map_err(session)?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = dst.len();
                dst.resize(start + n, 0);
                if let Err(e) = conn.reader().read_exact(&mut dst[start..]) {
                    dst.truncate(start);
                    return Err(session(rustls::Error::General(e.to_string())));
                }
            }
            closed |= state.peer_has_closed();
            if ciphertext.is_empty() {
                return Ok(closed);
            }
            conn.read_tls(&mut ciphertext).map_err(|e| session(rustls::Error::General(format!("receive: {e}"))))?;
        }
    }

    /// Encrypts `plain` and appends the records to `out`.
    pub(crate) fn encrypt(&self, mut plain: &[u8], out: &mut BytesMut) -> io::Result<()> {
        let mut conn = self.conn.borrow_mut();
        loop {
            let n = conn.writer().write(plain)?;
            plain = &plain[n..];
            drain_records(&mut conn, out)?;
            if plain.is_empty() {
                return Ok(());
            }
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "TLS session accepts no more data"));
            }
        }
    }
}

fn drain_records(conn: &mut Connection, out: &mut BytesMut) -> io::Result<()> {
    let mut w = out.writer();
    while conn.wants_write() {
        conn.write_tls(&mut w)?;
    }
    Ok(())
}

/// Feeds `src` to rustls until the handshake is done; what is left (records sent after the
/// peer's last handshake message) stays in `src` for the session to decrypt.
fn feed_handshake(conn: &mut Connection, src: &mut &[u8]) -> Result<(), rustls::Error> {
    while !src.is_empty() && conn.is_handshaking() {
        conn.read_tls(src).map_err(|e| rustls::Error::General(format!("receive: {e}")))?;
        conn.process_new_packets()?;
    }
    Ok(())
}

/// Which end of the handshake this is.
pub(crate) enum Side<'a> {
    Client(&'a TlsConfig),
    Server(&'a TlsConfig),
}

/// Runs the handshake on a connected stream; by `deadline` it must be done.
pub(crate) async fn handshake(
    stream: &TcpStream,
    side: Side<'_>,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<Session, TlsError> {
    let conn: Connection = match side {
        Side::Client(cfg) => {
            let name = cfg.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(peer.ip().into()));
            ClientConnection::new(cfg.client.clone(), name).map_err(TlsError::Config)?.into()
        }
        Side::Server(cfg) => {
            let server = cfg.server.clone().ok_or_else(|| {
                TlsError::Config(rustls::Error::General(
                    "this TLS configuration has no certificate to serve with".into(),
                ))
            })?;
            ServerConnection::new(server).map_err(TlsError::Config)?.into()
        }
    };
    let conn = RefCell::new(conn);
    let incomplete = |detail: &str| TlsError::Incomplete { peer, detail: detail.to_string() };
    let work = async {
        let mut inbuf = BytesMut::with_capacity(16 << 10);
        loop {
            flush(stream, &conn).await.map_err(|e| incomplete(&format!("send failed: {e}")))?;
            if !conn.borrow().is_handshaking() {
                return Ok(inbuf);
            }
            inbuf.reserve(16 << 10);
            let (res, buf) = stream.recv(inbuf).await;
            inbuf = buf;
            match res {
                Ok(0) => return Err(incomplete("the peer closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(incomplete(&format!("receive failed: {e}"))),
            }
            let mut src = &inbuf[..];
            let fed = feed_handshake(&mut conn.borrow_mut(), &mut src);
            let used = inbuf.len() - src.len();
            let _ = inbuf.split_to(used);
            if let Err(source) = fed {
                // Tell the peer why (the alert rustls queued), then give up.
                let _ = flush(stream, &conn).await;
                return Err(TlsError::Handshake { peer, source });
            }
        }
    };
    let leftover: BytesMut = match timeout_at(deadline, work).await {
        Ok(r) => r?,
        Err(_) => return Err(incomplete("timed out")),
    };
    let conn = conn.into_inner();
    recheck_resumed(&conn, UnixTime::now()).map_err(|source| TlsError::Handshake { peer, source })?;
    count_handshake(&conn);
    let principal = conn.peer_certificates().and_then(|c| c.first()).and_then(principal_of);
    // Records that came with the peer's last handshake message wait for the first `decrypt`.
    Ok(Session { conn: RefCell::new(conn), peer: principal, early: RefCell::new(Some(leftover)) })
}

async fn flush(stream: &TcpStream, conn: &RefCell<Connection>) -> io::Result<()> {
    let mut out = BytesMut::new();
    drain_records(&mut conn.borrow_mut(), &mut out)?;
    if out.is_empty() {
        return Ok(());
    }
    stream.send_all(out).await.0
}

/// Handshakes that completed on one core, by side and kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    /// Full handshakes as the client (certificates sent and checked).
    pub client_full: u64,
    /// Resumed from a ticket as the client.
    pub client_resumed: u64,
    /// Full handshakes as the server.
    pub server_full: u64,
    /// Resumed from a ticket as the server.
    pub server_resumed: u64,
}

thread_local! {
    static COUNTS: std::cell::Cell<HandshakeCounts> = const {
        std::cell::Cell::new(HandshakeCounts { client_full: 0, client_resumed: 0, server_full: 0, server_resumed: 0 })
    };
}

/// The handshakes completed so far on the calling core (thread).
pub fn handshake_counts() -> HandshakeCounts {
    COUNTS.get()
}

fn count_handshake(conn: &Connection) {
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let mut c = COUNTS.get();
    match (conn, resumed) {
        (Connection::Client(_), false) => c.client_full += 1,
        (Connection::Client(_), true) => c.client_resumed += 1,
        (Connection::Server(_), false) => c.server_full += 1,
        (Connection::Server(_), true) => c.server_resumed += 1,
    }
    COUNTS.set(c);
}

/// The identity a verified certificate names.
fn principal_of(der: &CertificateDer<'_>) -> Option<Principal> {
    let cert = webpki::EndEntityCert::try_from(der).ok()?;
    let name = cert.valid_dns_names().next().or_else(|| cert.valid_uri_names().next())?;
    Some(Arc::from(name))
}

/// One complete handshake between `client` and `server` in memory, no sockets: what the
/// cryptography and certificate checks cost by themselves (the `tls` benchmark sets it beside
/// a handshake over loopback). The server certificate must name `127.0.0.1` unless `client`
/// has a server name. The client keeps the ticket the server sends, so a second call with the
/// same configurations resumes; returns whether this one did.
pub fn handshake_in_memory(client: &TlsConfig, server: &TlsConfig) -> Result<bool, TlsError> {
    let (c, _) = in_memory(client, server)?;
    Ok(c.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
}

/// Both ends of a completed in-memory handshake, resumed sessions re-checked as `handshake`
/// does.
fn in_memory(client: &TlsConfig, server: &TlsConfig) -> Result<(Connection, Connection), TlsError> {
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    let name = client.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(peer.ip().into()));
    let mut c: Connection = ClientConnection::new(client.client.clone(), name).map_err(TlsError::Config)?.into();
    let server_config = server
        .server
        .clone()
        .ok_or_else(|| TlsError::Config(rustls::Error::General("no certificate to serve with".into())))?;
    let mut s: Connection = ServerConnection::new(server_config).map_err(TlsError::Config)?.into();
    let fail = |source| TlsError::Handshake { peer, source };
    let mut buf = Vec::new();
    for _ in 0..10 {
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            recheck_resumed(&c, UnixTime::now()).map_err(fail)?;
            recheck_resumed(&s, UnixTime::now()).map_err(fail)?;
            return Ok((c, s));
        }
        for client_sends in [true, false] {
            let (from, to) = if client_sends { (&mut c, &mut s) } else { (&mut s, &mut c) };
            buf.clear();
            while from.wants_write() {
                from.write_tls(&mut buf).map_err(|e| fail(rustls::Error::General(e.to_string())))?;
            }
            let mut src = &buf[..];
            while !src.is_empty() {
                to.read_tls(&mut src).map_err(|e| fail(rustls::Error::General(e.to_string())))?;
                to.process_new_packets().map_err(fail)?;
            }
        }
    }
    Err(TlsError::Incomplete { peer, detail: "the in-memory handshake did not finish".into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ca_and(name: &str) -> (String, String, String) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    #[test]
    fn configs_load_from_pem_and_bad_inputs_say_what_is_wrong() {
        let (ca, cert, key) = ca_and("node-1");
        TlsConfig::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
        let e = TlsConfig::from_pem(b"", cert.as_bytes(), key.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("CA certificate"), "{e}");
        let e = TlsConfig::from_pem(ca.as_bytes(), cert.as_bytes(), b"not a key").unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        // A key that is not the certificate's.
        let (_, _, other_key) = ca_and("node-2");
        let e = TlsConfig::from_pem(ca.as_bytes(), cert.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert!(matches!(e, TlsError::Config(_)), "{e}");
    }

    #[test]
    fn a_resumed_session_has_its_peer_certificate_checked_again() {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let config = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            let pem = (ca_cert.pem(), cert.pem(), key.serialize_pem());
            TlsConfig::from_pem(pem.0.as_bytes(), pem.1.as_bytes(), pem.2.as_bytes()).unwrap()
        };
        let (server, client) = (config("127.0.0.1"), config("client-1"));
        assert!(!handshake_in_memory(&client, &server).unwrap(), "the first handshake is a full one");
        let (c, s) = in_memory(&client, &server).unwrap();
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        // The ticket carried both certificates; they pass now, and fail at a time they were
        // not valid (the same check a full handshake makes).
        assert_eq!(principal_of(&s.peer_certificates().unwrap()[0]).as_deref(), Some("client-1"));
        recheck_resumed(&c, UnixTime::now()).unwrap();
        recheck_resumed(&s, UnixTime::now()).unwrap();
        let then = UnixTime::since_unix_epoch(Duration::from_secs(0));
        let e = recheck_resumed(&c, then).unwrap_err();
        assert!(
            matches!(e, rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYetContext { .. })),
            "{e:?}"
        );
        let e = recheck_resumed(&s, then).unwrap_err();
        assert!(
            matches!(e, rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYetContext { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn the_principal_is_the_first_dns_name() {
        let (_, cert, _) = ca_and("alice.clients");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(principal_of(&der).as_deref(), Some("alice.clients"));
    }
}
