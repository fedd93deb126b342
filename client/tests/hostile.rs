//! Hostile input: garbage bytes, a frame that claims 4 GiB, a truncated frame, an unknown
//! request, a client that connects and never speaks, 1,000 connections at once. The daemon keeps
//! serving well-behaved clients throughout, logs the bad ones, and its memory stays bounded.
//!
//! The bad clients are raw `UnixStream`s writing bytes by hand; the good client is the real
//! `portbroker::Broker`. Nothing here sleeps to synchronise: reads carry timeouts and everything
//! else polls with `wait_until` under a deadline.
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use portbroker_proto::{
    encode_request, Failure, Request, Response, SocketSpec, HEADER_LEN, MAX_REQUEST_FRAME,
    PROTOCOL_VERSION,
};
use support::fuzz_gen::Rng;
use support::good_client::{self, assert_prompt, assert_serves, lease_and_accept};
use support::raw::{
    expect_hello, frame, hello_frame, raw, read_response, read_until_closed, responses, PROMPT,
};
use support::{raise_fd_limit, wait_until, Daemon};

// ----------------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------------

/// A raw connection that has exchanged a valid Hello.
fn greeted(daemon: &Daemon) -> UnixStream {
    let mut stream = raw(daemon);
    stream.write_all(&hello_frame(PROTOCOL_VERSION)).unwrap();
    expect_hello(daemon, &mut stream, "Hello");
    stream
}

/// The bytes a closed connection received must be nothing, or exactly one response frame.
fn sole_response(bytes: &[u8]) -> Option<Response> {
    let mut all = responses(bytes, false, "a closed connection");
    assert!(
        all.len() <= 1,
        "expected exactly one response frame before the close, got {all:?}"
    );
    all.pop()
}

/// Asserts that the connection is still open and silent: nothing to read for a short while.
fn assert_open_and_silent(stream: &mut UnixStream, what: &str) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut byte = [0];
    match stream.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("the daemon closed {what}"),
        Ok(_) => panic!("the daemon sent {what} an unasked-for byte {byte:?}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// How the daemon names this test process in its logs: `pid N (name, uid U)`.
fn us() -> String {
    format!("pid {} (", std::process::id())
}

/// The daemon's warnings that name this process and contain every one of `needles`.
fn warnings(daemon: &Daemon, needles: &[&str]) -> usize {
    let us = us();
    daemon
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&us))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Waits (briefly) until at least `count` warnings name this process with all of `needles`.
fn assert_warned(daemon: &Daemon, count: usize, needles: &[&str]) {
    let logged = wait_until(PROMPT, || warnings(daemon, needles) >= count);
    assert!(
        logged,
        "expected {count} warning(s) naming {} with {needles:?} in the daemon log:\n{}",
        us(),
        daemon.log()
    );
}

fn malformed_detail(response: Option<Response>, what: &str) -> Option<String> {
    match response {
        None => None,
        Some(Response::Failed(Failure::Malformed { detail })) => Some(detail),
        Some(other) => panic!("{what} was answered with {other:?}, not Failed(Malformed)"),
    }
}

// ----------------------------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------------------------

/// Garbage of three kinds, each on its own connection: 4 KiB of noise, an HTTP request, and a
/// well-formed frame around noise. Each is answered with `Malformed` (or just closed), logged
/// with the offender's pid, and a good client is served after each one.
#[test]
fn garbage_bytes_are_refused_logged_and_do_not_disturb_good_clients() {
    let mut daemon = Daemon::start();
    let noise = Rng(0x5eed_1234_abcd_0042).bytes(4096);
    // A frame of the right length whose payload starts like a Lease (variant 1), then noise.
    let mut framed_noise = Rng(7).bytes(1000);
    framed_noise[0] = 1;
    let cases: [(&str, Vec<u8>); 3] = [
        ("4 KiB of noise", noise),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("a frame of noise", frame(&framed_noise)),
    ];
    for (n, (what, bytes)) in cases.iter().enumerate() {
        let mut bad = raw(&daemon);
        // The daemon may close before it has read everything; a failed write is its right.
        let _ = bad.write_all(bytes);
        let received = read_until_closed(&mut bad, PROMPT);
        let detail = malformed_detail(sole_response(&received), what);
        eprintln!("{what}: answered {detail:?}, then closed");
        match &detail {
            Some(detail) => assert_warned(&daemon, 1, &["malformed request", detail]),
            None => assert_warned(&daemon, n + 1, &["closing the connection"]),
        }
        assert_serves(&daemon);
    }
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.log());
}

