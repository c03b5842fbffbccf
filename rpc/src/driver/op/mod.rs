//! One type per I/O operation, each implementing both backends (the monoio shape).

mod accept;
mod connect;
mod recv;
mod recv_from;
mod send;
mod send_to;

pub(crate) use accept::Accept;
pub(crate) use connect::Connect;
pub(crate) use recv::Recv;
pub(crate) use recv_from::RecvFrom;
pub(crate) use send::Send;
pub(crate) use send_to::SendTo;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use io_uring::squeue;

use super::{Driver, Registration};
use crate::runtime::with_driver;

/// Readiness an epoll attempt waits for after `WouldBlock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

/// An I/O operation. Everything the kernel reads or writes (buffers, socket addresses) lives
/// in heap memory owned by `Self`, so moving `Self` never moves what the kernel points at.
pub(crate) trait OpCode: 'static {
    type Output;
    fn direction(&self) -> Direction;
    /// The io_uring submission entry. Called once; the pointers in it must stay valid until
    /// `complete` (or until the driver drops the parked op after its completion).
    fn uring_entry(&mut self) -> squeue::Entry;
    /// One non-blocking attempt (epoll backend). `WouldBlock` means wait for readiness.
    fn try_io(&mut self) -> io::Result<u32>;
    /// True if a successful `try_io` moving `n` bytes shows the socket has nothing more in
    /// this direction right now (a short read or write), so the next attempt can wait for
    /// readiness instead of spending a syscall on `WouldBlock`. Safe with edge-triggered
    /// epoll: anything arriving later raises a new edge.
    fn exhausted(&self, _n: u32) -> bool {
        false
    }
    fn complete(self, res: io::Result<u32>) -> Self::Output;
}

enum State {
    Unsubmitted,
    /// io_uring: the op is in the driver's table under this key.
    InFlight(usize),
    /// epoll: waiting for readiness.
    Waiting,
}

/// The future that runs an [`OpCode`] on the current core's driver.
pub(crate) struct Op<T: OpCode> {
    data: Option<T>,
    reg: Registration,
    state: State,
}

impl<T: OpCode> Op<T> {
    pub(crate) fn new(data: T, reg: Registration) -> Self {
        Op { data: Some(data), reg, state: State::Unsubmitted }
    }
}

// Nothing in `Op` is address-sensitive: the kernel only sees heap memory owned by `T`.
impl<T: OpCode> Unpin for Op<T> {}

impl<T: OpCode> Future for Op<T> {
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T::Output> {
        let this = self.get_mut();
        let res = with_driver(|driver| match driver {
            Driver::Uring(d) => match this.state {
                State::Unsubmitted => {
                    let data = this.data.as_mut().expect("op polled after completion");
                    let key = d.submit(data.uring_entry(), cx.waker().clone());
                    this.state = State::InFlight(key);
                    Poll::Pending
                }
                State::InFlight(key) => d.poll_op(key, cx.waker()).map(|res| {
                    this.state = State::Unsubmitted;
                    res
                }),
                State::Waiting => unreachable!("epoll state on the io_uring driver"),
            },
            Driver::Epoll(d) => {
                let data = this.data.as_mut().expect("op polled after completion");
                let dir = data.direction();
                let token = this.reg.0;
                if let Some(t) = token {
                    if !d.is_ready(t, dir) {
                        d.wait_ready(t, dir, cx.waker());
                        this.state = State::Waiting;
                        return Poll::Pending;
                    }
                }
                match data.try_io() {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let t = token.expect("socket not registered with epoll");
                        d.clear_ready(t, dir);
                        d.wait_ready(t, dir, cx.waker());
                        this.state = State::Waiting;
                        Poll::Pending
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    res => {
                        if let (Ok(n), Some(t)) = (&res, token) {
                            if data.exhausted(*n) {
                                d.clear_ready(t, dir);
                            }
                        }
                        this.state = State::Unsubmitted;
                        Poll::Ready(res)
                    }
                }
            }
        });
        match res {
            Poll::Ready(res) => {
                let data = this.data.take().expect("op polled after completion");
                Poll::Ready(data.complete(res))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: OpCode> Drop for Op<T> {
    fn drop(&mut self) {
        if let (State::InFlight(key), Some(data)) = (&self.state, self.data.take()) {
            let key = *key;
            // The kernel may still write into `data`'s buffers: park them until it completes.
            // If the core is already gone (runtime torn down), the ring went with it and the
            // kernel has released every buffer, so dropping here is sound.
            crate::runtime::try_with_driver(|driver| {
                if let Driver::Uring(d) = driver {
                    d.abandon(key, Box::new(data));
                }
            });
        }
    }
}
