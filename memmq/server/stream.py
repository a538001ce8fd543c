"""
A subscriber on a plain HTTP response: C{GET /sub} without a WebSocket
upgrade, as asim/mq answers it.
"""

from __future__ import annotations

from memmq.broker import Message
from memmq.interfaces import IBroker, IReplaySource
from memmq.server.combine import Combiner
from memmq.server.connections import Connections
from memmq.server.query import Subject
from memmq.server.response import ResponseSubscriber

__all__ = ["StreamingSubscriber", "bare_payload"]


def bare_payload(message: Message) -> bytes:
    """
    A message as the plain stream writes it: its payload's bytes alone.
    """
    return message.payload


class StreamingSubscriber(ResponseSubscriber):
    """
    A subscriber on a plain HTTP response (what asim/mq answers to a GET
    without an upgrade): the payloads' bytes one after another, the
    messages of each flush (L{Combiner}) in one chunk; with C{since}, the
    persisted ones first (L{memmq.persist.replay.Replay}).
    """

    framing = staticmethod(bare_payload)

    def __init__(
        self, broker: IBroker, connections: Connections, combiner: Combiner, topic: Subject, request,
        since: int | None = None, replay: IReplaySource | None = None, group: str | None = None,
    ) -> None:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.write(b"")  # the headers, now: the stream has begun
        super().__init__(broker, connections, combiner, topic, request, since, replay, group)

    def _write_replayed(self, payload: bytes) -> None:
        if payload and not self._request.finished and not self._over:
            self._request.write(payload)

    def _fail(self, reason: str) -> None:
        self.abort()
