//! The journal's lines, and reading them back: `CRC32 JSON`, one record a line.
//!
//! Everything here treats the file as hostile input: whoever could write it (a bug, a full disk,
//! a careless operator) must not make the daemon panic, run out of memory, or restore a lease it
//! never granted in a shape the table cannot hold. A line is read with a bounded buffer; a record
//! whose checksum or JSON is broken ends recovery there (what follows a torn write cannot be
//! trusted to be in order), while a whole record that breaks a rule is dropped, with a warning
//! naming its line, and recovery goes on.

use std::collections::BTreeMap;
use std::io::{self, BufRead};

use portbroker_proto::{EndReason, GrantedSocket};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{MAX_LEASE_ID, MAX_LINE, MAX_SOCKETS};

/// A lease as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: u64,
    pub pid: i32,
    /// The holder's start time (see `procfs::start_time`), so that a reused pid is not
    /// mistaken for the holder after a restart.
    pub start_time: u64,
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub since: u64,
    pub sockets: Vec<GrantedSocket>,
    pub service: Option<String>,
    /// The `SO_COOKIE` of each socket, in the order of `sockets`: what identifies the socket
    /// itself (its address does not). Empty in journals written before cookies were kept.
    #[serde(default)]
    pub cookies: Vec<u64>,
    /// A port handed out as a number (`Listen::Number`, or the portserver): no socket and no
    /// cookies. Written only when true, so other leases' lines are as they were; journals
    /// written before it was kept read as false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub number: bool,
}

/// What a `Leased` record says happened to its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It was granted.
    Granted,
    /// It was tied to a process, its new holder.
    Tied,
    /// It was handed over to a new holder.
    HandedOver,
}

impl Change {
    pub(super) fn name(self) -> &'static str {
        match self {
            Change::Granted => "granted",
            Change::Tied => "tied",
            Change::HandedOver => "handed_over",
        }
    }

    fn from_name(name: &str) -> Option<Change> {
        [Change::Granted, Change::Tied, Change::HandedOver]
            .into_iter()
            .find(|change| change.name() == name)
    }
}

/// The JSON of a record. The history's records (`Leased`, `Ended`) came later than the others:
/// a journal written before them holds `Grant` and `End` only, and reads as it always did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Record {
    /// A lease as it stands, without saying when or why: what a snapshot holds (and what every
    /// grant, tie and handover wrote before the history was kept).
    Grant(Entry),
    /// The end of a lease, in journals written before the history was kept.
    End(u64),
    /// The next lease id is at least this: written first in every snapshot, so that the ids
    /// of ended leases, which a snapshot no longer names, are never handed out again.
    NextId(u64),
    /// A lease, new or with a new holder, written as it happened: when (milliseconds since the
    /// Unix epoch) and what happened. Replays as `Grant`. A name this daemon does not know
    /// (written by a later version) reads as `None`, never as damage.
    Leased {
        at_ms: u64,
        #[serde(with = "by_name")]
        change: Option<Change>,
        lease: Entry,
    },
    /// The end of a lease, when and why. Replays as `End`; an unknown reason reads as `None`.
    Ended {
        id: u64,
        at_ms: u64,
        #[serde(with = "by_name")]
        why: Option<EndReason>,
    },
}

/// Names a `Change` or an `EndReason` by its `snake_case` name, as `portctl log --json` does,
/// and reads back a name it does not know as `None`: a later daemon's new reason must not
/// make this one's replay stop at its line.
mod by_name {
    use super::*;

    pub trait Named: Sized + Copy {
        fn name(self) -> &'static str;
        fn from_name(name: &str) -> Option<Self>;
    }

    impl Named for Change {
        fn name(self) -> &'static str {
            Change::name(self)
        }
        fn from_name(name: &str) -> Option<Self> {
            Change::from_name(name)
        }
    }

    impl Named for EndReason {
        fn name(self) -> &'static str {
            EndReason::name(self)
        }
        fn from_name(name: &str) -> Option<Self> {
            EndReason::from_name(name)
        }
    }

    pub fn serialize<T: Named, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.map_or("unknown", T::name))
    }

    pub fn deserialize<'de, T: Named, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        d.deserialize_str(NameVisitor(std::marker::PhantomData))
    }

    /// Reads the name where it lies, escaped or not, without a `String` of its own.
    struct NameVisitor<T>(std::marker::PhantomData<T>);

    impl<T: Named> serde::de::Visitor<'_> for NameVisitor<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a name")
        }

        fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Option<T>, E> {
            Ok(T::from_name(name))
        }
    }
}

