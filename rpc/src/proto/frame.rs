//! The frame header codec: sans-IO encoding and decoding of the fixed 32-byte header that
//! starts every multispace RPC frame.
//!
//! This module owns the byte layout of the header, the validation rules a received header
//! must pass, how long a whole frame is (header, payload, padding), and the numeric error
//! codes carried by error frames. It never touches a socket or a clock: callers hand it
//! bytes and get back a [`Header`], a [`Decoded::NeedMore`] count, or a [`FrameError`]. Every
//! decoding function is total on arbitrary input, so nothing a peer sends can make it panic.
//!
//! The full wire specification (transports, message kinds, deadlines, payload format, error
//! handling) is `rpc/PROTOCOL.md`.
//!
//! # Header layout
//!
//! All integers are little-endian.
//!
//! | Offset | Size | Field         | Meaning                                                    |
//! |-------:|-----:|---------------|------------------------------------------------------------|
//! |      0 |    4 | magic         | `MSRP` ([`MAGIC`])                                         |
//! |      4 |    1 | version       | protocol version, [`VERSION`]                              |
//! |      5 |    1 | kind          | [`FrameKind`], 1..=7                                       |
//! |      6 |    2 | flags         | bits 0..7 ignorable, bits 8..15 must-understand            |
//! |      8 |    8 | request_id    | matches a response, error or cancel to its request        |
//! |     16 |    4 | method_id     | the method called                                          |
//! |     20 |    4 | deadline_us   | relative time budget in microseconds, 0 = none             |
//! |     24 |    4 | payload_len   | payload bytes after the header, excluding padding          |
//! |     28 |    2 | status        | [`ErrorCode`] of an error frame, else 0                    |
//! |     30 |    2 | reserved      | must be zero                                               |
//!
//! The payload follows the header and is zero-padded to a multiple of [`FRAME_ALIGN`]
//! (see [`padded_len`]); on a stream the padding is always present, in a datagram it may be
//! left off.

/// The first four bytes of every frame. A peer sending anything else is not speaking this
/// protocol (or the stream lost sync), so the connection cannot be recovered.
pub const MAGIC: [u8; 4] = *b"MSRP";
/// The protocol version this code speaks and accepts. Any other version is refused.
pub const VERSION: u8 = 1;
/// Size of the fixed header in bytes; a multiple of [`FRAME_ALIGN`], so the payload that
/// follows it starts aligned.
pub const HEADER_LEN: usize = 32;
/// Payloads are padded to a multiple of this, so every frame in a receive buffer starts (and
/// its rkyv archive lies) at a 16-aligned offset and can be read in place without a copy.
pub const FRAME_ALIGN: usize = 16;
/// Largest payload accepted or sent unless configured otherwise (16 MiB). Checked on the
/// header alone, before any payload byte is buffered.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Largest error detail, in bytes, put in an error frame (see [`truncate_detail`]). Bounded
/// so that an error frame always fits any sensible payload limit.
pub const MAX_DETAIL_LEN: usize = 1024;

/// Byte offsets of the header fields (see the layout table in the module docs).
const OFF_VERSION: usize = 4;
const OFF_KIND: usize = 5;
const OFF_FLAGS: usize = 6;
const OFF_REQUEST_ID: usize = 8;
const OFF_METHOD_ID: usize = 16;
const OFF_DEADLINE: usize = 20;
const OFF_PAYLOAD_LEN: usize = 24;
const OFF_STATUS: usize = 28;
const OFF_RESERVED: usize = 30;

/// Flag bits a receiver must understand: a frame setting one it does not know is rejected,
/// because ignoring it could change the frame's meaning.
const MUST_UNDERSTAND_FLAGS: u16 = 0xff00;
/// The must-understand bits this side knows: [`FLAG_TRACE`](super::trace::FLAG_TRACE) and
/// [`FLAG_SESSION`](super::session::FLAG_SESSION).
const KNOWN_MUST_UNDERSTAND: u16 = super::trace::FLAG_TRACE | super::session::FLAG_SESSION;

