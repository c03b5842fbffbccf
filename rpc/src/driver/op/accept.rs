use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::{Direction, OpCode};
use crate::sys;

/// Accept one connection; the new socket is non-blocking and close-on-exec.
pub(crate) struct Accept {
    pub(crate) fd: RawFd,
}

impl OpCode for Accept {
    type Output = io::Result<RawFd>;

    fn direction(&self) -> Direction {
        Direction::Read
    }

    fn uring_entry(&mut self) -> squeue::Entry {
        opcode::Accept::new(types::Fd(self.fd), std::ptr::null_mut(), std::ptr::null_mut())
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
    }

    fn try_io(&mut self) -> io::Result<u32> {
        sys::accept(self.fd).map(|fd| fd as u32)
    }

    fn complete(self, res: io::Result<u32>) -> io::Result<RawFd> {
        res.map(|fd| fd as RawFd)
    }
}
