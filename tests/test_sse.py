"""
Server-Sent Events on C{GET /sub} (memmq.server.sse): the event format, ids
and Last-Event-ID with persistence, heartbeats, flow control; driven over
StringTransport with a Clock, then over real sockets.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.broker import Broker
from memmq.persist import Persister, PersistingBroker
from memmq.server.sse import HEARTBEAT, RETRY_MS, event, last_event_id
from memmq.server.web import MemmqSite
from tests.support import RunningServer, bounded, until

_GET = b"GET /sub?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n%s\r\n"


class EventFormatTests(SynchronousTestCase):
    """
    How one payload becomes one event.
    """

    def test_text(self) -> None:
        """
        UTF-8 text is the event's data.
        """
        self.assertEqual(event("héllo".encode()), "data: héllo\n\n".encode())

    def test_lines(self) -> None:
        """
        Each line of the payload is a data line; the browser joins them
        with line feeds again.
        """
        self.assertEqual(event(b"a\nb\n"), b"data: a\ndata: b\ndata: \n\n")

    def test_empty(self) -> None:
        """
        An empty payload is an event with empty data (still dispatched).
        """
        self.assertEqual(event(b""), b"data: \n\n")

    def test_binary(self) -> None:
        """
        A payload that is not UTF-8 goes base64, in a C{base64} event.
        """
        self.assertEqual(event(b"\xff\x00"), b"event: base64\ndata: /wA=\n\n")

    def test_carriage_return(self) -> None:
        """
        A carriage return would be read as a line break: base64 keeps it.
        """
        self.assertEqual(event(b"a\r\nb"), b"event: base64\ndata: YQ0KYg==\n\n")

    def test_last_event_id(self) -> None:
        """
        Only a number is taken from Last-Event-ID.
        """
        class R:
            def __init__(self, value):
                self.value = value

            def getHeader(self, name):
                return self.value

        self.assertEqual(last_event_id(R(b" 123 ")), 123)
        self.assertIsNone(last_event_id(R(b"abc")))
        self.assertIsNone(last_event_id(R(None)))
        self.assertIsNone(last_event_id(R(b"1" * 21)))


class StreamTests(SynchronousTestCase):
    """
    An event stream over a StringTransport.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = Broker(max_buffered_messages=2)
        self.site = MemmqSite(self.broker, clock=self.clock)

    def open(self, headers: bytes = b"", site: MemmqSite | None = None):
        channel = (site or self.site).buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
        channel.makeConnection(transport)
        channel.dataReceived(_GET % headers)
        self.addCleanup(self.lose, channel)
        return channel, transport

    def lose(self, channel) -> None:
        if not getattr(channel, "_lost", False):
            channel._lost = True
            channel.connectionLost(Failure(ConnectionDone()))

    def test_headers_and_retry(self) -> None:
        """
        The answer is an event stream, not cached or buffered by proxies,
        and starts with retry:.
        """
        _, transport = self.open()
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"Content-Type: text/event-stream; charset=utf-8\r\n", answer)
        self.assertIn(b"Cache-Control: no-cache\r\n", answer)
        self.assertIn(b"X-Accel-Buffering: no\r\n", answer)
        self.assertIn(b"retry: %d\n\n" % RETRY_MS, answer)

    def test_messages_combined_and_in_order(self) -> None:
        """
        Messages are events, in publish order, written together at the next
        flush; no id without persistence.
        """
        _, transport = self.open()
        transport.clear()
        self.broker.publish("t", b"one")
        self.broker.publish("t", b"two")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertIn(b"data: one\n\n", transport.value())
        self.assertIn(b"data: one\n\ndata: two\n\n", transport.value())
        self.assertNotIn(b"id:", transport.value())

    def test_heartbeat(self) -> None:
        """
        A comment every HEARTBEAT seconds keeps an idle stream open.
        """
        _, transport = self.open()
        transport.clear()
        self.clock.advance(HEARTBEAT - 0.1)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        self.assertIn(b": heartbeat\n\n", transport.value())
        self.clock.advance(HEARTBEAT)
        self.assertEqual(transport.value().count(b": heartbeat"), 2)

    def test_gone_unsubscribes(self) -> None:
        """
        A closed stream leaves the broker and stops its heartbeat.
        """
        channel, _ = self.open()
        self.assertEqual(self.broker.stats().delivery.subscribers, 1)
        self.lose(channel)
        self.assertEqual(self.broker.stats().delivery.subscribers, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_full_connection_drops_as_any_subscriber(self) -> None:
        """
        While the connection is full the subscription is paused: its buffer
        holds max_buffered_messages, the rest is dropped and counted.
        """
        channel, transport = self.open()
        transport.producer.pauseProducing()
        for n in range(5):
            self.broker.publish("t", b"m%d" % n)
        self.assertEqual(self.broker.stats().delivery.dropped, 3)
        transport.clear()
        transport.producer.resumeProducing()
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertIn(b"data: m0\n\ndata: m1\n\n", transport.value())

    def test_without_accept_plain_stream(self) -> None:
        """
        Without Accept: text/event-stream, /sub is asim/mq's raw stream as before.
        """
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /sub?topic=t HTTP/1.1\r\nHost: x\r\n\r\n")
        self.addCleanup(self.lose, channel)
        self.assertIn(b"Content-Type: application/octet-stream", transport.value())


class PersistedStreamTests(TestCase):
    """
    With --persist: ids are the messages' timestamps, and Last-Event-ID
    resumes where the browser left off.
    """

    def persisting_server(self) -> RunningServer:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        persister = Persister(directory, 0.01, reactor=reactor)
        persister.startService()
        self.addCleanup(lambda: persister.running and persister.stopService())
        return RunningServer(self, broker=PersistingBroker(Broker(), persister), replay=persister)

    @inlineCallbacks
    def test_resume_with_last_event_id(self):
        """
        A stream reconnecting with the last id it saw gets exactly the
        messages after it, then the live ones.
        """
        server = self.persisting_server()
        first = _EventStream(self, server, "p")
        yield first.opened
        yield until(lambda: server.broker.local.topic("p") is not None)
        for n in range(3):
            yield server.broker.publish("p", b"m%d" % n)
        yield first.until(b"data: m2")
        ids = first.ids()
        self.assertEqual(len(ids), 3)
        self.assertEqual(ids, sorted(ids))
        first.close()
        for n in range(3, 5):
            yield server.broker.publish("p", b"m%d" % n)
        second = _EventStream(self, server, "p", {"Last-Event-ID": str(ids[1])})
        yield second.until(b"data: m4")
        yield until(lambda: server.broker.local.topic("p") is not None)
        yield server.broker.publish("p", b"m5")
        yield second.until(b"data: m5")
        self.assertEqual(second.data(), [b"m2", b"m3", b"m4", b"m5"])
        # The end of the replay moves the browser's id past it.
        self.assertGreaterEqual(len(second.ids()), 2)

    @inlineCallbacks
    def test_pattern_replayed(self):
        """
        A stream subscribed to a pattern with C{since} is replayed the
        messages of every topic the pattern matches, in the order they
        were published, and no other topic's; then the end of the replay
        as an id.
        """
        server = self.persisting_server()
        for topic, payload in (("o.a", b"m0"), ("x.b", b"not"), ("o.b", b"m1"), ("o.a", b"m2")):
            yield server.broker.publish(topic, payload)
        stream = _EventStream(self, server, query="pattern=o.*&since=0")
        yield stream.until(b"id: ")
        self.assertEqual(stream.data(), [b"m0", b"m1", b"m2"])
        self.assertEqual(len(stream.ids()), 1)


class _EventStream(Protocol):
    """
    A raw event-stream reader over TLS: the request as an EventSource
    sends it, and the bytes of the answer as they come.
    """

    def __init__(
        self, testcase, server: RunningServer, topic: str = "", headers: dict | None = None, query: str = ""
    ) -> None:
        self.body = b""
        self._waits: list = []
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        query = query or f"topic={topic}"
        self._request = (
            f"GET /sub?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{extra}\r\n"
        ).encode()
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", server.port, server.client.tls_options())
        self.opened = bounded(connectProtocol(endpoint, self))
        testcase.addCleanup(self.close)

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.body += data
        for needle, d in list(self._waits):
            if needle in self.body:
                self._waits.remove((needle, d))
                d.callback(None)

    def until(self, needle: bytes) -> Deferred:
        d: Deferred = Deferred()
        self._waits.append((needle, d))
        self.dataReceived(b"")
        return bounded(d)

    _closed = False

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.abortConnection()

    def ids(self) -> list[int]:
        return [int(line[4:]) for line in self.body.split(b"\n") if line.startswith(b"id: ")]

    def data(self) -> list[bytes]:
        return [line[6:] for line in self.body.split(b"\n") if line.startswith(b"data: ")]
