//! Everything the broker knows besides its connections: the policy, the lease table, the held
//! reservations, offered handovers and watched processes, and the transitions that need more
//! than the table (ending a lease truthfully, taking reservations back, reloading).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use portbroker_proto::{
    EndReason, Event, Failure, Holder, LeaseId, PortRange, Response, Transport,
};
use tracing::{debug, info, warn};

use crate::bind;
use crate::budget::RequestBudgets;
use crate::journal::History;
use crate::lease::{ConnId, Deadline, Keeper, Lease, SocketList};
use crate::metrics::Counters;
use crate::policy::{Identity, Policy};
use crate::procfs;
use crate::refusals::RefusalLog;
use crate::socket_copies;
use crate::systemd::{self, Notifier};
use crate::table::Table;
use crate::throttle::{Burst, Throttle, Throttled};
use crate::watchers::Watchers;
use crate::watches::ProcessWatches;

/// How often lingering leases and missing reservations are probed again.
pub const LINGER_CHECK: Duration = Duration::from_millis(100);

/// A message for a connection other than the one being answered (`Revoked`, `Expired`).
#[derive(Debug)]
pub struct Notice {
    pub conn: ConnId,
    pub response: Response,
}

pub struct State {
    pub policy: Policy,
    /// The address used when a spec gives none.
    pub default_addr: IpAddr,
    pub table: Table,
    /// Reserved ports the broker holds now (see `Policy::reserved`); a leased one is taken
    /// back when its lease has ended and no copy survives (`maintain_reservations`).
    pub reservations: HashMap<(Transport, u16), OwnedFd>,
    pub watches: ProcessWatches,
    /// When lingering leases and missing reservations are probed next.
    pub next_linger_check: Option<Instant>,
    pub started: Instant,
    /// systemd's notification socket (a no-op without one). Every held reservation is also in
    /// systemd's fd store, so that a restart finds its port still bound.
    pub notify: Notifier,
    /// What happened since the start, for `Status` and the metrics endpoint.
    pub counters: Counters,
    /// Where the metrics endpoint listens, once it does.
    pub metrics_listen: Option<SocketAddr>,
    /// The lease of the metrics endpoint's port, held by the daemon itself: nobody acts on it
    /// but an administrator's revoke (which stops the endpoint).
    pub metrics_lease: Option<LeaseId>,
    /// The connections that watch events (`Watch`), with their queues.
    pub watchers: Watchers,
    /// Where the journal keeps the history (`History`); `None` without a journal.
    pub history: Option<History>,
    /// Refusals, logged at most once a second and counted.
    pub refusals: RefusalLog,
    /// Each uid's request budget (`requests_per_sec_per_uid`), spent by its requests on the
    /// broker's socket and on the portserver alike.
    pub budgets: RequestBudgets,
    /// Trouble reading the history, logged at most once a second.
    pub history_trouble: Throttle,
    /// Lines a client's requests make at will (a re-attach, a handover offered or claimed),
    /// and leases left lingering (a client can make one per lease): throttled, each kind.
    pub request_lines: Throttled,
    lingering_lines: Throttled,
    /// Scans for who holds a lingering lease's copy, at most `HOLDER_SCANS` a second.
    holder_scans: Burst,
}

/// Scans of every process for a lingering lease's holder, a second at most (each one bounded
/// by `socket_copies`' scan limit, 100 ms): at most half of the event loop's time under a
/// flood of lingering leases, and nearly always none.
const HOLDER_SCANS: u32 = 5;

impl State {
    pub fn new(pool: PortRange, default_addr: IpAddr, policy: Policy) -> nix::Result<State> {
        Ok(State {
            policy,
            default_addr,
            table: Table::new(pool),
            reservations: HashMap::new(),
            watches: ProcessWatches::new()?,
            next_linger_check: None,
            started: Instant::now(),
            notify: Notifier::default(),
            counters: Counters::default(),
            metrics_listen: None,
            metrics_lease: None,
            watchers: Watchers::default(),
            history: None,
            refusals: RefusalLog::default(),
            budgets: RequestBudgets::default(),
            history_trouble: Throttle::default(),
            request_lines: Throttled::new("request"),
            lingering_lines: Throttled::new("lingering"),
            holder_scans: Burst::new(HOLDER_SCANS),
        })
    }

