//! The crate's only `unsafe`: taking ownership of file descriptors the kernel installed for us.

use std::collections::VecDeque;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::sys::socket::ControlMessageOwned;

/// Moves the fds of an `SCM_RIGHTS` control message into `queue` as owned fds, in order.
/// Other control messages carry no fds and are ignored.
///
/// Only call this with control messages returned by the `recvmsg` that just received them.
pub(crate) fn adopt_scm_rights(cmsg: ControlMessageOwned, queue: &mut VecDeque<OwnedFd>) {
    if let ControlMessageOwned::ScmRights(raw_fds) = cmsg {
        for raw in raw_fds {
            // SAFETY: the kernel installed `raw` in this process's fd table during the `recvmsg`
            // that produced this message (with MSG_CMSG_CLOEXEC). Nothing else in the process
            // knows the number yet, so this OwnedFd is its one and only owner and closes it once.
            queue.push_back(unsafe { OwnedFd::from_raw_fd(raw) });
        }
    }
}
