"""The messages between ``portbrokerd`` and its clients, as ``proto/src/lib.rs`` declares them.

bincode writes no names: an enum variant is its position in the declaration, a struct its
fields one after the other. So here, as in the Rust crate, **declaration order is the wire
format**: the variants of each enum below are the nested classes of its namespace in the Rust
order, and the fields of each class the Rust fields in the Rust order. ``tests/test_goldens.py``
checks every message against the golden bytes of ``proto/tests/wire.rs``, so a difference fails
there.

Values decode into frozen dataclasses; sequences into tuples; lease ids are plain ints.
"""

import enum
import ipaddress
from typing import Optional, Tuple, Union

from .escape import escaped
from .wire import (
    BOOL,
    I32,
    IP_ADDR,
    SOCKET_ADDR,
    STR,
    U16,
    U32,
    U64,
    Opt,
    SocketAddr,
    Vec,
    enum_of,
    field,
    struct,
)
from .wire import Tuple as TupleOf

PROTOCOL_VERSION = 5
"""The protocol version this package speaks (``portbroker_proto::PROTOCOL_VERSION``)."""

IpAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

LeaseIdField = field(U64, int)
U16Field, U32Field, U64Field = field(U16, int), field(U32, int), field(U64, int)
StrField, BoolField = field(STR, str), field(BOOL, bool)
SocketAddrField = field(SOCKET_ADDR, SocketAddr)


class Transport(enum.Enum):
    """TCP and UDP port numbers are separate spaces."""

    TCP = "tcp"
    UDP = "udp"

    def __str__(self):
        return self.value


@enum_of
class Listen:
    """What the broker does with a TCP socket after binding it."""

    @struct
    class Default:
        """Listen with the broker's default backlog (``SOMAXCONN``)."""

    @struct
    class Backlog:
        """Listen with this backlog: at least 1; the broker caps it at ``SOMAXCONN``."""

        backlog: U32Field

    @struct
    class BindOnly:
        """Bind only: the client calls ``listen()`` itself (TCP only)."""

    @struct
    class Number:
        """Hold the port as a number: the broker binds a probe, closes it and passes no socket;
        a later lease of the same port and transport by the same user takes the number over.
        Every spec of a lease is a number, or none is."""


@struct
class SocketSpec:
    """One socket asked for; :func:`portbroker.spec.parse_spec` reads ``PROTO:[ADDR:]PORT``."""

    transport: Transport
    addr: field(Opt(IP_ADDR), Optional[IpAddress])
    port: U16Field
    listen: Listen = Listen.Default()
    # For the IPv6 wildcard [::]: IPv6 only, leaving the port's IPv4 addresses to others.
    # Must be false with an IPv4 address.
    v6_only: BoolField = False

    def __str__(self):
        if self.addr is None:
            text = f"{self.transport}:{self.port}"
        elif self.addr.version == 6:
            text = f"{self.transport}:[{self.addr}]:{self.port}"
        else:
            text = f"{self.transport}:{self.addr}:{self.port}"
        # No text form parses to this: programs set it, people do not type it.
        return text + (" (IPv6 only)" if self.v6_only else "")


@struct
class Holder:
    """Who holds a lease, as the broker found it (``SO_PEERCRED``, ``/proc/PID/comm``)."""

    pid: field(I32, int)
    uid: U32Field
    gid: U32Field
    name: StrField

    def __str__(self):
        # The name is the process's own choice, control characters included.
        if not self.name:
            return f"pid {self.pid} (uid {self.uid})"
        return f"pid {self.pid} ({escaped(self.name)}, uid {self.uid})"


@struct
class GrantedSocket:
    """A socket the broker bound (or, for ``Listen.Number``, probed) for a lease."""

    transport: Transport
    addr: SocketAddrField
    listening: BoolField
    # True for a specific IPv6 address, and for [::] when the spec asked; false for IPv4 and
    # a dual-stack [::].
    v6_only: BoolField

    def __str__(self):
        only = " (IPv6 only)" if self.v6_only and self.addr.ip.is_unspecified else ""
        return f"{self.transport}:{self.addr}{only}"


@struct
class PortRange:
    """An inclusive range of port numbers."""

    lo: U16Field
    hi: U16Field

    def __str__(self):
        return f"{self.lo}-{self.hi}"


class LeaseState(enum.Enum):
    """What keeps a lease alive."""

    CONNECTION = "connection"
    PROCESS = "process"
    LINGERING = "lingering"
    KEPT = "kept"
    NUMBER = "number"

    def __str__(self):
        return self.value


@struct
class LeaseInfo:
    """A live lease as ``List`` reports it."""

    id: LeaseIdField
    holder: Holder
    since: U64Field
    sockets: field(Vec(GrantedSocket), Tuple[GrantedSocket, ...])
    expires_unix_ms: field(Opt(U64), Optional[int])
    state: LeaseState


@struct
class Histogram:
    bounds: field(Vec(U64), Tuple[int, ...])
    counts: field(Vec(U64), Tuple[int, ...])
    sum: U64Field


