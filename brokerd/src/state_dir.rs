//! The directories the daemon keeps its socket and journal in: created when missing (mode
//! 0755), and refused unless they belong to the daemon's user and no one else can write in them.
//!
//! Whoever can write in such a directory can plant a link where the root daemon will create or
//! rewrite a file (and have it truncate and overwrite any file of the system), or remove the
//! daemon's socket and put one of their own in its place, to which clients would then send
//! their requests. A sticky bit does not help: it keeps others from removing the daemon's
//! files, not from creating theirs first.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::geteuid;

/// Why a directory owned by `uid` with `mode` is not safe for a daemon running as `euid`, if it
/// is not. (`journal` repeats this rule for the directory it opens.)
pub fn untrusted(uid: u32, mode: u32, euid: u32) -> Option<&'static str> {
    if uid != euid {
        Some("it belongs to another user")
    } else if mode & 0o002 != 0 {
        Some("every user can write in it")
    } else if mode & 0o020 != 0 {
        Some("its group can write in it")
    } else {
        None
    }
}

/// Creates `dir` if it is missing (and its missing parents, mode 0755 as well), then refuses it
/// unless it is safe (see the module comment). `what` names its role in messages ("socket
/// directory"), `option` the option that chooses another ("--socket").
pub fn prepare(dir: &Path, what: &str, option: &str) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("cannot create the {what} {}", dir.display()))?;
    // The checks look at the directory that was opened, not at a path that could change
    // between a stat and the use.
    let fd = openat(
        AT_FDCWD,
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open the {what} {}", dir.display()))?;
    let stat = fstat(&fd).with_context(|| format!("cannot stat the {what} {}", dir.display()))?;
    let euid = geteuid().as_raw();
    if let Some(why) = untrusted(stat.st_uid, stat.st_mode, euid) {
        bail!(
            "refusing the {what} {} (owner uid {}, mode {:04o}): {why}, so someone else could \
             plant links or replace files there. portbrokerd (uid {euid}) keeps its socket and \
             journal only in a directory it owns that no one else can write: `chown {euid} {}` \
             and `chmod go-w {}`, or choose another directory with {option}",
            dir.display(),
            stat.st_uid,
            stat.st_mode & 0o7777,
            dir.display(),
            dir.display(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_a_directory_of_our_own_that_no_one_else_writes_is_trusted() {
        assert_eq!(untrusted(0, 0o40755, 0), None);
        assert_eq!(untrusted(0, 0o40700, 0), None);
        assert!(untrusted(65534, 0o40755, 0).is_some());
        for mode in [0o40777, 0o41777, 0o40775, 0o40770, 0o41770, 0o40757] {
            assert!(untrusted(0, mode, 0).is_some(), "{mode:o}");
        }
    }

    #[test]
    fn a_missing_directory_is_created_0755_and_an_open_one_refused() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("a/b");
        prepare(&dir, "state directory", "--state-dir").unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        // The umask may take more away, never add.
        assert_eq!(mode & !0o755, 0, "{mode:o}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = prepare(&dir, "state directory", "--state-dir").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(dir.to_str().unwrap()), "{text}");
        assert!(text.contains("1777"), "{text}");
        assert!(text.contains("--state-dir"), "{text}");
    }
}
