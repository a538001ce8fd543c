"""
Tests for memmq.server.combine: when the Combiner flushes waiting
subscribers, driven by a fake clock; and what a CombinedSubscriber writes
at its flush (what was delivered to it, then its topic's log).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from memmq.broker import Broker, Message
from memmq.interfaces import IFollower
from memmq.patterns import parse_pattern
from memmq.server.combine import CombinedSubscriber, Combiner

WINDOW = 0.001


class _TurnClock(Clock):
    """
    A Clock whose advance() is one reactor turn.  Clock.advance also runs
    the calls scheduled by the calls it runs, so callLater(0) from a
    callLater(0) would run in the same advance; the reactor's
    runUntilCurrent leaves them for the next turn, and so does this.
    """

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        self._sortCalls()
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            # A call run before may have cancelled this one.
            if call in self.calls:
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


class _Subscriber:
    """
    A Flushable that records, in a log shared with others, when it was
    flushed; its flush can take C{takes} seconds of the fake clock, as
    writing to many sockets takes real time.
    """

    def __init__(self, name: str, log: list[tuple[str, float]], clock: _TurnClock, takes: float = 0.0) -> None:
        self.name = name
        self._log = log
        self._clock = clock
        self._takes = takes

    def flush(self) -> None:
        self._log.append((self.name, self._clock.seconds()))
        # Clock.advance cannot be called from a call it is running: move
        # the time by hand, as a long flush would.
        self._clock.rightNow += self._takes


class CombinerTests(SynchronousTestCase):
    """
    L{Combiner} flushes at the second reactor turn when idle, at most once
    per window measured from the end of the previous flush.
    """

    def setUp(self) -> None:
        self.clock = _TurnClock()
        self.log: list[tuple[str, float]] = []
        self.combiner = Combiner(self.clock, window=WINDOW)

    def subscriber(self, name: str, takes: float = 0.0) -> _Subscriber:
        return _Subscriber(name, self.log, self.clock, takes)

    def flushed(self) -> list[str]:
        return [name for name, _ in self.log]

    def flush_idle(self, subscriber: _Subscriber) -> None:
        """
        Have C{subscriber} flushed the idle way: two reactor turns.
        """
        self.combiner.want_flush(subscriber)
        self.clock.advance(0)
        self.clock.advance(0)

    def test_idle_flush_two_turns_later(self) -> None:
        """
        An idle combiner flushes a subscriber that asks in the second reactor
        turn after, not in the first and not at once.
        """
        self.combiner.want_flush(self.subscriber("a"))
        self.assertEqual(self.flushed(), [])
        self.clock.advance(0)
        self.assertEqual(self.flushed(), [])
        self.clock.advance(0)
        self.assertEqual(self.log, [("a", 0.0)])
        self.clock.advance(1)
        self.assertEqual(self.flushed(), ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_same_turn_flushed_together_in_order(self) -> None:
        """
        Subscribers asking in the same turn are flushed in the same flush,
        each once, in the order they asked.
        """
        for name in ("c", "a", "b"):
            self.combiner.want_flush(self.subscriber(name))
        self.clock.advance(0)
        self.assertEqual(self.flushed(), [])
        self.clock.advance(0)
        self.assertEqual(self.log, [("c", 0.0), ("a", 0.0), ("b", 0.0)])
        self.clock.advance(1)
        self.assertEqual(self.flushed(), ["c", "a", "b"])

    def test_window_delays_next_flush(self) -> None:
        """
        A subscriber asking right after a flush is flushed one window after
        it, not two turns later: not at +0.0009, and by +0.001.
        """
        self.flush_idle(self.subscriber("first"))
        self.combiner.want_flush(self.subscriber("second"))
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.flushed(), ["first"])
        self.clock.advance(0.0009)
        self.assertEqual(self.flushed(), ["first"])
        self.clock.advance(0.0001)
        self.assertEqual(self.flushed(), ["first", "second"])

    def test_window_counts_from_end_of_flush(self) -> None:
        """
        The window starts when the previous flush has finished writing, not
        when it started: after a flush from 0 to 0.0005, a subscriber
        asking at 0.0005 is not flushed at 0.0014 (a window from the start
        of the flush would have been over at 0.001) but is by 0.0015.
        """
        self.flush_idle(self.subscriber("slow", takes=0.0005))
        self.assertEqual(self.log, [("slow", 0.0)])
        self.assertEqual(self.clock.seconds(), 0.0005)
        self.combiner.want_flush(self.subscriber("next"))
        self.clock.advance(0.0009)
        self.assertEqual(self.flushed(), ["slow"])
        self.clock.advance(0.0001)
        self.assertEqual(self.flushed(), ["slow", "next"])

    def test_window_gathers_what_comes_during_it(self) -> None:
        """
        Subscribers asking at different times within the window are all
        flushed together, once, when it ends.
        """
        self.flush_idle(self.subscriber("first"))
        self.combiner.want_flush(self.subscriber("a"))
        self.clock.advance(0.0004)
        self.combiner.want_flush(self.subscriber("b"))
        self.clock.advance(0.0004)
        self.assertEqual(self.flushed(), ["first"])
        self.clock.advance(0.0002)
        self.assertEqual(self.flushed(), ["first", "a", "b"])
        self.assertEqual({t for name, t in self.log if name in ("a", "b")}, {self.clock.seconds()})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_after_window_two_turns_again(self) -> None:
        """
        Once the window has passed, a subscriber asking is flushed two
        reactor turns later again: not at once and not a window later.
        """
        self.flush_idle(self.subscriber("first"))
        self.clock.advance(0.002)
        self.combiner.want_flush(self.subscriber("later"))
        self.assertEqual(self.flushed(), ["first"])
        self.clock.advance(0)
        self.assertEqual(self.flushed(), ["first"])
        self.clock.advance(0)
        self.assertEqual(self.log, [("first", 0.0), ("later", 0.002)])

    def test_stop_flushes_at_once(self) -> None:
        """
        stop() flushes what waits at once, whether the flush was two turns
        or a window away, and leaves no delayed call behind.
        """
        for turns in (0, 1):
            with self.subTest(turns=turns):
                self.clock.advance(1)
                del self.log[:]
                self.combiner.want_flush(self.subscriber("a"))
                self.combiner.want_flush(self.subscriber("b"))
                for _ in range(turns):
                    self.clock.advance(0)
                self.combiner.stop()
                self.assertEqual(self.flushed(), ["a", "b"])
                self.assertEqual(self.clock.getDelayedCalls(), [])

        del self.log[:]
        self.combiner.want_flush(self.subscriber("after stop"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.combiner.flush()
        self.assertEqual(self.flushed(), ["after stop"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_asked_during_flush(self) -> None:
        """
        A subscriber asking while a flush is under way is flushed a window
        after that flush ends, not two turns later.
        """
        combiner = self.combiner
        log = self.log

        class Reentrant(_Subscriber):
            def flush(self) -> None:
                super().flush()
                combiner.want_flush(_Subscriber("again", log, self._clock))

        self.clock.advance(1)
        self.combiner.want_flush(Reentrant("first", log, self.clock, takes=0.0005))
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.flushed(), ["first"])
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.flushed(), ["first"])
        self.clock.advance(WINDOW)
        self.assertEqual(self.log, [("first", 1.0), ("again", 1.0 + 0.0005 + WINDOW)])

    def test_stop_idle(self) -> None:
        """
        stop() with nothing waiting flushes nothing and schedules nothing.
        """
        self.combiner.stop()
        self.assertEqual(self.log, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush_cancels_scheduled_call(self) -> None:
        """
        flush() called directly flushes the waiting subscribers and cancels
        the scheduled flush, which then never runs.
        """
        self.combiner.want_flush(self.subscriber("a"))
        self.clock.advance(0)
        self.combiner.want_flush(self.subscriber("b"))
        self.combiner.flush()
        self.assertEqual(self.flushed(), ["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(self.flushed(), ["a", "b"])

        self.combiner.want_flush(self.subscriber("c"))
        self.combiner.flush()
        self.assertEqual(self.flushed(), ["a", "b", "c"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SliceTests(SynchronousTestCase):
    """
    A flush of many subscribers goes a slice per reactor turn, so that
    publishers are read between slices.
    """

    def test_one_slice_per_turn(self) -> None:
        """
        With slices of 2, five waiting subscribers are flushed over three
        turns, in the order they asked; one that asks meanwhile joins the
        end of the same flush.
        """
        clock = _TurnClock()
        log: list[tuple[str, float]] = []
        combiner = Combiner(clock, window=WINDOW, slice=2)
        for name in "abcde":
            combiner.want_flush(_Subscriber(name, log, clock))
        clock.advance(0)
        clock.advance(0)
        self.assertEqual([name for name, _ in log], ["a", "b"])
        combiner.want_flush(_Subscriber("f", log, clock))
        clock.advance(0)
        self.assertEqual([name for name, _ in log], ["a", "b", "c", "d"])
        clock.advance(0)
        self.assertEqual([name for name, _ in log], ["a", "b", "c", "d", "e", "f"])
        clock.advance(1)
        self.assertEqual(len(log), 6)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_flushes_every_slice(self) -> None:
        """
        stop() flushes every waiting subscriber at once, whatever the slice.
        """
        clock = _TurnClock()
        log: list[tuple[str, float]] = []
        combiner = Combiner(clock, window=WINDOW, slice=2)
        for name in "abcde":
            combiner.want_flush(_Subscriber(name, log, clock))
        combiner.stop()
        self.assertEqual([name for name, _ in log], list("abcde"))
        self.assertEqual(clock.getDelayedCalls(), [])


def _angled(message: Message) -> bytes:
    return b"<" + message.payload + b">"


class _Counting(Combiner):
    """
    A Combiner that counts how often it is asked for a flush.
    """

    asked = 0

    def want_flush(self, subscriber) -> None:
        self.asked += 1
        super().want_flush(subscriber)


class _Written(CombinedSubscriber):
    """
    A CombinedSubscriber that writes to a list, with its combiner on a
    fake clock.
    """

    framing = staticmethod(_angled)

    def __init__(self, combiner: Combiner) -> None:
        self.combiner = combiner
        self.writes: list[bytes] = []

    def write_combined(self, data: bytes) -> None:
        self.writes.append(data)


class CombinedSubscriberTests(SynchronousTestCase):
    """
    A subscriber written to through the combiner follows its topic's log,
    and writes at each flush, once, everything since the last.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.combiner = _Counting(self.clock, window=0)
        self.broker = Broker()

    def subscribe(self, topic: str = "t") -> _Written:
        subscriber = _Written(self.combiner)
        subscriber.subscription = self.broker.subscribe(topic, subscriber)
        return subscriber

    def test_is_a_follower(self) -> None:
        """
        It is what the broker lets follow a topic's log.
        """
        self.assertTrue(verifyObject(IFollower, _Written(self.combiner)))

    def test_one_write_per_flush(self) -> None:
        """
        Messages published before a flush are written in one write, in
        order; the combiner was asked once.
        """
        subscriber = self.subscribe()
        for data in (b"a", b"b", b"c"):
            self.broker.publish_now("t", data)
        self.assertTrue(subscriber.subscription.following)
        self.assertEqual(self.combiner.asked, 1)
        self.combiner.flush()
        self.assertEqual(subscriber.writes, [b"<a><b><c>"])
        self.broker.publish_now("t", b"d")
        self.combiner.flush()
        self.assertEqual(subscriber.writes, [b"<a><b><c>", b"<d>"])

    def test_same_bytes_for_everyone(self) -> None:
        """
        Subscribers flushed together write the same bytes object.
        """
        subscribers = [self.subscribe() for _ in range(3)]
        self.broker.publish_now("t", b"a")
        self.broker.publish_now("t", b"b")
        self.combiner.flush()
        (first,) = subscribers[0].writes
        for other in subscribers[1:]:
            self.assertIs(other.writes[0], first)

    def test_delivered_then_logged(self) -> None:
        """
        What was delivered (the log caught up when a pattern also took the
        topic) is written before what the log holds, in publish order.
        """
        subscriber = self.subscribe()
        self.broker.publish_now("t", b"a")
        pattern = self.broker.subscribe_pattern(parse_pattern("*"), _Written(self.combiner))
        self.broker.publish_now("t", b"b")
        self.broker.unsubscribe(pattern)
        self.broker.publish_now("t", b"c")
        self.assertTrue(subscriber.subscription.following)
        self.combiner.flush()
        self.assertEqual(subscriber.writes, [b"<a><b><c>"])

    def test_nothing_to_write(self) -> None:
        """
        A flush with nothing waiting writes nothing (an empty write could
        end a chunked response).
        """
        subscriber = self.subscribe()
        subscriber.flush()
        self.assertEqual(subscriber.writes, [])

    def test_flush_now(self) -> None:
        """
        flush_now writes what waits at once (the connection is closing),
        and nothing when nothing waits.
        """
        subscriber = self.subscribe()
        subscriber.flush_now()
        self.broker.publish_now("t", b"a")
        subscriber.flush_now()
        self.assertEqual(subscriber.writes, [b"<a>"])
        self.combiner.flush()
        self.assertEqual(subscriber.writes, [b"<a>"])

    def test_gone(self) -> None:
        """
        Once unsubscribed and its frames forgotten, nothing is written at
        the flush it had asked for, and the topic keeps no log for it.
        """
        subscriber = self.subscribe()
        other = self.subscribe()
        self.broker.publish_now("t", b"a")
        self.broker.unsubscribe(subscriber.subscription)
        subscriber.forget_frames()
        self.combiner.flush()
        self.assertEqual(subscriber.writes, [])
        self.assertEqual(other.writes, [b"<a>"])
        self.assertIsNone(self.broker.topic("t").tail)
