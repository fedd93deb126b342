//! Speaking the wire protocol by hand, for tests that send what no real client would.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use portbroker_proto::{
    decode_response, encode_request, frame_payload_len, Request, Response, HEADER_LEN,
    MAX_RESPONSE_FRAME,
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

/// Reads one response frame, failing the test if none arrives within `limit`.
pub fn read_response(stream: &mut UnixStream, limit: Duration) -> Response {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut header = [0; HEADER_LEN];
    stream
        .read_exact(&mut header)
        .unwrap_or_else(|e| panic!("no response frame within {limit:?}: {e}"));
    let len = frame_payload_len(&header, MAX_RESPONSE_FRAME)
        .expect("a sane response length")
        .expect("a whole header");
    let mut payload = vec![0; len];
    stream
        .read_exact(&mut payload)
        .unwrap_or_else(|e| panic!("truncated response frame: {e}"));
    decode_response(&payload).expect("a decodable response")
}
