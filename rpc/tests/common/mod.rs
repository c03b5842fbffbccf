//! Shared test harness: every I/O test runs once per driver.
#![allow(dead_code)]

pub mod hops;
pub mod relay;

use std::future::Future;
use std::time::Duration;

use multispace_rpc::runtime::time::timeout;
use multispace_rpc::{Config, DriverChoice, DriverKind, LocalRuntime, WaitMode};

/// The drivers to test: both, unless `MULTISPACE_DRIVER` pins one (CI's forced-fallback run).
pub fn drivers() -> Vec<DriverKind> {
    match std::env::var("MULTISPACE_DRIVER").as_deref() {
        Ok("epoll") => vec![DriverKind::Epoll],
        Ok("uring") | Ok("io_uring") => vec![DriverKind::Uring],
        _ => vec![DriverKind::Uring, DriverKind::Epoll],
    }
}

/// Run `body` on a fresh single-core runtime for each driver. A driver that cannot be set up
/// fails the test: the suite must prove both work.
pub fn each_driver<F, Fut>(body: F)
where
    F: Fn(DriverKind) -> Fut,
    Fut: Future<Output = ()>,
{
    each_driver_waiting(WaitMode::Sleep, body)
}

/// [`each_driver`] with the cores waiting as `wait` says (sleeping or busy-polling).
pub fn each_driver_waiting<F, Fut>(wait: WaitMode, body: F)
where
    F: Fn(DriverKind) -> Fut,
    Fut: Future<Output = ()>,
{
    for kind in drivers() {
        let rt = LocalRuntime::new(Config { driver: DriverChoice::Force(kind), wait, ..Config::default() })
            .unwrap_or_else(|e| panic!("{kind} driver unavailable: {e}"));
        assert_eq!(rt.driver_kind(), kind);
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

/// Wait until `cond` holds, yielding to other tasks between checks (bounded).
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    must(what, async {
        while !cond() {
            multispace_rpc::runtime::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}
