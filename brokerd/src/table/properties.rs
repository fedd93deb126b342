//! After any sequence of transitions, every count and index the table keeps equals a recount
//! of its leases.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Grant {
        conn: u64,
        uid: u32,
        port: u16,
        two: bool,
    },
    End(usize),
    Tie(usize, i32),
    HandOver(usize, u64, u32),
    Reattach(usize, u64),
    Linger(usize, bool),
    Keep(usize),
    Renew(usize, u64),
    Offer(usize, u64),
    Expire(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..4u64, 1000..1003u32, 61000..61010u16, any::<bool>())
            .prop_map(|(conn, uid, port, two)| Op::Grant { conn, uid, port, two }),
        1 => (0..16usize).prop_map(Op::End),
        1 => (0..16usize, 1..4i32).prop_map(|(i, pid)| Op::Tie(i, pid)),
        1 => (0..16usize, 1..4u64, 1000..1003u32).prop_map(|(i, c, u)| Op::HandOver(i, c, u)),
        1 => (0..16usize, 1..4u64).prop_map(|(i, c)| Op::Reattach(i, c)),
        1 => (0..16usize, any::<bool>()).prop_map(|(i, s)| Op::Linger(i, s)),
        1 => (0..16usize).prop_map(Op::Keep),
        1 => (0..16usize, 0..3u64).prop_map(|(i, s)| Op::Renew(i, s)),
        1 => (0..16usize, 0..4u64).prop_map(|(i, t)| Op::Offer(i, t)),
        1 => (0..4u64).prop_map(Op::Expire),
    ]
}

/// The `i`-th live lease (by id, wrapping), if any.
fn nth(table: &Table, i: usize) -> Option<LeaseId> {
    let count = table.lease_count();
    (count > 0).then(|| table.leases().nth(i % count).unwrap().id)
}

fn apply(table: &mut Table, start: Instant, op: Op) {
    let holder = |pid: i32, uid: u32| {
        Rc::new(Holder {
            pid,
            uid,
            gid: uid,
            name: "p".into(),
        })
    };
    match op {
        Op::Grant {
            conn,
            uid,
            port,
            two,
        } => {
            let mut sockets = vec![GrantedSocket {
                transport: Transport::Tcp,
                addr: SocketAddr::new("127.0.0.1".parse().unwrap(), port),
                listening: true,
                v6_only: false,
            }];
            if two {
                sockets.push(GrantedSocket {
                    transport: Transport::Udp,
                    addr: SocketAddr::new("127.0.0.1".parse().unwrap(), port),
                    listening: false,
                    v6_only: false,
                });
            }
            // The grant path checks conflicts first; so does this model.
            if sockets
                .iter()
                .any(|s| table.conflict(s.transport, s.addr).is_some())
            {
                return;
            }
            let cookies = (0..sockets.len() as u64).collect();
            table.grant(NewLease {
                keeper: Keeper::Connection(conn),
                holder: holder(100, uid),
                start_time: 1,
                since: 0,
                sockets,
                cookies,
                service: None,
            });
        }
        Op::End(i) => {
            if let Some(id) = nth(table, i) {
                table.end(id, EndReason::Released);
            }
        }
        Op::Tie(i, pid) => {
            if let Some(id) = nth(table, i) {
                let uid = table.get(id).unwrap().holder.uid;
                table.tie(id, Holder::clone(&holder(pid, uid)), 1);
            }
        }
        Op::HandOver(i, conn, uid) => {
            if let Some(id) = nth(table, i) {
                table.hand_over(id, conn, holder(200, uid), 1);
            }
        }
        Op::Reattach(i, conn) => {
            if let Some(id) = nth(table, i) {
                table.reattach(id, conn);
            }
        }
        Op::Linger(i, survivor) => {
            if let Some(id) = nth(table, i) {
                table.linger(id, survivor.then(|| (300, "s".into(), 1)));
            }
        }
        Op::Keep(i) => {
            if let Some(id) = nth(table, i) {
                table.keep(id, Deadline::after(Duration::from_secs(1)));
            }
        }
        Op::Renew(i, secs) => {
            if let Some(id) = nth(table, i) {
                let limit = (secs > 0).then(|| Deadline::after(Duration::from_secs(secs)));
                table.set_time_limit(id, limit);
            }
        }
        Op::Offer(i, token) => {
            if let Some(id) = nth(table, i) {
                table.offer(id, token);
            }
        }
        Op::Expire(secs) => {
            table.take_expired(start + Duration::from_secs(secs));
        }
    }
}

/// An index as sets, for comparing with a recount.
fn recount<K: Copy + std::hash::Hash + Eq>(
    map: &HashMap<K, super::Keeps>,
) -> HashMap<K, BTreeSet<LeaseId>> {
    map.iter()
        .map(|(k, v)| (*k, v.iter().copied().collect()))
        .collect()
}

/// Every count and index, against a recount of the leases.
fn assert_consistent(table: &Table) {
    let mut per_uid: HashMap<u32, u64> = HashMap::default();
    let mut sockets_per_uid: HashMap<u32, u64> = HashMap::default();
    let mut by_conn: HashMap<ConnId, BTreeSet<LeaseId>> = HashMap::default();
    let mut by_process: HashMap<i32, BTreeSet<LeaseId>> = HashMap::default();
    let mut lingering = BTreeSet::new();
    let mut offers = HashMap::default();
    let mut sockets = 0;
    for lease in table.leases() {
        *per_uid.entry(lease.holder.uid).or_default() += 1;
        *sockets_per_uid.entry(lease.holder.uid).or_default() += lease.sockets.len() as u64;
        sockets += lease.sockets.len();
        match lease.keeper {
            Keeper::Connection(conn) => {
                by_conn.entry(conn).or_default().insert(lease.id);
            }
            Keeper::Process(pid) => {
                by_process.entry(pid).or_default().insert(lease.id);
            }
            Keeper::Lingering => {
                lingering.insert(lease.id);
            }
            Keeper::Kept => {}
        }
        if let Some(token) = lease.offer {
            offers.insert(token, lease.id);
        }
        for socket in &lease.sockets {
            let hit = table
                .conflict(socket.transport, socket.addr)
                .expect("indexed");
            assert_eq!(hit.lease.id, lease.id);
        }
    }
    assert_eq!(table.per_uid, per_uid, "per-uid lease counts");
    assert_eq!(
        table.sockets_per_uid, sockets_per_uid,
        "per-uid socket counts"
    );
    assert_eq!(table.socket_count(), sockets, "socket count");
    assert_eq!(recount(&table.by_conn), by_conn, "leases by connection");
    assert_eq!(recount(&table.by_process), by_process, "leases by process");
    assert_eq!(table.lingering, lingering, "lingering leases");
    assert_eq!(table.offers, offers, "handover offers");
    let bound: usize = table.ports.values().map(|bindings| bindings.len()).sum();
    assert_eq!(bound, sockets, "port bindings");
}

proptest! {
    #[test]
    fn counts_and_indexes_equal_a_recount(ops in prop::collection::vec(op(), 1..60)) {
        let mut table = Table::new(PortRange { lo: 61000, hi: 61009 });
        let start = Instant::now();
        for op in ops {
            apply(&mut table, start, op);
            assert_consistent(&table);
        }
    }
}