/// A length prefix of 0xFFFFFFFF followed by as much of 8 MiB as the daemon will take: refused
/// by its header, before any allocation, and the daemon's memory does not move.
#[test]
fn a_frame_claiming_4_gib_is_refused_without_allocating() {
    let mut daemon = Daemon::start();
    assert_serves(&daemon); // warm up: allocator arenas, the lease path
    let before = daemon.rss_kib();

    let mut bad = raw(&daemon);
    let chunk = Rng(99).bytes(64 * 1024);
    let mut first = u32::MAX.to_le_bytes().to_vec();
    first.extend_from_slice(&chunk[..4096]);
    bad.write_all(&first).unwrap();
    // Keep going with up to 8 MiB, as a client really sending 4 GiB would: a daemon that trusted
    // the header would buffer it. This one closes at once, and the writes fail.
    let mut sent = first.len();
    while sent < 8 << 20 {
        match bad.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break, // EPIPE/ECONNRESET once the daemon has closed, or a write timeout
        }
    }
    // Memory first: a daemon that believed the header would be buffering what was sent.
    let during = daemon.rss_kib();
    assert!(
        during < before + 4 * 1024,
        "daemon RSS grew from {before} KiB to {during} KiB while a client sent {sent} bytes of a \
         frame claiming 4 GiB"
    );
    let received = read_until_closed(&mut bad, PROMPT);
    let detail = match sole_response(&received) {
        Some(Response::Failed(Failure::Malformed { detail })) => detail,
        other => panic!(
            "a 4 GiB frame was answered with {other:?}\n{}",
            daemon.log()
        ),
    };
    assert!(
        detail.contains("4294967295") && detail.contains(&MAX_REQUEST_FRAME.to_string()),
        "the refusal should give the claimed size and the maximum: {detail:?}"
    );
    assert_warned(&daemon, 1, &["malformed request", "4294967295"]);

    assert_serves(&daemon);
    let after = daemon.rss_kib();
    eprintln!(
        "4 GiB frame: daemon RSS {before} KiB -> {during} KiB -> {after} KiB; \
         the socket took {sent} bytes before the daemon closed it"
    );
    assert!(
        after < before + 4 * 1024,
        "daemon RSS grew from {before} KiB to {after} KiB after a 4 GiB frame"
    );
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.log());
}

/// A valid 100-byte Hello payload, of which the tests send only the first 10 bytes for a while.
fn hundred_byte_hello() -> Vec<u8> {
    // variant 0, protocol 1, string length 97, 97 bytes: 100 bytes of payload.
    let frame = encode_request(&Request::Hello {
        protocol: PROTOCOL_VERSION,
        client: "x".repeat(97),
    })
    .unwrap();
    assert_eq!(frame.len(), HEADER_LEN + 100);
    assert_eq!(frame[..HEADER_LEN], 100u32.to_le_bytes());
    frame
}

/// A frame whose header says 100 bytes, of which 10 arrive. (a) While it hangs, good clients
/// are served, and when the rest arrives the frame is served too. (b) Closing in the middle of
/// it is logged and harms nothing.
#[test]
fn a_truncated_frame_blocks_nobody_and_is_logged_when_abandoned() {
    let mut daemon = Daemon::start();
    let hello = hundred_byte_hello();
    let cut = HEADER_LEN + 10;

    // (a) kept open
    let mut slow = raw(&daemon);
    slow.write_all(&hello[..cut]).unwrap();
    for _ in 0..3 {
        assert_serves(&daemon);
    }
    assert_open_and_silent(&mut slow, "a connection in the middle of a frame");
    slow.write_all(&hello[cut..]).unwrap();
    expect_hello(&daemon, &mut slow, "the completed frame");

    // (b) closed half-way
    let mut quitter = raw(&daemon);
    quitter.write_all(&hello[..cut]).unwrap();
    // The daemon must have read the partial frame before we close, or it sees a clean close:
    // it has once a later client on the same event loop has been served.
    assert_serves(&daemon);
    drop(quitter);
    assert_warned(
        &daemon,
        1,
        &["closed the connection in the middle of a frame"],
    );
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.log());
    assert_serves(&daemon);
}

