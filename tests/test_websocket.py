"""
Tests for memmq.server.websocket: subscribing and publishing over WebSocket,
end to end over real TLS on loopback with autobahn clients.
"""

from __future__ import annotations

import base64
import hashlib

import treq
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from memmq.internals.autobahn_private import STAND_IN_KEY, WELL_FORMED_KEY
from tests.support import RunningServer, SlowBroker, bounded, held_then_dropped, until


class SubscriberTests(TestCase):
    """
    /sub over WebSocket.
    """

    timeout = 120

    def setUp(self) -> None:
        self.server = RunningServer(self, max_buffered_messages=50, max_buffered_bytes=1 << 20)
        self.client = self.server.client

    @inlineCallbacks
    def test_fifty_subscribers_thousand_messages(self) -> None:
        """
        50 subscribers each receive all of 1,000 messages published over
        HTTP, in publish order, nothing lost.
        """
        subs = yield DeferredList(
            [self.client.subscribe(self.server.url, "fan") for _ in range(50)], fireOnOneErrback=True
        )
        subs = [s for _, s in subs]
        self.assertEqual(self.server.broker.topic("fan").subscriptions.__len__(), 50)
        expected = [b"message %d" % i for i in range(1000)]
        for payload in expected:
            code, _ = yield self.client.publish(self.server.url, "fan", payload)
            self.assertEqual(code, 200)
        for sub in subs:
            messages = yield sub.wait_for(1000)
            self.assertEqual(messages, expected)
        self.assertEqual(sum(s.dropped for s in self.server.broker.topic("fan").subscriptions), 0)

    @inlineCallbacks
    def test_burst_read_from_the_topic_log(self) -> None:
        """
        A burst from a WebSocket publisher (no answer awaited) reaches 20
        subscribers, each message once and in order, though each write
        carries many messages read from the topic's log (more than one of
        its chunks); nothing is dropped and the log is let go afterwards.
        """
        subs = yield DeferredList(
            [self.client.subscribe(self.server.url, "burst") for _ in range(20)], fireOnOneErrback=True
        )
        subs = [s for _, s in subs]
        pub = yield self.client.connect(self.server.url, "/pub", "burst")
        expected = [b"burst %d" % i for i in range(600)]
        for payload in expected:
            pub.sendMessage(payload, isBinary=True)
        for sub in subs:
            messages = yield sub.wait_for(600)
            self.assertEqual(messages, expected)
        topic = self.server.broker.topic("burst")
        self.assertEqual(sum(s.dropped for s in topic.subscriptions), 0)
        self.assertEqual(self.server.broker.delivered, 20 * 600)
        self.assertEqual(topic.waiting, 0)
        self.assertIsNone(topic.tail)
        pub.sendClose()
        yield pub.wait_closed()
        for sub in subs:
            sub.transport.abortConnection()
        yield until(lambda: self.server.broker.subscribers == 0)

    @inlineCallbacks
    def test_disconnect_unsubscribes_at_once(self) -> None:
        """
        A subscriber that goes away is unsubscribed when its connection is
        lost, without waiting for a write to fail; the topic is freed.
        """
        sub = yield self.client.subscribe(self.server.url, "brief")
        self.assertIsNotNone(self.server.broker.topic("brief"))
        sub.transport.loseConnection()
        yield until(lambda: self.server.broker.topic("brief") is None)
        self.assertEqual(self.server.broker.subscribers, 0)
        self.assertEqual(len(self.server.site.connections), 0)

    @inlineCallbacks
    def test_bad_topic_refused(self) -> None:
        """
        A WebSocket subscribe without a topic is refused with 400 before
        any upgrade.
        """
        yield self.assertFailure(self.client.subscribe(self.server.url, ""), ConnectionError)
        response = yield bounded(self.client.http.get(
            self.server.url + "/sub",
            headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        ))
        self.assertEqual(response.code, 400)
        self.assertIn(b"no topic", (yield treq.content(response)))
        self.assertEqual(self.server.broker.topics, 0)

    @inlineCallbacks
    def test_stalled_subscriber_does_not_hold_others(self) -> None:
        """
        A subscriber that stops reading gets its messages buffered up to the
        limit and then dropped, counted for it and its topic, while another
        subscriber of the topic receives every message in order.
        """
        slow = yield self.client.subscribe(self.server.url, "busy")
        fast = yield self.client.subscribe(self.server.url, "busy")
        slow.transport.pauseProducing()  # reads nothing more
        payload = b"x" * 16384
        count = 1500  # 24 MiB: more than the socket buffers hold
        for i in range(count):
            code, _ = yield self.client.publish(self.server.url, "busy", b"%06d" % i + payload)
            self.assertEqual(code, 200)
        messages = yield fast.wait_for(count)
        self.assertEqual([m[:6] for m in messages], [b"%06d" % i for i in range(count)])
        stalled = held_then_dropped(self, self.server.broker.topic("busy"))
        # What the stalled one does get, once it reads again, is in order.
        slow.transport.resumeProducing()
        yield until(lambda: stalled.buffered == 0)
        yield self.client.publish(self.server.url, "busy", b"999999 last")
        yield until(lambda: slow.messages and slow.messages[-1] == b"999999 last")
        numbers = [int(m[:6]) for m in slow.messages]
        self.assertEqual(numbers, sorted(numbers))
        self.assertEqual(len(numbers) + stalled.dropped, count + 1)

    @inlineCallbacks
    def test_shutdown_closes_going_away(self) -> None:
        """
        Stopping the server closes every WebSocket subscriber with 1001.
        """
        subs = []
        for i in range(3):
            subs.append((yield self.client.subscribe(self.server.url, "t%d" % i)))
        yield self.server.stop()
        codes = yield DeferredList([s.wait_closed() for s in subs])
        self.assertEqual([c for _, c in codes], [1001, 1001, 1001])


