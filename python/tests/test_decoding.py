"""Hostile and truncated payloads: whatever the bytes, decoding returns a message or raises
``DecodeError`` (a ``ProtocolError``) that says what is wrong; never another exception, never
an allocation a length claims."""

import random

import pytest

from portbroker import ProtocolError, frames
from portbroker.protocol import Request
from portbroker.wire import U16, U32, U64, I32, DecodeError, Reader, decode_exactly, encode
from test_goldens import PYTHON

RESPONSE_PAYLOADS = [
    frames.encode_response(value)[4:]
    for value in PYTHON.values()
    if type(value).__qualname__.startswith("Response.")
]


def test_varints_take_the_shortest_form_and_read_every_form_bincode_writes():
    cases = [
        (0, [0]),
        (250, [250]),
        (251, [251, 251, 0]),
        (65535, [251, 255, 255]),
        (65536, [252, 0, 0, 1, 0]),
        (2**32, [253, 0, 0, 0, 0, 1, 0, 0, 0]),
    ]
    for value, expected in cases:
        assert list(encode(U64, value)) == expected
        assert decode_exactly(U64, bytes(expected)) == value
    # A longer form than needed is still read, as bincode reads it.
    assert decode_exactly(U32, bytes([251, 5, 0])) == 5
    # Zigzag for signed integers: 4242 -> 8484, -1 -> 1.
    assert list(encode(I32, 4242)) == [251, 36, 33]
    assert decode_exactly(I32, bytes([1])) == -1
    assert decode_exactly(I32, bytes([252, 255, 255, 255, 255])) == -(2**31)


@pytest.mark.parametrize(
    "codec, payload, complaint",
    [
        (U16, [252, 0, 0, 1, 0], "invalid integer marker 252 for a u16"),
        (U32, [253, 0, 0, 0, 0, 0, 0, 0, 0], "invalid integer marker 253 for a u32"),
        (U64, [254] + [0] * 16, "invalid integer marker 254"),
        (U64, [255], "invalid integer marker 255"),
        (U64, [251, 1], "truncated message: u64 needs 2 bytes"),
    ],
)
def test_malformed_integers_are_refused_with_what_is_wrong(codec, payload, complaint):
    with pytest.raises(DecodeError, match=complaint):
        decode_exactly(codec, bytes(payload))


def test_every_truncation_of_every_response_is_a_decode_error():
    for payload in RESPONSE_PAYLOADS:
        for cut in range(len(payload)):
            with pytest.raises(DecodeError):
                frames.decode_response(payload[:cut])


def test_trailing_bytes_are_an_error():
    with pytest.raises(DecodeError, match="1 trailing bytes after a 1-byte message"):
        frames.decode_response(bytes([14, 0]))


def test_an_unknown_variant_is_a_clear_error():
    with pytest.raises(
        DecodeError, match=r"unknown Response variant 200 \(this package knows 0 to 17\)"
    ):
        frames.decode_response(bytes([200]))
    # A refusal this package does not know, inside a known response.
    with pytest.raises(DecodeError, match="unknown Refusal variant 8"):
        frames.decode_response(bytes([2, 8]))
    with pytest.raises(DecodeError, match="unknown LeaseState variant 5"):
        payload = bytearray(frames.encode_response(PYTHON["lease_state_number"])[4:])
        payload[-1] = 5
        frames.decode_response(bytes(payload))


def test_a_length_claiming_terabytes_is_refused_before_allocation():
    # Response::Failed(Malformed { detail }) with a string length of 2^45.
    payload = bytes([6, 3, 253]) + (1 << 45).to_bytes(8, "little")
    with pytest.raises(DecodeError, match=r"a string of 35184372088832 bytes"):
        frames.decode_response(payload)
    # Leases(vec) claiming 2^40 entries.
    payload = bytes([4, 253]) + (1 << 40).to_bytes(8, "little")
    with pytest.raises(DecodeError, match="claims 1099511627776 elements"):
        frames.decode_response(payload)


def test_bad_bools_options_and_text_are_errors():
    granted = bytearray(frames.encode_response(PYTHON["response_granted"])[4:])
    # The first socket's `listening` flag (true) sits after variant, id, count, transport,
    # the V6 address (1 + 16 bytes) and the port (3 bytes).
    at = 1 + 1 + 1 + 1 + 17 + 3
    assert granted[at] == 1
    granted[at] = 2
    with pytest.raises(DecodeError, match="invalid bool 2"):
        frames.decode_response(bytes(granted))
    with pytest.raises(DecodeError, match=r"invalid Option<u64> tag 7"):
        frames.decode_response(bytes([12, 7, 7]))
    with pytest.raises(DecodeError, match="not UTF-8"):
        frames.decode_response(bytes([6, 3, 2, 0xC3, 0x28]))


def test_random_corruptions_decode_or_fail_cleanly():
    rng = random.Random(12)
    for _ in range(3000):
        payload = bytearray(rng.choice(RESPONSE_PAYLOADS))
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        try:
            frames.decode_response(bytes(payload))
        except ProtocolError:
            pass


def test_frame_prefixes_are_checked_before_the_payload():
    assert frames.payload_len(b"\x05\x00\x00", frames.MAX_RESPONSE_FRAME) is None
    with pytest.raises(frames.FrameError, match="empty frame"):
        frames.payload_len(b"\x00\x00\x00\x00", frames.MAX_RESPONSE_FRAME)
    too_big = (frames.MAX_RESPONSE_FRAME + 1).to_bytes(4, "little")
    with pytest.raises(frames.FrameError, match="67108865 bytes exceeds the maximum of 67108864"):
        frames.payload_len(too_big, frames.MAX_RESPONSE_FRAME)
    buffer = frames.FrameBuffer(10)
    buffer.push(b"\x02\x00")
    assert buffer.missing() == 2
    buffer.push(b"\x00\x00a")
    assert buffer.next_payload() is None and buffer.missing() == 1
    buffer.push(b"b\x01\x00\x00\x00c")
    assert buffer.next_payload() == b"ab"
    assert buffer.next_payload() == b"c"
    assert buffer.buffered() == 0


def test_a_hello_of_any_version_shows_its_version():
    assert frames.peek_hello_protocol(bytes([0, 9, 1, 2, 3])) == 9
    assert frames.peek_hello_protocol(bytes([2, 7])) is None
    assert frames.peek_hello_protocol(b"") is None


def test_a_request_too_large_for_the_broker_is_not_sent():
    with pytest.raises(ValueError, match="exceeds the maximum of 65536 bytes"):
        frames.encode_request(Request.LeaseNamed(name="x" * 70_000))


def test_the_reader_names_what_was_cut():
    reader = Reader(b"\x01")
    with pytest.raises(DecodeError, match="an IPv4 address needs 4 bytes at byte 0, 1 left"):
        reader.take(4, "an IPv4 address")
