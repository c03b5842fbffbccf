//! Running a node on a core of its own.

use std::cell::RefCell;

use multispace_rpc::{ConnConfig, DriverChoice, DriverKind, Runtime, RuntimeBuilder};

use crate::{Node, NodeConfig, NodeError};

thread_local! {
    static NODE: RefCell<Option<Node>> = const { RefCell::new(None) };
}

/// A node on a core (thread) of its own: for clusters in one process (tests, benchmarks),
/// where one node must be able to die while the others live.
#[derive(Debug)]
pub struct NodeThread {
    rt: Option<Runtime>,
}

impl NodeThread {
    /// Start a node with `config` on a new core using `kind`'s driver; `setup` runs on the
    /// node's core once it is up (register service types, start instances).
    pub fn start(
        kind: DriverKind,
        config: NodeConfig,
        setup: impl FnOnce(&Node) + Send + 'static,
    ) -> Result<NodeThread, NodeError> {
        Self::start_with(kind, ConnConfig::default(), config, setup)
    }

    /// [`NodeThread::start`] with the core's connection settings (e.g. mutual TLS with this
    /// node's certificate): its control server, instances and clients all use them.
    pub fn start_with(
        kind: DriverKind,
        conn: ConnConfig,
        config: NodeConfig,
        setup: impl FnOnce(&Node) + Send + 'static,
    ) -> Result<NodeThread, NodeError> {
        let rt = RuntimeBuilder::new().cores(1).pin(false).driver(DriverChoice::Force(kind)).conn(conn).build()?;
        rt.core(0)
            .run(move || async move {
                let node = Node::start(config).await?;
                setup(&node);
                NODE.with(|n| *n.borrow_mut() = Some(node));
                Ok::<_, NodeError>(())
            })
            .map_err(|e| NodeError::Io(std::io::Error::other(e)))??;
        Ok(NodeThread { rt: Some(rt) })
    }

    /// Run `f` with the node, on its core, and wait for it.
    ///
    /// # Panics
    /// If the node was killed (a programming error in the caller).
    pub fn with<R: Send + 'static>(&self, f: impl FnOnce(&Node) -> R + Send + 'static) -> R {
        self.rt
            .as_ref()
            .expect("node alive")
            .core(0)
            .run(move || async move { NODE.with(|n| f(n.borrow().as_ref().expect("node"))) })
            .expect("node core alive")
    }

    /// Kill it: its core stops, its sockets close (as when a process dies), its beacons stop
    /// without a goodbye, so the others drop it at expiry.
    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Drop the node while its core still runs, so its tasks and sockets go at once.
            let _ = rt.core(0).run(|| async { NODE.with(|n| n.borrow_mut().take()).map(|n| n.halt(false)) });
            rt.shutdown();
        }
    }

    /// Stop it cleanly: it says goodbye (so the others drop it at once), then its core stops.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            let _ = rt.core(0).run(|| async {
                if let Some(n) = NODE.with(|n| n.borrow_mut().take()) {
                    n.shutdown().await;
                }
            });
            rt.shutdown();
        }
    }
}

/// Dropping it kills it ([`NodeThread::kill`]: no goodbye).
impl Drop for NodeThread {
    fn drop(&mut self) {
        self.kill();
    }
}