/// Requests the daemon must refuse and then hang up on: an unknown request variant after
/// Hello, a request before Hello, a Hello of protocol 999 (ours and a future one's layout).
#[test]
fn unknown_requests_and_bad_hellos_are_refused_then_closed() {
    let mut daemon = Daemon::start();

    // An unknown request after a valid Hello.
    let mut unknown = greeted(&daemon);
    unknown.write_all(&frame(&[200])).unwrap();
    let received = read_until_closed(&mut unknown, PROMPT);
    match sole_response(&received) {
        Some(Response::Failed(Failure::Malformed { detail })) => {
            assert_warned(&daemon, 1, &["malformed request", &detail]);
        }
        other => panic!("request variant 200 was answered with {other:?}"),
    }

    // A request before Hello.
    let mut rude = raw(&daemon);
    rude.write_all(&encode_request(&Request::Status).unwrap())
        .unwrap();
    let received = read_until_closed(&mut rude, PROMPT);
    assert_eq!(
        sole_response(&received),
        Some(Response::Failed(Failure::HelloRequired)),
        "Status before Hello"
    );
    assert_warned(&daemon, 1, &["must be Hello"]);

    // A Hello of protocol 999, encoded as this protocol would.
    let mut future = raw(&daemon);
    future.write_all(&hello_frame(999)).unwrap();
    let received = read_until_closed(&mut future, PROMPT);
    let mismatch = Some(Response::Failed(Failure::VersionMismatch {
        broker: PROTOCOL_VERSION,
        client: 999,
    }));
    assert_eq!(sole_response(&received), mismatch, "Hello of protocol 999");

    // A Hello of protocol 999 whose other fields this protocol cannot decode: the frozen
    // prefix (variant 0, then the version) still gets it a version mismatch, not "malformed".
    let mut stranger = raw(&daemon);
    stranger
        .write_all(&frame(&[0, 251, 0xE7, 0x03, 0xFF, 0xFF, 0xFF, 0xFF]))
        .unwrap();
    let received = read_until_closed(&mut stranger, PROMPT);
    assert_eq!(
        sole_response(&received),
        mismatch,
        "a future Hello of protocol 999"
    );
    assert_warned(&daemon, 2, &["version mismatch", "999"]);

    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.log());
    assert_serves(&daemon);
}

/// A client that connects and never speaks does not hold up anyone.
#[test]
fn a_silent_client_does_not_hold_up_good_clients() {
    let daemon = Daemon::start();
    let mut silent = raw(&daemon);
    let started = Instant::now();
    let broker = good_client::connect(&daemon);
    good_client::round_trips(&daemon, &broker, 100, "with a silent client around");
    lease_and_accept(&daemon, &broker);
    eprintln!("100 leases beside a silent client: {:?}", started.elapsed());
    assert_prompt(started, "connecting and 100 leases beside a silent client");
    assert_open_and_silent(
        &mut silent,
        "the silent connection (long before its deadline)",
    );
}

/// The Hello deadline (10 s): a silent client and a slow-loris (10 bytes of a 100-byte Hello)
/// are closed once it passes, not before, and logged; a greeted idle client is left alone.
/// This test waits for the real deadline, about 10 s.
#[test]
fn connections_without_hello_are_closed_at_the_deadline() {
    let daemon = Daemon::start();
    let connected = Instant::now();
    let mut silent = raw(&daemon);
    let mut loris = raw(&daemon);
    loris
        .write_all(&hundred_byte_hello()[..HEADER_LEN + 10])
        .unwrap();
    let mut idle = greeted(&daemon);

    let received = read_until_closed(&mut silent, Duration::from_secs(15));
    let waited = connected.elapsed();
    assert!(
        received.is_empty(),
        "the silent client was sent {received:?}"
    );
    assert!(
        waited >= Duration::from_secs(9),
        "a silent client was cut off after {waited:?}, before the 10 s Hello deadline"
    );
    let received = read_until_closed(&mut loris, Duration::from_secs(2));
    assert!(received.is_empty(), "the slow client was sent {received:?}");
    assert_warned(&daemon, 2, &["no Hello within"]);
    eprintln!("silent connection closed after {waited:?}");

    assert_open_and_silent(&mut idle, "a greeted, idle connection");
    idle.write_all(&encode_request(&Request::Status).unwrap())
        .unwrap();
    match read_response(&mut idle, PROMPT) {
        Response::Status(status) => assert_eq!(status.connections, 1, "{status:?}"),
        other => panic!("Status was answered with {other:?}"),
    }
    assert_serves(&daemon);
}

