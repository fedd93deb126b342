//! The daemon's policy file as its users meet it: who may lease which ports, quotas per user,
//! who may connect at all, reloading, and the built-in default policy. Unprivileged clients run
//! as other users through setpriv, so these tests need root (as CI has).

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use portbroker::proto::LeaseInfo;
use support::{finish, free_port, wait_until, Daemon, NOBODY, STRANGER};

/// Accepts one connection on fd 3 and tells who serves it.
const PYTHON_SERVER: &str = r#"
import os, socket
server = socket.socket(fileno=3)
conn, _ = server.accept()
conn.sendall(("uid %d serving port %d\n" % (os.getuid(), server.getsockname()[1])).encode())
conn.close()
"#;

/// Holds its lease until its stdin closes.
const PYTHON_WAIT_FOR_EOF: &str = "import sys; sys.stdin.read()";

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `cmd` and checks its exit status; returns its output.
fn expect_exit(cmd: &mut Command, code: i32) -> Output {
    let output = cmd.output().expect("run the command");
    assert_eq!(output.status.code(), Some(code), "{cmd:?}: {output:?}");
    output
}

/// `portctl run -q SPEC -- true` as `uid`: the exit status of a lease request as that user.
fn run_true_as(daemon: &Daemon, uid: u32, spec: &str, code: i32) -> Output {
    expect_exit(
        daemon
            .portctl_as(uid)
            .args(["run", "-q", spec, "--", "true"]),
        code,
    )
}

/// The lease that process `child` (a portctl) holds, once it shows up.
fn lease_of(daemon: &Daemon, child: &mut Child) -> LeaseInfo {
    let broker = daemon.broker();
    let pid = child.id() as i32;
    let mut lease = None;
    let found = wait_until(Duration::from_secs(10), || {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!(
                "portctl (pid {pid}) exited ({status}) without holding a lease: {stderr}\n{}",
                daemon.log()
            );
        }
        lease = broker
            .list()
            .unwrap()
            .into_iter()
            .find(|lease| support::held_by_portctl(lease, pid as u32));
        lease.is_some()
    });
    assert!(
        found,
        "portctl (pid {pid}) never held a lease:\n{}",
        daemon.log()
    );
    lease.unwrap()
}

fn leases_of_uid(daemon: &Daemon, uid: u32) -> usize {
    let leases = daemon.broker().list().unwrap();
    leases.iter().filter(|l| l.holder.uid == uid).count()
}

/// Long-running clients, ended when the test ends however it ends: their stdin is closed
/// (they exit on EOF), and whatever still runs after that is killed.
struct Holders(Vec<Child>);

impl Holders {
    /// Ends holder `i` by closing its stdin; returns its output.
    fn end(&mut self, i: usize) -> Output {
        let mut child = self.0.remove(i);
        drop(child.stdin.take());
        finish(child)
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            drop(child.stdin.take());
        }
        for child in &mut self.0 {
            let exited = wait_until(Duration::from_secs(5), || {
                child.try_wait().map_or(true, |s| s.is_some())
            });
            if !exited {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// A system group that exists for one test, deleted again however the test ends.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn create() -> TempGroup {
        let name = format!("pbtest{}", std::process::id());
        if group_gid(&name).is_some() {
            // Left by a killed run of a process with the same pid.
            let _ = Command::new("groupdel").arg(&name).status();
        }
        let out = Command::new("groupadd")
            .args(["--system", &name])
            .output()
            .expect("run groupadd");
        assert!(out.status.success(), "groupadd --system {name}: {out:?}");
        let gid = group_gid(&name).unwrap_or_else(|| panic!("getent group {name} finds nothing"));
        TempGroup { name, gid }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        match Command::new("groupdel").arg(&self.name).output() {
            Ok(out) if out.status.success() => {}
            other => eprintln!("groupdel {} failed: {other:?}", self.name),
        }
    }
}

/// The gid of a group, from `getent group NAME`.
fn group_gid(name: &str) -> Option<u32> {
    let out = Command::new("getent")
        .args(["group", name])
        .output()
        .expect("run getent");
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).unwrap();
    Some(
        line.trim()
            .split(':')
            .nth(2)
            .and_then(|gid| gid.parse().ok())
            .unwrap_or_else(|| panic!("unexpected getent output: {line:?}")),
    )
}

/// The first port in `lo..=hi` that nothing on this machine holds for TCP on 127.0.0.1.
fn free_tcp_port_in(lo: u16, hi: u16) -> u16 {
    (lo..=hi)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .unwrap_or_else(|| panic!("no free TCP port on 127.0.0.1 in {lo}-{hi}"))
}

/// Lines of the daemon's log that report a successful reload.
fn reloads_logged(daemon: &Daemon) -> usize {
    daemon
        .log()
        .lines()
        .filter(|l| l.contains("reloaded") && !l.contains("not reloaded"))
        .count()
}

