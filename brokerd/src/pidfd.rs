//! Process file descriptors: the only calls the daemon takes from rustix, because nix 0.32
//! has neither `pidfd_open` nor `pidfd_getfd`.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};

/// A pidfd of process `pid`: readable once the process has exited, and unlike the pid never
/// another process's.
pub fn open(pid: i32) -> io::Result<OwnedFd> {
    // rustix's `Pid::from_raw` panics on a negative number; a client may send any.
    let pid = (pid > 0)
        .then(|| Pid::from_raw(pid))
        .flatten()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{pid} is not a process id"),
            )
        })?;
    Ok(pidfd_open(pid, PidfdFlags::empty())?)
}

/// A copy of the process's fd `number`, as `SCM_RIGHTS` would give it (needs
/// `PTRACE_MODE_ATTACH` over the process: root has it).
pub fn copy_fd(pidfd: BorrowedFd<'_>, number: i32) -> io::Result<OwnedFd> {
    Ok(pidfd_getfd(pidfd, number, PidfdGetfdFlags::empty())?)
}
