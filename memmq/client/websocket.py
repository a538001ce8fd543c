"""
The client's HTTP transport (the default): publish with POST /pub over
pipelined persistent connections (L{memmq.client.publisher}), subscribe
with one WebSocket per subscription and server (autobahn), the old form of
C{/sub} that asim/mq speaks (with C{pattern=} and C{group=} when asked
for; messages then carry no topic of their own).

A refused handshake fails with the server's own reason (the body of its
answer, asked for again as a plain request: autobahn reads only the status
line), and autobahn's warnings about the connections it drops stay out of
the log: the client says what failed, once.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from zope.interface import implementer

from memmq.client.core import CONNECT_TIMEOUT, Client, IStream, ITransport, Link
from memmq.client.probe import refusal_reason
from memmq.client.publisher import Publisher
from memmq.client.reasons import refusal_of_handshake
from memmq.client.servers import endpoint_of, websocket_url
from memmq.errors import MemmqError

__all__ = ["WebSocketTransport"]


@implementer(ITransport)
class WebSocketTransport:
    """
    The L{ITransport} over HTTP and WebSocket, made for one L{Client}.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._publisher = Publisher(
            client.reactor, client.tls, attempts=1 + client.retries, reconnected=client.server_reachable,
            token=client.token,
        )

    def publish(self, server: str, topic: str, payload: bytes, hops: int) -> Deferred[None]:
        return self._publisher.publish(server, topic, payload, hops)

    def subscribe(self, link: Link) -> Deferred[IStream]:
        tls, host, port = endpoint_of(link.server)
        if link.pattern is not None:
            url = websocket_url(link.server, "/sub", "").replace("?topic=", "?pattern=" + quote(link.topic, safe=""))
        else:
            url = websocket_url(link.server, "/sub", link.topic)
        if link.group is not None:
            url += "&group=" + quote(link.group, safe="")
        if link.since is not None:
            url += f"&since={link.since:d}"
        token = self._client.token
        factory = WebSocketClientFactory(url, headers={"Authorization": f"Bearer {token}"} if token else None)
        factory.protocol = _SubscriberClient
        factory.noisy = False
        factory.setProtocolOptions(openHandshakeTimeout=CONNECT_TIMEOUT, autoPingInterval=30, autoPingTimeout=30)
        endpoint = endpoints.HostnameEndpoint(self._client.reactor, host, port, timeout=CONNECT_TIMEOUT)
        creator = self._client.tls.creator(host) if tls else None
        if creator is not None:
            endpoint = endpoints.wrapClientTLS(creator, endpoint)
        parts = urlsplit(url)
        factory.ask_why = lambda: refusal_reason(
            self._client.reactor, creator, host, port, f"{parts.path}?{parts.query}"
        )
        connected: list[_SubscriberClient] = []

        def cancel(_: Deferred) -> None:
            connecting.cancel()
            for protocol in connected:
                if protocol.transport is not None:
                    protocol.transport.abortConnection()

        factory.link = link
        factory.opened = opened = Deferred(cancel)
        connecting = endpoint.connect(factory)
        connecting.addCallbacks(connected.append, lambda f: opened.called or opened.errback(f))
        return opened

    def close(self) -> Deferred[None]:
        return self._publisher.close()


@implementer(IStream)
class _SubscriberClient(WebSocketClientProtocol):
    """
    The WebSocket of one L{Link}: its L{IStream} once open.
    """

    # What fails is reported by the client (a failed subscribe, a lost
    # connection and its reconnection), so autobahn's own warnings about
    # the same connection would say it twice, in its words.
    log = txaio.make_logger(level="error")

    def onOpen(self) -> None:
        opened = self.factory.opened
        if opened.called:
            self.sendClose(1000)
        else:
            opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.link.received(self, payload)

    def onClose(self, wasClean: bool, code, reason) -> None:
        why = f"closed with {code}" + (f": {reason}" if reason else "") if code else (reason or "connection lost")
        opened = self.factory.opened
        if not opened.called:
            refused = refusal_of_handshake(reason or "")
            if refused is not None:
                # Access control said why in the status line: final.
                opened.errback(refused)
            elif _refused(self):
                said = self.factory.ask_why()
                said.addCallback(lambda told: opened.called or opened.errback(MemmqError(told or why)))
            else:
                opened.errback(MemmqError(why))
        else:
            self.factory.link.lost(self, why)

    # -- IStream -------------------------------------------------------------

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()

    def close(self) -> None:
        self.sendClose(1000)


def _refused(protocol: WebSocketClientProtocol) -> bool:
    """
    Whether the server answered the handshake with an HTTP status other
    than 101 (autobahn keeps the status line it read).
    """
    status = (getattr(protocol, "http_status_line", None) or "").split()
    return len(status) >= 2 and status[1].isdigit() and status[1] != "101"
