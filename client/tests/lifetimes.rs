//! Time-limited leases: they end at their deadline unless renewed, and their holder is told.

mod support;

use std::time::{Duration, Instant, SystemTime};

use portbroker::proto::LeaseState;
use portbroker::LeaseId;
use support::{loopback_any, wait_until, Daemon};

/// Polls the lease table from another connection until `id` is gone; returns when that was.
fn gone_at(daemon: &Daemon, id: LeaseId, limit: Duration) -> SystemTime {
    let watcher = daemon.broker();
    let gone = wait_until(limit, || {
        !watcher.list().unwrap().iter().any(|l| l.id == id)
    });
    assert!(
        gone,
        "lease {id} still listed after {limit:?}:\n{}",
        daemon.log()
    );
    SystemTime::now()
}

fn late_by(deadline: SystemTime, at: SystemTime) -> Duration {
    at.duration_since(deadline).unwrap_or_else(|early| {
        panic!("the lease ended {:?} before its deadline", early.duration())
    })
}

#[test]
fn a_time_limited_lease_expires_on_time_and_its_holder_is_told() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    // Long enough that a stalled test thread does not see it expire before it looks; the
    // deadline itself is what the lateness is measured from.
    let lease = broker
        .lease_for([loopback_any()], Duration::from_secs(2))
        .unwrap();
    let listed = broker.list().unwrap();
    let info = listed.iter().find(|l| l.id == lease.id()).unwrap();
    let deadline_ms = info
        .expires_unix_ms
        .expect("a time-limited lease lists its deadline");
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(deadline_ms);
    assert!(!lease.is_expired().unwrap());

    let late = late_by(
        deadline,
        gone_at(&daemon, lease.id(), Duration::from_secs(5)),
    );
    // The expiry timer fires at the deadline; 500 ms leaves room for a loaded machine's
    // scheduling and the polling, and still catches an expiry found only by a later sweep.
    assert!(
        late <= Duration::from_millis(500),
        "expired {late:?} after its deadline"
    );
    assert!(wait_until(Duration::from_secs(2), || lease
        .is_expired()
        .unwrap()));
    assert!(!lease.is_revoked().unwrap());
    eprintln!("expired {late:?} after the deadline");
    // The holder still has the socket, so the kernel keeps the port: a new lease of it is
    // refused until the holder closes its copy, and granted after.
    let spec = format!("tcp:{}", lease.local_addr());
    let err = daemon.broker().lease_str(&[&spec]).unwrap_err();
    assert_eq!(err.kind(), portbroker::ErrorKind::InUseOutside, "{err}");
    drop(lease);
    support::lease_again(&daemon.broker(), &spec).expect("free once the holder closed it");
}

#[test]
fn renewal_extends_a_lease_and_a_zero_limit_removes_it() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    // Each renewal comes half a limit after the last: a stall of the test of up to half a
    // limit cannot let the lease expire before it is renewed.
    const LIMIT: Duration = Duration::from_millis(1500);
    let lease = broker.lease_for([loopback_any()], LIMIT).unwrap();
    let started = Instant::now();
    // Renew twice, each time before the limit, for twice the first limit in all.
    let mut deadline = None;
    for _ in 0..2 {
        let due = started.elapsed() + LIMIT / 2;
        wait_until(Duration::from_secs(5), || started.elapsed() >= due);
        deadline = lease.renew(LIMIT).unwrap();
    }
    assert!(started.elapsed() >= LIMIT, "renewed past the first limit");
    assert!(
        broker.list().unwrap().iter().any(|l| l.id == lease.id()),
        "a renewed lease lives on"
    );
    let late = late_by(
        deadline.unwrap(),
        gone_at(&daemon, lease.id(), Duration::from_secs(5)),
    );
    assert!(
        late <= Duration::from_millis(500),
        "expired {late:?} after its renewed deadline"
    );

    let unlimited = broker
        .lease_for([loopback_any()], Duration::from_secs(1))
        .unwrap();
    assert_eq!(unlimited.renew(Duration::ZERO).unwrap(), None);
    // Past the limit it had: still there.
    let later = Instant::now() + Duration::from_millis(1200);
    wait_until(Duration::from_secs(5), || Instant::now() >= later);
    let listed = broker.list().unwrap();
    let info = listed
        .iter()
        .find(|l| l.id == unlimited.id())
        .expect("no limit: still there");
    assert_eq!(info.expires_unix_ms, None);
}

