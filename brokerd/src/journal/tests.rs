use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;

use portbroker_proto::{EndReason, GrantedSocket, Transport};
use proptest::prelude::*;

use super::record::{encode, Lines, Record};
use super::*;

/// When the tests' events happen, in ms since the Unix epoch.
const AT: u64 = 1_764_470_431_123;

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
            v6_only: false,
        }],
        service: None,
        cookies: vec![77],
        number: false,
    }
}

fn ids(recovered: &Recovered) -> Vec<u64> {
    recovered.leases.iter().map(|e| e.id).collect()
}

/// A journal line with a valid checksum around `json`, as a writer that means harm (or a bug)
/// could leave it.
fn line(json: &str) -> String {
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
}

fn json(record: &Record) -> String {
    String::from_utf8(serde_json::to_vec(record).unwrap()).unwrap()
}

fn grant_json(id: u64) -> String {
    json(&Record::Grant(entry(id)))
}

#[test]
fn a_record_is_its_checksum_in_hex_a_space_its_json_and_a_newline() {
    for record in [
        Record::Grant(entry(7)),
        Record::End(7),
        Record::NextId(u64::MAX),
    ] {
        let mut out = b"earlier lines\n".to_vec();
        encode(&record, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, format!("earlier lines\n{}", line(&json(&record))));
    }
}

fn replay_str(text: &str) -> Recovered {
    replay(text.as_bytes())
}

/// What `Journal::open` recovers from a journal holding `text`.
fn recovered_ids(text: &str) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.journal");
    std::fs::write(&path, text).unwrap();
    let (_, recovered) = Journal::open(&path).unwrap();
    ids(&recovered)
}

#[test]
fn grants_and_ends_replay_to_the_live_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.journal");
    let (mut journal, recovered) = Journal::open(&path).unwrap();
    assert!(recovered.leases.is_empty());
    assert_eq!(recovered.next_id, 1);
    for id in 1..=3 {
        journal.grant(entry(id), Change::Granted, AT);
    }
    journal.end(2, EndReason::Released, AT);
    journal.commit().unwrap();
    let (_, recovered) = Journal::open(&path).unwrap();
    assert_eq!(ids(&recovered), [1, 3]);
    assert_eq!(recovered.damage, None);
    assert_eq!(recovered.next_id, 4);
}

#[test]
fn damage_stops_recovery_at_its_line_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.journal");
    let (mut journal, _) = Journal::open(&path).unwrap();
    for id in 1..=4 {
        journal.grant(entry(id), Change::Granted, AT);
    }
    journal.commit().unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    // Flip one character of the third record (a new journal starts empty: no NextId yet).
    let third = text.match_indices('\n').nth(1).unwrap().0 + 20;
    text.replace_range(third..third + 1, "#");
    std::fs::write(&path, &text).unwrap();
    let (_, recovered) = Journal::open(&path).unwrap();
    assert_eq!(ids(&recovered), [1, 2]);
    assert_eq!(recovered.damage, Some((3, 2)));
    // A truncated last line is damage too.
    std::fs::write(&path, &text[..text.len() / 2 + 3]).unwrap();
    let (_, recovered) = Journal::open(&path).unwrap();
    assert!(recovered.damage.is_some());
}

#[test]
fn ids_outside_the_valid_range_are_dropped() {
    let huge = grant_json(7).replace("\"id\":7", &format!("\"id\":{}", u64::MAX));
    let zero = grant_json(7).replace("\"id\":7", "\"id\":0");
    let too_far = grant_json(7).replace("\"id\":7", &format!("\"id\":{}", MAX_LEASE_ID + 1));
    let text = [
        line(&huge),
        line(&zero),
        line(&too_far),
        line(&grant_json(3)),
        line(&json(&Record::End(u64::MAX))),
        line(&json(&Record::NextId(u64::MAX))),
        line(&json(&Record::NextId(0))),
    ]
    .concat();
    assert_eq!(recovered_ids(&text), [3]);
    let recovered = replay_str(&text);
    assert_eq!(recovered.dropped, 6);
    assert_eq!(recovered.damage, None);
    // Nothing out of range moves the counter: the next id follows the one valid lease.
    assert_eq!(recovered.next_id, 4);
    // The largest valid id is kept, and the counter stays in range after it.
    let last = grant_json(7).replace("\"id\":7", &format!("\"id\":{MAX_LEASE_ID}"));
    let recovered = replay_str(&line(&last));
    assert_eq!(ids(&recovered), [MAX_LEASE_ID]);
    assert_eq!(recovered.next_id, MAX_LEASE_ID + 1);
}

