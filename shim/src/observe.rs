//! Which `setsockopt()` calls are recorded: those on TCP and UDP sockets of the Internet
//! families that are not bound yet, whose options the socket leased at `bind()` must get.
//! Runs inside `setsockopt()`, maybe in a signal handler: system calls and the fixed table
//! only.

use std::os::fd::RawFd;

use libc::c_int;

use crate::{records, report, sys};

/// After a successful `setsockopt(fd, level, name, value)` of the program's.
pub fn after_setsockopt(fd: RawFd, level: c_int, name: c_int, value: &[u8]) {
    // First the test that most calls fail: options of connected and accepted sockets.
    match sys::local_name(fd) {
        Ok((libc::AF_INET | libc::AF_INET6, 0)) => {}
        _ => return,
    }
    let int = |level, name| sys::int_option(fd, level, name).ok();
    match (
        int(libc::SOL_SOCKET, libc::SO_TYPE),
        int(libc::SOL_SOCKET, libc::SO_PROTOCOL),
    ) {
        (Some(libc::SOCK_STREAM), Some(libc::IPPROTO_TCP))
        | (Some(libc::SOCK_DGRAM), Some(libc::IPPROTO_UDP)) => {}
        _ => return,
    }
    let Ok(cookie) = sys::cookie(fd) else {
        return;
    };
    if let Err(why) = records::record(fd, cookie, level, name, value) {
        report::unrecorded(fd, level, name, why);
    }
}
