//! One core: its driver, run queue, timer wheel and the loop that turns them.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_task::Runnable;
use crossbeam_queue::SegQueue;

use super::wheel::TimerWheel;
use crate::driver::{Driver, DriverChoice, DriverKind, Wait};
use crate::sys;

/// How a core waits when it has nothing to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitMode {
    /// Sleep in the kernel until I/O, a timer or a remote wake-up (the default).
    #[default]
    Sleep,
    /// Spin on completions without sleeping, for the lowest latency on a dedicated core.
    /// Datagram sockets (UDP rpc servers and client connections awaiting replies, one-way
    /// servers) and TCP connections that carried a frame in the last 50 ms, up to 16 sockets
    /// per core, are then read directly, one non-blocking receive per loop turn, as a
    /// spinning raw socket would be, rather than through the driver; TCP frames and one-way
    /// datagrams are sent directly too. With `idle_after`, fall back to sleeping after that
    /// long without any work (the direct readers then wait on the driver again).
    BusyPoll {
        /// Sleep after this long idle; `None` spins for ever.
        idle_after: Option<Duration>,
    },
}

/// Per-core settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which I/O driver to use.
    pub driver: DriverChoice,
    /// How to wait when idle.
    pub wait: WaitMode,
    /// Tasks run per loop turn before the driver is polled again (fairness for I/O).
    pub tasks_per_turn: usize,
    /// What `Client::new` and `Server::bind` on this core use (limits, and TLS or plain
    /// TCP): a process configures security once per core instead of in every stub.
    pub conn: crate::ConnConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            driver: DriverChoice::Auto,
            wait: WaitMode::Sleep,
            tasks_per_turn: 128,
            conn: crate::ConnConfig::default(),
        }
    }
}

/// Work that reaches a core from another thread.
pub(crate) enum Remote {
    /// A task of this core woken from another thread.
    Task(Runnable),
    /// A closure to run on this core (typically spawning a task there).
    Job(Box<dyn FnOnce() + Send>),
}

/// The part of a core other threads may touch.
pub(crate) struct Shared {
    pub(crate) id: usize,
    queue: SegQueue<Remote>,
    eventfd: OwnedFd,
    notified: AtomicBool,
    pub(crate) shutdown: AtomicBool,
    /// Set once the core's loop is gone (stopped, or its thread panicked): nothing pushed
    /// after that would ever run, so it is dropped at once and waiters see `CoreGone`.
    closed: AtomicBool,
}

impl Shared {
    pub(crate) fn push(&self, item: Remote) {
        self.queue.push(item);
        // Pushed before `close` drained: it drained this too. Pushed after: drop it here.
        if self.closed.load(Ordering::SeqCst) {
            while let Some(item) = self.queue.pop() {
                match item {
                    Remote::Job(job) => drop(job),
                    // A task woken after its core died: its future may be `!Send`, so it
                    // must not be dropped on this thread; leak it.
                    Remote::Task(r) => std::mem::forget(r),
                }
            }
            return;
        }
        self.notify();
    }

    /// Marks the core gone and drops what waits in its queue. Runs on the core's thread
    /// after its tasks were cancelled, so no task future is dropped on a foreign thread.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        while let Some(item) = self.queue.pop() {
            drop(item);
        }
    }

    pub(crate) fn notify(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            sys::eventfd_write(self.eventfd.as_raw_fd());
        }
    }
}

