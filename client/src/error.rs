//! The library's error type and its coarse classification.

use std::io;
use std::path::PathBuf;

use portbroker_proto::{Failure, Holder, LeaseId, PathError, Refusal, SpecError};

use crate::TRUST_UID_ENV;

/// Anything that can go wrong talking to the broker.
///
/// Use [`Error::kind`] (or the `is_*` helpers) to react to a class of errors; the variants carry
/// the details the broker sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker's socket could not be connected to.
    #[error(
        "cannot reach the broker at {}: {source}; is portbrokerd running? \
         (set PORTBROKER_SOCKET or pass the path)",
        path.display()
    )]
    Unreachable {
        /// The socket path tried.
        path: PathBuf,
        /// Why `connect()` failed.
        source: io::Error,
    },
    /// No broker answered on any of the default socket paths ([`Broker::connect`] with no
    /// `PORTBROKER_SOCKET`, where there are several: a per-user one and the system one).
    ///
    /// [`Broker::connect`]: crate::Broker::connect
    #[error(
        "cannot reach a broker: {}; is portbrokerd running? (`systemctl enable --now \
         portbrokerd.socket` starts the system broker, whose socket is for group portbroker: \
         `usermod -aG portbroker USER`; or set PORTBROKER_SOCKET)",
        tried_list(tried)
    )]
    NoBroker {
        /// Every socket path tried, in order, with why `connect()` failed there.
        tried: Vec<(PathBuf, io::Error)>,
    },
    /// The process answering on the broker's socket runs as a user this library does not
    /// trust: not root, not the caller's own user, and not the uid that `PORTBROKER_TRUST_UID`
    /// names. It could be anyone's program posing as the broker, so nothing was sent to it.
    #[error(
        "refusing the broker at {}: the process answering there (pid {pid}) runs as uid {uid}, \
         neither root nor this user (uid {own_uid}), so it may be posing as portbrokerd and \
         nothing was sent to it{}; if uid {uid} runs a broker you trust, set \
         {TRUST_UID_ENV}={uid}",
        path.display(),
        trust_note(trust_uid.as_deref())
    )]
    UntrustedBroker {
        /// The socket path connected to.
        path: PathBuf,
        /// The pid of the process that answered (`SO_PEERCRED`).
        pid: i32,
        /// Its uid (`SO_PEERCRED`).
        uid: u32,
        /// The caller's effective uid.
        own_uid: u32,
        /// The value of `PORTBROKER_TRUST_UID`, if it was set (to another uid, or to
        /// something that is not a uid).
        trust_uid: Option<String>,
    },
    /// A [`Lease`](crate::Lease) handle's lease is gone: the connection to the broker broke,
    /// and when the library connected again the broker did not give the lease back to this
    /// process (it restarted without its journal, or the lease ended meanwhile). The lease's
    /// id may name another lease by now, so the handle never sends it again: releasing,
    /// renewing, tying or handing over through it fails with this error, and dropping it sends
    /// nothing.
    #[error(
        "lease {id} is lost: the connection to the broker at {} broke, and the broker did not \
         give the lease back when this process connected again (it restarted without it, or the \
         lease ended meanwhile); its port may be someone else's now, so lease again",
        path.display()
    )]
    LeaseLost {
        /// The broker's socket path.
        path: PathBuf,
        /// The lease the handle held.
        id: LeaseId,
    },
    /// No socket path was given and none could be worked out from the environment.
    #[error(transparent)]
    NoSocketPath(#[from] PathError),
    /// A socket spec in text form could not be parsed; nothing was sent to the broker.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The broker refused the lease; nothing of it stays bound.
    #[error("lease refused: {0}")]
    Refused(Refusal),
    /// The broker could not serve the request.
    #[error("{0}")]
    Failed(Failure),
    /// The broker speaks another protocol version.
    #[error(
        "protocol version mismatch: the broker speaks version {broker}, this client version \
         {client}; use a client and broker from the same release"
    )]
    VersionMismatch {
        /// The broker's protocol version.
        broker: u32,
        /// This library's protocol version.
        client: u32,
    },
    /// The connection broke, or the broker did not answer within the timeout. Leases held on
    /// this connection end when it closes. The request may or may not have been carried out;
    /// only the reads ([`Broker::list`](crate::Broker::list),
    /// [`Broker::status`](crate::Broker::status)) are asked again on a new connection before
    /// this is reported.
    #[error("lost the connection to the broker at {}: {source}", path.display())]
    ConnectionLost {
        /// The broker's socket path.
        path: PathBuf,
        /// What the OS reported; [`io::ErrorKind::TimedOut`] for a timeout.
        source: io::Error,
    },
    /// The broker sent something this client does not understand or did not expect.
    #[error("protocol error: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
        /// The codec's error, when a frame could not be decoded.
        #[source]
        source: Option<portbroker_proto::Error>,
    },
}

