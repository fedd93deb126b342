//! `Release`: ends a lease at its holder's (or an administrator's) request.

use portbroker_proto::{EndReason, Event, LeaseId, Response};
use tracing::debug;

use super::Reply;
use crate::lease::Keeper;
use crate::peer::Peer;
use crate::state::State;

pub fn release(state: &mut State, peer: &Peer, id: LeaseId) -> Reply {
    let asker = &peer.holder;
    match state
        .may_act_on(&peer.identity, id)
        .map(|lease| lease.keeper)
    {
        Err(failure) => {
            state.refusals.request(format_args!(
                "refused to release lease {id} for {asker}: {failure}"
            ));
            Reply::failed(failure)
        }
        Ok(Keeper::Lingering) => {
            // Its holder is done with it already; the port returns when the last copy
            // closes, not before.
            state.counters.releases += 1;
            debug!(
                lease = id.0,
                "release by {asker}: lingers until its last copy closes"
            );
            Reply::answer(Response::Released { id })
        }
        Ok(_) => {
            state.table.end(id, EndReason::Released);
            state.counters.releases += 1;
            debug!(lease = id.0, "released by {asker}");
            state.watchers.emit(|| Event::Released { id });
            Reply::answer(Response::Released { id })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state, stranger};
    use portbroker_proto::Failure;

    #[test]
    fn the_holder_releases_and_the_port_is_free_again() {
        let mut state = state();
        let peer = me(1);
        let (id, fd) = leased(&mut state, &peer);
        drop(fd);
        let reply = release(&mut state, &peer, id);
        assert_eq!(reply.response, Response::Released { id });
        assert!(state.table.get(id).is_none());
        assert!(state.table.kept_by_connection(1).is_empty());
        assert_eq!(state.counters.releases, 1, "counted for the metrics");
        let again = release(&mut state, &peer, id);
        assert_eq!(
            again.response,
            Response::Failed(Failure::UnknownLease { id })
        );
    }

    #[test]
    fn another_user_may_not_release_it() {
        let mut state = state();
        let (id, _fd) = leased(&mut state, &me(1));
        let reply = release(&mut state, &stranger(2, 4242), id);
        assert!(matches!(
            reply.response,
            Response::Failed(Failure::NotYourLease { id: i, .. }) if i == id
        ));
        assert!(state.table.get(id).is_some());
    }

    #[test]
    fn a_lingering_lease_stays_until_its_last_copy_closes() {
        let mut state = state();
        let peer = me(1);
        let (id, _fd) = leased(&mut state, &peer);
        state.table.linger(id, None);
        let reply = release(&mut state, &peer, id);
        assert_eq!(reply.response, Response::Released { id });
        assert!(state.table.get(id).is_some(), "still lingering");
    }
}
