//! In-memory broker state and peers for the handlers' unit tests: no daemon, no client
//! process. Grants bind real sockets on loopback, from a pool slice of each state's own.

use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use portbroker_proto::{Holder, PortRange, Response};

use crate::peer::Peer;
use crate::policy::{Identity, Policy};
use crate::state::State;

/// A state on the built-in policy (root may lease anything, others the pool and ports from
/// 1024 up), with a pool of 100 ports no other fixture state uses.
pub fn state() -> State {
    with_policy(Policy::defaults(1024))
}

/// A state on the policy `toml`.
pub fn state_with(toml: &str) -> State {
    with_policy(Policy::parse(Path::new("test.toml"), toml).expect("test policy parses"))
}

/// A state on the built-in policy whose default address is the dual-stack `[::]`, as on a
/// host with IPv6; `None` where this host has no IPv6.
pub fn state_with_ipv6() -> Option<State> {
    std::net::TcpListener::bind("[::1]:0").ok()?;
    Some(on_address(Policy::defaults(1024), "::".parse().unwrap()))
}

fn with_policy(policy: Policy) -> State {
    on_address(policy, "127.0.0.1".parse().unwrap())
}

/// Pool slices of 100 ports from 10000 up to the default ephemeral range (32768): room for a
/// lease that skips `POOL_TRIES` (64) ports held outside, and for 227 states.
const SLICE: u16 = 100;
const SLICES: u16 = (32_768 - 10_000) / SLICE;

fn on_address(policy: Policy, default_addr: std::net::IpAddr) -> State {
    static NEXT_SLICE: AtomicU16 = AtomicU16::new(0);
    // Never two states on one slice: tests run in parallel, and one's lease would sit on a
    // port another expects free (a lingering lease, a "free fixture port" held).
    let slice = NEXT_SLICE.fetch_add(1, Ordering::Relaxed);
    assert!(
        slice < SLICES,
        "more than {SLICES} fixture states in one test binary: make the slices narrower"
    );
    let lo = 10_000 + slice * SLICE;
    let pool = PortRange {
        lo,
        hi: lo + SLICE - 1,
    };
    State::new(pool, default_addr, policy).expect("epoll for process watches")
}

/// This test process as a client on connection `conn`, with its real uid.
pub fn me(conn: u64) -> Peer {
    let uid = nix::unistd::getuid().as_raw();
    let pid = std::process::id() as i32;
    Peer {
        start_time: crate::procfs::start_time(pid).unwrap(),
        ..peer(conn, pid, uid)
    }
}

/// A client of another user (never root) on connection `conn`.
pub fn stranger(conn: u64, uid: u32) -> Peer {
    assert_ne!(uid, 0);
    peer(conn, 1, uid)
}

fn peer(conn: u64, pid: i32, uid: u32) -> Peer {
    Peer {
        conn,
        holder: Rc::new(Holder {
            pid,
            uid,
            gid: uid,
            name: format!("uid{uid}"),
        }),
        identity: Rc::new(Identity {
            uid,
            groups: vec![uid],
        }),
        start_time: 1,
    }
}

/// Leases one pool port on 127.0.0.1 for `peer`; the lease id and the fd.
pub fn leased(state: &mut State, peer: &Peer) -> (portbroker_proto::LeaseId, std::os::fd::OwnedFd) {
    let reply = super::lease::lease(state, peer, &["tcp:127.0.0.1:0".parse().unwrap()]);
    match reply.response {
        Response::Granted { id, .. } => (id, reply.fds.into_iter().next().unwrap()),
        other => panic!("lease refused: {other:?}"),
    }
}
