//! The lease table on disk, so that a restarted daemon knows every lease it had granted.
//!
//! An append-only log of lines `CRC32 JSON`: `Grant` records a lease (again, with its new
//! holder, after a tie or a handover), `End` its end. The event loop gathers a turn's changes
//! and writes them with one `write` (group commit), so no lease waits for a write of its own.
//! The log is not fsynced: what it guards against is the daemon's own death, which leaves the
//! page cache intact, while a machine crash ends every holder too, and with them every lease
//! (and `/run` is a tmpfs). Measured: an fdatasync per turn on a disk-backed directory cut a
//! single client's lease rate from ~17k/s to ~4k/s. When the log holds many times more records than live leases, it is
//! rewritten as a snapshot (write, fsync, rename). A damaged or truncated line ends recovery at
//! that line, which the startup report names.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use portbroker_proto::GrantedSocket;
use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Grant(Entry),
    End(u64),
}

/// What a restart found in the journal.
#[derive(Debug, Default)]
pub struct Recovered {
    pub leases: Vec<Entry>,
    /// The first damaged line and how many lines from it on were not read.
    pub damage: Option<(usize, usize)>,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    pending: Vec<u8>,
    records: usize,
}

fn encode(record: &Record, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(record).expect("journal records serialize");
    let _ = write!(out, "{:08x} ", crc32fast::hash(&json));
    out.extend_from_slice(&json);
    out.push(b'\n');
}

fn decode(line: &str) -> Option<Record> {
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32fast::hash(json.as_bytes()) == crc).then(|| serde_json::from_str(json).ok())?
}

/// Reads the live leases of a journal; a missing file is an empty one.
fn read(path: &Path) -> io::Result<Recovered> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Recovered::default()),
        Err(err) => return Err(err),
    };
    let mut live: BTreeMap<u64, Entry> = BTreeMap::new();
    let mut lines = BufReader::new(file).lines().enumerate();
    let mut damage = None;
    while let Some((index, line)) = lines.next() {
        match line.ok().as_deref().and_then(decode) {
            Some(Record::Grant(entry)) => {
                live.insert(entry.id, entry);
            }
            Some(Record::End(id)) => {
                live.remove(&id);
            }
            None => {
                damage = Some((index + 1, 1 + lines.count()));
                break;
            }
        }
    }
    Ok(Recovered {
        leases: live.into_values().collect(),
        damage,
    })
}

impl Journal {
    /// Opens the journal at `path`, returning what it held; the file is then rewritten as a
    /// snapshot of exactly that, so damage does not outlive the restart that reported it.
    pub fn open(path: &Path) -> io::Result<(Journal, Recovered)> {
        let recovered = read(path)?;
        let mut journal = Journal {
            path: path.to_owned(),
            file: File::open("/dev/null")?,
            pending: Vec::new(),
            records: 0,
        };
        journal.rewrite(recovered.leases.iter())?;
        Ok((journal, recovered))
    }

    pub fn grant(&mut self, entry: Entry) {
        encode(&Record::Grant(entry), &mut self.pending);
        self.records += 1;
    }

    pub fn end(&mut self, id: u64) {
        encode(&Record::End(id), &mut self.pending);
        self.records += 1;
    }

    /// Writes what this turn gathered, in one write.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    /// Whether the log has grown enough, against `live` leases, to be rewritten.
    pub fn wants_compaction(&self, live: usize) -> bool {
        self.records > 4 * live + 1024
    }

    /// Replaces the log by a snapshot of `leases`: write, fsync, rename, so that a crash
    /// leaves either the old log or the new one.
    pub fn rewrite<'a>(&mut self, leases: impl Iterator<Item = &'a Entry>) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut bytes = Vec::new();
        let mut records = 0;
        for entry in leases {
            encode(&Record::Grant(entry.clone()), &mut bytes);
            records += 1;
        }
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.pending.clear();
        self.records = records;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portbroker_proto::Transport;

    fn entry(id: u64) -> Entry {
        Entry {
            id,
            pid: 42,
            start_time: 7,
            uid: 1000,
            gid: 1000,
            name: "server".into(),
            since: 1,
            sockets: vec![GrantedSocket {
                transport: Transport::Tcp,
                addr: "127.0.0.1:8080".parse().unwrap(),
                listening: true,
            }],
            service: None,
            cookies: vec![77],
        }
    }

    #[test]
    fn grants_and_ends_replay_to_the_live_leases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        let (mut journal, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.leases.is_empty());
        for id in 1..=3 {
            journal.grant(entry(id));
        }
        journal.end(2);
        journal.commit().unwrap();
        let (_, recovered) = Journal::open(&path).unwrap();
        let ids: Vec<u64> = recovered.leases.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 3]);
        assert_eq!(recovered.damage, None);
    }

    #[test]
    fn damage_stops_recovery_at_its_line_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        let (mut journal, _) = Journal::open(&path).unwrap();
        for id in 1..=4 {
            journal.grant(entry(id));
        }
        journal.commit().unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        // Flip one character of the third record.
        let third = text.match_indices('\n').nth(1).unwrap().0 + 20;
        text.replace_range(third..third + 1, "#");
        std::fs::write(&path, &text).unwrap();
        let (_, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered.leases.len(), 2);
        assert_eq!(recovered.damage, Some((3, 2)));
        // A truncated last line is damage too.
        std::fs::write(&path, &text[..text.len() / 2 + 3]).unwrap();
        let (_, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.damage.is_some());
    }
}
