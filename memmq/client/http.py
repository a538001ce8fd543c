"""
The client library over HTTP and WebSocket: publish with POST /pub over
pipelined persistent connections (L{memmq.client.publisher}), subscribe
with one WebSocket per server (autobahn), over the servers a selector
picks for each topic.

The L{Client} is also an L{IBroker}, so that a proxy can put the server's
front-ends in front of other servers.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import endpoints
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    FirstError,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from memmq.broker import Message, check_topic
from memmq.client.publisher import Publisher
from memmq.client.reasons import reason_of as _reason
from memmq.client.resolver import IP, IResolver
from memmq.client.selector import All, ISelector
from memmq.client.servers import base_url, endpoint_of, websocket_url
from memmq.defaults import RESOLVE_INTERVAL as DEFAULT_RESOLVE_INTERVAL
from memmq.defaults import SERVER as DEFAULT_SERVER
from memmq.errors import InvalidTopic, MemmqError
from memmq.hops import TooManyHops
from memmq.interfaces import IBroker, ISubscriber, ISubscription
from memmq.tls import ClientTLS

__all__ = [
    "Client",
    "PublishError",
    "SubscribeError",
    "Subscription",
    "DEFAULT_SERVER",
]

_log = Logger()

DEFAULT_MAX_QUEUED = 10_000
_CONNECT_TIMEOUT = 10
# Reconnection: the first retry after 0.1 s, doubling to at most 10 s, with
# some jitter so that many clients of one restarted server do not come
# back in lockstep.
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 10.0


class PublishError(MemmqError):
    """
    A publish that some selected server did not accept, even after retries.

    @ivar failures: server -> one-line reason, for each server that failed.
    """

    def __init__(self, topic: str, failures: dict[str, str]) -> None:
        self.topic = topic
        self.failures = failures
        reasons = "; ".join(f"{server}: {why}" for server, why in failures.items())
        super().__init__(f"publish to {topic!r} failed on {reasons}")


class SubscribeError(MemmqError):
    """
    A subscription that could not be opened on some selected server.
    """

    def __init__(self, topic: str, failures: dict[str, str]) -> None:
        self.topic = topic
        self.failures = failures
        reasons = "; ".join(f"{server}: {why}" for server, why in failures.items())
        super().__init__(f"cannot subscribe to {topic!r} on {reasons}")


def _backoff(attempt: int) -> float:
    return min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**attempt) * random.uniform(0.8, 1.2)


@implementer(IBroker)
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
        without it they are not verified (SPEC section 5).
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
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
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
        self.tls = ClientTLS(ca_file)
        self._reactor = reactor
        self._publisher = Publisher(reactor, self.tls, attempts=1 + retries, reconnected=self._server_reachable)
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
        self._start_resolving()

    # -- servers ---------------------------------------------------------

    def _start_resolving(self) -> None:
        def first_failed(failure: Failure) -> None:
            _log.warn("cannot resolve servers: {reason}", reason=_reason(failure))

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
            _log.warn("cannot refresh servers: {reason}", reason=_reason(failure))

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
        publish = self._publish_one
        if len(servers) == 1:
            # The common case (one server, or a shard) without a DeferredList.
            server = servers[0]
            return publish(server, topic, payload, hops).addErrback(self._failed, topic, [server])
        attempts = [publish(server, topic, payload, hops) for server in servers]
        return DeferredList(attempts, consumeErrors=True).addCallback(self._outcome, topic, servers)

    def _publish_one(self, server: str, topic: str, payload: bytes, hops: int) -> Deferred[None]:
        """
        Publish to one server, in order with the earlier publishes of
        C{topic} there, with the retries that are safe: the seam where
        another transport (gRPC) publishes its own way.
        """
        return self._publisher.publish(server, topic, payload, hops)

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
        raise PublishError(topic, {s: _reason(r) for s, r in failed})

    # -- subscribing -----------------------------------------------------

    def subscribe(
        self,
        topic: str,
        subscriber: ISubscriber | Callable[[bytes], Any] | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        since: int | None = None,
    ):
        """
        Subscribe to C{topic} on every server the selector picks.

        Seed style, C{subscribe(topic)}: a Deferred that fires with a
        L{Subscription} once a connection to each server is open (each
        tried C{1 + retries} times), or fails with L{SubscribeError}.  Its
        messages are taken with C{get()} or C{async for}; with a callable
        as C{subscriber}, each payload is passed to it instead.

        L{IBroker} style, C{subscribe(topic, subscriber)} with an
        L{ISubscriber}: the L{Subscription} is returned at once and
        connects in the background, each message delivered as a
        L{Message}.

        Either way a dropped connection is re-established, with capped
        exponential backoff, until the subscription is closed.

        With C{since} (Unix nanoseconds), each server first sends the
        messages it persisted (it runs with C{--persist}) stamped later,
        then live ones; a server without persistence refuses (400).  Only
        the first connection to a server asks for them: a re-established
        one carries on with live messages.
        """
        if subscriber is not None and ISubscriber.providedBy(subscriber):
            if self._closed:
                raise MemmqError("client is closed")
            check_topic(topic)
            subscription = Subscription(self, topic, deliver=subscriber.deliver, as_message=True, since=since)
            self._subscriptions.add(subscription)
            self._when_resolved().addCallbacks(
                lambda _: subscription._follow(),
                lambda f: _log.warn("cannot subscribe to {topic!r}: {reason}", topic=topic, reason=_reason(f)),
            )
            return subscription
        refused = self._refuse(topic)
        if refused is not None:
            return refused
        subscription = Subscription(self, topic, deliver=subscriber, max_queued=max_queued, since=since)
        self._subscriptions.add(subscription)

        def opened(_):
            return subscription._follow(wait=True).addCallback(lambda _: subscription)

        def failed(failure):
            subscription.close()
            return failure

        return self._when_resolved().addCallback(opened).addErrback(failed)

    def _new_link(self, subscription: Subscription, server: str, first_attempts: int | None) -> _Link:
        """
        Open one subscription's link to one server: the seam where another
        transport (L{memmq.client.grpc}) puts its own connections under the
        same reconnection, following and flow control.
        """
        return _Link(subscription, server, first_attempts=first_attempts)

    def _server_reachable(self, server: str) -> None:
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
        Close every subscription and pooled connection; stop resolving.
        """
        self._closed = True
        if self._refresher is not None and self._refresher.running:
            self._refresher.stop()
        closing = [s.close() for s in list(self._subscriptions)]
        closing.append(self._publisher.close())
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)


