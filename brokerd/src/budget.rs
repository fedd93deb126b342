//! The request budget per uid (`requests_per_sec_per_uid`): a token bucket that refills at the
//! rate and holds at most one second's worth. A request costs one token to be let in, and the
//! work it did beyond that (each bind after a lease's first) is charged once it is served, so
//! that cheap requests which make the broker bind dozens of times pay for it. Root is exempt.

use std::collections::HashMap;
use std::time::Instant;

use portbroker_proto::Failure;
use tracing::warn;

use crate::throttle::Throttle;

#[derive(Debug, Default)]
pub struct RequestBudgets {
    /// Tokens left per uid (below zero while work done is being paid back), and when they
    /// were last refilled.
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
        let tokens = self.refilled(uid, rate, now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return None;
        }
        let missing = 1.0 - *tokens;
        if self.warning.due() {
            warn!("uid {uid} is over its request budget ({rate} per second)");
        }
        let retry = if rate == 0 {
            String::new()
        } else {
            format!(
                "; try again in {} ms",
                (missing * 1000.0 / rate as f64).ceil()
            )
        };
        Some(Failure::NotPermitted {
            reason: format!(
                "more than {rate} requests per second from uid {uid} (requests_per_sec_per_uid; \
                 each bind after a lease's first counts as one request more){retry}"
            ),
        })
    }

    /// Charges `uid` for `extra` units of work beyond the request [`take`](Self::take) let
    /// in. The balance may go below zero: the next requests are refused until the refill has
    /// paid the work back, so the budget bounds the work per second, not the requests.
    pub fn charge(&mut self, uid: u32, rate: u64, extra: u32, now: Instant) {
        if uid == 0 || extra == 0 {
            return;
        }
        *self.refilled(uid, rate, now) -= f64::from(extra);
    }

    /// `uid`'s balance, refilled for the time since the last refill and capped at one
    /// second's worth.
    fn refilled(&mut self, uid: u32, rate: u64, now: Instant) -> &mut f64 {
        let rate = rate as f64;
        let (tokens, refilled) = self.buckets.entry(uid).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*refilled).as_secs_f64() * rate).min(rate);
        *refilled = now;
        tokens
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

    #[test]
    fn work_is_charged_below_zero_and_paid_back_by_the_refill() {
        let mut budgets = RequestBudgets::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        // 40 a second (times below are exact in binary). One request that made 64 binds: 1
        // token to get in, 63 charged once served.
        assert!(budgets.take(1000, 40, start).is_none());
        budgets.charge(1000, 40, 63, start);
        // 40 - 64 = -24: refused until 25 tokens have come back, 625 ms at 40 a second.
        let refused = budgets.take(1000, 40, start).expect("in debt");
        let Failure::NotPermitted { reason } = refused else {
            panic!("{refused:?}");
        };
        assert!(
            reason.contains("requests_per_sec_per_uid") && reason.contains("try again in 625 ms"),
            "{reason}"
        );
        assert!(budgets.take(1000, 40, at(500)).is_some(), "-24 + 20 < 1");
        assert!(budgets.take(1000, 40, at(625)).is_none(), "-24 + 25 = 1");
        assert!(budgets.take(1000, 40, at(625)).is_some(), "spent again");
        // The refill still caps the balance at one second's worth.
        assert!((0..40).all(|_| budgets.take(1000, 40, at(60_000)).is_none()));
        assert!(budgets.take(1000, 40, at(60_000)).is_some());
        // Root is never charged, and no work costs nothing.
        budgets.charge(0, 40, 1_000_000, start);
        assert!(budgets.take(0, 40, start).is_none());
        budgets.charge(1001, 40, 0, start);
        assert!((0..40).all(|_| budgets.take(1001, 40, start).is_none()));
    }
}
