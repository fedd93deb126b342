//! Who may end a lease: its holder's uid may release it; administrators (root and the policy's
//! admin groups) may release or revoke anyone's, and a revoke really takes the port away.

mod support;

use std::process::{Child, Output};
use std::sync::mpsc;
use std::time::Duration;

use portbroker::LeaseId;
use support::{kill_all, wait_until, Daemon, NOBODY, STRANGER};

/// The uid that holds the leases; [`STRANGER`] tries to take them.
const HOLDER: u32 = NOBODY;
/// Only named by number: the group need not exist for the policy or for setpriv.
const ADMIN_GID: u32 = 4242;

const POLICY: &str = r#"
[socket]
mode = "0666"

[admin]
groups = ["4242"]

[[rule]]
who = "everyone"
ports = ["pool"]
"#;

/// A lease held by `uid` through `portctl run`, whose program waits for its stdin to close.
fn hold_as(daemon: &Daemon, uid: u32) -> (Child, LeaseId) {
    let (child, line) = support::spawn_and_read_line(daemon.portctl_as(uid).args(
        support::run_python("tcp:127.0.0.1:0", support::READY_THEN_WAIT),
    ));
    assert_eq!(
        line.trim(),
        "ready",
        "the holder did not start:\n{}",
        daemon.log()
    );
    let broker = daemon.broker();
    let lease = broker
        .list()
        .unwrap()
        .into_iter()
        .find(|l| support::held_by_portctl(l, child.id()))
        .expect("the holder's lease is listed");
    assert_eq!(lease.holder.uid, uid);
    (child, lease.id)
}

fn exit_code(output: &Output) -> Option<i32> {
    output.status.code()
}

fn listed(daemon: &Daemon, id: LeaseId) -> bool {
    daemon.broker().list().unwrap().iter().any(|l| l.id == id)
}

#[test]
fn only_the_holder_and_administrators_may_release_a_lease() {
    let daemon = Daemon::start_for_all_users(Some(POLICY), &[]);
    let (mut first, first_id) = hold_as(&daemon, HOLDER);
    let (mut second, second_id) = hold_as(&daemon, HOLDER);
    let id = first_id.0.to_string();

    let stranger = daemon
        .portctl_as(STRANGER)
        .args(["release", &id])
        .output()
        .unwrap();
    assert_eq!(exit_code(&stranger), Some(77), "{stranger:?}");
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        stderr.contains(&format!("belongs to uid {HOLDER}")),
        "{stderr}"
    );
    let revoke = daemon
        .portctl_as(STRANGER)
        .args(["revoke", &id])
        .output()
        .unwrap();
    assert_eq!(
        exit_code(&revoke),
        Some(77),
        "a stranger may not revoke: {revoke:?}"
    );
    assert!(
        listed(&daemon, first_id),
        "refused requests leave the lease alone"
    );

    // The holder's own uid may release it, from any process.
    let own = daemon
        .portctl_as(HOLDER)
        .args(["release", &id])
        .output()
        .unwrap();
    assert_eq!(exit_code(&own), Some(0), "{own:?}");
    assert!(!listed(&daemon, first_id));

    // A member of an admin group may release anyone's.
    let admin = daemon
        .portctl_as_in_groups(STRANGER, &[ADMIN_GID])
        .args(["release", &second_id.0.to_string()])
        .output()
        .unwrap();
    assert_eq!(exit_code(&admin), Some(0), "{admin:?}");
    assert!(!listed(&daemon, second_id));
    kill_all([&mut first, &mut second]);
}

#[test]
fn a_revoke_fails_the_holders_pending_accept_and_its_lease_says_revoked() {
    let daemon = Daemon::start_for_all_users(Some(POLICY), &[]);
    let broker = daemon.broker();
    let mut lease = broker.lease_str(&["tcp:127.0.0.1:0"]).unwrap();
    assert!(!lease.is_revoked().unwrap());
    let listener = match lease.take_sockets().pop().unwrap() {
        portbroker::LeasedSocket::TcpListener(listener) => listener,
        other => panic!("not a listener: {other:?}"),
    };
    let (tx, rx) = mpsc::channel();
    let acceptor = std::thread::spawn(move || tx.send(listener.accept().map(drop)));

    // A stranger may not; an administrator may.
    let id = lease.id().0.to_string();
    let refused = daemon
        .portctl_as(STRANGER)
        .args(["revoke", &id])
        .output()
        .unwrap();
    assert_eq!(exit_code(&refused), Some(77), "{refused:?}");
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "accept must still be waiting"
    );
    let revoked = daemon
        .portctl_as_in_groups(STRANGER, &[ADMIN_GID])
        .args(["revoke", &id])
        .output()
        .unwrap();
    assert_eq!(
        exit_code(&revoked),
        Some(0),
        "{revoked:?}\n{}",
        daemon.log()
    );

    let accepted = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the pending accept() returned");
    assert!(
        accepted.is_err(),
        "accept() must fail once the lease is revoked"
    );
    let _sent = acceptor.join().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || lease.is_revoked().unwrap()),
        "the holder's Lease must say it was revoked"
    );
    assert!(!listed(&daemon, lease.id()));
    daemon.assert_logged("revoked by", Duration::from_secs(5), "the revoke is logged");
    // Ending a revoked lease is no error worth a panic: it is gone already.
    drop(lease);
    broker.status().unwrap();
}
