//! The shim's system calls, each wrapped once in a safe function. Every one of them is a
//! plain system call (no allocation, no lock), so the code that records `setsockopt` calls can
//! use them from a signal handler.

use std::ffi::CStr;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use libc::{c_int, c_void, sockaddr, socklen_t};

/// `struct sockaddr_in6` without `sin6_scope_id`, the shortest the kernel accepts for AF_INET6
/// (`SIN6_LEN_RFC2133`).
const SIN6_LEN_RFC2133: usize = 24;

/// The address a program passed to `bind()`, as far as the shim cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    Inet(SocketAddrV4),
    Inet6(SocketAddrV6),
    /// Another family, or too short to be what it says: the kernel answers it.
    Other,
}

/// Reads the address a program passed to `bind()`.
///
/// # Safety
/// `addr` must be null or point to `len` readable bytes, as `bind()`'s contract asks of its
/// caller.
pub unsafe fn read_address(addr: *const sockaddr, len: socklen_t) -> Address {
    let len = len as usize;
    if addr.is_null() || len < size_of::<libc::sa_family_t>() {
        return Address::Other;
    }
    // SAFETY: the caller guarantees `len` readable bytes, and `len` covers the family field;
    // read_unaligned because nothing guarantees the program aligned its buffer.
    let family = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) };
    match c_int::from(family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: as above, with `len` covering a whole sockaddr_in.
            let sin = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>()) };
            Address::Inet(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 if len >= SIN6_LEN_RFC2133 => {
            let mut sin6 = MaybeUninit::<libc::sockaddr_in6>::zeroed();
            let copied = len.min(size_of::<libc::sockaddr_in6>());
            // SAFETY: `copied` bytes are readable at `addr` (the caller's guarantee) and fit in
            // `sin6`; the two do not overlap. A short (RFC 2133) address leaves the scope id
            // zeroed, which is what the kernel assumes for it.
            let sin6 = unsafe {
                std::ptr::copy_nonoverlapping(
                    addr.cast::<u8>(),
                    sin6.as_mut_ptr().cast::<u8>(),
                    copied,
                );
                sin6.assume_init()
            };
            Address::Inet6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            ))
        }
        _ => Address::Other,
    }
}

/// The value a program passed to `setsockopt()`.
///
/// # Safety
/// `value` must be null or point to `len` readable bytes, as `setsockopt()`'s contract asks;
/// the slice must not outlive the call.
pub unsafe fn option_value<'a>(value: *const c_void, len: socklen_t) -> &'a [u8] {
    if value.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller guarantees `len` readable bytes at `value` for the call's duration.
    unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len as usize) }
}

/// The calling thread's `errno`.
pub fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Sets the calling thread's `errno`, for a return of -1 to the program.
pub fn set_errno(value: c_int) {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() = value };
}

