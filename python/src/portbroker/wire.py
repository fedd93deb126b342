"""bincode 2 with ``config::standard()``, the encoding of the broker's messages: the primitives
and the combinators that :mod:`portbroker.protocol` builds its messages from.

- Integers are variable-length, little-endian: 0 to 250 in one byte; else a marker byte (251:
  a ``u16`` follows, 252: ``u32``, 253: ``u64``) and the value. A decoder accepts any marker
  that fits the type (a ``u16`` field refuses 252 and up), as bincode does; the encoder always
  writes the shortest form. Signed integers are zigzag-encoded first (0, -1, 1, -2 ... as 0, 1,
  2, 3 ...).
- ``u8`` is one raw byte; ``bool`` one byte, 0 or 1.
- A string or a sequence is its length (a ``u64`` varint), then its UTF-8 bytes or elements.
- ``Option`` is 0, or 1 and the value; an enum the index of its variant (a ``u32`` varint), then
  the variant's fields; a struct its fields, one after the other. No names, no padding.

Every decoder reads from a :class:`Reader` and checks each length against the bytes that are
left before it takes anything, so a hostile length costs nothing; a malformed payload raises
:class:`DecodeError`, never anything else.
"""

import dataclasses
import enum
import ipaddress
import typing

from .errors import ProtocolError

_U16, _U32, _U64, _U128 = 251, 252, 253, 254
_MARKER_BYTES = {_U16: 2, _U32: 4, _U64: 8}


class DecodeError(ProtocolError):
    """A payload is not a valid message."""


class EncodeError(ValueError):
    """A value does not fit its field (a port above 65535, say)."""


class Reader:
    """A payload being decoded: its bytes and how far decoding got."""

    def __init__(self, data):
        self.data = bytes(data)
        self.pos = 0

    def left(self):
        return len(self.data) - self.pos

    def take(self, count, what):
        """The next ``count`` bytes, or a :class:`DecodeError` naming ``what`` needed them."""
        if count > self.left():
            raise DecodeError(
                f"truncated message: {what} needs {count} bytes at byte {self.pos}, "
                f"{self.left()} left"
            )
        start = self.pos
        self.pos += count
        return self.data[start : self.pos]


class Codec:
    """How one type becomes bytes and back."""

    name = "?"

    def encode(self, value, out):
        raise NotImplementedError

    def decode(self, reader):
        raise NotImplementedError


class UInt(Codec):
    def __init__(self, bits):
        self.bits = bits
        self.name = f"u{bits}"

    def encode(self, value, out):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << self.bits:
            raise EncodeError(f"{value!r} is not a {self.name}")
        if value <= 250:
            out.append(value)
            return
        for marker, size in _MARKER_BYTES.items():
            if value < 1 << (8 * size):
                out.append(marker)
                out += value.to_bytes(size, "little")
                return

    def decode(self, reader):
        first = reader.take(1, self.name)[0]
        if first <= 250:
            return first
        size = _MARKER_BYTES.get(first)
        if size is None or size * 8 > self.bits:
            raise DecodeError(
                f"invalid integer marker {first} for a {self.name} at byte {reader.pos - 1}"
            )
        return int.from_bytes(reader.take(size, self.name), "little")


class SInt(Codec):
    def __init__(self, bits):
        self.unsigned = UInt(bits)
        self.bits = bits
        self.name = f"i{bits}"

    def encode(self, value, out):
        limit = 1 << (self.bits - 1)
        if not isinstance(value, int) or isinstance(value, bool) or not -limit <= value < limit:
            raise EncodeError(f"{value!r} is not an {self.name}")
        self.unsigned.encode(value * 2 if value >= 0 else -value * 2 - 1, out)

    def decode(self, reader):
        n = self.unsigned.decode(reader)
        return n // 2 if n % 2 == 0 else -(n // 2) - 1


class Byte(Codec):
    name = "u8"

    def encode(self, value, out):
        out.append(value)

    def decode(self, reader):
        return reader.take(1, self.name)[0]


