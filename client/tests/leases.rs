//! The core promise: one holder per port, the loser told at once who holds it, and a dead
//! holder's ports back at once. Real daemon, real client, real sockets on loopback.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use portbroker::{Broker, ErrorKind as BrokerErrorKind, Refusal};
use support::{free_port, kill_all, lease_again, wait_until, Daemon};

const CONTENDER_SOCKET: &str = "PORTBROKER_TEST_CONTENDER_SOCKET";
const CONTENDER_SPEC: &str = "PORTBROKER_TEST_CONTENDER_SPEC";

/// Not a test of its own: the child process of the tests below. It connects, says "ready",
/// waits for its stdin to close (the start signal shared by every contender), asks for one
/// lease and prints the outcome; a winner then holds its lease until it is killed.
#[test]
#[ignore = "child process of the race and SIGKILL tests, started by them"]
fn contender() {
    let (Ok(socket), Ok(spec)) = (
        std::env::var(CONTENDER_SOCKET),
        std::env::var(CONTENDER_SPEC),
    ) else {
        eprintln!("contender is a child process of other tests; nothing to do on its own");
        return;
    };
    let broker = Broker::connect_to(socket).unwrap();
    println!("ready");
    std::io::stdin().read_to_end(&mut Vec::new()).unwrap();
    let asked = Instant::now();
    let outcome = broker.lease_str(&[&spec]);
    let millis = asked.elapsed().as_millis();
    match outcome {
        Ok(lease) => {
            println!(
                "granted {} {} {millis}",
                std::process::id(),
                lease.local_addr()
            );
            // Hold the lease until the test kills us; bounded in case it never does.
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                std::thread::park_timeout(until - Instant::now());
            }
            drop(lease);
        }
        Err(err) => match err.holder() {
            Some(holder) if err.kind() == BrokerErrorKind::InUse => {
                println!("refused {} {} {millis}", holder.pid, holder.name)
            }
            _ => println!("error {err}"),
        },
    }
}

fn spawn_contender(daemon: &Daemon, spec: &str, start_signal: &OwnedFd) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "contender",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CONTENDER_SOCKET, &daemon.socket)
        .env(CONTENDER_SPEC, spec)
        .stdin(Stdio::from(start_signal.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads every contender's stdout lines on threads; lines arrive as (contender index, line).
fn collect_lines(children: &mut [Child]) -> mpsc::Receiver<(usize, String)> {
    let (tx, rx) = mpsc::channel();
    for (index, child) in children.iter_mut().enumerate() {
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            // Keep draining after the test stops listening, so the child never hits EPIPE.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send((index, line));
            }
        });
    }
    rx
}

/// The line each contender printed that starts with one of `prefixes`, within `limit`.
fn wait_for_lines(
    rx: &mpsc::Receiver<(usize, String)>,
    count: usize,
    prefixes: &[&str],
    limit: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut lines: Vec<Option<String>> = vec![None; count];
    while lines.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((index, line)) = rx.recv_timeout(left) else {
            let missing: Vec<usize> = (0..count).filter(|&i| lines[i].is_none()).collect();
            panic!("contenders {missing:?} said nothing within {limit:?}; got {lines:?}");
        };
        if prefixes.iter().any(|p| line.starts_with(p)) {
            lines[index] = Some(line);
        }
    }
    lines.into_iter().map(Option::unwrap).collect()
}

#[test]
fn fifty_processes_racing_for_one_port_get_exactly_one_winner() {
    const CONTENDERS: usize = 50;
    let daemon = Daemon::start();
    let port = free_port();
    let spec = format!("tcp:127.0.0.1:{port}");
    let (start_read, start_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut children: Vec<Child> = (0..CONTENDERS)
        .map(|_| spawn_contender(&daemon, &spec, &start_read))
        .collect();
    drop(start_read);
    let rx = collect_lines(&mut children);
    wait_for_lines(&rx, CONTENDERS, &["ready"], Duration::from_secs(30));

    // Every contender is connected and blocked on its stdin: closing the pipe starts them all.
    drop(start_write);
    let outcomes = wait_for_lines(
        &rx,
        CONTENDERS,
        &["granted", "refused", "error"],
        Duration::from_secs(10),
    );

    let winners: Vec<&String> = outcomes
        .iter()
        .filter(|l| l.starts_with("granted"))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one contender must win: {outcomes:#?}"
    );
    let winner_pid: u32 = winners[0].split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        winners[0].contains(&format!(" 127.0.0.1:{port} ")),
        "{}",
        winners[0]
    );
    for line in outcomes.iter().filter(|l| !l.starts_with("granted")) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            fields[0], "refused",
            "a loser must be refused as in use: {line}"
        );
        assert_eq!(
            fields[1],
            winner_pid.to_string(),
            "the refusal must name the winner: {line}"
        );
        assert!(
            !fields[2].is_empty(),
            "the refusal must name the winner's process: {line}"
        );
        let millis: u128 = fields[3].parse().unwrap();
        assert!(
            millis < 1000,
            "a loser waited {millis} ms for its answer: {line}"
        );
    }
    let slowest = outcomes
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u128>().ok())
        .max();
    eprintln!("{CONTENDERS} contenders: one winner; slowest answer {slowest:?} ms");
    kill_all(&mut children);
}

