//! The session with the broker that a [`Broker`](crate::Broker) and its leases share: one
//! greeted connection, taken again when it breaks, with this process's leases re-attached.
//!
//! When the connection breaks, a request that never left whole is sent on the new connection;
//! one that did may have been carried out, so only the reads (`List`, `Status`) are asked
//! again, and anything else fails with the error. After a reconnect, a [`Lease`](crate::Lease)
//! handle acts only if the broker gave its lease back (see [`crate::book`]).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use portbroker_proto::{Holder, LeaseId, Request, Response, PROTOCOL_VERSION};

use crate::book::{self, Place, Ticket};
use crate::connection::{Connection, Delivery, Ended, Reply};
use crate::error::Error;
use crate::trust;

/// Read and write timeout of a new connection, until `set_timeout` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How this library introduces itself in `Hello`, for the broker's logs.
const CLIENT_NAME: &str = concat!("portbroker-rs/", env!("CARGO_PKG_VERSION"));

/// What a [`Broker`](crate::Broker) and its [`Lease`](crate::Lease)s share: one connection,
/// used by one request at a time.
pub(crate) struct Shared {
    link: Mutex<Link>,
    path: Arc<Path>,
    daemon_version: String,
    /// This session's number in the process's lease book.
    session: u64,
    /// The broker's path as the book knows it.
    place: Place,
}

/// The connection, and what outlives it when it is made again.
struct Link {
    conn: Connection,
    /// The read and write timeout of every connection of the session.
    timeout: Option<Duration>,
}

/// A lease handle, as requests made on its behalf name it.
#[derive(Clone, Copy)]
pub(crate) struct Handle {
    pub(crate) id: LeaseId,
    pub(crate) ticket: Ticket,
}

impl Shared {
    /// Connects to the broker listening at `path` and exchanges `Hello`.
    pub(crate) fn connect(path: PathBuf) -> Result<Shared, Error> {
        let (conn, daemon_version) = open_connection(&path, Some(DEFAULT_TIMEOUT))?;
        Ok(Shared {
            link: Mutex::new(Link {
                conn,
                timeout: Some(DEFAULT_TIMEOUT),
            }),
            place: book::place(&path),
            path: Arc::from(path),
            daemon_version,
            session: book::new_session(),
        })
    }

    /// The path of the broker's socket.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The broker's version, as it said in `Hello`.
    pub(crate) fn daemon_version(&self) -> &str {
        &self.daemon_version
    }

