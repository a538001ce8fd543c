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
Writes are combined as the WebSocket subscriber's are, and the stream
follows its topic's log (L{memmq.server.response}).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from memmq.broker import Message
from memmq.interfaces import IBroker, IReplaySource, ISubscription
from memmq.server.combine import Combiner
from memmq.server.connections import Connections
from memmq.server.query import Subject
from memmq.server.response import ResponseSubscriber

__all__ = [
    "BASE64_EVENT", "EVENT_STREAM", "HEARTBEAT", "RETRY_MS", "EventStreamSubscriber", "event", "last_event_id",
    "message_event", "wants_event_stream",
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


def message_event(message: Message) -> bytes:
    """
    The event that carries C{message}, with its timestamp as its C{id:}
    when it has one (C{--persist}): computed once per message
    (L{Message.framed}) for every stream.
    """
    data = event(message.payload)
    if message.stamp is not None:
        return b"id: %d\n" % message.stamp + data
    return data


class EventStreamSubscriber(ResponseSubscriber):
    """
    One C{text/event-stream} response subscribed to a topic or a pattern,
    in a queue group or not.

    @param since: replay the persisted messages stamped after it first.
    """

    framing = staticmethod(message_event)
    _heartbeat: IDelayedCall | None = None
    _replay_over = False

    def __init__(
        self,
        broker: IBroker,
        connections: Connections,
        combiner: Combiner,
        clock: IReactorTime,
        subject: Subject,
        request,
        since: int | None = None,
        replay: IReplaySource | None = None,
        group: str | None = None,
    ) -> None:
        self._clock = clock
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        # nginx passes the stream on as it comes, whatever proxy_buffering says.
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"retry: %d\n\n" % RETRY_MS)
        super().__init__(broker, connections, combiner, subject, request, since, replay, group)
        if self._replay is not None and not self._replay.active:
            self._replay_ended()  # nothing to replay: it ended as it began
        self._schedule_heartbeat()

    def _replay_subscription(self) -> ISubscription:
        return _ReplayEnd(self.subscription, self._replay_ended)

    def _write_replayed(self, payload: bytes) -> None:
        # No id: until the replay ends, a reconnecting browser starts it
        # over from where it started.
        if not self._over:
            self._request.write(event(payload))

    def _replay_ended(self) -> None:
        if self._replay is not None and not self._replay_over and not self._over:
            self._replay_over = True
            # An id alone dispatches no event but moves the browser's
            # Last-Event-ID past everything replayed.
            self._request.write(b"id: %d\n\n" % self._replay.end)

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

    def _finished(self, reason) -> None:
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._heartbeat = None
        super()._finished(reason)


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
