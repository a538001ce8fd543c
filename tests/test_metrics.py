"""
Tests for memmq.server.metrics: /metrics scraped over TLS and parsed with
prometheus_client's parser, /stats figures, as messages flow.
"""

from __future__ import annotations

import json

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from memmq import client
from memmq.broker import Broker
from memmq.interfaces import IBrokerStats
from memmq.persist import Persister, PersistingBroker
from memmq.proxy import ProxyBroker
from memmq.server.metrics import Metrics
from memmq.stats import Delivery, Persistence, Stats, TopicStats, Upstream
from tests.support import RunningServer, bounded, dead_port


def _samples(text: str) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels or set(sample.labels) == {"le"}:
                key = sample.name if not sample.labels else f"{sample.name}{{le={sample.labels['le']}}}"
                found[key] = sample.value
    return found


class MetricsTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.server = RunningServer(self)
        self.http = self.server.client.http

    @inlineCallbacks
    def _get(self, path: str):
        response = yield bounded(self.http.get(self.server.url + path))
        body = yield bounded(treq.content(response))
        return response, body

    @inlineCallbacks
    def test_counters_move(self) -> None:
        """
        Published, delivered, bytes, subscribers, topics and the publish
        latency histogram follow what the test did.
        """
        response, body = yield self._get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        before = _samples(body.decode())
        self.assertEqual(before["memmq_messages_published_total"], 0)
        a = yield self.server.client.subscribe(self.server.url, "m")
        b = yield self.server.client.subscribe(self.server.url, "m")
        for _ in range(5):
            yield self.server.client.publish(self.server.url, "m", b"12345")
        yield self.server.client.publish(self.server.url, "nobody", b"xy")
        yield a.wait_for(5)
        yield b.wait_for(5)
        _, body = yield self._get("/metrics")
        after = _samples(body.decode())
        self.assertEqual(after["memmq_messages_published_total"], 6)
        self.assertEqual(after["memmq_messages_delivered_total"], 10)
        self.assertEqual(after["memmq_messages_dropped_total"], 0)
        self.assertEqual(after["memmq_payload_bytes_in_total"], 27)
        self.assertEqual(after["memmq_payload_bytes_out_total"], 50)
        self.assertEqual(after["memmq_subscribers"], 2)
        self.assertEqual(after["memmq_topics"], 1)
        self.assertEqual(after["memmq_publish_seconds_count"], 6)
        self.assertEqual(after["memmq_publish_seconds_bucket{le=+Inf}"], 6)

    @inlineCallbacks
    def test_stats(self) -> None:
        """
        /stats gives totals and per-topic figures, most subscribers first,
        paged by offset and limit.
        """
        for topic, count in (("one", 1), ("three", 3), ("two", 2)):
            for _ in range(count):
                yield self.server.client.subscribe(self.server.url, topic)
        yield self.server.client.publish(self.server.url, "two", b"x")
        response, body = yield self._get("/stats")
        self.assertEqual(response.code, 200)
        stats = json.loads(body)
        self.assertEqual((stats["published"], stats["subscribers"], stats["topic_count"]), (1, 6, 3))
        self.assertEqual(
            [(t["topic"], t["subscribers"], t["published"]) for t in stats["topics"]],
            [("three", 3, 0), ("two", 2, 1), ("one", 1, 0)],
        )
        _, body = yield self._get("/stats?offset=1&limit=1")
        self.assertEqual([t["topic"] for t in json.loads(body)["topics"]], ["two"])
        response, body = yield self._get("/stats?limit=lots")
        self.assertEqual((response.code, body), (400, b"limit must be a whole number\n"))

    @inlineCallbacks
    def test_upstream_errors(self) -> None:
        """
        A proxy counts publishes its upstreams did not accept.
        """
        upstream = client.new(servers=[f"127.0.0.1:{dead_port()}"], retries=0, reactor=reactor)
        proxy = RunningServer(self, broker=ProxyBroker(upstream, Broker()))
        self.addCleanup(upstream.close)
        code, body = yield proxy.client.publish(proxy.url, "t", b"x")
        self.assertEqual(code, 502)
        response = yield bounded(proxy.client.http.get(proxy.url + "/metrics"))
        samples = _samples((yield treq.content(response)).decode())
        self.assertEqual(samples["memmq_upstream_errors_total"], 1)
        self.assertEqual(samples["memmq_messages_published_total"], 0)


class _Sink:
    def deliver(self, message) -> None:
        pass


class _Figures:
    """
    A persister's figures, as PersistingBroker reads them.
    """

    directory = "/var/lib/memmq"
    sync = True
    written, written_bytes, errors, syncs = 7, 70, 2, 3
    failing = {"/var/lib/memmq/a": "disk full"}

    # What the broker reads: the writer's own account of these figures.
    figures = Persister.figures

    def append(self, topic, payload):
        return None


class _Upstream:
    servers = ["a:1", "b:2"]
    upstream_errors = 4

    def attach(self, topic, subscriber):
        return object()


class BrokerStatsTests(TestCase):
    """
    Each broker answers IBrokerStats with the parts it has; /metrics and
    /stats render only that.
    """

    def test_broker(self) -> None:
        """
        The in-memory broker: delivery totals and per-topic figures.
        """
        broker = Broker(max_buffered_messages=1)
        verifyObject(IBrokerStats, broker)
        paused = broker.subscribe("z", _Sink())
        paused.pause()
        broker.subscribe("z", _Sink())
        for _ in range(3):
            broker.publish_now("z", b"12345")
        self.assertEqual(
            broker.stats(),
            Stats(delivery=Delivery(
                published=3, published_bytes=15, delivered=4, delivered_bytes=20, dropped=2, subscribers=2, topics=1
            )),
        )
        self.assertEqual(
            broker.topic_stats(), [TopicStats(topic="z", subscribers=2, published=3, dropped=2, buffered=1)]
        )

    def test_persisting_broker(self) -> None:
        """
        A persisting broker adds the writer's figures.
        """
        broker = PersistingBroker(Broker(), _Figures())
        verifyObject(IBrokerStats, broker)
        stats = broker.stats()
        self.assertEqual(stats.delivery, Broker().stats().delivery)
        self.assertEqual(
            stats.persistence,
            Persistence("/var/lib/memmq", True, 7, 70, 2, 3, (("/var/lib/memmq/a", "disk full"),)),
        )
        self.assertIsNone(stats.upstream)

    def test_proxy_broker(self) -> None:
        """
        A proxy adds its upstream figures.
        """
        broker = ProxyBroker(_Upstream(), Broker(), Clock())
        verifyObject(IBrokerStats, broker)
        broker.subscribe("t", _Sink())
        self.assertEqual(broker.stats().upstream, Upstream(topics=1, servers=("a:1", "b:2"), errors=4))
        self.assertEqual([t.topic for t in broker.topic_stats()], ["t"])

    def test_broker_without_stats(self) -> None:
        """
        A broker that keeps no figures (it does not provide IBrokerStats)
        is served with none: /stats has only the time.
        """
        metrics = Metrics(object())
        self.assertEqual(list(json.loads(metrics.stats())), ["time"])
        self.assertNotIn(b"memmq_messages_published", metrics.exposition()[0])
