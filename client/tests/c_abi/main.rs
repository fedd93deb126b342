//! The C ABI (libportbroker.so, capi/) against a real daemon, through C programs compiled
//! against its header: the example serve_one, and a probe that calls each function.

#[path = "../support/mod.rs"]
mod support;

mod build_c;
mod probe;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use portbroker::LeaseId;
use probe::Probe;
use support::{finish, loopback_any, wait_until, Daemon};

fn serve_one() -> &'static std::path::Path {
    static BIN: OnceLock<std::path::PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_c::compile("capi/examples/serve_one.c"))
}

fn probe(daemon: &Daemon) -> Probe {
    static BIN: OnceLock<std::path::PathBuf> = OnceLock::new();
    let program = BIN.get_or_init(|| build_c::compile("capi/tests/probe.c"));
    Probe::start(program, &daemon.socket)
}

/// The error code and text of an `err CODE TEXT` answer.
fn err(answer: &str) -> (i32, String) {
    let rest = answer
        .strip_prefix("err ")
        .unwrap_or_else(|| panic!("expected an error, got {answer:?}"));
    let (code, text) = rest.split_once(' ').unwrap();
    (code.parse().unwrap(), text.to_owned())
}

/// The lease id and ports of an `ok ID PORT...` answer.
fn granted(answer: &str) -> (LeaseId, Vec<u16>) {
    let mut words = answer
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("expected a grant, got {answer:?}"))
        .split(' ');
    let id = LeaseId(words.next().unwrap().parse().unwrap());
    (id, words.map(|port| port.parse().unwrap()).collect())
}

#[test]
fn the_c_example_serves_one_connection_and_its_lease_ends_with_it() {
    let daemon = Daemon::start();
    let mut child = Command::new(serve_one())
        .env("PORTBROKER_SOCKET", &daemon.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some((port, id)) = line
        .strip_prefix("serving on port ")
        .and_then(|rest| rest.trim_end().strip_suffix(')'))
        .and_then(|rest| rest.split_once(" (lease "))
    else {
        let out = finish(child);
        panic!("serve_one printed {line:?}; stderr: {out:?}");
    };
    let (port, id): (u16, u64) = (port.parse().unwrap(), id.parse().unwrap());

    let broker = daemon.broker();
    let leases = broker.list().unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].id, LeaseId(id));
    assert_eq!(leases[0].holder.pid as u32, child.id());
    assert_eq!(leases[0].sockets[0].addr.port(), port);

    let mut reply = String::new();
    TcpStream::connect(("127.0.0.1", port))
        .unwrap()
        .read_to_string(&mut reply)
        .unwrap();
    assert_eq!(reply, "hello from serve_one\n");

    let out = finish(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "serve_one failed: {stderr}");
    assert_eq!(stderr, "");
    // pb_release waits for the broker, so the lease is gone as the program exits.
    assert_eq!(
        broker.list().unwrap(),
        vec![],
        "the lease outlived serve_one"
    );
}

#[test]
fn the_c_example_names_the_holder_of_a_port_in_use() {
    let daemon = Daemon::start();
    let held = daemon.broker().lease([loopback_any()]).unwrap();
    let spec = format!("tcp:127.0.0.1:{}", held.local_addr().port());
    let child = Command::new(serve_one())
        .arg(&spec)
        .env("PORTBROKER_SOCKET", &daemon.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    for part in [
        "serve_one: lease: lease refused: ".to_owned(),
        format!("{spec} is in use"),
        format!("held by pid {}", std::process::id()),
        "(code 2)".to_owned(),
        format!("serve_one: held by pid {} (lease ", std::process::id()),
    ] {
        assert!(stderr.contains(&part), "{part:?} missing: {stderr}");
    }
}

#[test]
fn a_lease_hands_over_blocking_close_on_exec_sockets_until_released() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let mut probe = probe(&daemon);
    assert_eq!(
        probe.ask(&format!("connect {}", daemon.socket.display())),
        "ok"
    );

    let (id, ports) = granted(&probe.ask("lease tcp:127.0.0.1:0 udp:127.0.0.1:0"));
    assert_eq!(ports.len(), 2);
    let leases = broker.list().unwrap();
    assert_eq!(leases.len(), 1, "two specs, one lease: {leases:?}");
    assert_eq!(leases[0].id, id);
    let listed: Vec<u16> = leases[0].sockets.iter().map(|s| s.addr.port()).collect();
    assert_eq!(listed, ports);
    // Each fd: bound to its port, close-on-exec, blocking.
    assert_eq!(
        probe.ask(&format!("fds {}", id.0)),
        format!("fds {}:1:0 {}:1:0", ports[0], ports[1])
    );

    assert_eq!(probe.ask(&format!("renew {} 60000", id.0)), "ok");
    let expires = broker.list().unwrap()[0].expires_unix_ms;
    assert!(expires.is_some(), "renew set no time limit");
    assert_eq!(probe.ask(&format!("renew {} 0", id.0)), "ok");
    assert_eq!(broker.list().unwrap()[0].expires_unix_ms, None);

    assert_eq!(probe.ask(&format!("release {}", id.0)), "ok");
    assert_eq!(broker.list().unwrap(), vec![], "released, yet listed");
    let (code, text) = err(&probe.ask(&format!("release {}", id.0)));
    assert_eq!(code, 13, "PB_ERROR_UNKNOWN_LEASE: {text}");
}