pub(crate) struct Core {
    pub(crate) shared: Arc<Shared>,
    pub(crate) driver: RefCell<Driver>,
    run_queue: RefCell<VecDeque<Runnable>>,
    timers: RefCell<TimerWheel<Waker>>,
    /// The wakers of timers that just fired, kept between turns so firing does not allocate.
    fired: RefCell<Vec<Waker>>,
    /// Busy-poll only: tasks polling a socket directly, run again next turn ([`spin_yield`]).
    spinners: RefCell<Vec<Waker>>,
    /// Spinner tasks resumed by this turn's `run_ready`: polls of theirs are not work (a
    /// `block_on` future spinning is polled outside it, so it is not counted).
    resumed: Cell<usize>,
    in_run_ready: Cell<bool>,
    /// A spinner found something this turn.
    worked: Cell<bool>,
    /// Direct read attempts in the turns since the driver was last polled (see
    /// [`POLL_EVERY_DIRECT_READS`]).
    unpolled_reads: Cell<usize>,
    /// `block_on` polled its future since the last turn (work the run queue does not see).
    main_polled: Cell<bool>,
    /// The loop's clock: read by the first `turn_now` of a turn's tasks, and after they ran;
    /// and when the core last did any work.
    now: Cell<Option<Instant>>,
    idle_since: Cell<Instant>,
    start: Instant,
    config: Config,
}

static NEXT_CORE_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
    static CURRENT_ID: Cell<usize> = const { Cell::new(0) };
}

/// Busy-poll mode: yield until the next loop turn, for a task that polls a socket directly
/// (a syscall per turn, no driver round trip). Callers check [`spinning`] first and wait on
/// the driver instead once it is false, so an idle core can still fall asleep.
pub(crate) async fn spin_yield() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            with_core(|c| {
                if c.in_run_ready.get() {
                    c.resumed.set(c.resumed.get() + 1);
                }
            });
            return Poll::Ready(());
        }
        yielded = true;
        with_core(|c| c.spinners.borrow_mut().push(cx.waker().clone()));
        Poll::Pending
    })
    .await
}

/// Sockets a core reads directly at most: each costs a syscall per turn, so past this many
/// the rest wait on the driver, whose readiness scales (one enter for any number).
const MAX_SPINNERS: usize = 16;

/// Busy-poll with sockets read directly: in turns where nothing happened but those reads, a
/// driver whose poll is a syscall of its own (epoll) is polled once per this many of them rather
/// than every turn, so a spinning core spends about one syscall per read of its hot sockets, as
/// a raw spinning loop does. Readiness of the other sockets comes at most this many empty reads
/// late (a turn that ran any task polls); nothing is lost, since epoll keeps the events until
/// polled, and remote wake-ups are seen through their queue.
const POLL_EVERY_DIRECT_READS: usize = 8;

/// True if a task may read its socket directly this turn: the core busy-polls right now (see
/// [`Core::spinning`]) and not too many others already do.
pub(crate) fn spinning() -> bool {
    with_core(|c| c.spinning() && c.spinners.borrow().len() < MAX_SPINNERS)
}

/// True if the current core is configured to busy-poll (even if idle right now).
pub(crate) fn busy_poll_mode() -> bool {
    with_core(Core::busy_poll_mode)
}

/// Now, to within one turn of the current core's loop (see [`Core::turn_now`]): for times
/// that need no better, without a clock read per use.
pub(crate) fn turn_now() -> Instant {
    with_core(Core::turn_now)
}

/// True if tasks of the current core are waiting to run in this turn.
pub(crate) fn has_ready_tasks() -> bool {
    with_core(|c| !c.run_queue.borrow().is_empty())
}

/// A spinner read a datagram: the core is not idle.
pub(crate) fn note_direct_read() {
    with_core(|c| {
        c.worked.set(true);
        c.driver.borrow_mut().stats_mut().direct_reads += 1;
    });
}

/// Run `f` with the current core.
///
/// # Panics
/// Outside a runtime core.
pub(crate) fn with_core<R>(f: impl FnOnce(&Core) -> R) -> R {
    CURRENT.with(|c| {
        let c = c.borrow();
        let core = c.as_ref().expect("not inside a multispace runtime core (use LocalRuntime::block_on or Runtime)");
        f(core)
    })
}

/// The I/O driver of the core the caller runs on (`None` outside a runtime core).
pub fn current_driver() -> Option<DriverKind> {
    CURRENT.with(|c| c.borrow().as_ref().map(|core| core.driver.borrow().kind()))
}

/// What the current core's I/O driver has done so far; `None` outside a core.
pub fn current_driver_stats() -> Option<crate::driver::DriverStats> {
    CURRENT.with(|c| c.borrow().as_ref().map(|core| core.driver.borrow().stats()))
}

