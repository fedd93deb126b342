//! The error codes of the C ABI: the client library's `ErrorKind`, numbered for C.

use client::ErrorKind;

/// The class of the last error on this thread, as `pb_last_error_code` returns it.
///
/// The numbers are part of the ABI: they never change and are never reused. Codes 1 to 18
/// mirror the Rust library's `ErrorKind`; 64 and up belong to the C ABI itself. A program
/// should treat a code it does not know like `PB_ERROR_OTHER`, and show `pb_last_error()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PbError {
    /// No error: the last call on this thread succeeded.
    Ok = 0,
    /// The broker could not be reached (not running, wrong path, no access to its socket), or
    /// no socket path is known.
    Unreachable = 1,
    /// A live lease holds an overlapping address; `pb_last_error_holder` names its holder.
    InUse = 2,
    /// A process outside the broker holds the address; `pb_last_error_holder` names it where
    /// the broker could find it.
    InUseOutside = 3,
    /// The broker's policy forbids the request.
    NotPermitted = 4,
    /// No port of the broker's dynamic pool is free.
    PoolExhausted = 5,
    /// A socket spec is malformed, in this library's eyes or the broker's.
    InvalidSpec = 6,
    /// The kernel refused to bind for a reason other than "in use".
    BindFailed = 7,
    /// A quota of the broker's policy is used up (leases per user, say); it frees up as
    /// leases end.
    QuotaExceeded = 8,
    /// The broker's policy has no service of the name given.
    UnknownService = 9,
    /// The broker could not load its policy file; the policy in force is unchanged.
    ReloadFailed = 10,
    /// The broker cannot write its lease journal (a full disk, say) and grants nothing until
    /// it can.
    JournalUnavailable = 11,
    /// This library and the broker speak different protocol versions.
    VersionMismatch = 12,
    /// No live lease has the id given.
    UnknownLease = 13,
    /// The lease belongs to another user, and only its holder's user and administrators may
    /// act on it.
    NotYourLease = 14,
    /// The connection to the broker broke or timed out; the request may or may not have been
    /// carried out.
    ConnectionLost = 15,
    /// The process answering on the broker's socket runs as a user this library does not
    /// trust (not root, not this user, not `PORTBROKER_TRUST_UID`); nothing was sent to it.
    UntrustedBroker = 16,
    /// The lease did not survive a broken connection: the broker did not give it back when the
    /// library connected again; its port may be someone else's now.
    LeaseLost = 17,
    /// The library and the broker disagree about the protocol.
    Protocol = 18,
    /// An argument cannot be used: a NULL pointer where one is needed, a buffer too small, a
    /// lease id that is not positive. Nothing was sent to the broker.
    InvalidArgument = 64,
    /// A bug in libportbroker (it panicked, and the panic was stopped at the boundary); the
    /// text says where.
    Internal = 65,
    /// An error of a kind newer than this header; the text says what it is.
    Other = 66,
}

