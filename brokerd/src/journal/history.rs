//! Reading the history back: the last events of leases, from the journal and then its previous
//! generations (see `generations`), newest first, reading each file from its end, within a
//! bounded number of bytes.
//!
//! An event is a `Leased` record (a grant, a tie, a handover) or an `Ended` one. An end names
//! only its lease's id; its holder and sockets are those of the last record of that lease
//! before it, which reading backwards meets next: the lease's own `Leased` record, or, for a
//! lease older than its generation, the `Grant` that restates it in the snapshot at the
//! generation's head. An end whose lease no record within the bytes read names is told without
//! a holder.
//!
//! The files are read as hostile input, with the journal's own rules: opened through the
//! directory's fd without following a link, regular files only, lines of at most `MAX_LINE`
//! bytes (a longer one is skipped unheld), checksums and the records' rules checked; a line
//! that fails is skipped and counted, never a reason to panic or to stop.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use portbroker_proto::{HistoryEntry, HistoryEvent, Holder, LeaseId};

use super::record::{decode, invalid, Change, Entry, Record};
use super::{generations, open_existing, MAX_LINE};

/// The most bytes one reading of the history reads, over every file.
pub const READ_BUDGET: u64 = 4 << 20;

/// How much of a file is read at once, from its end backwards.
const CHUNK: usize = 64 * 1024;

/// Where the history lies: the journal and its generations, reached through the state
/// directory's fd (a copy of the journal's).
pub struct History {
    dir: OwnedFd,
    /// The journal's path, for messages; the generations' names derive from it.
    path: PathBuf,
    name: OsString,
}

/// What one reading found.
#[derive(Debug, Default)]
pub struct Read {
    /// The events, oldest first.
    pub entries: Vec<HistoryEntry>,
    /// Bytes read from the files.
    pub bytes: u64,
    /// Files that could not be read, each with what failed.
    pub skipped: Vec<String>,
    /// Lines that held no valid record (damaged, too long, or breaking a rule), skipped.
    pub unreadable: usize,
}

impl History {
    pub(super) fn new(dir: OwnedFd, path: PathBuf, name: OsString) -> History {
        History { dir, path, name }
    }

    /// The last `max` events, oldest first, reading at most `budget` bytes: from the end of
    /// the journal, then of each generation from the newest, until `max` events are found and
    /// every end among them has met its lease's record, or the budget is spent.
    pub fn read(&self, max: usize, budget: u64) -> Read {
        let mut collector = Collector {
            max,
            ..Collector::default()
        };
        let mut skipped = Vec::new();
        let mut left = budget;
        for k in 0..=generations::MAX_GENERATIONS {
            if collector.done() || left == 0 {
                break;
            }
            let name = match k {
                0 => self.name.clone(),
                k => generations::name(&self.name, k),
            };
            let path = self.path.with_file_name(&name);
            let file = match open_existing(&self.dir, &name, &path) {
                Ok(Some(file)) => file,
                Ok(None) => continue,
                Err(err) => {
                    skipped.push(err.to_string());
                    continue;
                }
            };
            if let Err(err) = read_back(&file, &mut left, |line| collector.line(line)) {
                skipped.push(format!("cannot read {}: {err}", path.display()));
            }
        }
        let mut entries = collector.events;
        entries.reverse();
        Read {
            entries,
            bytes: budget - left,
            skipped,
            unreadable: collector.unreadable,
        }
    }
}

/// Gathers events from records met newest first.
#[derive(Default)]
struct Collector {
    max: usize,
    /// Newest first.
    events: Vec<HistoryEntry>,
    /// Ends still without their lease's record: lease id to the indexes of its ends.
    waiting: HashMap<u64, Vec<usize>>,
    unreadable: usize,
}

fn holder(lease: &Entry) -> Holder {
    Holder {
        pid: lease.pid,
        uid: lease.uid,
        gid: lease.gid,
        name: lease.name.clone(),
    }
}

impl Collector {
    fn done(&self) -> bool {
        self.events.len() >= self.max && self.waiting.is_empty()
    }

