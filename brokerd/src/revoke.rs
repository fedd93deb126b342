//! Taking a leased socket away from the processes that hold it.
//!
//! The broker keeps no copy of a socket it hands out (a copy would hide when the holder closes
//! its own), so to revoke it finds a copy where it lives: `/proc/*/fd` links name the socket's
//! inode, `pidfd_getfd` fetches that fd, and `shutdown(SHUT_RD)` on it makes every pending and
//! future `accept()` on any copy fail. This scans every fd of the host: admins only, and rare.

use std::collections::HashSet;
use std::os::fd::AsRawFd;

use nix::sys::socket::{shutdown, Shutdown};
use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};

/// Shuts down one copy of each socket in `inodes`; returns how many were found.
pub fn shut_down_everywhere(inodes: &[u64]) -> usize {
    let mut left: HashSet<u64> = inodes.iter().copied().collect();
    let own = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in procs.flatten() {
        if left.is_empty() {
            break;
        }
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let mut pidfd = None;
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target.to_string_lossy()))
                .filter(|inode| left.contains(inode))
            else {
                continue;
            };
            let Some(number) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if pidfd.is_none() {
                pidfd = Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok());
            }
            let Some(copy) = pidfd
                .as_ref()
                .and_then(|pf| pidfd_getfd(pf, number, PidfdGetfdFlags::empty()).ok())
            else {
                continue;
            };
            match shutdown(copy.as_raw_fd(), Shutdown::Read) {
                Ok(()) => {
                    left.remove(&inode);
                }
                Err(err) => tracing::warn!("cannot shut down socket {inode} of pid {pid}: {err}"),
            }
        }
    }
    inodes.len() - left.len()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[123456]"), Some(123_456));
        assert_eq!(socket_inode("pipe:[12]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
