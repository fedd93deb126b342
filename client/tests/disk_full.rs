//! A full disk under the journal: the daemon grants nothing it cannot journal (the client is
//! told `JournalUnavailable`), releases go on, and once there is room again every lease that was
//! granted, and none that was refused, survives a SIGKILL and a restart.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use portbroker::{ErrorKind, Lease, LeaseId};
use support::{loopback_any, wait_until, Daemon, TinyTmpfs};

/// More than a 12 KiB journal can hold (a grant is about 230 bytes), fewer than the 200 ports
/// of the harness's pool slice.
const MAX_ATTEMPTS: usize = 150;

#[test]
fn a_full_disk_refuses_grants_and_loses_none_that_were_granted() {
    let fs = match TinyTmpfs::mount("12k") {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED a_full_disk_refuses_grants_and_loses_none_that_were_granted: {why}");
            return;
        }
    };
    let state = fs.path().to_str().unwrap().to_owned();
    // Two of the three pages: the journal has one page to fill.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 8192]).unwrap();
    let mut daemon = Daemon::start_with(&["--state-dir", &state]);
    let broker = daemon.broker();

    let mut held: Vec<Lease> = Vec::new();
    let refusal = loop {
        assert!(
            held.len() < MAX_ATTEMPTS,
            "{MAX_ATTEMPTS} leases were granted on a full 12 KiB state directory and none was \
             refused with JournalUnavailable: the daemon grants leases it cannot journal:\n{}",
            daemon.log()
        );
        match broker.lease([loopback_any()]) {
            Ok(lease) => held.push(lease),
            Err(err) if err.kind() == ErrorKind::JournalUnavailable => break err,
            Err(err) => panic!("lease {} failed otherwise: {err}", held.len() + 1),
        }
    };
    assert!(!held.is_empty(), "the first lease was refused: {refusal}");
    println!("{} leases granted, then refused: {refusal}", held.len());
    let journal = fs.path().join("leases.journal");
    let bytes = std::fs::read(&journal).unwrap();
    assert_eq!(
        bytes.last(),
        Some(&b'\n'),
        "the journal ends on a torn line after {refusal}"
    );

    // Releases still work while nothing can be written.
    let released: Vec<LeaseId> = held
        .drain(..held.len() / 2)
        .map(|lease| {
            let id = lease.id();
            lease.release().expect("a release works on a full disk");
            id
        })
        .collect();

    std::fs::remove_file(&filler).unwrap();
    for _ in 0..2 {
        let mut granted = None;
        let ok = wait_until(Duration::from_secs(5), || {
            match broker.lease([loopback_any()]) {
                Ok(lease) => granted = Some(lease),
                Err(err) if err.kind() == ErrorKind::JournalUnavailable => {}
                Err(err) => panic!("a lease after freeing space failed: {err}"),
            }
            granted.is_some()
        });
        assert!(
            ok,
            "no lease granted within 5 s of freeing space:\n{}",
            daemon.log()
        );
        held.extend(granted);
    }

    println!(
        "{} released on the full disk, {} live when killed",
        released.len(),
        held.len()
    );
    daemon.kill9();
    let again = Daemon::start_with(&[
        "--socket",
        daemon.socket.to_str().unwrap(),
        "--state-dir",
        &state,
        "--pool",
        &format!("{}-{}", daemon.pool.0, daemon.pool.1),
    ]);
    let listed: BTreeSet<LeaseId> = again
        .broker()
        .list()
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    let granted: BTreeSet<LeaseId> = held.iter().map(Lease::id).collect();
    assert_eq!(
        listed,
        granted,
        "after the restart, the live leases are exactly those granted and not released \
         (released: {released:?}):\n{}",
        again.log()
    );
}
