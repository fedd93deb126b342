//! Rate-limited log lines: a flood of the same trouble logs one line a second, not one per
//! event, and the line that is logged can say how many were left out.

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
    /// Lines left out since the last one that was due.
    suppressed: u64,
}

impl Throttle {
    /// Whether a line is due (at most one a second); if so, the next one waits a second.
    pub fn due(&mut self) -> bool {
        self.admit().is_some()
    }

    /// `Some(n)` when a line is due, `n` being how many were not since the last one that was;
    /// `None` (and one more left out) when not.
    pub fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < Duration::from_secs(1)) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second() {
        let mut throttle = Throttle::default();
        assert!(throttle.due());
        assert!(!throttle.due());
    }

    #[test]
    fn the_line_that_is_due_counts_those_left_out() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.admit(), None);
        // A second later.
        throttle.last = throttle.last.map(|t| t - Duration::from_secs(1));
        assert_eq!(throttle.admit(), Some(2));
        assert_eq!(throttle.admit(), None);
    }
}
