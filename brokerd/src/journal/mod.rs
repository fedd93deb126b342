//! The lease table on disk, so that a restarted daemon knows every lease it had granted.
//!
//! An append-only log of lines `CRC32 JSON` (see `record`): `Leased` records a lease (again,
//! with its new holder, after a tie or a handover) with when and what happened, `Ended` its end
//! with when and why, `Grant` a lease as it stands (a snapshot's restatement), `NextId` the
//! lowest id a new lease may take. The event loop gathers a turn's changes and writes them with
//! one `write` (group commit), so no lease waits for a write of its own. The log is not
//! fsynced: what it guards against is the daemon's own death, which leaves the page cache
//! intact, while a machine crash ends every holder too, and with them every lease (and `/run`
//! is a tmpfs). Measured: an fdatasync per turn on a disk-backed directory cut a single
//! client's lease rate from ~17k/s to ~4k/s. When the log holds many times more records than
//! live leases, it is rewritten as a snapshot (write, fsync, rename).
//!
//! The journal is also the broker's history (`portctl log`): the file a snapshot replaces is
//! kept as a previous generation (`generations`), a bounded number of them, and `history` reads
//! the last events back. Keeping the history costs no syscall per turn: its records are the
//! journal's own, written by the same `write`.
//!
//! The daemon runs as root, so every file is reached through the state directory's fd with
//! `O_NOFOLLOW`: a link or a special file in the place of the journal is refused, never followed,
//! a stale temporary is unlinked (which removes a link itself, not its target) and the new one
//! created with `O_EXCL`. The directory must belong to the daemon's user and be writable by no
//! one else (`state_dir` checks it at start-up; `open` checks the very directory it opened).
//!
//! A write that fails (a full disk) fails closed: the file is cut back to its last whole commit,
//! so recovery never meets a torn line before good ones, and the records are kept and written
//! again, in order and before newer ones, by the next `commit`.
//!
//! This module imports nothing from the crate: the journal fuzz target includes it as it is.

mod generations;
mod history;
#[cfg(test)]
mod history_tests;
mod json;
mod record;
#[cfg(test)]
mod tests;

pub use history::{History, READ_BUDGET};
pub use record::{encode_snapshot, replay, Change, Entry, Recovered};

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag, AT_FDCWD};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};
use nix::unistd::{fsync, ftruncate, geteuid, unlinkat, UnlinkatFlags};
use portbroker_proto::EndReason;
// Lease ids are the daemon's own counter, never a client's choice: a fast hash is safe here.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use record::{encode, Record};

/// The largest lease id a journal may name. Ids count up from 1 and never wrap; 2^53 is out of
/// reach of any real daemon's life and keeps an id exact wherever it becomes a JSON number.
pub const MAX_LEASE_ID: u64 = 1 << 53;

/// The longest line read back, newline excluded. A lease of 64 IPv6 sockets with cookies is
/// under 8 KiB; anything longer was not written by the daemon and is skipped unread.
pub const MAX_LINE: usize = 64 * 1024;

/// The most sockets a lease holds: the same bound as `grant::MAX_SOCKETS_PER_LEASE` (a unit
/// test keeps the two equal; this module imports nothing from the crate).
pub const MAX_SOCKETS: usize = 64;

/// The least a journal grows to before it is compacted, however few leases are live: each
/// compaction makes a generation of the history, and a generation of this size holds about
/// three thousand leases' grants and ends. Replaying it at a restart takes milliseconds.
pub const MIN_COMPACTION_BYTES: u64 = 1 << 20;

/// The largest commit buffer kept for the next turn; a larger one (records that piled up on a
/// full disk) is let go of.
const MAX_KEPT_BATCH: usize = 1 << 20;

pub struct Journal {
    /// The state directory, opened once: every file of the journal is reached through it.
    dir: OwnedFd,
    /// The journal's path, for messages only.
    path: PathBuf,
    /// The journal's and the temporary's names in `dir`.
    name: OsString,
    tmp_name: OsString,
    /// The journal, opened `O_APPEND`: after a cut-back, the next write lands at the new end.
    file: File,
    /// The file's length after the last whole commit: a failed write is cut back to it.
    committed_len: u64,
    /// A failed write may have left part of a batch after `committed_len` that could not be cut
    /// back yet; nothing is written until it is.
    torn: bool,
    /// The bytes of the turn's commit: kept from one commit to the next, so that a turn does
    /// not allocate them anew (emptied, and let go of once it grew past `MAX_KEPT_BATCH`).
    batch: Vec<u8>,
    /// Records not yet written, by sequence number; a `BTreeMap` so that a superseded record can
    /// be taken out without leaving a hole behind while a full disk keeps them waiting.
    pending: BTreeMap<u64, Record>,
    next_seq: u64,
    /// Where each lease's pending `Grant` is in `pending`.
    pending_grant: HashMap<u64, u64>,
    /// The leases whose last record on disk is a `Grant`: only their ends need writing.
    on_disk: HashSet<u64>,
    /// The next id implied by every id seen so far, and by what the disk holds.
    next_id: u64,
    disk_next_id: u64,
    /// Records in the file, for compaction.
    records: usize,
    /// Whether the file holds history records (`Leased`, `Ended`): a file that holds only a
    /// snapshot is not worth keeping as a generation when it is replaced.
    has_events: bool,
}

