"""
What the broker is made of: a published L{Message} (shared by every
subscriber it goes to, framed once per transport), what a topic may be
called, and the per-topic L{Topic} and per-subscriber L{Subscription} with
its bounded queue and drop policy (see L{memmq.broker} for the map that
holds them).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

from zope.interface import implementer

from memmq.defaults import MAX_BUFFERED_BYTES as DEFAULT_MAX_BUFFERED_BYTES
from memmq.defaults import MAX_BUFFERED_MESSAGES as DEFAULT_MAX_BUFFERED_MESSAGES
from memmq.errors import InvalidTopic
from memmq.following import CHUNK, Chunk, Cursor, Joined, joined, read
from memmq.interfaces import IFollower, ISubscriber, ISubscription
from memmq.patterns import Pattern

__all__ = [
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

    def framed(self, framing: Callable[[Message], bytes]) -> bytes:
        """
        Return C{framing(self)}, computed at most once per message, however
        many subscribers (and of however many kinds) it is written to.
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
        "topic_entry",
        "paused",
        "_active",
        "_pending",
        "_pending_bytes",
        "_max_messages",
        "_max_bytes",
        "_dropping",
        "cursor",
        "follows",
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
        self.topic_entry = topic
        self.paused = False
        self._active = True
        # Made when first needed: most subscribers are never paused, and an
        # empty deque costs some 600 bytes per subscriber.
        self._pending: deque[Message] | None = None
        self._pending_bytes = 0
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._dropping = False
        # Where in its topic's log this subscription reads from, while it
        # follows (see memmq.following); None while it is handed each
        # message (paused, idle, or a subscriber that cannot follow).
        self.cursor: Cursor | None = None
        self.follows = IFollower.providedBy(subscriber)

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
        if not self.paused:
            return True
        pending = self._pending
        if pending is None:
            return self._max_messages > 0
        return len(pending) < self._max_messages and self._pending_bytes < self._max_bytes

    @property
    def following(self) -> bool:
        """
        Whether messages wait for this subscriber in its topic's log.
        """
        return self.cursor is not None

    def follow(self, cursor: Cursor) -> None:
        """
        Read from the topic's log from C{cursor} on, and tell the
        subscriber it has something to take.
        """
        self.cursor = cursor
        self.topic_entry.waiting += 1
        self.subscriber.wake()

    def take(self, framing: Callable[[Message], bytes]) -> bytes:
        """
        What waits for this subscriber in its topic's log, each message
        framed by C{framing} (L{Message.framed}) and joined (shared with the
        subscribers that take the same stretch with the same framing); stop
        following.
        """
        cursor = self.cursor
        if cursor is None:
            return b""
        caches = self.topic_entry.joined
        cache = caches.get(framing)
        if cache is None:
            cache = caches[framing] = Joined()
        data = joined(cache, cursor, framing)
        self._unfollow()
        return data

    def catch_up(self) -> None:
        """
        Hand the subscriber, one by one, what waits for it in the log, and
        stop following: before a message that comes another way (so that
        order is kept), and before pausing (what is published next is
        queued, and must not be in the log as well).
        """
        cursor = self.cursor
        if cursor is None:
            return
        messages = read(cursor)[0]
        self._unfollow()
        deliver = self.subscriber.deliver
        for message in messages:
            deliver(message)

    def _unfollow(self) -> None:
        self.cursor = None
        entry = self.topic_entry
        entry.waiting -= 1
        if not entry.waiting:
            # Nobody reads the log: let it, and the last stretch framed, go.
            entry.tail = None
            entry.joined = {}

    def pause(self) -> None:
        self.catch_up()
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        pending = self._pending
        if not pending:
            return
        deliver = self.subscriber.deliver
        # deliver() may fill the connection again and pause us mid-way.
        while pending and not self.paused and self._active:
            message = pending.popleft()
            self._pending_bytes -= message.size
            deliver(message)
        if not pending:
            self._dropping = False

    def forget(self, replayed: Callable[[Message], bool]) -> None:
        """
        Take the buffered messages that C{replayed} says a replay sends out
        of the buffer (a replay's seam came from another process: see
        L{memmq.persist.replay}); they are not dropped, so not counted.
        """
        pending = self._pending
        if pending:
            kept = deque(message for message in pending if not replayed(message))
            self._pending = kept
            self._pending_bytes = sum(message.size for message in kept)

    def offer(self, message: Message) -> None:
        """
        Queue C{message} while paused, or drop it past the limits.
        """
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        if len(pending) >= self._max_messages or self._pending_bytes + message.size > self._max_bytes:
            self.dropped += 1
            self.topic_entry.dropped += 1
            self.topic_entry.dropped_bytes += message.size
            if not self._dropping:
                self._dropping = True
                self.topic_entry.on_drop(self)
            return
        pending.append(message)
        self._pending_bytes += message.size

    def end(self) -> None:
        if self.cursor is not None:
            self._unfollow()
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

    __slots__ = (
        "name", "published", "dropped", "dropped_bytes", "members", "_snapshot", "on_drop",
        "followers", "waiting", "tail", "joined",
    )

    def __init__(self, name: str, on_drop) -> None:
        self.name = name
        self.on_drop = on_drop
        self.published = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.members: dict[Subscription, None] = {}
        self._snapshot: tuple[Subscription, ...] | None = None
        # The log its followers read from (memmq.following): how many
        # members can follow, how many do now, the chunk being appended
        # to (while any does), and the last stretch framed, per framing.
        self.followers = 0
        self.waiting = 0
        self.tail: Chunk | None = None
        self.joined: dict[Callable, Joined] = {}

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """
        The current subscriptions, in the order they were made.

        Kept as a tuple between changes, so that publishing iterates over a
        stable sequence without copying it for every message.
        """
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = tuple(self.members)
        return snapshot

    def add(self, subscription: Subscription) -> None:
        self.members[subscription] = None
        self._snapshot = None
        if subscription.follows:
            self.followers += 1

    def remove(self, subscription: Subscription) -> None:
        if subscription in self.members:
            del self.members[subscription]
            if subscription.follows:
                self.followers -= 1
        self._snapshot = None

    def hand(self, message: Message) -> None:
        """
        Hand C{message} to every subscriber: appended to the log for those
        that follow it already, and those that can follow start to (one
        call each, and none for the publishes after, until they are
        written to); queued for the paused; delivered to the others.
        """
        cursor = None
        if self.followers:
            tail = self.tail
            if tail is None or len(tail.messages) >= CHUNK:
                chunk = Chunk()
                if tail is not None:
                    tail.next = chunk
                tail = self.tail = chunk
            cursor = (tail, len(tail.messages))
            tail.messages.append(message)
        for subscription in self.subscriptions:
            if subscription.cursor is not None:
                continue
            if subscription.paused:
                subscription.offer(message)
            elif cursor is not None and subscription.follows:
                subscription.follow(cursor)
            else:
                subscription.subscriber.deliver(message)
        if not self.waiting:
            self.tail = None
