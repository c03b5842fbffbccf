//! Multishot receive on io_uring with provided-buffer rings, for datagrams and streams.
//!
//! One receive submission stays armed and completes once per arrival, each time into a
//! buffer the kernel picks from a ring the receiver owns, so a busy socket costs no
//! submission, no failed first attempt and no poll re-arm per message. The bytes are copied
//! out into the caller's buffer (one memcpy) and the ring buffer handed straight back, so the
//! ring never runs dry while handlers hold payloads. On the epoll driver the same API does one
//! `recv`/`recvmsg` per call.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::Poll;

use bytes::BytesMut;
use io_uring::types::{BufRingEntry, RecvMsgOut};
use io_uring::{cqueue, opcode, types};
use socket2::SockAddr;

use super::{op, Driver, Registration};
use crate::runtime::{self, try_with_driver, with_driver};
use crate::sys;

/// A ring of `count` buffers of `size` bytes registered with the kernel under one
/// buffer-group id.
pub(crate) struct BufRing {
    pub(crate) bgid: u16,
    entries: NonNull<BufRingEntry>,
    bufs: NonNull<u8>,
    count: u16,
    size: usize,
    tail: u16,
}

impl BufRing {
    fn entries_layout(count: u16) -> Layout {
        // The kernel requires the entry array to be page aligned.
        Layout::from_size_align(count as usize * size_of::<BufRingEntry>(), 4096).expect("valid layout")
    }

    fn bufs_layout(count: u16, size: usize) -> Layout {
        Layout::from_size_align(count as usize * size, 4096).expect("valid layout")
    }

    /// Allocate the ring and fill it; the caller registers it with the kernel. `count` is a
    /// power of two.
    pub(crate) fn new(bgid: u16, count: u16, size: usize) -> BufRing {
        assert!(count.is_power_of_two() && size > 0, "bad buffer ring geometry");
        let (el, bl) = (Self::entries_layout(count), Self::bufs_layout(count, size));
        // SAFETY: both layouts have non-zero size.
        let (entries, bufs) = unsafe { (alloc_zeroed(el), alloc_zeroed(bl)) };
        let entries =
            NonNull::new(entries.cast::<BufRingEntry>()).unwrap_or_else(|| std::alloc::handle_alloc_error(el));
        let bufs = NonNull::new(bufs).unwrap_or_else(|| std::alloc::handle_alloc_error(bl));
        let mut ring = BufRing { bgid, entries, bufs, count, size, tail: 0 };
        for bid in 0..count {
            ring.provide(bid);
        }
        ring
    }

