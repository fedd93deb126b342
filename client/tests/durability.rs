//! Leases survive the daemon: SIGKILL it, start it again, and every lease whose holder lives
//! is back with its id and holder; a damaged journal is reported and grants nothing twice.

mod support;

use std::collections::HashSet;
use std::process::Child;
use std::time::Duration;

use portbroker::{Broker, ErrorKind, Lease, LeaseId};
use support::{loopback_any, spawn_and_read_line, wait_until, Daemon};

/// Pools of their own, outside the slices the harness gives other daemons: one per test, so
/// that parallel tests do not exhaust each other's.
const POOL: &str = "65000-65299";
const POOL_2: &str = "65300-65379";
const POOL_3: &str = "65380-65459";
const POOL_4: &str = "65460-65479";
const POOL_6: &str = "65480-65499";
const POOL_5: &str = "65500-65535";

fn restart(old: &Daemon, pool: &str) -> Daemon {
    Daemon::start_with(&["--socket", old.socket.to_str().unwrap(), "--pool", pool])
}

#[test]
fn leases_survive_a_killed_daemon_and_dead_holders_lose_theirs() {
    let mut daemon = Daemon::start_with(&["--pool", POOL]);
    let broker = daemon.broker();
    let held: Vec<Lease> = (0..200)
        .map(|_| broker.lease([loopback_any()]).unwrap())
        .collect();
    let ids: HashSet<LeaseId> = held.iter().map(Lease::id).collect();

    // Holders that will die while the daemon is down.
    let mut mortal: Vec<Child> = (0..3)
        .map(|_| {
            let (child, line) = spawn_and_read_line(daemon.portctl().args(support::run_python(
                "tcp:127.0.0.1:0",
                support::READY_THEN_WAIT,
            )));
            assert_eq!(line, "ready");
            child
        })
        .collect();
    // portctl ties each lease to its program: the programs are the holders that will die.
    let mut mortal_leases = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            mortal_leases = broker
                .list()
                .unwrap()
                .into_iter()
                .filter(|l| !ids.contains(&l.id))
                .collect();
            mortal_leases.len() == 3 && mortal_leases.iter().all(|l| l.holder.name != "portctl")
        }),
        "{mortal_leases:?}"
    );
    let mortal_ids: Vec<LeaseId> = mortal_leases.iter().map(|l| l.id).collect();

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
                    match client.lease([loopback_any()]) {
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
    for lease in &mortal_leases {
        let pid = nix::unistd::Pid::from_raw(lease.holder.pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    for child in &mut mortal {
        let _ = child.wait(); // portctl exits with its program
    }

    let again = restart(&daemon, POOL);
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
    let fresh = other.lease([loopback_any()]).unwrap();
    assert!(fresh.id().0 > ids.iter().map(|i| i.0).max().unwrap());
    again.assert_logged(
        "recovered from the journal",
        Duration::from_secs(2),
        "the recovery is logged",
    );
}

fn damaged_journal_test(pool: &str, damage: impl Fn(&mut Vec<u8>)) {
    let mut daemon = Daemon::start_with(&["--pool", pool]);
    let broker = daemon.broker();
    let held: Vec<Lease> = (0..20)
        .map(|_| broker.lease([loopback_any()]).unwrap())
        .collect();
    daemon.kill9();
    let journal = daemon.dir().join("leases.journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    damage(&mut bytes);
    std::fs::write(&journal, &bytes).unwrap();

    let again = restart(&daemon, pool);
    again.assert_logged(
        "the journal is damaged at line",
        Duration::from_secs(2),
        "a damaged journal must be reported",
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
    other.lease([loopback_any()]).expect("the daemon serves on");
}

#[test]
fn a_truncated_journal_is_reported_and_grants_nothing_twice() {
    damaged_journal_test(POOL_2, |bytes| bytes.truncate(bytes.len() / 2 + 7));
}

#[test]
fn a_corrupted_journal_is_reported_and_grants_nothing_twice() {
    damaged_journal_test(POOL_3, |bytes| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
    });
}

/// A client's `Lease` stays valid through a restart of the daemon: the library connects
/// again by itself, re-attaches its leases, and goes on.
#[test]
fn a_lease_handle_stays_valid_through_a_daemon_restart() {
    let mut daemon = Daemon::start_with(&["--pool", POOL_4]);
    let broker = daemon.broker();
    let lease = broker.lease([loopback_any()]).unwrap();
    let id = lease.id();
    daemon.kill9();
    let again = restart(&daemon, POOL_4);

    // The next request reconnects and re-attaches on its own.
    let status = broker.status().expect("the library reconnects by itself");
    assert_eq!(status.leases, 1);
    again.assert_logged(
        "re-attached 1 of 1 leases",
        Duration::from_secs(2),
        "the re-attach is logged",
    );
    assert!(!lease.is_revoked().unwrap());
    lease.release().expect("the handle still ends its lease");
    assert!(!again.broker().list().unwrap().iter().any(|l| l.id == id));
}

/// SIGTERM keeps the journal; `--release-on-exit` ends every lease instead.
#[test]
fn sigterm_keeps_leases_unless_told_to_release_them() {
    for (flags, kept) in [(&[][..], true), (&["--release-on-exit"][..], false)] {
        let mut args = vec!["--pool", POOL_5];
        args.extend_from_slice(flags);
        let mut daemon = Daemon::start_with(&args);
        let broker = daemon.broker();
        let lease = broker.lease([loopback_any()]).unwrap();
        assert!(daemon.stop().success());
        let again = restart(&daemon, POOL_5);
        let listed = again.broker().list().unwrap();
        assert_eq!(
            listed.iter().any(|l| l.id == lease.id()),
            kept,
            "{flags:?}: {listed:?}"
        );
        drop(lease);
    }
}

/// A port the portserver told a living process stays that process's number through a restart
/// of the daemon: the process may bind it later, and nobody else may be told it meanwhile.
/// Once the process is gone, the restarted daemon gives the number back.
#[test]
fn a_number_of_a_living_process_survives_a_restart_as_a_number() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let config_dir = tempfile::tempdir().unwrap();
    let (config, address) = support::portserver_policy(config_dir.path());
    let config = config.to_str().unwrap();
    let mut daemon = Daemon::start_with(&["--pool", POOL_6, "--config", config]);
    // A served request first: the portserver opens during start-up.
    daemon.broker().status().unwrap();

    // A process that asks for a port and waits, as a test of a farm does before it binds.
    let (mut asker, line) = spawn_and_read_line(std::process::Command::new("python3").args([
        "-c",
        "import os, socket, sys\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.connect(sys.argv[1])\n\
         s.sendall(b'%d\\n' % os.getpid())\n\
         print(s.recv(64).decode().strip(), flush=True)\n\
         sys.stdin.read()",
        address.to_str().unwrap(),
    ]));
    let port: u16 = line
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}\n{}", daemon.log()));
    assert_ne!(port, 0, "{}", daemon.log());
    let of_port = |listed: &[portbroker::LeaseInfo]| {
        listed
            .iter()
            .find(|l| l.sockets.iter().any(|s| s.addr.port() == port))
            .cloned()
    };
    let before = of_port(&daemon.broker().list().unwrap()).expect("the number is listed");
    assert_eq!(before.state, portbroker::LeaseState::Number);

    daemon.kill9();
    let mut again = Daemon::start_with(&[
        "--socket",
        daemon.socket.to_str().unwrap(),
        "--pool",
        POOL_6,
        "--config",
        config,
    ]);
    let after = of_port(&again.broker().list().unwrap())
        .unwrap_or_else(|| panic!("the number {port} was lost:\n{}", again.log()));
    assert_eq!(after.id, before.id);
    assert_eq!(after.state, portbroker::LeaseState::Number, "{after:?}");
    assert_eq!(after.holder.pid, asker.id() as i32);

    // Its holder exits: the number goes back to the pool.
    asker.kill().unwrap();
    asker.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || of_port(
            &again.broker().list().unwrap()
        )
        .is_none()),
        "the number outlived its process:\n{}",
        again.log()
    );
    let mut check = UnixStream::connect(&address).unwrap();
    writeln!(check, "{}", std::process::id()).unwrap();
    let mut answer = String::new();
    check.read_to_string(&mut answer).unwrap();
    assert_ne!(answer.trim(), "0", "the restarted portserver serves");
    again.kill9();
}