pub(crate) fn with_driver<R>(f: impl FnOnce(&mut Driver) -> R) -> R {
    with_core(|c| f(&mut c.driver.borrow_mut()))
}

/// Like [`with_core`], but does nothing outside a core.
pub(crate) fn try_with_core(f: impl FnOnce(&Core)) {
    let _ = CURRENT.try_with(|c| {
        if let Ok(c) = c.try_borrow() {
            if let Some(core) = c.as_ref() {
                f(core);
            }
        }
    });
}

/// Like [`with_driver`], but does nothing outside a core or while the core is being torn down.
pub(crate) fn try_with_driver(f: impl FnOnce(&mut Driver)) {
    let _ = CURRENT.try_with(|c| {
        if let Ok(c) = c.try_borrow() {
            if let Some(core) = c.as_ref() {
                if let Ok(mut d) = core.driver.try_borrow_mut() {
                    f(&mut d);
                }
            }
        }
    });
}

/// Schedule a runnable: locally if we are on its core, else through the remote queue.
pub(crate) fn schedule(shared: &Arc<Shared>, r: Runnable) {
    if CURRENT_ID.try_with(Cell::get).unwrap_or(0) == shared.id {
        let pushed = CURRENT.try_with(|c| {
            if let Ok(c) = c.try_borrow() {
                if let Some(core) = c.as_ref() {
                    core.run_queue.borrow_mut().push_back(r);
                    return None;
                }
            }
            Some(r)
        });
        // The core is gone (thread exiting): dropping the runnable cancels the task.
        drop(pushed);
        return;
    }
    shared.push(Remote::Task(r));
}

