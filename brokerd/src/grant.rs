//! Granting a lease: the policy's rules and quotas, then binding every socket (from the pool,
//! a held reservation, or a fresh bind), all or nothing.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use nix::errno::Errno;
use portbroker_proto::{
    EndReason, Event, GrantedSocket, Holder, LeaseId, Listen, Refusal, SocketSpec, Transport,
};
use tracing::debug;

use crate::bind::{bind_refusal, bind_socket, cookie, take_reservation};
use crate::lease::{unix_now, Keeper, SocketList, MAX_SOCKETS_PER_LEASE};
use crate::peer::Peer;
use crate::policy::Identity;
use crate::state::State;
use crate::table::{BindAddr, NewLease};

/// How many pool ports held by processes outside the broker one "any port" lease may skip.
const POOL_TRIES: usize = 64;

/// A granted lease: its id, its sockets and their fds, in the order of the request's specs
/// (no fds for a number lease).
pub struct Granted {
    pub id: LeaseId,
    pub sockets: Vec<GrantedSocket>,
    pub fds: Vec<OwnedFd>,
}

/// Grants `specs` as one lease kept by `peer`'s connection, or refuses them. `by_rules`:
/// whether the policy's rules decide (false for a named service whose own `who` list already
/// admitted the client); `service`: the named service the lease is for. `binds` counts the
/// binds attempted, granted or refused: the work the asker is charged for.
pub fn grant(
    state: &mut State,
    peer: &Peer,
    specs: &[SocketSpec],
    by_rules: bool,
    service: Option<&str>,
    binds: &mut u32,
) -> Result<Granted, Refusal> {
    let mut taken_over = Vec::new();
    let bound = bind_all(
        state,
        &peer.identity,
        specs,
        by_rules,
        binds,
        &mut taken_over,
    )
    .and_then(with_cookies);
    let (sockets, mut fds, mut cookies) = match bound {
        Ok(bound) => bound,
        Err(refusal) => {
            state
                .refusals
                .lease(format_args!("refused {}: {refusal}", peer.holder));
            state.watchers.emit(|| Event::Refused {
                asker: Holder::clone(&peer.holder),
                refusal: refusal.clone(),
            });
            return Err(refusal);
        }
    };
    for number in taken_over {
        if state.table.end(number, EndReason::TakenOver).is_some() {
            debug!(
                lease = number.0,
                "released: {} took its number over", peer.holder
            );
            state.watchers.emit(|| Event::Released { id: number });
        }
    }
    let number = is_number(specs);
    if number {
        // The probes close here: the ports are numbers from now on.
        fds.clear();
        cookies.clear();
    }
    let id = state.table.grant(NewLease {
        keeper: Keeper::Connection(peer.conn),
        holder: Rc::clone(&peer.holder),
        start_time: peer.start_time,
        since: unix_now(),
        sockets: sockets.clone(),
        cookies,
        service: service.map(Rc::from),
    });
    if number {
        state.table.mark_number(id);
    }
    debug!(
        lease = id.0,
        "granted {}{} to {}",
        SocketList(&sockets),
        if number { " as a number" } else { "" },
        peer.holder
    );
    let table = &state.table;
    state.watchers.emit(|| Event::Granted {
        lease: table.get(id).expect("just granted").info(),
    });
    Ok(Granted { id, sockets, fds })
}

