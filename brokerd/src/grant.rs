//! Granting a lease: the policy's rules and quotas, then binding every socket (from the pool,
//! a held reservation, or a fresh bind), all or nothing.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use nix::errno::Errno;
use portbroker_proto::{
    Event, GrantedSocket, Holder, LeaseId, Listen, Refusal, SocketSpec, Transport,
};
use tracing::{debug, info};

use crate::bind::{bind_refusal, bind_socket, cookie, take_reservation};
use crate::lease::{unix_now, Keeper, SocketList, MAX_SOCKETS_PER_LEASE};
use crate::peer::Peer;
use crate::policy::Identity;
use crate::state::State;
use crate::table::{addrs_overlap, NewLease};

/// How many pool ports held by processes outside the broker one "any port" lease may skip.
const POOL_TRIES: usize = 64;

/// A granted lease: its id, its sockets and their fds, in the order of the request's specs.
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
    let bound = bind_all(state, &peer.identity, specs, by_rules, binds).and_then(with_cookies);
    let (sockets, fds, cookies) = match bound {
        Ok(bound) => bound,
        Err(refusal) => {
            info!("refused {}: {refusal}", peer.holder);
            state.watchers.emit(|| Event::Refused {
                asker: Holder::clone(&peer.holder),
                refusal: refusal.clone(),
            });
            return Err(refusal);
        }
    };
    let id = state.table.grant(NewLease {
        keeper: Keeper::Connection(peer.conn),
        holder: Rc::clone(&peer.holder),
        start_time: peer.start_time,
        since: unix_now(),
        sockets: sockets.clone(),
        cookies,
        service: service.map(Rc::from),
    });
    info!(
        lease = id.0,
        "granted {} to {}",
        SocketList(&sockets),
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
/// the caller watches.
pub fn grant_number(
    state: &mut State,
    holder: Rc<Holder>,
    identity: &Identity,
    start_time: u64,
) -> Result<(LeaseId, u16), Refusal> {
    let spec = SocketSpec {
        transport: Transport::Tcp,
        addr: None,
        port: 0,
        listen: Listen::BindOnly,
    };
    let mut binds = 0;
    let bound = match bind_all(state, identity, &[spec], true, &mut binds) {
        Ok(bound) => bound,
        Err(refusal) => {
            info!("refused a portserver port to {holder}: {refusal}");
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
    info!(
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

/// Checks and binds every spec; all or nothing (sockets bound so far close on refusal).
fn bind_all(
    state: &mut State,
    who: &Identity,
    specs: &[SocketSpec],
    by_rules: bool,
    binds: &mut u32,
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
    check_quotas(state, who, specs.len())?;
    let mut bound: Vec<(GrantedSocket, OwnedFd)> = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let ip = spec.addr.unwrap_or(state.default_addr);
        let taken_here = |port: u16| {
            bound.iter().position(|(g, _)| {
                g.transport == spec.transport
                    && g.addr.port() == port
                    && addrs_overlap(g.addr.ip(), ip)
            })
        };
        let (addr, fd) = if spec.port == 0 {
            bind_from_pool(state, spec, ip, |port| taken_here(port).is_some(), binds)?
        } else {
            if let Some(other) = taken_here(spec.port) {
                return Err(Refusal::InvalidSpec {
                    index: index as u32,
                    reason: format!("{spec} overlaps socket #{} of the same lease", other + 1),
                });
            }
            bind_fixed(state, spec, SocketAddr::new(ip, spec.port), binds)?
        };
        let listening = spec.transport == Transport::Tcp && spec.listen != Listen::BindOnly;
        bound.push((
            GrantedSocket {
                transport: spec.transport,
                addr,
                listening,
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
    if by_rules {
        let ip = spec.addr.unwrap_or(state.default_addr);
        state
            .policy
            .permits(who, spec, ip)
            .map_err(|reason| SpecProblem::Refused(Refusal::NotPermitted { reason }))?;
    }
    Ok(())
}

/// The quotas a new lease of `sockets` sockets must fit in.
fn check_quotas(state: &State, who: &Identity, sockets: usize) -> Result<(), Refusal> {
    let limits = &state.policy.limits;
    let total = state.table.lease_count() as u64;
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
    let mine = state.table.leases_of_uid(who.uid);
    if mine >= limits.leases_per_uid {
        return Err(Refusal::QuotaExceeded {
            quota: "leases_per_uid".into(),
            used: mine,
            limit: limits.leases_per_uid,
        });
    }
    let held = state.table.sockets_of_uid(who.uid);
    if held + sockets as u64 > limits.sockets_per_uid {
        return Err(Refusal::QuotaExceeded {
            quota: "sockets_per_uid".into(),
            used: held,
            limit: limits.sockets_per_uid,
        });
    }
    Ok(())
}

/// Binds an explicit port: refused if a lease holds it; the broker's own reservation of the
/// port if it holds one, else a fresh bind.
fn bind_fixed(
    state: &mut State,
    spec: &SocketSpec,
    addr: SocketAddr,
    binds: &mut u32,
) -> Result<(SocketAddr, OwnedFd), Refusal> {
    if let Some(conflict) = state.table.conflict(spec.transport, addr) {
        return Err(Refusal::InUse {
            transport: spec.transport,
            requested: addr,
            held: conflict.held,
            lease: conflict.lease.id,
            holder: Holder::clone(&conflict.lease.holder),
        });
    }
    *binds += 1;
    let fd = match state.take_reservation(spec.transport, spec.port) {
        // The held socket itself: the port is never unbound on the way.
        Some(held) if addr.ip() == state.default_addr => {
            take_reservation(held, spec.transport, spec.listen)
        }
        // Another address: the reservation (on every address) must go first.
        Some(held) => {
            drop(held);
            bind_socket(spec.transport, addr, spec.listen)
        }
        None => bind_socket(spec.transport, addr, spec.listen),
    }
    .map_err(|errno| bind_refusal(spec.transport, addr, errno))?;
    Ok((addr, fd))
}

/// Binds the next free pool port, skipping ports that a process outside the broker holds.
fn bind_from_pool(
    state: &State,
    spec: &SocketSpec,
    ip: IpAddr,
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
            let addr = SocketAddr::new(ip, port);
            *binds += 1;
            match bind_socket(spec.transport, addr, spec.listen) {
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
