//! `portctl watch --json` against a real daemon: one line per event, in order, for a scripted
//! lease, refusal, expiry and release.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use portbroker::{Error, SocketSpec};
use serde_json::Value;

use support::{loopback_any, Daemon};

const DEADLINE: Duration = Duration::from_secs(10);

/// The lines `stream` yields, through a channel, so that they are read with a deadline.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

struct Watcher {
    child: Child,
    stdout: Receiver<String>,
}

impl Watcher {
    /// `portctl watch ARGS`, once it says (on stderr) that it is subscribed.
    fn start(daemon: &Daemon, args: &[&str]) -> Watcher {
        let mut child = daemon
            .portctl()
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = lines_of(child.stderr.take().unwrap());
        let stdout = lines_of(child.stdout.take().unwrap());
        let said = stderr.recv_timeout(DEADLINE).unwrap_or_else(|e| {
            panic!(
                "portctl watch said nothing on stderr ({e}):\n{}",
                daemon.log()
            )
        });
        assert!(said.contains("watching the broker at"), "{said}");
        Watcher { child, stdout }
    }

    fn next_line(&self, daemon: &Daemon) -> String {
        self.stdout
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no event line in time ({e}):\n{}", daemon.log()))
    }

    fn next_json(&self, daemon: &Daemon) -> Value {
        let line = self.next_line(daemon);
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_json_prints_one_line_per_event_in_order() {
    let daemon = Daemon::start();
    let watcher = Watcher::start(&daemon, &["--json"]);
    let broker = daemon.broker();
    let me = std::process::id();

    let first = broker.lease([loopback_any()]).unwrap();
    let granted = watcher.next_json(&daemon);
    assert_eq!(granted["event"], "granted", "{granted}");
    assert_eq!(granted["id"], first.id().0);
    assert_eq!(granted["pid"], me);
    assert_eq!(granted["state"], "connection");
    assert_eq!(
        granted["sockets"][0]["addr"],
        first.local_addr().to_string()
    );
    assert_eq!(granted["sockets"][0]["proto"], "tcp");
    assert_eq!(granted["sockets"][0]["listening"], true);
    assert_eq!(granted["sockets"][0]["v6_only"], false, "as in list --json");
    let seq = granted["seq"].as_u64().unwrap();

    let taken = SocketSpec::tcp(Some(first.local_addr().ip()), first.local_addr().port());
    assert!(matches!(broker.lease([taken]), Err(Error::Refused(_))));
    let refused = watcher.next_json(&daemon);
    assert_eq!(refused["event"], "refused", "{refused}");
    assert_eq!(refused["seq"], seq + 1);
    assert_eq!(refused["pid"], me);
    let reason = refused["reason"].as_str().unwrap();
    assert!(reason.contains("is in use"), "{reason}");

    let second = broker.lease([loopback_any()]).unwrap();
    let granted = watcher.next_json(&daemon);
    assert_eq!(granted["event"], "granted", "{granted}");
    assert_eq!(granted["id"], second.id().0);
    assert_eq!(granted["seq"], seq + 2);
    second.renew(Duration::from_millis(50)).unwrap();
    let expired = watcher.next_json(&daemon);
    assert_eq!(
        expired,
        serde_json::json!({"seq": seq + 3, "event": "expired", "id": second.id().0})
    );

    let id = first.id().0;
    first.release().unwrap();
    let released = watcher.next_json(&daemon);
    assert_eq!(
        released,
        serde_json::json!({"seq": seq + 4, "event": "released", "id": id})
    );
    drop(second);
}

#[test]
fn watch_prints_a_readable_line_per_event() {
    let daemon = Daemon::start();
    let watcher = Watcher::start(&daemon, &[]);
    let broker = daemon.broker();
    let lease = broker.lease([loopback_any()]).unwrap();
    let id = lease.id();
    let line = watcher.next_line(&daemon);
    let expected = format!("granted lease {id}: tcp:{}", lease.local_addr());
    assert!(line.contains(&expected), "{line}");
    lease.release().unwrap();
    let line = watcher.next_line(&daemon);
    assert!(line.ends_with(&format!("released lease {id}")), "{line}");
}

#[test]
fn the_library_reads_events_on_a_connection_of_its_own() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let mut watch = broker.watch().unwrap();
    watch.set_timeout(Some(DEADLINE)).unwrap();
    let lease = broker.lease([loopback_any()]).unwrap();
    let id = lease.id();
    drop(lease);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match watch.next_event().unwrap() {
            portbroker::Watched::Event { event, .. } => seen.push(event),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(&seen[0], portbroker::Event::Granted { lease } if lease.id == id));
    assert_eq!(seen[1], portbroker::Event::Released { id });
}

/// A watcher that does not read never slows the broker: its events wait in a bounded queue,
/// the rest are counted, and once it reads again it is told how many it missed, then gets
/// every event after, in order.
#[test]
fn a_watcher_that_does_not_read_misses_events_and_is_told_how_many() {
    const REFUSALS: u64 = 10_000;
    let policy = "[limits]\nrequests_per_sec_per_uid = 100000\n\n[[rule]]\nwho = \"everyone\"\nports = [\"pool\"]\naddresses = [\"127.0.0.1\"]\n";
    let daemon = Daemon::start_for_all_users(Some(policy), &[]);
    let broker = daemon.broker();
    let mut watch = broker.watch().unwrap();
    watch.set_timeout(Some(DEADLINE)).unwrap();
    let lease = broker.lease([loopback_any()]).unwrap();
    let taken = SocketSpec::tcp(Some(lease.local_addr().ip()), lease.local_addr().port());
    for _ in 0..REFUSALS {
        // Each answered promptly (within the library's timeout), however full the watcher.
        assert!(matches!(broker.lease([taken]), Err(Error::Refused(_))));
    }
    let id = lease.id();
    lease.release().unwrap();
    let (mut events, mut missed, mut misses) = (0u64, 0u64, 0);
    let mut last_seq = None;
    let mut released = false;
    // Every event is received or counted as missed; the last ones may be told as a count.
    while events + missed < REFUSALS + 2 {
        match watch.next_event().unwrap() {
            portbroker::Watched::Missed { count } => {
                assert!(count > 0);
                missed += count;
                misses += 1;
            }
            portbroker::Watched::Event { seq, event } => {
                events += 1;
                if let Some(last) = last_seq {
                    assert!(seq > last, "{seq} after {last}");
                }
                last_seq = Some(seq);
                released |= event == (portbroker::Event::Released { id });
            }
        }
    }
    assert!(misses >= 1, "a watcher that never read missed nothing");
    assert_eq!(events + missed, REFUSALS + 2, "every event got or counted");
    assert!(events >= 1024, "the queue held {events}");
    assert!(released || missed > 0);
    // Nothing more was owed.
    watch.set_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(watch.next_event().is_err());
}
