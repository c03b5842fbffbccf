//! Multishot datagram receive on io_uring with a provided-buffer ring.
//!
//! One `RECVMSG` submission stays armed and completes once per datagram, each time into a
//! buffer the kernel picks from a ring we own, so a busy UDP socket costs no submission and
//! no poll re-arm per datagram. The datagram is copied out into the caller's buffer (one
//! memcpy of at most a datagram) and its ring buffer handed straight back, so the ring never
//! runs dry while handlers hold payloads. On the epoll driver the same API does one
//! `recvmsg` per datagram.

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
use crate::runtime::{try_with_driver, with_driver};

/// Buffers in each socket's ring (a power of two).
const RING_ENTRIES: u16 = 16;
/// Room for the kernel's `io_uring_recvmsg_out` header, the peer address and the largest UDP
/// payload, rounded to a page multiple.
const BUF_SIZE: usize = (65_536usize + 256).next_multiple_of(4096);

/// The ring of buffers registered with the kernel under one buffer-group id.
pub(crate) struct BufRing {
    pub(crate) bgid: u16,
    entries: NonNull<BufRingEntry>,
    bufs: NonNull<u8>,
    tail: u16,
}

impl BufRing {
    fn entries_layout() -> Layout {
        // The kernel requires the entry array to be page aligned.
        Layout::from_size_align(RING_ENTRIES as usize * size_of::<BufRingEntry>(), 4096).expect("valid layout")
    }

    fn bufs_layout() -> Layout {
        Layout::from_size_align(RING_ENTRIES as usize * BUF_SIZE, 4096).expect("valid layout")
    }

    /// Allocate the ring and fill it; the caller registers it with the kernel.
    pub(crate) fn new(bgid: u16) -> BufRing {
        // SAFETY: both layouts have non-zero size.
        let (entries, bufs) = unsafe { (alloc_zeroed(Self::entries_layout()), alloc_zeroed(Self::bufs_layout())) };
        let entries = NonNull::new(entries.cast::<BufRingEntry>())
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::entries_layout()));
        let bufs = NonNull::new(bufs).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::bufs_layout()));
        let mut ring = BufRing { bgid, entries, bufs, tail: 0 };
        for bid in 0..RING_ENTRIES {
            ring.provide(bid);
        }
        ring
    }

    /// Give buffer `bid` (back) to the kernel.
    fn provide(&mut self, bid: u16) {
        let idx = (self.tail & (RING_ENTRIES - 1)) as usize;
        // SAFETY: `idx < RING_ENTRIES`, inside the entry array we own; the kernel reads only
        // entries between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(idx) };
        // SAFETY: `bid < RING_ENTRIES`, so the buffer lies inside the `bufs` allocation.
        entry.set_addr(unsafe { self.bufs.as_ptr().add(bid as usize * BUF_SIZE) } as u64);
        entry.set_len(BUF_SIZE as u32);
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
        assert!(bid < RING_ENTRIES && len <= BUF_SIZE, "kernel returned an out-of-range buffer");
        // SAFETY: in range (checked above); the kernel has finished writing this buffer (its
        // completion was reaped) and will not reuse it until we provide it again.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(bid as usize * BUF_SIZE), len) }
    }

    pub(crate) fn addr(&self) -> u64 {
        self.entries.as_ptr() as u64
    }

    pub(crate) const fn entries() -> u16 {
        RING_ENTRIES
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the driver unregisters the ring (or
        // tears the io_uring down) before a registered ring is dropped.
        unsafe {
            dealloc(self.entries.as_ptr().cast(), Self::entries_layout());
            dealloc(self.bufs.as_ptr(), Self::bufs_layout());
        }
    }
}

/// What the kernel may touch while the multishot receive is armed; parked in the driver if
/// the receiver is dropped first.
pub(crate) struct MultiData {
    pub(crate) ring: BufRing,
    msghdr: Box<libc::msghdr>,
}

/// Receives datagrams from one socket; on io_uring through a multishot receive.
pub(crate) struct DatagramReceiver {
    fd: RawFd,
    reg: Registration,
    /// io_uring only: the armed op's key and its data.
    armed: Option<usize>,
    data: Option<Box<MultiData>>,
}

impl DatagramReceiver {
    pub(crate) fn new(fd: RawFd, reg: Registration) -> Self {
        DatagramReceiver { fd, reg, armed: None, data: None }
    }

    /// Receive one datagram into the spare capacity of `buf` (reserve room for the largest
    /// datagram first). A datagram larger than that room fails with `InvalidData`.
    pub(crate) async fn recv_from(&mut self, mut buf: BytesMut) -> (io::Result<(usize, SocketAddr)>, BytesMut) {
        if with_driver(|d| matches!(d, Driver::Epoll(_))) {
            let (res, buf) = op::Op::new(op::RecvFrom::new(self.fd, buf), self.reg).await;
            let res = res.and_then(|(n, a)| {
                a.as_socket().map(|a| (n, a)).ok_or_else(|| io::Error::other("datagram from a non-IP address"))
            });
            return (res, buf);
        }
        let res = std::future::poll_fn(|cx| {
            with_driver(|driver| {
                let Driver::Uring(d) = driver else { unreachable!("driver changed under a core") };
                loop {
                    let key = match self.armed {
                        Some(k) => k,
                        None => {
                            if self.data.is_none() {
                                let ring = match d.register_buf_ring() {
                                    Ok(r) => r,
                                    Err(e) => return Poll::Ready(Err(e)),
                                };
                                // SAFETY: an all-zero msghdr is valid; only the name length is
                                // read by a multishot recvmsg (no iovec, no control data).
                                let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
                                msghdr.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                                self.data = Some(Box::new(MultiData { ring, msghdr }));
                            }
                            let data = self.data.as_ref().expect("just set");
                            let entry =
                                opcode::RecvMsgMulti::new(types::Fd(self.fd), &*data.msghdr, data.ring.bgid).build();
                            let k = d.submit_multi(entry, cx.waker().clone());
                            self.armed = Some(k);
                            k
                        }
                    };
                    let Some((res, flags)) = d.poll_multi(key, cx.waker()) else { return Poll::Pending };
                    if !cqueue::more(flags) {
                        // The kernel ended the multishot (buffers ran out, or an error):
                        // re-arm on the next pass.
                        d.finish_multi(key);
                        self.armed = None;
                    }
                    if res == -libc::ENOBUFS {
                        continue;
                    }
                    let data = self.data.as_mut().expect("armed implies data");
                    if res < 0 {
                        return Poll::Ready(Err(io::Error::from_raw_os_error(-res)));
                    }
                    let Some(bid) = cqueue::buffer_select(flags) else {
                        return Poll::Ready(Err(io::Error::other("multishot completion without a buffer")));
                    };
                    let out = copy_datagram(data.ring.buf(bid, res as usize), &data.msghdr, &mut buf);
                    data.ring.provide(bid);
                    return Poll::Ready(out);
                }
            })
        })
        .await;
        (res, buf)
    }
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
    let addr = addr.as_socket().ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
    Ok((payload.len(), addr))
}

impl Drop for DatagramReceiver {
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
