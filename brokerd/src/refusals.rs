//! Refused leases in the daemon's log. Anyone can provoke a refusal, as often as the request
//! budget allows, so they are logged at most once a second, each line saying how many were
//! left out since the last; every one is counted for the periodic summary (`summary`), and
//! `portctl watch` shows each of them.

use std::fmt;

use portbroker_proto::Holder;
use tracing::info;

use crate::throttle::Throttle;

#[derive(Debug, Default)]
pub struct RefusalLog {
    throttle: Throttle,
    /// Refusals since the daemon started, logged or not.
    total: u64,
}

impl RefusalLog {
    /// Counts a refusal of `asker`, and logs `what` (the refusal, formatted only if logged)
    /// unless a refusal was logged less than a second ago.
    pub fn log(&mut self, asker: &Holder, what: fmt::Arguments<'_>) {
        self.total += 1;
        match self.throttle.admit() {
            None => {}
            Some(0) => info!("refused {asker}: {what}"),
            Some(left_out) => {
                info!("refused {asker}: {what} ({left_out} more refused since the last one logged)")
            }
        }
    }

    /// Refusals since the daemon started.
    pub fn total(&self) -> u64 {
        self.total
    }
}
