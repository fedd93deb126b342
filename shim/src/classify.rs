//! Which binds the shim takes to the broker: those of TCP and UDP sockets of the Internet
//! families that are not bound yet. Everything else goes to the kernel untouched, which then
//! answers as it always does (an already bound socket gets EINVAL, a Unix socket its file).

use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::os::fd::RawFd;

use libc::c_int;
use portbroker::Transport;

use crate::sys::{self, Address};

/// A bind the shim leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The program's fd.
    pub fd: RawFd,
    pub transport: Transport,
    /// What the program asked to bind; port 0 takes one from the broker's pool.
    pub addr: SocketAddr,
    /// IPV6_V6ONLY of the program's socket (false for IPv4).
    pub v6_only: bool,
    /// The program's socket's cookie, under which its options were recorded.
    pub cookie: u64,
}

/// What to do with a bind.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The kernel answers it, as if the shim were absent.
    PassThrough,
    Lease(Target),
    /// Fail it with this errno, and say on stderr why the bind of `what` cannot be leased.
    Refuse {
        errno: c_int,
        what: String,
        why: String,
    },
}

/// Decides about `bind(fd, address)`. Any error while looking at the socket (not a socket, a
/// bad fd) passes the bind to the kernel, which reports it as it would have.
pub fn decide(fd: RawFd, address: Address) -> Decision {
    let (family, addr) = match address {
        Address::Inet(addr) => (libc::AF_INET, SocketAddr::V4(addr)),
        Address::Inet6(addr) => (libc::AF_INET6, SocketAddr::V6(addr)),
        Address::Other => return Decision::PassThrough,
    };
    let int = |level, name| sys::int_option(fd, level, name).ok();
    // An address of the other family is the kernel's to refuse (EINVAL, EAFNOSUPPORT).
    if int(libc::SOL_SOCKET, libc::SO_DOMAIN) != Some(family) {
        return Decision::PassThrough;
    }
    let transport = match (
        int(libc::SOL_SOCKET, libc::SO_TYPE),
        int(libc::SOL_SOCKET, libc::SO_PROTOCOL),
    ) {
        (Some(libc::SOCK_STREAM), Some(libc::IPPROTO_TCP)) => Transport::Tcp,
        (Some(libc::SOCK_DGRAM), Some(libc::IPPROTO_UDP)) => Transport::Udp,
        // Raw sockets, SCTP, MPTCP, UDP-Lite, ...: the broker leases TCP and UDP only.
        _ => return Decision::PassThrough,
    };
    if sys::local_port(fd).ok() != Some(0) {
        return Decision::PassThrough;
    }
    // A client socket that binds an address only, to connect from it: the kernel picks its
    // port at connect(), so there is no port to lease.
    if addr.port() == 0 && int(libc::SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT).unwrap_or(0) != 0 {
        return Decision::PassThrough;
    }
    if let SocketAddr::V6(v6) = addr {
        if let Some(why) = unleasable_v6(&v6) {
            return Decision::Refuse {
                errno: libc::EADDRNOTAVAIL,
                what: format!("{transport}:{addr}"),
                why,
            };
        }
    }
    let v6_only =
        family == libc::AF_INET6 && int(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap_or(0) != 0;
    let Ok(cookie) = sys::cookie(fd) else {
        return Decision::PassThrough;
    };
    Decision::Lease(Target {
        fd,
        transport,
        addr: SocketAddr::new(addr.ip(), addr.port()),
        v6_only,
        cookie,
    })
}

/// Why an IPv6 address cannot be leased, if it cannot.
fn unleasable_v6(addr: &SocketAddrV6) -> Option<String> {
    let ip = addr.ip();
    if let Some(v4) = ip.to_ipv4_mapped() {
        // The broker would hand back a socket that conflicts with IPv4 leases it does not
        // know of; an AF_INET socket says the same thing plainly.
        return Some(format!(
            "{ip} is an IPv4-mapped IPv6 address, which the broker does not lease; bind an \
             AF_INET socket to {v4} instead"
        ));
    }
    // fe80::/10: meaningful only with an interface, which a lease cannot name.
    if ip.segments()[0] & 0xffc0 == 0xfe80 {
        return Some(format!(
            "{ip} is a link-local address, which needs an interface (scope id {}), and a lease \
             cannot name one",
            addr.scope_id()
        ));
    }
    None
}

/// The address as a lease names it, for messages.
pub fn describe(target: &Target) -> String {
    format!("{}:{}", target.transport, target.addr)
}

/// Whether `ip` is the IPv6 wildcard `[::]`.
pub fn is_v6_wildcard(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, TcpListener};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> OwnedFd {
        // SAFETY: socket() returns a new fd that nothing else owns, or -1 (checked).
        let fd = unsafe { libc::socket(domain, kind, protocol) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh socket owned by nothing else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn v4(port: u16) -> Address {
        Address::Inet(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    fn v6(ip: Ipv6Addr) -> Address {
        Address::Inet6(SocketAddrV6::new(ip, 8080, 0, 0))
    }

    #[test]
    fn unbound_tcp_and_udp_sockets_are_leased_with_their_transport() {
        let tcp = socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let Decision::Lease(target) = decide(tcp.as_raw_fd(), v4(8080)) else {
            panic!("an unbound TCP socket must be leased")
        };
        assert_eq!(target.transport, Transport::Tcp);
        assert_eq!(target.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(target.cookie, sys::cookie(tcp.as_raw_fd()).unwrap());
        let udp = socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP);
        assert!(matches!(
            decide(udp.as_raw_fd(), v4(0)),
            Decision::Lease(Target {
                transport: Transport::Udp,
                ..
            })
        ));
    }

    #[test]
    fn everything_else_passes_through() {
        let unix = socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        assert_eq!(
            decide(unix.as_raw_fd(), Address::Other),
            Decision::PassThrough
        );
        // An IPv4 address on an IPv6 socket: the kernel's EINVAL to give.
        let tcp6 = socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
        assert_eq!(decide(tcp6.as_raw_fd(), v4(8080)), Decision::PassThrough);
        // Not a socket at all.
        assert_eq!(decide(libc::STDIN_FILENO, v4(8080)), Decision::PassThrough);
        // SCTP-like protocols: a stream socket that is not TCP (MPTCP where the kernel has
        // it; skipped where socket() refuses).
        // SAFETY: socket() returns a new fd or -1.
        let mptcp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 262) };
        if mptcp >= 0 {
            // SAFETY: fd is a fresh socket owned by nothing else.
            let mptcp = unsafe { OwnedFd::from_raw_fd(mptcp) };
            assert_eq!(decide(mptcp.as_raw_fd(), v4(8080)), Decision::PassThrough);
        }
        // Already bound: the kernel says EINVAL to a second bind.
        let bound = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(decide(bound.as_raw_fd(), v4(8080)), Decision::PassThrough);
    }

    #[test]
    fn a_client_that_binds_an_address_only_passes_through() {
        let tcp = socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let one = 1i32.to_ne_bytes();
        crate::real::set_option(
            tcp.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one,
        )
        .unwrap();
        assert_eq!(decide(tcp.as_raw_fd(), v4(0)), Decision::PassThrough);
        // With a port, it is a server's bind after all.
        assert!(matches!(
            decide(tcp.as_raw_fd(), v4(8080)),
            Decision::Lease(_)
        ));
    }

    #[test]
    fn v6_only_is_read_from_the_socket() {
        let tcp6 = socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
        crate::real::set_option(
            tcp6.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &1i32.to_ne_bytes(),
        )
        .unwrap();
        let Decision::Lease(target) = decide(tcp6.as_raw_fd(), v6(Ipv6Addr::UNSPECIFIED)) else {
            panic!("an unbound TCP socket must be leased")
        };
        assert!(target.v6_only);
        crate::real::set_option(
            tcp6.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &0i32.to_ne_bytes(),
        )
        .unwrap();
        let Decision::Lease(target) = decide(tcp6.as_raw_fd(), v6(Ipv6Addr::UNSPECIFIED)) else {
            panic!("an unbound TCP socket must be leased")
        };
        assert!(!target.v6_only);
    }

    #[test]
    fn mapped_and_link_local_addresses_are_refused_with_eaddrnotavail() {
        let tcp6 = socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
        let mapped = Ipv4Addr::LOCALHOST.to_ipv6_mapped();
        let Decision::Refuse { errno, why, .. } = decide(tcp6.as_raw_fd(), v6(mapped)) else {
            panic!("a mapped address must be refused")
        };
        assert_eq!(errno, libc::EADDRNOTAVAIL);
        assert!(why.contains("AF_INET socket to 127.0.0.1"), "{why}");
        let link_local: Ipv6Addr = "fe80::1".parse().unwrap();
        assert!(matches!(
            decide(tcp6.as_raw_fd(), v6(link_local)),
            Decision::Refuse {
                errno: libc::EADDRNOTAVAIL,
                ..
            }
        ));
    }
}
