//! Relaying signals to CMD while waiting for it.
//!
//! The handlers record each signal with its `si_code` and sender in a self-pipe; the main
//! thread reads the records, forwards what CMD has not received already, and reaps CMD when a
//! `SIGCHLD` arrives. Registered before the fork, so no signal and no child exit can slip by.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use libc::{c_int, siginfo_t};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpgid, getpgrp, pipe2, read, write, Pid};
use signal_hook_registry::SigId;

/// The signals passed on to CMD.
const RELAYED: [c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// One signal as a handler saw it: number, `si_code`, and the sending pid (0 if none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub signal: c_int,
    pub code: c_int,
    pub sender: libc::pid_t,
}

/// What [`SignalRelay::wait`] woke up for.
#[derive(Debug)]
pub enum Wakeup {
    /// A signal arrived (SIGCHLD included).
    Signal(Record),
    /// The other fd is readable.
    Readable,
    /// The timeout passed.
    Timeout,
}

const RECORD_LEN: usize = 12;

impl Record {
    fn to_bytes(self) -> [u8; RECORD_LEN] {
        let mut bytes = [0; RECORD_LEN];
        bytes[0..4].copy_from_slice(&self.signal.to_ne_bytes());
        bytes[4..8].copy_from_slice(&self.code.to_ne_bytes());
        bytes[8..12].copy_from_slice(&self.sender.to_ne_bytes());
        bytes
    }

    fn from_bytes(bytes: [u8; RECORD_LEN]) -> Self {
        let field = |i: usize| c_int::from_ne_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Record {
            signal: field(0),
            code: field(4),
            sender: field(8),
        }
    }
}

/// Signal handlers that feed a pipe; removed again when dropped.
pub struct SignalRelay {
    records: OwnedFd,
    ids: Vec<SigId>,
}

impl SignalRelay {
    /// Installs the handlers: one for each relayed signal that is not ignored, and SIGCHLD.
    pub fn install() -> Result<SignalRelay> {
        let (records, feed) = pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
        // A handler must never block: when the pipe is full, the record is dropped (the main
        // loop reaps on every wakeup anyway, so a lost SIGCHLD costs nothing).
        fcntl(feed.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .context("cannot make a pipe non-blocking")?;
        let feed = Arc::new(feed);
        let mut relay = SignalRelay {
            records,
            ids: Vec::new(),
        };
        for signal in RELAYED.into_iter().chain([libc::SIGCHLD]) {
            // Keep what our parent chose to ignore (nohup, background jobs): CMD inherits it.
            if signal != libc::SIGCHLD && is_ignored(signal)? {
                continue;
            }
            let feed = Arc::clone(&feed);
            // SAFETY: the handler only reads the siginfo and calls write(2) on a non-blocking
            // pipe: async-signal-safe, no allocation, no lock, no panic.
            let id = unsafe {
                signal_hook_registry::register_sigaction(signal, move |info: &siginfo_t| {
                    let record = Record {
                        signal,
                        code: info.si_code,
                        sender: sender_of(info),
                    };
                    let _ = write(feed.as_fd(), &record.to_bytes());
                })
            }
            .with_context(|| format!("cannot handle signal {signal}"))?;
            relay.ids.push(id);
        }
        Ok(relay)
    }

    /// Forwards signals to `child` until it ends, and returns its exit status as a shell
    /// reports it: the exit code, or 128 + the signal that killed it.
    pub fn forward_until_exit(&self, child: Pid) -> Result<u8> {
        let our_group = getpgrp();
        loop {
            if let Some(code) = reap(child).context("cannot wait for CMD")? {
                return Ok(code);
            }
            let record = self.next_record().context("cannot read the signal pipe")?;
            if record.signal == libc::SIGCHLD || !should_forward(record, child, our_group) {
                continue;
            }
            if let Ok(signal) = Signal::try_from(record.signal) {
                // ESRCH: CMD is gone already; the next SIGCHLD reaps it.
                let _ = kill(child, signal);
            }
        }
    }

    /// Waits for a signal, for `other` to become readable, or for `timeout` (none: forever).
    pub fn wait(&self, other: Option<BorrowedFd<'_>>, timeout: Option<Duration>) -> Result<Wakeup> {
        let mut fds = [
            libc::pollfd {
                fd: self.records.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: other.map_or(-1, |fd| fd.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Rounded up, so that a timeout never fires early and spins.
        let millis = timeout.map_or(-1, |timeout| {
            c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(c_int::MAX)
        });
        // SAFETY: poll reads and writes exactly the two pollfd structs of a live local array; a
        // negative fd is ignored.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                // A signal's handler wrote its record: the next call sees it.
                return Ok(Wakeup::Timeout);
            }
            return Err(anyhow::Error::new(err).context("cannot wait for signals"));
        }
        if fds[0].revents != 0 {
            let record = self.next_record().context("cannot read the signal pipe")?;
            return Ok(Wakeup::Signal(record));
        }
        if fds[1].revents != 0 {
            return Ok(Wakeup::Readable);
        }
        Ok(Wakeup::Timeout)
    }

    fn next_record(&self) -> nix::Result<Record> {
        let mut bytes = [0u8; RECORD_LEN];
        let mut filled = 0;
        while filled < RECORD_LEN {
            match read(self.records.as_fd(), &mut bytes[filled..]) {
                Ok(0) => return Err(Errno::EPIPE),
                Ok(n) => filled += n,
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(errno),
            }
        }
        Ok(Record::from_bytes(bytes))
    }
}

impl Drop for SignalRelay {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook_registry::unregister(id);
        }
    }
}

