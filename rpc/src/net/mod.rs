//! Sockets bound to the current core's driver. They are `!Send`: a socket lives and dies on
//! the core that made it.

mod tcp;
mod udp;

pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use socket2::Socket;

use crate::driver::Registration;
use crate::runtime::{try_with_driver, with_driver};

/// A non-blocking socket registered with this core's driver.
struct Registered {
    sock: Socket,
    reg: Registration,
    _not_send: PhantomData<Rc<()>>,
}

impl Registered {
    fn new(sock: Socket) -> io::Result<Registered> {
        sock.set_nonblocking(true)?;
        let reg = with_driver(|d| d.register(sock.as_raw_fd()))?;
        Ok(Registered { sock, reg, _not_send: PhantomData })
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let (fd, reg) = (self.sock.as_raw_fd(), self.reg);
        try_with_driver(|d| d.deregister(fd, reg));
    }
}
