//! The broker's history as [`Request::History`](crate::Request::History) reports it: what
//! happened to leases, when, and why a lease ended. The daemon keeps it in its journal, and
//! the declaration order here is wire format like everything else in this crate (new variants
//! at the end).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{GrantedSocket, Holder, LeaseId};

/// One event of a lease's life, as [`Response::History`](crate::Response::History) lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When it happened, in milliseconds since the Unix epoch (the broker's clock).
    pub at_unix_ms: u64,
    /// The lease.
    pub id: LeaseId,
    /// What happened.
    pub event: HistoryEvent,
    /// The lease's holder then (for an end, its last holder); `None` when the broker no longer
    /// has the record that named it: an end whose lease was granted longer ago than the part
    /// of the history the broker reads to answer.
    pub holder: Option<Holder>,
    /// The lease's sockets; empty when `holder` is `None`.
    pub sockets: Vec<GrantedSocket>,
}

/// What happened to a lease, in a [`HistoryEntry`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryEvent {
    /// It was granted (`Lease`, `LeaseNamed`, a portserver number).
    Granted,
    /// It was tied to a process (`TieToProcess`), which holds it from now on.
    Tied,
    /// It was handed over (`Claim`) to a new holder.
    HandedOver,
    /// It ended.
    Ended(EndReason),
}

impl HistoryEvent {
    /// `"granted"`, `"tied"`, `"handed_over"` or `"ended"`: the `event` of `portctl log --json`.
    pub fn name(self) -> &'static str {
        match self {
            HistoryEvent::Granted => "granted",
            HistoryEvent::Tied => "tied",
            HistoryEvent::HandedOver => "handed_over",
            HistoryEvent::Ended(_) => "ended",
        }
    }
}

/// `granted`, `tied`, `handed over`, `ended: expired`, ...
impl fmt::Display for HistoryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryEvent::Granted => f.write_str("granted"),
            HistoryEvent::Tied => f.write_str("tied"),
            HistoryEvent::HandedOver => f.write_str("handed over"),
            HistoryEvent::Ended(reason) => write!(f, "ended: {reason}"),
        }
    }
}

/// Why a lease ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// A `Release`, by its holder's user or an administrator.
    Released,
    /// Its holder's connection closed, and no copy of its sockets was left.
    ConnectionClosed,
    /// The process it was tied to exited, and no copy of its sockets was left.
    ProcessExited,
    /// It lingered after its holder was gone, and the last copy of its sockets closed.
    CopiesClosed,
    /// Its time limit passed (`Renew`).
    Expired,
    /// An administrator revoked it.
    Revoked,
    /// A port held as a number, taken over by a lease of the same user on the port.
    TakenOver,
    /// The ports a sticky service kept for its user went back to the pool: the server did not
    /// come back in time.
    KeptExpired,
    /// The ports a sticky service kept for its user went back to the restarted service.
    KeptReturned,
    /// It was granted, but the journal could not record it, so it was not granted after all.
    JournalFailed,
    /// The daemon restarted and found its holder gone, or no longer holding its sockets, and
    /// its ports free.
    HolderGoneAtRestart,
    /// The daemon stopped with `--release-on-exit`.
    DaemonStopped,
    /// The daemon's own lease of its metrics endpoint, which stopped serving.
    MetricsStopped,
}

impl EndReason {
    /// Every reason, in declaration order.
    pub const ALL: [EndReason; 13] = [
        EndReason::Released,
        EndReason::ConnectionClosed,
        EndReason::ProcessExited,
        EndReason::CopiesClosed,
        EndReason::Expired,
        EndReason::Revoked,
        EndReason::TakenOver,
        EndReason::KeptExpired,
        EndReason::KeptReturned,
        EndReason::JournalFailed,
        EndReason::HolderGoneAtRestart,
        EndReason::DaemonStopped,
        EndReason::MetricsStopped,
    ];

    /// The reason in `snake_case` (`"released"`, `"connection_closed"`, ...): the `reason` of
    /// `portctl log --json`, and how the daemon's journal writes it.
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::ConnectionClosed => "connection_closed",
            EndReason::ProcessExited => "process_exited",
            EndReason::CopiesClosed => "copies_closed",
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
            EndReason::TakenOver => "taken_over",
            EndReason::KeptExpired => "kept_expired",
            EndReason::KeptReturned => "kept_returned",
            EndReason::JournalFailed => "journal_failed",
            EndReason::HolderGoneAtRestart => "holder_gone_at_restart",
            EndReason::DaemonStopped => "daemon_stopped",
            EndReason::MetricsStopped => "metrics_stopped",
        }
    }

    /// The reason named `name` (see [`EndReason::name`]), if there is one.
    pub fn from_name(name: &str) -> Option<EndReason> {
        EndReason::ALL
            .into_iter()
            .find(|reason| reason.name() == name)
    }
}

/// For a person, in a few words (a column of `portctl log`): `released`, `connection closed`,
/// ...
impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndReason::Released => "released",
            EndReason::ConnectionClosed => "connection closed",
            EndReason::ProcessExited => "process exited",
            EndReason::CopiesClosed => "last copy closed",
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
            EndReason::TakenOver => "taken over",
            EndReason::KeptExpired => "kept ports expired",
            EndReason::KeptReturned => "kept ports returned",
            EndReason::JournalFailed => "journal failed",
            EndReason::HolderGoneAtRestart => "holder gone at restart",
            EndReason::DaemonStopped => "daemon stopped",
            EndReason::MetricsStopped => "metrics endpoint stopped",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_name_that_reads_back() {
        for reason in EndReason::ALL {
            assert_eq!(EndReason::from_name(reason.name()), Some(reason));
        }
        assert_eq!(EndReason::from_name("gone fishing"), None);
        let names: std::collections::BTreeSet<_> =
            EndReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), EndReason::ALL.len(), "names are distinct");
    }
}
