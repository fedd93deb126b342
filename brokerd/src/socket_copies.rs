//! Finding the copies of a leased socket that live in other processes.
//!
//! The broker keeps no copy of a socket it hands out (a copy would hide when the holder closes
//! its own), so when it must act on one (hand it over, revoke it, say who still holds it) it
//! finds a copy where it lives. A socket is known by its identity, the `SO_COOKIE` recorded at
//! grant, never by its address: another socket may sit on the same address (bound outside the
//! broker once the leased one closed). The kernel's socket tables only narrow the search to
//! candidate inodes; every candidate is fetched with `pidfd_getfd` and kept only if its cookie
//! is one of the lease's. These scans read `/proc`: rare requests only, nothing on the lease
//! path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{shutdown, Shutdown};
use portbroker_proto::{GrantedSocket, Holder, Transport};
use tracing::{debug, warn};

use crate::{bind, pidfd, procfs};

/// The leased sockets to look for: their addresses (a hint) and their cookies (the proof).
#[derive(Clone, Copy)]
pub struct Leased<'a> {
    pub sockets: &'a [GrantedSocket],
    pub cookies: &'a [u64],
}

/// The position in `cookies` of the socket `copy` is, if it is one of them.
fn which(cookies: &[u64], copy: &OwnedFd) -> Option<usize> {
    let cookie = bind::cookie(copy).ok()?;
    cookies.iter().position(|&c| c == cookie)
}

/// How long a search of one holder's fds may take on the event loop: its owner decides how
/// many it has. A claim is charged one request per `FDS_PER_REQUEST` fds read.
const HOLDER_SEARCH_TIME: Duration = Duration::from_millis(50);
pub const FDS_PER_REQUEST: usize = 16;

/// Copies of every leased socket held by process `pid` (which must still be the process that
/// started at `start_time`), in the order of the lease's sockets; `None` unless it holds them
/// all (among the fds read within `HOLDER_SEARCH_TIME`). Only that process is searched: this
/// is what a handover takes. Also how many of its fd links were read, the work done.
pub fn copies_held_by(
    pid: i32,
    start_time: u64,
    leased: Leased<'_>,
) -> (Option<Vec<OwnedFd>>, usize) {
    if leased.cookies.is_empty() || leased.cookies.len() != leased.sockets.len() {
        return (None, 0);
    }
    // The pidfd pins the process; a start time read after it was opened is that process's.
    let Ok(pidfd) = pidfd::open(pid) else {
        return (None, 0);
    };
    if procfs::start_time(pid) != Some(start_time) {
        return (None, 0);
    }
    let hint = procfs::socket_inodes(leased.sockets);
    let mut copies: Vec<Option<OwnedFd>> = leased.cookies.iter().map(|_| None).collect();
    let (fds, read) = procfs::socket_fds_of_within(pid, Some(Instant::now() + HOLDER_SEARCH_TIME));
    for (number, inode) in fds {
        if !hint.is_empty() && !hint.contains(&inode) {
            continue;
        }
        let Ok(copy) = pidfd::copy_fd(pidfd.as_fd(), number) else {
            continue;
        };
        if let Some(index) = which(leased.cookies, &copy) {
            copies[index].get_or_insert(copy);
        }
        if copies.iter().all(Option::is_some) {
            break;
        }
    }
    (copies.into_iter().collect(), read)
}

/// The cookies of every socket process `pid` holds (it must still be the process that started
/// at `start_time`); `None` if it is gone. One pass over its fds, for checking many of its
/// leases at once (recovery).
pub fn cookies_held_by(pid: i32, start_time: u64) -> Option<HashSet<u64>> {
    let pidfd = pidfd::open(pid).ok()?;
    if procfs::start_time(pid) != Some(start_time) {
        return None;
    }
    Some(
        procfs::socket_fds_of(pid)
            .into_iter()
            .filter_map(|(number, _)| pidfd::copy_fd(pidfd.as_fd(), number).ok())
            .filter_map(|copy| bind::cookie(&copy).ok())
            .collect(),
    )
}

/// Calls `visit(pid, index, copy)` for copies of leased sockets found in any process other
/// than the broker, until it returns true, or until `limit`.
fn visit_copies(
    leased: Leased<'_>,
    limit: Option<procfs::ScanLimit>,
    mut visit: impl FnMut(i32, usize, OwnedFd) -> bool,
) {
    if leased.cookies.is_empty() {
        return;
    }
    let inodes = procfs::socket_inodes(leased.sockets);
    let mut pidfd_of: Option<(i32, OwnedFd)> = None;
    procfs::visit_socket_fds_within(&inodes, limit, |pid, number, _inode| {
        if pidfd_of.as_ref().is_none_or(|(of, _)| *of != pid) {
            pidfd_of = pidfd::open(pid).ok().map(|fd| (pid, fd));
        }
        let Some(copy) = pidfd_of
            .as_ref()
            .and_then(|(_, pf)| pidfd::copy_fd(pf.as_fd(), number).ok())
        else {
            return false;
        };
        match which(leased.cookies, &copy) {
            Some(index) => visit(pid, index, copy),
            None => false,
        }
    });
}

