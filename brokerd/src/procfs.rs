//! The event loop's reads of `/proc`, in one place (`main.rs` reads three `/proc/sys/net`
//! settings once at start-up).
//!
//! Each of these is a blocking read on the event loop. The per-connection ones
//! ([`process_name`], [`start_time`], [`groups`]) run once when a client connects. The scans
//! ([`socket_inodes`], [`visit_socket_fds_within`]) read every socket or fd of the host: a
//! revoke's is whole (an administrator asks), and the others give up at a deadline and a count
//! of processes, checked within a process too, since its owner decides how many fds it holds:
//! naming who holds a lingering lease's copy, and who holds a port outside the broker after a
//! refused fixed-port bind ([`inodes_in_the_way`]). [`socket_fds_of_within`] reads one
//! process's fds (a claim's holder) up to a deadline.

use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use portbroker_proto::{GrantedSocket, Transport};

/// The name the kernel knows a process by (`/proc/PID/comm`); `None` if it is gone or hidden.
pub fn process_name(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_owned())
}

/// The real uid of a process (`/proc/PID/status`); `None` if it is gone.
pub fn process_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The real uid and gid of a process (`/proc/PID/status`); `None` if it is gone.
pub fn process_ids(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let first = |key: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((first("Uid:")?, first("Gid:")?))
}

/// The start time of a process in clock ticks since boot (`/proc/PID/stat` field 22), or
/// `None` if it is gone. With the pid, it names a process across pid reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces; field 22 is the 20th after the paren.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The groups of the process `pid` that connected as `uid` and `gid` (`SO_PEERCRED`): `gid`
/// and its supplementary groups from `/proc/PID/status`, which decide what the policy lets it
/// do (an administrator is a member of an admin group). Only while that pid is a process of
/// the same effective uid and gid: the peer may have exited since it connected and its pid
/// gone to another user's process, whose groups are not the peer's; then `gid` alone.
pub fn groups(pid: i32, uid: u32, gid: u32) -> Vec<u32> {
    let mut groups = vec![gid];
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        // "Uid:\treal\teffective\tsaved\tfs": SO_PEERCRED gives the effective ids.
        let effective = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|ids| ids.split_whitespace().nth(1))
                .and_then(|id| id.parse::<u32>().ok())
        };
        if effective("Uid:") == Some(uid) && effective("Gid:") == Some(gid) {
            if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Groups:")) {
                groups.extend(
                    line.split_whitespace()
                        .filter_map(|g| g.parse::<u32>().ok()),
                );
            }
        }
    }
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// TCP states of a leased socket in `/proc/net/tcp*`: listening (0A) or bound only (07).
/// Accepted connections share the leased local address, but never these states.
const LEASED_TCP_STATES: [&str; 2] = ["0A", "07"];

/// The inodes of the sockets bound to these addresses, from the kernel's socket tables
/// (`/proc/net/{tcp,udp}{,6}`).
pub fn socket_inodes(sockets: &[GrantedSocket]) -> Vec<u64> {
    let mut inodes = Vec::new();
    for socket in sockets {
        let table = match (socket.transport, socket.addr) {
            (Transport::Tcp, SocketAddr::V4(_)) => "/proc/net/tcp",
            (Transport::Tcp, SocketAddr::V6(_)) => "/proc/net/tcp6",
            (Transport::Udp, SocketAddr::V4(_)) => "/proc/net/udp",
            (Transport::Udp, SocketAddr::V6(_)) => "/proc/net/udp6",
        };
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        inodes.extend(text.lines().skip(1).filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = parse_proc_addr(fields.get(1)?)?;
            let state = *fields.get(3)?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let leased_state =
                socket.transport == Transport::Udp || LEASED_TCP_STATES.contains(&state);
            (local == socket.addr && leased_state).then_some(inode)
        }));
    }
    inodes
}

/// The kernel's socket table of a transport and family.
fn proc_net_table(transport: Transport, v6: bool) -> &'static str {
    match (transport, v6) {
        (Transport::Tcp, false) => "/proc/net/tcp",
        (Transport::Tcp, true) => "/proc/net/tcp6",
        (Transport::Udp, false) => "/proc/net/udp",
        (Transport::Udp, true) => "/proc/net/udp6",
    }
}

/// Whether sockets bound to `a` and `b` on one port would be in each other's way, as the
/// kernel's binds see it: the same address; a wildcard and an address of its family; `[::]`
/// (dual-stack, as far as the tables tell) and any IPv4 address. IPv4-mapped IPv6 addresses
/// count as IPv4.
pub fn addresses_overlap(a: IpAddr, b: IpAddr) -> bool {
    let (a, b) = (a.to_canonical(), b.to_canonical());
    a == b
        || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
        || (a == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && b.is_ipv4())
        || (b == IpAddr::V6(Ipv6Addr::UNSPECIFIED) && a.is_ipv4())
}

