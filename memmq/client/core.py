"""
The transport-neutral client: L{Client} (resolve the servers, select them
for a topic, retry, fan out), its L{Subscription}s, and the L{Link} that
keeps one subscription connected to one server, reconnecting with
L{backoff}.

How messages travel is a transport's job, behind L{ITransport}: the
WebSocket one (L{memmq.client.websocket}, the default) and the gRPC one
(L{memmq.client.rpc}).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

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
from zope.interface import Interface, implementer

from memmq.broker import Message, check_topic
from memmq.client.reasons import reason_of
from memmq.client.resolver import IP, IResolver
from memmq.client.selector import All, ISelector
from memmq.client.servers import base_url
from memmq.errors import InvalidTopic, MemmqError, PublishError, SubscribeError
from memmq.hops import TooManyHops
from memmq.interfaces import ISubscriber, ISubscription
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
    "Subscription",
    "backoff",
]

_log = Logger()

DEFAULT_SERVER = "localhost:8081"
DEFAULT_RESOLVE_INTERVAL = 30.0
DEFAULT_MAX_QUEUED = 10_000
#: Seconds a transport waits for a connection (and its handshakes) to a server.
CONNECT_TIMEOUT = 10.0
# Reconnection: the first retry after 0.1 s, doubling to at most 10 s.
_RECONNECT_FIRST = 0.1
_RECONNECT_MAX = 10.0


def backoff(attempt: int, first: float = _RECONNECT_FIRST, maximum: float = _RECONNECT_MAX) -> float:
    """
    Seconds to wait before try C{attempt + 1} (counting from 0): C{first},
    doubling up to C{maximum}, with some jitter so that many clients of one
    restarted server do not come back in lockstep.  The defaults are a
    subscription's reconnection; a publish retries with its own.
    """
    return min(maximum, first * 2**attempt) * random.uniform(0.8, 1.2)


class IStream(Interface):
    """
    One open subscription stream from one server, as a transport made it.
    It reports to its L{Link}: C{link.received(self, payload)} for each
    message, C{link.lost(self, reason)} once when it ends.
    """

    def pause():
        """
        Stop reading from the server (it buffers, then drops, on its side).
        """

    def resume():
        """
        Read again.
        """

    def close():
        """
        Close the stream; it calls C{link.lost} once it is gone.
        """


class ITransport(Interface):
    """
    How a L{Client} reaches one server: the seam a transport implements.
    A transport is made for one client, by C{transport(client)}, and may
    read the client's C{reactor}, C{tls}, C{retries}, and call its
    C{server_reachable(server)} when a server answers again after failures.
    """

    def publish(server, topic, payload, hops):
        """
        Publish C{payload} to C{topic} on one server, in order with the
        earlier publishes of C{topic} there, retried only when it is known
        that the server did not take it (up to C{1 + client.retries} tries).

        @return: a Deferred firing with L{None}, or failing with a
            L{MemmqError} whose message is the one-line reason (a
            L{TooManyHops} for a loop).
        """

    def subscribe(link):
        """
        Open C{link.topic}'s subscription on C{link.server}, asking for the
        messages since C{link.since} when it is not L{None}.

        @return: a Deferred firing with an L{IStream} once the server has
            accepted the subscription, or failing with the reason; cancelling
            it abandons the attempt.
        """

    def close():
        """
        Close every connection.  @return: a Deferred firing when done.
        """


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
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if transport is None:
            from memmq.client.websocket import WebSocketTransport as transport
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

    def subscribe(
        self,
        topic: str,
        callback: Callable[[bytes], Any] | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        since: int | None = None,
    ) -> Deferred[Subscription]:
        """
        Subscribe to C{topic} on every server the selector picks.

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
        """
        refused = self._refuse(topic)
        if refused is not None:
            return refused
        subscription = Subscription(self, topic, deliver=callback, max_queued=max_queued, since=since)
        self._subscriptions.add(subscription)

        def opened(_):
            return subscription._follow(wait=True).addCallback(lambda _: subscription)

        def failed(failure):
            subscription.close()
            return failure

        return self._when_resolved().addCallback(opened).addErrback(failed)

    def attach(self, topic: str, subscriber: ISubscriber, since: int | None = None) -> Subscription:
        """
        Subscribe C{subscriber} (an L{ISubscriber}) to C{topic}, as a broker
        would: the L{Subscription} is returned at once and connects in the
        background, each message delivered as a L{Message}; connections
        that fail are retried, with backoff, until it is closed.  A proxy
        feeds its own subscribers this way.

        @raise InvalidTopic: C{topic} cannot be subscribed to.
        """
        if self._closed:
            raise MemmqError("client is closed")
        check_topic(topic)
        subscription = Subscription(self, topic, deliver=subscriber.deliver, as_message=True, since=since)
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
        self._links: dict[str, Link] = {}
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
        return sum(1 for link in self._links.values() if link.stream is not None)

    # -- taking messages -------------------------------------------------

    def get(self) -> Deferred[bytes]:
        """
        The next message's payload (Go's C{data := <-ch}).
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

    # -- flow, for attached subscribers ----------------------------------

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
                link = self._links[server] = Link(self, server, first_attempts=attempts)
                opening.append((server, link.opened))
        if not wait:
            return succeed(None)

        def outcome(results):
            failures = {s: reason_of(r) for (s, _), (ok, r) in zip(opening, results, strict=True) if not ok}
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