/// An error about `what`, keeping the kind of `err` (a full disk stays `StorageFull`).
fn error(err: impl Into<io::Error>, what: String) -> io::Error {
    let err = err.into();
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// Why the daemon must not keep files in a directory with this status, if it must not: another
/// user owns it, or can write in it (and so plant links, or replace files, sticky bit or not).
/// The same rule as `state_dir::untrusted`, repeated because this module imports nothing from
/// the crate.
fn untrusted(stat: &FileStat, euid: u32) -> Option<&'static str> {
    if stat.st_uid != euid {
        Some("it belongs to another user")
    } else if stat.st_mode & 0o002 != 0 {
        Some("every user can write in it")
    } else if stat.st_mode & 0o020 != 0 {
        Some("its group can write in it")
    } else {
        None
    }
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let fd = openat(
        AT_FDCWD,
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        error(
            e,
            format!("cannot open the state directory {}", dir.display()),
        )
    })?;
    let stat = fstat(&fd).map_err(|e| {
        error(
            e,
            format!("cannot stat the state directory {}", dir.display()),
        )
    })?;
    let euid = geteuid().as_raw();
    if let Some(why) = untrusted(&stat, euid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the state directory {} (owner uid {}, mode {:04o}) is not safe for the journal: \
                 {why}. Give it to uid {euid} and make it writable by its owner only \
                 (chown {euid} DIR; chmod go-w DIR), or choose another --state-dir",
                dir.display(),
                stat.st_uid,
                stat.st_mode & 0o7777,
            ),
        ));
    }
    Ok(fd)
}

/// Opens the journal (or a generation of it) for reading, if it exists, and only if it is a
/// regular file.
fn open_existing(dir: &OwnedFd, name: &OsString, path: &Path) -> io::Result<Option<File>> {
    // O_NONBLOCK: a FIFO planted here must not block the open until a writer comes (it has no
    // effect on a regular file). O_NOCTTY: nor may a terminal become ours.
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY;
    let fd = match openat(dir, name.as_os_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is a symbolic link, and the journal is never read or written through one \
                     (a link there could make root overwrite another file). Look at where it \
                     points, remove it, and start again",
                    path.display()
                ),
            ))
        }
        Err(err) => return Err(error(err, format!("cannot open {}", path.display()))),
    };
    let stat = fstat(&fd).map_err(|e| error(e, format!("cannot stat {}", path.display())))?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a regular file (mode {:o}); the journal is a file the daemon writes. \
                 Remove it, or choose another --state-dir",
                path.display(),
                stat.st_mode
            ),
        ));
    }
    Ok(Some(File::from(fd)))
}