    /// Whether `asker` may act on lease `lease_id` (release, renew, tie, hand over, claim):
    /// the lease holder's uid, or an administrator.
    pub fn may_act_on(&self, asker: &Identity, lease_id: LeaseId) -> Result<&Lease, Failure> {
        let lease = self
            .table
            .get(lease_id)
            .ok_or(Failure::UnknownLease { id: lease_id })?;
        if self.metrics_lease == Some(lease_id) {
            return Err(Failure::NotPermitted {
                reason: format!(
                    "lease {lease_id} is the daemon's own: the port of its metrics endpoint"
                ),
            });
        }
        if lease.holder.uid == asker.uid || self.policy.is_admin(asker) {
            Ok(lease)
        } else {
            Err(Failure::NotYourLease {
                id: lease_id,
                holder_uid: lease.holder.uid,
            })
        }
    }

    /// Probes again soon (lingering leases, reservations).
    fn probe_soon(&mut self) {
        self.next_linger_check
            .get_or_insert(Instant::now() + LINGER_CHECK);
    }

    /// Ends a lease whose holder is gone (connection closed, process exited), for `reason`
    /// (the journal's) and `why` (the log's). The port goes back only once a probe bind shows
    /// that no copy of a socket survives; until then the lease lingers, held by the process
    /// found holding a copy, and is probed again. A sticky named service's ports are kept for
    /// its user instead.
    pub fn end_truthfully(&mut self, lease_id: LeaseId, reason: EndReason, why: &str) {
        let Some(lease) = self.table.get(lease_id) else {
            return;
        };
        if lease
            .sockets
            .iter()
            .all(|s| bind::is_free(s.transport, s.addr, s.v6_only))
        {
            let grace = lease
                .service
                .as_deref()
                .and_then(|name| self.policy.services.get(name))
                .map_or(Duration::ZERO, |service| service.sticky);
            if grace.is_zero() {
                self.table.end(lease_id, reason);
                debug!(lease = lease_id.0, "released: {why}");
                self.watchers.emit(|| Event::Released { id: lease_id });
            } else {
                self.keep_for_owner(lease_id, grace, why);
            }
            return;
        }
        // Who holds a copy is only named: a bounded scan, and at most `HOLDER_SCANS` a second,
        // since a client makes lingering leases at will (lease, keep a copy, hang up).
        let named = self.holder_scans.admit(Instant::now());
        let survivor = named
            .then(|| socket_copies::a_holder_of(lease.leased()))
            .flatten()
            .map(|pid| {
                (
                    pid,
                    procfs::process_name(pid).unwrap_or_default(),
                    procfs::start_time(pid).unwrap_or(0),
                )
            });
        if let Some(lease) = self.table.linger(lease_id, survivor) {
            self.lingering_lines.warn(format_args!(
                "lease {lease_id} lingering: {why}, but {} still holds a copy of {}",
                lease.holder,
                SocketList(&lease.sockets)
            ));
            let holder = &lease.holder;
            self.watchers.emit(|| Event::Lingering {
                id: lease_id,
                holder: Holder::clone(holder),
            });
        }
        self.probe_soon();
    }

    /// Keeps the ports of a named service whose holder ended for the same user, so that the
    /// restarted server gets them back and nobody else takes them meanwhile.
    fn keep_for_owner(&mut self, lease_id: LeaseId, grace: Duration, why: &str) {
        if let Some(lease) = self.table.keep(lease_id, Deadline::after(grace)) {
            info!(
                lease = lease_id.0,
                "{why}: its service {:?} keeps {} for uid {} for {grace:?}",
                lease.service.as_deref().unwrap_or_default(),
                SocketList(&lease.sockets),
                lease.holder.uid
            );
        }
    }

    /// Stops watching processes that no lease is tied to any more: a watch lives no longer
    /// than the leases it is for.
    pub fn prune_watches(&mut self) {
        for pid in self.table.take_untied() {
            if self.table.tied_to_process(pid).is_empty() {
                self.watches.unwatch(pid);
            }
        }
    }