#[test]
fn a_journal_written_before_ipv6_only_sockets_is_read_as_it_was_meant() {
    let old = grant_json(4).replace(r#","v6_only":false"#, "");
    assert_ne!(old, grant_json(4));
    let recovered = replay_str(&line(&old));
    assert_eq!(ids(&recovered), [4]);
    assert!(!recovered.leases[0].sockets[0].v6_only);
}

#[test]
fn a_lease_without_sockets_or_with_port_0_or_stray_cookies_is_dropped() {
    let none = grant_json(1).replace(
        r#""sockets":[{"transport":"Tcp","addr":"127.0.0.1:8080","listening":true,"v6_only":false}]"#,
        r#""sockets":[]"#,
    );
    assert_ne!(none, grant_json(1));
    let port0 = grant_json(2).replace("127.0.0.1:8080", "127.0.0.1:0");
    let cookies = grant_json(3).replace(r#""cookies":[77]"#, r#""cookies":[77,78]"#);
    assert_ne!(cookies, grant_json(3));
    let mut many = entry(4);
    many.sockets = vec![many.sockets[0]; MAX_SOCKETS + 1];
    many.cookies.clear();
    let many = json(&Record::Grant(many));
    // Without cookies at all (an older journal) a lease is fine.
    let mut old = entry(6);
    old.cookies.clear();
    let old = json(&Record::Grant(old)).replace(r#","cookies":[]"#, "");
    let text = [
        line(&none),
        line(&port0),
        line(&cookies),
        line(&many),
        line(&grant_json(5)),
        line(&old),
    ]
    .concat();
    assert_eq!(recovered_ids(&text), [5, 6]);
    let recovered = replay_str(&text);
    assert_eq!(recovered.dropped, 4);
    // Their ids were valid, and count for the next id all the same.
    assert_eq!(recovered.next_id, 7);
}

/// A number (a port told, no socket held) comes back a number; the flag is written only when
/// set, so every other lease's line reads as before, and a line that says number and names
/// socket cookies, which no daemon writes, is dropped.
#[test]
fn a_number_comes_back_a_number_and_only_a_number_says_so() {
    let mut number = entry(1);
    number.cookies.clear();
    number.number = true;
    let number = json(&Record::Grant(number));
    assert!(
        number.contains(r#","cookies":[],"number":true}"#),
        "{number}"
    );
    assert!(!grant_json(2).contains("number"), "{}", grant_json(2));
    let with_cookies = number.replace(r#""cookies":[]"#, r#""cookies":[77]"#);
    let text = [line(&number), line(&grant_json(2)), line(&with_cookies)].concat();
    let recovered = replay_str(&text);
    assert_eq!(ids(&recovered), [1, 2]);
    assert!(recovered.leases[0].number);
    assert!(!recovered.leases[1].number);
    assert_eq!(recovered.dropped, 1);
}

#[test]
fn a_huge_line_is_skipped_unheld_and_recovery_goes_on_after_it() {
    let mut big = entry(1);
    big.name = "x".repeat(1 << 20);
    let big = json(&Record::Grant(big));
    let garbage = "y".repeat(1 << 20);
    let text = [line(&big), garbage, "\n".into(), line(&grant_json(2))].concat();
    assert_eq!(recovered_ids(&text), [2]);

    let mut lines = Lines::new(text.as_bytes());
    let recovered = record::replay_lines(&mut lines);
    assert_eq!(ids(&recovered), [2]);
    assert_eq!(recovered.dropped, 2);
    assert_eq!(recovered.damage, None);
    assert!(
        lines.buffer_capacity() <= MAX_LINE,
        "a 1 MiB line grew the line buffer to {} bytes",
        lines.buffer_capacity()
    );
    // The same through a small reader buffer, and at the end of a file without a newline.
    let unterminated = [line(&grant_json(2)), "z".repeat(MAX_LINE + 1)].concat();
    let reader = std::io::BufReader::with_capacity(7, unterminated.as_bytes());
    let recovered = replay(reader);
    assert_eq!((ids(&recovered), recovered.dropped), (vec![2], 1));
    // A line of exactly the limit is read (and here, not being a record, is damage).
    let at_limit = [line(&grant_json(2)), "z".repeat(MAX_LINE), "\n".into()].concat();
    let recovered = replay_str(&at_limit);
    assert_eq!(recovered.damage, Some((2, 1)));
}

#[test]
fn the_high_water_mark_outlives_ended_leases_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.journal");
    let (mut journal, _) = Journal::open(&path).unwrap();
    for id in 1..=5 {
        journal.grant(entry(id), Change::Granted, AT);
    }
    journal.end(5, EndReason::Released, AT);
    journal.end(4, EndReason::Released, AT);
    journal.commit().unwrap();
    // The daemon does not know the table's counter here yet: 0 must not lose the mark.
    journal.rewrite([entry(1)].iter(), 0).unwrap();
    let (_, recovered) = Journal::open(&path).unwrap();
    assert_eq!(ids(&recovered), [1]);
    assert_eq!(recovered.next_id, 6);
    // A higher counter from the caller wins.
    let (mut journal, _) = Journal::open(&path).unwrap();
    journal.rewrite(std::iter::empty(), 40).unwrap();
    let (_, recovered) = Journal::open(&path).unwrap();
    assert_eq!((ids(&recovered), recovered.next_id), (vec![], 40));
    // An End names an id too.
    let text = [line(&grant_json(2)), line(&json(&Record::End(9)))].concat();
    assert_eq!(replay_str(&text).next_id, 10);
}

#[test]
fn a_lease_that_came_and_went_unwritten_leaves_only_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.journal");
    let (mut journal, _) = Journal::open(&path).unwrap();
    journal.grant(entry(1), Change::Granted, AT);
    journal.commit().unwrap();
    let before = std::fs::read(&path).unwrap().len();
    // Granted and ended before any commit (a grant refused because the disk was full): no
    // record of either, only the id's mark.
    for round in 0..100 {
        journal.grant(entry(2 + round), Change::Granted, AT);
        journal.end(2 + round, EndReason::Released, AT);
    }
    assert!(journal.pending.is_empty(), "{:?}", journal.pending);
    // A lease re-granted (tied) several times before a commit keeps its last grant only.
    for pid in 1..=3 {
        journal.grant(Entry { pid, ..entry(1) }, Change::Granted, AT);
    }
    assert_eq!(journal.pending.len(), 1);
    journal.commit().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.len() - before < 600, "{text}");
    let recovered = replay_str(&text);
    assert_eq!(ids(&recovered), [1]);
    assert_eq!(recovered.leases[0].pid, 3);
    assert_eq!(recovered.next_id, 102);
}

#[test]
fn a_journal_that_is_a_symlink_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "root's data\n").unwrap();
    let path = dir.path().join("leases.journal");
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let err = Journal::open(&path).err().expect("a symlink is refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's data\n");
}

