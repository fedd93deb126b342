//! The broker's counters, and its figures in the Prometheus text exposition format (0.0.4).
//!
//! Counting is a few integer adds where things happen (a grant, a refusal, a release, ...);
//! the gauges are counts the table and the pool keep anyway. A scrape renders a `StatusInfo`,
//! the very figures `portctl status` shows, and never walks the lease table.

use std::fmt::Write as _;

use portbroker_proto::{Histogram, MetricsInfo, Refusal, StatusInfo, Transport};

/// The upper bounds of the lease-latency buckets, in microseconds; above the last is `+Inf`.
pub const LATENCY_BOUNDS_US: [u64; 9] = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// A histogram with fixed bounds: an observation is one comparison per bound passed and two
/// adds.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    counts: [u64; LATENCY_BOUNDS_US.len() + 1],
    sum: u64,
}

impl Latency {
    pub fn observe(&mut self, micros: u64) {
        let bucket = LATENCY_BOUNDS_US.partition_point(|&bound| bound < micros);
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(micros);
    }

    pub fn snapshot(&self) -> Histogram {
        Histogram {
            bounds: LATENCY_BOUNDS_US.to_vec(),
            counts: self.counts.to_vec(),
            sum: self.sum,
        }
    }
}

/// What happened since the daemon started.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub grants: u64,
    /// Per `Refusal::index`.
    pub refusals: [u64; Refusal::NAMES.len()],
    pub releases: u64,
    pub expiries: u64,
    pub revokes: u64,
    /// From a `Lease` request's frame being read to its answer being queued.
    pub lease_latency: Latency,
}

impl Counters {
    pub fn refused(&mut self, refusal: &Refusal) {
        self.refusals[refusal.index()] += 1;
    }

    /// The counters with the gauges that `StatusInfo` does not carry.
    pub fn info(
        &self,
        lingering: usize,
        pool_in_use: impl Fn(Transport) -> usize,
        listen: Option<std::net::SocketAddr>,
    ) -> MetricsInfo {
        MetricsInfo {
            grants: self.grants,
            refusals: Refusal::NAMES
                .iter()
                .zip(self.refusals)
                .map(|(name, n)| ((*name).to_owned(), n))
                .collect(),
            releases: self.releases,
            expiries: self.expiries,
            revokes: self.revokes,
            lingering: lingering as u64,
            pool_in_use_tcp: pool_in_use(Transport::Tcp) as u64,
            pool_in_use_udp: pool_in_use(Transport::Udp) as u64,
            lease_latency: self.lease_latency.snapshot(),
            listen,
        }
    }
}