#[test]
fn renewing_an_unknown_lease_is_an_error() {
    let daemon = Daemon::start();
    let lease = daemon.broker().lease_str(&["tcp:127.0.0.1:0"]).unwrap();
    let err = daemon
        .broker()
        .renew(LeaseId(lease.id().0 + 1000), Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(err.kind(), portbroker::ErrorKind::UnknownLease, "{err}");
}

#[test]
fn portctl_renew_sets_and_removes_a_time_limit() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let lease = broker.lease_str(&["tcp:127.0.0.1:0"]).unwrap();
    let id = lease.id().0.to_string();
    let out = daemon
        .portctl()
        .args(["renew", &id, "60"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("lease {id} expires at ")));
    let listed = broker.list().unwrap();
    let expires = listed[0].expires_unix_ms.expect("a deadline");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        (now + 55_000..=now + 61_000).contains(&expires),
        "{expires} vs now {now}"
    );
    let out = daemon.portctl().args(["renew", &id, "0"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("lease {id} has no time limit\n")
    );
    let bad = daemon
        .portctl()
        .args(["renew", &id, "-1"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "{bad:?}");
    let unknown = daemon
        .portctl()
        .args(["renew", "999999", "5"])
        .output()
        .unwrap();
    assert!(!unknown.status.success(), "{unknown:?}");
}

/// `portctl run` ties its lease to the program it starts: killing portctl (SIGKILL, no chance
/// to clean up) leaves the program serving and its lease listed, until the program exits.
#[test]
fn a_lease_tied_to_the_program_outlives_a_killed_portctl() {
    use std::io::{Read, Write};
    let daemon = Daemon::start();
    // Serves each connection with its pid, until its stdin closes.
    let server = "import os, select, socket, sys\n\
                  s = socket.socket(fileno=3)\n\
                  print('ready', flush=True)\n\
                  while True:\n\
                  \x20   r, _, _ = select.select([s, sys.stdin], [], [])\n\
                  \x20   if sys.stdin in r: break\n\
                  \x20   c, _ = s.accept(); c.sendall(str(os.getpid()).encode()); c.close()";
    let (mut portctl, ready) = support::spawn_and_read_line(
        daemon
            .portctl()
            .args(support::run_python("tcp:127.0.0.1:0", server)),
    );
    assert_eq!(ready.trim(), "ready");
    let broker = daemon.broker();
    let mut lease = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            lease = broker.list().unwrap().into_iter().next();
            lease
                .as_ref()
                .is_some_and(|l| l.holder.pid != portctl.id() as i32)
        }),
        "the lease was never tied to the program: {lease:?}"
    );
    let lease = lease.unwrap();
    let program_pid = lease.holder.pid;
    let ask = || {
        let mut conn = std::net::TcpStream::connect(lease.sockets[0].addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    };
    assert_eq!(ask(), program_pid.to_string());

    let mut stdin = portctl.stdin.take().unwrap();
    portctl.kill().unwrap(); // SIGKILL
    portctl.wait().unwrap();
    // The connection that leased is gone; the lease and the server are not.
    assert_eq!(ask(), program_pid.to_string());
    assert!(
        broker.list().unwrap().iter().any(|l| l.id == lease.id),
        "the lease must stay listed"
    );

    // The program exits (its stdin closes): the lease ends with it.
    stdin.write_all(b"bye\n").unwrap();
    drop(stdin);
    assert!(
        wait_until(Duration::from_secs(1), || broker.list().unwrap().is_empty()),
        "the lease outlived its program:\n{}",
        daemon.log()
    );
}

