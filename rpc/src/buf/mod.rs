//! Received messages as validated, zero-copy rkyv archives, and the frame encoder that
//! serializes straight into a connection's outgoing buffer.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use bytes::{BufMut, Bytes, BytesMut};
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Positional, Writer};
use rkyv::util::AlignedVec;
use rkyv::{Archive, Portable, Serialize};

use crate::proto::frame::{padded_len, Header, FRAME_ALIGN, HEADER_LEN};

/// Types that can be sent as an RPC payload.
pub trait Payload: for<'a, 'b> Serialize<HighSerializer<BytesWriter<'b>, ArenaHandle<'a>, rancor::Error>> {}
impl<T> Payload for T where T: for<'a, 'b> Serialize<HighSerializer<BytesWriter<'b>, ArenaHandle<'a>, rancor::Error>> {}

/// Types whose archived form can be validated from untrusted bytes.
pub trait Validate: Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>> {}
impl<T> Validate for T where T: Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>> {}

enum Storage {
    Shared(Bytes),
    /// Fallback copy when the received bytes were not 16-aligned (never on the stream path,
    /// whose frames are padded to 16; kept so a misaligned source cannot fail validation).
    Copied(AlignedVec<16>),
}

impl Storage {
    fn as_slice(&self) -> &[u8] {
        match self {
            Storage::Shared(b) => b,
            Storage::Copied(v) => v,
        }
    }
}

/// A received message: the archived `T`, validated once, read in place with no copy.
pub struct Message<T: Validate> {
    storage: Storage,
    _t: PhantomData<fn() -> T>,
}

impl<T: Validate> Message<T> {
    /// Validate `bytes` as an archived `T` (bytecheck). Safe for untrusted input.
    pub fn new(bytes: Bytes) -> Result<Self, rancor::Error> {
        let storage = if (bytes.as_ptr() as usize).is_multiple_of(FRAME_ALIGN) {
            Storage::Shared(bytes)
        } else {
            let mut v = AlignedVec::<16>::with_capacity(bytes.len());
            v.extend_from_slice(&bytes);
            Storage::Copied(v)
        };
        rkyv::access::<T::Archived, rancor::Error>(storage.as_slice())?;
        Ok(Message { storage, _t: PhantomData })
    }

    /// Skip validation. Only for measuring what validation costs.
    ///
    /// # Safety
    /// `bytes` must be a valid archive of `T` (for example, produced by this process's own
    /// serializer and never exposed to a peer), 16-aligned.
    pub unsafe fn new_unchecked(bytes: Bytes) -> Self {
        Message { storage: Storage::Shared(bytes), _t: PhantomData }
    }

    /// The raw archive bytes.
    pub fn bytes(&self) -> &[u8] {
        self.storage.as_slice()
    }

    /// Deserialize into an owned `T`.
    pub fn to_owned(&self) -> Result<T, rancor::Error>
    where
        T::Archived: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    {
        rkyv::deserialize::<T, rancor::Error>(&**self)
    }
}

impl<T: Validate> Deref for Message<T> {
    type Target = T::Archived;
    fn deref(&self) -> &T::Archived {
        // SAFETY: `new` validated these exact bytes as an archived `T` (or the caller of
        // `new_unchecked` vouched for them); the storage is immutable and owned by `self`.
        unsafe { rkyv::access_unchecked::<T::Archived>(self.storage.as_slice()) }
    }
}

impl<T: Validate> fmt::Debug for Message<T>
where
    T::Archived: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// rkyv writer appending to a `BytesMut`; positions are relative to the payload start, which
/// the framing keeps 16-aligned, so archive alignment holds on the receiving side.
pub struct BytesWriter<'a> {
    out: &'a mut BytesMut,
    base: usize,
}

impl fmt::Debug for BytesWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BytesWriter").field("pos", &self.pos()).finish()
    }
}

impl Positional for BytesWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.base
    }
}

impl<E> Writer<E> for BytesWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The payload is larger than the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Payload size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// rkyv refused the value.
    #[error("serialization failed")]
    Serialize(#[source] rancor::Error),
}

/// Append a frame to `out`: the header made by `header(payload_len)`, then `prefix` (a
/// trace-context block, or nothing; a multiple of 16 bytes), then `value` archived in place,
/// then padding. `payload_len` counts the prefix. On error `out` is left as it was.
pub(crate) fn encode_frame<T: Payload>(
    out: &mut BytesMut,
    max_payload: usize,
    prefix: &[u8],
    value: &T,
    header: impl FnOnce(u32) -> Header,
) -> Result<(), EncodeError> {
    let start = out.len();
    debug_assert_eq!(start % FRAME_ALIGN, 0, "frames start 16-aligned");
    debug_assert_eq!(prefix.len() % FRAME_ALIGN, 0, "the archive after the prefix stays aligned");
    out.put_bytes(0, HEADER_LEN);
    out.extend_from_slice(prefix);
    // Archive positions count from the archive's start, which the receiver sees 16-aligned.
    let base = out.len();
    let res = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, BytesWriter { out: &mut *out, base });
    if let Err(e) = res {
        out.truncate(start);
        return Err(EncodeError::Serialize(e));
    }
    finish_frame(out, start, max_payload, header)
}

/// Append a frame whose payload is `prefix` then raw bytes (error details, pre-encoded
/// payloads).
pub(crate) fn encode_raw(
    out: &mut BytesMut,
    max_payload: usize,
    prefix: &[u8],
    payload: &[u8],
    header: impl FnOnce(u32) -> Header,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.put_bytes(0, HEADER_LEN);
    out.extend_from_slice(prefix);
    out.extend_from_slice(payload);
    finish_frame(out, start, max_payload, header)
}

fn finish_frame(
    out: &mut BytesMut,
    start: usize,
    max_payload: usize,
    header: impl FnOnce(u32) -> Header,
) -> Result<(), EncodeError> {
    let len = out.len() - start - HEADER_LEN;
    if len > max_payload || len > u32::MAX as usize {
        out.truncate(start);
        return Err(EncodeError::TooLarge { len, max: max_payload });
    }
    out.put_bytes(0, padded_len(len) - len);
    header(len as u32).write_to(&mut out[start..start + HEADER_LEN]);
    Ok(())
}

/// Archive `value` on its own (no frame header) into fresh bytes.
pub(crate) fn archive<T: Payload>(value: &T, max_payload: usize) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::new();
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, BytesWriter { out: &mut out, base: 0 })
        .map_err(EncodeError::Serialize)?;
    if out.len() > max_payload {
        return Err(EncodeError::TooLarge { len: out.len(), max: max_payload });
    }
    Ok(out.freeze())
}
