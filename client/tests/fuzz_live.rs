//! Fuzzing a live daemon, bounded: a couple of thousand generated inputs, each on its own
//! connection, while a good client checks every so often that it is still served.
//!
//! The inputs come from a small xorshift generator with a fixed seed (`support/fuzz_gen.rs`), so
//! a run is the same on every machine and a failure names the input that caused it. Every answer
//! the daemon sends is checked against what the protocol crate says the input means (the oracle,
//! `support/oracle.rs`), so this finds wrong answers, not only crashes. The decoder alone is
//! fuzzed with cargo-fuzz (`fuzz/`), and `proto/tests/properties.rs` checks the same properties
//! on stable.
//!
//! Like `hostile.rs`, nothing here sleeps to synchronise: reads carry timeouts and everything
//! else polls with `wait_until` under a deadline.
mod support;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use portbroker_proto::Response;
use support::fuzz_gen::{generate, Rng, KINDS};
use support::good_client::{self, assert_serves, lease_and_accept};
use support::oracle::{answers, is_answer, predict, Want};
use support::raw::{hex, raw, read_for, responses, PROMPT};
use support::{wait_until, Daemon};

/// Polls the daemon's status until this connection is the only one and no lease is left.
fn assert_drained(daemon: &Daemon, broker: &portbroker::Broker, when: &str) {
    let mut last = None;
    let drained = wait_until(PROMPT, || {
        let status = broker
            .status()
            .unwrap_or_else(|e| panic!("status {when}: {e}\n{}", daemon.log()));
        let done = status.connections == 1 && status.leases == 0;
        last = Some(status);
        done
    });
    assert!(
        drained,
        "{when}, with every other connection closed, the daemon still reports {last:?}\n{}",
        daemon.log()
    );
}

/// How the test leaves a connection after writing its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Shut down the writing half and read until the daemon closes: every whole request must
    /// have been answered by then.
    HalfClose,
    /// Read for a moment, then hang up, answered or not.
    Linger,
    /// Hang up at once, without reading anything.
    HangUp,
}

/// How long a lingering connection waits for more from the daemon.
const LINGER: Duration = Duration::from_millis(10);

/// What became of one input.
struct Exchange {
    /// How much of the input the socket took: the daemon saw exactly this much.
    sent: usize,
    received: Vec<u8>,
    /// Whether the daemon closed the connection (EOF or ECONNRESET).
    closed: bool,
}

