//! The report: what one run measured, rendered as the Markdown tables of the README's
//! Performance section and as JSON.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::harness::{say, SERVER_CPU};
use crate::statistics::RunStats;
use crate::targets;

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
    /// Baseline (c), the kernel's floor.
    pub floor: RunStats,
    /// Baseline (b), the minimal server.
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
    s.push_str("Baseline (c) is the kernel's floor: one epoll thread of raw system calls; a 4-byte request, ");
    s.push_str(
        "`socket+bind+listen+getsockname`, the port and the fd back in one `sendmsg`, no release. ",
    );
    s.push_str("Baseline (b) is a minimal single-threaded fd-passing server with portbrokerd's protocol and no table.\n\n");
    render_absolute(&mut s, &r.clients);
    render_ratios(&mut s, &r.clients, r.bare_bind_ns / 1000.0);
    s.push_str("\n\"Any port\" lease+release, one client pinned to the server's core, as the pool fills:\n\n| pool full | ops/s | p50 µs | p99 µs | p50 vs empty |\n|---|---|---|---|---|\n");
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
    targets::render(&mut s, r);
    s
}

/// What each server achieved, by number of clients.
fn render_absolute(s: &mut String, clients: &[ClientRow]) {
    s.push_str("| clients | (c) ops/s | (c) p50 µs | (c) CPU µs/op | (b) ops/s | (b) p50 µs | (b) CPU µs/op | portbrokerd ops/s | p50 µs | p99 µs | daemon CPU µs/lease | portserver ops/s |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in clients {
        let (c, b, d) = (row.floor, row.baseline, row.broker);
        let peer = row
            .portserver
            .map_or("–".into(), |p| format!("{:.0}", p.ops_per_sec));
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {peer} |",
            row.label,
            c.ops_per_sec,
            c.p50_us,
            c.server_cpu_us,
            b.ops_per_sec,
            b.p50_us,
            b.server_cpu_us,
            d.ops_per_sec,
            d.p50_us,
            d.p99_us,
            d.server_cpu_us,
        );
    }
}

/// portbrokerd's figures divided by each baseline's of the same run. (a) is a cost, not a
/// rate: against it the p50 and the daemon's CPU per lease count bare binds.
fn render_ratios(s: &mut String, clients: &[ClientRow], bare_bind_us: f64) {
    s.push_str("\nportbrokerd as a ratio to each baseline (ops/s: above 1 is faster; p50 and CPU per lease: below 1 is cheaper; ");
    s.push_str("against (a), how many in-process binds the p50 and the daemon's CPU per lease come to):\n\n");
    s.push_str("| clients | ops/s vs (c) | p50 vs (c) | CPU vs (c) | ops/s vs (b) | p50 vs (b) | CPU vs (b) | p50 vs (a) | CPU vs (a) | ops/s vs portserver |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for row in clients {
        let (c, b, d) = (row.floor, row.baseline, row.broker);
        let peer = row.portserver.map_or("–".into(), |p| {
            format!("{:.1}×", d.ops_per_sec / p.ops_per_sec)
        });
        let _ = writeln!(
            s,
            "| {} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.1}× | {:.1}× | {peer} |",
            row.label,
            d.ops_per_sec / c.ops_per_sec,
            d.p50_us / c.p50_us,
            d.server_cpu_us / c.server_cpu_us,
            d.ops_per_sec / b.ops_per_sec,
            d.p50_us / b.p50_us,
            d.server_cpu_us / b.server_cpu_us,
            d.p50_us / bare_bind_us,
            d.server_cpu_us / bare_bind_us,
        );
    }
}
