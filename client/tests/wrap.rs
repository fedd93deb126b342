//! The bind shim and `portctl wrap` against a real daemon: unmodified servers from Debian's
//! packages lease their ports by their own bind(), a second one is refused at bind() with the
//! holder named, leases end with their server, and the socket put in place of the program's
//! keeps its fd number, its options and its flags.
//!
//! Servers that are not installed (redis-server, memcached, node) skip their test with a
//! printed reason, unless `CI` is set: CI installs them (.ci/run), so there a missing one fails.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use portbroker::{Broker, LeaseInfo, Transport};
use support::{finish, free_port, preload_shim, wait_until, Daemon};

/// How long a server may take to start serving (node on a loaded CI machine is the slowest).
const START: Duration = Duration::from_secs(20);

/// `portctl wrap -- COMMAND...` for this daemon, with no shim settings of the caller's.
fn wrap(daemon: &Daemon, command: &[String]) -> Command {
    // Built beside portctl, where wrap looks for it.
    preload_shim();
    let mut cmd = daemon.portctl();
    cmd.arg("wrap")
        .arg("--")
        .args(command)
        .env_remove("LD_PRELOAD")
        .env_remove("PORTBROKER_PRELOAD")
        .env_remove("PORTBROKER_SHIM_FALLBACK")
        .env_remove("PORTBROKER_SHIM_VERBOSE")
        .stdin(Stdio::null());
    cmd
}

/// A program of the test machine by name, or why the test is skipped. Under CI a missing
/// program fails the test: CI installs them all.
fn program(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is not installed, and CI must run this test: .ci/run installs the Debian \
             package {package}"
        );
        eprintln!("SKIPPED: {name} is not installed (Debian package {package})");
    }
    found
}

