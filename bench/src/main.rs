//! portbroker's benchmark: the lease path against its physical limit and against Google's
//! portserver, measured in one run and reported as ratios to baselines of that same run.
//!
//! `cargo run --release -p portbroker-bench` (see the README's Performance section).

mod minimal;
mod worker;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::{Parser, Subcommand};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde::Serialize;

use crate::worker::WorkerResult;

#[derive(Debug, Parser)]
#[command(about = "Benchmark portbrokerd against its baselines and Google's portserver")]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.5)]
    seconds: f64,
    /// Repetitions of each measurement; the report gives the median.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// A tiny run for CI: every scenario once, briefly, at a small scale. Its numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Leave out Google's portserver (it needs python3 and PyPI).
    #[arg(long)]
    skip_portserver: bool,
    /// Where report.md and report.json go [default: target/bench].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// (internal) A client process.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        #[arg(long, default_value_t = 5_000_000)]
        max_ops: u64,
        #[arg(long, default_value_t = 0)]
        count: usize,
    },
    /// (internal) Baseline (b), the minimal fd-passing server.
    #[command(hide = true)]
    MinimalServer {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        lo: u16,
        #[arg(long)]
        hi: u16,
    },
}

/// The CPU the servers run on; "pinned" clients share it.
const SERVER_CPU: usize = 0;

fn pin(pid: u32, cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(pid as i32), &set).context("sched_setaffinity")
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Time all threads of the process have spent on a CPU, in ns (`/proc/PID/task/*/schedstat`).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += text
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .context("parse schedstat")?;
    }
    Ok(total)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::park_timeout(Duration::from_millis(5));
    }
    ok()
}

/// A server process of the benchmark, killed on drop.
struct Server {
    child: Child,
    name: &'static str,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    args: Args,
    bin_dir: PathBuf,
    dir: tempfile::TempDir,
    servers_started: usize,
}

