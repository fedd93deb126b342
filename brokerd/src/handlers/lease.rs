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
        Ok(granted) => {
            // A number lease passes no fds: the count says so.
            let fds = granted.fds.len() as u32;
            Reply {
                fds: granted.fds,
                new_lease: Some(granted.id),
                ..Reply::answer(Response::Granted {
                    id: granted.id,
                    fds,
                    sockets: granted.sockets,
                })
            }
        }
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
    use portbroker_proto::{EndReason, LeaseId, Refusal, Transport};
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
        state.table.end(first, EndReason::Released);
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

    fn lease_id_and_sockets(reply: Reply) -> (LeaseId, Vec<portbroker_proto::GrantedSocket>) {
        match reply.response {
            Response::Granted { id, sockets, .. } => (id, sockets),
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn an_ipv6_only_wildcard_and_an_ipv4_wildcard_share_a_port_as_in_the_kernel() {
        let Some(mut state) = super::super::fixture::state_with_ipv6() else {
            eprintln!("skipped: this host has no IPv6");
            return;
        };
        let peer = stranger(1, 4242);
        let (_, v4) = lease_id_and_sockets(lease(&mut state, &peer, &specs(&["tcp:0.0.0.0:0"])));
        let port = v4[0].addr.port();
        // What redis and memcached do: 0.0.0.0:P, then [::]:P with IPV6_V6ONLY.
        let v6_only = SocketSpec {
            v6_only: true,
            ..format!("tcp:[::]:{port}").parse().unwrap()
        };
        let reply = lease(&mut state, &peer, &[v6_only]);
        assert_eq!(reply.fds.len(), 1);
        let v6_fd = &reply.fds[0];
        assert!(
            nix::sys::socket::getsockopt(v6_fd, nix::sys::socket::sockopt::Ipv6V6Only).unwrap()
        );
        let (_, v6) = lease_id_and_sockets(reply);
        assert!(v6[0].v6_only);
        assert_eq!(v6[0].to_string(), format!("tcp:[::]:{port} (IPv6 only)"));
        // A dual-stack [::] overlaps both; a specific IPv6 address the IPv6-only one.
        for taken in [format!("tcp:[::]:{port}"), format!("tcp:[::1]:{port}")] {
            let refused = lease(&mut state, &stranger(2, 4343), &specs(&[&taken]));
            assert!(
                matches!(refused.response, Response::Refused(Refusal::InUse { .. })),
                "{taken}: {:?}",
                refused.response
            );
        }
        // IPv6-only is for IPv6 addresses.
        let v4_only = SocketSpec {
            v6_only: true,
            ..SocketSpec::tcp(Some("127.0.0.1".parse().unwrap()), 0)
        };
        assert!(matches!(
            lease(&mut state, &peer, &[v4_only]).response,
            Response::Refused(Refusal::InvalidSpec { .. })
        ));
    }

    fn number(text: &str) -> SocketSpec {
        SocketSpec {
            listen: portbroker_proto::Listen::Number,
            ..text.parse().unwrap()
        }
    }

    #[test]
    fn a_number_passes_no_socket_and_its_users_own_lease_takes_it_over() {
        let mut state = state();
        let owner = stranger(1, 4242);
        let reply = lease(&mut state, &owner, &[number("tcp:127.0.0.1:0")]);
        assert!(reply.fds.is_empty(), "a number passes no fd");
        let Response::Granted {
            id,
            ref sockets,
            fds,
        } = reply.response
        else {
            panic!("not granted: {:?}", reply.response);
        };
        assert_eq!(fds, 0);
        let port = sockets[0].addr.port();
        let held = state.table.get(id).unwrap();
        assert_eq!(held.state(), portbroker_proto::LeaseState::Number);
        // The broker holds no socket: the port is bindable, as a number must be.
        assert!(crate::bind::is_free(Transport::Tcp, sockets[0].addr, false));

        // Another user is refused and told who holds it; a number does not take a number over.
        let other = lease(
            &mut state,
            &stranger(2, 4343),
            &specs(&[&format!("tcp:127.0.0.1:{port}")]),
        );
        assert!(matches!(
            other.response,
            Response::Refused(Refusal::InUse { lease, .. }) if lease == id
        ));
        let again = lease(
            &mut state,
            &owner,
            &[number(&format!("tcp:127.0.0.1:{port}"))],
        );
        assert!(matches!(
            again.response,
            Response::Refused(Refusal::InUse { .. })
        ));
        // Numbers and sockets do not mix in one lease.
        let mixed = lease(
            &mut state,
            &owner,
            &[
                number("tcp:127.0.0.1:0"),
                "tcp:127.0.0.1:0".parse().unwrap(),
            ],
        );
        assert!(matches!(
            mixed.response,
            Response::Refused(Refusal::InvalidSpec { .. })
        ));
        assert!(
            state.table.get(id).is_some(),
            "refusals leave the number alone"
        );

        // The same user's server (another connection, another process) binds it: the number
        // ends and the socket lease is granted, with no moment the port is anyone else's.
        let server = stranger(3, 4242);
        let reply = lease(
            &mut state,
            &server,
            &specs(&[&format!("tcp:0.0.0.0:{port}")]),
        );
        assert_eq!(reply.fds.len(), 1);
        let (taken, _) = lease_id_and_sockets(reply);
        assert!(state.table.get(id).is_none(), "the number ended");
        assert_eq!(
            state.table.get(taken).unwrap().state(),
            portbroker_proto::LeaseState::Connection
        );
        assert_eq!(state.table.lease_count(), 1);
    }

    /// A user at its quota, holding a number, may still bind that number: the lease takes the
    /// number's place in the count. Another port stays refused.
    #[test]
    fn a_number_taken_over_makes_room_for_its_own_lease_in_the_quotas() {
        let mut state = state_with(
            "[limits]\nleases_per_uid = 1\nsockets_per_uid = 1\n\n\
             [[rule]]\nwho = \"everyone\"\nports = [\"pool\", \"1024-65535\"]\n",
        );
        let owner = stranger(1, 4242);
        let number = granted(lease(&mut state, &owner, &[number("tcp:127.0.0.1:0")]));
        let port = state.table.get(number).unwrap().sockets[0].addr.port();
        let quota = ("leases_per_uid".to_owned(), 1, 1);
        assert_eq!(
            refused_over_quota(lease(&mut state, &owner, &any(1))),
            quota,
            "the number counts"
        );
        let server = stranger(2, 4242);
        let taken = granted(lease(
            &mut state,
            &server,
            &specs(&[&format!("tcp:127.0.0.1:{port}")]),
        ));
        assert!(state.table.get(number).is_none(), "the number ended");
        assert_eq!(state.table.leases_of_uid(4242), 1);
        assert_eq!(state.table.sockets_of_uid(4242), 1);
        assert_eq!(
            refused_over_quota(lease(&mut state, &owner, &any(1))),
            quota,
            "the socket lease counts in its place"
        );
        assert!(state.table.get(taken).is_some());
    }
}
