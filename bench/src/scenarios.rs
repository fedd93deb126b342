//! The measurements of the report, one function each, in the order the report gives them.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::harness::{release_holders, rss_kib, say, wait_until, Bench};
use crate::portserver::Portserver;
use crate::report::{ClientRow, ScaleRow};
use crate::statistics::{median, median_stats, RunStats};

/// Baseline (a): socket + bind + listen + close in this process, in ns per call; the median of
/// the repetitions.
pub fn bare_bind(bench: &Bench) -> Result<f64> {
    say("baseline (a): socket+bind+listen+close in process");
    Ok(median(
        (0..bench.reps)
            .map(|_| bare_bind_ns(bench.seconds))
            .collect::<Result<_>>()?,
    ))
}

/// One run of baseline (a).
fn bare_bind_ns(seconds: f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (lo, hi) = (61000u16, 65535u16);
    let mut port = lo;
    let mut calls = 0u64;
    let started = Instant::now();
    while Instant::now() < deadline {
        for _ in 0..256 {
            // std's bind sets SO_REUSEADDR, listens and closes on drop, as the broker does.
            if let Ok(listener) = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
                drop(listener);
                calls += 1;
            }
            port = if port == hi { lo } else { port + 1 };
        }
    }
    ensure!(calls > 0, "no bind succeeded");
    Ok(started.elapsed().as_nanos() as f64 / calls as f64)
}

/// Lease round trips on persistent connections, by number of clients, against baselines (c) and
/// (b), portbrokerd and (unless left out) portserver, taking turns run by run for each number
/// of clients so that the ratios compare minutes alike.
pub fn lease_round_trips(
    bench: &mut Bench,
    portserver: Option<&Portserver>,
    smoke: bool,
) -> Result<Vec<ClientRow>> {
    let scenarios: Vec<(String, usize, bool)> = if smoke {
        vec![("1".into(), 1, false), ("2".into(), 2, false)]
    } else {
        let mut s: Vec<(String, usize, bool)> = [1, 2, 4, 16]
            .into_iter()
            .map(|n| (n.to_string(), n, false))
            .collect();
        s.push(("1, pinned to the server's core".into(), 1, true));
        s
    };
    let pool = (61000, 65535);
    let mut clients = Vec::new();
    let (floor, floor_socket) = bench.start_floor()?;
    let (minimal, minimal_socket) = bench.start_minimal(pool)?;
    let (daemon, daemon_socket) = bench.start_portbrokerd(pool)?;
    for (label, n, pinned) in &scenarios {
        say(&format!("lease round trip, {label} client(s)"));
        let peer = match (portserver, pinned) {
            (Some(peer), false) => {
                let name = format!("portbroker-bench-{}-{n}", std::process::id());
                let server = peer.start(&name)?;
                Some((name, server))
            }
            _ => None,
        };
        // The repetitions take turns, (c), (b), portbrokerd, portserver and again: a slow
        // minute of the machine (a VM's steal time comes and goes) falls on each of them
        // alike, instead of on all the runs of one.
        let (floor_target, minimal_target, daemon_target) = (
            floor_socket.display().to_string(),
            minimal_socket.display().to_string(),
            daemon_socket.display().to_string(),
        );
        let mut runs: [Vec<RunStats>; 4] = Default::default();
        for _ in 0..bench.reps {
            runs[0].push(bench.run_clients("floor", &floor_target, *n, *pinned, floor.pid())?);
            runs[1].push(bench.run_clients(
                "lease",
                &minimal_target,
                *n,
                *pinned,
                minimal.pid(),
            )?);
            runs[2].push(bench.run_clients("lease", &daemon_target, *n, *pinned, daemon.pid())?);
            if let Some((name, server)) = &peer {
                runs[3].push(bench.run_clients("portserver", name, *n, false, server.pid())?);
            }
        }
        let [floor_runs, minimal_runs, daemon_runs, peer_runs] = runs;
        let (floor_stats, baseline, broker) = (
            median_stats(&floor_runs),
            median_stats(&minimal_runs),
            median_stats(&daemon_runs),
        );
        let portserver = peer.map(|_| median_stats(&peer_runs));
        clients.push(ClientRow {
            label: label.clone(),
            floor: floor_stats,
            baseline,
            broker,
            portserver,
        });
    }
    Ok(clients)
}

