use std::io;
use std::os::fd::RawFd;

use bytes::BytesMut;
use io_uring::{opcode, squeue, types};
use socket2::SockAddr;

use super::{Direction, OpCode};
use crate::sys::{self, MsgHdr};

/// Send one datagram to an address.
pub(crate) struct SendTo {
    pub(crate) fd: RawFd,
    pub(crate) buf: BytesMut,
    hdr: Box<MsgHdr>,
}

impl SendTo {
    pub(crate) fn new(fd: RawFd, buf: BytesMut, to: &SockAddr) -> Self {
        let mut hdr = MsgHdr::take();
        hdr.set_dest(to);
        SendTo { fd, buf, hdr }
    }
}

impl OpCode for SendTo {
    type Output = (io::Result<usize>, BytesMut);

    fn direction(&self) -> Direction {
        Direction::Write
    }

    fn uring_entry(&mut self) -> squeue::Entry {
        let (addr, len) = self.hdr.dest();
        opcode::Send::new(types::Fd(self.fd), self.buf.as_ptr(), self.buf.len() as u32)
            .dest_addr(addr)
            .dest_addr_len(len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
    }

    fn try_io(&mut self) -> io::Result<u32> {
        let (addr, len) = self.hdr.dest();
        // SAFETY: `addr` points at `len` initialised bytes of address storage in `self.hdr`.
        unsafe { sys::sendto(self.fd, &self.buf, addr, len) }.map(|n| n as u32)
    }

    fn complete(self, res: io::Result<u32>) -> Self::Output {
        MsgHdr::give_back(self.hdr);
        (res.map(|n| n as usize), self.buf)
    }
}
