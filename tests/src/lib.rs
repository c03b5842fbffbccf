//! Cross-crate integration tests (in `tests/tests/`) and the harness they share: run a body
//! once per I/O driver, wait for events with a bound instead of sleeping, and start service
//! instances on cores of their own so a test can kill them.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use multispace_node::NodeThread as TestNode;
use multispace_rpc::runtime::time::{sleep, timeout};
use multispace_rpc::{spawn, Config, DriverChoice, DriverKind, LocalRuntime, Runtime, RuntimeBuilder, Server, Service};

/// The drivers to test: both, unless `MULTISPACE_DRIVER` pins one (CI's forced-fallback run).
pub fn drivers() -> Vec<DriverKind> {
    match std::env::var("MULTISPACE_DRIVER").as_deref() {
        Ok("epoll") => vec![DriverKind::Epoll],
        Ok("uring") | Ok("io_uring") => vec![DriverKind::Uring],
        _ => vec![DriverKind::Uring, DriverKind::Epoll],
    }
}

/// Run `body` on a fresh single-core runtime for each driver; a driver that cannot be set up
/// fails the test.
pub fn each_driver<F, Fut>(body: F)
where
    F: Fn(DriverKind) -> Fut,
    Fut: Future<Output = ()>,
{
    for kind in drivers() {
        let rt = LocalRuntime::new(Config { driver: DriverChoice::Force(kind), ..Config::default() })
            .unwrap_or_else(|e| panic!("{kind} driver unavailable: {e}"));
        rt.block_on(body(kind));
    }
}

/// Bound on how long a test waits for an event that must happen.
pub const EVENT_BOUND: Duration = Duration::from_secs(20);

/// Await an event that must happen, failing the test (not hanging it) if it never does.
pub async fn must<F: Future>(what: &str, f: F) -> F::Output {
    match timeout(EVENT_BOUND, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for: {what}"),
    }
}

/// Wait until `cond` holds, checking every millisecond (bounded by [`EVENT_BOUND`]).
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    must(what, async {
        while !cond() {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

/// A service instance serving on a core of its own, so it can die while others live.
#[derive(Debug)]
pub struct Instance {
    /// Where it listens (TCP).
    pub addr: SocketAddr,
    rt: Option<Runtime>,
}

impl Instance {
    /// Start the service `make` builds on a new core using `kind`'s driver, listening on an
    /// ephemeral loopback port. Blocks until it listens.
    pub fn start(kind: DriverKind, make: impl FnOnce() -> Service + Send + 'static) -> Instance {
        let rt = RuntimeBuilder::new().cores(1).pin(false).driver(DriverChoice::Force(kind)).build().expect("runtime");
        let addr = rt
            .core(0)
            .run(move || async move {
                let server = Server::bind("127.0.0.1:0".parse().expect("address"), [make()]).expect("bind");
                let addr = server.local_addr();
                spawn(server.serve()).detach();
                addr
            })
            .expect("instance core");
        Instance { addr, rt: Some(rt) }
    }

    /// Kill it: its core stops and its sockets close, as if the process died. Does not wait.
    pub fn kill(&self) {
        if let Some(rt) = &self.rt {
            rt.core(0).shutdown();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown();
        }
    }
}
