//! A granted lease and the sockets that came with it.

use std::fmt;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use portbroker_proto::{GrantedSocket, Holder, LeaseId, Listen, SocketSpec};

use crate::connection::Ended;
use crate::error::Error;
use crate::session::{Handle, Shared};
use crate::socket::LeasedSocket;

/// A live lease and its sockets.
///
/// A lease of [`Listen::Number`] specs has no sockets: [`Lease::granted`] tells the ports.
///
/// The lease holds the broker connection open, so it outlives the [`Broker`](crate::Broker)
/// it came from. It ends with [`Lease::release`], or when the `Lease` is dropped (a
/// best-effort release), or when the process exits.
///
/// If the connection breaks (the broker restarted, say), the library connects again and asks
/// the broker for this process's leases back. A lease the broker does not give back is lost:
/// every method that would act on it fails with [`ErrorKind::LeaseLost`](crate::ErrorKind),
/// and dropping the handle sends nothing, because its id may name another lease by then.
pub struct Lease {
    shared: Arc<Shared>,
    id: LeaseId,
    /// This handle's claim to the lease in the process's lease book.
    ticket: crate::book::Ticket,
    granted: Vec<GrantedSocket>,
    sockets: Vec<LeasedSocket>,
    released: bool,
}

/// What a `Granted` answer answers, to check it against.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Asked<'a> {
    /// A `Lease` of these specs: one socket per spec, in order and of its transport.
    Specs(&'a [SocketSpec]),
    /// A `LeaseNamed` of this service: the policy decides the sockets.
    Service(&'a str),
}

impl Lease {
    /// Checks a `Granted` answer against the request and wraps its fds. On any mismatch the
    /// half-built lease is dropped, which releases it at the broker.
    pub(crate) fn from_grant(
        shared: Arc<Shared>,
        id: LeaseId,
        asked: Asked<'_>,
        granted: Vec<GrantedSocket>,
        fds: Vec<OwnedFd>,
    ) -> Result<Lease, Error> {
        // In the book first, so that the half-built lease's drop releases it.
        let ticket = shared.enter(id);
        let mut lease = Lease {
            shared,
            id,
            ticket,
            granted,
            sockets: Vec::with_capacity(fds.len()),
            released: false,
        };
        match asked {
            Asked::Specs(specs) => {
                // A number lease comes with no sockets (see `Listen::Number`).
                let numbers = specs.iter().all(|spec| spec.listen == Listen::Number);
                let expected_fds = if numbers { 0 } else { specs.len() };
                if lease.granted.len() != specs.len() || fds.len() != expected_fds {
                    return Err(Error::protocol(format!(
                        "asked for {} sockets, the broker granted {} and sent {} file descriptors",
                        specs.len(),
                        lease.granted.len(),
                        fds.len()
                    )));
                }
                if let Some((spec, granted)) = specs
                    .iter()
                    .zip(&lease.granted)
                    .find(|(spec, granted)| granted.transport != spec.transport)
                {
                    return Err(Error::protocol(format!(
                        "asked for {spec}, the broker granted {granted}"
                    )));
                }
            }
            Asked::Service(name) => {
                // Never without sockets: `local_addr` relies on it, as for a lease of specs.
                if lease.granted.is_empty() || fds.len() != lease.granted.len() {
                    return Err(Error::protocol(format!(
                        "asked for the service {name:?}, the broker granted {} sockets and sent \
                         {} file descriptors",
                        lease.granted.len(),
                        fds.len()
                    )));
                }
            }
        }
        lease.sockets = fds
            .into_iter()
            .zip(&lease.granted)
            .map(|(fd, granted)| LeasedSocket::from_granted(fd, granted))
            .collect();
        Ok(lease)
    }

    fn handle(&self) -> Handle {
        Handle {
            id: self.id,
            ticket: self.ticket,
        }
    }

    /// The lease's id, as `portctl list` shows it.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The granted addresses, with the ports the broker chose, in the order of the specs (or of
    /// the service's sockets in the broker's policy). Unaffected by [`Lease::take_sockets`].
    pub fn granted(&self) -> &[GrantedSocket] {
        &self.granted
    }

    /// The address of the first socket.
    pub fn local_addr(&self) -> SocketAddr {
        // A lease is never granted without sockets: `Broker::lease` refuses an empty request
        // and `from_grant` checks the count (and refuses an empty named grant).
        self.granted[0].addr
    }

    /// The sockets the `Lease` still owns, in the order of [`Lease::granted`] (taken ones are
    /// gone).
    pub fn sockets(&self) -> &[LeasedSocket] {
        &self.sockets
    }

    /// Whether an administrator revoked this lease (`portctl revoke`). Its listening sockets
    /// then refuse to accept (`accept()` fails), and the port is no longer the holder's: a
    /// server whose `accept()` fails can ask this to tell a revocation from a fault. Reads what
    /// the broker sent without waiting for an answer; if the connection broke, connects again
    /// first, and fails with [`Error::LeaseLost`] if the broker did not give the lease back.
    pub fn is_revoked(&self) -> Result<bool, Error> {
        Ok(self.shared.ended(self.handle())? == Some(Ended::Revoked))
    }

    /// Whether the lease reached its time limit ([`Broker::renew`](crate::Broker::renew)) and
    /// the broker ended it. Reads what the broker sent as [`Lease::is_revoked`] does.
    pub fn is_expired(&self) -> Result<bool, Error> {
        Ok(self.shared.ended(self.handle())? == Some(Ended::Expired))
    }

    /// Ties the lease to process `pid` instead of this connection: from now on it lasts exactly
    /// as long as that process, even if this one exits or drops the `Lease`. For a parent that
    /// hands its sockets to a child it starts; `portctl run` does this. The process must belong
    /// to this user, unless this user is an administrator (root or a member of the policy's
    /// `[admin]` groups). Returns the lease's holder as the broker now lists it.
    ///
    /// A tied lease is that process's, not this one's: if this connection breaks, the broker
    /// does not give it back, and this handle then counts it as lost
    /// ([`Error::LeaseLost`]) while the lease lives on with its process;
    /// [`Broker::release`](crate::Broker::release) with its id still ends it.
    pub fn tie_to_process(&self, pid: i32) -> Result<Holder, Error> {
        self.shared.tie_to_process(self.handle(), pid)
    }

    /// Offers the lease to another process (the next version of a server, say), which takes it
    /// over with [`Broker::claim`](crate::Broker::claim) and this token. This handle lets go
    /// of the lease without ending it; the sockets are returned, to serve on until the new
    /// holder runs, and should be closed then. If this process exits before the claim, the
    /// lease ends as usual.
    pub fn handover(mut self) -> Result<(u64, Vec<LeasedSocket>), Error> {
        let token = self.shared.offer_handover(self.handle())?;
        self.released = true;
        Ok((token, std::mem::take(&mut self.sockets)))
    }

    /// Lets go of the handle without ending the lease: for a lease tied to a process
    /// ([`Lease::tie_to_process`]), which the broker ends when that process exits. The sockets
    /// this handle still holds are closed.
    pub fn detach(mut self) {
        self.released = true;
        self.sockets.clear();
    }

    /// Gives this lease a time limit of `ttl` from now, or extends it; see
    /// [`Broker::renew`](crate::Broker::renew).
    pub fn renew(&self, ttl: std::time::Duration) -> Result<Option<std::time::SystemTime>, Error> {
        self.shared.renew(Some(self.handle()), self.id, ttl)
    }

    /// The first listening TCP socket.
    pub fn tcp_listener(&self) -> Option<&TcpListener> {
        self.sockets.iter().find_map(|socket| match socket {
            LeasedSocket::TcpListener(listener) => Some(listener),
            _ => None,
        })
    }

    /// The first UDP socket.
    pub fn udp_socket(&self) -> Option<&UdpSocket> {
        self.sockets.iter().find_map(|socket| match socket {
            LeasedSocket::Udp(socket) => Some(socket),
            _ => None,
        })
    }

    /// Hands the sockets to the caller. The lease stays live until released or dropped, so keep
    /// the `Lease` as long as the sockets are in use: once it ends, the broker may grant the
    /// address to someone else as soon as the sockets are closed.
    pub fn take_sockets(&mut self) -> Vec<LeasedSocket> {
        std::mem::take(&mut self.sockets)
    }

    /// Closes the sockets the `Lease` still holds, then ends the lease and waits for the broker
    /// to confirm. Sockets taken with [`Lease::take_sockets`] are not closed. A lost lease
    /// ([`Error::LeaseLost`]) is not released: its id may name another lease by now.
    ///
    /// Dropping a `Lease` ends it too, without waiting: the release is sent at once and its
    /// answer read with the next request on the same connection, which the broker serves after
    /// the release. Another connection may briefly still see the port leased; call `release`
    /// when something else must find the port free as soon as this returns.
    pub fn release(mut self) -> Result<(), Error> {
        self.released = true;
        // Close first, so that the address is really free once the broker says it is.
        self.sockets.clear();
        let result = self.shared.release(Some(self.handle()), self.id);
        self.shared.leave(self.handle());
        result
    }
}

#[cfg(feature = "tokio")]
impl Lease {
    fn take_first(&mut self, wanted: impl Fn(&LeasedSocket) -> bool) -> Option<LeasedSocket> {
        let index = self.sockets.iter().position(wanted)?;
        Some(self.sockets.remove(index))
    }

    /// Takes the first listening TCP socket out of the lease as a tokio listener (in
    /// non-blocking mode). The lease stays live, as with [`Lease::take_sockets`].
    ///
    /// Must be called from within a tokio runtime with I/O enabled; outside one, tokio panics.
    pub fn tokio_tcp_listener(&mut self) -> Option<std::io::Result<tokio::net::TcpListener>> {
        let socket = self.take_first(|s| matches!(s, LeasedSocket::TcpListener(_)))?;
        let LeasedSocket::TcpListener(listener) = socket else {
            unreachable!("take_first returned the variant asked for")
        };
        Some(
            listener
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(listener)),
        )
    }

    /// Takes the first UDP socket out of the lease as a tokio socket (in non-blocking mode).
    /// The lease stays live, as with [`Lease::take_sockets`].
    ///
    /// Must be called from within a tokio runtime with I/O enabled; outside one, tokio panics.
    pub fn tokio_udp_socket(&mut self) -> Option<std::io::Result<tokio::net::UdpSocket>> {
        let socket = self.take_first(|s| matches!(s, LeasedSocket::Udp(_)))?;
        let LeasedSocket::Udp(socket) = socket else {
            unreachable!("take_first returned the variant asked for")
        };
        Some(
            socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UdpSocket::from_std(socket)),
        )
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            self.shared.leave(self.handle());
        } else {
            // Close first, as in `release`. Then tell the broker without waiting for its
            // answer: a drop has nobody to report to, and the next request reads the answer.
            // If the connection is gone, the broker ends the lease as it closes.
            self.sockets.clear();
            self.shared.release_unanswered(self.handle());
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("granted", &self.granted)
            .field("sockets", &self.sockets)
            .finish_non_exhaustive()
    }
}
