//! Where the broker's socket lives, the same rule for the daemon, the library and the CLI.
//!
//! The daemon listens on one path ([`default_socket_path`]); a client may try several in turn
//! ([`client_socket_paths`]), so that an ordinary user reaches the system service with no
//! environment set, and still reaches a broker of the user's own first when one runs.

use std::ffi::OsString;
use std::path::PathBuf;

/// The environment variable that overrides the socket path for everyone.
pub const SOCKET_ENV: &str = "PORTBROKER_SOCKET";

/// The system service's socket (`portbrokerd.socket`), and root's daemon's default.
pub const SYSTEM_SOCKET: &str = "/run/portbroker/portbroker.sock";

/// No socket path could be worked out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no socket path: {SOCKET_ENV} is not set, this user is not root and XDG_RUNTIME_DIR is not set; \
     set {SOCKET_ENV} or pass --socket"
)]
pub struct PathError;

/// The daemon's socket path: `$PORTBROKER_SOCKET` if set and not empty; otherwise
/// `/run/portbroker/portbroker.sock` for root and `$XDG_RUNTIME_DIR/portbroker/portbroker.sock`
/// for everyone else. Reads the environment; never changes it.
pub fn default_socket_path() -> Result<PathBuf, PathError> {
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from(SYSTEM_SOCKET));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .and_then(per_user_socket)
        .ok_or(PathError)
}

/// The paths a client tries, in order, taking the first where a broker answers (a connect
/// succeeds):
///
/// 1. `$PORTBROKER_SOCKET` if set and not empty, and nothing else;
/// 2. for a user other than root, the per-user socket
///    `$XDG_RUNTIME_DIR/portbroker/portbroker.sock`, if `XDG_RUNTIME_DIR` is set: a broker of
///    the user's own comes first;
/// 3. the system service's socket, `/run/portbroker/portbroker.sock`, for every user.
///
/// Never empty. Reads the environment; never changes it.
pub fn client_socket_paths() -> Vec<PathBuf> {
    client_socket_paths_from(
        std::env::var_os(SOCKET_ENV),
        nix::unistd::geteuid().is_root(),
        std::env::var_os("XDG_RUNTIME_DIR"),
    )
}

/// [`client_socket_paths`] for the environment given.
fn client_socket_paths_from(
    socket_env: Option<OsString>,
    is_root: bool,
    runtime_dir: Option<OsString>,
) -> Vec<PathBuf> {
    if let Some(path) = socket_env.filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let per_user = runtime_dir.filter(|_| !is_root).and_then(per_user_socket);
    per_user
        .into_iter()
        .chain([PathBuf::from(SYSTEM_SOCKET)])
        .collect()
}

/// `RUNTIME_DIR/portbroker/portbroker.sock`, unless `runtime_dir` is empty.
fn per_user_socket(runtime_dir: OsString) -> Option<PathBuf> {
    (!runtime_dir.is_empty()).then(|| {
        PathBuf::from(runtime_dir)
            .join("portbroker")
            .join("portbroker.sock")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(env: Option<&str>, root: bool, xdg: Option<&str>) -> Vec<String> {
        client_socket_paths_from(env.map(Into::into), root, xdg.map(Into::into))
            .into_iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn the_environment_variable_is_the_only_path_when_set() {
        assert_eq!(
            paths(Some("/x.sock"), false, Some("/run/user/1000")),
            ["/x.sock"]
        );
        assert_eq!(paths(Some("/x.sock"), true, None), ["/x.sock"]);
    }

    #[test]
    fn an_ordinary_user_tries_its_own_broker_then_the_system_one() {
        assert_eq!(
            paths(None, false, Some("/run/user/1000")),
            [
                "/run/user/1000/portbroker/portbroker.sock",
                "/run/portbroker/portbroker.sock"
            ]
        );
        // An empty variable counts as unset.
        assert_eq!(
            paths(Some(""), false, Some("/run/user/1000")),
            [
                "/run/user/1000/portbroker/portbroker.sock",
                "/run/portbroker/portbroker.sock"
            ]
        );
    }

    #[test]
    fn a_user_without_a_runtime_dir_still_finds_the_system_broker() {
        assert_eq!(
            paths(None, false, None),
            ["/run/portbroker/portbroker.sock"]
        );
        assert_eq!(
            paths(None, false, Some("")),
            ["/run/portbroker/portbroker.sock"]
        );
    }

    #[test]
    fn root_uses_the_system_broker_only() {
        assert_eq!(
            paths(None, true, Some("/run/user/0")),
            ["/run/portbroker/portbroker.sock"]
        );
    }
}
