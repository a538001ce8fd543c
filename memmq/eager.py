"""
TLS over TCP connections that send at once when they can: the server's
(every accepted connection) and the client's publish connections.

A Twisted TCP transport buffers every write and registers the socket for
writability; the next turn of the reactor sends the buffer and unregisters
it.  For a broker that is three system calls per subscriber per message
(two C{epoll_ctl}, one C{send}), and profiling the fan-out showed the two
C{epoll_ctl} calls taking more time than everything else put together.
These connections try the C{send} straight away when nothing is queued
before it, and fall back to Twisted's own buffering for whatever the kernel
does not take, on any error, and while closing, so that ordering, flow
control (producers are paused exactly as before) and error handling stay
Twisted's.

For the same reason TLS records are written as the application writes them,
not gathered by Twisted's C{BufferingTLSTransport} for one more turn of the
reactor: memmq gathers what a subscriber is sent itself
(L{memmq.server.combine}), and the fan-out needs to know when its writes
have really gone out.
"""

from __future__ import annotations

import socket

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from memmq.internals.twisted_private import EagerWrites, TakeTurns, port_from_descriptor
from memmq.server.plain_http import GuardedTLSProtocol

__all__ = ["EagerTLSServerEndpoint", "ImmediateTLSFactory", "adopt_eager_tls", "adopt_shared", "make_eager"]

class _EagerServer(EagerWrites, tcp.Server):
    """
    A server-side TCP connection with eager writes.
    """

    _host = None

    def getHost(self):
        # twisted.web asks for every request; the answer never changes, and
        # a getsockname() per request showed in the profile.
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host


class _EagerClient(EagerWrites, tcp.Client):
    """
    A client-side TCP connection with eager writes.
    """


def make_eager(transport) -> None:
    """
    Give a connected client TCP transport eager writes (a connection made
    through an endpoint is a plain C{tcp.Client}; anything else is left
    alone).
    """
    if type(transport) is tcp.Client:
        transport.__class__ = _EagerClient


class _EagerPort(tcp.Port):
    transport = _EagerServer


class _SharedPort(TakeTurns, _EagerPort):
    """
    An eager port over a socket several workers accept on.
    """


class _SharedPlainPort(TakeTurns, tcp.Port):
    """
    A TCP port over a socket several workers accept on.
    """


class ImmediateTLSFactory(TLSMemoryBIOFactory):
    """
    TLS whose records are written as the application writes (no
    C{BufferingTLSTransport} turn); plain HTTP is answered a 400
    (L{memmq.server.limits}).
    """

    protocol = GuardedTLSProtocol


@implementer(IStreamServerEndpoint)
class EagerTLSServerEndpoint:
    """
    TLS over TCP on C{interface} (IPv4 or IPv6: the family follows the
    address), with eager connections and immediate TLS writes.
    """

    def __init__(self, reactor, port: int, options, interface: str = "", backlog: int = 50) -> None:
        self._reactor = reactor
        self._port = port
        self._options = options
        self._interface = interface
        self._backlog = backlog

    def listen(self, protocolFactory) -> defer.Deferred:
        def start():
            factory = ImmediateTLSFactory(self._options, False, protocolFactory, self._reactor)
            port = _EagerPort(self._port, factory, self._backlog, self._interface, self._reactor)
            port.startListening()
            return port

        return defer.execute(start)


def adopt_eager_tls(reactor, fd: int, family: int, options, protocolFactory):
    """
    Accept, with eager connections and immediate TLS writes, on the
    listening socket C{fd} (of address family C{family}) that another
    process opened and passed down (a worker of C{--workers}), taking
    turns with the other workers (L{TakeTurns}); the socket is
    duplicated, C{fd} left to the caller.
    """
    factory = ImmediateTLSFactory(options, False, protocolFactory, reactor)
    port = port_from_descriptor(_SharedPort, reactor, fd, family, factory)
    port.startListening()
    return port


def adopt_shared(reactor, fd: int, family: int, factory):
    """
    Accept with C{factory} on the listening socket C{fd} that another
    process opened and passed down (a C{--listen} socket of a worker of
    C{--workers}): a TCP socket taking turns with the other workers
    (L{TakeTurns}), a UNIX one as Twisted adopts it.  The socket is
    duplicated, C{fd} left to the caller.
    """
    if family not in (socket.AF_INET, socket.AF_INET6):
        return reactor.adoptStreamPort(fd, family, factory)
    port = port_from_descriptor(_SharedPlainPort, reactor, fd, family, factory)
    port.startListening()
    return port
