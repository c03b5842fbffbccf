use std::io;
use std::os::fd::RawFd;

use bytes::BytesMut;
use io_uring::{opcode, squeue, types};

use super::{Direction, OpCode};
use crate::sys;

/// Send `buf[pos..]` on a connected socket. Short sends are the caller's to resume.
pub(crate) struct Send {
    pub(crate) fd: RawFd,
    pub(crate) buf: BytesMut,
    pub(crate) pos: usize,
}

impl OpCode for Send {
    type Output = (io::Result<usize>, BytesMut);

    fn direction(&self) -> Direction {
        Direction::Write
    }

    fn uring_entry(&mut self) -> squeue::Entry {
        let rest = &self.buf[self.pos..];
        opcode::Send::new(types::Fd(self.fd), rest.as_ptr(), rest.len() as u32).flags(libc::MSG_NOSIGNAL).build()
    }

    fn try_io(&mut self) -> io::Result<u32> {
        sys::send(self.fd, &self.buf[self.pos..]).map(|n| n as u32)
    }

    fn exhausted(&self, n: u32) -> bool {
        (n as usize) < self.buf.len() - self.pos
    }

    fn complete(self, res: io::Result<u32>) -> Self::Output {
        (res.map(|n| n as usize), self.buf)
    }
}