    /// Takes one line (`None`: one too long to hold); returns whether to read on.
    fn line(&mut self, bytes: Option<&[u8]>) -> bool {
        let record = bytes.and_then(decode);
        let Some(record) = record.filter(|record| invalid(record).is_none()) else {
            self.unreadable += 1;
            return true;
        };
        let room = self.events.len() < self.max;
        match record {
            Record::Ended { id, at_ms, why } => {
                // An end for a reason this daemon does not know is not shown.
                if let (true, Some(why)) = (room, why) {
                    self.waiting.entry(id).or_default().push(self.events.len());
                    self.events.push(HistoryEntry {
                        at_unix_ms: at_ms,
                        id: LeaseId(id),
                        event: HistoryEvent::Ended(why),
                        holder: None,
                        sockets: Vec::new(),
                    });
                }
            }
            Record::Leased {
                at_ms,
                change,
                lease,
            } => {
                self.resolve(&lease);
                if let (true, Some(change)) = (room, change) {
                    self.events.push(HistoryEntry {
                        at_unix_ms: at_ms,
                        id: LeaseId(lease.id),
                        event: match change {
                            Change::Granted => HistoryEvent::Granted,
                            Change::Tied => HistoryEvent::Tied,
                            Change::HandedOver => HistoryEvent::HandedOver,
                        },
                        holder: Some(holder(&lease)),
                        sockets: lease.sockets,
                    });
                }
            }
            Record::Grant(lease) => self.resolve(&lease),
            Record::End(_) | Record::NextId(_) => {}
        }
        !self.done()
    }

    /// The ends of `lease` met so far get its holder and sockets: this is the lease's last
    /// record before them.
    fn resolve(&mut self, lease: &Entry) {
        for at in self.waiting.remove(&lease.id).unwrap_or_default() {
            let event = &mut self.events[at];
            event.holder = Some(holder(lease));
            event.sockets.clone_from(&lease.sockets);
        }
    }
}

/// Calls `each` with the lines of `file` from its last to its first, reading at most `budget`
/// bytes (and taking off what it reads) and never holding more than `MAX_LINE` bytes of a
/// line: a longer one comes as `None`, unread; a line whose start lies beyond the budget does
/// not come at all. Stops when `each` returns false.
fn read_back(
    file: &File,
    budget: &mut u64,
    mut each: impl FnMut(Option<&[u8]>) -> bool,
) -> io::Result<()> {
    let mut pos = file.metadata()?.len();
    let mut chunk = vec![0u8; CHUNK];
    // The end of a line whose start lies in an earlier chunk, and whether it is too long.
    let mut tail: Vec<u8> = Vec::new();
    let mut too_long = false;
    let mut joined = Vec::new();
    let mut emit = |head: &[u8], tail: &[u8], too_long: bool| -> bool {
        if too_long || head.len() + tail.len() > MAX_LINE {
            return each(None);
        }
        match (head.is_empty(), tail.is_empty()) {
            (true, true) => true,
            (_, true) => each(Some(head)),
            (true, false) => each(Some(tail)),
            (false, false) => {
                joined.clear();
                joined.extend_from_slice(head);
                joined.extend_from_slice(tail);
                each(Some(&joined))
            }
        }
    };
    while pos > 0 {
        let n = u64::try_from(CHUNK)
            .unwrap_or(u64::MAX)
            .min(pos)
            .min(*budget);
        if n == 0 {
            return Ok(());
        }
        pos -= n;
        *budget -= n;
        let buf = &mut chunk[..n as usize];
        file.read_exact_at(buf, pos)?;
        let mut end = buf.len();
        while let Some(newline) = buf[..end].iter().rposition(|&b| b == b'\n') {
            if !emit(&buf[newline + 1..end], &tail, too_long) {
                return Ok(());
            }
            tail.clear();
            too_long = false;
            end = newline;
        }
        if !too_long {
            if tail.len() + end > MAX_LINE {
                too_long = true;
                tail = Vec::new();
            } else {
                tail.splice(0..0, buf[..end].iter().copied());
            }
        }
    }
    // The file's first line.
    emit(&[], &tail, too_long);
    Ok(())
}
