//! The journal's previous generations, which keep the history: when compaction (or a restart)
//! replaces the journal with a snapshot, the file it replaces is kept as `leases.1`, the one
//! that was `leases.1` becomes `leases.2`, and so on; past `MAX_GENERATIONS` files, or
//! `MAX_HISTORY_BYTES` in all, the oldest are deleted.
//!
//! Keeping a generation is a few renames and a hard link per compaction, never anything per
//! turn: the history is written by the one `write` of the journal turn, like everything else.
//! Every name is reached through the state directory's fd, and nothing here follows a link: a
//! rename moves the link itself, an unlink removes it, and `linkat` without
//! `AT_SYMLINK_FOLLOW` links the journal's own inode, which `Journal::open` checked is a
//! regular file. What keeping fails on is reported, and the compaction goes on without it: the
//! journal matters more than its history.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{renameat, AtFlags};
use nix::sys::stat::{fstatat, FileStat, SFlag};
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};

use super::error;

/// The most previous generations kept.
pub const MAX_GENERATIONS: usize = 8;

/// The most bytes the previous generations take together; older ones beyond it are deleted.
pub const MAX_HISTORY_BYTES: u64 = 32 << 20;

/// The name of generation `k` (1 is the newest) of the journal `journal`: `leases.1` for
/// `leases.journal`.
pub fn name(journal: &OsStr, k: usize) -> OsString {
    Path::new(journal)
        .with_extension(k.to_string())
        .into_os_string()
}

/// The status of `name` in `dir` itself (a link is not followed); `None` if there is none.
fn stat(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

fn is_regular(stat: &FileStat) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

/// Keeps the journal `journal` of `dir` (at `path`, for messages) as generation 1, before a
/// new journal is renamed over it, moving the older generations up and deleting what falls
/// beyond the bounds.
pub fn keep(dir: &OwnedFd, journal: &OsStr, path: &Path) -> io::Result<()> {
    let shown = |k: usize| path.with_file_name(name(journal, k)).display().to_string();
    let current =
        stat(dir, journal).map_err(|e| error(e, format!("cannot stat {}", path.display())))?;
    let newest =
        stat(dir, &name(journal, 1)).map_err(|e| error(e, format!("cannot stat {}", shown(1))))?;
    match (current, newest) {
        // No journal to keep.
        (None, _) => return Ok(()),
        // Kept already: the daemon died between keeping it and replacing it.
        (Some(current), Some(newest))
            if (current.st_dev, current.st_ino) == (newest.st_dev, newest.st_ino) =>
        {
            return Ok(())
        }
        _ => {}
    }
    // From the oldest down: the rename onto the last name replaces (deletes) the oldest.
    for k in (1..MAX_GENERATIONS).rev() {
        match renameat(
            dir,
            name(journal, k).as_os_str(),
            dir,
            name(journal, k + 1).as_os_str(),
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(err) => {
                return Err(error(
                    err,
                    format!("cannot rename {} to {}", shown(k), shown(k + 1)),
                ))
            }
        }
    }
    linkat(
        dir,
        journal,
        dir,
        name(journal, 1).as_os_str(),
        AtFlags::empty(),
    )
    .map_err(|e| error(e, format!("cannot link {} as {}", path.display(), shown(1))))?;
    bound(dir, journal, path)
}

/// Deletes the generations past `MAX_HISTORY_BYTES` (counted from the newest) and past
/// `MAX_GENERATIONS`. Only regular files count and are deleted by size; whatever else sits
/// under a generation's name (which the daemon never made) is left, and never read.
fn bound(dir: &OwnedFd, journal: &OsStr, path: &Path) -> io::Result<()> {
    let mut total = 0u64;
    let mut over = false;
    // One name past the last: a leftover of a daemon that kept more.
    for k in 1..=MAX_GENERATIONS + 1 {
        let generation = name(journal, k);
        let Some(stat) = stat(dir, &generation)? else {
            continue;
        };
        if !is_regular(&stat) {
            continue;
        }
        total = total.saturating_add(u64::try_from(stat.st_size).unwrap_or(0));
        over = over || total > MAX_HISTORY_BYTES || k > MAX_GENERATIONS;
        if over {
            match unlinkat(dir, generation.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(err) => {
                    return Err(error(
                        err,
                        format!(
                            "cannot delete {}",
                            path.with_file_name(&generation).display()
                        ),
                    ))
                }
            }
        }
    }
    Ok(())
}
