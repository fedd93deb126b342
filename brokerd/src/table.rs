//! The lease table: who holds which (transport, address, port), who keeps each lease alive,
//! and every transition of a lease's life.
//!
//! Owned by the event-loop thread alone, so it needs no locks. Conflicts are found by
//! (transport, port), never by scanning every lease; the leases of a connection, of a process
//! and the lingering ones are indexed here too, and only the transitions below change a
//! lease's keeper, so the indexes cannot drift from the leases.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use portbroker_proto::{EndReason, GrantedSocket, Holder, LeaseId, PortRange, Transport};
use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;

use crate::journal::Change;
use crate::lease::{ConnId, Deadline, Keeper, Lease, MAX_LEASE_ID, MAX_SOCKETS_PER_LEASE};
use crate::pool::Pool;

/// An address as the kernel's bind rules see it: the IP, and for IPv6 whether the socket
/// takes IPv6 only (`IPV6_V6ONLY`; always so for a specific IPv6 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddr {
    pub ip: IpAddr,
    pub v6_only: bool,
}

impl BindAddr {
    /// The address of a leased socket.
    pub fn of(socket: &GrantedSocket) -> BindAddr {
        BindAddr {
            ip: socket.addr.ip(),
            v6_only: socket.v6_only,
        }
    }

