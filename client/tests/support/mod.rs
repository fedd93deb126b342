//! Shared by the integration tests: a real `portbrokerd` in a temp dir, polling helpers, and
//! clients run as other users. Beside it: [`raw`] speaks the protocol by hand, [`good_client`]
//! checks that an abused daemon still serves, [`fuzz_gen`] makes inputs and [`oracle`] says what
//! the daemon must answer to them.
#![allow(dead_code)] // each test binary uses its own subset

pub mod fuzz_gen;
pub mod good_client;
pub mod oracle;
pub mod raw;

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use portbroker::{Broker, SocketSpec};

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

/// Leases `spec`, which this test binary may have released a moment ago. A released socket
/// lives on briefly in any child forked meanwhile (other tests spawn processes) until it execs,
/// and the kernel then rightly says "in use outside the broker": ask again until that copy is
/// gone (within 2 s).
pub fn lease_again(broker: &Broker, spec: &str) -> Result<portbroker::Lease, portbroker::Error> {
    let mut outcome = None;
    wait_until(Duration::from_secs(2), || {
        let result = broker.lease_str(&[spec]);
        let outside = matches!(&result, Err(e) if e.kind() == portbroker::ErrorKind::InUseOutside);
        outcome = Some(result);
        !outside
    });
    outcome.expect("wait_until tries at least once")
}

/// TCP on 127.0.0.1, any port of the pool: the lease most tests need.
pub fn loopback_any() -> SocketSpec {
    SocketSpec::tcp(Some(Ipv4Addr::LOCALHOST.into()), 0)
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
        if port_is_free(port) {
            return port;
        }
    }
}

/// Whether `port` is free for TCP and UDP on every address, as the daemon's reservations need
/// it: each probe binds without SO_REUSEADDR, so that a socket in TIME_WAIT counts as a holder.
/// (std's `TcpListener::bind` sets SO_REUSEADDR, binds beside a TIME_WAIT and called such a
/// port free; a reservation of it then failed with EADDRINUSE for up to a minute.)
pub fn port_is_free(port: u16) -> bool {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::net::{Ipv6Addr, SocketAddr};
    let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    [SockType::Stream, SockType::Datagram]
        .into_iter()
        .all(|kind| {
            [any6, any4].into_iter().all(|addr| {
                let family = match addr {
                    SocketAddr::V4(_) => AddressFamily::Inet,
                    SocketAddr::V6(_) => AddressFamily::Inet6,
                };
                let fd = socket(family, kind, SockFlag::SOCK_CLOEXEC, None).expect("socket");
                bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).is_ok()
            })
        })
}

/// A policy file in `dir` that serves the portserver at a path of its own in `dir`, so that
/// the test's daemon is the only one there (the default, `@portserver`, is one per network
/// namespace); the policy file's path and the portserver's.
pub fn portserver_policy(dir: &Path) -> (PathBuf, PathBuf) {
    let address = dir.join("portserver.sock");
    let config = dir.join("portbroker.toml");
    std::fs::write(
        &config,
        format!("[portserver]\naddress = \"{}\"\n", address.display()),
    )
    .unwrap();
    (config, address)
}

