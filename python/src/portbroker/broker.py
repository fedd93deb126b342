"""A session with the broker: one connection, kept open, that leases, releases, renews and
lists. Leases granted on it last until they are released or the connection closes."""

import dataclasses
import datetime
import os
import socket

from .connection import Connection, expect
from .errors import ProtocolError, Unreachable, UnknownLease
from .lease import Lease
from .paths import client_socket_paths
from .protocol import Listen, Request, Response, SocketSpec, Transport
from .spec import parse_spec

__version__ = "0.1.0"

DEFAULT_TIMEOUT = 30.0
"""Seconds a request may wait to be sent or answered."""

CLIENT_NAME = f"portbroker-py/{__version__}"
"""How this package introduces itself in ``Hello``, for the broker's logs."""

_U32_MAX = 0xFFFF_FFFF


class Broker:
    """A connection to ``portbrokerd``. Use :meth:`connect`; close it (or use ``with``) when
    done: closing ends every lease still held on it. Safe to share between threads (one request
    at a time); not across ``fork()``."""

    def __init__(self, connection):
        self._conn = connection

    @classmethod
    def connect(cls, path=None, timeout=DEFAULT_TIMEOUT):
        """Connects to the broker at ``path``, or else to the first that answers of
        ``$PORTBROKER_SOCKET``; for a user other than root, the user's own broker
        (``$XDG_RUNTIME_DIR/portbroker/portbroker.sock``); the system one
        (``/run/portbroker/portbroker.sock``). Talks only to a broker that runs as root, as this
        user or as ``PORTBROKER_TRUST_UID`` (:class:`UntrustedBroker` otherwise).

        Raises :class:`Unreachable` when no broker answers, :class:`VersionMismatch` when it
        speaks another protocol version."""
        paths = [os.fspath(path)] if path is not None else client_socket_paths()
        tried = []
        for candidate in paths:
            try:
                return cls(Connection.open(candidate, timeout, CLIENT_NAME))
            except Unreachable as error:
                tried.extend(error.tried)
        raise Unreachable(tried)

    @property
    def path(self):
        """The path of the broker's socket."""
        return self._conn.path

    @property
    def daemon_version(self):
        """The broker's version, as it said in ``Hello``."""
        return self._conn.daemon_version

    @property
    def closed(self):
        return self._conn.closed

    def close(self):
        """Closes the connection; the broker ends every lease still held on it."""
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<portbroker.Broker {self.path} ({state})>"

    def lease(self, *specs, listen=True, backlog=None, v6_only=False):
        """Leases sockets, granted or refused as one unit, and returns a :class:`Lease` with
        them bound (and, for TCP, listening).

        ``specs`` are text (``"tcp:127.0.0.1:0"``, see :func:`parse_spec`) or
        :class:`SocketSpec` values, or one list of them. For the specs given as text:
        ``listen=False`` hands TCP sockets over bound but not listening; ``backlog`` sets the
        TCP listen backlog; ``v6_only`` makes IPv6 sockets IPv6-only. A :class:`SocketSpec` is
        sent as it is.

        Raises a :class:`Refused` subclass when the broker refuses (:class:`InUse` names the
        holder), :class:`SpecError` for a malformed spec (nothing is sent then)."""
        if backlog is None:
            tcp_listen = Listen.Default() if listen else Listen.BindOnly()
        elif not listen:
            raise ValueError("a backlog is for a listening socket: drop listen=False or backlog")
        else:
            tcp_listen = Listen.Backlog(backlog)
        return self._lease(_specs(specs, tcp_listen, Listen.Default(), v6_only))

    def lease_number(self, *specs, v6_only=False):
        """Leases ports as numbers (``Listen.Number``): the broker checks that each can be bound,
        then holds it in its table with no socket, and the :class:`Lease` has no sockets, only
        :attr:`Lease.port` and :attr:`Lease.granted`.

        For a server that binds a port number itself, started under ``portctl wrap`` (whose
        shim turns the server's ``bind()`` into a lease): a later lease of the same transport
        and port by the same user takes the number over, so nobody else can take the port in
        between. Until then the number is held like any lease; ``portctl list`` shows it in
        state ``number``."""
        return self._lease(_specs(specs, Listen.Number(), Listen.Number(), v6_only))

    def lease_named(self, name):
        """Leases the sockets of a named service of the broker's policy."""
        return self._granted(Request.LeaseNamed(name=name))

    def _lease(self, specs):
        return self._granted(Request.Lease(sockets=tuple(specs)))

    def _granted(self, request):
        reply = self._conn.round_trip(request)
        fds, sockets = list(reply.fds), []
        try:
            granted = expect(request, reply.response, Response.Granted)
            while fds:
                try:
                    sockets.append(socket.socket(fileno=fds[0]))
                except OSError as error:
                    self.release(granted.id)
                    raise ProtocolError(f"the broker passed fd {fds[0]}, not a socket: {error}")
                fds.pop(0)
        except BaseException:
            for fd in fds:
                os.close(fd)
            for sock in sockets:
                sock.close()
            raise
        return Lease(self, granted.id, tuple(granted.sockets), sockets)

    def release(self, lease):
        """Ends a lease (a :class:`Lease` or its id). True if the broker released it; False if
        no live lease had that id (released, expired or revoked already, or, for a number,
        taken over). A lingering lease's port stays out of the pool until its last copy of
        the socket closes: close the sockets first (:meth:`Lease.release` does)."""
        lease_id = _id(lease)
        request = Request.Release(id=lease_id)
        try:
            self._conn.ask(request, Response.Released)
        except UnknownLease:
            return False
        return True

    def renew(self, lease, ttl):
        """Gives a lease (a :class:`Lease` or its id) a time limit of ``ttl`` (seconds, or a
        ``timedelta``) from now, or extends it; 0 removes the limit. Returns when it now
        expires (an aware UTC ``datetime``), or ``None`` without a limit."""
        if isinstance(ttl, datetime.timedelta):
            ttl = ttl.total_seconds()
        if ttl < 0:
            raise ValueError(f"a time limit cannot be negative: {ttl}")
        lease_id = _id(lease)
        ttl_ms = min(round(ttl * 1000), _U32_MAX)
        answer = self._conn.ask(Request.Renew(id=lease_id, ttl_ms=ttl_ms), Response.Renewed)
        if answer.expires_unix_ms is None:
            return None
        return datetime.datetime.fromtimestamp(answer.expires_unix_ms / 1000, datetime.timezone.utc)

    def list(self):
        """Every live lease, lingering, kept and number ones included, ordered by id: a list of
        :class:`LeaseInfo`."""
        return list(self._conn.ask(Request.List(), Response.Leases).leases)

    def status(self):
        """The broker's state: a :class:`StatusInfo`."""
        return self._conn.ask(Request.Status(), Response.Status).status

    def ended(self, lease):
        """``"revoked"`` or ``"expired"`` if the broker said it ended this lease by itself (it
        says so between answers; this looks at what came with earlier answers), else ``None``."""
        return self._conn.ended.get(_id(lease))


def _id(lease):
    return lease.id if isinstance(lease, Lease) else int(lease)


def _specs(specs, tcp_listen, udp_listen, v6_only):
    if len(specs) == 1 and isinstance(specs[0], (list, tuple)):
        specs = tuple(specs[0])
    if not specs:
        raise ValueError("a lease needs at least one socket spec, such as 'tcp:127.0.0.1:0'")
    out = []
    for spec in specs:
        if isinstance(spec, SocketSpec):
            out.append(spec)
            continue
        parsed = parse_spec(spec)
        listen = tcp_listen if parsed.transport is Transport.TCP else udp_listen
        out.append(dataclasses.replace(parsed, listen=listen, v6_only=bool(v6_only)))
    return out
