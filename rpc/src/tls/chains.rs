//! Certificate verifiers that remember the chains they accepted.
//!
//! In a full mutual handshake each end checks two Ed25519 signatures on the other's
//! certificate path (the CA's on the certificate, the peer's on the handshake) — on a small
//! core about a quarter of the handshake's CPU is the two chain checks. Cluster members and
//! long-lived clients reconnect to the same few peers, presenting the same bytes each time,
//! so each verifier keeps the chains it verified: a chain seen before (byte for byte, and
//! for a server the same name) is accepted after a check of its validity dates at the
//! current time, which is the one input that can have changed (the trust anchors belong to
//! the verifier). The handshake signature is always checked: it proves the peer holds the
//! key now. The memory is bounded ([`CAPACITY`] chains; when full it starts over).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::validity;

/// Chains remembered per verifier; a cluster's worth of peers.
pub(crate) const CAPACITY: usize = 1024;

/// The chains one verifier accepted, as their exact bytes (no hash to argue about).
#[derive(Debug, Default)]
struct Seen(Mutex<HashSet<Vec<u8>>>);

impl Seen {
    /// The identity of a chain (and the name it was checked for): each part's length and bytes.
    fn key(name: Option<&ServerName<'_>>, end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Vec<u8> {
        let name = name.map(|n| n.to_str()).unwrap_or_default();
        let parts = [name.as_bytes(), end_entity].into_iter().chain(intermediates.iter().map(|c| c.as_ref()));
        let mut key = Vec::new();
        for part in parts {
            key.extend_from_slice(&(part.len() as u32).to_le_bytes());
            key.extend_from_slice(part);
        }
        key
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(key)
    }

    fn insert(&self, key: Vec<u8>) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= CAPACITY {
            seen.clear();
        }
        seen.insert(key);
    }

    /// Verify with `full` unless this chain was verified before, then only its dates.
    fn verify(
        &self,
        key: Vec<u8>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        full: impl FnOnce() -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.contains(&key) {
            let chain = std::iter::once(end_entity).chain(intermediates).collect::<Vec<_>>();
            return validity::check(&chain, now);
        }
        full()?;
        self.insert(key);
        Ok(())
    }
}

/// The handshake-signature methods both verifier traits have, passed to `self.inner`: a
/// remembered chain never skips the proof that the peer holds its key.
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// The client's check of servers: webpki's, remembering accepted chains.
#[derive(Debug)]
pub(crate) struct RememberingServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    seen: Seen,
}

impl RememberingServerVerifier {
    pub(crate) fn new(inner: Arc<WebPkiServerVerifier>) -> Self {
        RememberingServerVerifier { inner, seen: Seen::default() }
    }
}

impl ServerCertVerifier for RememberingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let key = Seen::key(Some(server_name), end_entity, intermediates);
        self.seen.verify(key, end_entity, intermediates, now, || {
            self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now).map(|_| ())
        })?;
        Ok(ServerCertVerified::assertion())
    }

    delegate_signatures!();
}

/// The server's check of clients: webpki's, remembering accepted chains.
#[derive(Debug)]
pub(crate) struct RememberingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    seen: Seen,
}

impl RememberingClientVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>) -> Self {
        RememberingClientVerifier { inner, seen: Seen::default() }
    }
}

impl ClientCertVerifier for RememberingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let key = Seen::key(None, end_entity, intermediates);
        self.seen.verify(key, end_entity, intermediates, now, || {
            self.inner.verify_client_cert(end_entity, intermediates, now).map(|_| ())
        })?;
        Ok(ClientCertVerified::assertion())
    }

    delegate_signatures!();
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rustls::pki_types::pem::PemObject;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    use super::*;
    use crate::tls::certs::{Authority, Leaf};

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn roots(ca: &Authority) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(der(ca.cert_pem())).unwrap();
        Arc::new(roots)
    }

    fn at(t: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap())
    }

    #[test]
    fn a_remembered_client_chain_is_still_refused_once_expired_and_a_stranger_is_checked_in_full() {
        let ca = Authority::create("test CA", 1).unwrap();
        let inner = WebPkiClientVerifier::builder(roots(&ca)).build().unwrap();
        let v = RememberingClientVerifier::new(inner);
        let leaf = Leaf::new("client-1", 1);
        let cert = der(&ca.issue(&leaf).unwrap().cert_pem);
        let now = SystemTime::now();
        v.verify_client_cert(&cert, &[], at(now)).unwrap();
        assert_eq!(v.seen.0.lock().unwrap().len(), 1, "the accepted chain is remembered");
        // Accepted again from memory, and refused from memory too once past its end date.
        v.verify_client_cert(&cert, &[], at(now)).unwrap();
        let later = leaf.not_after + Duration::from_secs(60);
        let e = v.verify_client_cert(&cert, &[], at(later)).unwrap_err();
        assert!(matches!(e, Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })), "{e:?}");

        // A certificate from another CA is never in memory: webpki refuses it.
        let other = Authority::create("other CA", 1).unwrap();
        let stranger = der(&other.issue(&Leaf::new("client-1", 1)).unwrap().cert_pem);
        let e = v.verify_client_cert(&stranger, &[], at(now)).unwrap_err();
        assert!(matches!(e, Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)), "{e:?}");
        assert_eq!(v.seen.0.lock().unwrap().len(), 1, "refused chains are not remembered");
    }

    #[test]
    fn a_remembered_server_chain_is_checked_again_for_another_name() {
        let ca = Authority::create("test CA", 1).unwrap();
        let inner = WebPkiServerVerifier::builder(roots(&ca)).build().unwrap();
        let v = RememberingServerVerifier::new(inner);
        let cert = der(&ca.issue(&Leaf::new("node-1", 1)).unwrap().cert_pem);
        let now = at(SystemTime::now());
        let name = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        v.verify_server_cert(&cert, &[], &name("node-1"), &[], now).unwrap();
        v.verify_server_cert(&cert, &[], &name("node-1"), &[], now).unwrap();
        let e = v.verify_server_cert(&cert, &[], &name("node-2"), &[], now).unwrap_err();
        assert!(
            matches!(e, Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let seen = Seen::default();
        for i in 0..CAPACITY + 10 {
            seen.insert(i.to_le_bytes().to_vec());
        }
        assert!(seen.0.lock().unwrap().len() <= CAPACITY);
    }
}
