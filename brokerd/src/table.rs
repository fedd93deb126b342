//! The lease table: who holds which (transport, address, port), and the dynamic pool.
//!
//! Owned by the event-loop thread alone, so it needs no locks. Conflicts are found by
//! (transport, port), never by scanning every lease.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use portbroker_proto::{GrantedSocket, Holder, LeaseId, LeaseInfo, PortRange, Transport};

/// Identifies a client connection for the life of the daemon.
pub type ConnId = u64;

/// Whether two addresses of the same transport and port collide in the kernel's bind rules:
/// the identical address, a wildcard against any address of its family, and the broker's
/// dual-stack `[::]` against any IPv4 address.
pub fn addrs_overlap(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(x), IpAddr::V4(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
        (IpAddr::V6(x), IpAddr::V6(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
        (IpAddr::V6(v6), IpAddr::V4(_)) | (IpAddr::V4(_), IpAddr::V6(v6)) => v6.is_unspecified(),
    }
}

/// One address bound on a port, and the lease that holds it.
#[derive(Debug, Clone, Copy)]
struct Binding {
    addr: IpAddr,
    lease: LeaseId,
}

/// A live lease.
#[derive(Debug)]
pub struct Lease {
    pub id: LeaseId,
    pub conn: ConnId,
    pub holder: Rc<Holder>,
    pub since: u64,
    pub sockets: Vec<GrantedSocket>,
    /// When it ends unless renewed: the loop's clock, and the same moment for clients.
    pub expires: Option<(Instant, u64)>,
    /// Tied to its holder process instead of its connection (`TieToProcess`, or recovered
    /// from the journal): it ends when that process exits (the server watches one pidfd per
    /// process).
    pub tied: bool,
    /// Ended, but a copy of a socket survives (see `LeaseInfo::lingering`).
    pub lingering: bool,
    /// The named service it was leased as, if any.
    pub service: Option<Rc<str>>,
    /// The holder's start time, to know it again after a restart (see `journal`).
    pub start_time: u64,
    /// Ended with its holder, and kept for the same user and service until `expires`.
    pub sticky: bool,
}

impl Lease {
    pub fn info(&self) -> LeaseInfo {
        LeaseInfo {
            id: self.id,
            holder: Holder::clone(&self.holder),
            since: self.since,
            sockets: self.sockets.clone(),
            expires_unix_ms: self.expires.map(|(_, unix_ms)| unix_ms),
            lingering: self.lingering,
        }
    }
}

/// A live lease that overlaps an address asked for.
pub struct Conflict<'a> {
    pub held: SocketAddr,
    pub lease: &'a Lease,
}

/// One bit per pool port and transport: set while any lease binds that port.
#[derive(Debug)]
struct PoolMap {
    used: Vec<u64>,
    /// Where the next search starts, so that a released port is not handed out again at once.
    cursor: usize,
}

#[derive(Debug)]
pub struct Table {
    leases: BTreeMap<LeaseId, Lease>,
    ports: HashMap<(Transport, u16), Vec<Binding>>,
    pool: PortRange,
    pool_maps: [PoolMap; 2],
    sockets: usize,
    /// Live leases per holder uid, for the per-user quota.
    per_uid: HashMap<u32, u64>,
    /// Leases granted or changed, and leases ended, since the journal last took them.
    changed: Vec<LeaseId>,
    ended: Vec<LeaseId>,
    next_id: u64,
}

fn transport_index(transport: Transport) -> usize {
    match transport {
        Transport::Tcp => 0,
        Transport::Udp => 1,
    }
}

impl Table {
    pub fn new(pool: PortRange) -> Self {
        let words = pool.len().div_ceil(64);
        let map = || PoolMap {
            used: vec![0; words],
            cursor: 0,
        };
        Table {
            leases: BTreeMap::new(),
            ports: HashMap::new(),
            pool,
            pool_maps: [map(), map()],
            sockets: 0,
            per_uid: HashMap::new(),
            changed: Vec::new(),
            ended: Vec::new(),
            next_id: 1,
        }
    }

    pub fn pool(&self) -> PortRange {
        self.pool
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    pub fn socket_count(&self) -> usize {
        self.sockets
    }

    pub fn leases_of(&self, uid: u32) -> u64 {
        self.per_uid.get(&uid).copied().unwrap_or(0)
    }

    pub fn get(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn get_mut(&mut self, id: LeaseId) -> Option<&mut Lease> {
        self.leases.get_mut(&id)
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The live lease whose address overlaps `addr`, if any.
    pub fn conflict(&self, transport: Transport, addr: SocketAddr) -> Option<Conflict<'_>> {
        let bindings = self.ports.get(&(transport, addr.port()))?;
        let binding = bindings.iter().find(|b| addrs_overlap(b.addr, addr.ip()))?;
        let lease = &self.leases[&binding.lease];
        Some(Conflict {
            held: SocketAddr::new(binding.addr, addr.port()),
            lease,
        })
    }

    /// The next pool port, from the transport's cursor on and wrapping around, that no lease
    /// binds and that `skip` does not exclude; `None` when every port is taken or skipped.
    /// `tries` bounds how many candidates are offered to `skip`.
    pub fn free_pool_port(
        &self,
        transport: Transport,
        tries: usize,
        mut skip: impl FnMut(u16) -> bool,
    ) -> Option<u16> {
        let map = &self.pool_maps[transport_index(transport)];
        let len = self.pool.len();
        let mut offered = 0;
        let mut index = map.cursor;
        let mut scanned = 0;
        while scanned < len && offered < tries {
            let word = map.used[index / 64] | ((1u64 << (index % 64)) - 1);
            if word == u64::MAX {
                // Nothing free in the rest of this word: jump to the next one.
                let next = (index / 64 + 1) * 64;
                scanned += next - index;
                index = if next >= len { 0 } else { next };
                continue;
            }
            let free = (index / 64) * 64 + (!word).trailing_zeros() as usize;
            if free >= len {
                scanned += len - index;
                index = 0;
                continue;
            }
            scanned += free - index + 1;
            offered += 1;
            let port = self.pool.lo + free as u16;
            if !skip(port) {
                return Some(port);
            }
            index = if free + 1 >= len { 0 } else { free + 1 };
        }
        None
    }

    fn set_pool_bit(&mut self, transport: Transport, port: u16, used: bool) {
        if !self.pool.contains(port) {
            return;
        }
        let index = usize::from(port - self.pool.lo);
        let word = &mut self.pool_maps[transport_index(transport)].used[index / 64];
        if used {
            *word |= 1 << (index % 64);
        } else {
            *word &= !(1 << (index % 64));
        }
    }

    /// Records a lease whose sockets are bound. The caller has checked that none conflicts.
    pub fn insert(
        &mut self,
        conn: ConnId,
        holder: Rc<Holder>,
        since: u64,
        sockets: Vec<GrantedSocket>,
    ) -> LeaseId {
        let id = LeaseId(self.next_id);
        self.next_id += 1;
        self.changed.push(id);
        for socket in &sockets {
            let key = (socket.transport, socket.addr.port());
            let bindings = self.ports.entry(key).or_default();
            bindings.push(Binding {
                addr: socket.addr.ip(),
                lease: id,
            });
            if bindings.len() == 1 {
                self.set_pool_bit(socket.transport, socket.addr.port(), true);
            }
            if self.pool.contains(socket.addr.port()) {
                let map = &mut self.pool_maps[transport_index(socket.transport)];
                map.cursor = (usize::from(socket.addr.port() - self.pool.lo) + 1) % self.pool.len();
            }
        }
        self.sockets += sockets.len();
        *self.per_uid.entry(holder.uid).or_default() += 1;
        self.leases.insert(
            id,
            Lease {
                id,
                conn,
                holder,
                since,
                sockets,
                expires: None,
                tied: false,
                lingering: false,
                service: None,
                start_time: 0,
                sticky: false,
            },
        );
        id
    }

    /// Notes that a lease's holder or state changed, for the journal.
    pub fn touch(&mut self, id: LeaseId) {
        self.changed.push(id);
    }

    /// What changed since the last call: leases granted or changed, and leases ended.
    pub fn take_changes(&mut self) -> (Vec<LeaseId>, Vec<LeaseId>) {
        (
            std::mem::take(&mut self.changed),
            std::mem::take(&mut self.ended),
        )
    }

    /// Puts back a lease of an earlier life of the daemon, with its id; later grants get
    /// higher ids.
    pub fn restore(
        &mut self,
        id: LeaseId,
        holder: Rc<Holder>,
        since: u64,
        sockets: Vec<GrantedSocket>,
    ) {
        self.next_id = self.next_id.max(id.0);
        let restored = self.insert(0, holder, since, sockets);
        let mut lease = self.leases.remove(&restored).expect("just inserted");
        self.changed.pop();
        self.next_id = self.next_id.max(id.0 + 1);
        // Re-key the lease's own bindings from the provisional id to the real one.
        for socket in &lease.sockets {
            let key = (socket.transport, socket.addr.port());
            if let Some(bindings) = self.ports.get_mut(&key) {
                for binding in bindings.iter_mut().filter(|b| b.lease == restored) {
                    binding.lease = id;
                }
            }
        }
        lease.id = id;
        self.leases.insert(id, lease);
    }

    pub fn remove(&mut self, id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.ended.push(id);
        for socket in &lease.sockets {
            let key = (socket.transport, socket.addr.port());
            if let Some(bindings) = self.ports.get_mut(&key) {
                bindings.retain(|b| b.lease != id);
                if bindings.is_empty() {
                    self.ports.remove(&key);
                    self.set_pool_bit(socket.transport, socket.addr.port(), false);
                }
            }
        }
        self.sockets -= lease.sockets.len();
        if let Some(count) = self.per_uid.get_mut(&lease.holder.uid) {
            *count -= 1;
            if *count == 0 {
                self.per_uid.remove(&lease.holder.uid);
            }
        }
        Some(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn holder() -> Rc<Holder> {
        Rc::new(Holder {
            pid: 1,
            uid: 0,
            gid: 0,
            name: "test".into(),
        })
    }

    fn sock(transport: Transport, addr: &str) -> GrantedSocket {
        GrantedSocket {
            transport,
            addr: addr.parse().unwrap(),
            listening: transport == Transport::Tcp,
        }
    }

    #[test]
    fn overlap_follows_the_kernel_bind_rules() {
        let any4: IpAddr = Ipv4Addr::UNSPECIFIED.into();
        let lo4: IpAddr = Ipv4Addr::LOCALHOST.into();
        let other4: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
        let any6: IpAddr = Ipv6Addr::UNSPECIFIED.into();
        let lo6: IpAddr = Ipv6Addr::LOCALHOST.into();
        assert!(addrs_overlap(lo4, lo4));
        assert!(addrs_overlap(any4, lo4) && addrs_overlap(lo4, any4));
        assert!(!addrs_overlap(lo4, other4));
        assert!(addrs_overlap(any6, lo4) && addrs_overlap(lo4, any6));
        assert!(addrs_overlap(any6, any4));
        assert!(addrs_overlap(any6, lo6));
        assert!(!addrs_overlap(lo6, any4));
        assert!(!addrs_overlap(lo6, lo4));
    }

    #[test]
    fn conflicts_are_per_transport_and_port() {
        let mut table = Table::new(PortRange {
            lo: 61000,
            hi: 61009,
        });
        let id = table.insert(1, holder(), 0, vec![sock(Transport::Tcp, "127.0.0.1:8080")]);
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
        assert_eq!(table.leases_of(0), 1);
        table.remove(id).unwrap();
        assert_eq!(table.leases_of(0), 0);
        assert!(table
            .conflict(Transport::Tcp, "0.0.0.0:8080".parse().unwrap())
            .is_none());
        assert_eq!((table.lease_count(), table.socket_count()), (0, 0));
    }

    #[test]
    fn pool_search_skips_used_ports_wraps_and_reports_exhaustion() {
        let pool = PortRange {
            lo: 61000,
            hi: 61199,
        };
        let mut table = Table::new(pool);
        let mut ids = Vec::new();
        for expected in pool.lo..=pool.hi {
            let port = table.free_pool_port(Transport::Tcp, 8, |_| false).unwrap();
            assert_eq!(port, expected);
            let addr = format!("127.0.0.1:{port}");
            ids.push(table.insert(1, holder(), 0, vec![sock(Transport::Tcp, &addr)]));
        }
        assert_eq!(table.free_pool_port(Transport::Tcp, 8, |_| false), None);
        // UDP has its own pool map.
        assert_eq!(
            table.free_pool_port(Transport::Udp, 8, |_| false),
            Some(61000)
        );
        // A released port is found again after wrapping around.
        table.remove(ids[70]).unwrap();
        assert_eq!(
            table.free_pool_port(Transport::Tcp, 8, |_| false),
            Some(61070)
        );
        // `skip` vetoes candidates, and `tries` bounds the vetoes.
        table.remove(ids[3]).unwrap();
        assert_eq!(
            table.free_pool_port(Transport::Tcp, 8, |p| p == 61003),
            Some(61070)
        );
        assert_eq!(
            table.free_pool_port(Transport::Tcp, 1, |p| p == 61003),
            None
        );
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    #[test]
    fn a_restored_lease_keeps_its_id_and_later_ids_are_higher() {
        let mut table = Table::new(PortRange {
            lo: 61000,
            hi: 61009,
        });
        let holder = Rc::new(Holder {
            pid: 1,
            uid: 0,
            gid: 0,
            name: "x".into(),
        });
        let socket = GrantedSocket {
            transport: Transport::Tcp,
            addr: "127.0.0.1:8080".parse().unwrap(),
            listening: true,
        };
        table.restore(LeaseId(41), holder.clone(), 0, vec![socket]);
        let hit = table
            .conflict(Transport::Tcp, "0.0.0.0:8080".parse().unwrap())
            .unwrap();
        assert_eq!(hit.lease.id, LeaseId(41));
        let next = table.insert(1, holder, 0, vec![]);
        assert_eq!(next, LeaseId(42));
        assert!(table.remove(LeaseId(41)).is_some());
    }
}
