"""
The HTTP front-end as a Twisted service: listen on start (on C{--address}
and every C{--listen} endpoint); on stop, stop listening everywhere, say
goodbye to every subscriber and publisher connection (WebSocket close 1001,
going away), wait briefly for them to go, and close the idle HTTP
connections that remain.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.logger import Logger

from memmq.errors import MemmqError
from memmq.internals.twisted_private import open_connections
from memmq.server.listen import Address, announce_listening, listen_endpoint, listen_tls
from memmq.server.system_limits import watch_accepts
from memmq.server.web import MemmqSite
from memmq.tls import ServerCertificate

__all__ = ["HTTPService", "SHUTDOWN_GRACE"]

_log = Logger()

# How long connections get to close politely before they are dropped; the
# whole stop stays within a second.
SHUTDOWN_GRACE = 0.4


class HTTPService(Service):
    """
    Serves a L{MemmqSite} over TLS on an address and on any number of
    endpoints (C{--listen}).

    @ivar ports: the listening ports, once started: the address's first.
    @ivar role: what the start-up line adds after the address (a proxy
        says what it proxies); empty for a server.
    """

    name = "http"

    def __init__(
        self, site: MemmqSite, address: Address | None, certificate: ServerCertificate, reactor,
        endpoints: Sequence[str] = (), role: str = "",
    ) -> None:
        self.site = site
        self.role = role
        self.address = address
        self.endpoints = list(endpoints)
        self.certificate = certificate
        self._reactor = reactor
        self.ports: list[IListeningPort] = []
        self._descriptions: list[str | None] = []

    @property
    def port(self) -> IListeningPort | None:
        """
        The first listening port (the address's, if there is one).
        """
        return self.ports[0] if self.ports else None

    def privilegedStartService(self) -> None:
        # Listen here, before twistd sheds privileges, and raise at once
        # (ListenError) when a port is taken.
        if not self.ports:
            self._listen()
        super().privilegedStartService()

    def _listen(self) -> None:
        options = self.certificate.options()
        try:
            if self.address is not None:
                self._listening(listen_tls(self._reactor, self.address, options, self.site))
            for description in self.endpoints:
                self._listening(listen_endpoint(self._reactor, description, options, self.site), description)
        except MemmqError:
            # All or nothing: a service that did not start holds no port.
            ports, self.ports, self._descriptions = self.ports, [], []
            for port in ports:
                port.stopListening()
            raise

    def _listening(self, port: IListeningPort, description: str | None = None) -> None:
        self.ports.append(port)
        watch_accepts(port, self.site.guard)
        self._descriptions.append(description)

    def adopt(self, port: IListeningPort, description: str | None = None) -> None:
        """
        Serve on C{port}, listening already (a worker of C{--workers} on
        its parent's socket), instead of listening itself; the parent says
        where the server listens, so this service does not.
        """
        self.quiet = True
        self._listening(port, description)

    #: whether the start-up lines saying where it listens are someone else's
    quiet = False

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()
        # Said here, once every service of the tree has taken its ports (a
        # gRPC port in use ends the start before this): "listening" means
        # all of them.
        if self.quiet:
            return
        for port, description in zip(self.ports, self._descriptions, strict=True):
            announce_listening(_log, port, description, self.certificate.origin, self.role)

    def stopService(self):
        super().stopService()
        ports, self.ports, self._descriptions = self.ports, [], []
        _log.info(
            "memmq stopping: no longer listening; closing {count} subscriber and publisher connections",
            count=len(self.site.connections),
        )
        self.site.stopping = True
        self.site.combiner.stop()
        stopping = [self.site.connections.close_all(self._reactor, SHUTDOWN_GRACE)]
        stopping += [maybeDeferred(port.stopListening) for port in ports]

        def close_the_rest(_):
            # What is left are idle keep-alive HTTP connections (and requests
            # in flight): a stopped server serves nothing more on them.
            remaining = [connection for port in ports for connection in open_connections(port)]
            for connection in remaining:
                connection.loseConnection()
            return self._until_closed(ports, self._reactor.seconds() + SHUTDOWN_GRACE)

        return DeferredList(stopping, consumeErrors=True).addCallback(close_the_rest)

    def _until_closed(self, ports, deadline: float, aborted: bool = False) -> Deferred | None:
        """
        Wait (checking every 10 ms) until the connections of C{ports} are
        gone; past C{deadline}, abort what is left, and give up waiting a
        grace later.
        """
        if not any(open_connections(port) for port in ports):
            return None
        if self._reactor.seconds() >= deadline:
            if aborted:
                return None
            for port in ports:
                for connection in open_connections(port):
                    connection.abortConnection()
            deadline, aborted = self._reactor.seconds() + SHUTDOWN_GRACE, True
        return deferLater(self._reactor, 0.01, self._until_closed, ports, deadline, aborted)

