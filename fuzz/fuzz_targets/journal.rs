//! Arbitrary bytes through the journal reader, as `portbrokerd` meets its journal at start-up.
//!
//! The journal is a file a root daemon trusts to restore leases; whatever it holds (a torn
//! write, a bug, a careless edit) must not panic the reader, make it hold more than one bounded
//! line, or restore a lease the lease table cannot hold.
//!
//! Properties: nothing panics; every recovered lease has an id in 1..=MAX_LEASE_ID, 1 to
//! MAX_SOCKETS sockets, no port 0, and no cookies or one per socket; the next id is in
//! 1..=MAX_LEASE_ID + 1 and above every recovered id; a reader that hands out the bytes a few at
//! a time recovers the same; and a snapshot of what was recovered reads back the same, whole.
//!
//! Run with `cargo +nightly fuzz run journal` from the repository root (see README, Fuzzing).
#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;

// The daemon's own module, as it is: it imports nothing from the daemon's crate.
#[allow(dead_code, unused_imports)]
#[path = "../../brokerd/src/journal/mod.rs"]
mod journal;

use journal::{encode_snapshot, replay, MAX_LEASE_ID, MAX_SOCKETS};

fuzz_target!(|data: &[u8]| {
    let recovered = replay(data);
    assert!((1..=MAX_LEASE_ID + 1).contains(&recovered.next_id));
    for lease in &recovered.leases {
        assert!((1..=MAX_LEASE_ID).contains(&lease.id), "{lease:?}");
        assert!(lease.id < recovered.next_id, "{lease:?}");
        assert!((1..=MAX_SOCKETS).contains(&lease.sockets.len()), "{lease:?}");
        assert!(lease.sockets.iter().all(|s| s.addr.port() != 0), "{lease:?}");
        assert!(
            lease.cookies.is_empty() || lease.cookies.len() == lease.sockets.len(),
            "{lease:?}"
        );
    }

    // Lines split across reads come out the same.
    let chunked = replay(BufReader::with_capacity(5, data));
    assert_eq!(chunked.leases, recovered.leases);
    assert_eq!(chunked.next_id, recovered.next_id);
    assert_eq!(chunked.damage, recovered.damage);
    assert_eq!(chunked.dropped, recovered.dropped);

    // What compaction would write reads back as exactly what was recovered.
    let (snapshot, next_id) = encode_snapshot(recovered.leases.iter(), recovered.next_id);
    assert_eq!(next_id, recovered.next_id);
    let again = replay(snapshot.as_slice());
    assert_eq!(again.leases, recovered.leases);
    assert_eq!(again.next_id, recovered.next_id);
    assert_eq!((again.damage, again.dropped), (None, 0));
});
