//! The history kept with the journal: its records, the generations kept at compaction and at
//! restart within their bounds, and reading it back from files that may hold anything.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use portbroker_proto::{EndReason, GrantedSocket, HistoryEntry, HistoryEvent, Transport};
use proptest::prelude::*;

use super::generations::{self, MAX_GENERATIONS, MAX_HISTORY_BYTES};
use super::record::{encode, Record};
use super::*;

fn entry(id: u64, pid: i32) -> Entry {
    Entry {
        id,
        pid,
        start_time: 7,
        uid: 1000,
        gid: 1000,
        name: format!("server{pid}"),
        since: 1,
        sockets: vec![GrantedSocket {
            transport: Transport::Tcp,
            addr: format!("127.0.0.1:{}", 20_000 + id % 40_000)
                .parse()
                .unwrap(),
            listening: true,
            v6_only: false,
        }],
        service: None,
        cookies: vec![77],
        number: false,
    }
}

/// A journal in a fresh directory.
fn journal() -> (tempfile::TempDir, PathBuf, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.journal");
    let (journal, _) = Journal::open(&path).unwrap();
    (dir, path, journal)
}

fn generation(path: &Path, k: usize) -> PathBuf {
    path.with_file_name(generations::name(path.file_name().unwrap(), k))
}

/// (event, id) of each entry, oldest first.
fn events(entries: &[HistoryEntry]) -> Vec<(HistoryEvent, u64)> {
    entries.iter().map(|e| (e.event, e.id.0)).collect()
}

fn read(journal: &Journal, max: usize) -> history::Read {
    journal.history().unwrap().read(max, READ_BUDGET)
}

/// Grants lease `id`, commits, ends it for `why`, commits: one event each, a millisecond
/// apart.
fn lease_and_end(journal: &mut Journal, id: u64, why: EndReason) {
    journal.grant(entry(id, id as i32), Change::Granted, id * 10);
    journal.commit().unwrap();
    journal.end(id, why, id * 10 + 1);
    journal.commit().unwrap();
}

fn line(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    encode(record, &mut out);
    out
}