#[test]
fn a_holder_killed_with_sigkill_loses_its_lease_at_once() {
    let daemon = Daemon::start();
    let port = free_port();
    let spec = format!("tcp:127.0.0.1:{port}");
    let (start_read, start_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut holder = spawn_contender(&daemon, &spec, &start_read);
    drop((start_read, start_write));
    let rx = collect_lines(std::slice::from_mut(&mut holder));
    let granted = &wait_for_lines(
        &rx,
        1,
        &["granted", "refused", "error"],
        Duration::from_secs(10),
    )[0];
    assert!(granted.starts_with("granted"), "{granted}");

    let listed = |pid: u32| -> bool {
        let out = daemon.portctl().args(["list", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "portctl list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        rows.iter()
            .any(|row| row["pid"] == pid && row["addr"] == format!("127.0.0.1:{port}"))
    };
    assert!(
        listed(holder.id()),
        "the live holder's lease must be listed"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    holder.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(1), || !listed(holder.id())),
        "the dead holder's lease was still listed a second after SIGKILL"
    );
    let broker = daemon.broker();
    let lease = broker
        .lease_str(&[&spec])
        .expect("the port must be free again");
    assert_eq!(lease.local_addr().port(), port);
    eprintln!(
        "lease gone and port re-leased {:?} after SIGKILL",
        killed.elapsed()
    );
}

#[test]
fn a_lease_blocks_overlapping_binds_inside_and_outside_the_broker() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let port = free_port();
    let lease = broker
        .lease_str(&[&format!("tcp:127.0.0.1:{port}")])
        .unwrap();
    let me = std::process::id() as i32;

    // Outside the broker: the kernel refuses the same address and the IPv4 wildcard.
    for addr in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
        let err = TcpListener::bind(&addr).expect_err(&addr);
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{addr}: {err}");
    }
    // Inside: the broker refuses overlapping leases, naming the holder.
    for spec in [
        format!("tcp:0.0.0.0:{port}"),
        format!("tcp:[::]:{port}"),
        format!("tcp:{port}"),
    ] {
        let other = daemon.broker();
        let err = other.lease_str(&[&spec]).expect_err(&spec);
        assert_eq!(err.kind(), BrokerErrorKind::InUse, "{spec}: {err}");
        assert_eq!(err.holder().map(|h| h.pid), Some(me), "{spec}: {err}");
        match &err {
            portbroker::Error::Refused(Refusal::InUse { lease: id, .. }) => {
                assert_eq!(*id, lease.id())
            }
            other => panic!("{spec}: expected an InUse refusal, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&me.to_string()),
            "the message names the pid: {err}"
        );
    }
    // Addresses the kernel does not see as overlapping, and the separate UDP space, are granted.
    let udp = broker
        .lease_str(&[&format!("udp:127.0.0.1:{port}")])
        .unwrap();
    assert!(udp.udp_socket().is_some());
    let other_loopback = broker
        .lease_str(&[&format!("tcp:127.0.0.2:{port}")])
        .unwrap();
    assert_eq!(
        other_loopback.local_addr(),
        SocketAddr::from(([127, 0, 0, 2], port))
    );
    if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok() {
        broker.lease_str(&[&format!("tcp:[::1]:{port}")]).unwrap();
    }
    // The listener really is ours: a connection reaches it.
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut served, _) = lease.tcp_listener().unwrap().accept().unwrap();
    served.write_all(b"hi").unwrap();
    let mut answer = [0; 2];
    client.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"hi");
}

