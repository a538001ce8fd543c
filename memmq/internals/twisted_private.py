"""
The details of Twisted that memmq relies on and Twisted does not publish.

    FileDescriptor.dataBuffer, .offset, ._tempDataLen, ._writeDisconnected
                            twisted.internet.abstract: a connection's write
                            buffer (what is queued and not yet sent) and
                            whether its write side is shut; read by
                            L{EagerWrites} to send at once only when nothing
                            is queued before
    tcp.Connection.socket, .TLS
                            the connection's socket, and whether
                            startTLS() put TLS inside it
    tcp.Port.transport      the class a port makes its accepted connections
                            of (L{memmq.eager} gives it eager writes)
    WrappingFactory.protocols
                            twisted.protocols.policies: the open connections
                            of a port listening through a wrapping (TLS)
                            factory, reached as C{port.factory.protocols}
    tcp.Port._fromListeningDescriptor
                            how C{reactor.adoptStreamPort} makes a port of
                            an inherited listening socket; called on
                            memmq's own port class (L{memmq.eager}) so that
                            a worker's adopted socket accepts eager
                            connections
    ReactorBase._exitSignal the signal (SIGTERM, SIGINT) that stopped the
                            reactor; twistd and twist kill the process with
                            it again once the reactor stops
    ProtocolWrapper.transport, tcp.Connection.connected
                            the transport under a TLS layer, and whether the
                            socket is still open (L{queued_output} walks down
                            to it)
    HTTPChannel._transferDecoder, _ChunkedTransferDecoder.state, .length
                            twisted.web/http: the decoder of the request
                            body being read, and the size of the chunk it
                            waits for (L{chunk_length_waiting})
    HTTPChannel._handlingRequest, ._networkProducer
                            whether a request is being answered, and what
                            the channel pauses to stop reading
    HTTPChannel._version    set once a request line is parsed, removed once
                            the request is read (L{request_line_parsed})
    tcp.Port._logger        the logger a port reports accept errors to
                            (one line per refused connection)
    tcp.Port.numberAccepts, .sessionno, .doRead, .connectionLost
                            how many connections a port accepts each time
                            its socket is readable (Twisted grows it by 20
                            when it takes them all), how many it has
                            accepted, the accepting, and the port's end:
                            L{TakeTurns} accepts one at a time


Each is pinned by C{tests/test_internals.py}.
"""

from __future__ import annotations

import errno

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IListeningPort

__all__ = [
    "EagerWrites", "TakeTurns", "chunk_length_waiting", "clear_exit_signal", "open_connections", "port_from_descriptor",
    "queued_output", "request_line_parsed", "set_accept_logger", "stop_reading_during_request",
]

_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS)


class EagerWrites:
    """
    A mixin for a Twisted TCP connection class (before it in the bases):
    a write goes to the socket at once when nothing is queued before it;
    what the kernel does not take, any error, and every write while closing
    or with TLS started inside the connection go through Twisted's own
    buffering, so ordering, flow control and error handling stay Twisted's.
    """

    def write(self, data: bytes) -> None:
        if (
            not self.TLS
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
            and data
        ):
            try:
                sent = self.socket.send(data)
            except OSError as e:
                # EAGAIN: the kernel buffer is full; anything else is left
                # for doWrite to find and report the Twisted way.
                sent = 0
                if e.errno not in _RETRY:
                    return super().write(data)
            if sent == len(data):
                return None
            data = data[sent:]
        return super().write(data)

    def writeSequence(self, iovec) -> None:
        self.write(b"".join(iovec))


def open_connections(port: IListeningPort) -> list:
    """
    The open connections of C{port}, listening through a wrapping factory
    (TLS): that factory keeps them.  Empty for any other port.
    """
    return list(getattr(getattr(port, "factory", None), "protocols", ()))


def clear_exit_signal(reactor) -> None:
    """
    Forget the signal that stopped C{reactor}, so that twistd (or twist)
    ends the process with status 0 rather than killing it with that signal
    again: for a server that shut down cleanly because it was asked to.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None


class TakeTurns:
    """
    Mixed into a C{tcp.Port} subclass over a listening socket that several
    worker processes accept on: accept one connection each time the socket
    is readable, then leave it to the others for L{turn} seconds.

    Every worker is woken for a new connection and the first to call
    accept() takes it. Left to Twisted, a worker takes up to 100 at once,
    and the one back in its loop first takes the next as well, so the
    connections a client opens together often land mostly on one worker
    (16 landed 14 and 2); taking turns spreads them evenly. A worker
    still takes up to 1 / L{turn} connections a second when the others
    are busy.
    """

    turn = 0.0005
    _turning = None

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass

    def doRead(self):
        accepted = self.sessionno
        super().doRead()
        if self.sessionno != accepted and self.connected:
            self.stopReading()
            self._turning = self.reactor.callLater(self.turn, self._turn_over)

    def _turn_over(self) -> None:
        self._turning = None
        if self.connected:
            self.startReading()

    def connectionLost(self, reason) -> None:
        if self._turning is not None and self._turning.active():
            self._turning.cancel()
        self._turning = None
        super().connectionLost(reason)


def port_from_descriptor(port_class, reactor, fd: int, family: int, factory):
    """
    A (not yet listening) port of C{port_class}, a C{tcp.Port} subclass,
    over a duplicate of the listening socket C{fd}: what
    C{reactor.adoptStreamPort} does with C{tcp.Port}.
    """
    return port_class._fromListeningDescriptor(reactor, fd, family, factory)


def queued_output(transport) -> int | None:
    """
    How many bytes C{transport} (or the socket under its TLS layer) holds
    that the peer has not taken yet; L{None} once the socket is closed.
    """
    while transport is not None and not isinstance(transport, FileDescriptor):
        transport = vars(transport).get("transport")
    if transport is None or not transport.connected:
        return None
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def chunk_length_waiting(channel) -> int | None:
    """
    The size of the chunk C{channel}'s chunked request body is waiting for
    (what is left of it), or L{None}: no chunked body, or between chunks.
    """
    decoder = getattr(channel, "_transferDecoder", None)
    if getattr(decoder, "state", None) != "BODY":
        return None
    return getattr(decoder, "length", None)


def set_accept_logger(port, logger) -> None:
    """
    Make C{port} (a C{tcp.Port}) report its accept errors to C{logger}.
    """
    port._logger = logger


def stop_reading_during_request(channel) -> None:
    """
    Stop C{channel} (an C{HTTPChannel}) reading while a request is being
    answered, as twisted.web does between requests only; it reads again
    once the request is done and its transport has room.
    """
    if channel._handlingRequest:
        channel._networkProducer.pauseProducing()


def request_line_parsed(channel) -> bool:
    """
    Whether C{channel} (an C{HTTPChannel}) holds a parsed request line for
    the request whose headers it is reading.
    """
    return hasattr(channel, "_version")