impl Record {
    /// The id this record names, for the high-water mark; `NextId` names none.
    fn lease_id(&self) -> Option<u64> {
        match self {
            Record::Grant(entry) | Record::Leased { lease: entry, .. } => Some(entry.id),
            Record::End(id) | Record::Ended { id, .. } => Some(*id),
            Record::NextId(_) => None,
        }
    }

    /// The lowest next id that this record, once on disk, implies.
    pub(super) fn next_id_floor(&self) -> u64 {
        match self {
            Record::NextId(next) => *next,
            other => other.lease_id().map_or(1, |id| id.saturating_add(1)),
        }
    }
}

/// What a restart found in the journal.
#[derive(Debug)]
pub struct Recovered {
    pub leases: Vec<Entry>,
    /// The first damaged line and how many lines from it on were not read.
    pub damage: Option<(usize, usize)>,
    /// The lowest id a new lease may take: one more than the highest valid id any record names
    /// (ended leases included), or a `NextId` record's value if higher; at least 1.
    pub next_id: u64,
    /// Records read whole but dropped for breaking a rule (each one logged with its line).
    pub dropped: usize,
    /// History records read (`Leased`, `Ended`): whether the file is worth keeping as a
    /// generation of the history when it is replaced.
    pub events: usize,
}

impl Default for Recovered {
    fn default() -> Self {
        Recovered {
            leases: Vec::new(),
            damage: None,
            next_id: 1,
            dropped: 0,
            events: 0,
        }
    }
}

pub(super) fn encode(record: &Record, out: &mut Vec<u8>) {
    // The JSON is written straight into `out` after room for its checksum, which is filled in
    // once the JSON is there: no buffer of its own and no copy per record (this runs for every
    // grant and end).
    let line = out.len();
    out.extend_from_slice(b"00000000 ");
    let json = out.len();
    super::json::write_record(record, out);
    let crc = crc32fast::hash(&out[json..]);
    for (i, digit) in out[line..line + 8].iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((crc >> (28 - 4 * i)) & 0xf) as usize];
    }
    out.push(b'\n');
}

/// The bytes of a snapshot of `leases`: a `NextId` record first (the higher of `next_id` and one
/// more than any lease's id), then a `Grant` per lease. Returns the bytes and the next id. A
/// journal that never saw a lease stays empty: its `NextId` would be 1, which an empty file says
/// as well.
pub fn encode_snapshot<'a>(
    leases: impl Iterator<Item = &'a Entry>,
    next_id: u64,
) -> (Vec<u8>, u64) {
    let mut body = Vec::new();
    let mut next = next_id.max(1);
    for entry in leases {
        next = next.max(entry.id.saturating_add(1));
        // Cloned to share the one encoder with the log; compaction is rare.
        encode(&Record::Grant(entry.clone()), &mut body);
    }
    let mut bytes = Vec::with_capacity(body.len() + 32);
    if next > 1 {
        encode(&Record::NextId(next), &mut bytes);
    }
    bytes.extend_from_slice(&body);
    (bytes, next)
}

