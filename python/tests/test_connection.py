"""The client end of a connection against a scripted broker on the other end of a socket pair:
sockets travel with their frame whatever the stream does, stray fds are closed, and a broker
that misbehaves gets an error that says how, never a hang or a crash."""

import ipaddress
import os
import socket
import threading

import pytest

import portbroker
from portbroker import frames
from portbroker.broker import Broker
from portbroker.connection import Connection
from portbroker.protocol import (
    PROTOCOL_VERSION,
    Failure,
    GrantedSocket,
    Holder,
    Listen,
    Refusal,
    Request,
    Response,
    Transport,
)
from portbroker.wire import SocketAddr
from test_goldens import PYTHON


class ScriptedBroker:
    """The broker's end of a socket pair: sends what a test says, reads what the client sent."""

    def __init__(self, timeout=5.0):
        self.ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.settimeout(timeout)
        self.broker = Broker(Connection(theirs, "/scripted.sock"))

    def send(self, response, fds=()):
        self.send_bytes(frames.encode_response(response), fds)

    def send_bytes(self, data, fds=()):
        if fds:
            socket.send_fds(self.ours, [data], list(fds))
        else:
            self.ours.sendall(data)

    def requests(self):
        """Every request the client has sent so far."""
        self.ours.setblocking(False)
        data = b""
        try:
            while True:
                chunk = self.ours.recv(65536)
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass
        buffer, out = frames.FrameBuffer(frames.MAX_REQUEST_FRAME), []
        buffer.push(data)
        while (payload := buffer.next_payload()) is not None:
            out.append(frames.decode_request(payload))
        return out

    def close(self):
        self.broker.close()
        self.ours.close()


@pytest.fixture
def scripted():
    broker = ScriptedBroker()
    yield broker
    broker.close()


def listening_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def granted(lease_id, *socks, fds=None):
    sockets = tuple(
        GrantedSocket(
            Transport.TCP,
            SocketAddr(ipaddress.ip_address(s.getsockname()[0]), s.getsockname()[1]),
            True,
            False,
        )
        for s in socks
    )
    return Response.Granted(id=lease_id, sockets=sockets, fds=len(socks) if fds is None else fds)


def a_pipe_whose_read_end_travels():
    """A pipe's read end to send, and its write end: once the only copy of the read end that
    is left (the one sent) is closed, writing fails with EPIPE."""
    read_end, write_end = os.pipe()
    return read_end, write_end


def assert_closed_everywhere(write_end):
    with pytest.raises(BrokenPipeError):
        os.write(write_end, b"x")
    os.close(write_end)


def test_granted_sockets_are_the_brokers_in_the_order_of_the_specs(scripted):
    first, second = listening_socket(), listening_socket()
    scripted.send(granted(9, first, second), fds=[first.fileno(), second.fileno()])
    lease = scripted.broker.lease("tcp:127.0.0.1:0", "tcp:127.0.0.1:0")
    assert [s.getsockname() for s in lease.sockets] == [first.getsockname(), second.getsockname()]
    assert lease.id == 9 and lease.port == first.getsockname()[1] and lease.address == "127.0.0.1"
    # The socket serves: a client connects and is accepted on it.
    with socket.create_connection(lease.socket.getsockname(), timeout=5):
        accepted, _ = lease.socket.accept()
        accepted.close()
    (request,) = scripted.requests()
    spec = portbroker.parse_spec("tcp:127.0.0.1:0")
    assert request == Request.Lease(sockets=(spec, spec))
    first.close()
    second.close()
    scripted.send(Response.Released(id=9))
    assert lease.release() is True
    assert lease.socket.fileno() == -1, "release closes this process's copies first"


def test_lease_options_reach_the_broker_as_listen_modes(scripted):
    for options, listen in [
        ({"listen": False}, Listen.BindOnly()),
        ({"backlog": 7}, Listen.Backlog(7)),
    ]:
        scripted.send(Response.Refused(Refusal.NotPermitted(reason="scripted")))
        with pytest.raises(portbroker.NotPermitted):
            scripted.broker.lease("tcp:127.0.0.1:0", "udp:127.0.0.1:0", **options)
        (request,) = scripted.requests()
        assert [spec.listen for spec in request.sockets] == [listen, Listen.Default()]
    scripted.send(Response.Refused(Refusal.NotPermitted(reason="scripted")))
    with pytest.raises(portbroker.NotPermitted):
        scripted.broker.lease_number("tcp:127.0.0.1:0", v6_only=True)
    (request,) = scripted.requests()
    assert request.sockets[0].listen == Listen.Number() and request.sockets[0].v6_only


