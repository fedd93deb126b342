//! `TieToProcess`: the lease ends when a process exits, not with the connection.

use portbroker_proto::{Failure, Holder, LeaseId, Response};
use tracing::debug;

use super::Reply;
use crate::peer::Peer;
use crate::procfs;
use crate::state::State;

pub fn tie(state: &mut State, peer: &Peer, id: LeaseId, pid: i32) -> Reply {
    match tie_checked(state, peer, id, pid) {
        Ok(holder) => {
            debug!(lease = id.0, "tied to {holder} by {}", peer.holder);
            Reply::answer(Response::Tied { id, holder })
        }
        Err(failure) => Reply::failed(failure),
    }
}

/// The lease's new holder: process `pid`, which must be the asker's own unless the asker is
/// an administrator.
fn tie_checked(state: &mut State, peer: &Peer, id: LeaseId, pid: i32) -> Result<Holder, Failure> {
    let lease = state.may_act_on(&peer.identity, id)?;
    let holder = Holder::clone(&lease.holder);
    let not_permitted = |reason: String| Failure::NotPermitted { reason };
    let owner = procfs::process_uid(pid)
        .ok_or_else(|| not_permitted(format!("there is no process {pid}")))?;
    if owner != peer.identity.uid && !state.policy.is_admin(&peer.identity) {
        return Err(not_permitted(format!(
            "process {pid} belongs to uid {owner}, not to uid {}",
            peer.identity.uid
        )));
    }
    state
        .watches
        .watch(pid)
        .map_err(|e| not_permitted(format!("cannot watch process {pid}: {e}")))?;
    let holder = Holder {
        pid,
        name: procfs::process_name(pid).unwrap_or_default(),
        ..holder
    };
    let start_time = procfs::start_time(pid).unwrap_or(0);
    state.table.tie(id, holder.clone(), start_time);
    Ok(holder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state, stranger};
    use crate::lease::Keeper;

    #[test]
    fn a_tied_lease_leaves_its_connection_and_ends_with_the_process() {
        let mut state = state();
        let peer = me(1);
        let (id, fd) = leased(&mut state, &peer);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let reply = tie(&mut state, &peer, id, pid);
        assert!(matches!(reply.response, Response::Tied { holder, .. } if holder.pid == pid));
        assert_eq!(state.table.get(id).unwrap().keeper, Keeper::Process(pid));
        assert!(state.table.kept_by_connection(1).is_empty());
        drop(fd);
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut exited = Vec::new();
        while exited.is_empty() && std::time::Instant::now() < deadline {
            exited = state.watches.exited();
        }
        assert_eq!(exited, [pid]);
        state.process_exited(pid);
        // At once, unless a child another test forked this very moment still has a copy of
        // the socket until it execs: then it lingers, and ends when that copy closes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while state.table.get(id).is_some() && std::time::Instant::now() < deadline {
            state.check_lingering();
            std::thread::park_timeout(std::time::Duration::from_millis(5));
        }
        assert!(state.table.get(id).is_none(), "ended with its process");
    }

    #[test]
    fn ties_again_and_again_cost_nothing_and_the_watch_dies_with_the_lease() {
        let mut state = state();
        let peer = me(1);
        let (id, _fd) = leased(&mut state, &peer);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        for _ in 0..100 {
            tie(&mut state, &peer, id, pid);
        }
        assert_eq!(state.table.tied_to_process(pid), [id]);
        assert_eq!(state.watches.len(), 1);
        crate::handlers::release::release(&mut state, &peer, id);
        state.prune_watches();
        assert_eq!(
            state.watches.len(),
            0,
            "a watch outlived the lease it was for"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_user_ties_only_to_its_own_processes() {
        let mut state = state();
        let peer = stranger(1, 4242);
        let (id, _fd) = leased(&mut state, &peer);
        // pid 1 belongs to root, not to uid 4242.
        let reply = tie(&mut state, &peer, id, 1);
        assert!(matches!(
            reply.response,
            Response::Failed(Failure::NotPermitted { .. })
        ));
        let gone = tie(&mut state, &peer, id, -7);
        assert!(matches!(
            gone.response,
            Response::Failed(Failure::NotPermitted { .. })
        ));
        assert!(matches!(
            state.table.get(id).unwrap().keeper,
            Keeper::Connection(1)
        ));
    }
}
