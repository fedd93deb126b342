//! Asking the broker for the socket of a bind, through the client library.

use std::os::fd::OwnedFd;

use portbroker::{Broker, Error, Lease, LeasedSocket, Listen, SocketSpec, Transport};

use crate::classify::Target;
use crate::settings::Settings;
use crate::sys;

/// A granted lease, tied to this process, and its socket.
pub struct Leased {
    /// Kept until the socket is in place: if that fails, the lease is released.
    pub lease: Lease,
    pub socket: OwnedFd,
}

/// The lease request for a bind. The only place a `SocketSpec` is made.
pub fn spec_for(target: &Target) -> SocketSpec {
    SocketSpec {
        transport: target.transport,
        addr: Some(target.addr.ip()),
        port: target.addr.port(),
        // The program calls listen() itself, with its own backlog.
        listen: match target.transport {
            Transport::Tcp => Listen::BindOnly,
            Transport::Udp => Listen::Default,
        },
        // What the program's socket has: for `[::]` it decides whether the lease takes the
        // port's IPv4 addresses too (redis and memcached bind 0.0.0.0:P, then IPv6-only
        // [::]:P). The broker makes a specific IPv6 address IPv6-only anyway; for IPv4 it is
        // false, as the broker requires.
        v6_only: target.v6_only,
    }
}

/// Connects to the broker as the settings say.
pub fn connect(settings: &Settings) -> Result<Broker, Error> {
    match &settings.socket {
        Some(path) => Broker::connect_to(path),
        None => Broker::connect(),
    }
}

/// Leases the socket of `target` and ties the lease to this process, so that it lasts as long
/// as the process (and, lingering, as long as a child holds a copy of the socket), whatever
/// becomes of this connection, which closes when `broker` is dropped.
pub fn lease(broker: &Broker, target: &Target) -> Result<Leased, Error> {
    let mut lease = broker.lease([spec_for(target)])?;
    // On an error the lease is dropped, which releases it.
    lease.tie_to_process(sys::pid())?;
    let mut sockets = lease.take_sockets().into_iter();
    // The library checked that one socket came for the one spec.
    let socket = sockets
        .next()
        .map(LeasedSocket::into_owned_fd)
        .expect("a lease of one spec has one socket");
    Ok(Leased { lease, socket })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(transport: Transport, addr: &str) -> Target {
        Target {
            fd: 3,
            transport,
            addr: addr.parse().unwrap(),
            v6_only: false,
            cookie: 1,
        }
    }

    #[test]
    fn tcp_is_leased_bind_only_on_exactly_the_address_asked() {
        let spec = spec_for(&target(Transport::Tcp, "127.0.0.1:8080"));
        assert_eq!(spec.to_string(), "tcp:127.0.0.1:8080");
        assert_eq!(spec.listen, Listen::BindOnly);
        let spec = spec_for(&target(Transport::Udp, "[::]:0"));
        assert_eq!(spec.to_string(), "udp:[::]:0");
        assert_eq!(spec.listen, Listen::Default);
        assert!(!spec.v6_only);
        let v6_only = Target {
            v6_only: true,
            ..target(Transport::Tcp, "[::]:6379")
        };
        assert!(spec_for(&v6_only).v6_only);
    }
}
