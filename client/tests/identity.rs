//! The broker acts on a leased socket by its identity (its `SO_COOKIE`), never by its address:
//! a socket that merely sits on a leased address, opened outside the broker, is never handed
//! over, shut down or named as the lease's holder.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use portbroker::LeaseId;
use portbroker_proto::{encode_request, Request, Response};
use support::raw::{expect_hello, hello_frame, raw, read_response, PROMPT};
use support::{wait_until, Daemon};

/// A raw client's lease of one loopback TCP port. The socket arrived with a plain `read`, which
/// closes passed fds: the client keeps the lease but no copy of its socket.
fn lease_and_drop_the_socket(daemon: &Daemon) -> (UnixStream, LeaseId, SocketAddr) {
    let mut stream = raw(daemon);
    stream
        .write_all(&hello_frame(portbroker_proto::PROTOCOL_VERSION))
        .unwrap();
    expect_hello(daemon, &mut stream, "hello");
    ask(
        &mut stream,
        Request::Lease {
            sockets: vec!["tcp:127.0.0.1:0".parse().unwrap()],
        },
    );
    match read_response(&mut stream, PROMPT) {
        Response::Granted { id, sockets, .. } => (stream, id, sockets[0].addr),
        other => panic!("lease refused: {other:?}\n{}", daemon.log()),
    }
}

fn ask(stream: &mut UnixStream, request: Request) {
    stream
        .write_all(&encode_request(&request).unwrap())
        .unwrap();
}

/// Whether `listener` still accepts a connection made to it.
fn still_serves(listener: &TcpListener) -> bool {
    let addr = listener.local_addr().unwrap();
    let Ok(_client) = TcpStream::connect_timeout(&addr, PROMPT) else {
        return false;
    };
    listener.set_nonblocking(true).unwrap();
    let accepted = wait_until(PROMPT, || listener.accept().is_ok());
    listener.set_nonblocking(false).unwrap();
    accepted
}

/// A socket of someone else on the lease's address, bound once the leased one has closed.
fn innocent_listener_on(daemon: &Daemon, addr: SocketAddr) -> TcpListener {
    let mut bound = None;
    let ok = wait_until(Duration::from_secs(5), || {
        bound = TcpListener::bind(addr).ok();
        bound.is_some()
    });
    assert!(
        ok,
        "{addr} stayed busy after the leased socket closed\n{}",
        daemon.log()
    );
    bound.unwrap()
}

/// The lease of a `portctl run`, once portctl has tied it to the program it started (the
/// program may print before the tie is done).
fn tied_lease(daemon: &Daemon) -> portbroker::LeaseInfo {
    let broker = daemon.broker();
    let mut found = None;
    let tied = wait_until(Duration::from_secs(5), || {
        found = broker.list().unwrap().pop();
        found
            .as_ref()
            .is_some_and(|l| l.state == portbroker::LeaseState::Process)
    });
    assert!(
        tied,
        "portctl run never tied its lease: {found:?}\n{}",
        daemon.log()
    );
    found.unwrap()
}

/// SIGKILLs `pid` and waits until its socket on `addr` is closed (the port binds again).
fn kill_and_wait_closed(pid: i32, addr: SocketAddr) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let closed = wait_until(Duration::from_secs(5), || TcpListener::bind(addr).is_ok());
    assert!(closed, "{addr} stayed bound after pid {pid} was killed");
}

#[test]
fn claim_never_hands_over_a_socket_the_holder_no_longer_has() {
    let daemon = Daemon::start();
    let (mut holder, id, addr) = lease_and_drop_the_socket(&daemon);
    let innocent = innocent_listener_on(&daemon, addr);
    ask(&mut holder, Request::Handover { id });
    let token = match read_response(&mut holder, PROMPT) {
        Response::HandoverOffered { token, .. } => token,
        other => panic!("handover refused: {other:?}"),
    };
    ask(&mut holder, Request::Claim { token });
    match read_response(&mut holder, PROMPT) {
        Response::Failed(_) => {}
        other => panic!(
            "the broker handed over a socket it did not lease, sitting on {addr}: {other:?}\n{}",
            daemon.log()
        ),
    }
    assert!(still_serves(&innocent));
}

#[test]
fn revoke_shuts_down_only_the_leased_socket() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED revoke_shuts_down_only_the_leased_socket: revoking needs root");
        return;
    }
    let daemon = Daemon::start();
    let (_holder, id, addr) = lease_and_drop_the_socket(&daemon);
    let innocent = innocent_listener_on(&daemon, addr);
    daemon.broker().revoke(id).unwrap();
    assert!(
        still_serves(&innocent),
        "revoking lease {id} shut down a socket outside the broker on {addr}\n{}",
        daemon.log()
    );
}

