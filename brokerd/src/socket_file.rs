//! The broker's own Unix socket, in a directory no one else can write (see `state_dir`): refuse
//! to start beside a live daemon, replace a stale file, and remove the file on a clean shutdown.
//! Under socket activation the listener and its file are systemd's: taken as passed, never
//! removed.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use interprocess::local_socket::{GenericFilePath, ListenerOptions, ToFsName};
use interprocess::os::unix::local_socket::ListenerOptionsExt;
use interprocess::os::unix::uds_local_socket;

pub struct SocketFile {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the file we created, so we never remove a successor's socket; `None`
    /// when systemd created it (socket activation): its file outlives us.
    identity: Option<(u64, u64)>,
}

impl SocketFile {
    /// Listens on `path` with the file's `mode` and, when given, its group `gid`.
    pub fn create(path: &Path, mode: u32, gid: Option<u32>) -> Result<Self> {
        // Whoever can write in the directory could remove our socket and put theirs in its
        // place; start-up has checked it already, and this keeps the rule where the file is made.
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::state_dir::prepare(dir, "socket directory", "--socket")?;
        remove_stale(path)?;
        let name = path
            .to_fs_name::<GenericFilePath>()
            .with_context(|| format!("{} is not a usable socket path", path.display()))?;
        let listener: UnixListener = ListenerOptions::new()
            .name(name)
            .mode(mode as libc::mode_t)
            .reclaim_name(false)
            .create_sync_as::<uds_local_socket::Listener>()
            .with_context(|| format!("cannot listen on {}", path.display()))?
            .into();
        listener
            .set_nonblocking(true)
            .context("cannot make the socket non-blocking")?;
        // bind() applied the umask on top of the mode; the mode is what we mean.
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {} to {mode:o}", path.display()))?;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot stat the new socket {}", path.display()))?;
        Ok(SocketFile {
            listener,
            path: path.to_owned(),
            identity: Some((meta.dev(), meta.ino())),
        })
    }

    /// The listener a socket unit passed (checked by `systemd::take_listen_fds`: a listening,
    /// non-blocking AF_UNIX stream socket). `configured` is the path the daemon would have
    /// used; the path the socket is really bound to is what logs show.
    pub fn inherited(fd: OwnedFd, configured: &Path) -> SocketFile {
        let listener = UnixListener::from(fd);
        let bound = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_owned));
        let path = match bound {
            Some(bound) => {
                if bound != configured {
                    tracing::warn!(
                        "systemd passed a socket on {}, not on {}: serving on it; clients that \
                         look for {} will not find the broker (set --socket or \
                         PORTBROKER_SOCKET to the socket unit's ListenStream=)",
                        bound.display(),
                        configured.display(),
                        configured.display()
                    );
                }
                bound
            }
            None => configured.to_owned(),
        };
        SocketFile {
            listener,
            path,
            identity: None,
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let Some(identity) = self.identity else {
            return;
        };
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == identity);
        if ours {
            if let Err(err) = std::fs::remove_file(&self.path) {
                tracing::warn!("cannot remove {}: {err}", self.path.display());
            }
        }
    }
}

fn remove_stale(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; remove it or choose another --socket",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "another portbrokerd is already answering on {}; stop it first or choose another --socket",
            path.display()
        ),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!("replacing the stale socket {}", path.display());
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))
        }
        Err(err) => Err(err).with_context(|| format!("cannot check whether a daemon answers on {}", path.display())),
    }
}
