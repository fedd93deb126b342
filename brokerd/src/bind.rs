//! Creating the sockets the broker hands out.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, getsockname, getsockopt, listen, setsockopt, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, SockaddrStorage,
};
use portbroker_proto::{Listen, Refusal, Transport};

/// Creates a socket bound to `addr` (an explicit port, never 0), listening for TCP unless the
/// spec asked for bind-only or a number. `[::]` is dual-stack unless `v6_only`. The fd is
/// blocking, as `std::net` expects, and close-on-exec.
pub fn bind_socket(
    transport: Transport,
    addr: SocketAddr,
    v6_only: bool,
    mode: Listen,
) -> Result<OwnedFd, Errno> {
    debug_assert_ne!(addr.port(), 0, "the broker always binds an explicit port");
    let fd = unbound_socket(transport, addr, v6_only)?;
    let backlog = backlog_for(transport, mode)?;
    if backlog.is_some() {
        // Safe only because the socket listens at once: SO_REUSEADDR then only lets a new
        // listener rebind over TIME_WAIT connections, never share a live port. Bound-only TCP
        // and UDP sockets could be co-bound by another SO_REUSEADDR socket, so they never get it.
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    if let Some(backlog) = backlog {
        listen(&fd, backlog)?;
    }
    Ok(fd)
}

/// A reservation: `addr` bound, not listening and without SO_REUSEADDR, so that no other
/// socket, SO_REUSEADDR or not, can bind the port.
pub fn reserve(transport: Transport, addr: SocketAddr) -> Result<OwnedFd, Errno> {
    let fd = unbound_socket(transport, addr, false)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(fd)
}

/// Whether `fd`, passed back by systemd's fd store, is a reservation of `addr` as `reserve`
/// makes them: a socket of the transport, bound to exactly `addr`, not listening. The error
/// says what it is instead.
pub fn check_reservation(
    fd: &OwnedFd,
    transport: Transport,
    addr: SocketAddr,
) -> Result<(), String> {
    let kind = match transport {
        Transport::Tcp => SockType::Stream,
        Transport::Udp => SockType::Datagram,
    };
    match getsockopt(fd, sockopt::SockType) {
        Ok(actual) if actual == kind => {}
        Ok(actual) => return Err(format!("it is a {actual:?} socket, not {transport}")),
        Err(errno) => return Err(format!("it is not a socket ({errno})")),
    }
    let bound: Option<SocketAddr> = getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::V4((*v4).into()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
        });
    if bound != Some(addr) {
        return Err(match bound {
            Some(bound) => format!("it is bound to {bound}, not {addr}"),
            None => format!("it is not bound to {addr}"),
        });
    }
    if transport == Transport::Tcp && getsockopt(fd, sockopt::AcceptConn).unwrap_or(true) {
        return Err("it listens, and a reservation must not".into());
    }
    Ok(())
}

/// Turns a reservation into what a lease hands out: listening for TCP unless bind-only (with
/// SO_REUSEADDR, as `bind_socket` gives listeners). There is no moment the port is unbound.
pub fn take_reservation(fd: OwnedFd, transport: Transport, mode: Listen) -> Result<OwnedFd, Errno> {
    let backlog = backlog_for(transport, mode)?;
    if let Some(backlog) = backlog {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        listen(&fd, backlog)?;
    }
    Ok(fd)
}

/// Whether no socket is bound to `addr` any more: a probe bind succeeds only after the last
/// copy of a leased socket closed, wherever it was (a forked child, an unread SCM_RIGHTS
/// message). TCP probes set SO_REUSEADDR, as the leased listeners did, so that TIME_WAIT
/// connections of a closed listener do not count.
pub fn is_free(transport: Transport, addr: SocketAddr, v6_only: bool) -> bool {
    let Ok(fd) = unbound_socket(transport, addr, v6_only) else {
        return false;
    };
    if transport == Transport::Tcp && setsockopt(&fd, sockopt::ReuseAddr, &true).is_err() {
        return false;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).is_ok()
}

/// The listen backlog a spec asks for; `None` when the socket must not listen.
fn backlog_for(transport: Transport, mode: Listen) -> Result<Option<Backlog>, Errno> {
    Ok(match (transport, mode) {
        (Transport::Tcp, Listen::Default) => Some(Backlog::MAXCONN),
        (Transport::Tcp, Listen::Backlog(n)) => Some(Backlog::new(
            i32::try_from(n).unwrap_or(i32::MAX).min(libc::SOMAXCONN),
        )?),
        (Transport::Tcp, Listen::BindOnly | Listen::Number) | (Transport::Udp, _) => None,
    })
}

