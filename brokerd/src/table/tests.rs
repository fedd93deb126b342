//! The table's indexes and every transition of a lease's life, over in-memory state.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use portbroker_proto::LeaseState;

use super::*;

fn holder(pid: i32, uid: u32) -> Rc<Holder> {
    Rc::new(Holder {
        pid,
        uid,
        gid: uid,
        name: format!("p{pid}"),
    })
}

fn sock(transport: Transport, addr: &str) -> GrantedSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    GrantedSocket {
        transport,
        addr,
        listening: transport == Transport::Tcp,
        // As the broker binds them: `[::]` dual-stack, a specific IPv6 address IPv6-only.
        v6_only: addr.is_ipv6() && !addr.ip().is_unspecified(),
    }
}

fn table() -> Table {
    Table::new(PortRange {
        lo: 61000,
        hi: 61009,
    })
}

/// A lease of `addr` kept by connection `conn`, held by pid 100 of uid 1000.
fn grant_on(table: &mut Table, conn: ConnId, addr: &str) -> LeaseId {
    table.grant(NewLease {
        keeper: Keeper::Connection(conn),
        holder: holder(100, 1000),
        start_time: 7,
        since: 0,
        sockets: vec![sock(Transport::Tcp, addr)],
        cookies: vec![1],
        service: None,
    })
}

fn state(table: &Table, id: LeaseId) -> LeaseState {
    table.get(id).unwrap().state()
}

#[test]
fn overlap_follows_the_kernel_bind_rules() {
    let any4: IpAddr = Ipv4Addr::UNSPECIFIED.into();
    let lo4: IpAddr = Ipv4Addr::LOCALHOST.into();
    let other4: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    let any6: IpAddr = Ipv6Addr::UNSPECIFIED.into();
    let lo6: IpAddr = Ipv6Addr::LOCALHOST.into();
    let addrs_overlap = |a: IpAddr, b: IpAddr| {
        let dual = |ip| BindAddr { ip, v6_only: false };
        dual(a).overlaps(dual(b))
    };
    assert!(addrs_overlap(lo4, lo4));
    assert!(addrs_overlap(any4, lo4) && addrs_overlap(lo4, any4));
    assert!(!addrs_overlap(lo4, other4));
    assert!(addrs_overlap(any6, lo4) && addrs_overlap(lo4, any6));
    assert!(addrs_overlap(any6, any4));
    assert!(addrs_overlap(any6, lo6));
    assert!(!addrs_overlap(lo6, any4));
    assert!(!addrs_overlap(lo6, lo4));
    // An IPv6-only `[::]` leaves IPv4 alone, either way round, and still takes all of IPv6.
    let any6_only = BindAddr {
        ip: any6,
        v6_only: true,
    };
    for v4 in [any4, lo4] {
        let v4 = BindAddr {
            ip: v4,
            v6_only: false,
        };
        assert!(!any6_only.overlaps(v4) && !v4.overlaps(any6_only));
    }
    assert!(any6_only.overlaps(BindAddr {
        ip: lo6,
        v6_only: true
    }));
    assert!(any6_only.overlaps(BindAddr {
        ip: any6,
        v6_only: false
    }));
}

#[test]
fn grant_indexes_the_lease_by_port_uid_and_connection() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:8080");
    let hit = table
        .conflict(Transport::Tcp, "0.0.0.0:8080".parse().unwrap())
        .unwrap();
    assert_eq!(
        (hit.lease.id, hit.held),
        (id, "127.0.0.1:8080".parse().unwrap())
    );
    assert!(table
        .conflict(Transport::Tcp, "[::]:8080".parse().unwrap())
        .is_some());
    assert!(table
        .conflict(Transport::Udp, "127.0.0.1:8080".parse().unwrap())
        .is_none());
    assert!(table
        .conflict(Transport::Tcp, "127.0.0.1:8081".parse().unwrap())
        .is_none());
    assert!(table
        .conflict(Transport::Tcp, "[::1]:8080".parse().unwrap())
        .is_none());
    assert_eq!(table.leases_of_uid(1000), 1);
    assert_eq!(table.sockets_of_uid(1000), 1);
    assert_eq!(table.kept_by_connection(5), [id]);
    assert_eq!(state(&table, id), LeaseState::Connection);
    assert_eq!(table.take_changes(), (vec![(id, Change::Granted)], vec![]));
}

