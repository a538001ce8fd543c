# -*- test-case-name: tests.test_mux_client -*-
"""
The client's default transport: every subscription to one server over one
WebSocket speaking C{memmq.v1} (README, "One connection, many
subscriptions"), and one more per queue group; against a server that does
not speak it, one WebSocket per subscription, as before
(L{WebSocketTransport}).  Publishing is L{WebSocketTransport}'s: pipelined
HTTP, answered per message.

A connection hands each message to the client's subscriptions whose topic
or pattern matches it: a L{Sublist} of the connection's streams, with the
same L{Message} for all of them.  The server sends a message once per
connection, so a queue group's messages cannot share a connection with
others' (they could not be told apart): each group has a connection of its
own, whose messages go to one of the group's subscriptions on it, in
turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from memmq.broker import Message
from memmq.client.reasons import reason_of, refusal_of_handshake
from memmq.client.servers import base_url, endpoint_of
from memmq.client.subscriptions import Link
from memmq.client.transport import CONNECT_TIMEOUT, IStream, ITransport
from memmq.client.websocket import WebSocketTransport
from memmq.errors import MemmqError
from memmq.mux_protocol import SUBPROTOCOL, ProtocolError, decode_control, decode_message, encode_control
from memmq.sublist import Sublist

if TYPE_CHECKING:
    from memmq.client.core import Client

__all__ = ["MuxTransport"]

_log = Logger()


class _Legacy(MemmqError):
    """
    The server does not speak C{memmq.v1}.
    """


@implementer(ITransport)
class MuxTransport:
    """
    The L{ITransport} over C{memmq.v1}, made for one L{Client}, falling back
    to L{WebSocketTransport} per server.

    @ivar connections: the open or opening connections, by (server, group).
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._plain = WebSocketTransport(client)
        self._legacy: set[str] = set()
        self.connections: dict[tuple[str, str | None], _Connection] = {}

    def publish(self, server: str, topic: str, payload: bytes, hops: int) -> Deferred[None]:
        return self._plain.publish(server, topic, payload, hops)

    def subscribe(self, link: Link) -> Deferred[IStream]:
        if link.server in self._legacy:
            return self._fall_back(link)
        key = (link.server, link.group)
        connection = self.connections.get(key)
        if connection is None:
            connection = self.connections[key] = _Connection(self, link.server, link.group)
        return connection.subscribe(link).addErrback(self._refused, link)

    def _refused(self, failure, link: Link):
        if failure.check(_Legacy):
            self._legacy.add(link.server)
            return self._fall_back(link)
        return failure

    def _fall_back(self, link: Link) -> Deferred[IStream]:
        if link.pattern is not None or link.group is not None:
            return fail(MemmqError(
                f"{link.server} does not speak {SUBPROTOCOL}: patterns and queue groups need a newer memmq"
            ))
        return self._plain.subscribe(link)

    def _gone(self, connection: _Connection) -> None:
        if self.connections.get(connection.key) is connection:
            del self.connections[connection.key]

    def close(self) -> Deferred[None]:
        for connection in list(self.connections.values()):
            connection.close()
        return self._plain.close()


@implementer(IStream)
class _Stream:
    """
    One link's subscription on a shared connection.
    """

    def __init__(self, connection: _Connection, link: Link, key: tuple) -> None:
        self.connection = connection
        self.link = link
        self.key = key
        self.paused = False
        self.closed = False

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.connection.pause()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.connection.resume()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.resume()
            self.connection.release(self)
            self.link.lost(self, "closed")


