"""
A client's subscriptions: L{Subscription} (one topic, its queue and its
servers) and L{Link} (its connection to one server, made by the client's
transport and re-established with L{backoff}).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from memmq.auth.errors import AuthError
from memmq.broker import Message
from memmq.client.reasons import reason_of
from memmq.client.servers import base_url
from memmq.client.transport import IStream, backoff
from memmq.errors import MemmqError, SubscribeError
from memmq.interfaces import ISubscription
from memmq.patterns import Pattern

if TYPE_CHECKING:
    from memmq.client.core import Client

__all__ = ["DEFAULT_MAX_QUEUED", "Link", "Subscription"]

_log = Logger()

DEFAULT_MAX_QUEUED = 10_000


@implementer(ISubscription)
class Subscription:
    """
    A subscription to one topic, or to a pattern of topics, in a queue
    group or not, over a connection to each of its servers.

    With the L{All} selector over several servers, a message published to
    several of them arrives once from each.

    @ivar topic: the topic, or the pattern's text.
    @ivar pattern: the L{Pattern}, or L{None} for a topic.
    @ivar group: the queue group, or L{None}.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        deliver: Callable[[Any], Any] | None = None,
        as_message: bool = False,
        max_queued: int = DEFAULT_MAX_QUEUED,
        since: int | None = None,
        pattern: Pattern | None = None,
        group: str | None = None,
    ) -> None:
        self.client = client
        self.topic = topic
        self.pattern = pattern
        self.group = group
        self.since = since
        self.dropped = 0
        self._deliver = deliver
        self._as_message = as_message
        self._max_queued = max_queued
        self._queue: deque[Message] = deque()
        self._getters: deque[Deferred[Message]] = deque()
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
        return self.get_message().addCallback(lambda message: message.payload)

    def get_message(self) -> Deferred[Message]:
        """
        The next message, with its topic (a L{Message}: C{.topic},
        C{.payload}); what a pattern subscription needs to tell its topics
        apart.
        """
        if self._queue:
            return succeed(self._queue.popleft())
        if self._closed:
            return fail(MemmqError(f"subscription to {self.topic!r} is closed"))
        d: Deferred[Message] = Deferred(lambda d: self._getters.remove(d))
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

    def _receive(self, message: Message) -> None:
        if self._closed:
            return
        if self._deliver is not None:
            self._deliver(message if self._as_message else message.payload)
        elif self._getters:
            self._getters.popleft().callback(message)
        elif len(self._queue) < self._max_queued:
            self._queue.append(message)
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
            if self.pattern is None:
                wanted = [base_url(s) for s in self.client.selector.get(self.topic)]
            else:
                # A pattern's topics may live on any server (with a shard
                # too): every one.
                wanted = list(self.client.servers)
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
    def pattern(self) -> Pattern | None:
        return self.subscription.pattern

    @property
    def group(self) -> str | None:
        return self.subscription.group

    @property
    def since(self) -> int | None:
        """
        What to ask the server to replay from: only on the first connection
        (a re-established one carries on with live messages).
        """
        return None if self._ever_opened else self.subscription.since

    # -- what the transport's stream reports -------------------------------

    def received(self, stream: IStream, payload: bytes, message: Message | None = None) -> None:
        """
        A message from C{stream}: its payload, or, from a transport that
        knows its topic, the L{Message} itself.
        """
        if self.stream is stream:
            self.subscription._receive(message if message is not None else Message(self.topic, payload))

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
        if failure.check(AuthError):
            # Access control refused: asking again would be refused again.
            self._refused(failure.value)
            return
        self._lost(reason_of(failure))

    def _refused(self, error: AuthError) -> None:
        self.stream = None
        self._closed = True
        self.subscription.client.upstream_errors += 1
        if not self.opened.called:
            self.opened.errback(error)
        else:
            _log.warn(
                "subscription to {topic!r} on {server} refused ({reason}); not retrying",
                topic=self.subscription.topic, server=self.server, reason=str(error),
            )

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