    /// Give buffer `bid` (back) to the kernel.
    fn provide(&mut self, bid: u16) {
        let idx = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `idx < count`, inside the entry array we own; the kernel reads only entries
        // between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(idx) };
        // SAFETY: `bid < count`, so the buffer lies inside the `bufs` allocation.
        entry.set_addr(unsafe { self.bufs.as_ptr().add(bid as usize * self.size) } as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives inside the first entry, which we own and which stays
        // allocated while the ring exists; the kernel reads it with acquire semantics, so
        // the release store publishes the entry written above.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= self.size, "kernel returned an out-of-range buffer");
        // SAFETY: in range (checked above); the kernel has finished writing this buffer (its
        // completion was reaped) and will not reuse it until we provide it again.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(bid as usize * self.size), len) }
    }

    pub(crate) fn addr(&self) -> u64 {
        self.entries.as_ptr() as u64
    }

    pub(crate) fn count(&self) -> u16 {
        self.count
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the driver unregisters the ring (or
        // tears the io_uring down) before a registered ring is dropped.
        unsafe {
            dealloc(self.entries.as_ptr().cast(), Self::entries_layout(self.count));
            dealloc(self.bufs.as_ptr(), Self::bufs_layout(self.count, self.size));
        }
    }
}

/// What the kernel may touch while a multishot receive is armed; parked in the driver if the
/// receiver is dropped first.
pub(crate) struct MultiData {
    pub(crate) ring: BufRing,
    /// recvmsg only: tells the kernel how much room to leave for the peer address.
    msghdr: Option<Box<libc::msghdr>>,
}

/// What a receiver reads: datagrams (recvmsg, with the peer address) or a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Datagram,
    Stream,
}

impl Kind {
    /// (buffers, bytes per buffer). Datagram buffers hold the largest UDP datagram; stream
    /// buffers are smaller (a connection's bytes may span several), and fewer, since every
    /// connection has its own ring.
    fn geometry(self) -> (u16, usize) {
        match self {
            Kind::Datagram => (16, (65_536usize + 256).next_multiple_of(4096)),
            Kind::Stream => (8, 16 << 10),
        }
    }
}

/// Receives from one socket; on io_uring through one multishot receive that stays armed.
pub(crate) struct MultiReceiver {
    fd: RawFd,
    reg: Registration,
    kind: Kind,
    /// io_uring only: the armed op's key, its data, and (stream) a buffer not fully copied
    /// out yet: (buffer id, bytes copied, bytes in it).
    armed: Option<usize>,
    data: Option<Box<MultiData>>,
    partial: Option<(u16, usize, usize)>,
    /// The armed op was asked to end (for a direct read); its final completion is pending.
    stopping: bool,
}

impl MultiReceiver {
    pub(crate) fn new(fd: RawFd, reg: Registration, kind: Kind) -> Self {
        MultiReceiver { fd, reg, kind, armed: None, data: None, partial: None, stopping: false }
    }

    /// Receive one datagram into the spare capacity of `buf` (reserve room for the largest
    /// datagram first). A datagram larger than that room fails with `InvalidData`.
    ///
    /// On a busy-polling core, while `spin()`, the socket is read directly once per loop turn
    /// (as a spinning raw-socket loop would) instead of through the driver, which saves an
    /// io_uring enter or an epoll wait per datagram; when the core goes idle, or once `spin()`
    /// is false (a socket nothing is expected on), it waits on the driver with a single-shot
    /// receive, so no armed multishot races the direct reads.
    pub(crate) async fn recv_from(
        &mut self,
        mut buf: BytesMut,
        spin: &dyn Fn() -> bool,
        yield_to_woken: bool,
    ) -> (io::Result<(usize, SocketAddr)>, BytesMut) {
        debug_assert_eq!(self.kind, Kind::Datagram);
        let busy = runtime::busy_poll_mode();
        if busy {
            // A client's tasks woken by the last datagram (callers given their replies) run
            // first: reading again now would put a failed syscall between a reply and its
            // caller. Servers read on (a burst is drained in one turn).
            if yield_to_woken && runtime::has_ready_tasks() {
                runtime::spin_yield().await;
            }
            while runtime::spinning() && spin() {
                match direct_recv_from(self.fd, &mut buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => runtime::spin_yield().await,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    res => {
                        if res.is_ok() {
                            runtime::note_direct_read();
                        }
                        return (res, buf);
                    }
                }
            }
        }
        if busy || with_driver(|d| matches!(d, Driver::Epoll(_))) {
            let (res, buf) = op::Op::new(op::RecvFrom::new(self.fd, buf), self.reg).await;
            let res = res.and_then(|(n, a)| sys::ip_addr(&a).map(|a| (n, a)));
            return (res, buf);
        }
        let res = std::future::poll_fn(|cx| {
            self.poll_completion(cx.waker()).map(|r| {
                let (bid, len) = r?.ok_or_else(|| io::Error::other("datagram socket reported end of stream"))?;
                let data = self.data.as_mut().expect("armed implies data");
                let msghdr = data.msghdr.as_deref().expect("datagram receivers have a msghdr");
                let out = copy_datagram(data.ring.buf(bid, len), msghdr, &mut buf);
                data.ring.provide(bid);
                out
            })
        })
        .await;
        (res, buf)
    }

