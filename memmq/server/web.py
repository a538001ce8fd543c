"""
The HTTP front-end: one twisted.web L{Site} serving asim/mq's API.

    POST|PUT /pub?topic=T      publish the body
    GET /pub?topic=T           (WebSocket upgrade) publish each message received
    GET /sub?topic=T           (WebSocket upgrade) one binary frame per message
    GET /sub?topic=T           (no upgrade) a chunked stream of the payloads
    GET /sub?topic=T           (Accept: text/event-stream) Server-Sent Events
    OPTIONS /pub               a browser's CORS preflight (memmq.server.cors)
    GET /, /dashboard/NAME     the dashboard (memmq.server.dashboard)
    GET /api/server            what the dashboard shows of the server
    GET /sub?topic=T&since=N   either, persisted messages after N first (--persist)
    GET /sub?pattern=P&group=G either form, a pattern of topics, a queue group
    GET /sub                   (upgrade offering memmq.v1) many subscriptions (memmq.server.mux)
    GET /health                200 while serving, 503 while shutting down (a
                               proxy's says how each upstream is)
    GET /metrics, /stats       Prometheus metrics; JSON figures (memmq.server.metrics)

Errors are plain text, one line, with a status that says what is wrong
(README, the table under "Errors are one line of plain text");
L{memmq.server.resources.status_of} is the one table that turns memmq's errors into statuses.
Nothing is logged per request unless the access log is asked for.
"""

from __future__ import annotations

import io
from time import perf_counter

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from memmq.defaults import MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE
from memmq.hops import HOPS_HEADER, check_hops
from memmq.interfaces import IBroker, IReplaySource
from memmq.patterns import parse_pattern
from memmq.server.access import Access
from memmq.server.combine import Combiner
from memmq.server.connections import Connections
from memmq.server.cors import Origins
from memmq.server.credentials import redact_tokens
from memmq.server.dashboard import DashboardFiles
from memmq.server.forwarded import NO_PROXIES, ClientAddress, TrustedProxies, client_address
from memmq.server.http_channel import GuardedChannel, hang_up
from memmq.server.limits import Guard
from memmq.server.metrics import Metrics
from memmq.server.mux import mux_resource, wants_mux
from memmq.server.query import NO_REPLAY, since_from_query, subject_from_query, topic_from_query
from memmq.server.readouts import HealthResource, MetricsResource, StatsResource, SummaryResource
from memmq.server.resources import Branch, HTTPError, LeafResource, error, is_websocket_upgrade, status_of
from memmq.server.sse import EventStreamSubscriber, last_event_id, wants_event_stream
from memmq.server.stream import StreamingSubscriber
from memmq.server.summary import ServerSummary
from memmq.server.websocket import PublisherProtocol, SubscriberProtocol, UpgradeResource, WebSocketFactory

__all__ = ["MemmqSite", "DEFAULT_MAX_MESSAGE_SIZE"]

_access_log = Logger(namespace="memmq.access")


# How much of a refused body is read and thrown away before hanging up, so
# that the client is reading our 413 rather than a reset when we close.
_DISCARD_LIMIT = 4 * 1024 * 1024


def _plain_text(code: int, reason: str) -> bytes:
    return (
        f"HTTP/1.1 {code} {http.RESPONSES.get(code, b'').decode()}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(reason) + 1}\r\n"
        f"Connection: close\r\n\r\n{reason}\n"
    ).encode()


class MemmqRequest(server.Request):
    """
    A request whose body is bounded by the site's C{max_message_size}.

    An oversized body is refused as soon as it is known to be: on its
    C{Content-Length} before a byte of it is read, or, for a chunked body,
    at the chunk that passes the limit.  The 413 is sent at once; what the
    client still sends of the body is read and dropped (up to a limit) so
    that it sees the answer, and the connection is then closed.  Bodies are
    kept in memory: they are bounded, and a temporary file would cost a
    disk write for every chunked publish.
    """

    _refused = False
    _received = 0

    def __init__(self, channel, *args, **kwargs) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)
        self._limit = channel.site.max_message_size

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit:
            self._refuse()
        else:
            self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._refused:
            if self._received > _DISCARD_LIMIT:
                hang_up(self.channel)
            return
        if self._received > self._limit:
            self._refuse()
            return
        self.content.write(data)

    @property
    def refused(self) -> bool:
        """
        Whether the body was refused (413 sent).
        """
        return self._refused

    def requestReceived(self, command, path, version) -> None:
        if self._refused:
            self.channel.loseConnection()
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        self._received = 0
        self.content = io.BytesIO()
        expects_continue = self.requestHeaders.hasHeader(b"expect")
        # Twisted would otherwise send "100 Continue" after our answer.
        self.requestHeaders.removeHeader(b"expect")
        self.channel.persistent = False
        self.channel.transport.write(
            _plain_text(413, f"message larger than {self._limit} bytes")
        )
        if expects_continue:
            # The client waits for our word before sending the body: it
            # has it, and will send nothing more.
            self.channel.loseConnection()