#[test]
fn a_policy_grants_port_80_to_the_uid_it_names_and_no_other() {
    match TcpListener::bind("127.0.0.1:80") {
        Ok(probe) => drop(probe),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!("skipped: something on this machine already holds 127.0.0.1:80");
            return;
        }
        Err(err) => panic!("cannot probe 127.0.0.1:80: {err}"),
    }
    let daemon = Daemon::start_for_all_users(
        Some(
            r#"
[socket]
mode = "0666"

[[rule]]
who = "uid:65534"
ports = ["80"]
addresses = ["127.0.0.1"]
"#,
        ),
        &[],
    );
    let mut child = daemon
        .portctl_as(NOBODY)
        .args([
            "run",
            "tcp:127.0.0.1:80",
            "--",
            "python3",
            "-c",
            PYTHON_SERVER,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lease = lease_of(&daemon, &mut child);
    assert_eq!(lease.holder.uid, NOBODY, "{lease:?}");
    let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
    assert_eq!(lease.sockets[0].addr, addr, "{lease:?}");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "uid 65534 serving port 80\n");
    let output = finish(child);
    assert!(output.status.success(), "{output:?}");

    // The same request from a uid the policy does not name.
    let refused = run_true_as(&daemon, STRANGER, "tcp:127.0.0.1:80", 77);
    let stderr = stderr_of(&refused);
    assert!(stderr.contains("not permitted"), "{stderr}");
    assert!(
        stderr.contains("no rule allows uid 65533 to lease tcp:127.0.0.1:80 (rules: 1)"),
        "the refusal says what decided it: {stderr}"
    );
    assert_eq!(leases_of_uid(&daemon, STRANGER), 0);
}

#[test]
fn a_user_at_quota_is_refused_and_others_are_not() {
    let daemon = Daemon::start_for_all_users(
        Some(
            r#"
[socket]
mode = "0666"

[limits]
leases_per_uid = 2

[[rule]]
who = "everyone"
ports = ["pool"]
addresses = ["127.0.0.1"]
"#,
        ),
        &[],
    );
    let mut holders = Holders(Vec::new());
    for _ in 0..2 {
        let child = daemon
            .portctl_as(NOBODY)
            .args(support::run_python("tcp:127.0.0.1:0", PYTHON_WAIT_FOR_EOF))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        holders.0.push(child);
        let lease = lease_of(&daemon, holders.0.last_mut().unwrap());
        assert_eq!(lease.holder.uid, NOBODY);
    }
    assert_eq!(leases_of_uid(&daemon, NOBODY), 2);

    let refused = run_true_as(&daemon, NOBODY, "tcp:127.0.0.1:0", 75);
    let stderr = stderr_of(&refused);
    // The refusal names the quota as the policy file does: `quota exceeded (2 of 2): leases_per_uid`.
    assert!(
        stderr.lines().any(|l| l
            .trim_end()
            .ends_with("quota exceeded (2 of 2): leases_per_uid")),
        "{stderr}"
    );
    assert_eq!(
        leases_of_uid(&daemon, NOBODY),
        2,
        "the refusal left nothing"
    );

    // Another user, and root, are not held back by uid 65534's quota, nor by their own count.
    run_true_as(&daemon, STRANGER, "tcp:127.0.0.1:0", 0);
    let broker = daemon.broker();
    let root_leases: Vec<_> = (0..3)
        .map(|_| broker.lease_str(&["tcp:127.0.0.1:0"]).unwrap())
        .collect();
    assert_eq!(root_leases.len(), 3);

    // A lease given back makes room again.
    let output = holders.end(0);
    assert!(output.status.success(), "{output:?}");
    assert!(
        wait_until(Duration::from_secs(5), || leases_of_uid(&daemon, NOBODY)
            == 1),
        "the ended holder's lease was not released:\n{}",
        daemon.log()
    );
    run_true_as(&daemon, NOBODY, "tcp:127.0.0.1:0", 0);
}

#[test]
fn the_socket_has_the_configured_mode_and_group_and_outsiders_cannot_connect() {
    let group = TempGroup::create();
    let policy = format!(
        r#"
[socket]
group = "{}"
mode = "0660"

[admin]
groups = ["{}"]
"#,
        group.name, group.name
    );
    let daemon = Daemon::start_for_all_users(Some(&policy), &[]);
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(
        meta.mode() & 0o7777,
        0o660,
        "mode {:o}",
        meta.mode() & 0o7777
    );
    assert_eq!(meta.gid(), group.gid, "the socket's group");

    let outside = expect_exit(daemon.portctl_as(NOBODY).arg("status"), 69);
    let stderr = stderr_of(&outside);
    assert!(stderr.contains("Permission denied"), "{stderr}");

    expect_exit(
        daemon
            .portctl_as_in_groups(NOBODY, &[group.gid])
            .arg("status"),
        0,
    );
    // The group is also the admin group: its members may reload.
    expect_exit(
        daemon
            .portctl_as_in_groups(NOBODY, &[group.gid])
            .arg("reload"),
        0,
    );
}

