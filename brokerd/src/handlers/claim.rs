//! `Claim`: takes an offered lease onto this connection, with copies of the very sockets its
//! holder has: the port is never unbound, and the lease (same id) changes hands at once.

use std::rc::Rc;

use portbroker_proto::{Failure, Response};
use tracing::info;

use super::Reply;
use crate::peer::Peer;
use crate::socket_copies;
use crate::state::State;

pub fn claim(state: &mut State, peer: &Peer, token: u64) -> Reply {
    let offered = state.handovers.get(&token).copied();
    let found = match offered.map(|id| state.may_act_on(&peer.identity, id)) {
        None => Err(Failure::NotPermitted {
            reason: "no lease is offered with this token".into(),
        }),
        Some(Err(failure)) => Err(failure),
        Some(Ok(lease)) => socket_copies::copies_of(&lease.sockets)
            .map(|fds| (lease.id, lease.sockets.clone(), fds))
            .ok_or_else(|| Failure::NotPermitted {
                reason: "the lease's sockets cannot be found with any process".into(),
            }),
    };
    let (id, sockets, fds) = match found {
        Ok(found) => found,
        Err(failure) => return Reply::failed(failure),
    };
    state.handovers.remove(&token);
    if let Some(from) =
        state
            .table
            .hand_over(id, peer.conn, Rc::clone(&peer.holder), peer.start_time)
    {
        info!(lease = id.0, "handed over from {from} to {}", peer.holder);
    }
    Reply {
        fds,
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
        assert!(state.handovers.contains_key(&token), "the offer stands");
    }

    #[test]
    fn a_claim_takes_a_copy_from_the_process_that_holds_the_socket() {
        if !nix::unistd::getuid().is_root() {
            eprintln!("SKIPPED: pidfd_getfd of another process needs root");
            return;
        }
        let mut state = state();
        let holder = me(1);
        let (id, fd) = leased(&mut state, &holder);
        // The broker never takes a copy from itself: the socket must live in another
        // process, as it does for a real holder.
        let child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::from(fd))
            .spawn()
            .unwrap();
        let mut child = scopeguard(child);
        let Response::HandoverOffered { token, .. } = handover(&mut state, &holder, id).response
        else {
            panic!("not offered");
        };
        let claimant = me(2);
        let reply = claim(&mut state, &claimant, token);
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
        assert!(state.handovers.is_empty());
        child.0.kill().unwrap();
        child.0.wait().unwrap();
    }

    /// Kills the child if the test fails before it does.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    fn scopeguard(child: std::process::Child) -> Guard {
        Guard(child)
    }
}
