"""
The building blocks of memmq's command-line options (L{memmq.options}):
option groups, and the values options take, parsed: sizes with units (and
back to text for --help), whole numbers, seconds, host:port. Each coercion
raises ValueError with a message naming the option.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twisted.python import usage

from memmq.errors import MemmqError

__all__ = [
    "Group", "refuse", "SIZE_HELP", "SIZE_UNITS", "count", "format_size", "host_port", "parse_size", "seconds", "size",
]

# Each unit a size may carry (any case), and what it multiplies by.
SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
}
SIZE_HELP = (
    "Sizes are bytes, or carry a unit (any case): K or KiB = 1024, M or MiB = 1024^2, "
    "G or GiB = 1024^3 bytes; KB = 1000, MB = 1000^2, GB = 1000^3 bytes."
)
_SIZE = re.compile(r"(-?[0-9]+)\s*([a-z]*)", re.IGNORECASE)


def parse_size(text: str) -> int:
    """
    A size in bytes, more than 0: a number with an optional unit of
    L{SIZE_UNITS} (C{512KiB}, C{8MiB}, C{1G}; C{1MB} is 1,000,000 bytes).

    @raise ValueError: the text is not such a size; the message names it.
    """
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (for example 1048576, 512KiB or 8MiB)")
    number, unit = int(match.group(1)), match.group(2)
    if unit.lower() not in SIZE_UNITS:
        raise ValueError(f"{text!r}: unknown unit {unit!r} (use B, KiB, MiB, GiB, KB, MB or GB)")
    if number <= 0:
        raise ValueError(f"{text!r}: a size must be more than 0")
    return number * SIZE_UNITS[unit.lower()]


def format_size(size: int) -> str:
    """
    C{size} bytes as a person writes it: C{8 MiB}, C{512 KiB}, C{1000 B}.
    """
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def size(name: str):
    def coerce(text: str) -> int:
        try:
            return parse_size(text)
        except ValueError as e:
            raise ValueError(f"--{name}: {e}") from None
    coerce.is_size = True  # --help shows its default as a size
    return coerce


def count(name: str):
    def coerce(text: str) -> int:
        text = str(text).strip()
        if text.startswith("-") and text[1:].isdigit():
            raise ValueError(f"--{name}: cannot be negative")
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"--{name}: {text!r} is not a whole number")
        return int(text)
    return coerce


def seconds(name: str):
    def coerce(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--{name}: {text!r} is not a number of seconds") from None
        if not value > 0:
            raise ValueError(f"--{name}: must be more than 0")
        return value
    return coerce


def host_port(name: str):
    def coerce(text: str) -> tuple[str, int]:
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"--{name}: {text!r} is not host:port")
        return host, int(port)
    return coerce


def refuse(error: MemmqError, prefix: str = "") -> usage.UsageError:
    return usage.UsageError(f"{prefix}{error}")


class Group:
    """
    One mode's options: their flags and parameters (as L{usage.Options}
    takes them), the C{opt_} methods that belong to it, the title C{--help}
    shows them under (README.rst and the man page list them under the same
    title), and the check of the parsed values.
    """

    def __init__(self, title: str, flags=(), parameters=(), methods=(), check: Callable | None = None,
                 note: str = "") -> None:
        self.title = title
        self.note = note
        self.flags = list(flags)
        self.parameters = list(parameters)
        self.methods = list(methods)
        self.check = check

    def names(self) -> list[str]:
        return [entry[0] for entry in self.flags + self.parameters] + self.methods
