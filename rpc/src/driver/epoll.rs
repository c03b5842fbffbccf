//! epoll backend (mio): readiness-based. An op first tries its syscall; on `WouldBlock` its
//! task waits for the socket's readiness in that direction and tries again when woken.

use std::io;
use std::os::fd::RawFd;
use std::task::Waker;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::op::Direction;
use super::Wait;
use crate::sys;

const WAKE: Token = Token(usize::MAX);

struct ScheduledIo {
    readers: Vec<Waker>,
    writers: Vec<Waker>,
    /// Whether an attempt in each direction may succeed. Starts true (unknown), cleared on
    /// `WouldBlock` or a short transfer, set again by the next edge.
    read_ready: bool,
    write_ready: bool,
    /// Sticky: the peer closed or the socket failed. Such an edge may have arrived together
    /// with data that a short read then consumed; the next attempt must still see the end.
    closed: bool,
}

impl Default for ScheduledIo {
    fn default() -> Self {
        ScheduledIo { readers: Vec::new(), writers: Vec::new(), read_ready: true, write_ready: true, closed: false }
    }
}

fn add_waker(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

pub(crate) struct EpollDriver {
    poll: Poll,
    events: Events,
    io: Slab<ScheduledIo>,
    wake_fd: RawFd,
    pub(crate) stats: super::DriverStats,
}

impl EpollDriver {
    pub(crate) fn new(wake_fd: RawFd) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry().register(&mut SourceFd(&wake_fd), WAKE, Interest::READABLE)?;
        let events = Events::with_capacity(256);
        Ok(EpollDriver { poll, events, io: Slab::new(), wake_fd, stats: super::DriverStats::default() })
    }

    pub(crate) fn register(&mut self, fd: RawFd) -> io::Result<usize> {
        let entry = self.io.vacant_entry();
        let token = entry.key();
        self.poll.registry().register(&mut SourceFd(&fd), Token(token), Interest::READABLE | Interest::WRITABLE)?;
        entry.insert(ScheduledIo::default());
        Ok(token)
    }

    pub(crate) fn deregister(&mut self, fd: RawFd, token: usize) {
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        if let Some(io) = self.io.try_remove(token) {
            // Anyone still waiting learns of the close when their op retries.
            io.readers.into_iter().chain(io.writers).for_each(Waker::wake);
        }
    }

    pub(crate) fn wait_ready(&mut self, token: usize, dir: Direction, waker: &Waker) {
        if let Some(io) = self.io.get_mut(token) {
            match dir {
                Direction::Read => add_waker(&mut io.readers, waker),
                Direction::Write => add_waker(&mut io.writers, waker),
            }
        }
    }

    /// False only when the last attempt showed the direction exhausted and no edge came since.
    pub(crate) fn is_ready(&self, token: usize, dir: Direction) -> bool {
        self.io.get(token).is_none_or(|io| {
            io.closed
                || match dir {
                    Direction::Read => io.read_ready,
                    Direction::Write => io.write_ready,
                }
        })
    }

    pub(crate) fn clear_ready(&mut self, token: usize, dir: Direction) {
        if let Some(io) = self.io.get_mut(token) {
            match dir {
                Direction::Read => io.read_ready = false,
                Direction::Write => io.write_ready = false,
            }
        }
    }

    pub(crate) fn take_wakers(&mut self, out: &mut Vec<Waker>) {
        for (_, io) in self.io.iter_mut() {
            out.append(&mut io.readers);
            out.append(&mut io.writers);
        }
    }

    pub(crate) fn turn(&mut self, wait: Wait) -> io::Result<bool> {
        self.stats.turns += 1;
        self.stats.enters += 1;
        let timeout = match wait {
            Wait::No => Some(std::time::Duration::ZERO),
            Wait::Sleep(t) => {
                self.stats.sleeps += 1;
                t
            }
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut woke = false;
        for ev in self.events.iter() {
            self.stats.completions += 1;
            if ev.token() == WAKE {
                self.stats.remote_wakes += 1;
                sys::eventfd_drain(self.wake_fd);
                woke = true;
                continue;
            }
            let Some(io) = self.io.get_mut(ev.token().0) else { continue };
            let failed = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
            io.closed |= failed;
            if ev.is_readable() || failed {
                io.read_ready = true;
                io.readers.drain(..).for_each(Waker::wake);
            }
            if ev.is_writable() || failed {
                io.write_ready = true;
                io.writers.drain(..).for_each(Waker::wake);
            }
        }
        Ok(woke)
    }
}