/// A coarse classification of [`Error`], stable enough to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The broker could not be reached, or no socket path is known.
    Unreachable,
    /// A live lease holds an overlapping address.
    InUse,
    /// A process outside the broker holds the address.
    InUseOutside,
    /// The broker's policy forbids the request: it refused a lease, or the request needs an
    /// administrator (such as a reload).
    NotPermitted,
    /// No port of the dynamic pool is free.
    PoolExhausted,
    /// A socket spec is malformed, locally or in the broker's eyes.
    InvalidSpec,
    /// The kernel refused to bind for a reason other than "in use".
    BindFailed,
    /// A quota of the broker's policy is used up (leases per user, for instance); it frees up
    /// as leases end.
    QuotaExceeded,
    /// The broker's policy has no service of the name given to
    /// [`Broker::lease_named`](crate::Broker::lease_named).
    UnknownService,
    /// The broker could not load its policy file; the policy in force is unchanged.
    ReloadFailed,
    /// The broker cannot write its lease journal (a full disk, say) and grants nothing until
    /// it can; releases and reads still work.
    JournalUnavailable,
    /// Client and broker speak different protocol versions.
    VersionMismatch,
    /// No live lease has the id given.
    UnknownLease,
    /// The lease belongs to another user, and only its holder's user and administrators (root
    /// and the members of the policy's `[admin]` groups) may release, renew, tie, hand over or
    /// claim it.
    NotYourLease,
    /// The connection broke or timed out.
    ConnectionLost,
    /// The process on the broker's socket is not trusted: not root, not this user, not
    /// `PORTBROKER_TRUST_UID`.
    UntrustedBroker,
    /// A lease handle's lease did not survive a broken connection (see [`Error::LeaseLost`]).
    LeaseLost,
    /// The two sides disagree about the protocol.
    Protocol,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unreachable { .. } | Error::NoBroker { .. } | Error::NoSocketPath(_) => {
                ErrorKind::Unreachable
            }
            Error::Spec(_) => ErrorKind::InvalidSpec,
            Error::Refused(refusal) => match refusal {
                Refusal::InUse { .. } => ErrorKind::InUse,
                Refusal::InUseOutside { .. } => ErrorKind::InUseOutside,
                Refusal::NotPermitted { .. } => ErrorKind::NotPermitted,
                Refusal::InvalidSpec { .. } => ErrorKind::InvalidSpec,
                Refusal::PoolExhausted { .. } => ErrorKind::PoolExhausted,
                Refusal::BindFailed { .. } => ErrorKind::BindFailed,
                Refusal::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
                Refusal::UnknownService { .. } => ErrorKind::UnknownService,
            },
            Error::Failed(failure) => match failure {
                Failure::VersionMismatch { .. } => ErrorKind::VersionMismatch,
                Failure::UnknownLease { .. } => ErrorKind::UnknownLease,
                Failure::NotYourLease { .. } => ErrorKind::NotYourLease,
                Failure::NotPermitted { .. } => ErrorKind::NotPermitted,
                Failure::ReloadFailed { .. } => ErrorKind::ReloadFailed,
                Failure::JournalUnavailable { .. } => ErrorKind::JournalUnavailable,
                Failure::HelloRequired | Failure::DuplicateHello | Failure::Malformed { .. } => {
                    ErrorKind::Protocol
                }
            },
            Error::VersionMismatch { .. } => ErrorKind::VersionMismatch,
            Error::ConnectionLost { .. } => ErrorKind::ConnectionLost,
            Error::UntrustedBroker { .. } => ErrorKind::UntrustedBroker,
            Error::LeaseLost { .. } => ErrorKind::LeaseLost,
            Error::Protocol { .. } => ErrorKind::Protocol,
        }
    }

    /// Whether the address is taken, by another lease or by a process outside the broker.
    pub fn is_in_use(&self) -> bool {
        matches!(self.kind(), ErrorKind::InUse | ErrorKind::InUseOutside)
    }

    /// Whether the broker denied the request: its policy refused a lease or the request needs
    /// an administrator ([`ErrorKind::NotPermitted`]), or the lease to act on belongs to another
    /// user and the asker is no administrator ([`ErrorKind::NotYourLease`]).
    pub fn is_not_permitted(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::NotPermitted | ErrorKind::NotYourLease
        )
    }

    /// Whether the broker could not be reached at all (not running, wrong path, no path).
    pub fn is_unreachable(&self) -> bool {
        self.kind() == ErrorKind::Unreachable
    }

    /// The process that holds the address, for an "in use" refusal where the broker knows it.
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            Error::Refused(Refusal::InUse { holder, .. }) => Some(holder),
            Error::Refused(Refusal::InUseOutside { holder, .. }) => holder.as_ref(),
            _ => None,
        }
    }

    pub(crate) fn protocol(detail: impl Into<String>) -> Self {
        Error::Protocol {
            detail: detail.into(),
            source: None,
        }
    }
}

