"""
Tests for memmq.hops: the loop guard for chains of proxies, in the
front-end and in the proxy's broker.
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from memmq.broker import Broker
from memmq.hops import MAX_HOPS, BadHops, TooManyHops, check_hops
from memmq.interfaces import IBroker
from memmq.proxy import ProxyBroker
from memmq.server.web import MemmqSite
from tests.support import exchange


class CheckHopsTests(SynchronousTestCase):
    def test_values(self) -> None:
        """
        No header is 0 hops; a number below the limit is kept.
        """
        self.assertEqual(check_hops(None), 0)
        self.assertEqual(check_hops(b"3"), 3)
        self.assertEqual(check_hops(" 7 "), MAX_HOPS - 1)

    def test_too_many(self) -> None:
        """
        MAX_HOPS or more is a loop.
        """
        error = self.assertRaises(TooManyHops, check_hops, b"8")
        self.assertEqual(str(error), "loop detected: the message has passed through 8 proxies (at most 7)")

    def test_bad(self) -> None:
        """
        Anything but a small whole number is refused.
        """
        for value in (b"-1", b"x", b"1.5", b"", b"99999999"):
            self.assertRaises(BadHops, check_hops, value)


@implementer(IBroker)
class _Recording:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int]] = []

    def publish(self, topic, payload, hops=0):
        self.published.append((topic, payload, hops))
        return succeed(None)

    def subscribe(self, topic, subscriber):
        raise NotImplementedError

    def unsubscribe(self, subscription):
        pass


class FrontEndTests(SynchronousTestCase):
    """
    The HTTP front-end reads X-Memmq-Hops.
    """

    def _post(self, hops: bytes | None):
        broker = _Recording()
        header = b"" if hops is None else b"X-Memmq-Hops: " + hops + b"\r\n"
        answer, _ = exchange(
            MemmqSite(broker),
            b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\n" + header + b"Content-Length: 1\r\n\r\nm",
        )
        return answer, broker.published

    def test_passed_on(self) -> None:
        """
        The hop count reaches the broker.
        """
        answer, published = self._post(b"2")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual(published, [("t", b"m", 2)])
        self.assertEqual(self._post(None)[1], [("t", b"m", 0)])

    def test_loop_refused(self) -> None:
        """
        A message that has passed MAX_HOPS proxies is refused with 508 and
        not published.
        """
        answer, published = self._post(b"%d" % MAX_HOPS)
        self.assertTrue(answer.startswith(b"HTTP/1.1 508 "), answer)
        self.assertIn(b"loop detected", answer)
        self.assertEqual(published, [])

    def test_bad_hops(self) -> None:
        """
        A malformed hop count is a 400.
        """
        answer, published = self._post(b"many")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertEqual(published, [])


class ProxyBrokerTests(SynchronousTestCase):
    def test_forwards_one_more_hop(self) -> None:
        """
        A proxy forwards each publish upstream with one more hop.
        """
        upstream = _Recording()
        proxy = ProxyBroker(upstream, Broker(), Clock())
        self.successResultOf(proxy.publish("t", b"m", 3))
        self.successResultOf(proxy.publish("t", b"n"))
        self.assertEqual(upstream.published, [("t", b"m", 4), ("t", b"n", 1)])
