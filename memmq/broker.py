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

from collections.abc import Callable, Collection

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from memmq.errors import InvalidTopic
from memmq.interfaces import IBroker, IBrokerStats, ISubscriber
from memmq.patterns import Pattern
from memmq.stats import Delivery, GroupStats, Interest, PatternStats, Stats, TopicStats
from memmq.sublist import Sublist
from memmq.topics import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_BUFFERED_MESSAGES,
    MAX_TOPIC_BYTES,
    Message,
    Subscription,
    Topic,
    check_group,
    check_topic,
)

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

    @property
    def matches_patterns(self) -> bool:
        """
        Whether any pattern or queue group subscription is registered (a
        publish then consults the subscription tree).
        """
        return self._matching is not None

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
                return self._publish_matched(topic, payload, entry, matches.recipients(), stamp)
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
        handed = len(entry.members)
        self.published_bytes += message.size
        self.handed += handed
        self.handed_bytes += message.size * handed
        entry.hand(message)
        return handed

    def _publish_matched(
        self, topic: str, payload: bytes, entry: Topic | None, chosen: list[Subscription], stamp: int | None = None,
    ) -> int:
        """
        Publish to a topic that patterns or queue groups reach: its exact
        subscribers, then every plain pattern subscriber, then one member of
        each group.
        """
        message = Message(topic, payload, stamp)
        self.published += 1
        self.published_bytes += message.size
        recipients: list[Subscription] = list(entry.subscriptions) if entry is not None else []
        if entry is not None:
            entry.published += 1
        recipients.extend(chosen)
        for subject in {subscription.topic_entry for subscription in chosen}:
            subject.published += 1
        self.handed += len(recipients)
        self.handed_bytes += message.size * len(recipients)
        for subscription in recipients:
            if subscription.paused:
                subscription.offer(message)
            else:
                if subscription.cursor is not None:
                    # What waits in the topic's log goes first.
                    subscription.catch_up()
                subscription.subscriber.deliver(message)
        return len(recipients)

    def publish_local(
        self, topic: str, payload: bytes, plain: bool = True, groups: Collection[str] | None = (),
        stamp: int | None = None,
    ) -> int:
        """
        Publish to part of the subscribers only: if C{plain}, to those
        outside queue groups; and to one member of each queue group named in
        C{groups} (L{None}: of every group the topic reaches, as
        L{publish_now} does).

        For whoever decided elsewhere which groups get a message here: a
        proxy, whose upstream servers send it a topic's messages once for
        its subscribers outside groups and once more for each of its groups;
        a worker, told by the worker that took the publish which of its
        groups it was chosen for (README: Workers).
        """
        matching = self._matching
        if matching is None:
            # No pattern or group here: the plain subscribers are all.
            if plain:
                return self.publish_now(topic, payload, stamp)
            check_topic(topic)
            self.published += 1
            self.published_bytes += len(payload)
            return 0
        check_topic(topic)
        entry = self._topics.get(topic) if plain else None
        matches = matching.match(topic)
        chosen: list[Subscription] = list(matches.plain) if plain else []
        for queue, members in matches.groups:
            if groups is None or queue.name in groups:
                member = queue.choose(members)
                if member is not None:
                    chosen.append(member)
        if entry is None and not chosen:
            self.published += 1
            self.published_bytes += len(payload)
            return 0
        return self._publish_matched(topic, payload, entry, chosen, stamp)

    def subscribe(self, topic: str, subscriber: ISubscriber, group: str | None = None) -> Subscription:
        if group is not None:
            return self._subscribe_matching(check_topic(topic), None, subscriber, check_group(group))
        entry = self._topics.get(topic)
        if entry is None:
            entry = self._topics[check_topic(topic)] = Topic(topic, self._dropping)
        subscription = Subscription(
            entry, subscriber, self.max_buffered_messages, self.max_buffered_bytes
        )
        entry.add(subscription)
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
        entry.add(subscription)
        self._sublist.insert(name if pattern is None else pattern, subscription, group)
        self._matching = self._sublist
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if not subscription.active:
            return
        subscription.end()
        entry = subscription.topic_entry
        entry.remove(subscription)
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
            if not entry.members and self._subjects.get(key) is entry:
                del self._subjects[key]
                self._dropped_gone += entry.dropped
                self._dropped_bytes_gone += entry.dropped_bytes
            return
        if not entry.members and self._topics.get(entry.name) is entry:
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
                patterns[name] = patterns.get(name, 0) + len(entry.members)
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
                subscribers=len(t.members),
                published=t.published,
                dropped=t.dropped,
                buffered=sum(s.buffered for s in t.members),
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
        return sum(len(t.members) for t in self._topics.values()) + len(self._sublist)
