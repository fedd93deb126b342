//! The session with the broker that a [`Broker`](crate::Broker) and its leases share: one
//! greeted connection, taken again (with this process's leases) when it breaks.

use std::collections::HashSet;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use portbroker_proto::{Holder, LeaseId, Request, Response, PROTOCOL_VERSION};

use crate::connection::{Connection, Ended, Reply};
use crate::error::Error;

/// Read and write timeout of a new connection.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How this library introduces itself in `Hello`, for the broker's logs.
const CLIENT_NAME: &str = concat!("portbroker-rs/", env!("CARGO_PKG_VERSION"));

/// What a [`Broker`](crate::Broker) and its [`Lease`](crate::Lease)s share: one connection,
/// used by one request at a time.
pub(crate) struct Shared {
    conn: Mutex<Connection>,
    path: PathBuf,
    daemon_version: String,
    /// The leases this connection's `Lease` handles hold, to re-attach after a reconnect.
    live: Mutex<HashSet<LeaseId>>,
}

impl Shared {
    /// Connects to the broker listening at `path` and exchanges `Hello`.
    pub(crate) fn connect(path: PathBuf) -> Result<Shared, Error> {
        let (conn, daemon_version) = open_connection(&path)?;
        Ok(Shared {
            conn: Mutex::new(conn),
            path,
            daemon_version,
            live: Mutex::default(),
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

    fn lock_conn(&self) -> MutexGuard<'_, Connection> {
        // A panic mid-request leaves the connection marked out of step, so the data behind a
        // poisoned lock is still safe to use: it refuses further requests by itself.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the read and write timeout of the connection; `None` waits forever.
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let conn = self.lock_conn();
        set_timeouts(conn.stream(), timeout).map_err(|source| Error::ConnectionLost {
            path: conn.path().to_path_buf(),
            source,
        })
    }

    /// Sends `request` and waits for its answer. A broken connection is connected again once,
    /// with this process's leases re-attached, before the request is tried a second time.
    pub(crate) fn round_trip(&self, request: &Request) -> Result<Reply, Error> {
        let mut conn = self.lock_conn();
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

    /// Sends `request` and returns what `pick` takes out of the answer (see [`expect_answer`]).
    /// For answers that carry no file descriptors: only `Granted` does.
    pub(crate) fn ask<T>(
        &self,
        request: Request,
        pick: impl FnOnce(Response) -> Option<T>,
    ) -> Result<T, Error> {
        let reply = self.round_trip(&request)?;
        expect_answer(&request, reply.response, pick)
    }

    fn live_leases(&self) -> Vec<LeaseId> {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// Records whether a `Lease` handle holds lease `id`, so that a reconnect re-attaches it.
    pub(crate) fn track(&self, id: LeaseId, live: bool) {
        let mut set = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }

    /// Whether the broker has said it ended lease `id` by itself (revoked or expired), reading
    /// (without waiting) what it sent since the last request.
    pub(crate) fn ended(&self, id: LeaseId) -> Result<Option<Ended>, Error> {
        let mut conn = self.lock_conn();
        conn.poll_notices()?;
        Ok(conn.ended(id))
    }

    pub(crate) fn offer_handover(&self, id: LeaseId) -> Result<u64, Error> {
        self.ask(Request::Handover { id }, |response| match response {
            Response::HandoverOffered { id: offered, token } if offered == id => Some(token),
            _ => None,
        })
    }

    pub(crate) fn tie_to_process(&self, id: LeaseId, pid: i32) -> Result<Holder, Error> {
        self.ask(
            Request::TieToProcess { id, pid },
            |response| match response {
                Response::Tied { id: tied, holder } if tied == id => Some(holder),
                _ => None,
            },
        )
    }

    pub(crate) fn renew(&self, id: LeaseId, ttl: Duration) -> Result<Option<SystemTime>, Error> {
        let ttl_ms = u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX);
        self.ask(Request::Renew { id, ttl_ms }, |response| match response {
            Response::Renewed {
                id: renewed,
                expires_unix_ms,
            } if renewed == id => {
                Some(expires_unix_ms.map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)))
            }
            _ => None,
        })
    }

    /// Ends a lease without waiting for the broker's answer (for `Drop`).
    pub(crate) fn release_unanswered(&self, id: LeaseId) -> Result<(), Error> {
        self.lock_conn().send_unanswered(&Request::Release { id })
    }

    pub(crate) fn release(&self, id: LeaseId) -> Result<(), Error> {
        self.ask(Request::Release { id }, |response| match response {
            Response::Released { id: released } if released == id => Some(()),
            _ => None,
        })
    }
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

/// A new connection to the broker at `path`, greeted; with the broker's version.
fn open_connection(path: &Path) -> Result<(Connection, String), Error> {
    let stream = UnixStream::connect(path).map_err(|source| Error::Unreachable {
        path: path.to_owned(),
        source,
    })?;
    let mut conn = Connection::new(stream, path.to_owned());
    set_timeouts(conn.stream(), Some(DEFAULT_TIMEOUT)).map_err(|source| Error::ConnectionLost {
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

fn set_timeouts(stream: &UnixStream, timeout: Option<Duration>) -> std::io::Result<()> {
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)
}
