"""
Tests for memmq.client.mux and the proxy over it: the library's
subscriptions (topics, patterns, groups) sharing one memmq.v1 connection
per server, the fall-back to one connection per topic, and asim/mq on
either side, end to end on loopback with real TLS.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from memmq.broker import Broker
from memmq.proxy import ProxyBroker
from tests.support import WAIT, Child, MuxCollector, RunningServer, bounded, dead_port, new_client, sleep, spawn, until

ASIM_MQ = "/tmp/asim-mq/mq"


class SharedConnectionTests(TestCase):
    """
    Many subscriptions of one client over one connection per server.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = RunningServer(self)
        self.client = new_client(self, [self.server.url])

    @inlineCallbacks
    def test_many_subscriptions_one_connection(self) -> None:
        """
        Topic and pattern subscriptions share one connection; each gets its
        messages, with their topics; a subscription closed stops.
        """
        subs = []
        for n in range(20):
            subs.append((yield self.client.subscribe(f"t.{n}")))
        star = yield self.client.subscribe(pattern="t.*")
        self.assertEqual(len(self.server.site.connections), 1)
        self.assertEqual(self.server.broker.subscribers, 21)
        for n in range(20):
            yield self.client.publish(f"t.{n}", b"%d" % n)
        for n, sub in enumerate(subs):
            message = yield bounded(sub.get_message())
            self.assertEqual((message.topic, message.payload), (f"t.{n}", b"%d" % n))
        got = []
        for _ in range(20):
            got.append((yield bounded(star.get_message())))
        self.assertEqual([(m.topic, m.payload) for m in got], [(f"t.{n}", b"%d" % n) for n in range(20)])
        yield subs[0].close()
        yield until(lambda: self.server.broker.subscribers == 20)
        self.assertEqual(len(self.server.site.connections), 1)

    @inlineCallbacks
    def test_same_topic_twice(self) -> None:
        """
        Two subscriptions to one topic share the server's one subscription;
        both get each message; closing one keeps the other.
        """
        a = yield self.client.subscribe("same")
        b = yield self.client.subscribe("same")
        self.assertEqual(self.server.broker.subscribers, 1)
        yield self.client.publish("same", b"x")
        self.assertEqual((yield bounded(a.get())), b"x")
        self.assertEqual((yield bounded(b.get())), b"x")
        yield a.close()
        yield self.client.publish("same", b"y")
        self.assertEqual((yield bounded(b.get())), b"y")

    @inlineCallbacks
    def test_groups(self) -> None:
        """
        Two subscriptions in one group (from two clients) share the
        messages: each message to one of them.
        """
        other = new_client(self, [self.server.url])
        a = yield self.client.subscribe(pattern="jobs.>", group="w")
        b = yield other.subscribe("jobs.x", group="w")
        watcher = yield self.client.subscribe("jobs.x")
        for n in range(10):
            yield self.client.publish("jobs.x", b"%d" % n)
        for n in range(10):
            self.assertEqual((yield bounded(watcher.get())), b"%d" % n)
        got = []
        for sub in (a, b):
            for _ in range(5):
                got.append(int((yield bounded(sub.get()))))
        self.assertEqual(sorted(got), list(range(10)))

    @inlineCallbacks
    def test_invalid_pattern(self) -> None:
        """
        An invalid pattern fails the subscribe at once, saying why.
        """
        failure = yield self.assertFailure(self.client.subscribe(pattern="a.>.b"), Exception)
        self.assertIn("'>' may only be the last token", str(failure))

    @inlineCallbacks
    def test_reconnects(self) -> None:
        """
        Subscriptions over a connection that drops reconnect, over one
        connection again.
        """
        subs = []
        for n in range(5):
            subs.append((yield self.client.subscribe(f"r.{n}")))
        for connection in list(self.server.site.connections._open):
            connection.transport.abortConnection()
        yield until(lambda: self.server.broker.subscribers == 5 and all(s.connected for s in subs))
        self.assertEqual(len(self.server.site.connections), 1)
        yield self.client.publish("r.3", b"back")
        self.assertEqual((yield bounded(subs[3].get())), b"back")


