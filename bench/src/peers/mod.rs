//! Peer frameworks measured beside multispace on the same rows, behind cargo features so
//! their dependency trees are only built for benchmarking.

#[cfg(feature = "tarpc")]
pub mod tarpc_peer;

#[cfg(feature = "tonic")]
pub mod tonic_peer;

#[cfg(has_capnp)]
pub mod capnp_peer;

/// A peer's server thread: told to stop and joined when dropped (after the fields declared
/// before it in the owning struct, so a peer's client side closes first).
#[cfg(any(feature = "tarpc", feature = "tonic", has_capnp))]
pub(crate) struct ServerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(any(feature = "tarpc", feature = "tonic", has_capnp))]
impl ServerThread {
    pub(crate) fn new(stop: tokio::sync::oneshot::Sender<()>, thread: std::thread::JoinHandle<()>) -> Self {
        ServerThread { stop: Some(stop), thread: Some(thread) }
    }
}

#[cfg(any(feature = "tarpc", feature = "tonic", has_capnp))]
impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