class Link:
    """
    One subscription's connection to one server, made by the client's
    transport and re-established with L{backoff} whenever it drops, until
    closed.

    @ivar stream: the open L{IStream}, or L{None} while connecting or
        waiting to reconnect.
    @ivar opened: fires once the first connection is open; fails if the
        first C{first_attempts} attempts failed (L{None}: never gives up).
    """

    def __init__(self, subscription: Subscription, server: str, first_attempts: int | None) -> None:
        self.subscription = subscription
        self.server = server
        self.stream: IStream | None = None
        self.opened: Deferred[None] = Deferred()
        self._first_attempts = first_attempts
        self._attempt = 0
        self._ever_opened = False
        self._nudged = False
        self._closed = False
        self._closing: Deferred[None] | None = None
        self._retry_call = None
        self._connecting: Deferred | None = None
        self._clock = subscription.client.reactor
        self._connect()

    @property
    def topic(self) -> str:
        return self.subscription.topic

    @property
    def since(self) -> int | None:
        """
        What to ask the server to replay from: only on the first connection
        (a re-established one carries on with live messages).
        """
        return None if self._ever_opened else self.subscription.since

    # -- what the transport's stream reports -------------------------------

    def received(self, stream: IStream, payload: bytes) -> None:
        """
        A message from C{stream}.
        """
        if self.stream is stream:
            self.subscription._receive(payload)

    def lost(self, stream: IStream, reason: str) -> None:
        """
        C{stream}, once open, has ended, for a one-line C{reason}.
        """
        if self.stream is stream:
            self._lost(reason)

    # -- connecting --------------------------------------------------------

    def _connect(self) -> None:
        self._retry_call = None
        self._connecting = self.subscription.client.transport.subscribe(self)
        self._connecting.addCallbacks(self._open, self._failed)

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(CancelledError) and self._closed:
            return
        self._lost(reason_of(failure))

    def _open(self, stream: IStream) -> None:
        self._connecting = None
        if self._closed:
            stream.close()
            return
        self.stream = stream
        if self.subscription._paused:
            stream.pause()
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
            self.subscription.client.server_reachable(self.server)

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
        self.stream = None
        if self._closed:
            if self._closing is not None and not self._closing.called:
                self._closing.callback(None)
            return
        self.subscription.client.upstream_errors += 1
        self._attempt += 1
        if not self._ever_opened and self._first_attempts is not None:
            if self._attempt >= self._first_attempts:
                self._closed = True
                if not self.opened.called:
                    self.opened.errback(MemmqError(reason))
                return
        delay = backoff(self._attempt - 1)
        if self._nudged:
            self._nudged = False
            delay = 0
        if self._ever_opened:
            _log.warn(
                "subscription to {topic!r} on {server} lost ({reason}); reconnecting in {delay:.1f} s",
                topic=self.subscription.topic, server=self.server, reason=reason, delay=delay,
            )
        self._retry_call = self._clock.callLater(delay, self._connect)

    # -- flow and closing --------------------------------------------------

    def pause(self) -> None:
        if self.stream is not None:
            self.stream.pause()

    def resume(self) -> None:
        if self.stream is not None:
            self.stream.resume()

    def close(self) -> Deferred[None]:
        """
        Stop reconnecting and close the stream; fires once it is gone (at
        most a few seconds: a server that does not answer the close is
        dropped).
        """
        if self._closed and self.stream is None:
            return succeed(None)
        self._closed = True
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        if not self.opened.called:
            self.opened.errback(MemmqError("closed"))
            self.opened.addErrback(lambda f: None)
        if self.stream is None:
            return succeed(None)
        self._closing = Deferred()
        self.stream.close()
        return self._closing