impl Journal {
    /// Opens the journal at `path`, returning what it held; the file is then rewritten as a
    /// snapshot of exactly that, so damage does not outlive the restart that reported it.
    /// Refuses a directory that is not safe (see the module comment), and a link or anything
    /// but a regular file at `path`.
    pub fn open(path: &Path) -> io::Result<(Journal, Recovered)> {
        let name = path.file_name().map(OsString::from).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the journal path {} names no file", path.display()),
            )
        })?;
        let tmp_name = Path::new(&name).with_extension("tmp").into_os_string();
        let dir_path = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = open_dir(dir_path)?;
        let recovered = match open_existing(&dir, &name, path)? {
            Some(file) => replay(BufReader::new(file)),
            None => Recovered::default(),
        };
        let (bytes, next_id) = encode_snapshot(recovered.leases.iter(), recovered.next_id);
        // The last life's events stay in the history.
        let keep = recovered.events > 0;
        let file = write_snapshot(&dir, &tmp_name, &name, path, &bytes, keep)?;
        let journal = Journal {
            dir,
            path: path.to_owned(),
            name,
            tmp_name,
            file,
            committed_len: bytes.len() as u64,
            torn: false,
            batch: Vec::new(),
            pending: BTreeMap::new(),
            next_seq: 0,
            pending_grant: HashMap::default(),
            on_disk: recovered.leases.iter().map(|e| e.id).collect(),
            next_id,
            disk_next_id: next_id,
            records: recovered.leases.len() + usize::from(next_id > 1),
            has_events: false,
        };
        Ok((journal, recovered))
    }

    fn push(&mut self, record: Record) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(seq, record);
        seq
    }

    /// Takes a lease's pending record out: a newer record of the lease supersedes it. Keeps a
    /// full disk from piling up the grants of leases that came and went meanwhile.
    fn take_pending_grant(&mut self, id: u64) -> Option<Record> {
        let seq = self.pending_grant.remove(&id)?;
        self.pending.remove(&seq)
    }

    /// Records lease `entry` as granted, or as changed holders, at `at_ms` (milliseconds since
    /// the Unix epoch).
    pub fn grant(&mut self, entry: Entry, change: Change, at_ms: u64) {
        self.next_id = self.next_id.max(entry.id.saturating_add(1));
        let id = entry.id;
        // A grant not written yet is superseded by this record, which then is the grant.
        let (change, at_ms) = match self.take_pending_grant(id) {
            Some(Record::Leased {
                change: Some(Change::Granted),
                at_ms: granted_at,
                ..
            }) => (Change::Granted, granted_at),
            _ => (change, at_ms),
        };
        let seq = self.push(Record::Leased {
            at_ms,
            change: Some(change),
            lease: entry,
        });
        self.pending_grant.insert(id, seq);
    }

    /// Records the end of lease `id` at `at_ms`, and why.
    pub fn end(&mut self, id: u64, why: EndReason, at_ms: u64) {
        self.next_id = self.next_id.max(id.saturating_add(1));
        self.take_pending_grant(id);
        // A lease the disk does not hold needs no end: its grant never got there (a refused
        // grant on a full disk, or a lease that ended in the turn that granted it, before its
        // answer left). The high-water mark keeps its id from coming back.
        if self.on_disk.contains(&id) {
            self.push(Record::Ended {
                id,
                at_ms,
                why: Some(why),
            });
        }
    }

    /// Writes what this turn gathered, in one write. On failure the file is cut back to its
    /// last whole commit, nothing gathered is lost, and the next `commit` writes it again
    /// (before anything newer).
    pub fn commit(&mut self) -> io::Result<()> {
        if self.torn {
            self.cut_back()?;
        }
        if self.batch.capacity() > MAX_KEPT_BATCH {
            // A full disk let records pile up once: do not keep that much memory for good.
            self.batch = Vec::new();
        }
        let batch = &mut self.batch;
        batch.clear();
        let mut batch_next = self.disk_next_id;
        for record in self.pending.values() {
            encode(record, batch);
            batch_next = batch_next.max(record.next_id_floor());
        }
        let mut written = self.pending.len();
        // Ids whose records were dropped before reaching the disk still count.
        if self.next_id > batch_next {
            encode(&Record::NextId(self.next_id), batch);
            batch_next = self.next_id;
            written += 1;
        }
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(err) = self.file.write_all(batch) {
            self.torn = true;
            // Cut back at once, so that even a daemon killed now leaves no torn line behind;
            // if that fails too, the next commit tries again before it writes anything.
            let _ = self.cut_back();
            return Err(error(
                err,
                format!(
                    "cannot append {} records to the journal {} (they are kept and written \
                     again by the next commit)",
                    written,
                    self.path.display()
                ),
            ));
        }
        self.committed_len += self.batch.len() as u64;
        self.records += written;
        self.disk_next_id = batch_next;
        self.pending_grant.clear();
        // Emptied one by one, not dropped: the map keeps its node for the next turn.
        while let Some((_, record)) = self.pending.pop_first() {
            match record {
                Record::Grant(entry) => {
                    self.on_disk.insert(entry.id);
                }
                Record::Leased { lease, .. } => {
                    self.on_disk.insert(lease.id);
                    self.has_events = true;
                }
                Record::End(id) => {
                    self.on_disk.remove(&id);
                }
                Record::Ended { id, .. } => {
                    self.on_disk.remove(&id);
                    self.has_events = true;
                }
                Record::NextId(_) => {}
            }
        }
        Ok(())
    }

    /// Truncates the file to its last whole commit.
    fn cut_back(&mut self) -> io::Result<()> {
        let len = i64::try_from(self.committed_len).unwrap_or(i64::MAX);
        ftruncate(&self.file, len).map_err(|e| {
            error(
                e,
                format!(
                    "cannot cut the journal {} back to its last whole record ({} bytes)",
                    self.path.display(),
                    self.committed_len
                ),
            )
        })?;
        self.torn = false;
        Ok(())
    }

    /// Whether the log has grown enough, against `live` leases, to be rewritten: many times
    /// more records than live leases, and at least `MIN_COMPACTION_BYTES`.
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.records + self.pending.len() > 4 * live + 1024
            && self.committed_len >= MIN_COMPACTION_BYTES
    }

    /// Where the history lies, for reading it (see `History`).
    pub fn history(&self) -> io::Result<History> {
        let dir = self.dir.try_clone().map_err(|e| {
            error(
                e,
                format!(
                    "cannot duplicate the fd of the directory of {}",
                    self.path.display()
                ),
            )
        })?;
        Ok(History::new(dir, self.path.clone(), self.name.clone()))
    }

    /// Replaces the log by a snapshot of `leases`: write, fsync, rename, so that a crash leaves
    /// either the old log or the new one. The snapshot starts with a `NextId` record of the
    /// higher of `next_id` and every id this journal has seen, so that ids of ended leases are
    /// not handed out again after a restart. The pending records are appended to the old log
    /// first (so that the history has them), and the old log, if it holds events, is kept as
    /// the newest generation of the history. On failure nothing changes: the old log stays,
    /// and so do the pending records that could not be written.
    pub fn rewrite<'a>(
        &mut self,
        leases: impl Iterator<Item = &'a Entry>,
        next_id: u64,
    ) -> io::Result<()> {
        self.commit()?;
        let mut ids = HashSet::default();
        let (bytes, next) = encode_snapshot(
            leases.inspect(|entry| {
                ids.insert(entry.id);
            }),
            next_id.max(self.next_id),
        );
        self.file = write_snapshot(
            &self.dir,
            &self.tmp_name,
            &self.name,
            &self.path,
            &bytes,
            self.has_events,
        )?;
        self.has_events = false;
        self.committed_len = bytes.len() as u64;
        self.torn = false;
        self.records = ids.len() + usize::from(next > 1);
        self.on_disk = ids;
        self.pending.clear();
        self.pending_grant.clear();
        self.next_id = next;
        self.disk_next_id = next;
        Ok(())
    }
}

