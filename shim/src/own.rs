//! The leases this process took through the shim, to tell a port the program let go of from
//! one it still holds.
//!
//! A lease is tied to the process, so it outlives the socket: a program that binds a port,
//! closes the socket and binds the port again (a listener restarted, or a "free port" helper
//! that binds port 0, reads the number and closes) would be refused by its own lease. When the
//! broker names one of these leases as the holder and no fd of this process still has its
//! socket, the shim releases it and asks again, which is what the kernel would allow.

use crate::lock::TryLock;
use crate::sys;

/// At most this many are remembered; the oldest are dropped first (a port of theirs is then
/// refused by its own lease until the process exits, as if it were not remembered).
const KEPT: usize = 1024;

#[derive(Clone, Copy)]
struct Own {
    lease: u64,
    /// The leased socket's cookie.
    cookie: u64,
}

static OWN: TryLock<Vec<Own>> = TryLock::new(Vec::new());

/// Remembers that this process holds lease `lease` with the socket `cookie`.
pub fn remember(lease: u64, cookie: u64) {
    if let Some(mut own) = OWN.lock() {
        if own.len() == KEPT {
            own.remove(0);
        }
        own.push(Own { lease, cookie });
    }
}

/// Whether `lease` is one of this process's whose socket no fd of the process has any more.
/// Then it is forgotten: the caller releases it.
pub fn take_if_let_go(lease: u64) -> bool {
    let Some(mut own) = OWN.lock() else {
        return false;
    };
    let Some(index) = own.iter().position(|o| o.lease == lease) else {
        return false;
    };
    if holds_socket(own[index].cookie) {
        return false;
    }
    own.remove(index);
    true
}

/// Whether an fd of this process refers to the socket `cookie`.
fn holds_socket(cookie: u64) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        // Cannot tell: assume it does, and let the refusal stand.
        return true;
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .any(|fd| sys::cookie(fd).ok() == Some(cookie))
}

/// `pthread_atfork` child handler: the leases are the parent's (tied to its pid), not the
/// child's.
pub fn after_fork_in_child() {
    let was_held = OWN.unlock_after_fork();
    if let Some(mut own) = OWN.lock() {
        let parents = std::mem::take(&mut *own);
        if was_held {
            // Another thread was changing it at the fork: its memory may be half-written, so
            // it is never touched (leaked once) rather than freed.
            std::mem::forget(parents);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_lease_is_let_go_only_once_no_fd_has_its_socket() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cookie = sys::cookie(socket.as_raw_fd()).unwrap();
        remember(77, cookie);
        assert!(!take_if_let_go(77), "the socket is still open");
        assert!(!take_if_let_go(78), "not a lease of ours");
        drop(socket);
        assert!(take_if_let_go(77));
        assert!(!take_if_let_go(77), "forgotten once taken");
    }
}
