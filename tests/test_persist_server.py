"""
End-to-end tests of persistence: real servers on loopback with real TLS
(in-process, and as child processes for SIGTERM and SIGKILL), replay
under concurrent publishing, disk errors, and the options.
"""

from __future__ import annotations

import os
import shutil
import sys

import grpc
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from memmq import client
from memmq.broker import Broker
from memmq.persist import Persister, PersistingBroker, file_name, parse
from tests.support import PAYLOADS, REPO, RunningServer, ServerProcess, bounded, logged_events, run_memmq, spawn


def _lines(path: str) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


class _PersistingServer:
    """
    An in-process server run as with --persist.
    """

    def __init__(self, testcase, directory: str | None = None, **options) -> None:
        self.directory = directory or os.path.abspath(testcase.mktemp())
        os.makedirs(self.directory, exist_ok=True)
        self.persister = Persister(self.directory, reactor=reactor, **options)
        self.persister.startService()
        # Cleanups run last first: the persister stops after the server.
        testcase.addCleanup(lambda: self.persister.running and self.persister.stopService())
        self.broker = PersistingBroker(Broker(), self.persister)
        self.server = RunningServer(testcase, broker=self.broker, replay=self.persister)
        self.url = self.server.url
        self.client = self.server.client

    def path(self, topic: str) -> str:
        return os.path.join(self.directory, file_name(topic))


class _Stream:
    """
    A plain streaming GET /sub, its bytes kept as they arrive.
    """

    def __init__(self) -> None:
        self.data = b""
        self.code: int | None = None
        self._waiters: list[tuple[int, Deferred]] = []

    def received(self, data: bytes) -> None:
        self.data += data
        for entry in list(self._waiters):
            if len(self.data) >= entry[0]:
                self._waiters.remove(entry)
                entry[1].callback(self.data)

    def wait_for(self, size: int) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append((size, d))
        self.received(b"")
        return bounded(d)


@inlineCallbacks
def _open_stream(testcase, server, query: dict) -> Deferred:
    stream = _Stream()
    # Not kept for reuse: the stream ends when the server stops, after the
    # pool has been closed.
    response = yield bounded(
        server.client.http.get(server.url + "/sub", params=query, unbuffered=True, headers={"Connection": "close"})
    )
    stream.code = response.code
    # Ends with the server's stop; that is not a failure here.
    treq.collect(response, stream.received).addErrback(lambda f: None)
    return stream


