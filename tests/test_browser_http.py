"""
What the server gives browsers, over HTTP without a browser: CORS
(memmq.server.cors), the dashboard's files (memmq.server.dashboard),
/api/server (memmq.server.summary), /stats paging with sort and filter,
and plain-HTTP listeners (plain:, memmq.server.listen).
"""

from __future__ import annotations

import json
import re
import time

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.broker import Broker
from memmq.server.listen import is_plain
from memmq.server.web import MemmqSite
from tests.support import ServerProcess, exchange, run_memmq


def _body(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


class _Keep:
    def deliver(self, message) -> None:
        pass


class _Counting:
    def __init__(self, broker, reads: list) -> None:
        self._broker = broker
        self._reads = reads

    def stats(self):
        return self._broker.stats()

    def topic_stats(self):
        self._reads.append(1)
        return self._broker.topic_stats()


class CORSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.broker = Broker()
        self.got: list = []

    def test_preflight_any_origin(self) -> None:
        """
        By default any origin may publish: the preflight is 204 with the
        origin, the methods and the headers asked for.
        """
        answer, _ = exchange(MemmqSite(self.broker), (
            b"OPTIONS /pub?topic=t HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"
        ))
        self.assertTrue(answer.startswith(b"HTTP/1.1 204 "), answer)
        self.assertIn(b"Access-Control-Allow-Origin: https://app.example\r\n", answer)
        self.assertIn(b"Access-Control-Allow-Methods: GET, POST, PUT, OPTIONS\r\n", answer)
        self.assertIn(b"Access-Control-Allow-Headers: authorization\r\n", answer)
        self.assertIn(b"Vary: Origin\r\n", answer)

    def test_publish_answer_carries_origin(self) -> None:
        answer, _ = exchange(MemmqSite(self.broker), (
            b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nContent-Length: 1\r\n\r\nx"
        ))
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"Access-Control-Allow-Origin: https://app.example\r\n", answer)

    def test_no_origin_no_headers(self) -> None:
        """
        A request without Origin (curl, a server) is answered as before.
        """
        answer, _ = exchange(
            MemmqSite(self.broker), b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertNotIn(b"Access-Control", answer)

    def test_origin_not_allowed(self) -> None:
        """
        With a list of origins, another origin's preflight is 403 and its
        answers carry no CORS header.
        """
        site = MemmqSite(self.broker, allowed_origins="https://app.example, https://b.example/")
        answer, _ = exchange(site, (
            b"OPTIONS /pub?topic=t HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n"
            b"Access-Control-Request-Method: POST\r\n\r\n"
        ))
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer)
        self.assertNotIn(b"Access-Control-Allow-Origin", answer)
        answer, _ = exchange(site, (
            b"OPTIONS /pub?topic=t HTTP/1.1\r\nHost: x\r\nOrigin: https://B.example\r\n"
            b"Access-Control-Request-Method: POST\r\n\r\n"
        ))
        self.assertTrue(answer.startswith(b"HTTP/1.1 204 "), answer)


