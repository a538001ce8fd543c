# -*- test-case-name: tests.test_limits -*-
"""
Tests for the server's limits (README: Limits; L{memmq.server.limits},
L{memmq.server.http_channel}, L{memmq.server.plain_http},
L{memmq.server.system_limits}): what a server does to peers that do not
read, dawdle, or send what it cannot take (issue 17), over a real TLS
listener with blocking clients in threads playing the hostile peer.
"""

from __future__ import annotations

import resource
import ssl
import time

from twisted.internet import reactor, tcp
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.broker import Broker
from memmq.server.http_channel import GuardedChannel
from memmq.server.limits import MAX_FRAGMENTS, Guard, plain_text
from memmq.server.plain_http import PLAIN_HTTP_REASON
from memmq.server.system_limits import raise_nofile_limit, system_backlog, watch_accepts, with_backlog
from memmq.server.web import MemmqSite
from tests.support import (
    REPO,
    Recorder,
    RunningServer,
    bounded,
    child_env,
    client_frame,
    logged_events,
    raw_tls,
    read_until_closed,
    send_until_stuck,
    until,
    websocket_upgrade,
)

# More than any transport buffers (ours and the kernel's on loopback) hold:
# a server still reading after this much is reading without bound.
UNBOUNDED = 48 * 1024 * 1024


def _server(testcase, **guard) -> RunningServer:
    server = RunningServer(testcase)
    for name, value in guard.items():
        setattr(server.site.guard, name, value)
    return server


def _in_thread(function, *args):
    return bounded(deferToThread(function, *args), 60)