/// 1,000 connections at once, half of them greeted and half silent: good clients are served,
/// every Hello is answered, the count is right, memory stays small, and it all goes away.
#[test]
fn a_thousand_connections_at_once() {
    const N: usize = 1000;
    let hard = raise_fd_limit();
    if hard < 1200 {
        eprintln!(
            "SKIPPED a_thousand_connections_at_once: the open-file hard limit is {hard}, \
             1,200 are needed"
        );
        return;
    }
    let mut daemon = Daemon::start();
    // Warm up first: what the first leases allocate once (the journal's buffers, the log line
    // buffer, the allocator's arenas) is not memory per connection.
    {
        let warm = good_client::connect(&daemon);
        good_client::round_trips(&daemon, &warm, 50, "warming up");
    }
    let started = Instant::now();
    let idle_rss = daemon.rss_kib();

    let hello = hello_frame(PROTOCOL_VERSION);
    let mut crowd: Vec<UnixStream> = (0..N)
        .map(|i| {
            let mut stream = raw(&daemon);
            if i % 2 == 0 {
                stream
                    .write_all(&hello)
                    .unwrap_or_else(|e| panic!("Hello on connection #{i}: {e}"));
            }
            stream
        })
        .collect();
    eprintln!("{N} connections opened in {:?}", started.elapsed());

    // The good client connects after all of them (the accept queue is FIFO), so by the time its
    // Hello is answered the daemon has accepted every one.
    let good = Instant::now();
    let broker = good_client::connect(&daemon);
    good_client::round_trips(&daemon, &broker, 50, &format!("among {N} connections"));
    lease_and_accept(&daemon, &broker);
    assert_prompt(good, "connecting and 51 leases beside 1,000 connections");
    let status = broker.status().unwrap();
    assert!(
        status.connections > N as u64,
        "status counts {} connections with {N} raw ones and this one open",
        status.connections
    );

    for (i, stream) in crowd.iter_mut().enumerate().step_by(2) {
        expect_hello(&daemon, stream, &format!("Hello on connection #{i}"));
    }
    let busy_rss = daemon.rss_kib();
    eprintln!(
        "daemon RSS: {idle_rss} KiB idle, {busy_rss} KiB with {N} connections (+{} KiB)",
        busy_rss.saturating_sub(idle_rss)
    );
    // Measured (Linux x86-64, debug build of the daemon, 4 runs): 5.9-6.1 MiB idle, and
    // +490..690 KiB with the 1,000 connections open, i.e. ~0.6 KiB of daemon memory per
    // connection (socket buffers are kernel memory, not RSS). The bounds are ~3x the growth and
    // ~2.5x the total: a daemon that kept even a 4 KiB buffer per idle connection crosses the
    // first, and one that cannot stay within 16 MiB with 1,000 idle clients is not "bounded".
    assert!(
        busy_rss < idle_rss + 2 * 1024,
        "daemon RSS grew from {idle_rss} KiB to {busy_rss} KiB for {N} connections"
    );
    assert!(
        busy_rss < 16 * 1024,
        "daemon RSS is {busy_rss} KiB with {N} connections"
    );

    drop(crowd);
    let mut last = status.connections;
    let drained = wait_until(Duration::from_secs(5), || {
        last = broker.status().unwrap().connections;
        last == 1
    });
    assert!(
        drained,
        "status still counts {last} connections after the {N} were closed"
    );
    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.log());
    eprintln!(
        "a_thousand_connections_at_once took {:?}",
        started.elapsed()
    );
}