    /// A process leases were tied to has exited: those still tied to it end.
    pub fn process_exited(&mut self, pid: i32) {
        for lease_id in self.table.tied_to_process(pid).to_vec() {
            let Some(lease) = self.table.get(lease_id) else {
                continue;
            };
            let why = format!("{} exited", lease.holder);
            self.end_truthfully(lease_id, EndReason::ProcessExited, &why);
        }
    }

    /// Ends the leases whose time limit has passed; the notices tell their holders.
    pub fn expire_due(&mut self, now: Instant) -> Vec<Notice> {
        let mut notices = Vec::new();
        for lease in self.table.take_expired(now) {
            if lease.keeper != Keeper::Kept {
                // A kept service's ports going back is no time limit reached.
                self.counters.expiries += 1;
            }
            debug!(
                lease = lease.id.0,
                "expired: {} of {}",
                SocketList(&lease.sockets),
                lease.holder
            );
            self.watchers.emit(|| Event::Expired { id: lease.id });
            if let Keeper::Connection(conn) = lease.keeper {
                notices.push(Notice {
                    conn,
                    response: Response::Expired { id: lease.id },
                });
            }
        }
        notices
    }

    /// Probes the lingering leases again (those whose last copy closed end), and the
    /// reservations.
    pub fn check_lingering(&mut self) {
        let lingering: Vec<LeaseId> = self.table.lingering().collect();
        for id in lingering {
            let Some(lease) = self.table.get(id) else {
                continue;
            };
            if lease
                .sockets
                .iter()
                .all(|s| bind::is_free(s.transport, s.addr, s.v6_only))
            {
                self.table.end(id, EndReason::CopiesClosed);
                debug!(
                    lease = id.0,
                    "released: the last copy of its sockets closed"
                );
                self.watchers.emit(|| Event::Released { id });
            }
        }
        self.next_linger_check = None;
        if self.table.lingering().next().is_some() {
            self.probe_soon();
        }
        self.maintain_reservations();
    }

    /// Binds every reserved port the broker does not hold and no lease has. While any is not
    /// held (leased, a holder's socket lives on, or a process outside the broker has it), this
    /// runs again with the lingering check, every 100 ms: at most a few thousand hash lookups.
    pub fn maintain_reservations(&mut self) {
        let wildcard = self.default_addr;
        let mut missing = 0;
        for &(transport, port) in &self.policy.reserved {
            let addr = SocketAddr::new(wildcard, port);
            if self.reservations.contains_key(&(transport, port)) {
                continue;
            }
            if self.table.conflict(transport, addr).is_some() {
                missing += 1; // leased: taken back once the lease has ended
                continue;
            }
            match bind::reserve(transport, addr) {
                Ok(fd) => {
                    // A copy in systemd's store keeps the port bound while the daemon restarts.
                    self.notify
                        .store(&systemd::store_name(transport, port), &fd);
                    self.reservations.insert((transport, port), fd);
                    self.watchers
                        .emit(|| Event::ReservationTakenBack { transport, port });
                }
                Err(errno) => {
                    missing += 1;
                    debug!("cannot reserve {transport}:{addr} yet: {errno}");
                }
            }
        }
        if missing > 0 {
            self.probe_soon();
        }
    }

    /// Takes the held reservation of a port for a lease, if there is one; the port is then
    /// watched, to be taken back when the lease has ended.
    pub fn take_reservation(&mut self, transport: Transport, port: u16) -> Option<OwnedFd> {
        let held = self.reservations.remove(&(transport, port))?;
        // systemd's copy must go, or the port stays bound after the lease ends. (A datagram
        // that does not wait; systemd drops its copy a moment later, and until then a probe of
        // the port sees it bound and the lease lingers for one more check.)
        self.notify
            .store_remove(&systemd::store_name(transport, port));
        self.probe_soon();
        Some(held)
    }