/// What a group of clients achieved together.
#[derive(Debug, Clone, Copy, Serialize)]
struct RunStats {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// Server CPU per operation, in µs.
    server_cpu_us: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median_stats(runs: &[RunStats]) -> RunStats {
    let pick = |f: fn(&RunStats) -> f64| median(runs.iter().map(f).collect());
    RunStats {
        ops_per_sec: pick(|r| r.ops_per_sec),
        p50_us: pick(|r| r.p50_us),
        p99_us: pick(|r| r.p99_us),
        server_cpu_us: pick(|r| r.server_cpu_us),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

impl Bench {
    fn exe(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    fn socket_path(&mut self) -> PathBuf {
        self.servers_started += 1;
        self.dir
            .path()
            .join(format!("server-{}.sock", self.servers_started))
    }

    fn wait_for_socket(path: &Path, server: &mut Server) -> Result<()> {
        let up = wait_until(Duration::from_secs(20), || {
            UnixStream::connect(path).is_ok() || matches!(server.child.try_wait(), Ok(Some(_)))
        });
        ensure!(
            up && matches!(server.child.try_wait(), Ok(None)),
            "{} did not start",
            server.name
        );
        Ok(())
    }

    fn start_portbrokerd(&mut self, pool: (u16, u16)) -> Result<(Server, PathBuf)> {
        let socket = self.socket_path();
        let server = self.spawn_portbrokerd(&socket, pool)?;
        Ok((server, socket))
    }

    /// A portbrokerd on `socket` (whose directory holds its journal), once it answers.
    fn spawn_portbrokerd(&mut self, socket: &Path, pool: (u16, u16)) -> Result<Server> {
        self.servers_started += 1;
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("portbrokerd-{}.log", self.servers_started)),
        )?;
        let child = Command::new(self.exe("portbrokerd"))
            .arg("--socket")
            .arg(socket)
            .arg("--pool")
            .arg(format!("{}-{}", pool.0, pool.1))
            // Measured as deployed: default logging, to a file.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start portbrokerd")?;
        let mut server = Server {
            child,
            name: "portbrokerd",
        };
        pin(server.pid(), SERVER_CPU)?;
        Self::wait_for_socket(socket, &mut server)?;
        Ok(server)
    }

    fn start_minimal(&mut self, pool: (u16, u16)) -> Result<(Server, PathBuf)> {
        let socket = self.socket_path();
        let child = Command::new(std::env::current_exe()?)
            .args([
                "minimal-server",
                "--lo",
                &pool.0.to_string(),
                "--hi",
                &pool.1.to_string(),
                "--socket",
            ])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("start the minimal server")?;
        let mut server = Server {
            child,
            name: "minimal server",
        };
        pin(server.pid(), SERVER_CPU)?;
        Self::wait_for_socket(&socket, &mut server)?;
        Ok((server, socket))
    }

    fn spawn_worker(
        &self,
        kind: &str,
        target: &str,
        count: usize,
        start: &OwnedFd,
    ) -> Result<Child> {
        Command::new(std::env::current_exe()?)
            .args(["worker", "--kind", kind, "--target", target])
            .args([
                "--seconds",
                &self.args.seconds.to_string(),
                "--count",
                &count.to_string(),
            ])
            .stdin(Stdio::from(start.try_clone()?))
            .stdout(Stdio::piped())
            .spawn()
            .context("start a worker")
    }

    /// Starts `clients` workers, waits until each is connected, starts them all at once and
    /// collects their results.
    fn run_clients(
        &self,
        kind: &str,
        target: &str,
        clients: usize,
        pinned: bool,
        server_pid: u32,
    ) -> Result<RunStats> {
        let (start_read, start_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut children = Vec::new();
        for _ in 0..clients {
            let child = self.spawn_worker(kind, target, 0, &start_read)?;
            if pinned {
                pin(child.id(), SERVER_CPU)?;
            }
            children.push(child);
        }
        drop(start_read);
        let (tx, rx) = mpsc::channel();
        for child in &mut children {
            let stdout = child.stdout.take().expect("piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let collect = |prefix: &str, what: &str| -> Result<Vec<String>> {
            let deadline = Instant::now()
                + Duration::from_secs(30)
                + Duration::from_secs_f64(self.args.seconds);
            let mut lines = Vec::new();
            while lines.len() < clients {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = rx
                    .recv_timeout(left)
                    .with_context(|| format!("workers did not report {what}"))?;
                if line.starts_with(prefix) {
                    lines.push(line);
                }
            }
            Ok(lines)
        };
        collect("ready", "ready")?;
        let cpu_before = cpu_ns(server_pid)?;
        drop(start_write);
        let lines = collect("{", "results")?;
        let cpu_after = cpu_ns(server_pid)?;
        for mut child in children {
            let status = child.wait()?;
            ensure!(status.success(), "a {kind} worker failed: {status}");
        }
        let results: Vec<WorkerResult> = lines
            .iter()
            .map(|l| serde_json::from_str(l))
            .collect::<Result<_, _>>()?;
        let ops: u64 = results.iter().map(|r| r.ops).sum();
        ensure!(ops > 0, "the {kind} workers did nothing");
        let elapsed = results.iter().map(|r| r.elapsed_ns).max().unwrap_or(1) as f64 / 1e9;
        let mut latencies: Vec<u32> = results.into_iter().flat_map(|r| r.latencies_ns).collect();
        latencies.sort_unstable();
        Ok(RunStats {
            ops_per_sec: ops as f64 / elapsed,
            p50_us: percentile(&latencies, 0.50),
            p99_us: percentile(&latencies, 0.99),
            server_cpu_us: (cpu_after - cpu_before) as f64 / ops as f64 / 1000.0,
        })
    }

    fn repeated(&self, mut run: impl FnMut() -> Result<RunStats>) -> Result<RunStats> {
        let runs: Vec<RunStats> = (0..self.args.reps).map(|_| run()).collect::<Result<_>>()?;
        Ok(median_stats(&runs))
    }

    /// Starts a worker that holds `count` leases; it gives them back when dropped.
    fn hold(&self, socket: &Path, count: usize) -> Result<Option<(Child, OwnedFd)>> {
        if count == 0 {
            return Ok(None);
        }
        let (stop_read, stop_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut child =
            self.spawn_worker("hold", &socket.display().to_string(), count, &stop_read)?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        ensure!(
            line.trim() == "ready",
            "the holder of {count} leases failed"
        );
        Ok(Some((child, stop_write)))
    }
}

fn release_holders(holders: Vec<Option<(Child, OwnedFd)>>) -> Result<()> {
    for (mut child, stop) in holders.into_iter().flatten() {
        drop(stop);
        child.wait()?;
    }
    Ok(())
}

/// Baseline (a): socket + bind + listen + close in this process, in ns per call.
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

struct Portserver {
    python: PathBuf,
    script: PathBuf,
}

fn install_portserver(dir: &Path) -> Result<Portserver> {
    let venv = dir.join("venv");
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?;
    ensure!(status.success(), "python3 -m venv failed");
    let status = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "portpicker",
        ])
        .status()?;
    ensure!(status.success(), "pip install portpicker failed");
    let script = venv.join("bin/portserver.py");
    ensure!(script.exists(), "portpicker did not install portserver.py");
    Ok(Portserver {
        python: venv.join("bin/python"),
        script,
    })
}

impl Portserver {
    fn start(&self, name: &str) -> Result<Server> {
        let child = Command::new(&self.python)
            .arg(&self.script)
            .arg("--portserver_static_pool=3000-32767")
            .arg(format!("--portserver_address=@{name}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Server {
            child,
            name: "portserver",
        };
        pin(server.pid(), SERVER_CPU)?;
        let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
        let up = wait_until(Duration::from_secs(30), || {
            UnixStream::connect_addr(&addr).is_ok()
        });
        ensure!(
            up && matches!(server.child.try_wait(), Ok(None)),
            "portserver did not start"
        );
        Ok(server)
    }
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    command: String,
    bare_bind_ns: f64,
    clients: Vec<ClientRow>,
    fill: Vec<(f64, RunStats)>,
    scale: ScaleRow,
}

#[derive(Debug, Serialize)]
struct ClientRow {
    label: String,
    baseline: RunStats,
    broker: RunStats,
    portserver: Option<RunStats>,
}

#[derive(Debug, Serialize)]
struct ScaleRow {
    /// From the restart of a SIGKILLed daemon until it lists every lease again.
    recovery_ms: f64,
    leases: usize,
    rss_bytes_per_lease: f64,
    list_ms: f64,
    list_rows: usize,
}

fn machine() -> String {
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

fn run_bench(args: Args) -> Result<()> {
    raise_fd_limit();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_owned();
    // Run by `cargo run`: build the daemon and portctl of the same profile first, so that one
    // command measures the current code.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "-p",
            "portbrokerd",
            "-p",
            "portbroker",
            "--bins",
        ]);
        if bin_dir.ends_with("release") {
            build.arg("--release");
        }
        ensure!(
            build.status()?.success(),
            "building portbrokerd and portctl failed"
        );
    }
    for bin in ["portbrokerd", "portctl"] {
        ensure!(
            bin_dir.join(bin).exists(),
            "{} is missing: build it first (cargo build --release -p portbrokerd -p portbroker --bins)",
            bin_dir.join(bin).display()
        );
    }
    let mut bench = Bench {
        bin_dir,
        dir: tempfile::tempdir()?,
        args,
        servers_started: 0,
    };
    let smoke = bench.args.smoke;
    let out_dir = bench
        .args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    let say = |text: &str| eprintln!("[bench] {text}");
    let machine = machine();
    say(&machine);

    say("baseline (a): socket+bind+listen+close in process");
    let bare_bind_ns = median(
        (0..bench.args.reps)
            .map(|_| bare_bind_ns(bench.args.seconds))
            .collect::<Result<_>>()?,
    );

    let portserver = if bench.args.skip_portserver {
        None
    } else {
        say("installing portpicker into a throwaway venv");
        Some(install_portserver(bench.dir.path())?)
    };

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
    let (minimal, minimal_socket) = bench.start_minimal(pool)?;
    let (daemon, daemon_socket) = bench.start_portbrokerd(pool)?;
    for (label, n, pinned) in &scenarios {
        say(&format!("lease round trip, {label} client(s)"));
        let target = minimal_socket.display().to_string();
        let baseline =
            bench.repeated(|| bench.run_clients("lease", &target, *n, *pinned, minimal.pid()))?;
        let target = daemon_socket.display().to_string();
        let broker =
            bench.repeated(|| bench.run_clients("lease", &target, *n, *pinned, daemon.pid()))?;
        let portserver =
            match (&portserver, pinned) {
                (Some(peer), false) => {
                    let name = format!("portbroker-bench-{}-{n}", std::process::id());
                    let server = peer.start(&name)?;
                    Some(bench.repeated(|| {
                        bench.run_clients("portserver", &name, *n, false, server.pid())
                    })?)
                }
                _ => None,
            };
        clients.push(ClientRow {
            label: label.clone(),
            baseline,
            broker,
            portserver,
        });
    }
    drop((minimal, daemon));

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
        let stats =
            bench.repeated(|| bench.run_clients("lease", &target, 1, false, daemon.pid()))?;
        release_holders(vec![holder])?;
        fill.push((level, stats));
    }

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
    let mut list_ms = Vec::new();
    let mut list_rows = 0;
    for _ in 0..bench.args.reps {
        let started = Instant::now();
        let out = Command::new(bench.exe("portctl"))
            .args(["list", "--json"])
            .env("PORTBROKER_SOCKET", &socket)
            .output()?;
        list_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            out.status.success(),
            "portctl list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        list_rows = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)?.len();
    }
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
    let scale = ScaleRow {
        recovery_ms,
        leases: held,
        rss_bytes_per_lease: (rss_after.saturating_sub(rss_before) * 1024) as f64 / held as f64,
        list_ms: median(list_ms),
        list_rows,
    };

    let report = Report {
        machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        bare_bind_ns,
        clients,
        fill,
        scale,
    };
    let text = render(&report, smoke);
    println!("{text}");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("report.md"), &text)?;
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
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

fn render(r: &Report, smoke: bool) -> String {
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

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.role {
        Some(Role::Worker {
            kind,
            target,
            seconds,
            max_ops,
            count,
        }) => {
            raise_fd_limit();
            let duration = Duration::from_secs_f64(*seconds);
            match kind.as_str() {
                "lease" => worker::lease_loop(Path::new(target), duration, *max_ops),
                "hold" => worker::hold(Path::new(target), *count),
                "portserver" => worker::portserver_loop(target, duration, *max_ops),
                other => Err(anyhow::anyhow!("unknown worker kind {other}")),
            }
        }
        Some(Role::MinimalServer { socket, lo, hi }) => minimal::serve(socket, (*lo, *hi)),
        None => run_bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("portbroker-bench: {err:#}");
            let _ = std::io::stderr().flush();
            ExitCode::FAILURE
        }
    }
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