def test_fds_that_arrive_with_an_earlier_frame_wait_for_their_own(scripted):
    sock = listening_socket()
    # The fd rides on the bytes of a notice; the Granted frame that owns it comes after.
    scripted.send(Response.Revoked(id=3), fds=[sock.fileno()])
    scripted.send(granted(4, sock))
    lease = scripted.broker.lease("tcp:127.0.0.1:0")
    assert lease.socket.getsockname() == sock.getsockname()
    assert scripted.broker.ended(3) == "revoked", "the notice on the way is recorded"
    sock.close()


def test_a_number_lease_has_a_port_and_no_socket(scripted):
    probe = listening_socket()
    port = probe.getsockname()[1]
    scripted.send(granted(5, probe, fds=0))
    probe.close()
    lease = scripted.broker.lease_number("tcp:127.0.0.1:0")
    assert lease.sockets == [] and lease.socket is None
    assert lease.port == port
    # Taken over by the server's lease: the broker no longer knows the id.
    scripted.send(Response.Failed(Failure.UnknownLease(id=5)))
    assert lease.release() is False


def test_fds_that_no_frame_claims_are_closed(scripted):
    read_end, write_end = a_pipe_whose_read_end_travels()
    scripted.send(Response.Released(id=1), fds=[read_end])
    os.close(read_end)
    assert scripted.broker.release(1) is True
    assert_closed_everywhere(write_end)


def test_fewer_fds_than_announced_is_an_error_and_leaks_none(scripted):
    read_end, write_end = a_pipe_whose_read_end_travels()
    sock = listening_socket()
    scripted.send(granted(6, sock, sock), fds=[read_end])
    os.close(read_end)
    with pytest.raises(
        portbroker.ProtocolError, match="announced 2 sockets but sent 1 file descriptors"
    ):
        scripted.broker.lease("tcp:127.0.0.1:0", "tcp:127.0.0.1:0")
    assert_closed_everywhere(write_end)
    sock.close()


def test_an_fd_that_is_not_a_socket_is_an_error_and_is_closed(scripted):
    read_end, write_end = a_pipe_whose_read_end_travels()
    sock = listening_socket()
    scripted.send(granted(6, sock), fds=[read_end])
    scripted.send(Response.Released(id=6))
    os.close(read_end)
    with pytest.raises(portbroker.ProtocolError, match="not a socket"):
        scripted.broker.lease("tcp:127.0.0.1:0")
    assert_closed_everywhere(write_end)
    assert scripted.requests()[-1] == Request.Release(id=6), "the useless lease is released"
    sock.close()


def test_an_oversized_frame_is_refused_before_its_payload_arrives(scripted):
    # Only the prefix comes: waiting for 100 MiB would hang until the timeout.
    scripted.send_bytes((100 * 1024 * 1024).to_bytes(4, "little"))
    with pytest.raises(
        portbroker.ProtocolError, match="104857600 bytes exceeds the maximum of 67108864"
    ):
        scripted.broker.list()


def test_an_empty_frame_is_refused(scripted):
    scripted.send_bytes(b"\x00\x00\x00\x00")
    with pytest.raises(portbroker.ProtocolError, match="empty frame"):
        scripted.broker.list()


def test_a_broker_that_hangs_up_mid_frame_loses_the_connection(scripted):
    scripted.send_bytes(frames.encode_response(Response.Released(id=1))[:4])
    scripted.ours.shutdown(socket.SHUT_WR)
    with pytest.raises(portbroker.ConnectionLost, match="the broker closed the connection"):
        scripted.broker.release(1)


def test_a_request_that_failed_half_way_leaves_the_connection_refusing_requests():
    # The connection itself: a Broker connects again instead (test_reconnect.py).
    scripted = ScriptedBroker(timeout=0.2)
    connection = scripted.broker._conn
    try:
        with pytest.raises(portbroker.ConnectionLost, match="did not answer in time"):
            connection.round_trip(Request.List())
        # The late answer must never pass for the answer of the next request.
        scripted.send(Response.Leases(()))
        with pytest.raises(portbroker.ConnectionLost, match="connect again"):
            connection.round_trip(Request.List())
        assert not connection.usable
    finally:
        scripted.close()


def test_an_answer_of_the_wrong_kind_is_a_protocol_error(scripted):
    scripted.send(Response.Watching())
    with pytest.raises(portbroker.ProtocolError, match="the broker answered Release with Watching"):
        scripted.broker.release(1)


