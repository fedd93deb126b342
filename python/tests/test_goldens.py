"""Every golden frame of ``proto/tests/wire.rs``: the Python value of the same message encodes to
exactly those bytes, and the bytes decode to that value. A golden added on the Rust side (a new
variant) fails here until it has its Python value below, so the two encoders cannot drift."""

import ipaddress

import pytest

import rust_goldens
from portbroker import frames
from portbroker.protocol import (
    EndReason,
    Event,
    Failure,
    GrantedSocket,
    Histogram,
    HistoryEntry,
    HistoryEvent,
    Holder,
    LeaseInfo,
    LeaseState,
    Listen,
    MetricsInfo,
    PortRange,
    Refusal,
    Request,
    Response,
    SocketSpec,
    StatusInfo,
    Transport,
)
from portbroker.wire import SocketAddr

GOLDENS = rust_goldens.load()

V4_LOCALHOST = ipaddress.IPv4Address("127.0.0.1")
V6_LOCALHOST = ipaddress.IPv6Address("::1")
V6_UNSPECIFIED = ipaddress.IPv6Address("::")


def v4(text, port):
    return SocketAddr(ipaddress.IPv4Address(text), port)


def holder():
    return Holder(pid=4242, uid=1000, gid=100, name="nginx")


def lease_info(state):
    return LeaseInfo(
        id=5,
        holder=holder(),
        since=1_764_000_000,
        sockets=(
            GrantedSocket(Transport.TCP, v4("127.0.0.1", 8080), listening=True, v6_only=False),
        ),
        expires_unix_ms=None,
        state=state,
    )


def tcp(addr, port, **fields):
    return SocketSpec(Transport.TCP, addr, port, **fields)


# The wrappers of wire.rs's check functions: a refusal travels in Refused, a failure in Failed...
def refused(refusal):
    return Response.Refused(refusal)


def failed(failure):
    return Response.Failed(failure)


def event(value):
    return Response.Event(seq=1, event=value)


def leases_in_state(state):
    return Response.Leases((lease_info(state),))


def history_entry(event=None, holder_and_sockets=True):
    sockets = lease_info(LeaseState.CONNECTION).sockets
    return HistoryEntry(
        at_unix_ms=1_764_000_000_123,
        id=5,
        event=HistoryEvent.Granted() if event is None else event,
        holder=holder() if holder_and_sockets else None,
        sockets=sockets if holder_and_sockets else (),
    )


def history_of(event):
    return Response.History((history_entry(event),))


def ended_unknown(reason):
    """An end whose grant the broker no longer has: no holder, no sockets."""
    return Response.History((history_entry(HistoryEvent.Ended(reason), False),))


def lease_with_listen(listen):
    return Request.Lease(sockets=(tcp(None, 80, listen=listen),))


def lease_with_transport(transport):
    return Request.Lease(sockets=(SocketSpec(transport, None, 80),))


