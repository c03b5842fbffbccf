//! The RPC layer: services and their dispatch, the reliable TCP client and server, reliable
//! calls over UDP (datagram sessions), one-way UDP and multicast calls, redirectors over many
//! instances, and the thread-safe client handle.

pub(crate) mod client;
pub(crate) mod conn;
pub(crate) mod dgram;
pub(crate) mod error;
pub(crate) mod handle;
#[cfg(feature = "json")]
pub mod json;
pub(crate) mod oneway;
pub(crate) mod redirect;
pub(crate) mod server;
pub(crate) mod service;
pub mod stub;