class DashboardFilesTests(SynchronousTestCase):
    def test_page(self) -> None:
        """
        / is the page, with a policy that lets it load nothing from elsewhere.
        """
        answer, _ = exchange(MemmqSite(Broker()), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"Content-Type: text/html; charset=utf-8\r\n", answer)
        self.assertIn(b"Content-Security-Policy: default-src 'none'", answer)
        self.assertIn(b"<title>memmq</title>", answer)

    def test_files(self) -> None:
        for name, kind in ((b"dashboard.js", b"text/javascript"), (b"dashboard.css", b"text/css")):
            answer, _ = exchange(MemmqSite(Broker()), b"GET /dashboard/" + name + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:200])
            self.assertIn(b"Content-Type: " + kind, answer)

    def test_small_and_self_contained(self) -> None:
        """
        Hand-written and small: no URL to another host anywhere in it.
        """
        total = 0
        for name in (b"", b"dashboard/dashboard.js", b"dashboard/dashboard.css"):
            answer, _ = exchange(MemmqSite(Broker()), b"GET /" + name + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            body = _body(answer)
            total += len(body)
            self.assertIsNone(re.search(rb"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", body), name)
        self.assertLess(total, 48 * 1024)


class SummaryTests(SynchronousTestCase):
    def test_summary_and_rates(self) -> None:
        """
        /api/server: version, mode, uptime, memory, totals, and per-second
        rates between the samples taken when asked (at most one a second).
        """
        clock = Clock()
        clock.advance(1000)
        broker = Broker()
        site = MemmqSite(broker, clock=clock)
        broker.subscribe("t", _Keep())

        def get():
            answer, _ = exchange(site, b"GET /api/server HTTP/1.1\r\nHost: x\r\n\r\n")
            return json.loads(_body(answer))

        first = get()
        self.assertEqual((first["mode"], first["persist"], first["rates"]), ("server", False, []))
        self.assertGreater(first["rss"], 1_000_000)
        for _ in range(20):
            broker.publish("t", b"x")
        clock.advance(2)
        second = get()
        self.assertEqual(second["uptime"], 2)
        self.assertEqual(second["published"], 20)
        self.assertEqual(second["rates"], [[1002, 10.0, 10.0, 0.0]])
        clock.advance(0.5)
        self.assertEqual(len(get()["rates"]), 1)


class StatsPagingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.broker = Broker()
        self.site = MemmqSite(self.broker)

    def stats(self, query: bytes) -> dict:
        answer, _ = exchange(self.site, b"GET /stats?" + query + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        return json.loads(_body(answer))

    def test_sort_filter_page(self) -> None:
        """
        Topics sorted by any figure, either way, filtered by a part of the
        name (any case), paged; topic_count counts the matches.
        """
        for n in range(30):
            self.broker.subscribe(f"t{n:02d}", _Keep())
            for _ in range(n):
                self.broker.publish(f"t{n:02d}", b"x")
        body = self.stats(b"sort=published&limit=3")
        self.assertEqual([t["topic"] for t in body["topics"]], ["t29", "t28", "t27"])
        body = self.stats(b"sort=published&order=asc&offset=2&limit=2")
        self.assertEqual([t["topic"] for t in body["topics"]], ["t02", "t03"])
        body = self.stats(b"sort=topic&order=desc&limit=2")
        self.assertEqual([t["topic"] for t in body["topics"]], ["t29", "t28"])
        body = self.stats(b"match=T1&sort=topic")
        self.assertEqual(body["topic_count"], 10)
        self.assertEqual(body["topics"][0]["topic"], "t10")

    def test_bad_sort(self) -> None:
        answer, _ = exchange(self.site, b"GET /stats?sort=size HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertIn(b"sort must be one of subscribers, topic", answer)

    def test_100k_topics_page_fast(self) -> None:
        """
        A page of 100,000 topics costs about what reading their figures
        from the broker does (a partial sort, a small answer), and the
        figures are read at most once a second however many pages are asked.
        """
        for n in range(100_000):
            self.broker.subscribe(f"topic.{n}", _Keep())
        started = time.perf_counter()
        self.broker.topic_stats()
        read = time.perf_counter() - started
        started = time.perf_counter()
        body = self.stats(b"sort=subscribers&offset=500&limit=50")
        elapsed = time.perf_counter() - started
        self.assertEqual((body["topic_count"], len(body["topics"])), (100_000, 50))
        self.assertLess(elapsed, max(1.0, 4 * read))
        reads: list = []
        self.site.metrics.now = lambda: 1e9
        self.site.metrics.broker = _Counting(self.site.metrics.broker, reads)
        for offset in range(0, 1000, 100):
            self.stats(b"sort=topic&limit=50&offset=%d" % offset)
        self.assertLessEqual(len(reads), 1)


class PlainListenerTests(TestCase):
    def test_description(self) -> None:
        self.assertTrue(is_plain("plain:tcp:8080"))
        self.assertTrue(is_plain("PLAIN:unix:/x"))
        self.assertFalse(is_plain("tcp:8080"))

    @inlineCallbacks
    def test_plain_listener_logged_loudly(self):
        """
        A plain: listener serves HTTP without TLS, and the start-up says
        so as a warning.
        """
        import treq

        server = ServerProcess.spawn(self, ["-m", "memmq", "--address=127.0.0.1:0",
                                            "--listen=plain:tcp:0:interface=127.0.0.1"])
        yield server.wait_listening()
        from tests.support import until

        yield until(lambda: b"WITHOUT TLS" in server.output)
        match = re.search(rb"memmq listening on http://127\.0\.0\.1:(\d+) WITHOUT TLS", server.output)
        self.assertIsNotNone(match, server.output)
        self.assertIn(b"warn", server.output[match.start() - 40: match.start()])
        from twisted.internet import reactor
        from twisted.web.client import HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        response = yield treq.get(f"http://127.0.0.1:{int(match.group(1))}/health", pool=pool)
        self.assertEqual((yield treq.content(response)), b"ok\n")
        yield server.terminate()

    def test_bad_trusted_proxies_refused(self) -> None:
        done = run_memmq("--trusted_proxies=10.0.0.0/8,proxy.example", "--address=127.0.0.1:0")
        self.assertEqual(done.returncode, 2)
        self.assertIn(b"'proxy.example' is not an address", done.stderr)