#[test]
fn end_frees_the_port_and_every_index() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:61003");
    assert_eq!(
        table.free_pool_port(Transport::Tcp, 8, |_| false),
        Some(61004)
    );
    table.take_changes();
    let lease = table.end(id, EndReason::Released).unwrap();
    assert_eq!(lease.id, id);
    assert!(table
        .conflict(Transport::Tcp, "0.0.0.0:61003".parse().unwrap())
        .is_none());
    assert_eq!((table.lease_count(), table.socket_count()), (0, 0));
    assert_eq!(table.leases_of_uid(1000), 0);
    assert_eq!(table.sockets_of_uid(1000), 0);
    assert!(table.kept_by_connection(5).is_empty());
    assert_eq!(
        table.take_changes(),
        (vec![], vec![(id, EndReason::Released)])
    );
    assert!(
        table.end(id, EndReason::Released).is_none(),
        "a lease ends once"
    );
}

#[test]
fn tie_moves_the_lease_from_its_connection_to_a_process() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:8080");
    table.take_changes();
    let child = Holder::clone(&holder(200, 1000));
    let tied = table.tie(id, child, 99).unwrap();
    assert_eq!((tied.holder.pid, tied.start_time), (200, 99));
    assert_eq!(state(&table, id), LeaseState::Process);
    assert!(table.kept_by_connection(5).is_empty());
    assert_eq!(table.tied_to_process(200), [id]);
    assert_eq!(
        table.take_changes().0,
        [(id, Change::Tied)],
        "the journal learns the new holder"
    );
}

#[test]
fn holder_exit_finds_exactly_the_leases_tied_to_that_process() {
    let mut table = table();
    let a = grant_on(&mut table, 5, "127.0.0.1:8080");
    let b = grant_on(&mut table, 5, "127.0.0.1:8081");
    let c = grant_on(&mut table, 6, "127.0.0.1:8082");
    table.tie(a, Holder::clone(&holder(200, 1000)), 1);
    table.tie(b, Holder::clone(&holder(200, 1000)), 1);
    table.tie(c, Holder::clone(&holder(300, 1000)), 1);
    let mut exited = table.tied_to_process(200).to_vec();
    exited.sort();
    assert_eq!(exited, [a, b]);
    table.end(a, EndReason::Released);
    assert_eq!(table.tied_to_process(200), [b]);
    table.end(b, EndReason::Released);
    assert!(table.tied_to_process(200).is_empty());
    assert_eq!(table.tied_to_process(300), [c]);
}

#[test]
fn hand_over_gives_the_same_lease_to_the_claimants_connection() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:8080");
    table.take_changes();
    let from = table.hand_over(id, 6, holder(300, 1000), 42).unwrap();
    assert_eq!(from.pid, 100);
    let lease = table.get(id).unwrap();
    assert_eq!((lease.holder.pid, lease.start_time), (300, 42));
    assert!(table.kept_by_connection(5).is_empty());
    assert_eq!(table.kept_by_connection(6), [id]);
    assert_eq!(table.take_changes().0, [(id, Change::HandedOver)]);
    // A tied lease handed over leaves its process.
    table.tie(id, Holder::clone(&holder(400, 1000)), 1);
    table.hand_over(id, 7, holder(500, 1000), 1);
    assert!(table.tied_to_process(400).is_empty());
    assert_eq!(table.kept_by_connection(7), [id]);
}

#[test]
fn an_offer_stands_until_claimed_replaced_or_ended() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:8080");
    table.offer(id, 11);
    table.offer(id, 12);
    assert_eq!((table.offered(11), table.offered(12)), (None, Some(id)));
    table.hand_over(id, 6, holder(300, 1000), 1);
    assert_eq!(table.offered(12), None, "claimed");
    table.offer(id, 13);
    table.end(id, EndReason::Released);
    assert_eq!(table.offer_count(), 0, "ended with its lease");
    table.offer(LeaseId(999), 14);
    assert_eq!(
        table.offer_count(),
        0,
        "no offer for a lease that is not there"
    );
}

#[test]
fn the_last_lease_leaving_a_process_untethers_it() {
    let mut table = table();
    let a = grant_on(&mut table, 5, "127.0.0.1:8080");
    let b = grant_on(&mut table, 5, "127.0.0.1:8081");
    table.tie(a, Holder::clone(&holder(200, 1000)), 1);
    table.tie(b, Holder::clone(&holder(200, 1000)), 1);
    table.end(a, EndReason::Released);
    assert!(table.take_untied().is_empty());
    table.linger(b, None);
    assert_eq!(table.take_untied(), [200]);
}

