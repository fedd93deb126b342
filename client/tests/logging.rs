//! The daemon's log at its default level, as it ships: what a person should read. No line per
//! lease (the history, `portctl log`, is the record of every lease); refusals, which anyone can
//! provoke, at most one a second with a count of those left out; the portserver's trouble, which
//! anyone can provoke too, likewise.

mod support;

use std::time::Duration;

use portbroker::SocketSpec;
use support::{loopback_any, Daemon};

#[test]
fn leases_log_nothing_and_refusals_are_rate_limited_with_a_count() {
    let daemon = Daemon::start_at_default_level(&[]);
    let broker = daemon.broker();
    for _ in 0..200 {
        broker.lease([loopback_any()]).unwrap().release().unwrap();
    }
    let held = broker.lease([loopback_any()]).unwrap();
    let taken = SocketSpec::tcp(Some(held.local_addr().ip()), held.local_addr().port());
    for _ in 0..50 {
        assert!(broker.lease([taken]).unwrap_err().is_in_use());
    }
    // A second later, one more refusal is logged, saying how many were left out. The wait is
    // the rate limit's own window of wall time, not a wait for another process: nothing could
    // be polled for instead, and the count asserted below is exact only if no refusal is made
    // meanwhile.
    std::thread::sleep(Duration::from_millis(1100));
    assert!(broker.lease([taken]).unwrap_err().is_in_use());
    daemon.assert_logged(
        "(49 more refused since the last one logged)",
        Duration::from_secs(2),
        "the second refusal logged counts those left out",
    );
    // Lines reach the file in order: every earlier line is there too.
    let log = daemon.log();
    assert_eq!(log.matches("refused pid").count(), 2, "{log}");
    for per_lease in ["granted", "released"] {
        assert!(
            !log.contains(per_lease),
            "a line per lease ({per_lease}):\n{log}"
        );
    }
    // The history has every one of them.
    let output = daemon
        .portctl()
        .args(["log", "-n", "10000"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.matches("ended: released").count(), 200, "{text}");
}

/// Makes `events` troubles with `provoke`: all but the last at once, the last after the rate
/// limit's window of wall time (nothing could be polled for instead). Then every one must be
/// accounted for in the log: logged (a line with `needle`), or counted as left out ("(N more
/// KIND lines left out ...)") by the next line logged; and the flood must have been cut.
fn flood_is_cut_and_counted(
    daemon: &Daemon,
    events: usize,
    provoke: impl Fn(),
    needle: &str,
    kind: &str,
) {
    for _ in 1..events {
        provoke();
    }
    std::thread::sleep(Duration::from_millis(1100));
    provoke();
    let count = format!(" more {kind} lines left out since the last one logged)");
    let accounted = || {
        let log = daemon.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        let left_out: usize = lines
            .iter()
            .filter_map(|l| {
                l.split_once(&count)?
                    .0
                    .rsplit_once('(')?
                    .1
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        (lines.len(), left_out)
    };
    let all_told = support::wait_until(Duration::from_secs(5), || {
        let (logged, left_out) = accounted();
        logged + left_out == events
    });
    let (logged, left_out) = accounted();
    assert!(
        all_told,
        "{logged} lines and {left_out} left out for {events} troubles:\n{}",
        daemon.log()
    );
    assert!(
        logged <= events / 2 && left_out > 0,
        "the flood was not cut: {logged} lines, {left_out} left out"
    );
}

/// Bad portserver requests, which any local process can send, log at most ten lines a second,
/// the first line after a flood counting those left out.
#[test]
fn portserver_trouble_is_rate_limited_with_a_count() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let tmp = tempfile::tempdir().unwrap();
    let (config, address) = support::portserver_policy(tmp.path());
    let daemon = Daemon::start_at_default_level(&["--config", config.to_str().unwrap()]);
    // A served request first: the portserver opens during start-up.
    daemon.broker().status().unwrap();
    let bad_request = || {
        let mut client = UnixStream::connect(&address).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.write_all(b"not a pid\n").unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert!(answer.is_empty(), "closed without a port: {answer:?}");
    };
    flood_is_cut_and_counted(&daemon, 51, bad_request, "a bad request", "portserver");
}

/// Connections that break the protocol (a request before Hello), which any local process can
/// open as fast as it likes: a few are each logged, a flood is not, and the first line after
/// it counts those left out.
#[test]
fn connection_troubles_are_rate_limited_with_a_count() {
    use portbroker_proto::{encode_request, Failure, Request, Response};
    use std::io::Write;
    use support::raw::{raw, read_until_closed, responses};
    let daemon = Daemon::start_at_default_level(&[]);
    let rude = || {
        let mut stream = raw(&daemon);
        stream
            .write_all(&encode_request(&Request::Status).unwrap())
            .unwrap();
        let received = read_until_closed(&mut stream, Duration::from_secs(10));
        assert_eq!(
            responses(&received, false, "a request before Hello"),
            [Response::Failed(Failure::HelloRequired)]
        );
    };
    flood_is_cut_and_counted(&daemon, 31, rude, "must be Hello", "connection");
}