PYTHON = {
    "request_hello": Request.Hello(protocol=3, client="portctl 0.1.0"),
    "request_lease": Request.Lease(
        sockets=(
            tcp(V4_LOCALHOST, 8080),
            SocketSpec(Transport.UDP, V6_LOCALHOST, 0),
            tcp(V6_UNSPECIFIED, 6379, v6_only=True),
        )
    ),
    "request_release": Request.Release(id=7),
    "request_list": Request.List(),
    "request_status": Request.Status(),
    "request_lease_named": Request.LeaseNamed(name="web"),
    "request_reload": Request.Reload(),
    "request_revoke": Request.Revoke(id=300),
    "request_tie_to_process": Request.TieToProcess(id=7, pid=4242),
    "request_handover": Request.Handover(id=7),
    "request_claim": Request.Claim(token=0x0123_4567_89AB_CDEF),
    "request_reattach": Request.Reattach(ids=(1, 70_000)),
    "request_renew": Request.Renew(id=7, ttl_ms=30_000),
    "request_watch": Request.Watch(),
    "request_history": Request.History(max=100),
    "response_hello": Response.Hello(protocol=3, daemon_version="0.1.0"),
    "response_granted": Response.Granted(
        id=9,
        sockets=(
            GrantedSocket(Transport.TCP, SocketAddr(V6_UNSPECIFIED, 8080), True, True),
            GrantedSocket(Transport.UDP, v4("0.0.0.0", 5353), False, False),
        ),
        fds=2,
    ),
    "response_refused": refused(Refusal.UnknownService(name="db")),
    "response_released": Response.Released(id=7),
    "response_leases": leases_in_state(LeaseState.CONNECTION),
    "response_status": Response.Status(
        StatusInfo(
            daemon_version="0.1.0",
            protocol=3,
            uptime_secs=3600,
            leases=2,
            sockets=3,
            connections=1,
            pool=PortRange(lo=61000, hi=65535),
            default_addr=V6_UNSPECIFIED,
            metrics=MetricsInfo(
                grants=5,
                refusals=(("in_use", 2),),
                releases=1,
                expiries=0,
                revokes=0,
                lingering=0,
                pool_in_use_tcp=1,
                pool_in_use_udp=0,
                lease_latency=Histogram(bounds=(10, 25), counts=(1, 2, 3), sum=300),
                listen=v4("127.0.0.1", 9464),
            ),
        )
    ),
    "response_failed": failed(Failure.UnknownLease(id=3)),
    "response_revoked": Response.Revoked(id=7),
    "response_expired": Response.Expired(id=7),
    "response_handover_offered": Response.HandoverOffered(id=7, token=2**64 - 1),
    "response_reattached": Response.Reattached(ids=(1, 2)),
    "response_tied": Response.Tied(id=7, holder=holder()),
    "response_renewed": Response.Renewed(id=7, expires_unix_ms=1_764_000_030_000),
    "response_reloaded": Response.Reloaded(rules=4, services=2),
    "response_watching": Response.Watching(),
    "response_event": Response.Event(seq=300, event=Event.Released(id=7)),
    "response_missed": Response.Missed(count=1024),
    "response_history": Response.History(
        (history_entry(), history_entry(HistoryEvent.Ended(EndReason.RELEASED), False))
    ),
    "history_event_granted": history_of(HistoryEvent.Granted()),
    "history_event_tied": history_of(HistoryEvent.Tied()),
    "history_event_handed_over": history_of(HistoryEvent.HandedOver()),
    "history_event_ended": history_of(HistoryEvent.Ended(EndReason.EXPIRED)),
    **{f"end_reason_{reason.value}": ended_unknown(reason) for reason in EndReason},
    "event_granted": event(Event.Granted(lease=lease_info(LeaseState.CONNECTION))),
    "event_refused": event(
        Event.Refused(asker=holder(), refusal=Refusal.UnknownService(name="db"))
    ),
    "event_released": event(Event.Released(id=7)),
    "event_expired": event(Event.Expired(id=7)),
    "event_revoked": event(Event.Revoked(id=7)),
    "event_lingering": event(Event.Lingering(id=7, holder=holder())),
    "event_reservation_taken_back": event(
        Event.ReservationTakenBack(transport=Transport.UDP, port=53)
    ),
    "refusal_in_use": refused(
        Refusal.InUse(
            transport=Transport.TCP,
            requested=v4("0.0.0.0", 8080),
            held=v4("127.0.0.1", 8080),
            lease=5,
            holder=holder(),
        )
    ),
    "refusal_in_use_outside": refused(
        Refusal.InUseOutside(transport=Transport.UDP, requested=v4("10.0.0.1", 53), holder=holder())
    ),
    "refusal_not_permitted": refused(Refusal.NotPermitted(reason="port 22")),
    "refusal_invalid_spec": refused(Refusal.InvalidSpec(index=1, reason="dup")),
    "refusal_pool_exhausted": refused(
        Refusal.PoolExhausted(transport=Transport.UDP, pool=PortRange(lo=61000, hi=61001))
    ),
    "refusal_bind_failed": refused(
        Refusal.BindFailed(
            transport=Transport.TCP,
            requested=SocketAddr(V6_LOCALHOST, 443),
            errno=13,
            message="EACCES",
        )
    ),
    "refusal_quota_exceeded": refused(
        Refusal.QuotaExceeded(quota="leases_total", used=64, limit=64)
    ),
    "refusal_unknown_service": refused(Refusal.UnknownService(name="db")),
    "failure_version_mismatch": failed(Failure.VersionMismatch(broker=3, client=2)),
    "failure_hello_required": failed(Failure.HelloRequired()),
    "failure_duplicate_hello": failed(Failure.DuplicateHello()),
    "failure_malformed": failed(Failure.Malformed(detail="eof")),
    "failure_unknown_lease": failed(Failure.UnknownLease(id=3)),
    "failure_not_your_lease": failed(Failure.NotYourLease(id=3, holder_uid=1000)),
    "failure_not_permitted": failed(Failure.NotPermitted(reason="reload")),
    "failure_reload_failed": failed(Failure.ReloadFailed(error="line 3")),
    "failure_journal_unavailable": failed(Failure.JournalUnavailable(error="full")),
    "lease_state_connection": leases_in_state(LeaseState.CONNECTION),
    "lease_state_process": leases_in_state(LeaseState.PROCESS),
    "lease_state_lingering": leases_in_state(LeaseState.LINGERING),
    "lease_state_kept": leases_in_state(LeaseState.KEPT),
    "lease_state_number": leases_in_state(LeaseState.NUMBER),
    "listen_default": lease_with_listen(Listen.Default()),
    "listen_backlog": lease_with_listen(Listen.Backlog(4096)),
    "listen_bind_only": lease_with_listen(Listen.BindOnly()),
    "listen_number": lease_with_listen(Listen.Number()),
    "transport_tcp": lease_with_transport(Transport.TCP),
    "transport_udp": lease_with_transport(Transport.UDP),
}

