//! `Watch`: subscribes the asking connection to the broker's events. Everyone may watch: an
//! event tells no more than `List` shows every user.

use portbroker_proto::Response;
use tracing::debug;

use super::Reply;
use crate::peer::Peer;
use crate::state::State;

pub fn watch(state: &mut State, peer: &Peer) -> Reply {
    if !state.watchers.is_watching(peer.conn) {
        debug!(conn = peer.conn, "{} watches events", peer.holder);
        state.watchers.add(peer.conn);
    }
    Reply::answer(Response::Watching)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state};
    use crate::watchers::Watchers;
    use portbroker_proto::{Event, LeaseId};

    #[test]
    fn a_watcher_sees_grants_and_releases_in_order() {
        let mut state = state();
        let watcher = me(1);
        assert!(matches!(
            watch(&mut state, &watcher).response,
            Response::Watching
        ));
        let peer = me(2);
        let (id, _fd) = leased(&mut state, &peer);
        crate::handlers::dispatch(
            &mut state,
            &crate::handlers::Context {
                peer: &peer,
                greeted: true,
                connections: 2,
            },
            portbroker_proto::Request::Release { id },
        );
        let first = state.watchers.next_for(watcher.conn);
        let Some(Response::Event {
            seq: s1,
            event: Event::Granted { lease },
        }) = first
        else {
            panic!("not a grant: {first:?}");
        };
        assert_eq!(lease.id, id);
        assert_eq!(lease.holder, *peer.holder);
        assert_eq!(
            state.watchers.next_for(watcher.conn),
            Some(Response::Event {
                seq: s1 + 1,
                event: Event::Released { id }
            })
        );
        assert_eq!(state.watchers.next_for(watcher.conn), None);
        // The queue dies with the connection.
        state.watchers.remove(watcher.conn);
        leased(&mut state, &peer);
        assert_eq!(state.watchers.pending().count(), 0);
    }

    /// Watchers that never read share each event: a hundred of them hold one copy.
    #[test]
    fn an_event_is_kept_once_however_many_watch() {
        let mut watchers = Watchers::default();
        for conn in 0..100 {
            watchers.add(conn);
        }
        for id in 1..=10 {
            watchers.emit(|| Event::Released { id: LeaseId(id) });
        }
        assert_eq!(watchers.queued(42), 10);
        assert_eq!(watchers.distinct_events(), 10);
        // Each gets its own frame all the same.
        assert_eq!(
            watchers.next_for(42),
            Some(Response::Event {
                seq: 1,
                event: Event::Released { id: LeaseId(1) }
            })
        );
    }

    #[test]
    fn a_full_queue_counts_what_it_misses_and_says_so_once() {
        let mut watchers = Watchers::with_capacity(4);
        let released = |id| Event::Released { id: LeaseId(id) };
        watchers.emit(|| unreachable!("nobody watches: the event is not even built"));
        watchers.add(7);
        for id in 1..=10 {
            watchers.emit(|| released(id));
        }
        assert_eq!(watchers.queued(7), 4);
        // The first four fit (seq 2..=5); 6 more were counted.
        let event = |seq, id| {
            Some(Response::Event {
                seq,
                event: released(id),
            })
        };
        assert_eq!(watchers.next_for(7), event(2, 1));
        // One slot free is not room for `Missed` and an event: counted too.
        watchers.emit(|| released(11));
        assert_eq!(watchers.queued(7), 3);
        assert_eq!(watchers.next_for(7), event(3, 2));
        watchers.emit(|| released(12));
        assert_eq!(watchers.queued(7), 4);
        assert_eq!(watchers.next_for(7), event(4, 3));
        assert_eq!(watchers.next_for(7), event(5, 4));
        assert_eq!(watchers.next_for(7), Some(Response::Missed { count: 7 }));
        assert_eq!(
            watchers.next_for(7),
            Some(Response::Event {
                seq: 13,
                event: released(12)
            })
        );
        assert_eq!(watchers.next_for(7), None);
        // Missed events are told of once the queue is read empty, even if no event follows.
        for id in 20..30 {
            watchers.emit(|| released(id));
        }
        for _ in 0..4 {
            assert!(matches!(watchers.next_for(7), Some(Response::Event { .. })));
        }
        assert_eq!(watchers.pending().collect::<Vec<_>>(), [7]);
        assert_eq!(watchers.next_for(7), Some(Response::Missed { count: 6 }));
        assert_eq!(watchers.next_for(7), None);
        assert_eq!(watchers.pending().count(), 0);
        // Caught up: no more `Missed`.
        watchers.emit(|| released(13));
        assert_eq!(
            watchers.next_for(7),
            Some(Response::Event {
                seq: 24,
                event: released(13)
            })
        );
    }

    #[test]
    fn a_slow_watcher_does_not_hold_back_another() {
        let mut watchers = Watchers::with_capacity(2);
        watchers.add(1);
        watchers.add(2);
        for id in 0..100 {
            watchers.emit(|| Event::Expired { id: LeaseId(id) });
            // Watcher 2 keeps up, watcher 1 never reads.
            assert!(matches!(
                watchers.next_for(2),
                Some(Response::Event {
                    event: Event::Expired { .. },
                    ..
                })
            ));
        }
        assert_eq!(watchers.queued(1), 2);
        assert_eq!(watchers.queued(2), 0);
    }
}