/// Sends `input` on a fresh connection and ends it as `ending` says.
fn exchange(daemon: &Daemon, input: &[u8], ending: Ending) -> Exchange {
    let mut stream = raw(daemon);
    let mut sent = 0;
    while sent < input.len() {
        match stream.write(&input[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // EPIPE/ECONNRESET once the daemon has hung up on us, which is its right; or the
            // write timeout, when it stopped reading (it does while its answers go unread).
            Err(_) => break,
        }
    }
    let (received, closed) = match ending {
        Ending::HangUp => (Vec::new(), false),
        Ending::HalfClose => {
            // ENOTCONN when the daemon has closed already: there is still its answer to read.
            let _ = stream.shutdown(Shutdown::Write);
            read_for(&mut stream, PROMPT)
        }
        Ending::Linger => read_for(&mut stream, LINGER),
    };
    Exchange {
        sent,
        received,
        closed,
    }
}

/// Checks the daemon's answers to one input against the oracle's [`predict`].
fn check(daemon: &Daemon, what: &str, input: &[u8], ending: Ending, ex: &Exchange) {
    let seen = &input[..ex.sent];
    let wants = predict(seen);
    let all = responses(&ex.received, ending != Ending::HalfClose, what);
    let got: Vec<&Response> = all.iter().filter(|r| is_answer(r)).collect();
    let explain = || {
        // Only on the way to a failure: the daemon writes its log up to 50 ms late.
        std::thread::sleep(Duration::from_millis(200));
        let log = daemon.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        format!(
            "{what}, {ending:?}: sent {} of {} bytes: {}\nexpected answers: {wants:?}\ngot: \
             {all:?} (closed: {})\nthe daemon's last log lines:\n{}",
            ex.sent,
            input.len(),
            hex(input),
            ex.closed,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    };
    assert!(
        got.len() <= wants.len(),
        "more answers than requests: {}",
        explain()
    );
    for (i, (want, response)) in wants.iter().zip(&got).enumerate() {
        assert!(
            answers(want, response, daemon.pool),
            "answer #{i} is wrong: {}",
            explain()
        );
    }
    match ending {
        Ending::HalfClose => {
            assert!(
                ex.closed,
                "the daemon kept a half-closed connection open for {PROMPT:?}: {}",
                explain()
            );
            assert_eq!(
                got.len(),
                wants.len(),
                "every whole request must be answered before the daemon closes: {}",
                explain()
            );
        }
        Ending::Linger if ex.closed => {
            // The daemon hangs up only after a protocol violation, and after answering it.
            assert!(
                got.len() == wants.len() && wants.last().is_some_and(Want::closes),
                "the daemon closed a connection it had no reason to close: {}",
                explain()
            );
        }
        Ending::Linger | Ending::HangUp => {}
    }
}

// ----------------------------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------------------------

/// 2,000 generated inputs (or 20 s of them), each on its own connection: the daemon answers each
/// exactly as the protocol says, never dies, keeps serving a good client, leaks no connection
/// and no lease, and its memory stays put.
#[test]
fn a_bounded_run_of_arbitrary_input_finds_no_crash() {
    const INPUTS: usize = 2000;
    const TIME_LIMIT: Duration = Duration::from_secs(20);
    const CHECK_EVERY: usize = 100;
    const SEED: u64 = 0x0f0f_2545_f491_4f6c;
    let mut daemon = Daemon::start();
    assert_serves(&daemon); // warm up: allocator arenas, the lease path
    let rss_before = daemon.rss_kib();

    let mut rng = Rng(SEED);
    let started = Instant::now();
    let (mut done, mut bytes, mut closed_by_daemon) = (0, 0, 0);
    let mut answered = BTreeMap::new();
    let mut per_kind = [0usize; KINDS.len()];
    while done < INPUTS && started.elapsed() < TIME_LIMIT {
        let k = rng.below(KINDS.len());
        let kind = KINDS[k];
        let input = generate(&mut rng, kind);
        let ending = match rng.below(10) {
            0..=5 => Ending::HalfClose,
            6 | 7 => Ending::Linger,
            _ => Ending::HangUp,
        };
        let what = format!("input #{done} ({kind:?}, seed {SEED:#x})");
        let ex = exchange(&daemon, &input, ending);
        check(&daemon, &what, &input, ending, &ex);
        for response in responses(&ex.received, true, &what) {
            *answered.entry(response.name()).or_insert(0) += 1;
        }
        closed_by_daemon += usize::from(ex.closed);
        bytes += ex.sent;
        per_kind[k] += 1;
        done += 1;

        if done % CHECK_EVERY == 0 {
            assert!(
                daemon.is_running(),
                "the daemon died at {what}: {}\n{}",
                hex(&input),
                daemon.log()
            );
            let broker = good_client::connect(&daemon);
            // Every connection of the inputs so far has been closed, by us or by the daemon.
            assert_drained(&daemon, &broker, &format!("after {what}"));
            lease_and_accept(&daemon, &broker);
        }
    }
    let took = started.elapsed();

    assert!(daemon.is_running(), "the daemon died:\n{}", daemon.log());
    assert_serves(&daemon);
    let broker = good_client::connect(&daemon);
    assert_drained(&daemon, &broker, "at the end");
    let rss_after = daemon.rss_kib();
    let kinds: Vec<String> = KINDS
        .iter()
        .zip(per_kind)
        .map(|(kind, n)| format!("{kind:?} {n}"))
        .collect();
    eprintln!(
        "{done} inputs ({}; {bytes} bytes) in {took:?}; responses: {answered:?}; \
         {closed_by_daemon} connections closed by the daemon; daemon RSS {rss_before} KiB -> \
         {rss_after} KiB (+{} KiB)",
        kinds.join(", "),
        rss_after.saturating_sub(rss_before)
    );
    let log = daemon.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        .collect();
    assert!(
        errors.is_empty(),
        "the daemon logged errors:\n{}",
        errors.join("\n")
    );
    assert!(
        done >= INPUTS / 4,
        "only {done} inputs in {took:?}: the daemon answers far too slowly"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "daemon RSS grew from {rss_before} KiB to {rss_after} KiB over {done} inputs"
    );
}