#[test]
fn a_refusal_gives_the_in_use_code_and_names_the_holder() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let held = broker.lease([loopback_any()]).unwrap();
    let spec = format!("tcp:127.0.0.1:{}", held.local_addr().port());
    let mut probe = probe(&daemon);
    assert_eq!(probe.ask("connect -"), "ok", "NULL: PORTBROKER_SOCKET");

    let (code, text) = err(&probe.ask(&format!("lease {spec}")));
    assert_eq!(code, 2, "PB_ERROR_IN_USE: {text}");
    assert!(text.starts_with("lease refused: "), "{text}");
    assert!(
        text.contains(&format!("held by pid {}", std::process::id())),
        "{text}"
    );
    let holder = &broker.list().unwrap()[0].holder;
    assert_eq!(
        probe.ask("holder"),
        format!(
            "holder {} {} {} {} {}",
            holder.pid,
            holder.uid,
            holder.gid,
            held.id().0,
            holder.name
        )
    );
    // A success clears the last error, and its holder with it.
    let (id, _) = granted(&probe.ask("lease tcp:127.0.0.1:0"));
    assert_eq!(probe.ask("holder"), "none");
    assert_eq!(probe.ask(&format!("release {}", id.0)), "ok");
}

#[test]
fn an_unreachable_socket_gives_the_unreachable_code() {
    let daemon = Daemon::start();
    let missing = daemon.dir().join("elsewhere.sock");
    let mut probe = probe(&daemon);
    let (code, text) = err(&probe.ask(&format!("connect {}", missing.display())));
    assert_eq!(code, 1, "PB_ERROR_UNREACHABLE: {text}");
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(text.contains("is portbrokerd running?"), "{text}");
}

#[test]
fn null_and_bad_arguments_are_errors_not_crashes() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let mut probe = probe(&daemon);
    assert_eq!(
        probe.ask(&format!("connect {}", daemon.socket.display())),
        "ok"
    );

    let lines = probe.ask_until("nulls", "done");
    let answer = |name: &str| -> (i64, i32, String) {
        let line = lines
            .iter()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {lines:?}"));
        let mut parts = line.splitn(3, ' ');
        let rc = parts.next().unwrap().parse().unwrap();
        let code = parts.next().unwrap().parse().unwrap();
        (rc, code, parts.next().unwrap_or("").to_owned())
    };
    for (name, code, says) in [
        ("lease-null-broker", 64, "pb_lease: broker is NULL"),
        ("lease-null-specs", 64, "pb_lease: specs is NULL"),
        ("lease-null-spec-item", 64, "pb_lease: specs[1] is NULL"),
        ("lease-null-fds", 64, "pb_lease: fds_out is NULL"),
        ("lease-small-fds", 64, "pb_lease: fds_cap is 1, too small"),
        ("lease-no-specs", 6, "a lease needs at least one socket"),
        ("lease-bad-spec", 6, "tcp:localhost"),
        ("release-null-broker", 64, "pb_release: broker is NULL"),
        (
            "release-id-zero",
            64,
            "pb_release: lease id 0 is no lease's",
        ),
        ("renew-null-broker", 64, "pb_renew: broker is NULL"),
        (
            "renew-id-negative",
            64,
            "pb_renew: lease id -5 is no lease's",
        ),
        // pb_last_error_holder(NULL) returns -1 and leaves the last error alone.
        ("holder-null", 64, "pb_renew: lease id -5 is no lease's"),
    ] {
        let (rc, got, text) = answer(name);
        assert_eq!((rc, got), (-1, code), "{name}: {text}");
        assert!(text.contains(says), "{name}: {says:?} missing: {text}");
    }
    assert_eq!(answer("close-null"), (0, 0, String::new()));
    assert!(
        lines.contains(&"fds-untouched -1 -1".to_owned()),
        "{lines:?}"
    );
    assert_eq!(broker.list().unwrap(), vec![], "a failed call leased");
    // The probe lives on and its handle still works.
    let (id, _) = granted(&probe.ask("lease tcp:127.0.0.1:0"));
    assert_eq!(probe.ask(&format!("release {}", id.0)), "ok");
}

#[test]
fn closing_the_handle_ends_the_leases_it_holds() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let mut probe = probe(&daemon);
    assert_eq!(
        probe.ask(&format!("connect {}", daemon.socket.display())),
        "ok"
    );
    let (first, _) = granted(&probe.ask("lease tcp:127.0.0.1:0"));
    let (second, _) = granted(&probe.ask("lease udp:127.0.0.1:0"));
    let ids: Vec<LeaseId> = broker.list().unwrap().iter().map(|l| l.id).collect();
    assert_eq!(ids, vec![first, second]);

    assert_eq!(probe.ask("close"), "ok");
    // Released without waiting, as a Rust Lease's drop does: poll.
    let ended = wait_until(Duration::from_secs(5), || broker.list().unwrap().is_empty());
    assert!(ended, "leases outlived pb_close: {:?}", broker.list());
}
