"""
The dashboard, Server-Sent Events and CORS in a real browser: Debian's
headless chromium, driven through chromium-driver by Selenium, against a
server listening on plain HTTP (a browser would refuse the self-signed
certificate) and, for the test's own clients, on TLS.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from memmq.interfaces import ISubscriber
from tests.support import Browser, RunningServer, bounded, curl_publish, until

PLAIN = "plain:tcp:0:interface=127.0.0.1"


@implementer(ISubscriber)
class _Kept:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def deliver(self, message) -> None:
        self.payloads.append(message.payload)


class BrowserTests(TestCase):
    """
    The dashboard and the browser-facing API, seen from chromium.
    """

    timeout = 180

    @inlineCallbacks
    def setUp(self):
        self.server = RunningServer(self, endpoints=(PLAIN,), max_buffered_messages=100)
        self.plain = f"http://127.0.0.1:{self.server.endpoint_ports[0]}"
        self.browser = yield Browser.start(self)

    def keep(self, topic: str) -> _Kept:
        kept = _Kept()
        subscription = self.server.broker.subscribe(topic, kept)
        self.addCleanup(self.server.broker.unsubscribe, subscription)
        return kept

    @inlineCallbacks
    def open_dashboard(self, base: str | None = None):
        yield self.browser.get((base or self.plain) + "/")
        yield self.browser.until("return document.getElementById('server-line').textContent.startsWith('v')")

    @inlineCallbacks
    def test_page_loads_without_console_errors(self):
        """
        The page, its stylesheet and script load, it shows the server's
        version and mode, and the browser's console holds no error.
        """
        yield self.open_dashboard()
        line = yield self.browser.script("return document.getElementById('server-line').textContent")
        self.assertIn("server", line)
        yield self.browser.until("return document.getElementById('page').textContent.includes('of')")
        errors = yield self.browser.errors()
        self.assertEqual(errors, [])

    @inlineCallbacks
    def test_shows_a_topic_published_to(self):
        """
        A topic with a subscriber that the test publishes to appears in the
        topics table with its figures.
        """
        self.keep("browser.seen")
        yield self.server.broker.publish("browser.seen", b"x")
        yield self.open_dashboard()
        row = yield self.browser.until(
            "const r = document.querySelector('tr[data-topic=\"browser.seen\"]');"
            "return r && Array.from(r.cells, c => c.textContent)"
        )
        self.assertEqual(row[:3], ["browser.seen", "1", "1"])
        yield self.browser.script("document.getElementById('filter').value = 'nothing-like-it';"
                                  "document.getElementById('filter').dispatchEvent(new Event('input'))")
        yield self.browser.until("return document.getElementById('topics-body').children.length === 0")

    @inlineCallbacks
    def test_console_publish_reaches_websocket_subscriber(self):
        """
        The console's publish button sends the message to a WebSocket
        subscriber of the topic.
        """
        subscriber = yield self.server.client.subscribe(self.server.url, "console.pub")
        yield self.open_dashboard()
        yield self.browser.script(
            "document.getElementById('console-topic').value = 'console.pub';"
            "document.getElementById('console-message').value = 'from the console';"
            "document.getElementById('publish').click()"
        )
        yield subscriber.wait_for(1)
        self.assertEqual(subscriber.messages, [b"from the console"])
        yield self.browser.until("return document.getElementById('publish-result').textContent === 'published'")

    @inlineCallbacks
    def tail_and_publish_with_curl(self, via: str):
        yield self.open_dashboard()
        yield self.browser.script(
            "document.getElementById('console-topic').value = 'example';"
            "document.getElementById('tail-via').value = arguments[0];"
            "document.getElementById('tail').click()", via,
        )
        yield self.browser.until("return document.getElementById('tail-state').textContent.startsWith('tailing')")
        yield until(lambda: self.server.broker.topic("example") is not None)
        out, err, status = yield curl_publish(self.server.port)
        self.assertEqual((out, status), (b"200", 0), err)
        text = yield self.browser.until(
            "const li = document.querySelector('#tail-log li'); return li && li.textContent"
        )
        self.assertIn("a completely arbitrary message", text)

    def test_tail_over_websocket_shows_curl_publish(self):
        """
        Tailing a topic (WebSocket) shows a message the README's curl
        command publishes.
        """
        return self.tail_and_publish_with_curl("websocket")

    def test_tail_over_event_source_shows_curl_publish(self):
        """
        The same over EventSource.
        """
        return self.tail_and_publish_with_curl("sse")

    @inlineCallbacks
    def test_event_source_receives_events(self):
        """
        An EventSource in the page receives each message as one event: text
        with its line breaks, binary as a base64 event.
        """
        yield self.open_dashboard()
        yield self.browser.script(
            "window.got = []; window.opened = false;"
            "const s = new EventSource('/sub?topic=sse.page');"
            "s.onopen = () => { window.opened = true; };"
            "s.onmessage = e => window.got.push(['message', e.data]);"
            "s.addEventListener('base64', e => window.got.push(['base64', e.data]));"
        )
        yield self.browser.until("return window.opened")
        yield until(lambda: self.server.broker.topic("sse.page") is not None)
        for payload in (b"one", b"two\nlines", b"\xff\x00\xfe", b""):
            yield self.server.broker.publish("sse.page", payload)
        got = yield self.browser.until("return window.got.length >= 4 && window.got")
        self.assertEqual(got, [["message", "one"], ["message", "two\nlines"], ["base64", "/wD+"], ["message", ""]])

    @inlineCallbacks
    def test_fetch_publish_from_another_origin(self):
        """
        A page from another origin publishes with fetch() (a preflighted
        request, as it sends Authorization): CORS lets it read the answer.
        """
        kept = self.keep("cors.topic")
        # localhost and 127.0.0.1 are two origins to a browser; the page is
        # /health, as the dashboard's own policy allows it no other origin.
        yield self.browser.get(f"http://localhost:{self.server.endpoint_ports[0]}/health")
        status = yield self.browser.call(lambda driver: driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0] + '/pub?topic=cors.topic', {method: 'POST', body: 'from elsewhere',"
            "  headers: {'Authorization': 'Bearer nobody', 'Content-Type': 'text/plain'}})"
            ".then(r => done(r.status), e => done(String(e)))", self.plain,
        ))
        errors = yield self.browser.errors()
        self.assertEqual(status, 200, errors)
        self.assertEqual(kept.payloads, [b"from elsewhere"])

    @inlineCallbacks
    def test_screenshot_under_load(self):
        """
        The dashboard under load (publishers on many topics, subscribers,
        some drops) reads well: saved as dashboard.png in the test's
        directory, an artifact of the run.
        """
        broker = self.server.broker
        topics = [f"orders.{region}.{n}" for region in ("eu", "us", "ap") for n in range(40)]
        for i, topic in enumerate(topics):
            for _ in range(1 + i % 4):
                self.keep(topic)
        # A few subscribers that stopped reading: their buffers fill, and
        # drops show.
        for topic in topics[::17]:
            broker.subscribe(topic, _Kept()).pause()
        count = [0]

        def publish():
            for i, topic in enumerate(topics):
                if (count[0] + i) % 3 == 0:
                    broker.publish(topic, b"payload %d" % count[0])
            count[0] += 1

        load = LoopingCall(publish)
        load.clock = reactor
        load.start(0.01)
        self.addCleanup(load.stop)
        yield self.server.client.subscribe(self.server.url, "orders.eu.0")
        yield self.open_dashboard()
        yield self.browser.script(
            "document.getElementById('console-topic').value = 'orders.eu.0';"
            "document.getElementById('tail').click()"
        )
        yield self.browser.until("return document.querySelectorAll('#tail-log li').length > 8")
        # A few seconds of rates for the chart.
        seconds = float(os.environ.get("MEMMQ_SCREENSHOT_SECONDS", "6"))
        yield bounded(until(lambda: count[0] > seconds * 80, seconds * 5), seconds * 5 + 5)
        try:
            yield self.browser.until(
                "return document.querySelectorAll('#topics-body tr').length >= 50 &&"
                " document.getElementById('rate-in').textContent !== '–'"
            )
        except Exception:
            state = yield self.browser.script(
                "return [document.querySelectorAll('#topics-body tr').length,"
                " document.getElementById('rate-in').textContent, document.body.innerText.slice(0, 400)]"
            )
            errors = yield self.browser.errors()
            self.fail(f"page not showing the load: {state} {errors}")
        yield self.browser.script("document.getElementById('pause').click()")
        path = os.path.abspath("dashboard.png")
        saved = yield self.browser.call(lambda driver: driver.save_screenshot(path))
        self.assertTrue(saved)
        self.assertGreater(os.path.getsize(path), 10_000)
        errors = yield self.browser.errors()
        self.assertEqual(errors, [])


class RefusedOriginTests(TestCase):
    """
    A page from an origin not in the allowed list cannot publish.
    """

    timeout = 120

    @inlineCallbacks
    def test_fetch_from_origin_not_allowed(self):
        """
        The preflight is refused, so the browser never sends the publish.
        """
        server = RunningServer(self, endpoints=(PLAIN,), allowed_origins=["https://app.example.com"])
        kept = _Kept()
        server.broker.subscribe("cors.refused", kept)
        port = server.endpoint_ports[0]
        browser = yield Browser.start(self)
        yield browser.get(f"http://localhost:{port}/health")
        outcome = yield browser.call(lambda driver: driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0] + '/pub?topic=cors.refused', {method: 'POST', body: 'no',"
            "  headers: {'Authorization': 'Bearer nobody'}})"
            ".then(r => done(r.status), e => done(String(e)))", f"http://127.0.0.1:{port}",
        ))
        self.assertEqual(outcome, "TypeError: Failed to fetch")
        self.assertEqual(kept.payloads, [])