class MemmqSite(server.Site):
    """
    The site: C{/pub} and C{/sub} over one broker.

    @param broker: what C{/pub} and C{/sub} serve, and whose figures
        C{/metrics} and C{/stats} show.
    @param replay: where a subscriber's C{?since=N} is read from (a server
        run with C{--persist}); without it, C{since} is refused.
    @param allowed_origins: the page origins browsers may publish and
        subscribe from (CORS); L{None}, the default, allows any.
    @param trusted_proxies: the proxies whose C{X-Forwarded-For} and
        C{X-Forwarded-Proto} are believed (L{client_address}).
    @param mux: serve C{memmq.v1} on C{/sub} (README, "One connection, many
        subscriptions"); without it the subprotocol is refused, as by a
        server that predates it.
    @param upstreams: for a proxy, fires with a line per upstream server
        for C{/health} (L{memmq.proxy.ProxyBroker.upstream_health}).
    @param access: who may do what (L{memmq.server.access}); by default
        access control is off.
    @ivar connections: the open WebSocket connections and streaming
        responses, closed by the server when it stops.
    """

    requestFactory = MemmqRequest
    protocol = GuardedChannel
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        broker: IBroker,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        access_log: bool = False,
        clock: IReactorTime | None = None,
        replay: IReplaySource | None = None,
        allowed_origins: list[str] | None = None,
        trusted_proxies: TrustedProxies = NO_PROXIES,
        upstreams=None,
        access: Access | None = None,
        mux: bool = True,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.access = access = access or Access(clock=clock)
        self.broker = broker
        self.origins = Origins(allowed_origins)
        self.trusted_proxies = trusted_proxies
        self.upstreams = upstreams
        self.combiner = Combiner(clock)
        self.max_message_size = max_message_size
        self.connections = Connections()
        self.metrics = Metrics(broker)
        self.metrics.registry.register(access)
        self.guard = Guard(clock)
        self.metrics.registry.register(self.guard)
        self.replay = replay
        root = Branch()
        multiplexed = mux_resource(broker, self.connections, max_message_size, self.combiner, replay) if mux else None
        root.putChild(
            b"pub",
            PublishResource(broker, UpgradeResource(
                WebSocketFactory(
                    PublisherProtocol, broker, self.connections, max_message_size, access=access, guard=self.guard
                )
            ), self.metrics, self.origins, access),
        )
        root.putChild(
            b"sub",
            SubscribeResource(broker, self.connections, UpgradeResource(
                WebSocketFactory(
                    SubscriberProtocol, broker, self.connections, max_message_size, self.combiner, replay,
                    access=access,
                    guard=self.guard,
                )
            ), replay, self.origins, self.combiner, clock, access, multiplexed),
        )
        root.putChild(b"health", HealthResource(self))
        root.putChild(b"metrics", MetricsResource(self.metrics, access))
        root.putChild(b"stats", StatsResource(self.metrics, self.origins, access))
        root.putChild(b"", DashboardFiles("index.html"))
        root.putChild(b"dashboard", DashboardFiles())
        api = Branch()
        api.putChild(b"server", SummaryResource(ServerSummary(self.metrics.broker, clock), self.origins))
        root.putChild(b"api", api)
        super().__init__(root)
        self.access_log = access_log
        self.stopping = False
        # Callables answering None while all is well, else (status, one
        # line): what /health says (a backplane, README: Redis backplane).
        self.health_checks: list = []

    def client_of(self, request) -> ClientAddress:
        """
        Where C{request} comes from, believing the trusted proxies'
        forwarding headers (L{client_address}): for access control.
        """
        return client_address(request, self.trusted_proxies)

    def log(self, request) -> None:
        """
        One combined-log-format line per request, through twisted.logger,
        when the access log is on; nothing otherwise.  A C{token=} in the
        query string is logged as C{token=REDACTED}.
        """
        if self.access_log:
            stamp = http.datetimeToLogString(self.reactor.seconds())
            if self.trusted_proxies:
                request = _AsSeen(request, client_address(request, self.trusted_proxies).twisted_address())
            _access_log.info("{line}", line=redact_tokens(http.combinedLogFormatter(stamp, request)))


class _AsSeen:
    """
    A request as the access log shows it: from its client behind the
    trusted proxies rather than from the last proxy.
    """

    def __init__(self, request, address) -> None:
        self._request = request
        self._address = address

    def getClientAddress(self):
        return self._address

    def __getattr__(self, name):
        return getattr(self._request, name)


