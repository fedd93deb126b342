//! Arbitrary bytes through the frame decoder, as the broker and a client meet them.
//!
//! Broker side: the input is what a client wrote on its connection. It is split into frames by
//! a `FrameSplitter` with `MAX_REQUEST_FRAME`, as `portbrokerd` splits what it reads, and every
//! whole payload goes through `decode_request` and `peek_hello_protocol` (the broker peeks at a
//! payload it cannot decode, for a version mismatch). Client side: the same bytes, split with
//! `MAX_RESPONSE_FRAME`, go through `decode_response`.
//!
//! Properties: nothing panics; a frame header never claims more than the maximum; what the
//! splitter holds and still misses never exceeds one frame; whatever decodes re-encodes, and the
//! re-encoded frame decodes to the same value; `peek_hello_protocol` agrees with `decode_request`
//! about every payload that decodes.
//!
//! Run with `cargo +nightly fuzz run decode` from the repository root (see README, Fuzzing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portbroker_proto::{
    decode_request, decode_response, encode_request, encode_response, frame_payload_len,
    peek_hello_protocol, FrameSplitter, Request, HEADER_LEN, MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
};

fuzz_target!(|data: &[u8]| {
    // The broker's view: a client's byte stream.
    for_each_frame(data, MAX_REQUEST_FRAME, check_request);
    // The input as one payload too, so that the fuzzer need not find a length prefix first.
    check_request(data);

    // A client's view: the broker's byte stream.
    for_each_frame(data, MAX_RESPONSE_FRAME, check_response);
    check_response(data);
});

/// Calls `check` with the payload of every whole frame at the start of `stream`, split as the
/// broker splits what it reads: stops at an incomplete frame (the broker would wait for more)
/// and at a header it refuses (the broker would answer `Malformed` and close).
fn for_each_frame(stream: &[u8], max: u32, check: fn(&[u8])) {
    let mut frames = FrameSplitter::new(max);
    frames.push(stream);
    loop {
        match frames.next_payload() {
            Ok(Some(payload)) => {
                assert!(
                    (1..=max as usize).contains(&payload.len()),
                    "the splitter accepted a payload of {} bytes (max {max})",
                    payload.len()
                );
                check(payload);
            }
            Ok(None) => {
                let missing = frames.missing().expect("the header was accepted");
                assert!(missing >= 1, "a whole frame was not popped");
                assert!(
                    frames.buffered() + missing <= HEADER_LEN + max as usize,
                    "{} bytes held and {missing} missing exceed one frame (max {max})",
                    frames.buffered()
                );
                return;
            }
            Err(_) => return,
        }
    }
}

fn check_request(payload: &[u8]) {
    let peeked = peek_hello_protocol(payload);
    let Ok(request) = decode_request(payload) else {
        return;
    };
    // The broker relies on the frozen Hello prefix: a Hello's version is what peek reads, and
    // peek sees no Hello in any other request.
    match &request {
        Request::Hello { protocol, .. } => assert_eq!(
            peeked,
            Some(*protocol),
            "peek_hello_protocol disagrees with decode_request on {request:?}"
        ),
        other => assert_eq!(
            peeked, None,
            "peek_hello_protocol found a Hello in {other:?}"
        ),
    }
    let frame = encode_request(&request)
        .unwrap_or_else(|e| panic!("{request:?} was decoded but does not re-encode: {e}"));
    let len = frame_payload_len(&frame, MAX_REQUEST_FRAME)
        .expect("a re-encoded request has a valid header")
        .expect("a re-encoded request has a whole header");
    assert_eq!(HEADER_LEN + len, frame.len(), "header of {request:?}");
    let again = decode_request(&frame[HEADER_LEN..])
        .unwrap_or_else(|e| panic!("re-encoded {request:?} does not decode: {e}"));
    assert_eq!(again, request, "a request changed in a round trip");
}

fn check_response(payload: &[u8]) {
    let Ok(response) = decode_response(payload) else {
        return;
    };
    let frame = encode_response(&response)
        .unwrap_or_else(|e| panic!("{response:?} was decoded but does not re-encode: {e}"));
    let len = frame_payload_len(&frame, MAX_RESPONSE_FRAME)
        .expect("a re-encoded response has a valid header")
        .expect("a re-encoded response has a whole header");
    assert_eq!(HEADER_LEN + len, frame.len(), "header of {response:?}");
    let again = decode_response(&frame[HEADER_LEN..])
        .unwrap_or_else(|e| panic!("re-encoded {response:?} does not decode: {e}"));
    assert_eq!(again, response, "a response changed in a round trip");
}