    /// Takes back the reservations systemd's fd store kept across a restart (`LISTEN_FDS`
    /// entries named `reserve-tcp-PORT`/`reserve-udp-PORT`), so that their ports were never
    /// unbound. Each must still be reserved by the policy, be a socket of its transport bound
    /// to the default address and its port, not listen, and not clash with a recovered lease;
    /// anything else is closed and dropped from the store. Call after recovery and before
    /// `maintain_reservations`.
    pub fn adopt_stored(&mut self, stored: Vec<(String, OwnedFd)>) {
        let mut adopted = 0;
        for (name, fd) in stored {
            let Some((transport, port)) = systemd::parse_store_name(&name) else {
                warn!("systemd's fd store passed {name:?}, which portbrokerd never stores; closing it");
                self.notify.store_remove(&name);
                continue;
            };
            let addr = SocketAddr::new(self.default_addr, port);
            let refusal = if self
                .policy
                .reserved
                .binary_search(&(transport, port))
                .is_err()
            {
                Some("the policy no longer reserves it".to_owned())
            } else if let Err(why) = bind::check_reservation(&fd, transport, addr) {
                Some(why)
            } else if let Some(conflict) = self.table.conflict(transport, addr) {
                Some(format!("lease {} holds the port", conflict.lease.id))
            } else if self.reservations.contains_key(&(transport, port)) {
                // Two fds under one name: keep the first, and store it alone again.
                self.notify.store_remove(&name);
                if let Some(kept) = self.reservations.get(&(transport, port)) {
                    self.notify.store(&name, kept);
                }
                warn!("systemd's fd store held {name} twice; closed the second copy");
                continue;
            } else {
                None
            };
            match refusal {
                Some(why) => {
                    info!("dropping the stored reservation {name} from systemd's fd store: {why}");
                    self.notify.store_remove(&name);
                }
                None => {
                    self.reservations.insert((transport, port), fd);
                    adopted += 1;
                }
            }
        }
        if adopted > 0 {
            info!("{adopted} reservations taken back from systemd's fd store, never unbound");
        }
    }

    /// Re-reads the policy file; on any error the policy in force stays as it was. Returns
    /// the new policy's rule and service counts.
    pub fn reload(&mut self) -> Result<(u32, u32), String> {
        let old = &self.policy;
        let Some(path) = old.source.clone() else {
            return Err("the daemon runs on the built-in policy; start it with --config FILE to have a file to reload".into());
        };
        // systemd shows the service as reloading until the READY=1 that follows, success or not.
        self.notify.reloading();
        let result = Policy::load(&path).map_err(|e| e.to_string());
        let result = result.map(|new| self.apply_policy(&path, new));
        self.notify.ready();
        result
    }

    /// Puts a newly loaded policy in force: reservations it no longer names are let go (and
    /// dropped from systemd's fd store), new ones are bound.
    fn apply_policy(&mut self, path: &std::path::Path, new: Policy) -> (u32, u32) {
        let old = &self.policy;
        if (&new.socket_path, new.socket_mode, new.socket_gid, new.pool)
            != (&old.socket_path, old.socket_mode, old.socket_gid, old.pool)
            || new.metrics_listen != old.metrics_listen
        {
            warn!(
                "{}: changes to [socket], [pool] and [metrics] take effect at the next start",
                path.display()
            );
        }
        let counts = (new.rule_count() as u32, new.services.len() as u32);
        info!(
            "reloaded {}: {} rules, {} services",
            path.display(),
            counts.0,
            counts.1
        );
        self.policy = new;
        let dropped: Vec<(Transport, u16)> = self
            .reservations
            .keys()
            .filter(|key| self.policy.reserved.binary_search(key).is_err())
            .copied()
            .collect();
        for (transport, port) in dropped {
            self.reservations.remove(&(transport, port));
            self.notify
                .store_remove(&systemd::store_name(transport, port));
            info!("no longer reserving {transport}:{port}");
        }
        self.maintain_reservations();
        counts
    }
}

#[cfg(test)]
mod tests {
    use crate::handlers::fixture;
    use crate::lease::Deadline;
    use portbroker_proto::{EndReason, Event, LeaseState, Response};
    use std::time::{Duration, Instant};