/// Requests written back to back in one go are all answered, including those beyond the
/// per-turn quota of one connection, which wait in the broker's buffer with nothing new to read.
#[test]
fn pipelined_requests_are_all_answered() {
    const REQUESTS: usize = 300;
    let daemon = Daemon::start();
    let mut stream = greeted(&daemon);
    let status = encode_request(&Request::Status).unwrap();
    stream.write_all(&status.repeat(REQUESTS)).unwrap();
    for answered in 0..REQUESTS {
        match read_response(&mut stream, PROMPT) {
            Response::Status(_) => {}
            other => panic!("request {answered} was answered with {other:?}"),
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A client that asks for lease after lease and never reads the granted sockets must not make
/// the broker hold them: its requests wait instead, and the broker's own fds stay few.
#[test]
fn a_client_that_never_reads_its_sockets_cannot_hoard_fds_in_the_broker() {
    const SPECS_PER_LEASE: usize = 8;
    const LEASES: usize = 1000;
    let daemon = Daemon::start();
    let idle_fds = open_fds(daemon.pid());
    let port = support::free_port();
    let hoarder = greeted(&daemon);
    let mut requests = Vec::new();
    for lease in 0..LEASES {
        let sockets = (0..SPECS_PER_LEASE)
            .map(|i| {
                let n = lease * SPECS_PER_LEASE + i;
                let ip = Ipv4Addr::new(127, 1 + (n / 250) as u8, 0, 1 + (n % 250) as u8);
                SocketSpec::tcp(Some(IpAddr::V4(ip)), port)
            })
            .collect();
        requests.extend(encode_request(&Request::Lease { sockets }).unwrap());
    }
    // The broker stops reading this client, so the write may block: write from a thread.
    let mut writer_end = hoarder.try_clone().unwrap();
    writer_end.set_write_timeout(None).unwrap();
    let writer = std::thread::spawn(move || writer_end.write_all(&requests));

    // Watch the broker until the grants stop: its fds must stay few all along.
    let broker = daemon.broker();
    let (mut leases, mut most_fds, mut unchanged) = (0, 0, 0);
    let settled = wait_until(Duration::from_secs(10), || {
        most_fds = most_fds.max(open_fds(daemon.pid()));
        let now = broker.status().unwrap().leases;
        unchanged = if now == leases && now > 0 {
            unchanged + 1
        } else {
            0
        };
        leases = now;
        unchanged >= 50
    });
    assert!(settled, "the grants never stopped ({leases} leases)");
    assert!(
        (leases as usize) < LEASES,
        "the broker kept serving a client that reads nothing ({leases} leases)"
    );
    // The hoarder's and the good client's connections, at most one turn's batch of granted
    // sockets (64, the most one lease may hold) waiting to be sent, the sockets of the next
    // lease as they are bound, and the journal's new file while a compaction writes it (seen:
    // 2 over the first three alone, once in several CI runs). Hoarding would be thousands.
    assert!(
        most_fds <= idle_fds + 2 + 64 + SPECS_PER_LEASE + 1,
        "the broker held {most_fds} fds (idle: {idle_fds}) for a client that reads nothing"
    );
    lease_and_accept(&daemon, &broker);

    // Hanging up gives everything back.
    hoarder.shutdown(std::net::Shutdown::Both).unwrap();
    drop(hoarder);
    // Whether the requests all fit in the socket buffers or not, the writer is done now.
    let _ = writer.join().unwrap();
    assert!(
        wait_until(PROMPT, || broker.status().unwrap().leases == 0),
        "the hoarder's leases must end with its connection"
    );
}

/// A client may send its requests, close its sending side and then read: every request before
/// the end is answered, beyond the per-turn quota too, before the broker closes.
#[test]
fn requests_before_a_half_close_are_all_answered() {
    const REQUESTS: usize = 200;
    let daemon = Daemon::start();
    let mut stream = greeted(&daemon);
    let status = encode_request(&Request::Status).unwrap();
    stream.write_all(&status.repeat(REQUESTS)).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let bytes = read_until_closed(&mut stream, PROMPT);
    let answers = responses(&bytes, false, "the answers before a half-close");
    for answer in &answers {
        assert!(matches!(answer, Response::Status(_)), "{answer:?}");
    }
    assert_eq!(
        answers.len(),
        REQUESTS,
        "every request sent before the half-close is answered"
    );
}