class _Connection:
    """
    One C{memmq.v1} WebSocket to one server (for one queue group, or for
    everything outside groups), shared by every link subscribed over it.
    """

    def __init__(self, transport: MuxTransport, server: str, group: str | None) -> None:
        self.transport = transport
        self.server = server
        self.group = group
        self.key = (server, group)
        self.protocol: _MuxClient | None = None
        self.routes: Sublist[_Stream] = Sublist()
        # Server-side subscriptions by what names them, and the streams on each.
        self.subjects: dict[tuple, list[_Stream]] = {}
        self._waiting_open: list[Deferred] = []
        self._replies: dict[int, Deferred] = {}
        self._next_id = 1
        self._paused = 0
        self._turn = 0
        self.lost = False
        self._connect()

    # -- connecting --------------------------------------------------------

    def _connect(self) -> None:
        client = self.transport._client
        tls, host, port = endpoint_of(self.server)
        url = base_url(self.server)
        url = ("wss" if url.startswith("https:") else "ws") + url[url.index(":"):] + "/sub"
        token = getattr(client, "token", None)
        factory = WebSocketClientFactory(
            url, protocols=[SUBPROTOCOL], headers={"Authorization": f"Bearer {token}"} if token else None
        )
        factory.protocol = _MuxClient
        factory.noisy = False
        factory.connection = self
        factory.setProtocolOptions(openHandshakeTimeout=CONNECT_TIMEOUT, autoPingInterval=30, autoPingTimeout=30)
        endpoint = endpoints.HostnameEndpoint(client.reactor, host, port, timeout=CONNECT_TIMEOUT)
        creator = client.tls.creator(host) if tls else None
        if creator is not None:
            endpoint = endpoints.wrapClientTLS(creator, endpoint)
        self._connecting = endpoint.connect(factory)
        self._connecting.addErrback(lambda f: self._ended(MemmqError(reason_of(f))))

    def opened(self, protocol: _MuxClient) -> None:
        self.protocol = protocol
        if self._paused:
            protocol.transport.pauseProducing()
        waiting, self._waiting_open = self._waiting_open, []
        for d in waiting:
            d.callback(protocol)

    def _ended(self, reason: Exception) -> None:
        """
        The connection could not be made, or is gone: every stream on it
        is lost, every request waiting fails.
        """
        if self.lost:
            return
        self.lost = True
        self.transport._gone(self)
        self.protocol = None
        waiting, self._waiting_open = self._waiting_open, []
        replies, self._replies = self._replies, {}
        for d in waiting + list(replies.values()):
            d.errback(reason)
        subjects, self.subjects = self.subjects, {}
        for streams in subjects.values():
            for stream in streams:
                if not stream.closed:
                    stream.closed = True
                    stream.link.lost(stream, str(reason))

    # -- subscribing -------------------------------------------------------

    def subscribe(self, link: Link) -> Deferred[IStream]:
        if self.lost:
            return fail(MemmqError("connection lost"))
        pattern = link.pattern
        subject = pattern if pattern is not None else link.topic
        key = ("p" if pattern is not None else "t", link.topic)
        stream = _Stream(self, link, key)
        since = link.since
        streams = self.subjects.get(key)
        if streams is not None and since is None:
            # Already subscribed on the server: one more reader of it.
            streams.append(stream)
            self.routes.insert(subject, stream)
            return succeed(stream)
        if streams is not None:
            return fail(MemmqError("already subscribed to that on this connection: cannot replay it again"))
        self.subjects[key] = [stream]
        self.routes.insert(subject, stream)
        request: dict[str, Any] = {("pattern" if pattern is not None else "topic"): link.topic}
        if self.group is not None:
            request["group"] = self.group
        if since is not None:
            request["since"] = since

        def answered(_):
            return stream

        def refused(failure):
            self._forget(stream)
            return failure

        return self._request("sub", request).addCallbacks(answered, refused)

    def release(self, stream: _Stream) -> None:
        """
        C{stream} is closed: unsubscribe on the server when it was the last
        reader of its subject.
        """
        if self._forget(stream) and not self.lost:
            kind, name = stream.key
            request = {("pattern" if kind == "p" else "topic"): name}
            if self.group is not None:
                request["group"] = self.group
            self._request("unsub", request).addErrback(lambda f: None)
        if not self.subjects and not self.lost:
            self.close()

    def _forget(self, stream: _Stream) -> bool:
        """
        Take C{stream} off the routes; L{True} if its subject has no reader
        left.
        """
        pattern = stream.link.pattern
        self.routes.remove(pattern if pattern is not None else stream.link.topic, stream)
        streams = self.subjects.get(stream.key)
        if streams is None or stream not in streams:
            return False
        streams.remove(stream)
        if streams:
            return False
        del self.subjects[stream.key]
        return True

    def _request(self, op: str, fields: dict[str, Any]) -> Deferred[None]:
        request_id = self._next_id
        self._next_id += 1
        d: Deferred[None] = Deferred()
        self._replies[request_id] = d
        frame = encode_control(op=op, id=request_id, **fields)

        def send(protocol: _MuxClient) -> None:
            protocol.sendMessage(frame, isBinary=False)

        if self.protocol is not None:
            send(self.protocol)
        else:
            opening: Deferred = Deferred()
            opening.addCallback(send).addErrback(lambda f: None)
            self._waiting_open.append(opening)
        return d

    # -- what the server sends ---------------------------------------------

    def message(self, data: bytes) -> None:
        try:
            topic, payload = decode_message(data)
        except ProtocolError as e:
            _log.warn("{server}: {reason}", server=self.server, reason=str(e))
            return
        streams = self.routes.match(topic).plain
        if not streams:
            return
        message = Message(topic, payload)
        if self.group is None:
            for stream in streams:
                stream.link.received(stream, payload, message)
        else:
            # A group's message is for one of its subscriptions.
            self._turn += 1
            stream = streams[self._turn % len(streams)]
            stream.link.received(stream, payload, message)

    def reply(self, data: bytes) -> None:
        try:
            reply = decode_control(data)
        except ProtocolError as e:
            _log.warn("{server}: {reason}", server=self.server, reason=str(e))
            return
        d = self._replies.pop(reply.get("id"), None) if isinstance(reply.get("id"), int) else None
        if d is None:
            if reply.get("op") == "error":
                _log.warn("{server}: {reason}", server=self.server, reason=reply.get("error"))
            return
        if reply["op"] == "ok":
            d.callback(None)
        else:
            d.errback(MemmqError(f"HTTP {reply.get('code')}: {reply.get('error')}"))

    # -- flow and closing ----------------------------------------------------

    def pause(self) -> None:
        self._paused += 1
        if self._paused == 1 and self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.pauseProducing()

    def resume(self) -> None:
        self._paused -= 1
        if not self._paused and self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.resumeProducing()

    def close(self) -> None:
        self.transport._gone(self)
        if self.protocol is not None:
            self.protocol.sendClose(1000)
        elif not self.lost:
            self._connecting.cancel()


