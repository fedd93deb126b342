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
//! The library never changes the process environment; [`Broker::connect`] only reads
//! `PORTBROKER_SOCKET` (see [`portbroker_proto::default_socket_path`]).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod connection;
mod error;
mod lease;
#[allow(unsafe_code)]
mod received_fds;
mod socket;

/// The README's examples, compiled as doctests so that they cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// The wire protocol crate, for the types that appear in errors (such as its codec error).
pub use portbroker_proto as proto;
pub use portbroker_proto::{
    Failure, GrantedSocket, Holder, LeaseId, LeaseInfo, Listen, PathError, PortRange, Refusal,
    SocketSpec, SpecError, StatusInfo, Transport, PROTOCOL_VERSION,
};

pub use error::{Error, ErrorKind};
pub use lease::Lease;
pub use socket::LeasedSocket;

use connection::{Connection, Reply};
use lease::Asked;
use portbroker_proto::{Request, Response};

/// Read and write timeout of a new connection.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How this library introduces itself in `Hello`, for the broker's logs.
const CLIENT_NAME: &str = concat!("portbroker-rs/", env!("CARGO_PKG_VERSION"));

/// What a [`Broker`] and its [`Lease`]s share: one connection, used by one request at a time.
pub(crate) struct Shared {
    conn: Mutex<Connection>,
    path: PathBuf,
    daemon_version: String,
    /// The leases this connection's `Lease` handles hold, to re-attach after a reconnect.
    live: Mutex<std::collections::HashSet<LeaseId>>,
}

impl Shared {
    pub(crate) fn round_trip(&self, request: &Request) -> Result<Reply, Error> {
        // A panic mid-request leaves the connection marked out of step, so the data behind a
        // poisoned lock is still safe to use: it refuses further requests by itself.
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        match conn.round_trip(request) {
            Err(Error::ConnectionLost { .. }) => {
                // The broker restarted, or the connection broke: connect again, take this
                // process's leases back onto the new connection, and try once more.
                let (fresh, _) = open_connection(&self.path)?;
                *conn = fresh;
                let ids: Vec<LeaseId> = self.live_leases();
                if !ids.is_empty() {
                    conn.round_trip(&Request::Reattach { ids })?;
                }
                conn.round_trip(request)
            }
            other => other,
        }
    }

    fn live_leases(&self) -> Vec<LeaseId> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    pub(crate) fn track(&self, id: LeaseId, live: bool) {
        let mut set = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }

    /// Whether the broker has said it revoked lease `id`, reading (without waiting) what it
    /// sent since the last request.
    pub(crate) fn ended(&self, id: LeaseId) -> Result<Option<connection::Ended>, Error> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.poll_notices()?;
        Ok(conn.ended(id))
    }

    pub(crate) fn offer_handover(&self, id: LeaseId) -> Result<u64, Error> {
        match self.round_trip(&Request::Handover { id })?.response {
            Response::HandoverOffered { id: offered, token } if offered == id => Ok(token),
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(unexpected("Handover", &other)),
        }
    }

    pub(crate) fn tie_to_process(&self, id: LeaseId, pid: i32) -> Result<Holder, Error> {
        match self
            .round_trip(&Request::TieToProcess { id, pid })?
            .response
        {
            Response::Tied { id: tied, holder } if tied == id => Ok(holder),
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(unexpected("TieToProcess", &other)),
        }
    }

    pub(crate) fn renew(&self, id: LeaseId, ttl: Duration) -> Result<Option<SystemTime>, Error> {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        match self.round_trip(&Request::Renew { id, ttl_ms })?.response {
            Response::Renewed {
                id: renewed,
                expires_unix_ms,
            } if renewed == id => {
                Ok(expires_unix_ms.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)))
            }
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(unexpected("Renew", &other)),
        }
    }

    /// Ends a lease without waiting for the broker's answer (for `Drop`).
    pub(crate) fn release_unanswered(&self, id: LeaseId) -> Result<(), Error> {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send_unanswered(&Request::Release { id })
    }

    pub(crate) fn release(&self, id: LeaseId) -> Result<(), Error> {
        match self.round_trip(&Request::Release { id })?.response {
            Response::Released { id: released } if released == id => Ok(()),
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(unexpected("Release", &other)),
        }
    }
}