/// A grandchild forked by the holder keeps a leased socket after the holder exits: the lease
/// lingers (listed, held by the grandchild) and the port is not granted; once the grandchild
/// exits, the port is free again within a second.
#[test]
fn a_socket_surviving_in_a_grandchild_keeps_the_port_out_of_reach_until_it_closes() {
    use std::io::Write;
    let daemon = Daemon::start();
    let port = support::free_port();
    let spec = format!("tcp:127.0.0.1:{port}");
    // The program forks a child that keeps fd 3 and waits for its stdin to close, and exits.
    let program = "import os, sys\n\
                   if os.fork() == 0:\n\
                   \x20   print('grandchild', os.getpid(), flush=True)\n\
                   \x20   sys.stdin.read()\n\
                   \x20   os._exit(0)\n\
                   os._exit(0)";
    let (mut portctl, line) =
        support::spawn_and_read_line(daemon.portctl().args(support::run_python(&spec, program)));
    let grandchild: i32 = line
        .trim()
        .strip_prefix("grandchild ")
        .unwrap()
        .parse()
        .unwrap();
    let mut grandchild_stdin = portctl.stdin.take().unwrap();
    assert!(
        portctl.wait().unwrap().success(),
        "portctl exits with its program"
    );

    let broker = daemon.broker();
    let mut listed = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            listed = broker.list().unwrap();
            listed
                .first()
                .is_some_and(|l| l.state == LeaseState::Lingering)
        }),
        "the lease must linger while the grandchild holds the socket: {listed:?}\n{}",
        daemon.log()
    );
    assert_eq!(
        listed[0].holder.pid, grandchild,
        "the holder shown is the process with the copy"
    );
    let err = daemon.broker().lease_str(&[&spec]).unwrap_err();
    assert!(err.is_in_use(), "a lingering port is not granted: {err}");

    grandchild_stdin.write_all(b"exit\n").unwrap();
    drop(grandchild_stdin);
    let exited = Instant::now();
    // The lingering check comes every 100 ms; 5 s is room for a loaded machine to reap the
    // grandchild, not a slower promise.
    assert!(
        wait_until(Duration::from_secs(5), || broker.list().unwrap().is_empty()),
        "still lingering 5 s after the grandchild exited:\n{}",
        daemon.log()
    );
    support::lease_again(&daemon.broker(), &spec).expect("the port is free again");
    eprintln!(
        "free {:?} after the grandchild was told to exit",
        exited.elapsed()
    );
}

/// A named service whose server crashed keeps its ports for the same user for the policy's
/// grace period: nobody else gets them, the restarted server does, and after the grace period
/// they are free.
#[test]
fn a_sticky_service_keeps_its_port_for_its_restarted_server() {
    let port = support::free_port();
    let policy = format!("[services.web]\nsockets = [\"tcp:127.0.0.1:{port}\"]\nsticky_secs = 1\n");
    let daemon = Daemon::start_for_all_users(Some(&policy), &[]);
    let spec = format!("tcp:127.0.0.1:{port}");
    let start_server = || {
        let (portctl, line) =
            support::spawn_and_read_line(daemon.portctl().args(support::run_python(
                "web",
                "import os, sys; print(os.getpid(), flush=True); sys.stdin.read()",
            )));
        let server: i32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no server: {line:?}\n{}", daemon.log()));
        (portctl, server)
    };
    let crash = |server: i32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    };
    let broker = daemon.broker();

    let (mut first, server) = start_server();
    crash(server);
    first.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || broker
            .list()
            .unwrap()
            .first()
            .is_some_and(|l| l.expires_unix_ms.is_some())),
        "the crashed server's port is kept: {:?}\n{}",
        broker.list(),
        daemon.log()
    );
    let err = daemon.broker().lease_str(&[&spec]).unwrap_err();
    assert!(err.is_in_use(), "nobody else gets a kept port: {err}");

    // The restarted server gets it back.
    let (mut second, server) = start_server();
    let listed = broker.list().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].sockets[0].addr.port(), port);
    assert_eq!(
        listed[0].expires_unix_ms, None,
        "a live server's lease has no deadline"
    );

    // After a crash with no restart, the grace period ends and the port is free.
    // Timed from before the crash: the grace period starts when the daemon sees the server
    // die, later, so only a grace period shorter than promised can come out short here.
    let crashed = Instant::now();
    crash(server);
    second.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || broker.list().unwrap().is_empty()),
        "{}",
        daemon.log()
    );
    let kept_for = crashed.elapsed();
    assert!(
        kept_for >= Duration::from_millis(900),
        "kept only {kept_for:?} of the 1 s grace period"
    );
    support::lease_again(&daemon.broker(), &spec).expect("free after the grace period");
}