/// A server started under `portctl wrap` (which execs it: the child's pid is the server's),
/// its stdout and stderr in a file; killed when dropped, so that a failing test leaves none.
struct Server {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("spawn portctl wrap");
        Server { child, log }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits until `serves` holds, failing the test if the server exits or takes too long.
    fn wait_serving(&mut self, what: &str, mut serves: impl FnMut() -> bool) {
        let mut exited = None;
        let ok = wait_until(START, || {
            exited = self.child.try_wait().unwrap();
            exited.is_none() && serves()
        });
        assert!(
            ok,
            "{what} did not serve within {START:?} (exit: {exited:?}):\n{}",
            self.log()
        );
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every leased socket whose holder is `pid`.
fn sockets_of(broker: &Broker, pid: i32) -> Vec<(Transport, SocketAddr)> {
    let leases: Vec<LeaseInfo> = broker.list().unwrap();
    leases
        .iter()
        .filter(|lease| lease.holder.pid == pid)
        .flat_map(|lease| lease.sockets.iter().map(|s| (s.transport, s.addr)))
        .collect()
}

/// Every lease that has a socket on `port`.
fn leases_on(broker: &Broker, port: u16) -> Vec<LeaseInfo> {
    broker
        .list()
        .unwrap()
        .into_iter()
        .filter(|lease| lease.sockets.iter().any(|s| s.addr.port() == port))
        .collect()
}

/// Sends `request` to `addr` and says whether the answer starts with `expected`.
fn answers(addr: SocketAddr, request: &[u8], expected: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    // Read until the expected prefix is in, the server closes, or the timeout.
    while answer.len() < expected.len() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer.starts_with(expected.as_bytes())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An unmodified server and how to talk to it.
struct Case {
    name: &'static str,
    /// Its command line, serving TCP on 127.0.0.1:PORT.
    command: fn(&std::path::Path, u16) -> Vec<String>,
    request: &'static [u8],
    answer: &'static str,
}

impl Case {
    fn command(&self, bin: &std::path::Path, port: u16) -> Vec<String> {
        (self.command)(bin, port)
    }
}

/// The server serves on its leased socket on a fixed port and shows up as the holder; a
/// second one on the same port is refused at bind(), names the holder, and does not serve.
fn serves_on_a_fixed_port_and_a_second_is_refused(case: &Case, bin: &std::path::Path) {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let port = free_port();
    let mut first = Server::start(wrap(&daemon, &case.command(bin, port)));
    first.wait_serving(case.name, || {
        answers(loopback(port), case.request, case.answer)
    });
    assert_eq!(
        sockets_of(&broker, first.pid()),
        [(Transport::Tcp, loopback(port))],
        "{} must hold exactly its lease:\n{}",
        case.name,
        first.log()
    );

    let second = wrap(&daemon, &case.command(bin, port))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let second_pid = second.id() as i32;
    let out: Output = finish(second);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second {} started: {out:?}",
        case.name
    );
    let refusal: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("portbroker-preload: "))
        .collect();
    assert_eq!(refusal.len(), 1, "one line from the shim:\n{stderr}");
    assert!(
        refusal[0].contains(&format!("tcp:127.0.0.1:{port} is in use"))
            && refusal[0].contains(&format!("held by pid {} (", first.pid())),
        "the refusal names the port and the holder: {}",
        refusal[0]
    );
    assert_eq!(sockets_of(&broker, second_pid), []);
    let on_port = leases_on(&broker, port);
    assert_eq!(on_port.len(), 1, "{on_port:?}");
    assert_eq!(on_port[0].holder.pid, first.pid());
    assert!(
        answers(loopback(port), case.request, case.answer),
        "the first {} still serves",
        case.name
    );
}

/// The server serves on a port of the broker's pool when asked for port 0.
fn serves_on_a_pool_port(case: &Case, bin: &std::path::Path) {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let mut server = Server::start(wrap(&daemon, &case.command(bin, 0)));
    let pid = server.pid();
    let mut leased = Vec::new();
    server.wait_serving(case.name, || {
        leased = sockets_of(&broker, pid);
        leased.len() == 1 && answers(leased[0].1, case.request, case.answer)
    });
    let port = leased[0].1.port();
    assert!(
        (daemon.pool.0..=daemon.pool.1).contains(&port),
        "port {port} is not from the pool {:?}",
        daemon.pool
    );
    assert_eq!(leased[0], (Transport::Tcp, loopback(port)));
}

const REDIS: Case = Case {
    name: "redis-server",
    // `--port 0` means "no TCP at all" to redis, so redis is tested on fixed ports only.
    command: |bin, port| {
        [
            bin.to_str().unwrap(),
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec()
    },
    request: b"PING\r\n",
    answer: "+PONG",
};

fn memcached_command(bin: &std::path::Path, port: u16) -> Vec<String> {
    let mut args: Vec<String> = [
        bin.to_str().unwrap(),
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-l",
        "127.0.0.1",
    ]
    .map(String::from)
    .to_vec();
    // memcached refuses to run as root unless told which user to be.
    if nix::unistd::geteuid().is_root() {
        args.extend(["-u".into(), "root".into()]);
    }
    args
}

const MEMCACHED: Case = Case {
    name: "memcached",
    // `-p 0` turns memcached's TCP off (it opens TCP only for a non-zero port), so memcached
    // is tested on fixed ports only.
    command: memcached_command,
    request: b"version\r\n",
    answer: "VERSION ",
};

const PYTHON_HTTP: Case = Case {
    name: "python3 -m http.server",
    command: |bin, port| {
        [
            bin.to_str().unwrap(),
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec()
    },
    request: b"GET / HTTP/1.0\r\n\r\n",
    answer: "HTTP/1.0 200",
};

const NODE_HTTP: Case = Case {
    name: "node http server",
    command: |bin, port| {
        vec![
            bin.to_str().unwrap().into(),
            "-e".into(),
            format!(
                "require('http').createServer((q, s) => s.end('ok')).listen({port}, '127.0.0.1')"
            ),
        ]
    },
    request: b"GET / HTTP/1.0\r\n\r\n",
    answer: "HTTP/1.1 200",
};

#[test]
fn redis_serves_on_its_leased_port_and_a_second_redis_is_refused() {
    let Some(bin) = program("redis-server", "redis-server") else {
        return;
    };
    serves_on_a_fixed_port_and_a_second_is_refused(&REDIS, &bin);
}

#[test]
fn memcached_serves_on_its_leased_port_and_a_second_is_refused() {
    let Some(bin) = program("memcached", "memcached") else {
        return;
    };
    serves_on_a_fixed_port_and_a_second_is_refused(&MEMCACHED, &bin);
}

#[test]
fn python_http_server_serves_on_fixed_and_pool_ports() {
    let Some(bin) = program("python3", "python3") else {
        return;
    };
    serves_on_a_fixed_port_and_a_second_is_refused(&PYTHON_HTTP, &bin);
    serves_on_a_pool_port(&PYTHON_HTTP, &bin);
}

#[test]
fn node_http_server_serves_on_fixed_and_pool_ports() {
    let Some(bin) = program("node", "nodejs") else {
        return;
    };
    serves_on_a_fixed_port_and_a_second_is_refused(&NODE_HTTP, &bin);
    serves_on_a_pool_port(&NODE_HTTP, &bin);
}

/// `portctl wrap -- python3 -c CODE ARGS...`.
fn wrap_python(daemon: &Daemon, code: &str, args: &[String]) -> Command {
    let mut command = vec!["python3".to_string(), "-c".into(), code.into()];
    command.extend(args.iter().cloned());
    wrap(daemon, &command)
}

/// Sets options, O_NONBLOCK and FD_CLOEXEC on unbound sockets, binds them through the shim,
/// and prints one JSON line of what each socket is afterwards next to what the kernel makes of
/// the same options on a socket of its own; then holds the sockets until stdin closes.
const OPTIONS_AND_FDS: &str = r#"
import errno, fcntl, json, os, socket, sys, tempfile
S, T, V6 = socket.SOL_SOCKET, socket.IPPROTO_TCP, socket.IPPROTO_IPV6
keep, out = [], {}

def flags(fd):
    return {"nonblock": bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
            "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)}

def case(key, family, kind, host, opts, nonblock, inheritable):
    control = socket.socket(family, kind)
    for level, name, value in opts:
        control.setsockopt(level, name, value)
    s = socket.socket(family, kind)
    for level, name, value in opts:
        s.setsockopt(level, name, value)
    s.setblocking(not nonblock)
    s.set_inheritable(inheritable)
    fd, inode = s.fileno(), os.fstat(s.fileno()).st_ino
    s.bind((host, 0))
    row = {"fd_before": fd, "fd_after": s.fileno(),
           "replaced": os.fstat(fd).st_ino != inode,
           "port": s.getsockname()[1],
           "options": [s.getsockopt(l, n) for l, n, _ in opts],
           "control": [control.getsockopt(l, n) for l, n, _ in opts],
           **flags(fd)}
    if kind == socket.SOCK_STREAM:
        s.listen()
        socket.create_connection((host, row["port"]), timeout=5).close()
        row["accepts"] = True
    out[key] = row
    keep.append(s)
    return s

tcp = case("tcp4", socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1",
           [(S, socket.SO_RCVBUF, 50000), (T, socket.TCP_NODELAY, 1), (S, socket.SO_KEEPALIVE, 1),
            (S, socket.SO_REUSEADDR, 1)], True, False)
case("tcp4_blocking_inheritable", socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1",
     [(S, socket.SO_SNDBUF, 70000)], False, True)
case("udp4", socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1",
     [(S, socket.SO_RCVBUF, 50000), (S, socket.SO_BROADCAST, 1)], True, False)
case("tcp6", socket.AF_INET6, socket.SOCK_STREAM, "::1",
     [(S, socket.SO_RCVBUF, 50000), (T, socket.TCP_NODELAY, 1), (V6, socket.IPV6_V6ONLY, 1)],
     False, False)

# The kernel answers a second bind of a bound socket, as without the shim.
try:
    tcp.bind(("127.0.0.1", 0))
    out["rebind"] = "bound"
except OSError as e:
    out["rebind"] = errno.errorcode[e.errno]

# A Unix socket binds its file, untouched.
path = os.path.join(tempfile.mkdtemp(), "s.sock")
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.bind(path)
out["unix"] = {"name": u.getsockname() == path, "file": os.path.exists(path)}

print(json.dumps(out), flush=True)
sys.stdin.read()
"#;

#[test]
fn options_flags_and_fd_numbers_survive_the_leased_socket() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let (mut child, line) =
        support::spawn_and_read_line(&mut wrap_python(&daemon, OPTIONS_AND_FDS, &[]));
    let pid = child.id() as i32;
    let out: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("not the script's JSON ({e}): {line:?}"));
    let pool = daemon.pool.0..=daemon.pool.1;
    for (key, nonblock, cloexec) in [
        ("tcp4", true, true),
        ("tcp4_blocking_inheritable", false, false),
        ("udp4", true, true),
        ("tcp6", false, true),
    ] {
        let row = &out[key];
        assert_eq!(row["fd_before"], row["fd_after"], "{key}: {row}");
        assert_eq!(
            row["replaced"], true,
            "{key}: the fd must now be the broker's socket: {row}"
        );
        assert_eq!(
            row["options"], row["control"],
            "{key}: options set before bind: {row}"
        );
        assert_eq!(row["nonblock"], nonblock, "{key}: O_NONBLOCK: {row}");
        assert_eq!(row["cloexec"], cloexec, "{key}: FD_CLOEXEC: {row}");
        let port = row["port"].as_u64().unwrap() as u16;
        assert!(
            pool.contains(&port),
            "{key}: port {port} is not from the pool {pool:?}"
        );
        if key != "udp4" {
            assert_eq!(row["accepts"], true, "{key}: {row}");
        }
    }
    assert_eq!(out["rebind"], "EINVAL", "{out}");
    assert_eq!(out["unix"], serde_json::json!({"name": true, "file": true}));

    let port = |key: &str| out[key]["port"].as_u64().unwrap() as u16;
    let mut held = sockets_of(&broker, pid);
    held.sort();
    let mut expected = vec![
        (Transport::Tcp, loopback(port("tcp4"))),
        (Transport::Tcp, loopback(port("tcp4_blocking_inheritable"))),
        (Transport::Udp, loopback(port("udp4"))),
        (
            Transport::Tcp,
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port("tcp6"))),
        ),
    ];
    expected.sort();
    assert_eq!(held, expected, "one lease per bind, held by the program");
    drop(child.stdin.take());
    assert!(finish(child).status.success());
}