impl From<ErrorKind> for PbError {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Unreachable => PbError::Unreachable,
            ErrorKind::InUse => PbError::InUse,
            ErrorKind::InUseOutside => PbError::InUseOutside,
            ErrorKind::NotPermitted => PbError::NotPermitted,
            ErrorKind::PoolExhausted => PbError::PoolExhausted,
            ErrorKind::InvalidSpec => PbError::InvalidSpec,
            ErrorKind::BindFailed => PbError::BindFailed,
            ErrorKind::QuotaExceeded => PbError::QuotaExceeded,
            ErrorKind::UnknownService => PbError::UnknownService,
            ErrorKind::ReloadFailed => PbError::ReloadFailed,
            ErrorKind::JournalUnavailable => PbError::JournalUnavailable,
            ErrorKind::VersionMismatch => PbError::VersionMismatch,
            ErrorKind::UnknownLease => PbError::UnknownLease,
            ErrorKind::NotYourLease => PbError::NotYourLease,
            ErrorKind::ConnectionLost => PbError::ConnectionLost,
            ErrorKind::UntrustedBroker => PbError::UntrustedBroker,
            ErrorKind::LeaseLost => PbError::LeaseLost,
            ErrorKind::Protocol => PbError::Protocol,
            // ErrorKind is non_exhaustive: a kind added to the library after this table shows
            // as OTHER until it gets a number of its own here (and in the pinning test below).
            _ => PbError::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbering is the ABI: compiled C programs compare against these numbers, so a
    /// change here breaks them. Add new codes; never renumber.
    #[test]
    fn codes_keep_their_numbers() {
        let pinned = [
            (PbError::Ok, 0),
            (PbError::Unreachable, 1),
            (PbError::InUse, 2),
            (PbError::InUseOutside, 3),
            (PbError::NotPermitted, 4),
            (PbError::PoolExhausted, 5),
            (PbError::InvalidSpec, 6),
            (PbError::BindFailed, 7),
            (PbError::QuotaExceeded, 8),
            (PbError::UnknownService, 9),
            (PbError::ReloadFailed, 10),
            (PbError::JournalUnavailable, 11),
            (PbError::VersionMismatch, 12),
            (PbError::UnknownLease, 13),
            (PbError::NotYourLease, 14),
            (PbError::ConnectionLost, 15),
            (PbError::UntrustedBroker, 16),
            (PbError::LeaseLost, 17),
            (PbError::Protocol, 18),
            (PbError::InvalidArgument, 64),
            (PbError::Internal, 65),
            (PbError::Other, 66),
        ];
        for (code, number) in pinned {
            assert_eq!(code as i32, number, "{code:?}");
        }
    }

    /// Every kind the library has, with the code it must map to: never OTHER.
    const KINDS: [(ErrorKind, PbError); 18] = [
        (ErrorKind::Unreachable, PbError::Unreachable),
        (ErrorKind::InUse, PbError::InUse),
        (ErrorKind::InUseOutside, PbError::InUseOutside),
        (ErrorKind::NotPermitted, PbError::NotPermitted),
        (ErrorKind::PoolExhausted, PbError::PoolExhausted),
        (ErrorKind::InvalidSpec, PbError::InvalidSpec),
        (ErrorKind::BindFailed, PbError::BindFailed),
        (ErrorKind::QuotaExceeded, PbError::QuotaExceeded),
        (ErrorKind::UnknownService, PbError::UnknownService),
        (ErrorKind::ReloadFailed, PbError::ReloadFailed),
        (ErrorKind::JournalUnavailable, PbError::JournalUnavailable),
        (ErrorKind::VersionMismatch, PbError::VersionMismatch),
        (ErrorKind::UnknownLease, PbError::UnknownLease),
        (ErrorKind::NotYourLease, PbError::NotYourLease),
        (ErrorKind::ConnectionLost, PbError::ConnectionLost),
        (ErrorKind::UntrustedBroker, PbError::UntrustedBroker),
        (ErrorKind::LeaseLost, PbError::LeaseLost),
        (ErrorKind::Protocol, PbError::Protocol),
    ];

    #[test]
    fn every_library_kind_has_its_own_code() {
        for (kind, code) in KINDS {
            assert_eq!(PbError::from(kind), code, "{kind:?}");
        }
    }

    /// `KINDS` covers the library's `ErrorKind` as its source declares it, so a kind added
    /// there fails here until it gets a code (until then the match maps it to OTHER).
    #[test]
    fn the_table_knows_every_kind_the_library_declares() {
        let source = include_str!("../../client/src/error.rs");
        let body = source
            .split_once("pub enum ErrorKind {")
            .and_then(|(_, rest)| rest.split_once("\n}"))
            .expect("client/src/error.rs declares pub enum ErrorKind")
            .0;
        let mut declared: Vec<String> = body
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with("//") && line.ends_with(','))
            .map(|line| line.trim_end_matches(',').to_owned())
            .collect();
        let mut known: Vec<String> = KINDS.iter().map(|(kind, _)| format!("{kind:?}")).collect();
        declared.sort();
        known.sort();
        assert_eq!(
            declared, known,
            "ErrorKind changed: give each new kind a code"
        );
    }
}
