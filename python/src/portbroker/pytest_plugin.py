"""pytest fixtures that take ports from ``portbrokerd``, so that parallel tests (``pytest -n 16``
with pytest-xdist, or several suites on one machine) never race for a port.

A suite adopts them with one line in its ``conftest.py``::

    pytest_plugins = ["portbroker.pytest_plugin"]

The package registers no entry point: installing it changes no other suite.

- ``portbroker``: the :class:`portbroker.Broker` connection, one per test session (with
  pytest-xdist, one per worker process: workers share nothing but the broker, which is what
  keeps their ports apart). Every lease on it ends when the session ends, whatever happens.
- ``leased_socket``: a listening TCP socket on 127.0.0.1, on a port of the broker's pool,
  released after the test.
- ``leased_port``: a port number held for a server that binds a number itself, started under
  ``portctl wrap`` (see :class:`LeasedPort`); released after the test unless the server took it
  over.
"""

import os

import pytest

import portbroker as _portbroker

LOOPBACK_TCP = "tcp:127.0.0.1:0"


def _fail(what, error):
    # The message says it all: no traceback into this plugin (pytrace=False), and not the
    # error again as the exception this one was raised while handling (from None).
    raise pytest.fail.Exception(f"portbroker: {what}: {error}", pytrace=False) from None


@pytest.fixture(scope="session", name="portbroker")
def portbroker_fixture():
    """The session's connection to the broker (found as :meth:`portbroker.Broker.connect`
    finds it: ``PORTBROKER_SOCKET``, the user's own broker, the system one)."""
    try:
        broker = _portbroker.Broker.connect()
    except _portbroker.PortbrokerError as error:
        _fail("the fixtures need a running broker", error)
    with broker:
        yield broker


@pytest.fixture
def leased_socket(portbroker):
    """A listening TCP ``socket.socket`` on 127.0.0.1, on a port of the broker's pool; its
    lease ends after the test. ``leased_socket.getsockname()[1]`` is the port."""
    try:
        lease = portbroker.lease(LOOPBACK_TCP)
    except _portbroker.PortbrokerError as error:
        _fail(f"cannot lease {LOOPBACK_TCP}", error)
    yield lease.socket
    _end(lease.release)


class LeasedPort:
    """A port held as a number (``Listen.Number``) for a server that binds it itself.

    Start the server under ``portctl wrap`` (its shim turns the server's ``bind()`` into a
    lease) with :meth:`command` and :meth:`env`::

        subprocess.Popen(leased_port.command(["redis-server", "--port", str(leased_port.port)]),
                         env=leased_port.env())

    The server's lease of the port, by the same user, takes the number over at once: nobody
    else can take the port in between. A plain ``bind()`` outside the broker is *not* kept
    out while the number is held (the broker holds no socket); other users' leases are.
    """

    def __init__(self, broker, lease):
        self.broker = broker
        self.lease = lease
        self.port = lease.port
        self.address = lease.address

    def command(self, argv, portctl="portctl"):
        """``[portctl, "wrap", "--socket", PATH, "--", *argv]``: ``argv`` run under the bind
        shim, talking to the broker that holds the number (``PATH``, the fixture's socket):
        a lease of another broker could not take the number over."""
        return [portctl, "wrap", "--socket", self.broker.path, "--", *argv]

    def env(self, base=None):
        """The environment to start the server with: ``base`` (default: this process's) with
        ``PORTBROKER_SOCKET`` naming the fixture's broker."""
        env = dict(os.environ if base is None else base)
        env[_portbroker.SOCKET_ENV] = self.broker.path
        return env

    def held(self):
        """Whether the number is still held as a number (not taken over or released yet)."""
        return any(
            info.id == self.lease.id and info.state is _portbroker.LeaseState.NUMBER
            for info in self.broker.list()
        )

    def __repr__(self):
        return f"<LeasedPort {self.address}:{self.port} (lease {self.lease.id})>"


@pytest.fixture
def leased_port(portbroker):
    """A :class:`LeasedPort`: a TCP port on 127.0.0.1 from the broker's pool, held as a number
    for a server started with ``leased_port.command(argv)``. After the test the number is
    released if still held; if the server took it over, its own lease lasts as long as the
    server."""
    try:
        lease = portbroker.lease_number(LOOPBACK_TCP)
    except _portbroker.PortbrokerError as error:
        _fail(f"cannot lease {LOOPBACK_TCP} as a number", error)
    yield LeasedPort(portbroker, lease)
    # Taken over by the server's lease is not an error: release() then says False.
    _end(lease.release)


def _end(release):
    try:
        release()
    except _portbroker.ConnectionLost:
        # The broker ended every lease of the connection as it broke.
        pass
    except _portbroker.PortbrokerError as error:
        _fail("cannot release a lease after the test", error)