#[test]
fn reload_and_sighup_apply_a_valid_file_and_keep_the_old_policy_over_a_broken_one() {
    let policy = |ports: &str, extra: &str| {
        format!(
            "[socket]\nmode = \"0666\"\n\n[[rule]]\nwho = \"uid:65534\"\nports = [\"{ports}\"]\n{extra}"
        )
    };
    let daemon = Daemon::start_for_all_users(Some(&policy("2000-2099", "")), &[]);
    let port = free_tcp_port_in(2100, 2199);
    let spec = format!("tcp:127.0.0.1:{port}");

    let refused = run_true_as(&daemon, NOBODY, &spec, 77);
    assert!(stderr_of(&refused).contains("not permitted"), "{refused:?}");

    // A wider range, through portctl reload.
    std::fs::write(daemon.policy_file(), policy("2000-2199", "")).unwrap();
    let reloaded = expect_exit(daemon.portctl().arg("reload"), 0);
    let stdout = String::from_utf8_lossy(&reloaded.stdout);
    assert!(stdout.contains("reloaded: 1 rules"), "{stdout}");
    run_true_as(&daemon, NOBODY, &spec, 0);

    // A broken file: the reload fails naming the key and its line; the old policy stays.
    let broken = "[limits]\nleases_per_uid = 10\ncolour = \"red\"\n\n[[rule]]\nwho = \"everyone\"\nports = [\"pool\"]\n";
    std::fs::write(daemon.policy_file(), broken).unwrap();
    let failed = expect_exit(daemon.portctl().arg("reload"), 78);
    let stderr = stderr_of(&failed);
    assert!(
        stderr.contains("colour") && stderr.contains("line 3"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("stays as it was").count(),
        1,
        "the error is the file's, told once: {stderr}"
    );
    daemon.assert_logged(
        "colour",
        Duration::from_secs(5),
        "the failed reload is not logged",
    );
    run_true_as(&daemon, NOBODY, &spec, 0);
    run_true_as(&daemon, STRANGER, "tcp:127.0.0.1:0", 77);

    // SIGHUP: back to the narrow range, and a rule for uid 65533.
    let stranger_rule = "\n[[rule]]\nwho = \"uid:65533\"\nports = [\"pool\"]\n";
    std::fs::write(daemon.policy_file(), policy("2000-2099", stranger_rule)).unwrap();
    let before = reloads_logged(&daemon);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || reloads_logged(&daemon) > before),
        "no reload logged after SIGHUP:\n{}",
        daemon.log()
    );
    run_true_as(&daemon, NOBODY, &spec, 77);
    run_true_as(&daemon, STRANGER, "tcp:127.0.0.1:0", 0);

    // Reloading is for administrators.
    let not_admin = expect_exit(daemon.portctl_as(NOBODY).arg("reload"), 77);
    assert!(
        stderr_of(&not_admin).contains("not permitted"),
        "{not_admin:?}"
    );
}

#[test]
fn the_default_policy_allows_the_pool_and_unprivileged_ports_only() {
    let daemon = Daemon::start_for_all_users(None, &["--no-config"]);
    // Without a group of its own the socket is for everyone; with the group portbroker on
    // this machine it is that group's, so the unprivileged client joins it.
    let groups: Vec<u32> = group_gid("portbroker").into_iter().collect();
    let mode = std::fs::metadata(&daemon.socket).unwrap().mode() & 0o7777;
    let expected_mode = if groups.is_empty() { 0o666 } else { 0o660 };
    assert_eq!(mode, expected_mode, "socket mode {mode:o}");
    let run = |spec: &str, code: i32| {
        expect_exit(
            daemon
                .portctl_as_in_groups(NOBODY, &groups)
                .args(["run", "-q", spec, "--", "true"]),
            code,
        )
    };

    run("tcp:127.0.0.1:0", 0);
    run("udp:127.0.0.1:0", 0);
    let start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let port = free_port();
    assert!(port >= start, "free_port() gave {port}, below {start}");
    run(&format!("tcp:127.0.0.1:{port}"), 0);

    if start <= 80 {
        eprintln!(
            "ip_unprivileged_port_start is {start}: port 80 is not privileged here, not checked"
        );
    } else {
        let refused = run("tcp:127.0.0.1:80", 77);
        assert!(stderr_of(&refused).contains("not permitted"), "{refused:?}");
        let below = format!("tcp:127.0.0.1:{}", start - 1);
        let refused = run(&below, 77);
        assert!(stderr_of(&refused).contains("not permitted"), "{refused:?}");
    }
    assert_eq!(leases_of_uid(&daemon, NOBODY), 0);
}

#[test]
fn the_example_policy_file_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/portbroker.toml");
    assert!(
        std::path::Path::new(example).exists(),
        "{example} is missing"
    );
    // The harness's --socket and --pool override the file's.
    let daemon = Daemon::start_with(&["--config", example]);
    let out = expect_exit(daemon.portctl().args(["status", "--json"]), 0);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["pool"],
        format!("{}-{}", daemon.pool.0, daemon.pool.1),
        "--pool overrides the file's pool"
    );
}
