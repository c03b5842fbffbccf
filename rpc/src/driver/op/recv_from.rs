use std::io;
use std::os::fd::RawFd;

use bytes::BytesMut;
use io_uring::{opcode, squeue, types};
use socket2::SockAddr;

use super::{Direction, OpCode};
use crate::sys::{self, MsgHdr};

/// Receive one datagram and its source address into the spare capacity of an owned buffer.
pub(crate) struct RecvFrom {
    pub(crate) fd: RawFd,
    pub(crate) buf: BytesMut,
    /// msghdr, iovec and address storage; boxed (and pooled) so the kernel's pointers into it
    /// stay valid however the op moves.
    hdr: Box<MsgHdr>,
}

impl RecvFrom {
    pub(crate) fn new(fd: RawFd, buf: BytesMut) -> Self {
        RecvFrom { fd, buf, hdr: MsgHdr::take() }
    }

    fn prepare(&mut self) -> *mut libc::msghdr {
        let spare = self.buf.spare_capacity_mut();
        self.hdr.prepare_recv(spare.as_mut_ptr().cast(), spare.len())
    }
}

impl OpCode for RecvFrom {
    type Output = (io::Result<(usize, SockAddr)>, BytesMut);

    fn direction(&self) -> Direction {
        Direction::Read
    }

    fn uring_entry(&mut self) -> squeue::Entry {
        let msg = self.prepare();
        opcode::RecvMsg::new(types::Fd(self.fd), msg).build()
    }

    fn try_io(&mut self) -> io::Result<u32> {
        let msg = self.prepare();
        // SAFETY: `msg` points into `self.hdr`, set up over our buffer's spare capacity.
        unsafe { sys::recvmsg(self.fd, msg) }.map(|n| n as u32)
    }

    fn complete(mut self, res: io::Result<u32>) -> Self::Output {
        let res = res.and_then(|n| {
            let n = n as usize;
            if self.hdr.truncated() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "datagram truncated"));
            }
            // SAFETY: the kernel initialised `n` bytes of the spare capacity we handed it.
            unsafe { self.buf.set_len(self.buf.len() + n) };
            Ok((n, self.hdr.source()))
        });
        MsgHdr::give_back(self.hdr);
        (res, self.buf)
    }
}