class PublisherTests(TestCase):
    """
    /pub over WebSocket.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = RunningServer(self, max_message_size=1000)
        self.client = self.server.client

    @inlineCallbacks
    def test_each_message_published_in_order(self) -> None:
        """
        Every message received on a /pub WebSocket, text or binary, is
        published in order.
        """
        sub = yield self.client.subscribe(self.server.url, "ws")
        pub = yield self.client.connect(self.server.url, "/pub", "ws")
        for i in range(200):
            pub.sendMessage(b"binary %d" % i, isBinary=True)
        pub.sendMessage("text ✓".encode(), isBinary=False)
        messages = yield sub.wait_for(201)
        self.assertEqual(messages, [b"binary %d" % i for i in range(200)] + ["text ✓".encode()])

    @inlineCallbacks
    def test_backlog_bounded(self) -> None:
        """
        A publisher faster than its publishes are answered (a proxy's
        upstream, a durable write) is not read past 1,000 unanswered
        publishes; as they are answered it is read again, and every
        message is published, in order.
        """
        broker = SlowBroker()
        published: list[bytes] = []
        original = broker.publish

        def publish(topic, payload, hops=0):
            published.append(payload)
            return original(topic, payload, hops)

        broker.publish = publish
        server = RunningServer(self, broker=broker)
        pub = yield server.client.connect(server.url, "/pub", "backlog")
        payloads = [b"%05d" % i + b"." * 495 for i in range(5000)]
        for payload in payloads:
            pub.sendMessage(payload, isBinary=True)
        yield until(lambda: len(broker.pending) > 1000)
        yield deferLater(reactor, 0.3, lambda: None)
        # Paused once past 1,000; what one read had brought in already
        # (64 KiB: ~130 of these) is still taken.
        self.assertLessEqual(len(broker.pending), 1000 + 140)
        while len(published) < len(payloads):
            waiting, broker.pending[:] = list(broker.pending), []
            for d in waiting:
                d.callback(None)
            yield until(lambda: broker.pending or len(published) == len(payloads))
        self.assertEqual(published, payloads)

    @inlineCallbacks
    def test_oversized_frame_closes_1009(self) -> None:
        """
        A message over --max_message_size closes the publisher with 1009,
        and is not published.
        """
        sub = yield self.client.subscribe(self.server.url, "big")
        pub = yield self.client.connect(self.server.url, "/pub", "big")
        pub.sendMessage(b"z" * 1001, isBinary=True)
        code = yield pub.wait_closed()
        self.assertEqual(code, 1009)
        yield self.client.publish(self.server.url, "big", b"after")
        self.assertEqual((yield sub.wait_for(1)), [b"after"])

    @inlineCallbacks
    def test_bad_topic_refused(self) -> None:
        """
        A /pub WebSocket with a bad topic is refused.
        """
        yield self.assertFailure(self.client.connect(self.server.url, "/pub", "a%01b"), ConnectionError)


class _RawHandshake(Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.headers_done: Deferred = Deferred()
        self.more: Deferred | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and not self.headers_done.called:
            self.headers_done.callback(self.data)
        elif self.more is not None and not self.more.called:
            self.more, d = None, self.more
            d.callback(self.data)


class SeedKeyTests(TestCase):
    """
    asim/mq accepts any non-empty Sec-WebSocket-Key; so does memmq.
    """

    timeout = 30

    def test_stand_in_key_is_well_formed(self) -> None:
        """
        The key autobahn validates in place of a loose one is well formed.
        """
        self.assertTrue(WELL_FORMED_KEY.fullmatch(STAND_IN_KEY))
        self.assertEqual(len(base64.b64decode(STAND_IN_KEY)), 16)

    @inlineCallbacks
    def test_readme_key_memmq(self) -> None:
        """
        The README's handshake (Sec-Websocket-Key: memmq) is accepted, the
        accept hash is computed from the key as sent, and messages follow.
        """
        server = RunningServer(self)
        request = (
            b"GET /sub?topic=example HTTP/1.1\r\nHost: localhost:8081\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nOrigin:http://localhost:8081\r\nSec-Websocket-Version: 13\r\n"
            b"Sec-Websocket-Key: memmq\r\n\r\n"
        )
        proto = _RawHandshake(request)
        endpoint = endpoints.wrapClientTLS(
            server.client.tls_options(), endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
        )
        yield endpoint.connect(Factory.forProtocol(lambda: proto))
        self.addCleanup(lambda: proto.transport.abortConnection())
        head = yield bounded(proto.headers_done)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        accept = base64.b64encode(hashlib.sha1(b"memmq258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.assertIn(b"Sec-WebSocket-Accept: " + accept + b"\r\n", head)
        proto.more = Deferred()
        more = proto.more
        yield server.client.publish(server.url, "example", b"a completely arbitrary message")
        data = yield bounded(more)
        self.assertTrue(data.endswith(b"\x82\x1ea completely arbitrary message"), data[-40:])



class PublisherFailureTests(TestCase):
    """
    A WebSocket publisher, which gets no answer per message, is told by
    its connection's close when its messages stop being taken.
    """

    timeout = 30

    @inlineCallbacks
    def test_other_processes_away(self) -> None:
        """
        While the server cannot reach its other processes (here its
        backplane is down), a WebSocket publisher's next message closes its
        connection with 1013, try again later; the subscribers had what
        came before, and the server still serves.
        """
        from memmq.backplane.broker import BackplaneBroker
        from memmq.backplane.memory import MemoryHub
        from memmq.broker import Broker

        backplane = MemoryHub().member()
        broker = BackplaneBroker(Broker(), backplane)
        yield bounded(broker.start())
        server = RunningServer(self, broker=broker)
        subscriber = yield server.client.subscribe(server.url, "w")
        publisher = yield server.client.connect(server.url, "/pub", "w")
        publisher.sendMessage(b"taken", isBinary=True)
        yield subscriber.wait_for(1)
        backplane.healthy = False
        publisher.sendMessage(b"not taken", isBinary=True)
        code = yield publisher.wait_closed()
        self.assertEqual(code, 1013)
        self.assertEqual(subscriber.messages, [b"taken"])
        backplane.healthy = True
        again = yield server.client.connect(server.url, "/pub", "w")
        again.sendMessage(b"again", isBinary=True)
        yield subscriber.wait_for(2)
        self.assertEqual(subscriber.messages, [b"taken", b"again"])
