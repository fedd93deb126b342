//! One lease: what it holds, for whom, and who keeps it alive.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use portbroker_proto::{GrantedSocket, Holder, LeaseId, LeaseInfo, LeaseState};
use smallvec::SmallVec;

use crate::socket_copies::Leased;

/// The largest lease id (the journal's rule, which everything read back from disk obeys).
pub use crate::journal::MAX_LEASE_ID;

/// The most sockets one lease holds (and one `sendmsg` carries); the journal, which must not
/// import the daemon's modules (a fuzz target includes it alone), defines it.
pub const MAX_SOCKETS_PER_LEASE: usize = crate::journal::MAX_SOCKETS;

/// Identifies a client connection for the life of the daemon.
pub type ConnId = u64;

/// Who keeps a lease alive. Every change goes through a transition of the lease table,
/// which keeps the table's index from keepers to leases in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeper {
    /// The client connection that was granted, claimed or re-attached it: the lease ends when
    /// that connection closes.
    Connection(ConnId),
    /// The process with this pid (its holder; `Lease::start_time` tells it from a reused
    /// pid): the lease ends when it exits.
    Process(i32),
    /// Its holder is gone but a copy of a socket survives somewhere (a forked child, say): the
    /// lease ends when a probe shows the last copy closed.
    Lingering,
    /// A sticky named service's ports, kept for the same user and service after its server
    /// ended, until `Lease::expires`.
    Kept,
}

/// A moment on the event loop's clock, and the same moment for clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl Deadline {
    /// The moment `after` from now.
    pub fn after(after: Duration) -> Deadline {
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| (d + after).as_millis() as u64);
        Deadline {
            at: Instant::now() + after,
            unix_ms,
        }
    }
}

/// A live lease.
#[derive(Debug)]
pub struct Lease {
    pub id: LeaseId,
    pub keeper: Keeper,
    pub holder: Rc<Holder>,
    /// The holder's start time, to know it again after a restart (see `procfs::start_time`).
    pub start_time: u64,
    /// When it was granted, in seconds since the Unix epoch.
    pub since: u64,
    /// Inline for one socket, as nearly every lease has: no allocation of its own.
    pub sockets: SmallVec<[GrantedSocket; 1]>,
    /// The `SO_COOKIE` of each socket, in the order of `sockets` (see `bind::cookie`): how the
    /// broker finds the leased sockets again. Empty for a lease recovered from a journal
    /// written before cookies were kept; such a lease's sockets are never acted on.
    pub cookies: SmallVec<[u64; 1]>,
    /// When it ends unless renewed; for a [`Keeper::Kept`] lease, when its ports go back.
    pub expires: Option<Deadline>,
    /// The named service it was leased as, if any.
    pub service: Option<Rc<str>>,
    /// The token of its standing handover offer, if any (see `Table::offer`).
    pub offer: Option<u64>,
    /// A port handed out as a number (`Listen::Number`, or the portserver protocol): the
    /// broker holds no socket for it and has no cookies; a probe bind tells whether its holder
    /// still uses it, and a lease of the holder's user on the port takes it over.
    pub number: bool,
}

impl Lease {
    /// What finds its sockets again: their addresses and cookies.
    pub fn leased(&self) -> Leased<'_> {
        Leased {
            sockets: &self.sockets,
            cookies: &self.cookies,
        }
    }

    pub fn state(&self) -> LeaseState {
        match self.keeper {
            Keeper::Connection(_) | Keeper::Process(_) if self.number => LeaseState::Number,
            Keeper::Connection(_) => LeaseState::Connection,
            Keeper::Process(_) => LeaseState::Process,
            Keeper::Lingering => LeaseState::Lingering,
            Keeper::Kept => LeaseState::Kept,
        }
    }

    pub fn info(&self) -> LeaseInfo {
        LeaseInfo {
            id: self.id,
            holder: Holder::clone(&self.holder),
            since: self.since,
            sockets: self.sockets.to_vec(),
            expires_unix_ms: self.expires.map(|d| d.unix_ms),
            state: self.state(),
        }
    }
}

/// Sockets as `tcp:127.0.0.1:8080 udp:[::]:53`, formatted only if a log line is written.
pub struct SocketList<'a>(pub &'a [GrantedSocket]);

impl std::fmt::Display for SocketList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, socket) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{socket}")?;
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
