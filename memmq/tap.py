"""
Options and the service tree, as C{twisted/web/tap.py} has them: parsed
options in, a Service tree out; nothing else. Exiting the process, signals
and the framework's resets belong to the commands (L{memmq.script}), whose
root the tree is built under: this module is also twistd's entry (the
plugin names it), and twistd is a command too.

    MemmqService (MultiService)
      ├─ Persister: writes every message to its topic's file (--persist only)
      ├─ AccessService: says at start whether access control is on
      ├─ BackplaneService: the link to the other nodes' Redis (--backplane only)
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

from twisted.application.service import MultiService, Service

from memmq.auth import OFF
from memmq.backplane.broker import BackplaneBroker
from memmq.backplane.redis import RedisBackplane
from memmq.backplane.service import BackplaneService
from memmq.broker import Broker
from memmq.cli import client_from_options
from memmq.persist import Persister, PersistingBroker
from memmq.proxy import ProxyBroker, role
from memmq.script import ProcessRoot, TwistdOptions
from memmq.server.access import Access, AccessService
from memmq.server.drops import drop_reporter
from memmq.server.forwarded import NO_PROXIES
from memmq.server.rpc import GRPCService
from memmq.server.service import SHUTDOWN_GRACE, HTTPService
from memmq.server.web import MemmqSite
from memmq.systemd import NotifyService
from memmq.tls import self_signed_certificate

__all__ = ["Options", "MemmqService", "makeService"]

# twistd's options: MemmqOptions's command-line face, with what twistd
# does not run refused.
Options = TwistdOptions


class MemmqService(MultiService):
    """
    The root of a memmq service tree, as a test or an embedding program
    runs it.

    @ivar broker: the broker every front-end serves.
    """

    def __init__(self, broker, reactor=None) -> None:
        super().__init__()
        self.broker = broker


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


def makeService(options, reactor=None, root=ProcessRoot, worker=None) -> MultiService:
    """
    Build the service tree for parsed C{options} (a server or a proxy).

    @param root: makes the tree's root from the broker and the reactor; by
        default the commands' L{ProcessRoot}, which runs the tree as a
        process (twistd calls this function as it is); L{MemmqService}
        builds the bare tree.
    @param worker: for a worker of a server run with C{--workers}, what
        makes it one (L{memmq.workers.child.Worker}); with C{--workers} and
        none, the tree is the parent's (L{memmq.workers.parent}).
    """
    if reactor is None:
        from twisted.internet import reactor
    address = options["listen_address"]
    certificate = options["certificate"] or self_signed_certificate(address.host if address else "")
    certificate.client_authorities = options.get("client_authorities")
    access = Access(options.get("authority") or OFF, options.get("origin_list"), clock=reactor)
    if worker is None and options["workers"] > 1:
        from memmq.workers.parent import WorkersService

        parent = root(None, reactor)
        WorkersService(options, getattr(options, "argv", []), certificate, reactor).setServiceParent(parent)
        return parent
    broker = Broker(
        max_buffered_messages=options["max_buffered_messages"],
        max_buffered_bytes=options["max_buffered_bytes"],
        on_drop=drop_reporter(reactor),
    )
    proxy = None
    if options["proxy"]:
        broker = proxy = ProxyBroker(client_from_options(options, reactor), broker, reactor)
    backplane = None
    if options["backplane_target"] is not None:
        # Inside persistence: each node persists what is published through
        # it (README: Redis backplane).
        backplane = RedisBackplane(options["backplane_target"], reactor, options["backplane_optional"])
        broker = BackplaneBroker(broker, backplane)
        backplane_service = BackplaneService(broker)
    if worker is not None:
        # A worker that is a proxy or a Redis node of its own keeps its
        # messages off the mesh (README: Workers).
        broker = worker.wrap(broker, messages=proxy is None and backplane is None)
    persister = None
    if options["persist"]:
        persister = Persister(
            options["persist_dir"], options["persist_flush_interval"], options["persist_sync"],
            reactor,
        )
        broker = PersistingBroker(broker, persister)
    root = root(broker, reactor)
    # What SIGHUP reloads (memmq.script.ProcessRoot).
    root.access = access
    AccessService(access).setServiceParent(root)
    if worker is not None:
        worker.services(root)
    if persister is not None:
        # First to start, last to stop; it also writes whatever is
        # published while the front-end closes, so the order is not what
        # keeps SIGTERM from losing messages.
        persister.setServiceParent(root)
    if backplane is not None:
        # Connected before the front-ends listen, disconnected after.
        backplane_service.setServiceParent(root)
    if options["proxy"]:
        # Started first, so stopped last: upstream connections close once
        # the front-end has said goodbye to its own subscribers.
        UpstreamService(proxy, reactor).setServiceParent(root)
    proxy_role = role(options) if options["proxy"] else ""
    site = MemmqSite(
        broker, max_message_size=options["max_message_size"], access_log=options["access_log"], clock=reactor,
        replay=persister, upstreams=proxy.upstream_health if proxy is not None else None, access=access,
        # Any origin unless the access-control options say otherwise.
        allowed_origins=options.get("origin_list") or None,
        trusted_proxies=options.get("trusted_proxy_list") or NO_PROXIES,
    )
    if backplane is not None:
        from memmq.backplane.metrics import BackplaneCollector

        site.health_checks.append(backplane.problem)
        site.metrics.registry.register(BackplaneCollector(backplane))
    serves_grpc = options["transport"] == "grpc"
    if not serves_grpc or options["listen"]:
        # --listen endpoints are HTTP whatever the transport (for /metrics).
        http_address = None if serves_grpc else address
        http = HTTPService(site, http_address, certificate, reactor, options["listen"], proxy_role)
        if worker is not None:
            worker.adopt(http)
        http.setServiceParent(root)
    grpc_address = address if serves_grpc else options["grpc_listen_address"]
    if grpc_address is not None:
        grpc = GRPCService(
            broker, grpc_address, certificate, reactor, options["max_message_size"], proxy_role, access
        )
        grpc.reuse_port = worker is not None
        grpc.setServiceParent(root)
    # Last to start (after the front-end listens), first to stop.
    (NotifyService(reactor) if worker is None else worker.notifier()).setServiceParent(root)
    return root