@struct
class MetricsInfo:
    grants: U64Field
    refusals: field(Vec(TupleOf(STR, U64)), Tuple[Tuple[str, int], ...])
    releases: U64Field
    expiries: U64Field
    revokes: U64Field
    lingering: U64Field
    pool_in_use_tcp: U64Field
    pool_in_use_udp: U64Field
    lease_latency: Histogram
    listen: field(Opt(SOCKET_ADDR), Optional[SocketAddr])


@struct
class StatusInfo:
    """The broker's state as ``Status`` reports it."""

    daemon_version: StrField
    protocol: U32Field
    uptime_secs: U64Field
    leases: U64Field
    sockets: U64Field
    connections: U64Field
    pool: PortRange
    default_addr: field(IP_ADDR, IpAddress)
    metrics: MetricsInfo


class EndReason(enum.Enum):
    """Why a lease ended, in a :class:`HistoryEvent.Ended`; the values are the names of
    ``portctl log --json``."""

    RELEASED = "released"
    CONNECTION_CLOSED = "connection_closed"
    PROCESS_EXITED = "process_exited"
    COPIES_CLOSED = "copies_closed"
    EXPIRED = "expired"
    REVOKED = "revoked"
    TAKEN_OVER = "taken_over"
    KEPT_EXPIRED = "kept_expired"
    KEPT_RETURNED = "kept_returned"
    JOURNAL_FAILED = "journal_failed"
    HOLDER_GONE_AT_RESTART = "holder_gone_at_restart"
    DAEMON_STOPPED = "daemon_stopped"
    METRICS_STOPPED = "metrics_stopped"

    def __str__(self):
        return self.value


@enum_of
class HistoryEvent:
    """What happened to a lease, in a :class:`HistoryEntry`."""

    @struct
    class Granted:
        pass

    @struct
    class Tied:
        pass

    @struct
    class HandedOver:
        pass

    @struct
    class Ended:
        reason: EndReason


@struct
class HistoryEntry:
    """One event of a lease's life, as ``History`` lists it; ``holder`` is None (and
    ``sockets`` empty) for an end whose lease the broker no longer had a record of."""

    at_unix_ms: U64Field
    id: LeaseIdField
    event: HistoryEvent
    holder: field(Opt(Holder), Optional[Holder])
    sockets: field(Vec(GrantedSocket), Tuple[GrantedSocket, ...])


@enum_of
class Request:
    """A request from a client."""

    @struct
    class Hello:
        protocol: U32Field
        client: StrField

    @struct
    class Lease:
        sockets: field(Vec(SocketSpec), Tuple[SocketSpec, ...])

    @struct
    class Release:
        id: LeaseIdField

    @struct
    class List:
        pass

    @struct
    class Status:
        pass

    @struct
    class LeaseNamed:
        name: StrField

    @struct
    class Reload:
        pass

    @struct
    class Revoke:
        id: LeaseIdField

    @struct
    class TieToProcess:
        id: LeaseIdField
        pid: field(I32, int)

    @struct
    class Handover:
        id: LeaseIdField

    @struct
    class Claim:
        token: U64Field

    @struct
    class Reattach:
        ids: field(Vec(U64), Tuple[int, ...])

    @struct
    class Renew:
        id: LeaseIdField
        ttl_ms: U32Field

    @struct
    class Watch:
        pass

    @struct
    class History:
        max: U32Field


@enum_of
class Refusal:
    """Why a lease was refused."""

    @struct
    class InUse:
        transport: Transport
        requested: SocketAddrField
        held: SocketAddrField
        lease: LeaseIdField
        holder: Holder

    @struct
    class InUseOutside:
        transport: Transport
        requested: SocketAddrField
        holder: field(Opt(Holder), Optional[Holder])

    @struct
    class NotPermitted:
        reason: StrField

    @struct
    class InvalidSpec:
        index: U32Field
        reason: StrField

    @struct
    class PoolExhausted:
        transport: Transport
        pool: PortRange

    @struct
    class BindFailed:
        transport: Transport
        requested: SocketAddrField
        errno: field(I32, int)
        message: StrField

    @struct
    class QuotaExceeded:
        quota: StrField
        used: U64Field
        limit: U64Field

    @struct
    class UnknownService:
        name: StrField


@enum_of
class Failure:
    """A request the broker could not serve for a reason other than a refused lease."""

    @struct
    class VersionMismatch:
        broker: U32Field
        client: U32Field

    @struct
    class HelloRequired:
        pass

    @struct
    class DuplicateHello:
        pass

    @struct
    class Malformed:
        detail: StrField

    @struct
    class UnknownLease:
        id: LeaseIdField

    @struct
    class NotYourLease:
        id: LeaseIdField
        holder_uid: U32Field

    @struct
    class NotPermitted:
        reason: StrField

    @struct
    class ReloadFailed:
        error: StrField

    @struct
    class JournalUnavailable:
        error: StrField


