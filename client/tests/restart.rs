//! `portctl run --restart-on-exit` and `--restart-on-hup`: CMD started again on the same
//! sockets, the port never free for anyone else in between, no connection refused.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use portbroker::{ErrorKind, SocketSpec};
use support::{finish, free_port, wait_until, Daemon};

/// Serves one connection on fd 3 with its pid, then crashes (exit status 1).
const ONE_SHOT: &str = r#"
import os, socket, sys
server = socket.socket(fileno=3)
conn, _ = server.accept()
conn.sendall(str(os.getpid()).encode())
conn.close()
sys.exit(1)
"#;

/// Answers every connection on fd 3 with its pid; says READY=1 to NOTIFY_SOCKET first, and
/// exits 0 on SIGTERM.
const READY_SERVER: &str = r#"
import os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = socket.socket(fileno=3)
me = str(os.getpid()).encode()
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.sendto(b"READY=1", address)
notify.close()
while True:
    conn, _ = server.accept()
    conn.sendall(me)
    conn.close()
"#;

/// Connects, and reads what the server says until it closes the connection.
fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text)
}

fn pid_of(answer: &str) -> i32 {
    answer
        .parse()
        .unwrap_or_else(|_| panic!("not a pid: {answer:?}"))
}

/// The id of the lease that `portctl` (its pid) holds, once it shows up.
fn lease_of(daemon: &Daemon, portctl: &Child) -> portbroker::LeaseId {
    let broker = daemon.broker();
    let mut id = None;
    let found = wait_until(Duration::from_secs(10), || {
        id = broker
            .list()
            .unwrap()
            .into_iter()
            .find(|lease| lease.holder.pid == portctl.id() as i32)
            .map(|lease| lease.id);
        id.is_some()
    });
    assert!(found, "portctl never held a lease:\n{}", daemon.log());
    id.unwrap()
}

/// Whether portctl runs a CMD that is none of `pids`.
fn runs_a_cmd_but(portctl: &Child, pids: &[i32]) -> bool {
    let pid = portctl.id();
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).is_ok_and(|children| {
        children
            .split_whitespace()
            .filter_map(|child| child.parse().ok())
            .any(|child: i32| !pids.contains(&child))
    })
}

fn signal(child: &Child, signal: Signal) {
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
}

#[test]
fn restart_on_exit_keeps_the_port_through_three_crashes() {
    let daemon = Daemon::start();
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let spec = format!("tcp:{addr}");
    let portctl = daemon
        .portctl()
        .args(["run", "-q", "--restart-on-exit", spec.as_str()])
        .args(["--", "python3", "-c", ONE_SHOT])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = lease_of(&daemon, &portctl);

    // Meanwhile, binding the port keeps failing, through every crash and backoff.
    let stop = Arc::new(AtomicBool::new(false));
    let binder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut tries, mut bound) = (0u32, 0u32);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && tries < 100_000 && Instant::now() < deadline {
                tries += 1;
                if TcpListener::bind(addr).is_ok() {
                    bound += 1;
                }
                std::thread::park_timeout(Duration::from_millis(1));
            }
            (tries, bound)
        })
    };

    let broker = daemon.broker();
    let mut pids = Vec::new();
    for round in 0..4 {
        let answer = ask(addr).unwrap_or_else(|err| panic!("round {round}: {err}"));
        pids.push(pid_of(&answer));
        // Right after a crash, while portctl waits to restart: the same lease, refused to others.
        let held = broker.list().unwrap();
        assert!(
            held.iter()
                .any(|lease| lease.id == id && lease.holder.pid == portctl.id() as i32),
            "round {round}: the lease moved or ended: {held:?}"
        );
        let err = broker
            .lease([SocketSpec::tcp(Some(addr.ip()), port)])
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InUse, "round {round}: {err}");
    }
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "every answer from a new CMD: {pids:?}");

    // Through the fourth crash too, up to the fifth CMD.
    assert!(
        wait_until(Duration::from_secs(10), || runs_a_cmd_but(&portctl, &pids)),
        "no fifth CMD"
    );
    stop.store(true, Ordering::Relaxed);
    let (tries, bound) = binder.join().unwrap();
    assert!(tries > 0);
    assert_eq!(
        bound, 0,
        "the port was bound {bound} times in {tries} tries"
    );

    // SIGTERM stops CMD for good: its status (killed by SIGTERM) comes back.
    signal(&portctl, Signal::SIGTERM);
    let output = finish(portctl);
    assert_eq!(output.status.code(), Some(128 + 15), "{output:?}");
    // And then the lease ends, and the port is free.
    assert!(wait_until(Duration::from_secs(5), || broker
        .list()
        .unwrap()
        .is_empty()));
    assert!(TcpListener::bind(addr).is_ok());
}

