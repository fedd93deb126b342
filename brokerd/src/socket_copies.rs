//! Finding the copies of a leased socket that live in other processes.
//!
//! The broker keeps no copy of a socket it hands out (a copy would hide when the holder closes
//! its own), so when it must act on one (revoke it, hand it over, say who still holds it) it
//! finds a copy where it lives: the kernel's socket tables give the inode bound to the leased
//! address, the fd links of `/proc/*/fd` name that inode, and `pidfd_getfd` fetches it. This
//! reads every socket and fd of the host: rare requests only, and nothing on the lease path.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::{shutdown, Shutdown};
use portbroker_proto::GrantedSocket;
use std::os::fd::AsRawFd;
use tracing::warn;

use crate::{pidfd, procfs};

/// Shuts down (for reading) one copy of each socket bound to these addresses, which makes
/// every pending and future `accept()` on any copy fail; returns how many were found.
pub fn shut_down_everywhere(sockets: &[GrantedSocket]) -> usize {
    let inodes = procfs::socket_inodes(sockets);
    let mut left: HashSet<u64> = inodes.iter().copied().collect();
    let mut pidfd_of: Option<(i32, OwnedFd)> = None;
    procfs::visit_socket_fds(&inodes, |pid, number, inode| {
        if !left.contains(&inode) {
            return false;
        }
        if pidfd_of.as_ref().is_none_or(|(of, _)| *of != pid) {
            pidfd_of = pidfd::open(pid).ok().map(|fd| (pid, fd));
        }
        let copy = pidfd_of
            .as_ref()
            .and_then(|(_, pf)| pidfd::copy_fd(pf.as_fd(), number).ok());
        if let Some(copy) = copy {
            match shutdown(copy.as_raw_fd(), Shutdown::Read) {
                Ok(()) => {
                    left.remove(&inode);
                }
                Err(err) => warn!("cannot shut down socket {inode} of pid {pid}: {err}"),
            }
        }
        left.is_empty()
    });
    inodes.len() - left.len()
}

/// A copy of each socket, fetched from processes that hold them, in order; `None` unless
/// every one is found.
pub fn copies_of(sockets: &[GrantedSocket]) -> Option<Vec<OwnedFd>> {
    sockets
        .iter()
        .map(|socket| {
            let inode = *procfs::socket_inodes(std::slice::from_ref(socket)).first()?;
            let mut copy = None;
            procfs::visit_socket_fds(&[inode], |pid, number, _| {
                copy = pidfd::open(pid)
                    .and_then(|pidfd| pidfd::copy_fd(pidfd.as_fd(), number))
                    .ok();
                copy.is_some()
            });
            copy
        })
        .collect()
}

/// A process that holds a copy of one of these sockets, if any can be seen.
pub fn a_holder_of(sockets: &[GrantedSocket]) -> Option<i32> {
    let inodes = procfs::socket_inodes(sockets);
    let mut found = None;
    procfs::visit_socket_fds(&inodes, |pid, _, _| {
        found = Some(pid);
        true
    });
    found
}
