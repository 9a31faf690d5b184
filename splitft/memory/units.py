"""Byte sizes as people write them: `8G`, `512MiB`, `1.5g`, `1073741824`; and back for messages."""

from __future__ import annotations

import re

from splitft.errors import InvalidArgument

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_bytes(text: str) -> int:
    """Bytes from an integer or a number with a binary suffix (K, M, G, T; `8G` = `8GiB` = 8 * 2**30);
    InvalidArgument for anything else, or for zero."""
    match = _SIZE.match(text)
    if match is None:
        raise InvalidArgument(f"not a byte size: {text!r} (e.g. 1073741824, 512M, 8G)")
    number, unit = match.group(1), match.group(2).lower()
    value = int(float(number) * 1024 ** _POWERS[unit]) if "." in number else int(number) << 10 * _POWERS[unit]
    if value < 1:
        raise InvalidArgument(f"a byte size must be positive, got {text!r}")
    return value


def format_bytes(size: float) -> str:
    """`size` for a message: `512 B`, `3.2 MiB`, `1.5 GiB` (negative sizes keep their sign)."""
    sign, size = ("-" if size < 0 else ""), abs(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{sign}{size:.0f} {unit}" if unit == "B" else f"{sign}{size:.1f} {unit}"
        size /= 1024
    return f"{sign}{size:.1f} TiB"
