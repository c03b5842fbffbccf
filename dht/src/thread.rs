//! A table node on a core (thread) of its own: for clusters inside one process (tests,
//! benchmarks), where one node must be able to die while the others live.

use std::cell::RefCell;

use multispace_rpc::{DriverChoice, Runtime, RuntimeBuilder};

use crate::api::table::ReplicaStatus;
use crate::server::{DhtConfig, DhtServer, ServerError};

thread_local! {
    static SERVER: RefCell<Option<DhtServer>> = const { RefCell::new(None) };
}

/// A node running on its own core.
#[derive(Debug)]
pub struct DhtThread {
    rt: Option<Runtime>,
    addr: std::net::SocketAddr,
}

impl DhtThread {
    /// Starts a node with `config` on a new core (the driver picked as usual: io_uring if the
    /// kernel allows, else epoll, or as `MULTISPACE_DRIVER` says).
    pub fn start(config: DhtConfig) -> Result<DhtThread, ServerError> {
        let name = format!("dht-node-{}", config.id);
        let rt = RuntimeBuilder::new()
            .cores(1)
            .pin(false)
            .driver(DriverChoice::Auto)
            .name(name)
            .build()
            .map_err(|e| ServerError::Config(format!("runtime: {e}")))?;
        let addr = rt
            .core(0)
            .run(move || async move {
                let server = DhtServer::start(config)?;
                let addr = server.local_addr();
                SERVER.with(|s| *s.borrow_mut() = Some(server));
                Ok::<_, ServerError>(addr)
            })
            .map_err(|e| ServerError::Config(format!("node core: {e}")))??;
        Ok(DhtThread { rt: Some(rt), addr })
    }

    /// Where the node serves.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Runs `f` with the node on its core and waits for the result; `None` if it was killed.
    pub fn with<R: Send + 'static>(&self, f: impl FnOnce(&DhtServer) -> R + Send + 'static) -> Option<R> {
        self.rt.as_ref()?.core(0).run(move || async move { SERVER.with(|s| s.borrow().as_ref().map(f)) }).ok()?
    }

    /// The node's replicas now.
    pub fn status(&self) -> Vec<ReplicaStatus> {
        self.with(|s| s.status()).unwrap_or_default()
    }

    /// Kills the node: its core stops and its sockets close, as when a process dies. Whatever
    /// its log had synced stays on disk.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            let _ = rt.core(0).run(|| async { SERVER.with(|s| s.borrow_mut().take()).map(drop) });
            rt.shutdown();
        }
    }

    /// Whether it runs.
    pub fn is_alive(&self) -> bool {
        self.rt.is_some()
    }
}

impl Drop for DhtThread {
    fn drop(&mut self) {
        self.kill();
    }
}