/// One metric's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Label values are the broker's own words (reason names, transports), but escape them as the
/// format says all the same.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The figures of `status` in the Prometheus text format.
pub fn render(status: &StatusInfo) -> String {
    let m = &status.metrics;
    let mut out = String::with_capacity(4096);
    single(
        &mut out,
        "portbroker_grants_total",
        "counter",
        "Leases granted.",
        m.grants,
    );
    header(
        &mut out,
        "portbroker_refusals_total",
        "counter",
        "Leases refused, by reason (the Refusal variant).",
    );
    for (reason, n) in &m.refusals {
        let _ = writeln!(
            out,
            "portbroker_refusals_total{{reason=\"{}\"}} {n}",
            label_value(reason)
        );
    }
    single(
        &mut out,
        "portbroker_releases_total",
        "counter",
        "Leases ended by a Release request.",
        m.releases,
    );
    single(
        &mut out,
        "portbroker_expiries_total",
        "counter",
        "Leases ended by their time limit.",
        m.expiries,
    );
    single(
        &mut out,
        "portbroker_revokes_total",
        "counter",
        "Leases revoked by an administrator.",
        m.revokes,
    );
    single(
        &mut out,
        "portbroker_leases",
        "gauge",
        "Leases in the table, lingering and kept ones included.",
        status.leases,
    );
    single(
        &mut out,
        "portbroker_leased_sockets",
        "gauge",
        "Sockets of the leases in the table.",
        status.sockets,
    );
    single(
        &mut out,
        "portbroker_lingering_leases",
        "gauge",
        "Leases whose holder is gone while a copy of a socket survives.",
        m.lingering,
    );
    header(
        &mut out,
        "portbroker_pool_ports_in_use",
        "gauge",
        "Ports of the dynamic pool that leases hold, by transport.",
    );
    for (transport, n) in [("tcp", m.pool_in_use_tcp), ("udp", m.pool_in_use_udp)] {
        let _ = writeln!(
            out,
            "portbroker_pool_ports_in_use{{transport=\"{transport}\"}} {n}"
        );
    }
    single(
        &mut out,
        "portbroker_pool_size",
        "gauge",
        "Ports in the dynamic pool, per transport.",
        status.pool.len() as u64,
    );
    single(
        &mut out,
        "portbroker_connections",
        "gauge",
        "Open client connections.",
        status.connections,
    );
    let name = "portbroker_lease_latency_microseconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time from a Lease request's frame being read to its answer being queued, in microseconds.",
    );
    let histogram = &m.lease_latency;
    let mut cumulative = 0;
    for (i, n) in histogram.counts.iter().enumerate() {
        cumulative += n;
        let _ = match histogram.bounds.get(i) {
            Some(bound) => writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}"),
            None => writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}"),
        };
    }
    let _ = writeln!(out, "{name}_sum {}", histogram.sum);
    let _ = writeln!(out, "{name}_count {cumulative}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use portbroker_proto::PortRange;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let mut latency = Latency::default();
        for micros in [0, 10, 11, 25, 4999, 5000, 5001, u64::MAX] {
            latency.observe(micros);
        }
        let histogram = latency.snapshot();
        assert_eq!(histogram.bounds, LATENCY_BOUNDS_US);
        //                          10 25 50 100 250 500 1000 2500 5000 +Inf
        assert_eq!(histogram.counts, [2, 2, 0, 0, 0, 0, 0, 0, 2, 2]);
        assert_eq!(histogram.count(), 8);
        assert_eq!(histogram.sum, u64::MAX, "the sum saturates");
    }

    fn status(counters: &Counters) -> StatusInfo {
        StatusInfo {
            daemon_version: "0.1.0".into(),
            protocol: 1,
            uptime_secs: 5,
            leases: 4,
            sockets: 6,
            connections: 2,
            pool: PortRange {
                lo: 61000,
                hi: 61099,
            },
            default_addr: "0.0.0.0".parse().unwrap(),
            metrics: counters.info(1, |t| if t == Transport::Tcp { 3 } else { 1 }, None),
        }
    }

    #[test]
    fn rendering_follows_the_text_format() {
        let mut counters = Counters {
            grants: 7,
            releases: 2,
            expiries: 1,
            revokes: 3,
            ..Counters::default()
        };
        counters.refusals[Refusal::NAMES.iter().position(|n| *n == "in_use").unwrap()] = 5;
        counters.lease_latency.observe(12);
        counters.lease_latency.observe(30);
        counters.lease_latency.observe(9000);
        let text = render(&status(&counters));
        for line in [
            "# HELP portbroker_grants_total Leases granted.",
            "# TYPE portbroker_grants_total counter",
            "portbroker_grants_total 7",
            "# TYPE portbroker_refusals_total counter",
            "portbroker_refusals_total{reason=\"in_use\"} 5",
            "portbroker_refusals_total{reason=\"quota_exceeded\"} 0",
            "portbroker_releases_total 2",
            "portbroker_expiries_total 1",
            "portbroker_revokes_total 3",
            "# TYPE portbroker_leases gauge",
            "portbroker_leases 4",
            "portbroker_leased_sockets 6",
            "portbroker_lingering_leases 1",
            "portbroker_pool_ports_in_use{transport=\"tcp\"} 3",
            "portbroker_pool_ports_in_use{transport=\"udp\"} 1",
            "portbroker_pool_size 100",
            "portbroker_connections 2",
            "# TYPE portbroker_lease_latency_microseconds histogram",
            "portbroker_lease_latency_microseconds_bucket{le=\"10\"} 0",
            "portbroker_lease_latency_microseconds_bucket{le=\"25\"} 1",
            "portbroker_lease_latency_microseconds_bucket{le=\"50\"} 2",
            "portbroker_lease_latency_microseconds_bucket{le=\"5000\"} 2",
            "portbroker_lease_latency_microseconds_bucket{le=\"+Inf\"} 3",
            "portbroker_lease_latency_microseconds_sum 9042",
            "portbroker_lease_latency_microseconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        // Every reason has its sample, and every metric one HELP and one TYPE line.
        assert_eq!(
            text.matches("portbroker_refusals_total{").count(),
            Refusal::NAMES.len()
        );
        assert_eq!(text.matches("# HELP ").count(), 12);
        assert_eq!(text.matches("# TYPE ").count(), 12);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
