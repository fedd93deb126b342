//! The report: what one run measured, rendered as the Markdown tables of the README's
//! Performance section and as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::harness::{say, SERVER_CPU};
use crate::statistics::RunStats;

/// Everything one run measured; `report.json` is this, serialised.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub command: String,
    pub bare_bind_ns: f64,
    pub clients: Vec<ClientRow>,
    /// The any-port lease as the pool fills: (the share of the pool held, 0 to 1; the stats).
    pub fill: Vec<(f64, RunStats)>,
    pub scale: ScaleRow,
}

/// The lease round trip with one number of clients, against each server.
#[derive(Debug, Serialize)]
pub struct ClientRow {
    pub label: String,
    pub baseline: RunStats,
    pub broker: RunStats,
    pub portserver: Option<RunStats>,
}

/// The daemon holding many leases: memory, listing them, recovering them after a SIGKILL.
#[derive(Debug, Serialize)]
pub struct ScaleRow {
    /// From the restart of a SIGKILLed daemon until it lists every lease again.
    pub recovery_ms: f64,
    pub leases: usize,
    pub rss_bytes_per_lease: f64,
    pub list_ms: f64,
    pub list_rows: usize,
}

/// The machine line of the report: CPU model, cores, memory and kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map_or("unknown CPU".to_owned(), |m| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!(
        "{model}, {cores} cores, {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// Prints the Markdown report and writes `report.md` and `report.json` into `out_dir`.
