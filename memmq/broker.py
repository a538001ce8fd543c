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
from memmq.patterns import Pattern
from memmq.stats import Delivery, GroupStats, Interest, PatternStats, Stats, TopicStats
from memmq.sublist import Sublist

__all__ = [
    "Broker",
    "Message",
    "Subscription",
    "Topic",
    "check_group",
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


def check_group(group: str) -> str:
    """
    Return C{group} if it is an acceptable queue group name (the rules of a
    topic), else raise L{InvalidTopic} saying why.
    """
    if not group:
        raise InvalidTopic("empty group: give one as group=NAME, or none")
    try:
        return check_topic(group)
    except InvalidTopic as e:
        raise InvalidTopic(str(e).replace("topic", "group", 1)) from None


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

    def framed(self, framing: Callable[[Message], bytes]) -> bytes:
        """
        Return C{framing(self)}, computed at most once per message: for a
        frame that carries the topic as well as the payload.
        """
        encodings = self._encodings
        if encodings is None:
            encodings = self._encodings = {}
        else:
            try:
                return encodings[framing]
            except KeyError:
                pass
        framed = encodings[framing] = framing(self)
        return framed

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
        "group",
        "pattern",
        "_topic",
        "_paused",
        "_active",
        "_pending",
        "_pending_bytes",
        "_max_messages",
        "_max_bytes",
        "_dropping",
    )

    def __init__(
        self, topic: Topic, subscriber: ISubscriber, max_messages: int, max_bytes: int,
        group: str | None = None, pattern: Pattern | None = None,
    ) -> None:
        # The topic subscribed to, or the pattern's text.
        self.topic = topic.name
        self.subscriber = subscriber
        self.dropped = 0
        self.group = group
        self.pattern = pattern
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

    def has_room(self) -> bool:
        """
        Whether one more message would be delivered or kept rather than
        dropped (what a queue group asks of its members).
        """
        if not self._paused:
            return True
        pending = self._pending
        if pending is None:
            return self._max_messages > 0
        return len(pending) < self._max_messages and self._pending_bytes < self._max_bytes

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
        # Pattern and queue group subscriptions: matched through the
        # subscription tree, which publishing consults only while
        # C{_matching} is set (there is at least one), so that a broker
        # without any pays nothing for them.  Their counters are kept by
        # subject: (topic or pattern text, is a pattern, group).
        self._sublist: Sublist[Subscription] = Sublist()
        self._matching: Sublist[Subscription] | None = None
        self._subjects: dict[tuple[str, bool, str | None], Topic] = {}

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
        matching = self._matching
        if matching is not None:
            if entry is None:
                check_topic(topic)
            matches = matching.match(topic)
            if matches:
                return self._publish_matched(topic, payload, entry, matches.recipients())
            if entry is None:
                self.published += 1
                self.published_bytes += len(payload)
                return 0
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

    def _publish_matched(
        self, topic: str, payload: bytes, entry: Topic | None, chosen: list[Subscription],
    ) -> int:
        """
        Publish to a topic that patterns or queue groups reach: its exact
        subscribers, then every plain pattern subscriber, then one member of
        each group.
        """
        message = Message(topic, payload)
        self.published += 1
        self.published_bytes += message.size
        recipients: list[Subscription] = list(entry.subscriptions) if entry is not None else []
        if entry is not None:
            entry.published += 1
        recipients.extend(chosen)
        for subject in {subscription._topic for subscription in chosen}:
            subject.published += 1
        self.handed += len(recipients)
        self.handed_bytes += message.size * len(recipients)
        for subscription in recipients:
            if subscription._paused:
                subscription._offer(message)
            else:
                subscription.subscriber.deliver(message)
        return len(recipients)

    def publish_local(self, topic: str, payload: bytes, group: str | None = None) -> int:
        """
        Publish to part of the subscribers only: with no C{group}, to those
        outside groups; with one, to one member of that group alone.

        For a proxy, whose upstream servers send it a topic's messages once
        for its subscribers outside groups and once more for each of its
        groups.
        """
        check_topic(topic)
        entry = self._topics.get(topic) if group is None else None
        matches = self._matching.match(topic) if self._matching is not None else None
        chosen: list[Subscription] = []
        if matches:
            if group is None:
                chosen = list(matches.plain)
            else:
                for queue, members in matches.groups:
                    if queue.name == group:
                        member = queue.choose(members)
                        if member is not None:
                            chosen.append(member)
        if entry is None and not chosen:
            self.published += 1
            self.published_bytes += len(payload)
            return 0
        return self._publish_matched(topic, payload, entry, chosen)

    def subscribe(self, topic: str, subscriber: ISubscriber, group: str | None = None) -> Subscription:
        if group is not None:
            return self._subscribe_matching(check_topic(topic), None, subscriber, check_group(group))
        entry = self._topics.get(topic)
        if entry is None:
            entry = self._topics[check_topic(topic)] = Topic(topic, self._dropping)
        subscription = Subscription(
            entry, subscriber, self.max_buffered_messages, self.max_buffered_bytes
        )
        entry._subscriptions[subscription] = None
        entry._snapshot = None
        return subscription

    def subscribe_pattern(self, pattern: Pattern, subscriber: ISubscriber, group: str | None = None) -> Subscription:
        """
        Register C{subscriber} for every message published to a topic
        C{pattern} (a L{Pattern}) matches, in queue group C{group} if given.
        A pattern without wildcards is its text as a topic.
        """
        if group is not None:
            check_group(group)
        if pattern.is_literal:
            return self.subscribe(pattern.text, subscriber, group)
        return self._subscribe_matching(pattern.text, pattern, subscriber, group)

    def _subscribe_matching(
        self, name: str, pattern: Pattern | None, subscriber: ISubscriber, group: str | None,
    ) -> Subscription:
        key = (name, pattern is not None, group)
        entry = self._subjects.get(key)
        if entry is None:
            entry = self._subjects[key] = Topic(name, self._dropping)
        subscription = Subscription(
            entry, subscriber, self.max_buffered_messages, self.max_buffered_bytes, group, pattern
        )
        entry._subscriptions[subscription] = None
        self._sublist.insert(name if pattern is None else pattern, subscription, group)
        self._matching = self._sublist
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if not subscription._active:
            return
        subscription._end()
        entry = subscription._topic
        entry._subscriptions.pop(subscription, None)
        group = subscription.group
        pattern = subscription.pattern
        if group is not None or pattern is not None:
            sublist = self._sublist
            queue = sublist.group(group) if group is not None else None
            sublist.remove(entry.name if pattern is None else pattern, subscription, group)
            if queue is not None and sublist.group(group) is None:
                self._dropped_gone += queue.dropped
            if not len(sublist):
                self._matching = None
            key = (entry.name, pattern is not None, group)
            if not entry._subscriptions and self._subjects.get(key) is entry:
                del self._subjects[key]
                self._dropped_gone += entry.dropped
                self._dropped_bytes_gone += entry.dropped_bytes
            return
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
        return (
            self._dropped_gone
            + sum(t.dropped for t in self._topics.values())
            + sum(t.dropped for t in self._subjects.values())
            + sum(g.dropped for g in self._sublist.groups())
        )

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
        return (
            self.handed_bytes
            - self._dropped_bytes_gone
            - sum(t.dropped_bytes for t in self._topics.values())
            - sum(t.dropped_bytes for t in self._subjects.values())
        )

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
            ),
            interest=self.interest(),
        )

    def interest(self) -> Interest | None:
        """
        The pattern subscriptions and queue groups now, or L{None} when
        there are none.
        """
        if self._matching is None:
            return None
        patterns: dict[str, int] = {}
        groups: dict[str, list[int]] = {}
        for (name, is_pattern, _group), entry in self._subjects.items():
            if is_pattern:
                patterns[name] = patterns.get(name, 0) + len(entry._subscriptions)
        for queue in self._sublist.groups():
            groups[queue.name] = [queue.size, queue.dropped]
        return Interest(
            patterns=tuple(PatternStats(p, n) for p, n in sorted(patterns.items())),
            groups=tuple(GroupStats(g, size, dropped) for g, (size, dropped) in sorted(groups.items())),
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

    def subject(self, name: str, is_pattern: bool = False, group: str | None = None) -> Topic | None:
        """
        The live entry of a topic or pattern (by its text) in a group or
        not, or L{None} if it has no subscribers.
        """
        if not is_pattern and group is None:
            return self._topics.get(name)
        return self._subjects.get((name, is_pattern, group))

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
        return sum(len(t._subscriptions) for t in self._topics.values()) + len(self._sublist)
