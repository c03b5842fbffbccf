//! A runtime of several cores, one pinned thread each, and the `Send + Sync` handles other
//! threads use to reach them.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle as ThreadHandle, Thread};

use futures_channel::oneshot;

use super::core::{Config, LocalRuntime, Remote, Shared, WaitMode};
use super::executor::spawn;
use crate::driver::DriverChoice;

/// Builds a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    cores: usize,
    pin: bool,
    config: Config,
    name: String,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeBuilder {
    /// One core per available CPU, pinned, default driver and sleeping waits.
    pub fn new() -> Self {
        let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        RuntimeBuilder { cores, pin: true, config: Config::default(), name: "multispace-core".into() }
    }
    /// Number of core threads.
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = n.max(1);
        self
    }
    /// Pin core `i` to the `i`-th CPU the building thread may run on, wrapping around (default
    /// true). The CPUs are those of the building thread's affinity mask, so a thread pinned to
    /// one CPU builds a runtime whose cores all share that CPU (logged as a warning).
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }
    /// Driver choice for every core.
    pub fn driver(mut self, driver: DriverChoice) -> Self {
        self.config.driver = driver;
        self
    }
    /// How idle cores wait.
    pub fn wait(mut self, wait: WaitMode) -> Self {
        self.config.wait = wait;
        self
    }
    /// The connection settings (limits, TLS or plain TCP) `Client::new` and `Server::bind`
    /// use on every core.
    pub fn conn(mut self, conn: crate::ConnConfig) -> Self {
        self.config.conn = conn;
        self
    }
    /// Thread name prefix.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Start the core threads. Fails if any core cannot set up its driver.
    pub fn build(self) -> io::Result<Runtime> {
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        if self.pin && !cpus.is_empty() && cpus.len() < self.cores {
            tracing::warn!(
                cores = self.cores,
                cpus = cpus.len(),
                "more cores than CPUs this thread may run on: pinned cores will share CPUs"
            );
        }
        let mut cores = Vec::with_capacity(self.cores);
        let mut threads = Vec::with_capacity(self.cores);
        for i in 0..self.cores {
            let config = self.config.clone();
            let cpu = (self.pin && !cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let (tx, rx) = std::sync::mpsc::channel();
            let t = thread::Builder::new().name(format!("{}-{i}", self.name)).spawn(move || {
                if let Some(cpu) = cpu {
                    core_affinity::set_for_current(cpu);
                }
                match LocalRuntime::new(config) {
                    Ok(rt) => {
                        let _ = tx.send(Ok((rt.shared(), rt.driver_kind())));
                        rt.run_until_shutdown();
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
            let (shared, kind) = rx.recv().map_err(|_| io::Error::other("core thread died during start"))??;
            cores.push(CoreHandle { shared, index: i, kind });
            threads.push(t);
        }
        Ok(Runtime { cores, threads })
    }
}

/// Several cores, each a pinned thread running its own event loop. Dropping the runtime
/// shuts every core down and joins its thread.
#[derive(Debug)]
pub struct Runtime {
    cores: Vec<CoreHandle>,
    threads: Vec<ThreadHandle<()>>,
}

impl Runtime {
    /// Start a runtime with default settings.
    pub fn new() -> io::Result<Runtime> {
        RuntimeBuilder::new().build()
    }
    /// Handles to every core.
    pub fn cores(&self) -> &[CoreHandle] {
        &self.cores
    }
    /// Handle to core `i`.
    pub fn core(&self, i: usize) -> &CoreHandle {
        &self.cores[i]
    }
    /// Stop every core and wait for its thread. Pending tasks are cancelled.
    pub fn shutdown(mut self) {
        self.stop();
    }
    fn stop(&mut self) {
        for c in &self.cores {
            c.shutdown();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `Send + Sync` handle to one core: run work there from any thread.
#[derive(Clone)]
pub struct CoreHandle {
    pub(crate) shared: Arc<Shared>,
    index: usize,
    kind: crate::driver::DriverKind,
}

impl std::fmt::Debug for CoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreHandle").field("index", &self.index).field("driver", &self.kind).finish()
    }
}

/// The core was shut down before the work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the runtime core shut down before the task finished")]
pub struct CoreGone;

impl CoreHandle {
    /// This core's index in its runtime.
    pub fn index(&self) -> usize {
        self.index
    }
    /// The driver this core runs.
    pub fn driver_kind(&self) -> crate::driver::DriverKind {
        self.kind
    }

    /// Run `f` on the core; it builds a (possibly `!Send`) future that runs there as a task.
    /// The returned future resolves to its output from whatever thread awaits it.
    pub fn spawn<F, Fut>(&self, f: F) -> impl Future<Output = Result<Fut::Output, CoreGone>> + Send + 'static
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.shared.push(Remote::Job(Box::new(move || {
            spawn(async move {
                let _ = tx.send(f().await);
            })
            .detach();
        })));
        async move { rx.await.map_err(|_| CoreGone) }
    }

    /// [`CoreHandle::spawn`] and block this thread until it finishes. Do not call from a core.
    pub fn run<F, Fut>(&self, f: F) -> Result<Fut::Output, CoreGone>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        block_on_thread(self.spawn(f))
    }

    /// Ask the core's loop to stop after its current turn.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.push(Remote::Job(Box::new(super::core::wake_shutdown)));
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Block the current (non-runtime) thread on a future, parking between wake-ups. Meant for
/// plain threads using [`CoreHandle`]s or the thread-safe client handle.
pub fn block_on_thread<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}
