//! Peer frameworks measured beside multispace on the same rows, behind cargo features so
//! their dependency trees are only built for benchmarking.

#[cfg(feature = "tarpc")]
pub mod tarpc_peer;

#[cfg(feature = "tonic")]
pub mod tonic_peer;

#[cfg(has_capnp)]
pub mod capnp_peer;
