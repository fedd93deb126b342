//! What a user's requests may cost the broker, as that user meets it: a quota on the sockets a
//! user holds (not only on its leases, which carry up to 64 sockets each), and a request budget
//! that charges the binds a request makes, not one unit per request. The clients run as other
//! users through setpriv, so these tests need root (as CI has).

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use portbroker_proto::{
    encode_request, Failure, LeaseId, Refusal, Request, Response, SocketSpec, PROTOCOL_VERSION,
};
use support::raw::{hello_frame, read_response, PROMPT};
use support::{as_user, Daemon, NOBODY, STRANGER};

/// Connects to the daemon's socket as the user it runs as and relays bytes both ways between
/// that connection and its stdin (a Unix socket). The broker takes a connection's user from the
/// kernel when it connects, so the test speaks the raw protocol as that user. Sockets the broker
/// passes along are dropped by the relay (the kernel closes them); the leases stay, kept by the
/// connection.
const RELAY: &str = r#"
import os, select, socket, sys
broker = socket.socket(socket.AF_UNIX)
broker.connect(os.environ['PORTBROKER_SOCKET'])
test = socket.socket(fileno=0)
other = {broker: test, test: broker}
while True:
    for s in select.select([broker, test], [], [])[0]:
        data = s.recv(1 << 16)
        if not data:
            sys.exit(0)
        other[s].sendall(data)
"#;

/// A greeted connection to the daemon of another user (through [`RELAY`]).
struct UserConnection {
    stream: UnixStream,
    relay: Child,
}

impl UserConnection {
    fn open(daemon: &Daemon, uid: u32) -> UserConnection {
        let (stream, theirs) = UnixStream::pair().unwrap();
        stream.set_write_timeout(Some(PROMPT)).unwrap();
        let relay = as_user(uid, &[], Path::new("/usr/bin/python3"))
            .args(["-c", RELAY])
            .env("PORTBROKER_SOCKET", &daemon.socket)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .expect("start the relay as another user");
        let mut conn = UserConnection { stream, relay };
        conn.stream
            .write_all(&hello_frame(PROTOCOL_VERSION))
            .unwrap();
        // Python takes a moment to start; the Hello waits in the socket meanwhile.
        match read_response(&mut conn.stream, Duration::from_secs(20)) {
            Response::Hello { .. } => conn,
            other => panic!(
                "uid {uid}'s Hello was answered with {other:?}\n{}",
                daemon.log()
            ),
        }
    }

    fn ask(&mut self, request: &Request) -> Response {
        self.stream
            .write_all(&encode_request(request).unwrap())
            .unwrap();
        read_response(&mut self.stream, PROMPT)
    }

    /// Asks for `count` sockets, each any port of the pool on 127.0.0.1, as one lease.
    fn lease_any(&mut self, count: usize) -> Response {
        let spec: SocketSpec = "tcp:127.0.0.1:0".parse().unwrap();
        self.ask(&Request::Lease {
            sockets: vec![spec; count],
        })
    }
}

impl Drop for UserConnection {
    fn drop(&mut self) {
        let _ = self.relay.kill();
        let _ = self.relay.wait();
    }
}

fn granted(response: Response, what: &str, daemon: &Daemon) -> (LeaseId, usize) {
    match response {
        Response::Granted { id, sockets, .. } => (id, sockets.len()),
        other => panic!("{what}: not granted: {other:?}\n{}", daemon.log()),
    }
}

/// A response in a line: a grant of 64 sockets, listed, would fill a screen.
fn summary(response: &Response) -> String {
    match response {
        Response::Granted { id, sockets, .. } => {
            format!("Granted (lease {} of {} sockets)", id.0, sockets.len())
        }
        other => format!("{other:?}"),
    }
}