class OutputBoundTests(TestCase):
    """
    A peer that does not read what it is sent stops being read, and is
    closed once it has taken nothing for the stall timeout.
    """

    def _not_reading(self, server, path: str | None, unit: bytes):
        """
        Send C{unit} over and over without reading; fire with the bytes
        sent once the server has dropped the connection as stalled (the
        client never reads: reading would take the output).
        """
        held = []

        def client():
            sock = raw_tls(server.port)
            held.append(sock)
            if path is not None:
                assert websocket_upgrade(sock, path).startswith(b"HTTP/1.1 101")
            return send_until_stuck(sock, unit, UNBOUNDED)

        def close():
            for sock in held:
                sock.close()

        self.addCleanup(close)
        d = _in_thread(client)

        def stalled(sent):
            return until(lambda: server.site.guard.counts["stalled"], 30).addCallback(lambda _: sent)

        return d.addCallback(stalled).addCallback(_quiet_autobahn)

    def _check(self, server, sent) -> None:
        self.assertLess(sent, UNBOUNDED)
        self.assertGreaterEqual(server.site.guard.counts["output_paused"], 1)
        self.assertGreaterEqual(server.site.guard.counts["stalled"], 1)

    def test_pipelined_answers_not_read(self):
        """
        Pipelined requests whose answers are not read: the server stops
        reading, then closes the connection.
        """
        server = _server(self, stall_timeout=1)
        d = self._not_reading(server, None, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        return d.addCallback(lambda outcome: self._check(server, outcome))

    def test_subscriber_pongs_not_read(self):
        """
        A WebSocket subscriber sending pings and not reading the pongs.
        """
        server = _server(self, stall_timeout=1)
        d = self._not_reading(server, "/sub?topic=t", client_frame(0x9, b"p" * 125))
        return d.addCallback(lambda outcome: self._check(server, outcome))

    def test_publisher_pongs_not_read(self):
        """
        A WebSocket publisher sending pings and not reading the pongs.
        """
        server = _server(self, stall_timeout=1)
        d = self._not_reading(server, "/pub?topic=t", client_frame(0x9, b"p" * 125))
        return d.addCallback(lambda outcome: self._check(server, outcome))

    def test_streaming_subscriber_not_read(self):
        """
        A streaming C{GET /sub} that reads nothing is closed once stuck;
        meanwhile its messages are dropped for it alone.
        """
        server = _server(self, stall_timeout=3)
        payload = b"x" * 65536

        def client():
            sock = raw_tls(server.port)
            sock.sendall(b"GET /sub?topic=t HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            # Read nothing; wait to be closed.
            sock.setblocking(True)
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                reactor.callFromThread(server.broker.publish, "t", payload)
                time.sleep(0.01)
                if server.site.guard.counts["stalled"]:
                    break
            sock.close()

        def check(_):
            self.assertEqual(server.site.guard.counts["stalled"], 1)
            self.assertGreater(server.broker.stats().delivery.dropped, 0)

        return _in_thread(client).addCallback(check)


def _quiet_autobahn(result):
    """
    Wait for autobahn's batched timers (txaio), which outlive a dropped
    connection by up to a second, to fire; pass C{result} on.
    """
    def pending():
        return [c for c in reactor.getDelayedCalls() if "_notify_bucket" in repr(c)]

    return until(lambda: not pending(), 10).addCallback(lambda _: result)


class HeadDeadlineTests(TestCase):
    """
    A request head (and the TLS handshake before it) has a deadline that
    dripping bytes do not push back.
    """

    def test_dripping_head(self):
        """
        A head sent a byte at a time gets a 408 and a close at the
        deadline.
        """
        return self._drip(first=b"")

    def test_dripping_second_head(self):
        """
        On a kept-alive connection, the deadline is armed again for the
        next request's head: dripping it gets a 408 too.
        """
        return self._drip(first=b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")

    def _drip(self, first: bytes):
        """
        Send C{first} (and read its answer), wait a little, then send a
        head a byte at a time: it gets a 408 and a close at the deadline.
        """
        server = _server(self, head_timeout=1)

        def client():
            sock = raw_tls(server.port)
            answer = b""
            if first:
                sock.sendall(first)
                while not answer.endswith(b"ok\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                time.sleep(0.5)
            started = time.monotonic()
            for byte in b"GET /health HTTP/1.1\r\nHost: x":
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.2)
                if time.monotonic() - started > 4:
                    break
            data, closed = read_until_closed(sock, 5)
            return answer, data, closed, time.monotonic() - started

        def check(outcome):
            answer, data, closed, seconds = outcome
            if first:
                self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
            self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
            self.assertTrue(closed)
            self.assertGreater(seconds, 0.9)
            self.assertLess(seconds, 4)
            self.assertEqual(server.site.guard.counts["head_timeouts"], 1)

        return _in_thread(client).addCallback(check)

    def test_no_handshake(self):
        """
        A TCP connection that never starts TLS is closed at the deadline.
        """
        import socket

        server = _server(self, head_timeout=0.5)

        def client():
            sock = socket.create_connection(("127.0.0.1", server.port))
            started = time.monotonic()
            _, closed = read_until_closed(sock, 5)
            sock.close()
            return closed, time.monotonic() - started

        def check(outcome):
            closed, seconds = outcome
            self.assertTrue(closed)
            self.assertLess(seconds, 4)

        return _in_thread(client).addCallback(check)

    def test_keep_alive_head(self):
        """
        On a kept-alive connection, the deadline runs from the first byte
        of the next request; an idle connection between requests is not
        cut by it.
        """
        server = _server(self, head_timeout=0.5)

        def client():
            sock = raw_tls(server.port)
            answers = []
            for pause in (1, 0):
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"ok\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                answers.append(answer)
                time.sleep(pause)
            sock.close()
            return answers

        def check(answers):
            for answer in answers:
                self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)

        return _in_thread(client).addCallback(check)


class PromptAnswerTests(TestCase):
    """
    What twisted.web would wait on until its idle timeout is answered at
    once, and the connection closed.
    """

    def _answer(self, request: bytes):
        server = RunningServer(self)

        def client():
            sock = raw_tls(server.port)
            started = time.monotonic()
            sock.sendall(request)
            data, closed = read_until_closed(sock, 5)
            sock.close()
            return data, closed, time.monotonic() - started

        return _in_thread(client)

    def _expect(self, request: bytes, status: bytes, reason: bytes):
        def check(outcome):
            data, closed, seconds = outcome
            self.assertTrue(data.startswith(b"HTTP/1.1 " + status), data[:80])
            self.assertIn(reason, data)
            self.assertTrue(closed)
            self.assertLess(seconds, 3)

        return self._answer(request).addCallback(check)

    def test_long_header_line(self):
        """
        A header line of 20 KiB: 431.
        """
        return self._expect(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431", b"header line longer"
        )

    def test_long_request_line(self):
        """
        A request line of 20 KiB: 400.
        """
        return self._expect(b"GET /health?" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"400", b"request line longer")

    def test_lf_only(self):
        """
        Lines ended by LF alone: 400.
        """
        return self._expect(b"GET /health HTTP/1.1\nHost: x\n\n", b"400", b"CRLF")

    def test_huge_chunk(self):
        """
        A chunk size of 2^64-1: 413 before any of it is sent.
        """
        return self._expect(
            b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            b"413", b"message larger than",
        )

    def test_big_header_under_the_limit(self):
        """
        A 10,000-byte header is still served.
        """

        def check(outcome):
            data, _, _ = outcome
            self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:80])

        return self._answer(
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n"
        ).addCallback(check)

    def test_refused_body_cut_off(self):
        """
        An endless chunked body gets its 413 at once and is cut off after
        the discarded bound (4 MiB), not read for ever.
        """
        server = RunningServer(self)

        def client():
            sock = raw_tls(server.port)
            sock.sendall(b"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            sent = send_until_stuck(sock, b"10000\r\n" + b"a" * 0x10000 + b"\r\n", UNBOUNDED)
            data, closed = read_until_closed(sock, 5)
            sock.close()
            return sent, data, closed

        def check(outcome):
            sent, data, closed = outcome
            self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:80])
            self.assertLess(sent, 32 * 1024 * 1024)
            self.assertTrue(closed)

        return _in_thread(client).addCallback(check)


