"""A Broker whose connection breaks (a restarted broker) connects again by itself, against a
scripted broker listening on a real socket path: it takes its leases back with ``Reattach``, a
lease the broker does not give back is lost and nothing is sent for it, and a request that may
have been carried out is not sent again."""

import socket
import threading

import pytest

import portbroker
from portbroker import frames
from portbroker.protocol import PROTOCOL_VERSION, Request, Response
from test_connection import granted, listening_socket

HELLO = Response.Hello(protocol=PROTOCOL_VERSION, daemon_version="9.9.9")
# Steps of a scripted connection: answer the next request (with fds), hang up at once, or read
# the next request and hang up without answering.
CLOSE = ("close",)
READ_AND_CLOSE = ("read and close",)


def reply(response, fds=()):
    return ("reply", response, list(fds))


class ScriptedServer:
    """Accepts one connection per script, in order; records every request each one sent."""

    def __init__(self, path, *scripts):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen()
        self.listener.settimeout(10)
        self.seen = [[] for _ in scripts]
        self.hung_up = [threading.Event() for _ in scripts]
        self.error = None
        self.thread = threading.Thread(target=self._serve, args=(scripts,))
        self.thread.start()

    def _serve(self, scripts):
        try:
            for index, script in enumerate(scripts):
                conn, _ = self.listener.accept()
                conn.settimeout(10)
                with conn:
                    buffer = frames.FrameBuffer(frames.MAX_REQUEST_FRAME)
                    for step in script:
                        if step == CLOSE:
                            break
                        self.seen[index].append(self._next_request(conn, buffer))
                        if step == READ_AND_CLOSE:
                            break
                        _, response, fds = step
                        data = frames.encode_response(response)
                        if fds:
                            socket.send_fds(conn, [data], fds)
                        else:
                            conn.sendall(data)
                    else:
                        # The script is done: record what else comes until the client hangs up.
                        while (request := self._next_request(conn, buffer)) is not None:
                            self.seen[index].append(request)
                self.hung_up[index].set()
        except Exception as error:  # reported by join()
            self.error = error

    @staticmethod
    def _next_request(conn, buffer):
        while (payload := buffer.next_payload()) is None:
            data = conn.recv(4096)
            if not data:
                return None
            buffer.push(data)
        return frames.decode_request(payload)

    def join(self):
        self.thread.join(20)
        self.listener.close()
        assert not self.thread.is_alive(), "the scripted server is still waiting"
        if self.error is not None:
            raise self.error


def hello():
    return Request.Hello(protocol=PROTOCOL_VERSION, client=portbroker.CLIENT_NAME)


def a_lease_then_a_crash(held):
    """The first life of the broker: it grants lease 7 on ``held`` and dies."""
    return [reply(HELLO), reply(granted(7, held), fds=[held.fileno()]), CLOSE]


def test_a_broken_connection_is_made_again_and_the_lease_taken_back(tmp_path):
    held = listening_socket()
    server = ScriptedServer(
        str(tmp_path / "broker.sock"),
        a_lease_then_a_crash(held),
        [
            reply(HELLO),
            reply(Response.Reattached(ids=(7,))),
            reply(Response.Leases(())),
            reply(Response.Renewed(id=7, expires_unix_ms=None)),
        ],
    )
    try:
        broker = portbroker.connect(server.path)
        lease = broker.lease("tcp:127.0.0.1:0")
        assert server.hung_up[0].wait(10)
        # The next request finds the connection broken, connects again and takes lease 7 back.
        assert broker.list() == []
        assert lease.renew(0) is None
        broker.close()
    finally:
        held.close()
        server.join()
    assert server.seen[1] == [
        hello(),
        Request.Reattach(ids=(7,)),
        Request.List(),
        Request.Renew(id=7, ttl_ms=0),
    ]


def test_a_lease_the_broker_does_not_give_back_is_lost_and_nothing_is_sent_for_it(tmp_path):
    held = listening_socket()
    server = ScriptedServer(
        str(tmp_path / "broker.sock"),
        a_lease_then_a_crash(held),
        [reply(HELLO), reply(Response.Reattached(ids=())), reply(Response.Leases(()))],
    )
    try:
        broker = portbroker.connect(server.path)
        lease = broker.lease("tcp:127.0.0.1:0")
        assert server.hung_up[0].wait(10)
        assert broker.list() == []
        with pytest.raises(portbroker.LeaseLost, match="lease 7 was lost"):
            lease.renew(5)
        assert lease.release() is False
        broker.close()
    finally:
        held.close()
        server.join()
    # After a restart without the journal, id 7 may be another process's lease: neither the
    # renewal nor the release went out.
    assert server.seen[1] == [hello(), Request.Reattach(ids=(7,)), Request.List()]


def test_a_request_that_may_have_been_carried_out_is_not_sent_again(tmp_path):
    server = ScriptedServer(
        str(tmp_path / "broker.sock"),
        [reply(HELLO), READ_AND_CLOSE],
        [reply(HELLO), reply(Response.Leases(()))],
    )
    try:
        broker = portbroker.connect(server.path)
        with pytest.raises(portbroker.ConnectionLost):
            broker.lease("tcp:127.0.0.1:0")
        # The next request connects again; the lease was not asked for twice.
        assert broker.list() == []
        broker.close()
    finally:
        server.join()
    assert [type(r) for r in server.seen[0]] == [Request.Hello, Request.Lease]
    assert server.seen[1] == [hello(), Request.List()]


def test_a_closed_broker_does_not_connect_again(tmp_path):
    server = ScriptedServer(str(tmp_path / "broker.sock"), [reply(HELLO)])
    try:
        broker = portbroker.connect(server.path)
        broker.close()
        with pytest.raises(portbroker.ConnectionLost, match="closed"):
            broker.list()
    finally:
        server.join()
    assert server.seen == [[hello()]]
