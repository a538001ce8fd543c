"""
What a running server tells about itself: C{/metrics} (Prometheus text
format, through prometheus_client) and C{/stats} (JSON, with per-topic
figures).

The broker keeps plain counters and answers them as one
L{memmq.stats.Stats} value (L{memmq.interfaces.IBrokerStats}) when
scraped, so the hot path pays one addition per publish, not a metrics call
per delivery; this module only renders that value.  No
metric has a per-topic label: the number of topics is unbounded, and a
scrape must stay small; per-topic figures are in C{/stats}, capped and
paged.

Both are served on the main port, over the same TLS, rather than on an
admin port of their own: one listener to secure and to firewall, and a
scraper reaches them wherever clients reach the server.  They reveal
counts and topic names; whoever may subscribe may see those.
"""

from __future__ import annotations

import heapq
import json
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from memmq.interfaces import IBrokerStats
from memmq.stats import Stats, TopicStats

__all__ = ["Metrics", "STATS_LIMIT", "STATS_SORTS"]

STATS_LIMIT = 100
_STATS_MAX_LIMIT = 1000
# What /stats?sort= may order topics by (ties by name).
STATS_SORTS = ("subscribers", "topic", "published", "dropped", "buffered")
# How old the per-topic figures of /stats may be, in seconds.
_TOPICS_FRESH = 1.0
# Below this many topics a read is cheap, and /stats shows them as they are.
_TOPICS_CACHED_FROM = 10_000


@implementer(IBrokerStats)
class _NoStats:
    """
    The figures of a broker that keeps none: nothing to show.
    """

    def stats(self) -> Stats:
        return Stats()

    def topic_stats(self) -> list[TopicStats]:
        return []


class _BrokerCollector:
    """
    Renders the broker's L{memmq.stats.Stats} at scrape time.
    """

    def __init__(self, broker: IBrokerStats) -> None:
        self._broker = broker

    def collect(self):
        stats = self._broker.stats()
        delivery = stats.delivery
        if delivery is not None:
            for name, text, value in (
                ("memmq_messages_published", "Messages published to this server.", delivery.published),
                (
                    "memmq_messages_delivered",
                    "Messages handed to subscribers (one per subscriber).",
                    delivery.delivered,
                ),
                ("memmq_messages_dropped", "Messages dropped for subscribers whose buffer was full.", delivery.dropped),
                ("memmq_payload_bytes_in", "Payload bytes published.", delivery.published_bytes),
                ("memmq_payload_bytes_out", "Payload bytes handed to subscribers.", delivery.delivered_bytes),
            ):
                counter = CounterMetricFamily(name, text)
                counter.add_metric([], value)
                yield counter
            for name, text, value in (
                ("memmq_subscribers", "Current subscriptions.", delivery.subscribers),
                ("memmq_topics", "Topics with subscribers.", delivery.topics),
            ):
                gauge = GaugeMetricFamily(name, text)
                gauge.add_metric([], value)
                yield gauge
        persistence = stats.persistence
        if persistence is not None:
            for name, text, value in (
                ("memmq_persist_written", "Messages written to their topics' files.", persistence.written),
                ("memmq_persist_written_bytes", "Bytes written to the topics' files.", persistence.written_bytes),
                (
                    "memmq_persist_errors",
                    "Messages not persisted because their file could not be written.",
                    persistence.errors,
                ),
                ("memmq_persist_syncs", "Batches written and fsynced (durable mode).", persistence.syncs),
            ):
                counter = CounterMetricFamily(name, text)
                counter.add_metric([], value)
                yield counter
            gauge = GaugeMetricFamily("memmq_persist_failing_files", "Topic files failing to be written now.")
            gauge.add_metric([], len(persistence.failing))
            yield gauge
        if stats.workers:
            yield from _worker_metrics(stats.workers)
        if stats.upstream is not None:
            counter = CounterMetricFamily(
                "memmq_upstream_errors", "Failed publishes to, and lost connections with, upstream servers."
            )
            counter.add_metric([], stats.upstream.errors)
            yield counter


def _worker_metrics(workers):
    """
    Per-worker gauges of a server run with C{--workers}, and the messages
    passed between its workers.
    """
    for name, text, attribute in (
        ("memmq_worker_rss_bytes", "Resident memory of each worker process.", "rss"),
        ("memmq_worker_connections", "Open WebSocket and streaming connections of each worker.", "connections"),
        ("memmq_worker_subscribers", "Subscriptions on each worker.", "subscribers"),
    ):
        gauge = GaugeMetricFamily(name, text, labels=["worker"])
        for worker in workers:
            gauge.add_metric([str(worker.index)], getattr(worker, attribute))
        yield gauge
    counter = CounterMetricFamily(
        "memmq_worker_messages_sent", "Messages sent from one worker to another (one per receiving worker).",
        labels=["worker"],
    )
    for worker in workers:
        counter.add_metric([str(worker.index)], worker.sent)
    yield counter
    dropped = CounterMetricFamily(
        "memmq_worker_messages_dropped",
        "Messages one worker dropped for another that did not read them (README: Workers).",
        labels=["worker"],
    )
    for worker in workers:
        dropped.add_metric([str(worker.index)], worker.dropped)
    yield dropped
    total = CounterMetricFamily(
        "memmq_cross_worker_messages", "Messages passed between workers, over all workers."
    )
    total.add_metric([], sum(worker.sent for worker in workers))
    yield total


