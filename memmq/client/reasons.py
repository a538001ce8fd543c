"""
One line saying why a network operation failed, for error messages that
name each failing server ("connection refused", "TLS error: ...").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from memmq.errors import MemmqError

__all__ = ["reason_of", "refusal", "refusal_of_handshake"]

# How autobahn's client says that a WebSocket handshake was answered with
# another status: "WebSocket connection upgrade failed [401]: <reason>".
_HANDSHAKE_STATUS = re.compile(r"upgrade failed \[(40[13])\]:?\s*(.*)")


def refusal(code: int, reason: str):
    """
    The error of access control's refusal C{code} (401 or 403) with the
    server's one-line C{reason}; L{None} for another code.
    """
    from memmq.auth.errors import Forbidden, Unauthenticated

    if code == 401:
        return Unauthenticated(reason)
    if code == 403:
        return Forbidden(reason)
    return None


def refusal_of_handshake(reason: str):
    """
    The access-control refusal a failed WebSocket handshake's C{reason}
    says (the server puts its reason in the status line), or L{None}.
    """
    found = _HANDSHAKE_STATUS.search(reason)
    if found is None:
        return None
    return refusal(int(found.group(1)), f"HTTP {found.group(1)}: {found.group(2).strip()}")

_REASONS = [
    (error.ConnectionRefusedError, "connection refused"),
    (error.DNSLookupError, "cannot resolve the host name"),
    (error.TimeoutError, "timed out"),
    (defer.TimeoutError, "timed out"),
    (CancelledError, "timed out"),
    (error.ConnectionLost, "connection lost"),
    (error.ConnectionDone, "connection closed"),
    (error.NoRouteError, "no route to host"),
]


def reason_of(failure: Failure | BaseException, reasons: Sequence[tuple[type[BaseException], str]] = ()) -> str:
    """
    One line saying why, from a failure (or exception) a network operation
    can have: a L{MemmqError}'s message, words for the usual network
    errors, else the first line of the error's message.

    @param reasons: (exception type, words) checked first, for a caller
        that knows its errors better (the DNS resolver).
    """
    if not isinstance(failure, Failure):
        failure = Failure(failure)
    value = failure.value
    for kind, words in reasons:
        if isinstance(value, kind):
            return words
    if isinstance(value, MemmqError):
        text = str(value).strip()
        return text.splitlines()[0] if text else type(value).__name__
    for kind, words in _REASONS:
        if isinstance(value, kind):
            return words
    if isinstance(value, SSL.Error):
        return f"TLS error: {value}"
    text = failure.getErrorMessage().strip()
    return text.splitlines()[0] if text else type(value).__name__