/// Names itself argv[2] (control characters and all), binds TCP 127.0.0.1:argv[1], says
/// "ready" and holds the port until stdin closes.
const HOLD_AS: &str = r#"
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[2].encode(), 0, 0, 0)  # PR_SET_NAME
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
sys.stdin.read()
"#;

/// Binds TCP argv[1]:argv[2] and prints "bound PORT", or the errno's name.
const TRY_BIND: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
    print("bound", s.getsockname()[1], flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
"#;

/// The lines the shim wrote (it starts each with its name).
fn shim_lines(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|line| line.starts_with("portbroker-preload: "))
        .map(String::from)
        .collect()
}

#[test]
fn a_refused_bind_fails_with_eaddrinuse_and_one_line_naming_the_holder_escaped() {
    let daemon = Daemon::start();
    let port = free_port();
    let args = [port.to_string(), "evil\x1b[31m".to_string()];
    let (mut holder, ready) =
        support::spawn_and_read_line(&mut wrap_python(&daemon, HOLD_AS, &args));
    assert_eq!(ready, "ready");
    let out = wrap_python(&daemon, TRY_BIND, &["127.0.0.1".into(), port.to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EADDRINUSE");
    let lines = shim_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let expected = format!(
        "lease refused: tcp:127.0.0.1:{port} is in use: lease {} holds tcp:127.0.0.1:{port}, \
         held by pid {} (evil\\x1b[31m, uid {})",
        leases_on(&daemon.broker(), port)[0].id,
        holder.id(),
        nix::unistd::getuid()
    );
    assert!(
        lines[0].ends_with(&expected),
        "{}\nwanted: {expected}",
        lines[0]
    );
    assert!(!out.stderr.contains(&0x1b), "a raw ESC reached stderr");
    drop(holder.stdin.take());
    finish(holder);
}

#[test]
fn killing_a_wrapped_server_ends_its_lease_within_a_second() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let port = free_port();
    let Some(python) = program("python3", "python3") else {
        return;
    };
    let mut server = Server::start(wrap(&daemon, &PYTHON_HTTP.command(&python, port)));
    server.wait_serving("python3 -m http.server", || {
        answers(loopback(port), PYTHON_HTTP.request, PYTHON_HTTP.answer)
    });
    assert_eq!(leases_on(&broker, port).len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = std::time::Instant::now();
    let _ = server.child.wait();
    let ended = wait_until(Duration::from_secs(1), || {
        leases_on(&broker, port).is_empty()
    });
    assert!(
        ended,
        "the lease outlived its killed server by more than a second: {:?}",
        leases_on(&broker, port)
    );
    eprintln!("lease ended {:?} after SIGKILL", killed.elapsed());
    // And the port is free to lease again.
    broker
        .lease([portbroker::SocketSpec::tcp(
            Some(std::net::Ipv4Addr::LOCALHOST.into()),
            port,
        )])
        .expect("the port is free again");
}

/// Binds a pool port, forks three workers that accept on the socket, and prints the port and
/// the workers' pids; a worker exits once its parent is gone (checked every 100 ms), so none
/// outlives the test. SO_REUSEADDR as servers set it: without it, the connections the workers
/// close stay in TIME_WAIT on the port, which no new socket could bind for a minute, and the
/// broker rightly keeps the lease (lingering) until then.
const FORKING_SERVER: &str = r#"
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(16)
parent, workers = os.getpid(), []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        s.settimeout(0.1)
        while os.getppid() == parent:
            try:
                c, _ = s.accept()
            except socket.timeout:
                continue
            c.sendall(b"worker %d\n" % os.getpid())
            c.close()
        os._exit(0)
    workers.append(pid)
print(s.getsockname()[1], *workers, flush=True)
sys.stdin.read()
"#;

#[test]
fn a_server_that_forks_workers_keeps_exactly_one_lease() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let (mut server, line) =
        support::spawn_and_read_line(&mut wrap_python(&daemon, FORKING_SERVER, &[]));
    let mut numbers = line.split_whitespace().map(|n| n.parse::<u32>().unwrap());
    let port = numbers.next().unwrap() as u16;
    let workers: Vec<u32> = numbers.collect();
    assert_eq!(workers.len(), 3, "{line}");
    for _ in 0..9 {
        let mut answer = String::new();
        TcpStream::connect(loopback(port))
            .unwrap()
            .read_to_string(&mut answer)
            .unwrap();
        let worker: u32 = answer.trim().trim_start_matches("worker ").parse().unwrap();
        assert!(
            workers.contains(&worker),
            "{answer:?} is not from {workers:?}"
        );
    }
    let leases = leases_on(&broker, port);
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].holder.pid, server.id() as i32);
    assert_eq!(sockets_of(&broker, server.id() as i32).len(), 1);
    for worker in &workers {
        assert_eq!(
            sockets_of(&broker, *worker as i32),
            [],
            "worker {worker} leased"
        );
    }
    // The lease ends once the server and, after it, its workers are gone.
    server.kill().unwrap();
    let _ = server.wait();
    assert!(
        wait_until(Duration::from_secs(5), || leases_on(&broker, port)
            .is_empty()),
        "the lease outlived the server and its workers: {:?}",
        leases_on(&broker, port)
    );
}

