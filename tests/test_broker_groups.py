"""
Tests for memmq.broker's pattern subscriptions and queue groups (README,
"Patterns and queue groups"), in memory: the broker is pure.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from memmq.broker import Broker
from memmq.errors import InvalidTopic
from memmq.patterns import parse_pattern


class _Sink:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self.received: list[tuple[str, bytes]] = []
        self.stamps: list[int | None] = []

    def deliver(self, message) -> None:
        self.received.append((message.topic, message.payload))
        self.stamps.append(message.stamp)


class PatternTests(SynchronousTestCase):
    """
    Pattern subscriptions beside exact ones.
    """

    def test_pattern_and_exact(self) -> None:
        """
        A message reaches the topic's subscribers and every matching
        pattern's, each once; a non-matching pattern gets nothing.
        """
        broker = Broker()
        exact, star, rest, other = _Sink(), _Sink(), _Sink(), _Sink()
        broker.subscribe("orders.new", exact)
        broker.subscribe_pattern(parse_pattern("orders.*"), star)
        broker.subscribe_pattern(parse_pattern("orders.>"), rest)
        broker.subscribe_pattern(parse_pattern("users.*"), other)
        self.assertEqual(broker.publish_now("orders.new", b"1"), 3)
        broker.publish_now("orders.new.eu", b"2")
        broker.publish_now("orders", b"3")
        self.assertEqual(exact.received, [("orders.new", b"1")])
        self.assertEqual(star.received, [("orders.new", b"1")])
        self.assertEqual(rest.received, [("orders.new", b"1"), ("orders.new.eu", b"2")])
        self.assertEqual(other.received, [])

    def test_literal_topics_with_wildcard_characters(self) -> None:
        """
        A topic subscription to C{a.*} is the one topic C{a.*}, as in
        asim/mq.
        """
        broker = Broker()
        sink = _Sink()
        broker.subscribe("a.*", sink)
        broker.publish_now("a.b", b"no")
        broker.publish_now("a.*", b"yes")
        self.assertEqual(sink.received, [("a.*", b"yes")])

    def test_unsubscribe_frees(self) -> None:
        """
        Unsubscribing the last pattern subscription leaves the broker as
        it was: no interest reported, the fast path again.
        """
        broker = Broker()
        sink = _Sink()
        sub = broker.subscribe_pattern(parse_pattern("a.>"), sink)
        self.assertEqual(broker.subscribers, 1)
        self.assertEqual(broker.stats().interest.patterns[0].subscribers, 1)
        broker.unsubscribe(sub)
        broker.unsubscribe(sub)
        self.assertEqual(broker.subscribers, 0)
        self.assertIsNone(broker.stats().interest)
        broker.publish_now("a.b", b"x")
        self.assertEqual(sink.received, [])

    def test_paused_pattern_subscriber_buffers_then_drops(self) -> None:
        """
        A paused pattern subscriber is buffered up to the limits and drops
        past them, counted in the totals.
        """
        broker = Broker(max_buffered_messages=2)
        sink = _Sink()
        sub = broker.subscribe_pattern(parse_pattern("a.*"), sink)
        sub.pause()
        for i in range(4):
            broker.publish_now("a.b", b"%d" % i)
        self.assertEqual(sub.dropped, 2)
        self.assertEqual(broker.dropped, 2)
        sub.resume()
        self.assertEqual([p for _, p in sink.received], [b"0", b"1"])


class GroupTests(SynchronousTestCase):
    """
    Queue groups: each message to exactly one member.
    """

    def test_exactly_one_balanced(self) -> None:
        """
        Over 10,000 messages every message goes to exactly one member of
        the group, the counts balanced within 1, each member's in order;
        subscribers outside the group get every message.
        """
        broker = Broker()
        members = [_Sink(str(i)) for i in range(3)]
        for i, sink in enumerate(members):
            if i == 0:
                broker.subscribe("jobs", sink, group="workers")
            else:
                broker.subscribe_pattern(parse_pattern(">" if i == 1 else "*"), sink, group="workers")
        watcher = _Sink()
        broker.subscribe("jobs", watcher)
        for n in range(10_000):
            broker.publish_now("jobs", b"%d" % n)
        counts = [len(m.received) for m in members]
        self.assertEqual(sum(counts), 10_000)
        self.assertLessEqual(max(counts) - min(counts), 1)
        for member in members:
            numbers = [int(p) for _, p in member.received]
            self.assertEqual(numbers, sorted(numbers))
        self.assertEqual(len(watcher.received), 10_000)

    def test_full_member_skipped(self) -> None:
        """
        A member whose buffer is full is skipped; only when every member is
        full is the message dropped, and counted for the group.
        """
        broker = Broker(max_buffered_messages=1)
        fast, slow = _Sink(), _Sink()
        broker.subscribe("t", fast, group="g")
        slow_sub = broker.subscribe("t", slow, group="g")
        slow_sub.pause()
        for n in range(10):
            broker.publish_now("t", b"%d" % n)
        self.assertEqual(len(fast.received) + slow_sub.buffered, 10)
        self.assertEqual(slow_sub.buffered, 1)
        self.assertEqual(slow_sub.dropped, 0)
        # Now both full.
        fast_sub = [s for s in broker._sublist.match("t").groups[0][1] if s.subscriber is fast][0]
        fast_sub.pause()
        broker.publish_now("t", b"a")
        broker.publish_now("t", b"b")
        self.assertEqual(fast_sub.buffered, 1)
        self.assertEqual(broker.stats().interest.groups[0].dropped, 1)
        self.assertEqual(broker.dropped, 1)

    def test_member_leaving_mid_stream(self) -> None:
        """
        A member that leaves mid-stream takes nothing more; the others
        share every later message.
        """
        broker = Broker()
        a, b = _Sink(), _Sink()
        sub_a = broker.subscribe("t", a, group="g")
        broker.subscribe("t", b, group="g")
        for n in range(10):
            broker.publish_now("t", b"%d" % n)
        broker.unsubscribe(sub_a)
        for n in range(10, 20):
            broker.publish_now("t", b"%d" % n)
        self.assertEqual(len(a.received), 5)
        self.assertEqual(len(b.received), 15)
        self.assertEqual([int(p) for _, p in b.received][-10:], list(range(10, 20)))
        self.assertEqual(broker.stats().interest.groups[0].members, 1)

    def test_invalid_group(self) -> None:
        """
        An empty group name, or one with control characters, is refused.
        """
        broker = Broker()
        self.assertRaises(InvalidTopic, broker.subscribe, "t", _Sink(), "")
        self.assertRaises(InvalidTopic, broker.subscribe_pattern, parse_pattern("a.*"), _Sink(), "a\nb")

    def test_publish_local(self) -> None:
        """
        publish_local reaches the subscribers outside groups alone, or one
        member of each named group alone (what a proxy's relays and a
        worker told by another use), or both; a stamp is kept.
        """
        broker = Broker()
        plain, star, g1, g2 = _Sink(), _Sink(), _Sink(), _Sink()
        broker.subscribe("a.b", plain)
        broker.subscribe_pattern(parse_pattern("a.*"), star)
        broker.subscribe("a.b", g1, group="g")
        broker.subscribe_pattern(parse_pattern("a.>"), g2, group="g")
        self.assertEqual(broker.publish_local("a.b", b"x"), 2)
        self.assertEqual(broker.publish_local("a.b", b"y", False, ("g",)), 1)
        self.assertEqual(broker.publish_local("a.b", b"z", False, ("other",)), 0)
        self.assertEqual(len(plain.received) + len(star.received), 2)
        self.assertEqual(len(g1.received) + len(g2.received), 1)
        self.assertEqual(broker.publish_local("a.b", b"w", True, ("g", "other"), 7), 3)
        self.assertEqual(broker.publish_local("a.b", b"v", True, None), 3)
        stamped = [(s.received[i][1], s.stamps[i]) for s in (plain, star, g1, g2) for i in range(len(s.stamps))]
        self.assertEqual([stamp for payload, stamp in stamped if payload == b"w"], [7, 7, 7])
