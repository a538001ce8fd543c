"""
End-to-end tests of C{--persist} with C{--workers} (README: Workers,
Persistence): a real parent and its workers on loopback.  Each topic's file
is written by its owner (L{memmq.workers.persist.owner_of}); the tests pin
which worker a connection landed on from C{/stats} (its per-worker count of
connections or subscribers) so that both paths, owner and not, are taken.
"""

from __future__ import annotations

import os
import signal
import struct

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.errors import BackplaneUnavailable
from memmq.mux_protocol import SUBPROTOCOL
from memmq.persist.names import file_name
from memmq.persist.record import parse
from memmq.workers.persist import WorkerReplaySource, owner_of
from tests.support import (
    START,
    WAIT,
    CertificateFiles,
    MuxCollector,
    ServerProcess,
    TLSClient,
    bounded,
    sleep,
    until,
    whole_stats,
)


def _topics(prefix: str, each: int = 2, workers: int = 2) -> list[list[str]]:
    """
    C{each} topics owned by each worker: the list of worker C{i}'s at C{i}.
    """
    owned: list[list[str]] = [[] for _ in range(workers)]
    n = 0
    while any(len(topics) < each for topics in owned):
        topic = f"{prefix}{n}"
        if len(owned[owner_of(topic, workers)]) < each:
            owned[owner_of(topic, workers)].append(topic)
        n += 1
    return owned


def busy_lines(server) -> int:
    """
    The lines written while a worker was kept busy (L{_Server.keep_busy}).
    """
    return sum(len(server.lines(topics[0])) for topics in _topics("busy"))


class _EventStream(Protocol):
    """
    A Server-Sent Events subscriber as a browser reconnecting with
    C{Last-Event-ID} is: the raw request, and the events as they come.
    """

    def __init__(self, topic: str, last_event_id: int) -> None:
        self.body = b""
        self._request = (
            f"GET /sub?topic={topic} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            f"Last-Event-ID: {last_event_id}\r\n\r\n"
        ).encode()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.body += data

    def events(self) -> list[tuple[int | None, bytes]]:
        """
        (id or None, data) of each event that carries data.
        """
        found = []
        for block in self.body.split(b"\r\n\r\n", 1)[-1].split(b"\n\n"):
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            if b"data" in fields:
                found.append((int(fields[b"id"]) if b"id" in fields else None, fields[b"data"]))
        return found