/// The inodes of the sockets that keep `addr` from being bound: bound (TCP: listening) on its port at an overlapping address ([`addresses_overlap`]), from one read of each
/// kernel table that can hold one (`/proc/net/{tcp,udp}{,6}`).
pub fn inodes_in_the_way(transport: Transport, addr: SocketAddr) -> Vec<u64> {
    let ip = addr.ip().to_canonical();
    // IPv6 tables hold dual-stack and IPv4-mapped sockets; IPv4 ones matter to [::] only.
    let tables: &[bool] = match ip {
        IpAddr::V4(_) => &[false, true],
        IpAddr::V6(v6) if v6.is_unspecified() => &[false, true],
        IpAddr::V6(_) => &[true],
    };
    let mut inodes = Vec::new();
    for &v6 in tables {
        let Ok(file) = std::fs::File::open(proc_net_table(transport, v6)) else {
            continue;
        };
        // The kernel lists listening TCP sockets first, then connections (a busy host has
        // thousands in TIME_WAIT, and generating those lines takes tens of ms): the read stops
        // at the first socket that does not listen. TCP sockets that are bound only are not
        // listed at all; UDP tables are read whole.
        let lines = BufReader::with_capacity(64 * 1024, file).lines().skip(1);
        for line in lines {
            let Ok(line) = line else { break };
            let mut fields = line.split_whitespace();
            let (Some(local), Some(state)) = (fields.nth(1), fields.nth(1)) else {
                continue;
            };
            if transport == Transport::Tcp && state != "0A" {
                break;
            }
            let (Some(local), Some(Ok(inode))) =
                (parse_proc_addr(local), fields.nth(5).map(str::parse::<u64>))
            else {
                continue;
            };
            if local.port() == addr.port() && inode != 0 && addresses_overlap(local.ip(), ip) {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word is printed as
/// the machine's own integer, so its native bytes are the address bytes.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// How much of the host a bounded scan may read: it stops at the deadline or after this many
/// processes, whichever comes first.
#[derive(Clone, Copy, Debug)]
pub struct ScanLimit {
    pub deadline: Instant,
    pub processes: usize,
}

/// How many fd links a scan reads between two looks at its deadline: one process may hold
/// hundreds of thousands of fds, and its owner decides how many.
const FDS_BETWEEN_CHECKS: usize = 256;

/// Calls `visit(pid, fd, inode)` for every fd of every other process (`/proc/*/fd`) that is
/// one of the sockets `inodes`, until it returns true, or until `limit` (checked between
/// processes, and within one every `FDS_BETWEEN_CHECKS` fds); returns false if it gave up
/// before it had seen every process (and `visit` had not returned true).
pub fn visit_socket_fds_within(
    inodes: &[u64],
    limit: Option<ScanLimit>,
    mut visit: impl FnMut(i32, i32, u64) -> bool,
) -> bool {
    if inodes.is_empty() {
        return true;
    }
    let own = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return true;
    };
    let mut scanned = 0usize;
    for entry in procs.flatten() {
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
        if let Some(limit) = limit {
            if scanned >= limit.processes || Instant::now() >= limit.deadline {
                return false;
            }
        }
        scanned += 1;
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for (read, fd) in fds.flatten().enumerate() {
            if let Some(limit) = limit {
                if read % FDS_BETWEEN_CHECKS == FDS_BETWEEN_CHECKS - 1
                    && Instant::now() >= limit.deadline
                {
                    return false;
                }
            }
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target.to_string_lossy()))
                .filter(|inode| inodes.contains(inode))
            else {
                continue;
            };
            let Some(number) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if visit(pid, number, inode) {
                return true;
            }
        }
    }
    true
}

/// The socket fds of process `pid` (`/proc/PID/fd`): each fd's number and its socket's inode.
pub fn socket_fds_of(pid: i32) -> Vec<(i32, u64)> {
    socket_fds_of_within(pid, None).0
}

/// [`socket_fds_of`] that stops reading at `deadline` (checked every `FDS_BETWEEN_CHECKS`
/// fds), with what it found by then, and how many fd links it read (sockets or not): the work.
pub fn socket_fds_of_within(pid: i32, deadline: Option<Instant>) -> (Vec<(i32, u64)>, usize) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (Vec::new(), 0);
    };
    let mut found = Vec::new();
    let mut read = 0;
    for fd in fds.flatten() {
        read += 1;
        if read % FDS_BETWEEN_CHECKS == 0
            && deadline.is_some_and(|deadline| Instant::now() >= deadline)
        {
            break;
        }
        let link = std::fs::read_link(fd.path());
        let inode = link.ok().and_then(|l| socket_inode(&l.to_string_lossy()));
        let number = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
        if let (Some(inode), Some(number)) = (inode, number) {
            found.push((number, inode));
        }
    }
    (found, read)
}