@enum_of
class Event:
    """Something that happened to a lease or a reserved port, as a watcher sees it."""

    @struct
    class Granted:
        lease: LeaseInfo

    @struct
    class Refused:
        asker: Holder
        refusal: Refusal

    @struct
    class Released:
        id: LeaseIdField

    @struct
    class Expired:
        id: LeaseIdField

    @struct
    class Revoked:
        id: LeaseIdField

    @struct
    class Lingering:
        id: LeaseIdField
        holder: Holder

    @struct
    class ReservationTakenBack:
        transport: Transport
        port: U16Field


@enum_of
class Response:
    """A response from the broker: an answer, or a notice between answers."""

    @struct
    class Hello:
        protocol: U32Field
        daemon_version: StrField

    @struct
    class Granted:
        id: LeaseIdField
        sockets: field(Vec(GrantedSocket), Tuple[GrantedSocket, ...])
        fds: U32Field

    @struct
    class Refused:
        refusal: Refusal

    @struct
    class Released:
        id: LeaseIdField

    @struct
    class Leases:
        leases: field(Vec(LeaseInfo), Tuple[LeaseInfo, ...])

    @struct
    class Status:
        status: StatusInfo

    @struct
    class Failed:
        failure: Failure

    @struct
    class Revoked:
        id: LeaseIdField

    @struct
    class Expired:
        id: LeaseIdField

    @struct
    class HandoverOffered:
        id: LeaseIdField
        token: U64Field

    @struct
    class Reattached:
        ids: field(Vec(U64), Tuple[int, ...])

    @struct
    class Tied:
        id: LeaseIdField
        holder: Holder

    @struct
    class Renewed:
        id: LeaseIdField
        expires_unix_ms: field(Opt(U64), Optional[int])

    @struct
    class Reloaded:
        rules: U32Field
        services: U32Field

    @struct
    class Watching:
        pass

    @struct
    class Event:
        seq: U64Field
        event: Event

    @struct
    class Missed:
        count: U64Field

    @struct
    class History:
        entries: field(Vec(HistoryEntry), Tuple[HistoryEntry, ...])


def name_of(message):
    """``"Granted"``, ``"Failed"``...: a message's variant name, for messages to people."""
    return type(message).__name__


def describe_refusal(refusal):
    """A refusal in words, as ``portctl`` says it; holder names escaped."""
    r = refusal
    if isinstance(r, Refusal.InUse):
        return (
            f"{r.transport}:{r.requested} is in use: lease {r.lease} holds "
            f"{r.transport}:{r.held}, held by {r.holder}"
        )
    if isinstance(r, Refusal.InUseOutside):
        by = f" by {r.holder}," if r.holder is not None else " by"
        return f"{r.transport}:{r.requested} is in use{by} a process outside the broker"
    if isinstance(r, Refusal.NotPermitted):
        return f"not permitted: {escaped(r.reason)}"
    if isinstance(r, Refusal.InvalidSpec):
        return f"invalid socket spec #{r.index + 1}: {escaped(r.reason)}"
    if isinstance(r, Refusal.PoolExhausted):
        return f"no free {r.transport} port left in the pool {r.pool}"
    if isinstance(r, Refusal.BindFailed):
        return f"binding {r.transport}:{r.requested} failed: {escaped(r.message)} (errno {r.errno})"
    if isinstance(r, Refusal.QuotaExceeded):
        return f"quota exceeded ({r.used} of {r.limit}): {escaped(r.quota)}"
    if isinstance(r, Refusal.UnknownService):
        return f'the policy has no service named "{escaped(r.name)}"'
    return repr(r)


def describe_failure(failure):
    """A failure in words, as ``portctl`` says it."""
    f = failure
    if isinstance(f, Failure.VersionMismatch):
        return (
            f"protocol version mismatch: the broker speaks version {f.broker}, this client "
            f"version {f.client}"
        )
    if isinstance(f, Failure.HelloRequired):
        return "the first request on a connection must be Hello"
    if isinstance(f, Failure.DuplicateHello):
        return "Hello was already sent on this connection"
    if isinstance(f, Failure.Malformed):
        return f"the broker could not decode a request: {escaped(f.detail)}"
    if isinstance(f, Failure.UnknownLease):
        return f"no live lease has id {f.id}"
    if isinstance(f, Failure.NotYourLease):
        return (
            f"lease {f.id} belongs to uid {f.holder_uid}; only that user or an administrator "
            "may act on it"
        )
    if isinstance(f, Failure.NotPermitted):
        return f"not permitted: {escaped(f.reason)}"
    if isinstance(f, Failure.ReloadFailed):
        return f"the policy was not reloaded and stays as it was: {escaped(f.error)}"
    if isinstance(f, Failure.JournalUnavailable):
        return (
            f"the broker cannot write its lease journal ({escaped(f.error)}), so it grants "
            "nothing until it can; free space in its state directory"
        )
    return repr(f)
