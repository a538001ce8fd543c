"""
Tests for memmq.server.response: the streaming responses of C{GET /sub}
(Server-Sent Events and the plain stream) follow their topic's log
(memmq.following) as WebSocket subscribers do, and keep every behaviour
of subscribers handed each message: order, ids, replay, holding and
dropping for a slow reader, the end of the stream at shutdown.  In memory
first (StringTransport, Clock), then with real servers on loopback.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.broker import Broker
from memmq.persist import Persister, PersistingBroker
from memmq.server.combine import DEFAULT_WINDOW
from memmq.server.web import MemmqSite
from tests.support import RunningServer, StreamReader, held_then_dropped, until

_SSE = b"GET /sub?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
_PLAIN = b"GET /sub?topic=t HTTP/1.1\r\nHost: x\r\n\r\n"


class _Streams:
    """
    Streaming responses on one in-memory site, each over a StringTransport.
    """

    def __init__(self, testcase, broker: Broker) -> None:
        self.clock = Clock()
        self.broker = broker
        self.site = MemmqSite(broker, clock=self.clock)
        self._testcase = testcase

    def open(self, request: bytes = _SSE) -> StringTransport:
        channel = self.site.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
        channel.makeConnection(transport)
        channel.dataReceived(request)
        self._testcase.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        transport.clear()
        return transport

    def flush(self) -> None:
        """
        Let the combiner write to everyone: its flush comes two turns
        later, or once its window has passed since the last.
        """
        for _ in range(3):
            self.clock.advance(DEFAULT_WINDOW)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FollowTests(SynchronousTestCase):
    """
    Streams on one topic are woken once, then read the topic's log; each
    flush writes what was published since, in order, joined once for all.
    """

    def test_event_streams_follow(self) -> None:
        """
        Three event streams follow the topic: each publish appends to its
        log, and one flush writes to each every event since, with the
        messages' stamps as ids; then the topic keeps no log.
        """
        streams = _Streams(self, Broker())
        transports = [streams.open() for _ in range(3)]
        entry = streams.broker.topic("t")
        self.assertEqual(entry.followers, 3)
        streams.broker.publish_now("t", b"a", stamp=5)
        streams.broker.publish_now("t", b"b", stamp=6)
        self.assertEqual(entry.waiting, 3)
        self.assertTrue(all(s.following for s in entry.subscriptions))
        self.assertEqual([t.value() for t in transports], [b""] * 3)
        streams.flush()
        for transport in transports:
            self.assertEqual(transport.value(), _chunk(b"id: 5\ndata: a\n\nid: 6\ndata: b\n\n"))
        self.assertEqual(entry.waiting, 0)
        self.assertIsNone(entry.tail)

    def test_plain_streams_follow_in_one_chunk(self) -> None:
        """
        Plain streams write the payloads published since their last write
        in one chunk; an empty payload adds nothing.
        """
        streams = _Streams(self, Broker())
        transports = [streams.open(_PLAIN) for _ in range(2)]
        for data in (b"one|", b"", b"two|"):
            streams.broker.publish_now("t", data)
        streams.flush()
        for transport in transports:
            self.assertEqual(transport.value(), _chunk(b"one|two|"))

    def test_only_empty_payloads_write_nothing(self) -> None:
        """
        A flush of empty payloads alone writes nothing to a plain stream:
        an empty chunk would end the response.
        """
        streams = _Streams(self, Broker())
        transport = streams.open(_PLAIN)
        streams.broker.publish_now("t", b"")
        streams.flush()
        self.assertEqual(transport.value(), b"")
        streams.broker.publish_now("t", b"x")
        streams.flush()
        self.assertEqual(transport.value(), _chunk(b"x"))

    def test_kinds_of_streams_on_one_topic(self) -> None:
        """
        Event streams and plain streams on one topic each get their own
        framing of the same stretch of the log.
        """
        streams = _Streams(self, Broker())
        events, plain = streams.open(), streams.open(_PLAIN)
        streams.broker.publish_now("t", b"a")
        streams.broker.publish_now("t", b"b")
        streams.flush()
        self.assertEqual(events.value(), _chunk(b"data: a\n\ndata: b\n\n"))
        self.assertEqual(plain.value(), _chunk(b"ab"))

    def test_pattern_stream_handed_each_message(self) -> None:
        """
        A stream subscribed to a pattern is handed each message (it cannot
        follow one topic's log), and the streams of the topic still get
        every message in order.
        """
        streams = _Streams(self, Broker())
        exact = streams.open()
        pattern = streams.open(b"GET /sub?pattern=* HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        streams.broker.publish_now("t", b"a")
        streams.broker.publish_now("t", b"b")
        streams.flush()
        self.assertEqual(exact.value(), _chunk(b"data: a\n\ndata: b\n\n"))
        self.assertEqual(pattern.value(), _chunk(b"data: a\n\ndata: b\n\n"))

    def test_queue_group_streams_share_the_messages(self) -> None:
        """
        Streams in a queue group are handed their share of the messages
        (each message to one of them, in order for each), beside a stream
        of the topic that follows it and gets them all.
        """
        streams = _Streams(self, Broker())
        everything = streams.open()
        grouped = b"GET /sub?topic=t&group=g HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        members = [streams.open(grouped) for _ in range(2)]
        for n in range(6):
            streams.broker.publish_now("t", b"m%d" % n)
        streams.flush()
        self.assertEqual(_unchunked(everything.value()), b"".join(b"data: m%d\n\n" % n for n in range(6)))
        shares = [_unchunked(member.value()).split(b"\n\n")[:-1] for member in members]
        self.assertEqual(sorted(event for share in shares for event in share), [b"data: m%d" % n for n in range(6)])
        for share in shares:
            self.assertTrue(share)
            self.assertEqual(share, sorted(share))

    def test_close_writes_what_waits(self) -> None:
        """
        A stream ended by the server (shutdown, an expired token) first
        writes what waits for it in the log, then ends the response.
        """
        streams = _Streams(self, Broker())
        transport = streams.open()
        streams.broker.publish_now("t", b"last")
        streams.site.connections.close_all(streams.clock, 1.0)
        self.assertEqual(transport.value(), _chunk(b"data: last\n\n") + b"0\r\n\r\n")
        self.assertIsNone(streams.broker.topic("t"))


class FlowControlTests(SynchronousTestCase):
    """
    A full connection pauses a following stream as any subscriber: what
    waited in the log comes first, later messages are held, then dropped
    past the limit, for that stream alone.
    """

    def test_held_then_dropped_in_order(self) -> None:
        """
        Paused while following, a stream is written what waited in the
        log, holds the next messages up to max_buffered_messages and drops
        the rest (counted); on resume the held ones follow, in order, and
        it follows the log again; the other stream loses nothing.
        """
        streams = _Streams(self, Broker(max_buffered_messages=2))
        slow, fast = streams.open(), streams.open()
        entry = streams.broker.topic("t")
        streams.broker.publish_now("t", b"a")
        streams.broker.publish_now("t", b"b")
        slow.producer.pauseProducing()
        for data in (b"c", b"d", b"e"):
            streams.broker.publish_now("t", data)
        slow_subscription = entry.subscriptions[0]
        self.assertEqual(slow_subscription.buffered, 2)
        self.assertEqual(slow_subscription.dropped, 1)
        self.assertEqual(streams.broker.dropped, 1)
        streams.flush()
        slow.producer.resumeProducing()
        streams.flush()
        streams.broker.publish_now("t", b"f")
        self.assertTrue(slow_subscription.following)
        streams.flush()
        events = b"".join(b"data: %s\n\n" % x for x in (b"a", b"b", b"c", b"d", b"f"))
        self.assertEqual(_unchunked(slow.value()), events)
        everything = b"".join(b"data: %s\n\n" % x for x in (b"a", b"b", b"c", b"d", b"e", b"f"))
        self.assertEqual(_unchunked(fast.value()), everything)


def _unchunked(raw: bytes) -> bytes:
    body = b""
    while raw:
        size, _, raw = raw.partition(b"\r\n")
        length = int(size, 16)
        body += raw[:length]
        raw = raw[length + 2 :]
    return body


def _persisting_server(testcase, **options) -> RunningServer:
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    persister = Persister(directory, 0.01, reactor=reactor)
    persister.startService()
    testcase.addCleanup(lambda: persister.running and persister.stopService())
    return RunningServer(testcase, broker=PersistingBroker(Broker(**options), persister), replay=persister)


@inlineCallbacks
def _open(testcase, server: RunningServer, count: int, query: str, topic: str, entry, event_stream: bool = True):
    """
    C{count} streams of C{query}, once the broker has them all (C{entry}:
    the broker whose topic C{topic} they subscribe to).
    """
    readers = [StreamReader(testcase, server, query, event_stream=event_stream) for _ in range(count)]
    for reader in readers:
        yield reader.opened
    yield until(lambda: entry.topic(topic) is not None and len(entry.topic(topic).members) == count)
    return readers


@inlineCallbacks
def _publish_over_websocket(server: RunningServer, topic: str, payloads: list[bytes]):
    """
    Publish C{payloads} over one WebSocket, in one go: many messages per
    flush, in order.
    """
    publisher = yield server.client.connect(server.url, "/pub", topic)
    for data in payloads:
        publisher.sendMessage(data, isBinary=True)
    return publisher


class ManyStreamsTests(TestCase):
    """
    Many streams on one topic, over real sockets.
    """

    timeout = 120

    @inlineCallbacks
    def test_event_streams_every_message_in_order_with_ids(self):
        """
        Forty event streams on one topic all receive every message, in
        order, each with its persisted stamp as its id (the same for every
        stream, strictly increasing); a stream that reconnects with one of
        them as Last-Event-ID is replayed exactly what came after it (its
        end marked by an id past them), then follows the topic live with
        the others.
        """
        server = _persisting_server(self)
        local = server.broker.local
        count, total = 40, 300
        readers = yield _open(self, server, count, "topic=fan", "fan", local)
        self.assertEqual(local.topic("fan").followers, count)
        payloads = [b"m%04d" % i for i in range(total)]
        yield _publish_over_websocket(server, "fan", payloads)
        yield until(lambda: all(len(r.events) >= total for r in readers))
        ids = readers[0].ids()
        self.assertEqual(len(set(ids)), total)
        self.assertEqual(ids, sorted(ids))
        for reader in readers:
            self.assertEqual(reader.data(), payloads)
            self.assertEqual(reader.ids(), ids)
        readers[0].close()
        yield until(lambda: len(local.topic("fan").members) == count - 1)
        after = StreamReader(self, server, "topic=fan", {"Last-Event-ID": str(ids[199])}, event_stream=True)
        yield until(lambda: len(after.events) >= total - 200)
        self.assertEqual(after.data(), payloads[200:])
        yield until(lambda: after.last_id is not None)
        self.assertGreaterEqual(after.last_id, ids[-1])
        yield until(lambda: len(local.topic("fan").members) == count)
        yield _publish_over_websocket(server, "fan", [b"live"])
        yield until(lambda: after.data()[-1:] == [b"live"] and all(r.data()[-1:] == [b"live"] for r in readers[1:]))
        self.assertEqual(local.topic("fan").followers, count)
        live_id = after.ids()[-1]
        self.assertGreater(live_id, ids[-1])
        self.assertEqual([r.ids()[-1] for r in readers[1:]], [live_id] * (count - 1))

    @inlineCallbacks
    def test_plain_streams_every_payload_in_order(self):
        """
        Thirty plain streams on one topic all receive every payload's
        bytes, in publish order; one subscribed with since=0 is replayed
        what the file holds, then follows live.
        """
        server = _persisting_server(self)
        local = server.broker.local
        count, total = 30, 300
        readers = yield _open(self, server, count, "topic=plain", "plain", local, event_stream=False)
        payloads = [b"%04d|" % i for i in range(total)]
        yield _publish_over_websocket(server, "plain", payloads)
        expected = b"".join(payloads)
        yield until(lambda: all(len(r.body) >= len(expected) for r in readers))
        for reader in readers:
            self.assertEqual(bytes(reader.body), expected)
        replaying = StreamReader(self, server, "topic=plain&since=0", event_stream=False)
        yield until(lambda: len(replaying.body) >= len(expected))
        self.assertEqual(bytes(replaying.body), expected)
        yield until(lambda: len(local.topic("plain").members) == count + 1)
        yield _publish_over_websocket(server, "plain", [b"live|"])
        yield until(lambda: all(bytes(r.body).endswith(b"live|") for r in [*readers, replaying]))
        self.assertEqual(bytes(replaying.body), expected + b"live|")


class SlowStreamTests(TestCase):
    """
    A stream that stops reading is held, then dropped, while the others
    carry on (README: Delivery), for both kinds of stream.
    """

    timeout = 120

    @inlineCallbacks
    def _held_then_dropped(self, event_stream: bool):
        server = RunningServer(self, max_buffered_messages=50)
        readers = yield _open(self, server, 2, "topic=busy", "busy", server.broker, event_stream)
        slow, fast = readers
        slow.transport.pauseProducing()  # reads nothing more
        filler = b"x" * 16384
        count = 1500  # 24 MiB: more than the socket buffers hold
        for i in range(count):
            code, _ = yield server.client.publish(server.url, "busy", b"%06d" % i + filler)
            self.assertEqual(code, 200)
        size = 6 + len(filler)

        def numbers(reader) -> list[int]:
            if event_stream:
                return [int(data[:6]) for data in reader.data()]
            body = bytes(reader.body)
            return [int(body[at : at + 6]) for at in range(0, len(body) - size + 1, size)]

        yield until(lambda: len(numbers(fast)) >= count)
        self.assertEqual(numbers(fast), list(range(count)))
        stalled = held_then_dropped(self, server.broker.topic("busy"))
        # What the stalled one does get, once it reads again, is in order.
        slow.transport.resumeProducing()
        yield until(lambda: stalled.buffered == 0)
        yield server.client.publish(server.url, "busy", b"999999" + filler)
        yield until(lambda: numbers(slow)[-1:] == [999999])
        got = numbers(slow)
        self.assertEqual(got, sorted(got))
        self.assertEqual(len(got) + stalled.dropped, count + 1)

    def test_event_stream(self):
        """
        An event stream that stops reading is held up to the limit, then
        dropped for, counted; the other stream gets every message in
        order; once it reads again it gets the rest in order.
        """
        return self._held_then_dropped(True)

    def test_plain_stream(self):
        """
        The same for a plain stream.
        """
        return self._held_then_dropped(False)
