# -*- test-case-name: tests.test_sse -*-
"""
Server-Sent Events: C{GET /sub?topic=T} with C{Accept: text/event-stream},
the subscriber a browser's C{EventSource} is (README, "Server-Sent Events").

Each message is one event.  A UTF-8 payload is its data, one C{data:} line
per line of it; a payload that is not UTF-8, or holds a carriage return
(which the event-stream format would turn into a line break), is sent
base64 in an event of type C{base64}.  On a server run with C{--persist}
each event carries the message's timestamp as its C{id:}, and a browser
reconnecting with C{Last-Event-ID} is replayed what it missed, as
C{?since=} is.  A comment every L{HEARTBEAT} seconds keeps proxies from
closing an idle stream, and C{retry:} tells the browser how soon to come
back.

Flow control and drops are those of every subscriber: the stream is the
push producer of its connection, and a full connection pauses the
subscription, whose bounded buffer then drops for this subscriber alone.
Writes are combined as the WebSocket subscriber's are (L{Combiner}).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from memmq.broker import Message
from memmq.interfaces import IBroker, IReplaySource, ISubscriber, ISubscription
from memmq.persist.replay import Replay
from memmq.server.combine import Combiner
from memmq.server.connections import Connections

__all__ = [
    "BASE64_EVENT", "EVENT_STREAM", "HEARTBEAT", "RETRY_MS", "EventStreamSubscriber", "event", "last_event_id",
    "wants_event_stream",
]

EVENT_STREAM = b"text/event-stream"
# A proxy such as nginx closes a response idle for 60 s by default.
HEARTBEAT = 15.0
# How long a browser waits before reconnecting after the stream ends.
RETRY_MS = 2000
BASE64_EVENT = "base64"

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def wants_event_stream(request) -> bool:
    """
    Whether C{request} asks for Server-Sent Events (its C{Accept} names
    C{text/event-stream}).
    """
    accept = request.getHeader(b"accept")
    return accept is not None and EVENT_STREAM in accept.lower()


def last_event_id(request) -> int | None:
    """
    The C{Last-Event-ID} a reconnecting C{EventSource} sends, when it is one
    of our ids (a timestamp); anything else is ignored, as if absent.
    """
    value = request.getHeader(b"last-event-id")
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        return None
    return int(value)


def event(payload: bytes) -> bytes:
    """
    The event (without its C{id:}) that carries C{payload}.
    """
    if b"\r" not in payload:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return b"".join(b"data: " + line + b"\n" for line in payload.split(b"\n")) + b"\n"
    return b"event: base64\ndata: " + base64.b64encode(payload) + b"\n\n"


@implementer(ISubscriber, IPushProducer)
class EventStreamSubscriber:
    """
    One C{text/event-stream} response subscribed to a topic.

    @param subscribe: registers this subscriber with the broker and returns
        its subscription: C{broker.subscribe(topic, ...)} by default; the
        hook through which a pattern or a queue group subscribes instead.
    @param since: replay the persisted messages stamped after it first.
    """

    _replay: Replay | None = None
    _events: list[bytes] | None = None
    _heartbeat: IDelayedCall | None = None
    _over = False
    _replay_ended = False

    def __init__(
        self,
        broker: IBroker,
        connections: Connections,
        combiner: Combiner,
        clock: IReactorTime,
        topic: str,
        request,
        since: int | None = None,
        replay: IReplaySource | None = None,
        subscribe: Callable[[ISubscriber], ISubscription] | None = None,
    ) -> None:
        self._broker = broker
        self._connections = connections
        self._combiner = combiner
        self._clock = clock
        self._request = request
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        # nginx passes the stream on as it comes, whatever proxy_buffering says.
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"retry: %d\n\n" % RETRY_MS)
        request.registerProducer(self, True)
        if subscribe is None:
            self.subscription = broker.subscribe(topic, self)
        else:
            self.subscription = subscribe(self)
        if since is not None and replay is not None:
            self._replay = Replay(replay, topic, since, _ReplayEnd(self.subscription, self._end_replay),
                                  self._write_replayed, self._fail)
            if not self._replay.active:
                self._end_replay()  # nothing to replay: it ended as it began
        connections.add(self)
        request.notifyFinish().addBoth(self._finished)
        self._schedule_heartbeat()

    def deliver(self, message: Message) -> None:
        data = message.encoded(event)
        if message.stamp is not None:
            data = b"id: %d\n" % message.stamp + data
        events = self._events
        if events is None:
            self._events = [data]
            self._combiner.want_flush(self)
        else:
            events.append(data)

    def flush(self) -> None:
        """
        Write the events waiting since the last flush, in one write.
        """
        events, self._events = self._events, None
        if events and not self._over:
            self._request.write(events[0] if len(events) == 1 else b"".join(events))

    def _write_replayed(self, payload: bytes) -> None:
        # No id: until the replay ends, a reconnecting browser starts it
        # over from where it started.
        if not self._over:
            self._request.write(event(payload))

    def _end_replay(self) -> None:
        if self._replay is not None and not self._replay_ended and not self._over:
            self._replay_ended = True
            # An id alone dispatches no event but moves the browser's
            # Last-Event-ID past everything replayed.
            self._request.write(b"id: %d\n\n" % self._replay.last)

    def _fail(self, reason: str) -> None:
        if not self._over:
            self._request.write(b"event: error\ndata: " + reason.encode("utf-8").replace(b"\n", b" ") + b"\n\n")
            self.close_going_away()

    def _schedule_heartbeat(self) -> None:
        self._heartbeat = self._clock.callLater(HEARTBEAT, self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        if self._over:
            return
        self._request.write(b": heartbeat\n\n")
        self._schedule_heartbeat()

    def pauseProducing(self) -> None:
        if self._replay is None or not self._replay.pause():
            self.subscription.pause()

    def resumeProducing(self) -> None:
        if self._replay is None or not self._replay.resume():
            if self._replay is not None:
                self._end_replay()
            self.subscription.resume()

    def stopProducing(self) -> None:
        pass

    def _finished(self, _) -> None:
        self._over = True
        self._events = None
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
        if self._replay is not None:
            self._replay.cancel()
        self._broker.unsubscribe(self.subscription)
        self._connections.discard(self)

    def close_going_away(self) -> None:
        if not self._request.finished and not self._over:
            if self._events:
                self.flush()
            self._request.unregisterProducer()
            self._request.finish()

    def abort(self) -> None:
        transport = self._request.channel.transport if self._request.channel else None
        if transport is not None:
            transport.abortConnection()


class _ReplayEnd:
    """
    The subscription as a L{Replay} sees it: its C{resume} at the end of the
    replay first marks the end in the stream.
    """

    def __init__(self, subscription: ISubscription, ended: Callable[[], None]) -> None:
        self._subscription = subscription
        self._ended = ended
        self.topic = subscription.topic

    def pause(self) -> None:
        self._subscription.pause()

    def resume(self) -> None:
        self._ended()
        self._subscription.resume()

    def forget(self, replayed) -> None:
        self._subscription.forget(replayed)