/// "PATH (why), PATH (why)" for [`Error::NoBroker`].
fn tried_list(tried: &[(PathBuf, io::Error)]) -> String {
    let each: Vec<String> = tried
        .iter()
        .map(|(path, source)| format!("{} ({source})", path.display()))
        .collect();
    format!("tried {}", each.join(", "))
}

/// What the message of [`Error::UntrustedBroker`] says of `PORTBROKER_TRUST_UID`, if it is set.
fn trust_note(trust_uid: Option<&str>) -> String {
    match trust_uid {
        Some(value) => format!(" ({TRUST_UID_ENV} is {value:?})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portbroker_proto::{PortRange, Transport};

    fn holder() -> Holder {
        Holder {
            pid: 4242,
            uid: 1000,
            gid: 1000,
            name: "nginx".into(),
        }
    }

    #[test]
    fn refusals_and_failures_map_to_kinds() {
        let addr = "0.0.0.0:80".parse().unwrap();
        let cases = [
            (
                Error::Refused(Refusal::InUse {
                    transport: Transport::Tcp,
                    requested: addr,
                    held: addr,
                    lease: LeaseId(3),
                    holder: holder(),
                }),
                ErrorKind::InUse,
            ),
            (
                Error::Refused(Refusal::InUseOutside {
                    transport: Transport::Udp,
                    requested: addr,
                    holder: None,
                }),
                ErrorKind::InUseOutside,
            ),
            (
                Error::Refused(Refusal::NotPermitted { reason: "x".into() }),
                ErrorKind::NotPermitted,
            ),
            (
                Error::Refused(Refusal::InvalidSpec {
                    index: 0,
                    reason: "x".into(),
                }),
                ErrorKind::InvalidSpec,
            ),
            (
                Error::Refused(Refusal::PoolExhausted {
                    transport: Transport::Tcp,
                    pool: PortRange { lo: 1, hi: 2 },
                }),
                ErrorKind::PoolExhausted,
            ),
            (
                Error::Refused(Refusal::BindFailed {
                    transport: Transport::Tcp,
                    requested: addr,
                    errno: 99,
                    message: "x".into(),
                }),
                ErrorKind::BindFailed,
            ),
            (
                Error::Failed(Failure::UnknownLease { id: LeaseId(1) }),
                ErrorKind::UnknownLease,
            ),
            (
                Error::Failed(Failure::NotYourLease {
                    id: LeaseId(1),
                    holder_uid: 0,
                }),
                ErrorKind::NotYourLease,
            ),
            (
                Error::Failed(Failure::VersionMismatch {
                    broker: 2,
                    client: 1,
                }),
                ErrorKind::VersionMismatch,
            ),
            (
                Error::Refused(Refusal::QuotaExceeded {
                    quota: "leases_per_uid".into(),
                    used: 4,
                    limit: 4,
                }),
                ErrorKind::QuotaExceeded,
            ),
            (
                Error::Refused(Refusal::UnknownService { name: "web".into() }),
                ErrorKind::UnknownService,
            ),
            (
                Error::Failed(Failure::NotPermitted { reason: "x".into() }),
                ErrorKind::NotPermitted,
            ),
            (
                Error::Failed(Failure::ReloadFailed {
                    error: "line 3: x".into(),
                }),
                ErrorKind::ReloadFailed,
            ),
            (Error::Failed(Failure::HelloRequired), ErrorKind::Protocol),
            (Error::NoSocketPath(PathError), ErrorKind::Unreachable),
            (
                Error::Spec("bogus".parse::<portbroker_proto::SocketSpec>().unwrap_err()),
                ErrorKind::InvalidSpec,
            ),
            (
                Error::ConnectionLost {
                    path: "/x".into(),
                    source: io::ErrorKind::TimedOut.into(),
                },
                ErrorKind::ConnectionLost,
            ),
            (Error::protocol("bad"), ErrorKind::Protocol),
            (
                Error::UntrustedBroker {
                    path: "/x".into(),
                    pid: 9,
                    uid: 1001,
                    own_uid: 1000,
                    trust_uid: None,
                },
                ErrorKind::UntrustedBroker,
            ),
            (
                Error::LeaseLost {
                    path: "/x".into(),
                    id: LeaseId(1),
                },
                ErrorKind::LeaseLost,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn helpers_answer_the_common_questions() {
        let in_use = Error::Refused(Refusal::InUse {
            transport: Transport::Tcp,
            requested: "127.0.0.1:8080".parse().unwrap(),
            held: "0.0.0.0:8080".parse().unwrap(),
            lease: LeaseId(3),
            holder: holder(),
        });
        assert!(in_use.is_in_use());
        assert!(!in_use.is_not_permitted());
        assert_eq!(in_use.holder().map(|h| h.pid), Some(4242));
        let text = in_use.to_string();
        assert!(text.starts_with("lease refused: "), "{text}");
        assert!(text.contains("pid 4242 (nginx"), "{text}");

        let outside = Error::Refused(Refusal::InUseOutside {
            transport: Transport::Tcp,
            requested: "127.0.0.1:8080".parse().unwrap(),
            holder: None,
        });
        assert!(outside.is_in_use());
        assert!(outside.holder().is_none());

        let admin_only = Error::Failed(Failure::NotPermitted {
            reason: "reloading needs root or an admin group".into(),
        });
        assert!(admin_only.is_not_permitted());
        assert!(!admin_only.is_in_use());
        let quota = Error::Refused(Refusal::QuotaExceeded {
            quota: "leases_per_uid".into(),
            used: 4,
            limit: 4,
        });
        assert!(!quota.is_in_use() && !quota.is_not_permitted());

        let unreachable = Error::Unreachable {
            path: "/run/x.sock".into(),
            source: io::ErrorKind::NotFound.into(),
        };
        assert!(unreachable.is_unreachable());
        let text = unreachable.to_string();
        assert!(text.contains("/run/x.sock"), "{text}");
        assert!(text.contains("is portbrokerd running?"), "{text}");

        let none = Error::NoBroker {
            tried: vec![
                (
                    "/run/user/1000/portbroker/portbroker.sock".into(),
                    io::ErrorKind::NotFound.into(),
                ),
                (
                    "/run/portbroker/portbroker.sock".into(),
                    io::ErrorKind::PermissionDenied.into(),
                ),
            ],
        };
        assert!(none.is_unreachable());
        let text = none.to_string();
        assert!(
            text.contains("tried /run/user/1000/portbroker/portbroker.sock (entity not found), /run/portbroker/portbroker.sock (permission denied)"),
            "{text}"
        );
        assert!(text.contains("group portbroker"), "{text}");
    }

    #[test]
    fn an_untrusted_broker_is_named_with_the_way_to_trust_it() {
        let err = Error::UntrustedBroker {
            path: "/run/portbroker/portbroker.sock".into(),
            pid: 4242,
            uid: 1001,
            own_uid: 1000,
            trust_uid: None,
        };
        let text = err.to_string();
        for part in [
            "/run/portbroker/portbroker.sock",
            "pid 4242",
            "uid 1001",
            "uid 1000",
            "set PORTBROKER_TRUST_UID=1001",
        ] {
            assert!(text.contains(part), "{part:?} missing: {text}");
        }
        assert!(!text.contains(" is \""), "{text}");
        let err = Error::UntrustedBroker {
            path: "/run/portbroker/portbroker.sock".into(),
            pid: 4242,
            uid: 1001,
            own_uid: 1000,
            trust_uid: Some("1002".into()),
        };
        assert!(
            err.to_string()
                .contains("(PORTBROKER_TRUST_UID is \"1002\")"),
            "{err}"
        );
    }

    #[test]
    fn a_lost_lease_says_which_and_what_to_do() {
        let text = Error::LeaseLost {
            path: "/run/x.sock".into(),
            id: LeaseId(12),
        }
        .to_string();
        assert!(text.starts_with("lease 12 is lost"), "{text}");
        assert!(text.contains("/run/x.sock"), "{text}");
        assert!(text.contains("restarted without it"), "{text}");
        assert!(text.ends_with("lease again"), "{text}");
    }
}
