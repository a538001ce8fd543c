"""
Tests for memmq.following and the followers of memmq.topics: subscribers
woken once and reading their topic's log keep every behaviour of
subscribers handed each message (order, flow control, drops, counts).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from memmq.broker import Broker, Message, Subscription
from memmq.following import CHUNK
from memmq.interfaces import IFollower, ISubscriber
from memmq.patterns import parse_pattern


def _frame(message: Message) -> bytes:
    return b"<" + message.payload + b">"


@implementer(IFollower)
class Follower:
    """
    A subscriber that writes, when flushed, what was delivered to it and
    then what waits in its topic's log, as a front-end with a combiner
    does; the test flushes it.
    """

    def __init__(self) -> None:
        self.wakes = 0
        self.delivered: list[bytes] = []
        self.written: list[bytes] = []
        self.subscription: Subscription | None = None

    def deliver(self, message: Message) -> None:
        self.delivered.append(_frame(message))

    def wake(self) -> None:
        self.wakes += 1

    def flush(self) -> bytes:
        delivered, self.delivered = self.delivered, []
        logged = self.subscription.take(_frame)
        data = b"".join(delivered) + logged
        if data:
            self.written.append(data)
        return logged


def _subscribe(broker: Broker, count: int = 1, topic: str = "t") -> list[Follower]:
    followers = []
    for _ in range(count):
        follower = Follower()
        follower.subscription = broker.subscribe(topic, follower)
        followers.append(follower)
    return followers


def _expected(*payloads: bytes) -> bytes:
    return b"".join(b"<" + p + b">" for p in payloads)


class FollowTests(SynchronousTestCase):
    """
    A follower is woken once per write, and takes every message published
    since, in order.
    """

    def test_provides_ifollower(self) -> None:
        """
        The test double is what the broker recognises.
        """
        self.assertTrue(verifyObject(IFollower, Follower()))

    def test_woken_once_per_write(self) -> None:
        """
        Publishing three messages wakes each follower once, and a flush
        writes the three in order; the next publish wakes it again.
        """
        broker = Broker()
        followers = _subscribe(broker, 3)
        for payload in (b"a", b"b", b"c"):
            self.assertEqual(broker.publish_now("t", payload), 3)
        for follower in followers:
            self.assertEqual(follower.wakes, 1)
            self.assertTrue(follower.subscription.following)
            follower.flush()
            self.assertEqual(follower.written, [_expected(b"a", b"b", b"c")])
            self.assertFalse(follower.subscription.following)
        broker.publish_now("t", b"d")
        for follower in followers:
            self.assertEqual(follower.wakes, 2)
            follower.flush()
            self.assertEqual(follower.written[-1], _expected(b"d"))

    def test_same_stretch_framed_once(self) -> None:
        """
        Followers that take the same stretch of the log write the very
        same bytes object (joined once).
        """
        broker = Broker()
        followers = _subscribe(broker, 4)
        broker.publish_now("t", b"a")
        broker.publish_now("t", b"b")
        taken = [follower.flush() for follower in followers]
        self.assertEqual(taken[0], _expected(b"a", b"b"))
        for other in taken[1:]:
            self.assertIs(other, taken[0])

    def test_flushed_at_different_times(self) -> None:
        """
        A follower flushed in between starts again where it stopped; the
        others take everything from where they started.
        """
        broker = Broker()
        early, late = _subscribe(broker, 2)
        broker.publish_now("t", b"a")
        early.flush()
        broker.publish_now("t", b"b")
        broker.publish_now("t", b"c")
        early.flush()
        late.flush()
        self.assertEqual(early.written, [_expected(b"a"), _expected(b"b", b"c")])
        self.assertEqual(late.written, [_expected(b"a", b"b", b"c")])

    def test_across_chunks(self) -> None:
        """
        More messages than a chunk holds between two writes arrive all, in
        order.
        """
        broker = Broker()
        (follower,) = _subscribe(broker)
        payloads = [b"%d" % i for i in range(CHUNK * 2 + 5)]
        for payload in payloads:
            broker.publish_now("t", payload)
        follower.flush()
        self.assertEqual(follower.written, [_expected(*payloads)])

    def test_log_released(self) -> None:
        """
        Once every follower has taken what waited, the topic keeps no log.
        """
        broker = Broker()
        followers = _subscribe(broker, 2)
        broker.publish_now("t", b"a")
        entry = broker.topic("t")
        self.assertIsNotNone(entry.tail)
        self.assertEqual(entry.waiting, 2)
        for follower in followers:
            follower.flush()
        self.assertIsNone(entry.tail)
        self.assertEqual(entry.waiting, 0)

    def test_unsubscribe_while_following(self) -> None:
        """
        A follower unsubscribed before its write takes nothing, and the
        topic no longer waits for it.
        """
        broker = Broker()
        gone, stays = _subscribe(broker, 2)
        broker.publish_now("t", b"a")
        broker.unsubscribe(gone.subscription)
        self.assertEqual(gone.flush(), b"")
        self.assertEqual(broker.topic("t").waiting, 1)
        stays.flush()
        self.assertEqual(stays.written, [_expected(b"a")])
        self.assertIsNone(broker.topic("t").tail)

    def test_counts(self) -> None:
        """
        Followers count as delivered exactly as subscribers handed each
        message.
        """
        broker = Broker()
        _subscribe(broker, 5)
        broker.publish_now("t", b"abc")
        broker.publish_now("t", b"de")
        self.assertEqual(broker.delivered, 10)
        self.assertEqual(broker.delivered_bytes, 25)
        self.assertEqual(broker.topic("t").published, 2)

    def test_mixed_with_plain_subscribers(self) -> None:
        """
        A subscriber that cannot follow is still handed each message.
        """
        broker = Broker()
        (follower,) = _subscribe(broker)
        plain: list[bytes] = []

        @implementer(ISubscriber)
        class Plain:
            def deliver(self, message: Message) -> None:
                plain.append(message.payload)

        broker.subscribe("t", Plain())
        broker.publish_now("t", b"a")
        broker.publish_now("t", b"b")
        self.assertEqual(plain, [b"a", b"b"])
        follower.flush()
        self.assertEqual(follower.written, [_expected(b"a", b"b")])


class FlowControlTests(SynchronousTestCase):
    """
    Pausing a follower queues and drops as before, and nothing is written
    twice or out of order.
    """

    def test_pause_while_following(self) -> None:
        """
        Paused before its write, a follower is handed what waited in the
        log; later messages are queued, and come after it on resume.
        """
        broker = Broker()
        (follower,) = _subscribe(broker)
        broker.publish_now("t", b"a")
        broker.publish_now("t", b"b")
        follower.subscription.pause()
        self.assertFalse(follower.subscription.following)
        broker.publish_now("t", b"c")
        self.assertEqual(follower.subscription.buffered, 1)
        follower.subscription.resume()
        broker.publish_now("t", b"d")
        follower.flush()
        self.assertEqual(follower.written, [_expected(b"a", b"b", b"c", b"d")])

    def test_drops_while_paused(self) -> None:
        """
        Past the buffer's limit a paused follower's messages are dropped
        and counted, for it alone.
        """
        broker = Broker(max_buffered_messages=2)
        slow, fast = _subscribe(broker, 2)
        broker.publish_now("t", b"a")
        slow.subscription.pause()
        for payload in (b"b", b"c", b"d"):
            broker.publish_now("t", payload)
        self.assertEqual(slow.subscription.dropped, 1)
        self.assertEqual(broker.dropped, 1)
        slow.subscription.resume()
        slow.flush()
        fast.flush()
        self.assertEqual(slow.written, [_expected(b"a", b"b", b"c")])
        self.assertEqual(fast.written, [_expected(b"a", b"b", b"c", b"d")])
        self.assertEqual(broker.delivered, 7)

    def test_message_another_way_keeps_order(self) -> None:
        """
        A message that reaches a follower another way (handed with the
        subscribers of a pattern that matches its topic too) comes after
        what waited in the log.
        """
        broker = Broker()
        (follower,) = _subscribe(broker)
        broker.publish_now("t", b"a")
        broker.subscribe_pattern(parse_pattern("*"), Follower())
        broker.publish_now("t", b"b")
        self.assertFalse(follower.subscription.following)
        follower.flush()
        self.assertEqual(follower.written, [_expected(b"a", b"b")])
