//! portctl as a user runs it: unmodified programs served on leased sockets, exit codes that
//! scripts can trust, and `list` / `status` output.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{example_bin, finish, free_port, wait_until, Daemon};

/// The address of the lease that process `pid` (a portctl) holds, once it shows up.
fn leased_addr_of(daemon: &Daemon, pid: u32) -> SocketAddr {
    let broker = daemon.broker();
    let mut addr = None;
    let found = wait_until(Duration::from_secs(10), || {
        addr = broker
            .list()
            .unwrap()
            .into_iter()
            .find(|lease| support::held_by_portctl(lease, pid))
            .map(|lease| lease.sockets[0].addr);
        addr.is_some()
    });
    assert!(
        found,
        "portctl (pid {pid}) never held a lease:\n{}",
        daemon.log()
    );
    addr.unwrap()
}

fn read_all(addr: SocketAddr) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

/// The first line the child writes to its (piped) stdout.
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

const PYTHON_SERVER: &str = r#"
import os, socket
assert os.environ["LISTEN_FDS"] == "1", os.environ["LISTEN_FDS"]
assert os.environ["LISTEN_PID"] == str(os.getpid()), "LISTEN_PID is not this process"
name = os.environ["LISTEN_FDNAMES"]
server = socket.socket(fileno=3)
conn, _ = server.accept()
conn.sendall(("python serving " + name + " on " + str(server.getsockname()[1])).encode())
conn.close()
"#;

#[test]
fn portctl_run_serves_a_python_program_that_knows_nothing_of_portbroker() {
    let daemon = Daemon::start();
    let child = daemon
        .portctl()
        .args([
            "run",
            "tcp:127.0.0.1:0",
            "--",
            "python3",
            "-c",
            PYTHON_SERVER,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = leased_addr_of(&daemon, child.id());
    assert!(
        (daemon.pool.0..=daemon.pool.1).contains(&addr.port()),
        "{addr} is not from the pool"
    );
    let answer = read_all(addr);
    assert_eq!(
        answer,
        format!("python serving tcp-{0} on {0}", addr.port())
    );
    let output = finish(child);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&addr.to_string()),
        "portctl says what it leased: {stderr}"
    );
    // The lease lasted as long as the program, no longer.
    let broker = daemon.broker();
    assert!(wait_until(Duration::from_secs(1), || broker
        .list()
        .unwrap()
        .is_empty()));
}

#[test]
fn portctl_run_serves_a_listenfd_program() {
    let daemon = Daemon::start();
    let server = example_bin("listenfd_server");
    assert!(
        server.exists(),
        "{} is built by cargo test",
        server.display()
    );
    let child = daemon
        .portctl()
        .args(["run", "--quiet", "web=tcp:127.0.0.1:0", "--"])
        .arg(&server)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = leased_addr_of(&daemon, child.id());
    let answer = read_all(addr);
    assert!(
        answer.starts_with(&format!("listenfd_server on {addr} says hello")),
        "{answer}"
    );
    let output = finish(child);
    assert!(output.status.success(), "{output:?}");
    assert!(
        output.stderr.is_empty(),
        "--quiet prints nothing: {output:?}"
    );
}