class Metrics:
    """
    The metrics of one server (its own registry, not the process-global one).

    @param broker: the server's broker; one that does not declare
        L{IBrokerStats} (an L{IBroker} of a test, say) shows no figures.
    @param now: a monotonic clock, in seconds.
    """

    def __init__(self, broker, now=time.monotonic) -> None:
        if not IBrokerStats.providedBy(broker):
            broker = _NoStats()
        self.broker: IBrokerStats = broker
        self.now = now
        self._topics: list[TopicStats] | None = None
        self._topics_read = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_BrokerCollector(broker))
        self.publish_seconds = Histogram(
            "memmq_publish_seconds",
            "Time from a publish request to its answer (HTTP).",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )

    def _topic_stats(self, count: int) -> list[TopicStats]:
        """
        Every topic's figures; with C{count} topics or more than
        L{_TOPICS_CACHED_FROM}, read at most once a second: with 100,000
        topics a read takes a good part of a second, and dashboards paging
        and sorting them would otherwise each pay it on every poll.
        """
        if count < _TOPICS_CACHED_FROM:
            self._topics = None
            return self.broker.topic_stats()
        now = self.now()
        if self._topics is None or now - self._topics_read >= _TOPICS_FRESH:
            self._topics = self.broker.topic_stats()
            self._topics_read = now
        return self._topics

    def gathered(self) -> Deferred[None]:
        """
        Fires once the figures are ready to read: at once, but for a
        worker of a server run with C{--workers}, which first fetches the
        other workers' (L{memmq.workers.figures.WorkerBroker.gather}).
        """
        gather = getattr(self.broker, "gather", None)
        return succeed(None) if gather is None else gather()

    def exposition(self) -> tuple[bytes, str]:
        """
        The Prometheus text exposition, and its content type.
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def stats(
        self, offset: int = 0, limit: int = STATS_LIMIT, sort: str = "subscribers", descending: bool = True,
        match: str = "",
    ) -> bytes:
        """
        JSON: totals, and per-topic figures for at most C{limit} topics
        from C{offset}, ordered by C{sort} (one of L{STATS_SORTS}; most
        subscribers first by default; ties by name), of the topics whose
        name holds C{match} (any case) if given.
        """
        limit = max(0, min(limit, _STATS_MAX_LIMIT))
        stats = self.broker.stats()
        body: dict = {"time": time.time()}
        delivery = stats.delivery
        if delivery is not None:
            topics = _ordered(self._topic_stats(delivery.topics), offset + limit, sort, descending, match)
            body.update(
                published=delivery.published,
                delivered=delivery.delivered,
                dropped=delivery.dropped,
                subscribers=delivery.subscribers,
                topic_count=topics.count,
                offset=offset,
                limit=limit,
                topics=[
                    {
                        "topic": t.topic,
                        "subscribers": t.subscribers,
                        "published": t.published,
                        "dropped": t.dropped,
                        "buffered": t.buffered,
                    }
                    for t in topics.first[offset : offset + limit]
                ],
            )
        persistence = stats.persistence
        if persistence is not None:
            body["persist"] = {
                "directory": persistence.directory,
                "sync": persistence.sync,
                "written": persistence.written,
                "written_bytes": persistence.written_bytes,
                "errors": persistence.errors,
                "syncs": persistence.syncs,
                "failing": [{"path": path, "reason": reason} for path, reason in persistence.failing[:limit]],
            }
        if stats.workers:
            body["workers"] = [
                {
                    "worker": w.index, "pid": w.pid, "rss": w.rss, "connections": w.connections,
                    "subscribers": w.subscribers, "published": w.published, "sent": w.sent, "received": w.received,
                    "dropped": w.dropped,
                }
                for w in stats.workers
            ]
            body["cross_worker_messages"] = sum(w.sent for w in stats.workers)
        interest = stats.interest
        if interest is not None:
            body["patterns"] = [
                {"pattern": p.pattern, "subscribers": p.subscribers} for p in interest.patterns[:limit]
            ]
            body["groups"] = [
                {"group": g.group, "members": g.members, "dropped": g.dropped} for g in interest.groups[:limit]
            ]
        upstream = stats.upstream
        if upstream is not None:
            body["upstream_topics"] = upstream.topics
            body["upstream_servers"] = list(upstream.servers)
        return json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n"


class _Page:
    def __init__(self, first: list[TopicStats], count: int) -> None:
        self.first = first
        self.count = count


def _ordered(topics: list[TopicStats], wanted: int, sort: str, descending: bool, match: str) -> _Page:
    """
    The first C{wanted} of C{topics} in order, and how many matched: a
    partial sort (a heap of C{wanted}) when that is a small part of them,
    so a page of 100,000 topics costs little more than reading them.
    """
    if match:
        needle = match.casefold()
        topics = [t for t in topics if needle in t.topic.casefold()]
    sign = -1 if descending else 1

    def key(t: TopicStats):
        return t.topic if sort == "topic" else (sign * getattr(t, sort), t.topic)

    reverse = sort == "topic" and descending
    if wanted * 8 < len(topics):
        pick = heapq.nlargest if reverse else heapq.nsmallest
        first = pick(wanted, topics, key=key)
    else:
        first = sorted(topics, key=key, reverse=reverse)
    return _Page(first, len(topics))
