//! The daemon under systemd, without systemd: the test plays the service manager. It opens the
//! notification socket itself (a Unix datagram socket, as `NOTIFY_SOCKET` names), passes fds as
//! `LISTEN_FDS` does, and keeps the fds sent to its "fd store". Needs no root and no running
//! systemd; socket activation uses `/usr/bin/systemd-socket-activate` when it exists.

mod support;

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use portbroker::Broker;
use support::{portbrokerd_bin, wait_listening, wait_until};

/// One notification: its text and the fds that came with it (closed when dropped).
struct Message {
    text: String,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The test's end of `NOTIFY_SOCKET`, with everything received so far.
struct Manager {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<Message>,
}

impl Manager {
    fn new(dir: &Path) -> Manager {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Manager {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Receives one message, waiting until `deadline` at most.
    fn recv(&mut self, deadline: Instant) -> Option<Message> {
        let left = deadline.checked_duration_since(Instant::now())?;
        self.socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 16]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::errno::Errno::EAGAIN) => return None,
            Err(err) => panic!("recvmsg on the notify socket: {err}"),
        };
        assert!(
            !msg.flags.contains(MsgFlags::MSG_CTRUNC),
            "fds were cut off"
        );
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just gave us these fds; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(Message { text, fds })
    }

    /// Receives until a message satisfies `wanted` (returning its index in `seen`), or fails
    /// the test after `limit`, showing what came and the daemon's log.
    fn wait_for(
        &mut self,
        limit: Duration,
        what: &str,
        log: &dyn Fn() -> String,
        wanted: impl Fn(&Message) -> bool,
    ) -> usize {
        let deadline = Instant::now() + limit;
        if let Some(i) = self.seen.iter().position(&wanted) {
            return i;
        }
        while let Some(msg) = self.recv(deadline) {
            let hit = wanted(&msg);
            self.seen.push(msg);
            if hit {
                return self.seen.len() - 1;
            }
        }
        let texts: Vec<&str> = self.seen.iter().map(|m| m.text.as_str()).collect();
        panic!(
            "no {what} within {limit:?}; received {texts:#?}\ndaemon log:\n{}",
            log()
        );
    }

    /// Forgets what was received (closing its fds), so that the next wait sees only new ones.
    fn clear(&mut self) {
        self.seen.clear();
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("portbrokerd.log")).unwrap_or_default()
}

/// A port the policy reserves, and the policy file that says so.
fn reserving_policy(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("portbroker.toml");
    std::fs::write(&path, format!("[reserve]\ntcp = [\"{port}\"]\n")).unwrap();
    path
}

/// The arguments of a `portbrokerd` with its socket (and so its journal) in `dir`, the policy
/// `config` and a pool of its own.
fn daemon_args(dir: &Path, config: &Path, pool: &str) -> Vec<std::ffi::OsString> {
    vec![
        "-v".into(),
        "--socket".into(),
        dir.join("portbroker.sock").into(),
        "--config".into(),
        config.into(),
        "--pool".into(),
        pool.into(),
    ]
}

/// [`daemon_args`] as a command with `NOTIFY_SOCKET` and its log in `dir`.
fn daemon_command(dir: &Path, config: &Path, notify: &Path, pool: &str) -> Command {
    let log = std::fs::File::create(dir.join("portbrokerd.log")).unwrap();
    let mut cmd = Command::new(portbrokerd_bin());
    cmd.args(daemon_args(dir, config, pool))
        .env_remove("RUST_LOG")
        .env_remove("PORTBROKER_CONFIG")
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn wait_exit(child: &mut Child, log: &dyn Fn() -> String) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap_or_else(|| panic!("portbrokerd did not exit within 10 s:\n{}", log()))
}

/// The local port of a socket fd (IPv4 or IPv6).
fn local_port(fd: impl AsFd) -> Option<u16> {
    let addr: nix::sys::socket::SockaddrStorage =
        nix::sys::socket::getsockname(fd.as_fd().as_raw_fd()).ok()?;
    addr.as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| addr.as_sockaddr_in6().map(|a| a.port()))
}

fn inode(fd: impl AsFd) -> u64 {
    nix::sys::stat::fstat(fd.as_fd()).unwrap().st_ino
}

/// Whether anything can bind `port` (TCP) on any address: it must not while reserved.
fn bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        || std::net::TcpListener::bind(("::", port)).is_ok()
}

fn monotonic_usec() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

const LIMIT: Duration = Duration::from_secs(10);

