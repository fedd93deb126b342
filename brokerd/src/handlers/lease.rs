//! `Lease`: grants sockets as one lease, kept by the asking connection.

use portbroker_proto::{Response, SocketSpec};

use super::Reply;
use crate::grant::grant;
use crate::peer::Peer;
use crate::state::State;

pub fn lease(state: &mut State, peer: &Peer, specs: &[SocketSpec]) -> Reply {
    let mut binds = 0;
    let granted = grant(state, peer, specs, true, None, &mut binds);
    granted_or_refused(granted, binds)
}

/// The reply to a grant that attempted `binds` binds: `Granted` with the sockets, or
/// `Refused`; either way the binds are the work charged to the asker.
pub fn granted_or_refused(
    granted: Result<crate::grant::Granted, portbroker_proto::Refusal>,
    binds: u32,
) -> Reply {
    let reply = match granted {
        Ok(granted) => Reply {
            fds: granted.fds,
            new_lease: Some(granted.id),
            ..Reply::answer(Response::Granted {
                id: granted.id,
                fds: granted.sockets.len() as u32,
                sockets: granted.sockets,
            })
        },
        Err(refusal) => Reply::answer(Response::Refused(refusal)),
    };
    Reply {
        work: binds,
        ..reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{me, state, state_with, stranger};
    use crate::lease::Keeper;
    use portbroker_proto::{LeaseId, Refusal, Transport};
    use std::net::TcpListener;

    fn specs(text: &[&str]) -> Vec<SocketSpec> {
        text.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_grant_passes_bound_sockets_and_records_the_lease() {
        let mut state = state();
        let peer = me(7);
        let reply = lease(
            &mut state,
            &peer,
            &specs(&["tcp:127.0.0.1:0", "udp:127.0.0.1:0"]),
        );
        let Response::Granted { id, sockets, fds } = reply.response else {
            panic!("not granted: {:?}", reply.response);
        };
        assert_eq!((fds, reply.fds.len()), (2, 2));
        let listener = std::net::TcpListener::from(reply.fds.into_iter().next().unwrap());
        assert_eq!(listener.local_addr().unwrap(), sockets[0].addr);
        assert!(state
            .table
            .get(id)
            .is_some_and(|l| l.keeper == Keeper::Connection(7)));
        assert_eq!(state.table.kept_by_connection(7), [id]);
    }

    #[test]
    fn the_loser_is_told_who_holds_the_port() {
        let mut state = state();
        let winner = me(1);
        let reply = lease(&mut state, &winner, &specs(&["tcp:127.0.0.1:0"]));
        let Response::Granted { id, sockets, .. } = reply.response else {
            panic!("not granted");
        };
        let port = sockets[0].addr.port();
        let loser = stranger(2, 4242);
        let refused = lease(
            &mut state,
            &loser,
            &specs(&[&format!("tcp:0.0.0.0:{port}")]),
        );
        match refused.response {
            Response::Refused(Refusal::InUse {
                lease,
                holder,
                transport: Transport::Tcp,
                ..
            }) => {
                assert_eq!(lease, id);
                assert_eq!(holder.pid, winner.holder.pid);
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(refused.fds.is_empty());
        assert!(
            state.table.get(LeaseId(id.0 + 1)).is_none(),
            "no lease for the loser"
        );
    }

    #[test]
    fn a_refusal_binds_nothing() {
        let mut state = state();
        let peer = stranger(1, 4242);
        // The second spec is below the unprivileged ports: the whole request is refused.
        let reply = lease(
            &mut state,
            &peer,
            &specs(&["tcp:127.0.0.1:0", "tcp:127.0.0.1:80"]),
        );
        assert!(matches!(
            reply.response,
            Response::Refused(Refusal::NotPermitted { .. })
        ));
        assert_eq!(state.table.lease_count(), 0);
        let empty = lease(&mut state, &peer, &[]);
        assert!(matches!(
            empty.response,
            Response::Refused(Refusal::InvalidSpec { .. })
        ));
    }

    /// Asks for `count` sockets, any pool port on 127.0.0.1 each, as one lease.
    fn any(count: usize) -> Vec<SocketSpec> {
        vec!["tcp:127.0.0.1:0".parse().unwrap(); count]
    }

    fn granted(reply: Reply) -> LeaseId {
        match reply.response {
            Response::Granted { id, .. } => id,
            other => panic!("not granted: {other:?}"),
        }
    }

    fn refused_over_quota(reply: Reply) -> (String, u64, u64) {
        match reply.response {
            Response::Refused(Refusal::QuotaExceeded { quota, used, limit }) => {
                (quota, used, limit)
            }
            other => panic!("not refused over a quota: {other:?}"),
        }
    }

    #[test]
    fn a_user_holds_at_most_sockets_per_uid_sockets_however_they_are_packed() {
        let mut state = state_with(
            "[limits]\nsockets_per_uid = 4\n\n[[rule]]\nwho = \"everyone\"\nports = [\"pool\"]\n",
        );
        let peer = stranger(1, 4242);
        let first = granted(lease(&mut state, &peer, &any(3)));
        let quota = ("sockets_per_uid".to_owned(), 3, 4);
        assert_eq!(refused_over_quota(lease(&mut state, &peer, &any(2))), quota);
        assert_eq!(state.table.lease_count(), 1, "the refusal leased nothing");
        granted(lease(&mut state, &peer, &any(1)));
        let quota = ("sockets_per_uid".to_owned(), 4, 4);
        assert_eq!(refused_over_quota(lease(&mut state, &peer, &any(1))), quota);
        // Another user has a count of its own.
        granted(lease(&mut state, &stranger(2, 4343), &any(4)));
        // Root is exempt.
        if nix::unistd::getuid().is_root() {
            for conn in 3..5 {
                granted(lease(&mut state, &me(conn), &any(4)));
            }
        }
        // A lease that ends gives its sockets back.
        state.table.end(first);
        granted(lease(&mut state, &peer, &any(3)));
    }

    #[test]
    fn a_lease_reports_the_binds_it_attempted_as_its_work() {
        let mut state = state();
        let pool = state.table.pool();
        let peer = stranger(1, 4242);
        // Five pool ports held outside the broker: a port-0 lease tries them first.
        let held: Vec<TcpListener> = (pool.lo..pool.lo + 5)
            .map(|port| TcpListener::bind(("127.0.0.1", port)).expect("a free fixture port"))
            .collect();
        let reply = lease(&mut state, &peer, &any(1));
        assert_eq!(reply.work, 6, "five binds failed, the sixth took the port");
        let Response::Granted { sockets, .. } = reply.response else {
            panic!("not granted: {:?}", reply.response);
        };
        assert_eq!(sockets[0].addr.port(), pool.lo + 5);
        // An explicit port is one bind, and a refusal before any bind is none.
        let fixed = format!("tcp:127.0.0.1:{}", pool.hi);
        assert_eq!(lease(&mut state, &peer, &specs(&[&fixed])).work, 1);
        let refused = lease(&mut state, &peer, &specs(&["tcp:127.0.0.1:80"]));
        assert!(matches!(
            refused.response,
            Response::Refused(Refusal::NotPermitted { .. })
        ));
        assert_eq!(refused.work, 0);
        // A pool whose next 64 ports are all held outside: 64 binds, then the refusal.
        drop(held);
        let mut state = state_with("[[rule]]\nwho = \"everyone\"\nports = [\"pool\"]\n");
        let pool = state.table.pool();
        let _held: Vec<TcpListener> = (pool.lo..pool.lo + 64)
            .map(|port| TcpListener::bind(("127.0.0.1", port)).expect("a free fixture port"))
            .collect();
        let exhausted = lease(&mut state, &peer, &any(1));
        assert!(
            matches!(
                exhausted.response,
                Response::Refused(Refusal::PoolExhausted { .. })
            ),
            "{:?}",
            exhausted.response
        );
        assert_eq!(exhausted.work, 64);
    }
}
