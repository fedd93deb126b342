"""Where the broker's socket lives: the same rule as ``proto/src/paths.rs``, so that this package,
the Rust library and ``portctl`` all reach the same broker."""

import os

SOCKET_ENV = "PORTBROKER_SOCKET"
"""The environment variable that overrides the socket path for everyone."""

SYSTEM_SOCKET = "/run/portbroker/portbroker.sock"
"""The system service's socket (``portbrokerd.socket``), and root's daemon's default."""


def client_socket_paths(environ=None, euid=None):
    """The paths a client tries, in order, taking the first where a broker answers:

    1. ``$PORTBROKER_SOCKET`` if set and not empty, and nothing else;
    2. for a user other than root, ``$XDG_RUNTIME_DIR/portbroker/portbroker.sock`` if
       ``XDG_RUNTIME_DIR`` is set and not empty: a broker of the user's own comes first;
    3. the system service's socket, ``/run/portbroker/portbroker.sock``.

    Never empty. ``environ`` and ``euid`` default to this process's.
    """
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    override = environ.get(SOCKET_ENV)
    if override:
        return [override]
    paths = []
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    if euid != 0 and runtime_dir:
        paths.append(os.path.join(runtime_dir, "portbroker", "portbroker.sock"))
    paths.append(SYSTEM_SOCKET)
    return paths