#[test]
fn a_journal_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.journal");
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
    let err = Journal::open(&path).err().expect("a FIFO is refused");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let err = Journal::open(&path).err().expect("a directory is refused");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn a_stale_temporary_is_unlinked_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "root's data\n").unwrap();
    let path = dir.path().join("leases.journal");
    let tmp = dir.path().join("leases.tmp");
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    let (mut journal, _) = Journal::open(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    journal.grant(entry(1), Change::Granted, AT);
    journal.rewrite([entry(1)].iter(), 0).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's data\n");
    assert!(std::fs::symlink_metadata(&tmp).is_err());
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(ids(&Journal::open(&path).unwrap().1), [1]);
}

#[test]
fn a_directory_others_can_write_or_another_user_owns_is_refused() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("leases.journal");
    for mode in [0o777, 0o1777, 0o770] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = Journal::open(&path)
            .err()
            .expect("an open directory is refused");
        assert!(err.to_string().contains(dir.to_str().unwrap()), "{err}");
        assert!(err.to_string().contains(&format!("{mode:o}")), "{err}");
        assert!(!path.exists());
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let err = Journal::open(&path)
            .err()
            .expect("another user's directory is refused");
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }
}

/// A tmpfs of 12 KiB (three pages) mounted on a temporary directory, unmounted on drop; `None`
/// (with a SKIPPED line) when not root or when mounting fails.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(test: &str) -> Option<TinyFs> {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED {test}: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=12k,mode=0700", "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Some(TinyFs { dir }),
            other => {
                println!("SKIPPED {test}: cannot mount a tmpfs: {other:?}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_leaves_no_torn_line_and_the_records_are_retried() {
    let Some(fs) = TinyFs::mount("a_full_disk_leaves_no_torn_line_and_the_records_are_retried")
    else {
        return;
    };
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 4096]).unwrap();
    let path = fs.path().join("leases.journal");
    let (mut journal, _) = Journal::open(&path).unwrap();
    let mut committed = Vec::new();
    let mut id = 1;
    let failure = loop {
        assert!(id < 1000, "12 KiB never filled up");
        journal.grant(entry(id), Change::Granted, AT);
        match journal.commit() {
            Ok(()) => committed.push(id),
            Err(err) => break err,
        }
        id += 1;
    };
    assert_eq!(failure.kind(), std::io::ErrorKind::StorageFull, "{failure}");
    assert!(
        failure.to_string().contains(path.to_str().unwrap()),
        "{failure}"
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        bytes.last(),
        Some(&b'\n'),
        "the journal ends on a torn line"
    );
    assert_eq!(ids(&replay(bytes.as_slice())), committed);

    // A newer record waits behind the failed one; a second failure changes nothing on disk.
    let retried = id;
    journal.grant(entry(retried + 1), Change::Granted, AT);
    journal.end(1, EndReason::Released, AT);
    assert!(journal.commit().is_err(), "the disk is still full");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // A compaction needs room for a second file: it fails and leaves the old log and the
    // pending records alone.
    let live: Vec<Entry> = committed.iter().map(|&id| entry(id)).collect();
    assert!(journal.rewrite(live.iter(), 0).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(!fs.path().join("leases.tmp").exists());

    std::fs::remove_file(&filler).unwrap();
    journal.commit().expect("there is room again");
    committed.retain(|&id| id != 1);
    committed.extend([retried, retried + 1]);
    let text = std::fs::read_to_string(&path).unwrap();
    let recovered = replay_str(&text);
    assert_eq!(ids(&recovered), committed);
    assert_eq!(recovered.damage, None);
    assert_eq!(recovered_ids(&text), committed);
}