/// Grants one pool port as a number (the portserver protocol): drawn exactly as a `tcp:0`
/// lease of `identity` would be (rules, quotas, a probe bind on the default address), then the
/// socket is closed: the broker holds nothing. The lease is tied to `holder`'s process, which
/// the caller watches. `binds` counts the binds attempted, the work the asker is charged for.
pub fn grant_number(
    state: &mut State,
    holder: Rc<Holder>,
    identity: &Identity,
    start_time: u64,
    binds: &mut u32,
) -> Result<(LeaseId, u16), Refusal> {
    let spec = SocketSpec {
        listen: Listen::Number,
        ..SocketSpec::tcp(None, 0)
    };
    // A pool port is never held as a number by anyone, so nothing is taken over.
    let mut taken_over = Vec::new();
    let bound = match bind_all(state, identity, &[spec], true, binds, &mut taken_over) {
        Ok(bound) => bound,
        Err(refusal) => {
            state.refusals.lease(format_args!(
                "refused a portserver port to {holder}: {refusal}"
            ));
            state.watchers.emit(|| Event::Refused {
                asker: Holder::clone(&holder),
                refusal: refusal.clone(),
            });
            return Err(refusal);
        }
    };
    // The probe socket closes here: the port is a number from now on.
    let sockets: Vec<GrantedSocket> = bound.into_iter().map(|(socket, _fd)| socket).collect();
    let port = sockets[0].addr.port();
    let pid = holder.pid;
    let id = state.table.grant(NewLease {
        keeper: Keeper::Process(pid),
        holder,
        start_time,
        since: unix_now(),
        sockets,
        cookies: Vec::new(),
        service: None,
    });
    state.table.mark_number(id);
    let table = &state.table;
    let lease = table.get(id).expect("just granted");
    debug!(
        lease = id.0,
        "handed out port {port} as a number to {}", lease.holder
    );
    state.watchers.emit(|| Event::Granted {
        lease: lease.info(),
    });
    Ok((id, port))
}

/// The bound sockets with their fds and their cookies (see `bind::cookie`), which is how the
/// broker knows them again: one `getsockopt` each.
type Bound = (Vec<GrantedSocket>, Vec<OwnedFd>, Vec<u64>);

fn with_cookies(bound: Vec<(GrantedSocket, OwnedFd)>) -> Result<Bound, Refusal> {
    let mut cookies = Vec::with_capacity(bound.len());
    for (socket, fd) in &bound {
        cookies
            .push(cookie(fd).map_err(|errno| bind_refusal(socket.transport, socket.addr, errno))?);
    }
    let (sockets, fds) = bound.into_iter().unzip();
    Ok((sockets, fds, cookies))
}

enum SpecProblem {
    Invalid(String),
    Refused(Refusal),
}

/// Whether a lease of `specs` is a number lease (`bind_all` checked that all specs agree).
fn is_number(specs: &[SocketSpec]) -> bool {
    specs.iter().all(|spec| spec.listen == Listen::Number)
}

/// Checks and binds every spec; all or nothing (sockets bound so far close on refusal).
/// `taken_over`: the number leases of the asker's own user that the granted sockets overlap,
/// which the caller ends once the lease is granted (see `Listen::Number`).
fn bind_all(
    state: &mut State,
    who: &Identity,
    specs: &[SocketSpec],
    by_rules: bool,
    binds: &mut u32,
    taken_over: &mut Vec<LeaseId>,
) -> Result<Vec<(GrantedSocket, OwnedFd)>, Refusal> {
    if specs.is_empty() || specs.len() > MAX_SOCKETS_PER_LEASE {
        return Err(Refusal::InvalidSpec {
            index: 0,
            reason: format!(
                "a lease holds 1 to {MAX_SOCKETS_PER_LEASE} sockets, not {}",
                specs.len()
            ),
        });
    }
    // Every spec is checked before anything is bound, and the rules before the quotas: a
    // request no rule allows is "not permitted", whatever the user's count.
    for (index, spec) in specs.iter().enumerate() {
        check_spec(state, who, spec, by_rules).map_err(|problem| match problem {
            SpecProblem::Invalid(reason) => Refusal::InvalidSpec {
                index: index as u32,
                reason,
            },
            SpecProblem::Refused(refusal) => refusal,
        })?;
    }
    let numbers = specs.iter().filter(|spec| spec.listen == Listen::Number);
    if numbers.count() % specs.len() != 0 {
        return Err(Refusal::InvalidSpec {
            index: 0,
            reason: "every spec of a lease is a number, or none is".into(),
        });
    }
    check_quotas(
        state,
        who,
        specs.len(),
        &numbers_to_take_over(state, who, specs),
    )?;
    let mut bound: Vec<(GrantedSocket, OwnedFd)> = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let at = bind_addr(state, spec);
        let taken_here = |port: u16| {
            bound.iter().position(|(g, _)| {
                g.transport == spec.transport
                    && g.addr.port() == port
                    && BindAddr::of(g).overlaps(at)
            })
        };
        let (addr, fd) = if spec.port == 0 {
            bind_from_pool(state, spec, at, |port| taken_here(port).is_some(), binds)?
        } else {
            if let Some(other) = taken_here(spec.port) {
                return Err(Refusal::InvalidSpec {
                    index: index as u32,
                    reason: format!("{spec} overlaps socket #{} of the same lease", other + 1),
                });
            }
            bind_fixed(state, who, spec, at, binds, taken_over)?
        };
        let listening = spec.transport == Transport::Tcp
            && !matches!(spec.listen, Listen::BindOnly | Listen::Number);
        bound.push((
            GrantedSocket {
                transport: spec.transport,
                addr,
                listening,
                v6_only: at.v6_only,
            },
            fd,
        ));
    }
    Ok(bound)
}