    #[test]
    fn a_lease_whose_sockets_are_closed_ends_at_once() {
        let mut state = fixture::state();
        let (id, fd) = fixture::leased(&mut state, &fixture::me(1));
        drop(fd);
        state.end_truthfully(id, EndReason::ConnectionClosed, "test");
        assert!(state.table.get(id).is_none());
        assert!(state.next_linger_check.is_none());
    }

    #[test]
    fn a_surviving_copy_keeps_the_lease_lingering_until_it_closes() {
        let mut state = fixture::state();
        let (id, fd) = fixture::leased(&mut state, &fixture::me(1));
        state.watchers.add(99);
        // A child inherits a copy of the socket, as a forked server's children do.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::process::Stdio::from(fd))
            .spawn()
            .unwrap();
        state.end_truthfully(
            id,
            EndReason::ConnectionClosed,
            "its holder closed its connection",
        );
        let lease = state.table.get(id).expect("lingers");
        assert_eq!(lease.state(), LeaseState::Lingering);
        if nix::unistd::getuid().is_root() {
            // Only root can see another process's fds in every case.
            assert_eq!(lease.holder.pid, child.id() as i32, "the survivor is named");
        }
        assert!(state.next_linger_check.is_some());
        state.check_lingering();
        assert!(state.table.get(id).is_some(), "the copy is still open");
        child.kill().unwrap();
        child.wait().unwrap();
        state.check_lingering();
        assert!(state.table.get(id).is_none(), "the last copy closed");
        assert!(state.next_linger_check.is_none());
        // A watcher saw it linger, then end.
        let Some(Response::Event {
            event: Event::Lingering { id: lingered, .. },
            ..
        }) = state.watchers.next_for(99)
        else {
            panic!("no lingering event");
        };
        assert_eq!(lingered, id);
        assert!(matches!(
            state.watchers.next_for(99),
            Some(Response::Event { event: Event::Released { id: ended }, .. }) if ended == id
        ));
        assert_eq!(state.watchers.next_for(99), None);
    }

    #[test]
    fn a_number_lease_holds_no_socket_and_ends_when_its_port_is_free() {
        use crate::bind;
        use portbroker_proto::{Listen, Transport};
        let mut state = fixture::state();
        let peer = fixture::me(1);
        let (id, port) =
            crate::grant::grant_number(&mut state, peer.holder.clone(), &peer.identity, 0, &mut 0)
                .unwrap();
        let lease = state.table.get(id).unwrap();
        assert_eq!(lease.state(), LeaseState::Number);
        assert!(lease.cookies.is_empty());
        let addr = lease.sockets[0].addr;
        assert_eq!(addr.port(), port);
        // The broker holds nothing: the port is free to bind, and the table keeps it from
        // other leases.
        assert!(bind::is_free(Transport::Tcp, addr, false));
        let (_, other) =
            crate::grant::grant_number(&mut state, peer.holder.clone(), &peer.identity, 0, &mut 0)
                .unwrap();
        assert_ne!(other, port);
        // Its process binds the port, then exits: the lease lingers while the socket lives.
        let socket = bind::bind_socket(Transport::Tcp, addr, false, Listen::Default).unwrap();
        state.end_truthfully(id, EndReason::ProcessExited, "its process exited");
        assert_eq!(state.table.get(id).unwrap().state(), LeaseState::Lingering);
        drop(socket);
        state.check_lingering();
        assert!(state.table.get(id).is_none(), "the port is free again");
    }

    #[test]
    fn a_watcher_is_told_of_an_expiry_and_the_holder_too() {
        let mut state = fixture::state();
        let (id, _fd) = fixture::leased(&mut state, &fixture::me(1));
        state.watchers.add(99);
        state
            .table
            .set_time_limit(id, Some(Deadline::after(Duration::ZERO)));
        let notices = state.expire_due(Instant::now() + Duration::from_millis(1));
        assert_eq!(notices.len(), 1);
        assert!(matches!(
            state.watchers.next_for(99),
            Some(Response::Event { event: Event::Expired { id: expired }, .. }) if expired == id
        ));
    }
}
