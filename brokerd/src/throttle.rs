//! Rate limits: log lines of a flood of the same trouble (`Throttle`, one a second unless told
//! otherwise; `Throttled`, ten a second, logged with its count), not one per event, the line
//! that is logged saying how many were left out; and `Burst`, for work anyone can ask for at
//! will, which both count by.

use std::fmt;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// Lines of one kind, so many a second at most (one unless made with `per_second`), counting
/// those left out.
#[derive(Debug)]
pub struct Throttle {
    burst: Burst,
    /// Lines left out since the last one that was due.
    suppressed: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::per_second(1)
    }
}

impl Throttle {
    pub fn per_second(lines: u32) -> Throttle {
        Throttle {
            burst: Burst::new(lines),
            suppressed: 0,
        }
    }

    /// Whether a line is due; if not, it is counted as left out.
    pub fn due(&mut self) -> bool {
        self.admit().is_some()
    }

    /// `Some(n)` when a line is due, `n` being how many were not since the last one that was;
    /// `None` (and one more left out) when not.
    pub fn admit(&mut self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&mut self, now: Instant) -> Option<u64> {
        if !self.burst.admit(now) {
            self.suppressed += 1;
            return None;
        }
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
    lines: Throttle,
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
            lines: Throttle::per_second(BURST),
            kind,
        }
    }

    /// `line` at info, if one is due.
    pub fn info(&mut self, line: fmt::Arguments<'_>) {
        if let Some(left_out) = self.lines.admit() {
            info!("{line}{}", LeftOut(left_out, self.kind));
        }
    }

    /// `line` at warn, if one is due.
    pub fn warn(&mut self, line: fmt::Arguments<'_>) {
        if let Some(left_out) = self.lines.admit() {
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
        let mut lines = Throttle::per_second(BURST);
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(lines.admit_at(start), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(lines.admit_at(start + Duration::from_millis(900)), None);
        }
        // The next second: the first line counts the five left out.
        let next = start + Duration::from_secs(1);
        assert_eq!(lines.admit_at(next), Some(5));
        assert_eq!(lines.admit_at(next), Some(0));
    }

    #[test]
    fn the_line_that_is_due_counts_those_left_out() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        assert_eq!(throttle.admit_at(start), Some(0));
        assert_eq!(throttle.admit_at(start), None);
        assert_eq!(throttle.admit_at(start), None);
        // A second later.
        let later = start + Duration::from_secs(1);
        assert_eq!(throttle.admit_at(later), Some(2));
        assert_eq!(throttle.admit_at(later), None);
    }
}