/// Reserved ports are held by the broker from start-up: nothing outside it can bind them, a
/// lease gets the held socket, and after the lease the broker holds the port again.
#[test]
fn reserved_ports_are_out_of_reach_except_through_a_lease() {
    let port = support::free_port();
    let policy = format!("[reserve]\ntcp = [\"{port}\"]\n");
    let daemon = Daemon::start_for_all_users(Some(&policy), &[]);
    let outside_bind = |addr: &str| std::net::TcpListener::bind((addr, port)).is_ok();
    let held = || !outside_bind("127.0.0.1") && !outside_bind("0.0.0.0");
    assert!(
        wait_until(Duration::from_secs(5), held),
        "the reservation does not hold:\n{}",
        daemon.log()
    );

    let broker = daemon.broker();
    let lease = broker.lease_str(&[&format!("tcp:{port}")]).unwrap();
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the leased reservation listens");
    lease.release().unwrap();
    assert!(
        wait_until(Duration::from_secs(1), held),
        "not reserved again after the lease"
    );

    // A lease of one address of a reserved port takes the reservation down and puts it back.
    let specific = broker
        .lease_str(&[&format!("tcp:127.0.0.1:{port}")])
        .unwrap();
    assert_eq!(specific.local_addr().port(), port);
    drop(specific);
    assert!(
        wait_until(Duration::from_secs(1), held),
        "not reserved again after the lease"
    );
}

