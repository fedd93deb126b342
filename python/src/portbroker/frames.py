"""Frames: a 4-byte little-endian payload length, then one bincode-encoded message.

The length is checked against the direction's maximum *before* anything is read or kept for
the payload, so a peer that claims 4 GiB costs nothing; an empty payload is an error too. After
a bad length the stream cannot be resynchronised: the connection is done.
"""

from . import protocol
from .wire import DecodeError, EncodeError, Reader, U32, decode_exactly, encode

HEADER_LEN = 4
MAX_REQUEST_FRAME = 64 * 1024
"""The largest request payload a broker accepts."""
MAX_RESPONSE_FRAME = 64 * 1024 * 1024
"""The largest response payload a client accepts (a ``List`` of a very large table)."""


class FrameError(DecodeError):
    """A length prefix that no frame may have."""


def _frame(payload, limit):
    if len(payload) > limit:
        raise EncodeError(f"a frame of {len(payload)} bytes exceeds the maximum of {limit} bytes")
    return len(payload).to_bytes(HEADER_LEN, "little") + payload


def encode_request(request):
    """A whole request frame, length prefix included."""
    return _frame(encode(protocol.Request, request), MAX_REQUEST_FRAME)


def encode_response(response):
    """A whole response frame (the broker's side; for tests)."""
    return _frame(encode(protocol.Response, response), MAX_RESPONSE_FRAME)


def decode_request(payload):
    """A request from a payload (the bytes after the length prefix); for tests."""
    return decode_exactly(protocol.Request, payload)


def decode_response(payload):
    """A response from a payload (the bytes after the length prefix)."""
    return decode_exactly(protocol.Response, payload)


def peek_hello_protocol(payload):
    """The protocol version of a ``Hello`` of any version, or ``None`` if ``payload`` is not a
    ``Hello``: variant 0 with the version first never changes, so a peer of another version can
    still say "version mismatch" instead of failing on what follows."""
    reader = Reader(payload)
    try:
        if U32.decode(reader) != 0:
            return None
        return U32.decode(reader)
    except DecodeError:
        return None


def payload_len(buffer, limit):
    """The payload length announced at the start of ``buffer``; ``None`` while fewer than 4
    bytes are there; :class:`FrameError` for 0 or above ``limit``."""
    if len(buffer) < HEADER_LEN:
        return None
    length = int.from_bytes(buffer[:HEADER_LEN], "little")
    if length == 0:
        raise FrameError("an empty frame (length prefix 0)")
    if length > limit:
        raise FrameError(f"a frame of {length} bytes exceeds the maximum of {limit} bytes")
    return length


class FrameBuffer:
    """Splits a byte stream into payloads, refusing a bad length as soon as its prefix is in."""

    def __init__(self, limit=MAX_RESPONSE_FRAME):
        self.limit = limit
        self._buffer = bytearray()

    def push(self, data):
        self._buffer += data

    def buffered(self):
        """Bytes held: a partial frame, or whole frames not yet taken."""
        return len(self._buffer)

    def next_payload(self):
        """The next whole payload, or ``None`` while it is incomplete."""
        length = payload_len(self._buffer, self.limit)
        if length is None or len(self._buffer) < HEADER_LEN + length:
            return None
        payload = bytes(self._buffer[HEADER_LEN : HEADER_LEN + length])
        del self._buffer[: HEADER_LEN + length]
        return payload

    def missing(self):
        """Bytes still needed before :meth:`next_payload` returns a frame: the rest of the
        prefix, then the rest of its payload; 0 when one is whole."""
        length = payload_len(self._buffer, self.limit)
        if length is None:
            return HEADER_LEN - len(self._buffer)
        return max(0, HEADER_LEN + length - len(self._buffer))
