//! Client library for `portbrokerd`: lease ports and receive sockets the broker already bound.
//!
//! The broker owns a table of leased `(transport, address, port)` triples. A program asks it
//! for one or more sockets at once; the broker checks the table and its policy, binds the
//! sockets itself and passes the bound file descriptors over its Unix socket. The lease lasts
//! as long as the [`Lease`] value (and the connection it holds) or until it is released.
//!
//! ```no_run
//! use portbroker::Broker;
//!
//! # fn main() -> Result<(), portbroker::Error> {
//! let broker = Broker::connect()?;
//! let lease = broker.lease_str(&["tcp:127.0.0.1:0"])?;
//! let listener = lease.tcp_listener().expect("asked for a TCP socket");
//! println!("lease {} serves on {}", lease.id(), lease.local_addr());
//! for stream in listener.incoming() {
//!     let _stream = stream.expect("accept");
//!     // ...
//! #   break;
//! }
//! lease.release()?;
//! # Ok(())
//! # }
//! ```
//!
//! For one listening socket, [`listen`] does it in one line: its [`Listener`] dereferences to
//! [`std::net::TcpListener`] and ends the lease when dropped ([`bind_udp`] for UDP;
//! [`listen_or_bind`] to bind directly, explicitly, where no broker is reachable):
//!
//! ```no_run
//! # fn main() -> Result<(), portbroker::Error> {
//! let listener = portbroker::listen("tcp:127.0.0.1:0")?;
//! let (_stream, peer) = listener.accept().expect("accept");
//! # Ok(())
//! # }
//! ```
//!
//! A refused lease says why, and who is in the way:
//!
//! ```no_run
//! # fn main() -> Result<(), portbroker::Error> {
//! # let broker = portbroker::Broker::connect()?;
//! match broker.lease_str(&["tcp:8080"]) {
//!     Ok(lease) => println!("got {}", lease.local_addr()),
//!     Err(err) if err.is_in_use() => match err.holder() {
//!         Some(holder) => eprintln!("port 8080 is held by {holder}"),
//!         None => eprintln!("{err}"),
//!     },
//!     Err(err) => return Err(err),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Which broker it talks to
//!
//! [`Broker::connect`] connects to `$PORTBROKER_SOCKET`; else, for a user other than root,
//! to the user's own broker (`$XDG_RUNTIME_DIR/portbroker/portbroker.sock`) if one answers;
//! else to the system service (`/run/portbroker/portbroker.sock`; see
//! [`portbroker_proto::client_socket_paths`]). Whatever the path, the library talks only
//! to a broker that runs as root or as the caller's own user (a broker of the user's own): it
//! asks the kernel who answers on the socket (`SO_PEERCRED`) before it sends anything, on
//! every connection, so that nobody who can replace the socket file can pose as the broker.
//! Another user's broker is refused with [`ErrorKind::UntrustedBroker`], unless
//! `PORTBROKER_TRUST_UID` ([`TRUST_UID_ENV`]) names that user's uid:
//!
//! ```sh
//! PORTBROKER_TRUST_UID=1001 PORTBROKER_SOCKET=/srv/ci/portbroker.sock my-server   # uid 1001's broker
//! ```
//!
//! The library reads these two variables and never changes the process environment.
//!
//! # When the connection breaks
//!
//! The library connects again by itself (a restarted broker, an idle timeout), with the same
//! timeout ([`Broker::set_timeout`]), and asks the broker for this process's leases back.
//! A lease the broker gives back goes on as before; one it does not (it restarted without its
//! journal, or the lease ended meanwhile) is lost, and its [`Lease`] handle fails with
//! [`ErrorKind::LeaseLost`] instead of acting on an id that may name another lease by then.
//! A request that was sent but not answered is not sent again (it may have been carried out,
//! and a lease would be granted twice), except the reads [`Broker::list`],
//! [`Broker::status`] and [`Broker::history`]: it fails with [`ErrorKind::ConnectionLost`],
//! and the next request connects again.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod book;
mod bound;
mod connection;
mod error;
mod lease;
#[allow(unsafe_code)]
mod received_fds;
mod session;
mod socket;
mod trust;
mod watch;