class _MuxClient(WebSocketClientProtocol):
    """
    The WebSocket of one L{_Connection}.
    """

    # As for the per-topic transport's WebSockets: what fails is reported by
    # the client, so autobahn's own warnings would say it twice.
    log = txaio.make_logger(level="error")

    def onConnect(self, response) -> None:
        if response.protocol != SUBPROTOCOL:
            self.factory.connection._ended(_Legacy("the server does not speak " + SUBPROTOCOL))
            self.sendClose(1000)

    def onOpen(self) -> None:
        connection = self.factory.connection
        if connection.lost:
            self.sendClose(1000)
        else:
            connection.opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.factory.connection.message(payload)
        else:
            self.factory.connection.reply(payload)

    def onClose(self, wasClean: bool, code, reason) -> None:
        connection = self.factory.connection
        if (
            not connection.lost and connection.protocol is None and reason and "upgrade failed" in reason
            and "[401]" not in reason
        ):
            # Refused: no memmq.v1 there (400), or not for this client's
            # rights (403, allowed per topic only): one connection per topic.
            # No credentials (401) would be refused per topic too.
            connection._ended(_Legacy(reason))
            return
        if connection.protocol is None:
            refused = refusal_of_handshake(reason or "")
            if refused is not None:
                # Access control said why: final, as on a /sub connection.
                connection._ended(refused)
                return
        why = f"closed with {code}" + (f": {reason}" if reason else "") if code else (reason or "connection lost")
        connection._ended(MemmqError(why))
