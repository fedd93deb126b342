//! Who may answer on the broker's socket: root, the caller's own user (a broker of its own), or
//! the uid that `PORTBROKER_TRUST_UID` names. Checked on every connection, before anything is
//! sent, with the kernel's word for it (`SO_PEERCRED`): a user who can replace the socket file
//! (or a directory on its path) must not be able to pose as the broker.

use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::error::Error;

/// The environment variable that names one more uid whose broker the library talks to, beside
/// root and the caller's own: `PORTBROKER_TRUST_UID=1001`.
pub const TRUST_UID_ENV: &str = "PORTBROKER_TRUST_UID";

/// Fails with [`Error::UntrustedBroker`] unless the process at the other end of `stream` runs
/// as root, as this process's effective uid, or as the uid of [`TRUST_UID_ENV`].
pub(crate) fn check_peer(stream: &UnixStream, path: &Path) -> Result<(), Error> {
    let peer = getsockopt(stream, PeerCredentials).map_err(|errno| Error::ConnectionLost {
        path: path.to_owned(),
        source: std::io::Error::other(format!(
            "cannot learn who answers on the socket (SO_PEERCRED): {}",
            errno.desc()
        )),
    })?;
    let own_uid = nix::unistd::geteuid().as_raw();
    let trust_uid = std::env::var_os(TRUST_UID_ENV)
        .map(|value| value.to_string_lossy().into_owned())
        .filter(|value| !value.is_empty());
    if trusted(peer.uid(), own_uid, trust_uid.as_deref()) {
        return Ok(());
    }
    Err(Error::UntrustedBroker {
        path: path.to_owned(),
        pid: peer.pid(),
        uid: peer.uid(),
        own_uid,
        trust_uid,
    })
}

/// Whether a broker running as `peer` may be talked to by `own`, given the value of
/// [`TRUST_UID_ENV`] (one uid in decimal; anything else trusts no one more).
fn trusted(peer: u32, own: u32, trust_uid: Option<&str>) -> bool {
    let opted_in = trust_uid.and_then(|value| value.trim().parse::<u32>().ok());
    peer == 0 || peer == own || opted_in == Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_oneself_are_trusted_and_others_only_when_named() {
        assert!(trusted(0, 1000, None), "root's broker");
        assert!(trusted(1000, 1000, None), "the user's own broker");
        assert!(trusted(0, 0, None));
        assert!(!trusted(1001, 1000, None), "another user's");
        assert!(!trusted(1000, 0, None), "root trusts no user's broker");
        assert!(trusted(1001, 1000, Some("1001")));
        assert!(trusted(1001, 1000, Some(" 1001\n")));
        assert!(!trusted(1001, 1000, Some("1002")));
        for bogus in ["", "root", "-1", "1001,1002", "4294967296"] {
            assert!(!trusted(1001, 1000, Some(bogus)), "{bogus:?}");
        }
    }

    #[test]
    fn a_broker_of_ones_own_user_is_trusted() {
        // Both ends of a pair belong to this process, whoever runs the tests.
        let (ours, _theirs) = UnixStream::pair().unwrap();
        check_peer(&ours, Path::new("/test.sock")).unwrap();
    }
}
