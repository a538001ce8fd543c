# -*- test-case-name: tests.test_browser_http -*-
"""
Cross-origin requests from browsers (CORS): which page origins may publish
with C{fetch()} and read C{/sub} event streams and the figures (README,
"In a browser").

The origins allowed are the site's C{allowed_origins}: L{None} (the
default) allows any origin, as memmq takes any request without one; a
list allows those alone.  A request from another origin is still served
(CORS only tells the browser whether the page may read the answer), but
its preflight is refused, so a browser sends no cross-origin publish.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Origins", "ANY_ORIGIN"]

_METHODS = b"GET, POST, PUT, OPTIONS"
_HEADERS = b"Authorization, Content-Type, Last-Event-ID, X-Memmq-Hops"
# How long a browser may keep a preflight's answer.
_MAX_AGE = b"600"


class Origins:
    """
    The origins allowed to make cross-origin requests.

    @param allowed: the origins (C{https://app.example.com}; a list, or
        one comma-separated string), or L{None} (or C{"*"} among them) for
        any.
    """

    def __init__(self, allowed: Iterable[str] | str | None = None) -> None:
        if isinstance(allowed, str):
            allowed = allowed.split(",")
        origins = None if allowed is None else [o.strip().rstrip("/").lower() for o in allowed if o.strip()]
        self.any = origins is None or "*" in origins
        self._allowed = frozenset(o.encode("ascii", "replace") for o in origins or ())

    def allows(self, origin: bytes) -> bool:
        return self.any or origin.lower().rstrip(b"/") in self._allowed

    def answer(self, request) -> bool:
        """
        Add the CORS response headers to C{request} when it carries an
        allowed C{Origin}.  L{False} if it carries one that is not allowed.
        """
        origin = request.getHeader(b"origin")
        if origin is None:
            return True
        if not self.allows(origin):
            return False
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"vary", b"Origin")
        return True

    def preflight(self, request) -> bytes:
        """
        Answer an C{OPTIONS} preflight: 204 with what may be sent, or 403
        for an origin not allowed.
        """
        if not self.answer(request):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"origin not allowed\n"
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", _METHODS)
        asked = request.getHeader(b"access-control-request-headers")
        request.setHeader(b"access-control-allow-headers", asked if asked else _HEADERS)
        request.setHeader(b"access-control-max-age", _MAX_AGE)
        return b""


ANY_ORIGIN = Origins()
