//! Test farms, unchanged: the real `portpicker` from PyPI, installed in a throwaway venv, asks
//! the daemon's portserver (`PORTSERVER_ADDRESS=@portserver`, on by default) for ports. The
//! daemon runs in a network namespace of the test's own, so `@portserver` and the ports are the
//! test's alone. 16 processes pick 1,000 ports in all: every one distinct, in the pool, none a
//! port of a lease the test holds; `list` shows them as `number` leases of those processes, and
//! once the processes exit their leases end. A `SKIPPED` line if pip cannot reach PyPI. And a
//! portserver client that never asks is closed at its deadline.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portbroker::{LeaseState, SocketSpec};
use support::{wait_until, Daemon};

const PROCESSES: usize = 16;
const PORTS: usize = 1000;
const POOL: (u16, u16) = (40000, 44999);

/// A venv with portpicker in it, or why not.
fn portpicker_venv(dir: &Path) -> Result<std::path::PathBuf, String> {
    let venv = dir.join("venv");
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    assert!(
        out.status.success(),
        "python3 -m venv failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "--timeout",
            "15",
            "--retries",
            "1",
            "portpicker",
        ])
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pip cannot install portpicker: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(venv.join("bin/python"))
}

#[test]
fn portpicker_clients_get_distinct_pool_ports_that_end_with_them() {
    let tmp = tempfile::tempdir().unwrap();
    let python = match portpicker_venv(tmp.path()) {
        Ok(python) => python,
        Err(why) => {
            println!(
                "SKIPPED portpicker_clients_get_distinct_pool_ports_that_end_with_them: {why}"
            );
            return;
        }
    };
    let pool = format!("{}-{}", POOL.0, POOL.1);
    let daemon = Daemon::start_in_own_netns(&["--no-config", "--pool", &pool]);
    let up = daemon
        .in_netns("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(up.success(), "ip link set lo up in the daemon's namespace");
    daemon.assert_logged(
        "portserver protocol at @portserver",
        Duration::from_secs(5),
        "the portserver listens by default",
    );

    // A lease the test holds: no portpicker client may get its port.
    let broker = daemon.broker();
    let held = broker.lease([SocketSpec::tcp(None, 0)]).unwrap();
    let held_port = held.local_addr().port();

    let started = Instant::now();
    let per_process = PORTS.div_ceil(PROCESSES);
    let mut children = Vec::new();
    for i in 0..PROCESSES {
        let count = per_process.min(PORTS - i * per_process);
        // Each prints its ports, then waits for stdin to close, so that its leases are
        // checked while it lives.
        let code = format!(
            "import portpicker, sys\n\
             for _ in range({count}):\n\
             \x20   print(portpicker.pick_unused_port())\n\
             print('done', flush=True)\n\
             sys.stdin.read()\n"
        );
        let child = daemon
            .in_netns(&python)
            .args(["-c", &code])
            .env("PORTSERVER_ADDRESS", "@portserver")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push(child);
    }
    let mut ports = Vec::new();
    let mut pids = HashSet::new();
    for child in &mut children {
        use std::io::{BufRead, BufReader};
        pids.insert(child.id() as i32);
        let stdout = BufReader::new(child.stdout.as_mut().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            if line == "done" {
                break;
            }
            ports.push(
                line.trim()
                    .parse::<u16>()
                    .unwrap_or_else(|_| panic!("portpicker printed {line:?}\n{}", daemon.log())),
            );
        }
    }
    assert_eq!(ports.len(), PORTS);
    let distinct: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), PORTS, "ports handed out twice");
    for port in &ports {
        assert!(
            (POOL.0..=POOL.1).contains(port),
            "port {port} is not from the pool (portpicker fell back?)\n{}",
            daemon.log()
        );
    }
    assert!(
        !distinct.contains(&held_port),
        "the held lease's port was handed out"
    );

    // Each is a `number` lease of the process it was for.
    let leases = broker.list().unwrap();
    let numbers: Vec<_> = leases
        .iter()
        .filter(|l| l.state == LeaseState::Number)
        .collect();
    assert_eq!(numbers.len(), PORTS);
    for lease in &numbers {
        assert!(pids.contains(&lease.holder.pid), "{lease:?}");
        assert!(
            distinct.contains(&lease.sockets[0].addr.port()),
            "{lease:?}"
        );
    }
    let out = daemon.portctl().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["state"] == "number")
        .count();
    assert_eq!(shown, PORTS, "portctl list --json shows the number leases");
    let out = daemon.portctl().arg("list").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .filter(|l| l.trim_end().ends_with("number"))
            .count()
            == PORTS,
        "portctl list shows STATE number:\n{text}"
    );

    // The processes exit: their leases end; the test's own stays.
    for child in &mut children {
        drop(child.stdin.take());
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a portpicker client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let gone = wait_until(Duration::from_secs(10), || {
        broker
            .list()
            .unwrap()
            .iter()
            .all(|l| l.state != LeaseState::Number)
    });
    assert!(
        gone,
        "number leases outlived their processes\n{}",
        daemon.log()
    );
    assert_eq!(
        broker.list().unwrap().len(),
        1,
        "the test's own lease stays"
    );
    drop(held);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// A portserver client that never asks is closed at its deadline, not before, and does not
/// stop the next one from getting a port.
#[test]
fn a_silent_portserver_client_is_closed_at_its_deadline() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    const DEADLINE: Duration = Duration::from_secs(2);
    let tmp = tempfile::tempdir().unwrap();
    let address = tmp.path().join("portserver.sock");
    let policy = format!("[portserver]\naddress = \"{}\"\n", address.display());
    let daemon = Daemon::start_for_all_users(Some(&policy), &[]);
    // A served request first: the portserver opens during start-up.
    daemon.broker().status().unwrap();

    let connected = Instant::now();
    let mut silent = UnixStream::connect(&address).unwrap();
    silent.set_read_timeout(Some(DEADLINE * 5)).unwrap();
    assert_eq!(
        silent.read(&mut [0; 16]).unwrap(),
        0,
        "closed at its deadline"
    );
    // The deadline counts from the accept, which came after the connect.
    assert!(connected.elapsed() >= DEADLINE, "closed early");

    let mut asking = UnixStream::connect(&address).unwrap();
    asking.set_read_timeout(Some(DEADLINE * 5)).unwrap();
    writeln!(asking, "{}", std::process::id()).unwrap();
    let mut answer = String::new();
    asking.read_to_string(&mut answer).unwrap();
    let port: u16 = answer.trim().parse().unwrap();
    assert_ne!(port, 0, "{answer:?}\n{}", daemon.log());
}