/// A close-on-exec socket of the transport and the address's family. `[::]` is dual-stack
/// unless `v6_only`, as the table assumes; a specific IPv6 address never takes IPv4.
fn unbound_socket(transport: Transport, addr: SocketAddr, v6_only: bool) -> Result<OwnedFd, Errno> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let kind = match transport {
        Transport::Tcp => SockType::Stream,
        Transport::Udp => SockType::Datagram,
    };
    let fd = socket(family, kind, SockFlag::SOCK_CLOEXEC, None)?;
    if addr.is_ipv6() {
        setsockopt(
            &fd,
            sockopt::Ipv6V6Only,
            &(v6_only || !addr.ip().is_unspecified()),
        )?;
    }
    Ok(fd)
}

/// The refusal for a failed bind: in use by a process outside the broker (named when a
/// bounded search finds it: `socket_copies::outside_holder`), or the kernel's error as it is.
pub fn bind_refusal(transport: Transport, requested: SocketAddr, errno: Errno) -> Refusal {
    match errno {
        Errno::EADDRINUSE => Refusal::InUseOutside {
            transport,
            requested,
            holder: crate::socket_copies::outside_holder(transport, requested),
        },
        errno => Refusal::BindFailed {
            transport,
            requested,
            errno: errno as i32,
            message: errno.desc().to_owned(),
        },
    }
}

/// The socket's `SO_COOKIE`: a number the kernel gives each socket, never reused while the
/// machine runs. It names the socket itself, where an address only names whichever socket is
/// bound there now. (rustix: nix 0.32 has no `SO_COOKIE`.)
pub fn cookie(fd: impl AsFd) -> Result<u64, Errno> {
    rustix::net::sockopt::socket_cookie(fd).map_err(|e| Errno::from_raw(e.raw_os_error()))
}

/// Whether this host can bind IPv6 sockets.
pub fn ipv6_available() -> bool {
    socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .and_then(|fd| {
        let any: SocketAddr = "[::1]:0".parse().expect("valid address");
        bind(fd.as_raw_fd(), &SockaddrStorage::from(any))
    })
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    fn free_port() -> u16 {
        // Only to find a candidate number for the test; the broker itself never binds port 0.
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn tcp_sockets_are_handed_over_listening() {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let listener =
            TcpListener::from(bind_socket(Transport::Tcp, addr, false, Listen::Default).unwrap());
        TcpStream::connect(addr).unwrap();
        listener.accept().unwrap();
        assert_eq!(
            bind_socket(Transport::Tcp, addr, false, Listen::Default).unwrap_err(),
            Errno::EADDRINUSE
        );
        // TCP and UDP are separate spaces.
        let udp =
            UdpSocket::from(bind_socket(Transport::Udp, addr, false, Listen::Default).unwrap());
        assert_eq!(udp.local_addr().unwrap(), addr);
    }

    #[test]
    fn bind_only_sockets_block_the_port_without_listening() {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let _bound = bind_socket(Transport::Tcp, addr, false, Listen::BindOnly).unwrap();
        assert!(TcpStream::connect(addr).is_err());
        assert!(TcpListener::bind(format!("0.0.0.0:{port}")).is_err());
    }

    #[test]
    fn only_a_bound_not_listening_socket_of_the_port_passes_as_a_reservation() {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let held = reserve(Transport::Tcp, addr).unwrap();
        check_reservation(&held, Transport::Tcp, addr).unwrap();
        assert!(check_reservation(&held, Transport::Udp, addr).is_err());
        let other: SocketAddr = format!("127.0.0.1:{}", port + 1).parse().unwrap();
        assert!(check_reservation(&held, Transport::Tcp, other).is_err());
        let listening = take_reservation(held, Transport::Tcp, Listen::Default).unwrap();
        let err = check_reservation(&listening, Transport::Tcp, addr).unwrap_err();
        assert!(err.contains("listens"), "{err}");
        let udp = reserve(Transport::Udp, addr).unwrap();
        check_reservation(&udp, Transport::Udp, addr).unwrap();
    }

    #[test]
    fn dual_stack_wildcard_blocks_ipv4() {
        if !ipv6_available() {
            return;
        }
        let port = free_port();
        let _any = bind_socket(
            Transport::Tcp,
            format!("[::]:{port}").parse().unwrap(),
            false,
            Listen::Default,
        )
        .unwrap();
        assert!(TcpListener::bind(format!("127.0.0.1:{port}")).is_err());
    }

    #[test]
    fn an_ipv6_only_wildcard_leaves_ipv4_to_others() {
        if !ipv6_available() {
            return;
        }
        let port = free_port();
        let any6: SocketAddr = format!("[::]:{port}").parse().unwrap();
        let _v4 = TcpListener::bind(format!("0.0.0.0:{port}")).unwrap();
        let v6 = bind_socket(Transport::Tcp, any6, true, Listen::Default).unwrap();
        assert!(getsockopt(&v6, sockopt::Ipv6V6Only).unwrap());
        assert!(!is_free(Transport::Tcp, any6, true));
        drop(v6);
        assert!(is_free(Transport::Tcp, any6, true));
        // The dual-stack probe still finds the IPv4 listener in the way.
        assert!(!is_free(Transport::Tcp, any6, false));
    }
}
