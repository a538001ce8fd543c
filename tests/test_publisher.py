"""
Tests for memmq.client.publisher: pipelined publishing, the answers it
reads, and what it sends again after a failure (and what it must not).

The parser is tested on its own with answers cut at every byte; the
connection against a scripted HTTP server on loopback over real TLS, which
reads pipelined requests and answers, closes or stays silent as each test
says.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from memmq import client
from memmq.client import publisher
from memmq.client.publisher import PublishConnection
from memmq.client.responses import ResponseReader
from memmq.errors import MemmqError
from memmq.hops import TooManyHops
from memmq.tls import ClientTLS, self_signed_certificate
from tests.support import RunningServer, bounded, dead_port, until

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class _Answers:
    """
    Stands in for a L{PublishConnection}: records what the parser hands it.
    """

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes, bool]] = []
        self.bad: list[str] = []
        self.lost = 0

    def reader_connected(self, protocol) -> None:
        pass

    def answered(self, protocol, code: int, body: bytes, close: bool) -> None:
        self.answers.append((code, body, close))

    def bad_response(self, protocol, reason: str) -> None:
        self.bad.append(reason)

    def reader_lost(self, protocol, reason) -> None:
        self.lost += 1


def _parse(data: bytes, piece: int | None = None, lose: bool = False) -> _Answers:
    """
    What the parser makes of C{data}, fed C{piece} bytes at a time (all at
    once by default); with C{lose}, the connection then ends.
    """
    answers = _Answers()
    protocol = ResponseReader(answers)
    step = piece or len(data) or 1
    for i in range(0, len(data), step):
        protocol.dataReceived(data[i : i + step])
    if lose:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        protocol.connectionLost(Failure(ConnectionDone()))
    return answers


class ParserTests(TestCase):
    """
    Answers are split from the byte stream whatever the pieces it arrives in.
    """

    STREAM = (
        OK + b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
        b"message is too large\n"
        + b"HTTP/1.1 100 Continue\r\n\r\n"
        + b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nup 1:\r\n8;ext=1\r\n refused\r\n0\r\n\r\n"
        + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n"
        + b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 8\r\n\r\nnot now\n"
    )
    EXPECTED = [
        (200, b"", False),
        (413, b"message is too large\n", False),
        (502, b"up 1: refused", False),
        (200, b"", False),
        (503, b"not now\n", True),
    ]

    def test_whole(self) -> None:
        """
        Several answers in one read: each found, in order, with its body.
        """
        self.assertEqual(_parse(self.STREAM).answers, self.EXPECTED)

    def test_byte_by_byte(self) -> None:
        """
        The same stream cut at every byte gives the same answers.
        """
        for piece in (1, 2, 3, 7):
            self.assertEqual(_parse(self.STREAM, piece).answers, self.EXPECTED, f"piece {piece}")

    def test_until_close(self) -> None:
        """
        An answer without a length ends with the connection, and says so.
        """
        answers = _parse(b"HTTP/1.0 200 OK\r\n\r\nbye", lose=True)
        self.assertEqual((answers.answers, answers.lost), ([(200, b"bye", True)], 1))

    def test_http_1_0_closes(self) -> None:
        """
        An HTTP/1.0 answer closes the connection unless it says keep-alive.
        """
        self.assertEqual(_parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").answers, [(200, b"", True)])
        keep = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
        self.assertEqual(_parse(keep).answers, [(200, b"", False)])

    def test_not_http(self) -> None:
        """
        Something that is not an HTTP answer is reported, not guessed at.
        """
        for garbage, words in (
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 answer"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "chunk longer than its size"),
            (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000, "response head too large"),
        ):
            answers = _parse(garbage)
            self.assertEqual(answers.answers, [])
            self.assertEqual(len(answers.bad), 1, garbage[:20])
            self.assertIn(words, answers.bad[0])


class _Scripted(Protocol):
    """
    A server side of a publish connection: reads pipelined requests and
    lets the test's C{script(index, payload)} decide each answer: bytes to
    write, None to stay silent, or "abort" to drop the connection.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = next(int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:"))
            if len(self.buffer) < end + 4 + length:
                return
            payload = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            index = len(self.factory.received)
            self.factory.received.append(payload)
            self.factory.heads.append(head)
            answer = self.factory.script(index, payload)
            if answer == "abort":
                self.transport.abortConnection()
                return
            if answer is not None:
                self.transport.write(answer)
                if b"Connection: close" in answer:
                    # As an HTTP server does: nothing after it is read.
                    self.dataReceived = lambda data: None
                    self.transport.loseConnection()
                    return


class _ScriptedServer:
    def __init__(self, testcase, script, port: int = 0) -> None:
        factory = Factory.forProtocol(_Scripted)
        factory.script = script
        factory.received = []
        factory.heads = []
        factory.connections = 0
        self.factory = factory
        certificate = self_signed_certificate("127.0.0.1")
        port = reactor.listenSSL(port, factory, certificate.options(), interface="127.0.0.1")
        testcase.addCleanup(port.stopListening)
        self.server = f"https://127.0.0.1:{port.getHost().port}"

    @property
    def received(self) -> list[bytes]:
        return self.factory.received


def _connection(testcase, server: str, attempts: int = 1) -> PublishConnection:
    connection = PublishConnection(server, reactor, ClientTLS(None), attempts)
    testcase.addCleanup(connection.close)
    return connection


def _send(connection: PublishConnection, payload: bytes, topic: str = "t", hops: int = 0):
    return connection.send(connection.request(topic, payload, hops))


class PipeliningTests(TestCase):
    """
    Requests go back to back on one connection; answers are matched in order.
    """

    timeout = 60

    @inlineCallbacks
    def test_pipelined_in_order(self) -> None:
        """
        600 publishes made at once all go over one connection, in the order
        they were made, and each Deferred fires with its own answer.
        """
        bad = {5, 77, 300}
        server = _ScriptedServer(
            self,
            lambda i, p: b"HTTP/1.1 400 Bad Request\r\nContent-Length: 4\r\n\r\nno %d" % (i % 10) if i in bad else OK,
        )
        connection = _connection(self, server.server)
        results = []
        for i in range(600):
            d = _send(connection, b"%04d" % i)
            d.addCallbacks(lambda _, i=i: results.append((i, "ok")), lambda f, i=i: results.append((i, str(f.value))))
        yield bounded(until(lambda: len(results) == 600))
        self.assertEqual(server.received, [b"%04d" % i for i in range(600)])
        self.assertEqual(server.factory.connections, 1)
        expected = [(i, f"HTTP 400: no {i % 10}" if i in bad else "ok") for i in range(600)]
        self.assertEqual(sorted(results), expected)

    @inlineCallbacks
    def test_request_head(self) -> None:
        """
        The request is a POST to /pub with the topic escaped, the Host, the
        length, and the hop count when there is one.
        """
        server = _ScriptedServer(self, lambda i, p: OK)
        connection = _connection(self, server.server)
        yield bounded(_send(connection, b"abc", topic="a b/ü", hops=2))
        yield bounded(_send(connection, b"", topic="plain"))
        port = server.server.rsplit(":", 1)[1]
        self.assertEqual(
            server.factory.heads,
            [
                [
                    "POST /pub?topic=a%20b%2F%C3%BC HTTP/1.1",
                    f"Host: 127.0.0.1:{port}",
                    "X-Memmq-Hops: 2",
                    "Content-Length: 3",
                ],
                ["POST /pub?topic=plain HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Length: 0"],
            ],
        )
        self.assertEqual(server.received, [b"abc", b""])

    @inlineCallbacks
    def test_loop_refusal(self) -> None:
        """
        A 508 (the loop guard) fails with L{TooManyHops}.
        """
        server = _ScriptedServer(self, lambda i, p: b"HTTP/1.1 508 Loop Detected\r\nContent-Length: 4\r\n\r\nloop")
        connection = _connection(self, server.server, attempts=3)
        error = yield self.assertFailure(bounded(_send(connection, b"x")), TooManyHops)
        self.assertEqual(str(error), "HTTP 508: loop")
        self.assertEqual(len(server.received), 1)


class FailureTests(TestCase):
    """
    What is sent again after a failure is only what the server surely did
    not take.
    """

    timeout = 60

    @inlineCallbacks
    def test_connection_close_resends_the_rest(self) -> None:
        """
        An answer with C{Connection: close} ends the connection: requests
        written after it were not read by the server, and go again on a
        new connection -- each payload received once, in order.
        """

        def script(i, payload):
            if payload == b"0003":
                return b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            return OK

        server = _ScriptedServer(self, script)
        connection = _connection(self, server.server)
        yield bounded(gatherResults([_send(connection, b"%04d" % i) for i in range(10)]))
        self.assertEqual(server.received, [b"%04d" % i for i in range(10)])
        self.assertEqual(server.factory.connections, 2)

    @inlineCallbacks
    def test_lost_unanswered_not_resent(self) -> None:
        """
        A connection lost with requests read and unanswered: they fail,
        saying the server may have published them, and are not sent again;
        what is published afterwards goes over a new connection.
        """
        server = _ScriptedServer(self, lambda i, p: "abort" if p == b"boom" else (None if p == b"held" else OK))
        connection = _connection(self, server.server, attempts=3)
        yield bounded(_send(connection, b"first"))
        held = _send(connection, b"held")
        boom = _send(connection, b"boom")
        for d in (held, boom):
            error = yield self.assertFailure(bounded(d), MemmqError)
            self.assertIn("connection lost before the server answered", str(error))
        yield bounded(_send(connection, b"after"))
        self.assertEqual(server.received, [b"first", b"held", b"boom", b"after"])
        self.assertEqual(server.factory.connections, 2)

    @inlineCallbacks
    def test_no_answer_times_out(self) -> None:
        """
        A server that reads and never answers: the request fails after the
        answer timeout, once, and is not sent again.
        """
        self.patch(publisher, "ANSWER_TIMEOUT", 0.3)
        server = _ScriptedServer(self, lambda i, p: None)
        connection = _connection(self, server.server, attempts=3)
        error = yield self.assertFailure(bounded(_send(connection, b"x")), MemmqError)
        self.assertEqual(str(error), "no answer in 0.3 s")
        self.assertEqual(server.received, [b"x"])

    @inlineCallbacks
    def test_refused(self) -> None:
        """
        A server that refuses the connection fails the publish with that
        reason once its attempts are used up.
        """
        connection = _connection(self, f"https://127.0.0.1:{dead_port()}", attempts=2)
        error = yield self.assertFailure(bounded(_send(connection, b"x")), MemmqError)
        self.assertEqual(str(error), "connection refused")

    @inlineCallbacks
    def test_refused_then_listening(self) -> None:
        """
        A refused connection is tried again (the request was never sent): a
        server that starts listening meanwhile gets it, once.
        """
        number = dead_port()
        connection = _connection(self, f"https://127.0.0.1:{number}", attempts=6)
        sent = _send(connection, b"x")
        server = []
        reactor.callLater(0.03, lambda: server.append(_ScriptedServer(self, lambda i, p: OK, port=number)))
        yield bounded(sent)
        self.assertEqual(server[0].received, [b"x"])

    @inlineCallbacks
    def test_close_fails_unsent(self) -> None:
        """
        Closing fails what was not sent yet and waits for the connection to
        end.
        """
        connection = PublishConnection(f"https://127.0.0.1:{dead_port()}", reactor, ClientTLS(None), 5)
        pending = _send(connection, b"x")
        yield bounded(connection.close())
        error = yield self.assertFailure(pending, MemmqError)
        self.assertEqual(str(error), "client is closed")
        self.assertRaises(MemmqError, _send, connection, b"y")


class ClientOverPipelineTests(TestCase):
    """
    The client publishes over plain HTTP too (an http:// server).
    """

    timeout = 60

    @inlineCallbacks
    def test_plain_http(self) -> None:
        from memmq.broker import Broker
        from memmq.server.web import MemmqSite

        broker = Broker()
        port = reactor.listenTCP(0, MemmqSite(broker), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        c = client.new(servers=[f"http://127.0.0.1:{port.getHost().port}"], reactor=reactor)
        self.addCleanup(c.close)
        yield bounded(gatherResults([c.publish("plain", b"%d" % i) for i in range(50)]))
        self.assertEqual(broker.published, 50)

    @inlineCallbacks
    def test_many_topics_spread(self) -> None:
        """
        Publishes of many topics use a few connections per server, not one
        each, and every one arrives.
        """
        server = RunningServer(self)
        c = client.new(servers=[server.url], reactor=reactor)
        self.addCleanup(c.close)
        yield bounded(gatherResults([c.publish(f"topic-{i}", b"x") for i in range(200)]))
        self.assertEqual(server.broker.published, 200)
        self.assertLessEqual(len(c.transport._plain._publisher._connections), 4)
