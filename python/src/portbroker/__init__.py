"""A pure-Python client of ``portbrokerd``, the port broker: lease a port and get a socket the
broker already bound, so that no other program can take the port between picking and binding.

>>> import portbroker
>>> with portbroker.lease("tcp:127.0.0.1:0") as lease:     # doctest: +SKIP
...     server = lease.socket                               # bound and listening
...     print("serving on port", lease.port)

For pytest, one line in ``conftest.py``: ``pytest_plugins = ["portbroker.pytest_plugin"]``.
"""

from .broker import CLIENT_NAME, DEFAULT_TIMEOUT, Broker, __version__
from .errors import (
    BindFailed,
    ConnectionLost,
    Failed,
    InUse,
    InUseOutside,
    InvalidSpec,
    LeaseLost,
    NotPermitted,
    NotYourLease,
    PoolExhausted,
    PortbrokerError,
    ProtocolError,
    QuotaExceeded,
    Refused,
    SpecError,
    UnknownLease,
    UnknownService,
    Unreachable,
    UntrustedBroker,
    VersionMismatch,
)
from .escape import escaped
from .lease import Lease
from .paths import SOCKET_ENV, SYSTEM_SOCKET, client_socket_paths
from .protocol import (
    PROTOCOL_VERSION,
    GrantedSocket,
    Holder,
    LeaseInfo,
    LeaseState,
    Listen,
    SocketSpec,
    StatusInfo,
    Transport,
)
from .spec import parse_spec


def connect(path=None, timeout=DEFAULT_TIMEOUT):
    """A :class:`Broker` connection; see :meth:`Broker.connect`."""
    return Broker.connect(path, timeout)


def lease(*specs, path=None, timeout=DEFAULT_TIMEOUT, **options):
    """Leases sockets on a connection of their own and returns the :class:`Lease`, a context
    manager; releasing it (or leaving the ``with`` block) closes the connection too.

    ``portbroker.lease("tcp:127.0.0.1:0")``: one listening TCP socket on loopback, any port of
    the broker's pool. ``options`` are those of :meth:`Broker.lease` (``listen``, ``backlog``,
    ``v6_only``)."""
    broker = Broker.connect(path, timeout)
    try:
        granted = broker.lease(*specs, **options)
    except BaseException:
        broker.close()
        raise
    granted._owns_broker = True
    return granted


__all__ = [
    "BindFailed",
    "Broker",
    "CLIENT_NAME",
    "ConnectionLost",
    "DEFAULT_TIMEOUT",
    "Failed",
    "GrantedSocket",
    "Holder",
    "InUse",
    "InUseOutside",
    "InvalidSpec",
    "Lease",
    "LeaseInfo",
    "LeaseLost",
    "LeaseState",
    "Listen",
    "NotPermitted",
    "NotYourLease",
    "PROTOCOL_VERSION",
    "PoolExhausted",
    "PortbrokerError",
    "ProtocolError",
    "QuotaExceeded",
    "Refused",
    "SOCKET_ENV",
    "SYSTEM_SOCKET",
    "SocketSpec",
    "SpecError",
    "StatusInfo",
    "Transport",
    "UnknownLease",
    "UnknownService",
    "Unreachable",
    "UntrustedBroker",
    "VersionMismatch",
    "client_socket_paths",
    "connect",
    "escaped",
    "lease",
    "parse_spec",
    "__version__",
]
