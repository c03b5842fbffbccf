//! The validity period of an X.509 certificate, read from its DER encoding.
//!
//! A resumed TLS session skips the certificate checks, yet only one of them can have changed
//! since the full handshake that verified the chain: the clock (the trust anchors cannot —
//! tickets are sealed with a key that belongs to one configuration). So a resumed session is
//! re-checked against its certificates' validity alone, which needs just these two dates.
//! webpki parses them but does not expose them, and the X.509 crates that do would put an
//! ASN.1 framework with proc-macros into every build of this crate; the part needed is a
//! few bounds-checked DER steps.

use rustls::pki_types::UnixTime;

/// `notBefore` and `notAfter`, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Validity {
    pub not_before: u64,
    pub not_after: u64,
}

/// Why the certificates of a resumed session are no longer acceptable at `now`.
pub(crate) fn check(chain: &[impl AsRef<[u8]>], now: UnixTime) -> Result<(), rustls::Error> {
    use rustls::CertificateError as E;
    let t = now.as_secs();
    for der in chain {
        let v = validity(der.as_ref()).ok_or(rustls::Error::InvalidCertificate(E::BadEncoding))?;
        if t < v.not_before {
            let not_before = UnixTime::since_unix_epoch(std::time::Duration::from_secs(v.not_before));
            return Err(rustls::Error::InvalidCertificate(E::NotValidYetContext { time: now, not_before }));
        }
        if t > v.not_after {
            let not_after = UnixTime::since_unix_epoch(std::time::Duration::from_secs(v.not_after));
            return Err(rustls::Error::InvalidCertificate(E::ExpiredContext { time: now, not_after }));
        }
    }
    Ok(())
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... }` (RFC 5280).
pub(crate) fn validity(der: &[u8]) -> Option<Validity> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (mut tbs, _) = expect(cert, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = tlv(tbs)?.2;
    }
    tbs = expect(tbs, INTEGER)?.1;
    tbs = expect(tbs, SEQUENCE)?.1; // signature algorithm
    tbs = expect(tbs, SEQUENCE)?.1; // issuer
    let (validity, _) = expect(tbs, SEQUENCE)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some(Validity { not_before, not_after })
}

/// One element: its tag, its contents, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers do not occur in these fields
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, contents, rest) = tlv(input)?;
    (tag == want).then_some((contents, rest))
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950–2049) or GeneralizedTime `YYYYMMDDHHMMSSZ`, the two
/// forms RFC 5280 allows.
fn time(input: &[u8]) -> Option<(u64, &[u8])> {
    let (tag, s, rest) = tlv(input)?;
    let (year, s) = match (tag, s.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&s[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&s[..4])?, &s[4..]),
        _ => return None,
    };
    if s[10] != b'Z' {
        return None;
    }
    let (month, day) = (digits(&s[0..2])?, digits(&s[2..4])?);
    let (hour, minute, second) = (digits(&s[4..6])?, digits(&s[6..8])?, digits(&s[8..10])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second, rest))
}

fn digits(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as u64))
}

/// Days from 1970-01-01 to a date in the proleptic Gregorian calendar (none before 1970:
/// certificates from before the epoch do not occur).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 { year.checked_sub(1)? } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn reads_both_time_forms_from_real_certificates() {
        // 2024-02-29 is 19782 days after the epoch; 2051 needs GeneralizedTime.
        let v = validity(&cert((2024, 2, 29), (2051, 3, 1))).unwrap();
        assert_eq!(v.not_before, 19_782 * 86_400);
        assert_eq!(v.not_after, days_from_civil(2051, 3, 1).unwrap() * 86_400);
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        let v = validity(&cert((1999, 12, 31), (2049, 12, 31))).unwrap();
        assert_eq!(v.not_before, days_from_civil(1999, 12, 31).unwrap() * 86_400);
    }

    #[test]
    fn checks_the_clock_against_every_certificate() {
        let now = UnixTime::now();
        let good = cert((2020, 1, 1), (2090, 1, 1));
        let old = cert((2001, 1, 1), (2002, 1, 1));
        let future = cert((2080, 1, 1), (2090, 1, 1));
        check(&[&good], now).unwrap();
        let e = check(&[&good, &old], now).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        let e = check(&[&future], now).unwrap_err();
        assert!(e.to_string().contains("not valid yet"), "{e}");
    }

    #[test]
    fn truncated_or_garbled_input_is_refused_without_panicking() {
        let der = cert((2020, 1, 1), (2030, 1, 1));
        for n in 0..der.len() {
            let _ = validity(&der[..n]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len().min(200) {
            flipped[i] ^= 0xff;
            let _ = validity(&flipped);
            flipped[i] ^= 0xff;
        }
        assert!(validity(b"").is_none());
        assert!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(check(&[b"not a certificate"], UnixTime::now()).is_err());
    }
}