impl Core {
    fn new(config: Config) -> io::Result<Core> {
        let eventfd = sys::eventfd()?;
        let driver = Driver::new(config.driver, eventfd.as_raw_fd())?;
        let shared = Arc::new(Shared {
            id: NEXT_CORE_ID.fetch_add(1, Ordering::Relaxed),
            queue: SegQueue::new(),
            eventfd,
            notified: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        Ok(Core {
            shared,
            driver: RefCell::new(driver),
            run_queue: RefCell::new(VecDeque::with_capacity(256)),
            timers: RefCell::new(TimerWheel::new(0)),
            fired: RefCell::new(Vec::with_capacity(64)),
            spinners: RefCell::new(Vec::with_capacity(8)),
            resumed: Cell::new(0),
            in_run_ready: Cell::new(false),
            worked: Cell::new(false),
            unpolled_reads: Cell::new(0),
            main_polled: Cell::new(false),
            now: Cell::new(None),
            idle_since: Cell::new(Instant::now()),
            start: Instant::now(),
            config,
        })
    }

    /// Milliseconds since the core started, rounded up (timers never fire early).
    pub(crate) fn tick_ceil(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start);
        (d.as_nanos().div_ceil(1_000_000)) as u64
    }

    fn tick_floor(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    /// The timer wheel. Callers must not hold it across a wake (fire_timers wakes after release).
    pub(crate) fn timers(&self) -> std::cell::RefMut<'_, TimerWheel<Waker>> {
        self.timers.borrow_mut()
    }

    fn run_ready(&self) -> usize {
        let mut n = 0;
        self.in_run_ready.set(true);
        while n < self.config.tasks_per_turn {
            let next = self.run_queue.borrow_mut().pop_front();
            let Some(r) = next else { break };
            r.run();
            n += 1;
        }
        self.in_run_ready.set(false);
        n
    }

    fn drain_remote(&self) {
        // Swap (not store) so that pushes made before a notifier saw `true` are visible here.
        self.shared.notified.swap(false, Ordering::AcqRel);
        while let Some(item) = self.shared.queue.pop() {
            match item {
                Remote::Task(r) => self.run_queue.borrow_mut().push_back(r),
                Remote::Job(job) => job(),
            }
        }
    }

    fn fire_timers(&self, now: Instant) {
        let tick = self.tick_floor(now);
        let mut fired = self.fired.borrow_mut();
        self.timers.borrow_mut().advance(tick, &mut |_, w: Waker| fired.push(w));
        if fired.is_empty() {
            return;
        }
        // Taken out while waking: a waker may run code that fires timers again.
        let mut batch = std::mem::take(&mut *fired);
        drop(fired);
        batch.drain(..).for_each(Waker::wake);
        *self.fired.borrow_mut() = batch;
    }

    fn sleep_timeout(&self, now: Instant) -> Option<Duration> {
        let next = self.timers.borrow().next_deadline()?;
        let at = self.start + Duration::from_millis(next);
        Some(at.saturating_duration_since(now))
    }

    /// Cancel every task of this core. Runs with the core current, so dropped I/O futures can
    /// park their buffers in the driver. Tasks are owned by the wakers that the driver, the
    /// timers and the queues hold; dropping those reschedules the tasks for destruction, and
    /// dropping their runnables drops the futures, which may release more wakers: repeat
    /// until nothing is left.
    fn cancel_all(&self) {
        for _ in 0..1000 {
            let mut wakers = Vec::new();
            self.driver.borrow_mut().take_wakers(&mut wakers);
            self.timers.borrow_mut().advance(u64::MAX, &mut |_, w| wakers.push(w));
            let dropped_wakers = !wakers.is_empty();
            drop(wakers);
            let mut runnables: Vec<Runnable> = self.run_queue.borrow_mut().drain(..).collect();
            while let Some(item) = self.shared.queue.pop() {
                if let Remote::Task(r) = item {
                    runnables.push(r);
                }
            }
            if runnables.is_empty() && !dropped_wakers {
                return;
            }
            drop(runnables);
        }
        tracing::warn!("tasks still alive after core teardown");
    }

    /// One loop turn: run ready tasks, fire timers, then reap I/O (sleeping for it only if
    /// nothing is ready and the core is not busy-polling).
    fn turn(&self, main_ready: &AtomicBool) -> io::Result<()> {
        // Tasks read the clock lazily (`turn_now`), at most once per turn.
        self.now.set(None);
        let ran = self.run_ready();
        let now = Instant::now();
        self.now.set(Some(now));
        // A spinner's empty poll is not work, or a busy-polling core would never fall asleep.
        let worked = self.worked.take();
        let busy = ran > self.resumed.take() || worked;
        if busy {
            self.idle_since.set(now);
        }
        let main_polled = self.main_polled.take();
        self.fire_timers(now);
        let spinners = self.spinners.borrow().len();
        let has_spinners = spinners > 0;
        let ready = has_spinners || !self.run_queue.borrow().is_empty() || main_ready.load(Ordering::Acquire);
        let wait = if ready || self.spinning() { Wait::No } else { Wait::Sleep(self.sleep_timeout(now)) };
        let spin_only = has_spinners && !busy && !main_polled;
        let unpolled = self.unpolled_reads.get() + spinners;
        let woke = if spin_only && unpolled < POLL_EVERY_DIRECT_READS && !self.driver.borrow().idle_turn_is_free() {
            self.unpolled_reads.set(unpolled);
            self.driver.borrow_mut().skip_turn();
            false
        } else {
            self.unpolled_reads.set(0);
            self.driver.borrow_mut().turn(wait)?
        };
        // Spinners run again next turn: they poll their socket once more, or (the core going
        // idle) fall back to waiting on the driver.
        if has_spinners {
            let mut spinners = std::mem::take(&mut *self.spinners.borrow_mut());
            spinners.drain(..).for_each(Waker::wake);
            *self.spinners.borrow_mut() = spinners;
        }
        if woke || !self.shared.queue.is_empty() {
            self.drain_remote();
        }
        Ok(())
    }

    /// True while the core busy-polls: in busy-poll mode and not idle past `idle_after`.
    pub(crate) fn spinning(&self) -> bool {
        match self.config.wait {
            WaitMode::Sleep => false,
            WaitMode::BusyPoll { idle_after: None } => true,
            WaitMode::BusyPoll { idle_after: Some(d) } => self.turn_now().duration_since(self.idle_since.get()) < d,
        }
    }

    /// Now, to within the time this turn's tasks have run so far (one clock read per turn),
    /// for coarse uses: lingering, sweeps, idle timers.
    pub(crate) fn turn_now(&self) -> Instant {
        self.now.get().unwrap_or_else(|| {
            let now = Instant::now();
            self.now.set(Some(now));
            now
        })
    }

    pub(crate) fn busy_poll_mode(&self) -> bool {
        matches!(self.config.wait, WaitMode::BusyPoll { .. })
    }
}

/// Marks the thread as running `core` until dropped.
struct Enter {
    prev: Option<Rc<Core>>,
    prev_id: usize,
}

impl Enter {
    fn new(core: Rc<Core>) -> Enter {
        let id = core.shared.id;
        let prev = CURRENT.with(|c| c.borrow_mut().replace(core));
        let prev_id = CURRENT_ID.with(|c| c.replace(id));
        Enter { prev, prev_id }
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let core = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), self.prev.take()));
        CURRENT_ID.with(|c| c.set(self.prev_id));
        drop(core);
    }
}

