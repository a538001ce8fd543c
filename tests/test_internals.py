"""
Tests for memmq.internals: each private detail of Twisted and autobahn that
memmq relies on, pinned on its own, so that an upgrade that changes one
fails here, in one test named after it.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import io
import signal
import socket

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.application import app
from twisted.internet import abstract, reactor, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from memmq.internals import autobahn_private, twisted_private
from memmq.internals.autobahn_private import (
    STAND_IN_KEY,
    WELL_FORMED_KEY,
    LenientKeyHandshake,
    send_close_frame,
    taken_over,
    unmasked_binary_frame,
)
from memmq.internals.twisted_private import clear_exit_signal, open_connections
from tests.support import bounded, until


class _Buffered(abstract.FileDescriptor):
    """
    A file descriptor whose socket takes at most C{room} bytes a write.
    """

    room = 1 << 20

    def __init__(self) -> None:
        super().__init__(MemoryReactor())
        self.connected = 1
        self.sent = b""

    def writeSomeData(self, data) -> int:
        taken = bytes(data[: self.room])
        self.sent += taken
        return len(taken)

    def _closeWriteConnection(self) -> None:
        pass


class WriteBufferTests(SynchronousTestCase):
    """
    FileDescriptor.dataBuffer, .offset, ._tempDataLen, ._writeDisconnected
    say what L{twisted_private.EagerWrites} reads them for.
    """

    def test_idle(self) -> None:
        """
        Nothing queued: no temporary data, and the offset at the end of the
        (empty) buffer; the write side open.
        """
        fd = _Buffered()
        self.assertEqual((fd._tempDataLen, fd.offset, fd.dataBuffer), (0, 0, b""))
        self.assertIs(fd._writeDisconnected, False)

    def test_write_queues_in_temporary_data(self) -> None:
        """
        A write is queued in the temporary data (counted by _tempDataLen)
        until the reactor calls doWrite; the offset alone does not show it.
        """
        fd = _Buffered()
        fd.write(b"abc")
        self.assertEqual(fd._tempDataLen, 3)
        self.assertEqual(fd.offset, len(fd.dataBuffer))
        fd.doWrite()
        self.assertEqual(fd.sent, b"abc")
        self.assertEqual((fd._tempDataLen, fd.offset, fd.dataBuffer), (0, 0, b""))

    def test_partial_send_leaves_offset_short(self) -> None:
        """
        What the socket did not take stays in dataBuffer, from offset.
        """
        fd = _Buffered()
        fd.room = 2
        fd.write(b"abcde")
        fd.doWrite()
        self.assertEqual(fd._tempDataLen, 0)
        self.assertLess(fd.offset, len(fd.dataBuffer))
        self.assertEqual(bytes(fd.dataBuffer[fd.offset:]), b"cde")

    def test_write_disconnected(self) -> None:
        """
        Once the write side is shut (loseWriteConnection, then doWrite),
        _writeDisconnected is true.
        """
        fd = _Buffered()
        fd.loseWriteConnection()
        fd.doWrite()
        self.assertIs(fd._writeDisconnected, True)


class _Recorder(Protocol):
    def __init__(self, made: Deferred, lost: Deferred) -> None:
        self.made = made
        self.lost = lost

    def connectionMade(self) -> None:
        self.made.callback(self)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class PortTests(TestCase):
    """
    tcp.Port.transport and WrappingFactory.protocols, on real loopback
    connections.
    """

    timeout = 30

    @inlineCallbacks
    def _connect(self, factory, port):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield bounded(endpoint.connect(Factory.forProtocol(Protocol)))
        self.addCleanup(lambda: client.transport.connected and client.transport.abortConnection())
        return client

    @inlineCallbacks
    def test_port_transport_class(self) -> None:
        """
        A Port makes its accepted connections of its C{transport} class,
        and an endpoint's client connection is a plain tcp.Client (what
        memmq.eager replaces).
        """

        class Marked(tcp.Server):
            pass

        class MarkedPort(tcp.Port):
            transport = Marked

        made, lost = Deferred(), Deferred()
        port = MarkedPort(0, Factory.forProtocol(lambda: _Recorder(made, lost)), interface="127.0.0.1")
        port.startListening()
        self.addCleanup(port.stopListening)
        client = yield self._connect(port.factory, port)
        server = yield bounded(made)
        self.assertIsInstance(server.transport, Marked)
        self.assertIs(type(client.transport), tcp.Client)
        # Its socket, and no TLS started inside it.
        self.assertIsInstance(client.transport.socket, socket.socket)
        self.assertIs(client.transport.TLS, False)
        client.transport.loseConnection()
        yield bounded(lost)

    @inlineCallbacks
    def test_take_turns(self) -> None:
        """
        A readable port accepts as many waiting connections as its
        C{numberAccepts} (counting them in C{sessionno}); one with
        L{twisted_private.TakeTurns} accepts one, stops reading for its
        turn, then reads again; stopped meanwhile, it leaves nothing behind.
        """

        class TurnPort(twisted_private.TakeTurns, tcp.Port):
            pass

        for port_class, accepted in ((tcp.Port, 3), (TurnPort, 1)):
            made: list[Protocol] = []
            factory = Factory.forProtocol(Protocol)
            factory.buildProtocol = lambda addr, made=made: made.append(Protocol()) or made[-1]
            port = port_class(0, factory, interface="127.0.0.1")
            port.startListening()
            port.stopReading()
            self.addCleanup(port.stopListening)
            clients = [socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5) for _ in range(3)]
            for client in clients:
                self.addCleanup(client.close)
            port.doRead()
            for protocol in made:
                protocol.transport.abortConnection()
            self.assertEqual((len(made), port.sessionno, port.numberAccepts), (accepted, accepted, accepted))
        self.assertNotIn(port, reactor.getReaders())
        # Its turns over, the reactor has it take the others, one a turn.
        yield until(lambda: port.sessionno == 3, 5)
        for protocol in made:
            protocol.transport.abortConnection()
        self.assertEqual(len(made), 3)
        yield port.stopListening()
        self.assertIsNone(port._turning)

    @inlineCallbacks
    def test_wrapping_factory_protocols(self) -> None:
        """
        A port listening through a WrappingFactory (TLS is one) keeps its
        open connections in C{port.factory.protocols}.
        """
        self.assertTrue(issubclass(TLSMemoryBIOFactory, WrappingFactory))
        made, lost = Deferred(), Deferred()
        port = reactor.listenTCP(
            0, WrappingFactory(Factory.forProtocol(lambda: _Recorder(made, lost))), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.assertEqual(open_connections(port), [])
        client = yield self._connect(port.factory, port)
        yield bounded(made)
        self.assertEqual(len(open_connections(port)), 1)
        client.transport.loseConnection()
        yield bounded(lost)
        self.assertEqual(open_connections(port), [])


class AdoptedPortTests(TestCase):
    """
    tcp.Port._fromListeningDescriptor, called on a subclass: what a worker
    of --workers accepts its parent's socket with.
    """

    timeout = 30

    @inlineCallbacks
    def test_subclass_adopts(self) -> None:
        """
        A port of a C{tcp.Port} subclass made from another socket's
        descriptor accepts on that socket with its own transport class.
        """

        class Marked(tcp.Server):
            pass

        class MarkedPort(tcp.Port):
            transport = Marked

        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(5)
        listening.setblocking(False)
        made, lost = Deferred(), Deferred()
        factory = Factory.forProtocol(lambda: _Recorder(made, lost))
        port = twisted_private.port_from_descriptor(MarkedPort, reactor, listening.fileno(), socket.AF_INET, factory)
        self.assertIsInstance(port, MarkedPort)
        port.startListening()
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getsockname()[1])
        client = yield bounded(endpoint.connect(Factory.forProtocol(Protocol)))
        server = yield bounded(made)
        self.assertIsInstance(server.transport, Marked)
        client.transport.loseConnection()
        yield bounded(lost)

    def test_listed(self) -> None:
        """
        The module lists it at its top.
        """
        self.assertIn("tcp.Port._fromListeningDescriptor", twisted_private.__doc__)


class ExitSignalTests(SynchronousTestCase):
    """
    ReactorBase._exitSignal: set by the reactor's signal handlers, read by
    twistd to kill the process again once the reactor stops.
    """

    def test_set_by_sigterm(self) -> None:
        """
        sigTerm records the signal; clear_exit_signal forgets it.
        """
        from twisted.internet.base import ReactorBase

        self.assertIsNone(ReactorBase._exitSignal)

        class Stub:
            _exitSignal = None
            stopping = []

            def callFromThread(self, f, *args):
                self.stopping.append(f)

            def stop(self):
                pass

        stub = Stub()
        ReactorBase.sigTerm(stub, signal.SIGTERM)
        self.assertEqual(stub._exitSignal, signal.SIGTERM)
        clear_exit_signal(stub)
        self.assertIsNone(stub._exitSignal)

    def test_read_by_twistd(self) -> None:
        """
        twistd's runner takes the reactor's _exitSignal after the reactor
        stops.
        """
        self.assertIn("reactor._exitSignal", inspect.getsource(app))

    def test_listed(self) -> None:
        """
        The module lists each name it touches at its top.
        """
        for name in ("dataBuffer", "offset", "_tempDataLen", "_writeDisconnected", "TLS", "socket",
                     "tcp.Port.transport", "WrappingFactory.protocols", "_exitSignal"):
            self.assertIn(name, twisted_private.__doc__)


_HANDSHAKE = (
    b"GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class _Lenient(LenientKeyHandshake, WebSocketServerProtocol):
    pass


def _handshake(testcase, protocol_class, key: bytes):
    factory = WebSocketServerFactory()
    factory.protocol = protocol_class
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    # Under WebSocketResource the HTTP channel is the registered producer.
    transport.registerProducer(protocol, True)
    protocol.makeConnection(transport)
    testcase.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
    protocol.dataReceived(_HANDSHAKE % key)
    return protocol, transport


def _accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


class AutobahnTests(SynchronousTestCase):
    """
    The autobahn details in L{autobahn_private}, over a protocol driven
    through a StringTransport.
    """

    def test_prepared_frame_bytes(self) -> None:
        """
        PreparedMessage(payload, True, False, True).payloadHybi is the whole
        unmasked binary frame (RFC 6455 5.2), for each length encoding.
        """
        self.assertEqual(unmasked_binary_frame(b""), b"\x82\x00")
        self.assertEqual(unmasked_binary_frame(b"hi"), b"\x82\x02hi")
        self.assertEqual(unmasked_binary_frame(b"x" * 126), b"\x82\x7e\x00\x7e" + b"x" * 126)
        self.assertEqual(
            unmasked_binary_frame(b"y" * 65536), b"\x82\x7f" + (65536).to_bytes(8, "big") + b"y" * 65536
        )

    def test_strict_key_refused(self) -> None:
        """
        autobahn refuses a Sec-WebSocket-Key that is not a 16-byte nonce
        (why the lenient handshake exists).
        """
        protocol, transport = _handshake(self, WebSocketServerProtocol, b"memmq")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())

    def test_lenient_key(self) -> None:
        """
        With the raw receive buffer (C{data}) rewritten in processHandshake
        and C{_wskey} set in succeedHandshake, the key "memmq" is accepted
        and answered with its own hash.
        """
        protocol, transport = _handshake(self, _Lenient, b"memmq")
        self.assertEqual(protocol.state, protocol.STATE_OPEN)
        self.assertIn(b"\r\nSec-WebSocket-Accept: " + _accept(b"memmq") + b"\r\n", transport.value())

    def test_well_formed_key_untouched(self) -> None:
        """
        A well-formed key is answered as autobahn answers it.
        """
        key = base64.b64encode(b"0123456789abcdef")
        protocol, transport = _handshake(self, _Lenient, key)
        self.assertIn(b"\r\nSec-WebSocket-Accept: " + _accept(key) + b"\r\n", transport.value())

    def test_stand_in_key(self) -> None:
        """
        The stand-in key is one autobahn accepts: 16 bytes, base64.
        """
        self.assertTrue(WELL_FORMED_KEY.fullmatch(STAND_IN_KEY))
        self.assertEqual(len(base64.b64decode(STAND_IN_KEY)), 16)

    def test_close_frame_1001(self) -> None:
        """
        sendClose refuses 1001; sendCloseFrame sends it.
        """
        protocol, transport = _handshake(self, _Lenient, base64.b64encode(b"0123456789abcdef"))
        transport.clear()
        try:
            protocol.sendClose(code=1001)
        except Exception as e:
            refused = str(e)
        else:
            refused = ""
        self.assertIn("1001", refused)
        self.assertEqual(transport.value(), b"")
        send_close_frame(protocol, 1001, b"bye")
        self.assertEqual(transport.value(), b"\x88\x05\x03\xe9bye")

    def test_upgrade_takes_the_connection(self) -> None:
        """
        WebSocketResource.render hands the request's connection to the
        WebSocket protocol and leaves the HTTP channel without a transport.
        """
        request = DummyRequest([b"sub"])
        request.channel = channel = DummyChannel()
        channel.transport.protocol = channel
        request.uri = b"/sub"
        request.transport = channel.transport
        request.content = io.BytesIO()
        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol
        # No opening handshake deadline: nothing left on the reactor.
        factory.setProtocolOptions(openHandshakeTimeout=0)
        self.assertFalse(taken_over(channel))
        WebSocketResource(factory).render(request)
        self.assertTrue(taken_over(channel))
        self.assertIsInstance(request.transport.protocol, WebSocketServerProtocol)

    def test_listed(self) -> None:
        """
        The module lists each name it touches at its top.
        """
        for name in ("PreparedMessage", "payloadHybi", ".data", "processHandshake", "succeedHandshake",
                     "_wskey", "sendCloseFrame", "WebSocketResource.render"):
            self.assertIn(name, autobahn_private.__doc__)


class HardeningInternalsTests(SynchronousTestCase):
    """
    The Twisted and autobahn details the limits rely on (issue 17).
    """

    def test_queued_output_under_tls(self) -> None:
        """
        L{twisted_private.queued_output} walks from a TLS wrapper down to
        the socket's buffer, and answers None once it is closed.
        """
        fd = _Buffered()
        fd.connected = 1
        fd.dataBuffer = b"abcdef"
        fd.offset = 2
        fd._tempDataLen = 3

        class Wrapper:
            pass

        wrapper = Wrapper()
        wrapper.transport = fd
        self.assertEqual(twisted_private.queued_output(wrapper), 7)
        fd.connected = 0
        self.assertIsNone(twisted_private.queued_output(wrapper))
        self.assertIsNone(twisted_private.queued_output(StringTransport()))

    def test_channel_fields(self) -> None:
        """
        twisted.web's channel keeps the chunked decoder, the request line,
        whether a request is being handled, and what it pauses to stop
        reading, under these names.
        """
        from twisted.web import http, server

        channel = http.HTTPChannel()
        channel.requestFactory = server.Request
        channel.site = server.Site(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
        self.assertIs(channel._networkProducer, transport)
        self.assertFalse(channel._handlingRequest)
        self.assertFalse(twisted_private.request_line_parsed(channel))
        channel.dataReceived(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n")
        self.assertTrue(twisted_private.request_line_parsed(channel))
        channel.dataReceived(b"\r\n10\r\nabc")
        self.assertEqual(twisted_private.chunk_length_waiting(channel), 13)
        self.assertIsInstance(channel._transferDecoder, http._ChunkedTransferDecoder)
        channel._handlingRequest = True
        twisted_private.stop_reading_during_request(channel)
        self.assertEqual(transport.producerState, "paused")

    def test_port_logger(self) -> None:
        """
        A TCP port reports accept errors through C{_logger}, read by
        C{doRead}.
        """
        port = tcp.Port(0, None)
        self.assertIn("self._logger", inspect.getsource(tcp.Port.doRead))
        marker = object()
        twisted_private.set_accept_logger(port, marker)
        self.assertIs(port._logger, marker)

    def test_fail_connection(self) -> None:
        """
        C{_fail_connection} sends a close frame with the code given.
        """
        protocol, transport = _handshake(self, _Lenient, b"dGhlIHNhbXBsZSBub25jZQ==")
        transport.clear()
        protocol.failByDrop = False  # as memmq's factory sets it
        autobahn_private.fail_connection(protocol, 1009, "too many")
        self.assertEqual(transport.value()[:4], b"\x88\x0a\x03\xf1")
        self.assertTrue(protocol.failedByMe)

    def test_hardening_names_listed(self) -> None:
        """
        Both modules list the names the limits use.
        """
        for name in ("_transferDecoder", "_handlingRequest", "_networkProducer", "_version", "tcp.Port._logger"):
            self.assertIn(name, twisted_private.__doc__)
        self.assertIn("_fail_connection", autobahn_private.__doc__)