#[test]
fn a_claim_by_another_user_moves_the_quota_count() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:8080");
    table.hand_over(id, 6, holder(300, 2000), 1);
    assert_eq!(
        (table.leases_of_uid(1000), table.leases_of_uid(2000)),
        (0, 1)
    );
    table.end(id, EndReason::Released);
    assert_eq!(
        (table.leases_of_uid(1000), table.leases_of_uid(2000)),
        (0, 0)
    );
}

#[test]
fn reattach_moves_a_lease_to_the_new_connection() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:8080");
    table.reattach(id, 9);
    assert!(table.kept_by_connection(5).is_empty());
    assert_eq!(table.kept_by_connection(9), [id]);
    assert_eq!(state(&table, id), LeaseState::Connection);
    table.reattach(LeaseId(999), 9); // unknown: nothing happens
    assert_eq!(table.kept_by_connection(9), [id]);
}

#[test]
fn linger_keeps_the_port_names_the_survivor_and_drops_the_time_limit() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:8080");
    table.set_time_limit(id, Some(Deadline::after(Duration::from_secs(60))));
    let lease = table.linger(id, Some((300, "child".into(), 5))).unwrap();
    assert_eq!(
        (lease.holder.pid, lease.holder.name.as_str()),
        (300, "child")
    );
    assert_eq!(
        lease.start_time, 5,
        "the survivor's start time, to know it again"
    );
    assert_eq!(
        lease.holder.uid, 1000,
        "the survivor is named, the user stays"
    );
    assert!(lease.expires.is_none());
    assert_eq!(state(&table, id), LeaseState::Lingering);
    assert_eq!(table.lingering().collect::<Vec<_>>(), [id]);
    assert!(table.kept_by_connection(5).is_empty());
    assert!(table
        .conflict(Transport::Tcp, "127.0.0.1:8080".parse().unwrap())
        .is_some());
    assert!(table
        .take_expired(Instant::now() + Duration::from_secs(120))
        .is_empty());
    table.end(id, EndReason::Released);
    assert_eq!(table.lingering().count(), 0);
}

#[test]
fn keep_holds_a_sticky_services_ports_until_its_deadline() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:8080");
    let until = Deadline::after(Duration::from_secs(30));
    let kept = table.keep(id, until).unwrap();
    assert_eq!(kept.expires, Some(until));
    assert_eq!(state(&table, id), LeaseState::Kept);
    assert!(table.kept_by_connection(5).is_empty());
    assert!(table.take_expired(Instant::now()).is_empty());
    let ended = table.take_expired(until.at);
    assert_eq!(ended.iter().map(|l| l.id).collect::<Vec<_>>(), [id]);
    assert!(table.get(id).is_none());
}

#[test]
fn expire_ends_only_leases_whose_current_limit_has_passed() {
    let mut table = table();
    let soon = grant_on(&mut table, 5, "127.0.0.1:8080");
    let renewed = grant_on(&mut table, 5, "127.0.0.1:8081");
    let now = Instant::now();
    table.set_time_limit(soon, Some(Deadline::after(Duration::from_secs(1))));
    table.set_time_limit(renewed, Some(Deadline::after(Duration::from_secs(1))));
    // Renewed: the earlier limit is stale.
    table.set_time_limit(renewed, Some(Deadline::after(Duration::from_secs(100))));
    assert!(table.next_deadline().is_some_and(|at| at > now));
    let expired = table.take_expired(now + Duration::from_secs(2));
    assert_eq!(expired.iter().map(|l| l.id).collect::<Vec<_>>(), [soon]);
    assert!(table.get(renewed).is_some());
    // A limit removed (renew with 0) never fires.
    table.set_time_limit(renewed, None);
    assert!(table
        .take_expired(now + Duration::from_secs(200))
        .is_empty());
    assert!(table.get(renewed).is_some());
}

#[test]
fn a_restored_lease_keeps_its_id_and_later_ids_are_higher() {
    let mut table = table();
    table
        .restore(
            LeaseId(41),
            NewLease {
                keeper: Keeper::Process(100),
                holder: holder(100, 0),
                start_time: 1,
                since: 0,
                sockets: vec![sock(Transport::Tcp, "127.0.0.1:8080")],
                cookies: vec![1],
                service: None,
            },
        )
        .unwrap();
    let hit = table
        .conflict(Transport::Tcp, "0.0.0.0:8080".parse().unwrap())
        .unwrap();
    assert_eq!(hit.lease.id, LeaseId(41));
    assert_eq!(table.tied_to_process(100), [LeaseId(41)]);
    assert_eq!(
        table.take_changes(),
        (vec![], vec![]),
        "restoring is no change"
    );
    let next = grant_on(&mut table, 1, "127.0.0.1:8081");
    assert_eq!(next, LeaseId(42));
    assert!(table.end(LeaseId(41), EndReason::Released).is_some());
}