/// A single-core runtime on the current thread.
///
/// ```no_run
/// use multispace_rpc::runtime::LocalRuntime;
/// let rt = LocalRuntime::new(Default::default()).unwrap();
/// let v = rt.block_on(async { 1 + 1 });
/// assert_eq!(v, 2);
/// ```
pub struct LocalRuntime {
    core: Rc<Core>,
}

impl std::fmt::Debug for LocalRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRuntime").field("driver", &self.driver_kind()).finish()
    }
}

impl LocalRuntime {
    /// Set up a core (its driver, eventfd and timers) on this thread.
    pub fn new(config: Config) -> io::Result<LocalRuntime> {
        crate::rpc::conn::set_core_default(config.conn.clone());
        Ok(LocalRuntime { core: Rc::new(Core::new(config)?) })
    }

    /// The I/O driver this core picked.
    pub fn driver_kind(&self) -> DriverKind {
        self.core.driver.borrow().kind()
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.core.shared.clone()
    }

    /// Run the event loop until `future` completes; other spawned tasks run alongside it and
    /// stay (paused) when it returns. Dropping the runtime cancels them.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _enter = Enter::new(self.core.clone());
        let woken = Arc::new(AtomicBool::new(true));
        let waker = Waker::from(Arc::new(MainWaker { woken: woken.clone(), shared: self.core.shared.clone() }));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        // The clock of an earlier `block_on` may be long stale.
        self.core.now.set(None);
        loop {
            if woken.swap(false, Ordering::AcqRel) {
                self.core.main_polled.set(true);
                if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                    return v;
                }
            }
            if let Err(e) = self.core.turn(&woken) {
                // The driver failing is not recoverable for this core.
                panic!("multispace core driver failed: {e}");
            }
        }
    }

    /// Run the loop until [`CoreHandle::shutdown`] is called for this core.
    pub(crate) fn run_until_shutdown(&self) {
        let shared = self.core.shared.clone();
        self.block_on(std::future::poll_fn(move |cx| {
            if shared.shutdown.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                SHUTDOWN_WAKER.with(|w| *w.borrow_mut() = Some(cx.waker().clone()));
                Poll::Pending
            }
        }))
    }
}

/// Runs on the core (as a remote job) to let `run_until_shutdown` see the flag.
pub(crate) fn wake_shutdown() {
    if let Some(w) = SHUTDOWN_WAKER.with(|w| w.borrow_mut().take()) {
        w.wake();
    }
}

impl Drop for LocalRuntime {
    fn drop(&mut self) {
        let _enter = Enter::new(self.core.clone());
        self.core.cancel_all();
        self.core.shared.close();
    }
}

thread_local! {
    static SHUTDOWN_WAKER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// Wakes the `block_on` future, from any thread.
struct MainWaker {
    woken: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl std::task::Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if CURRENT_ID.try_with(Cell::get).unwrap_or(0) != self.shared.id {
            self.shared.notify();
        }
    }
}