#[test]
fn without_a_broker_wrap_refuses_and_the_fallback_lets_the_program_bind_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("none.sock");
    let mark = dir.path().join("ran");
    preload_shim();
    let portctl = |fallback: bool| {
        let mut cmd = Command::new(support::portctl_bin());
        cmd.arg("wrap")
            .arg("--socket")
            .arg(&nowhere)
            .arg("--")
            .args(["python3", "-c"])
            .env_remove("PORTBROKER_SOCKET")
            .env_remove("LD_PRELOAD")
            .env_remove("PORTBROKER_PRELOAD");
        match fallback {
            true => cmd.env("PORTBROKER_SHIM_FALLBACK", "1"),
            false => cmd.env_remove("PORTBROKER_SHIM_FALLBACK"),
        };
        cmd
    };

    let out = portctl(false)
        .arg(format!("open({:?}, 'w')", mark.display().to_string()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the broker at {}", nowhere.display()))
            && stderr.contains("PORTBROKER_SHIM_FALLBACK=1"),
        "{stderr}"
    );
    assert!(!mark.exists(), "CMD ran without a broker");

    let out = portctl(true)
        .arg(TRY_BIND)
        .args(["127.0.0.1", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("bound "),
        "{out:?}"
    );
    let lines = shim_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("goes to the kernel unleased"),
        "{}",
        lines[0]
    );

    // A broker that goes away under a wrapped program: its binds fail, saying why.
    let out = Command::new("python3")
        .args(["-c", TRY_BIND, "127.0.0.1", "0"])
        .env("LD_PRELOAD", preload_shim())
        .env("PORTBROKER_SOCKET", &nowhere)
        .env_remove("PORTBROKER_SHIM_FALLBACK")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ECONNREFUSED");
    let lines = shim_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(&format!("cannot reach the broker at {}", nowhere.display()))
            && lines[0].contains("PORTBROKER_SHIM_FALLBACK=1"),
        "{}",
        lines[0]
    );
}

