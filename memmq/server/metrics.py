"""
What a running server tells about itself: C{/metrics} (Prometheus text
format, through prometheus_client) and C{/stats} (JSON, with per-topic
figures).

The broker keeps plain counters; they are read when scraped, so the hot
path pays one addition per publish, not a metrics call per delivery.  No
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

from memmq.broker import Broker

__all__ = ["Metrics", "STATS_LIMIT", "local_broker"]

STATS_LIMIT = 100
_STATS_MAX_LIMIT = 1000


def local_broker(broker) -> Broker | None:
    """
    The in-memory broker whose counters describe this server: the broker
    itself, or a proxy's local fan-out broker.
    """
    if isinstance(broker, Broker):
        return broker
    local = getattr(broker, "local", None)
    return local if isinstance(local, Broker) else None


class _BrokerCollector:
    """
    Reads the broker's counters at scrape time.
    """

    def __init__(self, broker) -> None:
        self._broker = broker

    def collect(self):
        local = local_broker(self._broker)
        if local is not None:
            for name, text, value in (
                ("memmq_messages_published", "Messages published to this server.", local.published),
                ("memmq_messages_delivered", "Messages handed to subscribers (one per subscriber).", local.delivered),
                ("memmq_messages_dropped", "Messages dropped for subscribers whose buffer was full.", local.dropped),
                ("memmq_payload_bytes_in", "Payload bytes published.", local.published_bytes),
                ("memmq_payload_bytes_out", "Payload bytes handed to subscribers.", local.delivered_bytes),
            ):
                counter = CounterMetricFamily(name, text)
                counter.add_metric([], value)
                yield counter
            for name, text, value in (
                ("memmq_subscribers", "Current subscriptions.", local.subscribers),
                ("memmq_topics", "Topics with subscribers.", local.topics),
            ):
                gauge = GaugeMetricFamily(name, text)
                gauge.add_metric([], value)
                yield gauge
        persister = getattr(self._broker, "persister", None)
        if persister is not None:
            for name, text, value in (
                ("memmq_persist_written", "Messages written to their topics' files.", persister.written),
                ("memmq_persist_written_bytes", "Bytes written to the topics' files.", persister.written_bytes),
                (
                    "memmq_persist_errors",
                    "Messages not persisted because their file could not be written.",
                    persister.errors,
                ),
                ("memmq_persist_syncs", "Batches written and fsynced (durable mode).", persister.syncs),
            ):
                counter = CounterMetricFamily(name, text)
                counter.add_metric([], value)
                yield counter
            gauge = GaugeMetricFamily("memmq_persist_failing_files", "Topic files failing to be written now.")
            gauge.add_metric([], len(persister.failing))
            yield gauge
        client = getattr(self._broker, "client", None)
        if client is not None and hasattr(client, "upstream_errors"):
            counter = CounterMetricFamily(
                "memmq_upstream_errors", "Failed publishes to, and lost connections with, upstream servers."
            )
            counter.add_metric([], client.upstream_errors)
            yield counter


class Metrics:
    """
    The metrics of one server (its own registry, not the process-global one).
    """

    def __init__(self, broker) -> None:
        self.broker = broker
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
        local = local_broker(self.broker)
        body: dict = {"time": time.time()}
        if local is not None:
            topics = sorted(local.topic_list(), key=lambda t: (-len(t._subscriptions), t.name))
            body.update(
                published=local.published,
                delivered=local.delivered,
                dropped=local.dropped,
                subscribers=local.subscribers,
                topic_count=len(topics),
                offset=offset,
                limit=limit,
                topics=[
                    {
                        "topic": t.name,
                        "subscribers": len(t._subscriptions),
                        "published": t.published,
                        "dropped": t.dropped,
                        "buffered": sum(s.buffered for s in t._subscriptions),
                    }
                    for t in topics[offset : offset + limit]
                ],
            )
        persister = getattr(self.broker, "persister", None)
        if persister is not None:
            body["persist"] = {
                "directory": persister.directory,
                "sync": persister.sync,
                "written": persister.written,
                "written_bytes": persister.written_bytes,
                "errors": persister.errors,
                "syncs": persister.syncs,
                "failing": [
                    {"path": path, "reason": reason} for path, reason in list(persister.failing.items())[:limit]
                ],
            }
        upstream = getattr(self.broker, "upstream_topics", None)
        if upstream is not None:
            body["upstream_topics"] = len(upstream)
            body["upstream_servers"] = list(self.broker.client.servers)
        return json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n"