fn check_spec(
    state: &State,
    who: &Identity,
    spec: &SocketSpec,
    by_rules: bool,
) -> Result<(), SpecProblem> {
    match (spec.transport, spec.listen) {
        (Transport::Udp, Listen::Backlog(_) | Listen::BindOnly) => {
            return Err(SpecProblem::Invalid(
                "listen options apply to TCP only".into(),
            ));
        }
        (Transport::Tcp, Listen::Backlog(0)) => {
            return Err(SpecProblem::Invalid("a backlog must be at least 1".into()));
        }
        _ => {}
    }
    if let Some(IpAddr::V6(v6)) = spec.addr {
        if v6.to_ipv4_mapped().is_some() {
            return Err(SpecProblem::Invalid(
                "IPv4-mapped IPv6 addresses are not supported; use the IPv4 address".into(),
            ));
        }
    }
    if spec.addr.is_some_and(|ip| ip.is_ipv6()) && state.default_addr.is_ipv4() {
        return Err(SpecProblem::Invalid("this host has no IPv6".into()));
    }
    if spec.v6_only && !spec.addr.unwrap_or(state.default_addr).is_ipv6() {
        return Err(SpecProblem::Invalid(
            "IPv6-only applies to IPv6 addresses, not IPv4 ones".into(),
        ));
    }
    if by_rules {
        let ip = spec.addr.unwrap_or(state.default_addr);
        state
            .policy
            .permits(who, spec, ip)
            .map_err(|reason| SpecProblem::Refused(Refusal::NotPermitted { reason }))?;
    }
    Ok(())
}

/// Where `spec` binds: its address, else the default one; IPv6-only if asked, or if it is a
/// specific IPv6 address (which the kernel binds so anyway).
fn bind_addr(state: &State, spec: &SocketSpec) -> BindAddr {
    let ip = spec.addr.unwrap_or(state.default_addr);
    BindAddr {
        ip,
        v6_only: ip.is_ipv6() && (spec.v6_only || !ip.is_unspecified()),
    }
}

/// The numbers of `who`'s own user in the way of `specs`' explicit ports: if the lease is
/// granted it takes them over (see `bind_fixed`), so it needs no room of its own in the quotas
/// for what they count. A server told a number and then binding it under the shim would
/// otherwise be refused at its quota for the very port it was promised.
fn numbers_to_take_over(state: &State, who: &Identity, specs: &[SocketSpec]) -> Vec<LeaseId> {
    let mut numbers = Vec::new();
    for spec in specs {
        if spec.port == 0 || spec.listen == Listen::Number {
            continue;
        }
        let at = bind_addr(state, spec);
        for conflict in state.table.conflicts(spec.transport, at, spec.port) {
            let lease = conflict.lease;
            if lease.number && lease.holder.uid == who.uid && !numbers.contains(&lease.id) {
                numbers.push(lease.id);
            }
        }
    }
    numbers
}

