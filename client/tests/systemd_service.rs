//! The installed service under a real systemd: the Debian package (built by the README's one
//! command) is installed with `dpkg -i` inside a container that boots the host's own OS with
//! systemd as PID 1 (`systemd-nspawn`, following `shared/design/systemd-testing.md` sections 4
//! and 5: a cgroup of its own, `--register=no --keep-unit`, `--volatile=yes`, throwaway overlays
//! over /usr, /var and /etc), and driven from the host with `nsenter`.
//!
//! Needs root (skipped with a `SKIPPED` line otherwise), `systemd-nspawn` (package
//! systemd-container) and `cargo deb` (`cargo install cargo-deb --locked`); `.ci/run` installs
//! both. Every container is stopped when its test ends, failed or not (`Container`'s `Drop`),
//! and runs under `timeout` as well, so not even a killed test leaves one behind.
//!
//! `units_pass_systemd_analyze_verify` needs no root and no container.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::wait_until;

/// A user in group portbroker, created in each container; no environment is set for it.
const USER: &str = "pbuser";
/// A user outside group portbroker.
const OUTSIDER: &str = "pboutsider";
/// The port the policy reserves in the restart tests.
const RESERVED: u16 = 9000;
/// The policy the containers install as /etc/portbroker/portbroker.toml.
const POLICY: &str = "[reserve]\ntcp = [\"9000\"]\n\n[[rule]]\nwho = \"everyone\"\nports = [\"pool\", \"1024-65535\"]\n";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    println!("SKIPPED {test}: needs root (systemd-nspawn, dpkg -i in a container)");
    true
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("client/ lies in the repository")
        .to_path_buf()
}

fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The package, built once per test run with the README's command (debian/build-deb), in a
/// directory of its own (bound read-only into the containers at /mnt/pkg). A no-op rebuild when
/// `.ci/run` built it.
fn package_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let has_deb = Command::new(&cargo)
            .args(["deb", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has_deb,
            "cargo deb is not installed: run `cargo install cargo-deb --locked` (.ci/run does)"
        );
        let dir = root.join("target/systemd-test-pkg");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        run_checked(
            Command::new(root.join("debian/build-deb"))
                .current_dir(&root)
                .env("CARGO", &cargo)
                .args(["--fast", "-o", dir.join("portbroker.deb").to_str().unwrap()]),
            "building the package (debian/build-deb)",
        );
        dir
    })
}

/// The pids whose parent is `parent`, with their command names.
fn children(parent: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 2..].split_whitespace().nth(1);
        if ppid.and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            found.push((pid, comm));
        }
    }
    found
}

/// A booted container with the package installed, stopped on drop.
struct Container {
    name: String,
    /// `timeout ... systemd-nspawn ...`: the guard that stops the container if we cannot.
    guard: Child,
    nspawn: Option<u32>,
    leader: u32,
    log: PathBuf,
}