class _Server:
    """
    A persisting server run with two workers, and a client that trusts it.
    """

    def __init__(self, testcase, *extra: str) -> None:
        self.testcase = testcase
        self.directory = os.path.abspath(testcase.mktemp())
        os.makedirs(self.directory)
        self.files = CertificateFiles(testcase)
        self.process = ServerProcess.spawn(testcase, [
            "-m", "memmq", "--address=127.0.0.1:0", "--workers=2", "--persist", f"--persist_dir={self.directory}",
            f"--cert_file={self.files.cert_file}", f"--key_file={self.files.key_file}", *extra,
        ])
        self.client = TLSClient(testcase, self.files.certificate)
        # worker -> a memmq.v1 connection on it, to keep it busy
        self.loaders: dict[int, MuxCollector] = {}

    @inlineCallbacks
    def start(self):
        port = yield self.process.wait_listening()
        self.url = f"https://127.0.0.1:{port}"
        # Every worker reaches the other both ways.
        yield self.stats()

    def stats(self):
        """
        C{/stats} once it has both workers' figures (L{whole_stats}): a
        worker kept busy (L{keep_busy}) may be slow to answer its peer.
        """
        return whole_stats(self.client, self.url, 2)

    def lines(self, topic: str) -> list:
        return self.lines_of(os.path.join(self.directory, file_name(topic)))

    @staticmethod
    def lines_of(path: str) -> list:
        try:
            with open(path, "rb") as f:
                return [parse(line) for line in f.read().splitlines()]
        except FileNotFoundError:
            return []

    @inlineCallbacks
    def pinned(self, figure: str, open_one, each: int = 1, limit: int = 48):
        """
        Call C{open_one()} (a Deferred of a connection) until C{each}
        connections have landed on every worker, as told by the workers'
        C{figure} in C{/stats}; fire with the connections by worker.

        The kernel may hand a run of connections to the same worker: while
        one worker has enough, it is kept busy (a burst of publishes on a
        memmq.v1 connection it holds) so that the other accepts.
        """
        by_worker: list[list] = [[], []]
        for _ in range(limit):
            before = [w[figure] for w in (yield self.stats())["workers"]]
            for worker, connections in enumerate(by_worker):
                if len(connections) >= each:
                    self.keep_busy(worker)
            connection = yield open_one()
            for _ in range(int(WAIT / 0.05)):
                workers = (yield self.stats())["workers"]
                grew = [i for i, w in enumerate(workers) if w[figure] > before[i]]
                if len(grew) == 1:
                    break
                yield sleep(0.05)
            else:
                raise AssertionError(f"no worker took the connection: {workers}")
            if len(by_worker[grew[0]]) < each:
                by_worker[grew[0]].append(connection)
            elif isinstance(connection, MuxCollector):
                self.loaders.setdefault(grew[0], connection)
            if all(len(connections) >= each for connections in by_worker):
                return by_worker
        raise AssertionError(f"{limit} connections did not land on every worker: {by_worker}")

    def keep_busy(self, worker: int) -> None:
        loader = self.loaders.get(worker)
        if loader is not None:
            topic = _topics("busy")[worker][0]
            for _ in range(400):
                loader.publish(topic, b"x" * 1024)

    @inlineCallbacks
    def mux(self):
        by_worker = yield self.pinned("connections", lambda: self.client.connect(
            self.url, "/sub", None, protocol=MuxCollector, protocols=[SUBPROTOCOL]
        ))
        for worker, (connection,) in enumerate(by_worker):
            self.loaders.setdefault(worker, connection)
        return by_worker

    def written(self) -> int:
        """
        The lines of every file.
        """
        return sum(len(self.lines_of(os.path.join(self.directory, name))) for name in os.listdir(self.directory))

    def event_streams(self, topic: str, last_event_id: int):
        def open_one():
            endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", int(self.url.rsplit(":", 1)[1]),
                                          self.client.tls_options())
            stream = _EventStream(topic, last_event_id)
            self.testcase.addCleanup(lambda: stream.transport and stream.transport.abortConnection())
            return bounded(connectProtocol(endpoint, stream))

        return self.pinned("subscribers", open_one)

    def subscribers(self, query: str, each: int = 1):
        return self.pinned("subscribers", lambda: self.client.subscribe(self.url, query), each)


class OrderTests(TestCase):
    """
    Each topic's file holds every message once, in one order, with strictly
    increasing stamps, whichever worker took the publish; every subscriber
    sees that order.
    """

    timeout = 180

    @inlineCallbacks
    def test_one_order(self):
        """
        Two publishers on each worker publish to topics of both owners;
        subscribers of those topics on both workers each see every message
        once, in the file's order; each publisher's order is kept; stamps
        increase; the persistence figures are the whole server's.
        """
        server = _Server(self, "--persist_flush_interval=0.05")
        yield server.start()
        owned = _topics("o")
        topics = owned[0] + owned[1]
        watched = [owned[0][0], owned[1][0]]
        subscribers = {}
        for topic in watched:
            subscribers[topic] = [s for (s,) in (yield server.subscribers(topic))]
        publishers = [p for each in (yield server.mux()) for p in each]
        count = 60
        for i in range(count):
            for p, publisher in enumerate(publishers):
                for topic in topics:
                    publisher.publish(topic, b"%d:%d" % (p, i))
        for p, publisher in enumerate(publishers):
            publisher.publish(topics[0], b"done %d" % p, ack=1)
            yield publisher.wait_replies(1)
        total = count * len(publishers)
        yield until(lambda: all(len(server.lines(t)) >= total + (t == topics[0]) * len(publishers) for t in topics), 60)
        for topic in topics:
            records = [r for r in server.lines(topic) if not r.payload.startswith(b"done")]
            self.assertEqual(len(records), total)
            stamps = [r.timestamp for r in server.lines(topic)]
            self.assertEqual(stamps, sorted(set(stamps)))
            payloads = [r.payload for r in records]
            self.assertEqual(len(set(payloads)), total)
            for p in range(len(publishers)):
                mine = [x for x in payloads if x.startswith(b"%d:" % p)]
                self.assertEqual(mine, [b"%d:%d" % (p, i) for i in range(count)])
        for topic in watched:
            expected = [r.payload for r in server.lines(topic)]
            for subscriber in subscribers[topic]:
                yield subscriber.wait_for(len(expected), 60)
                self.assertEqual(subscriber.messages, expected)
        yield until(lambda: server.written() == total * len(topics) + len(publishers) + busy_lines(server))
        stats = yield server.stats()
        self.assertEqual(stats["persist"]["written"], server.written())
        self.assertGreater(stats["cross_worker_messages"], 0)