/// The cargo profile directory this test binary was built in (`target/debug`).
pub fn target_dir() -> PathBuf {
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

/// The bind shim of this workspace (`libportbroker_preload.so`, beside portctl, where
/// `portctl wrap` finds it), built for this profile once per test binary. Always built, not
/// only when missing: `cargo test -p portbroker` does not build another package's cdylib, and
/// a shim left from an older build would test old code (cargo does nothing when it is fresh).
pub fn preload_shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let dir = target_dir();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "portbroker-preload"]);
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("run cargo build -p portbroker-preload");
        assert!(status.success(), "cargo build -p portbroker-preload failed");
        let shim = dir.join("libportbroker_preload.so");
        assert!(shim.is_file(), "cargo built no {}", shim.display());
        shim
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
        Self::launch(tempfile::tempdir().unwrap(), extra_args)
    }

    /// A daemon that logs at its default level (info), as it ships, instead of the tests' `-v`.
    pub fn start_at_default_level(extra_args: &[&str]) -> Daemon {
        Self::launch_wrapped(tempfile::tempdir().unwrap(), &[], extra_args, false)
    }

    /// A daemon that other users can reach: its directory (and so its socket's) is mode 0755,
    /// and, given a policy, it runs with `--config <dir>/portbroker.toml` holding that text.
    /// Without a policy it gets no `--config`; pass `--no-config` for the built-in defaults.
    pub fn start_for_all_users(policy: Option<&str>, extra_args: &[&str]) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut args = extra_args.to_vec();
        let config = dir.path().join(POLICY_FILE);
        let config_arg = config.display().to_string();
        if let Some(text) = policy {
            std::fs::write(&config, text).unwrap();
            args.extend(["--config", config_arg.as_str()]);
        }
        Self::launch(dir, &args)
    }

    /// A daemon in a network namespace of its own (`unshare --net`, which execs it: the child's
    /// pid is the daemon's), so that its abstract addresses and ports are the test's alone. Its
    /// socket file is reachable as usual; enter its namespace with [`Daemon::in_netns`].
    pub fn start_in_own_netns(extra_args: &[&str]) -> Daemon {
        Self::launch_wrapped(
            tempfile::tempdir().unwrap(),
            &["unshare", "--net", "--"],
            extra_args,
            true,
        )
    }

    /// `program` run in this daemon's network namespace (`nsenter --net=/proc/PID/ns/net`).
    pub fn in_netns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/proc/{}/ns/net", self.pid()))
            .arg("--")
            .arg(program);
        cmd
    }

    fn launch(dir: tempfile::TempDir, extra_args: &[&str]) -> Daemon {
        Self::launch_wrapped(dir, &[], extra_args, true)
    }

    /// `verbose`: with `-v` (debug), as most tests want the whole story in a failure.
    fn launch_wrapped(
        dir: tempfile::TempDir,
        wrapper: &[&str],
        extra_args: &[&str],
        verbose: bool,
    ) -> Daemon {
        // Each daemon of a test binary gets its own slice of the pool space, so parallel tests
        // do not skip over each other's ports.
        static NEXT_SLICE: AtomicUsize = AtomicUsize::new(0);
        let slice = NEXT_SLICE.fetch_add(1, Ordering::Relaxed);
        assert!(
            slice < 20,
            "more than 20 daemons in one test binary: their pools would overlap"
        );
        let lo = 61000 + 200 * slice as u16;
        let pool = (lo, lo + 199);
        let log = std::fs::File::create(dir.path().join("portbrokerd.log")).unwrap();
        let mut args: Vec<String> = if verbose {
            vec!["-v".into()]
        } else {
            Vec::new()
        };
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
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(portbrokerd_bin());
                command
            }
            None => Command::new(portbrokerd_bin()),
        };
        let child = command
            .args(&args)
            .env_remove("RUST_LOG")
            // Only what a test passes decides the policy, never the environment of the run.
            .env_remove("PORTBROKER_CONFIG")
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
        wait_listening(&mut daemon.child, &daemon.socket, || {
            daemon.dir.path().join("portbrokerd.log")
        });
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

    /// The policy file of a daemon started by [`Daemon::start_for_all_users`] with a policy;
    /// rewrite it, then reload.
    pub fn policy_file(&self) -> PathBuf {
        self.dir.path().join(POLICY_FILE)
    }

    /// `portctl` run as `uid` (and gid `uid`, no supplementary groups) through setpriv, talking
    /// to this daemon, with nothing of this process's environment but a plain PATH.
    pub fn portctl_as(&self, uid: u32) -> Command {
        self.portctl_as_in_groups(uid, &[])
    }

    /// [`Daemon::portctl_as`] with these supplementary groups.
    pub fn portctl_as_in_groups(&self, uid: u32, groups: &[u32]) -> Command {
        let mut cmd = as_user(uid, groups, portctl_for_others());
        cmd.env("PORTBROKER_SOCKET", &self.socket);
        cmd
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("portbrokerd.log")).unwrap_or_default()
    }

    /// Fails unless a line containing `text` shows up in the log within `limit` (the daemon
    /// writes its log up to 50 ms late); `what` says what that line would have shown.
    pub fn assert_logged(&self, text: &str, limit: Duration, what: &str) {
        let logged = wait_until(limit, || self.log().contains(text));
        assert!(
            logged,
            "{what}: no {text:?} in the daemon log within {limit:?}:\n{}",
            self.log()
        );
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

    /// Kills the daemon with SIGKILL (no clean shutdown) and waits for it; its directory, and
    /// so its journal, stay.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// The name of the policy file in a daemon's directory.
const POLICY_FILE: &str = "portbroker.toml";

/// The unprivileged user that policies of the tests name (nobody), and one they do not.
pub const NOBODY: u32 = 65534;
pub const STRANGER: u32 = 65533;

/// Waits (up to 10 s) until a daemon `child` answers on `socket`; fails the test with the log
/// at `log` if it exits or does not listen in time.
pub fn wait_listening(child: &mut Child, socket: &Path, log: impl Fn() -> PathBuf) {
    let read_log = || std::fs::read_to_string(log()).unwrap_or_default();
    let ready = wait_until(Duration::from_secs(10), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("portbrokerd exited early ({status}):\n{}", read_log());
        }
        UnixStream::connect(socket).is_ok()
    });
    assert!(
        ready,
        "portbrokerd did not listen within 10 s:\n{}",
        read_log()
    );
}