/// The inode of an fd link such as `socket:[123]`.
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
    fn proc_net_addresses_parse() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_proc_addr("0100007F:1F90"),
                Some("127.0.0.1:8080".parse().unwrap())
            );
            assert_eq!(
                parse_proc_addr("00000000000000000000000001000000:0035"),
                Some("[::1]:53".parse().unwrap())
            );
        }
        assert_eq!(
            parse_proc_addr("00000000:0050"),
            Some("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("nonsense"), None);
    }

    #[test]
    fn a_bound_socket_is_found_in_the_kernel_tables() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inode = nix::sys::stat::fstat(&listener).unwrap().st_ino;
        let granted = GrantedSocket {
            transport: Transport::Tcp,
            addr,
            listening: true,
            v6_only: false,
        };
        assert_eq!(socket_inodes(&[granted]), vec![inode]);
    }

    #[test]
    fn overlapping_addresses_are_those_the_kernel_refuses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(addresses_overlap(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(addresses_overlap(ip("0.0.0.0"), ip("127.0.0.1")));
        assert!(addresses_overlap(ip("127.0.0.1"), ip("::")));
        assert!(addresses_overlap(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
        assert!(addresses_overlap(ip("::"), ip("::1")));
        assert!(!addresses_overlap(ip("127.0.0.1"), ip("127.0.0.2")));
        assert!(!addresses_overlap(ip("0.0.0.0"), ip("::1")));
        assert!(!addresses_overlap(ip("::1"), ip("127.0.0.1")));
    }

    #[test]
    fn the_socket_in_the_way_of_a_bind_is_found_and_its_process_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inode = nix::sys::stat::fstat(&listener).unwrap().st_ino;
        let wildcard: SocketAddr = format!("0.0.0.0:{}", addr.port()).parse().unwrap();
        for asked in [addr, wildcard] {
            assert_eq!(inodes_in_the_way(Transport::Tcp, asked), vec![inode]);
        }
        assert!(inodes_in_the_way(Transport::Udp, addr).is_empty());
        // This process is never visited; an exhausted limit stops before any other.
        let limit = ScanLimit {
            deadline: Instant::now(),
            processes: 0,
        };
        assert!(!visit_socket_fds_within(
            &[inode],
            Some(limit),
            |_, _, _| { panic!("visited past the limit") }
        ));
    }

    /// A process's owner decides how many fds it holds: a bounded read of them stops at its
    /// deadline however many there are.
    #[test]
    fn a_bounded_read_of_a_process_fds_stops_at_its_deadline() {
        let sockets: Vec<std::net::UdpSocket> = (0..600)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let pid = std::process::id() as i32;
        assert!(socket_fds_of(pid).len() >= sockets.len());
        let (bounded, read) = socket_fds_of_within(pid, Some(Instant::now()));
        assert!(read <= FDS_BETWEEN_CHECKS, "{read} fd links read");
        assert!(
            bounded.len() < FDS_BETWEEN_CHECKS,
            "{} fds read",
            bounded.len()
        );
    }

    /// The groups of a pid are the peer's only while the pid is a process of the peer's ids:
    /// one of another user (a reused pid) lends none of its groups.
    #[test]
    fn a_pid_of_other_ids_lends_no_groups() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to start a process of other ids and groups");
            return;
        }
        let mut child = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--groups=4242",
                "--",
                "sleep",
                "30",
            ])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // setpriv execs sleep once it has changed ids: wait for that.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while process_name(pid).as_deref() != Some("sleep") && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(groups(pid, 65534, 65534).contains(&4242));
        assert_eq!(groups(pid, 0, 0), [0], "root's peer is not this process");
        assert_eq!(groups(pid, 65534, 0), [0]);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[123456]"), Some(123_456));
        assert_eq!(socket_inode("pipe:[12]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn facts_about_this_process() {
        let pid = std::process::id() as i32;
        assert_eq!(process_uid(pid), Some(nix::unistd::getuid().as_raw()));
        assert!(start_time(pid).is_some_and(|t| t > 0));
        assert!(process_name(pid).is_some_and(|n| !n.is_empty()));
        let gid = nix::unistd::getegid().as_raw();
        let uid = nix::unistd::geteuid().as_raw();
        assert!(groups(pid, uid, gid).contains(&gid));
        assert_eq!(process_uid(-1), None);
        assert_eq!(
            process_ids(pid),
            Some((
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw()
            ))
        );
    }
}
