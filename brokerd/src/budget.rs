//! The request budget per uid (`requests_per_sec_per_uid`): a token bucket that refills at the
//! rate and holds at most one second's worth. Root is exempt.

use std::collections::HashMap;
use std::time::Instant;

use portbroker_proto::Failure;
use tracing::warn;

use crate::throttle::Throttle;

#[derive(Debug, Default)]
pub struct RequestBudgets {
    /// Tokens left per uid, and when they were last refilled.
    buckets: HashMap<u32, (f64, Instant)>,
    warning: Throttle,
}

impl RequestBudgets {
    /// Takes one request from `uid`'s budget of `rate` a second; the failure to answer with
    /// when it is spent.
    pub fn take(&mut self, uid: u32, rate: u64, now: Instant) -> Option<Failure> {
        if uid == 0 {
            return None;
        }
        let rate = rate as f64;
        let (tokens, refilled) = self.buckets.entry(uid).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*refilled).as_secs_f64() * rate).min(rate);
        *refilled = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return None;
        }
        if self.warning.due() {
            warn!("uid {uid} is over its request budget ({rate} per second)");
        }
        Some(Failure::NotPermitted {
            reason: format!(
                "more than {rate} requests per second from uid {uid} (requests_per_sec_per_uid)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_spent_budget_refills_with_time_and_root_is_exempt() {
        let mut budgets = RequestBudgets::default();
        let start = Instant::now();
        assert!((0..3).all(|_| budgets.take(1000, 3, start).is_none()));
        assert!(budgets.take(1000, 3, start).is_some());
        assert!(budgets.take(1001, 3, start).is_none(), "per uid");
        assert!(budgets
            .take(1000, 3, start + Duration::from_millis(400))
            .is_none());
        assert!((0..100).all(|_| budgets.take(0, 3, start).is_none()));
    }
}
