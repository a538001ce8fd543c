# -*- test-case-name: tests.test_browser_http -*-
"""
The dashboard at C{/}: one page, its stylesheet and its script, read once
from the package's data (L{memmq.dashboard}) and served as they are
(README, "Dashboard").  Nothing comes from elsewhere: the page works
offline, and its Content-Security-Policy says so to the browser.
"""

from __future__ import annotations

from importlib import resources

from twisted.web import resource

__all__ = ["DashboardFiles", "FILES"]

# Name -> content type; index.html is the page at "/".
FILES = {
    "index.html": b"text/html; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
}

# The page loads only its own files; it talks to this server alone, over
# HTTP(S) and WebSocket (connect-src 'self' covers ws/wss in current
# browsers; the explicit schemes cover older ones).
_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _read(name: str) -> bytes:
    return resources.files("memmq.dashboard").joinpath(name).read_bytes()


class DashboardFiles(resource.Resource):
    """
    C{/} (the page) and C{/dashboard/NAME} (its files).
    """

    isLeaf = True

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self._files = {n: (_read(n), kind) for n, kind in FILES.items()}
        self._only = name

    def render_GET(self, request):
        name = self._only or (request.postpath[0].decode("ascii", "replace") if len(request.postpath) == 1 else "")
        found = self._files.get(name)
        if found is None or (self._only is None and name == "index.html"):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"unknown path: {request.path.decode('latin-1')}\n".encode()
        body, kind = found
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if name == "index.html":
            request.setHeader(b"content-security-policy", _POLICY)
            request.setHeader(b"referrer-policy", b"no-referrer")
        return body

    render_HEAD = render_GET
