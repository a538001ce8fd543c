"""
The loop guard for chains of proxies.

A proxy forwards each publish with the C{X-Memmq-Hops} header set to one
more than it received (none means 0).  A front-end refuses a message that
has already passed through L{MAX_HOPS} proxies, so that a cycle of proxies
(A forwards to B, B to A) passes a message around a bounded number of
times instead of forever.  A proxy that lists itself among its own servers
is refused at start; this catches the cycles that cannot be seen there.
"""

from __future__ import annotations

from memmq.errors import MemmqError

__all__ = ["HOPS_HEADER", "MAX_HOPS", "TooManyHops", "BadHops", "check_hops"]

HOPS_HEADER = "X-Memmq-Hops"
MAX_HOPS = 8


class TooManyHops(MemmqError):
    """
    A message that has passed through too many proxies: a loop.
    """


class BadHops(MemmqError, ValueError):
    """
    A hop count that is not a small whole number.
    """


def check_hops(value: bytes | str | None) -> int:
    """
    The hop count in a header value (none: 0), if the message may go on.

    @raise BadHops: not a whole number.
    @raise TooManyHops: C{MAX_HOPS} or more.
    """
    if value is None:
        return 0
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise BadHops(f"{HOPS_HEADER} {text!r} is not a whole number")
    hops = int(text)
    if hops >= MAX_HOPS:
        raise TooManyHops(f"loop detected: the message has passed through {hops} proxies (at most {MAX_HOPS - 1})")
    return hops