/// Writes `bytes` as the new journal `name` in `dir`: to the temporary `tmp` first (created
/// afresh, never through a link), fsynced, then renamed over `name`; with `keep`, the journal
/// it replaces becomes the newest generation of the history first. Returns the new file, open
/// for appending.
fn write_snapshot(
    dir: &OwnedFd,
    tmp: &OsString,
    name: &OsString,
    path: &Path,
    bytes: &[u8],
    keep: bool,
) -> io::Result<File> {
    let tmp_path = path.with_file_name(tmp);
    // A temporary left by a crash, or planted: unlinkat removes the link itself, never its
    // target.
    match unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(err) => {
            return Err(error(
                err,
                format!(
                    "cannot remove the stale {}; remove it and start again",
                    tmp_path.display()
                ),
            ))
        }
    }
    let fd = openat(
        dir,
        tmp.as_os_str(),
        OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CREAT
            | OFlag::O_EXCL
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| error(e, format!("cannot create {}", tmp_path.display())))?;
    let mut file = File::from(fd);
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| error(e, format!("cannot write {}", tmp_path.display())))
        .map(|()| {
            // Only once the new journal is safe on disk; if it cannot be renamed after all,
            // the next compaction finds the file kept already and does not keep it twice.
            if keep {
                if let Err(err) = generations::keep(dir, name, path) {
                    tracing::warn!(
                        "the journal is compacted without keeping its previous generation, \
                         whose events leave the history: {err}"
                    );
                }
            }
        })
        .and_then(|()| {
            renameat(dir, tmp.as_os_str(), dir, name.as_os_str()).map_err(|e| {
                error(
                    e,
                    format!("cannot rename {} to {}", tmp_path.display(), path.display()),
                )
            })
        });
    if let Err(err) = written {
        // The old journal stays as it was; a half-written temporary would only waste space.
        let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(err);
    }
    // The rename is done and the new file is the journal, whatever happens now: a failed fsync
    // of the directory only weakens what a machine crash would keep, which the journal does
    // not promise anyway.
    if let Err(err) = fsync(dir) {
        tracing::warn!(
            "cannot fsync the directory of {}: {err}; a machine crash may bring back the \
             previous journal",
            path.display()
        );
    }
    Ok(file)
}
