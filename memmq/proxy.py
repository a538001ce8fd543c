"""
The proxy's broker: the server's front-ends over the client library.

A proxy serves the same API as a server, but a publish goes to the
upstream servers the client's selector picks (200 only when every one of
them accepted it), and subscribers are fed from upstream.  All of a
proxy's subscribers to one topic share one upstream subscription, opened
with the first and closed with the last (asim/mq's proxy opens one upstream
connection per subscriber per server); the fan-out to them is done by an
in-memory L{Broker}, with its bounded buffers and drop policy, so a slow
subscriber of the proxy slows no one.

Patterns and queue groups pass upstream as they are, one upstream
subscription per (topic or pattern, group), over the client's one
connection per upstream server (and group).  A message the upstream
server sends once for several of the proxy's subscriptions arrives as one
L{Message} for each of their relays, and is handed on once; a group's
message goes to one of the proxy's members of that group.

A proxy says what it is in its start-up line (L{role}), and its C{/health}
reports each upstream (L{ProxyBroker.upstream_health}).
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from zope.interface import implementer

from memmq.broker import Broker, Message, Subscription
from memmq.client.core import Client
from memmq.client.probe import reachable
from memmq.errors import PublishError
from memmq.interfaces import IBroker, IBrokerStats, ISubscriber
from memmq.logs import RateLimited
from memmq.patterns import Pattern
from memmq.stats import Stats, TopicStats, Upstream

__all__ = ["ProxyBroker", "role"]

_log = Logger()


def role(options) -> str:
    """
    What a proxy's start-up line says after its address: that it is a
    proxy, of which servers, and how it picks and reaches them.
    """
    how = [f"select {options['select']}"]
    if options["resolver"] == "dns":
        how.append(f"servers looked up in DNS every {options['resolve_interval']:g} s")
    how.append(f"upstream over {options['upstream_transport'] or options['transport']}")
    return f" as a proxy of {', '.join(options['server_list'])} ({', '.join(how)})"


@implementer(ISubscriber)
class _Relay:
    """
    The one upstream subscriber of a subject (a topic or pattern, in a
    group or not): hands each message to the proxy's own subscribers, once.
    """

    def __init__(self, proxy: ProxyBroker, group: str | None) -> None:
        self._proxy = proxy
        self._group = group

    def deliver(self, message: Message) -> None:
        proxy = self._proxy
        if self._group is None:
            # The relays of overlapping subjects are handed one message
            # one after the other: the first hands it on for all.
            if message is proxy._last:
                return
            proxy._last = message
            if not proxy.local.matches_patterns:
                proxy.local.publish_now(message.topic, message.payload)
                return
        group = self._group
        proxy.local.publish_local(message.topic, message.payload, group is None, () if group is None else (group,))


@implementer(IBroker, IBrokerStats)
class ProxyBroker:
    """
    An L{IBroker} whose messages come from and go to upstream servers.

    @param client: the client for the upstream servers (its selector,
        resolver, retries and TLS settings are the proxy's).
    @param local: the broker that fans messages out to this proxy's own
        subscribers.
    """

    def __init__(self, client: Client, local: Broker, clock=None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.client = client
        self.local = local
        self._clock = clock
        self._upstream: dict[tuple[str, bool, str | None], object] = {}
        self._last: Message | None = None
        self._failures = RateLimited(_log, clock)

    def publish(self, topic: str, payload: bytes, hops: int = 0) -> Deferred[None]:
        # Not handed to local subscribers here: they get it back from the
        # upstream servers it went to, like every other subscriber there.
        return self.client.publish(topic, payload, hops + 1).addErrback(self._failed)

    def _failed(self, failure):
        if failure.check(PublishError):
            self._failures.warn("upstream publish failed: {reason}", reason=failure.getErrorMessage())
        return failure

    def subscribe(self, topic: str, subscriber: ISubscriber, group: str | None = None) -> Subscription:
        subscription = self.local.subscribe(topic, subscriber, group)
        self._hold((topic, False, group))
        return subscription

    def subscribe_pattern(self, pattern: Pattern, subscriber: ISubscriber, group: str | None = None) -> Subscription:
        subscription = self.local.subscribe_pattern(pattern, subscriber, group)
        self._hold((subscription.topic, subscription.pattern is not None, group))
        return subscription

    def _hold(self, key: tuple[str, bool, str | None]) -> None:
        """
        Subscribe upstream to C{key}'s subject, unless already subscribed.
        """
        if key not in self._upstream:
            name, is_pattern, group = key
            relay = _Relay(self, group)
            if is_pattern:
                self._upstream[key] = self.client.attach(None, relay, pattern=name, group=group)
            elif group is not None:
                self._upstream[key] = self.client.attach(name, relay, group=group)
            else:
                self._upstream[key] = self.client.attach(name, relay)

    def unsubscribe(self, subscription: Subscription) -> None:
        self.local.unsubscribe(subscription)
        key = (subscription.topic, subscription.pattern is not None, subscription.group)
        if self.local.subject(*key) is None:
            upstream = self._upstream.pop(key, None)
            if upstream is not None:
                self.client.unsubscribe(upstream)

    @property
    def upstream_topics(self) -> list[str]:
        """
        The topics (and patterns) this proxy holds an upstream subscription
        for.
        """
        return list(dict.fromkeys(name for name, _, _ in self._upstream))

    def stats(self) -> Stats:
        return replace(
            self.local.stats(),
            upstream=Upstream(
                topics=len(self._upstream),
                servers=tuple(self.client.servers),
                errors=self.client.upstream_errors,
            ),
        )

    def upstream_health(self) -> Deferred[list[str]]:
        """
        One line per upstream server, each asked now whether it can be
        reached (TLS handshake and all), within L{PROBE_TIMEOUT}:
        C{"upstream https://a:8081 up"}, or C{"... down: connection
        refused"}.  No servers at all (a DNS name that resolves to none)
        is one line saying so.
        """
        servers = list(self.client.servers)
        if not servers:
            return succeed(["upstream (none): no servers resolved"])

        def lines(answers: list[str | None]) -> list[str]:
            return [
                f"upstream {server} " + ("up" if why is None else f"down: {why}")
                for server, why in zip(servers, answers, strict=True)
            ]

        checks = [reachable(self._clock, self.client.tls, server) for server in servers]
        return gatherResults(checks).addCallback(lines)

    def topic_stats(self) -> list[TopicStats]:
        return self.local.topic_stats()

    def close(self) -> Deferred[None]:
        """
        Close every upstream subscription and connection.
        """
        self._upstream.clear()
        return self.client.close()
