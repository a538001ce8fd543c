"""
One line saying why a network operation failed, for error messages that
name each failing server ("connection refused", "TLS error: ...").
"""

from __future__ import annotations

from collections.abc import Sequence

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from memmq.errors import MemmqError

__all__ = ["reason_of"]

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
