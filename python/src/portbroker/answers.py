"""The broker's refusals and failures as exceptions: one class per kind, so that a caller can
catch what it can handle (``except portbroker.InUse as e: e.holder``)."""

from . import errors, protocol

_REFUSALS = {
    protocol.Refusal.InUse: errors.InUse,
    protocol.Refusal.InUseOutside: errors.InUseOutside,
    protocol.Refusal.NotPermitted: errors.NotPermitted,
    protocol.Refusal.InvalidSpec: errors.InvalidSpec,
    protocol.Refusal.PoolExhausted: errors.PoolExhausted,
    protocol.Refusal.BindFailed: errors.BindFailed,
    protocol.Refusal.QuotaExceeded: errors.QuotaExceeded,
    protocol.Refusal.UnknownService: errors.UnknownService,
}

_FAILURES = {
    protocol.Failure.UnknownLease: errors.UnknownLease,
    protocol.Failure.NotYourLease: errors.NotYourLease,
}


def refusal_error(refusal):
    """The :class:`~portbroker.errors.Refused` subclass for a ``Refusal.*`` message."""
    return _REFUSALS.get(type(refusal), errors.Refused)(refusal, protocol.describe_refusal(refusal))


def failure_error(failure):
    """The exception for a ``Failure.*`` message: :class:`~portbroker.errors.VersionMismatch`
    for a version mismatch, else :class:`~portbroker.errors.Failed` or its subclass."""
    if isinstance(failure, protocol.Failure.VersionMismatch):
        return errors.VersionMismatch(failure.broker, failure.client)
    return _FAILURES.get(type(failure), errors.Failed)(failure, protocol.describe_failure(failure))
