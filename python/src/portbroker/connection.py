"""One connection to the broker: request frames out; response frames, and the file descriptors
that travel with them (``SCM_RIGHTS``), in.

A stream socket does not keep fds aligned with frames: the kernel attaches them to the first byte
of their ``Granted`` frame, and a read may bring them with the end of the frame before. So every
fd received joins a queue, and each ``Granted`` takes exactly the number it announces from the
front. Fds that no frame claims are closed, never leaked.

Requests and answers alternate. A request that fails half-way (a timeout, a broken or garbled
stream) leaves the connection out of step: it refuses further requests instead of pairing a
stale answer with a new one. Its leases stay alive until it is closed.
"""

import array
import collections
import os
import socket
import threading

from . import frames, protocol, trust
from .answers import failure_error, refusal_error
from .errors import ConnectionLost, ProtocolError, Unreachable, VersionMismatch, describe_os_error
from .wire import DecodeError

# A lease holds at most 64 sockets: room for that many fds in one read.
MAX_FDS_PER_READ = 64
_FD_SIZE = array.array("i").itemsize
MIN_READ, MAX_READ = 4096, 1 << 20


class Reply:
    """A response, with the sockets that came with it (only ``Granted`` has any)."""

    def __init__(self, response, fds):
        self.response = response
        self.fds = fds


