//! Running the benchmark's processes: servers pinned to one CPU, client workers started all at
//! once, holders of leases, and what `/proc` says about them.

use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::statistics::{median_stats, percentile, RunStats};
use crate::worker::WorkerResult;

/// The CPU the servers run on; "pinned" clients share it.
pub const SERVER_CPU: usize = 0;

/// A line of progress on stderr; stdout carries the tables.
pub fn say(text: &str) {
    eprintln!("[bench] {text}");
}

fn pin(pid: u32, cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(pid as i32), &set).context("sched_setaffinity")
}

/// Raises this process's open-file limit to its hard limit: the scale scenario holds thousands
/// of leases, each an fd, and its children inherit the limit.
pub fn raise_fd_limit() {
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

pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
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
pub struct Server {
    child: Child,
    name: &'static str,
}

impl Server {
    /// Takes charge of `child`, pinned to [`SERVER_CPU`].
    pub fn pinned(child: Child, name: &'static str) -> Result<Server> {
        let server = Server { child, name };
        pin(server.pid(), SERVER_CPU)?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A worker holding leases until its stop pipe closes; `None` for no leases at all.
pub type Holder = Option<(Child, OwnedFd)>;

/// The binaries under test, a temporary directory for their sockets and logs, and how long and
/// how often each measurement runs.
pub struct Bench {
    bin_dir: PathBuf,
    dir: tempfile::TempDir,
    pub seconds: f64,
    pub reps: usize,
    servers_started: usize,
}

impl Bench {
    /// Finds portbrokerd and portctl beside this program; under `cargo run` builds them first.
    pub fn new(seconds: f64, reps: usize) -> Result<Bench> {
        let bin_dir = std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_owned();
        // Run by `cargo run`: build the daemon and portctl of the same profile first, so that
        // one command measures the current code.
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
        Ok(Bench {
            bin_dir,
            dir: tempfile::tempdir()?,
            seconds,
            reps,
            servers_started: 0,
        })
    }

    pub fn exe(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// The temporary directory of this run, removed at its end.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn socket_path(&mut self) -> PathBuf {
        self.servers_started += 1;
        self.dir
            .path()
            .join(format!("server-{}.sock", self.servers_started))
    }

    fn wait_for_socket(path: &Path, server: &mut Server) -> Result<()> {
        let up = wait_until(Duration::from_secs(20), || {
            UnixStream::connect(path).is_ok() || !server.is_running()
        });
        ensure!(up && server.is_running(), "{} did not start", server.name);
        Ok(())
    }

    pub fn start_portbrokerd(&mut self, pool: (u16, u16)) -> Result<(Server, PathBuf)> {
        let socket = self.socket_path();
        let server = self.spawn_portbrokerd(&socket, pool)?;
        Ok((server, socket))
    }

    /// A portbrokerd on `socket` (whose directory holds its journal), once it answers.
    pub fn spawn_portbrokerd(&mut self, socket: &Path, pool: (u16, u16)) -> Result<Server> {
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
        let mut server = Server::pinned(child, "portbrokerd")?;
        Self::wait_for_socket(socket, &mut server)?;
        Ok(server)
    }

    /// Baseline (b), [`crate::minimal`], in a process of its own.
    pub fn start_minimal(&mut self, pool: (u16, u16)) -> Result<(Server, PathBuf)> {
        let range = [
            "--lo".to_owned(),
            pool.0.to_string(),
            "--hi".to_owned(),
            pool.1.to_string(),
        ];
        self.start_own_server("minimal-server", &range, "minimal server")
    }

    /// Baseline (c), [`crate::floor`], in a process of its own.
    pub fn start_floor(&mut self) -> Result<(Server, PathBuf)> {
        self.start_own_server("floor-server", &[], "floor server")
    }

    /// This program's hidden server `subcommand`, pinned, on a socket of its own, once it answers.
    fn start_own_server(
        &mut self,
        subcommand: &str,
        args: &[String],
        name: &'static str,
    ) -> Result<(Server, PathBuf)> {
        let socket = self.socket_path();
        let child = Command::new(std::env::current_exe()?)
            .arg(subcommand)
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start the {name}"))?;
        let mut server = Server::pinned(child, name)?;
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
                &self.seconds.to_string(),
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
    pub fn run_clients(
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
            let deadline =
                Instant::now() + Duration::from_secs(30) + Duration::from_secs_f64(self.seconds);
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

    /// `run` as many times as the run asks for; the median of each figure.
    pub fn repeated(&self, mut run: impl FnMut() -> Result<RunStats>) -> Result<RunStats> {
        let runs: Vec<RunStats> = (0..self.reps).map(|_| run()).collect::<Result<_>>()?;
        Ok(median_stats(&runs))
    }

    /// Starts a worker that holds `count` leases; it gives them back when dropped.
    pub fn hold(&self, socket: &Path, count: usize) -> Result<Holder> {
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

/// Ends holders started by [`Bench::hold`] and waits until they are gone.
pub fn release_holders(holders: Vec<Holder>) -> Result<()> {
    for (mut child, stop) in holders.into_iter().flatten() {
        drop(stop);
        child.wait()?;
    }
    Ok(())
}