class TLSPortTests(TestCase):
    """
    What the TLS port answers to plain HTTP, and which TLS 1.2 suites it
    offers.
    """

    def test_plain_http(self):
        """
        Plain HTTP gets a plain-text 400 saying the server speaks TLS.
        """
        import socket

        server = RunningServer(self)

        def client():
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data, closed = read_until_closed(sock, 5)
            sock.close()
            return data, closed

        def check(outcome):
            data, closed = outcome
            self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data)
            self.assertIn(PLAIN_HTTP_REASON.encode(), data)
            self.assertTrue(closed)
            self.assertEqual(server.site.guard.counts["plain_http"], 1)

        return _in_thread(client).addCallback(check)

    def _tls12(self, port: int, ciphers: str):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
        try:
            sock = raw_tls(port, 5, context)
        except ssl.SSLError:
            return None
        cipher = sock.cipher()[0]
        sock.close()
        return cipher

    def test_no_cbc_suites(self):
        """
        TLS 1.2 with only CBC-SHA1 suites offered by the client fails; with
        AEAD suites it works.
        """
        server = RunningServer(self)

        def client():
            return (
                self._tls12(server.port, "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA"),
                self._tls12(server.port, "ECDHE-ECDSA-AES128-GCM-SHA256"),
            )

        def check(outcome):
            cbc, gcm = outcome
            self.assertIsNone(cbc)
            self.assertEqual(gcm, "ECDHE-ECDSA-AES128-GCM-SHA256")

        return _in_thread(client).addCallback(check)


class FragmentTests(TestCase):
    """
    A WebSocket message in too many frames closes the connection.
    """

    def test_endless_continuation(self):
        """
        Empty continuation frames past L{MAX_FRAGMENTS}: close 1009.
        """
        server = RunningServer(self)

        def client():
            sock = raw_tls(server.port)
            assert websocket_upgrade(sock, "/pub?topic=t").startswith(b"HTTP/1.1 101")
            sock.sendall(client_frame(0x1, b"", fin=False))
            sock.sendall(client_frame(0x0, b"", fin=False) * (MAX_FRAGMENTS + 10))
            data, closed = read_until_closed(sock, 5)
            sock.close()
            return data

        def check(data):
            self.assertEqual(data[0], 0x88)
            self.assertEqual(int.from_bytes(data[2:4], "big"), 1009)
            self.assertEqual(server.site.guard.counts["fragments"], 1)

        return _in_thread(client).addCallback(check)

    def test_fragmented_message_published(self):
        """
        A message in a few fragments is still published whole.
        """
        server = RunningServer(self)
        seen = Recorder()
        server.broker.subscribe("t", seen)

        def client():
            sock = raw_tls(server.port)
            assert websocket_upgrade(sock, "/pub?topic=t").startswith(b"HTTP/1.1 101")
            sock.sendall(client_frame(0x2, b"ab", fin=False) + client_frame(0x0, b"cd", fin=False)
                         + client_frame(0x0, b"ef"))
            sock.sendall(client_frame(0x8, b"\x03\xe8"))
            read_until_closed(sock, 5)
            sock.close()

        d = _in_thread(client)
        d.addCallback(lambda _: until(lambda: seen.messages))
        d.addCallback(lambda _: self.assertEqual(seen.payloads, [b"abcdef"]))
        return d