class DurableTests(TestCase):
    """
    C{--persist_sync} across workers: a publish is answered once its line is
    on disk, whichever worker took it.
    """

    timeout = 180

    @inlineCallbacks
    def test_answered_once_on_disk(self):
        """
        After each acknowledgement (memmq.v1, pinned on each worker) and
        each HTTP 200, the message is in its topic's file, for topics of
        both owners.
        """
        server = _Server(self, "--persist_sync")
        yield server.start()
        owned = _topics("d", each=1)
        topics = owned[0] + owned[1]
        publishers = [p for each in (yield server.mux()) for p in each]
        n = 0
        for publisher in publishers:
            for topic in topics:
                for _ in range(5):
                    n += 1
                    publisher.publish(topic, b"m%d" % n, ack=n)
                    replies = yield publisher.wait_replies(len(publisher.replies) + 1)
                    self.assertEqual(replies[-1], {"op": "ok", "id": n})
                    self.assertEqual(server.lines(topic)[-1].payload, b"m%d" % n)
        clients = [TLSClient(self, server.files.certificate) for _ in range(4)]
        for client in clients:
            for topic in topics:
                n += 1
                code, _ = yield client.publish(server.url, topic, b"m%d" % n)
                self.assertEqual(code, 200)
                self.assertEqual(server.lines(topic)[-1].payload, b"m%d" % n)
        stats = yield server.stats()
        self.assertEqual(stats["persist"]["written"], n + busy_lines(server))
        self.assertEqual(stats["persist"]["syncs"] > 0, True)


class ReplayTests(TestCase):
    """
    C{since} replays the same from any worker, then live messages with no
    gap and no duplicate, while messages keep coming.
    """

    timeout = 180

    @inlineCallbacks
    def test_since_from_each_worker(self):
        """
        While publishers on both workers publish, a subscriber asking for
        C{since} on each worker (one the topic's owner, one not; both
        already following the topic) gets exactly the file's messages after
        C{since}, in its order.
        """
        # Buffers that hold a replay's worth of live messages: a drop for a
        # slow subscriber is not what this test is about.
        server = _Server(self, "--persist_flush_interval=0.05", "--max_buffered_messages=1000000")
        yield server.start()
        topic = _topics("r", each=1)[0][0]
        # Both workers follow the topic already.
        yield server.subscribers(topic)
        publishers = [p for each in (yield server.mux()) for p in each]
        for i in range(20):
            for p, publisher in enumerate(publishers):
                publisher.publish(topic, b"before %d:%d" % (p, i))
        for p, publisher in enumerate(publishers):
            publisher.publish(topic, b"sync %d" % p, ack=1)
            yield publisher.wait_replies(1)
        yield until(lambda: len(server.lines(topic)) == 42)
        since = server.lines(topic)[9].timestamp
        going = [True]

        @inlineCallbacks
        def keep_publishing():
            i = 0
            while going[0]:
                # Bursts: messages in flight between the workers while the
                # replaying subscriptions are made.
                for _ in range(10):
                    for p, publisher in enumerate(publishers):
                        publisher.publish(topic, b"live %d:%d" % (p, i))
                    i += 1
                yield sleep(0.01)

        publishing = keep_publishing()
        replaying = yield server.subscribers(f"{topic}&since={since}", each=3)
        streams = [stream for (stream,) in (yield server.event_streams(topic, since))]
        going[0] = False
        yield publishing
        for p, publisher in enumerate(publishers):
            publisher.publish(topic, b"end %d" % p, ack=2)
            yield publisher.wait_replies(2)

        def ends(payloads) -> int:
            return sum(payload.startswith(b"end") for payload in payloads)

        yield until(lambda: ends(r.payload for r in server.lines(topic)) == 2)
        expected = [r.payload for r in server.lines(topic) if r.timestamp > since]
        self.assertGreater(len(expected), 32)
        for subscriber in replaying[0] + replaying[1]:
            yield until(lambda s=subscriber: ends(s.messages) == 2, 60)
        self.assertEqual((yield server.stats())["dropped"], 0)
        for subscriber in replaying[0] + replaying[1]:
            self.assertEqual(subscriber.messages, expected)
        stamps = {r.payload: r.timestamp for r in server.lines(topic)}
        for stream in streams:
            yield until(lambda s=stream: ends(data for _, data in s.events()) == 2, 60)
            events = stream.events()
            self.assertEqual([data for _, data in events], expected)
            # Live events carry the file's stamp as their id, on any worker.
            live = [(stamp, data) for stamp, data in events if stamp is not None]
            self.assertTrue(live)
            self.assertEqual(live, [(stamps[data], data) for _, data in live])


