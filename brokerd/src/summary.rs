//! The daemon's summary of what it did, at info: the lease path itself logs at debug (the
//! history in the journal, `portctl log`, is the record of every lease), so a person reading
//! the log sees one line a minute at most, and only after something happened:
//! `in the last 60 s: 41,233 leases granted, 41,230 ended, 12 refused; 3 live`.
//!
//! A minute starts at the first turn that finds the figures changed since the last summary,
//! so an idle daemon neither logs nor wakes up for it.

use std::time::{Duration, Instant};

use tracing::info;

/// The least time between two summaries.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Counts since the daemon started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub granted: u64,
    pub ended: u64,
    pub refused: u64,
}

#[derive(Debug, Default)]
pub struct Summary {
    /// The figures the last summary took in.
    logged: Figures,
    /// When the figures were first seen changed since then.
    since: Option<Instant>,
}

impl Summary {
    /// Takes this turn's figures; when a summary is due, returns its line (and the caller's
    /// `live` leases now end it).
    pub fn turn(&mut self, now: Instant, figures: Figures, live: usize) -> Option<String> {
        match self.since {
            None if figures != self.logged => {
                self.since = Some(now);
                None
            }
            Some(since) if now >= since + INTERVAL => {
                let last = std::mem::replace(&mut self.logged, figures);
                self.since = None;
                let granted = figures.granted - last.granted;
                Some(format!(
                    "in the last {} s: {} {} granted, {} ended, {} refused; {} live",
                    now.duration_since(since).as_secs(),
                    grouped(granted),
                    if granted == 1 { "lease" } else { "leases" },
                    grouped(figures.ended - last.ended),
                    grouped(figures.refused - last.refused),
                    grouped(live as u64),
                ))
            }
            _ => None,
        }
    }

    /// Logs the summary when it is due (see `turn`).
    pub fn log_when_due(&mut self, now: Instant, figures: Figures, live: usize) {
        if let Some(line) = self.turn(now, figures, live) {
            info!("{line}");
        }
    }

    /// When the next summary is due, if something happened since the last.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + INTERVAL)
    }
}

/// `41233` as `41,233`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(granted: u64, ended: u64, refused: u64) -> Figures {
        Figures {
            granted,
            ended,
            refused,
        }
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(41_233), "41,233");
        assert_eq!(grouped(1_000_000), "1,000,000");
    }

    #[test]
    fn one_line_a_minute_at_most_and_only_after_something_happened() {
        let mut summary = Summary::default();
        let t0 = Instant::now();
        // Nothing happened: no line, no wake-up.
        assert_eq!(summary.turn(t0, Figures::default(), 0), None);
        assert_eq!(summary.next_deadline(), None);
        // Something happened: the minute starts, and nothing is logged before it is over.
        assert_eq!(summary.turn(t0, figures(2, 1, 0), 1), None);
        assert_eq!(summary.next_deadline(), Some(t0 + INTERVAL));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(summary.turn(t1, figures(41_235, 41_231, 12), 4), None);
        let t2 = t0 + INTERVAL;
        assert_eq!(
            summary.turn(t2, figures(41_235, 41_231, 12), 4).as_deref(),
            Some("in the last 60 s: 41,235 leases granted, 41,231 ended, 12 refused; 4 live")
        );
        // Quiet again: nothing more.
        let t3 = t2 + INTERVAL * 5;
        assert_eq!(summary.turn(t3, figures(41_235, 41_231, 12), 4), None);
        assert_eq!(summary.next_deadline(), None);
        // The next minute counts from what the last line took in.
        assert_eq!(summary.turn(t3, figures(41_236, 41_231, 12), 5), None);
        assert_eq!(
            summary
                .turn(t3 + INTERVAL, figures(41_236, 41_232, 12), 4)
                .as_deref(),
            Some("in the last 60 s: 1 lease granted, 1 ended, 0 refused; 4 live")
        );
    }
}
