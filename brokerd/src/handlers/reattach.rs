//! `Reattach`: a client that reconnected takes its leases onto the new connection.

use portbroker_proto::{LeaseId, Response};

use super::Reply;
use crate::peer::Peer;
use crate::state::State;

/// The most leases one `Reattach` takes.
const MAX_REATTACH: usize = 65_536;

/// Takes the leases of the asking process (same pid and uid) among `ids`; others are skipped.
pub fn reattach(state: &mut State, peer: &Peer, ids: &[LeaseId]) -> Reply {
    let asker = &peer.holder;
    let mut taken = Vec::new();
    for &id in ids.iter().take(MAX_REATTACH) {
        let Some(lease) = state.table.get(id) else {
            continue;
        };
        if lease.holder.pid != asker.pid || lease.holder.uid != asker.uid {
            continue;
        }
        state.table.reattach(id, peer.conn);
        taken.push(id);
    }
    state.request_lines.info(format_args!(
        "re-attached {} of {} leases to {asker}",
        taken.len(),
        ids.len()
    ));
    Reply::answer(Response::Reattached { ids: taken })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state, stranger};

    #[test]
    fn only_the_same_process_takes_its_leases_back() {
        let mut state = state();
        let (mine, _f1) = leased(&mut state, &me(1));
        let (theirs, _f2) = leased(&mut state, &stranger(2, 4242));
        let reply = reattach(&mut state, &me(3), &[mine, theirs, LeaseId(999)]);
        assert_eq!(reply.response, Response::Reattached { ids: vec![mine] });
        assert_eq!(state.table.kept_by_connection(3), [mine]);
        assert!(state.table.kept_by_connection(1).is_empty());
        assert_eq!(state.table.kept_by_connection(2), [theirs]);
    }
}