#[test]
fn the_new_records_round_trip_and_say_when_and_why() {
    let (_dir, path, mut journal) = journal();
    journal.grant(entry(1, 10), Change::Granted, 1_000);
    journal.commit().unwrap();
    journal.grant(entry(1, 11), Change::Tied, 2_000);
    journal.grant(entry(2, 20), Change::Granted, 2_000);
    journal.commit().unwrap();
    journal.grant(entry(2, 21), Change::HandedOver, 3_000);
    journal.end(1, EndReason::Expired, 3_000);
    journal.commit().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(r#"{"Ended":{"id":1,"at_ms":3000,"why":"expired"}}"#),
        "{text}"
    );
    assert!(text.contains(r#""at_ms":2000,"change":"tied""#), "{text}");
    // Replay reads them as grants and ends.
    let recovered = replay(text.as_bytes());
    assert_eq!(recovered.leases, [entry(2, 21)]);
    assert_eq!((recovered.next_id, recovered.events), (3, 5));
    // The history reads them back, oldest first, with the holder of each moment.
    let read = read(&journal, 100);
    assert_eq!(
        events(&read.entries),
        [
            (HistoryEvent::Granted, 1),
            (HistoryEvent::Tied, 1),
            (HistoryEvent::Granted, 2),
            (HistoryEvent::HandedOver, 2),
            (HistoryEvent::Ended(EndReason::Expired), 1),
        ]
    );
    let times: Vec<u64> = read.entries.iter().map(|e| e.at_unix_ms).collect();
    assert_eq!(times, [1_000, 2_000, 2_000, 3_000, 3_000]);
    let pids: Vec<i32> = read
        .entries
        .iter()
        .map(|e| e.holder.as_ref().unwrap().pid)
        .collect();
    assert_eq!(pids, [10, 11, 20, 21, 11], "an end shows the last holder");
    assert_eq!(read.entries[4].sockets, entry(1, 11).sockets);
    assert_eq!((read.unreadable, read.skipped.len()), (0, 0));
}

#[test]
fn a_grant_and_a_tie_in_one_turn_are_one_grant_with_the_last_holder() {
    let (_dir, _path, mut journal) = journal();
    journal.grant(entry(1, 10), Change::Granted, 1_000);
    journal.grant(entry(1, 11), Change::Tied, 1_001);
    journal.commit().unwrap();
    let read = read(&journal, 100);
    assert_eq!(events(&read.entries), [(HistoryEvent::Granted, 1)]);
    assert_eq!(read.entries[0].at_unix_ms, 1_000);
    assert_eq!(read.entries[0].holder.as_ref().unwrap().pid, 11);
}

#[test]
fn an_old_end_and_an_old_grant_still_read_and_an_unknown_reason_is_no_damage() {
    let text = [
        line(&Record::Grant(entry(1, 10))),
        line(&Record::Grant(entry(2, 20))),
        line(&Record::End(1)),
        line(&Record::Grant(entry(3, 30))),
    ]
    .concat();
    // A reason and a change a later daemon might write.
    let future_end = r#"{"Ended":{"id":2,"at_ms":5,"why":"gone fishing"}}"#;
    let future_change = serde_json::to_string(&Record::Leased {
        at_ms: 6,
        change: Some(Change::Tied),
        lease: entry(3, 31),
    })
    .unwrap()
    .replace(r#""change":"tied""#, r#""change":"teleported""#);
    let crc = |json: &str| format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()));
    let text = [
        text,
        crc(future_end).into_bytes(),
        crc(&future_change).into_bytes(),
    ]
    .concat();
    let recovered = replay(text.as_slice());
    assert_eq!(recovered.damage, None);
    assert_eq!(recovered.dropped, 0);
    assert_eq!(recovered.leases, [entry(3, 31)]);
    assert_eq!(recovered.next_id, 4);
    // Old records are no events (they say no time), and unknown names are not shown.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.journal");
    std::fs::write(&path, &text).unwrap();
    let (journal, recovered) = Journal::open(&path).unwrap();
    assert_eq!(recovered.leases, [entry(3, 31)]);
    // The file held events, so it was kept as the first generation.
    assert_eq!(std::fs::read(generation(&path, 1)).unwrap(), text);
    let read = read(&journal, 100);
    assert!(read.entries.is_empty(), "{:?}", read.entries);
    assert_eq!(read.unreadable, 0);
}

#[test]
fn compaction_and_restart_keep_the_replaced_journal_as_a_generation() {
    let (_dir, path, mut journal) = journal();
    lease_and_end(&mut journal, 1, EndReason::Released);
    journal.grant(entry(2, 2), Change::Granted, 20);
    journal.commit().unwrap();
    journal.rewrite([entry(2, 2)].iter(), 0).unwrap();
    assert!(generation(&path, 1).exists());
    lease_and_end(&mut journal, 3, EndReason::Revoked);
    journal.end(2, EndReason::ConnectionClosed, 40);
    journal.commit().unwrap();
    drop(journal);
    // A restart keeps the last life's journal too.
    let (journal, recovered) = Journal::open(&path).unwrap();
    assert!(recovered.leases.is_empty());
    assert!(generation(&path, 2).exists());
    let read = read(&journal, 100);
    assert_eq!(
        events(&read.entries),
        [
            (HistoryEvent::Granted, 1),
            (HistoryEvent::Ended(EndReason::Released), 1),
            (HistoryEvent::Granted, 2),
            (HistoryEvent::Granted, 3),
            (HistoryEvent::Ended(EndReason::Revoked), 3),
            (HistoryEvent::Ended(EndReason::ConnectionClosed), 2),
        ]
    );
    // Lease 2 was granted in the older generation and ended in the newer one, whose head
    // restates it: its end knows its holder.
    assert_eq!(read.entries[5].holder.as_ref().unwrap().pid, 2);
    // A restart with nothing new keeps no empty generation.
    drop(journal);
    let before = generation(&path, 1).metadata().unwrap().ino();
    let (journal, _) = Journal::open(&path).unwrap();
    assert_eq!(generation(&path, 1).metadata().unwrap().ino(), before);
    assert!(!generation(&path, 3).exists());
    assert_eq!(read_len(&journal), 6);
}

fn read_len(journal: &Journal) -> usize {
    read(journal, 1000).entries.len()
}

#[test]
fn the_events_of_a_compacting_turn_stay_in_the_history() {
    let (_dir, path, mut journal) = journal();
    lease_and_end(&mut journal, 1, EndReason::Released);
    // The turn that compacts also granted a lease and ended one.
    journal.grant(entry(2, 2), Change::Granted, 30);
    journal.grant(entry(3, 3), Change::Granted, 30);
    journal.commit().unwrap();
    journal.end(3, EndReason::Expired, 40);
    journal.grant(entry(4, 4), Change::Granted, 40);
    journal
        .rewrite([entry(2, 2), entry(4, 4)].iter(), 0)
        .unwrap();
    let read = read(&journal, 100);
    assert_eq!(
        events(&read.entries)[4..],
        [
            (HistoryEvent::Ended(EndReason::Expired), 3),
            (HistoryEvent::Granted, 4),
        ]
    );
    // And the journal replays to the same leases.
    drop(journal);
    let (_, recovered) = Journal::open(&path).unwrap();
    assert_eq!(recovered.leases, [entry(2, 2), entry(4, 4)]);
}

#[test]
fn a_journal_kept_already_is_not_kept_twice() {
    let (_dir, path, mut journal) = journal();
    lease_and_end(&mut journal, 1, EndReason::Released);
    // The daemon died after keeping the journal and before replacing it.
    std::fs::hard_link(&path, generation(&path, 1)).unwrap();
    journal.rewrite(std::iter::empty(), 0).unwrap();
    assert!(!generation(&path, 2).exists());
    assert_eq!(read_len(&journal), 2);
}

#[test]
fn the_generations_are_bounded_in_number_and_the_newest_events_stay() {
    let (_dir, path, mut journal) = journal();
    let rounds = MAX_GENERATIONS as u64 + 5;
    for round in 1..=rounds {
        lease_and_end(&mut journal, round, EndReason::Expired);
        journal.rewrite(std::iter::empty(), 0).unwrap();
    }
    for k in 1..=MAX_GENERATIONS {
        assert!(generation(&path, k).exists(), "generation {k}");
    }
    assert!(!generation(&path, MAX_GENERATIONS + 1).exists());
    let read = read(&journal, 1000);
    let ids: Vec<u64> = read.entries.iter().map(|e| e.id.0).collect();
    let first = rounds - MAX_GENERATIONS as u64 + 1;
    let expected: Vec<u64> = (first..=rounds).flat_map(|id| [id, id]).collect();
    assert_eq!(ids, expected);
    // The last N are the newest N.
    let last = journal.history().unwrap().read(3, READ_BUDGET);
    assert_eq!(
        events(&last.entries),
        [
            (HistoryEvent::Ended(EndReason::Expired), rounds - 1),
            (HistoryEvent::Granted, rounds),
            (HistoryEvent::Ended(EndReason::Expired), rounds),
        ]
    );
}

#[test]
fn the_generations_are_bounded_in_bytes() {
    let (_dir, path, mut journal) = journal();
    // Generations of about 5 MiB: a few fit under the bound.
    let per_generation = 5 << 20;
    let mut id = 1;
    for _ in 0..MAX_GENERATIONS {
        while journal.committed_len < per_generation {
            let mut lease = entry(id, 1);
            lease.name = "x".repeat(4000);
            journal.grant(lease, Change::Granted, id);
            journal.commit().unwrap();
            journal.end(id, EndReason::Released, id);
            journal.commit().unwrap();
            id += 1;
        }
        journal.rewrite(std::iter::empty(), 0).unwrap();
    }
    let sizes: Vec<u64> = (1..=MAX_GENERATIONS)
        .filter_map(|k| generation(&path, k).metadata().ok())
        .map(|m| m.len())
        .collect();
    let total: u64 = sizes.iter().sum();
    assert!(total <= MAX_HISTORY_BYTES, "{sizes:?}");
    assert!(
        sizes.len() < MAX_GENERATIONS && sizes.len() >= 5,
        "{sizes:?}"
    );
    // Reading is bounded too, and the newest events come back.
    let read = journal.history().unwrap().read(10, 1 << 20);
    assert!(read.bytes <= 1 << 20);
    assert_eq!(read.entries.last().unwrap().id.0, id - 1);
    assert_eq!(read.entries.len(), 10);
}

#[test]
fn damaged_generations_are_skipped_and_the_rest_is_read() {
    let (dir, path, mut journal) = journal();
    for id in 1..=4 {
        lease_and_end(&mut journal, id, EndReason::Released);
        journal.rewrite(std::iter::empty(), 0).unwrap();
    }
    // Generation 1 holds lease 4, 2 lease 3, 3 lease 2, 4 lease 1.
    let victim = dir.path().join("victim");
    std::fs::write(
        &victim,
        line(&Record::Ended {
            id: 9,
            at_ms: 1,
            why: Some(EndReason::Revoked),
        }),
    )
    .unwrap();
    std::fs::remove_file(generation(&path, 2)).unwrap();
    std::os::unix::fs::symlink(&victim, generation(&path, 2)).unwrap();
    std::fs::remove_file(generation(&path, 3)).unwrap();
    nix::unistd::mkfifo(
        &generation(&path, 3),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    // Generation 4: a torn line, garbage and a line over the limit around its records.
    let mut damaged = std::fs::read(generation(&path, 4)).unwrap();
    damaged.splice(0..0, b"garbage\n".iter().copied());
    damaged.extend(vec![b'z'; MAX_LINE * 3]);
    damaged.extend(b"\n00000000 {\"End".iter().copied());
    std::fs::write(generation(&path, 4), &damaged).unwrap();
    let read = read(&journal, 100);
    assert_eq!(
        events(&read.entries),
        [
            (HistoryEvent::Granted, 1),
            (HistoryEvent::Ended(EndReason::Released), 1),
            (HistoryEvent::Granted, 4),
            (HistoryEvent::Ended(EndReason::Released), 4),
        ]
    );
    assert_eq!(read.unreadable, 3, "{read:?}");
    assert_eq!(read.skipped.len(), 2, "{:?}", read.skipped);
    assert!(
        read.skipped[0].contains("symbolic link"),
        "{:?}",
        read.skipped
    );
    assert!(
        read.skipped[1].contains("not a regular file"),
        "{:?}",
        read.skipped
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        line(&Record::Ended {
            id: 9,
            at_ms: 1,
            why: Some(EndReason::Revoked)
        }),
        "the link's target is never read as history, nor touched"
    );
    // Keeping the next generation moves the link and the FIFO on, never through them.
    lease_and_end(&mut journal, 5, EndReason::Released);
    journal.rewrite(std::iter::empty(), 0).unwrap();
    assert!(generation(&path, 3)
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(victim.exists());
}

#[test]
fn an_end_beyond_what_is_read_comes_without_its_holder() {
    let (_dir, _path, mut journal) = journal();
    journal.grant(entry(1, 10), Change::Granted, 1);
    journal.commit().unwrap();
    for id in 2..200 {
        lease_and_end(&mut journal, id, EndReason::Released);
    }
    journal.end(1, EndReason::Revoked, 5_000);
    journal.commit().unwrap();
    let history = journal.history().unwrap();
    let all = history.read(1, READ_BUDGET);
    assert_eq!(all.entries[0].holder.as_ref().unwrap().pid, 10);
    let short = history.read(1, 4096);
    assert!(short.bytes <= 4096);
    assert_eq!(
        events(&short.entries),
        [(HistoryEvent::Ended(EndReason::Revoked), 1)]
    );
    assert_eq!(short.entries[0].holder, None);
    assert!(short.entries[0].sockets.is_empty());
}

fn any_record() -> impl Strategy<Value = Record> {
    let id = prop_oneof![Just(0), Just(u64::MAX), 1..=8u64];
    let why = proptest::option::of(proptest::sample::select(EndReason::ALL.to_vec()));
    let change = proptest::option::of(proptest::sample::select(vec![
        Change::Granted,
        Change::Tied,
        Change::HandedOver,
    ]));
    prop_oneof![
        (id.clone(), any::<i32>()).prop_map(|(id, pid)| Record::Grant(entry(id, pid))),
        id.clone().prop_map(Record::End),
        (id.clone(), any::<u64>(), why).prop_map(|(id, at_ms, why)| Record::Ended {
            id,
            at_ms,
            why
        }),
        (id, any::<u64>(), change, any::<i32>()).prop_map(|(id, at_ms, change, pid)| {
            Record::Leased {
                at_ms,
                change,
                lease: entry(id, pid),
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn whatever_the_files_hold_reading_the_history_never_panics_and_stays_bounded(
        files in proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    any_record().prop_map(|r| line(&r)),
                    (any_record(), any::<usize>(), any::<u8>()).prop_map(|(r, at, byte)| {
                        let mut out = line(&r);
                        let at = at % out.len();
                        out[at] = byte;
                        out
                    }),
                    proptest::collection::vec(any::<u8>(), 0..300),
                ],
                0..30,
            ),
            1..4,
        ),
        max in 0..50usize,
        budget in 0..20_000u64,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        let (journal, _) = Journal::open(&path).unwrap();
        for (k, lines) in files.iter().enumerate() {
            let target = if k == 0 { path.clone() } else { generation(&path, k) };
            std::fs::write(target, lines.concat()).unwrap();
        }
        let read = journal.history().unwrap().read(max, budget);
        prop_assert!(read.entries.len() <= max);
        prop_assert!(read.bytes <= budget);
        for entry in &read.entries {
            prop_assert!((1..=MAX_LEASE_ID).contains(&entry.id.0));
            prop_assert_eq!(entry.holder.is_none(), entry.sockets.is_empty());
        }
        // Read whole, the events are those of the records in file order, newest last.
        let whole = journal.history().unwrap().read(usize::MAX, u64::MAX);
        let tail = &whole.entries[whole.entries.len().saturating_sub(max)..];
        let big_enough = budget >= files.iter().map(|f| f.concat().len() as u64).sum::<u64>();
        if big_enough {
            prop_assert_eq!(events(&read.entries), events(tail));
        }
    }
}