impl Container {
    /// Boots a container named `pb-NAME-PID`, installs the package and the test policy, and
    /// creates the users.
    fn boot(name: &str) -> Container {
        assert!(
            Path::new("/usr/bin/systemd-nspawn").exists(),
            "systemd-nspawn is missing: apt-get install -y --no-install-recommends systemd-container (.ci/run does)"
        );
        let pkg = package_dir();
        let name = format!("pb-{name}-{}", std::process::id());
        for hierarchy in ["systemd", "unified"] {
            let dir = format!("/sys/fs/cgroup/{hierarchy}/{name}");
            if Path::new(&format!("/sys/fs/cgroup/{hierarchy}")).exists() {
                fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("cannot create the cgroup {dir}: {e}"));
            }
        }
        let log = pkg.join(format!("{name}.console"));
        // nspawn's own seccomp filter, under the unit's, denies pidfd_getfd to everything in
        // the container (systemd 252 files it under @debug): let it through, as a host's
        // systemd does, or the broker's fetches of leased sockets fail with EPERM here only.
        let script = format!(
            "for h in systemd unified; do [ -d /sys/fs/cgroup/$h/{name} ] && echo $$ > /sys/fs/cgroup/$h/{name}/cgroup.procs; done; \
             exec timeout -k 10 900 systemd-nspawn --quiet --boot --directory=/ --volatile=yes \
             --register=no --keep-unit --private-network --console=read-only --machine={name} \
             --system-call-filter=pidfd_getfd \
             --overlay=/usr::/usr --overlay=/var::/var --overlay=/etc::/etc \
             --bind-ro={pkg}:/mnt/pkg systemd.firstboot=off systemd.unit=basic.target",
            pkg = pkg.display()
        );
        let guard = Command::new("/bin/sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("cannot start systemd-nspawn");
        let mut container = Container {
            name,
            nspawn: None,
            leader: 0,
            log,
            guard,
        };
        let guard_pid = container.guard.id();
        let booted = wait_until(Duration::from_secs(30), || {
            let nspawn = children(guard_pid)
                .into_iter()
                .find(|(_, comm)| comm == "systemd-nspawn");
            if let Some((pid, _)) = nspawn {
                container.nspawn = Some(pid);
                if let Some((leader, _)) = children(pid).into_iter().find(|(_, c)| c == "systemd") {
                    container.leader = leader;
                    return true;
                }
            }
            false
        });
        assert!(
            booted,
            "the container did not boot: {}",
            container.console()
        );
        let up = wait_until(Duration::from_secs(60), || {
            let out = container.run("systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout);
            matches!(state.trim(), "running" | "degraded")
        });
        assert!(
            up,
            "the container's systemd did not finish booting: {}",
            container.console()
        );
        container.ok("dpkg -i /mnt/pkg/portbroker.deb");
        container.ok(&format!(
            "mkdir -p /etc/portbroker && printf '%s' '{POLICY}' > /etc/portbroker/portbroker.toml \
             && useradd -M -G portbroker {USER} && useradd -M {OUTSIDER}"
        ));
        container
    }

    fn console(&self) -> String {
        format!(
            "{} (console log {})",
            self.name,
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Runs `script` with /bin/sh inside the container, at most 60 s.
    fn run(&self, script: &str) -> Output {
        Command::new("timeout")
            .args(["-k", "5", "60", "nsenter", "-t"])
            .arg(self.leader.to_string())
            .args(["-a", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("cannot run nsenter")
    }

    /// Runs `script` inside the container and returns its stdout; fails the test with its
    /// output and the broker's journal if it fails.
    fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "in the container, `{script}` failed ({}):\nstdout:\n{}\nstderr:\n{}\nportbrokerd's journal:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn journal(&self) -> String {
        let out = self
            .run("journalctl --no-pager -u portbrokerd.service -u portbrokerd.socket | tail -n 60");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn main_pid(&self) -> u32 {
        self.ok("systemctl show -p MainPID --value portbrokerd.service")
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// `portctl list --json` as root, or None when the broker does not answer.
    fn leases(&self) -> Option<Vec<serde_json::Value>> {
        let out = self.run("portctl list --json");
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Polls until `condition` holds of the lease list; fails with `what` and the journal.
    fn wait_leases(
        &self,
        limit: Duration,
        what: &str,
        condition: impl Fn(&[serde_json::Value]) -> bool,
    ) {
        let held = wait_until(limit, || self.leases().is_some_and(|l| condition(&l)));
        assert!(
            held,
            "{what}: not within {limit:?}; leases now: {:?}\nportbrokerd's journal:\n{}",
            self.leases(),
            self.journal()
        );
    }

    /// A lease held by a running process of USER, started with no environment: a transient
    /// service running `portctl run tcp:127.0.0.1:0 -- sleep infinity`. Returns its lease id.
    fn hold_a_lease(&self) -> u64 {
        self.ok(&format!(
            "systemd-run --quiet --unit=holder --uid={USER} /usr/bin/portctl run tcp:127.0.0.1:0 -- /bin/sleep infinity"
        ));
        let uid: u64 = self.ok(&format!("id -u {USER}")).trim().parse().unwrap();
        self.wait_leases(
            Duration::from_secs(20),
            "the holder's lease is listed",
            |l| l.iter().any(|x| x["uid"].as_u64() == Some(uid)),
        );
        let leases = self.leases().unwrap();
        leases
            .iter()
            .find(|x| x["uid"].as_u64() == Some(uid))
            .and_then(|x| x["id"].as_u64())
            .unwrap()
    }

    /// The inodes of the TCP and UDP sockets that the broker's main process holds.
    fn ip_socket_inodes(&self) -> Vec<String> {
        let pid = self.main_pid();
        let script = format!(
            "for f in /proc/{pid}/fd/*; do readlink $f; done | sed -n 's/^socket:\\[\\(.*\\)\\]$/\\1/p' | sort -u > /tmp/all; \
             awk 'NR>1 {{print $7}}' /proc/net/unix | sort -u > /tmp/unix; comm -23 /tmp/all /tmp/unix"
        );
        self.ok(&script)
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// Whether something holds RESERVED bound: a bind of it fails with EADDRINUSE.
    fn reserved_port_is_bound(&self) -> bool {
        let out = self.run(&format!(
            "python3 -c 'import socket; s=socket.socket(); s.bind((\"0.0.0.0\", {RESERVED}))'"
        ));
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("in use")
    }

    /// Activates the broker through its socket (as USER, no environment) and waits for it.
    fn activate(&self) {
        self.ok("systemctl start portbrokerd.socket");
        let answered = wait_until(Duration::from_secs(30), || {
            self.run(&format!(
                "runuser -u {USER} -- env -i PATH=/usr/bin:/bin portctl status"
            ))
            .status
            .success()
        });
        assert!(
            answered,
            "an ordinary user's `portctl status` never got an answer through portbrokerd.socket:\n{}",
            self.journal()
        );
        self.ok("systemctl is-active portbrokerd.service");
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        // SIGTERM to nspawn stops the container cleanly (about 1 s); SIGKILL if it hangs.
        let target = self.nspawn.unwrap_or(self.guard.id());
        let _ = kill(Pid::from_raw(target as i32), Signal::SIGTERM);
        let stopped = wait_until(Duration::from_secs(20), || {
            matches!(self.guard.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = kill(Pid::from_raw(target as i32), Signal::SIGKILL);
            let _ = self.guard.kill();
            let _ = self.guard.wait();
        }
        for hierarchy in ["systemd", "unified"] {
            remove_cgroup(&PathBuf::from(format!(
                "/sys/fs/cgroup/{hierarchy}/{}",
                self.name
            )));
        }
    }
}

/// Removes a cgroup directory depth-first (its files are not removable, only its directories).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// The exposure number of `systemd-analyze security`'s last line.
fn exposure(output: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no \"Overall exposure level\" line in:\n{output}"));
    let after = line.split(':').next_back().unwrap();
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"))
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        if is_root() {
            panic!("systemd-analyze is missing: apt-get install -y systemd");
        }
        println!("SKIPPED units_pass_systemd_analyze_verify: no systemd-analyze");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = repo_root().join("systemd");
    let daemon = support::portbrokerd_bin();
    let service = fs::read_to_string(units.join("portbrokerd.service"))
        .unwrap()
        .replace(
            "ExecStart=/usr/bin/portbrokerd",
            &format!("ExecStart={}", daemon.display()),
        );
    fs::write(dir.path().join("portbrokerd.service"), service).unwrap();
    fs::copy(
        units.join("portbrokerd.socket"),
        dir.path().join("portbrokerd.socket"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("portbrokerd.socket"))
        .arg(dir.path().join("portbrokerd.service"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.trim().is_empty() && out.status.success(),
        "systemd-analyze verify complained about the units ({}):\n{said}",
        out.status
    );
}

#[test]
fn exposure_is_read_from_the_last_line() {
    let text =
        "✗ PrivateNetwork= ...\n→ Overall exposure level for portbrokerd.service: 2.3 OK 🙂\n";
    assert_eq!(exposure(text), 2.3);
}

/// Installed and enabled: socket activation for an ordinary user, the group on the socket,
/// the hardening score, reload and stop.
#[test]
fn the_package_serves_users_through_socket_activation() {
    if skip_unless_root("the_package_serves_users_through_socket_activation") {
        return;
    }
    let c = Container::boot("serve");
    assert_eq!(
        c.ok("getent group portbroker | cut -d: -f1").trim(),
        "portbroker"
    );
    let score = exposure(&c.ok("systemd-analyze security --no-pager portbrokerd.service"));
    assert!(
        score <= 4.9,
        "systemd-analyze security rates portbrokerd.service {score}, above 4.9"
    );

    c.ok("systemctl enable --now portbrokerd.socket");
    assert_eq!(
        c.ok("stat -c '%a %G' /run/portbroker/portbroker.sock")
            .trim(),
        "660 portbroker"
    );
    let idle = c.run("systemctl is-active portbrokerd.service");
    assert!(
        !idle.status.success(),
        "the service ran before anyone connected"
    );

    // The first connection, from a group member with no environment, starts the service.
    c.activate();
    let lease = c.hold_a_lease();
    let listed = c.ok(&format!(
        "runuser -u {USER} -- env -i PATH=/usr/bin:/bin portctl list"
    ));
    assert!(listed.contains(&format!("{lease} ")), "{listed}");

    // An unmodified server under `portctl wrap`, as a group member with no environment: the
    // installed portctl finds the installed shim, and the server's own bind leases its port.
    c.ok(&format!(
        "systemd-run --quiet --unit=wrapped --uid={USER} /usr/bin/env -i PATH=/usr/bin:/bin \
         /usr/bin/portctl wrap -- /usr/bin/python3 -m http.server 0 --bind 127.0.0.1"
    ));
    let wrapped = |l: &[serde_json::Value]| {
        l.iter()
            .find(|x| x["name"] == "python3" && x["state"] == "process")
            .and_then(|x| x["addr"].as_str().map(str::to_owned))
    };
    c.wait_leases(
        Duration::from_secs(20),
        "the wrapped server's lease is listed",
        |l| wrapped(l).is_some(),
    );
    let addr = wrapped(&c.leases().unwrap()).unwrap();
    let status = c.ok(&format!(
        "python3 -c 'import urllib.request as u; print(u.urlopen(\"http://{addr}/\").status)'"
    ));
    assert_eq!(status.trim(), "200", "the wrapped server serves on {addr}");

    // An administrator's revoke shuts the server's listener down where it lives (the daemon
    // fetches it from the server with pidfd_getfd, which the unit's syscall filter must let
    // through): nothing listens on the port any more.
    let id = c
        .leases()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "python3")
        .and_then(|x| x["id"].as_u64())
        .unwrap();
    let revoked = c.ok(&format!("portctl revoke {id}"));
    let port = addr.rsplit(':').next().unwrap();
    let shut = wait_until(Duration::from_secs(20), || {
        c.ok(&format!("ss -Htln 'sport = :{port}'"))
            .trim()
            .is_empty()
    });
    assert!(
        shut,
        "after revoke the server still listens on {addr}: {revoked}\n{}",
        c.journal()
    );
    let journal = c.journal();
    assert!(
        !journal.contains("cannot fetch sockets"),
        "the unit keeps the broker from fetching sockets:\n{journal}"
    );
    c.ok("systemctl stop wrapped");
    c.wait_leases(
        Duration::from_secs(20),
        "the stopped server's lease ends",
        |l| wrapped(l).is_none(),
    );

    // Someone outside the group is told which paths were tried.
    let out = c.run(&format!(
        "runuser -u {OUTSIDER} -- env -i PATH=/usr/bin:/bin XDG_RUNTIME_DIR=/nonexistent portctl status"
    ));
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{said}");
    assert!(
        said.contains("/nonexistent/portbroker/portbroker.sock")
            && said.contains("/run/portbroker/portbroker.sock (Permission denied"),
        "{said}"
    );

    // Reload re-reads the policy file.
    c.ok("systemctl reload portbrokerd.service");
    let reloaded = wait_until(Duration::from_secs(20), || {
        c.journal()
            .contains("reloaded /etc/portbroker/portbroker.toml")
    });
    assert!(reloaded, "no reload line in the journal:\n{}", c.journal());

    // Stop: no daemon left, its socket gone, the fd store emptied (the reserved port free).
    c.ok("systemctl stop portbrokerd.socket portbrokerd.service");
    assert!(!c
        .run("systemctl is-active portbrokerd.service")
        .status
        .success());
    assert!(
        c.run("pgrep -x portbrokerd").stdout.is_empty(),
        "a portbrokerd survived stop"
    );
    assert!(!c
        .run("test -e /run/portbroker/portbroker.sock")
        .status
        .success());
    assert!(
        !c.reserved_port_is_bound(),
        "port {RESERVED} is still bound after stop"
    );
}

/// `systemctl restart` and `kill -9` of the main process: the lease table comes back and the
/// reserved port stays bound by the same socket (the fd store).
#[test]
fn leases_and_reserved_ports_survive_restart_and_kill() {
    if skip_unless_root("leases_and_reserved_ports_survive_restart_and_kill") {
        return;
    }
    let c = Container::boot("restart");
    c.activate();
    let lease = c.hold_a_lease();
    assert!(
        c.reserved_port_is_bound(),
        "port {RESERVED} is not held after start"
    );
    let reserved = c.ip_socket_inodes();
    assert!(
        !reserved.is_empty(),
        "the broker holds no TCP/UDP socket for port {RESERVED}"
    );

    for (how, script) in [
        (
            "kill -9",
            "kill -9 $(systemctl show -p MainPID --value portbrokerd.service)",
        ),
        ("systemctl restart", "systemctl restart portbrokerd.service"),
    ] {
        let before = c.main_pid();
        c.ok(script);
        let back = wait_until(Duration::from_secs(30), || {
            let pid = c.main_pid();
            pid != 0
                && pid != before
                && c.run("systemctl is-active portbrokerd.service")
                    .status
                    .success()
        });
        assert!(
            back,
            "the broker did not come back after {how}:\n{}",
            c.journal()
        );
        c.wait_leases(
            Duration::from_secs(20),
            &format!("lease {lease} is listed after {how}"),
            |l| l.iter().any(|x| x["id"].as_u64() == Some(lease)),
        );
        // Its holder still holds its socket, which the restarted daemon checks by fetching the
        // holder's sockets (pidfd_getfd): tied to the holder again, not lingering.
        let state = c
            .leases()
            .unwrap()
            .iter()
            .find(|x| x["id"].as_u64() == Some(lease))
            .map(|x| x["state"].clone());
        assert_eq!(
            state,
            Some(serde_json::json!("process")),
            "lease {lease} after {how}:\n{}",
            c.journal()
        );
        assert!(
            c.reserved_port_is_bound(),
            "port {RESERVED} is free after {how}"
        );
        let now = c.ip_socket_inodes();
        assert!(
            reserved.iter().all(|inode| now.contains(inode)),
            "after {how} the reserved port's socket is another (inodes before {reserved:?}, after {now:?}): \
             it was unbound meanwhile; the fd store did not carry it\n{}",
            c.journal()
        );
    }
}

/// A stopped event loop misses its watchdog pings, and systemd restarts the broker.
#[test]
fn the_watchdog_restarts_a_stopped_broker() {
    if skip_unless_root("the_watchdog_restarts_a_stopped_broker") {
        return;
    }
    let c = Container::boot("watchdog");
    c.activate();
    let stuck = c.main_pid();
    let started = Instant::now();
    c.ok(&format!("kill -STOP {stuck}"));
    // WatchdogSec=10s, then SIGABRT, then SIGKILL after TimeoutAbortSec=10s.
    let back = wait_until(Duration::from_secs(60), || {
        let pid = c.main_pid();
        pid != 0 && pid != stuck && c.run("portctl status").status.success()
    });
    assert!(
        back,
        "the watchdog did not restart the stopped broker:\n{}",
        c.journal()
    );
    assert!(
        c.journal().contains("Watchdog timeout"),
        "the broker came back, but not through the watchdog:\n{}",
        c.journal()
    );
    println!("watchdog restart after {:?}", started.elapsed());
}