fn sender_of(info: &siginfo_t) -> libc::pid_t {
    match info.si_code {
        // SAFETY: for these codes the kernel fills in si_pid (kill, sigqueue, tkill).
        libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL => unsafe { info.si_pid() },
        _ => 0,
    }
}

/// Whether CMD still needs the signal. The terminal sends SIGINT, SIGQUIT and SIGHUP to its
/// whole foreground process group (si_code SI_KERNEL), CMD included as long as it stayed in
/// ours; relaying such a signal would deliver it twice. A signal CMD sent us is not echoed back.
pub fn should_forward(record: Record, child: Pid, our_group: Pid) -> bool {
    if record.sender != 0 && record.sender == child.as_raw() {
        return false;
    }
    if record.code == libc::SI_KERNEL {
        return getpgid(Some(child)) != Ok(our_group);
    }
    true
}

fn is_ignored(signal: c_int) -> io::Result<bool> {
    let mut current = MaybeUninit::<libc::sigaction>::uninit();
    // SAFETY: a null new action only queries the current one into `current`.
    let rc = unsafe { libc::sigaction(signal, ptr::null(), current.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigaction succeeded and filled it in.
    let current = unsafe { current.assume_init() };
    Ok(current.sa_sigaction == libc::SIG_IGN)
}

/// The child's exit status if it has ended; `None` while it runs.
pub fn reap(child: Pid) -> nix::Result<Option<u8>> {
    loop {
        return match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Ok(Some(code as u8)),
            Ok(WaitStatus::Signaled(_, signal, _)) => Ok(Some(128 + signal as u8)),
            Ok(_) => Ok(None),
            Err(Errno::EINTR) => continue,
            Err(errno) => Err(errno),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn::{spawn, Program};
    use std::io::Read;

    fn sh(script: &str) -> Program {
        Program::resolve(&["sh".into(), "-c".into(), script.into()]).unwrap()
    }

    /// One test, because the handlers are process-wide: two relays would both see a signal.
    #[test]
    fn signals_reach_cmd_and_its_end_comes_back_as_a_status() {
        let relay = SignalRelay::install().unwrap();

        // CMD says it is ready through fd 3, then waits for SIGUSR1.
        let (ready_read, ready_write) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let script = r#"trap "exit 7" USR1; echo ready >&3; exec 3>&-; while :; do :; done"#;
        let child = spawn(&sh(script), vec![ready_write], &["ready".into()]).unwrap();
        let mut ready = String::new();
        std::fs::File::from(ready_read)
            .read_to_string(&mut ready)
            .unwrap();
        assert_eq!(ready, "ready\n");
        // Sent to portctl (here: the test process) by someone else: relayed to CMD.
        kill(nix::unistd::getpid(), Signal::SIGUSR1).unwrap();
        assert_eq!(relay.forward_until_exit(child).unwrap(), 7);

        // Killed by a signal: 128 + its number, as shells report it.
        let child = spawn(&sh("kill -TERM $$"), Vec::new(), &[]).unwrap();
        assert_eq!(relay.forward_until_exit(child).unwrap(), 128 + 15);

        let child = spawn(&sh("exit 3"), Vec::new(), &[]).unwrap();
        assert_eq!(relay.forward_until_exit(child).unwrap(), 3);
    }

    #[test]
    fn records_survive_the_pipe_format() {
        let record = Record {
            signal: libc::SIGTERM,
            code: libc::SI_USER,
            sender: 4242,
        };
        assert_eq!(Record::from_bytes(record.to_bytes()), record);
    }

    #[test]
    fn terminal_signals_and_echoes_are_not_relayed() {
        let child = Pid::from_raw(4242);
        let record = |code, sender| Record {
            signal: libc::SIGINT,
            code,
            sender,
        };
        // Sent with kill(1) by someone else: relayed.
        assert!(should_forward(record(libc::SI_USER, 1), child, getpgrp()));
        // Sent by the child itself: not echoed.
        assert!(!should_forward(
            record(libc::SI_USER, 4242),
            child,
            getpgrp()
        ));
        // From the terminal, when the child is in our process group: it has it already.
        let ourselves = nix::unistd::getpid();
        assert!(!should_forward(
            record(libc::SI_KERNEL, 0),
            ourselves,
            getpgrp()
        ));
    }
}