/// util-linux setpriv, which runs a program as another user.
pub fn setpriv_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let found = ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        found.unwrap_or_else(|| {
            panic!(
                "setpriv (util-linux) is needed to run clients as other users and was not found \
                 in /usr/bin, /bin or /usr/sbin; install util-linux"
            )
        })
    })
}

/// `program` run as `uid` and gid `uid` with exactly `groups` as supplementary groups, with an
/// environment of a plain PATH only. Needs root; checks once that the workspace's binaries can
/// be reached and run by an unprivileged user.
pub fn as_user(uid: u32, groups: &[u32], program: &Path) -> Command {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "running clients as other users needs root (CI runs the tests as root)"
        );
        let out = setpriv_command(NOBODY, &[], portctl_for_others())
            .arg("--version")
            .output()
            .expect("run setpriv");
        assert!(
            out.status.success(),
            "uid {NOBODY} cannot run {}: {out:?}",
            portctl_for_others().display()
        );
    });
    setpriv_command(uid, groups, program)
}

/// portctl where any user can run it: the checkout may lie under a directory others cannot
/// enter (/root, say), so it is linked (or copied) into a world-readable directory of its own.
pub fn portctl_for_others() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("portbroker-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("portctl");
        let _ = std::fs::remove_file(&bin);
        if std::fs::hard_link(portctl_bin(), &bin).is_err() {
            std::fs::copy(portctl_bin(), &bin).unwrap();
        }
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    })
}

fn setpriv_command(uid: u32, groups: &[u32], program: &Path) -> Command {
    let mut cmd = Command::new(setpriv_bin());
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg("--")
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    cmd
}

/// Whether `lease` belongs to the `portctl run` with pid `portctl`: held by portctl itself until
/// it ties the lease to the program it started, and by that program (its child) after.
pub fn held_by_portctl(lease: &portbroker::LeaseInfo, portctl: u32) -> bool {
    let pid = lease.holder.pid;
    let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // pid (comm) state ppid ...: comm may hold spaces, so count from its closing paren.
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    pid as u32 == portctl || parent == Some(portctl)
}

/// A program for `portctl run` that says "ready" and holds its lease until its stdin closes.
pub const READY_THEN_WAIT: &str = "import sys; print('ready', flush=True); sys.stdin.read()";

/// The arguments of `portctl run -q SPEC -- python3 -c CODE`.
pub fn run_python<'a>(spec: &'a str, code: &'a str) -> [&'a str; 7] {
    ["run", "-q", spec, "--", "python3", "-c", code]
}

/// Starts `cmd` with piped stdin and stdout and returns it with the first line it prints.
pub fn spawn_and_read_line(cmd: &mut Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}

/// Waits (up to 10 s) for a child to exit and returns its output; kills it if it does not.
pub fn finish(mut child: std::process::Child) -> std::process::Output {
    let done = wait_until(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !done {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    assert!(done, "the child did not exit within 10 s: {output:?}");
    output
}

/// Kills and reaps children that a test no longer needs, however far they got.
pub fn kill_all<'a>(children: impl IntoIterator<Item = &'a mut Child>) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Raises this process's open-file limit to its hard limit (tests that open many connections).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    hard
}

/// Runs `portbrokerd` with `args` (and `--no-config`) where it is expected to refuse to start:
/// returns its output once it exits, and fails the test if it is still running after 10 s (it
/// started and serves instead of refusing).
pub fn portbrokerd_refusing(args: &[&str]) -> std::process::Output {
    let child = Command::new(portbrokerd_bin())
        .args(args)
        .arg("--no-config")
        .env_remove("RUST_LOG")
        .env_remove("PORTBROKER_CONFIG")
        .env_remove("PORTBROKER_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portbrokerd");
    let out = finish(child);
    assert!(
        !out.status.success(),
        "portbrokerd {args:?} was expected to refuse to start and exited with success:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A tmpfs of `size` (as `mount -o size=` takes it, "12k") mounted, mode 0755, on a fresh
/// temporary directory and unmounted on drop: a small disk to fill. `None` when this process is
/// not root or the mount fails; the caller then prints a SKIPPED line and returns.
pub struct TinyTmpfs {
    dir: tempfile::TempDir,
}

impl TinyTmpfs {
    pub fn mount(size: &str) -> Result<TinyTmpfs, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a mount point: {e}"))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(TinyTmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        // Lazily: a daemon killed a moment ago may still be closing its files.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
