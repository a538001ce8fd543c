"""
Tests for memmq.v1 (memmq.mux_protocol, memmq.server.mux): the frame codec
in memory, then the protocol against a scripted client on real TLS over
loopback, and the old /sub with pattern= and group=.
"""

from __future__ import annotations

import os

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.broker import Broker, Message
from memmq.mux_protocol import (
    SUBPROTOCOL,
    ProtocolError,
    decode_control,
    decode_message,
    decode_publish,
    encode_message,
    encode_publish,
)
from memmq.persist import Persister, PersistingBroker
from memmq.server.mux import mux_frame
from tests.support import MuxCollector, RunningServer, bounded, until


class CodecTests(SynchronousTestCase):
    """
    The binary frames and control messages.
    """

    def test_message_layout(self) -> None:
        """
        A message is the topic's length (2 bytes, big endian), the topic
        in UTF-8, the payload as it is.
        """
        self.assertEqual(encode_message("é.b", b"\x00\xff"), b"\x00\x04\xc3\xa9.b\x00\xff")
        self.assertEqual(decode_message(b"\x00\x04\xc3\xa9.b\x00\xff"), ("é.b", b"\x00\xff"))
        self.assertEqual(decode_message(encode_message("t", b"")), ("t", b""))

    def test_publish_layout(self) -> None:
        """
        A publish is the ack id (4 bytes), the topic's length (2 bytes),
        the topic, the payload.
        """
        frame = encode_publish(7, "t", b"pay")
        self.assertEqual(frame, b"\x00\x00\x00\x07\x00\x01tpay")
        self.assertEqual(decode_publish(frame), (7, "t", b"pay"))

    def test_malformed(self) -> None:
        """
        Short frames, topics past the end, non-UTF-8 topics and text frames
        that are not JSON objects with an op are protocol errors.
        """
        for bad in (b"", b"\x00", b"\x00\x05abc", b"\x00\x01\xff"):
            self.assertRaises(ProtocolError, decode_message, bad)
        for bad in (b"\x00\x00\x00", b"\x00\x00\x00\x01\x00\x09t"):
            self.assertRaises(ProtocolError, decode_publish, bad)
        for bad in (b"nope", b"[1]", b'{"id": 1}', b'{"op": 3}'):
            self.assertRaises(ProtocolError, decode_control, bad)

    def test_framed_once(self) -> None:
        """
        A message's frame is computed once and is the same bytes for
        every connection.
        """
        message = Message("t", b"x" * 200)
        first = message.framed(mux_frame)
        self.assertIs(message.framed(mux_frame), first)
        self.assertEqual(first[:2], b"\x82\x7e")