pub(super) fn decode(line: &[u8]) -> Option<Record> {
    let space = line.iter().position(|&b| b == b' ')?;
    let (crc, json) = (&line[..space], &line[space + 1..]);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

pub(super) fn valid_id(id: u64) -> bool {
    (1..=MAX_LEASE_ID).contains(&id)
}

/// Why a whole record cannot be restored, if it cannot.
pub(super) fn invalid(record: &Record) -> Option<String> {
    match record {
        Record::Grant(entry) | Record::Leased { lease: entry, .. } => {
            if !valid_id(entry.id) {
                return Some(format!(
                    "lease id {} is outside 1..={MAX_LEASE_ID}",
                    entry.id
                ));
            }
            let n = entry.sockets.len();
            if !(1..=MAX_SOCKETS).contains(&n) {
                return Some(format!(
                    "lease {} has {n} sockets, not 1 to {MAX_SOCKETS}",
                    entry.id
                ));
            }
            if let Some(socket) = entry.sockets.iter().find(|s| s.addr.port() == 0) {
                return Some(format!(
                    "lease {} names port 0 ({socket}), which no grant binds",
                    entry.id
                ));
            }
            if !entry.cookies.is_empty() && entry.cookies.len() != n {
                return Some(format!(
                    "lease {} has {} socket cookies for {n} sockets",
                    entry.id,
                    entry.cookies.len()
                ));
            }
            if entry.number && !entry.cookies.is_empty() {
                return Some(format!(
                    "lease {} is a number, which has no socket, yet names socket cookies",
                    entry.id
                ));
            }
            None
        }
        Record::End(id) | Record::Ended { id, .. } => {
            (!valid_id(*id)).then(|| format!("end of lease id {id}, outside 1..={MAX_LEASE_ID}"))
        }
        Record::NextId(next) => (!(1..=MAX_LEASE_ID + 1).contains(next))
            .then(|| format!("next id {next} is outside 1..={}", MAX_LEASE_ID + 1)),
    }
}

/// One line as the bounded reader saw it.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// The line without its newline (the last line of a file may lack one).
    Whole(&'a [u8]),
    /// A line longer than `MAX_LINE`, of this many bytes, read past and not kept.
    TooLong(usize),
}

/// Splits a reader into lines without ever holding more than `MAX_LINE` bytes of one.
pub(super) struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    pub(super) fn new(reader: R) -> Self {
        Lines {
            reader,
            // Allocated once at its bound, so that no line can make it grow.
            buf: Vec::with_capacity(MAX_LINE),
        }
    }

    /// How much memory the line buffer holds: never more than `MAX_LINE` bytes.
    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let (mut len, mut started, mut too_long) = (0usize, false, false);
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if chunk.is_empty() {
                if !started {
                    return Ok(None);
                }
                break;
            }
            started = true;
            let newline = chunk.iter().position(|&b| b == b'\n');
            let take = newline.unwrap_or(chunk.len());
            len = len.saturating_add(take);
            if !too_long {
                if self.buf.len() + take > MAX_LINE {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            self.reader.consume(take + usize::from(newline.is_some()));
            if newline.is_some() {
                break;
            }
        }
        Ok(Some(if too_long {
            Line::TooLong(len)
        } else {
            Line::Whole(&self.buf)
        }))
    }

    /// Counts the lines left, reading them with the same bound; a read error ends the count.
    fn count_rest(&mut self) -> usize {
        let mut count = 0;
        while let Ok(Some(_)) = self.next_line() {
            count += 1;
        }
        count
    }
}

/// Reads a journal and returns the leases it leaves live. Never panics and never holds more
/// than one bounded line, whatever the bytes: a damaged line (a broken checksum, JSON that is no
/// record, a read error) ends recovery there and is reported in `damage`; a record that breaks a
/// rule, and a line longer than `MAX_LINE`, are dropped with a warning naming the line, and
/// recovery goes on after them.
pub fn replay(reader: impl BufRead) -> Recovered {
    replay_lines(&mut Lines::new(reader))
}

pub(super) fn replay_lines<R: BufRead>(lines: &mut Lines<R>) -> Recovered {
    let mut live: BTreeMap<u64, Entry> = BTreeMap::new();
    let mut recovered = Recovered::default();
    let mut number = 0usize;
    loop {
        number += 1;
        let record = match lines.next_line() {
            Ok(None) => break,
            Ok(Some(Line::TooLong(len))) => {
                tracing::warn!(
                    "journal line {number} dropped: {len} bytes, over the limit of {MAX_LINE}; \
                     the daemon writes no such line"
                );
                recovered.dropped += 1;
                continue;
            }
            Ok(Some(Line::Whole(bytes))) => decode(bytes),
            Err(err) => {
                tracing::warn!("cannot read journal line {number}: {err}");
                recovered.damage = Some((number, 1));
                break;
            }
        };
        let Some(record) = record else {
            recovered.damage = Some((number, 1 + lines.count_rest()));
            break;
        };
        // A valid id counts for the high-water mark even when its record is dropped for
        // another reason: an id that was ever written must never be handed out again.
        if let Some(id) = record.lease_id().filter(|&id| valid_id(id)) {
            recovered.next_id = recovered.next_id.max(id + 1);
        }
        if let Some(reason) = invalid(&record) {
            tracing::warn!("journal line {number} dropped: {reason}");
            recovered.dropped += 1;
            continue;
        }
        match record {
            Record::Grant(entry) => {
                live.insert(entry.id, entry);
            }
            Record::Leased { lease, .. } => {
                recovered.events += 1;
                live.insert(lease.id, lease);
            }
            Record::End(id) => {
                live.remove(&id);
            }
            Record::Ended { id, .. } => {
                recovered.events += 1;
                live.remove(&id);
            }
            Record::NextId(next) => recovered.next_id = recovered.next_id.max(next),
        }
    }
    recovered.leases = live.into_values().collect();
    recovered
}
