"""
Tests for memmq.backplane.broker: one process's broker among several,
joined by the in-memory backplane (memmq.backplane.memory).
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from memmq.backplane.broker import BackplaneBroker
from memmq.backplane.interface import IBackplane, IBackplaneReceiver
from memmq.backplane.memory import MemoryHub
from memmq.backplane.mesh import Route
from memmq.broker import Broker, Message
from memmq.errors import BackplaneUnavailable, InvalidTopic
from memmq.interfaces import IBroker, IBrokerStats, ISubscriber
from memmq.patterns import parse_pattern


@implementer(ISubscriber)
class _Recorder:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def deliver(self, message: Message) -> None:
        self.payloads.append(message.payload)


def _server(count: int = 2) -> tuple[MemoryHub, list[BackplaneBroker]]:
    """
    C{count} brokers joined by one started in-memory backplane.
    """
    hub = MemoryHub()
    brokers = [BackplaneBroker(Broker(), hub.member()) for _ in range(count)]
    for broker in brokers:
        broker.start()
    return hub, brokers


class InterfaceTests(SynchronousTestCase):
    """
    The wrapper and the in-memory backplane provide their interfaces.
    """

    def test_provides(self) -> None:
        """
        L{BackplaneBroker} is an L{IBroker}, L{IBrokerStats} and
        L{IBackplaneReceiver}; L{MemoryBackplane} an L{IBackplane}.
        """
        hub, (broker, _) = _server()
        self.assertTrue(verifyObject(IBroker, broker))
        self.assertTrue(verifyObject(IBrokerStats, broker))
        self.assertTrue(verifyObject(IBackplaneReceiver, broker))
        self.assertTrue(verifyObject(IBackplane, hub.members[0]))


class DeliveryTests(SynchronousTestCase):
    """
    A message published on one process reaches the subscribers of every
    process once, and only processes that follow its topic are sent it.
    """

    def test_local_and_remote(self) -> None:
        """
        A publish on A reaches A's and B's subscribers, once each, in order.
        """
        hub, (a, b) = _server()
        here, there = _Recorder(), _Recorder()
        a.subscribe("t", here)
        b.subscribe("t", there)
        for i in range(3):
            self.successResultOf(a.publish("t", b"m%d" % i))
        self.assertEqual(here.payloads, [b"m0", b"m1", b"m2"])
        self.assertEqual(there.payloads, [b"m0", b"m1", b"m2"])

    def test_received_is_not_sent_back(self) -> None:
        """
        A message from the backplane is delivered locally and not handed to
        the backplane again (three processes, each gets it once).
        """
        hub, brokers = _server(3)
        recorders = [_Recorder() for _ in brokers]
        for broker, recorder in zip(brokers, recorders, strict=True):
            broker.subscribe("t", recorder)
        self.successResultOf(brokers[1].publish("t", b"x"))
        self.assertEqual([r.payloads for r in recorders], [[b"x"]] * 3)
        self.assertEqual(len(hub.carried), 2)

    def test_no_interest_no_traffic(self) -> None:
        """
        A topic followed only on the publishing process, or by nobody,
        costs no traffic on the backplane.
        """
        hub, (a, b) = _server()
        a.subscribe("mine", _Recorder())
        self.successResultOf(a.publish("mine", b"x"))
        self.successResultOf(a.publish("nobody", b"y"))
        self.assertEqual(hub.carried, [])

    def test_invalid_topic(self) -> None:
        """
        An unacceptable topic fails the publish and goes nowhere.
        """
        hub, (a, b) = _server()
        self.failureResultOf(a.publish("", b"x"), InvalidTopic)
        self.assertEqual(hub.carried, [])


class InterestTests(SynchronousTestCase):
    """
    The backplane hears of a topic on its first local subscriber and after
    its last, never twice in a row the same way.
    """

    def test_first_and_last(self) -> None:
        """
        Two subscribers of one topic: one C{on} and, after both leave, one
        C{off}; unsubscribing twice changes nothing.
        """
        hub, (a, _) = _server()
        first = a.subscribe("t", _Recorder())
        second = a.subscribe("t", _Recorder())
        self.assertEqual(hub.members[0].calls, [("t", True, None)])
        a.unsubscribe(first)
        a.unsubscribe(first)
        self.assertEqual(hub.members[0].calls, [("t", True, None)])
        a.unsubscribe(second)
        a.unsubscribe(second)
        self.assertEqual(hub.members[0].calls, [("t", True, None), ("t", False, None)])
        self.assertEqual(a.interests, [])

    def test_after_last_leaves(self) -> None:
        """
        Once B's last subscriber of a topic leaves, A's publishes to it stay
        on A.
        """
        hub, (a, b) = _server()
        subscription = b.subscribe("t", _Recorder())
        self.successResultOf(a.publish("t", b"1"))
        b.unsubscribe(subscription)
        self.successResultOf(a.publish("t", b"2"))
        self.assertEqual([c[3] for c in hub.carried], [b"1"])


class UnhealthyTests(SynchronousTestCase):
    """
    A publish while the backplane is down fails, and reaches no one.
    """

    def test_refused(self) -> None:
        """
        Not even the local subscribers get it: the publish fails with a
        one-line L{BackplaneUnavailable}.
        """
        hub, (a, b) = _server()
        here = _Recorder()
        a.subscribe("t", here)
        hub.members[0].healthy = False
        failure = self.failureResultOf(a.publish("t", b"x"), BackplaneUnavailable)
        self.assertNotIn("\n", str(failure.value))
        self.assertEqual(here.payloads, [])


class StatsTests(SynchronousTestCase):
    """
    Each process counts what was published on it, so that the figures of
    all of them add up to the server's.
    """

    def test_published_here_only(self) -> None:
        """
        A message published on A and delivered on B counts as published on
        A only, and delivered on both.
        """
        hub, (a, b) = _server()
        a.subscribe("t", _Recorder())
        b.subscribe("t", _Recorder())
        self.successResultOf(a.publish("t", b"abc"))
        self.assertEqual((a.stats().delivery.published, b.stats().delivery.published), (1, 0))
        self.assertEqual(b.stats().delivery.published_bytes, 0)
        self.assertEqual((a.stats().delivery.delivered, b.stats().delivery.delivered), (1, 1))
        self.assertEqual([t.published for t in b.topic_stats()], [0])
        self.assertEqual([t.published for t in a.topic_stats()], [1])

    def test_topic_counts_restart(self) -> None:
        """
        A topic freed on B and subscribed to again starts its figures from
        nothing, as the local broker's do.
        """
        hub, (a, b) = _server()
        subscription = b.subscribe("t", _Recorder())
        self.successResultOf(a.publish("t", b"1"))
        b.unsubscribe(subscription)
        b.subscribe("t", _Recorder())
        self.successResultOf(b.publish("t", b"2"))
        self.assertEqual([t.published for t in b.topic_stats()], [1])


@implementer(IBackplane)
class _Routing:
    """
    A backplane that routes as the workers' mesh does: it says which local
    queue groups get each message (C{routes}, in turn) and records what it
    is handed.
    """

    healthy = True

    def __init__(self, *routes) -> None:
        self.routes = list(routes)
        self.published: list[tuple[str, bytes, int | None, object]] = []

    def start(self, receiver):
        return succeed(None)

    def stop(self):
        return succeed(None)

    def interest(self, subject, on, group=None) -> None:
        pass

    def route(self, topic):
        return self.routes.pop(0)

    def publish(self, topic, payload, hops=0, stamp=None, route=None):
        self.published.append((topic, payload, stamp, route))
        return succeed(None)


class RouteTests(SynchronousTestCase):
    """
    Queue groups chosen elsewhere: a process gives a message to the local
    groups its backplane's route names, and a received message to the
    groups it was chosen for.
    """

    def setUp(self) -> None:
        self.plain, self.g, self.h = _Recorder(), _Recorder(), _Recorder()

    def _broker(self, backplane) -> BackplaneBroker:
        broker = BackplaneBroker(Broker(), backplane)
        broker.subscribe("j", self.plain)
        broker.subscribe("j", self.g, "g")
        broker.subscribe_pattern(parse_pattern("j.>"), self.h, "h")
        broker.subscribe("j.x", self.h, "h")
        return broker

    def test_published_here(self) -> None:
        """
        The route's local groups alone get a message published here, and
        the route goes with the message to the backplane, stamp and all.
        """
        routes = [Route(("g",), set(), {}), Route((), {1}, {1: ["g"]}), None]
        backplane = _Routing(*routes)
        broker = self._broker(backplane)
        self.successResultOf(broker.publish("j", b"1"))
        self.assertEqual(broker.publish_now("j", b"2", 7), 1)
        self.assertEqual(broker.publish_now("j", b"3"), 2)
        self.assertEqual((self.plain.payloads, self.g.payloads), ([b"1", b"2", b"3"], [b"1", b"3"]))
        self.assertEqual(
            backplane.published,
            [("j", b"1", None, routes[0]), ("j", b"2", 7, routes[1]), ("j", b"3", None, None)],
        )

    def test_received(self) -> None:
        """
        A received message goes to the plain subscribers if it says so, to
        one member of each group it names, and (no names: from a backplane
        between nodes) to every local group.
        """
        broker = self._broker(_Routing())
        star = _Recorder()
        broker.subscribe_pattern(parse_pattern("j.*"), star)
        broker.received("j.x", b"1", False, ("h",), 5)
        broker.received("j.x", b"2", True, ())
        broker.received("j.x", b"3", True, None)
        broker.received("j", b"4", False, ("g", "h"))
        broker.received("j", b"5", True, ())
        self.assertEqual(self.plain.payloads, [b"5"])
        self.assertEqual(star.payloads, [b"2", b"3"])
        self.assertEqual(self.h.payloads, [b"1", b"3"])
        self.assertEqual(self.g.payloads, [b"4"])