class ProtocolTests(TestCase):
    """
    memmq.v1 against a scripted client over real TLS.
    """

    timeout = 120

    def setUp(self) -> None:
        self.server = RunningServer(self, max_buffered_messages=20, max_buffered_bytes=1 << 20,
                                    max_message_size=1000)
        self.client = self.server.client
        # Runs after every connection's own clean-up: the server has seen
        # them all go before it stops.
        self.addCleanup(lambda: until(lambda: len(self.server.site.connections) == 0))

    @inlineCallbacks
    def connect(self):
        ws = yield self.client.connect(self.server.url, "/sub", None, protocol=MuxCollector, protocols=[SUBPROTOCOL])
        self.addCleanup(self.close, ws)
        return ws

    @inlineCallbacks
    def close(self, ws):
        """
        Close C{ws} cleanly, and wait until the server has seen it go.
        """
        if ws.close_code is None:
            ws.sendClose(1000)
            yield ws.wait_closed()

    @inlineCallbacks
    def test_negotiated(self) -> None:
        """
        The server selects memmq.v1 when offered on /sub without a topic.
        """
        ws = yield self.connect()
        self.assertEqual(ws.subprotocol, SUBPROTOCOL)

    @inlineCallbacks
    def test_refused_without_subprotocol(self) -> None:
        """
        Without the subprotocol, /sub without a topic is refused as before.
        """
        yield self.assertFailure(self.client.connect(self.server.url, "/sub", None), ConnectionError)

    @inlineCallbacks
    def test_control_messages_and_errors(self) -> None:
        """
        Every request is answered by its id: ok, or an error with its code
        and one line.
        """
        ws = yield self.connect()
        cases = [
            ({"op": "sub", "id": 1, "topic": "a.b"}, "ok", None),
            ({"op": "sub", "id": 2, "pattern": "a.*"}, "ok", None),
            ({"op": "sub", "id": 3, "pattern": "a.*", "group": "g"}, "ok", None),
            ({"op": "sub", "id": 4, "topic": "a.b"}, "error", 409),
            ({"op": "sub", "id": 5, "pattern": "a.*.>.b"}, "error", 400),
            ({"op": "sub", "id": 6, "pattern": "a..b"}, "error", 400),
            ({"op": "sub", "id": 7, "topic": ""}, "error", 400),
            ({"op": "sub", "id": 8}, "error", 400),
            ({"op": "sub", "id": 9, "topic": "x", "pattern": "x.*"}, "error", 400),
            ({"op": "sub", "id": 10, "topic": "x", "since": 0}, "error", 400),
            ({"op": "sub", "id": 11, "topic": "x", "group": ""}, "error", 400),
            ({"op": "sub", "id": 12, "topic": 5}, "error", 400),
            ({"op": "unsub", "id": 13, "topic": "nope"}, "error", 404),
            ({"op": "unsub", "id": 14, "pattern": "a.*", "group": "g"}, "ok", None),
            ({"op": "frobnicate", "id": "x"}, "error", 400),
        ]
        for request, op, code in cases:
            reply = yield ws.request(**request)
            self.assertEqual(reply["op"], op, (request, reply))
            self.assertEqual(reply["id"], request["id"])
            if code is not None:
                self.assertEqual(reply["code"], code, reply)
                self.assertNotIn("\n", reply["error"])
        ws.sendMessage(b"not json", isBinary=False)
        replies = yield ws.wait_replies(len(cases) + 1)
        self.assertEqual((replies[-1]["code"], replies[-1]["id"]), (400, None))

    @inlineCallbacks
    def test_messages_carry_topic_once_per_connection(self) -> None:
        """
        Messages arrive with their topic, raw bytes, once per connection
        however many of its subscriptions match, in publish order; after
        unsub's ok nothing more of it arrives.
        """
        ws = yield self.connect()
        yield ws.request(op="sub", id=1, topic="a.b")
        yield ws.request(op="sub", id=2, pattern="a.*")
        yield ws.request(op="sub", id=3, pattern=">")
        payloads = [bytes([i % 256]) * (i % 7) for i in range(100)]
        for i, payload in enumerate(payloads):
            yield self.client.publish(self.server.url, "a.b" if i % 2 else "a.c", payload)
        messages = yield ws.wait_for(100)
        self.assertEqual(messages, [("a.b" if i % 2 else "a.c", p) for i, p in enumerate(payloads)])
        for request in ({"topic": "a.b"}, {"pattern": "a.*"}, {"pattern": ">"}):
            reply = yield ws.request(op="unsub", id=9, **request)
            self.assertEqual(reply["op"], "ok")
        yield self.client.publish(self.server.url, "a.b", b"late")
        self.assertEqual(self.server.broker.subscribers, 0)
        self.assertEqual(len(ws.messages), 100)

    @inlineCallbacks
    def test_publish(self) -> None:
        """
        A binary frame publishes; an ack id gets its ok, id 0 none; a bad
        topic, a payload over the limit or a short frame get an error.
        """
        ws = yield self.connect()
        other = yield self.connect()
        yield other.request(op="sub", id=1, topic="p")
        ws.publish("p", b"first", ack=0)
        ws.publish("p", b"\x00raw\xff", ack=42)
        replies = yield ws.wait_replies(1)
        self.assertEqual(replies, [{"op": "ok", "id": 42}])
        messages = yield other.wait_for(2)
        self.assertEqual(messages, [("p", b"first"), ("p", b"\x00raw\xff")])
        ws.publish("", b"x", ack=5)
        ws.publish("p", b"x" * 1001, ack=6)
        ws.sendMessage(b"\x00\x00", isBinary=True)
        replies = yield ws.wait_replies(4)
        self.assertEqual([(r["id"], r["code"]) for r in replies[1:]], [(5, 400), (6, 413), (0, 400)])

    @inlineCallbacks
    def test_group_across_connections(self) -> None:
        """
        A group spread over two connections: each message to one of them.
        """
        a = yield self.connect()
        b = yield self.connect()
        yield a.request(op="sub", id=1, pattern="jobs.*", group="w")
        yield b.request(op="sub", id=1, topic="jobs.x", group="w")
        for n in range(20):
            yield self.client.publish(self.server.url, "jobs.x", b"%d" % n)
        yield until(lambda: len(a.messages) + len(b.messages) >= 20)
        self.assertEqual((len(a.messages), len(b.messages)), (10, 10))
        got = sorted(int(p) for _, p in a.messages + b.messages)
        self.assertEqual(got, list(range(20)))

    @inlineCallbacks
    def test_slow_connection(self) -> None:
        """
        A connection that stops reading is paused as a whole: its
        subscriptions buffer up to their limits and drop past them,
        counted; publishing does not wait, and once it reads again it gets
        what was buffered, in order.
        """
        ws = yield self.connect()
        yield ws.request(op="sub", id=1, topic="slow.a")
        yield ws.request(op="sub", id=2, pattern="slow.*")
        ws.transport.pauseProducing()
        broker = self.server.broker
        payload = b"x" * 900
        sent = 0
        while not broker.dropped and sent < 100_000:
            for _ in range(200):
                broker.publish_now("slow.a", payload + b"%d" % sent)
                sent += 1
            yield deferLater(reactor, 0, lambda: None)
        self.assertGreater(broker.dropped, 0)
        for _ in range(200):
            broker.publish_now("slow.a", payload + b"%d" % sent)
            sent += 1
        ws.transport.resumeProducing()
        subscriptions = list(broker.topic("slow.a").subscriptions)
        subscriptions += list(broker._subjects[("slow.*", True, None)].members)
        yield until(lambda: all(s.buffered == 0 for s in subscriptions) and ws.messages)
        yield until(lambda: len(ws.messages) == sent - subscriptions[0].dropped)
        numbers = [int(p[900:]) for _, p in ws.messages]
        self.assertEqual(numbers, sorted(set(numbers)))
        self.assertLess(len(numbers), sent)
        self.assertEqual(len(numbers), sent - subscriptions[0].dropped)

    @inlineCallbacks
    def test_five_thousand_subscriptions(self) -> None:
        """
        5,000 subscriptions on one connection, each getting its messages.
        """
        ws = yield self.connect()
        for n in range(5000):
            ws.sendMessage(b'{"op":"sub","id":%d,"topic":"t.%d"}' % (n, n), isBinary=False)
        replies = yield ws.wait_replies(5000, seconds=60)
        self.assertEqual({r["op"] for r in replies}, {"ok"})
        self.assertEqual(self.server.broker.subscribers, 5000)
        self.assertEqual(len(self.server.site.connections), 1)
        for n in range(0, 5000, 500):
            yield self.client.publish(self.server.url, "t.%d" % n, b"%d" % n)
        messages = yield ws.wait_for(10)
        self.assertEqual(messages, [("t.%d" % n, b"%d" % n) for n in range(0, 5000, 500)])
        ws.transport.loseConnection()
        yield ws.wait_closed()
        yield until(lambda: self.server.broker.subscribers == 0)