    /// Receive stream bytes into the spare capacity of `buf` (which must have some); `Ok(0)`
    /// at end of stream. Cancel-safe: bytes already received stay queued for the next call.
    pub(crate) async fn recv(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        debug_assert_eq!(self.kind, Kind::Stream);
        if with_driver(|d| matches!(d, Driver::Epoll(_))) {
            return op::Op::new(op::Recv { fd: self.fd, buf }, self.reg).await;
        }
        let res = std::future::poll_fn(|cx| {
            let (bid, start, end) = match self.partial.take() {
                Some(p) => p,
                None => match self.poll_completion(cx.waker()) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(None)) => return Poll::Ready(Ok(0)),
                    Poll::Ready(Ok(Some((bid, len)))) => (bid, 0, len),
                },
            };
            let data = self.data.as_mut().expect("armed implies data");
            let room = buf.capacity() - buf.len();
            let n = room.min(end - start);
            buf.extend_from_slice(&data.ring.buf(bid, end)[start..start + n]);
            if start + n < end {
                self.partial = Some((bid, start + n, end));
            } else {
                data.ring.provide(bid);
            }
            Poll::Ready(Ok(n))
        })
        .await;
        (res, buf)
    }

    /// Receive stream bytes straight into the spare capacity of `buf`, for a read expected
    /// to be large (the rest of a big frame). On io_uring the armed multishot is stopped
    /// first and the bytes it already took are handed out, in order; then one receive goes
    /// straight into `buf`, so the kernel copies once into the frame and no ring buffer sits
    /// in between (16 KiB buffers would cost a completion, a wake-up and a second copy each).
    /// The next [`MultiReceiver::recv`] arms the multishot again. Cancel-safe like `recv`
    /// up to the direct receive; dropping that one loses what it read, which only happens
    /// when the connection is being closed anyway.
    pub(crate) async fn recv_direct(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        debug_assert_eq!(self.kind, Kind::Stream);
        let buf = match self.stop_multishot(buf).await {
            Ok(buf) => buf,
            Err(out) => return out,
        };
        op::Op::new(op::Recv { fd: self.fd, buf }, self.reg).await
    }

    /// Busy-poll: read the stream directly, one non-blocking `recv` per loop turn (as a
    /// spinning raw socket loop does), while the core spins and `spin()` holds, instead of
    /// through the driver: no io_uring enter or epoll wait per message. `None` once it stops
    /// spinning (the caller then waits on the driver). On io_uring the armed multishot is
    /// stopped first and the bytes it took handed out in order, so the two never interleave.
    pub(crate) async fn recv_spinning(
        &mut self,
        buf: BytesMut,
        spin: &dyn Fn() -> bool,
    ) -> (Option<io::Result<usize>>, BytesMut) {
        debug_assert_eq!(self.kind, Kind::Stream);
        if !(runtime::spinning() && spin()) {
            return (None, buf);
        }
        let mut buf = match self.stop_multishot(buf).await {
            Ok(buf) => buf,
            Err((res, buf)) => return (Some(res), buf),
        };
        while runtime::spinning() && spin() {
            let spare = buf.spare_capacity_mut();
            // SAFETY: the spare capacity of `buf` is writable for its length.
            match unsafe { sys::recv(self.fd, spare.as_mut_ptr().cast(), spare.len()) } {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => runtime::spin_yield().await,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Some(Err(e)), buf),
                Ok(n) => {
                    // SAFETY: the kernel initialised `n` bytes of the spare capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                    runtime::note_direct_read();
                    return (Some(Ok(n)), buf);
                }
            }
        }
        (None, buf)
    }

    /// Stop the armed multishot receive (io_uring) so the stream can be read directly:
    /// bytes it already took come out first, as `Err((Ok(n), buf))` (also an error or the
    /// end of stream it reported); `Ok(buf)` once it is stopped and nothing is left of it.
    async fn stop_multishot(&mut self, buf: BytesMut) -> Result<BytesMut, (io::Result<usize>, BytesMut)> {
        loop {
            if self.partial.is_some() {
                return Err(self.recv(buf).await);
            }
            let Some(key) = self.armed else { return Ok(buf) };
            let stopping = &mut self.stopping;
            let (res, flags) = std::future::poll_fn(|cx| {
                with_driver(|d| {
                    let Driver::Uring(d) = d else { unreachable!("driver changed under a core") };
                    if let Some(completion) = d.poll_multi(key, cx.waker()) {
                        return Poll::Ready(completion);
                    }
                    // Bytes already received are taken through the ring; the multishot is
                    // stopped only once it has nothing queued, so a stop costs no extra wait.
                    if !*stopping {
                        *stopping = true;
                        d.cancel_multi(key);
                    }
                    Poll::Pending
                })
            })
            .await;
            if !cqueue::more(flags) {
                self.finish(key);
            }
            match (res, cqueue::buffer_select(flags)) {
                (r, _) if r == -libc::ECANCELED || r == -libc::ENOBUFS => {}
                (r, _) if r < 0 => return Err((Err(io::Error::from_raw_os_error(-r)), buf)),
                (0, None) => return Err((Ok(0), buf)),
                (n, Some(bid)) => self.partial = Some((bid, 0, n as usize)),
                (_, None) => return Err((Err(io::Error::other("multishot completion without a buffer")), buf)),
            }
        }
    }

    /// The multishot op `key` posted its final completion.
    fn finish(&mut self, key: usize) {
        with_driver(|d| {
            let Driver::Uring(d) = d else { unreachable!("driver changed under a core") };
            d.finish_multi(key);
        });
        self.armed = None;
        self.stopping = false;
    }

    /// The next completion as (buffer id, length), `None` at end of stream. Arms (or re-arms)
    /// the multishot receive as needed.
    fn poll_completion(&mut self, waker: &std::task::Waker) -> Poll<io::Result<Option<(u16, usize)>>> {
        with_driver(|driver| {
            let Driver::Uring(d) = driver else { unreachable!("driver changed under a core") };
            loop {
                let key = match self.armed {
                    Some(k) => k,
                    None => {
                        if self.data.is_none() {
                            let (entries, size) = self.kind.geometry();
                            let ring = match d.register_buf_ring(entries, size) {
                                Ok(r) => r,
                                Err(e) => return Poll::Ready(Err(e)),
                            };
                            let msghdr = (self.kind == Kind::Datagram).then(|| {
                                // SAFETY: an all-zero msghdr is valid; a multishot recvmsg reads
                                // only the name length (no iovec, no control data).
                                let mut m: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
                                m.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                                m
                            });
                            self.data = Some(Box::new(MultiData { ring, msghdr }));
                        }
                        let data = self.data.as_ref().expect("just set");
                        let entry = match &data.msghdr {
                            Some(m) => opcode::RecvMsgMulti::new(types::Fd(self.fd), &**m, data.ring.bgid).build(),
                            None => opcode::RecvMulti::new(types::Fd(self.fd), data.ring.bgid).build(),
                        };
                        let k = d.submit_multi(entry, waker.clone());
                        self.armed = Some(k);
                        k
                    }
                };
                let Some((res, flags)) = d.poll_multi(key, waker) else { return Poll::Pending };
                let stopped = self.stopping && res == -libc::ECANCELED;
                if !cqueue::more(flags) {
                    // The kernel ended the multishot (buffers ran out, end of stream, an
                    // error, or a stop asked for by `recv_direct`): re-arm on the next pass
                    // if reading goes on.
                    d.finish_multi(key);
                    self.armed = None;
                    self.stopping = false;
                }
                if res == -libc::ENOBUFS || stopped {
                    // Every buffer was taken by completions queued before this one, and those
                    // have all been consumed and recycled by now; or a direct read that asked
                    // for the stop was dropped: re-arm.
                    continue;
                }
                if res < 0 {
                    return Poll::Ready(Err(io::Error::from_raw_os_error(-res)));
                }
                return Poll::Ready(match cqueue::buffer_select(flags) {
                    Some(bid) => Ok(Some((bid, res as usize))),
                    None if res == 0 => Ok(None),
                    None => Err(io::Error::other("multishot completion without a buffer")),
                });
            }
        })
    }
}

