"""An example suite that adopts the broker with the one line of its ``conftest.py``, meant for
``pytest -n 16`` (pytest-xdist): many tests at once, each with a leased socket and a leased
port number, none of which may ever meet another.

Each test writes the ports it got to ``$PORTBROKER_EXAMPLE_RECORDS`` (a directory) when that
is set; ``client/tests/python.rs`` runs this suite and checks, after the run, that no port was
given twice.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

# Imported by name: `portbroker` in a test is the plugin's broker fixture.
from portbroker import LeaseState, connect

TESTS = 64
DEADLINE = 20.0
NOBODY = 65534


def record(name, **ports):
    directory = os.environ.get("PORTBROKER_EXAMPLE_RECORDS")
    if not directory:
        return
    entry = {"test": name, "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), **ports}
    with open(os.path.join(directory, f"{name}.json"), "w", encoding="utf-8") as out:
        json.dump(entry, out)


def receive_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"the peer closed after {len(data)} of {count} bytes"
        data += chunk
    return data


@pytest.mark.parametrize("n", range(TESTS))
def test_a_leased_socket_serves_and_a_leased_number_is_held(n, leased_socket, leased_port):
    host, port = leased_socket.getsockname()
    assert host == "127.0.0.1"
    message = b"ping %03d" % n
    with socket.create_connection((host, port), timeout=DEADLINE) as client:
        accepted, _ = leased_socket.accept()
        with accepted:
            accepted.settimeout(DEADLINE)
            client.sendall(message)
            assert receive_exactly(accepted, len(message)) == message
            accepted.sendall(b"pong" + message[4:])
            assert receive_exactly(client, len(message)) == b"pong" + message[4:]
    # The broker lists the number as held, in state `number`.
    assert leased_port.held()
    assert leased_port.address == "127.0.0.1" and leased_port.port != port
    record(f"parallel-{n:03d}", socket=port, number=leased_port.port)


def as_another_user(action):
    """``action()`` run in a child process as uid 65534 (nobody); what it returns or raises, as
    text. The child shares the parent's modules, so it needs nothing on disk."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = repr(action())
        except BaseException as error:  # reported, whatever it is
            result = f"{type(error).__name__}: {error}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(child, 0)
    return b"".join(chunks).decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="running a client as another user needs root")
def test_another_user_cannot_take_a_leased_number_or_socket(leased_socket, leased_port, portbroker):
    socket_port = leased_socket.getsockname()[1]
    for port, lease_id in [(leased_port.port, leased_port.lease.id), (socket_port, None)]:

        def lease_it(port=port, path=portbroker.path):
            with connect(path) as broker:
                return broker.lease(f"tcp:127.0.0.1:{port}")

        outcome = as_another_user(lease_it)
        assert outcome.startswith("InUse: lease refused: tcp:127.0.0.1:"), outcome
        assert f"uid {os.geteuid()})" in outcome, outcome
        if lease_id is not None:
            assert f"lease {lease_id} holds" in outcome, outcome
    # Refused, the other user left the number where it was.
    assert leased_port.held()
    record("another-user", socket=socket_port, number=leased_port.port)


def shim_missing():
    try:
        done = subprocess.run(
            ["portctl", "wrap", "--help"], capture_output=True, timeout=DEADLINE, check=False
        )
    except OSError as error:
        return f"portctl is not on PATH ({error})"
    if done.returncode != 0:
        said = (done.stderr.decode(errors="replace").strip().splitlines() or ["nothing"])[0]
        return f"this portctl has no `wrap` (the bind shim): {said}"
    return None


def test_a_server_under_the_shim_takes_the_number_over(leased_port, portbroker):
    missing = shim_missing()
    if missing:
        pytest.skip(missing)
    port = leased_port.port
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    server = subprocess.Popen(
        leased_port.command(argv),
        env=leased_port.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/", timeout=DEADLINE
                ) as answer:
                    assert answer.status == 200
                    break
            except OSError as error:
                if server.poll() is not None:
                    pytest.fail(
                        f"the server exited ({server.returncode}): {server.stderr.read()!r}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the server did not answer on port {port} within {DEADLINE} s: {error}"
                    )
                time.sleep(0.02)  # poll again: the server is starting
        # The server's own lease holds the port now; the number ended as it was granted.
        assert not leased_port.held()
        holders = [
            info for info in portbroker.list() if any(s.addr.port == port for s in info.sockets)
        ]
        assert len(holders) == 1 and holders[0].state is not LeaseState.NUMBER, holders
    finally:
        server.terminate()
        server.wait(DEADLINE)
    record("shim", number=port)