pub fn publish(report: &Report, smoke: bool, out_dir: &Path) -> Result<()> {
    let text = render(report, smoke);
    println!("{text}");
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(out_dir.join("report.md"), &text)?;
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    say(&format!(
        "wrote {}/report.md and report.json",
        out_dir.display()
    ));
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// The report as Markdown: the tables of the README's Performance section.
pub fn render(r: &Report, smoke: bool) -> String {
    let mut s = String::new();
    if smoke {
        s.push_str("**Smoke run: tiny durations and scale; the numbers mean nothing.**\n\n");
    }
    let _ = writeln!(s, "Machine: {}  ", r.machine);
    let _ = writeln!(
        s,
        "Servers pinned to CPU {SERVER_CPU}; medians of the repetitions.\n"
    );
    let _ = writeln!(
        s,
        "Baseline (a), in-process `socket+bind+listen+close`: {:.2} µs\n",
        r.bare_bind_ns / 1000.0
    );
    s.push_str("Lease round trip (lease one TCP socket, receive the fd, release) on a persistent connection. ");
    s.push_str("Baseline (b) is a minimal single-threaded fd-passing server with the same protocol and no table.\n\n");
    s.push_str("| clients | (b) ops/s | (b) p50 µs | (b) CPU µs/op | portbrokerd ops/s | p50 µs | p99 µs | daemon CPU µs/lease | ops/s vs (b) | p50 vs (b) | portserver ops/s | vs portserver |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in &r.clients {
        let (peer, versus) = match row.portserver {
            Some(p) => (
                format!("{:.0}", p.ops_per_sec),
                format!("{:.1}×", row.broker.ops_per_sec / p.ops_per_sec),
            ),
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {peer} | {versus} |",
            row.label,
            row.baseline.ops_per_sec,
            row.baseline.p50_us,
            row.baseline.server_cpu_us,
            row.broker.ops_per_sec,
            row.broker.p50_us,
            row.broker.p99_us,
            row.broker.server_cpu_us,
            row.broker.ops_per_sec / row.baseline.ops_per_sec,
            row.broker.p50_us / row.baseline.p50_us,
        );
    }
    s.push_str("\n\"Any port\" lease+release, one client, as the pool fills:\n\n| pool full | ops/s | p50 µs | p99 µs | p50 vs empty |\n|---|---|---|---|---|\n");
    let empty = r.fill[0].1.p50_us;
    for (level, stats) in &r.fill {
        let _ = writeln!(
            s,
            "| {:.1}% | {:.0} | {:.1} | {:.1} | {:.2} |",
            level * 100.0,
            stats.ops_per_sec,
            stats.p50_us,
            stats.p99_us,
            stats.p50_us / empty
        );
    }
    let _ = writeln!(
        s,
        "\nScale, {} live leases: daemon memory {:.0} bytes per lease (RSS); `portctl list --json` of all of them {:.0} ms; \
         a SIGKILLed daemon restarted and listing all of them again {:.0} ms.\n",
        r.scale.leases, r.scale.rss_bytes_per_lease, r.scale.list_ms, r.scale.recovery_ms
    );
    let sixteen = r.clients.iter().find(|c| c.label == "16");
    let pinned = r.clients.iter().find(|c| c.label.contains("pinned"));
    let last_fill = r.fill.last().map_or(f64::NAN, |(_, f)| f.p50_us / empty);
    s.push_str("| target | measured | |\n|---|---|---|\n");
    if let Some(row) = sixteen {
        let ratio = row.broker.ops_per_sec / row.baseline.ops_per_sec;
        let _ = writeln!(
            s,
            "| 16 clients ≥ 0.75× (b) | {ratio:.2}× | {} |",
            verdict(ratio >= 0.75)
        );
        if let Some(p) = row.portserver {
            let ratio = row.broker.ops_per_sec / p.ops_per_sec;
            let _ = writeln!(
                s,
                "| 16 clients ≥ 15× portserver | {ratio:.1}× | {} |",
                verdict(ratio >= 15.0)
            );
        }
    }
    if let Some(row) = pinned {
        let ratio = row.broker.p50_us / row.baseline.p50_us;
        let _ = writeln!(
            s,
            "| pinned p50 ≤ 1.3× (b) | {ratio:.2}× | {} |",
            verdict(ratio <= 1.3)
        );
    }
    let _ = writeln!(
        s,
        "| any port at 99.9% ≤ 1.5× empty | {last_fill:.2}× | {} |",
        verdict(last_fill <= 1.5)
    );
    let per_lease = r.scale.rss_bytes_per_lease;
    let _ = writeln!(
        s,
        "| ≤ 1 KiB per live lease | {per_lease:.0} B | {} |",
        verdict(per_lease <= 1024.0)
    );
    let _ = writeln!(
        s,
        "| list all leases < 1 s | {:.0} ms | {} |",
        r.scale.list_ms,
        verdict(r.scale.list_ms < 1000.0)
    );
    let _ = writeln!(
        s,
        "| recover all leases after a restart < 1 s | {:.0} ms | {} |",
        r.scale.recovery_ms,
        verdict(r.scale.recovery_ms < 1000.0)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_which_targets_were_missed() {
        let stats = |ops_per_sec, p50_us| RunStats {
            ops_per_sec,
            p50_us,
            p99_us: p50_us,
            server_cpu_us: 1.0,
        };
        let report = Report {
            machine: "test".into(),
            command: "bench".into(),
            bare_bind_ns: 4000.0,
            clients: vec![ClientRow {
                label: "16".into(),
                baseline: stats(100.0, 10.0),
                broker: stats(50.0, 10.0),
                portserver: Some(stats(10.0, 100.0)),
            }],
            fill: vec![(0.0, stats(1.0, 10.0)), (0.999, stats(1.0, 12.0))],
            scale: ScaleRow {
                recovery_ms: 1500.0,
                leases: 10,
                rss_bytes_per_lease: 2048.0,
                list_ms: 5.0,
                list_rows: 10,
            },
        };
        let text = render(&report, false);
        assert!(
            text.contains("| 16 clients ≥ 0.75× (b) | 0.50× | **missed** |"),
            "{text}"
        );
        assert!(
            text.contains("| 16 clients ≥ 15× portserver | 5.0× | **missed** |"),
            "{text}"
        );
        assert!(
            text.contains("| any port at 99.9% ≤ 1.5× empty | 1.20× | met |"),
            "{text}"
        );
        assert!(
            text.contains("| ≤ 1 KiB per live lease | 2048 B | **missed** |"),
            "{text}"
        );
    }
}
