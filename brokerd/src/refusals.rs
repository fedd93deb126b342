//! Refusals in the daemon's log. Anyone can provoke a refusal, as often as the request budget
//! allows, so refusals are logged at most once a second, all kinds together, each line saying
//! how many were left out since the last; `portctl watch` shows every refused lease, and the
//! periodic summary (`summary`) counts them.

use std::fmt;

use tracing::{info, warn};

use crate::throttle::Throttle;

#[derive(Debug, Default)]
pub struct RefusalLog {
    throttle: Throttle,
    /// Leases refused since the daemon started, logged or not.
    leases: u64,
}

/// ` (37 more refused since the last one logged)`, or nothing.
struct LeftOut(u64);

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more refused since the last one logged)"),
        }
    }
}

impl RefusalLog {
    /// A refused lease: counted, and `line` (formatted only if logged) logged at `info`
    /// unless a refusal was logged less than a second ago.
    pub fn lease(&mut self, line: fmt::Arguments<'_>) {
        self.leases += 1;
        if let Some(left_out) = self.throttle.admit() {
            info!("{line}{}", LeftOut(left_out));
        }
    }

    /// Another request refused (an administrator's, or on another user's lease): `line`
    /// logged at `warn`, worth a look, under the same limit.
    pub fn request(&mut self, line: fmt::Arguments<'_>) {
        if let Some(left_out) = self.throttle.admit() {
            warn!("{line}{}", LeftOut(left_out));
        }
    }

    /// Leases refused since the daemon started.
    pub fn leases(&self) -> u64 {
        self.leases
    }
}
