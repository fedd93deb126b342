"""The text form of a socket spec, ``PROTO:[ADDR:]PORT``, read exactly as the Rust side reads
it (``proto/src/spec.rs``): ``tcp:8080``, ``tcp:127.0.0.1:0``, ``udp:[::1]:5353``."""

import ipaddress
import re

from .errors import SpecError
from .protocol import SocketSpec, Transport

_PORT = re.compile(r"\+?[0-9]+")
_TRANSPORTS = {"tcp": Transport.TCP, "udp": Transport.UDP}


def parse_spec(text):
    """A :class:`~portbroker.protocol.SocketSpec` (listening with the broker's default, not
    IPv6-only) from its text. Port 0 means any port of the broker's pool; without an address
    the broker's default wildcard is used. IPv4-mapped IPv6 addresses are refused: write the
    IPv4 address. Raises :class:`~portbroker.errors.SpecError`."""

    def fail(reason):
        return SpecError(text, reason)

    if not isinstance(text, str):
        raise TypeError(f"a socket spec is a str such as 'tcp:127.0.0.1:0', not {text!r}")
    proto, colon, rest = text.partition(":")
    if not colon:
        raise fail("no protocol")
    transport = _TRANSPORTS.get(proto)
    if transport is None:
        raise fail("the protocol must be tcp or udp")
    if rest.startswith("["):
        ip_text, sep, port = rest[1:].partition("]:")
        if not sep:
            raise fail("an IPv6 address in brackets must be followed by :PORT")
        addr = _ipv6(ip_text)
        if addr is None:
            raise fail("not an IPv6 address")
    elif ":" in rest:
        ip_text, _, port = rest.rpartition(":")
        if ":" in ip_text:
            raise fail("write IPv6 addresses in brackets, as [::1]")
        addr = _ipv4(ip_text)
        if addr is None:
            raise fail("not an IPv4 address")
    else:
        addr, port = None, rest
    if addr is not None and addr.version == 6 and addr.ipv4_mapped is not None:
        raise fail("IPv4-mapped IPv6 addresses are not supported; write the IPv4 address")
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise fail("the port must be a number from 0 to 65535")
    return SocketSpec(transport=transport, addr=addr, port=int(port))


def _ipv4(text):
    # Only dotted quads, as Rust's Ipv4Addr parses them.
    if not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", text):
        return None
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


def _ipv6(text):
    # Python would take a scope ("fe80::1%eth0"); Rust's Ipv6Addr does not.
    if "%" in text:
        return None
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None
