//! The broker's history, `portctl log`: every lease's grant and end with why it ended, in
//! order, kept in the journal through a restart, bounded however many leases come and go, and
//! shown to people with process names escaped.

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portbroker::{Lease, LeaseId};
use portbroker_proto::{encode_request, Request, Response};
use serde_json::Value;
use support::raw::{expect_hello, hello_frame, raw, read_response, PROMPT};
use support::{loopback_any, spawn_and_read_line, wait_until, Daemon};

/// The previous generations the daemon keeps, and their bytes in all (`journal::generations`).
const MAX_GENERATIONS: usize = 8;
const MAX_HISTORY_BYTES: u64 = 32 << 20;

/// Leases each of four clients takes and releases, to make more generations than are kept.
const LEASES_PER_WORKER: usize = 9_000;

/// `portctl log --json -n N` against `daemon`: one object per event, oldest first.
fn log_json(daemon: &Daemon, n: usize) -> Vec<Value> {
    let output = daemon
        .portctl()
        .args(["log", "--json", "-n", &n.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "portctl log: {output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// (event, reason) of each event of lease `id`, in order.
fn story(events: &[Value], id: LeaseId) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .filter(|e| e["id"] == id.0)
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["reason"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn granted_then(reason: &str) -> Vec<(String, Option<String>)> {
    vec![
        ("granted".into(), None),
        ("ended".into(), Some(reason.into())),
    ]
}

/// A policy under which this test's own user is an administrator (it revokes), whoever runs it.
fn admin_policy() -> String {
    format!(
        "[admin]\ngroups = [\"{}\"]\n\n[[rule]]\nwho = \"everyone\"\nports = [\"pool\"]\n",
        nix::unistd::getgid()
    )
}

/// A process that does nothing until killed.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A lease on a connection of its own that closes without a word: the raw protocol, whose
/// granted socket is dropped unread with the frame that carried it.
fn lease_and_hang_up(daemon: &Daemon) -> LeaseId {
    let mut stream = raw(daemon);
    stream
        .write_all(&hello_frame(portbroker::PROTOCOL_VERSION))
        .unwrap();
    expect_hello(daemon, &mut stream, "the Hello");
    let lease = Request::Lease {
        sockets: vec![loopback_any()],
    };
    stream.write_all(&encode_request(&lease).unwrap()).unwrap();
    match read_response(&mut stream, PROMPT) {
        Response::Granted { id, .. } => id,
        other => panic!("lease refused: {other:?}"),
    }
}

fn listed(daemon: &Daemon, id: LeaseId) -> bool {
    daemon.broker().list().unwrap().iter().any(|l| l.id == id)
}

#[test]
fn the_log_says_when_and_why_each_lease_ended_in_order() {
    let daemon = Daemon::start_for_all_users(Some(&admin_policy()), &[]);
    let broker = daemon.broker();

    let released = broker.lease([loopback_any()]).unwrap();
    let released_id = released.id();
    released.release().unwrap();

    let revoked = broker.lease([loopback_any()]).unwrap();
    broker.revoke(revoked.id()).unwrap();
    assert!(wait_until(Duration::from_secs(5), || revoked
        .is_revoked()
        .unwrap()));

    let expiring = broker.lease([loopback_any()]).unwrap();
    expiring.renew(Duration::from_millis(50)).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || expiring.is_expired().unwrap()),
        "the lease did not expire:\n{}",
        daemon.log()
    );

    // Tied to a process that is killed.
    let sleeper = Sleeper(Command::new("sleep").arg("60").spawn().unwrap());
    let tied = broker.lease([loopback_any()]).unwrap();
    let tied_id = tied.id();
    tied.tie_to_process(sleeper.0.id() as i32).unwrap();
    tied.detach();
    drop(sleeper);
    assert!(
        wait_until(Duration::from_secs(5), || !listed(&daemon, tied_id)),
        "the tied lease outlived its process:\n{}",
        daemon.log()
    );

    let hung_up = lease_and_hang_up(&daemon);
    assert!(
        wait_until(Duration::from_secs(5), || !listed(&daemon, hung_up)),
        "the lease outlived its connection:\n{}",
        daemon.log()
    );

    let events = log_json(&daemon, 100);
    assert_eq!(story(&events, released_id), granted_then("released"));
    assert_eq!(story(&events, revoked.id()), granted_then("revoked"));
    assert_eq!(story(&events, expiring.id()), granted_then("expired"));
    assert_eq!(
        story(&events, tied_id),
        [
            ("granted".into(), None),
            ("tied".into(), None),
            ("ended".into(), Some("process_exited".into())),
        ]
    );
    assert_eq!(story(&events, hung_up), granted_then("connection_closed"));
    // In the order they happened, and at times that never go back.
    let order: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    let ids = [released_id, revoked.id(), expiring.id(), tied_id, hung_up].map(|id| id.0);
    let firsts: Vec<usize> = ids
        .iter()
        .map(|id| order.iter().position(|o| o == id).unwrap())
        .collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{events:#?}");
    let times: Vec<u64> = events
        .iter()
        .map(|e| e["time_unix_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // Each with its holder and its socket.
    let tied_end = events.iter().rfind(|e| e["id"] == tied_id.0).unwrap();
    assert_eq!(tied_end["name"], "sleep");
    assert_eq!(tied_end["sockets"].as_array().unwrap().len(), 1);
    assert_eq!(
        tied_end["uid"].as_u64(),
        Some(u64::from(nix::unistd::getuid().as_raw()))
    );
    // -n keeps the newest.
    let last = log_json(&daemon, 2);
    assert_eq!(story(&last, hung_up), granted_then("connection_closed"));
    assert_eq!(last.len(), 2);
}

#[test]
fn the_history_survives_a_killed_daemon() {
    let mut daemon = Daemon::start();
    let broker = daemon.broker();
    let ended = broker.lease([loopback_any()]).unwrap();
    let ended_id = ended.id();
    ended.release().unwrap();
    let kept: Lease = broker.lease([loopback_any()]).unwrap();
    daemon.kill9();
    let again = Daemon::start_with(&["--socket", daemon.socket.to_str().unwrap()]);
    // The journal holds its events as they were: nothing more, nothing lost.
    let events = log_json(&again, 100);
    assert_eq!(story(&events, ended_id), granted_then("released"));
    assert_eq!(story(&events, kept.id()), [("granted".into(), None)]);
    // The handle re-attaches to the restarted daemon, and its release is history too.
    let kept_id = kept.id();
    kept.release().unwrap();
    let events = log_json(&again, 100);
    assert_eq!(story(&events, kept_id), granted_then("released"));
}

#[test]
fn many_compactions_keep_the_history_bounded_with_the_newest_events() {
    let daemon = Daemon::start();
    let dir = daemon.dir().to_owned();
    let generations = || -> Vec<u64> {
        (1..=MAX_GENERATIONS + 1)
            .filter_map(|k| std::fs::metadata(dir.join(format!("leases.{k}"))).ok())
            .map(|m| m.len())
            .collect()
    };
    // A compaction keeps a generation of at least 1 MiB, some three thousand leases: these
    // make a dozen.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let broker = daemon.broker();
            std::thread::spawn(move || {
                let mut last = LeaseId(0);
                for _ in 0..LEASES_PER_WORKER {
                    let lease = broker.lease([loopback_any()]).unwrap();
                    last = lease.id();
                    lease.release().unwrap();
                }
                last
            })
        })
        .collect();
    let lasts: Vec<LeaseId> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let sizes = generations();
    assert_eq!(
        sizes.len(),
        MAX_GENERATIONS,
        "the leases made {} generations (at most {MAX_GENERATIONS} are kept)",
        sizes.len()
    );
    assert!(sizes.iter().sum::<u64>() <= MAX_HISTORY_BYTES, "{sizes:?}");
    // The newest events are there: the very last lease's, after the events of the last
    // thousands of leases.
    let broker = daemon.broker();
    let newest = broker.lease([loopback_any()]).unwrap();
    let newest_id = newest.id();
    newest.release().unwrap();
    let events = log_json(&daemon, 10_000);
    assert_eq!(events.len(), 10_000);
    let tail: Vec<(u64, &str)> = events[events.len() - 2..]
        .iter()
        .map(|e| (e["id"].as_u64().unwrap(), e["event"].as_str().unwrap()))
        .collect();
    assert_eq!(tail, [(newest_id.0, "granted"), (newest_id.0, "ended")]);
    let ids: std::collections::BTreeSet<u64> =
        events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    for last in lasts.iter().filter(|last| last.0 + 4_000 > newest_id.0) {
        assert!(
            ids.contains(&last.0),
            "lease {last} is not among the newest"
        );
    }
}

/// Renames itself to `ev<ESC>[31m<LF>il`, says so, and waits for its stdin to close.
const RENAME_THEN_WAIT: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None)
assert libc.prctl(15, b"ev\x1b[31m\nil", 0, 0, 0) == 0
print("renamed", flush=True)
sys.stdin.read()
"#;

#[test]
fn the_log_escapes_a_hostile_process_name() {
    let daemon = Daemon::start();
    let (mut child, line) =
        spawn_and_read_line(Command::new("python3").args(["-c", RENAME_THEN_WAIT]));
    assert_eq!(line, "renamed");
    let broker = daemon.broker();
    let lease = broker.lease([loopback_any()]).unwrap();
    lease.tie_to_process(child.id() as i32).unwrap();
    let id = lease.id();
    lease.detach();
    let _ = child.kill();
    let _ = child.wait();
    assert!(wait_until(Duration::from_secs(5), || !listed(&daemon, id)));

    let output = daemon
        .portctl()
        .arg("log")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let raw_control = output
        .stdout
        .iter()
        .any(|&b| (b < 0x20 && b != b'\n') || b == 0x7f);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        !raw_control,
        "raw control characters in `portctl log`: {text:?}"
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!(" {id} ")))
        .collect();
    // Granted to this test, tied to the renamed process, ended with it: one line each.
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows[1].contains(r"ev\x1b[31m\nil"), "{text}");
    assert!(rows[2].contains("ended: process exited"), "{text}");
    // JSON keeps the name exact.
    let events = log_json(&daemon, 10);
    let tied = events.iter().find(|e| e["event"] == "tied").unwrap();
    assert_eq!(tied["name"], "ev\x1b[31m\nil");
}

#[test]
fn a_broker_without_a_journal_has_no_history() {
    let daemon = Daemon::start_with(&["--no-journal"]);
    let output = daemon.portctl().arg("log").output().unwrap();
    assert_eq!(output.status.code(), Some(77), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--no-journal"), "{stderr}");
}