/// `getsockopt()` of an `int` option.
pub fn int_option(fd: RawFd, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: value and len are valid for writes of the sizes given.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt()` into `buf`; returns the length the kernel wrote.
pub fn option_bytes(fd: RawFd, level: c_int, name: c_int, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as socklen_t;
    // SAFETY: buf is valid for writes of `len` bytes, and len for a write of a socklen_t.
    let rc = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &raw mut len) };
    if rc == 0 {
        Ok((len as usize).min(buf.len()))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket's cookie (`SO_COOKIE`): unique for the kernel's uptime, unlike an fd number,
/// which a closed socket hands on to the next one opened.
pub fn cookie(fd: RawFd) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    match option_bytes(fd, libc::SOL_SOCKET, libc::SO_COOKIE, &mut buf)? {
        8 => Ok(u64::from_ne_bytes(buf)),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// The socket's family and the port it is bound to (`getsockname()`): port 0 while it is not
/// bound, and for families without ports.
pub fn local_name(fd: RawFd) -> io::Result<(c_int, u16)> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: storage is valid for writes of `len` bytes, and len for a write of a socklen_t.
    let rc = unsafe { libc::getsockname(fd, storage.as_mut_ptr().cast(), &raw mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed, then written by the kernel: every byte is initialised.
    let storage = unsafe { storage.assume_init() };
    let family = c_int::from(storage.ss_family);
    // sin_port and sin6_port sit at the same offset, right after the family.
    let port = match family {
        libc::AF_INET | libc::AF_INET6 => {
            let bytes = as_bytes(&storage);
            u16::from_be_bytes([bytes[2], bytes[3]])
        }
        _ => 0,
    };
    Ok((family, port))
}

/// The port the socket is bound to: 0 while it is not bound.
pub fn local_port(fd: RawFd) -> io::Result<u16> {
    local_name(fd).map(|(_, port)| port)
}

fn as_bytes(storage: &libc::sockaddr_storage) -> &[u8] {
    // SAFETY: a sockaddr_storage is plain bytes, all initialised (see local_port).
    unsafe {
        std::slice::from_raw_parts(
            (storage as *const libc::sockaddr_storage).cast::<u8>(),
            size_of::<libc::sockaddr_storage>(),
        )
    }
}

/// `fcntl(F_GETFL)`: the open file description's status flags (O_NONBLOCK, ...).
pub fn status_flags(fd: RawFd) -> io::Result<c_int> {
    // SAFETY: F_GETFL takes no argument and touches no memory of ours.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(flags)
    }
}

/// `fcntl(F_SETFL)`.
pub fn set_status_flags(fd: RawFd, flags: c_int) -> io::Result<()> {
    // SAFETY: F_SETFL takes an int and touches no memory of ours.
    match unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Whether the fd has FD_CLOEXEC (`fcntl(F_GETFD)`).
pub fn close_on_exec(fd: RawFd) -> io::Result<bool> {
    // SAFETY: F_GETFD takes no argument and touches no memory of ours.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(flags & libc::FD_CLOEXEC != 0)
    }
}

/// `dup3(from, onto, flags)`: makes `onto` refer to `from`'s socket, closing what `onto` was,
/// in one step (no moment where the number is free for another thread to take).
pub fn dup3(from: RawFd, onto: RawFd, flags: c_int) -> io::Result<()> {
    // SAFETY: dup3 touches no memory of ours. `onto` is the program's own fd, which it asked
    // to bind: replacing the socket behind it is the shim's whole job.
    match unsafe { libc::dup3(from, onto, flags) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// Writes all of `bytes` to stderr with `write(2)`: no lock, no allocation, so it is safe in a
/// signal handler and never waits on a lock that a forked-from thread held. Errors are
/// ignored: there is nowhere else to report them.
pub fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: bytes is valid for reads of its length.
        let written =
            unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
        match written {
            n if n > 0 => bytes = &bytes[n as usize..],
            -1 if errno() == libc::EINTR => continue,
            _ => return,
        }
    }
}

/// This process's id (after a fork, the child's own).
pub fn pid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The calling thread's name (`prctl(PR_GET_NAME)`, what `ps` shows), as the process chose
/// it: escape it before printing.
pub fn thread_name() -> String {
    let mut buf = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes and a NUL into the buffer, which has 17.
    let rc = unsafe { libc::prctl(libc::PR_GET_NAME, buf.as_mut_ptr()) };
    if rc != 0 {
        return String::new();
    }
    CStr::from_bytes_until_nul(&buf)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The address of the next definition of `symbol` after this library (`dlsym(RTLD_NEXT)`):
/// libc's, or another preloaded library's. 0 if there is none.
pub fn next_symbol(symbol: &CStr) -> usize {
    // SAFETY: symbol is a valid NUL-terminated string; RTLD_NEXT is a valid handle from
    // within a shared object.
    unsafe { libc::dlsym(libc::RTLD_NEXT, symbol.as_ptr()) as usize }
}

/// `bind()` as a raw system call, for when no libc definition could be found.
///
/// # Safety
/// As `bind()`: `addr` must point to `len` readable bytes.
pub unsafe fn bind_syscall(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the caller's guarantee is the system call's only precondition.
    unsafe { libc::syscall(libc::SYS_bind, fd, addr, len) as c_int }
}

/// `setsockopt()` as a raw system call, for when no libc definition could be found.
///
/// # Safety
/// As `setsockopt()`: `value` must point to `len` readable bytes.
pub unsafe fn setsockopt_syscall(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    // SAFETY: the caller's guarantee is the system call's only precondition.
    unsafe { libc::syscall(libc::SYS_setsockopt, fd, level, name, value, len) as c_int }
}

/// Registers fork handlers (`pthread_atfork`).
pub fn at_fork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) -> io::Result<()> {
    // SAFETY: the handlers are functions of this library, which is never unloaded (a preloaded
    // library stays for the process's life).
    match unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) } {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}
