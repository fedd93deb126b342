//! Where the broker's socket lives, the same rule for the daemon, the library and the CLI.

use std::path::PathBuf;

/// The environment variable that overrides the socket path for everyone.
pub const SOCKET_ENV: &str = "PORTBROKER_SOCKET";

const SYSTEM_SOCKET: &str = "/run/portbroker/portbroker.sock";

/// No socket path could be worked out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no socket path: {SOCKET_ENV} is not set, this user is not root and XDG_RUNTIME_DIR is not set; \
     set {SOCKET_ENV} or pass --socket"
)]
pub struct PathError;

/// The broker's socket path: `$PORTBROKER_SOCKET` if set and not empty; otherwise
/// `/run/portbroker/portbroker.sock` for root and `$XDG_RUNTIME_DIR/portbroker/portbroker.sock`
/// for everyone else. Reads the environment; never changes it.
pub fn default_socket_path() -> Result<PathBuf, PathError> {
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from(SYSTEM_SOCKET));
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|p| !p.is_empty())
        .ok_or(PathError)?;
    Ok(PathBuf::from(runtime)
        .join("portbroker")
        .join("portbroker.sock"))
}
