//! Watching the processes that leases are tied to: one pidfd per process, however many of its
//! leases are tied to it, in an epoll set of its own that the event loop watches as one fd.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::pidfd;

pub struct ProcessWatches {
    /// Readable while a watched process has exited and `exited` has not taken it yet.
    epoll: Epoll,
    pidfds: HashMap<i32, OwnedFd>,
}

impl ProcessWatches {
    pub fn new() -> nix::Result<ProcessWatches> {
        Ok(ProcessWatches {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            pidfds: HashMap::new(),
        })
    }

    /// Starts watching process `pid`, unless it is watched already.
    pub fn watch(&mut self, pid: i32) -> Result<(), String> {
        if self.pidfds.contains_key(&pid) {
            return Ok(());
        }
        let pidfd = pidfd::open(pid).map_err(|e| e.to_string())?;
        self.epoll
            .add(
                &pidfd,
                EpollEvent::new(EpollFlags::EPOLLIN, pid as u32 as u64),
            )
            .map_err(|e| e.to_string())?;
        self.pidfds.insert(pid, pidfd);
        Ok(())
    }

    /// Stops watching process `pid`.
    pub fn unwatch(&mut self, pid: i32) {
        // Closing the pidfd takes it out of the epoll set.
        self.pidfds.remove(&pid);
    }

    /// How many processes are watched.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pidfds.len()
    }

    /// The watched processes that have exited since the last call; they are no longer watched.
    pub fn exited(&mut self) -> Vec<i32> {
        let mut events = [EpollEvent::empty(); 64];
        let mut exited = Vec::new();
        while let Ok(n) = self.epoll.wait(&mut events, EpollTimeout::ZERO) {
            for event in &events[..n] {
                let pid = event.data() as u32 as i32;
                // Closing the pidfd takes it out of the epoll set.
                self.pidfds.remove(&pid);
                exited.push(pid);
            }
            if n < events.len() {
                break;
            }
        }
        exited
    }
}

impl AsFd for ProcessWatches {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_child_is_reported_once() {
        let mut watches = ProcessWatches::new().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        watches.watch(pid).unwrap();
        watches.watch(pid).unwrap();
        assert!(watches.exited().is_empty());
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = Vec::new();
        while seen.is_empty() && std::time::Instant::now() < deadline {
            seen = watches.exited();
        }
        assert_eq!(seen, [pid]);
        assert!(watches.exited().is_empty());
        child.wait().unwrap();
        assert!(watches.watch(-5).is_err());
    }
}