fn socket() -> impl Strategy<Value = GrantedSocket> {
    let ip = prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    ];
    (
        any::<bool>(),
        ip,
        1..=u16::MAX,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(udp, ip, port, listening, v6_only)| GrantedSocket {
            transport: if udp { Transport::Udp } else { Transport::Tcp },
            addr: SocketAddr::new(ip, port),
            listening,
            v6_only,
        })
}

/// A lease the daemon could have written.
fn valid_entry() -> impl Strategy<Value = Entry> {
    (
        1..=MAX_LEASE_ID,
        any::<i32>(),
        any::<u64>(),
        any::<(u32, u32, u64)>(),
        ".{0,20}",
        proptest::collection::vec(socket(), 1..=4),
        proptest::option::of("[a-z]{1,10}"),
        prop_oneof![Just(Some(true)), Just(Some(false)), Just(None)],
    )
        .prop_map(
            // `cookies`: with cookies, without (an older journal), or `None`: a number.
            |(id, pid, start_time, (uid, gid, since), name, sockets, service, cookies)| Entry {
                id,
                pid,
                start_time,
                uid,
                gid,
                name,
                since,
                cookies: if cookies == Some(true) {
                    (0..sockets.len() as u64).collect()
                } else {
                    Vec::new()
                },
                sockets,
                service,
                number: cookies.is_none(),
            },
        )
}