#[test]
fn a_lingering_lease_names_only_a_process_with_its_socket() {
    let daemon = Daemon::start();
    // The lease is tied to `sh`, which closes its copy of the socket at once.
    let mut run = daemon.portctl();
    run.args(["run", "--quiet", "tcp:127.0.0.1:0", "--", "sh", "-c"])
        .arg("exec 3>&-; echo closed; exec sleep 30");
    let (mut child, line) = support::spawn_and_read_line(&mut run);
    assert_eq!(line.trim(), "closed");
    let broker = daemon.broker();
    let lease = tied_lease(&daemon);
    let addr = lease.sockets[0].addr;
    let innocent = innocent_listener_on(&daemon, addr);
    // The holder exits; the port is busy (with someone else's socket), so the lease lingers,
    // but nobody holds the leased socket: this process must not be named its holder.
    let tied = nix::unistd::Pid::from_raw(lease.holder.pid);
    nix::sys::signal::kill(tied, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = child.wait();
    let me = std::process::id() as i32;
    let mut seen = None;
    let ended_or_lingering = wait_until(Duration::from_secs(5), || {
        seen = broker
            .list()
            .unwrap()
            .into_iter()
            .find(|l| l.id == lease.id);
        seen.as_ref()
            .is_none_or(|l| l.state == portbroker::LeaseState::Lingering)
    });
    assert!(ended_or_lingering, "{seen:?}\n{}", daemon.log());
    if let Some(lingering) = seen {
        assert_ne!(
            lingering.holder.pid, me,
            "the lingering lease names the process that holds an unrelated socket on {addr}"
        );
    }
    drop(innocent);
}

#[test]
fn a_recovered_lease_whose_holder_closed_its_socket_ends() {
    let mut daemon = Daemon::start();
    let mut run = daemon.portctl();
    run.args(["run", "--quiet", "tcp:127.0.0.1:0", "--", "sh", "-c"])
        .arg("echo ready; read go; exec 3>&-; exec sleep 30");
    let (mut child, line) = support::spawn_and_read_line(&mut run);
    assert_eq!(line, "ready");
    let lease = tied_lease(&daemon);
    let addr = lease.sockets[0].addr;
    daemon.kill9();
    // While the daemon is down, the holder closes its socket but lives on.
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let closed = wait_until(Duration::from_secs(5), || TcpListener::bind(addr).is_ok());
    assert!(
        closed,
        "{addr} is still bound after the holder closed its socket"
    );
    let again = Daemon::start_with(&["--socket", daemon.socket.to_str().unwrap()]);
    let outcome = again.broker().lease_str(&[&format!("tcp:{addr}")]);
    support::kill_all([&mut child]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lease.holder.pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        outcome.is_ok(),
        "{addr} is free, yet the recovered lease {} of a holder without its socket refuses it: {:?}\n{}",
        lease.id,
        outcome.err(),
        again.log()
    );
}

#[test]
fn lease_ids_never_repeat_across_restarts_even_without_a_journal() {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let daemon = Daemon::start_with(&["--no-journal"]);
        let lease = daemon.broker().lease_str(&["tcp:127.0.0.1:0"]).unwrap();
        ids.push(lease.id());
    }
    assert_ne!(
        ids[0], ids[1],
        "a restarted daemon gave out lease id {} again",
        ids[0]
    );
}

#[test]
fn a_lease_ended_at_recovery_stays_ended_at_the_next_restart() {
    let mut daemon = Daemon::start();
    let mut run = daemon.portctl();
    run.args(["run", "--quiet", "tcp:127.0.0.1:0", "--", "sh", "-c"])
        .arg("echo ready; exec sleep 30");
    let (mut child, line) = support::spawn_and_read_line(&mut run);
    assert_eq!(line, "ready");
    let lease = tied_lease(&daemon);
    daemon.kill9();
    // The holder dies while the daemon is down: the restart ends its lease.
    kill_and_wait_closed(lease.holder.pid, lease.sockets[0].addr);
    support::kill_all([&mut child]);
    let mut again = Daemon::start_with(&["--socket", daemon.socket.to_str().unwrap()]);
    again.assert_logged("1 ended", Duration::from_secs(5), "the first restart");
    again.kill9();
    // ... and the journal knows it: the next restart has nothing to end.
    let third = Daemon::start_with(&["--socket", daemon.socket.to_str().unwrap()]);
    third.assert_logged(
        "0 leases kept, 0 ended",
        Duration::from_secs(5),
        "the second restart",
    );
}
