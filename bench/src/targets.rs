//! The targets table: what issue 13 asks of portbrokerd, each a ratio to a baseline or a limit,
//! measured in one run and given a verdict.

use std::fmt::Write as _;

use crate::report::{ClientRow, Report};
use crate::statistics::RunStats;

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// One row: the target, what was measured (shown by `show`) and whether `ok` says it is met;
/// "not measured" when this run did not measure it (a smoke run, or portserver left out).
fn line(
    s: &mut String,
    target: &str,
    measured: Option<f64>,
    show: impl Fn(f64) -> String,
    ok: impl Fn(f64) -> bool,
) {
    let _ = match measured {
        Some(x) => writeln!(s, "| {target} | {} | {} |", show(x), verdict(ok(x))),
        None => writeln!(s, "| {target} | not measured | – |"),
    };
}

fn times(x: f64) -> String {
    format!("{x:.2}×")
}

fn ms(x: f64) -> String {
    format!("{x:.0} ms")
}

/// The two lease-path targets against one baseline (`of` picks it, `name` names it): 16
/// clients at ≥ 0.75× its throughput, and the pinned client's p50 at ≤ 1.3× its own.
fn lease_path(
    s: &mut String,
    (sixteen, pinned): (Option<&ClientRow>, Option<&ClientRow>),
    prefix: &str,
    name: &str,
    of: fn(&ClientRow) -> &RunStats,
) {
    line(
        s,
        &format!("{prefix}16 clients ≥ 0.75× ({name})"),
        sixteen.map(|c| c.broker.ops_per_sec / of(c).ops_per_sec),
        times,
        |x| x >= 0.75,
    );
    line(
        s,
        &format!("{prefix}pinned p50 ≤ 1.3× ({name})"),
        pinned.map(|c| c.broker.p50_us / of(c).p50_us),
        times,
        |x| x <= 1.3,
    );
}

/// Appends the targets table to `s`.
pub fn render(s: &mut String, r: &Report) {
    let sixteen = r.clients.iter().find(|c| c.label == "16");
    let pinned = r.clients.iter().find(|c| c.label.contains("pinned"));
    s.push_str("| target | measured | |\n|---|---|---|\n");
    lease_path(s, (sixteen, pinned), "", "c", |c| &c.floor);
    line(
        s,
        "16 clients ≥ 20× portserver",
        sixteen.and_then(|c| c.portserver.map(|p| c.broker.ops_per_sec / p.ops_per_sec)),
        |x| format!("{x:.1}×"),
        |x| x >= 20.0,
    );
    let empty = r.fill.first().map(|(_, f)| f.p50_us);
    line(
        s,
        "any port at 99.9% ≤ 1.5× empty",
        r.fill.last().zip(empty).map(|((_, f), e)| f.p50_us / e),
        times,
        |x| x <= 1.5,
    );
    let per_lease = r.scale.rss_bytes_per_lease;
    let aim = if per_lease <= 256.0 {
        "met, and the aim"
    } else if per_lease <= 1024.0 {
        "met; the aim not yet"
    } else {
        "**missed**"
    };
    let _ = writeln!(
        s,
        "| ≤ 1 KiB per live lease (aim 256 B) | {per_lease:.0} B | {aim} |"
    );
    line(s, "list all leases < 1 s", Some(r.scale.list_ms), ms, |x| {
        x < 1000.0
    });
    line(
        s,
        "recover all leases after a restart < 1 s",
        Some(r.scale.recovery_ms),
        ms,
        |x| x < 1000.0,
    );
    // The targets before baseline (c) existed, against (b); kept since they cost nothing.
    lease_path(
        s,
        (sixteen, pinned),
        "earlier target, against (b): ",
        "b",
        |c| &c.baseline,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{render, ScaleRow};

    fn stats(ops_per_sec: f64, p50_us: f64) -> RunStats {
        RunStats {
            ops_per_sec,
            p50_us,
            p99_us: p50_us,
            server_cpu_us: 1.0,
        }
    }

    fn report(portserver: Option<RunStats>) -> Report {
        Report {
            machine: "test".into(),
            command: "bench".into(),
            bare_bind_ns: 4000.0,
            clients: vec![
                ClientRow {
                    label: "16".into(),
                    floor: stats(80.0, 10.0),
                    baseline: stats(60.0, 10.0),
                    broker: stats(50.0, 10.0),
                    portserver,
                },
                ClientRow {
                    label: "1, pinned to the server's core".into(),
                    floor: stats(100.0, 10.0),
                    baseline: stats(100.0, 8.0),
                    broker: stats(80.0, 12.0),
                    portserver: None,
                },
            ],
            fill: vec![(0.0, stats(1.0, 10.0)), (0.999, stats(1.0, 12.0))],
            scale: ScaleRow {
                recovery_ms: 1500.0,
                leases: 10,
                rss_bytes_per_lease: 585.0,
                list_ms: 5.0,
                list_rows: 10,
            },
        }
    }

    #[test]
    fn the_report_says_which_targets_were_missed() {
        let text = render(&report(Some(stats(2.0, 100.0))), false);
        for row in [
            "| 16 clients ≥ 0.75× (c) | 0.62× | **missed** |",
            "| pinned p50 ≤ 1.3× (c) | 1.20× | met |",
            "| 16 clients ≥ 20× portserver | 25.0× | met |",
            "| any port at 99.9% ≤ 1.5× empty | 1.20× | met |",
            "| ≤ 1 KiB per live lease (aim 256 B) | 585 B | met; the aim not yet |",
            "| list all leases < 1 s | 5 ms | met |",
            "| recover all leases after a restart < 1 s | 1500 ms | **missed** |",
            "| earlier target, against (b): 16 clients ≥ 0.75× (b) | 0.83× | met |",
            "| earlier target, against (b): pinned p50 ≤ 1.3× (b) | 1.50× | **missed** |",
        ] {
            assert!(text.contains(row), "no row {row:?} in\n{text}");
        }
    }

    #[test]
    fn a_target_left_unmeasured_says_so() {
        let text = render(&report(None), false);
        assert!(
            text.contains("| 16 clients ≥ 20× portserver | not measured | – |"),
            "{text}"
        );
    }
}
