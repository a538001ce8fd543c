# -*- test-case-name: tests.test_workers -*-
"""
A worker's broker, and the figures of the whole server it answers.

L{WorkerBroker} is the backplane broker over the mesh; L{FiguresBroker}
serves a worker that is a proxy or a Redis backplane's node of its own,
whose messages stay off the mesh.  Asked for figures (C{/metrics},
C{/stats}), either first gathers every other worker's (L{gather}, over the
mesh) and then answers their sum: totals added up, per-topic figures, and
patterns and queue groups, merged by name, and one L{Worker} entry per
process.
"""

from __future__ import annotations

import os
from dataclasses import replace

from twisted.internet.defer import Deferred
from zope.interface import implementer

from memmq.backplane.broker import BackplaneBroker
from memmq.backplane.mesh import MeshBackplane
from memmq.interfaces import IBroker, IBrokerStats
from memmq.stats import Delivery, GroupStats, Interest, PatternStats, Persistence, Stats, TopicStats, Upstream, Worker

__all__ = ["FiguresBroker", "WorkerBroker", "merge"]

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
    interests = [stats.interest for stats, _ in parts if stats.interest is not None]
    upstreams = [stats.upstream for stats, _ in parts if stats.upstream is not None]
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
    return Stats(
        delivery=totals,
        persistence=persistence,
        workers=tuple(sorted(workers, key=lambda w: w.index)),
        interest=_merge_interest(interests) if interests else None,
        upstream=Upstream(
            sum(u.topics for u in upstreams), upstreams[0].servers, sum(u.errors for u in upstreams),
        ) if upstreams else None,
    ), list(topics.values())


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


def _merge_interest(interests: list[Interest]) -> Interest:
    """
    The patterns and queue groups of a server: each pattern's subscribers,
    each group's members and drops, added up over the workers.
    """
    patterns: dict[str, int] = {}
    groups: dict[str, tuple[int, int]] = {}
    for interest in interests:
        for p in interest.patterns:
            patterns[p.pattern] = patterns.get(p.pattern, 0) + p.subscribers
        for g in interest.groups:
            members, dropped = groups.get(g.group, (0, 0))
            groups[g.group] = (members + g.members, dropped + g.dropped)
    return Interest(
        patterns=tuple(PatternStats(p, n) for p, n in sorted(patterns.items())),
        groups=tuple(GroupStats(g, m, d) for g, (m, d) in sorted(groups.items())),
    )


def _fields(delivery: Delivery) -> tuple[int, ...]:
    return (
        delivery.published, delivery.published_bytes, delivery.delivered, delivery.delivered_bytes,
        delivery.dropped, delivery.subscribers, delivery.topics,
    )


class _WholeServer:
    """
    The figures of the whole server, for a worker's broker: its own (from
    L{_local_figures}) and the other workers' (gathered over the mesh).

    @ivar site: the worker's site, for its count of connections (set once
        the front-end is built).
    @ivar persister: the worker's persistence writer, for its figures
        (C{--persist}; set by L{memmq.workers.persist}).
    """

    mesh: MeshBackplane
    index: int
    site = None
    persister = None
    _others: dict[int, tuple[Stats, list[TopicStats]]]

    def _local_figures(self) -> tuple[Stats, list[TopicStats]]:
        raise NotImplementedError

    def own(self) -> tuple[Stats, list[TopicStats]]:
        """
        This worker's own figures, with its L{Worker} entry.
        """
        stats, topic_stats = self._local_figures()
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
            dropped=self.mesh.dropped,
        )
        persistence = self.persister.figures() if self.persister is not None else None
        return replace(stats, workers=(worker,), persistence=persistence), topic_stats

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


class WorkerBroker(_WholeServer, BackplaneBroker):
    """
    The broker of one worker: its own subscribers', joined to the other
    workers' by the mesh, and, for figures, the whole server's.
    """

    def __init__(self, local, mesh: MeshBackplane, index: int, clock) -> None:
        BackplaneBroker.__init__(self, local, mesh)
        self.mesh = mesh
        self.index = index
        self._clock = clock
        self._others = {}
        mesh.figures = self.own

    def _local_figures(self) -> tuple[Stats, list[TopicStats]]:
        return BackplaneBroker.stats(self), BackplaneBroker.topic_stats(self)


@implementer(IBroker, IBrokerStats)
class FiguresBroker(_WholeServer):
    """
    The broker of one worker whose messages do not cross the mesh (README:
    Workers): a proxy of its own, or a Redis backplane's node of its own.
    It hands everything to C{broker}; the mesh carries figures only, since
    no worker tells the others of any interest.
    """

    def __init__(self, broker, mesh: MeshBackplane, index: int, clock) -> None:
        self.broker = broker
        self.mesh = mesh
        self.index = index
        self._others = {}
        mesh.figures = self.own
        # The broker's own methods, bound once: no extra call per message.
        self.publish = broker.publish
        self.subscribe = broker.subscribe
        self.subscribe_pattern = broker.subscribe_pattern
        self.unsubscribe = broker.unsubscribe

    def _local_figures(self) -> tuple[Stats, list[TopicStats]]:
        return self.broker.stats(), self.broker.topic_stats()

    def start(self) -> Deferred[None]:
        return self.mesh.start(self)

    def stop(self) -> Deferred[None]:
        return self.mesh.stop()

    def received(self, topic, payload, plain=True, groups=None, stamp=None) -> None:
        """
        Never called: no worker says it follows anything.
        """