/// One non-blocking recvmsg into the spare capacity of `buf`.
fn direct_recv_from(fd: RawFd, buf: &mut BytesMut) -> io::Result<(usize, SocketAddr)> {
    let spare = buf.spare_capacity_mut();
    let room = spare.len();
    // SAFETY: the spare capacity of `buf` is writable for its length.
    let (n, source) = unsafe { sys::recvfrom(fd, spare.as_mut_ptr().cast(), room) }?;
    if n > room {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "datagram larger than the caller's buffer"));
    }
    // SAFETY: the kernel initialised `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok((n, sys::ip_addr(&source)?))
}

/// Parse a multishot recvmsg buffer and copy its payload into `out`.
fn copy_datagram(raw: &[u8], msghdr: &libc::msghdr, out: &mut BytesMut) -> io::Result<(usize, SocketAddr)> {
    let msg = RecvMsgOut::parse(raw, msghdr).map_err(|()| io::Error::other("short multishot recvmsg buffer"))?;
    if msg.is_payload_truncated() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "datagram larger than the receive buffer"));
    }
    let payload = msg.payload_data();
    if out.capacity() - out.len() < payload.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "datagram larger than the caller's buffer"));
    }
    out.extend_from_slice(payload);
    let name = msg.name_data();
    let mut storage: libc::sockaddr_storage =
        // SAFETY: all-zero is a valid sockaddr_storage.
        unsafe { std::mem::zeroed() };
    let len = name.len().min(size_of::<libc::sockaddr_storage>());
    // SAFETY: copying at most `size_of::<sockaddr_storage>()` bytes into it.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), (&raw mut storage).cast::<u8>(), len) };
    // SAFETY: `storage` holds the kernel's address of `len` bytes.
    let addr = unsafe { SockAddr::new(storage, len as libc::socklen_t) };
    let addr = sys::ip_addr(&addr)?;
    Ok((payload.len(), addr))
}