class FallbackTests(TestCase):
    """
    Servers without memmq.v1.
    """

    timeout = 60

    @inlineCallbacks
    def test_server_without_mux(self) -> None:
        """
        Against a server that does not speak memmq.v1, topics fall back to
        one connection each, and patterns and groups fail saying why.
        """
        server = RunningServer(self, mux=False)
        c = new_client(self, [server.url])
        a = yield c.subscribe("a")
        b = yield c.subscribe("b")
        self.assertEqual(len(server.site.connections), 2)
        yield c.publish("b", b"x")
        self.assertEqual((yield bounded(b.get())), b"x")
        failure = yield self.assertFailure(c.subscribe(pattern="a.*"), Exception)
        self.assertIn("memmq.v1", str(failure))
        yield a.close()

    @inlineCallbacks
    def test_asim_mq_server(self) -> None:
        """
        Against asim/mq's own server the client falls back and works.
        """
        if not os.path.exists(ASIM_MQ):
            raise SkipTest(f"{ASIM_MQ} not built")
        port = dead_port()
        child = Child()
        spawn(self, child, [ASIM_MQ, f"--address=127.0.0.1:{port}"])
        c = new_client(self, [f"127.0.0.1:{port}"], retries=20)
        for _ in range(100):
            try:
                yield c.publish("warm", b"")
                break
            except Exception:
                yield sleep(0.1)
        sub = yield c.subscribe("asim")
        # asim/mq's server follows the topic a moment after the handshake
        # and says nothing of it: publish until the subscriber hears.
        heard = sub.get()
        for _ in range(int(WAIT / 0.1)):
            yield c.publish("asim", b"hello")
            yield sleep(0.1)
            if heard.called:
                break
        self.assertEqual((yield bounded(heard)), b"hello")

    @inlineCallbacks
    def test_asim_mq_client_sees_nothing_new(self) -> None:
        """
        asim/mq's own client subscribing to memmq gets bare payloads, as
        before, while memmq.v1 clients share the server.
        """
        if not os.path.exists(ASIM_MQ):
            raise SkipTest(f"{ASIM_MQ} not built")
        server = RunningServer(self)
        mux = yield server.client.connect(server.url, "/sub", None, protocol=MuxCollector, protocols=["memmq.v1"])
        yield mux.request(op="sub", id=1, pattern=">")
        child = Child()
        argv = [ASIM_MQ, "--client", "--subscribe", "--topic=old.style", f"--servers=127.0.0.1:{server.port}"]
        spawn(self, child, argv)
        yield until(lambda: server.broker.topic("old.style") is not None)
        yield server.client.publish(server.url, "old.style", b"plain payload")
        yield until(lambda: b"plain payload" in child.stdout)
        self.assertNotIn(b"old.style", child.stdout)
        self.assertEqual((yield mux.wait_for(1)), [("old.style", b"plain payload")])
        mux.sendClose(1000)
        yield mux.wait_closed()


class ProxyTests(TestCase):
    """
    A proxy's upstream subscriptions over one connection per server.
    """

    timeout = 60

    @inlineCallbacks
    def test_one_upstream_connection(self) -> None:
        """
        Many topics, a pattern and a group through a proxy make one
        upstream connection per upstream server for the plain ones and
        one for the group; each subscriber gets each message once.
        """
        upstream = RunningServer(self)
        upstream_client = new_client(self, [upstream.url])
        proxy = ProxyBroker(upstream_client, Broker(), reactor)
        front = RunningServer(self, broker=proxy)
        subs = {}
        for topic in ("p.a", "p.b", "p.c"):
            subs[topic] = yield front.client.subscribe(front.url, topic)
        star = yield front.client.connect(front.url, "/sub?pattern=p.*", None)
        workers = []
        for _ in range(2):
            workers.append((yield front.client.connect(front.url, "/sub?topic=p.a&group=g", None)))
        yield until(lambda: upstream.broker.subscribers == 5)
        self.assertEqual(len(upstream.site.connections), 2)
        for n in range(10):
            yield upstream.client.publish(upstream.url, "p.a", b"%d" % n)
        yield upstream.client.publish(upstream.url, "p.b", b"b")
        self.assertEqual((yield subs["p.a"].wait_for(10)), [b"%d" % n for n in range(10)])
        self.assertEqual((yield subs["p.b"].wait_for(1)), [b"b"])
        self.assertEqual((yield star.wait_for(11)), [b"%d" % n for n in range(10)] + [b"b"])
        yield until(lambda: sum(len(w.messages) for w in workers) == 10)
        self.assertEqual(sorted(int(m) for w in workers for m in w.messages), list(range(10)))
        yield sleep(0.1)
        self.assertEqual(len(subs["p.a"].messages), 10)
        self.assertEqual(len(star.messages), 11)