/// What a frame is. The discriminant is the `kind` byte on the wire.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A call expecting exactly one [`Response`](FrameKind::Response) or
    /// [`Error`](FrameKind::Error) with the same request id (client to server, TCP).
    Request = 1,
    /// The successful result of a request; the payload is the archived return value.
    Response = 2,
    /// A failed request (or, with request id 0, a connection-level failure just before the
    /// sender closes); `status` holds the [`ErrorCode`], the payload a UTF-8 detail.
    Error = 3,
    /// A call with no reply: one UDP datagram (unicast or multicast), or a frame on a TCP
    /// connection. Request id 0.
    OneWay = 4,
    /// The client no longer wants the result of the request with this id; no reply follows.
    Cancel = 5,
    /// Datagram transport: a client opens a session (the payload is its session block); the
    /// server echoes it to accept.
    Hello = 6,
    /// Datagram transport: the request with this id is still running (the server's answer
    /// to a retransmission, so the client knows the server is alive).
    Pending = 7,
}

/// A decoded frame header (everything but the magic, version and reserved bytes, which are
/// fixed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the frame is.
    pub kind: FrameKind,
    /// Feature bits. Bits 0..7 may be ignored by a receiver that does not know them; bits
    /// 8..15 are must-understand, so [`Header::parse`] rejects a frame setting one it does not
    /// know. Defined: bit 8, [`FLAG_TRACE`](super::trace::FLAG_TRACE); bit 9,
    /// [`FLAG_SESSION`](super::session::FLAG_SESSION).
    pub flags: u16,
    /// Chosen by the client, unique among its calls in flight on one connection; responses,
    /// errors and cancels carry the id of their request so they can arrive in any order.
    /// 0 in one-way frames and in connection-level error frames.
    pub request_id: u64,
    /// The method called. Responses and errors echo the request's; 0 in cancel frames and
    /// connection-level errors.
    pub method_id: u32,
    /// Time budget of a request in microseconds, counted from its arrival; 0 = no deadline.
    /// Relative rather than an absolute time, so clock skew between hosts cannot break it.
    pub deadline_us: u32,
    /// Payload bytes following the header, excluding the padding to [`FRAME_ALIGN`].
    pub payload_len: u32,
    /// The [`ErrorCode`] (as [`ErrorCode::to_u16`]) of an error frame; 0 otherwise.
    pub status: u16,
}

impl Header {
    fn new(kind: FrameKind, request_id: u64, method_id: u32, payload_len: u32) -> Self {
        Header { kind, flags: 0, request_id, method_id, deadline_us: 0, payload_len, status: 0 }
    }

    /// A request header: call `method_id` as request `request_id` with a budget of
    /// `deadline_us` microseconds (0 = none).
    pub fn request(request_id: u64, method_id: u32, deadline_us: u32, payload_len: u32) -> Self {
        Header { deadline_us, ..Self::new(FrameKind::Request, request_id, method_id, payload_len) }
    }

    /// A successful response to request `request_id` of `method_id`.
    pub fn response(request_id: u64, method_id: u32, payload_len: u32) -> Self {
        Self::new(FrameKind::Response, request_id, method_id, payload_len)
    }

    /// An error frame for request `request_id` (0 for a connection-level error) with status
    /// `code`; the payload is a UTF-8 detail of `payload_len` bytes.
    pub fn error(request_id: u64, method_id: u32, code: ErrorCode, payload_len: u32) -> Self {
        Header { status: code.to_u16(), ..Self::new(FrameKind::Error, request_id, method_id, payload_len) }
    }

    /// A one-way call of `method_id` (request id 0, no deadline).
    pub fn one_way(method_id: u32, payload_len: u32) -> Self {
        Self::new(FrameKind::OneWay, 0, method_id, payload_len)
    }

    /// Cancellation of request `request_id` (no payload).
    pub fn cancel(request_id: u64) -> Self {
        Self::new(FrameKind::Cancel, request_id, 0, 0)
    }

