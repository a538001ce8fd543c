# -*- test-case-name: tests.test_limits -*-
"""
Plain HTTP on the TLS port (README: Limits): a connection whose first byte
is not a TLS handshake is answered a plain-text 400 saying the server
speaks TLS, and closed, as Go's server answers it; and the TLS protocols
and endpoint that do so.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from memmq.server.limits import default_guard, plain_text

__all__ = [
    "PLAIN_HTTP_REASON", "GuardedBufferingTLSProtocol", "GuardedTLSProtocol", "GuardedTLSServerEndpoint",
    "PlainHTTPAnswer",
]

PLAIN_HTTP_REASON = "Client sent an HTTP request to an HTTPS server."


class PlainHTTPAnswer:
    """
    A mixin for a server-side TLS protocol: a connection whose first byte
    is not a TLS handshake record (0x16) is answered a plain-text 400
    saying the server speaks TLS, and closed.
    """

    _first = True
    _plain = False

    def dataReceived(self, data: bytes) -> None:
        if self._plain:
            return
        if self._first and data:
            self._first = False
            if data[0] != 0x16:
                self._plain = True
                guard = getattr(self.factory.wrappedFactory, "guard", None) or default_guard()
                guard.count("plain_http")
                self.transport.write(plain_text(400, PLAIN_HTTP_REASON))
                self.transport.loseConnection()
                return
        super().dataReceived(data)


class GuardedTLSProtocol(PlainHTTPAnswer, TLSMemoryBIOProtocol):
    """
    TLS written as the application writes, with L{PlainHTTPAnswer}.
    """


class GuardedBufferingTLSProtocol(PlainHTTPAnswer, BufferingTLSTransport):
    """
    Twisted's default server TLS, with L{PlainHTTPAnswer}.
    """


class _GuardedTLSFactory(TLSMemoryBIOFactory):
    protocol = GuardedBufferingTLSProtocol


@implementer(IStreamServerEndpoint)
class GuardedTLSServerEndpoint:
    """
    TLS over any server endpoint (a C{--listen}), with L{PlainHTTPAnswer}:
    what C{wrapServerTLS} does, with this module's TLS protocol.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, options, clock: IReactorTime | None = None) -> None:
        self._endpoint = endpoint
        self._options = options
        self._clock = clock

    def listen(self, protocolFactory):
        return self._endpoint.listen(_GuardedTLSFactory(self._options, False, protocolFactory, self._clock))
