"""
The WebSocket half of the HTTP front-end: autobahn protocols for C{/sub}
(each message out as one binary frame) and C{/pub} (each message in is
published).

Each protocol holds only its own connection's state: it registers with the
broker in C{onOpen} and leaves in C{onClose}, which runs as soon as the
connection is lost, so a subscriber that disconnects is unsubscribed at once.
"""

from __future__ import annotations

from collections.abc import Callable

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from memmq.broker import Message
from memmq.errors import BackplaneUnavailable, MemmqError, PersistError
from memmq.hops import HOPS_HEADER, check_hops
from memmq.interfaces import IBroker, IReplaySource
from memmq.internals.autobahn_private import (
    LenientKeyHandshake,
    fail_connection,
    send_close_frame,
    taken_over,
    unmasked_binary_frame,
)
from memmq.logs import RateLimited
from memmq.persist.replay import Replay, replay_subject
from memmq.server.access import EXPIRED_CLOSE_CODE, Access
from memmq.server.combine import CombinedSubscriber, Combiner
from memmq.server.connections import Connections
from memmq.server.credentials import select_subprotocol
from memmq.server.http_channel import GuardedChannel
from memmq.server.limits import MAX_FRAGMENTS, Guard, OutputStall, default_guard
from memmq.server.query import (
    NO_REPLAY,
    Subject,
    since_from_query,
    subject_from_query,
    subscribe_subject,
    topic_from_query,
)

__all__ = [
    "GOING_AWAY", "INTERNAL_ERROR", "TRY_AGAIN_LATER", "PublisherProtocol", "ServerConnection",
    "SubscriberProtocol", "TakeOverResource", "UpgradeResource",
    "WebSocketFactory", "binary_frame", "binary_message", "close_reason",
]

_log = Logger()

GOING_AWAY = 1001
INTERNAL_ERROR = 1011
# The server cannot take messages for a while (the other processes of the
# server cannot be reached): reconnect later.
TRY_AGAIN_LATER = 1013


def close_reason(reason: str) -> bytes:
    """
    C{reason} as a close frame carries it: at most 123 bytes of UTF-8,
    not cut inside a character.
    """
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")


def binary_frame(payload: bytes) -> bytes:
    """
    The complete unmasked binary WebSocket frame carrying C{payload};
    valid because permessage-deflate is never negotiated here.
    """
    return unmasked_binary_frame(payload)


def binary_message(message: Message) -> bytes:
    """
    The binary frame carrying C{message}'s payload: how a C{/sub}
    WebSocket frames a message, once per message (L{Message.framed}), for
    every subscriber to write as it is (L{CombinedSubscriber}).
    """
    return unmasked_binary_frame(message.payload)


class ServerConnection(LenientKeyHandshake, WebSocketServerProtocol):
    """
    A server-side WebSocket of memmq's (C{/pub}, C{/sub} and memmq.v1):
    a lenient key check (L{LenientKeyHandshake}) and what the front-end's
    stop asks of each open connection.
    """

    def close_going_away(self) -> None:
        """
        Start the closing handshake with 1001 (going away): the server stops.
        """
        if self.state == self.STATE_OPEN:
            # sendClose() keeps 1001 for autobahn's own use (see
            # memmq.internals.autobahn_private).
            send_close_frame(self, GOING_AWAY, b"server shutting down")
        elif self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


class _ServerProtocol(ServerConnection):
    """
    What both per-topic WebSocket protocols share: the topic from the
    query, the broker from the factory, and a place in the factory's set
    of open connections.
    """

    topic: str | None = None
    hops = 0
    # Who the client is (access control, checked by the resource before the
    # handshake), and the call that closes the connection when its JWT expires.
    identity = None
    _expiry = None
    _fragments = 0

    def onConnect(self, request):
        try:
            self._read_subject(request.params)
            self.hops = check_hops(request.headers.get(HOPS_HEADER.lower()))
        except MemmqError as e:
            raise ConnectionDeny(400, str(e)) from None
        return select_subprotocol(request.protocols)

    def _read_subject(self, params) -> None:
        self.topic = topic_from_query(params)

    def onOpen(self) -> None:
        self.factory.connections.add(self)
        self._expiry = self.factory.access.at_expiry(self.identity, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        if self.state == self.STATE_OPEN:
            self.sendClose(EXPIRED_CLOSE_CODE, "token expired: reconnect with a new one")

    def onClose(self, wasClean, code, reason) -> None:
        self.factory.connections.discard(self)
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def onMessageBegin(self, isBinary) -> None:
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length) -> None:
        super().onMessageFrameBegin(length)
        self._fragments += 1
        if self._fragments > MAX_FRAGMENTS and not self.failedByMe:
            self.factory.guard.count("fragments")
            fail_connection(self, 1009, f"message in more than {MAX_FRAGMENTS} frames")