/// Everything the daemon tells the service manager over its life, in order: the reservation
/// stored before READY=1, STATUS=, the watchdog from the loop, RELOADING=1 then READY=1 on a
/// reload, FDSTOREREMOVE=1 when a lease takes the reserved port (and FDSTORE=1 again when it
/// comes back), STOPPING=1 at SIGTERM.
#[test]
fn the_daemon_tells_systemd_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let log = || read_log(dir.path());
    let mut manager = Manager::new(dir.path());
    let port = support::free_port();
    let config = reserving_policy(dir.path(), port);
    let mut daemon = Killed(
        daemon_command(dir.path(), &config, &manager.path, "63000-63099")
            .env("WATCHDOG_USEC", "200000")
            .spawn()
            .unwrap(),
    );
    let name = format!("reserve-tcp-{port}");

    let ready = manager.wait_for(LIMIT, "READY=1", &log, |m| m.has("READY=1"));
    let stored = manager.wait_for(LIMIT, "FDSTORE=1 of the reservation", &log, |m| {
        m.has("FDSTORE=1") && m.value("FDNAME") == Some(name.as_str())
    });
    assert!(stored < ready, "the reservation is stored before READY=1");
    let fds = &manager.seen[stored].fds;
    assert_eq!(fds.len(), 1, "exactly one fd with FDSTORE=1");
    assert_eq!(
        local_port(&fds[0]),
        Some(port),
        "the stored fd is bound to the port"
    );
    assert!(!bindable(port), "the reservation holds the port");
    manager.wait_for(LIMIT, "STATUS=", &log, |m| {
        m.value("STATUS").is_some_and(|s| s.contains("0 leases"))
    });

    // The watchdog comes from the loop every 100 ms: several within a second or two.
    let start = manager.seen.len();
    let deadline = Instant::now() + LIMIT;
    while manager.seen[start..]
        .iter()
        .filter(|m| m.has("WATCHDOG=1"))
        .count()
        < 4
    {
        let msg = manager
            .recv(deadline)
            .unwrap_or_else(|| panic!("fewer than 4 WATCHDOG=1 within {LIMIT:?}:\n{}", log()));
        manager.seen.push(msg);
    }

    // A reload: RELOADING=1 with the monotonic time, then READY=1.
    manager.clear();
    let before = monotonic_usec();
    signal(&daemon.0, nix::sys::signal::Signal::SIGHUP);
    let reloading = manager.wait_for(LIMIT, "RELOADING=1", &log, |m| m.has("RELOADING=1"));
    let stamp: u64 = manager.seen[reloading]
        .value("MONOTONIC_USEC")
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(
        stamp >= before && stamp <= monotonic_usec(),
        "MONOTONIC_USEC is CLOCK_MONOTONIC"
    );
    let ready = manager.wait_for(LIMIT, "READY=1 after the reload", &log, |m| {
        m.has("READY=1")
    });
    assert!(ready > reloading);

    // `portctl reload` does the same (root is an administrator; CI runs as root).
    if nix::unistd::geteuid().is_root() {
        manager.clear();
        let out = Command::new(support::portctl_bin())
            .env("PORTBROKER_SOCKET", dir.path().join("portbroker.sock"))
            .arg("reload")
            .output()
            .unwrap();
        assert!(out.status.success(), "portctl reload: {out:?}");
        let reloading = manager.wait_for(LIMIT, "RELOADING=1 (portctl)", &log, |m| {
            m.has("RELOADING=1")
        });
        let ready = manager.wait_for(LIMIT, "READY=1 (portctl)", &log, |m| m.has("READY=1"));
        assert!(ready > reloading);
    }

    // A lease of the reserved port takes the held socket: it leaves the store. Playing
    // systemd, the test then closes its copy, as systemd does.
    // (Its copy from FDSTORE=1 was closed with `clear` above.)
    manager.clear();
    let broker = Broker::connect_to(dir.path().join("portbroker.sock")).unwrap();
    let lease = broker
        .lease_str(&[&format!("tcp:{port}")])
        .unwrap_or_else(|e| panic!("lease of the reserved port: {e}\n{}", log()));
    manager.wait_for(
        LIMIT,
        "FDSTOREREMOVE=1 when the port is leased",
        &log,
        |m| m.has("FDSTOREREMOVE=1") && m.value("FDNAME") == Some(name.as_str()),
    );
    manager.wait_for(LIMIT, "STATUS= with the lease", &log, |m| {
        m.value("STATUS").is_some_and(|s| s.contains("1 leases"))
    });
    lease.release().unwrap();
    let back = manager.wait_for(LIMIT, "FDSTORE=1 when the reservation is back", &log, |m| {
        m.has("FDSTORE=1") && m.value("FDNAME") == Some(name.as_str())
    });
    assert_eq!(manager.seen[back].fds.len(), 1);
    drop(broker);

    signal(&daemon.0, nix::sys::signal::Signal::SIGTERM);
    manager.wait_for(LIMIT, "STOPPING=1", &log, |m| m.has("STOPPING=1"));
    assert!(wait_exit(&mut daemon.0, &log).success(), "{}", log());
}

