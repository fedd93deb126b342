"""Who may answer on the broker's socket: root, this process's own user (a broker of its own),
or the uid that ``PORTBROKER_TRUST_UID`` names. Checked on every connection before a byte is
sent, with the kernel's word for it (``SO_PEERCRED``): a user who can replace the socket file,
or a directory on its path, must not be able to pose as the broker."""

import os
import re
import socket
import struct

from .errors import TRUST_UID_ENV, UntrustedBroker

# struct ucred: pid_t pid; uid_t uid; gid_t gid.
_UCRED = struct.Struct("iII")


def peer_credentials(sock):
    """``(pid, uid, gid)`` of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)


def trusted(peer_uid, own_uid, trust_uid):
    """Whether a broker running as ``peer_uid`` may be talked to by ``own_uid``, given the value
    of ``PORTBROKER_TRUST_UID`` (one uid in decimal; anything else trusts no one more)."""
    if peer_uid == 0 or peer_uid == own_uid:
        return True
    if trust_uid is None:
        return False
    value = trust_uid.strip()
    # As Rust's u32 parse reads it: digits with an optional "+", nothing else (no "_", no sign).
    if not re.fullmatch(r"\+?[0-9]+", value) or int(value) > 0xFFFF_FFFF:
        return False
    return int(value) == peer_uid


def check_peer(sock, path):
    """Raises :class:`~portbroker.errors.UntrustedBroker` unless the process at the other end of
    ``sock`` runs as root, as this process's effective uid, or as ``PORTBROKER_TRUST_UID``."""
    pid, uid, _ = peer_credentials(sock)
    own_uid = os.geteuid()
    trust_uid = os.environ.get(TRUST_UID_ENV) or None
    if not trusted(uid, own_uid, trust_uid):
        raise UntrustedBroker(path, pid, uid, own_uid, trust_uid)