class ReplayTests(TestCase):
    """
    ?since=N: persisted messages first, then live ones, with no gap and no
    duplicate, over WebSocket and over a plain stream.
    """

    @inlineCallbacks
    def test_concurrent_publishers_no_gap_no_duplicate(self) -> None:
        """
        Subscribers with since=0 join while four publishers publish: each
        gets every message exactly once, each publisher's in order.
        """
        server = _PersistingServer(self, flush_interval=0.02)
        workers, each = 4, 150
        published = [0]
        halfway: Deferred = Deferred()

        @inlineCallbacks
        def publisher(worker: int):
            for i in range(each):
                code, _ = yield server.client.publish(server.url, "seam", b"w%d-%04d" % (worker, i))
                self.assertEqual(code, 200)
                published[0] += 1
                if published[0] == workers * each // 3 and not halfway.called:
                    halfway.callback(None)

        publishing = gatherResults([publisher(w) for w in range(workers)])
        yield bounded(halfway)
        # Joining in mid-flow: part of what came before is in the file,
        # part still pending in the writer.
        ws = yield server.client.connect(server.url, "/sub", "seam&since=0")
        stream = yield _open_stream(self, server, {"topic": "seam", "since": "0"})
        self.assertEqual(stream.code, 200)
        self.assertLess(published[0], workers * each, "joined too late to test the seam")
        yield bounded(publishing)
        total = workers * each
        messages = yield ws.wait_for(total)
        data = yield stream.wait_for(total * 7)
        pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
        for got in (messages, pieces):
            self.assertEqual(len(got), total)
            self.assertEqual(len(set(got)), total)
            for w in range(workers):
                mine = [m for m in got if m.startswith(b"w%d-" % w)]
                self.assertEqual(mine, [b"w%d-%04d" % (w, i) for i in range(each)])
        # Nothing more comes than what is published next.
        yield server.client.publish(server.url, "seam", b"the-end")
        messages = yield ws.wait_for(total + 1)
        self.assertEqual(len(messages), total + 1)
        self.assertEqual(messages[-1], b"the-end")

    @inlineCallbacks
    def test_since_a_persisted_timestamp(self) -> None:
        """
        since=T gives the persisted messages stamped after T (not T's
        own), then live ones.
        """
        server = _PersistingServer(self)
        for i in range(10):
            yield server.client.publish(server.url, "mid", b"m%d" % i)
        yield bounded(server.persister.flushed())
        stamps = [parse(t).timestamp for t in _lines(server.path("mid"))]
        self.assertEqual(len(stamps), 10)
        ws = yield server.client.connect(server.url, "/sub", "mid&since=%d" % stamps[3])
        yield server.client.publish(server.url, "mid", b"live")
        messages = yield ws.wait_for(7)
        self.assertEqual(messages, [b"m%d" % i for i in range(4, 10)] + [b"live"])

    @inlineCallbacks
    def test_long_replay_in_chunks(self) -> None:
        """
        A replay of many chunks, more than the connection buffers at once
        (so it pauses and resumes), arrives whole and in order, over
        WebSocket and over a plain stream, followed by a live message.
        """
        server = _PersistingServer(self)
        count = 1500
        payloads = [b"%05d" % i + b"x" * 1019 for i in range(count)]
        for payload in payloads:
            server.persister.append("long", payload)
        ws = yield server.client.connect(server.url, "/sub", "long&since=0")
        stream = yield _open_stream(self, server, {"topic": "long", "since": "0"})
        yield server.client.publish(server.url, "long", b"%05d" % count + b"x" * 1019)
        messages = yield ws.wait_for(count + 1)
        self.assertEqual(messages[:count], payloads)
        self.assertEqual(messages[count][:5], b"%05d" % count)
        data = yield stream.wait_for((count + 1) * 1024)
        self.assertEqual(data[: count * 1024], b"".join(payloads))
        self.assertEqual(len(data), (count + 1) * 1024)

    @inlineCallbacks
    def test_replay_files_of_earlier_runs(self) -> None:
        """
        A fresh server that has published nothing replays the files it
        finds, asim/mq's included (the Go-made fixture), then live ones.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        shutil.copy(os.path.join(REPO, "tests", "fixtures", "asim-mq", "plain.mq"), directory)
        os.rename(os.path.join(directory, "plain.mq"), os.path.join(directory, "example.mq"))
        server = _PersistingServer(self, directory=directory)
        ws = yield server.client.connect(server.url, "/sub", "example&since=0")
        yield server.client.publish(server.url, "example", b"live")
        messages = yield ws.wait_for(8)
        self.assertEqual(messages, PAYLOADS + [b"live"])
        # The live message joined asim/mq's lines in the same file, later.
        yield bounded(server.persister.flushed())
        stamps = [parse(t).timestamp for t in _lines(server.path("example"))]
        self.assertEqual(len(stamps), 8)
        self.assertEqual(stamps, sorted(stamps))

    @inlineCallbacks
    def test_since_future_is_live_only(self) -> None:
        """
        since after every persisted message: live messages only.
        """
        server = _PersistingServer(self)
        yield server.client.publish(server.url, "f", b"old")
        ws = yield server.client.connect(server.url, "/sub", "f&since=%d" % (server.persister.last_timestamp + 10**12))
        yield server.client.publish(server.url, "f", b"new")
        self.assertEqual((yield ws.wait_for(1)), [b"new"])

    @inlineCallbacks
    def test_client_library_since(self) -> None:
        """
        The client library's subscribe(topic, since=0) gets the persisted
        messages, then live ones.
        """
        server = _PersistingServer(self)
        for payload in (b"one", b"two"):
            yield server.client.publish(server.url, "lib", payload)
        c = client.new(servers=[server.url], reactor=reactor)
        self.addCleanup(c.close)
        sub = yield bounded(c.subscribe("lib", since=0))
        yield c.publish("lib", b"three")
        got = []
        for _ in range(3):
            got.append((yield bounded(sub.get())))
        self.assertEqual(got, [b"one", b"two", b"three"])

    @inlineCallbacks
    def test_cli_since(self) -> None:
        """
        memmq --client --subscribe --since=0 prints the persisted messages.
        """
        server = _PersistingServer(self)
        for payload in (b"alpha", b"beta"):
            yield server.client.publish(server.url, "cli", payload)
        proto = _Lines(2)
        spawn(
            self,
            proto,
            [
                sys.executable,
                "-m",
                "memmq",
                "--client",
                "--topic=cli",
                "--subscribe",
                "--since=0",
                f"--servers=127.0.0.1:{server.server.port}",
            ],
        )
        out = yield bounded(proto.enough)
        self.assertEqual(out.splitlines()[:2], [b"alpha", b"beta"])


class _Lines(ProcessProtocol):
    def __init__(self, count: int) -> None:
        self.count = count
        self.out = b""
        self.enough: Deferred = Deferred()
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self.out.count(b"\n") >= self.count and not self.enough.called:
            self.enough.callback(self.out)

    def processEnded(self, reason) -> None:
        if not self.enough.called:
            self.enough.errback(RuntimeError(f"ended early: {self.out!r}"))
        self.ended.callback(None)


_WS_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


class NoPersistTests(TestCase):
    """
    A server without --persist refuses since, saying why.
    """

    @inlineCallbacks
    def test_since_refused(self) -> None:
        """
        since without --persist is a 400 with the reason, on a plain
        stream and on a WebSocket handshake; a malformed since is a 400.
        """
        server = RunningServer(self)
        for headers in ({}, _WS_HEADERS):
            response = yield bounded(
                server.client.http.get(server.url + "/sub", params={"topic": "t", "since": "0"}, headers=headers)
            )
            body = yield bounded(treq.content(response))
            self.assertEqual(response.code, 400, body)
            self.assertIn(b"--persist", body)
        persisting = _PersistingServer(self)
        for headers in ({}, _WS_HEADERS):
            response = yield bounded(
                persisting.client.http.get(
                    persisting.url + "/sub", params={"topic": "t", "since": "yesterday"}, headers=headers
                )
            )
            body = yield bounded(treq.content(response))
            self.assertEqual(response.code, 400, body)
            self.assertIn(b"nanoseconds", body)


class DiskErrorTests(TestCase):
    """
    A directory that cannot be written: the server goes on serving.
    """

    @inlineCallbacks
    def test_durable_507(self) -> None:
        """
        In durable mode a publish that cannot be persisted is a 507 with a
        one-line reason; the server still serves subscribers and health.
        """
        server = _PersistingServer(self, sync=True)
        code, _ = yield server.client.publish(server.url, "d", b"kept")
        self.assertEqual(code, 200)
        self.assertEqual(len(_lines(server.path("d"))), 1)
        ws = yield server.client.subscribe(server.url, "d")
        shutil.rmtree(server.directory)
        code, body = yield server.client.publish(server.url, "d", b"not kept")
        self.assertEqual(code, 507)
        self.assertEqual(body.count(b"\n"), 1)
        self.assertIn(b"not persisted", body)
        self.assertIn(b"No such file or directory", body)
        self.assertEqual((yield ws.wait_for(1)), [b"not kept"])
        response = yield bounded(server.client.http.get(server.url + "/health"))
        self.assertEqual(response.code, 200)
        yield bounded(treq.content(response))

    @inlineCallbacks
    def test_durable_websocket_publisher_closed_1011(self) -> None:
        """
        In durable mode a WebSocket publisher, which gets no reply per
        message, has its connection closed with 1011 and the reason when a
        message cannot be persisted.
        """
        server = _PersistingServer(self, sync=True)
        subscriber = yield server.client.subscribe(server.url, "w")
        publisher = yield server.client.connect(server.url, "/pub", "w")
        publisher.sendMessage(b"kept", isBinary=True)
        yield subscriber.wait_for(1)
        yield bounded(server.persister.flushed())
        self.assertEqual(len(_lines(server.path("w"))), 1)
        self.assertIsNone(publisher.close_code)
        shutil.rmtree(server.directory)
        publisher.sendMessage(b"lost", isBinary=True)
        code = yield publisher.wait_closed()
        self.assertEqual(code, 1011)

    @inlineCallbacks
    def test_unwritable_logged_once(self) -> None:
        """
        In the default mode publishes are answered 200; the failing file
        is logged once with its reason, and counted in /metrics and /stats.
        """
        events = logged_events(self)
        server = _PersistingServer(self)
        # The directory replaced by a regular file: no one, root included
        # (for whom permission bits deny nothing), can create a file in it.
        shutil.rmtree(server.directory)
        with open(server.directory, "w"):
            pass
        for i in range(5):
            code, _ = yield server.client.publish(server.url, "u", b"%d" % i)
            self.assertEqual(code, 200)
        yield bounded(server.persister.flushed())
        for i in range(5):
            yield server.client.publish(server.url, "u", b"again %d" % i)
        yield bounded(server.persister.flushed())
        errors = [e for e in events if "cannot write" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["path"], server.path("u"))
        self.assertEqual(errors[0]["reason"], "Not a directory")
        response = yield bounded(server.client.http.get(server.url + "/metrics"))
        metrics = yield bounded(treq.content(response))
        self.assertIn(b"memmq_persist_errors_total 10.0", metrics)
        self.assertIn(b"memmq_persist_failing_files 1.0", metrics)
        response = yield bounded(server.client.http.get(server.url + "/stats"))
        stats = yield bounded(treq.json_content(response))
        self.assertEqual(stats["persist"]["errors"], 10)
        self.assertEqual(stats["persist"]["failing"][0]["reason"], "Not a directory")


class ProcessTests(TestCase):
    """
    The memmq command with --persist, stopped by SIGTERM and by SIGKILL.
    """

    @inlineCallbacks
    def _start(self, *args: str):
        directory = os.path.abspath(self.mktemp())
        proto = ServerProcess.spawn(
            self, ["-m", "memmq", "--address=127.0.0.1:0", "--persist", f"--persist_dir={directory}", *args]
        )
        port = yield proto.wait_listening()
        c = client.new(servers=[f"127.0.0.1:{port}"], reactor=reactor, retries=0)
        self.addCleanup(c.close)
        return proto, c, os.path.join(directory, "p.mq")

    @inlineCallbacks
    def test_sigterm_writes_everything(self) -> None:
        """
        With an interval too long to have written anything, SIGTERM still
        leaves every acknowledged message in the file, in order.
        """
        proto, c, path = yield self._start("--persist_flush_interval=3600")
        for i in range(100):
            yield bounded(c.publish("p", b"%d" % i))
        self.assertEqual(_lines(path), [])
        status = yield proto.terminate()
        self.assertEqual(status, 0, proto.output)
        self.assertEqual([parse(t).payload for t in _lines(path)], [b"%d" % i for i in range(100)])

    @inlineCallbacks
    def test_durable_survives_sigkill(self) -> None:
        """
        In durable mode every publish answered 200 is in the file when the
        process is killed with SIGKILL right after.
        """
        proto, c, path = yield self._start("--persist_sync", "--persist_flush_interval=3600")
        results = yield bounded(DeferredList([c.publish("p", b"%d" % i) for i in range(50)], consumeErrors=True))
        self.assertTrue(all(ok for ok, _ in results), results)
        proto.transport.signalProcess("KILL")
        yield bounded(proto.ended)
        self.assertEqual(sorted(parse(t).payload for t in _lines(path)), sorted(b"%d" % i for i in range(50)))


class OptionTests(TestCase):
    """
    Bad persistence options: one line on stderr, exit status 2.
    """

    def test_bad_values(self) -> None:
        """
        Each bad value or combination is refused with one line naming the
        option.
        """
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        a_file = os.path.join(base, "file")
        with open(a_file, "w"):
            pass
        cases = [
            (["--persist", "--persist_flush_interval=0"], "--persist_flush_interval"),
            (["--persist", "--persist_flush_interval=soon"], "--persist_flush_interval"),
            (["--persist_sync"], "--persist_sync goes with --persist"),
            (["--persist_dir=/tmp"], "--persist_dir goes with --persist"),
            (["--persist", "--proxy", "--servers=127.0.0.1:1"], "--proxy"),
            (["--persist", f"--persist_dir={a_file}/under"], "--persist_dir"),
            (["--persist", f"--persist_dir={a_file}"], "--persist_dir"),
            (["--client", "--topic=t", "--publish", "--since=5"], "--since"),
            (["--client", "--topic=t", "--subscribe", "--since=-1"], "--since"),
        ]
        for args, expected in cases:
            result = run_memmq("--address=127.0.0.1:0", *args) if "--client" not in args else run_memmq(*args)
            stderr = result.stderr.decode()
            self.assertEqual(result.returncode, 2, (args, stderr))
            self.assertEqual(stderr.count("\n"), 1, (args, stderr))
            self.assertTrue(stderr.startswith("memmq: "), (args, stderr))
            self.assertIn(expected, stderr, args)


class DurableGRPCTests(TestCase):
    """
    gRPC Pub in durable mode: a message that cannot be persisted is
    DATA_LOSS (HTTP's 507), which a client does not ask again.
    """

    timeout = 60

    @inlineCallbacks
    def test_data_loss(self) -> None:
        from tests.grpc_support import RawClient, RunningGRPC

        server = _PersistingServer(self, sync=True)
        front = RunningGRPC(self, server.broker, certificate=server.server.certificate)
        raw = RawClient(self, front.port, server.server.certificate)
        yield bounded(raw.publish("g", b"kept"))
        self.assertEqual(len(_lines(server.path("g"))), 1)
        shutil.rmtree(server.directory)
        error = yield self.assertFailure(bounded(raw.publish("g", b"not kept")), grpc.aio.AioRpcError)
        self.assertEqual(error.code(), grpc.StatusCode.DATA_LOSS)
        self.assertIn("not persisted", error.details())


class WiringTests(TestCase):
    """
    makeService hands the front-end its replay source and the broker its
    drop reporter; nothing is discovered on the broker.
    """

    def _site(self, *args: str):
        from memmq.tap import Options, makeService

        options = Options()
        options.parseOptions(["--address=127.0.0.1:0", *args])
        root = makeService(options, reactor)
        return root, root.getServiceNamed("http").site

    def test_persisting(self) -> None:
        """
        With --persist, the site replays from the persister.
        """
        root, site = self._site("--persist", f"--persist_dir={os.path.abspath(self.mktemp())}")
        persister = [service for service in root if isinstance(service, Persister)]
        self.assertEqual(len(persister), 1)
        self.assertIs(site.replay, persister[0])
        self.assertIsNotNone(site.broker.local.on_drop)

    def test_not_persisting(self) -> None:
        """
        Without --persist, there is nothing to replay from.
        """
        _, site = self._site()
        self.assertIsNone(site.replay)
        self.assertIsNotNone(site.broker.on_drop)
