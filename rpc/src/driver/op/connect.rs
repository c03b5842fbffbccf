use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};
use socket2::SockAddr;

use super::{Direction, OpCode};
use crate::sys;

/// Connect a non-blocking stream socket.
pub(crate) struct Connect {
    pub(crate) fd: RawFd,
    /// Boxed: the kernel reads the address through a pointer.
    pub(crate) addr: Box<SockAddr>,
    started: bool,
}

impl Connect {
    pub(crate) fn new(fd: RawFd, addr: SockAddr) -> Self {
        Connect { fd, addr: Box::new(addr), started: false }
    }
}

impl OpCode for Connect {
    type Output = io::Result<()>;

    fn direction(&self) -> Direction {
        Direction::Write
    }

    fn uring_entry(&mut self) -> squeue::Entry {
        opcode::Connect::new(types::Fd(self.fd), self.addr.as_ptr().cast(), self.addr.len()).build()
    }

    fn try_io(&mut self) -> io::Result<u32> {
        if !self.started {
            self.started = true;
            return match sys::connect(self.fd, &self.addr) {
                Ok(()) => Ok(0),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            };
        }
        // Writable after EINPROGRESS: the outcome is in SO_ERROR.
        match sys::take_socket_error(self.fd)? {
            None => match sys::peer_connected(self.fd) {
                true => Ok(0),
                false => Err(io::ErrorKind::WouldBlock.into()),
            },
            Some(e) => Err(e),
        }
    }

    fn complete(self, res: io::Result<u32>) -> io::Result<()> {
        res.map(drop)
    }
}
