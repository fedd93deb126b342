"""Reads the golden frames of ``proto/tests/wire.rs``, the Rust side's pinned bytes of one message
of every variant, so that the Python encoder is checked against the very bytes the Rust one
must produce: neither can drift without a test failing.

Each golden there reads ``name: Pattern => value_expression, [byte, byte, ...];`` inside a
``goldens! { ... }`` block; this takes the name and the bytes (the value is Rust, and the
Python tests state it again in Python).
"""

import os
import pathlib
import re

WIRE_RS_ENV = "PORTBROKER_WIRE_RS"

_ENTRY = re.compile(
    r"^\s*([a-z][a-z0-9_]*):\s+[A-Z]\w*::\w+[^=;]*=>(?P<value>.*?),\s*\[(?P<bytes>[0-9,\s]+)\]\s*;",
    re.DOTALL | re.MULTILINE,
)
_BLOCK = re.compile(r"goldens!\s*\{\s*(\w+)\((\w+)\),\s*(\w+):(.*?)\n\}", re.DOTALL)


def wire_rs_path():
    """``$PORTBROKER_WIRE_RS``, else ``proto/tests/wire.rs`` of the checkout this file is in;
    ``None`` when neither exists (the package's tests run outside the repository)."""
    explicit = os.environ.get(WIRE_RS_ENV)
    if explicit:
        return pathlib.Path(explicit)
    here = pathlib.Path(__file__).resolve()
    candidate = here.parents[2] / "proto" / "tests" / "wire.rs"
    return candidate if candidate.exists() else None


def parse(text):
    """``{golden name: (check function, frame bytes)}`` of every golden in ``text``."""
    text = re.sub(r"//[^\n]*", "", text)
    goldens = {}
    blocks = _BLOCK.findall(text)
    if not blocks:
        raise ValueError("no goldens! block found: has the layout of wire.rs changed?")
    for _function, _type, check, body in blocks:
        for match in _ENTRY.finditer(body):
            name = match.group(1)
            frame = bytes(
                int(b) for b in match.group("bytes").replace("\n", " ").split(",") if b.strip()
            )
            if name in goldens:
                raise ValueError(f"golden {name} appears twice")
            goldens[name] = (check, frame)
    return goldens


def load():
    path = wire_rs_path()
    if path is None:
        return None
    return parse(path.read_text(encoding="utf-8"))