class Bool(Codec):
    name = "bool"

    def encode(self, value, out):
        if not isinstance(value, bool):
            raise EncodeError(f"{value!r} is not a bool")
        out.append(1 if value else 0)

    def decode(self, reader):
        byte = reader.take(1, self.name)[0]
        if byte > 1:
            raise DecodeError(f"invalid bool {byte} at byte {reader.pos - 1}")
        return byte == 1


U16, U32, U64, I32, U8, BOOL = UInt(16), UInt(32), UInt(64), SInt(32), Byte(), Bool()
_LENGTH = U64


class Str(Codec):
    name = "string"

    def encode(self, value, out):
        data = value.encode("utf-8")
        _LENGTH.encode(len(data), out)
        out += data

    def decode(self, reader):
        length = _LENGTH.decode(reader)
        data = reader.take(length, f"a string of {length} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DecodeError(f"a string is not UTF-8: {error}") from None


STR = Str()


class Vec(Codec):
    """A sequence; decoded as a tuple."""

    def __init__(self, item):
        self.item = codec_of(item)
        self.name = f"Vec<{self.item.name}>"

    def encode(self, value, out):
        _LENGTH.encode(len(value), out)
        for item in value:
            self.item.encode(item, out)

    def decode(self, reader):
        length = _LENGTH.decode(reader)
        # Every element takes at least one byte: a longer claim is a lie, refused before any
        # allocation.
        if length > reader.left():
            raise DecodeError(
                f"a {self.name} claims {length} elements with {reader.left()} bytes left"
            )
        return tuple(self.item.decode(reader) for _ in range(length))


class Opt(Codec):
    def __init__(self, item):
        self.item = codec_of(item)
        self.name = f"Option<{self.item.name}>"

    def encode(self, value, out):
        if value is None:
            out.append(0)
        else:
            out.append(1)
            self.item.encode(value, out)

    def decode(self, reader):
        tag = reader.take(1, self.name)[0]
        if tag == 0:
            return None
        if tag == 1:
            return self.item.decode(reader)
        raise DecodeError(f"invalid {self.name} tag {tag} at byte {reader.pos - 1}")


class Tuple(Codec):
    def __init__(self, *items):
        self.items = [codec_of(item) for item in items]
        self.name = "(" + ", ".join(item.name for item in self.items) + ")"

    def encode(self, value, out):
        if len(value) != len(self.items):
            raise EncodeError(f"{value!r} is not a {self.name}")
        for item, codec in zip(value, self.items):
            codec.encode(item, out)

    def decode(self, reader):
        return tuple(codec.decode(reader) for codec in self.items)


def _variant(reader, name, count):
    index = U32.decode(reader)
    if index >= count:
        raise DecodeError(
            f"unknown {name} variant {index} (this package knows 0 to {count - 1}): the broker "
            "may be newer than this package"
        )
    return index


class IpAddrCodec(Codec):
    """``std::net::IpAddr``: variant 0 (V4) and 4 raw bytes, or 1 (V6) and 16."""

    name = "IpAddr"

    def encode(self, value, out):
        value = ipaddress.ip_address(value)
        U32.encode(0 if value.version == 4 else 1, out)
        out += value.packed

    def decode(self, reader):
        if _variant(reader, self.name, 2) == 0:
            return ipaddress.IPv4Address(reader.take(4, "an IPv4 address"))
        return ipaddress.IPv6Address(reader.take(16, "an IPv6 address"))


IP_ADDR = IpAddrCodec()


@dataclasses.dataclass(frozen=True)
class SocketAddr:
    """``std::net::SocketAddr``: an IP address and a port. (serde writes no flow info or scope
    id for IPv6.)"""

    ip: typing.Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
    port: int

    def __str__(self):
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


class SocketAddrCodec(Codec):
    """Variant 0 (V4) or 1 (V6), the address's raw bytes, then the port as a ``u16``."""

    name = "SocketAddr"

    def encode(self, value, out):
        IP_ADDR.encode(value.ip, out)
        U16.encode(value.port, out)

    def decode(self, reader):
        ip = IP_ADDR.decode(reader)
        return SocketAddr(ip, U16.decode(reader))


SOCKET_ADDR = SocketAddrCodec()


class UnitEnum(Codec):
    """A Rust enum whose variants carry nothing, as a Python :class:`enum.Enum`: the index of a
    member is its position in the Python declaration."""

    def __init__(self, enum_class):
        self.members = list(enum_class)
        self.name = enum_class.__name__

    def encode(self, value, out):
        U32.encode(self.members.index(value), out)

    def decode(self, reader):
        return self.members[_variant(reader, self.name, len(self.members))]


class StructCodec(Codec):
    """A dataclass whose fields, in declaration order, are the Rust struct's."""

    def __init__(self, cls):
        self.cls = cls
        self.name = cls.__qualname__
        self.fields = [(field.name, codec_of(field.type)) for field in dataclasses.fields(cls)]

    def encode(self, value, out):
        if type(value) is not self.cls:
            raise EncodeError(f"{value!r} is not a {self.name}")
        for name, codec in self.fields:
            codec.encode(getattr(value, name), out)

    def decode(self, reader):
        return self.cls(*(codec.decode(reader) for _, codec in self.fields))


class EnumCodec(Codec):
    """A Rust enum with data: its variant index, then the variant's fields."""

    def __init__(self, name, variants):
        self.name = name
        self.variants = variants

    def encode(self, value, out):
        index = getattr(type(value), "_variant_index", None)
        if index is None or self.variants[index] is not type(value):
            raise EncodeError(f"{value!r} is not a {self.name}")
        U32.encode(index, out)
        self.variants[index]._codec.encode(value, out)

    def decode(self, reader):
        index = _variant(reader, self.name, len(self.variants))
        return self.variants[index]._codec.decode(reader)


_UNIT_ENUMS = {}


def codec_of(kind):
    """The codec of a field annotation: ``Annotated[T, codec]``, a class made with
    :func:`struct` or :func:`enum_of`, or an :class:`enum.Enum`; or a codec itself."""
    if isinstance(kind, Codec):
        return kind
    metadata = getattr(kind, "__metadata__", None)
    if metadata:
        return codec_of(metadata[0])
    codec = getattr(kind, "_codec", None) if isinstance(kind, type) else None
    if isinstance(codec, Codec):
        return codec
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        if kind not in _UNIT_ENUMS:
            _UNIT_ENUMS[kind] = UnitEnum(kind)
        return _UNIT_ENUMS[kind]
    raise TypeError(f"no wire codec for {kind!r}")


def struct(cls):
    """Makes ``cls`` a frozen dataclass encoded as its fields in declaration order, each by the
    codec its annotation names."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    cls._codec = StructCodec(cls)
    return cls


def enum_of(namespace):
    """Makes the :func:`struct` classes nested in ``namespace``, in declaration order, the
    variants of one enum: the first is variant 0. As in Rust, declaration order is the wire
    format."""
    variants = [
        member
        for member in vars(namespace).values()
        if isinstance(member, type) and isinstance(getattr(member, "_codec", None), StructCodec)
    ]
    for index, variant in enumerate(variants):
        variant._variant_index = index
    namespace.variants = tuple(variants)
    namespace._codec = EnumCodec(namespace.__name__, variants)
    return namespace


def field(codec, python_type=object):
    """A field annotation: the value is a ``python_type`` encoded by ``codec``."""
    return typing.Annotated[python_type, codec]


def encode(codec, value):
    out = bytearray()
    codec_of(codec).encode(value, out)
    return bytes(out)


def decode_exactly(codec, payload):
    """Decodes the whole of ``payload``; trailing bytes are an error, as on the Rust side."""
    reader = Reader(payload)
    value = codec_of(codec).decode(reader)
    if reader.left():
        raise DecodeError(f"{reader.left()} trailing bytes after a {reader.pos}-byte message")
    return value