/// The any-port lease, one client pinned to the server's core, with the pool empty and 90%,
/// 99% and 99.9% held.
pub fn pool_fill(bench: &mut Bench, smoke: bool) -> Result<Vec<(f64, RunStats)>> {
    let pool_size: u16 = if smoke { 1000 } else { 10_000 };
    let fill_pool = (20_000, 20_000 + pool_size - 1);
    let mut fill = Vec::new();
    for level in [0.0, 0.9, 0.99, 0.999] {
        say(&format!(
            "any-port lease with the pool {:.1}% full",
            level * 100.0
        ));
        let (daemon, socket) = bench.start_portbrokerd(fill_pool)?;
        let held = (f64::from(pool_size) * level).round() as usize;
        let holder = bench.hold(&socket, held)?;
        let target = socket.display().to_string();
        // Pinned to the server's core: an unpinned client lands on either core from one run to
        // the next, and its p50 moves by 2× with that alone, hiding what the pool's fill does.
        let stats =
            bench.repeated(|| bench.run_clients("lease", &target, 1, true, daemon.pid()))?;
        release_holders(vec![holder])?;
        fill.push((level, stats));
    }
    Ok(fill)
}

/// Many live leases: the daemon's memory per lease, `portctl list --json` of all of them, and
/// how soon a SIGKILLed daemon, started again, lists them all again.
pub fn scale(bench: &mut Bench, smoke: bool) -> Result<ScaleRow> {
    let leases: usize = if smoke { 400 } else { 28_000 };
    say(&format!("scale: {leases} live leases"));
    let (daemon, socket) = bench.start_portbrokerd((3000, 32767))?;
    let rss_before = rss_kib(daemon.pid())?;
    let per_holder = leases.div_ceil(4);
    let holders = (0..4)
        .map(|_| bench.hold(&socket, per_holder))
        .collect::<Result<Vec<_>>>()?;
    let held = per_holder * 4;
    let rss_after = rss_kib(daemon.pid())?;
    let (list_ms, list_rows) = list_all(bench, &socket)?;
    ensure!(
        list_rows == held,
        "portctl list showed {list_rows} of {held} leases"
    );
    // Restart recovery: SIGKILL the daemon, start it again on the same socket (and journal),
    // and time until every lease is listed again.
    drop(daemon);
    let restarted = Instant::now();
    let daemon = bench.spawn_portbrokerd(&socket, (3000, 32767))?;
    let broker = portbroker::Broker::connect_to(&socket)?;
    let recovered = wait_until(Duration::from_secs(30), || {
        broker.status().is_ok_and(|s| s.leases as usize >= held)
    });
    let recovery_ms = restarted.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        recovered,
        "the restarted daemon did not recover the {held} leases"
    );
    drop(broker);
    release_holders(holders)?;
    drop(daemon);
    Ok(ScaleRow {
        recovery_ms,
        leases: held,
        rss_bytes_per_lease: (rss_after.saturating_sub(rss_before) * 1024) as f64 / held as f64,
        list_ms,
        list_rows,
    })
}

/// Times `portctl list --json` against the daemon on `socket`, once per repetition: the median
/// in ms, and how many rows the last listing had.
fn list_all(bench: &Bench, socket: &Path) -> Result<(f64, usize)> {
    let mut list_ms = Vec::new();
    let mut list_rows = 0;
    for _ in 0..bench.reps {
        let started = Instant::now();
        let out = Command::new(bench.exe("portctl"))
            .args(["list", "--json"])
            .env("PORTBROKER_SOCKET", socket)
            .output()?;
        list_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            out.status.success(),
            "portctl list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        list_rows = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)?.len();
    }
    Ok((median(list_ms), list_rows))
}