/// With `reserve_in_kernel`, the pool joins `net.ipv4.ip_local_reserved_ports` of the daemon's
/// network namespace. The daemon runs in a namespace of the test's own (`unshare --net`), so
/// the host's setting is never touched.
#[test]
fn the_pool_can_be_reserved_in_the_kernel_of_the_daemons_namespace() {
    use std::process::{Command, Stdio};
    const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let host_before = std::fs::read_to_string(RESERVED).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portbroker.toml");
    std::fs::write(
        &config,
        "[pool]\nrange = \"40000-40099\"\nreserve_in_kernel = true\n",
    )
    .unwrap();
    let socket = dir.path().join("portbroker.sock");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut daemon = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(support::portbrokerd_bin())
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let up = wait_until(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(up, "the daemon did not start in its namespace:\n{}", log());
    let inside = Command::new("nsenter")
        .args(["-t", &daemon.id().to_string(), "-n", "cat", RESERVED])
        .output()
        .unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let inside = String::from_utf8_lossy(&inside.stdout);
    assert!(
        inside.split(',').any(|e| e.trim() == "40000-40099"),
        "reserved in the namespace: {inside:?}\n{}",
        log()
    );
    assert_eq!(
        std::fs::read_to_string(RESERVED).unwrap(),
        host_before,
        "the host's setting is untouched"
    );
}

/// Handover under load: while a client connects in a tight loop, holder A offers its lease, B
/// claims it (same id, same listening socket), A stops and closes its copy. No connection is
/// refused, and the lease is B's.
#[test]
fn a_handover_under_load_refuses_no_connection() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Accepts until `stop`, answering each connection with `name`.
    fn serve(
        listener: TcpListener,
        name: u8,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<usize> {
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let _ = conn.write_all(&[name]);
                        served += 1;
                    }
                    Err(_) => std::thread::park_timeout(Duration::from_millis(1)),
                }
            }
            served // the listener (this holder's copy) closes here
        })
    }
    fn listener_of(sockets: Vec<portbroker::LeasedSocket>) -> TcpListener {
        match sockets.into_iter().next() {
            Some(portbroker::LeasedSocket::TcpListener(listener)) => listener,
            other => panic!("not a listener: {other:?}"),
        }
    }

    let daemon = Daemon::start();
    let holder_a = daemon.broker();
    let lease = holder_a.lease_str(&["tcp:127.0.0.1:0"]).unwrap();
    let (addr, id) = (lease.local_addr(), lease.id());
    let (token, sockets) = lease.handover().unwrap();
    let stop_a = Arc::new(AtomicBool::new(false));
    let a = serve(listener_of(sockets), b'A', stop_a.clone());

    // The load: bounded in count and time; every connection must be answered.
    let stop_load = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, refused, answers) = (stop_load.clone(), refused.clone(), answers.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(10) {
                    break;
                }
                match TcpStream::connect(addr) {
                    Ok(mut conn) => {
                        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut who = [0u8];
                        if conn.read_exact(&mut who).is_ok() {
                            answers.lock().unwrap().push(who[0]);
                        }
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let answered = |by: u8, at_least: usize| {
        let answers = answers.clone();
        wait_until(Duration::from_secs(5), move || {
            answers.lock().unwrap().iter().filter(|&&w| w == by).count() >= at_least
        })
    };
    assert!(answered(b'A', 50), "A never served the load");

    let holder_b = daemon.broker();
    let mut claimed = holder_b.claim(token).unwrap();
    assert_eq!(claimed.id(), id, "the lease keeps its id");
    assert_eq!(claimed.local_addr(), addr);
    let stop_b = Arc::new(AtomicBool::new(false));
    let b = serve(listener_of(claimed.take_sockets()), b'B', stop_b.clone());
    stop_a.store(true, Ordering::Relaxed);
    let served_by_a = a.join().unwrap();
    drop(holder_a); // A is gone; the lease is B's now
    let before = answers.lock().unwrap().len();
    assert!(answered(b'B', 50), "B never served the load");
    stop_load.store(true, Ordering::Relaxed);
    load.join().unwrap();
    stop_b.store(true, Ordering::Relaxed);
    let served_by_b = b.join().unwrap();

    let refused = refused.load(Ordering::Relaxed);
    assert_eq!(refused, 0, "connections were refused during the handover");
    assert!(
        answers.lock().unwrap().len() > before,
        "the load went on after A left"
    );
    let listed = holder_b.list().unwrap();
    assert!(
        listed.iter().any(|l| l.id == id),
        "the lease lives on with B: {listed:?}"
    );
    eprintln!(
        "handover under load: A served {served_by_a}, B served {served_by_b}, refused {refused}"
    );
}

#[test]
fn portctl_renew_prints_a_readable_deadline_and_json_the_number() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let lease = broker.lease([loopback_any()]).unwrap();
    let id = lease.id().0.to_string();
    let out = daemon
        .portctl()
        .args(["renew", &id, "300"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    // `lease 7 expires at 2026-11-30 03:40:31 CET (in 5m00s)`: local time, no epoch number. The
    // time left is rounded up, so it is 5m00s unless portctl took a second to print it.
    let prefix = format!("lease {id} expires at ");
    let left = [" (in 5m00s)\n", " (in 4m59s)\n"]
        .into_iter()
        .find(|left| text.ends_with(left));
    assert!(text.starts_with(&prefix) && left.is_some(), "{text:?}");
    let local = &text[prefix.len()..text.len() - left.unwrap().len()];
    let (date, time) = (&local[..10], &local[11..19]);
    assert!(
        date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-' && time.as_bytes()[2] == b':',
        "{local:?}"
    );

    let out = daemon
        .portctl()
        .args(["renew", "--json", &id, "60"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = broker.list().unwrap();
    let info = listed.iter().find(|l| l.id == lease.id()).unwrap();
    assert_eq!(json["id"], lease.id().0);
    assert_eq!(json["expires_unix_ms"], info.expires_unix_ms.unwrap());

    let out = daemon.portctl().args(["renew", &id, "0"]).output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("lease {id} has no time limit\n")
    );
}