#[test]
fn max_restarts_ends_with_cmds_last_status() {
    let daemon = Daemon::start();
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let spec = format!("tcp:{addr}");
    let portctl = daemon
        .portctl()
        .args([
            "run",
            "--restart-on-exit",
            "--max-restarts",
            "1",
            spec.as_str(),
        ])
        .args(["--", "python3", "-c", ONE_SHOT])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lease_of(&daemon, &portctl);
    let first = pid_of(&ask(addr).unwrap());
    let second = pid_of(&ask(addr).unwrap());
    assert_ne!(first, second);
    // The second exit is one too many: CMD's status comes back.
    let output = finish(portctl);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("restarting it in 100 ms"), "{stderr}");
    assert!(
        stderr.contains("not restarting it after 1 restarts"),
        "{stderr}"
    );
    let broker = daemon.broker();
    assert!(wait_until(Duration::from_secs(5), || broker
        .list()
        .unwrap()
        .is_empty()));
}

#[derive(Default)]
struct Tally {
    answers: HashMap<i32, u32>,
    refused: Vec<String>,
    empty: u32,
    total: u32,
}

#[test]
fn a_graceful_restart_refuses_no_connection() {
    let daemon = Daemon::start();
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let spec = format!("tcp:{addr}");
    // A ready timeout far beyond the test's limits: only READY=1 can end the old CMD in time.
    let portctl = daemon
        .portctl()
        .args(["run", "-q", "--restart-on-hup", "--ready-timeout", "60"])
        .args([spec.as_str(), "--", "python3", "-c", READY_SERVER])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lease_of(&daemon, &portctl);
    let old = pid_of(&ask(addr).unwrap());

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let result = ask(addr);
                let mut tally = tally.lock().unwrap();
                tally.total += 1;
                match result {
                    Ok(answer) if answer.is_empty() => tally.empty += 1,
                    Ok(answer) => *tally.answers.entry(pid_of(&answer)).or_default() += 1,
                    Err(err) => tally.refused.push(err.to_string()),
                }
            }
        })
    };
    let answered_by = |pid: i32| tally.lock().unwrap().answers.get(&pid).copied();
    assert!(
        wait_until(Duration::from_secs(10), || answered_by(old).is_some()),
        "the loop never got an answer"
    );

    signal(&portctl, Signal::SIGHUP);
    let mut new = None;
    let switched = wait_until(Duration::from_secs(20), || {
        new = tally
            .lock()
            .unwrap()
            .answers
            .keys()
            .copied()
            .find(|&pid| pid != old);
        new.is_some()
    });
    assert!(switched, "no answer from a new CMD after SIGHUP");
    let new = new.unwrap();
    // The old CMD goes once the new one said READY=1; portctl reaps it.
    let old_gone = wait_until(Duration::from_secs(20), || {
        !std::path::Path::new(&format!("/proc/{old}")).exists()
    });
    assert!(old_gone, "the old CMD (pid {old}) still runs");
    // Keep connecting a while longer: the new CMD alone serves now.
    let after = answered_by(new).unwrap_or(0);
    assert!(wait_until(Duration::from_secs(10), || answered_by(new)
        .unwrap_or(0)
        >= after + 50));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();

    let tally = tally.lock().unwrap();
    eprintln!(
        "{} connections: answers {:?}, {} closed unanswered by a stopping CMD",
        tally.total, tally.answers, tally.empty
    );
    assert!(
        tally.refused.is_empty(),
        "{} of {} connections failed: {:?}",
        tally.refused.len(),
        tally.total,
        &tally.refused[..tally.refused.len().min(5)]
    );
    assert_eq!(
        tally
            .answers
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [old, new].into(),
        "answers only from the old and the new CMD"
    );

    signal(&portctl, Signal::SIGTERM);
    let output = finish(portctl);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let broker = daemon.broker();
    assert!(wait_until(Duration::from_secs(5), || broker
        .list()
        .unwrap()
        .is_empty()));
}

/// Answers every connection on fd 3 with its pid, and knows nothing of sd_notify.
const SILENT_SERVER: &str = r#"
import os, socket
server = socket.socket(fileno=3)
me = str(os.getpid()).encode()
while True:
    conn, _ = server.accept()
    conn.sendall(me)
    conn.close()
"#;

#[test]
fn a_program_without_sd_notify_is_taken_as_ready_after_the_timeout() {
    let daemon = Daemon::start();
    let port = free_port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let spec = format!("tcp:{addr}");
    let portctl = daemon
        .portctl()
        .args(["run", "--restart-on-hup", "--ready-timeout", "0.3"])
        .args([spec.as_str(), "--", "python3", "-c", SILENT_SERVER])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lease_of(&daemon, &portctl);
    let old = pid_of(&ask(addr).unwrap());
    signal(&portctl, Signal::SIGHUP);
    // The old CMD is stopped once the timeout passed, and the new one serves alone.
    let old_gone = wait_until(Duration::from_secs(20), || {
        !std::path::Path::new(&format!("/proc/{old}")).exists()
    });
    assert!(old_gone, "the old CMD (pid {old}) still runs");
    let new = pid_of(&ask(addr).unwrap());
    assert_ne!(new, old);
    assert!(runs_a_cmd_but(&portctl, &[]), "the new CMD runs");

    signal(&portctl, Signal::SIGTERM);
    let output = finish(portctl);
    // python3 has no SIGTERM handler here: killed by it.
    assert_eq!(output.status.code(), Some(128 + 15), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("did not say READY=1 in time, taken as ready"),
        "{stderr}"
    );
}
