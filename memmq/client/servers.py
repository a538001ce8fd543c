"""
How a server is named: C{host:port} means C{https://host:port} (TLS is on
by default, as on the server); C{http://} and C{https://} URLs are kept.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from memmq.defaults import PORT
from memmq.errors import MemmqError

__all__ = ["BadServer", "base_url", "endpoint_of", "publish_url", "websocket_url"]


class BadServer(MemmqError, ValueError):
    """
    A server that is neither C{host:port} nor an http(s) URL.
    """


def base_url(server: str) -> str:
    """
    The base URL of C{server}, without a trailing slash.
    """
    server = server.strip()
    if "://" not in server:
        server = "https://" + server
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadServer(f"server {server!r} is not host:port or an http(s) URL")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise BadServer(f"server {server!r} has a bad port") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def endpoint_of(server: str) -> tuple[bool, str, int]:
    """
    (whether TLS is used, host, port) of C{server}; the port defaults to 8081.
    """
    parts = urlsplit(base_url(server))
    return parts.scheme == "https", parts.hostname or "", parts.port or PORT


def _query(topic: str) -> str:
    return "?topic=" + quote(topic, safe="")


def publish_url(server: str, topic: str) -> str:
    return base_url(server) + "/pub" + _query(topic)


def websocket_url(server: str, path: str, topic: str) -> str:
    url = base_url(server)
    return ("wss" if url.startswith("https:") else "ws") + url[url.index(":"):] + path + _query(topic)