#[test]
fn restoring_refuses_impossible_ids_and_overlaps_without_panicking() {
    let mut table = table();
    let lease = |port: u16| NewLease {
        keeper: Keeper::Process(100),
        holder: holder(100, 1000),
        start_time: 1,
        since: 0,
        sockets: vec![sock(Transport::Tcp, &format!("127.0.0.1:{port}"))],
        cookies: vec![1],
        service: None,
    };
    assert!(table.restore(LeaseId(u64::MAX), lease(8080)).is_err());
    assert!(table.restore(LeaseId(0), lease(8080)).is_err());
    assert!(table.restore(LeaseId(5), lease(8080)).is_ok());
    assert!(
        table.restore(LeaseId(5), lease(8081)).is_err(),
        "the same id twice"
    );
    assert!(
        table.restore(LeaseId(6), lease(8080)).is_err(),
        "the same port twice"
    );
    let empty = NewLease {
        sockets: Vec::new(),
        cookies: Vec::new(),
        ..lease(0)
    };
    assert!(table.restore(LeaseId(7), empty).is_err());
    assert_eq!(table.lease_count(), 1);
    // Later grants get fresh ids and find nothing missing.
    let next = grant_on(&mut table, 1, "127.0.0.1:8082");
    assert_eq!(next, LeaseId(6));
    assert!(table.end(next, EndReason::Released).is_some());
}

#[test]
fn a_reattached_lingering_lease_is_live_again_and_lingers_no_more() {
    let mut table = table();
    let id = grant_on(&mut table, 5, "127.0.0.1:8080");
    table.linger(id, None);
    table.reattach(id, 9);
    assert_eq!(state(&table, id), LeaseState::Connection);
    assert_eq!(table.lingering().count(), 0);
    assert_eq!(table.kept_by_connection(9), [id]);
}

#[test]
fn the_per_uid_counts_follow_the_lease_to_another_user() {
    // An administrator may claim another user's lease, or tie it to another user's process:
    // from then on the lease counts against the new holder's quotas, not the old one's.
    let mut table = table();
    let id = table.grant(NewLease {
        keeper: Keeper::Connection(5),
        holder: holder(100, 1000),
        start_time: 7,
        since: 0,
        sockets: vec![
            sock(Transport::Tcp, "127.0.0.1:8080"),
            sock(Transport::Udp, "127.0.0.1:8080"),
        ],
        cookies: vec![1, 2],
        service: None,
    });
    // (leases, sockets) counted for `uid`.
    let counts = |table: &Table, uid| (table.leases_of_uid(uid), table.sockets_of_uid(uid));
    assert_eq!(counts(&table, 1000), (1, 2));
    table.hand_over(id, 6, holder(300, 2000), 1);
    assert_eq!(
        (counts(&table, 1000), counts(&table, 2000)),
        ((0, 0), (1, 2))
    );
    table.tie(id, Holder::clone(&holder(400, 3000)), 1);
    assert_eq!(
        (counts(&table, 2000), counts(&table, 3000)),
        ((0, 0), (1, 2))
    );
    table.end(id, EndReason::Released);
    assert_eq!(counts(&table, 3000), (0, 0));
}

/// A lease renewed in a loop with a far deadline: the replaced deadlines do not pile up in
/// the heap until they are due (weeks away), and the one that counts still ends the lease.
#[test]
fn renewing_in_a_loop_keeps_the_deadline_heap_small() {
    let mut table = table();
    let id = grant_on(&mut table, 1, "127.0.0.1:61000");
    let far = Duration::from_secs(49 * 24 * 3600);
    for _ in 0..10_000 {
        table.set_time_limit(id, Some(Deadline::after(far)));
    }
    assert!(
        table.deadline_entries() <= 2 * table.lease_count() + 64 + 1,
        "{} entries for one lease",
        table.deadline_entries()
    );
    let soon = Deadline::after(Duration::ZERO);
    table.set_time_limit(id, Some(soon));
    let ended = table.take_expired(soon.at);
    assert_eq!(
        ended.len(),
        1,
        "the last deadline set is the one that counts"
    );
}