/// One lease carries up to 64 sockets, so a quota on leases alone (1,024 by default) would let
/// one user hold 65,536 ports: more than the whole default pool. The default `sockets_per_uid`
/// (1,024) stops the user at 1,024 sockets, however they are packed, and leaves others alone.
#[test]
fn a_user_cannot_hold_more_sockets_than_sockets_per_uid_however_it_packs_them() {
    // The default limits; a pool of 1,100 ports, so that the pool is not what runs out.
    let policy = "[socket]\nmode = \"0666\"\n\n[[rule]]\nwho = \"everyone\"\nports = [\"pool\"]\naddresses = [\"127.0.0.1\"]\n";
    let daemon = Daemon::start_for_all_users(Some(policy), &["--pool", "62000-63099"]);
    let mut nobody = UserConnection::open(&daemon, NOBODY);
    let mut leases = Vec::new();
    for i in 0..16 {
        let (id, sockets) = granted(nobody.lease_any(64), &format!("lease #{}", i + 1), &daemon);
        assert_eq!(sockets, 64);
        leases.push(id);
    }
    // 1,024 sockets in 16 leases, far below leases_per_uid: the next socket is one too many.
    for count in [64, 1] {
        match nobody.lease_any(count) {
            Response::Refused(refusal @ Refusal::QuotaExceeded { .. }) => assert_eq!(
                refusal.to_string(),
                "quota exceeded (1024 of 1024): sockets_per_uid",
                "a lease of {count} more"
            ),
            other => panic!(
                "uid {NOBODY} holds 1,024 sockets and a lease of {count} more was answered with \
                 {}",
                summary(&other)
            ),
        }
    }
    let status = daemon.broker().status().unwrap();
    assert_eq!(
        (status.leases, status.sockets),
        (16, 1024),
        "the refusals left nothing: {status:?}"
    );

    // Another user is not held back by uid 65534's sockets.
    let mut stranger = UserConnection::open(&daemon, STRANGER);
    granted(stranger.lease_any(64), "another user's lease", &daemon);

    // A lease given back makes room again.
    match nobody.ask(&Request::Release { id: leases[0] }) {
        Response::Released { .. } => {}
        other => panic!("release: {other:?}"),
    }
    granted(nobody.lease_any(64), "a lease after a release", &daemon);
}

/// A port-0 spec may try up to 64 binds when pool ports are held outside the broker. A user
/// whose requests each make dozens of binds must run out of its request budget after a few of
/// them, not after `requests_per_sec_per_uid` of them.
#[test]
fn binds_count_against_the_request_budget() {
    const RATE: u64 = 50;
    let policy = format!(
        "[socket]\nmode = \"0666\"\n\n[limits]\nrequests_per_sec_per_uid = {RATE}\n\n[[rule]]\nwho = \"everyone\"\nports = [\"pool\"]\naddresses = [\"127.0.0.1\"]\n"
    );
    let (lo, hi) = (64000u16, 64063u16);
    let daemon = Daemon::start_for_all_users(Some(&policy), &["--pool", &format!("{lo}-{hi}")]);
    assert!(
        TcpListener::bind(("127.0.0.1", lo)).is_ok(),
        "the test needs 127.0.0.1:{lo} free"
    );
    // Every pool port but the first is held outside the broker (by us, or by whatever already
    // had it).
    let held: Vec<TcpListener> = (lo + 1..=hi)
        .filter_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .collect();
    eprintln!("holding {} of the pool's 63 other ports", held.len());

    let mut nobody = UserConnection::open(&daemon, NOBODY);
    // The first lease gets the one free port at its first bind.
    granted(nobody.lease_any(1), "the first lease", &daemon);
    // Every further port-0 lease tries each held port (63 binds) and finds the pool exhausted.
    // The budget is used up by the binds, not by the requests: a handful of such requests must
    // exhaust it (where one unit per request allowed about 50).
    let mut exhausted = 0;
    let over_budget = loop {
        match nobody.lease_any(1) {
            Response::Refused(Refusal::PoolExhausted { .. }) if exhausted < 5 => exhausted += 1,
            Response::Failed(Failure::NotPermitted { reason }) => break reason,
            other => panic!(
                "after {} port-0 requests of about 63 binds each (the budget is {RATE} a \
                 second), uid {NOBODY} was answered {other:?}, never refused as over its \
                 budget\n{}",
                exhausted + 1,
                daemon.log()
            ),
        }
    };
    assert!(
        over_budget.contains("requests_per_sec_per_uid"),
        "{over_budget}"
    );
    eprintln!(
        "refused after {exhausted} port-0 requests that found the pool exhausted: {over_budget}"
    );
    // Root has no budget.
    let broker = daemon.broker();
    for _ in 0..20 {
        broker.status().expect("root has no request budget");
    }
    drop(held);
}
