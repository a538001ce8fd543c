"""
Tests for memmq.broker: topics, delivery order, bounded per-subscriber
buffers and the shared per-message encodings.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from memmq.broker import MAX_TOPIC_BYTES, Broker, Message, Subscription, check_topic
from memmq.errors import InvalidTopic
from memmq.interfaces import IBroker, ISubscriber, ISubscription
from tests.support import Recorder


@implementer(ISubscriber)
class PausingRecorder(Recorder):
    """
    A subscriber whose connection fills up after C{room} more messages: it
    pauses its own subscription from inside C{deliver}.
    """

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.subscription: Subscription | None = None

    def deliver(self, message: Message) -> None:
        super().deliver(message)
        self.room -= 1
        if self.room <= 0 and self.subscription is not None:
            self.subscription.pause()


def _payloads(count: int) -> list[bytes]:
    return [b"m%d" % (i,) for i in range(count)]


class InterfaceTests(SynchronousTestCase):
    """
    The broker and its subscriptions provide the interfaces front-ends use.
    """

    def test_broker_provides_ibroker(self) -> None:
        """
        L{Broker} provides L{IBroker}.
        """
        self.assertTrue(verifyObject(IBroker, Broker()))

    def test_subscription_provides_isubscription(self) -> None:
        """
        What C{subscribe} returns provides L{ISubscription}, with the topic
        it was made for and nothing dropped yet.
        """
        subscription = Broker().subscribe("t", Recorder())
        self.assertTrue(verifyObject(ISubscription, subscription))
        self.assertEqual(subscription.topic, "t")
        self.assertEqual(subscription.dropped, 0)

    def test_negative_limits_refused(self) -> None:
        """
        Negative buffer limits are refused when the broker is made.
        """
        self.assertRaises(ValueError, Broker, max_buffered_messages=-1)
        self.assertRaises(ValueError, Broker, max_buffered_bytes=-1)


class PublishTests(SynchronousTestCase):
    """
    Publishing hands every message to every current subscriber, in order.
    """

    def setUp(self) -> None:
        self.broker = Broker()

    def test_publish_order(self) -> None:
        """
        A subscriber gets the messages of its topic in publish order.
        """
        recorder = Recorder()
        self.broker.subscribe("t", recorder)
        for payload in _payloads(10):
            self.broker.publish_now("t", payload)
        self.assertEqual(recorder.payloads, _payloads(10))

    def test_every_subscriber_gets_every_message(self) -> None:
        """
        Each of several subscribers gets every message once, in order, and
        C{publish_now} says how many were handed it.
        """
        recorders = [Recorder() for _ in range(3)]
        for recorder in recorders:
            self.broker.subscribe("t", recorder)
        counts = [self.broker.publish_now("t", p) for p in _payloads(5)]
        self.assertEqual(counts, [3] * 5)
        for recorder in recorders:
            self.assertEqual(recorder.payloads, _payloads(5))

    def test_other_topics_not_delivered(self) -> None:
        """
        A subscriber gets only the messages of the topic it subscribed to.
        """
        a, b = Recorder(), Recorder()
        self.broker.subscribe("a", a)
        self.broker.subscribe("b", b)
        self.broker.publish_now("a", b"for a")
        self.broker.publish_now("b", b"for b")
        self.assertEqual(a.payloads, [b"for a"])
        self.assertEqual(b.payloads, [b"for b"])

    def test_no_subscribers(self) -> None:
        """
        Publishing to a topic nobody subscribes to succeeds, reaches 0
        subscribers and does not create the topic.
        """
        self.assertEqual(self.broker.publish_now("nobody", b"x"), 0)
        self.assertIsNone(self.broker.topic("nobody"))
        self.assertEqual(self.broker.topics, 0)
        self.assertEqual(self.broker.published, 1)

    def test_publish_fires_with_none(self) -> None:
        """
        C{publish} returns a Deferred that has already fired with L{None},
        after the message has been delivered.
        """
        recorder = Recorder()
        self.broker.subscribe("t", recorder)
        d = self.broker.publish("t", b"payload")
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(recorder.payloads, [b"payload"])
        self.assertIsNone(self.successResultOf(self.broker.publish("nobody", b"x")))

    def test_publish_now_bad_topic(self) -> None:
        """
        C{publish_now} to a bad topic nobody subscribes to raises
        L{InvalidTopic}.
        """
        self.assertRaises(InvalidTopic, self.broker.publish_now, "", b"x")
        self.assertRaises(InvalidTopic, self.broker.publish_now, "a\x00b", b"x")
        self.assertRaises(InvalidTopic, self.broker.publish_now, "x" * 256, b"x")

    def test_publish_bad_topic_fails_deferred(self) -> None:
        """
        C{publish} to a bad topic does not raise: the Deferred it returns
        fails with L{InvalidTopic}, as L{IBroker} says.
        """
        for topic in ("", "a\x00b", "x" * 256):
            try:
                d = self.broker.publish(topic, b"x")
            except InvalidTopic:
                self.fail(f"publish({topic!r}) raised instead of failing its Deferred")
            self.failureResultOf(d, InvalidTopic)

    def test_topic_counters(self) -> None:
        """
        A topic counts what was published to it; the broker counts every
        publish, including those nobody received.
        """
        self.broker.subscribe("t", Recorder())
        for payload in _payloads(4):
            self.broker.publish_now("t", payload)
        self.broker.publish_now("other", b"x")
        self.assertEqual(self.broker.topic("t").published, 4)
        self.assertEqual(self.broker.published, 5)


class TopicCheckTests(SynchronousTestCase):
    """
    Topics are non-empty, at most 255 UTF-8 bytes, without control
    characters; C{subscribe} refuses others.
    """

    bad: ClassVar[list[str]] = [
        "",
        "x" * (MAX_TOPIC_BYTES + 1),
        "\u20ac" * 100,  # 100 characters, 300 UTF-8 bytes
        "a\x00b",
        "a\x1fb",
        "a\x7fb",
        "a\x85b",
        "line\n",
    ]

    def test_subscribe_refuses_bad_topics(self) -> None:
        """
        Subscribing to a bad topic raises L{InvalidTopic} and creates
        nothing.
        """
        broker = Broker()
        for topic in self.bad:
            with self.subTest(topic=topic):
                self.assertRaises(InvalidTopic, broker.subscribe, topic, Recorder())
        self.assertEqual(broker.topics, 0)
        self.assertEqual(broker.subscribers, 0)

    def test_check_topic_refuses_bad_topics(self) -> None:
        """
        L{check_topic} raises L{InvalidTopic} with a one-line reason.
        """
        for topic in self.bad:
            with self.subTest(topic=topic):
                error = self.assertRaises(InvalidTopic, check_topic, topic)
                self.assertTrue(str(error))
                self.assertNotIn("\n", str(error))

    def test_good_topics(self) -> None:
        """
        Topics up to 255 UTF-8 bytes, non-ASCII ones included, are accepted
        as they are.
        """
        for topic in ("t", "x" * MAX_TOPIC_BYTES, "\u20ac" * 85, "a/b c.d-e_f", "caf\u00e9"):
            with self.subTest(topic=topic):
                self.assertEqual(check_topic(topic), topic)
                recorder = Recorder()
                Broker().subscribe(topic, recorder)


class FlowControlTests(SynchronousTestCase):
    """
    A paused subscription buffers up to the broker's limits and drops for
    that subscriber alone past them; resuming delivers the buffer in order.
    """

    def test_pause_then_resume(self) -> None:
        """
        Messages published while paused arrive on resume, in order, then
        delivery goes on as before.
        """
        broker = Broker()
        recorder = Recorder()
        subscription = broker.subscribe("t", recorder)
        broker.publish_now("t", b"before")
        subscription.pause()
        for payload in _payloads(5):
            broker.publish_now("t", payload)
        self.assertEqual(recorder.payloads, [b"before"])
        self.assertEqual(subscription.buffered, 5)
        self.assertEqual(subscription.buffered_bytes, sum(map(len, _payloads(5))))
        subscription.resume()
        self.assertEqual(recorder.payloads, [b"before", *_payloads(5)])
        self.assertEqual(subscription.buffered, 0)
        self.assertEqual(subscription.buffered_bytes, 0)
        broker.publish_now("t", b"after")
        self.assertEqual(recorder.payloads, [b"before", *_payloads(5), b"after"])
        self.assertEqual(subscription.dropped, 0)

    def test_drop_past_message_limit(self) -> None:
        """
        With room for 3 messages, a paused subscriber gets the first 3 of 5
        on resume and has 2 dropped, counted for it and its topic; an
        unpaused subscriber of the same topic gets all 5.
        """
        broker = Broker(max_buffered_messages=3)
        slow, fast = Recorder(), Recorder()
        slow_subscription = broker.subscribe("t", slow)
        fast_subscription = broker.subscribe("t", fast)
        slow_subscription.pause()
        for payload in _payloads(5):
            broker.publish_now("t", payload)
        self.assertEqual(slow_subscription.buffered, 3)
        slow_subscription.resume()
        self.assertEqual(slow.payloads, _payloads(3))
        self.assertEqual(slow_subscription.dropped, 2)
        self.assertEqual(broker.topic("t").dropped, 2)
        self.assertEqual(fast.payloads, _payloads(5))
        self.assertEqual(fast_subscription.dropped, 0)

    def test_drop_past_byte_limit(self) -> None:
        """
        With room for 10 payload bytes, only two 4-byte messages are
        buffered; the rest are dropped.
        """
        broker = Broker(max_buffered_bytes=10)
        recorder = Recorder()
        subscription = broker.subscribe("t", recorder)
        subscription.pause()
        for payload in (b"aaaa", b"bbbb", b"cccc", b"dddd"):
            broker.publish_now("t", payload)
        self.assertEqual(subscription.buffered, 2)
        self.assertEqual(subscription.buffered_bytes, 8)
        self.assertEqual(subscription.dropped, 2)
        subscription.resume()
        self.assertEqual(recorder.payloads, [b"aaaa", b"bbbb"])

    def test_pause_during_resume(self) -> None:
        """
        A subscriber that pauses from inside C{deliver} while its buffer is
        being drained gets nothing more; the rest stays buffered, in order,
        for the next resume.
        """
        broker = Broker()
        recorder = PausingRecorder(room=2)
        subscription = recorder.subscription = broker.subscribe("t", recorder)
        subscription.pause()
        for payload in _payloads(5):
            broker.publish_now("t", payload)
        subscription.resume()
        self.assertEqual(recorder.payloads, _payloads(2))
        self.assertEqual(subscription.buffered, 3)
        broker.publish_now("t", b"later")
        self.assertEqual(recorder.payloads, _payloads(2))
        self.assertEqual(subscription.buffered, 4)
        recorder.room = 100
        subscription.resume()
        self.assertEqual(recorder.payloads, [*_payloads(5), b"later"])
        self.assertEqual(subscription.dropped, 0)


class UnsubscribeTests(SynchronousTestCase):
    """
    Unsubscribing ends delivery at once and frees what it held.
    """

    def test_stops_delivery(self) -> None:
        """
        After C{unsubscribe}, nothing more is delivered through the
        subscription; others on the topic go on receiving.
        """
        broker = Broker()
        gone, staying = Recorder(), Recorder()
        subscription = broker.subscribe("t", gone)
        broker.subscribe("t", staying)
        broker.publish_now("t", b"1")
        broker.unsubscribe(subscription)
        self.assertFalse(subscription.active)
        self.assertEqual(broker.publish_now("t", b"2"), 1)
        self.assertEqual(gone.payloads, [b"1"])
        self.assertEqual(staying.payloads, [b"1", b"2"])

    def test_idempotent(self) -> None:
        """
        Unsubscribing twice is harmless and leaves the other subscriptions
        alone.
        """
        broker = Broker()
        subscription = broker.subscribe("t", Recorder())
        other = broker.subscribe("t", Recorder())
        broker.unsubscribe(subscription)
        broker.unsubscribe(subscription)
        self.assertEqual(broker.subscribers, 1)
        self.assertEqual(broker.topic("t").subscriptions, (other,))

    def test_clears_buffer(self) -> None:
        """
        Unsubscribing a paused subscription drops its buffer; resuming it
        afterwards delivers nothing.
        """
        broker = Broker()
        recorder = Recorder()
        subscription = broker.subscribe("t", recorder)
        broker.subscribe("t", Recorder())
        subscription.pause()
        for payload in _payloads(3):
            broker.publish_now("t", payload)
        broker.unsubscribe(subscription)
        self.assertEqual(subscription.buffered, 0)
        self.assertEqual(subscription.buffered_bytes, 0)
        subscription.resume()
        self.assertEqual(recorder.payloads, [])

    def test_last_unsubscribe_frees_topic(self) -> None:
        """
        The last subscription leaving frees its topic; another topic stays.
        """
        broker = Broker()
        first = broker.subscribe("t", Recorder())
        second = broker.subscribe("t", Recorder())
        broker.subscribe("other", Recorder())
        broker.unsubscribe(first)
        self.assertIsNotNone(broker.topic("t"))
        broker.unsubscribe(second)
        self.assertIsNone(broker.topic("t"))
        self.assertEqual(broker.topics, 1)
        self.assertIsNotNone(broker.topic("other"))

    def test_all_topics_freed(self) -> None:
        """
        Once every subscription has left, the broker holds no topic.
        """
        broker = Broker()
        subscriptions = [broker.subscribe(name, Recorder()) for name in ("a", "b", "a")]
        for subscription in subscriptions:
            broker.unsubscribe(subscription)
        self.assertEqual(broker.topics, 0)
        self.assertEqual(broker.subscribers, 0)
        self.assertIsNone(broker.topic("a"))
        self.assertIsNone(broker.topic("b"))

    def test_resubscribe_after_free(self) -> None:
        """
        A topic freed and subscribed to again delivers to the new
        subscriber; unsubscribing the old subscription again does not free
        the new topic.
        """
        broker = Broker()
        old = broker.subscribe("t", Recorder())
        broker.unsubscribe(old)
        recorder = Recorder()
        broker.subscribe("t", recorder)
        broker.unsubscribe(old)
        self.assertEqual(broker.publish_now("t", b"x"), 1)
        self.assertEqual(recorder.payloads, [b"x"])


class CountTests(SynchronousTestCase):
    """
    The broker counts its topics and subscriptions.
    """

    def test_counts(self) -> None:
        """
        C{topics} counts topics with subscribers, C{subscribers} counts
        subscriptions over all topics, and a topic lists its own in the
        order they were made.
        """
        broker = Broker()
        self.assertEqual((broker.topics, broker.subscribers), (0, 0))
        a1 = broker.subscribe("a", Recorder())
        a2 = broker.subscribe("a", Recorder())
        b1 = broker.subscribe("b", Recorder())
        self.assertEqual((broker.topics, broker.subscribers), (2, 3))
        self.assertEqual(broker.topic("a").subscriptions, (a1, a2))
        self.assertEqual(broker.topic("b").subscriptions, (b1,))
        broker.unsubscribe(a1)
        self.assertEqual((broker.topics, broker.subscribers), (2, 2))
        self.assertEqual(broker.topic("a").subscriptions, (a2,))


class MessageTests(SynchronousTestCase):
    """
    A message keeps each transport's framing of it.
    """

    def test_framed_once(self) -> None:
        """
        A framing is called once per message however many times it is
        asked for.
        """
        calls: list[bytes] = []

        def frame(message: Message) -> bytes:
            calls.append(message.payload)
            return b"<" + message.payload + b">"

        message = Message("t", b"abc")
        for _ in range(3):
            self.assertEqual(message.framed(frame), b"<abc>")
        self.assertEqual(calls, [b"abc"])
        self.assertEqual(Message("t", b"de").framed(frame), b"<de>")
        self.assertEqual(calls, [b"abc", b"de"])

    def test_encoders_cached_apart(self) -> None:
        """
        Different framings of one message are each called once and keep
        their own results.
        """
        calls: list[str] = []

        def upper(message: Message) -> bytes:
            calls.append("upper")
            return message.payload.upper()

        def double(message: Message) -> bytes:
            calls.append("double")
            return message.payload * 2

        message = Message("t", b"ab")
        for _ in range(2):
            self.assertEqual(message.framed(upper), b"AB")
            self.assertEqual(message.framed(double), b"abab")
        self.assertEqual(sorted(calls), ["double", "upper"])

    def test_shared_between_subscribers(self) -> None:
        """
        Every subscriber of a publish is handed the same message, so a
        framing is computed once for all of them.
        """
        calls: list[bytes] = []

        def frame(message: Message) -> bytes:
            calls.append(message.payload)
            return message.payload

        @implementer(ISubscriber)
        class Encoding:
            def __init__(self) -> None:
                self.out: list[bytes] = []

            def deliver(self, message: Message) -> None:
                self.out.append(message.framed(frame))

        broker = Broker()
        subscribers = [Encoding() for _ in range(4)]
        for subscriber in subscribers:
            broker.subscribe("t", subscriber)
        broker.publish_now("t", b"one")
        self.assertEqual(calls, [b"one"])
        self.assertEqual([s.out for s in subscribers], [[b"one"]] * 4)

    def test_size(self) -> None:
        """
        A message knows its topic and payload size.
        """
        message = Message("t", b"12345")
        self.assertEqual((message.topic, message.payload, message.size), ("t", b"12345", 5))
