//! Speaking the wire protocol by hand, for tests that send what no real client would.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use portbroker_proto::{
    decode_response, encode_request, FrameSplitter, Request, Response, MAX_RESPONSE_FRAME,
    PROTOCOL_VERSION,
};

use super::Daemon;

/// How long the daemon may take to answer or close a connection it has everything for.
pub const PROMPT: Duration = Duration::from_secs(3);

/// A raw connection to the daemon that speaks no protocol unless told to.
pub fn raw(daemon: &Daemon) -> UnixStream {
    let stream = UnixStream::connect(&daemon.socket)
        .unwrap_or_else(|e| panic!("raw connect: {e}\n{}", daemon.log()));
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    stream
}

pub fn hello_frame(protocol: u32) -> Vec<u8> {
    encode_request(&Request::Hello {
        protocol,
        client: "raw-test-client".into(),
    })
    .unwrap()
}

/// A frame of any payload, length prefix included.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Reads one response frame, failing the test if none arrives within `limit`. It reads no byte
/// past that frame, so the next call finds the next one.
pub fn read_response(stream: &mut UnixStream, limit: Duration) -> Response {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut frames = FrameSplitter::new(MAX_RESPONSE_FRAME);
    loop {
        let missing = frames.missing().expect("a sane response length");
        if missing == 0 {
            break;
        }
        let mut bytes = vec![0; missing];
        stream.read_exact(&mut bytes).unwrap_or_else(|e| {
            if frames.is_empty() {
                panic!("no response frame within {limit:?}: {e}")
            } else {
                panic!("truncated response frame: {e}")
            }
        });
        frames.push(&bytes);
    }
    let payload = frames.next_payload().unwrap().expect("a whole frame");
    decode_response(payload).expect("a decodable response")
}

/// Reads the answer to a Hello sent on `stream` and checks that it greets us in our protocol.
/// `what` names the Hello in a failure.
pub fn expect_hello(daemon: &Daemon, stream: &mut UnixStream, what: &str) {
    match read_response(stream, PROMPT) {
        Response::Hello { protocol, .. } => assert_eq!(protocol, PROTOCOL_VERSION),
        other => panic!("{what} was answered with {other:?}\n{}", daemon.log()),
    }
}

/// Reads for up to `limit`; returns what came and whether the daemon closed the connection
/// (EOF, or ECONNRESET when it closed with our bytes unread).
pub fn read_for(stream: &mut UnixStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut received = Vec::new();
    let mut chunk = [0; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (received, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return (received, true),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (received, true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (received, false)
            }
            Err(e) => panic!("reading from the daemon: {e}"),
        }
    }
}

/// Reads until the daemon closes the connection and returns whatever came before. Fails if it
/// is still open after `limit`.
pub fn read_until_closed(stream: &mut UnixStream, limit: Duration) -> Vec<u8> {
    let (received, closed) = read_for(stream, limit);
    assert!(
        closed,
        "the daemon kept the connection open for {limit:?} (received {received:?})"
    );
    received
}

/// Splits what the daemon sent into responses. Every frame must be whole and decodable, but the
/// last one may be cut short when `may_be_cut`: we stopped reading before the daemon was done.
/// `what` names the exchange in a failure.
pub fn responses(received: &[u8], may_be_cut: bool, what: &str) -> Vec<Response> {
    let mut frames = FrameSplitter::new(MAX_RESPONSE_FRAME);
    frames.push(received);
    let mut out = Vec::new();
    loop {
        let rest = &received[received.len() - frames.buffered()..];
        let all_taken = frames.is_empty();
        match frames.next_payload() {
            Ok(Some(payload)) => out.push(decode_response(payload).unwrap_or_else(|e| {
                panic!(
                    "{what}: the daemon sent an undecodable response ({e}) after {out:?}: {}",
                    hex(payload)
                )
            })),
            Ok(None) if all_taken || may_be_cut => return out,
            other => panic!(
                "{what}: the daemon sent a bad or incomplete frame ({other:?}) after {out:?}: {}",
                hex(rest)
            ),
        }
    }
}

/// Bytes as hex for a failure message: the first 200 of them, and how many there were.
pub fn hex(bytes: &[u8]) -> String {
    const SHOWN: usize = 200;
    let mut out: String = bytes
        .iter()
        .take(SHOWN)
        .map(|b| format!("{b:02x}"))
        .collect();
    if bytes.len() > SHOWN {
        out.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    out
}