/// Shuts down (for reading) every leased socket found in any process, which makes every
/// pending and future `accept()` on any of its copies fail; returns how many were found.
pub fn shut_down_everywhere(leased: Leased<'_>) -> usize {
    let mut done = vec![false; leased.cookies.len()];
    visit_copies(leased, None, |pid, index, copy| {
        if !done[index] {
            match shutdown(copy.as_raw_fd(), Shutdown::Read) {
                Ok(()) => done[index] = true,
                Err(err) => warn!("cannot shut down a leased socket in pid {pid}: {err}"),
            }
        }
        done.iter().all(|&d| d)
    });
    done.iter().filter(|&&d| d).count()
}

/// How long the search for who holds a lingering lease's copy may take: it reads every fd of
/// the host, and a busy one (a loaded CI machine) needed more than 10 ms for a few hundred
/// processes. Its callers also limit how often it runs (`state::HOLDER_SCANS`).
const HOLDER_SCAN_TIME: Duration = Duration::from_millis(100);

/// A process that holds a copy of one of the leased sockets, if any can be seen within a
/// bounded scan (`HOLDER_SCAN_TIME`, `OUTSIDE_SCAN_PROCESSES`).
pub fn a_holder_of(leased: Leased<'_>) -> Option<i32> {
    let mut found = None;
    let limit = procfs::ScanLimit {
        deadline: Instant::now() + HOLDER_SCAN_TIME,
        processes: OUTSIDE_SCAN_PROCESSES,
    };
    visit_copies(leased, Some(limit), |pid, _, _| {
        found = Some(pid);
        true
    });
    found
}

/// How long the search for who holds a port outside the broker may take on the event loop,
/// and how many processes it may read, before it gives up and the refusal names nobody.
const OUTSIDE_SCAN_TIME: Duration = Duration::from_millis(10);
const OUTSIDE_SCAN_PROCESSES: usize = 4096;

/// The process outside the broker whose socket keeps `addr` from being bound, if it can be
/// found cheaply: one read of the kernel's socket tables for the inodes in the way, then a scan
/// of `/proc/*/fd` bounded by [`OUTSIDE_SCAN_TIME`] and [`OUTSIDE_SCAN_PROCESSES`]. Its uid and
/// gid come from `/proc/PID/status`, its name from `/proc/PID/comm`; never its command line.
/// Nothing is fetched from the process: the fd links name the socket.
///
/// Refusals are cheap to provoke, so these searches may take at most a tenth of the event
/// loop's time: after one that took `t`, none starts for `9 t` (the refusal names nobody).
pub fn outside_holder(transport: Transport, addr: SocketAddr) -> Option<Holder> {
    thread_local! {
        static NEXT_SEARCH: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let started = Instant::now();
    if NEXT_SEARCH.get().is_some_and(|next| started < next) {
        debug!("not looking for who holds {transport}:{addr}: searched a moment ago");
        return None;
    }
    let found = search_outside_holder(transport, addr, started);
    NEXT_SEARCH.set(Some(Instant::now() + started.elapsed() * 9));
    found
}

fn search_outside_holder(
    transport: Transport,
    addr: SocketAddr,
    started: Instant,
) -> Option<Holder> {
    let inodes = procfs::inodes_in_the_way(transport, addr);
    // The tables take one read each, however many sockets they hold; the scan is what grows
    // with the host, and what the limit bounds.
    let limit = procfs::ScanLimit {
        deadline: Instant::now() + OUTSIDE_SCAN_TIME,
        processes: OUTSIDE_SCAN_PROCESSES,
    };
    let mut found = None;
    let complete = procfs::visit_socket_fds_within(&inodes, Some(limit), |pid, _, _| {
        found = Some(pid);
        true
    });
    if found.is_none() {
        debug!(
            "no process found holding {transport}:{addr} ({} inodes in the way, {}, {:?})",
            inodes.len(),
            if complete {
                "every process read"
            } else {
                "scan cut short"
            },
            started.elapsed()
        );
    }
    let pid = found?;
    debug!(
        "pid {pid} holds {transport}:{addr} (found in {:?})",
        started.elapsed()
    );
    let (uid, gid) = procfs::process_ids(pid)?;
    Some(Holder {
        pid,
        uid,
        gid,
        name: procfs::process_name(pid).unwrap_or_default(),
    })
}
