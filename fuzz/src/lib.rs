//! Shared by the fuzz targets (`fuzz_targets/*.rs`) and the seed writer (`examples/seeds.rs`):
//! the table of rkyv wire types, how each is validated and then read, sample values of each,
//! and the small input helpers every target uses.
//!
//! Run the targets with `tools/fuzz.sh`; regenerate the seed corpora with
//! `cargo run --example seeds` inside `fuzz/`.

use std::fmt::Debug;

use bytes::Bytes;
use multispace_rpc::rkyv::api::high::{HighDeserializer, HighSerializer};
use multispace_rpc::rkyv::api::low::LowValidator;
use multispace_rpc::rkyv::bytecheck::CheckBytes;
use multispace_rpc::rkyv::rancor::{self, Failure};
use multispace_rpc::rkyv::ser::allocator::ArenaHandle;
use multispace_rpc::rkyv::util::AlignedVec;
use multispace_rpc::rkyv::{self, Archive, Deserialize, Serialize};
use multispace_rpc::{Message, Validate};

pub mod samples;
pub mod wire;

/// The key the beacon seeds are signed with (id [`FUZZ_KEY_ID`] in the receiver's keyring).
pub const FUZZ_KEY: [u8; 32] = *b"multispace fuzzing cluster key!!";
/// The fuzz key's id.
pub const FUZZ_KEY_ID: u8 = 0;
/// The fuzz cluster's label (signed into every beacon MAC).
pub const FUZZ_LABEL: &str = "fuzz";
/// The receiver's wall clock (ms since the Unix epoch) in the beacon target, fixed so that
/// seeds stay fresh.
pub const FUZZ_NOW_MS: u64 = 1_800_000_000_000;

/// Archived types that can be validated without rkyv's shared-pointer context: no `Rc`, `Arc`
/// or `Weak` anywhere inside. Every wire type must be one, because shared pointers make
/// validation track every pointee (memory and time a peer controls) and are where rkyv's
/// validation has been most delicate. A wire type that gains one no longer compiles here.
pub trait NoSharedPointers: Archive<Archived: for<'a> CheckBytes<LowValidator<'a, Failure>>> {}
impl<T> NoSharedPointers for T where T: Archive<Archived: for<'a> CheckBytes<LowValidator<'a, Failure>>> {}

/// Types archived the way the rpc layer archives them (into an `AlignedVec` here, for seeds).
pub trait Encode: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>> {}
impl<T> Encode for T where T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>> {}

/// A beacon's MAC as the wire format defines it (`node::beacon::BeaconAuth`): HMAC-SHA256
/// under the key, over a domain tag, the cluster label (length-prefixed), the key id and the
/// archived body. Written out here rather than borrowed so the target can sign bodies that are
/// not beacons (a key holder with bugs), and can tell a bad MAC from a good one on its own.
pub fn beacon_mac(label: &str, key: &[u8; 32], key_id: u8, body: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(b"multispace beacon v1\0");
    m.update(&(label.len() as u64).to_le_bytes());
    m.update(label.as_bytes());
    m.update(&[key_id]);
    m.update(body);
    m.finalize().into_bytes().into()
}

/// `data` as `Bytes` whose first byte lies `misalign` (mod 16) bytes past a 16-aligned address,
/// so both of `Message::new`'s paths (read in place, or copy when misaligned) are exercised.
pub fn bytes_at(data: &[u8], misalign: u8) -> Bytes {
    let mut v = Vec::with_capacity(data.len() + 32);
    // The allocation does not move below: at most 31 bytes of padding were reserved.
    let pad = (16 - v.as_ptr() as usize % 16) % 16 + usize::from(misalign % 16);
    v.resize(pad, 0);
    v.extend_from_slice(data);
    Bytes::from(v).slice(pad..)
}

/// `data` copied into a 16-aligned buffer (what the decoders that take `&[u8]` do themselves).
pub fn aligned(data: &[u8]) -> AlignedVec<16> {
    let mut v = AlignedVec::<16>::with_capacity(data.len());
    v.extend_from_slice(data);
    v
}

/// Validate `bytes` as an archived `T` through the rpc layer's own entry point
/// (`Message::<T>::new`), check that the validator without shared-pointer support agrees, and
/// on success hand the archive to `touch`, which must read all of it.
pub fn validate<T>(bytes: Bytes, touch: impl FnOnce(&T::Archived))
where
    T: Validate + NoSharedPointers,
{
    let low_ok = rkyv::api::low::access::<T::Archived, Failure>(&aligned(&bytes)).is_ok();
    match Message::<T>::new(bytes) {
        Ok(m) => {
            assert!(low_ok, "Message::new accepted what the low-level validator refuses");
            touch(&m);
        }
        Err(_) => assert!(!low_ok, "Message::new refused what the low-level validator accepts"),
    }
}

/// Read every byte of an archive by deserializing it, then check that the value archives and
/// validates again to an equal value (a reader that misread validated data would differ).
pub fn round_trip<T>(archived: &T::Archived) -> T
where
    T: Validate + Encode + PartialEq + Debug,
    T::Archived: Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let value: T = rkyv::deserialize::<T, rancor::Error>(archived).expect("validated data deserializes");
    let bytes = rkyv::to_bytes::<rancor::Error>(&value).expect("a deserialized value archives again");
    let again = rkyv::from_bytes::<T, rancor::Error>(&bytes).expect("a fresh archive validates");
    assert_eq!(again, value, "archive round trip changed the value");
    value
}

/// Deserialize one field of an archived argument struct (the generated `*Args` types derive no
/// `Deserialize` of their own, but every field type does).
pub fn field<F>(archived: &impl Deserialize<F, HighDeserializer<rancor::Error>>) -> F {
    let value = rkyv::deserialize::<F, rancor::Error>(archived).expect("validated field deserializes");
    std::hint::black_box(value)
}

/// Splits fuzz input into records, each a little-endian `u16` length then that many bytes (a
/// short last record takes what is left). Lets one input carry several messages in order.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (rec, rest) = rest.split_at(len);
        data = rest;
        Some(rec)
    })
}

/// The inverse of [`records`], for seeds.
pub fn join_records<'a>(recs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        let len = u16::try_from(r.len()).expect("seed records are small");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_at_places_data_at_the_asked_alignment() {
        for m in 0..32u8 {
            let b = bytes_at(b"hello", m);
            assert_eq!(&b[..], b"hello");
            assert_eq!(b.as_ptr() as usize % 16, usize::from(m % 16));
        }
    }

    #[test]
    fn beacon_mac_matches_the_nodes_own() {
        for b in samples::signed_beacons() {
            assert_eq!(beacon_mac(FUZZ_LABEL, &FUZZ_KEY, b.key_id, &b.body), b.mac);
        }
    }

    #[test]
    fn records_round_trip() {
        let recs: [&[u8]; 3] = [b"a", b"", b"xyz"];
        let joined = join_records(recs);
        assert_eq!(records(&joined).collect::<Vec<_>>(), recs);
        assert_eq!(records(&[5, 0, 1, 2]).collect::<Vec<_>>(), [&[1u8, 2][..]]);
        assert_eq!(records(&[5]).count(), 0);
    }
}