/// Binds TCP 0.0.0.0:argv[1], then [::]:argv[1] with IPV6_V6ONLY, as redis and memcached do
/// by default, listens on both and prints each socket's V6ONLY; holds them until stdin closes.
const BOTH_WILDCARDS: &str = r#"
import socket, sys
port = int(sys.argv[1])
v4 = socket.socket(socket.AF_INET)
v4.bind(("0.0.0.0", port))
v6 = socket.socket(socket.AF_INET6)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.bind(("::", port))
v4.listen()
v6.listen()
print(v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), flush=True)
sys.stdin.read()
"#;

#[test]
fn an_ipv4_wildcard_and_an_ipv6_only_wildcard_on_one_port_are_two_leases() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let port = free_port();
    let (mut child, v6_only) = support::spawn_and_read_line(&mut wrap_python(
        &daemon,
        BOTH_WILDCARDS,
        &[port.to_string()],
    ));
    assert_eq!(v6_only, "1", "the leased [::] socket must be IPv6-only");
    let mut held = sockets_of(&broker, child.id() as i32);
    held.sort();
    assert_eq!(
        held,
        [
            (Transport::Tcp, SocketAddr::from(([0, 0, 0, 0], port))),
            (
                Transport::Tcp,
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
            ),
        ]
    );
    drop(child.stdin.take());
    assert!(finish(child).status.success());
}

