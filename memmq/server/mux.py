# -*- test-case-name: tests.test_mux -*-
"""
C{memmq.v1}: many subscriptions and publishes over one WebSocket (README,
"One connection, many subscriptions"), on C{GET /sub} when the client
offers the subprotocol and names no topic.

The connection is one L{ISubscriber} for all of its subscriptions: the
broker holds one subscription (and its bounded buffer) for each, all
pointing at the connection, so a subscription costs the broker's record
and one entry here.  A message is written once per connection however many
of its subscriptions take it, framed once for every connection
(L{Message.framed}); the connection is the push producer of its socket,
and pauses and resumes all of its subscriptions at once.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from memmq.broker import Message, check_group, check_topic
from memmq.errors import BackplaneUnavailable, BadQuery, InvalidTopic, PersistError, PublishError
from memmq.hops import HOPS_HEADER, BadHops, TooManyHops, check_hops
from memmq.interfaces import IBroker, IReplaySource, ISubscriber
from memmq.internals.autobahn_private import send_close_frame, unmasked_binary_frame
from memmq.mux_protocol import (
    SUBPROTOCOL,
    ProtocolError,
    RequestError,
    decode_control,
    decode_publish,
    encode_message,
    error,
    ok,
)
from memmq.patterns import Pattern, parse_pattern
from memmq.persist.replay import PatternReplay, Replay
from memmq.server.combine import Combiner
from memmq.server.connections import Connections
from memmq.server.query import NO_REPLAY, subscribe_subject
from memmq.server.websocket import INTERNAL_ERROR, ServerConnection, TakeOverResource, close_reason

__all__ = ["MAX_SUBSCRIPTIONS", "MuxProtocol", "mux_frame", "mux_resource", "wants_mux"]

_log = Logger()


#: Subscriptions one connection may hold.
MAX_SUBSCRIPTIONS = 100_000

# The largest header a publish frame has: ack id, topic length, topic.
_HEADER_ROOM = 6 + 4 * 255


def mux_frame(message: Message) -> bytes:
    """
    The complete WebSocket frame carrying C{message} to a C{memmq.v1}
    client: computed once per message, written as it is to every
    connection (permessage-deflate is never negotiated here).
    """
    return unmasked_binary_frame(encode_message(message.topic, message.payload))


def wants_mux(request) -> bool:
    """
    Whether a C{/sub} upgrade request asks for C{memmq.v1}: it offers the
    subprotocol and names no topic or pattern.
    """
    offered = request.getHeader(b"sec-websocket-protocol") or b""
    if SUBPROTOCOL.encode() not in (p.strip() for p in offered.split(b",")):
        return False
    return not (request.args.get(b"topic") or request.args.get(b"pattern"))


# Errors of a request and their codes, as over HTTP (README, the error
# table).
_CODES = ((RequestError, None), (InvalidTopic, 400), (BadQuery, 400), (BadHops, 400), (TooManyHops, 508),
          (PersistError, 507), (PublishError, 502), (BackplaneUnavailable, 503))


def _code_of(error_value: BaseException) -> int:
    for kind, code in _CODES:
        if isinstance(error_value, kind):
            return error_value.code if code is None else code  # type: ignore[attr-defined]
    return 502


def _subject_of(request: dict[str, Any]) -> tuple[str | Pattern, str | None]:
    """
    The subject and group a C{sub} or C{unsub} request names.
    """
    topic, pattern, group = request.get("topic"), request.get("pattern"), request.get("group")
    if (topic is None) == (pattern is None):
        raise RequestError(400, 'give "topic" or "pattern", one of them')
    for name, value in (("topic", topic), ("pattern", pattern), ("group", group)):
        if value is not None and not isinstance(value, str):
            raise RequestError(400, f'"{name}" must be a string')
    if group is not None:
        group = check_group(group)
    if pattern is not None:
        return parse_pattern(pattern), group
    return check_topic(topic), group


@implementer(ISubscriber, IPushProducer)
class MuxProtocol(ServerConnection):
    """
    One C{memmq.v1} connection: its subscriptions, keyed by what names them
    (C{("t" or "p", topic or pattern, group)}), and its publishes.
    """

    hops = 0
    # Publishes not yet answered, as for a /pub WebSocket.
    max_pending = 1000
    _pending = 0
    _reading_paused = False
    _producing = True
    _frames: list[bytes] | None = None
    # The last message written: a message several of the connection's
    # subscriptions take is delivered to it once per subscription, one
    # after the other, and written once.
    _last: Message | None = None
    # While draining the subscriptions' buffers after a pause: the
    # messages written since, so that each is written once.
    _seen: set[Message] | None = None

    def onConnect(self, request):
        if SUBPROTOCOL not in request.protocols:
            raise ConnectionDeny(400, f"offer the {SUBPROTOCOL} subprotocol, or name a topic")
        try:
            self.hops = check_hops(request.headers.get(HOPS_HEADER.lower()))
        except BadHops as e:
            raise ConnectionDeny(400, str(e)) from None
        return SUBPROTOCOL

    def onOpen(self) -> None:
        self.subscriptions: dict[tuple[str, str, str | None], Any] = {}
        self._replays: dict[tuple[str, str, str | None], Replay | PatternReplay] = {}
        self.factory.connections.add(self)
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)

    # -- requests ---------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._publish(payload)
            return
        request_id = None
        try:
            request = decode_control(payload)
            request_id = request.get("id")
            op = request["op"]
            if op == "sub":
                self._subscribe(request)
            elif op == "unsub":
                self._unsubscribe(request)
            else:
                raise RequestError(400, f"unknown op {op[:40]!r}: use sub, unsub, or a binary frame to publish")
        except ProtocolError as e:
            self._control(error(request_id, 400, str(e)))
        except (RequestError, InvalidTopic, BadQuery) as e:
            self._control(error(request_id, _code_of(e), str(e)))
        else:
            self._control(ok(request_id))

    def _subscribe(self, request: dict[str, Any]) -> None:
        subject, group = _subject_of(request)
        since = request.get("since")
        if since is not None:
            if not isinstance(since, int) or isinstance(since, bool) or since < 0:
                raise RequestError(400, '"since" must be a Unix time in nanoseconds (a whole number)')
            if self.factory.replay is None:
                raise RequestError(400, NO_REPLAY)
        key = _key(subject, group)
        if key in self.subscriptions:
            raise RequestError(409, "already subscribed to that on this connection")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise RequestError(429, f"at most {MAX_SUBSCRIPTIONS} subscriptions on one connection")
        subscription = subscribe_subject(self.factory.broker, subject, self, group)
        self.subscriptions[key] = subscription
        if since is not None:
            source = self.factory.replay
            if isinstance(subject, Pattern):
                replay = PatternReplay(source, subject, since, subscription, self._send_now, self._fail)
            else:
                topic = subject
                replay = Replay(
                    source, topic, since, subscription, lambda payload: self._send_now(topic, payload), self._fail
                )
            if replay.active:
                self._replays[key] = replay
                if not self._producing:
                    replay.pause()
        elif not self._producing:
            subscription.pause()

    def _unsubscribe(self, request: dict[str, Any]) -> None:
        subject, group = _subject_of(request)
        key = _key(subject, group)
        subscription = self.subscriptions.pop(key, None)
        if subscription is None:
            raise RequestError(404, "not subscribed to that on this connection")
        replay = self._replays.pop(key, None)
        if replay is not None:
            replay.cancel()
        self.factory.broker.unsubscribe(subscription)

    def _publish(self, data: bytes) -> None:
        ack = 0
        try:
            ack, topic, payload = decode_publish(data)
            check_topic(topic)
            if len(payload) > self.factory.max_message_size:
                raise RequestError(413, f"message larger than {self.factory.max_message_size} bytes")
        except (ProtocolError, InvalidTopic) as e:
            self._control(error(ack, 400, str(e)))
            return
        except RequestError as e:
            self._control(error(ack, e.code, e.reason))
            return
        self._pending += 1
        self.factory.broker.publish(topic, payload, self.hops).addBoth(self._published, ack)
        if self._pending > self.max_pending and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _published(self, result, ack: int) -> None:
        self._pending -= 1
        if self._reading_paused and self._pending <= self.max_pending // 2:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resumeProducing()
        if isinstance(result, Failure):
            self._control(error(ack, _code_of(result.value), result.getErrorMessage()))
        elif ack:
            self._control(ok(ack))

    def _control(self, frame: bytes) -> None:
        """
        Send a reply, after the messages waiting to be written (a reply to
        C{unsub} comes after the last message of that subscription).
        """
        if self.state != self.STATE_OPEN:
            return
        if self._frames:
            self.flush()
        self.sendMessage(frame, isBinary=False)

    # -- messages ----------------------------------------------------------

    def deliver(self, message: Message) -> None:
        if message is self._last:
            return
        seen = self._seen
        if seen is not None:
            if message in seen:
                return
            seen.add(message)
        self._last = message
        frames = self._frames
        if frames is None:
            self._frames = [message.framed(mux_frame)]
            self.factory.combiner.want_flush(self)
        else:
            frames.append(message.framed(mux_frame))

    def flush(self) -> None:
        """
        Write the frames waiting since the last flush, in one write.
        """
        frames, self._frames = self._frames, None
        if frames and self.state == self.STATE_OPEN:
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _send_now(self, topic: str, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:
            if self._frames:
                self.flush()
            self.transport.write(unmasked_binary_frame(encode_message(topic, payload)))

    def _fail(self, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            send_close_frame(self, INTERNAL_ERROR, close_reason(reason))

    # -- flow ----------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._producing = False
        replays = self._replays
        for key, subscription in self.subscriptions.items():
            replay = replays.get(key)
            if replay is None or not replay.pause():
                subscription.pause()

    def resumeProducing(self) -> None:
        self._producing = True
        replays = self._replays
        if self._seen is None:
            self._seen = set()
        for key, subscription in list(self.subscriptions.items()):
            replay = replays.get(key)
            if replay is not None:
                if replay.resume():
                    continue
                del replays[key]
            subscription.resume()
            if not self._producing:
                # Full again: keep what was written for the next drain.
                return
        self._seen = None

    def stopProducing(self) -> None:
        pass

    # -- closing -------------------------------------------------------------

    def close_going_away(self) -> None:
        if self._frames:
            self.flush()
        super().close_going_away()

    def onClose(self, wasClean, code, reason) -> None:
        self.factory.connections.discard(self)
        self._frames = None
        self._seen = None
        self._last = None
        subscriptions = getattr(self, "subscriptions", None)
        if not subscriptions:
            return
        for replay in self._replays.values():
            replay.cancel()
        self._replays = {}
        self.subscriptions = {}
        unsubscribe = self.factory.broker.unsubscribe
        for subscription in subscriptions.values():
            unsubscribe(subscription)


def _key(subject: str | Pattern, group: str | None) -> tuple[str, str, str | None]:
    if isinstance(subject, Pattern):
        return ("p", subject.text, group)
    return ("t", subject, group)


class MuxFactory(WebSocketServerFactory):
    """
    The factory of L{MuxProtocol}, bound to a broker and to the set of open
    connections the front-end closes at shutdown.
    """

    protocol = MuxProtocol

    def __init__(
        self,
        broker: IBroker,
        connections: Connections,
        max_message_size: int,
        combiner: Combiner,
        replay: IReplaySource | None = None,
    ) -> None:
        super().__init__(protocols=[SUBPROTOCOL])
        self.broker = broker
        self.connections = connections
        self.max_message_size = max_message_size
        self.combiner = combiner
        self.replay = replay
        room = max_message_size + _HEADER_ROOM
        self.setProtocolOptions(
            maxFramePayloadSize=room,
            maxMessagePayloadSize=room,
            openHandshakeTimeout=10,
            failByDrop=False,
            closeHandshakeTimeout=1,
            autoPingInterval=30,
            autoPingTimeout=30,
        )


def mux_resource(
    broker: IBroker,
    connections: Connections,
    max_message_size: int,
    combiner: Combiner,
    replay: IReplaySource | None = None,
) -> TakeOverResource:
    """
    The WebSocket resource serving C{memmq.v1}.
    """
    return TakeOverResource(MuxFactory(broker, connections, max_message_size, combiner, replay))
