//! Exit codes (sysexits.h, and the shell's for a command that cannot run), the errors of
//! portctl's own that carry one, and how errors are told to the user.

use nix::errno::Errno;
use portbroker::ErrorKind;

/// The command line asks for something impossible; exit status 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// CMD could not be started. Exit status 127 when it was not found, 126 otherwise, as shells do.
#[derive(Debug, thiserror::Error)]
#[error("cannot run {command}: {}", .errno.desc())]
pub struct CannotRun {
    command: String,
    errno: Errno,
}

impl CannotRun {
    /// `command` could not be started because of `errno` (of `execve` or of the PATH search).
    pub fn new(command: String, errno: Errno) -> Self {
        CannotRun { command, errno }
    }

    pub fn exit_code(&self) -> u8 {
        match self.errno {
            Errno::ENOENT | Errno::ENOTDIR => COMMAND_NOT_FOUND,
            _ => CANNOT_EXECUTE,
        }
    }
}

/// A file portctl needs is missing (the bind shim of `wrap`); exit status 72.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MissingFile(pub String);

/// Bad usage or an invalid socket spec.
pub const USAGE: u8 = 64;
/// The broker is unreachable, or no socket path is known.
pub const UNAVAILABLE: u8 = 69;
/// A file portctl needs is missing (`EX_OSFILE`).
pub const MISSING_FILE: u8 = 72;
/// A bind failed, or another OS error.
pub const OS_ERROR: u8 = 71;
/// Temporary: the address is in use, the pool is exhausted or a quota is used up.
pub const TEMPORARY: u8 = 75;
/// The broker and this client disagree about the protocol.
pub const PROTOCOL: u8 = 76;
/// The broker's policy forbids it, or it needs an administrator; or the process on the
/// broker's socket is not trusted (not root, not this user, not `PORTBROKER_TRUST_UID`).
pub const NOT_PERMITTED: u8 = 77;
/// Configuration: the policy has no such service, or its file does not load (`EX_CONFIG`).
pub const CONFIG: u8 = 78;
/// A lease id that no live lease has.
pub const UNKNOWN_LEASE: u8 = 1;
/// `who`: nobody holds the port.
pub const NOBODY: u8 = 1;
/// CMD was found but could not be executed (no permission, not an executable, ...).
pub const CANNOT_EXECUTE: u8 = 126;
/// CMD was not found.
pub const COMMAND_NOT_FOUND: u8 = 127;

pub fn code_for(err: &anyhow::Error) -> u8 {
    if let Some(cannot_run) = err.downcast_ref::<CannotRun>() {
        return cannot_run.exit_code();
    }
    if err.downcast_ref::<UsageError>().is_some() {
        return USAGE;
    }
    if err.downcast_ref::<MissingFile>().is_some() {
        return MISSING_FILE;
    }
    match err
        .downcast_ref::<portbroker::Error>()
        .map(portbroker::Error::kind)
    {
        Some(kind) => code_for_kind(kind),
        None => OS_ERROR,
    }
}

fn code_for_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InUse
        | ErrorKind::InUseOutside
        | ErrorKind::PoolExhausted
        | ErrorKind::QuotaExceeded
        | ErrorKind::JournalUnavailable => TEMPORARY,
        ErrorKind::NotPermitted | ErrorKind::NotYourLease | ErrorKind::UntrustedBroker => {
            NOT_PERMITTED
        }
        ErrorKind::Unreachable => UNAVAILABLE,
        ErrorKind::InvalidSpec => USAGE,
        ErrorKind::Protocol | ErrorKind::VersionMismatch => PROTOCOL,
        ErrorKind::UnknownLease => UNKNOWN_LEASE,
        ErrorKind::UnknownService | ErrorKind::ReloadFailed => CONFIG,
        ErrorKind::BindFailed | ErrorKind::ConnectionLost | ErrorKind::LeaseLost => OS_ERROR,
        _ => OS_ERROR,
    }
}

/// The error and its causes on one line, like `{:#}`, but without repeating a cause that a
/// message already quotes (the library's errors name their I/O error in their own text).
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn library_errors_map_to_sysexits() {
        let unreachable = portbroker::Error::Unreachable {
            path: "/x".into(),
            source: io::ErrorKind::NotFound.into(),
        };
        assert_eq!(code_for(&unreachable.into()), UNAVAILABLE);
        let refused = portbroker::Error::Refused(portbroker::Refusal::NotPermitted {
            reason: "no".into(),
        });
        assert_eq!(code_for(&refused.into()), NOT_PERMITTED);
        assert_eq!(code_for_kind(ErrorKind::InUseOutside), TEMPORARY);
        assert_eq!(code_for_kind(ErrorKind::PoolExhausted), TEMPORARY);
        assert_eq!(code_for_kind(ErrorKind::VersionMismatch), PROTOCOL);
        assert_eq!(code_for_kind(ErrorKind::BindFailed), OS_ERROR);
        assert_eq!(code_for_kind(ErrorKind::LeaseLost), OS_ERROR);
        let untrusted = portbroker::Error::UntrustedBroker {
            path: "/x".into(),
            pid: 9,
            uid: 1001,
            own_uid: 1000,
            trust_uid: None,
        };
        assert_eq!(code_for(&untrusted.into()), NOT_PERMITTED);
        assert_eq!(code_for(&anyhow::anyhow!("fork failed")), OS_ERROR);
        assert_eq!(code_for(&UsageError("bad".into()).into()), USAGE);
        assert_eq!(
            code_for(&MissingFile("no shim".into()).into()),
            MISSING_FILE
        );
    }

    #[test]
    fn policy_errors_map_to_sysexits() {
        let cases = [
            (
                portbroker::Error::Refused(portbroker::Refusal::QuotaExceeded {
                    quota: "leases_per_uid".into(),
                    used: 8,
                    limit: 8,
                }),
                TEMPORARY,
            ),
            (
                portbroker::Error::Refused(portbroker::Refusal::UnknownService {
                    name: "web".into(),
                }),
                CONFIG,
            ),
            (
                portbroker::Error::Failed(portbroker::Failure::NotPermitted {
                    reason: "reload needs an administrator".into(),
                }),
                NOT_PERMITTED,
            ),
            (
                portbroker::Error::Failed(portbroker::Failure::ReloadFailed {
                    error: "line 2: expected `=`".into(),
                }),
                CONFIG,
            ),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            assert_eq!(code_for(&err.into()), code, "{text}");
        }
        assert_eq!(CONFIG, 78);
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let err: anyhow::Error = portbroker::Error::Unreachable {
            path: "/run/x.sock".into(),
            source: io::Error::from_raw_os_error(2),
        }
        .into();
        let text = describe(&err);
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        let err = anyhow::Error::new(io::Error::from_raw_os_error(13)).context("reading x");
        assert_eq!(
            describe(&err),
            format!("reading x: {}", io::Error::from_raw_os_error(13))
        );
    }
}
