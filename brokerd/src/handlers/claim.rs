//! `Claim`: takes an offered lease onto this connection, with copies of the very sockets its
//! holder has: the port is never unbound, and the lease (same id) changes hands at once.

use std::rc::Rc;

use portbroker_proto::{Failure, Response};

use super::Reply;
use crate::peer::Peer;
use crate::socket_copies;
use crate::state::State;

pub fn claim(state: &mut State, peer: &Peer, token: u64) -> Reply {
    let offered = state.table.offered(token);
    // The holder's fds read in the search, charged to the asker: its owner decides how many.
    let mut read = 0;
    let found = match offered.map(|id| state.may_act_on(&peer.identity, id)) {
        None => Err(Failure::NotPermitted {
            reason: "no lease is offered with this token".into(),
        }),
        Some(Err(failure)) => Err(failure),
        // Only the holder's own copies, known by their cookies: never whatever socket sits on
        // the lease's address now.
        Some(Ok(lease)) => {
            let (copies, fds_read) =
                socket_copies::copies_held_by(lease.holder.pid, lease.start_time, lease.leased());
            read = fds_read;
            copies
                .map(|fds| (lease.id, lease.sockets.to_vec(), fds))
                .ok_or_else(|| Failure::NotPermitted {
                    reason: format!(
                        "{} no longer holds the sockets of lease {}; nothing to hand over",
                        lease.holder, lease.id
                    ),
                })
        }
    };
    let work = u32::try_from(1 + read / socket_copies::FDS_PER_REQUEST).unwrap_or(u32::MAX);
    let (id, sockets, fds) = match found {
        Ok(found) => found,
        Err(failure) => {
            return Reply {
                work,
                ..Reply::failed(failure)
            }
        }
    };
    if let Some(from) =
        state
            .table
            .hand_over(id, peer.conn, Rc::clone(&peer.holder), peer.start_time)
    {
        state.request_lines.info(format_args!(
            "lease {id} handed over from {from} to {}",
            peer.holder
        ));
    }
    Reply {
        fds,
        work,
        ..Reply::answer(Response::Granted {
            id,
            fds: sockets.len() as u32,
            sockets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state, stranger};
    use crate::handlers::handover::handover;

    #[test]
    fn an_unknown_token_claims_nothing() {
        let mut state = state();
        let reply = claim(&mut state, &me(1), 12345);
        assert!(matches!(
            reply.response,
            Response::Failed(Failure::NotPermitted { .. })
        ));
    }

    #[test]
    fn another_user_cannot_claim_with_the_token() {
        let mut state = state();
        let holder = me(1);
        let (id, _fd) = leased(&mut state, &holder);
        let Response::HandoverOffered { token, .. } = handover(&mut state, &holder, id).response
        else {
            panic!("not offered");
        };
        let reply = claim(&mut state, &stranger(2, 4242), token);
        assert!(matches!(
            reply.response,
            Response::Failed(Failure::NotYourLease { .. })
        ));
        assert_eq!(state.table.kept_by_connection(1), [id]);
        assert_eq!(state.table.offered(token), Some(id), "the offer stands");
    }

    #[test]
    fn a_claim_takes_a_copy_from_the_holder_known_by_its_cookie() {
        if !nix::unistd::getuid().is_root() {
            eprintln!("SKIPPED: pidfd_getfd needs root or ptrace rights");
            return;
        }
        let mut state = state();
        let holder = me(1);
        // The holder (this process) keeps its socket.
        let (id, _fd) = leased(&mut state, &holder);
        let Response::HandoverOffered { token, .. } = handover(&mut state, &holder, id).response
        else {
            panic!("not offered");
        };
        let reply = claim(&mut state, &me(2), token);
        let Response::Granted {
            id: claimed,
            sockets,
            fds,
        } = reply.response
        else {
            panic!("not granted: {:?}", reply.response);
        };
        assert_eq!((claimed, fds, reply.fds.len()), (id, 1, 1));
        let copy = std::net::TcpListener::from(reply.fds.into_iter().next().unwrap());
        assert_eq!(copy.local_addr().unwrap(), sockets[0].addr);
        assert!(state.table.kept_by_connection(1).is_empty());
        assert_eq!(state.table.kept_by_connection(2), [id]);
        assert_eq!(state.table.offer_count(), 0);
    }

    #[test]
    fn a_socket_on_the_leased_address_that_is_not_the_leased_one_is_never_handed_over() {
        let mut state = state();
        let holder = me(1);
        let (id, fd) = leased(&mut state, &holder);
        let addr = state.table.get(id).unwrap().sockets[0].addr;
        drop(fd);
        // Someone else's socket on the same address, in the holder's process even.
        let _other = std::net::TcpListener::bind(addr).unwrap();
        let Response::HandoverOffered { token, .. } = handover(&mut state, &holder, id).response
        else {
            panic!("not offered");
        };
        let reply = claim(&mut state, &me(2), token);
        assert!(
            matches!(
                reply.response,
                Response::Failed(Failure::NotPermitted { .. })
            ),
            "{:?}",
            reply.response
        );
        assert!(reply.fds.is_empty());
        assert_eq!(state.table.kept_by_connection(1), [id]);
    }
}
