//! `portctl wrap`: run CMD with the bind shim (`libportbroker_preload.so`) preloaded, so that
//! an unmodified program's own `bind()` leases its port from the broker.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::errno::Errno;

use crate::cli::WrapArgs;
use crate::exit::{describe, CannotRun, MissingFile};
use crate::talk::{connect, warn};

/// The shim's file name, as cargo builds it and the Debian package installs it.
const SHIM_FILE: &str = "libportbroker_preload.so";
/// Where the Debian package installs the shim, from the directory of portctl
/// (`/usr/bin` -> `/usr/lib/portbroker`).
const INSTALLED_FROM_BIN: &str = "../lib/portbroker";
/// Names the shim to use instead of looking for it.
const PRELOAD_ENV: &str = "PORTBROKER_PRELOAD";
/// With `1`, CMD starts even with no broker, and its binds go to the kernel (the shim reads
/// the same variable).
const FALLBACK_ENV: &str = "PORTBROKER_SHIM_FALLBACK";

pub fn wrap(socket: Option<PathBuf>, args: WrapArgs) -> Result<u8> {
    let exe = std::env::current_exe().context("cannot find portctl's own executable")?;
    let shim = find_shim(std::env::var_os(PRELOAD_ENV), &exe)?;
    let fallback = std::env::var_os(FALLBACK_ENV).is_some_and(|value| value == "1");
    let broker_socket = match connect(socket.clone()) {
        // The broker that answered is the one CMD's binds ask, whatever CMD's directory.
        Ok(broker) => Some(std::path::absolute(broker.socket_path())?),
        Err(err) if err.is_unreachable() && fallback => {
            warn(&format!(
                "{}; {FALLBACK_ENV}=1, so the binds of CMD go to the kernel unleased while no \
                 broker answers",
                describe(&err.into())
            ));
            socket.map(std::path::absolute).transpose()?
        }
        Err(err) if err.is_unreachable() => {
            let text = format!(
                "{err}; wrap starts nothing without a broker (set {FALLBACK_ENV}=1 to run CMD \
                 anyway, its binds going to the kernel unleased)"
            );
            return Err(anyhow::Error::new(err).context(text));
        }
        Err(err) => return Err(err.into()),
    };

    let (program, rest) = args.command.split_first().context("no command given")?;
    let mut command = std::process::Command::new(program);
    command.args(rest).env(
        "LD_PRELOAD",
        preload_list(&shim, std::env::var_os("LD_PRELOAD")),
    );
    if let Some(path) = broker_socket {
        command.env("PORTBROKER_SOCKET", path);
    }
    // Only returns if CMD could not be started.
    let err = command.exec();
    let errno = Errno::from_raw(err.raw_os_error().unwrap_or(libc::ENOEXEC));
    Err(CannotRun::new(program.to_string_lossy().into_owned(), errno).into())
}

/// The shim: `$PORTBROKER_PRELOAD` if set (it must exist), else beside portctl (a cargo
/// build), else where the Debian package installs it. Absolute, since CMD and its children
/// may change directory before they start programs of their own (the loader reads
/// `LD_PRELOAD` at every exec).
fn find_shim(from_env: Option<OsString>, exe: &Path) -> Result<PathBuf, MissingFile> {
    if let Some(path) = from_env.filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        return match path.is_file() {
            true => std::path::absolute(&path)
                .map_err(|err| MissingFile(format!("{PRELOAD_ENV}={}: {err}", path.display()))),
            false => Err(MissingFile(format!(
                "{PRELOAD_ENV} names {}, which is not a file; point it at \
                 libportbroker_preload.so, or unset it to use the one installed with portctl",
                path.display()
            ))),
        };
    }
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [
        dir.join(SHIM_FILE),
        dir.join(INSTALLED_FROM_BIN).join(SHIM_FILE),
    ];
    if let Some(found) = candidates.iter().find(|path| path.is_file()) {
        // /usr/lib/portbroker/..., not /usr/bin/../lib/portbroker/..., in CMD's environment.
        return Ok(found.canonicalize().unwrap_or_else(|_| found.clone()));
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(MissingFile(format!(
        "cannot find the bind shim {SHIM_FILE}: tried {}; install the portbroker package, \
         build it (cargo build -p portbroker-preload), or set {PRELOAD_ENV} to its path",
        tried.join(" and ")
    )))
}

/// `LD_PRELOAD` with the shim first (the loader takes entries separated by colons or spaces);
/// an entry naming the shim already is not repeated.
fn preload_list(shim: &Path, existing: Option<OsString>) -> OsString {
    let mut list = OsString::from(shim);
    if let Some(existing) = existing {
        let others: Vec<&[u8]> = existing
            .as_bytes()
            .split(|&b| b == b':' || b == b' ')
            .filter(|entry| !entry.is_empty() && *entry != shim.as_os_str().as_bytes())
            .collect();
        for entry in others {
            list.push(":");
            list.push(OsStr::from_bytes(entry));
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_goes_first_and_only_once() {
        let shim = Path::new("/usr/lib/portbroker/libportbroker_preload.so");
        assert_eq!(preload_list(shim, None), shim.as_os_str());
        assert_eq!(
            preload_list(shim, Some("/a.so /b.so:".into())),
            OsString::from(format!("{}:/a.so:/b.so", shim.display()))
        );
        assert_eq!(
            preload_list(shim, Some(format!("/a.so:{}", shim.display()).into())),
            OsString::from(format!("{}:/a.so", shim.display()))
        );
    }

    #[test]
    fn the_shim_is_found_beside_portctl_then_where_the_package_puts_it() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        let lib = root.path().join("lib/portbroker");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        let exe = bin.join("portctl");
        let err = find_shim(None, &exe).unwrap_err().to_string();
        assert!(
            err.contains("PORTBROKER_PRELOAD") && err.contains("bin/libportbroker_preload.so"),
            "{err}"
        );
        std::fs::write(lib.join(SHIM_FILE), "").unwrap();
        let root = root.path().canonicalize().unwrap();
        assert_eq!(
            find_shim(None, &exe).unwrap(),
            root.join("lib/portbroker").join(SHIM_FILE)
        );
        std::fs::write(bin.join(SHIM_FILE), "").unwrap();
        assert_eq!(
            find_shim(None, &exe).unwrap(),
            root.join("bin").join(SHIM_FILE)
        );
        // The variable wins, and must name a file.
        let elsewhere = root.join("other.so");
        assert!(find_shim(Some(elsewhere.clone().into()), &exe).is_err());
        std::fs::write(&elsewhere, "").unwrap();
        assert_eq!(
            find_shim(Some(elsewhere.clone().into()), &exe).unwrap(),
            elsewhere
        );
    }
}
