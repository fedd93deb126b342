//! A subscription to the broker's events ([`Broker::watch`](crate::Broker::watch)), on a
//! connection of its own.

use std::path::Path;
use std::time::Duration;

use portbroker_proto::{Event, Request, Response};

use crate::connection::Connection;
use crate::error::Error;
use crate::session::{expect_answer, open_connection};

/// What a [`Watch`] reads: an event, or how many the broker could not queue for this watcher
/// because it read too slowly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// Something happened.
    Event {
        /// Its number in the broker's life: consecutive unless events were missed.
        seq: u64,
        /// What happened.
        event: Event,
    },
    /// This many events were not sent to this watcher (it fell behind); the next one follows.
    Missed {
        /// How many.
        count: u64,
    },
}

/// A live stream of the broker's events, from the moment [`Broker::watch`](crate::Broker::watch)
/// returned: grants, refusals, releases, expiries, revokes, leases starting to linger and
/// reservations taken back. Reading blocks until the next event (see [`Watch::set_timeout`]).
/// As an iterator it ends at the first error (the broker closed the connection, say).
#[derive(Debug)]
pub struct Watch {
    conn: Connection,
    failed: bool,
}

impl Watch {
    /// Connects to the broker at `path` and subscribes.
    pub(crate) fn open(path: &Path, timeout: Option<Duration>) -> Result<Watch, Error> {
        let (mut conn, _) = open_connection(path, timeout)?;
        let reply = conn.round_trip(&Request::Watch)?;
        expect_answer(&Request::Watch, reply.response, |response| {
            matches!(response, Response::Watching).then_some(())
        })?;
        // Events come when they come.
        conn.set_read_timeout(None)
            .map_err(|source| conn.lost(source))?;
        Ok(Watch {
            conn,
            failed: false,
        })
    }

    /// How long [`Watch::next_event`] waits for an event; `None` (the default) waits forever.
    /// A read that times out fails with [`Error::ConnectionLost`] of kind `TimedOut`, after which
    /// the watch can go on reading.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), Error> {
        self.conn
            .set_read_timeout(timeout)
            .map_err(|source| self.conn.lost(source))
    }

    /// Waits for the next event, or the news of missed ones.
    pub fn next_event(&mut self) -> Result<Watched, Error> {
        let reply = self.conn.receive()?;
        match reply.response {
            Response::Event { seq, event } => Ok(Watched::Event { seq, event }),
            Response::Missed { count } => Ok(Watched::Missed { count }),
            Response::Failed(failure) => Err(Error::Failed(failure)),
            other => Err(Error::protocol(format!(
                "the broker sent {} to a watcher",
                other.name()
            ))),
        }
    }
}

impl Iterator for Watch {
    type Item = Result<Watched, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = self.next_event();
        self.failed = next.is_err();
        Some(next)
    }
}
