"""
Options and the service tree: what C{twistd memmq}, C{memmq} and
C{python -m memmq} all build.

    MemmqService (MultiService)
      └─ HTTPService: the HTTP/WebSocket front-end over the broker

The broker itself is plain state owned here; front-ends hold a reference.
"""

from __future__ import annotations

import os

from twisted.application.service import MultiService
from twisted.python import usage

from memmq.broker import Broker
from memmq.errors import MemmqError
from memmq.options import MemmqOptions
from memmq.server.http import MemmqSite
from memmq.server.service import HTTPService
from memmq.tls import self_signed_certificate

__all__ = ["Options", "MemmqService", "makeService"]


def _fail(message: str) -> SystemExit:
    """
    Print one line on the original stderr (twistd redirects sys.stderr into
    its log once running) and return the exit for status 2.
    """
    try:
        os.write(2, f"memmq: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass
    return SystemExit(2)


class Options(MemmqOptions):
    """
    The command-line face of L{MemmqOptions}: a bad option is one line on
    stderr and exit status 2, not a usage dump or a traceback.
    """

    def parseOptions(self, options=None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            # Twisted prefixes a failed coercion; the reason after it is ours.
            reason = str(e).removeprefix("Parameter type enforcement failed: ")
            raise _fail(f"{reason} (see memmq --help)") from None


class MemmqService(MultiService):
    """
    The root of a memmq process.

    A failure to start that a user can cause (the port is in use) ends the
    process with one line and status 2, under twistd as under C{memmq}.

    @ivar broker: the broker every front-end serves.
    """

    def __init__(self, broker, reactor) -> None:
        super().__init__()
        self.broker = broker
        self._reactor = reactor

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except MemmqError as e:
            raise _fail(str(e)) from None

    def stopService(self):
        # twistd ends a process stopped by SIGTERM or SIGINT by killing it
        # again with that signal once the reactor stops.  A broker that
        # shut down cleanly because it was asked to exits 0, under twistd as
        # under the memmq command.
        if getattr(self._reactor, "_exitSignal", None) is not None:
            self._reactor._exitSignal = None
        return super().stopService()


def makeService(options, reactor=None) -> MemmqService:
    """
    Build the service tree for parsed C{options}.
    """
    if options["client"] or options["interactive"]:
        raise _fail("--client and -i are for the memmq command; twistd memmq runs the server")
    if reactor is None:
        from twisted.internet import reactor
    address = options["listen_address"]
    certificate = options["certificate"] or self_signed_certificate(address.host)
    broker = Broker(
        max_buffered_messages=options["max_buffered_messages"],
        max_buffered_bytes=options["max_buffered_bytes"],
    )
    root = MemmqService(broker, reactor)
    site = MemmqSite(
        broker, max_message_size=options["max_message_size"], access_log=options["access_log"], clock=reactor
    )
    HTTPService(site, address, certificate, reactor).setServiceParent(root)
    return root
