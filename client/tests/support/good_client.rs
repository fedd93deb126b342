//! What a well-behaved client must get from a daemon that others are abusing: served, and
//! promptly.

use std::time::{Duration, Instant};

use portbroker::Broker;

use super::raw::PROMPT;
use super::Daemon;

/// Request timeout of the good client: a daemon stuck on a bad client fails fast, not in 30 s.
const GOOD_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A good client's connection: every request fails after [`GOOD_CLIENT_TIMEOUT`].
pub fn connect(daemon: &Daemon) -> Broker {
    let broker = daemon.broker();
    broker.set_timeout(Some(GOOD_CLIENT_TIMEOUT)).unwrap();
    broker
}

/// A well-behaved client connects, gets `tcp:127.0.0.1:0` and a real TCP client reaches the
/// socket, all promptly.
pub fn assert_serves(daemon: &Daemon) {
    let started = Instant::now();
    let broker = connect(daemon);
    lease_and_accept(daemon, &broker);
    assert_prompt(
        started,
        "a good client's connect, lease, accept and release",
    );
}

/// `count` round trips of a good client on `broker`: lease `tcp:127.0.0.1:0`, release it.
/// Returns how long each took; `what` says in a failure where the client was.
pub fn round_trips(daemon: &Daemon, broker: &Broker, count: usize, what: &str) -> Vec<Duration> {
    (0..count)
        .map(|i| {
            let started = Instant::now();
            let lease = broker
                .lease_str(&["tcp:127.0.0.1:0"])
                .unwrap_or_else(|e| panic!("lease #{i} {what}: {e}\n{}", daemon.log()));
            lease
                .release()
                .unwrap_or_else(|e| panic!("release #{i} {what}: {e}\n{}", daemon.log()));
            started.elapsed()
        })
        .collect()
}

/// Fails if `what`, begun at `started`, took long enough for a user to notice. These take
/// milliseconds; a daemon busy with a bad client would show as seconds.
pub fn assert_prompt(started: Instant, what: &str) {
    let took = started.elapsed();
    assert!(took < PROMPT, "{what} took {took:?}");
}

/// A good client leases a pool port on loopback, and a real connection reaches its listener.
pub fn lease_and_accept(daemon: &Daemon, broker: &Broker) {
    let lease = broker
        .lease_str(&["tcp:127.0.0.1:0"])
        .unwrap_or_else(|e| panic!("a good client was refused: {e}\n{}", daemon.log()));
    let addr = lease.local_addr();
    assert_eq!(
        addr.ip(),
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    );
    assert!(
        (daemon.pool.0..=daemon.pool.1).contains(&addr.port()),
        "{addr} is outside the pool {:?}",
        daemon.pool
    );
    let listener = lease.tcp_listener().expect("a listening TCP socket");
    // connect() succeeding means the connection sits in this listener's queue, so the accept
    // below returns at once.
    let mut client = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connect to the leased {addr}: {e}"));
    std::io::Write::write_all(&mut client, b"ping").unwrap();
    let (mut served, _) = listener.accept().expect("accept on the leased socket");
    served.set_read_timeout(Some(PROMPT)).unwrap();
    let mut got = [0; 4];
    std::io::Read::read_exact(&mut served, &mut got).unwrap();
    assert_eq!(&got, b"ping");
    lease
        .release()
        .unwrap_or_else(|e| panic!("release: {e}\n{}", daemon.log()));
}