/// The quotas a new lease of `sockets` sockets must fit in, once the numbers `replaced` (which
/// the lease takes over) are gone.
fn check_quotas(
    state: &State,
    who: &Identity,
    sockets: usize,
    replaced: &[LeaseId],
) -> Result<(), Refusal> {
    let limits = &state.policy.limits;
    let replaced_sockets: u64 = replaced
        .iter()
        .filter_map(|&id| state.table.get(id))
        .map(|lease| lease.sockets.len() as u64)
        .sum();
    let replaced = replaced.len() as u64;
    let total = (state.table.lease_count() as u64).saturating_sub(replaced);
    if total >= limits.leases_total {
        return Err(Refusal::QuotaExceeded {
            quota: "leases_total".into(),
            used: total,
            limit: limits.leases_total,
        });
    }
    if who.uid == 0 {
        return Ok(());
    }
    let mine = state.table.leases_of_uid(who.uid).saturating_sub(replaced);
    if mine >= limits.leases_per_uid {
        return Err(Refusal::QuotaExceeded {
            quota: "leases_per_uid".into(),
            used: mine,
            limit: limits.leases_per_uid,
        });
    }
    let held = state
        .table
        .sockets_of_uid(who.uid)
        .saturating_sub(replaced_sockets);
    if held + sockets as u64 > limits.sockets_per_uid {
        return Err(Refusal::QuotaExceeded {
            quota: "sockets_per_uid".into(),
            used: held,
            limit: limits.sockets_per_uid,
        });
    }
    Ok(())
}

/// Binds an explicit port: refused if a lease holds it, unless every lease in the way is a
/// number of the asker's own user, which this lease takes over (added to `taken_over`); the
/// broker's own reservation of the port if it holds one, else a fresh bind.
fn bind_fixed(
    state: &mut State,
    who: &Identity,
    spec: &SocketSpec,
    at: BindAddr,
    binds: &mut u32,
    taken_over: &mut Vec<LeaseId>,
) -> Result<(SocketAddr, OwnedFd), Refusal> {
    let addr = SocketAddr::new(at.ip, spec.port);
    let mut numbers = Vec::new();
    for conflict in state.table.conflicts(spec.transport, at, spec.port) {
        let lease = conflict.lease;
        // A number is the port promised to its user, who binds it later (under the shim):
        // that bind is what the number was for. A number never takes over a number.
        if lease.number && lease.holder.uid == who.uid && spec.listen != Listen::Number {
            numbers.push(lease.id);
            continue;
        }
        return Err(Refusal::InUse {
            transport: spec.transport,
            requested: addr,
            held: conflict.held,
            lease: lease.id,
            holder: Holder::clone(&lease.holder),
        });
    }
    *binds += 1;
    let fd = match state.take_reservation(spec.transport, spec.port) {
        // The held socket itself: the port is never unbound on the way.
        Some(held) if addr.ip() == state.default_addr && !spec.v6_only => {
            take_reservation(held, spec.transport, spec.listen)
        }
        // Another address (or IPv6-only, which a bound socket cannot become): the
        // reservation (on every address) must go first.
        Some(held) => {
            drop(held);
            bind_socket(spec.transport, addr, at.v6_only, spec.listen)
        }
        None => bind_socket(spec.transport, addr, at.v6_only, spec.listen),
    }
    .map_err(|errno| bind_refusal(spec.transport, addr, errno))?;
    for number in numbers {
        if !taken_over.contains(&number) {
            taken_over.push(number);
        }
    }
    Ok((addr, fd))
}

/// Binds the next free pool port, skipping ports that a process outside the broker holds.
fn bind_from_pool(
    state: &State,
    spec: &SocketSpec,
    at: BindAddr,
    taken_by_this_lease: impl Fn(u16) -> bool,
    binds: &mut u32,
) -> Result<(SocketAddr, OwnedFd), Refusal> {
    let mut result = None;
    let mut failure = None;
    state
        .table
        .free_pool_port(spec.transport, POOL_TRIES, |port| {
            if taken_by_this_lease(port) {
                return true;
            }
            let addr = SocketAddr::new(at.ip, port);
            *binds += 1;
            match bind_socket(spec.transport, addr, at.v6_only, spec.listen) {
                Ok(fd) => {
                    result = Some((addr, fd));
                    false
                }
                Err(Errno::EADDRINUSE) => {
                    debug!(
                        "pool port {}:{addr} is held outside the broker; skipping it",
                        spec.transport
                    );
                    true
                }
                Err(errno) => {
                    failure = Some(bind_refusal(spec.transport, addr, errno));
                    false
                }
            }
        });
    if let Some(refusal) = failure {
        return Err(refusal);
    }
    result.ok_or(Refusal::PoolExhausted {
        transport: spec.transport,
        pool: state.table.pool(),
    })
}