/// Any record, valid or not.
fn any_record() -> impl Strategy<Value = Record> {
    let id = prop_oneof![Just(0), Just(u64::MAX), 1..=MAX_LEASE_ID + 2];
    prop_oneof![
        (valid_entry(), id.clone(), any::<bool>()).prop_map(|(mut entry, id, no_sockets)| {
            entry.id = id;
            if no_sockets {
                entry.sockets.clear();
            }
            Record::Grant(entry)
        }),
        id.clone().prop_map(Record::End),
        id.prop_map(Record::NextId),
    ]
}

fn valid(entry: &Entry) -> bool {
    (1..=MAX_LEASE_ID).contains(&entry.id)
        && (1..=MAX_SOCKETS).contains(&entry.sockets.len())
        && entry.sockets.iter().all(|s| s.addr.port() != 0)
        && (entry.cookies.is_empty() || entry.cookies.len() == entry.sockets.len())
        && (!entry.number || entry.cookies.is_empty())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_reader(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let recovered = replay(bytes.as_slice());
        prop_assert!(recovered.next_id >= 1);
        prop_assert!(recovered.leases.iter().all(valid));
    }

    #[test]
    fn arbitrary_lines_never_panic_and_only_valid_leases_come_back(
        lines in proptest::collection::vec(
            prop_oneof![
                any_record().prop_map(|r| { let mut out = Vec::new(); encode(&r, &mut out); out }),
                // A record with one byte changed.
                (any_record(), any::<usize>(), any::<u8>()).prop_map(|(r, at, byte)| {
                    let mut out = Vec::new();
                    encode(&r, &mut out);
                    let at = at % out.len();
                    out[at] = byte;
                    out
                }),
                proptest::collection::vec(any::<u8>(), 0..200),
            ],
            0..40,
        )
    ) {
        let bytes = lines.concat();
        let recovered = replay(bytes.as_slice());
        prop_assert!(recovered.leases.iter().all(valid));
        prop_assert!((1..=MAX_LEASE_ID + 1).contains(&recovered.next_id));
        prop_assert!(recovered.leases.iter().all(|e| e.id < recovered.next_id));
        // Through a tiny reader buffer, lines split across reads: the same result.
        let small = std::io::BufReader::with_capacity(3, bytes.as_slice());
        let again = replay(small);
        prop_assert_eq!(again.leases, recovered.leases);
        prop_assert_eq!(again.next_id, recovered.next_id);
        prop_assert_eq!(again.damage, recovered.damage);
    }

    #[test]
    fn valid_records_round_trip(
        entries in proptest::collection::vec(valid_entry(), 0..30),
        ends in proptest::collection::vec(any::<bool>(), 30),
    ) {
        let mut bytes = Vec::new();
        let mut model = std::collections::BTreeMap::new();
        let mut next_id = 1;
        for (entry, end) in entries.iter().zip(&ends) {
            encode(&Record::Grant(entry.clone()), &mut bytes);
            model.insert(entry.id, entry.clone());
            if *end {
                encode(&Record::End(entry.id), &mut bytes);
                model.remove(&entry.id);
            }
            next_id = next_id.max(entry.id + 1);
        }
        let recovered = replay(bytes.as_slice());
        prop_assert_eq!(recovered.damage, None);
        prop_assert_eq!(recovered.dropped, 0);
        prop_assert_eq!(&recovered.leases, &model.values().cloned().collect::<Vec<_>>());
        prop_assert_eq!(recovered.next_id, next_id);
        // A snapshot of what came back reads back the same.
        let (snapshot, _) = encode_snapshot(recovered.leases.iter(), recovered.next_id);
        let again = replay(snapshot.as_slice());
        prop_assert_eq!(again.leases, recovered.leases);
        prop_assert_eq!(again.next_id, recovered.next_id);
        // Every line ends with a newline: nothing torn.
        prop_assert!(snapshot.lines().all(|l| l.is_ok()));
    }
}
