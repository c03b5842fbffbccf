//! # multispace-rpc
//!
//! The NinjaRMI of multispace: a thread-per-core runtime and the RPC transports built on it.
//!
//! What this crate owns:
//! - [`runtime`]: one event loop per core, each with its own I/O driver (io_uring with
//!   SINGLE_ISSUER/DEFER_TASKRUN, or epoll through mio, picked at start), a run queue of
//!   `!Send` tasks, and a timer wheel; sleeping or busy-poll waits; `Send + Sync` handles to
//!   reach a core from other threads.
//! - [`proto`]: the sans-IO wire protocol — frame header codec and the client call table
//!   (documented in `PROTOCOL.md`). No sockets, no clock.
//! - [`Message`]: received rkyv archives, validated (bytecheck) before any access and then
//!   read in place; responses are archived straight into the connection's outgoing buffer.
//! - Reliable request/response over TCP ([`Server`], [`Client`]) or over UDP datagrams with
//!   retransmission and at-most-once execution ([`Transport::Udp`]), best-effort one-way calls
//!   over UDP and multicast ([`OneWaySender`], [`OneWayServer`]), and [`ClientHandle`] for
//!   callers outside the runtime.
//! - [`tls`]: mutual TLS 1.3 (rustls) on reliable connections, driven by the same drivers;
//!   the peer's certificate names the [`Principal`] that access lists check.
//! - [`Redirector`]: one client over many instances of a service, with a pluggable
//!   [`Policy`] and failover that never repeats a non-idempotent call that may have run
//!   (generated redirector stubs wrap it).
//! - [`trace`]: trace ids that cross rpc hops (a block in the request, a `tracing` span per
//!   served call, the trace current while its handler runs).
//! - `json` (feature `json`): calling an interface's methods by name with JSON arguments,
//!   shared by the stubs stubgen generates with JSON access.
//!
//! Unsafe code is confined to `sys` (syscalls), `driver` (buffers handed to the kernel) and
//! `buf` (access to already-validated archives).
//!
//! ```no_run
//! use multispace_rpc::{CallOptions, Client, LocalRuntime, Server, Service, Status};
//! let rt = LocalRuntime::new(Default::default()).unwrap();
//! rt.block_on(async {
//!     let svc = Service::builder("echo")
//!         .method(1, |_ctx, req: multispace_rpc::Message<u64>| async move { Ok::<u64, Status>(req.to_native()) })
//!         .build();
//!     let server = Server::bind("127.0.0.1:0".parse().unwrap(), [svc]).unwrap();
//!     let addr = server.local_addr();
//!     multispace_rpc::spawn(server.serve()).detach();
//!     let client = Client::new(addr);
//!     let r = client.call::<u64, u64>(1, &7, CallOptions::default()).await.unwrap();
//!     assert_eq!(r.to_native(), 7);
//! });
//! ```
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod buf;
#[allow(unsafe_code)]
pub mod driver;
pub mod metrics;
pub mod net;
pub mod proto;
mod rpc;
pub mod runtime;
#[allow(unsafe_code)]
mod sys;
pub mod tls;
pub mod trace;

/// The rkyv this crate archives with (generated stubs derive through it, so a service crate
/// needs no rkyv dependency of its own unless it defines its own types).
pub use rkyv;
/// The serde that stubs generated with JSON access derive through (feature `json`).
#[cfg(feature = "json")]
pub use serde;
/// The serde_json that JSON access speaks (feature `json`).
#[cfg(feature = "json")]
pub use serde_json;

#[cfg(feature = "json")]
pub use rpc::json;

pub use buf::{EncodeError, Message, Payload, Validate};
pub use driver::{DriverChoice, DriverKind, DriverStats};
pub use proto::balance::{key_hash, Policy};
pub use proto::frame::ErrorCode;
pub use rpc::client::{CallOptions, Client};
pub use rpc::conn::{ConnConfig, Transport};
pub use rpc::dgram::DatagramConfig;
pub use rpc::error::{CallError, ServeError, Status};
pub use rpc::handle::ClientHandle;
pub use rpc::oneway::{MulticastGroup, OneWaySender, OneWayServer, OneWayStats, SendError, MAX_DATAGRAM};
pub use rpc::redirect::{RedirectConfig, RedirectError, Redirector, WeakRedirector};
pub use rpc::server::{Server, ServerConfig, ServerLoad};
pub use rpc::service::{current_deadline, AccessList, CallContext, Service, ServiceBuilder};
pub use rpc::stub;
pub use runtime::{spawn, Config, LocalRuntime, Runtime, RuntimeBuilder, WaitMode};
pub use tls::{Principal, TlsConfig, TlsError};
