"""
Options and the service tree: what C{twistd memmq}, C{memmq} and
C{python -m memmq} all build.

    MemmqService (MultiService)
      ├─ Persister: writes every message to its topic's file (--persist only)
      ├─ UpstreamService: a proxy's upstream connections (--proxy only)
      ├─ HTTPService: the HTTP/WebSocket front-end over the broker, on
      │    --address and every --listen endpoint
      ├─ GRPCService: the gRPC front-end, in a thread of its own, on
      │    --address (--transport=grpc) or --grpc_address
      └─ NotifyService: READY=1 / STOPPING=1 / watchdog for systemd

The broker (the in-memory one, or a proxy's ProxyBroker over the client
library) is owned here; front-ends hold a reference.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

from twisted.application.service import MultiService, Service
from twisted.python import usage

from memmq.broker import Broker
from memmq.cli import client_from_options
from memmq.client.servers import endpoint_of
from memmq.errors import MemmqError
from memmq.options import MemmqOptions
from memmq.persist import Persister, PersistingBroker
from memmq.proxy import ProxyBroker
from memmq.server.drops import drop_reporter
from memmq.server.rpc import GRPCService
from memmq.server.service import SHUTDOWN_GRACE, HTTPService
from memmq.server.web import MemmqSite
from memmq.systemd import NotifyService
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

    def startService(self) -> None:
        super().startService()
        # Between here (listening, READY=1 sent) and reactor.run(), which
        # installs Twisted's own handlers, SIGTERM would kill the process
        # outright; ask for the same clean stop instead.
        if not self._reactor.running and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._stop_once_running)

    def _stop_once_running(self, signum, frame) -> None:
        self._reactor.callFromThread(self._reactor.stop)

    def stopService(self):
        # twistd ends a process stopped by SIGTERM or SIGINT by killing it
        # again with that signal once the reactor stops.  A broker that
        # shut down cleanly because it was asked to exits 0, under twistd as
        # under the memmq command.
        if getattr(self._reactor, "_exitSignal", None) is not None:
            self._reactor._exitSignal = None
        return super().stopService()


class UpstreamService(Service):
    """
    Closes a proxy's upstream subscriptions and connections when it stops.
    """

    name = "upstream"

    def __init__(self, broker: ProxyBroker, reactor) -> None:
        self.broker = broker
        self._reactor = reactor

    def stopService(self):
        super().stopService()
        return self.broker.close().addTimeout(SHUTDOWN_GRACE * 2, self._reactor).addErrback(
            lambda f: None
        )


def refuse_self(address, servers: list[str], resolver: str) -> None:
    """
    Refuse, at start, a proxy that lists itself among its servers: every
    message it forwarded would come back to it.

    Only names used as given can be checked here; for the rest (and for
    cycles through several proxies) the hop limit of L{memmq.hops} holds.
    """
    if resolver != "ip" or address.port == 0:
        return
    own = {address.host, "localhost", "127.0.0.1", "::1", "0.0.0.0", "::", socket.gethostname()}
    if address.host in ("", "0.0.0.0", "::"):
        own.update(_local_addresses())
    for server in servers:
        _, host, port = endpoint_of(server)
        if port == address.port and host in own:
            raise _fail(f"--servers lists this proxy itself ({server}): a proxy cannot be its own upstream")


def _local_addresses() -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return set()


def _persist_dir(directory: str) -> str:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise _fail(f"--persist_dir: cannot create {directory}: {e.strerror or e}") from None
    return directory


def makeService(options, reactor=None, own_logging: bool = False) -> MemmqService:
    """
    Build the service tree for parsed C{options}.

    @param own_logging: the caller set logging up from C{--log_format} (the
        memmq command does; under twistd, twistd owns logging).
    """
    if options["client"] or options["interactive"]:
        raise _fail("--client and -i are for the memmq command; twistd memmq runs the server")
    if options["log_format"] != "text" and not own_logging:
        raise _fail("--log_format is for the memmq command; under twistd use --logger=memmq.logs.json_observer")
    if reactor is None:
        from twisted.internet import reactor
    address = options["listen_address"]
    certificate = options["certificate"] or self_signed_certificate(address.host if address else "")
    broker = Broker(
        max_buffered_messages=options["max_buffered_messages"],
        max_buffered_bytes=options["max_buffered_bytes"],
        on_drop=drop_reporter(reactor),
    )
    if options["proxy"]:
        for own in (address, options["grpc_listen_address"]):
            if own is not None:
                refuse_self(own, options["server_list"], options["resolver"])
        broker = ProxyBroker(client_from_options(options, reactor), broker, reactor)
    persister = None
    if options["persist"]:
        persister = Persister(
            _persist_dir(options["persist_dir"]), options["persist_flush_interval"], options["persist_sync"],
            reactor,
        )
        broker = PersistingBroker(broker, persister)
    root = MemmqService(broker, reactor)
    if persister is not None:
        # First to start, last to stop; it also writes whatever is
        # published while the front-end closes, so the order is not what
        # keeps SIGTERM from losing messages.
        persister.setServiceParent(root)
    if options["proxy"]:
        # Started first, so stopped last: upstream connections close once
        # the front-end has said goodbye to its own subscribers.
        UpstreamService(broker, reactor).setServiceParent(root)
    site = MemmqSite(
        broker, max_message_size=options["max_message_size"], access_log=options["access_log"], clock=reactor,
        replay=persister,
    )
    serves_grpc = options["transport"] == "grpc"
    if not serves_grpc or options["listen"]:
        # --listen endpoints are HTTP whatever the transport (for /metrics).
        http_address = None if serves_grpc else address
        HTTPService(site, http_address, certificate, reactor, options["listen"]).setServiceParent(root)
    grpc_address = address if serves_grpc else options["grpc_listen_address"]
    if grpc_address is not None:
        GRPCService(broker, grpc_address, certificate, reactor, options["max_message_size"]).setServiceParent(root)
    # Last to start (after the front-end listens), first to stop.
    NotifyService(reactor).setServiceParent(root)
    return root