#[test]
fn redis_with_its_default_bind_leases_both_wildcards() {
    let Some(bin) = program("redis-server", "redis-server") else {
        return;
    };
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let port = free_port();
    // No --bind: redis binds `* -::*`, that is 0.0.0.0 and then IPv6-only [::].
    let command: Vec<String> = [
        bin.to_str().unwrap(),
        "--port",
        &port.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec();
    let mut redis = Server::start(wrap(&daemon, &command));
    let pid = redis.pid();
    redis.wait_serving("redis-server", || {
        sockets_of(&broker, pid).len() == 2 && answers(loopback(port), b"PING\r\n", "+PONG")
    });
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    assert!(answers(v6, b"PING\r\n", "+PONG"), "redis answers on [::1]");
    let log = redis.log();
    assert!(!log.contains("portbroker-preload"), "{log}");
}

/// Eight threads bind pool ports at once, each after its own SO_RCVBUF, while the main thread
/// forks children that bind too (a fork must never catch another thread's lease half-done);
/// prints JSON: each thread's port and SO_RCVBUF next to the kernel's value for the same
/// setting, and each child's exit status (0: it got a pool port; alarm: it hung).
const THREADS_AND_FORKS: &str = r#"
import json, os, signal, socket, sys, threading
lo, hi = int(sys.argv[1]), int(sys.argv[2])
keep, threads_out, children = [], {}, []

def bind(i):
    for j in range(3):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 20000 + 1000 * (3 * i + j))
        s.bind(("127.0.0.1", 0))
        control = socket.socket()
        control.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 20000 + 1000 * (3 * i + j))
        threads_out[f"{i}.{j}"] = [s.getsockname()[1],
                                   s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                                   control.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)]
        keep.append(s)

