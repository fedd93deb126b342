//! `libportbroker_preload.so`: loaded into a program with `LD_PRELOAD` (`portctl wrap` does
//! it), it makes the program's `bind()` of a TCP or UDP socket lease the address and port from
//! portbrokerd, and puts the socket the broker bound in place of the program's, under the
//! same fd number. See README.md beside this crate for what it does and what cannot work.
//!
//! The library defines two C functions that stand in front of libc's: `bind` and
//! `setsockopt` (to record options set before `bind()`, which the leased socket must get too).
//! Everything else about the program is left alone.

// The C ABI that calls into these modules is left out of unit tests (see `exported`).
#![cfg_attr(test, allow(dead_code))]

mod bind;
mod broker;
mod classify;
mod forkgate;
mod guard;
mod install;
mod lock;
mod observe;
mod own;
mod real;
mod records;
mod report;
mod settings;
mod sys;

#[cfg(not(test))]
mod exported {
    //! The C ABI. Not in unit tests: there the test binary's own binds would come here.

    use libc::{c_int, c_void, sockaddr, socklen_t};

    use crate::{bind, forkgate, guard, observe, own, real, records, settings, sys};

    /// Runs when the library loads, before the program's `main`: finds libc's functions,
    /// reads the environment and registers the fork handlers, while nothing of the program
    /// runs yet (none of it is safe in a signal handler, where `setsockopt` may be called).
    extern "C" fn load() {
        real::resolve();
        settings::capture();
        if let Err(err) = sys::at_fork(before_fork, after_fork_in_parent, after_fork_in_child) {
            sys::write_stderr(
                format!(
                    "portbroker-preload: warning: cannot register fork handlers ({err}); a \
                     fork during another thread's bind may leave the child unable to bind\n"
                )
                .as_bytes(),
            );
        }
    }

    #[used]
    #[link_section = ".init_array"]
    static LOAD: extern "C" fn() = load;

    unsafe extern "C" fn before_fork() {
        forkgate::before_fork();
    }

    unsafe extern "C" fn after_fork_in_parent() {
        forkgate::after_fork_in_parent();
    }

    unsafe extern "C" fn after_fork_in_child() {
        forkgate::after_fork_in_child();
        records::after_fork_in_child();
        own::after_fork_in_child();
    }

    /// `bind(2)`, through the broker for unbound TCP and UDP sockets of AF_INET and AF_INET6.
    ///
    /// # Safety
    /// As `bind(2)`: `addr` points to `len` readable bytes.
    #[no_mangle]
    pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
        // SAFETY: the program's promise to bind(2) is ours to pass on.
        let kernel = || unsafe { real::bind(fd, addr, len) };
        // SAFETY: as above: addr points to len readable bytes.
        let address = unsafe { sys::read_address(addr, len) };
        // A panic must not unwind into C; a bug of the shim fails the bind instead.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            bind::bind(fd, address, kernel)
        }))
        .unwrap_or_else(|_| {
            sys::write_stderr(
                b"portbroker-preload: internal error in bind(); failing it with EIO\n",
            );
            sys::set_errno(libc::EIO);
            -1
        })
    }

    /// `setsockopt(2)`, recording options set on unbound TCP and UDP sockets.
    /// Async-signal-safe, as the real one is.
    ///
    /// # Safety
    /// As `setsockopt(2)`: `value` points to `len` readable bytes.
    #[no_mangle]
    pub unsafe extern "C" fn setsockopt(
        fd: c_int,
        level: c_int,
        name: c_int,
        value: *const c_void,
        len: socklen_t,
    ) -> c_int {
        // SAFETY: the program's promise to setsockopt(2) is ours to pass on.
        let rc = unsafe { real::setsockopt(fd, level, name, value, len) };
        if rc == 0 && !guard::is_inside() {
            // The program sees errno as the real call left it.
            let errno = sys::errno();
            // SAFETY: as above, and the slice lives only during this call.
            let value = unsafe { sys::option_value(value, len) };
            observe::after_setsockopt(fd, level, name, value);
            sys::set_errno(errno);
        }
        rc
    }
}
