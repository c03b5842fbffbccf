//! The trace-context block: how a trace id crosses an rpc hop (sans-IO).
//!
//! A request or one-way frame with [`FLAG_TRACE`] set starts its payload with a
//! [`TRACE_BLOCK_LEN`]-byte block naming the trace the call belongs to and the caller's span
//! in it; the rkyv archive follows the block. The block is a multiple of the frame alignment,
//! so the archive stays 16-aligned and is still read in place. Layout (little-endian):
//!
//! | Offset | Size | Field    | Meaning                                       |
//! |-------:|-----:|----------|-----------------------------------------------|
//! |      0 |   16 | trace_id | the trace, never 0                            |
//! |     16 |    8 | span_id  | the caller's span (the callee's parent), never 0 |
//! |     24 |    8 | reserved | must be 0                                     |
//!
//! The flag is must-understand: a peer that did not know it would read the block as part of
//! the archive, so it rejects the frame instead (see `PROTOCOL.md`).

use std::fmt;

use bytes::Bytes;

use super::frame::{FrameError, FrameKind, Header, FRAME_ALIGN};

/// Header flag: the payload starts with a trace-context block.
pub const FLAG_TRACE: u16 = 0x0100;
/// Size of the trace-context block.
pub const TRACE_BLOCK_LEN: usize = 32;
const _: () = assert!(TRACE_BLOCK_LEN.is_multiple_of(FRAME_ALIGN), "the archive after the block stays aligned");

/// A trace: every span of one operation, across hosts, shares it. A 128-bit id, kept as two
/// words so that a context is 8-aligned (it rides in every call's context).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u64; 2]);

impl TraceId {
    /// The id `v`.
    pub const fn new(v: u128) -> TraceId {
        TraceId([(v >> 64) as u64, v as u64])
    }

    /// The id as a number.
    pub const fn get(self) -> u128 {
        ((self.0[0] as u128) << 64) | self.0[1] as u128
    }
}

/// One unit of work (a call served, a root operation) within a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub u64);

impl fmt::Display for TraceId {
    /// 32 lowercase hex digits, as W3C trace context writes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.get())
    }
}

impl fmt::Display for SpanId {
    /// 16 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for TraceId {
    type Err = std::num::ParseIntError;

    /// Hex digits, as [`TraceId`] displays.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(TraceId::new)
    }
}

/// Where a call sits in a trace: the trace, and the span that made the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: TraceId,
    /// The calling span.
    pub span_id: SpanId,
}

impl TraceContext {
    /// The block as sent.
    pub fn encode(&self) -> [u8; TRACE_BLOCK_LEN] {
        let mut b = [0u8; TRACE_BLOCK_LEN];
        b[0..16].copy_from_slice(&self.trace_id.get().to_le_bytes());
        b[16..24].copy_from_slice(&self.span_id.0.to_le_bytes());
        b
    }

    /// Decode and check a received block.
    pub fn decode(b: &[u8; TRACE_BLOCK_LEN]) -> Result<TraceContext, FrameError> {
        let trace_id = u128::from_le_bytes(b[0..16].try_into().expect("16 bytes"));
        let span_id = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        if trace_id == 0 || span_id == 0 {
            return Err(FrameError::BadTraceContext("zero trace or span id"));
        }
        if b[24..].iter().any(|&x| x != 0) {
            return Err(FrameError::BadTraceContext("reserved bytes are not zero"));
        }
        Ok(TraceContext { trace_id: TraceId::new(trace_id), span_id: SpanId(span_id) })
    }
}

/// Check the trace flag against a parsed header: only requests and one-way calls carry a
/// block, and the payload must be long enough to hold it.
pub(crate) fn check_header(h: &Header) -> Result<(), FrameError> {
    if h.flags & FLAG_TRACE == 0 {
        return Ok(());
    }
    if !matches!(h.kind, FrameKind::Request | FrameKind::OneWay) {
        return Err(FrameError::BadTraceContext("only requests and one-way calls carry a trace context"));
    }
    if (h.payload_len as usize) < TRACE_BLOCK_LEN {
        return Err(FrameError::BadTraceContext("payload shorter than the trace-context block"));
    }
    Ok(())
}

/// Split a received payload into its trace context (if the header says there is one) and the
/// archive after it. Zero-copy: the archive is a slice of the same buffer.
#[inline]
pub fn split(header: &Header, payload: Bytes) -> Result<(Option<TraceContext>, Bytes), FrameError> {
    if header.flags & FLAG_TRACE == 0 {
        return Ok((None, payload));
    }
    split_traced(payload)
}

/// The traced case of [`split`], kept out of line: most calls are untraced.
#[inline(never)]
fn split_traced(payload: Bytes) -> Result<(Option<TraceContext>, Bytes), FrameError> {
    let block: &[u8; TRACE_BLOCK_LEN] = payload
        .get(..TRACE_BLOCK_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::BadTraceContext("payload shorter than the trace-context block"))?;
    let ctx = TraceContext::decode(block)?;
    Ok((Some(ctx), payload.slice(TRACE_BLOCK_LEN..)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::ErrorCode;

    fn ctx() -> TraceContext {
        TraceContext { trace_id: TraceId::new(0x0af7651916cd43dd8448eb211c80319c), span_id: SpanId(0xb7ad6b7169203331) }
    }

    #[test]
    fn a_block_round_trips_and_the_archive_follows_it() {
        let c = ctx();
        let mut payload = c.encode().to_vec();
        payload.extend_from_slice(b"archive!");
        let mut h = Header::request(1, 2, 0, payload.len() as u32);
        h.flags |= FLAG_TRACE;
        check_header(&h).unwrap();
        let (got, rest) = split(&h, Bytes::from(payload)).unwrap();
        assert_eq!(got, Some(c));
        assert_eq!(&rest[..], b"archive!");
        assert_eq!(c.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(c.span_id.to_string(), "b7ad6b7169203331");
        assert_eq!("0af7651916cd43dd8448eb211c80319c".parse::<TraceId>().unwrap(), c.trace_id);
    }

    #[test]
    fn without_the_flag_the_payload_is_untouched() {
        let h = Header::request(1, 2, 0, 3);
        let (got, rest) = split(&h, Bytes::from_static(b"abc")).unwrap();
        assert_eq!((got, &rest[..]), (None, &b"abc"[..]));
    }

    #[test]
    fn bad_blocks_are_malformed_frames() {
        let mut zero_trace = ctx().encode();
        zero_trace[..16].fill(0);
        let mut zero_span = ctx().encode();
        zero_span[16..24].fill(0);
        let mut reserved = ctx().encode();
        reserved[31] = 1;
        for b in [zero_trace, zero_span, reserved] {
            let e = TraceContext::decode(&b).unwrap_err();
            assert_eq!(e.code(), ErrorCode::Malformed, "{e}");
        }
        // The flag on a kind that carries no block, or on a payload too short for one.
        let mut resp = Header::response(1, 2, 64);
        resp.flags |= FLAG_TRACE;
        assert!(check_header(&resp).is_err());
        let mut short = Header::request(1, 2, 0, 31);
        short.flags |= FLAG_TRACE;
        assert!(check_header(&short).is_err());
        assert!(split(&short, Bytes::from_static(&[1; 31])).is_err());
        let mut one_way = Header::one_way(2, 32);
        one_way.flags |= FLAG_TRACE;
        check_header(&one_way).unwrap();
    }
}