threads = [threading.Thread(target=bind, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        os._exit(0 if lo <= u.getsockname()[1] <= hi else 1)
    children.append(pid)
for t in threads:
    t.join()
statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
print(json.dumps({"threads": threads_out, "children": statuses}), flush=True)
sys.stdin.read()
"#;

#[test]
fn threads_and_forked_children_bind_at_once_each_with_its_own_options() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let args = [daemon.pool.0.to_string(), daemon.pool.1.to_string()];
    let (mut child, line) =
        support::spawn_and_read_line(&mut wrap_python(&daemon, THREADS_AND_FORKS, &args));
    let out: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("not the script's JSON ({e}): {line:?}"));
    assert_eq!(out["children"], serde_json::json!([0, 0, 0, 0]), "{out}");
    let threads = out["threads"].as_object().unwrap();
    assert_eq!(threads.len(), 24);
    let mut ports: Vec<u64> = Vec::new();
    for (key, row) in threads {
        assert_eq!(
            row[1], row[2],
            "socket {key} has another thread's SO_RCVBUF: {row}"
        );
        let port = row[0].as_u64().unwrap();
        assert!(
            (u64::from(daemon.pool.0)..=u64::from(daemon.pool.1)).contains(&port),
            "{key}: {port} is not a pool port"
        );
        ports.push(port);
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 24, "every bind got a port of its own");
    assert_eq!(sockets_of(&broker, child.id() as i32).len(), 24);
    drop(child.stdin.take());
    assert!(finish(child).status.success());
}

/// The shim where any user can load it: the checkout may lie under a directory others cannot
/// enter (/root, say), so it is copied into a world-readable directory of its own, removed with
/// the returned guard.
fn shim_for_others() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shim = dir.path().join("libportbroker_preload.so");
    std::fs::copy(preload_shim(), &shim).unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, shim)
}

#[test]
fn a_policy_refusal_fails_with_eacces() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root, and this one needs it"
        );
        eprintln!("SKIPPED: running python3 as another user needs root");
        return;
    }
    // The built-in policy: an ordinary user may lease from the pool and from port 1024 up.
    let daemon = Daemon::start_for_all_users(None, &["--no-config"]);
    let (_dir, shim) = shim_for_others();
    let as_nobody = |host: &str, port: &str| {
        support::as_user(
            support::NOBODY,
            &[],
            std::path::Path::new("/usr/bin/python3"),
        )
        .args(["-c", TRY_BIND, host, port])
        .env("LD_PRELOAD", &shim)
        .env("PORTBROKER_SOCKET", &daemon.socket)
        .output()
        .unwrap()
    };
    let out = as_nobody("127.0.0.1", "80");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "EACCES",
        "{out:?}"
    );
    let lines = shim_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("tcp:127.0.0.1:80: lease refused: not permitted"),
        "{}",
        lines[0]
    );
    let out = as_nobody("127.0.0.1", "0");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("bound "),
        "a pool port is the user's to lease: {out:?}"
    );
}

/// Binds TCP 127.0.0.1:argv[1] and closes it, binds it again and holds it; then tries a second
/// socket on the same port while the first is open; then the "free port" helper's way: binds
/// port 0, reads the number, closes, and binds that number. Prints what each bind did.
const REBIND: &str = r#"
import errno, socket, sys
def bind(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return s, s.getsockname()[1]
    except OSError as e:
        return None, errno.errorcode[e.errno]
port = int(sys.argv[1])
first, _ = bind(port)
first.close()
again, a = bind(port)
second, b = bind(port)
probe, number = bind(0)
probe.close()
server, c = bind(number)
print(a, b, number == c, number, flush=True)
sys.stdin.read()
"#;

#[test]
fn a_port_the_program_closed_can_be_bound_again_and_one_it_holds_cannot() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let port = free_port();
    let (mut child, line) =
        support::spawn_and_read_line(&mut wrap_python(&daemon, REBIND, &[port.to_string()]));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words[..3],
        [port.to_string().as_str(), "EADDRINUSE", "True"],
        "closed and bound again; refused while held; a helper's number bound again: {line}"
    );
    let number: u16 = words[3].parse().unwrap();
    let mut held = sockets_of(&broker, child.id() as i32);
    held.sort();
    let mut expected = vec![
        (Transport::Tcp, loopback(port)),
        (Transport::Tcp, loopback(number)),
    ];
    expected.sort();
    assert_eq!(held, expected, "the closed sockets' leases are gone");
    drop(child.stdin.take());
    assert!(finish(child).status.success());
}
