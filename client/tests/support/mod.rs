//! Shared by the integration tests: a real `portbrokerd` in a temp dir, and polling helpers.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use portbroker::Broker;

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

/// A port for tests that ask for explicit ports: free for TCP and UDP on every address, and
/// below the kernel's ephemeral range, where no outgoing connection (of a parallel test, say)
/// can take it as its source port. Never the same number twice in one test binary.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let ephemeral_lo: usize = range.split_whitespace().next().unwrap().parse().unwrap();
    let (lo, hi) = (
        ephemeral_lo.saturating_sub(12_000).max(2_000),
        ephemeral_lo.saturating_sub(1),
    );
    // Start each test binary somewhere else, so that leftovers of another run rarely collide.
    let start = std::process::id() as usize * 97;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < hi - lo, "no free test port left in {lo}-{hi}");
        let port = (lo + (start + n) % (hi - lo)) as u16;
        let free = TcpListener::bind(("::", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
            && std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok();
        if free {
            return port;
        }
    }
}

fn target_dir() -> PathBuf {
    // target/debug/deps/<test binary> -> target/debug
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/*/deps")
        .to_owned()
}

/// The daemon binary of this workspace, built on demand when only this package was built.
pub fn portbrokerd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = target_dir().join("portbrokerd");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "portbrokerd", "--bin", "portbrokerd"])
                .status()
                .expect("run cargo build -p portbrokerd");
            assert!(status.success(), "cargo build -p portbrokerd failed");
        }
        bin
    })
}

pub fn portctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_portctl")
}

/// A path under target/ for helper programs built as examples (`cargo test` builds examples).
pub fn example_bin(name: &str) -> PathBuf {
    target_dir().join("examples").join(name)
}

/// A running portbrokerd with its own socket, pool slice and log file; stopped on drop.
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub pool: (u16, u16),
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> Daemon {
        // Each daemon of a test binary gets its own slice of the pool space, so parallel tests
        // do not skip over each other's ports.
        static NEXT_SLICE: AtomicUsize = AtomicUsize::new(0);
        let slice = NEXT_SLICE.fetch_add(1, Ordering::Relaxed) % 20;
        let lo = 61000 + 200 * slice as u16;
        let pool = (lo, lo + 199);
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("portbrokerd.log")).unwrap();
        let mut args: Vec<String> = vec!["-v".into()];
        let socket = match extra_args.iter().position(|&a| a == "--socket") {
            Some(i) => PathBuf::from(extra_args[i + 1]),
            None => {
                let socket = dir.path().join("portbroker.sock");
                args.extend(["--socket".into(), socket.display().to_string()]);
                socket
            }
        };
        if !extra_args.contains(&"--pool") {
            args.extend(["--pool".into(), format!("{}-{}", pool.0, pool.1)]);
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let child = Command::new(portbrokerd_bin())
            .args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn portbrokerd");
        let mut daemon = Daemon {
            child,
            dir,
            socket,
            pool,
        };
        let ready = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("portbrokerd exited early ({status}):\n{}", daemon.log());
            }
            UnixStream::connect(&daemon.socket).is_ok()
        });
        assert!(
            ready,
            "portbrokerd did not listen within 10 s:\n{}",
            daemon.log()
        );
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn broker(&self) -> Broker {
        Broker::connect_to(&self.socket)
            .unwrap_or_else(|e| panic!("connect: {e:#}\n{}", self.log()))
    }

    /// `portctl` talking to this daemon through PORTBROKER_SOCKET.
    pub fn portctl(&self) -> Command {
        let mut cmd = Command::new(portctl_bin());
        cmd.env("PORTBROKER_SOCKET", &self.socket);
        cmd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("portbrokerd.log")).unwrap_or_default()
    }

    /// Resident memory of the daemon, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait (up to 10 s) for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!(
                "portbrokerd did not stop within 10 s of SIGTERM:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Raises this process's open-file limit to its hard limit (tests that open many connections).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    hard
}
