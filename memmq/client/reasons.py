"""
One line saying why a network operation failed, for error messages that
name each failing server ("connection refused", "TLS error: ...").
"""

from __future__ import annotations

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


def reason_of(failure: Failure) -> str:
    """
    One line saying why, from a failure a network operation can have.
    """
    value = failure.value
    if isinstance(value, MemmqError):
        return str(value)
    for kind, words in _REASONS:
        if isinstance(value, kind):
            return words
    if isinstance(value, SSL.Error):
        return f"TLS error: {value}"
    text = failure.getErrorMessage().strip()
    return text.splitlines()[0] if text else type(value).__name__
