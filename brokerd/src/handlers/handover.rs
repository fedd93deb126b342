//! `Handover`: the holder offers its lease; whoever presents the token claims it (see
//! `claim`).

use std::io;

use portbroker_proto::{Failure, LeaseId, Response};
use rustix::rand::{getrandom, GetRandomFlags};
use tracing::warn;

use super::Reply;
use crate::peer::Peer;
use crate::state::State;

pub fn handover(state: &mut State, peer: &Peer, id: LeaseId) -> Reply {
    offer(state, peer, id, random_token)
}

/// Offers lease `id` under a token from `draw`. Whoever holds the token may claim the lease, so
/// a token that cannot be drawn offers nothing: there is no weaker fallback.
fn offer(
    state: &mut State,
    peer: &Peer,
    id: LeaseId,
    draw: impl FnOnce() -> io::Result<u64>,
) -> Reply {
    if let Err(failure) = state.may_act_on(&peer.identity, id) {
        return Reply::failed(failure);
    }
    let token = match draw() {
        Ok(token) => token,
        Err(err) => {
            warn!(
                lease = id.0,
                "not offering the lease for handover to {}: getrandom failed: {err}", peer.holder
            );
            return Reply::failed(Failure::NotPermitted {
                reason: format!(
                    "the broker cannot draw a handover token from the kernel's random source \
                     (getrandom: {err}); the lease is not offered and stays yours; try again \
                     later"
                ),
            });
        }
    };
    // One offer per lease: a new one replaces the last.
    state.table.offer(id, token);
    state.request_lines.info(format_args!(
        "lease {id} offered for handover by {}",
        peer.holder
    ));
    Reply::answer(Response::HandoverOffered { id, token })
}

/// An unguessable handover token from the kernel's random pool, through getrandom(2): no file
/// to open, so a missing or unreadable `/dev/urandom` (a container, a sandbox) does not matter.
/// NONBLOCK: before the pool is seeded (early boot) this fails with EAGAIN rather than stall
/// the event loop.
fn random_token() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    let filled = getrandom(&mut bytes, GetRandomFlags::NONBLOCK)?;
    if filled != bytes.len() {
        return Err(io::Error::other(format!(
            "it gave {filled} of {} bytes",
            bytes.len()
        )));
    }
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state, stranger};

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

    #[test]
    fn no_token_no_offer() {
        let mut state = state();
        let peer = me(1);
        let (id, _fd) = leased(&mut state, &peer);
        let reply = offer(&mut state, &peer, id, || {
            Err(io::Error::from_raw_os_error(libc::ENOSYS))
        });
        match reply.response {
            Response::Failed(Failure::NotPermitted { reason }) => assert!(
                reason.contains("cannot draw a handover token") && reason.contains("getrandom"),
                "{reason}"
            ),
            other => panic!("expected NotPermitted, got {other:?}"),
        }
        assert_eq!(state.table.offer_count(), 0, "nothing is offered");
    }
}
