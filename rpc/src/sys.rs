//! Thin, checked wrappers over the libc calls the epoll backend and the runtime make.
//! Every `unsafe` block here is a single syscall whose pointer arguments are spelled out.

use std::cell::RefCell;
use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use socket2::SockAddr;

fn cvt(res: libc::ssize_t) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res as usize)
    }
}

pub(crate) fn accept(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: null address pointers are allowed by accept4(2) when the peer address is unwanted.
    let res = unsafe {
        libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
    };
    cvt(res as libc::ssize_t).map(|fd| fd as RawFd)
}

/// Take ownership of a descriptor returned by accept (either backend).
pub(crate) fn socket_from_accepted(fd: RawFd) -> socket2::Socket {
    // SAFETY: `fd` was just returned by accept/accept4 and nothing else owns it.
    unsafe { socket2::Socket::from_raw_fd(fd) }
}

pub(crate) fn connect(fd: RawFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` is a valid socket address of `addr.len()` bytes.
    let res = unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len()) };
    cvt(res as libc::ssize_t).map(drop)
}

/// `SO_ERROR`, cleared by reading it: the outcome of a non-blocking connect.
pub(crate) fn take_socket_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes of the sizes passed.
    let res = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut len)
    };
    cvt(res as libc::ssize_t)?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

pub(crate) fn peer_connected(fd: RawFd) -> bool {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` has room for any address and `len` says so.
    unsafe { libc::getpeername(fd, storage.as_mut_ptr().cast(), &mut len) == 0 }
}

/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
pub(crate) unsafe fn recv(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees `ptr..ptr+len` is writable.
    cvt(unsafe { libc::recv(fd, ptr.cast(), len, 0) })
}

pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    cvt(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

/// # Safety
/// `msg` must point at a valid msghdr whose buffers are writable for their lengths.
pub(crate) unsafe fn recvmsg(fd: RawFd, msg: *mut libc::msghdr) -> io::Result<usize> {
    // SAFETY: the caller guarantees `msg` and everything it points to are valid.
    cvt(unsafe { libc::recvmsg(fd, msg, 0) })
}

/// One datagram into `ptr..ptr+len`, with its source: `(length, source)`, where a length
/// above `len` means the datagram was truncated (`MSG_TRUNC` reports its full size). Cheaper
/// than `recvmsg` (no msghdr or iovec to copy in), which matters to a spinning reader.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
pub(crate) unsafe fn recvfrom(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<(usize, SockAddr)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut addr_len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the caller guarantees `ptr..ptr+len` is writable; `storage` has room for any
    // address and `addr_len` says so.
    let n = cvt(unsafe {
        libc::recvfrom(fd, ptr.cast(), len, libc::MSG_TRUNC, storage.as_mut_ptr().cast(), &mut addr_len)
    })?;
    // SAFETY: zero-initialised storage is a valid sockaddr_storage, and the kernel wrote
    // `addr_len` bytes of address into it.
    let addr = unsafe { SockAddr::new(storage.assume_init(), addr_len) };
    Ok((n, addr))
}

/// # Safety
/// `addr` must point at `len` initialised bytes of a socket address.
pub(crate) unsafe fn sendto(
    fd: RawFd,
    buf: &[u8],
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> io::Result<usize> {
    // SAFETY: `buf` is readable for its length; the caller vouches for `addr`.
    cvt(unsafe { libc::sendto(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL, addr, len) })
}

/// A non-blocking eventfd: the one way another thread wakes a core.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with flags only.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn eventfd_write(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64. EAGAIN (counter saturated) still leaves it readable.
    let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

pub(crate) fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    let _ = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
}

/// A datagram's source as an IP address (anything else is refused).
pub(crate) fn ip_addr(addr: &SockAddr) -> io::Result<std::net::SocketAddr> {
    addr.as_socket().ok_or_else(|| io::Error::other("datagram from a non-IP address"))
}

/// Storage for one datagram operation: the msghdr, its iovec and the peer address, together
/// in one heap block so the pointers between them and from the kernel stay valid.
pub(crate) struct MsgHdr {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
}

thread_local! {
    // Reused blocks, so datagram operations do not allocate once warm. Boxed on purpose: the
    // kernel keeps pointers into a block while its operation is in flight, so blocks must not
    // move when the pool grows.
    #[allow(clippy::vec_box)]
    static MSGHDR_POOL: RefCell<Vec<Box<MsgHdr>>> = const { RefCell::new(Vec::new()) };
}

impl MsgHdr {
    pub(crate) fn take() -> Box<MsgHdr> {
        MSGHDR_POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| {
            // SAFETY: msghdr, iovec and sockaddr_storage are plain C structs; all-zero is valid.
            Box::new(unsafe { mem::zeroed::<MsgHdr>() })
        })
    }

    pub(crate) fn give_back(b: Box<MsgHdr>) {
        MSGHDR_POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < 64 {
                p.push(b);
            }
        });
    }

    pub(crate) fn prepare_recv(&mut self, ptr: *mut u8, len: usize) -> *mut libc::msghdr {
        self.iov = libc::iovec { iov_base: ptr.cast(), iov_len: len };
        self.addr_len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: all-zero is a valid msghdr.
        self.msg = unsafe { mem::zeroed() };
        self.msg.msg_name = (&mut self.addr as *mut libc::sockaddr_storage).cast();
        self.msg.msg_namelen = self.addr_len;
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        &mut self.msg
    }

    pub(crate) fn truncated(&self) -> bool {
        self.msg.msg_flags & libc::MSG_TRUNC != 0
    }

    pub(crate) fn source(&self) -> SockAddr {
        // SAFETY: the kernel wrote a valid address of `msg_namelen` bytes into `addr`.
        unsafe { SockAddr::new(self.addr, self.msg.msg_namelen) }
    }

    pub(crate) fn set_dest(&mut self, to: &SockAddr) {
        let len = to.len() as usize;
        // SAFETY: `to` holds `len` valid bytes and `addr` has room for any address.
        unsafe {
            std::ptr::copy_nonoverlapping(
                to.as_ptr().cast::<u8>(),
                (&mut self.addr as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            )
        };
        self.addr_len = to.len();
    }

    pub(crate) fn dest(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        ((&self.addr as *const libc::sockaddr_storage).cast(), self.addr_len)
    }
}
