//! io_uring backend: one ring per core, SINGLE_ISSUER + DEFER_TASKRUN (completions are run
//! only when this thread enters the kernel, so a spinning core is not interrupted for each
//! one), no SQPOLL, one `io_uring_enter` per loop turn for all queued submissions.

use std::any::Any;
use std::io;
use std::os::fd::RawFd;
use std::task::{Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;

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
}

pub(crate) struct UringDriver {
    ring: IoUring,
    ops: Slab<Lifecycle>,
    wake_fd: RawFd,
    /// Target of the eventfd read; boxed so its address is stable for the kernel.
    wake_buf: Box<u64>,
    wake_armed: bool,
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
        let mut d =
            UringDriver { ring, ops: Slab::with_capacity(256), wake_fd, wake_buf: Box::new(0), wake_armed: false };
        d.arm_wake();
        Ok(d)
    }

    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry pushed here points only at memory that outlives its
            // completion: op data parked in `self.ops` or the boxed `wake_buf`.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
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
            Lifecycle::Abandoned(_) => unreachable!("polled an abandoned op"),
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
            if let Lifecycle::Waiting(w) = slot {
                if !w.will_wake(Waker::noop()) {
                    out.push(std::mem::replace(w, Waker::noop().clone()));
                }
            }
        }
    }

    pub(crate) fn turn(&mut self, wait: Wait) -> io::Result<bool> {
        let res = match wait {
            Wait::No => {
                let sq = self.ring.submission();
                let idle = sq.is_empty() && !sq.taskrun() && !sq.cq_overflow();
                drop(sq);
                if idle {
                    Ok(0)
                } else {
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
            match cqe.user_data() {
                WAKE_TOKEN => {
                    woke = true;
                    rearm = true;
                }
                CANCEL_TOKEN => {}
                key => {
                    let key = key as usize;
                    let Some(slot) = self.ops.get_mut(key) else { continue };
                    match std::mem::replace(slot, Lifecycle::Completed(cqe.result())) {
                        Lifecycle::Waiting(w) => w.wake(),
                        Lifecycle::Abandoned(_) => {
                            self.ops.remove(key);
                        }
                        Lifecycle::Completed(_) => {}
                    }
                }
            }
        }
        if rearm {
            self.wake_armed = false;
            self.arm_wake();
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
        while self.ops.iter().any(|(_, l)| !matches!(l, Lifecycle::Completed(_))) || self.wake_armed {
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
                            *slot = Lifecycle::Completed(cqe.result());
                        }
                    }
                }
            }
        }
    }
}
