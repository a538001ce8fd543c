"""
The in-memory broker: a map from topic to subscriptions, and nothing else.

Pure and synchronous: no reactor, no sockets, no logging per message.  A
front-end hands each of its connections in as an L{ISubscriber}; the broker
writes to it directly while it keeps up and, once its connection says it is
full (L{Subscription.pause}), keeps a bounded queue for it alone.  A message
past that bound is dropped for that subscriber and counted, so publishing
never waits on anyone and memory stays bounded whatever the subscribers do.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from memmq.defaults import MAX_BUFFERED_BYTES as DEFAULT_MAX_BUFFERED_BYTES
from memmq.defaults import MAX_BUFFERED_MESSAGES as DEFAULT_MAX_BUFFERED_MESSAGES
from memmq.errors import InvalidTopic
from memmq.interfaces import IBroker, IBrokerStats, ISubscriber, ISubscription
from memmq.stats import Delivery, Stats, TopicStats

__all__ = [
    "Broker",
    "Message",
    "Subscription",
    "Topic",
    "check_topic",
    "DEFAULT_MAX_BUFFERED_MESSAGES",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "MAX_TOPIC_BYTES",
]

MAX_TOPIC_BYTES = 255

# C0 controls, DEL and C1 controls: nothing a topic name should hold, and
# what would break a log line, a header or a file name built from it.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_topic(topic: str) -> str:
    """
    Return C{topic} if it is acceptable, else raise L{InvalidTopic} saying why.
    """
    if not topic:
        raise InvalidTopic("no topic: give one as ?topic=NAME")
    if len(topic) > MAX_TOPIC_BYTES or len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"topic longer than {MAX_TOPIC_BYTES} bytes")
    if _CONTROL.search(topic):
        raise InvalidTopic("topic holds control characters")
    return topic


class Message:
    """
    One published message, shared by every subscriber it goes to.

    Transports frame a message once, not once per subscriber: L{encoded}
    keeps each transport's encoding of it for the others to reuse.

    @ivar stamp: its persisted timestamp (Unix ns) on a server run with
        C{--persist}, else L{None}: what a Server-Sent Events subscriber
        resumes from.
    """

    __slots__ = ("topic", "payload", "size", "stamp", "_encodings")

    def __init__(self, topic: str, payload: bytes, stamp: int | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.size = len(payload)
        self.stamp = stamp
        self._encodings: dict | None = None

    def encoded(self, encoding: Callable[[bytes], bytes]) -> bytes:
        """
        Return C{encoding(self.payload)}, computed at most once per message.
        """
        encodings = self._encodings
        if encodings is None:
            encodings = self._encodings = {}
        else:
            try:
                return encodings[encoding]
            except KeyError:
                pass
        encoded = encodings[encoding] = encoding(self.payload)
        return encoded

    def __repr__(self) -> str:
        return f"<Message topic={self.topic!r} size={self.size}>"


@implementer(ISubscription)
class Subscription:
    """
    One subscriber on one topic, with its bounded outbound queue.
    """

    __slots__ = (
        "topic",
        "subscriber",
        "dropped",
        "_topic",
        "_paused",
        "_active",
        "_pending",
        "_pending_bytes",
        "_max_messages",
        "_max_bytes",
        "_dropping",
    )

    def __init__(self, topic: Topic, subscriber: ISubscriber, max_messages: int, max_bytes: int) -> None:
        self.topic = topic.name
        self.subscriber = subscriber
        self.dropped = 0
        self._topic = topic
        self._paused = False
        self._active = True
        # Made when first needed: most subscribers are never paused, and an
        # empty deque costs some 600 bytes per subscriber.
        self._pending: deque[Message] | None = None
        self._pending_bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._dropping = False

    @property
    def buffered(self) -> int:
        """
        Messages waiting for this subscriber's connection to drain.
        """
        return len(self._pending) if self._pending else 0

    @property
    def buffered_bytes(self) -> int:
        """
        Payload bytes waiting for this subscriber's connection to drain.
        """
        return self._pending_bytes

    @property
    def active(self) -> bool:
        """
        Whether the subscription still receives messages.
        """
        return self._active

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        pending = self._pending
        if not pending:
            return
        deliver = self.subscriber.deliver
        # deliver() may fill the connection again and pause us mid-way.
        while pending and not self._paused and self._active:
            message = pending.popleft()
            self._pending_bytes -= message.size
            deliver(message)
        if not pending:
            self._dropping = False

    def _offer(self, message: Message) -> None:
        """
        Queue C{message} while paused, or drop it past the limits.
        """
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        if len(pending) >= self._max_messages or self._pending_bytes + message.size > self._max_bytes:
            self.dropped += 1
            self._topic.dropped += 1
            self._topic.dropped_bytes += message.size
            if not self._dropping:
                self._dropping = True
                self._topic._on_drop(self)
            return
        pending.append(message)
        self._pending_bytes += message.size

    def _end(self) -> None:
        self._active = False
        self._pending = None
        self._pending_bytes = 0

    def __repr__(self) -> str:
        return f"<Subscription topic={self.topic!r} buffered={self.buffered} dropped={self.dropped}>"


class Topic:
    """
    A topic that has subscribers, and its counters.  It exists only while it
    has subscribers: the last one leaving frees it.
    """

    __slots__ = ("name", "published", "dropped", "dropped_bytes", "_subscriptions", "_snapshot", "_on_drop")

    def __init__(self, name: str, on_drop) -> None:
        self.name = name
        self._on_drop = on_drop
        self.published = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self._subscriptions: dict[Subscription, None] = {}
        self._snapshot: tuple[Subscription, ...] | None = None

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """
        The current subscriptions, in the order they were made.

        Kept as a tuple between changes, so that publishing iterates over a
        stable sequence without copying it for every message.
        """
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = tuple(self._subscriptions)
        return snapshot


@implementer(IBroker, IBrokerStats)
class Broker:
    """
    The in-memory L{IBroker}.

    @param max_buffered_messages: per subscriber, how many messages may wait
        for its connection to drain before further ones are dropped for it.
    @param max_buffered_bytes: the same bound in payload bytes; whichever is
        reached first applies.
    @param on_drop: called with a L{Subscription} when it starts dropping
        messages (its buffer is full), once until its buffer drains again;
        for a front-end to log it, rate-limited.  The broker itself never
        logs.
    """

    def __init__(
        self,
        max_buffered_messages: int = DEFAULT_MAX_BUFFERED_MESSAGES,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        on_drop: Callable[[Subscription], object] | None = None,
    ) -> None:
        self.on_drop = on_drop
        if max_buffered_messages < 0 or max_buffered_bytes < 0:
            raise ValueError("buffer limits cannot be negative")
        self.max_buffered_messages = max_buffered_messages
        self.max_buffered_bytes = max_buffered_bytes
        # Counters for metrics: kept as plain sums, read when scraped.
        self.published = 0
        self.published_bytes = 0
        self.handed = 0  # message x subscriber pairs, written or queued (or dropped)
        self.handed_bytes = 0
        self._dropped_gone = 0  # drops of topics since freed
        self._dropped_bytes_gone = 0
        self._topics: dict[str, Topic] = {}

    def publish(self, topic: str, payload: bytes, hops: int = 0) -> Deferred[None]:
        # The end of the line: hops are for brokers that forward.
        try:
            self.publish_now(topic, payload)
        except InvalidTopic:
            return fail()
        return succeed(None)

    def publish_now(self, topic: str, payload: bytes, stamp: int | None = None) -> int:
        """
        Publish synchronously; return how many subscribers were handed it.
        C{stamp}: the message's persisted timestamp, if it has one.

        The L{IBroker} C{publish} wraps this in an already-fired Deferred;
        this form is for callers that know they hold the in-memory broker.
        """
        entry = self._topics.get(topic)
        if entry is None:
            # Topics with subscribers were checked when subscribed to.
            check_topic(topic)
            self.published += 1
            self.published_bytes += len(payload)
            return 0
        self.published += 1
        entry.published += 1
        message = Message(topic, payload, stamp)
        subscriptions = entry.subscriptions
        self.published_bytes += message.size
        self.handed += len(subscriptions)
        self.handed_bytes += message.size * len(subscriptions)
        for subscription in subscriptions:
            if subscription._paused:
                subscription._offer(message)
            else:
                subscription.subscriber.deliver(message)
        return len(subscriptions)

    def subscribe(self, topic: str, subscriber: ISubscriber) -> Subscription:
        entry = self._topics.get(topic)
        if entry is None:
            entry = self._topics[check_topic(topic)] = Topic(topic, self._dropping)
        subscription = Subscription(
            entry, subscriber, self.max_buffered_messages, self.max_buffered_bytes
        )
        entry._subscriptions[subscription] = None
        entry._snapshot = None
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if not subscription._active:
            return
        subscription._end()
        entry = subscription._topic
        entry._subscriptions.pop(subscription, None)
        entry._snapshot = None
        if not entry._subscriptions and self._topics.get(entry.name) is entry:
            del self._topics[entry.name]
            self._dropped_gone += entry.dropped
            self._dropped_bytes_gone += entry.dropped_bytes

    def _dropping(self, subscription: Subscription) -> None:
        if self.on_drop is not None:
            self.on_drop(subscription)

    @property
    def dropped(self) -> int:
        """
        Messages dropped for slow subscribers, since start.
        """
        return self._dropped_gone + sum(t.dropped for t in self._topics.values())

    @property
    def delivered(self) -> int:
        """
        Message x subscriber pairs handed over (written or queued) and not dropped.
        """
        return self.handed - self.dropped

    @property
    def delivered_bytes(self) -> int:
        """
        Payload bytes of the deliveries counted by L{delivered}.
        """
        return self.handed_bytes - self._dropped_bytes_gone - sum(t.dropped_bytes for t in self._topics.values())

    def stats(self) -> Stats:
        return Stats(
            delivery=Delivery(
                published=self.published,
                published_bytes=self.published_bytes,
                delivered=self.delivered,
                delivered_bytes=self.delivered_bytes,
                dropped=self.dropped,
                subscribers=self.subscribers,
                topics=self.topics,
            )
        )

    def topic_stats(self) -> list[TopicStats]:
        return [
            TopicStats(
                topic=t.name,
                subscribers=len(t._subscriptions),
                published=t.published,
                dropped=t.dropped,
                buffered=sum(s.buffered for s in t._subscriptions),
            )
            for t in self._topics.values()
        ]

    def topic_list(self) -> list[Topic]:
        """
        The live topics.
        """
        return list(self._topics.values())

    def topic(self, name: str) -> Topic | None:
        """
        The live L{Topic} called C{name}, or L{None} if it has no subscribers.
        """
        return self._topics.get(name)

    @property
    def topics(self) -> int:
        """
        How many topics have subscribers.
        """
        return len(self._topics)

    @property
    def subscribers(self) -> int:
        """
        How many subscriptions there are, over all topics.
        """
        return sum(len(t._subscriptions) for t in self._topics.values())
