"""A session with the broker: one connection, kept open (and made again when it breaks), that
leases, releases, renews and lists. Leases granted on it last until they are released or the
session is closed."""

import dataclasses
import datetime
import os
import socket
import threading

from .connection import Connection, expect
from .errors import ConnectionLost, LeaseLost, ProtocolError, Unreachable, UnknownLease
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


# Requests that change nothing, which may be sent again on a new connection when the old one
# broke under them.
_READS = (Request.List, Request.Status)


class Broker:
    """A connection to ``portbrokerd``. Use :meth:`connect`; close it (or use ``with``) when
    done: closing ends every lease still held on it. Safe to share between threads (one request
    at a time); not across ``fork()``.

    When the connection breaks (a restarted broker), the next request connects again by itself
    and takes this Broker's leases back (``Reattach``). A lease the broker gives back goes on;
    one it does not is lost: :meth:`release` of it returns False and :meth:`renew` raises
    :class:`LeaseLost`, and neither sends anything. A request that may have been carried out
    when the connection broke under it (a lease, a release, a renewal) is not sent again: it
    raises :class:`ConnectionLost`, and the next request connects again. ``list()`` and
    ``status()`` are simply asked again."""

    def __init__(self, connection, timeout=DEFAULT_TIMEOUT):
        self._conn = connection
        self._timeout = timeout
        # One request (or reconnect) at a time; guards the lease sets too.
        self._lock = threading.Lock()
        # Leases granted through this Broker and not let go, and those a reconnect lost.
        self._held = set()
        self._lost = set()
        self._closed = False

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
                return cls(Connection.open(candidate, timeout, CLIENT_NAME), timeout)
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
        """Whether :meth:`close` was called (a broken connection is made again instead)."""
        return self._closed

    def close(self):
        """Closes the connection; the broker ends every lease still held on it."""
        with self._lock:
            self._closed = True
            self._conn.close()

    def _exchange(self, request):
        """Sends ``request`` and returns its reply, connecting again first if the connection
        broke, and after a break under the request if it was not carried out (it never left
        whole, or it changes nothing)."""
        with self._lock:
            if self._closed:
                raise ConnectionLost(self.path, "this Broker was closed: connect again")
            if not self._conn.usable:
                self._reconnect()
            try:
                return self._conn.round_trip(request)
            except ConnectionLost:
                if self._conn.delivered and not isinstance(request, _READS):
                    raise
            self._reconnect()
            return self._conn.round_trip(request)

    def _ask(self, request, expected):
        reply = self._exchange(request)
        for fd in reply.fds:
            os.close(fd)
        return expect(request, reply.response, expected)

    def _reconnect(self):
        """Connects again and takes this Broker's leases back onto the new connection; those
        the broker does not give back are lost. The old connection closes only then, so that a
        broker still running keeps the leases it gives back."""
        fresh = Connection.open(self._conn.path, self._timeout, CLIENT_NAME)
        try:
            asked = tuple(sorted(self._held))
            if asked:
                kept = fresh.ask(Request.Reattach(ids=asked), Response.Reattached).ids
                lost = set(asked) - set(kept)
                self._held -= lost
                self._lost |= lost
        except BaseException:
            fresh.close()
            raise
        old, self._conn = self._conn, fresh
        # What the broker said of ended leases before the break still holds.
        fresh.ended = {**old.ended, **fresh.ended}
        old.close()

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
        reply = self._exchange(request)
        fds, sockets = list(reply.fds), []
        try:
            granted = expect(request, reply.response, Response.Granted)
            with self._lock:
                self._held.add(granted.id)
                self._lost.discard(granted.id)
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
        the socket closes: close the sockets first (:meth:`Lease.release` does). A lease lost
        when the connection was made again is not asked for: False."""
        lease_id = _id(lease)
        if lease_id in self._lost:
            return False
        request = Request.Release(id=lease_id)
        try:
            self._ask(request, Response.Released)
        except UnknownLease:
            released = False
        else:
            released = True
        with self._lock:
            self._held.discard(lease_id)
        return released

    def renew(self, lease, ttl):
        """Gives a lease (a :class:`Lease` or its id) a time limit of ``ttl`` (seconds, or a
        ``timedelta``) from now, or extends it; 0 removes the limit. Returns when it now
        expires (an aware UTC ``datetime``), or ``None`` without a limit. Raises
        :class:`LeaseLost` for a lease lost when the connection was made again."""
        if isinstance(ttl, datetime.timedelta):
            ttl = ttl.total_seconds()
        if ttl < 0:
            raise ValueError(f"a time limit cannot be negative: {ttl}")
        lease_id = _id(lease)
        if lease_id in self._lost:
            raise LeaseLost(self.path, lease_id)
        ttl_ms = min(round(ttl * 1000), _U32_MAX)
        answer = self._ask(Request.Renew(id=lease_id, ttl_ms=ttl_ms), Response.Renewed)
        if answer.expires_unix_ms is None:
            return None
        return datetime.datetime.fromtimestamp(answer.expires_unix_ms / 1000, datetime.timezone.utc)

    def list(self):
        """Every live lease, lingering, kept and number ones included, ordered by id: a list of
        :class:`LeaseInfo`."""
        return list(self._ask(Request.List(), Response.Leases).leases)

    def status(self):
        """The broker's state: a :class:`StatusInfo`."""
        return self._ask(Request.Status(), Response.Status).status

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
