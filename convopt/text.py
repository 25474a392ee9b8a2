"""Text from a model, a file name or a library on its way to a person: never raw.

:func:`safe` is the one escaping every view uses (terminal tables, error messages, Markdown, HTML, the
JSON printed by ``inspect --json``): a string s becomes s with each character ``str.isprintable`` rejects
written as a Python escape. Those are the Unicode categories Cc (C0/C1 controls: ESC, BEL, CSI, newline),
Cf (format: bidi overrides U+202A–U+202E and isolates U+2066–U+2069, zero-width characters, BOM), Cs
(lone surrogates, as ``os.fsdecode`` makes of undecodable file-name bytes), Co (private use), Cn
(unassigned), Zl, Zp and the Zs spaces other than the ASCII space. The result is one line.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator

TABLE_NAME_LIMIT = 200
"""Longest name a table cell shows whole; longer ones keep a prefix and a hash suffix (:func:`cell`)."""

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(value: object) -> str:
    """``str(value)`` with every non-printable character escaped (``\\x1b``, ``\\u202e``, ``\\n``).

    A printable string is returned as it is (the common case costs one ``isprintable`` call)."""
    s = value if isinstance(value, str) else str(value)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in s)


def one_line(value: object) -> str:
    """An error message as one safe line: surrounding whitespace (ORT's trailing blank lines) dropped, then
    :func:`safe`, so an inner newline shows as ``\\n`` instead of splitting the message."""
    s = value if isinstance(value, str) else str(value)
    return safe(s.strip())


def cell(name: object, limit: int = TABLE_NAME_LIMIT) -> str:
    """A model name for a table cell: :func:`safe`, and when longer than ``limit`` characters, its first
    ``limit - 10`` characters, an ellipsis and ``#`` + 8 hex digits of the SHA-256 of the original name, so
    two long names that share a prefix still get different cells."""
    s = safe(name)
    if len(s) <= limit:
        return s
    raw = name if isinstance(name, str) else str(name)
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{s[:limit - 10]}…#{digest}"


def json_safe(text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with every non-printable character written
    as a JSON ``\\uXXXX`` escape (surrogate pairs above U+FFFF). Outside strings json.dumps only emits
    spaces and newlines, which are kept, so the result parses to the same value."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == "\n":
            out.append(ch)
            continue
        code = ord(ch)
        if code > 0xFFFF:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


@contextlib.contextmanager
def native_stdout_captured() -> Iterator[list[str]]:
    """Capture what C/C++ code writes to file descriptor 1 (onnx's checker prints warnings with std::cout)
    into the yielded list, instead of letting it reach the terminal raw."""
    out: list[str] = []
    try:
        saved = os.dup(1)
    except OSError:
        yield out
        return
    libc = ctypes.CDLL(None)
    with tempfile.TemporaryFile() as tmp:
        with contextlib.suppress(ValueError, OSError):
            sys.stdout.flush()
        os.dup2(tmp.fileno(), 1)
        try:
            yield out
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read(64 * 1024).decode("utf-8", "replace"))
