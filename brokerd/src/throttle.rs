//! Rate limits: log lines of a flood of the same trouble (one a second with `Throttle`, ten with
//! `Throttled`), not one per event, the line that is logged saying how many were left out; and
//! `Burst`, for work anyone can ask for at will.

use std::fmt;
use std::time::{Duration, Instant};

use tracing::{info, warn};

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

/// At most `per_second` of something in any one second (counted in windows of a second from
/// the first): a few at once pass, a flood does not.
#[derive(Debug)]
pub struct Burst {
    per_second: u32,
    /// When the current second began, and how many it has let through.
    window: Option<(Instant, u32)>,
}

impl Burst {
    pub fn new(per_second: u32) -> Burst {
        Burst {
            per_second,
            window: None,
        }
    }

    /// Whether one more may go at `now`; if so, it is counted.
    pub fn admit(&mut self, now: Instant) -> bool {
        let (start, passed) = match self.window {
            Some((start, passed)) if now - start < Duration::from_secs(1) => (start, passed),
            _ => (now, 0),
        };
        if passed >= self.per_second {
            return false;
        }
        self.window = Some((start, passed + 1));
        true
    }
}

/// Log lines of one kind that any local process can provoke (a bad request, a connection over
/// its limit): at most `BURST` a second, so that a few troubles at once are each logged and a
/// flood is not; the first line after a flood says how many of its kind were left out.
#[derive(Debug)]
pub struct Throttled {
    burst: Burst,
    /// Lines left out since the last one logged.
    left_out: u64,
    /// What the lines are, in the count: "(3 more portserver lines left out ...)".
    kind: &'static str,
}

/// Lines of one kind logged in one second at most.
pub const BURST: u32 = 10;

/// ` (3 more KIND lines left out since the last one logged)`, or nothing.
struct LeftOut(u64, &'static str);

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(
                f,
                " ({n} more {} lines left out since the last one logged)",
                self.1
            ),
        }
    }
}

impl Throttled {
    pub fn new(kind: &'static str) -> Throttled {
        Throttled {
            burst: Burst::new(BURST),
            left_out: 0,
            kind,
        }
    }

    /// `Some(n)` when a line may be logged, `n` being how many were left out before it;
    /// `None` (and one more left out) when this second's `BURST` is spent.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if !self.burst.admit(now) {
            self.left_out += 1;
            return None;
        }
        Some(std::mem::take(&mut self.left_out))
    }

    /// `line` at info, if one is due.
    pub fn info(&mut self, line: fmt::Arguments<'_>) {
        if let Some(left_out) = self.admit(Instant::now()) {
            info!("{line}{}", LeftOut(left_out, self.kind));
        }
    }

    /// `line` at warn, if one is due.
    pub fn warn(&mut self, line: fmt::Arguments<'_>) {
        if let Some(left_out) = self.admit(Instant::now()) {
            warn!("{line}{}", LeftOut(left_out, self.kind));
        }
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
    fn a_burst_lets_so_many_through_a_second() {
        let mut burst = Burst::new(3);
        let start = Instant::now();
        assert_eq!(
            (0..5).map(|_| burst.admit(start)).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert!(!burst.admit(start + Duration::from_millis(999)));
        assert!(burst.admit(start + Duration::from_secs(1)));
    }

    #[test]
    fn a_few_lines_at_once_are_logged_and_a_flood_is_counted() {
        let mut lines = Throttled::new("test");
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(lines.admit(start), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(lines.admit(start + Duration::from_millis(900)), None);
        }
        // The next second: the first line counts the five left out.
        let next = start + Duration::from_secs(1);
        assert_eq!(lines.admit(next), Some(5));
        assert_eq!(lines.admit(next), Some(0));
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
