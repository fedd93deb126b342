//! `portctl run --restart-on-exit` and `--restart-on-hup`: CMD started again on the same
//! sockets, the port never free for anyone else in between, no connection refused.

mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
