//! A cluster certificate authority: create one, and issue node and client certificates from
//! it (rcgen, Ed25519: the cheapest signatures to make and check, so handshakes stay well
//! under a millisecond). What `multispace cert` runs; tests use it to make good and bad
//! certificates.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct CertError(String);

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError(e.to_string())
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (keep it secret: files holding it should be mode 0600).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The principal: the first DNS subject alternative name, and the common name.
    pub name: String,
    /// More DNS names (a server is also checked against the name a client dials).
    pub dns: Vec<String>,
    /// IP addresses the holder serves on (clients dialling an address check it).
    pub ips: Vec<IpAddr>,
    /// Valid from this time.
    pub not_before: SystemTime,
    /// Valid until this time.
    pub not_after: SystemTime,
}

impl Leaf {
    /// A certificate for `name`, valid from now for `days`, naming the loopback addresses.
    pub fn new(name: &str, days: u64) -> Leaf {
        let now = SystemTime::now();
        Leaf {
            name: name.to_string(),
            dns: Vec::new(),
            ips: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)],
            // An hour of slack for clocks that lag the CA's.
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(days * 86_400),
        }
    }
}

/// A cluster CA: a self-signed certificate and its key.
pub struct Authority {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new CA called `name`, valid for `days`.
    pub fn create(name: &str, days: u64) -> Result<Authority, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(days * 86_400)).into();
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let cert_pem = params.clone().self_signed(&key)?.pem();
        Ok(Authority { params, key, cert_pem })
    }

    /// A CA from its certificate and key (as [`Authority::cert_pem`] and
    /// [`Authority::key_pem`] wrote them).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Authority, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        Ok(Authority { params, key, cert_pem: cert_pem.to_string() })
    }

    /// The CA certificate every member trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (only the machine issuing certificates needs it).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues a certificate for `leaf`, usable by both ends of a connection (a node serves
    /// and calls).
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, CertError> {
        let mut names = vec![leaf.name.clone()];
        names.extend(leaf.dns.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        for ip in &leaf.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.name.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = leaf.not_before.into();
        params.not_after = leaf.not_after.into();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        // Re-signing the CA's own parameters gives an issuer with the same name and key, which
        // is all a leaf's signature and issuer fields depend on.
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_authority_issues_certificates_its_original_certificate_verifies() {
        let ca = Authority::create("test CA", 30).unwrap();
        let again = Authority::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        let leaf = again.issue(&Leaf::new("node-1", 1)).unwrap();
        // A TLS config built from the original CA certificate accepts the leaf's chain.
        crate::tls::TlsConfig::from_pem(ca.cert_pem().as_bytes(), leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
            .unwrap();
    }
}