/// The README's examples, compiled as doctests so that they cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The wire protocol crate, for the types that appear in errors (such as its codec error).
pub use portbroker_proto as proto;
pub use portbroker_proto::{
    EndReason, Event, Failure, GrantedSocket, HistoryEntry, HistoryEvent, Holder, LeaseId,
    LeaseInfo, LeaseState, Listen, PathError, PortRange, Refusal, SocketSpec, SpecError,
    StatusInfo, Transport, PROTOCOL_VERSION,
};

pub use bound::{bind_udp, listen, listen_or_bind, Bound, BoundUdp, Fallback, Listener};
pub use error::{Error, ErrorKind};
pub use lease::Lease;
pub use socket::LeasedSocket;
pub use trust::TRUST_UID_ENV;
pub use watch::{Watch, Watched};

use lease::Asked;
use portbroker_proto::{Request, Response};
use session::{expect_answer, Shared};

/// A connection to `portbrokerd`.
///
/// Cheap to clone: clones share one connection, and requests from several threads take turns
/// on it. Leases live on the connection, and each [`Lease`] keeps it open, so dropping the
/// `Broker` does not end the leases taken through it.
///
/// ```
/// use portbroker::{Broker, ErrorKind};
///
/// // Nothing listens here, so this fails; a real program uses `Broker::connect()`.
/// let err = Broker::connect_to("/nonexistent/portbroker.sock").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Unreachable);
/// assert!(err.to_string().contains("is portbrokerd running?"));
/// ```
///
/// Leasing needs a running broker:
///
/// ```no_run
/// use std::net::Ipv4Addr;
/// use portbroker::{Broker, SocketSpec};
///
/// # fn main() -> Result<(), portbroker::Error> {
/// let broker = Broker::connect()?;
/// // One lease, two sockets: granted or refused together.
/// let lease = broker.lease([
///     SocketSpec::tcp(Some(Ipv4Addr::LOCALHOST.into()), 0),
///     SocketSpec::udp(None, 5353),
/// ])?;
/// for granted in lease.granted() {
///     println!("{granted}");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    /// Connects to the broker at the default path: `$PORTBROKER_SOCKET` if set; else, for a
    /// user other than root, the per-user socket `$XDG_RUNTIME_DIR/portbroker/portbroker.sock`
    /// if a broker answers there; else the system service's `/run/portbroker/portbroker.sock`
    /// (see [`portbroker_proto::client_socket_paths`]).
    ///
    /// A path where nothing accepts is passed over for the next; any other failure (an
    /// untrusted broker, another protocol version) is reported at once. When nothing answers
    /// anywhere: [`Error::Unreachable`] for a single path, else [`Error::NoBroker`] naming every
    /// path tried.
    pub fn connect() -> Result<Broker, Error> {
        let mut tried = Vec::new();
        for path in portbroker_proto::client_socket_paths() {
            match Broker::connect_to(&path) {
                Err(Error::Unreachable { path, source }) => tried.push((path, source)),
                other => return other,
            }
        }
        match tried.len() {
            1 => {
                let (path, source) = tried.remove(0);
                Err(Error::Unreachable { path, source })
            }
            _ => Err(Error::NoBroker { tried }),
        }
    }

    /// Connects to the broker listening at `path` and exchanges `Hello`.
    ///
    /// Fails with [`Error::Unreachable`] when nothing accepts there, with
    /// [`Error::UntrustedBroker`] when the process that does runs as another user than root
    /// or this one (and `PORTBROKER_TRUST_UID` does not name it), and with
    /// [`Error::VersionMismatch`] when the broker speaks another protocol version.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Broker, Error> {
        let shared = Shared::connect(path.as_ref().to_path_buf())?;
        Ok(Broker {
            shared: Arc::new(shared),
        })
    }

    /// The path of the broker's socket.
    pub fn socket_path(&self) -> &Path {
        self.shared.path()
    }

    /// The broker's version, as it said in `Hello`.
    pub fn daemon_version(&self) -> &str {
        self.shared.daemon_version()
    }

    /// Sets how long a request may wait to be sent or answered (30 s by default); `None` waits
    /// forever. It holds for every connection of this `Broker`, those made again after a break
    /// included. A request that times out fails with [`Error::ConnectionLost`] and leaves the
    /// connection unusable, because its answer may still arrive: the next request connects
    /// again. `Some(Duration::ZERO)` is refused.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.shared.set_timeout(timeout)
    }

    /// Leases the sockets of `specs` as one unit: all are granted, or none and the error says
    /// why. At most 64 sockets; an empty list is refused without asking the broker.
    pub fn lease(&self, specs: impl IntoIterator<Item = SocketSpec>) -> Result<Lease, Error> {
        let specs: Vec<SocketSpec> = specs.into_iter().collect();
        if specs.is_empty() {
            return Err(Error::Refused(Refusal::InvalidSpec {
                index: 0,
                reason: "a lease needs at least one socket".into(),
            }));
        }
        self.take_grant(
            Request::Lease {
                sockets: specs.clone(),
            },
            Asked::Specs(&specs),
        )
    }

    /// Leases the sockets of the service `name`, as the broker's policy defines it: all are
    /// granted, or none and the error says why ([`ErrorKind::UnknownService`] when the policy
    /// has no such service). [`Lease::granted`] lists the sockets in the policy's order.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), portbroker::Error> {
    /// let broker = portbroker::Broker::connect()?;
    /// let lease = broker.lease_named("web")?;
    /// for granted in lease.granted() {
    ///     println!("web: {granted}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn lease_named(&self, name: &str) -> Result<Lease, Error> {
        self.take_grant(
            Request::LeaseNamed {
                name: name.to_owned(),
            },
            Asked::Service(name),
        )
    }

    /// Takes over a lease another process offered with [`Lease::handover`]: the returned
    /// `Lease` has the same id and the *same* sockets (the broker fetches copies from the
    /// holder), so the port is never unbound and never held by two leases. The previous holder
    /// keeps serving on its copies until it closes them. Allowed to the holder's user and to
    /// administrators.
    pub fn claim(&self, token: u64) -> Result<Lease, Error> {
        self.take_grant(Request::Claim { token }, Asked::Service("a handover"))
    }

    /// Sends a lease request; the answer is a checked [`Lease`], or the refusal or failure.
    fn take_grant(&self, request: Request, asked: Asked<'_>) -> Result<Lease, Error> {
        let reply = self.shared.round_trip(&request)?;
        let fds = reply.fds;
        expect_answer(&request, reply.response, |response| match response {
            Response::Granted { id, sockets, .. } => Some(Lease::from_grant(
                Arc::clone(&self.shared),
                id,
                asked,
                sockets,
                fds,
            )),
            Response::Refused(refusal) => Some(Err(Error::Refused(refusal))),
            _ => None,
        })?
    }

    /// Like [`Broker::lease`], with specs in text form (`tcp:8080`, `tcp:127.0.0.1:0`,
    /// `udp:[::1]:5353`). Every spec is parsed first: if one is malformed, the broker is not
    /// contacted and the error is [`Error::Spec`].
    pub fn lease_str(&self, specs: &[&str]) -> Result<Lease, Error> {
        let specs = specs
            .iter()
            .map(|text| text.parse::<SocketSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        self.lease(specs)
    }

    /// Ends the lease `id`, which may belong to another connection or process. The broker
    /// allows it to the lease holder's user and to administrators (root and the members of the
    /// policy's `[admin]` groups).
    pub fn release(&self, id: LeaseId) -> Result<(), Error> {
        self.shared.release(None, id)
    }

    /// Every live lease, ordered by id.
    pub fn list(&self) -> Result<Vec<LeaseInfo>, Error> {
        self.shared.ask(Request::List, |response| match response {
            Response::Leases(leases) => Some(leases),
            _ => None,
        })
    }

    /// The broker's last `max` events of leases, oldest first: grants, ties, handovers and
    /// ends, each with its time, the lease's holder and sockets, and for an end why it ended.
    /// The broker reads them from the history its journal keeps (a bounded number of previous
    /// generations), answers at most 10,000, and fails with [`ErrorKind::NotPermitted`] when
    /// it keeps no journal. Allowed to every user, as [`Broker::list`] is.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), portbroker::Error> {
    /// let broker = portbroker::Broker::connect()?;
    /// for entry in broker.history(10)? {
    ///     println!("{} lease {} {}", entry.at_unix_ms, entry.id, entry.event);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn history(&self, max: u32) -> Result<Vec<HistoryEntry>, Error> {
        self.shared
            .ask(Request::History { max }, |response| match response {
                Response::History(entries) => Some(entries),
                _ => None,
            })
    }

    /// The broker's state.
    pub fn status(&self) -> Result<StatusInfo, Error> {
        self.shared.ask(Request::Status, |response| match response {
            Response::Status(status) => Some(status),
            _ => None,
        })
    }

    /// Makes the broker re-read its policy file, and returns the number of rules and of named
    /// services in the new policy. Allowed to root and to the policy's admin groups; others get
    /// [`ErrorKind::NotPermitted`]. A file that does not load fails with
    /// [`ErrorKind::ReloadFailed`], whose message names the file's error (with its line where
    /// known), and the policy in force stays as it was.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), portbroker::Error> {
    /// let broker = portbroker::Broker::connect()?;
    /// let (rules, services) = broker.reload()?;
    /// println!("reloaded: {rules} rules, {services} services");
    /// # Ok(())
    /// # }
    /// ```
    pub fn reload(&self) -> Result<(u32, u32), Error> {
        self.shared.ask(Request::Reload, |response| match response {
            Response::Reloaded { rules, services } => Some((rules, services)),
            _ => None,
        })
    }

    /// Gives lease `id` a time limit of `ttl` from now, or extends it: unless renewed again, the
    /// broker ends the lease then (and the holder's [`Lease::is_expired`] turns true). The
    /// holder should then close its sockets: until it does, the kernel keeps the port bound and
    /// a new lease of it is refused as in use outside the broker. A zero `ttl` removes the
    /// limit. Returns when the lease now expires. Allowed to the holder's user and to
    /// administrators.
    pub fn renew(&self, id: LeaseId, ttl: Duration) -> Result<Option<SystemTime>, Error> {
        self.shared.renew(None, id, ttl)
    }

    /// [`Broker::lease`] with a time limit of `ttl` from the grant (see [`Broker::renew`]).
    pub fn lease_for(
        &self,
        specs: impl IntoIterator<Item = SocketSpec>,
        ttl: Duration,
    ) -> Result<Lease, Error> {
        let lease = self.lease(specs)?;
        // On failure the lease is dropped, which releases it: no lease without its limit.
        lease.renew(ttl)?;
        Ok(lease)
    }

    /// Takes a lease away from its holder, whoever it is (root and the policy's admin groups
    /// only): the lease's listening sockets stop accepting, a pending `accept()` on them fails,
    /// and the holder's [`Lease::is_revoked`] turns true.
    pub fn revoke(&self, id: LeaseId) -> Result<(), Error> {
        self.shared
            .ask(Request::Revoke { id }, |response| match response {
                Response::Released { id: released } if released == id => Some(()),
                _ => None,
            })
    }

    /// Subscribes to the broker's events on a connection of its own: every event from now on
    /// (grants, refusals, releases, expiries, revokes, lingering leases, reservations taken
    /// back), in order, for every user's leases, as `List` shows them. Reading waits for the
    /// next event without a time limit unless [`Watch::set_timeout`] sets one.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), portbroker::Error> {
    /// let broker = portbroker::Broker::connect()?;
    /// for watched in broker.watch()? {
    ///     match watched? {
    ///         portbroker::Watched::Event { seq, event } => println!("{seq}: {event}"),
    ///         portbroker::Watched::Missed { count } => println!("missed {count} events"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch(&self) -> Result<Watch, Error> {
        Watch::open(self.shared.path(), self.shared.timeout())
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("socket_path", &self.shared.path())
            .field("daemon_version", &self.shared.daemon_version())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
