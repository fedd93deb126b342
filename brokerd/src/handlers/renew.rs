//! `Renew`: gives a lease a time limit from now, or removes it (`ttl_ms` 0).

use std::time::Duration;

use portbroker_proto::{Failure, LeaseId, Response};
use tracing::debug;

use super::Reply;
use crate::lease::{Deadline, Keeper};
use crate::peer::Peer;
use crate::state::State;

pub fn renew(state: &mut State, peer: &Peer, id: LeaseId, ttl_ms: u32) -> Reply {
    let lease = match state.may_act_on(&peer.identity, id) {
        Ok(lease) => lease,
        Err(failure) => return Reply::failed(failure),
    };
    // Their end is the kernel's (the last copy closing) or the policy's (a service's grace
    // period), not a time limit: one set here would end a lingering lease while a copy still
    // holds its port, or keep a service's ports as long as its user liked.
    let why = match lease.keeper {
        Keeper::Lingering => {
            Some("its holder is gone; it ends when the last copy of its sockets closes")
        }
        Keeper::Kept => Some("its ports are kept for its service until the grace period ends"),
        Keeper::Connection(_) | Keeper::Process(_) => None,
    };
    if let Some(why) = why {
        return Reply::failed(Failure::NotPermitted {
            reason: format!("lease {id} takes no time limit: {why}"),
        });
    }
    let limit = (ttl_ms > 0).then(|| Deadline::after(Duration::from_millis(u64::from(ttl_ms))));
    state.table.set_time_limit(id, limit);
    debug!(
        lease = id.0,
        "time limit set to {ttl_ms} ms by {}", peer.holder
    );
    Reply::answer(Response::Renewed {
        id,
        expires_unix_ms: limit.map(|d| d.unix_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state, stranger};
    use portbroker_proto::EndReason;
    use std::time::Instant;

    #[test]
    fn a_time_limit_is_set_told_and_removed() {
        let mut state = state();
        let peer = me(1);
        let (id, _fd) = leased(&mut state, &peer);
        let reply = renew(&mut state, &peer, id, 60_000);
        let Response::Renewed {
            expires_unix_ms: Some(ms),
            ..
        } = reply.response
        else {
            panic!("no limit: {:?}", reply.response);
        };
        assert_eq!(state.table.get(id).unwrap().expires.unwrap().unix_ms, ms);
        let none = renew(&mut state, &peer, id, 0);
        assert_eq!(
            none.response,
            Response::Renewed {
                id,
                expires_unix_ms: None
            }
        );
        let later = Instant::now() + Duration::from_secs(120);
        assert!(state.expire_due(later).is_empty(), "no limit, no expiry");
    }

    #[test]
    fn an_expired_lease_ends_and_its_connection_is_told() {
        let mut state = state();
        let peer = me(4);
        let (id, _fd) = leased(&mut state, &peer);
        renew(&mut state, &peer, id, 1);
        let notices = state.expire_due(Instant::now() + Duration::from_secs(1));
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].conn, 4);
        assert_eq!(notices[0].response, Response::Expired { id });
        assert!(state.table.get(id).is_none());
        assert_eq!(state.counters.expiries, 1, "counted for the metrics");
    }

    /// A lingering lease ends when its last copy closes, not by a time limit its user sets:
    /// that would end it while a copy still holds the port.
    #[test]
    fn a_lingering_lease_takes_no_time_limit() {
        let mut state = state();
        let peer = me(1);
        let (id, fd) = leased(&mut state, &peer);
        let copy = fd.try_clone().unwrap();
        drop(fd);
        state.end_truthfully(id, EndReason::ConnectionClosed, "test");
        assert_eq!(
            state.table.get(id).unwrap().keeper,
            Keeper::Lingering,
            "the copy holds the port"
        );
        let reply = renew(&mut state, &peer, id, 1);
        assert!(
            matches!(&reply.response, Response::Failed(Failure::NotPermitted { reason }) if reason.contains("last copy")),
            "{:?}",
            reply.response
        );
        assert!(state
            .expire_due(Instant::now() + Duration::from_secs(1))
            .is_empty());
        assert!(state.table.get(id).is_some(), "still lingering");
        drop(copy);
    }

    #[test]
    fn another_user_cannot_renew() {
        let mut state = state();
        let (id, _fd) = leased(&mut state, &me(1));
        let reply = renew(&mut state, &stranger(2, 4242), id, 5);
        assert!(matches!(
            reply.response,
            Response::Failed(Failure::NotYourLease { .. })
        ));
        assert!(state.table.get(id).unwrap().expires.is_none());
    }
}
