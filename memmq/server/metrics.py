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

import json
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from zope.interface import implementer

from memmq.interfaces import IBrokerStats
from memmq.stats import Stats, TopicStats

__all__ = ["Metrics", "STATS_LIMIT"]

STATS_LIMIT = 100
_STATS_MAX_LIMIT = 1000


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
        if stats.upstream is not None:
            counter = CounterMetricFamily(
                "memmq_upstream_errors", "Failed publishes to, and lost connections with, upstream servers."
            )
            counter.add_metric([], stats.upstream.errors)
            yield counter


class Metrics:
    """
    The metrics of one server (its own registry, not the process-global one).

    @param broker: the server's broker; one that does not declare
        L{IBrokerStats} (an L{IBroker} of a test, say) shows no figures.
    """

    def __init__(self, broker) -> None:
        if not IBrokerStats.providedBy(broker):
            broker = _NoStats()
        self.broker: IBrokerStats = broker
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_BrokerCollector(broker))
        self.publish_seconds = Histogram(
            "memmq_publish_seconds",
            "Time from a publish request to its answer (HTTP).",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )

    def exposition(self) -> tuple[bytes, str]:
        """
        The Prometheus text exposition, and its content type.
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def stats(self, offset: int = 0, limit: int = STATS_LIMIT) -> bytes:
        """
        JSON: totals, and per-topic figures for at most C{limit} topics
        (most subscribers first), from C{offset}.
        """
        limit = max(0, min(limit, _STATS_MAX_LIMIT))
        stats = self.broker.stats()
        body: dict = {"time": time.time()}
        delivery = stats.delivery
        if delivery is not None:
            topics = sorted(self.broker.topic_stats(), key=lambda t: (-t.subscribers, t.topic))
            body.update(
                published=delivery.published,
                delivered=delivery.delivered,
                dropped=delivery.dropped,
                subscribers=delivery.subscribers,
                topic_count=len(topics),
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
                    for t in topics[offset : offset + limit]
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