    fn lock(&self) -> MutexGuard<'_, Link> {
        // A panic mid-request leaves the connection marked out of step, so the data behind a
        // poisoned lock is still safe to use: it refuses further requests by itself.
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the read and write timeout of this connection and of every later one; `None`
    /// waits forever.
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let mut link = self.lock();
        link.conn
            .set_timeouts(timeout)
            .map_err(|source| Error::ConnectionLost {
                path: self.path.to_path_buf(),
                source,
            })?;
        link.timeout = timeout;
        Ok(())
    }

    /// The timeout of the session's connections.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.lock().timeout
    }

    /// Sends `request` and waits for its answer; see [`Shared::exchange`].
    pub(crate) fn round_trip(&self, request: &Request) -> Result<Reply, Error> {
        self.exchange(request, None)
    }

    /// Sends `request` (on behalf of lease handle `handle`, if given) and waits for its answer.
    ///
    /// A connection known to be broken is made again first. If the connection breaks under
    /// the request, it is made again, and the request sent again only if it never left whole
    /// or is a read. A handle whose lease did not survive a reconnect gets
    /// [`Error::LeaseLost`], and nothing is sent.
    fn exchange(&self, request: &Request, handle: Option<Handle>) -> Result<Reply, Error> {
        let mut link = self.lock();
        if !link.conn.is_usable() {
            self.reconnect(&mut link)?;
        }
        self.check_held(handle)?;
        match link.conn.exchange(request).map_err(|failed| *failed) {
            Ok(reply) => Ok(reply),
            Err((error @ Error::ConnectionLost { .. }, delivery)) => {
                if delivery == Delivery::Sent && !is_read(request) {
                    // It may have been carried out: sent again, a lease would be granted twice,
                    // or a release hit whatever the id names on a restarted broker.
                    return Err(error);
                }
                self.reconnect(&mut link)?;
                self.check_held(handle)?;
                link.conn.round_trip(request)
            }
            Err((error, _)) => Err(error),
        }
    }

    /// [`Error::LeaseLost`] unless `handle` (if any) still holds its lease.
    fn check_held(&self, handle: Option<Handle>) -> Result<(), Error> {
        match handle {
            Some(Handle { id, ticket }) if !book::holds(self.place, id, ticket) => {
                Err(Error::LeaseLost {
                    path: self.path.to_path_buf(),
                    id,
                })
            }
            _ => Ok(()),
        }
    }

    /// Connects again (with the session's timeout), takes this session's leases back onto the
    /// new connection, and records which ones the broker gave back: the others' handles have
    /// lost them. The old connection closes only then, so that a broker still running keeps
    /// the leases it gives back.
    fn reconnect(&self, link: &mut Link) -> Result<(), Error> {
        let (mut fresh, _) = open_connection(&self.path, link.timeout)?;
        let asked = book::held_by(self.place, self.session);
        if !asked.is_empty() {
            let request = Request::Reattach { ids: asked.clone() };
            let reply = fresh.round_trip(&request)?;
            let kept = expect_answer(&request, reply.response, |response| match response {
                Response::Reattached { ids } => Some(ids),
                _ => None,
            })?;
            book::keep_only(self.place, self.session, &asked, &kept);
        }
        let old = std::mem::replace(&mut link.conn, fresh);
        link.conn.inherit_notices(old);
        Ok(())
    }

    /// Sends `request` and returns what `pick` takes out of the answer (see [`expect_answer`]).
    /// For answers that carry no file descriptors: only `Granted` does.
    pub(crate) fn ask<T>(
        &self,
        request: Request,
        pick: impl FnOnce(Response) -> Option<T>,
    ) -> Result<T, Error> {
        self.ask_as(None, request, pick)
    }

    fn ask_as<T>(
        &self,
        handle: Option<Handle>,
        request: Request,
        pick: impl FnOnce(Response) -> Option<T>,
    ) -> Result<T, Error> {
        let reply = self.exchange(&request, handle)?;
        expect_answer(&request, reply.response, pick)
    }

    /// Records that this session was just granted lease `id`: the ticket of its new handle.
    pub(crate) fn enter(&self, id: LeaseId) -> Ticket {
        book::enter(self.place, id, self.session)
    }

    /// The handle lets go of its lease without a word to the broker (released, detached,
    /// handed over).
    pub(crate) fn leave(&self, handle: Handle) {
        book::leave(self.place, handle.id, handle.ticket);
    }

    /// How the broker ended the handle's lease by itself (revoked or expired), if it did,
    /// reading (without waiting) what it sent since the last request. A broken connection is
    /// made again first, and a lease that did not survive that is [`Error::LeaseLost`].
    pub(crate) fn ended(&self, handle: Handle) -> Result<Option<Ended>, Error> {
        let mut link = self.lock();
        if link.conn.is_usable() {
            match link.conn.poll_notices() {
                Ok(()) | Err(Error::ConnectionLost { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        if let Some(how) = link.conn.ended(handle.id) {
            return Ok(Some(how));
        }
        if !link.conn.is_usable() {
            self.reconnect(&mut link)?;
            if let Some(how) = link.conn.ended(handle.id) {
                return Ok(Some(how));
            }
        }
        self.check_held(Some(handle))?;
        Ok(None)
    }

    pub(crate) fn offer_handover(&self, handle: Handle) -> Result<u64, Error> {
        let id = handle.id;
        self.ask_as(
            Some(handle),
            Request::Handover { id },
            |response| match response {
                Response::HandoverOffered { id: offered, token } if offered == id => Some(token),
                _ => None,
            },
        )
    }

    pub(crate) fn tie_to_process(&self, handle: Handle, pid: i32) -> Result<Holder, Error> {
        let id = handle.id;
        self.ask_as(
            Some(handle),
            Request::TieToProcess { id, pid },
            |response| match response {
                Response::Tied { id: tied, holder } if tied == id => Some(holder),
                _ => None,
            },
        )
    }

    /// Renews lease `id`, or the lease of `handle` if given (then `id` is its id).
    pub(crate) fn renew(
        &self,
        handle: Option<Handle>,
        id: LeaseId,
        ttl: Duration,
    ) -> Result<Option<SystemTime>, Error> {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        self.ask_as(
            handle,
            Request::Renew { id, ttl_ms },
            |response| match response {
                Response::Renewed {
                    id: renewed,
                    expires_unix_ms,
                } if renewed == id => Some(
                    expires_unix_ms.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
                ),
                _ => None,
            },
        )
    }

    /// Ends the handle's lease without waiting for the broker's answer (for `Drop`). Nothing
    /// is sent if the handle lost its lease, or if the connection is broken: then the broker
    /// ends the lease as the connection closes, or has ended it already.
    pub(crate) fn release_unanswered(&self, handle: Handle) {
        let mut link = self.lock();
        // Under the connection's lock, so that no reconnect comes between the check and the
        // send.
        let held = book::leave(self.place, handle.id, handle.ticket);
        if held && link.conn.is_usable() {
            let _ = link
                .conn
                .send_unanswered(&Request::Release { id: handle.id });
        }
    }

    /// Releases lease `id`, or the lease of `handle` if given (then `id` is its id).
    pub(crate) fn release(&self, handle: Option<Handle>, id: LeaseId) -> Result<(), Error> {
        self.ask_as(handle, Request::Release { id }, |response| match response {
            Response::Released { id: released } if released == id => Some(()),
            _ => None,
        })
    }
}

/// Whether `request` only reads, and so may be asked again when its answer did not come.
fn is_read(request: &Request) -> bool {
    matches!(
        request,
        Request::List | Request::Status | Request::History { .. }
    )
}

/// The one way an answer is read: `Failed` is the broker's error, whatever `pick` takes out of
/// `response` is the result, and anything else is a protocol error that names what came.
pub(crate) fn expect_answer<T>(
    request: &Request,
    response: Response,
    pick: impl FnOnce(Response) -> Option<T>,
) -> Result<T, Error> {
    if let Response::Failed(failure) = response {
        return Err(Error::Failed(failure));
    }
    let answered = response.name();
    pick(response).ok_or_else(|| {
        Error::protocol(format!(
            "the broker answered {} with {answered}",
            request.name()
        ))
    })
}

/// A new connection to the broker at `path`, checked to be a broker this process trusts,
/// with the timeout given, greeted; with the broker's version.
pub(crate) fn open_connection(
    path: &Path,
    timeout: Option<Duration>,
) -> Result<(Connection, String), Error> {
    let stream = UnixStream::connect(path).map_err(|source| Error::Unreachable {
        path: path.to_owned(),
        source,
    })?;
    // Before a single byte goes out.
    trust::check_peer(&stream, path)?;
    let mut conn = Connection::new(stream, path.to_owned());
    conn.set_timeouts(timeout)
        .map_err(|source| Error::ConnectionLost {
            path: path.to_owned(),
            source,
        })?;
    let hello = Request::Hello {
        protocol: PROTOCOL_VERSION,
        client: CLIENT_NAME.to_owned(),
    };
    let reply = conn.round_trip(&hello)?;
    let (protocol, daemon_version) =
        expect_answer(&hello, reply.response, |response| match response {
            Response::Hello {
                protocol,
                daemon_version,
            } => Some((protocol, daemon_version)),
            _ => None,
        })?;
    if protocol != PROTOCOL_VERSION {
        return Err(Error::VersionMismatch {
            broker: protocol,
            client: PROTOCOL_VERSION,
        });
    }
    Ok((conn, daemon_version))
}