    /// Whether two addresses of the same transport and port collide in the kernel's bind
    /// rules: the identical address, a wildcard against any address of its family, and a
    /// dual-stack `[::]` against any IPv4 address (an IPv6-only `[::]` leaves IPv4 alone).
    pub fn overlaps(self, other: BindAddr) -> bool {
        match (self.ip, other.ip) {
            (IpAddr::V4(x), IpAddr::V4(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
            (IpAddr::V6(x), IpAddr::V6(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
            (IpAddr::V6(v6), IpAddr::V4(_)) => v6.is_unspecified() && !self.v6_only,
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.is_unspecified() && !other.v6_only,
        }
    }
}

/// One address bound on a port, and the lease that holds it.
#[derive(Debug, Clone, Copy)]
struct Binding {
    addr: BindAddr,
    lease: LeaseId,
}

/// A live lease that overlaps an address asked for.
pub struct Conflict<'a> {
    pub held: SocketAddr,
    pub lease: &'a Lease,
}

/// What a new lease is: everything but its id.
pub struct NewLease {
    pub keeper: Keeper,
    pub holder: Rc<Holder>,
    pub start_time: u64,
    pub since: u64,
    pub sockets: Vec<GrantedSocket>,
    pub cookies: Vec<u64>,
    pub service: Option<Rc<str>>,
}

#[derive(Debug)]
pub struct Table {
    leases: BTreeMap<LeaseId, Lease>,
    /// Nearly every port has one binding: inline, so that a grant allocates nothing here.
    ports: HashMap<(Transport, u16), SmallVec<[Binding; 1]>>,
    pool: Pool,
    sockets: usize,
    /// Live leases per holder uid, for the per-user quota.
    per_uid: HashMap<u32, u64>,
    /// Live leased sockets per holder uid, for `sockets_per_uid` (a lease holds up to 64).
    sockets_per_uid: HashMap<u32, u64>,
    /// The leases each keeper keeps, kept in step by `set_keeper`.
    by_conn: HashMap<ConnId, Keeps>,
    by_process: HashMap<i32, Keeps>,
    lingering: BTreeSet<LeaseId>,
    /// Standing handover offers: token to lease; an offer dies with its lease.
    offers: HashMap<u64, LeaseId>,
    /// Processes whose last tied lease left since `take_untied`, to stop watching them.
    untied: Vec<i32>,
    /// Time limits, earliest first. An entry is stale when its lease was renewed or has
    /// ended; it is dropped when it comes up.
    deadlines: BinaryHeap<Reverse<(Instant, LeaseId)>>,
    /// Leases granted or changed (and how), and leases ended (and why), since the journal
    /// last took them.
    changed: Vec<(LeaseId, Change)>,
    ended: Vec<(LeaseId, EndReason)>,
    /// Leases granted and ended since the daemon started, for the log's summaries.
    granted_total: u64,
    ended_total: u64,
    next_id: u64,
}

/// Adds or removes `id` in the list of one keeper, dropping lists that become empty.
/// The leases one connection or one process keeps: nearly always one or two, kept inline so
/// that a lease, granted and ended, allocates no list of its own.
type Keeps = SmallVec<[LeaseId; 2]>;

fn index<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Keeps>, key: K, id: LeaseId, add: bool) {
    if add {
        map.entry(key).or_default().push(id);
    } else if let Some(ids) = map.get_mut(&key) {
        if let Some(at) = ids.iter().position(|&l| l == id) {
            ids.swap_remove(at);
        }
        if ids.is_empty() {
            map.remove(&key);
        }
    }
}

impl Table {
    pub fn new(pool: PortRange) -> Self {
        Table {
            leases: BTreeMap::new(),
            ports: HashMap::default(),
            pool: Pool::new(pool),
            sockets: 0,
            per_uid: HashMap::default(),
            sockets_per_uid: HashMap::default(),
            by_conn: HashMap::default(),
            by_process: HashMap::default(),
            lingering: BTreeSet::new(),
            offers: HashMap::default(),
            untied: Vec::new(),
            deadlines: BinaryHeap::new(),
            changed: Vec::new(),
            ended: Vec::new(),
            granted_total: 0,
            ended_total: 0,
            next_id: 1,
        }
    }

    pub fn pool(&self) -> PortRange {
        self.pool.range()
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    pub fn socket_count(&self) -> usize {
        self.sockets
    }

    pub fn leases_of_uid(&self, uid: u32) -> u64 {
        self.per_uid.get(&uid).copied().unwrap_or(0)
    }

    pub fn sockets_of_uid(&self, uid: u32) -> u64 {
        self.sockets_per_uid.get(&uid).copied().unwrap_or(0)
    }

    pub fn get(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The leases connection `conn` keeps alive.
    pub fn kept_by_connection(&self, conn: ConnId) -> &[LeaseId] {
        self.by_conn.get(&conn).map_or(&[], |ids| ids.as_slice())
    }

    /// The leases tied to process `pid`.
    pub fn tied_to_process(&self, pid: i32) -> &[LeaseId] {
        self.by_process.get(&pid).map_or(&[], |ids| ids.as_slice())
    }

    /// How many leases linger.
    pub fn lingering_count(&self) -> usize {
        self.lingering.len()
    }

    /// How many ports of the pool leases hold, of `transport`.
    pub fn pool_in_use(&self, transport: Transport) -> usize {
        self.pool.in_use(transport)
    }

    /// The leases that linger, in id order.
    pub fn lingering(&self) -> impl Iterator<Item = LeaseId> + '_ {
        self.lingering.iter().copied()
    }

    /// The earliest time limit, if any (possibly a stale one: see `take_expired`).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// The live lease whose address overlaps `addr` (`[::]` taken as dual-stack), if any.
    pub fn conflict(&self, transport: Transport, addr: SocketAddr) -> Option<Conflict<'_>> {
        let dual_stack = BindAddr {
            ip: addr.ip(),
            v6_only: false,
        };
        self.conflicts(transport, dual_stack, addr.port()).next()
    }

    /// Every live lease whose address overlaps `addr` on `port`, once per overlapping socket.
    pub fn conflicts(
        &self,
        transport: Transport,
        addr: BindAddr,
        port: u16,
    ) -> impl Iterator<Item = Conflict<'_>> {
        self.ports
            .get(&(transport, port))
            .into_iter()
            .flatten()
            .filter(move |binding| binding.addr.overlaps(addr))
            .map(move |binding| Conflict {
                held: SocketAddr::new(binding.addr.ip, port),
                lease: &self.leases[&binding.lease],
            })
    }

    /// The next pool port that no lease binds and that `skip` does not exclude (see
    /// [`Pool::find_free`]).
    pub fn free_pool_port(
        &self,
        transport: Transport,
        tries: usize,
        skip: impl FnMut(u16) -> bool,
    ) -> Option<u16> {
        self.pool.find_free(transport, tries, skip)
    }

    /// Lease ids from now on are at least `first`: ids never repeat across restarts (see
    /// `Server::new`).
    pub fn skip_ids_below(&mut self, first: u64) {
        self.next_id = self.next_id.max(first.clamp(1, MAX_LEASE_ID / 2));
    }

    /// The id the next grant gets: the high-water mark the journal keeps.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Leases granted and leases ended since the daemon started (restored ones not counted).
    pub fn totals(&self) -> (u64, u64) {
        (self.granted_total, self.ended_total)
    }

    /// Grant: records a lease whose sockets are bound. The caller has checked that none
    /// conflicts.
    pub fn grant(&mut self, lease: NewLease) -> LeaseId {
        let id = LeaseId(self.next_id);
        self.next_id += 1;
        self.changed.push((id, Change::Granted));
        self.granted_total += 1;
        self.insert(id, lease);
        id
    }

    /// Puts back a lease of an earlier life of the daemon, with its id; later grants get
    /// higher ids. Restoring is no change for the journal, which it came from. What came from
    /// disk is checked, not trusted: an id out of range or already live, a lease without
    /// sockets or with a cookie count that does not match, and a socket that overlaps a live
    /// lease's are refused with the reason.
    pub fn restore(&mut self, id: LeaseId, lease: NewLease) -> Result<(), String> {
        if !(1..=MAX_LEASE_ID).contains(&id.0) {
            return Err(format!("its id {id} is outside 1..={MAX_LEASE_ID}"));
        }
        if self.leases.contains_key(&id) {
            return Err(format!("lease {id} is already live"));
        }
        if lease.sockets.is_empty() || lease.sockets.len() > MAX_SOCKETS_PER_LEASE {
            return Err(format!(
                "it has {} sockets, not 1 to {MAX_SOCKETS_PER_LEASE}",
                lease.sockets.len()
            ));
        }
        if !lease.cookies.is_empty() && lease.cookies.len() != lease.sockets.len() {
            return Err(format!(
                "it has {} cookies for {} sockets",
                lease.cookies.len(),
                lease.sockets.len()
            ));
        }
        for (i, socket) in lease.sockets.iter().enumerate() {
            if socket.addr.port() == 0 {
                return Err(format!("socket {socket} has port 0"));
            }
            let overlaps_own = lease.sockets[..i].iter().any(|other| {
                other.transport == socket.transport
                    && other.addr.port() == socket.addr.port()
                    && BindAddr::of(other).overlaps(BindAddr::of(socket))
            });
            if overlaps_own {
                return Err(format!(
                    "socket {socket} overlaps another of the same lease"
                ));
            }
            let mut conflicts =
                self.conflicts(socket.transport, BindAddr::of(socket), socket.addr.port());
            if let Some(conflict) = conflicts.next() {
                return Err(format!(
                    "{socket} overlaps {} of lease {}",
                    conflict.held, conflict.lease.id
                ));
            }
        }
        self.next_id = self.next_id.max(id.0 + 1);
        self.insert(id, lease);
        Ok(())
    }

    fn insert(&mut self, id: LeaseId, new: NewLease) {
        for socket in &new.sockets {
            let key = (socket.transport, socket.addr.port());
            self.ports.entry(key).or_default().push(Binding {
                addr: BindAddr::of(socket),
                lease: id,
            });
            self.pool.mark(socket.transport, socket.addr.port(), true);
        }
        self.sockets += new.sockets.len();
        self.count_for_uid(new.holder.uid, new.sockets.len(), true);
        self.index_keeper(id, new.keeper, true);
        self.leases.insert(
            id,
            Lease {
                id,
                keeper: new.keeper,
                holder: new.holder,
                start_time: new.start_time,
                since: new.since,
                sockets: SmallVec::from_vec(new.sockets),
                cookies: SmallVec::from_vec(new.cookies),
                expires: None,
                service: new.service,
                offer: None,
                number: false,
            },
        );
    }

    /// End: removes a lease, whoever kept it, and frees its ports; `why` goes to the journal.
    pub fn end(&mut self, id: LeaseId, why: EndReason) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.ended.push((id, why));
        self.ended_total += 1;
        if let Some(token) = lease.offer {
            self.offers.remove(&token);
        }
        self.index_keeper(id, lease.keeper, false);
        for socket in &lease.sockets {
            let key = (socket.transport, socket.addr.port());
            if let Some(bindings) = self.ports.get_mut(&key) {
                bindings.retain(|b| b.lease != id);
                if bindings.is_empty() {
                    self.ports.remove(&key);
                    self.pool.mark(socket.transport, socket.addr.port(), false);
                }
            }
        }
        self.sockets -= lease.sockets.len();
        self.count_for_uid(lease.holder.uid, lease.sockets.len(), false);
        Some(lease)
    }

