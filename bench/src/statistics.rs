//! What a run of clients achieved, and the medians and percentiles that summarise runs.

use serde::Serialize;

/// What a group of clients achieved together.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunStats {
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Server CPU per operation, in µs.
    pub server_cpu_us: f64,
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median of each figure on its own: the repetitions of one measurement, summarised.
pub fn median_stats(runs: &[RunStats]) -> RunStats {
    let pick = |f: fn(&RunStats) -> f64| median(runs.iter().map(f).collect());
    RunStats {
        ops_per_sec: pick(|r| r.ops_per_sec),
        p50_us: pick(|r| r.p50_us),
        p99_us: pick(|r| r.p99_us),
        server_cpu_us: pick(|r| r.server_cpu_us),
    }
}

/// The `p` percentile of latencies in ns, sorted, in µs.
pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians_pick_the_right_sample() {
        let sorted: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&sorted, 0.50), 51.0); // index round(99 * 0.5) = 50: 51 µs
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&[7000], 0.99), 7.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        let run = |ops| RunStats {
            ops_per_sec: ops,
            p50_us: ops,
            p99_us: ops,
            server_cpu_us: ops,
        };
        assert_eq!(
            median_stats(&[run(5.0), run(1.0), run(9.0)]).ops_per_sec,
            5.0
        );
    }
}
