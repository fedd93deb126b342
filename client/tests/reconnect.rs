//! What a `Lease` handle may do after its connection broke. A daemon restarted without its
//! journal forgets every lease, so a handle from before the restart names a lease that is
//! gone; if a broker ever gave its id out again (this one never does: ids never repeat across
//! restarts), the handle would name someone else's lease. Either way it must never act on it:
//! only the leases the broker gives back when the library reconnects (`Reattached`) stay
//! live.

mod support;

use std::time::Duration;

use portbroker::{ErrorKind, LeaseId};
use support::{kill_all, loopback_any, spawn_and_read_line, wait_until, Daemon};

/// A daemon that keeps no journal, and the same daemon after `kill -9` and a new start.
fn restarted_without_journal(daemon: &mut Daemon) -> Daemon {
    daemon.kill9();
    Daemon::start_with(&["--socket", daemon.socket.to_str().unwrap(), "--no-journal"])
}

/// The same process holds a stale handle (broker A) and new leases (broker B).
#[test]
fn a_stale_handle_never_ends_the_new_lease_of_its_id_in_the_same_process() {
    let mut daemon = Daemon::start_with(&["--no-journal"]);
    let a = daemon.broker();
    let stale = a.lease([loopback_any()]).unwrap();
    let stale_too = a.lease([loopback_any()]).unwrap();
    let again = restarted_without_journal(&mut daemon);

    let b = again.broker();
    let fresh = b.lease([loopback_any()]).unwrap();
    let fresh_too = b.lease([loopback_any()]).unwrap();
    assert!(
        ![fresh.id(), fresh_too.id()].contains(&stale.id()),
        "a restarted daemon gave out lease id {} again",
        stale.id()
    );

    // A's handle says its lease is lost, and ends nothing.
    let stale_id = stale.id();
    let err = stale
        .release()
        .expect_err("a stale handle released a lease after the restart");
    assert_eq!(err.kind(), ErrorKind::LeaseLost, "{err}");
    assert!(
        err.to_string().contains(&format!("lease {stale_id}")),
        "{err}"
    );
    // A reconnected now; dropping its handle of lease 2 sends nothing either.
    a.status().unwrap();
    drop(stale_too);
    drop(a);

    let listed = again.broker().list().unwrap();
    for lease in [&fresh, &fresh_too] {
        let info = listed.iter().find(|l| l.id == lease.id());
        let info = info.unwrap_or_else(|| {
            panic!(
                "B's lease {} was ended by A's stale handle:\n{}",
                lease.id(),
                again.log()
            )
        });
        assert_eq!(info.sockets[0].addr, lease.local_addr());
    }
    fresh.release().unwrap();
    fresh_too.release().unwrap();
}

/// Another process holds a new lease, tied to its program by `portctl run`.
#[test]
fn a_stale_handle_never_acts_on_another_process_lease_of_its_id() {
    let mut daemon = Daemon::start_with(&["--no-journal"]);
    let a = daemon.broker();
    let stale = a.lease([loopback_any()]).unwrap();
    let again = restarted_without_journal(&mut daemon);

    let (mut holder, line) = spawn_and_read_line(again.portctl().args(support::run_python(
        "tcp:127.0.0.1:0",
        support::READY_THEN_WAIT,
    )));
    assert_eq!(line, "ready");
    let observer = again.broker();
    // The program's lease: tied to it, so held by neither portctl nor this process.
    let me = std::process::id() as i32;
    let theirs = |leases: &[portbroker::LeaseInfo]| -> Option<LeaseId> {
        leases
            .iter()
            .find(|l| l.holder.pid != holder.id() as i32 && l.holder.pid != me)
            .map(|l| l.id)
    };
    let tied = |leases: &[portbroker::LeaseInfo]| theirs(leases).is_some();
    assert!(
        wait_until(Duration::from_secs(10), || tied(&observer.list().unwrap())),
        "portctl never tied its lease to its program:\n{}",
        again.log()
    );

    // A reconnects (its next request does): the broker does not give its lease back to A.
    a.status().unwrap();
    let err = stale
        .renew(Duration::from_secs(3600))
        .expect_err("a stale handle renewed a lease after the restart");
    assert_eq!(err.kind(), ErrorKind::LeaseLost, "{err}");
    assert!(
        stale.tie_to_process(std::process::id() as i32).is_err(),
        "a stale handle tied a lease after the restart"
    );
    let err = stale
        .release()
        .expect_err("a stale handle released a lease after the restart");
    assert_eq!(err.kind(), ErrorKind::LeaseLost, "{err}");

    let listed = observer.list().unwrap();
    assert!(
        tied(&listed),
        "the program's lease left its holder: {listed:?}"
    );
    let id = theirs(&listed).unwrap();
    let lease = listed.iter().find(|l| l.id == id).unwrap();
    assert_eq!(
        lease.expires_unix_ms, None,
        "the program's lease was renewed: {lease:?}"
    );
    kill_all([&mut holder]);
}
