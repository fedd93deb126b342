//! Process file descriptors: the only calls the daemon takes from rustix, because nix 0.32
//! has neither `pidfd_open` nor `pidfd_getfd`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

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

/// Whether this process may fetch fds with `pidfd_getfd` at all. It copies one of its own fds,
/// which no ptrace rule refuses: only a seccomp filter (a unit's `SystemCallFilter=`, a
/// container's) or a kernel before 5.6 can, and then every fetch of a leased socket fails.
pub fn can_copy_fds() -> io::Result<()> {
    let me = open(std::process::id() as i32)?;
    copy_fd(me.as_fd(), me.as_raw_fd()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_may_copy_its_own_fds() {
        can_copy_fds().expect("pidfd_getfd of an own fd");
    }

    #[test]
    fn a_negative_or_zero_pid_is_refused_not_a_panic() {
        for pid in [0, -1, i32::MIN] {
            let err = open(pid).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{pid}");
        }
    }
}