    /// The header's 32 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        self.write_to(&mut b);
        b
    }

    /// Write the header's wire bytes into the first [`HEADER_LEN`] bytes of `out` (used to
    /// fill in a header after the payload has been serialized behind it).
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_LEN`].
    pub fn write_to(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = self.kind as u8;
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.method_id.to_le_bytes());
        out[20..24].copy_from_slice(&self.deadline_us.to_le_bytes());
        out[24..28].copy_from_slice(&self.payload_len.to_le_bytes());
        out[28..30].copy_from_slice(&self.status.to_le_bytes());
        out[30..32].copy_from_slice(&[0, 0]);
    }

    /// Decode and validate a received header, refusing a payload longer than `max_payload`.
    ///
    /// Checks, in order: magic, version, kind, must-understand flags, reserved bytes, payload
    /// length. Never panics.
    pub fn parse(b: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, FrameError> {
        let magic = field::<0, 4>(b);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let [version] = field::<OFF_VERSION, 1>(b);
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion { found: version, supported: VERSION });
        }
        let kind = match field::<OFF_KIND, 1>(b) {
            [1] => FrameKind::Request,
            [2] => FrameKind::Response,
            [3] => FrameKind::Error,
            [4] => FrameKind::OneWay,
            [5] => FrameKind::Cancel,
            [6] => FrameKind::Hello,
            [7] => FrameKind::Pending,
            [k] => return Err(FrameError::UnknownKind(k)),
        };
        let flags = u16::from_le_bytes(field::<OFF_FLAGS, 2>(b));
        if flags & MUST_UNDERSTAND_FLAGS & !KNOWN_MUST_UNDERSTAND != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        if field::<OFF_RESERVED, 2>(b) != [0, 0] {
            return Err(FrameError::NonZeroReserved);
        }
        let payload_len = u32::from_le_bytes(field::<OFF_PAYLOAD_LEN, 4>(b));
        if payload_len > max_payload {
            return Err(FrameError::TooLarge { len: payload_len, max: max_payload });
        }
        let header = Header {
            kind,
            flags,
            request_id: u64::from_le_bytes(field::<OFF_REQUEST_ID, 8>(b)),
            method_id: u32::from_le_bytes(field::<OFF_METHOD_ID, 4>(b)),
            deadline_us: u32::from_le_bytes(field::<OFF_DEADLINE, 4>(b)),
            payload_len,
            status: u16::from_le_bytes(field::<OFF_STATUS, 2>(b)),
        };
        super::trace::check_header(&header)?;
        super::session::check_header(&header)?;
        Ok(header)
    }

    /// Length of the whole frame on a stream: header, payload and padding.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + padded_len(self.payload_len as usize)
    }
}

/// `N` header bytes starting at offset `AT`. The range is checked when the function is
/// instantiated (a compile error if out of bounds), so no input can make this panic.
fn field<const AT: usize, const N: usize>(b: &[u8; HEADER_LEN]) -> [u8; N] {
    const { assert!(AT + N <= HEADER_LEN, "header field out of range") };
    std::array::from_fn(|i| b[AT + i])
}

/// `payload_len` rounded up to a multiple of [`FRAME_ALIGN`]: the payload's size on a stream,
/// padding included.
pub const fn padded_len(payload_len: usize) -> usize {
    payload_len.next_multiple_of(FRAME_ALIGN)
}

/// Outcome of [`decode_frame`] on the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The frame is incomplete: at least this many more bytes are needed (the rest of the
    /// header, or once the header is complete, exactly the rest of the frame).
    NeedMore(usize),
    /// A complete frame starts the buffer.
    Frame {
        /// Its validated header.
        header: Header,
        /// Its length in the buffer, padding included ([`Header::frame_len`]); the payload is
        /// `buf[HEADER_LEN..HEADER_LEN + payload_len]` and the next frame starts at `len`.
        len: usize,
    },
}

/// Decode the frame at the start of a stream buffer. Errors are unrecoverable for the
/// stream (its framing can no longer be trusted) and are reported as soon as the header is
/// complete, before any payload is awaited, so an oversized length costs no memory.
pub fn decode_frame(buf: &[u8], max_payload: u32) -> Result<Decoded, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Decoded::NeedMore(HEADER_LEN - buf.len()));
    };
    let header = Header::parse(head, max_payload)?;
    let len = header.frame_len();
    if buf.len() < len {
        return Ok(Decoded::NeedMore(len - buf.len()));
    }
    Ok(Decoded::Frame { header, len })
}

/// Decode a datagram that must hold exactly one frame: the header, the payload, and
/// optionally (part of) its padding, nothing more.
pub fn decode_datagram(buf: &[u8], max_payload: u32) -> Result<Header, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Truncated { needed: HEADER_LEN, got: buf.len() });
    };
    let header = Header::parse(head, max_payload)?;
    let need = HEADER_LEN + header.payload_len as usize;
    if buf.len() < need {
        return Err(FrameError::Truncated { needed: need, got: buf.len() });
    }
    if buf.len() > header.frame_len() {
        return Err(FrameError::TrailingBytes { extra: buf.len() - header.frame_len() });
    }
    Ok(header)
}

/// Status code of an error frame (the header's `status` field). The numbers are part of the
/// protocol and never change meaning; codes this side does not know are kept as
/// [`ErrorCode::Unknown`] so they survive a round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1: no handler is registered for the method id. The call did not run.
    UnknownMethod,
    /// 2: the request payload failed validation as the method's archived type. The call did
    /// not run.
    InvalidPayload,
    /// 3: the call's deadline passed before or while its handler ran.
    DeadlineExceeded,
    /// 4: too many calls in flight on the connection. The call did not run; retrying later
    /// may succeed.
    Overloaded,
    /// 5: a payload exceeded the size limit (a received frame header, or a response too
    /// large to send).
    TooLarge,
    /// 6: the peer's frame had a protocol version this side does not speak.
    UnsupportedVersion,
    /// 7: a frame broke the framing rules (bad magic, unknown kind or flags, nonzero
    /// reserved bytes, or a frame kind not allowed in that direction).
    Malformed,
    /// 8: the call was cancelled. Reserved: not sent today, since a cancelled call gets no
    /// reply at all.
    Cancelled,
    /// 9: the server is shutting down and did not run the call (safe to retry elsewhere).
    /// Reserved: not sent by the server yet.
    ShuttingDown,
    /// 10: the caller's principal (its verified certificate identity, or none on plain TCP)
    /// is not on the service's access list for this method. The call did not run.
    PermissionDenied,
    /// 11: datagram transport: the server has no such session (it restarted, or expired the
    /// session while it was idle). The call did not run on this server; the client opens a
    /// new session.
    SessionUnknown,
    /// 16: the handler reported an application-level failure.
    Application,
    /// 17: the server failed internally (e.g. a handler panicked, or the response could not
    /// be serialized).
    Internal,
    /// Any other value, kept as received.
    Unknown(u16),
}

impl ErrorCode {
    /// The wire value of this code.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::UnknownMethod => 1,
            ErrorCode::InvalidPayload => 2,
            ErrorCode::DeadlineExceeded => 3,
            ErrorCode::Overloaded => 4,
            ErrorCode::TooLarge => 5,
            ErrorCode::UnsupportedVersion => 6,
            ErrorCode::Malformed => 7,
            ErrorCode::Cancelled => 8,
            ErrorCode::ShuttingDown => 9,
            ErrorCode::Application => 16,
            ErrorCode::Internal => 17,
            ErrorCode::PermissionDenied => 10,
            ErrorCode::SessionUnknown => 11,
            ErrorCode::Unknown(v) => v,
        }
    }

    /// The code for a wire value; total, so `ErrorCode::from_u16(v).to_u16() == v` for every
    /// `v`.
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => ErrorCode::UnknownMethod,
            2 => ErrorCode::InvalidPayload,
            3 => ErrorCode::DeadlineExceeded,
            4 => ErrorCode::Overloaded,
            5 => ErrorCode::TooLarge,
            6 => ErrorCode::UnsupportedVersion,
            7 => ErrorCode::Malformed,
            8 => ErrorCode::Cancelled,
            9 => ErrorCode::ShuttingDown,
            16 => ErrorCode::Application,
            17 => ErrorCode::Internal,
            10 => ErrorCode::PermissionDenied,
            11 => ErrorCode::SessionUnknown,
            v => ErrorCode::Unknown(v),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Why received bytes are not a valid frame. On a stream every one of these ends the
/// connection, since its framing can no longer be trusted: a server first sends an error
/// frame with [`FrameError::code`] and this message as the detail, a client just closes. A
/// bad datagram is dropped. The messages are meant for an operator reading a log.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame does not start with [`MAGIC`].
    #[error("bad frame magic {found:02x?}: peer is not speaking multispace RPC (or the stream lost sync)")]
    BadMagic {
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// The frame's protocol version is not [`VERSION`].
    #[error("unsupported protocol version {found}: this side speaks version {supported} only")]
    UnsupportedVersion {
        /// The version the peer sent.
        found: u8,
        /// The version this side speaks.
        supported: u8,
    },
    /// The kind byte is not one of [`FrameKind`]'s values.
    #[error("unknown frame kind {0}: expected 1 to 7")]
    UnknownKind(u8),
    /// A must-understand flag bit (8..15) this side does not know is set.
    #[error("frame flags {0:#06x} set must-understand bits (mask 0xfc00) this side does not know")]
    UnknownFlags(u16),
    /// The trace flag is set on a frame that cannot carry the block, or the block is invalid.
    #[error("bad trace context: {0}")]
    BadTraceContext(&'static str),
    /// The session flag is set on a frame that cannot carry the block, the block is invalid,
    /// or a hello lacks it.
    #[error("bad session block: {0}")]
    BadSession(&'static str),
    /// The reserved header bytes 30..32 are not zero.
    #[error("reserved header bytes are not zero: peer uses an unknown protocol extension")]
    NonZeroReserved,
    /// The header announces a payload over the configured limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced payload length.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// A datagram is shorter than its header says.
    #[error("truncated datagram: need {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the frame needs (header, or header and payload).
        needed: usize,
        /// Bytes received.
        got: usize,
    },
    /// A well-formed frame of a kind this side never receives (a response sent to a server,
    /// a request sent to a client).
    #[error("a {receiver} does not accept {kind:?} frames")]
    UnexpectedKind {
        /// The kind received.
        kind: FrameKind,
        /// Who received it: `"server"` or `"client"`.
        receiver: &'static str,
    },
    /// A request uses id 0, which is reserved for connection-level error frames.
    #[error("request id 0 is reserved for connection-level errors")]
    ReservedRequestId,
    /// A request reuses the id of a call still running on the same connection.
    #[error("request id {0} is already in flight on this connection")]
    DuplicateRequestId(u64),
    /// A datagram continues past its frame's padding (one datagram must be one frame).
    #[error("datagram has {extra} bytes after its frame: one datagram must hold exactly one frame")]
    TrailingBytes {
        /// Bytes beyond the padded frame.
        extra: usize,
    },
}

impl FrameError {
    /// The status to report to the peer in the error frame sent before closing.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

/// `s` cut to at most [`MAX_DETAIL_LEN`] bytes at a character boundary, so it stays valid
/// UTF-8 and an error frame stays small.
pub fn truncate_detail(s: &str) -> &str {
    if s.len() <= MAX_DETAIL_LEN {
        return s;
    }
    let mut end = MAX_DETAIL_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = 1 << 20;

    fn every_kind() -> [Header; 5] {
        [
            Header::request(0x0102_0304_0506_0708, 0xdead_beef, 1_500_000, 37),
            Header::response(u64::MAX, 7, 0),
            Header::error(42, 9, ErrorCode::Overloaded, 12),
            Header::one_way(3, 100),
            Header::cancel(5),
        ]
    }

    /// A complete stream frame: `h` (its payload_len taken from `payload`), payload, padding.
    fn frame(mut h: Header, payload: &[u8]) -> Vec<u8> {
        h.payload_len = payload.len() as u32;
        let mut v = h.encode().to_vec();
        v.extend_from_slice(payload);
        v.resize(h.frame_len(), 0);
        v
    }

    fn parse(b: [u8; HEADER_LEN]) -> Result<Header, FrameError> {
        Header::parse(&b, MAX)
    }

    fn with(mut b: [u8; HEADER_LEN], at: usize, bytes: &[u8]) -> [u8; HEADER_LEN] {
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    }

    #[test]
    fn every_kind_round_trips() {
        for h in every_kind() {
            assert_eq!(parse(h.encode()), Ok(h), "{h:?}");
        }
    }

    #[test]
    fn constructors_set_the_documented_fields() {
        let [req, resp, err, one, cancel] = every_kind();
        assert_eq!((req.kind, req.deadline_us, req.status, req.flags), (FrameKind::Request, 1_500_000, 0, 0));
        assert_eq!((resp.kind, resp.deadline_us), (FrameKind::Response, 0));
        assert_eq!((err.kind, ErrorCode::from_u16(err.status)), (FrameKind::Error, ErrorCode::Overloaded));
        assert_eq!((one.kind, one.request_id, one.method_id), (FrameKind::OneWay, 0, 3));
        assert_eq!(
            (cancel.kind, cancel.request_id, cancel.method_id, cancel.payload_len),
            (FrameKind::Cancel, 5, 0, 0)
        );
    }

    #[test]
    fn byte_layout_is_pinned() {
        let mut h = Header::request(0x0102_0304_0506_0708, 0x1112_1314, 0x2122_2324, 0x31);
        h.flags = 0x00a5;
        h.status = 0x4142;
        let expected: [u8; HEADER_LEN] = [
            b'M', b'S', b'R', b'P', 1, 1, 0xa5, 0x00, // magic, version, kind, flags
            8, 7, 6, 5, 4, 3, 2, 1, // request id
            0x14, 0x13, 0x12, 0x11, // method id
            0x24, 0x23, 0x22, 0x21, // deadline
            0x31, 0, 0, 0, // payload length
            0x42, 0x41, 0, 0, // status, reserved
        ];
        assert_eq!(h.encode(), expected);
        let mut out = [0xffu8; 40];
        h.write_to(&mut out);
        assert_eq!(out[..HEADER_LEN], expected);
        assert_eq!(out[HEADER_LEN..], [0xff; 8], "write_to touches only the header");
    }

    #[test]
    fn bad_magic() {
        let b = with(Header::cancel(1).encode(), 0, b"HTTP");
        assert_eq!(parse(b), Err(FrameError::BadMagic { found: *b"HTTP" }));
        assert_eq!(parse(b).unwrap_err().code(), ErrorCode::Malformed);
    }

    #[test]
    fn wrong_version() {
        for v in [0, 2, 255] {
            let b = with(Header::cancel(1).encode(), 4, &[v]);
            let e = parse(b).unwrap_err();
            assert_eq!(e, FrameError::UnsupportedVersion { found: v, supported: VERSION });
            assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
        }
    }

    #[test]
    fn unknown_kinds() {
        for k in [0, 8, 255] {
            let b = with(Header::cancel(1).encode(), 5, &[k]);
            assert_eq!(parse(b), Err(FrameError::UnknownKind(k)));
        }
    }

    #[test]
    fn must_understand_flags_are_rejected_and_low_flags_ignored() {
        for flags in [0x0400u16, 0x8000, 0xff00, 0x07ff] {
            let b = with(Header::cancel(1).encode(), 6, &flags.to_le_bytes());
            let e = parse(b).unwrap_err();
            assert_eq!(e, FrameError::UnknownFlags(flags));
            assert_eq!(e.code(), ErrorCode::Malformed);
        }
        // The known must-understand bits (trace, session) are checked against the kind instead.
        let b = with(Header::cancel(1).encode(), 6, &0x0100u16.to_le_bytes());
        assert!(matches!(parse(b), Err(FrameError::BadTraceContext(_))));
        let b = with(Header::response(1, 2, 0).encode(), 6, &0x0200u16.to_le_bytes());
        assert!(matches!(parse(b), Err(FrameError::BadSession(_))));
        for flags in [0x0001u16, 0x0080, 0x00ff] {
            let b = with(Header::cancel(1).encode(), 6, &flags.to_le_bytes());
            let h = parse(b).expect("ignorable flag bits are accepted");
            assert_eq!(h.flags, flags, "and kept");
        }
    }

    #[test]
    fn nonzero_reserved() {
        for (at, byte) in [(30, 1u8), (31, 0x80)] {
            let b = with(Header::cancel(1).encode(), at, &[byte]);
            assert_eq!(parse(b), Err(FrameError::NonZeroReserved));
        }
    }

    #[test]
    fn payload_limit() {
        let at_limit = Header::one_way(1, MAX).encode();
        assert_eq!(parse(at_limit).map(|h| h.payload_len), Ok(MAX));
        let over = Header::one_way(1, MAX + 1).encode();
        let e = parse(over).unwrap_err();
        assert_eq!(e, FrameError::TooLarge { len: MAX + 1, max: MAX });
        assert_eq!(e.code(), ErrorCode::TooLarge);
        assert!(Header::parse(&Header::one_way(1, u32::MAX).encode(), u32::MAX).is_ok());
        assert!(Header::parse(&Header::one_way(1, 1).encode(), 0).is_err());
    }

    #[test]
    fn decode_frame_at_every_split() {
        let bytes = frame(Header::request(77, 5, 0, 0), &[0xab; 37]);
        assert_eq!(bytes.len(), HEADER_LEN + 48);
        for cut in 0..bytes.len() {
            let want = if cut < HEADER_LEN { HEADER_LEN - cut } else { bytes.len() - cut };
            assert_eq!(decode_frame(&bytes[..cut], MAX), Ok(Decoded::NeedMore(want)), "cut at {cut}");
        }
        let Ok(Decoded::Frame { header, len }) = decode_frame(&bytes, MAX) else { panic!("complete frame") };
        assert_eq!((header.request_id, header.payload_len, len), (77, 37, bytes.len()));
    }

    #[test]
    fn decode_frame_reports_header_errors_before_the_payload_arrives() {
        let bytes = Header::request(1, 1, 0, MAX + 1).encode();
        assert_eq!(decode_frame(&bytes, MAX), Err(FrameError::TooLarge { len: MAX + 1, max: MAX }));
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut bytes = frame(Header::request(1, 10, 0, 0), b"first");
        let first_len = bytes.len();
        bytes.extend(frame(Header::response(2, 20, 0), &[1; 16]));
        bytes.extend_from_slice(b"MS"); // the start of a third
        let Ok(Decoded::Frame { header, len }) = decode_frame(&bytes, MAX) else { panic!("first frame") };
        assert_eq!((header.kind, header.request_id, len), (FrameKind::Request, 1, first_len));
        let rest = &bytes[len..];
        let Ok(Decoded::Frame { header, len }) = decode_frame(rest, MAX) else { panic!("second frame") };
        assert_eq!((header.kind, header.request_id, len), (FrameKind::Response, 2, HEADER_LEN + 16));
        assert_eq!(decode_frame(&rest[len..], MAX), Ok(Decoded::NeedMore(HEADER_LEN - 2)));
    }

    #[test]
    fn padding() {
        for (payload, padded) in [(0, 0), (1, 16), (15, 16), (16, 16), (17, 32)] {
            assert_eq!(padded_len(payload), padded);
            assert_eq!(Header::one_way(1, payload as u32).frame_len(), HEADER_LEN + padded);
            let bytes = frame(Header::one_way(1, 0), &vec![7; payload]);
            assert_eq!(bytes.len(), HEADER_LEN + padded);
            let Ok(Decoded::Frame { len, .. }) = decode_frame(&bytes, MAX) else { panic!("frame of {payload}") };
            assert_eq!(len, HEADER_LEN + padded);
        }
    }

    #[test]
    fn datagrams() {
        let full = frame(Header::one_way(4, 0), &[9; 20]); // 20 bytes of payload, 12 of padding
        let unpadded = HEADER_LEN + 20;
        assert_eq!(decode_datagram(&full[..10], MAX), Err(FrameError::Truncated { needed: HEADER_LEN, got: 10 }));
        assert_eq!(
            decode_datagram(&full[..unpadded - 1], MAX),
            Err(FrameError::Truncated { needed: unpadded, got: unpadded - 1 })
        );
        for len in [unpadded, unpadded + 5, full.len()] {
            assert_eq!(decode_datagram(&full[..len], MAX).map(|h| h.payload_len), Ok(20), "length {len}");
        }
        let mut long = full.clone();
        long.push(0);
        assert_eq!(decode_datagram(&long, MAX), Err(FrameError::TrailingBytes { extra: 1 }));
        let mut two = full.clone();
        two.extend_from_slice(&full);
        assert_eq!(decode_datagram(&two, MAX), Err(FrameError::TrailingBytes { extra: full.len() }));
        let mut bad = full;
        bad[30] = 1;
        assert_eq!(decode_datagram(&bad, MAX), Err(FrameError::NonZeroReserved));
    }

    #[test]
    fn error_codes_round_trip() {
        for v in 0..=u16::MAX {
            assert_eq!(ErrorCode::from_u16(v).to_u16(), v);
        }
        let named = [
            (ErrorCode::UnknownMethod, 1),
            (ErrorCode::InvalidPayload, 2),
            (ErrorCode::DeadlineExceeded, 3),
            (ErrorCode::Overloaded, 4),
            (ErrorCode::TooLarge, 5),
            (ErrorCode::UnsupportedVersion, 6),
            (ErrorCode::Malformed, 7),
            (ErrorCode::Cancelled, 8),
            (ErrorCode::ShuttingDown, 9),
            (ErrorCode::PermissionDenied, 10),
            (ErrorCode::SessionUnknown, 11),
            (ErrorCode::Application, 16),
            (ErrorCode::Internal, 17),
        ];
        for (code, v) in named {
            assert_eq!(code.to_u16(), v);
            assert_eq!(ErrorCode::from_u16(v), code);
        }
        for v in [0, 12, 15, 18, u16::MAX] {
            assert_eq!(ErrorCode::from_u16(v), ErrorCode::Unknown(v));
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = FrameError::BadMagic { found: *b"GET " };
        assert!(e.to_string().starts_with("bad frame magic [47, 45, 54, 20]: peer is not speaking multispace RPC"));
        let e = FrameError::TooLarge { len: 20, max: 10 };
        assert_eq!(e.to_string(), "frame payload of 20 bytes exceeds the limit of 10");
        let e = FrameError::Truncated { needed: 32, got: 3 };
        assert_eq!(e.to_string(), "truncated datagram: need 32 bytes, got 3");
        assert!(FrameError::UnknownFlags(0x0100).to_string().contains("0x0100"));
    }

    #[test]
    fn truncate_detail_respects_char_boundaries() {
        assert_eq!(truncate_detail("short"), "short");
        let exact = "a".repeat(MAX_DETAIL_LEN);
        assert_eq!(truncate_detail(&exact), exact);
        for ch in ['é', '€', '😀'] {
            // The multi-byte character straddles the limit.
            let s = format!("{}{ch}tail", "a".repeat(MAX_DETAIL_LEN - 1));
            let t = truncate_detail(&s);
            assert_eq!(t, "a".repeat(MAX_DETAIL_LEN - 1), "{ch}");
        }
        let s = "€".repeat(MAX_DETAIL_LEN);
        let t = truncate_detail(&s);
        assert!(t.len() <= MAX_DETAIL_LEN && t.len() > MAX_DETAIL_LEN - 3);
        assert!(t.chars().all(|c| c == '€'));
    }

    fn valid_header() -> impl Strategy<Value = Header> {
        let kind = prop_oneof![
            Just(FrameKind::Request),
            Just(FrameKind::Response),
            Just(FrameKind::Error),
            Just(FrameKind::OneWay),
            Just(FrameKind::Cancel),
        ];
        (kind, 0u16..=0xff, any::<u64>(), any::<u32>(), any::<u32>(), 0..=MAX, any::<u16>()).prop_map(
            |(kind, flags, request_id, method_id, deadline_us, payload_len, status)| Header {
                kind,
                flags,
                request_id,
                method_id,
                deadline_us,
                payload_len,
                status,
            },
        )
    }

    /// Random bytes, and random bytes behind a valid magic and version (to reach the checks
    /// after them).
    fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(any::<u8>(), 0..200).prop_map(|mut v| {
                let prefix = [b'M', b'S', b'R', b'P', VERSION];
                let n = v.len().min(prefix.len());
                v[..n].copy_from_slice(&prefix[..n]);
                v
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(buf in hostile_bytes(), max in any::<u32>()) {
            match decode_frame(&buf, max) {
                Ok(Decoded::Frame { header, len }) => {
                    prop_assert_eq!(len, header.frame_len());
                    prop_assert!(len <= buf.len());
                    prop_assert!(header.payload_len <= max);
                }
                Ok(Decoded::NeedMore(n)) => {
                    prop_assert!(n > 0);
                    if buf.len() >= HEADER_LEN {
                        let h = Header::parse(buf.first_chunk().unwrap(), max).unwrap();
                        prop_assert_eq!(buf.len() + n, h.frame_len());
                    } else {
                        prop_assert_eq!(buf.len() + n, HEADER_LEN);
                    }
                }
                Err(_) => {}
            }
            if let Ok(h) = decode_datagram(&buf, max) {
                prop_assert!(h.payload_len <= max);
                prop_assert!(HEADER_LEN + h.payload_len as usize <= buf.len());
                prop_assert!(buf.len() <= h.frame_len());
            }
        }

        #[test]
        fn valid_headers_round_trip(h in valid_header()) {
            let bytes = h.encode();
            prop_assert_eq!(Header::parse(&bytes, MAX), Ok(h));
            let mut framed = bytes.to_vec();
            framed.resize(h.frame_len(), 0);
            prop_assert_eq!(decode_frame(&framed, MAX), Ok(Decoded::Frame { header: h, len: framed.len() }));
            prop_assert_eq!(decode_datagram(&framed, MAX), Ok(h));
        }
    }
}