class ListenLimitTests(TestCase):
    """
    Listening with the system's backlog; the refused connections counted.
    """

    def test_address_backlog(self):
        """
        C{--address} listens with the system's largest backlog.
        """
        server = RunningServer(self)
        self.assertEqual(server.service.port.backlog, system_backlog())
        self.assertGreater(system_backlog(), 50)

    def test_listen_backlog(self):
        """
        C{--listen} TCP and UNIX descriptions get it unless they name one.
        """
        self.assertEqual(with_backlog("tcp:0"), f"tcp:0:backlog={system_backlog()}")
        self.assertEqual(with_backlog("unix:/x"), f"unix:/x:backlog={system_backlog()}")
        self.assertEqual(with_backlog("tcp:0:backlog=7"), "tcp:0:backlog=7")
        self.assertEqual(with_backlog("systemd:domain=INET6:index=0"), "systemd:domain=INET6:index=0")


class CountingTests(SynchronousTestCase):
    """
    Counts and logs, in memory.
    """

    def test_refused_accepts(self):
        """
        Twisted's one line per refused connection becomes a count and a
        line at most every 10 s.
        """
        clock = Clock()
        guard = Guard(clock)
        port = tcp.Port(0, None)
        watch_accepts(port, guard)
        events = logged_events(self)
        for _ in range(100):
            port._logger.info("EMFILE encountered; releasing reserved file descriptor.")
            port._logger.info("EMFILE recovery: Closed socket from {address}", address="x")
        self.assertEqual(guard.counts["refused"], 100)
        lines = [e for e in events if "refusing connections" in (e.get("log_format") or "")]
        self.assertEqual(len(lines), 1)
        self.assertEqual([e for e in events if "EMFILE" in (e.get("log_format") or "")], [])

    def test_idle_timeouts_rate_limited(self):
        """
        Idle clients timed out are counted; one line per 10 s, not one per
        client.
        """
        clock = Clock()
        site = MemmqSite(Broker(), clock=clock)
        site.guard = Guard(clock)
        events = logged_events(self)
        for _ in range(5):
            channel = site.buildProtocol(None)
            channel.callLater = clock.callLater
            transport = StringTransport()
            channel.makeConnection(transport)
            channel.timeoutConnection()
            channel.connectionLost(None)
        clock.advance(100)
        self.assertEqual(site.guard.counts["idle_timeouts"], 5)
        self.assertEqual(len([e for e in events if "timing out" in (e.get("log_format") or "")]), 1)
        self.assertEqual([e for e in events if "Timing out" in (e.get("log_format") or "")], [])

    def test_metrics(self):
        """
        The counts are in C{/metrics}.
        """
        site = MemmqSite(Broker(), clock=Clock())
        site.guard.count("stalled")
        body, _ = site.metrics.exposition()
        self.assertIn(b"memmq_connections_stalled_total 1.0", body)
        self.assertIn(b"memmq_connections_refused_total 0.0", body)

    def test_plain_text(self):
        """
        A whole answer with a reason phrase even where twisted.web has none.
        """
        self.assertTrue(plain_text(431, "x").startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"))

    def test_channel_is_guarded(self):
        """
        The site's connections are L{GuardedChannel}s.
        """
        site = MemmqSite(Broker(), clock=Clock())
        self.assertIsInstance(site.buildProtocol(None), GuardedChannel)


class OpenFilesTests(SynchronousTestCase):
    """
    The soft open-files limit is raised to the hard one.
    """

    def test_raised(self):
        """
        A soft limit under the hard one is raised to it.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        if hard == resource.RLIM_INFINITY or hard < 300:
            self.skipTest(f"hard limit {hard}: nothing to raise to here")
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        self.assertEqual(raise_nofile_limit(), (256, hard))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))

    def test_systemd_unit(self):
        """
        The shipped unit sets C{LimitNOFILE}.
        """
        with open(f"{REPO}/contrib/systemd/memmq.service") as f:
            self.assertRegex(f.read(), r"(?m)^LimitNOFILE=\d+$")

    def test_logged_at_start(self):
        """
        A server started with a low soft limit raises it and says so.
        """
        import subprocess
        import sys

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard < 300:
            self.skipTest(f"hard limit {hard}: nothing to raise to here")

        def low():
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

        child = subprocess.Popen(
            [sys.executable, "-m", "memmq", "--address=127.0.0.1:0"], env=child_env(), preexec_fn=low,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
        )
        try:
            lines = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                line = child.stderr.readline().decode()
                lines.append(line)
                if "open files limit" in line or not line:
                    break
        finally:
            child.terminate()
            child.wait(10)
            child.stderr.close()
        self.assertIn(f"open files limit: {hard} (raised from 256)", "".join(lines))
