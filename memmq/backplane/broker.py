# -*- test-case-name: tests.test_backplane -*-
"""
The broker of one process among several that make up one server: the local
in-memory L{Broker} for this process's own subscribers, and an
L{IBackplane} to and from the others.

In the shape of the proxy's broker (L{memmq.proxy.ProxyBroker}): a publish
is delivered here and handed to the backplane, which sends it only to the
processes that said they follow its topic; a message from the backplane is
delivered here only.  Interest is kept by reference count: the backplane
hears of a subject on its first local subscriber and again after its last,
so a publish to a topic nobody elsewhere follows costs no traffic.  Which
of this process's queue groups get a message published here is the
backplane's to say (its C{route}): all of them between nodes, only those it
chose this process for between workers.

A publish while the backplane is down fails (L{BackplaneUnavailable})
rather than reaching this process's subscribers only: a publisher that is
told 200 may count on every subscriber of the server having been handed it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace

from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from memmq.backplane.interface import IBackplane, IBackplaneReceiver
from memmq.broker import Broker, Subscription
from memmq.errors import BackplaneUnavailable, InvalidTopic
from memmq.interfaces import IBroker, IBrokerStats, ISubscriber
from memmq.stats import Stats, TopicStats

__all__ = ["BackplaneBroker"]


@implementer(IBroker, IBrokerStats, IBackplaneReceiver)
class BackplaneBroker:
    """
    An L{IBroker} for one process of a server made of several.

    @param local: the broker that fans messages out to this process's own
        subscribers.
    @param backplane: the link to the other processes; L{start} hands it
        this broker as its receiver.
    @ivar received_count: messages that came in from the backplane.
    @ivar sent: messages handed to the backplane (to at least one other
        process, as far as this one knows its interest: see the
        backplane's own count for what went out).
    """

    def __init__(self, local: Broker, backplane: IBackplane) -> None:
        self.local = local
        self.backplane = backplane
        self.received_count = 0
        self.received_bytes = 0
        self.sent = 0
        # topic -> messages it received from the backplane, while it has
        # local subscribers: taken off the local broker's figures, which
        # count them as published here.
        self._received_by_topic: dict[str, int] = {}
        # subject key -> how many local subscriptions have it
        self._interest: dict[Hashable, int] = {}

    def start(self) -> Deferred[None]:
        """
        Start the backplane, with this broker as its receiver.
        """
        return self.backplane.start(self)

    def stop(self) -> Deferred[None]:
        return self.backplane.stop()

    # IBroker

    def publish(self, topic: str, payload: bytes, hops: int = 0) -> Deferred[None]:
        backplane = self.backplane
        if not backplane.healthy:
            return fail(BackplaneUnavailable("the server's other processes cannot be reached; not published"))
        route = backplane.route(topic)
        try:
            self._deliver(topic, payload, None, route)
        except InvalidTopic:
            return fail()
        self.sent += 1
        return backplane.publish(topic, payload, hops, None, route)

    def publish_now(self, topic: str, payload: bytes, stamp: int | None = None) -> int:
        """
        Publish at once, as the in-memory broker's C{publish_now} does, for
        persistence to wrap (each node persists what is published through
        it). @raise BackplaneUnavailable: the backplane is down.
        """
        backplane = self.backplane
        if not backplane.healthy:
            raise BackplaneUnavailable("the server's other processes cannot be reached; not published")
        route = backplane.route(topic)
        delivered = self._deliver(topic, payload, stamp, route)
        self.sent += 1
        backplane.publish(topic, payload, 0, stamp, route).addErrback(lambda f: f.trap(BackplaneUnavailable))
        return delivered

    def _deliver(self, topic: str, payload: bytes, stamp: int | None, route) -> int:
        """
        This process's own delivery of a message published here: every
        local queue group it reaches, unless the backplane's route names
        the only ones.
        """
        if route is None:
            return self.local.publish_now(topic, payload, stamp)
        return self.local.publish_local(topic, payload, True, route.local, stamp)

    def subscribe(self, topic: str, subscriber: ISubscriber, group: str | None = None) -> Subscription:
        subscription = self.local.subscribe(topic, subscriber, group)
        self._more(topic, group)
        return subscription

    def subscribe_pattern(self, pattern, subscriber: ISubscriber, group: str | None = None) -> Subscription:
        subscription = self.local.subscribe_pattern(pattern, subscriber, group)
        self._more(subscription.pattern or subscription.topic, group)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if not subscription.active:
            return
        self.local.unsubscribe(subscription)
        topic = subscription.topic
        if self.local.topic(topic) is None:
            # Its counters went with it.
            self._received_by_topic.pop(topic, None)
        self._less(subscription.pattern or topic, subscription.group)

    # Interest, by (subject, group); a subject is a topic or, once the
    # broker takes them, a pattern.

    def _more(self, subject, group: str | None) -> None:
        key = (subject, group)
        count = self._interest.get(key, 0)
        self._interest[key] = count + 1
        if count == 0:
            self.backplane.interest(subject, True, group)

    def _less(self, subject, group: str | None) -> None:
        key = (subject, group)
        count = self._interest.get(key, 0) - 1
        if count > 0:
            self._interest[key] = count
            return
        if self._interest.pop(key, None) is not None:
            self.backplane.interest(subject, False, group)

    @property
    def interests(self) -> list[tuple[object, str | None]]:
        """
        The (subject, group) pairs this process's subscribers follow now:
        what a backplane that (re)connects tells the others.
        """
        return list(self._interest)

    # IBackplaneReceiver

    def received(self, topic: str, payload: bytes, plain: bool = True, groups=None, stamp: int | None = None) -> None:
        self.received_count += 1
        self.received_bytes += len(payload)
        if plain and self.local.topic(topic) is not None:
            by_topic = self._received_by_topic
            by_topic[topic] = by_topic.get(topic, 0) + 1
        self.local.publish_local(topic, payload, plain, groups, stamp)

    # IBrokerStats

    # What this process's figures say: published counts the messages
    # published here, not those it was handed by the others, so that the
    # figures of all the processes add up to the server's.

    def stats(self) -> Stats:
        stats = self.local.stats()
        delivery = stats.delivery
        if delivery is None:
            return stats
        return replace(
            stats,
            delivery=replace(
                delivery,
                published=delivery.published - self.received_count,
                published_bytes=delivery.published_bytes - self.received_bytes,
            ),
        )

    def topic_stats(self) -> list[TopicStats]:
        received = self._received_by_topic
        figures = self.local.topic_stats()
        return [replace(t, published=t.published - received.get(t.topic, 0)) for t in figures]