    /// Counts a lease of `sockets` sockets for `uid`'s quotas, or stops counting it.
    fn count_for_uid(&mut self, uid: u32, sockets: usize, add: bool) {
        for (map, amount) in [
            (&mut self.per_uid, 1),
            (&mut self.sockets_per_uid, sockets as u64),
        ] {
            if add {
                *map.entry(uid).or_default() += amount;
            } else if let Some(count) = map.get_mut(&uid) {
                *count = count.saturating_sub(amount);
                if *count == 0 {
                    map.remove(&uid);
                }
            }
        }
    }

    /// A lease changed holders: it counts for the new holder's uid from now on (an
    /// administrator may hand a lease to, or tie it to a process of, another user).
    fn recount_holder(&mut self, id: LeaseId, old_uid: u32) {
        let Some(lease) = self.leases.get(&id) else {
            return;
        };
        let (new_uid, sockets) = (lease.holder.uid, lease.sockets.len());
        if new_uid != old_uid {
            self.count_for_uid(old_uid, sockets, false);
            self.count_for_uid(new_uid, sockets, true);
        }
    }

    /// Marks a lease as a port handed out as a number (see `Lease::number`).
    pub fn mark_number(&mut self, id: LeaseId) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.number = true;
        }
    }

    /// Tie: the lease is kept by process `holder.pid` (started at `start_time`) instead of
    /// whoever kept it.
    pub fn tie(&mut self, id: LeaseId, holder: Holder, start_time: u64) -> Option<&Lease> {
        let pid = holder.pid;
        let lease = self.leases.get_mut(&id)?;
        let old_uid = std::mem::replace(&mut lease.holder, Rc::new(holder)).uid;
        lease.start_time = start_time;
        self.recount_holder(id, old_uid);
        self.set_keeper(id, Keeper::Process(pid));
        self.changed.push((id, Change::Tied));
        self.leases.get(&id)
    }

    /// Hand over: the lease (same id, same sockets) now belongs to `holder` on connection
    /// `conn`; the previous holder's connection or process no longer keeps it.
    pub fn hand_over(
        &mut self,
        id: LeaseId,
        conn: ConnId,
        holder: Rc<Holder>,
        start_time: u64,
    ) -> Option<Rc<Holder>> {
        let lease = self.leases.get_mut(&id)?;
        let from = std::mem::replace(&mut lease.holder, holder);
        lease.start_time = start_time;
        if let Some(token) = lease.offer.take() {
            self.offers.remove(&token);
        }
        self.recount_holder(id, from.uid);
        self.set_keeper(id, Keeper::Connection(conn));
        self.changed.push((id, Change::HandedOver));
        Some(from)
    }

    /// Offer: the lease may be claimed with `token` (see `hand_over`), until it is claimed,
    /// offered again (the new token replaces the old) or ends.
    pub fn offer(&mut self, id: LeaseId, token: u64) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        if let Some(old) = lease.offer.replace(token) {
            self.offers.remove(&old);
        }
        // A token names one lease: another lease offered with it (tokens are random, so
        // hardly ever) loses its offer.
        if let Some(other) = self.offers.insert(token, id).filter(|&other| other != id) {
            if let Some(other) = self.leases.get_mut(&other) {
                other.offer = None;
            }
        }
    }

    /// The lease offered with `token`, if the offer stands.
    pub fn offered(&self, token: u64) -> Option<LeaseId> {
        self.offers.get(&token).copied()
    }

    /// Standing handover offers.
    #[cfg(test)]
    pub fn offer_count(&self) -> usize {
        self.offers.len()
    }

    /// Processes that no lease is tied to any more, since the last call.
    pub fn take_untied(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.untied)
    }

    /// Re-attach: the lease is kept by connection `conn` (its holder reconnected).
    pub fn reattach(&mut self, id: LeaseId, conn: ConnId) {
        if self.leases.contains_key(&id) {
            self.set_keeper(id, Keeper::Connection(conn));
        }
    }

    /// Linger: the holder is gone but a copy of the sockets survives; `survivor` is the
    /// process found holding one (pid, name, start time: the lease's holder from now on), if
    /// any. A lingering lease has no time limit: it ends when its last copy closes.
    pub fn linger(&mut self, id: LeaseId, survivor: Option<(i32, String, u64)>) -> Option<&Lease> {
        let lease = self.leases.get_mut(&id)?;
        lease.expires = None;
        if let Some((pid, name, start_time)) = survivor {
            lease.holder = Rc::new(Holder {
                pid,
                name,
                ..Holder::clone(&lease.holder)
            });
            lease.start_time = start_time;
        }
        self.set_keeper(id, Keeper::Lingering);
        self.leases.get(&id)
    }

    /// Keep: a sticky service's ports stay with their user and service until `until`.
    pub fn keep(&mut self, id: LeaseId, until: Deadline) -> Option<&Lease> {
        self.set_keeper(id, Keeper::Kept);
        self.set_time_limit(id, Some(until));
        self.leases.get(&id)
    }

    /// Renew: the lease ends at `limit` unless renewed again; `None` removes the limit.
    pub fn set_time_limit(&mut self, id: LeaseId, limit: Option<Deadline>) -> Option<&Lease> {
        let lease = self.leases.get_mut(&id)?;
        lease.expires = limit;
        if let Some(deadline) = limit {
            self.deadlines.push(Reverse((deadline.at, id)));
        }
        // A deadline replaced (renewed, removed, or of an ended lease) stays in the heap until
        // it is due, which a far one may not be for weeks: renewing in a loop would grow the
        // heap without end. Rebuilt from the leases once stale entries outnumber live ones;
        // the cost is spread over as many renewals as it removes.
        if self.deadlines.len() > 2 * self.leases.len() + 64 {
            self.deadlines = self
                .leases
                .values()
                .filter_map(|l| l.expires.map(|d| Reverse((d.at, l.id))))
                .collect();
        }
        self.leases.get(&id)
    }

    /// Entries in the deadline heap, stale ones included.
    #[cfg(test)]
    pub fn deadline_entries(&self) -> usize {
        self.deadlines.len()
    }

    /// Expire: ends and returns the leases whose time limit is at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Lease> {
        let mut expired = Vec::new();
        while let Some(&Reverse((at, id))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let current = self
                .leases
                .get(&id)
                .filter(|l| l.expires.is_some_and(|d| d.at == at));
            if let Some(lease) = current {
                let why = match lease.keeper {
                    Keeper::Kept => EndReason::KeptExpired,
                    _ => EndReason::Expired,
                };
                expired.extend(self.end(id, why));
            }
            // else renewed since, or ended: a stale entry.
        }
        expired
    }

    /// What changed since the last call: leases granted or changed, and leases ended.
    #[cfg(test)]
    #[allow(clippy::type_complexity)]
    pub fn take_changes(&mut self) -> (Vec<(LeaseId, Change)>, Vec<(LeaseId, EndReason)>) {
        let (mut changed, mut ended) = (Vec::new(), Vec::new());
        self.swap_changes(&mut changed, &mut ended);
        (changed, ended)
    }

    /// Puts what changed since the last call into `changed` and `ended`, which must be empty,
    /// and takes their room for the next changes: the caller keeps two buffers from turn to
    /// turn instead of the table allocating two each turn.
    pub fn swap_changes(
        &mut self,
        changed: &mut Vec<(LeaseId, Change)>,
        ended: &mut Vec<(LeaseId, EndReason)>,
    ) {
        debug_assert!(changed.is_empty() && ended.is_empty());
        std::mem::swap(&mut self.changed, changed);
        std::mem::swap(&mut self.ended, ended);
    }

    fn set_keeper(&mut self, id: LeaseId, keeper: Keeper) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut lease.keeper, keeper);
        if old != keeper {
            self.index_keeper(id, old, false);
            self.index_keeper(id, keeper, true);
        }
    }

    fn index_keeper(&mut self, id: LeaseId, keeper: Keeper, add: bool) {
        match keeper {
            Keeper::Connection(conn) => index(&mut self.by_conn, conn, id, add),
            Keeper::Process(pid) => {
                index(&mut self.by_process, pid, id, add);
                if !add && !self.by_process.contains_key(&pid) {
                    self.untied.push(pid);
                }
            }
            Keeper::Lingering if add => {
                self.lingering.insert(id);
            }
            Keeper::Lingering => {
                self.lingering.remove(&id);
            }
            Keeper::Kept => {}
        }
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
