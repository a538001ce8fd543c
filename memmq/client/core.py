"""
The transport-neutral client: L{Client} (resolve the servers, select them
for a topic, retry, fan out), its L{Subscription}s, and the L{Link} that
keeps one subscription connected to one server, reconnecting with
L{backoff} (the last three from L{memmq.client.subscriptions} and
L{memmq.client.transport}, named here too).

How messages travel is a transport's job, behind L{ITransport}: the
WebSocket one (L{memmq.client.websocket}, the default) and the gRPC one
(L{memmq.client.rpc}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from memmq.broker import Message, check_group, check_topic
from memmq.client.reasons import reason_of
from memmq.client.resolver import IP, IResolver
from memmq.client.selector import All, ISelector
from memmq.client.servers import base_url
from memmq.client.subscriptions import DEFAULT_MAX_QUEUED, Link, Subscription
from memmq.client.transport import CONNECT_TIMEOUT, IStream, ITransport, backoff
from memmq.errors import InvalidTopic, MemmqError, PublishError
from memmq.hops import TooManyHops
from memmq.interfaces import ISubscriber
from memmq.patterns import Pattern, parse_pattern
from memmq.tls import ClientTLS

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_RESOLVE_INTERVAL",
    "DEFAULT_SERVER",
    "Client",
    "IStream",
    "ITransport",
    "Link",
    "Message",
    "Subscription",
    "backoff",
]

_log = Logger()

DEFAULT_SERVER = "localhost:8081"
DEFAULT_RESOLVE_INTERVAL = 30.0

class Client:
    """
    A client of one or more memmq servers.

    @param servers: servers as C{host:port} or http(s) URLs, or names for
        the resolver.
    @param selector: which servers a topic goes to (L{All}: every one, the
        default; L{Shard}: one chosen by the topic).
    @param resolver: turns C{servers} into addresses (L{IP}: as given, the
        default; L{DNS}: looked up at start and every C{resolve_interval}
        seconds, subscriptions following the answer).
    @param retries: extra attempts per server for a publish, and for the
        first connection of a subscription.
    @param ca_file: verify servers' certificates against this PEM file;
        without it they are not verified (README, "TLS").
    @param transport: makes the L{ITransport} for this client, given the
        client (L{memmq.client.websocket.WebSocketTransport}, the default).
    @param token: a token or JWT for servers with access control, sent as
        C{Authorization: Bearer} (gRPC: C{authorization} metadata).  A
        refusal (HTTP 401/403, gRPC UNAUTHENTICATED/PERMISSION_DENIED) fails
        with L{memmq.auth.Unauthenticated} or L{memmq.auth.Forbidden} and
        is not retried.
    @param client_cert: a TLS client certificate to present: a PEM file
        holding the certificate (chain) and its key, or a (certificate
        file, key file) pair.

    The client is not itself an L{IBroker}: L{memmq.proxy.ProxyBroker} is
    the broker made of one.
    """

    def __init__(
        self,
        servers: Iterable[str] = (DEFAULT_SERVER,),
        selector: ISelector | None = None,
        resolver: IResolver | None = None,
        retries: int = 1,
        ca_file: str | None = None,
        resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
        reactor=None,
        transport: Callable[[Client], ITransport] | None = None,
        token: str | None = None,
        client_cert: str | tuple[str, str] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if transport is None:
            from memmq.client.mux import MuxTransport as transport
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s.strip()]
        self._names = [s.strip() for s in servers]
        if not self._names:
            raise ValueError("no servers given")
        if retries < 0:
            raise ValueError("retries cannot be negative")
        self.retries = retries
        self.selector = selector if selector is not None else All()
        self.resolver = resolver if resolver is not None else IP()
        self.token = token or None
        self.tls = ClientTLS(ca_file, client_cert)
        self.reactor = self._reactor = reactor
        self._subscriptions: set[Subscription] = set()
        self._closed = False
        # Publishes a server did not accept, and subscription connections
        # lost or not made: for a proxy's metrics.
        self.upstream_errors = 0
        self._resolving: Deferred[None] | None = None
        self._resolve_waiters: list[Deferred[None]] = []
        self._refresher: LoopingCall | None = None
        self._resolve_interval = resolve_interval
        self.servers: list[str] = []
        self.transport: ITransport = transport(self)
        self._start_resolving()

    # -- servers ---------------------------------------------------------

    def _start_resolving(self) -> None:
        def first_failed(failure: Failure) -> None:
            _log.warn("cannot resolve servers: {reason}", reason=reason_of(failure))

        self._when_resolved().addErrback(first_failed)
        if not isinstance(self.resolver, IP) and self._resolve_interval > 0:
            self._refresher = LoopingCall(self._refresh)
            self._refresher.clock = self._reactor
            self._refresher.start(self._resolve_interval, now=False).addErrback(
                lambda f: _log.failure("resolver refresh stopped", f)
            )

    def _resolve(self) -> Deferred[None]:
        """
        Ask the resolver for every name; when the answer differs from what
        the selector has, give it the new servers and let subscriptions
        follow (new servers subscribed, gone ones closed).
        """

        def resolved(answers: list[list[str]]) -> None:
            servers: list[str] = []
            for answer in answers:
                for server in answer:
                    if base_url(server) not in servers:
                        servers.append(base_url(server))
            if servers != self.servers:
                if self.servers:
                    _log.info("servers now {servers}", servers=", ".join(servers))
                self.servers = servers
                self.selector.set(*servers)
                for subscription in list(self._subscriptions):
                    subscription._follow()

        def first_error(failure: Failure) -> Failure:
            return failure.value.subFailure if failure.check(FirstError) else failure

        return gatherResults(
            [self.resolver.resolve(name) for name in self._names], consumeErrors=True
        ).addCallbacks(resolved, first_error)

    def _refresh(self) -> Deferred[None]:
        def failed(failure: Failure) -> None:
            # Keep serving with the servers known last.
            _log.warn("cannot refresh servers: {reason}", reason=reason_of(failure))

        return self._resolve().addErrback(failed)

    def _when_resolved(self) -> Deferred[None]:
        """
        Fire once there are servers: at once after a successful resolution,
        else after one more attempt (whose failure is this Deferred's).
        """
        if self.servers:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._resolve_waiters.append(d)
        if self._resolving is None:
            self._resolving = self._resolve()
            self._resolving.addBoth(self._resolution_done)
        return d

    def _resolution_done(self, result) -> None:
        self._resolving = None
        waiters, self._resolve_waiters = self._resolve_waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _refuse(self, topic: str) -> Deferred | None:
        """
        A failed Deferred if nothing can be done with C{topic} (the client
        is closed, or the topic is invalid); L{None} otherwise.
        """
        if self._closed:
            return fail(MemmqError("client is closed"))
        try:
            check_topic(topic)
        except InvalidTopic:
            return fail()
        return None

    # -- publishing ------------------------------------------------------

    def publish(self, topic: str, payload: bytes, hops: int = 0) -> Deferred[None]:
        """
        Publish C{payload} to C{topic} on every server the selector picks.

        C{hops} (for proxies) is sent as the C{X-Memmq-Hops} header: how
        many proxies the message has passed through.

        Fires with L{None} once every one of them accepted it (a retry that
        succeeds counts as success); fails with L{PublishError} naming each
        server that did not and why, or L{InvalidTopic}.
        """
        refused = self._refuse(topic)
        if refused is not None:
            return refused
        if not isinstance(payload, bytes):
            return fail(TypeError("payload must be bytes"))
        if self.servers:
            return self._publish_everywhere(topic, payload, hops)
        return self._when_resolved().addCallback(lambda _: self._publish_everywhere(topic, payload, hops))

    def _publish_everywhere(self, topic: str, payload: bytes, hops: int) -> Deferred[None]:
        servers = self.selector.get(topic)
        publish = self.transport.publish
        if len(servers) == 1:
            # The common case (one server, or a shard) without a DeferredList.
            server = servers[0]
            return publish(server, topic, payload, hops).addErrback(self._failed, topic, [server])
        attempts = [publish(server, topic, payload, hops) for server in servers]
        return DeferredList(attempts, consumeErrors=True).addCallback(self._outcome, topic, servers)

    def _failed(self, failure: Failure, topic: str, servers: list[str]) -> None:
        self._outcome([(False, failure)], topic, servers)

    def _outcome(self, results: list[tuple[bool, Any]], topic: str, servers: list[str]) -> None:
        failed = [(s, r) for s, (ok, r) in zip(servers, results, strict=True) if not ok]
        if not failed:
            return
        self.upstream_errors += len(failed)
        if all(r.check(TooManyHops) for _, r in failed):
            # Every refusal was the loop guard's: say so, as a loop.
            raise TooManyHops(failed[0][1].getErrorMessage())
        raise PublishError(topic, {s: reason_of(r) for s, r in failed})

    # -- subscribing -----------------------------------------------------

    def _subject(self, topic: str | None, pattern: str | None, group: str | None) -> tuple[str, Pattern | None]:
        """
        The subscription's name and parsed pattern, checked.

        @raise InvalidTopic: neither or both of C{topic} and C{pattern}, or
            one of them (or the group) not acceptable.
        """
        if self._closed:
            raise MemmqError("client is closed")
        if group is not None:
            check_group(group)
        if (topic is None) == (pattern is None):
            raise InvalidTopic("give a topic or a pattern, one of them")
        if pattern is not None:
            parsed = parse_pattern(pattern)
            return parsed.text, None if parsed.is_literal else parsed
        return check_topic(topic), None

    def subscribe(
        self,
        topic: str | None = None,
        callback: Callable[[bytes], Any] | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        since: int | None = None,
        *,
        pattern: str | None = None,
        group: str | None = None,
        as_message: bool = False,
    ) -> Deferred[Subscription]:
        """
        Subscribe to C{topic}, or to every topic C{pattern} matches
        (C{orders.*}; README, "Patterns and queue groups"), on every server
        the selector picks (a pattern: on every server).  With a queue
        C{group}, each message goes to one subscriber of the group.

        A Deferred that fires with a L{Subscription} once a connection to
        each server is open (each tried C{1 + retries} times), or fails
        with L{SubscribeError}.  Its messages are taken with C{get()} or
        C{async for} (at most C{max_queued} waiting; more are dropped); with
        a C{callback}, each payload is passed to it instead.

        A dropped connection is re-established, with capped exponential
        backoff, until the subscription is closed.

        With C{since} (Unix nanoseconds), each server first sends the
        messages it persisted (it runs with C{--persist}) stamped later,
        then live ones; a server without persistence refuses (400).  Only
        the first connection to a server asks for them: a re-established
        one carries on with live messages.

        C{get()} gives a message's payload, C{get_message()} the
        L{Message} with its topic; a C{callback} is given the payload, or
        the L{Message} with C{as_message=True}.
        """
        try:
            name, parsed = self._subject(topic, pattern, group)
        except MemmqError:
            return fail()
        subscription = Subscription(
            self, name, deliver=callback, as_message=as_message, max_queued=max_queued, since=since,
            pattern=parsed, group=group,
        )
        self._subscriptions.add(subscription)

        def opened(_):
            return subscription._follow(wait=True).addCallback(lambda _: subscription)

        def failed(failure):
            subscription.close()
            return failure

        return self._when_resolved().addCallback(opened).addErrback(failed)

    def attach(
        self,
        topic: str | None,
        subscriber: ISubscriber,
        since: int | None = None,
        *,
        pattern: str | None = None,
        group: str | None = None,
    ) -> Subscription:
        """
        Subscribe C{subscriber} (an L{ISubscriber}) to C{topic}, as a broker
        would: the L{Subscription} is returned at once and connects in the
        background, each message delivered as a L{Message}; connections
        that fail are retried, with backoff, until it is closed.  A proxy
        feeds its own subscribers this way.

        @raise InvalidTopic: C{topic} cannot be subscribed to.
        """
        name, parsed = self._subject(topic, pattern, group)
        subscription = Subscription(
            self, name, deliver=subscriber.deliver, as_message=True, since=since, pattern=parsed, group=group
        )
        self._subscriptions.add(subscription)
        self._when_resolved().addCallbacks(
            lambda _: subscription._follow(),
            lambda f: _log.warn("cannot subscribe to {topic!r}: {reason}", topic=topic, reason=reason_of(f)),
        )
        return subscription

    @property
    def closed(self) -> bool:
        """
        Whether L{close} was called.
        """
        return self._closed

    def server_reachable(self, server: str) -> None:
        """
        A connection to C{server} was just made after failures: every
        subscription waiting out its backoff to reconnect there tries now,
        rather than each one at its own time (a proxy holds one upstream
        subscription per topic, and all of them lost the server at once).
        """
        for subscription in list(self._subscriptions):
            link = subscription._links.get(server)
            if link is not None:
                link.retry_now()

    def unsubscribe(self, subscription: Subscription) -> Deferred[None]:
        """
        Close C{subscription}: its connections are closed and nothing more
        arrives through it.
        """
        return subscription.close()

    def close(self) -> Deferred[None]:
        """
        Close every subscription, then the transport's connections; stop
        resolving.
        """
        self._closed = True
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        closing = [s.close() for s in list(self._subscriptions)]
        # The transport last: a stream may need it to close.
        return (
            DeferredList(closing, consumeErrors=True)
            .addCallback(lambda _: self.transport.close())
            .addCallback(lambda _: None)
        )
