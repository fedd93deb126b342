//! `Handover`: the holder offers its lease; whoever presents the token claims it (see
//! `claim`).

use std::io::Read;

use portbroker_proto::{LeaseId, Response};
use tracing::info;

use super::Reply;
use crate::peer::Peer;
use crate::state::State;

pub fn handover(state: &mut State, peer: &Peer, id: LeaseId) -> Reply {
    if let Err(failure) = state.may_act_on(&peer.identity, id) {
        return Reply::failed(failure);
    }
    let token = random_token();
    // One offer per lease: a new one replaces the last.
    state.table.offer(id, token);
    info!(lease = id.0, "offered for handover by {}", peer.holder);
    Reply::answer(Response::HandoverOffered { id, token })
}

/// An unguessable handover token (from the kernel's random pool).
fn random_token() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut bytes);
    }
    u64::from_ne_bytes(bytes) ^ crate::lease::unix_now().rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state, stranger};
    use portbroker_proto::Failure;

    #[test]
    fn a_new_offer_replaces_the_last() {
        let mut state = state();
        let peer = me(1);
        let (id, _fd) = leased(&mut state, &peer);
        let Response::HandoverOffered { token: first, .. } =
            handover(&mut state, &peer, id).response
        else {
            panic!("not offered");
        };
        let Response::HandoverOffered { token: second, .. } =
            handover(&mut state, &peer, id).response
        else {
            panic!("not offered");
        };
        assert_ne!(first, second);
        assert_eq!(state.table.offer_count(), 1);
        assert_eq!(state.table.offered(second), Some(id));
        assert_eq!(state.table.offered(first), None);
    }

    #[test]
    fn an_offer_dies_with_its_lease() {
        let mut state = state();
        let peer = me(1);
        for _ in 0..100 {
            let (id, _fd) = leased(&mut state, &peer);
            handover(&mut state, &peer, id);
            crate::handlers::release::release(&mut state, &peer, id);
        }
        assert_eq!(
            state.table.offer_count(),
            0,
            "offers of ended leases are kept"
        );
    }

    #[test]
    fn only_the_holders_user_offers() {
        let mut state = state();
        let (id, _fd) = leased(&mut state, &me(1));
        let reply = handover(&mut state, &stranger(2, 4242), id);
        assert!(matches!(
            reply.response,
            Response::Failed(Failure::NotYourLease { .. })
        ));
        assert_eq!(state.table.offer_count(), 0);
    }
}