#[test]
fn a_multi_socket_lease_is_granted_or_refused_as_one_unit() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let (free, taken) = (free_port(), free_port());
    let _holder = broker
        .lease_str(&[&format!("tcp:127.0.0.1:{taken}")])
        .unwrap();
    let err = daemon
        .broker()
        .lease_str(&[
            &format!("tcp:127.0.0.1:{free}"),
            &format!("tcp:127.0.0.1:{taken}"),
        ])
        .unwrap_err();
    assert!(err.is_in_use(), "{err}");
    // Nothing of the refused lease stays bound: the first port is free for anyone.
    TcpListener::bind(("127.0.0.1", free)).expect("the refused lease left its first socket bound");
    let both = broker
        .lease_str(&["tcp:127.0.0.1:0", "udp:127.0.0.1:0", "tcp:127.0.0.1:0"])
        .unwrap();
    let ports: Vec<u16> = both.granted().iter().map(|g| g.addr.port()).collect();
    assert_ne!(
        ports[0], ports[2],
        "two any-port sockets of one lease must differ"
    );
    assert!(
        ports
            .iter()
            .all(|p| (daemon.pool.0..=daemon.pool.1).contains(p)),
        "{ports:?}"
    );
}

/// Eight clients lease and release a handful of ports for 20 rounds. A registry records each
/// port's holder between grant and release: a grant while another client holds the port is a
/// double grant. Every grant is checked with a real connection answered by its holder.
#[test]
fn storms_of_concurrent_leases_never_overlap() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 20;
    let daemon = Daemon::start();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let ipv6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok();
    let addrs: &[&str] = if ipv6 {
        &["127.0.0.1", "0.0.0.0", "[::]"]
    } else {
        &["127.0.0.1", "0.0.0.0"]
    };
    let holders: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
    let grants = Arc::new(Mutex::new(0usize));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (broker, ports, holders, grants) =
                (daemon.broker(), ports.clone(), holders.clone(), grants.clone());
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let port = ports[(client + round) % ports.len()];
                    let spec = format!("tcp:{}:{port}", addrs[(client * 7 + round) % addrs.len()]);
                    let lease = match lease_again(&broker, &spec) {
                        Ok(lease) => lease,
                        Err(err) if err.kind() == BrokerErrorKind::InUse => continue,
                        Err(err) => panic!("client {client}: {spec}: {err}"),
                    };
                    if let Some(other) = holders.lock().unwrap().insert(port, client) {
                        panic!("double grant: client {client} got {spec} while client {other} held port {port}");
                    }
                    *grants.lock().unwrap() += 1;
                    let listener = lease.tcp_listener().unwrap();
                    listener.set_nonblocking(true).unwrap();
                    for probe in 0..3u8 {
                        let token = [client as u8, round as u8, probe];
                        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        conn.write_all(&token).unwrap();
                        let mut accepted = None;
                        let answered = wait_until(Duration::from_secs(2), || {
                            accepted = listener.accept().ok().map(|(stream, _)| stream);
                            accepted.is_some()
                        });
                        assert!(answered, "client {client}'s listener never saw its connection to {spec}");
                        let mut accepted = accepted.unwrap();
                        accepted.set_nonblocking(false).unwrap();
                        let mut got = [0; 3];
                        accepted.read_exact(&mut got).unwrap();
                        assert_eq!(got, token, "client {client}'s listener got another's connection");
                    }
                    assert_eq!(holders.lock().unwrap().remove(&port), Some(client));
                    lease.release().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a storm client failed");
    }
    let grants = *grants.lock().unwrap();
    assert!(
        grants >= ROUNDS,
        "too few grants ({grants}) for the storm to mean anything"
    );
    eprintln!("{grants} grants among {CLIENTS} clients x {ROUNDS} rounds");
    assert_eq!(
        daemon.broker().status().unwrap().leases,
        0,
        "every lease was released"
    );
}

/// A dropped lease is released without waiting for the broker's answer; on the same connection
/// the release still comes before the next request, so the port can be leased again at once,
/// however many answers are left unread.
#[test]
fn dropped_leases_are_released_before_the_next_request_on_their_connection() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let spec = format!("tcp:127.0.0.1:{}", free_port());
    for round in 0..200 {
        let lease = lease_again(&broker, &spec).unwrap_or_else(|e| panic!("round {round}: {e}"));
        drop(lease);
    }
    let status = broker.status().unwrap();
    assert_eq!((status.leases, status.sockets), (0, 0));
    // A confirmed release reports the broker's answer.
    let lease = lease_again(&broker, &spec).unwrap();
    let id = lease.id();
    lease.release().unwrap();
    let err = broker.release(id).unwrap_err();
    assert_eq!(err.kind(), BrokerErrorKind::UnknownLease, "{err}");
}
