//! `Status`: the broker's figures.

use portbroker_proto::{Response, StatusInfo, PROTOCOL_VERSION};

use super::Reply;
use crate::state::State;

/// The figures, counting `connections` open connections: the answer to `Status`, and what the
/// metrics endpoint renders. Counts kept as things happen; nothing here walks the table.
pub fn info(state: &State, connections: usize) -> StatusInfo {
    let table = &state.table;
    StatusInfo {
        daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol: PROTOCOL_VERSION,
        uptime_secs: state.started.elapsed().as_secs(),
        leases: table.lease_count() as u64,
        sockets: table.socket_count() as u64,
        connections: connections as u64,
        pool: table.pool(),
        default_addr: state.default_addr,
        metrics: state.counters.info(
            table.lingering_count(),
            |transport| table.pool_in_use(transport),
            state.metrics_listen,
        ),
    }
}

pub fn status(state: &State, connections: usize) -> Reply {
    Reply::answer(Response::Status(info(state, connections)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::{leased, me, state};

    #[test]
    fn status_counts_leases_sockets_and_connections() {
        let mut state = state();
        let (_id, _fd) = leased(&mut state, &me(1));
        let Response::Status(info) = status(&state, 3).response else {
            panic!("not a status");
        };
        assert_eq!((info.leases, info.sockets, info.connections), (1, 1, 3));
        assert_eq!(info.protocol, PROTOCOL_VERSION);
        assert_eq!(info.pool, state.table.pool());
        assert_eq!(info.metrics.refusals.len(), 8);
        assert_eq!(info.metrics.lingering, 0);
    }
}