class PatternReplayTests(TestCase):
    """
    A pattern's replay on any worker reads the files of every owner, each
    up to its owner's seam, then goes on live: every message once, each
    topic's in its file's order.
    """

    timeout = 180

    @inlineCallbacks
    def test_pattern_since_from_each_worker(self):
        """
        Topics of both owners under one pattern: a subscriber asking for
        the pattern since a stamp, on each worker, while publishers on both
        workers go on, gets each message after it once, in order per topic.
        """
        server = _Server(self, "--persist_flush_interval=0.05", "--max_buffered_messages=1000000")
        yield server.start()
        owned = _topics("pr.", each=1)
        topics = owned[0] + owned[1]
        publishers = [p for each in (yield server.mux()) for p in each]

        def publish_all(label: bytes, count: int) -> None:
            for i in range(count):
                for p, publisher in enumerate(publishers):
                    for topic in topics:
                        publisher.publish(topic, b"%s %s %d:%d" % (label, topic.encode(), p, i))

        publish_all(b"before", 10)
        for p, publisher in enumerate(publishers):
            publisher.publish(topics[0], b"sync %s %d" % (topics[0].encode(), p), ack=1)
            yield publisher.wait_replies(1)
        yield until(lambda: sum(len(server.lines(t)) for t in topics) == 10 * 2 * 2 + 2)
        since = sorted(r.timestamp for t in topics for r in server.lines(t))[15]
        replaying = yield server.pinned("subscribers", lambda: server.client.connect(
            server.url, f"/sub?pattern=pr.*&since={since}", None
        ), 2)
        publish_all(b"live", 20)
        for p, publisher in enumerate(publishers):
            for topic in topics:
                publisher.publish(topic, b"end %s %d" % (topic.encode(), p), ack=2)
            yield publisher.wait_replies(3)
        # Each topic's file has every publisher's last message: all of
        # theirs before it (a file's order is each publisher's).
        yield until(lambda: all(sum(r.payload.startswith(b"end") for r in server.lines(t)) == 2 for t in topics))
        expected = {t: [r.payload for r in server.lines(t) if r.timestamp > since] for t in topics}
        total = sum(len(payloads) for payloads in expected.values())
        for subscriber in replaying[0] + replaying[1]:
            yield until(lambda s=subscriber: len(s.messages) >= total, 60)
            got = subscriber.messages
            self.assertEqual(len(got), total)
            for topic in topics:
                mine = set(expected[topic])
                self.assertEqual([m for m in got if m in mine], expected[topic])


