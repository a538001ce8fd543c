# -*- test-case-name: tests.test_workers -*-
"""
A worker's broker, and the figures of the whole server it answers.

L{WorkerBroker} is the backplane broker over the mesh; asked for figures
(C{/metrics}, C{/stats}), it first gathers every other worker's
(L{gather}, over the mesh) and then answers their sum: totals added up,
per-topic figures merged by topic, and one L{Worker} entry per process.
"""

from __future__ import annotations

import os
from dataclasses import replace

from twisted.internet.defer import Deferred

from memmq.backplane.broker import BackplaneBroker
from memmq.backplane.mesh import MeshBackplane
from memmq.errors import BackplaneUnavailable
from memmq.stats import Delivery, Persistence, Stats, TopicStats, Worker

__all__ = ["WorkerBroker", "merge"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def merge(parts: list[tuple[Stats, list[TopicStats]]]) -> tuple[Stats, list[TopicStats]]:
    """
    The figures of a server from those of its processes, each given as
    (its own totals with its own L{Worker} entry, its topics).
    """
    totals = None
    persistence = None
    workers: list[Worker] = []
    topics: dict[str, TopicStats] = {}
    for stats, topic_stats in parts:
        workers.extend(stats.workers)
        persistence = _add_persistence(persistence, stats.persistence)
        delivery = stats.delivery
        if delivery is not None:
            if totals is None:
                totals = delivery
            else:
                totals = Delivery(*(a + b for a, b in zip(_fields(totals), _fields(delivery), strict=True)))
        for t in topic_stats:
            seen = topics.get(t.topic)
            topics[t.topic] = t if seen is None else TopicStats(
                t.topic, seen.subscribers + t.subscribers, seen.published + t.published,
                seen.dropped + t.dropped, seen.buffered + t.buffered,
            )
    if totals is not None:
        totals = replace(totals, topics=len(topics))
    workers_sorted = tuple(sorted(workers, key=lambda w: w.index))
    return Stats(delivery=totals, persistence=persistence, workers=workers_sorted), list(topics.values())


def _add_persistence(total: Persistence | None, one: Persistence | None) -> Persistence | None:
    """
    The writers' figures added up (each worker writes the files of the
    topics it owns, in the same directory).
    """
    if total is None or one is None:
        return total or one
    return replace(
        total,
        written=total.written + one.written,
        written_bytes=total.written_bytes + one.written_bytes,
        errors=total.errors + one.errors,
        syncs=total.syncs + one.syncs,
        failing=total.failing + one.failing,
    )


def _fields(delivery: Delivery) -> tuple[int, ...]:
    return (
        delivery.published, delivery.published_bytes, delivery.delivered, delivery.delivered_bytes,
        delivery.dropped, delivery.subscribers, delivery.topics,
    )


class WorkerBroker(BackplaneBroker):
    """
    The broker of one worker: its own subscribers' and, for figures, the
    whole server's.

    @ivar site: the worker's site, for its count of connections (set once
        the front-end is built).
    @ivar persister: the worker's persistence writer, for its figures
        (C{--persist}; set by L{memmq.workers.persist}).
    """

    persister = None

    def __init__(self, local, mesh: MeshBackplane, index: int, clock) -> None:
        super().__init__(local, mesh)
        self.mesh = mesh
        self.index = index
        self.site = None
        self._clock = clock
        self._others: dict[int, tuple[Stats, list[TopicStats]]] = {}
        mesh.figures = self.own

    def own(self) -> tuple[Stats, list[TopicStats]]:
        """
        This worker's own figures, with its L{Worker} entry.
        """
        stats = super().stats()
        delivery = stats.delivery
        worker = Worker(
            index=self.index,
            pid=os.getpid(),
            rss=_rss(),
            connections=len(self.site.connections) if self.site is not None else 0,
            subscribers=delivery.subscribers if delivery else 0,
            published=delivery.published if delivery else 0,
            sent=self.mesh.sent,
            received=self.mesh.received,
        )
        persistence = self.persister.figures() if self.persister is not None else None
        return replace(stats, workers=(worker,), persistence=persistence), super().topic_stats()

    def publish_now(self, topic: str, payload: bytes, stamp: int | None = None) -> int:
        """
        Deliver here and to the workers that follow C{topic}, every copy
        carrying C{stamp} (the owner of a topic's file publishes its
        messages so: L{memmq.workers.persist}).
        """
        mesh = self.mesh
        if not mesh.healthy:
            raise BackplaneUnavailable("the server's other processes cannot be reached; not published")
        delivered = self.local.publish_now(topic, payload, stamp)
        self.sent += 1
        mesh.publish(topic, payload, stamp=stamp)
        return delivered

    def gather(self) -> Deferred[None]:
        """
        Fetch every other worker's figures, for L{stats} and
        L{topic_stats} to answer the whole server's.
        """

        def gathered(answers):
            self._others = answers

        return self.mesh.gather().addCallback(gathered)

    def _merged(self) -> tuple[Stats, list[TopicStats]]:
        return merge([self.own(), *self._others.values()])

    def stats(self) -> Stats:
        return self._merged()[0]

    def topic_stats(self) -> list[TopicStats]:
        return self._merged()[1]