class PublishResource(LeafResource):
    """
    C{/pub}: the body of a POST or PUT is one message; a GET with a
    WebSocket upgrade publishes each message of the connection.

    A publish is answered 200, with an empty body, once the broker has
    handed the message to every current subscriber; a broker that answers
    later (a proxy's client) is waited for, and its failure is a 502.
    """

    allowedMethods = (b"POST", b"PUT")

    def __init__(
        self, broker: IBroker, websocket: UpgradeResource, metrics: Metrics, origins: Origins, access: Access
    ) -> None:
        super().__init__()
        self._broker = broker
        self._websocket = websocket
        self._observe = metrics.publish_seconds.observe
        self._origins = origins
        self._access = access

    def render_OPTIONS(self, request):
        return self._origins.preflight(request)

    def render_POST(self, request):
        if request.getHeader(b"origin") is not None:
            self._origins.answer(request)
        topic = topic_from_query(request.args)
        self._access.check_publish(request, topic)
        hops = check_hops(request.getHeader(HOPS_HEADER))
        started = perf_counter()
        published = self._broker.publish(topic, request.content.read(), hops)
        # Take the outcome now if there is one (the in-memory broker): a
        # Deferred that is "called" may still wait on another (a proxy's
        # upstream publish), so look at what it delivers, not at its flags.
        outcome: list = []
        published.addBoth(outcome.append)
        if outcome:
            return self._answer(outcome[0], request, started)
        # notifyFinish fails if the connection is lost before the answer.
        lost: list = []
        request.notifyFinish().addErrback(lost.append)
        published.addCallback(lambda _: lost or self._answer_later(outcome[0], request, started))
        return server.NOT_DONE_YET

    render_PUT = render_POST

    def render_GET(self, request):
        if not is_websocket_upgrade(request):
            raise HTTPError(
                405, "GET /pub needs a WebSocket upgrade; publish with POST or PUT",
                {b"allow": b"POST, PUT"},
            )
        topic = topic_from_query(request.args)
        check_hops(request.getHeader(HOPS_HEADER))
        self._access.check_origin(request)
        # Checked once, for the connection's topic.
        identity = self._access.check_publish(request, topic)
        return self._websocket.upgrade(request, identity)

    def _answer(self, outcome, request, started: float) -> bytes:
        """
        The answer to a publish: empty on success, else the status and one
        line that say what failed.
        """
        self._observe(perf_counter() - started)
        if not isinstance(outcome, Failure):
            request.setHeader(b"content-length", b"0")
            return b""
        code = status_of(outcome.value)
        reason = outcome.getErrorMessage()
        return error(request, code, f"publish failed: {reason}" if code == 502 else reason)

    def _answer_later(self, outcome, request, started: float) -> None:
        body = self._answer(outcome, request, started)
        if body:
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
        request.finish()


class SubscribeResource(LeafResource):
    """
    C{/sub}: a WebSocket subscriber when the request asks for an upgrade,
    otherwise a streaming response carrying each payload as published.
    """

    allowedMethods = (b"GET",)

    def __init__(
        self, broker: IBroker, connections: Connections, websocket: UpgradeResource,
        replay: IReplaySource | None = None, origins: Origins | None = None, combiner: Combiner | None = None,
        clock: IReactorTime | None = None, access: Access | None = None,
        mux: resource.Resource | None = None,
    ) -> None:
        super().__init__()
        self._broker = broker
        self._connections = connections
        self._websocket = websocket
        self._replay = replay
        self._origins = origins or Origins()
        if clock is None:
            from twisted.internet import reactor as clock
        # The streaming responses' writes are combined as the WebSocket
        # subscribers' are: with the site's combiner, one flush for all.
        self._combiner = combiner if combiner is not None else Combiner(clock)
        self._clock = clock
        self._access = access or Access()
        self._mux = mux

    def render_OPTIONS(self, request):
        return self._origins.preflight(request)

    def render_GET(self, request):
        upgrade = is_websocket_upgrade(request)
        if self._mux is not None and upgrade and wants_mux(request):
            # Every subscription and publish of the connection is allowed
            # only to a client that may subscribe and publish to everything.
            self._access.check_origin(request)
            self._access.check_subscribe(request, parse_pattern(">"))
            self._access.check_publish(request, ">")
            return self._mux.render(request)
        topic, group = subject_from_query(request.args)
        if upgrade:
            self._access.check_origin(request)
        identity = self._access.check_subscribe(request, topic)
        since = since_from_query(request.args)
        if since is not None and self._replay is None:
            raise HTTPError(400, NO_REPLAY)
        if upgrade:
            return self._websocket.upgrade(request, identity)
        if wants_event_stream(request):
            if since is None and self._replay is not None:
                since = last_event_id(request)
            self._origins.answer(request)
            streaming = EventStreamSubscriber(
                self._broker, self._connections, self._combiner, self._clock, topic, request, since, self._replay,
                group,
            )
        else:
            streaming = StreamingSubscriber(
                self._broker, self._connections, self._combiner, topic, request, since, self._replay, group
            )
        # A JWT that expires ends the response.
        expiry = self._access.at_expiry(identity, streaming.close_going_away)
        if expiry is not None:
            request.notifyFinish().addBoth(lambda _: expiry.active() and expiry.cancel())
        return server.NOT_DONE_YET

