"""
A subscriber on a plain HTTP response: C{GET /sub} without a WebSocket
upgrade, as asim/mq answers it.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from memmq.broker import Message
from memmq.interfaces import IBroker, IReplaySource, ISubscriber
from memmq.persist.replay import Replay, replay_subject
from memmq.server.connections import Connections
from memmq.server.query import Subject, subscribe_subject

__all__ = ["StreamingSubscriber"]


@implementer(ISubscriber, IPushProducer)
class StreamingSubscriber:
    """
    A subscriber on a plain HTTP response (what asim/mq answers to a GET
    without an upgrade): each payload's bytes as one chunk, flushed at once;
    with C{since}, the persisted ones first (L{Replay}).
    """

    _replay: Replay | None = None
    # The response is finished or its connection lost: notifyFinish fired.
    _over = False

    def __init__(
        self, broker: IBroker, connections: Connections, topic: Subject, request, since: int | None = None,
        replay: IReplaySource | None = None, group: str | None = None,
    ) -> None:
        self._broker = broker
        self._connections = connections
        self._request = request
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.write(b"")  # the headers, now: the stream has begun
        request.registerProducer(self, True)
        self.subscription = subscribe_subject(broker, topic, self, group)
        if since is not None:
            self._replay = replay_subject(replay, topic, since, self.subscription, self._write, self._fail)
        connections.add(self)
        request.notifyFinish().addBoth(self._finished)

    def deliver(self, message: Message) -> None:
        if message.size:
            self._request.write(message.payload)

    def _write(self, payload: bytes) -> None:
        if payload and not self._request.finished and not self._over:
            self._request.write(payload)

    def _fail(self, reason: str) -> None:
        self.abort()

    def pauseProducing(self) -> None:
        if self._replay is None or not self._replay.pause():
            self.subscription.pause()

    def resumeProducing(self) -> None:
        if self._replay is None or not self._replay.resume():
            self.subscription.resume()

    def stopProducing(self) -> None:
        pass

    def _finished(self, _) -> None:
        self._over = True
        if self._replay is not None:
            self._replay.cancel()
        self._broker.unsubscribe(self.subscription)
        self._connections.discard(self)

    def close_going_away(self) -> None:
        if not self._request.finished and not self._over:
            self._request.unregisterProducer()
            self._request.finish()

    def abort(self) -> None:
        transport = self._request.channel.transport if self._request.channel else None
        if transport is not None:
            transport.abortConnection()
