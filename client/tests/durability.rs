//! Leases survive the daemon: SIGKILL it, start it again, and every lease whose holder lives
//! is back with its id and holder; a damaged journal is reported and grants nothing twice.

mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Child;
use std::time::Duration;

use portbroker::{Broker, ErrorKind, Lease, LeaseId, SocketSpec};
use support::{spawn_and_read_line, wait_until, Daemon};

/// A pool of its own, outside the slices the harness gives other daemons.
const POOL: &str = "65000-65535";

fn any_port() -> SocketSpec {
    SocketSpec::tcp(Some(Ipv4Addr::LOCALHOST.into()), 0)
}

fn restart(old: &Daemon) -> Daemon {
    Daemon::start_with(&["--socket", old.socket.to_str().unwrap(), "--pool", POOL])
}

#[test]
fn leases_survive_a_killed_daemon_and_dead_holders_lose_theirs() {
    let mut daemon = Daemon::start_with(&["--pool", POOL]);
    let broker = daemon.broker();
    let held: Vec<Lease> = (0..200)
        .map(|_| broker.lease([any_port()]).unwrap())
        .collect();
    let ids: HashSet<LeaseId> = held.iter().map(Lease::id).collect();

    // Holders that will die while the daemon is down.
    let mut mortal: Vec<Child> = (0..3)
        .map(|_| {
            let (child, line) = spawn_and_read_line(daemon.portctl().args([
                "run",
                "-q",
                "tcp:127.0.0.1:0",
                "--",
                "python3",
                "-c",
                "import sys; print('ready', flush=True); sys.stdin.read()",
            ]));
            assert_eq!(line, "ready");
            child
        })
        .collect();
    let mortal_ids: Vec<LeaseId> = broker
        .list()
        .unwrap()
        .into_iter()
        .filter(|l| !ids.contains(&l.id))
        .map(|l| l.id)
        .collect();
    assert_eq!(mortal_ids.len(), 3);

    // Eight clients lease and release while the daemon is killed under them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop) = (daemon.broker(), stop.clone());
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    match client.lease([any_port()]) {
                        Ok(lease) => drop(lease),
                        Err(_) => break, // the daemon is gone
                    }
                }
            })
        })
        .collect();
    daemon.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in churn {
        thread.join().unwrap();
    }
    for child in &mut mortal {
        let _ = child.kill();
        let _ = child.wait();
    }

    let again = restart(&daemon);
    let listed = again.broker().list().unwrap();
    let me = std::process::id() as i32;
    for lease in &held {
        let info = listed
            .iter()
            .find(|l| l.id == lease.id())
            .unwrap_or_else(|| panic!("lease {} was not recovered:\n{}", lease.id(), again.log()));
        assert_eq!(info.holder.pid, me);
        assert_eq!(info.sockets[0].addr, lease.local_addr());
    }
    for id in &mortal_ids {
        assert!(
            !listed.iter().any(|l| l.id == *id),
            "lease {id} of a dead holder was kept"
        );
    }
    // None of the recovered ports goes to anyone else.
    let other: Broker = again.broker();
    for lease in held.iter().take(20) {
        let err = other
            .lease_str(&[&format!("tcp:{}", lease.local_addr())])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InUse, "{err}");
    }
    // New leases get new ids.
    let fresh = other.lease([any_port()]).unwrap();
    assert!(fresh.id().0 > ids.iter().map(|i| i.0).max().unwrap());
    assert!(
        wait_until(Duration::from_secs(2), || again
            .log()
            .contains("recovered from the journal")),
        "{}",
        again.log()
    );
}

fn damaged_journal_test(damage: impl Fn(&mut Vec<u8>)) {
    let mut daemon = Daemon::start_with(&["--pool", POOL]);
    let broker = daemon.broker();
    let held: Vec<Lease> = (0..20)
        .map(|_| broker.lease([any_port()]).unwrap())
        .collect();
    daemon.kill9();
    let journal = daemon.dir().join("leases.journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    damage(&mut bytes);
    std::fs::write(&journal, &bytes).unwrap();

    let again = restart(&daemon);
    assert!(
        wait_until(Duration::from_secs(2), || again
            .log()
            .contains("the journal is damaged at line")),
        "a damaged journal must be reported:\n{}",
        again.log()
    );
    // Every port stays with its holder: recovered, or refused by the kernel.
    let other = again.broker();
    for lease in &held {
        let err = other
            .lease_str(&[&format!("tcp:{}", lease.local_addr())])
            .unwrap_err();
        assert!(
            err.is_in_use(),
            "{} granted twice: {err:?}",
            lease.local_addr()
        );
    }
    other.lease([any_port()]).expect("the daemon serves on");
}

#[test]
fn a_truncated_journal_is_reported_and_grants_nothing_twice() {
    damaged_journal_test(|bytes| bytes.truncate(bytes.len() / 2 + 7));
}

#[test]
fn a_corrupted_journal_is_reported_and_grants_nothing_twice() {
    damaged_journal_test(|bytes| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
    });
}