#[test]
fn the_library_example_leases_and_serves() {
    let daemon = Daemon::start();
    let mut child = Command::new(example_bin("lease_and_serve"))
        .arg("tcp:127.0.0.1:0")
        .env("PORTBROKER_SOCKET", &daemon.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    let addr: SocketAddr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(read_all(addr).starts_with("hello 127.0.0.1:"));
    assert!(finish(child).status.success());
}

/// The Python of `SERVE='...'` in `text`, as a shell would read it.
fn serve_snippet(text: &str) -> String {
    let start = text.find("SERVE='").expect("a SERVE='...' snippet") + "SERVE='".len();
    let len = text[start..].find('\'').expect("the closing quote");
    text[start..start + len].to_owned()
}

/// The examples of the help and of the README run SERVE, which must serve HTTP on the leased
/// socket rather than on a port of its own.
#[test]
fn the_documented_serve_snippets_serve_on_the_leased_socket() {
    let help = Command::new(support::portctl_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let readme = include_str!("../../README.md");
    let daemon = Daemon::start();
    for (origin, code) in [
        ("help", serve_snippet(&help)),
        ("README", serve_snippet(readme)),
    ] {
        let child = daemon
            .portctl()
            .args([
                "run",
                "-q",
                "http=tcp:127.0.0.1:0",
                "--",
                "python3",
                "-c",
                &code,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = leased_addr_of(&daemon, child.id());
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        std::io::Write::write_all(&mut conn, b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.0 200"),
            "the {origin}'s SERVE on {addr}: {answer}"
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        finish(child);
    }
}

#[test]
fn a_refused_run_starts_nothing_names_the_holder_and_exits_75() {
    let daemon = Daemon::start();
    let port = free_port();
    let _held = daemon
        .broker()
        .lease_str(&[&format!("tcp:127.0.0.1:{port}")])
        .unwrap();
    let marker = daemon.dir().join("started");
    let output = daemon
        .portctl()
        .args(["run", &format!("tcp:0.0.0.0:{port}"), "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(75), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("pid {}", std::process::id())),
        "names the holder: {stderr}"
    );
    assert!(
        !marker.exists(),
        "the command must not run when the lease is refused"
    );
}

#[test]
fn exit_codes_tell_bad_usage_from_an_unreachable_broker() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-daemon.sock");
    let portctl = |args: &[&str]| {
        Command::new(support::portctl_bin())
            .env("PORTBROKER_SOCKET", &nowhere)
            .args(args)
            .output()
            .unwrap()
    };
    // A bad spec is refused before anything is contacted: 64 even with no daemon around.
    let bad = portctl(&["run", "tcp:localhost:80", "--", "true"]);
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("tcp:localhost:80"),
        "{bad:?}"
    );
    let no_command = portctl(&["run", "tcp:8080"]);
    assert_eq!(no_command.status.code(), Some(64), "{no_command:?}");
    let unknown = portctl(&["frobnicate"]);
    assert_eq!(unknown.status.code(), Some(64), "{unknown:?}");
    // A good spec and no broker: 69, and the message says where it looked.
    for args in [
        &["run", "tcp:127.0.0.1:0", "--", "true"][..],
        &["list"],
        &["status"],
    ] {
        let out = portctl(args);
        assert_eq!(out.status.code(), Some(69), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&nowhere.display().to_string()),
            "{out:?}"
        );
    }
    assert_eq!(portctl(&["--help"]).status.code(), Some(0));
}

#[test]
fn exit_codes_tell_an_unknown_lease_from_a_failed_bind() {
    let daemon = Daemon::start();
    let unknown = daemon.portctl().args(["release", "999"]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("999"),
        "names the id: {unknown:?}"
    );
    // 192.0.2.1 (TEST-NET-1) is no address of this host: the broker's bind fails, an OS error.
    let marker = daemon.dir().join("started");
    let unbindable = daemon
        .portctl()
        .args(["run", "tcp:192.0.2.1:0", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(unbindable.status.code(), Some(71), "{unbindable:?}");
    assert!(
        String::from_utf8_lossy(&unbindable.stderr).contains("192.0.2.1"),
        "names the address: {unbindable:?}"
    );
    assert!(!marker.exists(), "nothing runs without its lease");
}

#[test]
fn portctl_run_passes_on_the_exit_status_and_signals() {
    let daemon = Daemon::start();
    let status = daemon
        .portctl()
        .args(["run", "-q", "tcp:127.0.0.1:0", "--", "sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let missing = daemon
        .portctl()
        .args(["run", "-q", "tcp:127.0.0.1:0", "--", "/nonexistent/program"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(127), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/program"),
        "{missing:?}"
    );

    // SIGTERM to portctl reaches the program, whose own exit status comes back.
    let trap = "import signal, sys, time\n\
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n\
                print('ready', flush=True)\n\
                time.sleep(30)\n\
                sys.exit(1)";
    let mut child = daemon
        .portctl()
        .args(["run", "-q", "tcp:127.0.0.1:0", "--", "python3", "-c", trap])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    assert_eq!(line.trim(), "ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(finish(child).status.code(), Some(42));
}

#[test]
fn list_and_status_report_what_the_broker_holds() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let port = free_port();
    let lease = broker
        .lease_str(&[&format!("tcp:127.0.0.1:{port}"), "udp:127.0.0.1:0"])
        .unwrap();

    let out = daemon.portctl().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 2, "one row per socket: {rows:?}");
    let tcp = &rows[0];
    assert_eq!(tcp["id"], lease.id().0);
    assert_eq!(tcp["proto"], "tcp");
    assert_eq!(tcp["addr"], format!("127.0.0.1:{port}"));
    assert_eq!(tcp["pid"], std::process::id());
    assert_eq!(tcp["uid"], nix::unistd::geteuid().as_raw());
    assert!(tcp["name"].as_str().is_some_and(|n| !n.is_empty()), "{tcp}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        tcp["since"]
            .as_u64()
            .is_some_and(|s| s <= now && now - s < 60),
        "{tcp}"
    );
    assert_eq!(rows[1]["proto"], "udp");

    let table = daemon.portctl().arg("list").output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("udp"),
        "{text}"
    );

    let out = daemon
        .portctl()
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["leases"], 1);
    assert_eq!(status["sockets"], 2);
    assert_eq!(status["protocol"], portbroker_proto::PROTOCOL_VERSION);
    assert_eq!(
        status["pool"],
        format!("{}-{}", daemon.pool.0, daemon.pool.1)
    );
}

#[test]
fn the_daemon_refuses_to_start_beside_a_live_one_and_cleans_up_on_sigterm() {
    let mut daemon = Daemon::start();
    let second = Command::new(support::portbrokerd_bin())
        .arg("--socket")
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already"),
        "{second:?}"
    );
    assert!(daemon.is_running(), "the first daemon is untouched");
    let _ = daemon.broker().status().unwrap();

    // SIGHUP, an operator's reflex, does not kill it.
    let pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || daemon.log().contains("SIGHUP")),
        "SIGHUP was not noticed:\n{}",
        daemon.log()
    );
    assert!(daemon.is_running(), "SIGHUP killed the daemon");
    daemon.broker().status().unwrap();

    assert!(
        daemon.stop().success(),
        "SIGTERM is a clean shutdown:\n{}",
        daemon.log()
    );
    assert!(
        !daemon.socket.exists(),
        "the socket file is removed on clean shutdown"
    );

    // A stale socket file (nobody answers) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&daemon.socket).unwrap();
    drop(stale);
    let again = Daemon::start_with(&["--socket", daemon.socket.to_str().unwrap()]);
    again.broker().status().unwrap();
}
