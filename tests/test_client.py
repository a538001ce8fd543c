"""
Tests for memmq.client: publishing and subscribing through the client
library against real servers on loopback, over real TLS.
"""

from __future__ import annotations

import os
import zlib

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults, inlineCallbacks
from twisted.names import client as dns_client
from twisted.names import dns
from twisted.names.server import DNSServerFactory
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server
from zope.interface import implementer
from zope.interface.verify import verifyObject

from memmq import client
from memmq.broker import Message
from memmq.errors import InvalidTopic, MemmqError
from memmq.interfaces import ISubscriber, ISubscription
from memmq.tls import TLSConfigError, self_signed_certificate
from tests.support import RunningServer, Zone, bounded, dead_port, new_client, sleep, until


class PublishSubscribeTests(TestCase):
    """
    One server: asim/mq's Go client calls, in Python.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = RunningServer(self)
        self.client = new_client(self, [self.server.url])

    @inlineCallbacks
    def test_subscribe_get(self) -> None:
        """
        C{subscribe(topic)} fires with a subscription once it is open;
        C{get()} gives each published payload in order (Go's
        C{data := <-ch}).
        """
        sub = yield self.client.subscribe("example")
        self.assertEqual(self.server.broker.topic("example").subscriptions.__len__(), 1)
        payloads = [b"bar", b"", "ü".encode(), bytes(range(256))]
        for payload in payloads:
            yield self.client.publish("example", payload)
        got = (yield _take(sub, len(payloads)))
        self.assertEqual(got, payloads)

    @inlineCallbacks
    def test_async_iteration(self) -> None:
        """
        A subscription is an async iterator of payloads.
        """
        sub = yield self.client.subscribe("aiter")

        async def take(n):
            got = []
            async for payload in sub:
                got.append(payload)
                if len(got) == n:
                    break
            return got

        taking = ensureDeferred(take(3))
        for i in range(3):
            yield self.client.publish("aiter", b"%d" % i)
        self.assertEqual((yield bounded(taking)), [b"0", b"1", b"2"])

    @inlineCallbacks
    def test_callback(self) -> None:
        """
        With a callable, each payload is passed to it.
        """
        got = []
        yield self.client.subscribe("cb", got.append)
        for i in range(5):
            yield self.client.publish("cb", b"m%d" % i)
        yield until(lambda: len(got) == 5)
        self.assertEqual(got, [b"m%d" % i for i in range(5)])

    @inlineCallbacks
    def test_concurrent_publishes_keep_order(self) -> None:
        """
        Publishes made without waiting for each other arrive in the order
        they were made, over the pooled connections.
        """
        sub = yield self.client.subscribe("order")
        yield gatherResults([self.client.publish("order", b"%04d" % i) for i in range(300)])
        got = (yield _take(sub, 300))
        self.assertEqual(got, [b"%04d" % i for i in range(300)])

    @inlineCallbacks
    def test_unsubscribe_closes_connection(self) -> None:
        """
        Unsubscribing really closes the connection: the server frees the
        topic, and a pending get() fails.
        """
        sub = yield self.client.subscribe("bye")
        pending = sub.get()
        yield bounded(self.client.unsubscribe(sub))
        yield until(lambda: self.server.broker.topic("bye") is None)
        failure = yield bounded(self.assertFailure(pending, MemmqError))
        self.assertIn("closed", str(failure))

    @inlineCallbacks
    def test_bad_topic(self) -> None:
        """
        A bad topic fails at once with InvalidTopic, for both calls.
        """
        yield self.assertFailure(self.client.publish("", b"x"), InvalidTopic)
        yield self.assertFailure(self.client.subscribe("a\x00b"), InvalidTopic)

    @inlineCallbacks
    def test_refused_publish_not_retried(self) -> None:
        """
        A publish the server refuses (413) fails at once with the server's
        reason, without retrying.
        """
        server = RunningServer(self, max_message_size=10)
        c = new_client(self, [server.url], retries=3)
        error = yield self.assertFailure(c.publish("t", b"x" * 11), client.PublishError)
        self.assertEqual(error.failures, {server.url: "HTTP 413: message larger than 10 bytes"})
        self.assertEqual(server.broker.published, 0)

    @inlineCallbacks
    def test_attach(self) -> None:
        """
        attach(topic, subscriber) returns the subscription at once and
        delivers Messages to the ISubscriber, as a broker does.
        """
        got = []

        @implementer(ISubscriber)
        class Recorder:
            def deliver(self, message):
                got.append(message)

        sub = self.client.attach("broker", Recorder())
        self.assertTrue(verifyObject(ISubscription, sub))
        yield until(lambda: sub.connected == 1)
        yield self.client.publish("broker", b"as a broker")
        yield until(lambda: got)
        self.assertIsInstance(got[0], Message)
        self.assertEqual((got[0].topic, got[0].payload), ("broker", b"as a broker"))
        self.client.unsubscribe(sub)
        yield until(lambda: self.server.broker.topic("broker") is None)


class ClusterTests(TestCase):
    """
    Several servers: every one (All) or one per topic (Shard).
    """

    timeout = 60

    def setUp(self) -> None:
        self.servers = [RunningServer(self) for _ in range(3)]
        self.urls = [s.url for s in self.servers]

    @inlineCallbacks
    def test_all(self) -> None:
        """
        With All, a subscription has a connection to every server and gets
        what is published on each; a publish reaches every server.
        """
        c = new_client(self, self.urls)
        sub = yield c.subscribe("cluster")
        self.assertEqual(sub.connected, 3)
        for i, s in enumerate(self.servers):
            yield s.client.publish(s.url, "cluster", b"direct %d" % i)
        got = sorted((yield _take(sub, 3)))
        self.assertEqual(got, [b"direct 0", b"direct 1", b"direct 2"])
        direct = yield gatherResults([s.client.subscribe(s.url, "cluster") for s in self.servers])
        yield c.publish("cluster", b"to all")
        for d in direct:
            self.assertEqual((yield d.wait_for(1)), [b"to all"])
        # ... and the client's own subscription gets it once per server.
        self.assertEqual((yield _take(sub, 3)), [b"to all"] * 3)

    @inlineCallbacks
    def test_shard(self) -> None:
        """
        With Shard, each topic goes to servers[crc32(topic) % 3], the server
        the Go client picks, and only there.
        """
        c = new_client(self, self.urls, selector=client.selector.Shard())
        topics = ["example", "news", "a", "orders/eu", "ü"]
        for topic in topics:
            yield c.publish(topic, b"x")
        counts = [s.broker.published for s in self.servers]
        expected = [0, 0, 0]
        for topic in topics:
            expected[zlib.crc32(topic.encode()) % 3] += 1
        self.assertEqual(counts, expected)
        sub = yield c.subscribe("news")
        self.assertEqual(sub.servers, [self.urls[zlib.crc32(b"news") % 3]])


class _FlakyPublish(resource.Resource):
    """
    /pub that answers 503 to its first C{failures} requests, then 200.
    """

    isLeaf = True

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.requests = 0

    def render_POST(self, request):
        self.requests += 1
        if self.requests <= self.failures:
            request.setResponseCode(503)
            return b"not now\n"
        return b""


class RetryTests(TestCase):
    """
    Each server is tried 1 + retries times; failures are reported per server.
    """

    timeout = 60

    def _flaky(self, failures: int) -> tuple[str, _FlakyPublish]:
        flaky = _FlakyPublish(failures)
        root = resource.Resource()
        root.putChild(b"pub", flaky)
        certificate = self_signed_certificate("127.0.0.1")
        port = reactor.listenSSL(0, server.Site(root), certificate.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"https://127.0.0.1:{port.getHost().port}", flaky

    @inlineCallbacks
    def test_retry_succeeds(self) -> None:
        """
        A server that fails once then accepts: with one retry, the publish
        succeeds (asim/mq's client reports an error there).
        """
        url, flaky = self._flaky(failures=1)
        c = new_client(self, [url], retries=1)
        yield c.publish("t", b"x")
        self.assertEqual(flaky.requests, 2)

    @inlineCallbacks
    def test_no_retry_fails(self) -> None:
        """
        Without retries the same server fails the publish, with its reason.
        """
        url, flaky = self._flaky(failures=1)
        c = new_client(self, [url], retries=0)
        error = yield self.assertFailure(c.publish("t", b"x"), client.PublishError)
        self.assertEqual(error.failures, {url: "HTTP 503: not now"})
        self.assertEqual(flaky.requests, 1)

    @inlineCallbacks
    def test_failures_named(self) -> None:
        """
        A publish to three servers of which two are down fails naming those
        two and why; the live one received it exactly once.
        """
        live = RunningServer(self)
        down = [f"https://127.0.0.1:{dead_port()}" for _ in range(2)]
        c = new_client(self, [down[0], live.url, down[1]], retries=2)
        error = yield self.assertFailure(c.publish("t", b"x"), client.PublishError)
        self.assertEqual(error.failures, {down[0]: "connection refused", down[1]: "connection refused"})
        self.assertEqual(str(error), f"publish to 't' failed on {down[0]}: connection refused; "
                                     f"{down[1]}: connection refused")
        self.assertEqual(live.broker.published, 1)

    @inlineCallbacks
    def test_subscribe_failure_named(self) -> None:
        """
        A subscription that cannot reach one of its servers fails naming it,
        and leaves no connection open to the others.
        """
        live = RunningServer(self)
        dead = f"https://127.0.0.1:{dead_port()}"
        c = new_client(self, [live.url, dead], retries=1)
        error = yield self.assertFailure(c.subscribe("t"), client.SubscribeError)
        self.assertEqual(error.failures, {dead: "connection refused"})
        yield until(lambda: live.broker.topic("t") is None)


class ReconnectionTests(TestCase):
    """
    A subscription follows its server through a restart.
    """

    timeout = 60

    @inlineCallbacks
    def test_server_restart(self) -> None:
        """
        The server is stopped and started again on the same port: the
        subscription reconnects by itself, and messages published after the
        restart arrive.
        """
        first = RunningServer(self)
        c = new_client(self, [first.url])
        sub = yield c.subscribe("restart")
        yield c.publish("restart", b"before")
        self.assertEqual((yield bounded(sub.get())), b"before")
        yield first.stop()
        yield until(lambda: sub.connected == 0)
        restarted = RunningServer(self, certificate=first.certificate, address=f"127.0.0.1:{first.port}")
        yield until(lambda: sub.connected == 1)
        yield c.publish("restart", b"after")
        self.assertEqual((yield bounded(sub.get())), b"after")
        self.assertEqual(restarted.broker.topic("restart").published, 1)

    @inlineCallbacks
    def test_back_server_cuts_backoff(self) -> None:
        """
        Subscriptions waiting out a long backoff to reconnect to a server
        try at once when the client reaches that server again: by a
        publish, or by another subscription that connects there.
        """
        from memmq.client import subscriptions

        first = RunningServer(self)
        c = new_client(self, [first.url])
        subs = []
        for topic in ("a", "b", "c"):
            subs.append((yield c.subscribe(topic)))
        yield c.publish("a", b"warm")  # the publish connection is up
        yield first.stop()
        yield until(lambda: all(sub.connected == 0 for sub in subs))
        # From now on every wait to reconnect is a minute.
        self.patch(subscriptions, "backoff", lambda attempt: 60.0)
        yield sleep(0.5)  # the first retries (0.1 s) fail: servers down
        restarted = RunningServer(self, certificate=first.certificate, address=f"127.0.0.1:{first.port}")
        self.assertEqual(sum(sub.connected for sub in subs), 0)
        yield c.publish("a", b"after")  # reconnects the publisher
        yield until(lambda: all(sub.connected == 1 for sub in subs))
        self.assertTrue(all(restarted.broker.topic(topic) is not None for topic in ("a", "b", "c")))

    @inlineCallbacks
    def test_close_stops_reconnecting(self) -> None:
        """
        Closing a subscription whose server is down stops the attempts.
        """
        first = RunningServer(self)
        c = new_client(self, [first.url])
        sub = yield c.subscribe("gone")
        yield first.stop()
        yield until(lambda: sub.connected == 0)
        yield bounded(sub.close())
        restarted = RunningServer(self, certificate=first.certificate, address=f"127.0.0.1:{first.port}")
        yield sleep(0.5)
        self.assertIsNone(restarted.broker.topic("gone"))


@inlineCallbacks
def _take(sub, count: int):
    """
    The next C{count} payloads of C{sub}, each wait bounded.
    """
    got = []
    for _ in range(count):
        got.append((yield bounded(sub.get())))
    return got


class DNSFollowTests(TestCase):
    """
    With the DNS resolver, subscriptions follow the servers a name resolves
    to, as the records change.
    """

    timeout = 60

    @inlineCallbacks
    def test_follow_records(self) -> None:
        """
        A server added to the name is subscribed to; one removed is closed.
        """
        a = RunningServer(self)
        try:
            b = RunningServer(self, address=f"127.0.0.2:{a.port}")
        except SystemExit:
            raise SkipTest("cannot listen on 127.0.0.2 here") from None
        zone = Zone()
        zone.addresses["memmq.test"] = ["127.0.0.1"]
        factory = DNSServerFactory(authorities=[zone])
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        lookup = dns_client.Resolver(servers=[("127.0.0.1", udp.getHost().port)], reactor=reactor)
        c = new_client(
            self, [f"memmq.test:{a.port}"], resolver=client.resolver.DNS(resolver=lookup), resolve_interval=0.2
        )
        sub = yield c.subscribe("dns")
        self.assertEqual(sub.servers, [f"https://127.0.0.1:{a.port}"])
        zone.addresses["memmq.test"] = ["127.0.0.1", "127.0.0.2"]
        yield until(lambda: sub.connected == 2)
        self.assertIsNotNone(b.broker.topic("dns"))
        zone.addresses["memmq.test"] = ["127.0.0.2"]
        yield until(lambda: a.broker.topic("dns") is None)
        self.assertEqual(sub.servers, [f"https://127.0.0.2:{a.port}"])
        yield b.client.publish(b.url, "dns", b"via b")
        self.assertEqual((yield bounded(sub.get())), b"via b")


class TLSVerificationTests(TestCase):
    """
    Certificates are not verified by default; with a CA file they are.
    """

    timeout = 60

    def _ca_file(self, certificate) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(certificate.chain_pem())
        return path

    @inlineCallbacks
    def test_verified(self) -> None:
        """
        With the server's certificate as the CA, publish and subscribe work.
        """
        s = RunningServer(self)
        c = new_client(self, [s.url], ca_file=self._ca_file(s.certificate))
        sub = yield c.subscribe("tls")
        yield c.publish("tls", b"checked")
        self.assertEqual((yield bounded(sub.get())), b"checked")

    @inlineCallbacks
    def test_wrong_authority(self) -> None:
        """
        With another CA, the server is refused: publish and subscribe fail.
        """
        s = RunningServer(self)
        c = new_client(self, [s.url], retries=0, ca_file=self._ca_file(self_signed_certificate("127.0.0.1")))
        error = yield self.assertFailure(c.publish("tls", b"x"), client.PublishError)
        self.assertIn("certificate verify failed", error.failures[s.url])
        yield self.assertFailure(c.subscribe("tls"), client.SubscribeError)
        self.assertEqual(s.broker.published, 0)

    def test_unreadable_ca(self) -> None:
        """
        A CA file that cannot be read is a clear error at once.
        """
        error = self.assertRaises(TLSConfigError, client.new, servers=["x:1"], ca_file="/nonexistent/ca.pem")
        self.assertIn("/nonexistent/ca.pem", str(error))


class SeedExampleTests(TestCase):
    """
    asim/mq's client examples, as the README shows them in Python.
    """

    timeout = 60

    @inlineCallbacks
    def test_default_client(self) -> None:
        """
        client.publish / client.subscribe go through the default client,
        which talks to localhost:8081.
        """
        default = client.default()
        self.addCleanup(default.close)
        self.assertEqual(default.servers, ["https://localhost:8081"])
        # The calls run as the README writes them, but the server is on a
        # free port, not 8081: that is where a user's own memmq runs (the
        # README's first command), and a test suite run beside it must
        # neither skip this test nor talk to that server.  Only the port
        # differs: the default client is made as client.default() makes
        # it, for localhost and that port.
        s = RunningServer(self, address="localhost:0")
        self.patch(client, "_default", client.new(servers=[f"localhost:{s.port}"]))
        self.addCleanup(lambda: client.default().close())
        sub = yield client.subscribe("example")
        yield client.publish("example", b"bar")
        data = yield bounded(sub.get())
        self.assertEqual(data, b"bar")
        self.assertEqual(s.broker.topic("example").published, 1)
