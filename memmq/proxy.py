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
    The one upstream subscriber of a topic: hands each message to the
    proxy's own subscribers of it.
    """

    def __init__(self, local: Broker, topic: str) -> None:
        self._local = local
        self._topic = topic

    def deliver(self, message: Message) -> None:
        self._local.publish_now(self._topic, message.payload)


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
        self._upstream: dict[str, object] = {}
        self._failures = RateLimited(_log, clock)

    def publish(self, topic: str, payload: bytes, hops: int = 0) -> Deferred[None]:
        # Not handed to local subscribers here: they get it back from the
        # upstream servers it went to, like every other subscriber there.
        return self.client.publish(topic, payload, hops + 1).addErrback(self._failed)

    def _failed(self, failure):
        if failure.check(PublishError):
            self._failures.warn("upstream publish failed: {reason}", reason=failure.getErrorMessage())
        return failure

    def subscribe(self, topic: str, subscriber: ISubscriber) -> Subscription:
        subscription = self.local.subscribe(topic, subscriber)
        if topic not in self._upstream:
            self._upstream[topic] = self.client.attach(topic, _Relay(self.local, topic))
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self.local.unsubscribe(subscription)
        topic = subscription.topic
        if self.local.topic(topic) is None:
            upstream = self._upstream.pop(topic, None)
            if upstream is not None:
                self.client.unsubscribe(upstream)

    @property
    def upstream_topics(self) -> list[str]:
        """
        The topics this proxy holds an upstream subscription for.
        """
        return list(self._upstream)

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
