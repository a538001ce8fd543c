"""
The twistd plugin: C{twistd memmq [options]}.
"""

from twisted.application.service import ServiceMaker

memmq = ServiceMaker(
    "memmq",
    "memmq.tap",
    "An in-memory publish/subscribe message broker (HTTP/WebSocket, TLS).",
    "memmq",
)
