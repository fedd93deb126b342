//! `Revoke`: an administrator takes a lease away. Its sockets stop accepting wherever they
//! are, the lease ends, and its holder's connection is told.

use portbroker_proto::{EndReason, Event, Failure, LeaseId, Response};
use tracing::warn;

use super::Reply;
use crate::lease::{Keeper, SocketList};
use crate::peer::Peer;
use crate::socket_copies;
use crate::state::{Notice, State};

pub fn revoke(state: &mut State, peer: &Peer, id: LeaseId) -> Reply {
    let asker = &peer.holder;
    if !state.policy.is_admin(&peer.identity) {
        state.refusals.request(format_args!(
            "refused to revoke lease {id} for {asker}: not an administrator"
        ));
        return Reply::failed(Failure::NotPermitted {
            reason: "revoking a lease needs root or a member of an [admin] group".into(),
        });
    }
    let Some(lease) = state.table.end(id, EndReason::Revoked) else {
        return Reply::failed(Failure::UnknownLease { id });
    };
    state.counters.revokes += 1;
    if state.metrics_lease == Some(id) {
        // The daemon's own socket, which the search below never looks at: the loop closes the
        // endpoint before this answer leaves.
        state.metrics_lease = None;
    }
    state.watchers.emit(|| Event::Revoked { id });
    let found = socket_copies::shut_down_everywhere(lease.leased());
    warn!(
        lease = id.0,
        "revoked by {asker}: {} of {}, {found} of {} sockets found and shut down",
        SocketList(&lease.sockets),
        lease.holder,
        lease.sockets.len()
    );
    let notices = match lease.keeper {
        Keeper::Connection(conn) => vec![Notice {
            conn,
            response: Response::Revoked { id },
        }],
        Keeper::Process(_) | Keeper::Lingering | Keeper::Kept => Vec::new(),
    };
    Reply {
        notices,
        ..Reply::answer(Response::Released { id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state, stranger};

    #[test]
    fn only_an_administrator_revokes() {
        let mut state = state();
        let (id, _fd) = leased(&mut state, &stranger(1, 4242));
        let refused = revoke(&mut state, &stranger(2, 4242), id);
        assert!(matches!(
            refused.response,
            Response::Failed(Failure::NotPermitted { .. })
        ));
        assert!(state.table.get(id).is_some());
    }

    #[test]
    fn a_revoked_lease_ends_and_its_holder_is_told() {
        if !nix::unistd::getuid().is_root() {
            eprintln!("SKIPPED: revoking needs root");
            return;
        }
        let mut state = state();
        let (id, _fd) = leased(&mut state, &stranger(5, 4242));
        let reply = revoke(&mut state, &me(6), id);
        assert_eq!(reply.response, Response::Released { id });
        assert!(state.table.get(id).is_none());
        assert_eq!(reply.notices.len(), 1);
        assert_eq!(reply.notices[0].conn, 5);
        assert_eq!(reply.notices[0].response, Response::Revoked { id });
        assert_eq!(state.counters.revokes, 1, "counted for the metrics");
        let again = revoke(&mut state, &me(6), id);
        assert_eq!(
            again.response,
            Response::Failed(Failure::UnknownLease { id })
        );
    }
}
