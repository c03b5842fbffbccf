use std::io;
use std::os::fd::RawFd;

use bytes::BytesMut;
use io_uring::{opcode, squeue, types};

use super::{Direction, OpCode};
use crate::sys;

/// Receive from a stream socket into the spare capacity of an owned buffer.
pub(crate) struct Recv {
    pub(crate) fd: RawFd,
    /// Owned so the kernel's target memory outlives a dropped future.
    pub(crate) buf: BytesMut,
}

impl Recv {
    fn spare(&mut self) -> (*mut u8, usize) {
        let spare = self.buf.spare_capacity_mut();
        (spare.as_mut_ptr().cast(), spare.len())
    }
}

impl OpCode for Recv {
    type Output = (io::Result<usize>, BytesMut);

    fn direction(&self) -> Direction {
        Direction::Read
    }

    fn uring_entry(&mut self) -> squeue::Entry {
        let (ptr, len) = self.spare();
        opcode::Recv::new(types::Fd(self.fd), ptr, len as u32).build()
    }

    fn try_io(&mut self) -> io::Result<u32> {
        let (ptr, len) = self.spare();
        // SAFETY: `ptr..ptr+len` is the unused capacity of `self.buf`, exclusively ours.
        unsafe { sys::recv(self.fd, ptr, len) }.map(|n| n as u32)
    }

    fn exhausted(&self, n: u32) -> bool {
        // 0 is end of stream, which stays readable.
        n > 0 && (n as usize) < self.buf.capacity() - self.buf.len()
    }

    fn complete(mut self, res: io::Result<u32>) -> Self::Output {
        let res = res.map(|n| {
            let n = n as usize;
            debug_assert!(n <= self.buf.capacity() - self.buf.len());
            // SAFETY: the kernel initialised `n` bytes of the spare capacity we handed it.
            unsafe { self.buf.set_len(self.buf.len() + n) };
            n
        });
        (res, self.buf)
    }
}