class Connection:
    """A connected, trusted, greeted socket to the broker at ``path``."""

    def __init__(self, sock, path):
        self._sock = sock
        self.path = path
        self._frames = frames.FrameBuffer(frames.MAX_RESPONSE_FRAME)
        self._fds = collections.deque()
        self._out_of_step = None
        self._lock = threading.Lock()
        self.daemon_version = None
        # Whether the last request left whole (so the broker may have carried it out), for a
        # caller deciding whether to send it again on a new connection.
        self.delivered = False
        # Leases the broker ended by itself and said so between answers: id -> "revoked" or
        # "expired".
        self.ended = {}

    @classmethod
    def open(cls, path, timeout, client_name):
        """Connects to ``path``, checks who answers, and exchanges ``Hello``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError as error:
                raise Unreachable([(path, error)]) from None
            # Before a single byte goes out.
            trust.check_peer(sock, path)
        except BaseException:
            sock.close()
            raise
        conn = cls(sock, path)
        try:
            hello = protocol.Request.Hello(protocol=protocol.PROTOCOL_VERSION, client=client_name)
            answer = conn.ask(hello, protocol.Response.Hello)
            if answer.protocol != protocol.PROTOCOL_VERSION:
                raise VersionMismatch(answer.protocol, protocol.PROTOCOL_VERSION)
            conn.daemon_version = answer.daemon_version
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self):
        """Closes the connection (the broker ends every lease held on it) and any fd queued."""
        with self._lock:
            self._sock.close()
            self._close_queued_fds()
            self._out_of_step = self._out_of_step or "the connection is closed"

    @property
    def closed(self):
        return self._sock.fileno() == -1

    @property
    def usable(self):
        """Whether it takes requests: open, and no request failed half-way on it."""
        return not self.closed and not self._out_of_step

    def ask(self, request, expected):
        """Sends ``request`` and returns its answer, which must be an ``expected`` response
        (a ``Response.*`` class); the broker's refusal or failure raises its exception (see
        :func:`raise_for`). For answers without fds."""
        reply = self.round_trip(request)
        for fd in reply.fds:
            os.close(fd)
        return expect(request, reply.response, expected)

    def round_trip(self, request):
        """Sends ``request`` and waits for its :class:`Reply`; notices the broker sends between
        answers are recorded on the way."""
        with self._lock:
            if self._out_of_step:
                raise ConnectionLost(
                    self.path,
                    f"{self._out_of_step}; this connection takes no more requests: connect again",
                )
            frame = frames.encode_request(request)
            self._out_of_step = f"a {protocol.name_of(request)} request failed half-way"
            self.delivered = False
            self._send(frame)
            self.delivered = True
            reply = self._receive()
            self._out_of_step = None
            if self._frames.buffered() == 0:
                # Nothing more is due before the next request: fds still queued belong to no
                # frame.
                self._close_queued_fds()
            return reply

    def _lost(self, error):
        if isinstance(error, socket.timeout):
            reason = "the broker did not answer in time"
        elif isinstance(error, OSError):
            reason = describe_os_error(error)
        else:
            reason = str(error)
        return ConnectionLost(self.path, reason)

    def _send(self, frame):
        try:
            # MSG_NOSIGNAL: a library must not kill its host with SIGPIPE when the broker is gone.
            self._sock.sendall(frame, socket.MSG_NOSIGNAL)
        except OSError as error:
            # A broker that refuses a connection (a limit) answers and hangs up without reading:
            # its answer, already here, says why better than the broken pipe does.
            early = self._answer_already_here()
            if isinstance(early, protocol.Response.Failed):
                raise_for(early)
            raise self._lost(error) from None

    def _answer_already_here(self):
        timeout = self._sock.gettimeout()
        try:
            self._sock.settimeout(0.0)
            try:
                reply = self._next_frame()
            finally:
                self._sock.settimeout(timeout)
            for fd in reply.fds:
                os.close(fd)
            return reply.response
        except (OSError, ProtocolError, ConnectionLost):
            return None

    def _receive(self):
        while True:
            reply = self._next_frame()
            response = reply.response
            if isinstance(response, (protocol.Response.Revoked, protocol.Response.Expired)):
                self.ended[response.id] = protocol.name_of(response).lower()
                continue
            if isinstance(response, (protocol.Response.Event, protocol.Response.Missed)):
                # Only for a connection that said Watch, which this package never does.
                continue
            return reply

    def _next_frame(self):
        while True:
            try:
                payload = self._frames.next_payload()
                wanted = self._frames.missing() if payload is None else 0
            except frames.FrameError as error:
                raise ProtocolError(f"bad frame from the broker: {error.detail}") from None
            if payload is not None:
                return self._take_frame(payload)
            self._fill(min(max(wanted, MIN_READ), MAX_READ))

    def _take_frame(self, payload):
        try:
            response = frames.decode_response(payload)
        except DecodeError as error:
            # A Hello of another version may not decode with these types; say what it is.
            version = frames.peek_hello_protocol(payload)
            if version is not None and version != protocol.PROTOCOL_VERSION:
                raise VersionMismatch(version, protocol.PROTOCOL_VERSION) from None
            raise ProtocolError(f"cannot decode the broker's response: {error.detail}") from None
        fds = []
        if isinstance(response, protocol.Response.Granted):
            # An id is granted once in a broker's life: a notice of an earlier lease with this
            # id came from an earlier life of the broker.
            self.ended.pop(response.id, None)
            if len(self._fds) < response.fds:
                announced, came = response.fds, len(self._fds)
                self._close_queued_fds()
                raise ProtocolError(
                    f"the broker announced {announced} sockets but sent {came} file descriptors"
                )
            fds = [self._fds.popleft() for _ in range(response.fds)]
        return Reply(response, fds)

    def _fill(self, size):
        """One ``recvmsg`` of at most ``size`` bytes; its fds join the queue."""
        try:
            data, ancillary, flags, _ = self._sock.recvmsg(
                size, socket.CMSG_SPACE(MAX_FDS_PER_READ * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
            )
        except OSError as error:
            raise self._lost(error) from None
        received = []
        for level, kind, cmsg in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cmsg[: len(cmsg) - len(cmsg) % _FD_SIZE])
                received.extend(fds)
        if flags & socket.MSG_CTRUNC:
            # The kernel closed the fds that did not fit: a lease would come without sockets.
            for fd in received:
                os.close(fd)
            raise ProtocolError(
                f"more file descriptors arrived than fit in one read ({MAX_FDS_PER_READ}); "
                "some were lost (MSG_CTRUNC)"
            )
        self._fds.extend(received)
        if not data:
            raise ConnectionLost(self.path, "the broker closed the connection")
        self._frames.push(data)

    def _close_queued_fds(self):
        while self._fds:
            os.close(self._fds.popleft())


def expect(request, response, expected):
    """``response`` if it is an ``expected``; raises the broker's refusal or failure, and a
    :class:`ProtocolError` naming what came for anything else."""
    if isinstance(response, expected):
        return response
    raise_for(response)
    raise ProtocolError(
        f"the broker answered {protocol.name_of(request)} with {protocol.name_of(response)}"
    )


def raise_for(response):
    """Raises the exception of a ``Refused`` or ``Failed`` response; returns for others."""
    if isinstance(response, protocol.Response.Refused):
        raise refusal_error(response.refusal)
    if isinstance(response, protocol.Response.Failed):
        raise failure_error(response.failure)
