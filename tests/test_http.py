"""
Tests for memmq.server.web: the HTTP API, over real TLS on loopback and,
for the request-body rules, over an in-memory transport.
"""

from __future__ import annotations

import io

import treq
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from memmq.broker import Broker
from memmq.interfaces import IBroker
from memmq.server.web import MemmqSite
from tests.support import Recorder, RunningServer, SlowBroker, bounded, exchange, logged_events, until

_CHUNKED = b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


class RequestBodyTests(SynchronousTestCase):
    """
    The body of a request is bounded by --max_message_size, refused as soon
    as it is known to be too big.
    """

    def setUp(self) -> None:
        self.broker = Broker()
        self.site = MemmqSite(self.broker, max_message_size=10)
        self.got = Recorder()
        self.broker.subscribe("t", self.got)

    def test_content_length_refused_before_body(self) -> None:
        """
        A Content-Length over the limit is answered 413 on the headers
        alone, and nothing is published.
        """
        answer, transport = exchange(
            self.site, b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertIn(b"Connection: close", answer)
        self.assertTrue(answer.endswith(b"message larger than 10 bytes\n"), answer)
        self.assertEqual(self.got.payloads, [])

    def test_expect_continue_refused_without_continue(self) -> None:
        """
        A client that waits for 100 Continue gets the 413 instead, and no
        100 after it; the connection is closed.
        """
        answer, transport = exchange(
            self.site,
            b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertNotIn(b"100 Continue", answer)
        self.assertTrue(transport.disconnecting)

    def test_chunked_body_refused_when_over(self) -> None:
        """
        A chunked body is refused at the chunk that passes the limit; the
        rest is read and dropped, then the connection closes.
        """
        answer, transport = exchange(
            self.site,
            _CHUNKED + b"6\r\nabcdef\r\n6\r\nghijkl\r\n6\r\nmnopqr\r\n0\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)
        self.assertEqual(answer.count(b"HTTP/1.1"), 1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.got.payloads, [])

    def test_chunked_body_within_limit(self) -> None:
        """
        A chunked body within the limit is published whole.
        """
        answer, _ = exchange(
            self.site,
            _CHUNKED + b"5\r\nabcde\r\n5\r\nfghij\r\n0\r\n\r\n",
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual(self.got.payloads, [b"abcdefghij"])

    def test_exact_limit_accepted(self) -> None:
        """
        A body of exactly the limit is accepted.
        """
        answer, _ = exchange(
            self.site, b"PUT /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"Content-Length: 0\r\n", answer)
        self.assertEqual(self.got.payloads, [b"0123456789"])

    def test_no_access_log_by_default(self) -> None:
        """
        Nothing is logged per request unless the access log is on.
        """
        self.assertFalse(self.site.access_log)
        logged = logged_events(self)
        exchange(self.site, b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(logged, [])

    def test_access_log_when_asked(self) -> None:
        """
        With the access log on, each request is logged.
        """
        site = MemmqSite(self.broker, access_log=True)
        logged = logged_events(self)
        exchange(site, b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        lines = [e["line"] for e in logged if e.get("log_namespace") == "memmq.access"]
        self.assertEqual(len(lines), 1, logged)
        self.assertIn('"POST /pub?topic=t HTTP/1.1" 200', lines[0])


class AsynchronousBrokerTests(SynchronousTestCase):
    """
    /pub waits for a broker that answers later and maps its failure to 502.
    """

    def publish_to_slow_broker(self) -> tuple[SlowBroker, StringTransport]:
        """
        Publish one byte to a L{SlowBroker} over a fresh channel; the
        broker, and the transport the answer is written to.
        """
        broker = SlowBroker()
        channel = MemmqSite(broker).buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, None)
        channel.dataReceived(b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        return broker, transport

    def test_waits_then_200(self) -> None:
        """
        The 200 goes out only once the broker's publish has fired.
        """
        broker, transport = self.publish_to_slow_broker()
        self.assertEqual(transport.value(), b"")
        broker.pending[0].callback(None)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))

    def test_failure_is_502(self) -> None:
        """
        A failed publish is a 502 that says why.
        """
        broker, transport = self.publish_to_slow_broker()
        broker.pending[0].errback(RuntimeError("server a:1 refused"))
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        self.assertTrue(answer.endswith(b"publish failed: server a:1 refused\n"), answer)

    def test_immediate_failure_is_502(self) -> None:
        """
        A broker that fails at once is a 502 too.
        """
        @implementer(IBroker)
        class Failing(SlowBroker):
            def publish(self, topic, payload, hops=0):
                return fail(RuntimeError("down"))

        answer, _ = exchange(
            MemmqSite(Failing()), b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        self.assertTrue(answer.endswith(b"publish failed: down\n"), answer)


class HTTPAPITests(TestCase):
    """
    The HTTP API over real TLS on loopback.
    """

    timeout = 60

    def setUp(self) -> None:
        self.server = RunningServer(self, max_message_size=1024)
        self.client = self.server.client

    @inlineCallbacks
    def test_publish_reaches_websocket_subscriber(self) -> None:
        """
        POST /pub answers 200 with an empty body, and the subscriber gets
        the body as one binary message; PUT does the same.
        """
        sub = yield self.client.subscribe(self.server.url, "news")
        code, body = yield self.client.publish(self.server.url, "news", b"\x00first\xff")
        self.assertEqual((code, body), (200, b""))
        code, body = yield self.client.publish(self.server.url, "news", b"second", method="PUT")
        self.assertEqual((code, body), (200, b""))
        code, _ = yield self.client.publish(self.server.url, "news", b"")
        self.assertEqual(code, 200)
        messages = yield sub.wait_for(3)
        self.assertEqual(messages, [b"\x00first\xff", b"second", b""])

    @inlineCallbacks
    def test_topics_are_separate(self) -> None:
        """
        A subscriber gets its topic's messages only; a topic's name is
        taken URL-decoded.
        """
        a = yield self.client.subscribe(self.server.url, "a%2Fb")
        b = yield self.client.subscribe(self.server.url, "b")
        yield self.client.publish(self.server.url, "b", b"for b")
        yield self.client.publish(self.server.url, "a/b", b"for a/b")
        self.assertEqual((yield a.wait_for(1)), [b"for a/b"])
        self.assertEqual((yield b.wait_for(1)), [b"for b"])

    @inlineCallbacks
    def test_error_statuses(self) -> None:
        """
        Each error has its status and a one-line plain-text reason.
        """
        url = self.server.url
        http = self.client.http
        cases = [
            (http.post(url + "/pub", data=b"x"), 400, b"no topic"),
            (http.post(url + "/pub?topic=", data=b"x"), 400, b"no topic"),
            (http.post(url + "/pub", params={"topic": "x" * 256}, data=b"x"), 400, b"longer than 255 bytes"),
            (http.post(url + "/pub", params={"topic": "a\x01b"}, data=b"x"), 400, b"control characters"),
            (http.post(url + "/pub?topic=%ff", data=b"x"), 400, b"not valid UTF-8"),
            (http.post(url + "/pub", params={"topic": "t"}, data=b"x" * 1025), 413, b"larger than 1024 bytes"),
            (http.delete(url + "/pub?topic=t"), 405, b"method DELETE not allowed"),
            (http.get(url + "/pub?topic=t"), 405, b"needs a WebSocket upgrade"),
            (http.post(url + "/sub?topic=t", data=b"x"), 405, b"method POST not allowed"),
            (http.get(url + "/sub"), 400, b"no topic"),
            (http.get(url + "/elsewhere"), 404, b"unknown path: /elsewhere"),
            (http.get(url + "/dashboard/elsewhere.js"), 404, b"unknown path: /dashboard/elsewhere.js"),
            (http.post(url + "/pub/more?topic=t", data=b"x"), 404, b"unknown path"),
        ]
        for request, code, reason in cases:
            response = yield bounded(request)
            body = yield bounded(treq.content(response))
            self.assertEqual(response.code, code, (code, reason, body))
            self.assertIn(reason, body)
            self.assertTrue(body.endswith(b"\n") and body.count(b"\n") == 1, body)
            self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"])
        response = yield bounded(http.delete(url + "/sub?topic=t"))
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET"])
        yield treq.content(response)

    @inlineCallbacks
    def test_chunked_over_limit_413(self) -> None:
        """
        A chunked body that grows past the limit gets 413 over real TLS.
        """
        producer = FileBodyProducer(io.BytesIO(b"y" * 5000))
        producer.length = UNKNOWN_LENGTH
        response = yield bounded(self.client.http.post(
            self.server.url + "/pub", params={"topic": "t"}, data=producer,
        ))
        body = yield bounded(treq.content(response))
        self.assertEqual(response.code, 413)
        self.assertEqual(body, b"message larger than 1024 bytes\n")

    @inlineCallbacks
    def test_server_keeps_serving_after_errors(self) -> None:
        """
        Bad requests do not disturb other clients: a subscriber connected
        before them still gets what is published after them.
        """
        sub = yield self.client.subscribe(self.server.url, "steady")
        yield self.client.publish(self.server.url, None, b"x")
        yield self.client.publish(self.server.url, "t", b"z" * 4096)
        yield self.client.publish(self.server.url, "steady", b"still here")
        self.assertEqual((yield sub.wait_for(1)), [b"still here"])

    @inlineCallbacks
    def test_streaming_subscribe(self) -> None:
        """
        GET /sub without an upgrade is a chunked stream of the payloads, in
        order; closing it unsubscribes at once.
        """
        response = yield bounded(self.client.http.get(self.server.url + "/sub", params={"topic": "plain"}))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/octet-stream"])
        body = _Body(b"one|two|three")
        response.original.deliverBody(body)
        for payload in (b"one|", b"two|", b"three"):
            code, _ = yield self.client.publish(self.server.url, "plain", payload)
            self.assertEqual(code, 200)
        yield bounded(body.enough)
        self.assertEqual(b"".join(body.received), b"one|two|three")
        self.assertEqual(self.server.broker.topic("plain").published, 3)
        body.transport.stopProducing()
        yield until(lambda: self.server.broker.topic("plain") is None)
        yield bounded(body.lost)

    @inlineCallbacks
    def test_health(self) -> None:
        """
        /health answers 200 while the server serves and 503 once it is
        stopping (on a connection that was open before).
        """
        response = yield bounded(self.client.http.get(self.server.url + "/health"))
        self.assertEqual((response.code, (yield treq.content(response))), (200, b"ok\n"))
        self.server.site.stopping = True
        response = yield bounded(self.client.http.get(self.server.url + "/health"))
        self.assertEqual((response.code, (yield treq.content(response))), (503, b"shutting down\n"))
        self.server.site.stopping = False

    @inlineCallbacks
    def test_shutdown_ends_streams(self) -> None:
        """
        Stopping the server ends a streaming response cleanly (the chunked
        body is terminated) and unsubscribes it.
        """
        response = yield bounded(self.client.http.get(self.server.url + "/sub", params={"topic": "plain"}))
        body = _Body(b"before")
        response.original.deliverBody(body)
        yield self.client.publish(self.server.url, "plain", b"before")
        yield bounded(body.enough)
        yield self.server.stop()
        self.assertTrue(self.server.site.stopping)
        yield bounded(body.lost)
        self.assertTrue(body.reason.check(ResponseDone), body.reason)
        self.assertIsNone(self.server.broker.topic("plain"))


class _Body(Protocol):
    """
    Keeps a streaming response's bytes; fires C{enough} once they add up to
    what is expected.
    """

    def __init__(self, expected: bytes) -> None:
        self.expected = expected
        self.received: list[bytes] = []
        self.enough: Deferred = Deferred()
        self.lost: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if b"".join(self.received) == self.expected and not self.enough.called:
            self.enough.callback(None)

    def connectionLost(self, reason) -> None:
        self.reason = reason
        self.lost.callback(None)


