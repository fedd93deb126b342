//! Which [`Lease`](crate::Lease) handle of this process holds each lease of each broker.
//!
//! A lease id is unique for one life of a broker only. A broker restarted without its journal
//! numbers leases afresh from its clock, which keeps them apart from the last life's only as
//! long as the clock does not go back, and another broker on the same path is another life too.
//! So an id alone does not say whether a handle still holds its lease, and a handle that acts on
//! an id it no longer holds may end, renew or take someone else's lease. Each handle gets a ticket of its own when its lease is granted, and it acts
//! only while the book still has its ticket for its lease. A ticket leaves the book when:
//!
//! - the handle lets go of the lease (release, drop, detach, handover);
//! - the library reconnected and the broker did not give the lease back (`Reattached`);
//! - the broker granted the same id on the same socket path to another handle of this
//!   process: then the id names a new lease, in a new life of the broker.
//!
//! Process-wide, because two [`Broker`](crate::Broker)s of one process may share a broker:
//! the broker only knows the process, and gives a lease of one back to the other on a
//! `Reattach`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use portbroker_proto::LeaseId;
// Keys are this process's own numbers and the broker's lease ids: a fast hash is safe here.
use rustc_hash::FxHashMap as HashMap;

/// One handle's claim to one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// A broker's socket path as a number, the same for every session of this process that uses
/// the path: the book's key. A number, not the path, because the book is looked up twice per
/// lease and hashing a `Path` walks its components (a fifth of the library's own work per
/// lease, measured by callgrind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Place(u64);

/// Who holds a lease: the session (one `Broker` and its clones) and the handle's ticket.
#[derive(Clone, Copy)]
struct Holding {
    session: u64,
    ticket: Ticket,
}

type Key = (Place, LeaseId);

static BOOK: LazyLock<Mutex<HashMap<Key, Holding>>> = LazyLock::new(Mutex::default);
/// Every path a session of this process used, with its number: one entry per broker path.
static PLACES: LazyLock<Mutex<HashMap<PathBuf, Place>>> = LazyLock::new(Mutex::default);
static NEXT: AtomicU64 = AtomicU64::new(1);

fn book() -> MutexGuard<'static, HashMap<Key, Holding>> {
    // Every change is one insert or remove: a panic elsewhere leaves nothing half-done.
    BOOK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The number of the broker at `path`, the same each time this process asks.
pub(crate) fn place(path: &Path) -> Place {
    let mut places = PLACES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&place) = places.get(path) {
        return place;
    }
    let place = Place(NEXT.fetch_add(1, Ordering::Relaxed));
    places.insert(path.to_owned(), place);
    place
}

/// A number for a new session, unique in this process.
pub(crate) fn new_session() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Records that `session` was just granted lease `id` by the broker at `place`; any other
/// handle that held an `id` there holds it no more.
pub(crate) fn enter(place: Place, id: LeaseId, session: u64) -> Ticket {
    let ticket = Ticket(NEXT.fetch_add(1, Ordering::Relaxed));
    book().insert((place, id), Holding { session, ticket });
    ticket
}

/// Whether the handle with `ticket` still holds lease `id` of the broker at `place`.
pub(crate) fn holds(place: Place, id: LeaseId, ticket: Ticket) -> bool {
    book()
        .get(&(place, id))
        .is_some_and(|holding| holding.ticket == ticket)
}

/// The handle with `ticket` lets go of lease `id`; returns whether it still held it.
pub(crate) fn leave(place: Place, id: LeaseId, ticket: Ticket) -> bool {
    let mut book = book();
    let key = (place, id);
    let held = book
        .get(&key)
        .is_some_and(|holding| holding.ticket == ticket);
    if held {
        book.remove(&key);
    }
    held
}

/// The leases that handles of `session` hold at `place`, in order: what a reconnect
/// re-attaches.
pub(crate) fn held_by(place: Place, session: u64) -> Vec<LeaseId> {
    let mut ids: Vec<LeaseId> = book()
        .iter()
        .filter(|((at, _), holding)| holding.session == session && *at == place)
        .map(|((_, id), _)| *id)
        .collect();
    ids.sort_unstable();
    ids
}

/// After a reconnect of `session`, which asked for `asked` and was given back `kept`: the
/// handles of the others lose their leases.
pub(crate) fn keep_only(place: Place, session: u64, asked: &[LeaseId], kept: &[LeaseId]) {
    let mut book = book();
    for &id in asked.iter().filter(|id| !kept.contains(id)) {
        let key = (place, id);
        if book.get(&key).is_some_and(|h| h.session == session) {
            book.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> Place {
        place(Path::new(name))
    }

    #[test]
    fn a_path_is_one_place_however_often_it_is_asked_for() {
        let here = path("/book-test/d.sock");
        assert_eq!(here, path("/book-test/d.sock"));
        assert_ne!(here, path("/book-test/e.sock"));
    }

    #[test]
    fn a_ticket_holds_until_it_leaves_or_another_is_granted_the_id() {
        let (here, there) = (path("/book-test/a.sock"), path("/book-test/b.sock"));
        let (one, two) = (new_session(), new_session());
        let first = enter(here, LeaseId(1), one);
        let elsewhere = enter(there, LeaseId(1), two);
        assert!(holds(here, LeaseId(1), first));
        assert!(
            holds(there, LeaseId(1), elsewhere),
            "another broker's lease 1"
        );
        assert_eq!(held_by(here, one), [LeaseId(1)]);

        // The broker at `here` restarted and granted lease 1 to another handle.
        let second = enter(here, LeaseId(1), two);
        assert!(!holds(here, LeaseId(1), first));
        assert!(
            held_by(here, one).is_empty(),
            "session one must not re-attach it"
        );
        assert!(
            !leave(here, LeaseId(1), first),
            "the stale handle held nothing"
        );
        assert!(holds(here, LeaseId(1), second));
        assert!(leave(here, LeaseId(1), second));
        assert!(!holds(here, LeaseId(1), second));
        assert!(leave(there, LeaseId(1), elsewhere));
    }

    #[test]
    fn a_reconnect_keeps_only_what_the_broker_gave_back() {
        let here = path("/book-test/c.sock");
        let (mine, other) = (new_session(), new_session());
        let tickets: Vec<Ticket> = (1..=3).map(|id| enter(here, LeaseId(id), mine)).collect();
        let theirs = enter(here, LeaseId(4), other);
        let asked = held_by(here, mine);
        assert_eq!(asked, [LeaseId(1), LeaseId(2), LeaseId(3)]);
        keep_only(
            here,
            mine,
            &[LeaseId(1), LeaseId(2), LeaseId(3), LeaseId(4)],
            &[LeaseId(2)],
        );
        assert!(!holds(here, LeaseId(1), tickets[0]));
        assert!(holds(here, LeaseId(2), tickets[1]));
        assert!(!holds(here, LeaseId(3), tickets[2]));
        assert!(
            holds(here, LeaseId(4), theirs),
            "another session's lease stays"
        );
        assert!(leave(here, LeaseId(2), tickets[1]));
        assert!(leave(here, LeaseId(4), theirs));
    }
}
