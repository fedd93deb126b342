"""Text another user controls, made safe for a terminal or a log line.

The same rule as ``portbroker_proto::escaped``: a process chooses its own name
(``prctl(PR_SET_NAME)``), control characters included, and the broker reports it as the holder
of a port. Escaped, it cannot move the cursor, change colours or start a line of its own.
"""

import unicodedata

_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Characters that Unicode marks Other_Grapheme_Extend: Rust's `char::escape_debug` escapes every
# grapheme extender (they combine with what precedes them), not only the marks (Mn, Me).
_OTHER_GRAPHEME_EXTEND = frozenset(
    [0x09BE, 0x09D7, 0x0B3E, 0x0B57, 0x0BBE, 0x0BD7, 0x0CC2, 0x0CD5, 0x0CD6, 0x0D3E, 0x0D57]
    + [0x0DCF, 0x0DDF, 0x1B35, 0x200C, 0x302E, 0x302F, 0xFF9E, 0xFF9F, 0x1133E, 0x11357]
    + [0x114B0, 0x114BD, 0x115AF, 0x1D165, *range(0x1D16E, 0x1D173)]
    + [*range(0xE0020, 0xE0080), *range(0x1F3FB, 0x1F400)]
)


def _prints_alone(char):
    if char.isascii():
        return char.isprintable()
    # isprintable() is false for the Unicode categories Other and Separator (but the space):
    # the same set Rust's escape_debug escapes, besides the grapheme extenders.
    if not char.isprintable():
        return False
    return (
        unicodedata.category(char) not in ("Mn", "Me") and ord(char) not in _OTHER_GRAPHEME_EXTEND
    )


def escaped(text):
    """``text`` with every character that does not print escaped: ``\\n``, ``\\r``, ``\\t``;
    other ASCII controls as ``\\x1b``; other characters that do not print on their own (C1
    controls, bidirectional overrides, combining marks, unassigned code points) as
    ``\\u{202e}``; and ``\\`` itself as ``\\\\``, so that the result reads back unambiguously.
    Printable text, non-ASCII letters included, passes unchanged."""
    out = []
    for char in str(text):
        short = _SHORT.get(char)
        if short is not None:
            out.append(short)
        elif _prints_alone(char):
            out.append(char)
        elif char.isascii():
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{{{ord(char):x}}}")
    return "".join(out)