class OldFormTests(TestCase):
    """
    /sub?pattern=&group= for asim/mq-style clients: bare payloads.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = RunningServer(self)
        self.client = self.server.client

    @inlineCallbacks
    def test_pattern_bare_payloads(self) -> None:
        """
        A WebSocket on /sub?pattern=a.* gets each payload alone, as an
        asim/mq client expects.
        """
        sub = yield self.client.connect(self.server.url, "/sub?pattern=a.*&group=g", None)
        yield self.client.publish(self.server.url, "a.b", b"one")
        yield self.client.publish(self.server.url, "a.c", b"two")
        messages = yield sub.wait_for(2)
        self.assertEqual(messages, [b"one", b"two"])

    @inlineCallbacks
    def test_invalid_pattern_400(self) -> None:
        """
        An invalid pattern is a 400 with one line.
        """
        response = yield bounded(self.client.http.get(self.server.url + "/sub", params={"pattern": "a.>.b"}))
        body = yield bounded(treq.content(response))
        self.assertEqual(response.code, 400)
        self.assertEqual(body.count(b"\n"), 1)
        self.assertIn(b"'>' may only be the last token", body)

    @inlineCallbacks
    def test_stats(self) -> None:
        """
        /stats lists patterns and groups with their member counts.
        """
        sub = yield self.client.connect(self.server.url, "/sub?pattern=a.*&group=g", None)
        response = yield bounded(self.client.http.get(self.server.url + "/stats"))
        body = yield bounded(treq.json_content(response))
        self.assertEqual(body["patterns"], [{"pattern": "a.*", "subscribers": 1}])
        self.assertEqual(body["groups"], [{"group": "g", "members": 1, "dropped": 0}])
        sub.transport.loseConnection()


class PatternReplayTests(TestCase):
    """
    since with a pattern: every matching topic's file merged in timestamp
    order, then live, with no gap and no duplicate.
    """

    timeout = 120

    @inlineCallbacks
    def test_merge_seam(self) -> None:
        """
        Messages of several topics persisted before, and published
        throughout the subscription, arrive once each, in timestamp
        (publish) order.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        persister = Persister(directory, reactor=reactor)
        persister.startService()
        self.addCleanup(lambda: persister.running and persister.stopService())
        broker = PersistingBroker(Broker(), persister)
        server = RunningServer(self, broker=broker, replay=persister)
        topics = ["m.a", "m.b", "m.c", "other"]
        sent = []
        for n in range(300):
            topic = topics[n % 4]
            yield broker.publish(topic, b"%d" % n)
            if topic != "other":
                sent.append((topic, b"%d" % n))
        ws = yield server.client.connect(server.url, "/sub", None, protocol=MuxCollector, protocols=[SUBPROTOCOL])
        ws.sendMessage(b'{"op":"sub","id":1,"pattern":"m.*","since":0}', isBinary=False)
        # Keep publishing while the replay runs.
        for n in range(300, 400):
            topic = topics[n % 4]
            yield broker.publish(topic, b"%d" % n)
            if topic != "other":
                sent.append((topic, b"%d" % n))
        messages = yield ws.wait_for(len(sent), seconds=60)
        self.assertEqual(messages, sent)
        self.assertEqual(ws.replies, [{"op": "ok", "id": 1}])