/// The portserver spends the asker's request budget (`requests_per_sec_per_uid`), as the
/// broker's socket does: a user flooding it is answered `0` (portpicker then picks a port
/// itself) once the budget is spent, and is no way around the budget.
#[test]
fn portserver_requests_spend_the_users_request_budget() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to ask as another user (root has no budget)");
        return;
    }
    const RATE: usize = 5;
    const ASKED: usize = 30;
    let tmp = tempfile::tempdir().unwrap();
    let address = tmp.path().join("portserver.sock");
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let policy = format!(
        "[portserver]\naddress = \"{}\"\n\n[limits]\nrequests_per_sec_per_uid = {RATE}\n\n\
         [[rule]]\nwho = \"everyone\"\nports = [\"pool\"]\n",
        address.display()
    );
    let daemon = Daemon::start_for_all_users(Some(&policy), &[]);
    daemon.broker().status().unwrap();
    // As uid 65534, ASKED requests in a row, each on its own connection, as portpicker makes
    // them; each answer on a line of its own.
    let script = format!(
        "import os, socket\n\
         for _ in range({ASKED}):\n\
         \x20   s = socket.socket(socket.AF_UNIX)\n\
         \x20   s.connect({:?})\n\
         \x20   s.sendall(b'%d\\n' % os.getpid())\n\
         \x20   print(s.recv(64).decode().strip(), flush=True)\n\
         \x20   s.close()\n",
        address.display().to_string()
    );
    let started = Instant::now();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", daemon.log());
    let answers: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("answer {l:?}")))
        .collect();
    assert_eq!(answers.len(), ASKED);
    let granted = answers.iter().filter(|&&port| port != 0).count();
    assert!(granted >= 1, "nothing granted: {answers:?}");
    // The budget holds RATE requests and refills at RATE a second while the script runs.
    let took = started.elapsed().as_secs_f64();
    let most = RATE + (RATE as f64 * took).ceil() as usize;
    assert!(
        granted <= most,
        "{granted} of {ASKED} granted in {took:.2} s with a budget of {RATE} a second \
         (at most {most}): {answers:?}"
    );
}
