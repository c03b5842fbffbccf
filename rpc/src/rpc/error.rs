//! Errors of the RPC layer: what a caller sees ([`CallError`]) and what a handler returns
//! ([`Status`]).

use std::borrow::Cow;
use std::io;

use crate::buf::EncodeError;
use crate::proto::frame::{truncate_detail, ErrorCode, FrameError};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// Could not connect to the server.
    #[error("connect failed")]
    Connect(#[source] io::Error),
    /// The connection broke while the call was in flight; the server may or may not have run it.
    #[error("connection lost while the call was in flight")]
    ConnectionLost,
    /// The call's deadline passed (locally or at the server).
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// Too many calls in flight (locally on this connection, or at the server); not run.
    #[error("overloaded: too many calls in flight{}", if *.remote { " at the server" } else { "" })]
    Overloaded {
        /// True if the server refused it, false if the local connection's limit did.
        remote: bool,
    },
    /// The request could not be encoded (too large for the limit, or unserializable); not sent.
    #[error("request not sent")]
    Encode(#[from] EncodeError),
    /// The server does not know this method (not run).
    #[error("unknown method {method_id:#010x}")]
    UnknownMethod {
        /// The method id sent.
        method_id: u32,
    },
    /// The server failed to validate the request payload (not run).
    #[error("the server rejected the request payload as invalid")]
    InvalidRequest,
    /// The response payload failed validation; the call did run.
    #[error("invalid response payload")]
    InvalidResponse(#[source] rkyv::rancor::Error),
    /// A protocol violation by the server (connection closed).
    #[error("protocol error from server")]
    Protocol(#[source] FrameError),
    /// The TLS handshake failed, or the session broke (e.g. the server refused this
    /// client's certificate).
    #[error(transparent)]
    Tls(crate::tls::TlsError),
    /// The caller's principal may not call this method (not run).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The handler failed with this status.
    #[error(transparent)]
    Status(#[from] Status),
}

impl CallError {
    /// True if the call certainly did not run at the server, so repeating it is safe even for
    /// non-idempotent methods.
    pub fn did_not_run(&self) -> bool {
        match self {
            CallError::Connect(_)
            | CallError::Overloaded { .. }
            | CallError::Encode(_)
            | CallError::UnknownMethod { .. }
            | CallError::InvalidRequest
            | CallError::PermissionDenied(_) => true,
            // A server that refused our certificate read none of our requests.
            CallError::Tls(e) => e.is_rejection() || matches!(e, crate::tls::TlsError::Handshake { .. }),
            CallError::Status(s) => matches!(s.code(), ErrorCode::Overloaded | ErrorCode::ShuttingDown),
            _ => false,
        }
    }

    /// True if trying again (here or on another instance) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Connect(_) | CallError::ConnectionLost | CallError::Overloaded { .. } => true,
            CallError::Status(s) => matches!(s.code(), ErrorCode::Overloaded | ErrorCode::ShuttingDown),
            _ => false,
        }
    }

    /// Map an error frame from the server.
    pub(crate) fn from_wire(code: ErrorCode, method_id: u32, detail: &[u8]) -> CallError {
        match code {
            ErrorCode::UnknownMethod => CallError::UnknownMethod { method_id },
            ErrorCode::InvalidPayload => CallError::InvalidRequest,
            ErrorCode::DeadlineExceeded => CallError::DeadlineExceeded,
            ErrorCode::Overloaded => CallError::Overloaded { remote: true },
            ErrorCode::PermissionDenied => {
                let detail = String::from_utf8_lossy(&detail[..detail.len().min(crate::proto::frame::MAX_DETAIL_LEN)]);
                CallError::PermissionDenied(detail.into_owned())
            }
            code => {
                let detail = String::from_utf8_lossy(&detail[..detail.len().min(crate::proto::frame::MAX_DETAIL_LEN)]);
                CallError::Status(Status::new(code, detail.into_owned()))
            }
        }
    }
}

/// A handler's failure, sent to the caller as an error frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Status {
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl Status {
    /// A status with a code and a human-readable message (truncated to 1 KiB on the wire).
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Status {
        Status { code, message: message.into() }
    }
    /// An application-level failure.
    pub fn application(message: impl Into<Cow<'static, str>>) -> Status {
        Status::new(ErrorCode::Application, message)
    }
    /// An internal server failure.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Status {
        Status::new(ErrorCode::Internal, message)
    }
    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn wire_detail(&self) -> &str {
        truncate_detail(&self.message)
    }
}

/// Why a server could not start or keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Binding or listening failed.
    #[error("bind failed")]
    Bind(#[source] io::Error),
    /// Two services given to one server answer the same method id.
    #[error("services `{first}` and `{second}` both answer method id {method_id:#010x}")]
    DuplicateMethod {
        /// The id.
        method_id: u32,
        /// One service.
        first: String,
        /// The other.
        second: String,
    },
    /// The datagram transport was enabled on a server configured with TLS: datagram calls
    /// would bypass the certificate checks, so the server refuses to start.
    #[error("the datagram transport carries no TLS: enable it only on a plain (non-TLS) server")]
    DatagramWithTls,
    /// Accepting failed in a way that is not per-connection.
    #[error("accept failed")]
    Accept(#[source] io::Error),
}