@implementer(IPushProducer)
class SubscriberProtocol(CombinedSubscriber, _ServerProtocol):
    """
    C{/sub} over WebSocket: every message published to the topic from now on,
    one binary frame each, in publish order; with C{?since=N}, the
    persisted messages stamped after N first (L{Replay}).

    It is the push producer of its own connection: when the connection's
    buffer fills, the broker is told to hold (and, past the limits, drop)
    this subscriber's messages, and to resume when the buffer drains.

    Its writes are combined, and it follows its topic's log
    (L{CombinedSubscriber}).
    """

    framing = staticmethod(binary_message)
    since: int | None = None
    group: str | None = None
    subject: Subject | None = None
    _replay: Replay | None = None
    _stall: OutputStall | None = None

    @property
    def combiner(self) -> Combiner:
        return self.factory.combiner

    def _read_subject(self, params) -> None:
        self.subject, self.group = subject_from_query(params)
        self.topic = getattr(self.subject, "text", self.subject)

    def onConnect(self, request):
        subprotocol = super().onConnect(request)
        try:
            self.since = since_from_query(request.params)
        except MemmqError as e:
            raise ConnectionDeny(400, str(e)) from None
        if self.since is not None and self.factory.replay is None:
            raise ConnectionDeny(400, NO_REPLAY)
        return subprotocol

    def onOpen(self) -> None:
        super().onOpen()
        # Under WebSocketResource the HTTP channel is still registered as
        # the transport's producer; take its place.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        self._stall = OutputStall(self.factory.guard, self.transport)
        self.subscription = subscribe_subject(self.factory.broker, self.subject, self, self.group)
        if self.since is not None:
            self._replay = replay_subject(
                self.factory.replay, self.subject, self.since, self.subscription, self._send_now, self._fail
            )

    def _send_now(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.transport.write(binary_frame(payload))

    def _fail(self, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            send_close_frame(self, INTERNAL_ERROR, close_reason(reason))

    def write_combined(self, data: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.transport.write(data)

    def onMessage(self, payload, isBinary) -> None:
        # A subscriber has nothing to say; pings are answered by autobahn.
        pass

    def pauseProducing(self) -> None:
        # A subscriber's output is full: read nothing more from it (its
        # pings would queue pongs), and close it if it stays stuck.
        if self.transport is not None:
            self.transport.pauseProducing()
        if self._stall is not None:
            self._stall.paused()
        if self._replay is not None and self._replay.pause():
            return
        if self.subscription is not None:
            self.subscription.pause()

    def resumeProducing(self) -> None:
        if self._stall is not None:
            self._stall.resumed()
        if self.transport is not None:
            self.transport.resumeProducing()
        if self._replay is not None and self._replay.resume():
            return
        if self.subscription is not None:
            self.subscription.resume()

    def stopProducing(self) -> None:
        # The connection is going; onClose unsubscribes.
        pass

    def close_going_away(self) -> None:
        self.flush_now()
        super().close_going_away()

    def onClose(self, wasClean, code, reason) -> None:
        super().onClose(wasClean, code, reason)
        self.forget_frames()
        if self._stall is not None:
            self._stall.cancel()
        if self._replay is not None:
            self._replay.cancel()
        if self.subscription is not None:
            self.factory.broker.unsubscribe(self.subscription)
            self.subscription = None


class PublisherProtocol(_ServerProtocol):
    """
    C{/pub} over WebSocket: every message received, text or binary, is
    published to the topic, in the order received.  A message over the
    size limit closes the connection with 1009 (autobahn enforces it).

    There is no reply per message.  In durable mode (C{--persist_sync}) a
    message that could not be persisted closes the connection with 1011
    and the reason: a publisher that sees its connection close cleanly
    (1000) after its last message knows every message before it was
    received, though not that the last ones are on disk yet.
    """

    # Publishes not yet answered (a proxy's upstreams, a durable write)
    # from one connection: past this many, it is not read until half of
    # them have been, so a fast publisher cannot fill the server's memory
    # with a backlog (the in-memory broker answers at once: no effect).
    max_pending = 1000
    _pending = 0
    _reading_paused = False

    def onMessage(self, payload, isBinary) -> None:
        self._pending += 1
        self.factory.broker.publish(self.topic, payload, self.hops).addBoth(self._published)
        if self._pending > self.max_pending and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _published(self, result) -> None:
        self._pending -= 1
        if self._reading_paused and self._pending <= self.max_pending // 2:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resumeProducing()
        if isinstance(result, Failure):
            self._publish_failed(result)

    # A publish failure said to the publisher, once, by closing (it knows
    # the messages it sent from then on were not taken): one that could not
    # be persisted is final; one the server could not hand to its other
    # processes (a worker or the backplane is away) is worth sending again
    # on a new connection a little later.
    _CLOSE_CODES = ((PersistError, INTERNAL_ERROR), (BackplaneUnavailable, TRY_AGAIN_LATER))

    def _publish_failed(self, failure) -> None:
        for error, code in self._CLOSE_CODES:
            if failure.check(error):
                if self.state == self.STATE_OPEN:
                    send_close_frame(self, code, close_reason(failure.getErrorMessage()))
                return
        self.factory.failures.warn(
            "publish to {topic!r} from WebSocket {peer} failed: {reason}",
            topic=self.topic, peer=self.peer, reason=failure.getErrorMessage(),
        )


class WebSocketFactory(WebSocketServerFactory):
    """
    A factory of one of the protocols above, bound to a broker and to the
    set of open connections the front-end closes at shutdown.
    """

    def __init__(
        self,
        protocol: Callable[[], _ServerProtocol],
        broker: IBroker,
        connections: Connections,
        max_message_size: int,
        combiner: Combiner | None = None,
        replay: IReplaySource | None = None,
        access: Access | None = None,
        guard: Guard | None = None,
    ) -> None:
        # No URL: one with port 0 is refused, and the Site serves the path.
        super().__init__()
        self.access = access or Access()
        self.handing = None
        self.protocol = protocol
        self.broker = broker
        self.connections = connections
        self.combiner = combiner
        self.replay = replay
        self.guard = guard or default_guard()
        #: publishes that failed for another reason (a proxy's upstreams):
        #: logged, never one line per message
        self.failures = RateLimited(_log, self.guard.clock)
        self.setProtocolOptions(
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            openHandshakeTimeout=10,
            # Say why (1009 for an oversized message) before hanging up.
            failByDrop=False,
            closeHandshakeTimeout=1,
            autoPingInterval=30,
            autoPingTimeout=30,
        )

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        protocol.identity = self.handing
        return protocol


class TakeOverResource(WebSocketResource):
    """
    autobahn's upgrade of an HTTP request to a WebSocket, which also tells
    the HTTP channel it has handed its connection over (its timers stop).
    """

    def render(self, request):
        channel = request.channel
        answer = super().render(request)
        if taken_over(channel) and isinstance(channel, GuardedChannel):
            channel.handed_over()
        return answer


class UpgradeResource(TakeOverResource):
    """
    The WebSocket side of C{/pub} or C{/sub}: takes over a request the
    resource has checked, its protocol made knowing who the client is.
    """

    def __init__(self, factory: WebSocketFactory) -> None:
        super().__init__(factory)
        self.factory = factory

    def upgrade(self, request, identity):
        """
        Hand C{request} over; the protocol, built within this call, takes
        C{identity}.
        """
        self.factory.handing = identity
        try:
            return self.render(request)
        finally:
            self.factory.handing = None