fn unexpected(request: &str, response: &Response) -> Error {
    let name = match response {
        Response::Hello { .. } => "Hello",
        Response::Granted { .. } => "Granted",
        Response::Refused(_) => "Refused",
        Response::Released { .. } => "Released (of another lease)",
        Response::Leases(_) => "Leases",
        Response::Status(_) => "Status",
        Response::Failed(_) => "Failed",
        Response::Reloaded { .. } => "Reloaded",
        Response::Revoked { .. } => "Revoked",
        Response::Expired { .. } => "Expired",
        Response::Renewed { .. } => "Renewed",
        Response::Tied { .. } => "Tied",
        Response::HandoverOffered { .. } => "HandoverOffered",
        Response::Reattached { .. } => "Reattached",
    };
    Error::protocol(format!("the broker answered {request} with {name}"))
}

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
    /// Connects to the broker at the default path: `$PORTBROKER_SOCKET`, else the system or
    /// per-user path (see [`portbroker_proto::default_socket_path`]).
    pub fn connect() -> Result<Broker, Error> {
        Broker::connect_to(portbroker_proto::default_socket_path()?)
    }

    /// Connects to the broker listening at `path` and exchanges `Hello`.
    ///
    /// Fails with [`Error::Unreachable`] when nothing accepts there, and with
    /// [`Error::VersionMismatch`] when the broker speaks another protocol version.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Broker, Error> {
        let path = path.as_ref().to_path_buf();
        match UnixStream::connect(&path) {
            Ok(stream) => Broker::handshake(stream, path),
            Err(source) => Err(Error::Unreachable { path, source }),
        }
    }

    fn handshake(stream: UnixStream, path: PathBuf) -> Result<Broker, Error> {
        let (conn, daemon_version) = hello(stream, &path)?;
        Ok(Broker {
            shared: Arc::new(Shared {
                conn: Mutex::new(conn),
                path,
                daemon_version,
                live: Mutex::default(),
            }),
        })
    }

    /// The path of the broker's socket.
    pub fn socket_path(&self) -> &Path {
        &self.shared.path
    }

    /// The broker's version, as it said in `Hello`.
    pub fn daemon_version(&self) -> &str {
        &self.shared.daemon_version
    }

    /// Sets how long a request may wait to be sent or answered (30 s by default); `None` waits
    /// forever. A request that times out fails with [`Error::ConnectionLost`] and leaves the
    /// connection unusable, because its answer may still arrive. `Some(Duration::ZERO)` is
    /// refused by the OS.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let conn = self
            .shared
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set_timeouts(conn.stream(), timeout).map_err(|source| Error::ConnectionLost {
            path: conn.path().to_path_buf(),
            source,
        })
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
        let reply = self.shared.round_trip(&Request::Lease {
            sockets: specs.clone(),
        })?;
        self.take_grant("Lease", reply, Asked::Specs(&specs))
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
        let reply = self.shared.round_trip(&Request::LeaseNamed {
            name: name.to_owned(),
        })?;
        self.take_grant("LeaseNamed", reply, Asked::Service(name))
    }

    /// Takes over a lease another process offered with [`Lease::handover`]: the returned
    /// `Lease` has the same id and the *same* sockets (the broker fetches copies from the
    /// holder), so the port is never unbound and never held by two leases. The previous holder
    /// keeps serving on its copies until it closes them. Allowed to the holder's user and to
    /// administrators.
    pub fn claim(&self, token: u64) -> Result<Lease, Error> {
        let reply = self.shared.round_trip(&Request::Claim { token })?;
        self.take_grant("Claim", reply, Asked::Service("a handover"))
    }

    /// The answer to a lease request: a checked [`Lease`], or the refusal or failure.
    fn take_grant(&self, request: &str, reply: Reply, asked: Asked<'_>) -> Result<Lease, Error> {
        match reply.response {
            Response::Granted { id, sockets, .. } => {
                Lease::from_grant(Arc::clone(&self.shared), id, asked, sockets, reply.fds)
            }
            Response::Refused(refusal) => Err(Error::Refused(refusal)),
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(unexpected(request, &other)),
        }
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
    /// allows it to the lease holder's user and to root.
    pub fn release(&self, id: LeaseId) -> Result<(), Error> {
        self.shared.release(id)
    }

    /// Every live lease, ordered by id.
    pub fn list(&self) -> Result<Vec<LeaseInfo>, Error> {
        match self.shared.round_trip(&Request::List)?.response {
            Response::Leases(leases) => Ok(leases),
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(unexpected("List", &other)),
        }
    }

    /// The broker's state.
    pub fn status(&self) -> Result<StatusInfo, Error> {
        match self.shared.round_trip(&Request::Status)?.response {
            Response::Status(status) => Ok(status),
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(unexpected("Status", &other)),
        }
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
        match self.shared.round_trip(&Request::Reload)?.response {
            Response::Reloaded { rules, services } => Ok((rules, services)),
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(unexpected("Reload", &other)),
        }
    }

    /// Gives lease `id` a time limit of `ttl` from now, or extends it: unless renewed again, the
    /// broker ends the lease then (and the holder's [`Lease::is_expired`] turns true). The
    /// holder should then close its sockets: until it does, the kernel keeps the port bound and
    /// a new lease of it is refused as in use outside the broker. A zero `ttl` removes the
    /// limit. Returns when the lease now expires. Allowed to the holder's user and to
    /// administrators.
    pub fn renew(&self, id: LeaseId, ttl: Duration) -> Result<Option<SystemTime>, Error> {
        self.shared.renew(id, ttl)
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
        match self.shared.round_trip(&Request::Revoke { id })?.response {
            Response::Released { id: released } if released == id => Ok(()),
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(unexpected("Revoke", &other)),
        }
    }
}

/// A new connection to the broker at `path`, greeted.
fn open_connection(path: &Path) -> Result<(Connection, String), Error> {
    match UnixStream::connect(path) {
        Ok(stream) => hello(stream, path),
        Err(source) => Err(Error::Unreachable {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Says Hello on a new connection; the broker's version.
fn hello(stream: UnixStream, path: &Path) -> Result<(Connection, String), Error> {
    let mut conn = Connection::new(stream, path.to_owned());
    set_timeouts(conn.stream(), Some(DEFAULT_TIMEOUT)).map_err(|source| Error::ConnectionLost {
        path: path.to_owned(),
        source,
    })?;
    let hello = Request::Hello {
        protocol: PROTOCOL_VERSION,
        client: CLIENT_NAME.to_owned(),
    };
    match conn.round_trip(&hello)?.response {
        Response::Hello {
            protocol,
            daemon_version,
        } if protocol == PROTOCOL_VERSION => Ok((conn, daemon_version)),
        Response::Hello { protocol, .. } => Err(Error::VersionMismatch {
            broker: protocol,
            client: PROTOCOL_VERSION,
        }),
        Response::Failed(failure) => Err(Error::Failed(failure)),
        other => Err(unexpected("Hello", &other)),
    }
}

fn set_timeouts(stream: &UnixStream, timeout: Option<Duration>) -> std::io::Result<()> {
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("socket_path", &self.shared.path)
            .field("daemon_version", &self.shared.daemon_version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
