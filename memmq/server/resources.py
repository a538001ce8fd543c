"""
What every resource of the HTTP front-end shares: errors as one line of
plain text with the status that says what is wrong, from the one table
(README: the table under "Errors are one line of plain text"), and the
leaf and branch resources that answer them.
"""

from __future__ import annotations

from twisted.web import resource

from memmq.auth import AuthError
from memmq.errors import BackplaneUnavailable, BadQuery, InvalidTopic, PersistError
from memmq.hops import BadHops, TooManyHops
from memmq.server.access import refusal

__all__ = [
    "Branch", "HTTPError", "LeafResource", "NotFound", "REFUSALS", "STATUSES", "error", "is_websocket_upgrade",
    "status_of",
]


class HTTPError(Exception):
    """
    An answer other than 200, with its one-line reason.
    """

    def __init__(self, code: int, reason: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.headers = headers or {}


class LeafResource(resource.Resource):
    """
    A leaf whose errors are plain one-line text with the right status.
    """

    isLeaf = True

    def render(self, request):
        try:
            if request.postpath:
                raise HTTPError(404, f"unknown path: {request.path.decode('latin-1')}")
            handler = getattr(self, "render_" + request.method.decode("ascii", "replace"), None)
            if handler is None:
                allowed = ", ".join(m.decode() for m in self.allowedMethods)
                raise HTTPError(
                    405, f"method {request.method.decode('latin-1')} not allowed here; use {allowed}",
                    {b"allow": allowed.encode()},
                )
            return handler(request)
        except HTTPError as e:
            return error(request, e.code, e.reason, e.headers)
        except AuthError as e:
            return refusal(request, e)
        except REFUSALS as e:
            return error(request, status_of(e), str(e))


# memmq's errors and the status that says each: the one table.  The first
# four refuse a request before the broker is asked; what else a publish
# fails with (a proxy's upstream did not take it) is a 502.
STATUSES = (
    (InvalidTopic, 400), (BadHops, 400), (BadQuery, 400), (TooManyHops, 508), (PersistError, 507),
    (BackplaneUnavailable, 503),
)
REFUSALS = (InvalidTopic, BadHops, BadQuery, TooManyHops)


def status_of(error: BaseException) -> int:
    for kind, code in STATUSES:
        if isinstance(error, kind):
            return code
    return 502


def error(request, code: int, reason: str, headers: dict[bytes, bytes] | None = None) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return reason.encode("utf-8") + b"\n"


def is_websocket_upgrade(request) -> bool:
    upgrade = request.getHeader(b"upgrade")
    return upgrade is not None and b"websocket" in upgrade.lower()


class Branch(resource.Resource):
    def getChild(self, path, request):
        return NotFound()

    def render(self, request):
        return NotFound().render(request)


class NotFound(LeafResource):
    def render(self, request):
        return error(request, 404, f"unknown path: {request.path.decode('latin-1')}")
