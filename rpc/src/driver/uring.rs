//! io_uring backend: one ring per core, SINGLE_ISSUER + DEFER_TASKRUN (completions are run
//! only when this thread enters the kernel, so a spinning core is not interrupted for each
//! one), no SQPOLL, one `io_uring_enter` per loop turn for all queued submissions.

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::task::{Poll, Waker};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;

use super::multishot::{BufRing, MultiData};
use super::Wait;

/// user_data of the core's eventfd read.
const WAKE_TOKEN: u64 = u64::MAX;
/// user_data of cancel requests, whose completions carry nothing we need.
const CANCEL_TOKEN: u64 = u64::MAX - 1;

enum Lifecycle {
    /// Submitted; this task waits for it.
    Waiting(Waker),
    Completed(i32),
    /// The future was dropped; the data the kernel may still touch is parked here until the
    /// completion arrives.
    Abandoned(#[allow(dead_code)] Box<dyn Any>),
    /// A multishot op: completions (result, flags) not yet taken by its owner.
    Multi {
        queue: VecDeque<(i32, u32)>,
        waker: Waker,
    },
    /// A multishot op whose owner is gone; its ring lives until the final completion.
    AbandonedMulti(Box<MultiData>),
}

impl Lifecycle {
    /// The kernel may still post a completion for this op.
    fn outstanding(&self) -> bool {
        match self {
            Lifecycle::Completed(_) => false,
            Lifecycle::Multi { queue, .. } => !queue.iter().any(|&(_, f)| !cqueue::more(f)),
            _ => true,
        }
    }
}

pub(crate) struct UringDriver {
    ring: IoUring,
    ops: Slab<Lifecycle>,
    wake_fd: RawFd,
    /// Target of the eventfd read; boxed so its address is stable for the kernel.
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Buffer-group ids for provided-buffer rings: the next new one, and released ones.
    next_bgid: u16,
    free_bgids: Vec<u16>,
    /// Rings of abandoned multishot ops that finished during a completion pass.
    finished_rings: Vec<MultiData>,
    pub(crate) stats: super::DriverStats,
}

impl UringDriver {
    pub(crate) fn new(wake_fd: RawFd) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_coop_taskrun()
            .setup_cqsize(4096)
            .build(1024)?;
        let mut d = UringDriver {
            ring,
            ops: Slab::with_capacity(256),
            wake_fd,
            wake_buf: Box::new(0),
            wake_armed: false,
            next_bgid: 0,
            free_bgids: Vec::new(),
            finished_rings: Vec::new(),
            stats: super::DriverStats::default(),
        };
        d.arm_wake();
        Ok(d)
    }

    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry pushed here points only at memory that outlives its
            // completion: op data parked in `self.ops` or the boxed `wake_buf`.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                self.stats.submissions += 1;
                return;
            }
            // Queue full: hand what we have to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(error = %e, "io_uring submit failed while the queue was full");
            }
        }
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(self.wake_fd), buf.cast(), 8).build().user_data(WAKE_TOKEN);
        self.push(&entry);
        self.wake_armed = true;
    }

    /// Queue an operation; returns its key.
    pub(crate) fn submit(&mut self, entry: squeue::Entry, waker: Waker) -> usize {
        let key = self.ops.insert(Lifecycle::Waiting(waker));
        self.push(&entry.user_data(key as u64));
        key
    }

    pub(crate) fn poll_op(&mut self, key: usize, waker: &Waker) -> Poll<io::Result<u32>> {
        match &mut self.ops[key] {
            Lifecycle::Completed(res) => {
                let res = *res;
                self.ops.remove(key);
                Poll::Ready(if res < 0 { Err(io::Error::from_raw_os_error(-res)) } else { Ok(res as u32) })
            }
            Lifecycle::Waiting(w) => {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                Poll::Pending
            }
            _ => unreachable!("polled an op in the wrong state"),
        }
    }

    /// Allocate a provided-buffer ring and register it with the kernel.
    pub(crate) fn register_buf_ring(&mut self, count: u16, size: usize) -> io::Result<BufRing> {
        let bgid = match self.free_bgids.pop() {
            Some(b) => b,
            None => {
                let b = self.next_bgid;
                self.next_bgid = b.checked_add(1).ok_or_else(|| io::Error::other("out of buffer-group ids"))?;
                b
            }
        };
        let ring = BufRing::new(bgid, count, size);
        // SAFETY: the entry array is page aligned, holds `count()` entries and stays
        // allocated until `unregister_buf_ring` (or the ring's teardown, after which the kernel
        // no longer touches it): `BufRing` is only dropped after one of those.
        let res = unsafe { self.ring.submitter().register_buf_ring_with_flags(ring.addr(), ring.count(), bgid, 0) };
        if let Err(e) = res {
            self.free_bgids.push(bgid);
            return Err(e);
        }
        Ok(ring)
    }

    /// Unregister a ring no armed op uses; the caller may then drop it.
    pub(crate) fn unregister_buf_ring(&mut self, ring: &BufRing) {
        match self.ring.submitter().unregister_buf_ring(ring.bgid) {
            Ok(()) => self.free_bgids.push(ring.bgid),
            Err(e) => tracing::warn!(error = %e, bgid = ring.bgid, "could not unregister a buffer ring"),
        }
    }

    /// Queue a multishot op; its completions queue up for [`Self::poll_multi`].
    pub(crate) fn submit_multi(&mut self, entry: squeue::Entry, waker: Waker) -> usize {
        let key = self.ops.insert(Lifecycle::Multi { queue: VecDeque::with_capacity(16), waker });
        self.push(&entry.user_data(key as u64));
        key
    }

    /// The next completion of a multishot op, or `None` (and `waker` is kept) if none yet.
    pub(crate) fn poll_multi(&mut self, key: usize, waker: &Waker) -> Option<(i32, u32)> {
        match &mut self.ops[key] {
            Lifecycle::Multi { queue, waker: w } => {
                let next = queue.pop_front();
                if next.is_none() && !w.will_wake(waker) {
                    *w = waker.clone();
                }
                next
            }
            _ => unreachable!("polled a multishot op in the wrong state"),
        }
    }

    /// The owner took the final completion of a multishot op.
    pub(crate) fn finish_multi(&mut self, key: usize) {
        self.ops.remove(key);
    }

    /// Ask the kernel to end a multishot op early; its owner keeps polling it, taking the
    /// completions already queued, until the final one (`-ECANCELED`).
    pub(crate) fn cancel_multi(&mut self, key: usize) {
        if self.ops.get(key).is_some_and(Lifecycle::outstanding) {
            let cancel = opcode::AsyncCancel::new(key as u64).build().user_data(CANCEL_TOKEN);
            self.push(&cancel);
        }
    }

    /// The owner of a multishot op is gone: cancel it and keep its ring until it ends.
    pub(crate) fn abandon_multi(&mut self, key: usize, data: Box<MultiData>) {
        let Some(slot) = self.ops.get_mut(key) else { return };
        if slot.outstanding() {
            *slot = Lifecycle::AbandonedMulti(data);
            let cancel = opcode::AsyncCancel::new(key as u64).build().user_data(CANCEL_TOKEN);
            self.push(&cancel);
        } else {
            // Its final completion is already queued: nothing in flight.
            self.ops.remove(key);
            self.unregister_buf_ring(&data.ring);
        }
    }

    /// The op's future was dropped: park its data and ask the kernel to cancel it.
    pub(crate) fn abandon(&mut self, key: usize, data: Box<dyn Any>) {
        match self.ops.get_mut(key) {
            Some(Lifecycle::Completed(_)) => {
                self.ops.remove(key);
            }
            Some(slot) => {
                *slot = Lifecycle::Abandoned(data);
                let cancel = opcode::AsyncCancel::new(key as u64).build().user_data(CANCEL_TOKEN);
                self.push(&cancel);
            }
            None => {}
        }
    }

    pub(crate) fn take_wakers(&mut self, out: &mut Vec<Waker>) {
        for (_, slot) in self.ops.iter_mut() {
            if let Lifecycle::Waiting(w) | Lifecycle::Multi { waker: w, .. } = slot {
                if !w.will_wake(Waker::noop()) {
                    out.push(std::mem::replace(w, Waker::noop().clone()));
                }
            }
        }
    }

    pub(crate) fn turn(&mut self, wait: Wait) -> io::Result<bool> {
        self.stats.turns += 1;
        if matches!(wait, Wait::Sleep(_)) {
            self.stats.enters += 1;
            self.stats.sleeps += 1;
        }
        let res = match wait {
            Wait::No => {
                let sq = self.ring.submission();
                let idle = sq.is_empty() && !sq.taskrun() && !sq.cq_overflow();
                drop(sq);
                if idle {
                    Ok(0)
                } else {
                    self.stats.enters += 1;
                    self.ring.submit()
                }
            }
            Wait::Sleep(None) => self.ring.submit_and_wait(1),
            Wait::Sleep(Some(d)) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match res {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        let mut woke = false;
        let mut rearm = false;
        for cqe in self.ring.completion() {
            self.stats.completions += 1;
            match cqe.user_data() {
                WAKE_TOKEN => {
                    self.stats.remote_wakes += 1;
                    woke = true;
                    rearm = true;
                }
                CANCEL_TOKEN => {}
                key => {
                    let key = key as usize;
                    let Some(slot) = self.ops.get_mut(key) else { continue };
                    match slot {
                        Lifecycle::Multi { queue, waker } => {
                            queue.push_back((cqe.result(), cqe.flags()));
                            waker.wake_by_ref();
                        }
                        Lifecycle::AbandonedMulti(_) => {
                            if !cqueue::more(cqe.flags()) {
                                if let Lifecycle::AbandonedMulti(data) = self.ops.remove(key) {
                                    self.finished_rings.push(*data);
                                }
                            }
                        }
                        _ => match std::mem::replace(slot, Lifecycle::Completed(cqe.result())) {
                            Lifecycle::Waiting(w) => w.wake(),
                            Lifecycle::Abandoned(_) => {
                                self.ops.remove(key);
                            }
                            _ => {}
                        },
                    }
                }
            }
        }
        if rearm {
            self.wake_armed = false;
            self.arm_wake();
        }
        while let Some(data) = self.finished_rings.pop() {
            self.unregister_buf_ring(&data.ring);
        }
        Ok(woke)
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Parked buffers must outlive the kernel's use of them: cancel everything and reap
        // until no operation is outstanding before the slab (and the buffers) go away.
        let keys: Vec<usize> = self.ops.iter().map(|(k, _)| k).collect();
        for key in keys {
            let cancel = opcode::AsyncCancel::new(key as u64).build().user_data(CANCEL_TOKEN);
            self.push(&cancel);
        }
        let wake = opcode::AsyncCancel::new(WAKE_TOKEN).build().user_data(CANCEL_TOKEN);
        self.push(&wake);
        let mut rounds = 0;
        while self.ops.iter().any(|(_, l)| l.outstanding()) || self.wake_armed {
            if self.ring.submit_and_wait(1).is_err() || rounds > 10_000 {
                break;
            }
            rounds += 1;
            for cqe in self.ring.completion() {
                match cqe.user_data() {
                    WAKE_TOKEN => self.wake_armed = false,
                    CANCEL_TOKEN => {}
                    key => {
                        if let Some(slot) = self.ops.get_mut(key as usize) {
                            let multi = matches!(slot, Lifecycle::Multi { .. } | Lifecycle::AbandonedMulti(_));
                            if !multi || !cqueue::more(cqe.flags()) {
                                *slot = Lifecycle::Completed(cqe.result());
                            }
                        }
                    }
                }
            }
        }
    }
}
