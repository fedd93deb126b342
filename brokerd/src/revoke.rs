//! Taking a leased socket away from the processes that hold it.
//!
//! The broker keeps no copy of a socket it hands out (a copy would hide when the holder closes
//! its own), so to revoke it finds a copy where it lives: `/proc/net/{tcp,udp}{,6}` give the
//! inode of the socket bound to the leased address, `/proc/*/fd` links name that inode,
//! `pidfd_getfd` fetches that fd, and `shutdown(SHUT_RD)` on it makes every pending and future
//! `accept()` on any copy fail. This reads every socket and fd of the host: admins only, and
//! rare, so the lease path records nothing for it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{shutdown, Shutdown};
use portbroker_proto::{GrantedSocket, Transport};
use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};

/// TCP states of a leased socket in `/proc/net/tcp*`: listening (0A) or bound only (07).
/// Accepted connections share the leased local address, but never these states.
const LEASED_TCP_STATES: [&str; 2] = ["0A", "07"];

/// The inodes of the sockets bound to these addresses, from the kernel's socket tables.
pub fn inodes_of(sockets: &[GrantedSocket]) -> Vec<u64> {
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

/// Shuts down one copy of each socket in `inodes`; returns how many were found.
pub fn shut_down_everywhere(inodes: &[u64]) -> usize {
    let mut left: HashSet<u64> = inodes.iter().copied().collect();
    let mut pidfd = None;
    visit_copies(inodes, |pid, number, inode| {
        if !left.contains(&inode) {
            return false;
        }
        if pidfd.as_ref().is_none_or(|(of, _)| *of != pid) {
            pidfd = Pid::from_raw(pid)
                .and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok())
                .map(|fd| (pid, fd));
        }
        let copy = pidfd
            .as_ref()
            .and_then(|(_, pf)| pidfd_getfd(pf, number, PidfdGetfdFlags::empty()).ok());
        if let Some(copy) = copy {
            match shutdown(copy.as_raw_fd(), Shutdown::Read) {
                Ok(()) => {
                    left.remove(&inode);
                }
                Err(err) => tracing::warn!("cannot shut down socket {inode} of pid {pid}: {err}"),
            }
        }
        left.is_empty()
    });
    inodes.len() - left.len()
}

/// A copy of the socket with this inode, fetched from a process that holds it.
pub fn copy_of(inode: u64) -> Option<std::os::fd::OwnedFd> {
    let mut copy = None;
    visit_copies(&[inode], |pid, number, _| {
        copy = Pid::from_raw(pid)
            .and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok())
            .and_then(|pidfd| pidfd_getfd(&pidfd, number, PidfdGetfdFlags::empty()).ok());
        copy.is_some()
    });
    copy
}

/// A process that holds one of these sockets, if any can be seen.
pub fn a_holder_of(inodes: &[u64]) -> Option<i32> {
    let mut found = None;
    visit_copies(inodes, |pid, _, _| {
        found = Some(pid);
        true
    });
    found
}

/// Calls `visit(pid, fd, inode)` for every fd of every other process that is one of these
/// sockets, until it returns true.
fn visit_copies(inodes: &[u64], mut visit: impl FnMut(i32, i32, u64) -> bool) {
    if inodes.is_empty() {
        return;
    }
    let own = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
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
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
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
                return;
            }
        }
    }
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
        let inode = rustix::fs::fstat(&listener).unwrap().st_ino;
        let granted = GrantedSocket {
            transport: Transport::Tcp,
            addr,
            listening: true,
        };
        assert_eq!(inodes_of(&[granted]), vec![inode]);
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode("socket:[123456]"), Some(123_456));
        assert_eq!(socket_inode("pipe:[12]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }
}
