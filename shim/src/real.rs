//! The definitions of `bind` and `setsockopt` that the shim stands in front of: libc's, or
//! those of another preloaded library after this one. Found once, when the library loads
//! (`dlsym` is not safe in a signal handler, where `setsockopt` may be called).

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_int, c_void, sockaddr, socklen_t};

use crate::sys;

type BindFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type SetsockoptFn = unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int;

/// The address of the next `bind`, or 0 while unknown.
static BIND: AtomicUsize = AtomicUsize::new(0);
/// The address of the next `setsockopt`, or 0 while unknown.
static SETSOCKOPT: AtomicUsize = AtomicUsize::new(0);

/// Looks both up; called by the library's constructor, and again by a call that comes before
/// it (from another library's constructor, say).
pub fn resolve() {
    if BIND.load(Ordering::Acquire) == 0 {
        BIND.store(sys::next_symbol(c"bind"), Ordering::Release);
    }
    if SETSOCKOPT.load(Ordering::Acquire) == 0 {
        SETSOCKOPT.store(sys::next_symbol(c"setsockopt"), Ordering::Release);
    }
}

/// The real `bind()`.
///
/// # Safety
/// As `bind()`: `addr` must point to `len` readable bytes.
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if BIND.load(Ordering::Acquire) == 0 {
        resolve();
    }
    match BIND.load(Ordering::Acquire) {
        // No definition after ours (a libc that is not dynamic?): the system call does it.
        // SAFETY: the caller's guarantee is bind's only precondition.
        0 => unsafe { sys::bind_syscall(fd, addr, len) },
        address => {
            // SAFETY: the address is what dlsym found for the symbol "bind", whose C signature
            // is BindFn.
            let next: BindFn = unsafe { std::mem::transmute::<usize, BindFn>(address) };
            // SAFETY: the caller's guarantee is bind's only precondition.
            unsafe { next(fd, addr, len) }
        }
    }
}

/// The real `setsockopt()`. Safe in a signal handler once [`resolve`] ran (the constructor).
///
/// # Safety
/// As `setsockopt()`: `value` must point to `len` readable bytes.
pub unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    if SETSOCKOPT.load(Ordering::Acquire) == 0 {
        resolve();
    }
    match SETSOCKOPT.load(Ordering::Acquire) {
        // SAFETY: the caller's guarantee is setsockopt's only precondition.
        0 => unsafe { sys::setsockopt_syscall(fd, level, name, value, len) },
        address => {
            // SAFETY: the address is what dlsym found for the symbol "setsockopt", whose C
            // signature is SetsockoptFn.
            let next: SetsockoptFn = unsafe { std::mem::transmute::<usize, SetsockoptFn>(address) };
            // SAFETY: the caller's guarantee is setsockopt's only precondition.
            unsafe { next(fd, level, name, value, len) }
        }
    }
}

/// Sets option `name` at `level` of `fd` to `value` with the real `setsockopt()`.
pub fn set_option(fd: c_int, level: c_int, name: c_int, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: value is valid for reads of its length.
    let rc = unsafe {
        setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
