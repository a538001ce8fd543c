# -*- test-case-name: tests.test_sse,tests.test_http -*-
"""
A subscriber on a streaming HTTP response to C{GET /sub}: what the plain
stream (L{memmq.server.stream}) and Server-Sent Events
(L{memmq.server.sse}) share, so that each says only how it writes.

The response is its connection's push producer: a full connection pauses
the replay while there is one, else the subscription.  The subscription,
the replay and the server's list of connections end when the response
does (finished, or its connection lost).

Its writes are combined as a WebSocket subscriber's are, and it follows
its topic's log (L{CombinedSubscriber}): a thousand browsers'
C{EventSource}s on one topic cost a publish one append, and each flush
writes the same joined bytes to all of them.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from memmq.interfaces import IBroker, IReplaySource, ISubscription
from memmq.persist.replay import Replay, replay_subject
from memmq.server.combine import CombinedSubscriber, Combiner
from memmq.server.connections import Connections
from memmq.server.query import Subject, subscribe_subject

__all__ = ["ResponseSubscriber"]


@implementer(IPushProducer)
class ResponseSubscriber(CombinedSubscriber):
    """
    The plumbing of a subscriber on C{request}, whose subclass has set the
    response's headers (and written its first bytes) before calling this
    constructor, and defines C{framing} (how a message is written),
    C{_write_replayed} and C{_fail}.

    @param since: replay the persisted messages stamped after it first
        (with C{replay}, where they are read from).
    """

    _replay: Replay | None = None
    # The response is finished or its connection lost: notifyFinish fired.
    _over = False

    def __init__(
        self, broker: IBroker, connections: Connections, combiner: Combiner, subject: Subject, request,
        since: int | None = None, replay: IReplaySource | None = None, group: str | None = None,
    ) -> None:
        self.combiner = combiner
        self._broker = broker
        self._connections = connections
        self._request = request
        request.registerProducer(self, True)
        self.subscription = subscribe_subject(broker, subject, self, group)
        if since is not None and replay is not None:
            self._replay = self._start_replay(replay, subject, since)
        connections.add(self)
        request.notifyFinish().addBoth(self._finished)

    def _start_replay(self, replay: IReplaySource, subject: Subject, since: int) -> Replay:
        """
        The replay of C{subject} since C{since}, writing each payload with
        C{_write_replayed}.
        """
        return replay_subject(replay, subject, since, self._replay_subscription(), self._write_replayed, self._fail)

    def _replay_subscription(self) -> ISubscription:
        """
        The subscription as the replay pauses and resumes it.
        """
        return self.subscription

    def _replay_ended(self) -> None:
        """
        The replay has ended and the connection has room: the live
        messages follow.
        """

    def pauseProducing(self) -> None:
        if self._replay is None or not self._replay.pause():
            self.subscription.pause()

    def resumeProducing(self) -> None:
        if self._replay is None or not self._replay.resume():
            if self._replay is not None:
                self._replay_ended()
            self.subscription.resume()

    def stopProducing(self) -> None:
        pass

    def write_combined(self, data: bytes) -> None:
        if not self._over and not self._request.finished:
            self._request.write(data)

    def _finished(self, _) -> None:
        self._over = True
        self.forget_frames()
        if self._replay is not None:
            self._replay.cancel()
        self._broker.unsubscribe(self.subscription)
        self._connections.discard(self)

    def close_going_away(self) -> None:
        if not self._request.finished and not self._over:
            self.flush_now()
            self._request.unregisterProducer()
            self._request.finish()

    def abort(self) -> None:
        transport = self._request.channel.transport if self._request.channel else None
        if transport is not None:
            transport.abortConnection()
