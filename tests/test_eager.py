"""
Tests for memmq.server.eager: TLS over eager TCP connections, end to end on
real loopback sockets with real TLS, checked for order, flow control,
reading, and IPv6.
"""

from __future__ import annotations

import random
import select
import socket

from twisted.internet import reactor, ssl
from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from memmq.eager import EagerTLSServerEndpoint
from memmq.tls import self_signed_certificate
from tests.support import WAIT, bounded

SMALL = 100
SMALL_COUNT = 2000
LARGE = 3 * 1024 * 1024
LARGE_COUNT = 5


def _writes(seed: int) -> list[bytes]:
    """
    2000 distinct writes of 100 bytes with 5 of 3 MB among them, all
    different, so that any write out of place shows.
    """
    rng = random.Random(seed)
    large_at = {SMALL_COUNT * (i + 1) // (LARGE_COUNT + 1) for i in range(LARGE_COUNT)}
    writes = []
    for i in range(SMALL_COUNT):
        if i in large_at:
            writes.append(rng.randbytes(LARGE))
        writes.append((b"small %06d " % i).ljust(SMALL, b"."))
    return writes


class _Peer(Protocol):
    """
    Either end of a test connection: keeps what it receives and fires
    C{lost} when the connection has gone.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.count = 0
        self.lost: Deferred = Deferred()
        self._waiting: list[tuple[int, Deferred]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.count += len(data)
        self._check()

    def _check(self) -> None:
        for entry in list(self._waiting):
            if self.count >= entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(None)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)
        for _, d in self._waiting:
            d.errback(ConnectionError(f"lost after {self.count} bytes"))

    def wait_for(self, count: int) -> Deferred:
        """
        Fire once C{count} bytes have arrived.
        """
        d: Deferred = Deferred()
        self._waiting.append((count, d))
        self._check()
        return bounded(d)

    def data(self) -> bytes:
        return b"".join(self.received)


class _Writer(_Peer):
    """
    Writes C{writes} as soon as it is connected, then hangs up.
    """

    def __init__(self, writes: list[bytes]) -> None:
        super().__init__()
        self._writes = writes

    def connectionMade(self) -> None:
        for data in self._writes:
            self.transport.write(data)
        self.transport.loseConnection()


@implementer(IHandshakeListener)
class _PacedWriter(_Writer):
    """
    Writes C{writes} a few per reactor turn once TLS is up, so that the
    connection's buffer fills and drains while writes keep coming, and
    writes go from Twisted's buffer back to being sent at once.
    """

    def connectionMade(self) -> None:
        self._next = 0

    def handshakeCompleted(self) -> None:
        self._write_some()

    def _write_some(self) -> None:
        end = min(self._next + 37, len(self._writes))
        for data in self._writes[self._next:end]:
            self.transport.write(data)
        self._next = end
        if end < len(self._writes):
            reactor.callLater(0, self._write_some)
        else:
            self.transport.loseConnection()


class _Echo(_Peer):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)


CHUNK = 64 * 1024
AFTER_PAUSE = 4 * 1024 * 1024
NEVER_PAUSED = 128 * 1024 * 1024


@implementer(IPushProducer, IHandshakeListener)
class _Producer(_Peer):
    """
    A streaming producer on its own connection: once TLS is up it writes
    64 kB chunks for as long as it is not paused; after the first pause it
    writes 4 MB more and hangs up.
    """

    def __init__(self) -> None:
        super().__init__()
        self.chunks = 0
        self.paused_once: Deferred = Deferred()
        self.pauses = 0
        self.resumes = 0
        self._paused = False
        self._limit = NEVER_PAUSED
        self._written = 0
        self._done = False
        self._block = random.Random(7).randbytes(CHUNK)

    def chunk(self, index: int) -> bytes:
        return b"chunk %08d " % index + self._block[15:]

    def handshakeCompleted(self) -> None:
        self.transport.registerProducer(self, True)
        self._produce()

    def _produce(self) -> None:
        while not self._paused and not self._done and self._written < self._limit:
            chunk = self.chunk(self.chunks)
            self.chunks += 1
            self._written += len(chunk)
            self.transport.write(chunk)
        if self._written >= self._limit and not self._done:
            self._done = True
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self._paused = True
        self.pauses += 1
        if not self.paused_once.called:
            self._limit = self._written + AFTER_PAUSE
            self.paused_once.callback(self._written)

    def resumeProducing(self) -> None:
        self._paused = False
        self.resumes += 1
        reactor.callLater(0, self._produce)

    def stopProducing(self) -> None:
        self._done = True


@implementer(IHandshakeListener)
class _PausedReader(_Peer):
    """
    A client that stops reading as soon as TLS is up (pausing before would
    stall the handshake itself).
    """

    def handshakeCompleted(self) -> None:
        self.transport.pauseProducing()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


class EagerTLSServerEndpointTests(TestCase):
    """
    L{EagerTLSServerEndpoint} serves TLS over TCP with Twisted's guarantees:
    bytes in order, flow control, reading, IPv4 and IPv6.
    """

    timeout = 120

    @inlineCallbacks
    def serve(self, make_protocol, interface: str = "127.0.0.1"):
        """
        Listen on C{interface}, port 0, with a fresh certificate; the
        connections accepted get C{make_protocol()}, kept in
        C{self.servers}.
        """
        self.certificate = self_signed_certificate(interface)
        self.servers: list[_Peer] = []

        def build(addr):
            proto = make_protocol()
            self.servers.append(proto)
            self.addCleanup(self._close, proto)
            return proto

        factory = Factory()
        factory.buildProtocol = build
        endpoint = EagerTLSServerEndpoint(reactor, 0, self.certificate.options(), interface)
        self.port = yield endpoint.listen(factory)
        self.addCleanup(self.port.stopListening)
        return self.port

    def connect(self, proto: _Peer, host: str = "127.0.0.1") -> Deferred:
        """
        Connect C{proto} to the server over TLS, verifying its certificate.
        """
        tcp = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = wrapClientTLS(
            ssl.optionsForClientTLS(host, trustRoot=ssl.Certificate.loadPEM(self.certificate.chain_pem())),
            tcp(reactor, host, self.port.getHost().port, timeout=int(WAIT)),
        )
        factory = Factory()
        factory.buildProtocol = lambda addr: proto
        self.addCleanup(self._close, proto)
        return bounded(endpoint.connect(factory))

    def _close(self, proto: _Peer):
        if proto.transport is not None and not proto.lost.called:
            proto.transport.abortConnection()
        return bounded(proto.lost) if proto.transport is not None else None

    def assert_same_stream(self, received: bytes, expected: bytes) -> None:
        """
        C{received} is C{expected}; if not, say where they part.
        """
        if received == expected:
            return
        at = next(
            (i for i, (a, b) in enumerate(zip(received, expected, strict=False)) if a != b),
            min(len(received), len(expected)),
        )
        self.fail(
            f"received {len(received)} bytes, expected {len(expected)}; they differ from byte {at}: "
            f"{received[at:at + 32]!r} instead of {expected[at:at + 32]!r}"
        )

    @inlineCallbacks
    def check_writes_arrive_in_order(self, server_protocol) -> None:
        writes = _writes(seed=1)
        yield self.serve(lambda: server_protocol(writes))
        client = _Peer()
        yield self.connect(client)
        yield bounded(client.lost)
        yield bounded(self.servers[0].lost)
        self.assert_same_stream(client.data(), b"".join(writes))

    def test_writes_in_order(self) -> None:
        """
        Small and 3 MB writes interleaved, written at once on connection,
        arrive exactly as written: when a large write is only partly taken
        by the kernel and the rest is buffered, the small writes after it
        queue behind it and do not overtake.
        """
        return self.check_writes_arrive_in_order(_Writer)

    def test_paced_writes_in_order(self) -> None:
        """
        The same writes spread over many reactor turns, so that the buffer
        fills and drains while the client reads and writes go back to being
        sent at once, arrive exactly as written too.
        """
        return self.check_writes_arrive_in_order(_PacedWriter)

    @inlineCallbacks
    def test_flow_control(self) -> None:
        """
        A streaming producer writing to a client that does not read is
        paused, and resumed once the client reads again; everything it wrote
        arrives in order.
        """
        yield self.serve(_Producer)
        client = _PausedReader()
        yield self.connect(client)
        written = yield bounded(self.servers[0].paused_once)
        producer = self.servers[0]
        self.assertGreater(written, 0)
        self.assertEqual(producer.resumes, 0)
        self.assertLess(client.count, written)
        client.transport.resumeProducing()
        yield bounded(client.lost)
        yield bounded(producer.lost)
        self.assertGreaterEqual(producer.pauses, 1)
        self.assertGreaterEqual(producer.resumes, 1)
        self.assert_same_stream(client.data(), b"".join(producer.chunk(i) for i in range(producer.chunks)))

    @inlineCallbacks
    def echo(self, host: str) -> None:
        """
        Send small and large writes to an echo server on C{host}; they come
        back intact.
        """
        rng = random.Random(3)
        sent = [rng.randbytes(n) for n in (1, 100, 16 * 1024, 1024 * 1024, 7, 300 * 1024)]
        client = _Peer()
        yield self.connect(client, host)
        for data in sent:
            client.transport.write(data)
        expected = b"".join(sent)
        yield client.wait_for(len(expected))
        self.assert_same_stream(client.data(), expected)
        self.assert_same_stream(self.servers[0].data(), expected)
        client.transport.loseConnection()
        yield bounded(client.lost)
        yield bounded(self.servers[0].lost)

    @inlineCallbacks
    def test_reads(self) -> None:
        """
        The server reads too: what a client sends is echoed back intact.
        """
        yield self.serve(_Echo)
        yield self.echo("127.0.0.1")

    @inlineCallbacks
    def test_write_sent_at_once(self) -> None:
        """
        A write on an idle connection is on the wire before write() returns
        to the reactor: neither the TLS layer nor the TCP transport keeps it
        for a later turn.
        """
        yield self.serve(_Echo)
        client = _Peer()
        yield self.connect(client)
        # A round trip first, so that nothing sent before (session tickets
        # after the handshake) is left unread on the client's socket.
        client.transport.write(b"ping")
        yield client.wait_for(4)
        server = self.servers[0]
        client_socket = client.transport.transport.getHandle()
        self.assertEqual(select.select([client_socket], [], [], 0)[0], [])
        server.transport.write(b"now")
        # Block without running the reactor: only what was sent during
        # write() can arrive.
        readable, _, _ = select.select([client_socket], [], [], 5)
        self.assertEqual(readable, [client_socket], "the write was not sent before returning to the reactor")
        yield client.wait_for(7)
        self.assertEqual(client.data(), b"pingnow")

    @inlineCallbacks
    def test_ipv6(self) -> None:
        """
        The endpoint listens on an IPv6 interface when given one.
        """
        if not _has_ipv6_loopback():
            raise SkipTest("no IPv6 on loopback")
        port = yield self.serve(_Echo, "::1")
        self.assertIsInstance(port.getHost(), IPv6Address)
        self.assertEqual(port.getHost().host, "::1")
        yield self.echo("::1")