impl Drop for MultiReceiver {
    fn drop(&mut self) {
        let data = self.data.take();
        match (self.armed.take(), data) {
            // Armed: the kernel may still write into the ring; the driver keeps it until the
            // final completion, then unregisters and frees it.
            (Some(key), Some(data)) => {
                let mut data = Some(data);
                try_with_driver(|d| {
                    if let Driver::Uring(d) = d {
                        d.abandon_multi(key, data.take().expect("once"));
                    }
                });
                // Could not reach the driver: leak rather than free memory the kernel may
                // still write into.
                std::mem::forget(data);
            }
            // Not armed: nothing in flight; unregister now.
            (None, Some(data)) => try_with_driver(|d| {
                if let Driver::Uring(d) = d {
                    d.unregister_buf_ring(&data.ring);
                }
            }),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    /// Waits (bounded) until `fd` has a datagram: loopback usually delivers within the send,
    /// but softirq processing may be deferred.
    fn wait_readable(fd: RawFd) {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 10_000) }, 1, "datagram not delivered");
    }

    #[test]
    fn a_direct_read_returns_the_datagram_and_its_source_and_refuses_one_too_large() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = BytesMut::with_capacity(64);
        let err = direct_recv_from(rx.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        tx.send_to(b"hello", rx.local_addr().unwrap()).unwrap();
        wait_readable(rx.as_raw_fd());
        let (n, from) = direct_recv_from(rx.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((n, from), (5, tx.local_addr().unwrap()));
        assert_eq!(&buf[..], b"hello");

        tx.send_to(&[7u8; 200], rx.local_addr().unwrap()).unwrap();
        wait_readable(rx.as_raw_fd());
        let err = direct_recv_from(rx.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(&buf[..], b"hello", "a truncated datagram adds nothing to the buffer");
    }
}
