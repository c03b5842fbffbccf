//! Frame header codec (temporary minimal version; see PROTOCOL.md).

/// Magic.
pub const MAGIC: [u8; 4] = *b"MSRP";
/// Version.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 32;
/// Frame alignment.
pub const FRAME_ALIGN: usize = 16;
/// Default max payload.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 * 1024 * 1024;
/// Max detail length.
pub const MAX_DETAIL_LEN: usize = 1024;

/// Kind.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// r
    Request = 1,
    /// r
    Response = 2,
    /// e
    Error = 3,
    /// o
    OneWay = 4,
    /// c
    Cancel = 5,
}

/// Header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// k
    pub kind: FrameKind,
    /// f
    pub flags: u16,
    /// r
    pub request_id: u64,
    /// m
    pub method_id: u32,
    /// d
    pub deadline_us: u32,
    /// p
    pub payload_len: u32,
    /// s
    pub status: u16,
}

impl Header {
    fn new(kind: FrameKind, request_id: u64, method_id: u32, payload_len: u32) -> Self {
        Header { kind, flags: 0, request_id, method_id, deadline_us: 0, payload_len, status: 0 }
    }
    /// r
    pub fn request(request_id: u64, method_id: u32, deadline_us: u32, payload_len: u32) -> Self {
        Header { deadline_us, ..Self::new(FrameKind::Request, request_id, method_id, payload_len) }
    }
    /// r
    pub fn response(request_id: u64, method_id: u32, payload_len: u32) -> Self {
        Self::new(FrameKind::Response, request_id, method_id, payload_len)
    }
    /// e
    pub fn error(request_id: u64, method_id: u32, code: ErrorCode, payload_len: u32) -> Self {
        Header { status: code.to_u16(), ..Self::new(FrameKind::Error, request_id, method_id, payload_len) }
    }
    /// o
    pub fn one_way(method_id: u32, payload_len: u32) -> Self {
        Self::new(FrameKind::OneWay, 0, method_id, payload_len)
    }
    /// c
    pub fn cancel(request_id: u64) -> Self {
        Self::new(FrameKind::Cancel, request_id, 0, 0)
    }
    /// e
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        self.write_to(&mut b);
        b
    }
    /// w
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
    /// p
    pub fn parse(b: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, FrameError> {
        if b[0..4] != MAGIC {
            return Err(FrameError::BadMagic { found: [b[0], b[1], b[2], b[3]] });
        }
        if b[4] != VERSION {
            return Err(FrameError::UnsupportedVersion { found: b[4], supported: VERSION });
        }
        let kind = match b[5] {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            3 => FrameKind::Error,
            4 => FrameKind::OneWay,
            5 => FrameKind::Cancel,
            k => return Err(FrameError::UnknownKind(k)),
        };
        let flags = u16::from_le_bytes([b[6], b[7]]);
        if flags & 0xff00 != 0 {
            return Err(FrameError::UnknownFlags(flags));
        }
        if b[30] != 0 || b[31] != 0 {
            return Err(FrameError::NonZeroReserved);
        }
        let payload_len = u32::from_le_bytes(b[24..28].try_into().unwrap());
        if payload_len > max_payload {
            return Err(FrameError::TooLarge { len: payload_len, max: max_payload });
        }
        Ok(Header {
            kind,
            flags,
            request_id: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            method_id: u32::from_le_bytes(b[16..20].try_into().unwrap()),
            deadline_us: u32::from_le_bytes(b[20..24].try_into().unwrap()),
            payload_len,
            status: u16::from_le_bytes([b[28], b[29]]),
        })
    }
    /// l
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + padded_len(self.payload_len as usize)
    }
}

/// pad
pub const fn padded_len(payload_len: usize) -> usize {
    payload_len.next_multiple_of(FRAME_ALIGN)
}

/// d
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// n
    NeedMore(usize),
    /// f
    Frame {
        /// h
        header: Header,
        /// l
        len: usize,
    },
}

/// d
pub fn decode_frame(buf: &[u8], max_payload: u32) -> Result<Decoded, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(Decoded::NeedMore(HEADER_LEN - buf.len()));
    }
    let header = Header::parse(buf[..HEADER_LEN].try_into().unwrap(), max_payload)?;
    let len = header.frame_len();
    if buf.len() < len {
        return Ok(Decoded::NeedMore(len - buf.len()));
    }
    Ok(Decoded::Frame { header, len })
}

/// d
pub fn decode_datagram(buf: &[u8], max_payload: u32) -> Result<Header, FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Truncated { needed: HEADER_LEN, got: buf.len() });
    }
    let header = Header::parse(buf[..HEADER_LEN].try_into().unwrap(), max_payload)?;
    let need = HEADER_LEN + header.payload_len as usize;
    if buf.len() < need {
        return Err(FrameError::Truncated { needed: need, got: buf.len() });
    }
    if buf.len() > header.frame_len() {
        return Err(FrameError::TrailingBytes { extra: buf.len() - header.frame_len() });
    }
    Ok(header)
}

/// c
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// x
    UnknownMethod,
    /// x
    InvalidPayload,
    /// x
    DeadlineExceeded,
    /// x
    Overloaded,
    /// x
    TooLarge,
    /// x
    UnsupportedVersion,
    /// x
    Malformed,
    /// x
    Cancelled,
    /// x
    ShuttingDown,
    /// x
    Application,
    /// x
    Internal,
    /// x
    Unknown(u16),
}

impl ErrorCode {
    /// x
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
            ErrorCode::Unknown(v) => v,
        }
    }
    /// x
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
            v => ErrorCode::Unknown(v),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// e
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// x
    #[error("bad magic {found:?}")]
    BadMagic {
        /// x
        found: [u8; 4],
    },
    /// x
    #[error("unsupported version {found}")]
    UnsupportedVersion {
        /// x
        found: u8,
        /// x
        supported: u8,
    },
    /// x
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    /// x
    #[error("unknown flags {0:#x}")]
    UnknownFlags(u16),
    /// x
    #[error("reserved not zero")]
    NonZeroReserved,
    /// x
    #[error("too large {len} > {max}")]
    TooLarge {
        /// x
        len: u32,
        /// x
        max: u32,
    },
    /// x
    #[error("truncated")]
    Truncated {
        /// x
        needed: usize,
        /// x
        got: usize,
    },
    /// x
    #[error("trailing bytes")]
    TrailingBytes {
        /// x
        extra: usize,
    },
}

impl FrameError {
    /// x
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

/// t
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
