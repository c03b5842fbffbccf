//! I/O drivers: io_uring and epoll (mio) behind one interface.
//!
//! Contract, shared by both backends:
//! - A driver belongs to one core thread and is never touched from another thread; the only
//!   cross-thread entry is the core's eventfd, which both drivers watch.
//! - An I/O operation is one `op::OpCode` type that knows how to build its io_uring entry and
//!   how to attempt itself non-blockingly for epoll. `op::Op` is the future that drives it on
//!   whichever backend the core runs.
//! - Buffers handed to the kernel are owned by the operation. If the future is dropped before
//!   the kernel completes, the operation's data is parked in the driver until its completion
//!   arrives (io_uring), so the kernel never writes into freed memory.
//! - `Driver::turn` submits queued work, waits (or not) according to `Wait`, and wakes the
//!   tasks whose operations completed or whose sockets became ready.

pub(crate) mod epoll;
pub(crate) mod multishot;
pub(crate) mod op;
pub(crate) mod uring;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Which I/O backend a core runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriverKind {
    /// io_uring, set up with SINGLE_ISSUER and DEFER_TASKRUN.
    Uring,
    /// epoll through mio: the fallback where io_uring is unavailable or forbidden.
    Epoll,
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriverKind::Uring => "io_uring",
            DriverKind::Epoll => "epoll",
        })
    }
}

/// How to pick the driver at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DriverChoice {
    /// io_uring if the kernel allows it, else epoll. `MULTISPACE_DRIVER=uring|epoll` overrides.
    #[default]
    Auto,
    /// Exactly this driver; fail if it cannot be set up.
    Force(DriverKind),
}

impl DriverChoice {
    /// Resolve `Auto` against the `MULTISPACE_DRIVER` environment variable.
    pub(crate) fn resolve_env(self) -> Result<DriverChoice, io::Error> {
        if self != DriverChoice::Auto {
            return Ok(self);
        }
        match std::env::var("MULTISPACE_DRIVER").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(DriverChoice::Auto),
            Ok("uring") | Ok("io_uring") => Ok(DriverChoice::Force(DriverKind::Uring)),
            Ok("epoll") => Ok(DriverChoice::Force(DriverKind::Epoll)),
            Ok(other) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MULTISPACE_DRIVER={other}: expected uring, epoll or auto"),
            )),
        }
    }
}

/// What a core's I/O driver has done since the core started (for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Event-loop turns.
    pub turns: u64,
    /// Turns that entered the kernel (`io_uring_enter` or `epoll_wait`; io_uring only when it
    /// has work to submit or reap; epoll on every turn but busy-polling turns that did nothing
    /// but read sockets directly, where it polls once per 8 such reads).
    pub enters: u64,
    /// Of those, turns that were allowed to sleep (nothing ready, not busy-polling).
    pub sleeps: u64,
    /// Operations handed to the kernel (io_uring submission entries; 0 for epoll).
    pub submissions: u64,
    /// Completions (io_uring) or readiness events (epoll) reaped.
    pub completions: u64,
    /// Wake-ups from other threads through the core's eventfd.
    pub remote_wakes: u64,
    /// Datagrams read directly by busy-polling tasks, without the driver.
    pub direct_reads: u64,
}

/// How long one driver turn may block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Submit and reap without sleeping (busy-poll, or tasks are ready).
    No,
    /// Sleep in the kernel until an event arrives or the timeout (if any) passes.
    Sleep(Option<Duration>),
}

/// Handle on a socket's registration with the driver (epoll needs a token; io_uring nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration(pub(crate) Option<usize>);

// One per core, created once and never moved around, so the size gap between variants costs
// nothing, while boxing would add a pointer chase to every operation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Driver {
    Uring(uring::UringDriver),
    Epoll(epoll::EpollDriver),
}

static LOGGED: std::sync::Once = std::sync::Once::new();

impl Driver {
    /// Build the driver for this core. `wake_fd` is the core's eventfd (cross-thread wake-ups).
    pub(crate) fn new(choice: DriverChoice, wake_fd: RawFd) -> io::Result<Driver> {
        let choice = choice.resolve_env()?;
        let driver = match choice {
            DriverChoice::Force(DriverKind::Uring) => Driver::Uring(uring::UringDriver::new(wake_fd)?),
            DriverChoice::Force(DriverKind::Epoll) => Driver::Epoll(epoll::EpollDriver::new(wake_fd)?),
            DriverChoice::Auto => match uring::UringDriver::new(wake_fd) {
                Ok(d) => Driver::Uring(d),
                Err(e) => {
                    LOGGED.call_once(|| tracing::info!(error = %e, "io_uring unavailable; using the epoll driver"));
                    Driver::Epoll(epoll::EpollDriver::new(wake_fd)?)
                }
            },
        };
        LOGGED.call_once(|| tracing::info!(driver = %driver.kind(), "multispace I/O driver selected"));
        Ok(driver)
    }

    pub(crate) fn kind(&self) -> DriverKind {
        match self {
            Driver::Uring(_) => DriverKind::Uring,
            Driver::Epoll(_) => DriverKind::Epoll,
        }
    }

    /// Whether a turn that must not sleep costs no syscall when nothing happened: io_uring
    /// checks its rings in memory; epoll must ask the kernel.
    pub(crate) fn idle_turn_is_free(&self) -> bool {
        matches!(self, Driver::Uring(_))
    }

    /// A loop turn that leaves the driver unpolled (counted as a turn, not an enter).
    pub(crate) fn skip_turn(&mut self) {
        self.stats_mut().turns += 1;
    }

    /// Submit, wait per `wait`, and wake tasks. Returns true when the core's eventfd fired.
    pub(crate) fn turn(&mut self, wait: Wait) -> io::Result<bool> {
        match self {
            Driver::Uring(d) => d.turn(wait),
            Driver::Epoll(d) => d.turn(wait),
        }
    }

    /// The counters, for the core to add what it does outside the driver.
    pub(crate) fn stats_mut(&mut self) -> &mut DriverStats {
        match self {
            Driver::Uring(d) => &mut d.stats,
            Driver::Epoll(d) => &mut d.stats,
        }
    }

    /// Counters since the core started.
    pub(crate) fn stats(&self) -> DriverStats {
        match self {
            Driver::Uring(d) => d.stats,
            Driver::Epoll(d) => d.stats,
        }
    }

    /// Hand over every waker the driver holds (core teardown).
    pub(crate) fn take_wakers(&mut self, out: &mut Vec<std::task::Waker>) {
        match self {
            Driver::Uring(d) => d.take_wakers(out),
            Driver::Epoll(d) => d.take_wakers(out),
        }
    }

    pub(crate) fn register(&mut self, fd: RawFd) -> io::Result<Registration> {
        match self {
            Driver::Uring(_) => Ok(Registration(None)),
            Driver::Epoll(d) => d.register(fd).map(|t| Registration(Some(t))),
        }
    }

    pub(crate) fn deregister(&mut self, fd: RawFd, reg: Registration) {
        if let (Driver::Epoll(d), Some(token)) = (self, reg.0) {
            d.deregister(fd, token);
        }
    }
}
