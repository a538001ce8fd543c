"""
The HTTP front-end as a Twisted service: listen on start; on stop, stop
listening, say goodbye to every subscriber and publisher connection
(WebSocket close 1001, going away), wait briefly for them to go, and close
the idle HTTP connections that remain.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from memmq.server.http import MemmqSite
from memmq.server.listen import Address, listen_tls
from memmq.tls import ServerCertificate

__all__ = ["HTTPService", "SHUTDOWN_GRACE"]

_log = Logger()

# How long connections get to close politely before they are dropped; the
# whole stop stays within a second.
SHUTDOWN_GRACE = 0.4


class HTTPService(Service):
    """
    Serves a L{MemmqSite} over TLS on one address.

    @ivar port: the listening port, once started.
    """

    name = "http"
    port = None

    def __init__(self, site: MemmqSite, address: Address, certificate: ServerCertificate, reactor) -> None:
        self.site = site
        self.address = address
        self.certificate = certificate
        self._reactor = reactor

    def privilegedStartService(self) -> None:
        # Listen here, before twistd sheds privileges, and raise at once
        # (ListenError) when the port is taken.
        if self.port is None:
            self.port = listen_tls(self._reactor, self.address, self.certificate.options(), self.site)
            host = self.port.getHost()
            shown = f"[{host.host}]" if ":" in host.host else host.host
            _log.info(
                "memmq listening on https://{address} (certificate {origin})",
                address=f"{shown}:{host.port}", origin=self.certificate.origin,
            )
        super().privilegedStartService()

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        self.site.stopping = True
        self.site.combiner.stop()
        stopping = [self.site.connections.close_all(self._reactor, SHUTDOWN_GRACE)]
        if port is not None:
            stopping.append(maybeDeferred(port.stopListening))

        def close_the_rest(_):
            # What is left are idle keep-alive HTTP connections (and requests
            # in flight): a stopped server serves nothing more on them.
            if port is None:
                return None
            remaining = port.factory.protocols
            for connection in list(remaining):
                connection.loseConnection()
            return self._until_closed(remaining, self._reactor.seconds() + SHUTDOWN_GRACE)

        return DeferredList(stopping, consumeErrors=True).addCallback(close_the_rest)

    def _until_closed(self, connections, deadline: float, aborted: bool = False) -> Deferred | None:
        """
        Wait (checking every 10 ms) until C{connections} is empty; past
        C{deadline}, abort what is left, and give up waiting a grace later.
        """
        if not connections:
            return None
        if self._reactor.seconds() >= deadline:
            if aborted:
                return None
            for connection in list(connections):
                connection.abortConnection()
            deadline, aborted = self._reactor.seconds() + SHUTDOWN_GRACE, True
        return deferLater(self._reactor, 0.01, self._until_closed, connections, deadline, aborted)