needs_wire_rs = pytest.mark.skipif(
    GOLDENS is None,
    reason="proto/tests/wire.rs not found: run from the repository or set PORTBROKER_WIRE_RS",
)


@needs_wire_rs
def test_every_rust_golden_has_a_python_value_and_no_other():
    missing = sorted(set(GOLDENS) - set(PYTHON))
    extra = sorted(set(PYTHON) - set(GOLDENS))
    assert not missing, f"goldens of wire.rs without a Python value in {__file__}: {missing}"
    assert not extra, f"Python goldens that wire.rs does not have (renamed or removed?): {extra}"


@needs_wire_rs
def test_the_goldens_cover_every_variant_of_every_python_enum():
    # A variant added to protocol.py without a golden in wire.rs is a variant Rust lacks.
    kinds = {type(value) for value in PYTHON.values()}
    inner = set()
    for value in PYTHON.values():
        for attr in ("refusal", "failure", "event"):
            if hasattr(value, attr):
                inner.add(type(getattr(value, attr)))
        if isinstance(value, Request.Lease):
            inner.update(type(spec.listen) for spec in value.sockets)
        if isinstance(value, Response.History):
            inner.update(type(entry.event) for entry in value.entries)
    for enum in (Request, Response, Refusal, Failure, Event, Listen, HistoryEvent):
        for variant in enum.variants:
            assert variant in kinds | inner, f"{variant.__qualname__} has no golden"


@needs_wire_rs
@pytest.mark.parametrize("name", sorted(PYTHON))
def test_golden(name):
    if name not in GOLDENS:
        pytest.fail(f"wire.rs has no golden {name}")
    check, frame = GOLDENS[name]
    value = PYTHON[name]
    assert int.from_bytes(frame[:4], "little") == len(frame) - 4, "the golden's own prefix"
    if check in ("check_request", "check_listen", "check_transport"):
        assert frames.encode_request(value) == frame, f"the encoding of {value!r} differs"
        assert frames.decode_request(frame[4:]) == value
    else:
        assert frames.encode_response(value) == frame, f"the encoding of {value!r} differs"
        assert frames.decode_response(frame[4:]) == value


def test_the_parser_reads_a_golden_with_brackets_in_its_value():
    text = """
goldens! { refusal_golden(Refusal), check_refusal:
    // A comment: with a colon.
    refusal_in_use: Refusal::InUse { .. } =>
        Refusal::InUse { requested: v4([0, 0, 0, 0], 8080), held: v4([127, 0, 0, 1], 80) },
        [
            3, 0, 0, 0, 2, 0,
            0,
        ];
    refusal_x: Refusal::X => Refusal::X, [1, 0, 0, 0, 9];
}
"""
    parsed = rust_goldens.parse(text)
    assert parsed == {
        "refusal_in_use": ("check_refusal", bytes([3, 0, 0, 0, 2, 0, 0])),
        "refusal_x": ("check_refusal", bytes([1, 0, 0, 0, 9])),
    }
