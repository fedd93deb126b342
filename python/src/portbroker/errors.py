"""The exceptions of the package: every one says what failed, on what, and what to do.

All derive from :class:`PortbrokerError`. A refused lease raises a subclass of :class:`Refused`
(one per refusal the broker can give), any other request the broker could not serve a
:class:`Failed`. Text that another user controls (a holder's process name) is escaped before it
goes into a message, as ``portctl`` does.
"""

from .escape import escaped

TRUST_UID_ENV = "PORTBROKER_TRUST_UID"

START_HINT = (
    "is portbrokerd running? Start the system broker with `systemctl enable --now "
    "portbrokerd.socket` (its socket is for group portbroker: `usermod -aG portbroker USER`), "
    "or run `portbrokerd` as yourself for a broker of your own, or set PORTBROKER_SOCKET to "
    "the socket of the broker to use"
)


class PortbrokerError(Exception):
    """Anything that went wrong talking to the broker."""


class Unreachable(PortbrokerError):
    """No broker answered: ``.tried`` lists each socket path tried with the ``OSError`` of its
    ``connect()``."""

    def __init__(self, tried):
        self.tried = list(tried)
        where = "; ".join(f"{path}: {describe_os_error(error)}" for path, error in self.tried)
        super().__init__(f"cannot reach the broker at {where}; {START_HINT}")

    @property
    def path(self):
        """The last socket path tried."""
        return self.tried[-1][0]


class UntrustedBroker(PortbrokerError):
    """The process answering on the broker's socket runs as a user this package does not trust
    (not root, not this user, not ``PORTBROKER_TRUST_UID``): it could be anyone's program
    posing as the broker, so nothing was sent to it."""

    def __init__(self, path, pid, uid, own_uid, trust_uid):
        self.path, self.pid, self.uid, self.own_uid = path, pid, uid, own_uid
        self.trust_uid = trust_uid
        note = ""
        if trust_uid is not None:
            note = f" ({TRUST_UID_ENV}={escaped(trust_uid)} does not name it)"
        super().__init__(
            f"refusing the broker at {path}: the process answering there (pid {pid}) runs as "
            f"uid {uid}, neither root nor this user (uid {own_uid}), so it may be posing as "
            f"portbrokerd and nothing was sent to it{note}; if uid {uid} runs a broker you "
            f"trust, set {TRUST_UID_ENV}={uid}"
        )


class VersionMismatch(PortbrokerError):
    """The broker speaks another protocol version than this package."""

    def __init__(self, broker, client):
        self.broker, self.client = broker, client
        super().__init__(
            f"protocol version mismatch: the broker speaks version {broker}, this package "
            f"version {client}; use a portbroker Python package from the broker's release"
        )


class ConnectionLost(PortbrokerError):
    """The connection broke, or the broker did not answer in time, under a request that may or
    may not have been carried out. A :class:`Broker`'s next request connects again and takes
    its leases back."""

    def __init__(self, path, reason):
        self.path, self.reason = path, reason
        super().__init__(f"lost the connection to the broker at {path}: {reason}")


class LeaseLost(PortbrokerError):
    """The connection was made again (the broker restarted, say) and the broker did not give
    this lease back: it restarted without its journal, or the lease ended meanwhile. Nothing
    was sent: after a restart without the journal its id may name another process's lease."""

    def __init__(self, path, lease_id):
        self.path, self.id = path, lease_id
        super().__init__(
            f"lease {lease_id} was lost when the connection to the broker at {path} was made "
            "again: the broker did not give it back (it restarted without its journal, or the "
            "lease ended meanwhile)"
        )


class ProtocolError(PortbrokerError):
    """The broker sent something this package does not understand or did not expect."""

    def __init__(self, detail):
        self.detail = detail
        super().__init__(f"protocol error: {detail}")


class SpecError(PortbrokerError, ValueError):
    """A socket spec in text form could not be parsed; nothing was sent to the broker."""

    def __init__(self, spec, reason):
        self.spec, self.reason = spec, reason
        super().__init__(
            f'bad socket spec "{escaped(spec)}": {reason}; expected PROTO:[ADDR:]PORT such as '
            "tcp:8080, tcp:127.0.0.1:0 or udp:[::1]:5353"
        )


class Refused(PortbrokerError):
    """The broker refused a lease; nothing of it stays bound. ``.refusal`` is the decoded
    refusal (a ``Refusal.*`` message), ``.name`` its snake_case name (``"in_use"``, ...)."""

    name = "refused"

    def __init__(self, refusal, text):
        self.refusal = refusal
        super().__init__(f"lease refused: {text}")


class InUse(Refused):
    """A live lease holds an overlapping address: ``.holder`` (pid, uid, gid, name),
    ``.lease`` (its id), ``.requested`` and ``.held`` (addresses)."""

    name = "in_use"

    def __init__(self, refusal, text):
        super().__init__(refusal, text)
        self.holder = refusal.holder
        self.lease = refusal.lease
        self.requested = refusal.requested
        self.held = refusal.held


class InUseOutside(Refused):
    """A process outside the broker holds the address: ``.holder`` where the broker found it,
    else ``None``."""

    name = "in_use_outside"

    def __init__(self, refusal, text):
        super().__init__(refusal, text)
        self.holder = refusal.holder
        self.requested = refusal.requested


class NotPermitted(Refused):
    """The broker's policy does not allow the lease."""

    name = "not_permitted"


class InvalidSpec(Refused):
    """The broker found a spec malformed or contradicting another of the same request."""

    name = "invalid_spec"


class PoolExhausted(Refused):
    """Port 0 was asked for and no port of the broker's pool is free."""

    name = "pool_exhausted"


class BindFailed(Refused):
    """The kernel refused the bind for another reason than "in use": ``.errno``."""

    name = "bind_failed"

    def __init__(self, refusal, text):
        super().__init__(refusal, text)
        self.errno = refusal.errno


class QuotaExceeded(Refused):
    """A quota of the broker's policy is used up; it frees up as leases end."""

    name = "quota_exceeded"


class UnknownService(Refused):
    """The broker's policy has no service of that name."""

    name = "unknown_service"


class Failed(PortbrokerError):
    """The broker could not serve a request for another reason than a refused lease.
    ``.failure`` is the decoded failure (a ``Failure.*`` message), ``.name`` its snake_case
    name."""

    name = "failed"

    def __init__(self, failure, text):
        self.failure = failure
        super().__init__(text)


class UnknownLease(Failed):
    """No live lease has the id given (it was released, expired, revoked or taken over)."""

    name = "unknown_lease"


class NotYourLease(Failed):
    """The lease belongs to another user (``.holder_uid``)."""

    name = "not_your_lease"

    def __init__(self, failure, text):
        super().__init__(failure, text)
        self.holder_uid = failure.holder_uid


def describe_os_error(error):
    """``[Errno 2] No such file or directory`` without the file name Python may append."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} (errno {error.errno})" if error.errno else error.strerror
    return str(error)
