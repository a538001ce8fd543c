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

Each is pinned by C{tests/test_internals.py}.
"""

from __future__ import annotations

import errno

from twisted.internet.interfaces import IListeningPort

__all__ = ["EagerWrites", "clear_exit_signal", "open_connections", "port_from_descriptor"]

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


def port_from_descriptor(port_class, reactor, fd: int, family: int, factory):
    """
    A (not yet listening) port of C{port_class}, a C{tcp.Port} subclass,
    over a duplicate of the listening socket C{fd}: what
    C{reactor.adoptStreamPort} does with C{tcp.Port}.
    """
    return port_class._fromListeningDescriptor(reactor, fd, family, factory)
