//! `List`: every live lease, by id.

use portbroker_proto::Response;

use super::Reply;
use crate::state::State;

pub fn list(state: &State) -> Reply {
    Reply::answer(Response::Leases(
        state.table.leases().map(|lease| lease.info()).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state};
    use portbroker_proto::LeaseState;

    #[test]
    fn list_shows_every_lease_with_its_state() {
        let mut state = state();
        let peer = me(1);
        let (a, _fa) = leased(&mut state, &peer);
        let (b, _fb) = leased(&mut state, &peer);
        state.table.linger(b, None);
        let Response::Leases(leases) = list(&state).response else {
            panic!("not a list");
        };
        let seen: Vec<_> = leases.iter().map(|l| (l.id, l.state)).collect();
        assert_eq!(
            seen,
            [(a, LeaseState::Connection), (b, LeaseState::Lingering)]
        );
        assert_eq!(leases[0].holder, *peer.holder);
    }
}