/// A test port must be free as a reservation sees it. A socket in TIME_WAIT (the server's end
/// of a connection it closed first) keeps a reservation's bind, which has no SO_REUSEADDR, out
/// for up to a minute; a probe with SO_REUSEADDR binds beside it. CI once failed so: the port
/// the test reserved had served a connection of an earlier test binary.
#[test]
fn a_port_in_time_wait_is_not_a_free_test_port() {
    let port = support::free_port();
    assert!(support::port_is_free(port));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (served, _) = listener.accept().unwrap();
    drop(served); // the server closes first: its end goes to TIME_WAIT
    let mut byte = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut client, &mut byte).unwrap(), 0);
    drop(client);
    drop(listener);
    let in_time_wait = || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let local = format!("0100007F:{port:04X}");
        table.lines().any(|l| {
            l.split_whitespace().nth(1) == Some(&local) && l.split_whitespace().nth(3) == Some("06")
        })
    };
    assert!(in_time_wait(), "no TIME_WAIT on 127.0.0.1:{port}");
    assert!(
        !support::port_is_free(port),
        "port {port} is in TIME_WAIT, and a reservation of it would fail"
    );
}

/// Socket activation as a socket unit does it: `systemd-socket-activate` listens, the first
/// client's connection starts the daemon on the inherited listener, the lease is served, and
/// the socket file, systemd's, outlives the daemon.
#[test]
fn a_socket_activated_daemon_serves_on_the_inherited_listener() {
    const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";
    if !Path::new(ACTIVATE).exists() {
        println!("SKIPPED: {ACTIVATE} is missing (Debian: apt-get install systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = || read_log(dir.path());
    let mut manager = Manager::new(dir.path());
    let socket = dir.path().join("portbroker.sock");
    let logfile = std::fs::File::create(dir.path().join("portbrokerd.log")).unwrap();
    let mut activator = Killed(
        Command::new(ACTIVATE)
            .arg("-l")
            .arg(&socket)
            .arg("--fdname=portbroker.sock")
            .args(["-E", "NOTIFY_SOCKET"])
            .arg(portbrokerd_bin())
            .arg("-v")
            .arg("--socket")
            .arg(&socket)
            .args(["--no-config", "--pool", "63100-63199"])
            .env("NOTIFY_SOCKET", &manager.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .unwrap(),
    );
    // systemd-socket-activate listens before it starts anything.
    let listening = wait_until(LIMIT, || socket.exists());
    assert!(
        listening,
        "systemd-socket-activate did not listen on {}:\n{}",
        socket.display(),
        log()
    );

    // The first connection starts the daemon, which answers it on the inherited listener. The
    // file appears when systemd-socket-activate binds, a moment before it listens: until then a
    // connection is refused, so try again.
    let mut connected = None;
    let mut last_error = None;
    wait_until(LIMIT, || match Broker::connect_to(&socket) {
        Ok(broker) => {
            connected = Some(broker);
            true
        }
        Err(e) => {
            last_error = Some(e);
            false
        }
    });
    let broker = connected
        .unwrap_or_else(|| panic!("connect through activation: {last_error:?}\n{}", log()));
    let lease = broker
        .lease([support::loopback_any()])
        .unwrap_or_else(|e| panic!("lease through activation: {e}\n{}", log()));
    let port = lease.local_addr().port();
    assert!(
        (63100..=63199).contains(&port),
        "{port} comes from the daemon's pool"
    );
    manager.wait_for(LIMIT, "READY=1", &log, |m| m.has("READY=1"));
    lease.release().unwrap();
    drop(broker);

    signal(&activator.0, nix::sys::signal::Signal::SIGTERM);
    manager.wait_for(LIMIT, "STOPPING=1", &log, |m| m.has("STOPPING=1"));
    wait_exit(&mut activator.0, &log);
    assert!(
        socket.exists(),
        "the daemon removed systemd's socket file {}:\n{}",
        socket.display(),
        log()
    );
}

/// A reservation survives a crash through the fd store: the first daemon stores it, is killed
/// with SIGKILL, and the next one, given the stored fd through LISTEN_FDS as systemd does,
/// holds the very same socket; the port is bound at every moment the test looks.
#[test]
fn reservations_survive_a_crash_through_the_fd_store() {
    let dir = tempfile::tempdir().unwrap();
    let log = || read_log(dir.path());
    let mut manager = Manager::new(dir.path());
    let port = support::free_port();
    let config = reserving_policy(dir.path(), port);
    let name = format!("reserve-tcp-{port}");
    let socket = dir.path().join("portbroker.sock");

    let mut first = Killed(
        daemon_command(dir.path(), &config, &manager.path, "63200-63299")
            .spawn()
            .unwrap(),
    );
    let stored = manager.wait_for(LIMIT, "FDSTORE=1 of the reservation", &log, |m| {
        m.has("FDSTORE=1") && m.value("FDNAME") == Some(name.as_str())
    });
    manager.wait_for(LIMIT, "READY=1", &log, |m| m.has("READY=1"));
    let mut fds = std::mem::take(&mut manager.seen[stored].fds);
    assert_eq!(fds.len(), 1);
    let kept = fds.pop().unwrap();
    let ino = inode(&kept);
    assert!(!bindable(port));

    // A crash: the daemon's own fd is gone, the store's copy holds the port.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(!bindable(port), "the port came free when the daemon died");

    // systemd restarts it with the store's fds at 3.. and their names.
    manager.clear();
    let helper = "import os, sys\n\
                  os.environ['LISTEN_PID'] = str(os.getpid())\n\
                  os.execv(sys.argv[1], sys.argv[1:])";
    let kept_raw = kept.as_raw_fd();
    let mut restart = Command::new("python3");
    restart
        .args(["-c", helper])
        .arg(portbrokerd_bin())
        .args(daemon_args(dir.path(), &config, "63200-63299"))
        .env_remove("RUST_LOG")
        .env_remove("PORTBROKER_CONFIG")
        .env("NOTIFY_SOCKET", &manager.path)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", &name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("portbrokerd.log")).unwrap());
    // SAFETY: only dup2/fcntl, which are async-signal-safe, between fork and exec.
    unsafe {
        restart.pre_exec(move || {
            let r = if kept_raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(kept_raw, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut second = Killed(restart.spawn().unwrap());
    let started = wait_until(LIMIT, || {
        assert!(!bindable(port), "the port came free during the restart");
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    assert!(started, "the restarted daemon did not listen:\n{}", log());
    wait_listening(&mut second.0, &socket, || {
        dir.path().join("portbrokerd.log")
    });
    manager.wait_for(LIMIT, "READY=1 of the restarted daemon", &log, |m| {
        m.has("READY=1")
    });
    assert!(
        !manager
            .seen
            .iter()
            .any(|m| m.value("FDNAME") == Some(name.as_str())),
        "the restarted daemon took the stored reservation back as it was, without storing or \
         removing anything: {:?}",
        manager.seen.iter().map(|m| &m.text).collect::<Vec<_>>()
    );

    // The same socket: the daemon holds an fd of that inode, and with the test's copy closed
    // the port stays bound.
    let held = std::fs::read_dir(format!("/proc/{}/fd", second.0.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target.to_string_lossy() == format!("socket:[{ino}]"));
    assert!(
        held,
        "the restarted daemon does not hold socket inode {ino}:\n{}",
        log()
    );
    drop(kept);
    assert!(
        !bindable(port),
        "the restarted daemon does not hold the port"
    );

    // And a lease of the port gets that very socket, listening.
    let broker = Broker::connect_to(&socket).unwrap();
    let lease = broker
        .lease_str(&[&format!("tcp:{port}")])
        .unwrap_or_else(|e| panic!("lease of the reserved port: {e}\n{}", log()));
    let listener = lease.tcp_listener().expect("a TCP listener");
    assert_eq!(
        inode(listener),
        ino,
        "the lease got another socket than the stored one"
    );
    manager.wait_for(
        LIMIT,
        "FDSTOREREMOVE=1 when the port is leased",
        &log,
        |m| m.has("FDSTOREREMOVE=1") && m.value("FDNAME") == Some(name.as_str()),
    );
    lease.release().unwrap();
    drop(broker);
    signal(&second.0, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut second.0, &log).success(), "{}", log());
}