class FaultTests(TestCase):
    """
    A worker killed outright: publishes of the topics it owns fail with 503
    (never answered and lost) until it is back; SIGTERM loses nothing that
    was answered.
    """

    timeout = 180

    @inlineCallbacks
    def test_owner_killed(self):
        """
        kill -9 of a topic's owner: the other worker answers 503 for that
        topic (and 200 for its own) until the owner serves again; every
        message answered 200 is in the file.
        """
        server = _Server(self, "--persist_sync")
        yield server.start()
        owned = _topics("k", each=1)
        victim = next(w for w in (yield server.stats())["workers"] if w["worker"] == 0)
        answered: list[bytes] = []
        codes: list[int] = []

        @inlineCallbacks
        def publish(topic: str, payload: bytes):
            # A fresh client each time: a pooled connection to the killed
            # worker would fail, which says nothing of the other.
            client = TLSClient(self, server.files.certificate)
            try:
                code, _ = yield client.publish(server.url, topic, payload)
            except Exception:
                return None
            if code == 200:
                answered.append(payload)
            return code

        os.kill(victim["pid"], signal.SIGKILL)
        n = 0
        for _ in range(200):
            n += 1
            code = yield publish(owned[0][0], b"k%d" % n)
            codes.append(code)
            if code == 503:
                break
            yield sleep(0.02)
        self.assertIn(503, codes)
        self.assertNotIn(500, codes)
        # The other worker's own topics are served meanwhile.
        for _ in range(50):
            n += 1
            code = yield publish(owned[1][0], b"k%d" % n)
            if code == 200:
                break
        self.assertEqual(code, 200)
        yield until(lambda: b"worker 0 (pid %d) died" % victim["pid"] in server.process.output)
        # Until it has started again.
        for _ in range(int(START / 0.05)):
            n += 1
            code = yield publish(owned[0][0], b"k%d" % n)
            codes.append(code)
            if code == 200:
                break
            self.assertIn(code, (503, None))
            yield sleep(0.05)
        self.assertEqual(code, 200)
        written = {r.payload for t in (owned[0][0], owned[1][0]) for r in server.lines(t)}
        self.assertEqual([p for p in answered if p not in written], [])

    @inlineCallbacks
    def test_sigterm_loses_nothing(self):
        """
        Messages answered (HTTP 200, memmq.v1 acknowledgements on both
        workers) but not yet written (a long flush interval) are in their
        files once SIGTERM has stopped the server, which exits 0.
        """
        server = _Server(self, "--persist_flush_interval=60")
        yield server.start()
        owned = _topics("s", each=1)
        topics = owned[0] + owned[1]
        publishers = [p for each in (yield server.mux()) for p in each]
        sent: dict[str, list[bytes]] = {topic: [] for topic in topics}
        ack = 0
        for p, publisher in enumerate(publishers):
            for topic in topics:
                for i in range(20):
                    ack += 1
                    payload = b"%d:%d" % (p, i)
                    publisher.publish(topic, payload, ack=ack)
                    sent[topic].append(payload)
        for publisher in publishers:
            yield publisher.wait_replies(20 * len(topics))
            self.assertEqual({r["op"] for r in publisher.replies}, {"ok"})
        for topic in topics:
            for i in range(5):
                code, _ = yield server.client.publish(server.url, topic, b"http %d" % i)
                self.assertEqual(code, 200)
                sent[topic].append(b"http %d" % i)
        status = yield server.process.terminate()
        self.assertEqual(status, 0, server.process.output[-2000:])
        for topic in topics:
            self.assertEqual(sorted(r.payload for r in server.lines(topic)), sorted(sent[topic]))


class _Writer:
    """
    The local writer as a replay source sees it: its seam is 50.
    """

    def settle(self, subject):
        return succeed(50)

    seam = flushed = read = read_pattern = None


class _Mesh:
    """
    The peers: worker 1 answers a seam of 70, worker 2 cannot be reached.
    """

    def __init__(self) -> None:
        self.asked: list[int] = []

    def call(self, peer, what, body, message=False):
        self.asked.append(peer)
        if peer == 2:
            return fail(BackplaneUnavailable("worker 2 of this server cannot be reached (restarting?)"))
        return succeed(struct.pack(">Q", 70))


class SourceTests(SynchronousTestCase):
    """
    A worker's replay source: a topic's seam is its owner's; a pattern's
    are every worker's, each topic its owner's.
    """

    def test_topic_and_pattern(self) -> None:
        """
        Worker 0 of 2: a topic it owns settles locally, one worker 1 owns
        asks worker 1; a pattern asks worker 1 and answers each topic's
        owner's seam, resuming from the lowest.
        """
        from memmq.patterns import parse_pattern
        from memmq.persist.replay import Seams

        mesh = _Mesh()
        source = WorkerReplaySource(_Writer(), mesh, 0, 2)
        mine, theirs = _topics("q", each=1)
        self.assertEqual(self.successResultOf(source.settle(mine[0])), 50)
        self.assertEqual(mesh.asked, [])
        self.assertEqual(self.successResultOf(source.settle(theirs[0])), 70)
        seams = self.successResultOf(source.settle(parse_pattern(">")))
        self.assertIsInstance(seams, Seams)
        self.assertEqual((seams(mine[0]), seams(theirs[0]), seams.lowest), (50, 70, 50))
        self.assertEqual(mesh.asked, [1, 1])

    def test_unreachable(self) -> None:
        """
        A pattern's replay fails, with the one-line reason, when a worker
        cannot be reached.
        """
        from memmq.patterns import parse_pattern

        source = WorkerReplaySource(_Writer(), _Mesh(), 0, 3)
        failure = self.failureResultOf(source.settle(parse_pattern("q.>")), BackplaneUnavailable)
        self.assertIn("worker 2", failure.getErrorMessage())

    def test_owner_stable(self) -> None:
        """
        The owner is CRC-32 of the topic's UTF-8 modulo the workers: the
        same in every process and run.
        """
        self.assertEqual([owner_of(t, 4) for t in ("a", "b", "t\u00e9", "x.y")], [3, 1, 3, 2])