@implementer(ISubscription)
class Subscription:
    """
    A subscription to one topic, over a connection to each of its servers.

    With the L{All} selector over several servers, a message published to
    several of them arrives once from each.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        deliver: Callable[[Any], Any] | None = None,
        as_message: bool = False,
        max_queued: int = DEFAULT_MAX_QUEUED,
        since: int | None = None,
    ) -> None:
        self.client = client
        self.topic = topic
        self.since = since
        self.dropped = 0
        self._deliver = deliver
        self._as_message = as_message
        self._max_queued = max_queued
        self._queue: deque[bytes] = deque()
        self._getters: deque[Deferred[bytes]] = deque()
        self._links: dict[str, _Link] = {}
        self._closed = False
        self._paused = False

    @property
    def servers(self) -> list[str]:
        """
        The servers this subscription is connected to or connecting to.
        """
        return list(self._links)

    @property
    def connected(self) -> int:
        """
        How many of its servers it has an open connection to now.
        """
        return sum(1 for link in self._links.values() if link.protocol is not None)

    # -- taking messages -------------------------------------------------

    def get(self) -> Deferred[bytes]:
        """
        The next message's payload (the seed's C{data := <-ch}).
        """
        if self._queue:
            return succeed(self._queue.popleft())
        if self._closed:
            return fail(MemmqError(f"subscription to {self.topic!r} is closed"))
        d: Deferred[bytes] = Deferred(lambda d: self._getters.remove(d))
        self._getters.append(d)
        return d

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if self._closed and not self._queue:
            raise StopAsyncIteration
        try:
            return await self.get()
        except MemmqError:
            if self._closed:
                raise StopAsyncIteration from None
            raise

    def _receive(self, payload: bytes) -> None:
        if self._closed:
            return
        if self._deliver is not None:
            self._deliver(Message(self.topic, payload) if self._as_message else payload)
        elif self._getters:
            self._getters.popleft().callback(payload)
        elif len(self._queue) < self._max_queued:
            self._queue.append(payload)
        else:
            self.dropped += 1

    # -- flow, for IBroker subscribers -----------------------------------

    def pause(self) -> None:
        """
        Stop reading from the servers (they buffer, then drop, on their side).
        """
        self._paused = True
        for link in self._links.values():
            link.pause()

    def resume(self) -> None:
        self._paused = False
        for link in self._links.values():
            link.resume()

    # -- connections -----------------------------------------------------

    def _follow(self, wait: bool = False) -> Deferred[None]:
        """
        Connect to the servers the selector now picks for the topic and
        close the connections to servers it no longer picks.

        @param wait: fire once every new connection is open, or fail with
            L{SubscribeError} if one could not be opened.
        """
        if self._closed:
            return succeed(None)
        try:
            wanted = [base_url(s) for s in self.client.selector.get(self.topic)]
        except MemmqError as e:
            if wait:
                return fail(SubscribeError(self.topic, {"(none)": str(e)}))
            _log.warn("subscription to {topic!r}: {reason}", topic=self.topic, reason=str(e))
            wanted = []
        for server in list(self._links):
            if server not in wanted:
                self._links.pop(server).close()
        opening = []
        for server in wanted:
            if server not in self._links:
                attempts = self.client.retries + 1 if wait else None
                link = self._links[server] = self.client._new_link(self, server, attempts)
                opening.append((server, link.opened))
        if not wait:
            return succeed(None)

        def outcome(results):
            failures = {s: _reason(r) for (s, _), (ok, r) in zip(opening, results, strict=True) if not ok}
            if failures:
                raise SubscribeError(self.topic, failures)

        return DeferredList([d for _, d in opening], consumeErrors=True).addCallback(outcome)

    def close(self) -> Deferred[None]:
        """
        Close this subscription's connections; pending C{get()}s fail.
        """
        if self._closed:
            return succeed(None)
        self._closed = True
        self.client._subscriptions.discard(self)
        links, self._links = list(self._links.values()), {}
        getters, self._getters = self._getters, deque()
        for d in getters:
            d.errback(MemmqError(f"subscription to {self.topic!r} is closed"))
        return DeferredList([link.close() for link in links], consumeErrors=True).addCallback(lambda _: None)


class _Link:
    """
    One subscription's connection to one server, re-established with
    capped exponential backoff whenever it drops, until closed.
    """

    def __init__(self, subscription: Subscription, server: str, first_attempts: int | None) -> None:
        self.subscription = subscription
        self.server = server
        self.protocol: _SubscriberClient | None = None
        self.opened: Deferred[None] = Deferred()
        self._first_attempts = first_attempts
        self._attempt = 0
        self._ever_opened = False
        self._nudged = False
        self._closed = False
        self._closing: Deferred[None] | None = None
        self._retry_call = None
        self._connecting: Deferred | None = None
        self._clock = subscription.client._reactor
        self._connect()

    def _connect(self) -> None:
        self._retry_call = None
        client = self.subscription.client
        tls, host, port = endpoint_of(self.server)
        url = websocket_url(self.server, "/sub", self.subscription.topic)
        if self.subscription.since is not None and not self._ever_opened:
            url += f"&since={self.subscription.since:d}"
        factory = WebSocketClientFactory(url)
        factory.protocol = _SubscriberClient
        factory.link = self
        factory.noisy = False
        factory.setProtocolOptions(openHandshakeTimeout=_CONNECT_TIMEOUT, autoPingInterval=30, autoPingTimeout=30)
        endpoint = endpoints.HostnameEndpoint(self._clock, host, port, timeout=_CONNECT_TIMEOUT)
        if tls:
            endpoint = endpoints.wrapClientTLS(client.tls.creator(host), endpoint)
        self._connecting = endpoint.connect(factory)
        self._connecting.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(CancelledError) and self._closed:
            return
        self._lost(_reason(failure))

    def _open(self, protocol: _SubscriberClient) -> None:
        self._connecting = None
        if self._closed:
            protocol.sendClose(1000)
            return
        self.protocol = protocol
        if self.subscription._paused:
            protocol.transport.pauseProducing()
        if self._ever_opened:
            _log.info(
                "resubscribed to {topic!r} on {server}", topic=self.subscription.topic, server=self.server
            )
        self._ever_opened = True
        came_back = self._attempt > 0
        self._attempt = 0
        self._nudged = False
        if not self.opened.called:
            self.opened.callback(None)
        if came_back:
            self.subscription.client._server_reachable(self.server)

    def retry_now(self) -> None:
        """
        If waiting to reconnect, reconnect now (the server is known to be
        back); a failure goes on with the backoff where it was.
        """
        if self._closed:
            return
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
            self._connect()
        elif self._connecting is not None:
            # An attempt begun before the server was back may still fail:
            # then try once more at once.
            self._nudged = True

    def _lost(self, reason: str) -> None:
        self.protocol = None
        if not self._closed:
            self.subscription.client.upstream_errors += 1
        if self._closed:
            if self._closing is not None and not self._closing.called:
                self._closing.callback(None)
            return
        self._attempt += 1
        if not self._ever_opened and self._first_attempts is not None:
            if self._attempt >= self._first_attempts:
                self._closed = True
                if not self.opened.called:
                    self.opened.errback(MemmqError(reason))
                return
        delay = _backoff(self._attempt - 1)
        if self._nudged:
            self._nudged = False
            delay = 0
        if self._ever_opened:
            _log.warn(
                "subscription to {topic!r} on {server} lost ({reason}); reconnecting in {delay:.1f} s",
                topic=self.subscription.topic, server=self.server, reason=reason, delay=delay,
            )
        self._retry_call = self._clock.callLater(delay, self._connect)

    def pause(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.pauseProducing()

    def resume(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.resumeProducing()

    def close(self) -> Deferred[None]:
        """
        Stop reconnecting and close the connection; fires once it is gone
        (at most a few seconds: a server that does not answer the close is
        dropped).
        """
        if self._closed and self.protocol is None:
            return succeed(None)
        self._closed = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        if not self.opened.called:
            self.opened.errback(MemmqError("closed"))
            self.opened.addErrback(lambda f: None)
        if self.protocol is None:
            return succeed(None)
        self._closing = Deferred()
        self.protocol.sendClose(1000)
        return self._closing


class _SubscriberClient(WebSocketClientProtocol):
    """
    The WebSocket client of one L{_Link}.
    """

    def onOpen(self) -> None:
        self.factory.link._open(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        link = self.factory.link
        if link.protocol is self:
            link.subscription._receive(payload)

    def onClose(self, wasClean: bool, code, reason) -> None:
        link = self.factory.link
        if link.protocol is self or link.protocol is None:
            why = f"closed with {code}" + (f": {reason}" if reason else "") if code else (reason or "connection lost")
            link._lost(why)