def test_a_hello_of_another_version_is_a_version_mismatch(scripted):
    # Protocol 9, and fields this package cannot decode.
    scripted.send_bytes(bytes([5, 0, 0, 0, 0, 9, 1, 2, 3]))
    with pytest.raises(
        portbroker.VersionMismatch, match="the broker speaks version 9, this package version 5"
    ):
        scripted.broker.list()


def test_a_broker_that_says_version_mismatch_raises_it(scripted):
    scripted.send(Response.Failed(Failure.VersionMismatch(broker=6, client=PROTOCOL_VERSION)))
    with pytest.raises(portbroker.VersionMismatch, match="the broker speaks version 6"):
        scripted.broker.list()


REFUSALS = {
    "refusal_in_use": portbroker.InUse,
    "refusal_in_use_outside": portbroker.InUseOutside,
    "refusal_not_permitted": portbroker.NotPermitted,
    "refusal_invalid_spec": portbroker.InvalidSpec,
    "refusal_pool_exhausted": portbroker.PoolExhausted,
    "refusal_bind_failed": portbroker.BindFailed,
    "refusal_quota_exceeded": portbroker.QuotaExceeded,
    "refusal_unknown_service": portbroker.UnknownService,
}


@pytest.mark.parametrize("golden", sorted(REFUSALS))
def test_every_refusal_raises_its_own_exception(scripted, golden):
    scripted.send(PYTHON[golden])
    with pytest.raises(REFUSALS[golden]) as raised:
        scripted.broker.lease("tcp:127.0.0.1:0")
    error = raised.value
    assert isinstance(error, portbroker.Refused) and isinstance(error, portbroker.PortbrokerError)
    assert error.refusal == PYTHON[golden].refusal
    assert error.name == golden[len("refusal_") :]
    assert str(error).startswith("lease refused: ")


def test_a_holder_name_is_escaped_in_messages_and_raw_on_the_exception(scripted):
    evil = Holder(pid=7, uid=1000, gid=1000, name="ev\x1b[31m\nil")
    refusal = PYTHON["refusal_in_use"].refusal
    scripted.send(Response.Refused(type(refusal)(**{**refusal.__dict__, "holder": evil})))
    with pytest.raises(portbroker.InUse) as raised:
        scripted.broker.lease("tcp:0.0.0.0:8080")
    text = str(raised.value)
    assert text == (
        "lease refused: tcp:0.0.0.0:8080 is in use: lease 5 holds tcp:127.0.0.1:8080, "
        r"held by pid 7 (ev\x1b[31m\nil, uid 1000)"
    )
    assert raised.value.holder.name == "ev\x1b[31m\nil" and raised.value.holder.pid == 7


FAILURES = {
    "failure_unknown_lease": portbroker.UnknownLease,
    "failure_not_your_lease": portbroker.NotYourLease,
    "failure_not_permitted": portbroker.Failed,
    "failure_journal_unavailable": portbroker.Failed,
}


@pytest.mark.parametrize("golden", sorted(FAILURES))
def test_failures_raise_failed(scripted, golden):
    scripted.send(PYTHON[golden])
    with pytest.raises(FAILURES[golden]) as raised:
        scripted.broker.renew(3, 10)
    assert raised.value.failure == PYTHON[golden].failure


def test_a_real_handshake_with_a_broker_of_ones_own_user(tmp_path):
    path = str(tmp_path / "fake.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    seen = []

    def serve():
        conn, _ = server.accept()
        with conn:
            buffer = frames.FrameBuffer(frames.MAX_REQUEST_FRAME)
            while (payload := buffer.next_payload()) is None:
                buffer.push(conn.recv(4096))
            seen.append(frames.decode_request(payload))
            conn.sendall(
                frames.encode_response(
                    Response.Hello(protocol=PROTOCOL_VERSION, daemon_version="9.9.9")
                )
            )
            conn.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with portbroker.connect(path) as broker:
            assert broker.daemon_version == "9.9.9" and broker.path == path
    finally:
        thread.join(10)
        server.close()
    assert seen == [Request.Hello(protocol=PROTOCOL_VERSION, client=portbroker.CLIENT_NAME)]


def test_nothing_listening_is_unreachable_with_what_to_do(tmp_path):
    path = str(tmp_path / "nobody-here.sock")
    with pytest.raises(portbroker.Unreachable) as raised:
        portbroker.connect(path)
    text = str(raised.value)
    assert f"cannot reach the broker at {path}: No such file or directory" in text
    assert "is portbrokerd running?" in text and "PORTBROKER_SOCKET" in text
    with pytest.raises(portbroker.Unreachable):
        portbroker.lease("tcp:127.0.0.1:0", path=path)
