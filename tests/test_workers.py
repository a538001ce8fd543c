"""
End-to-end tests of C{--workers} (README: Workers): a real parent process
and its real workers on loopback; the tests publish and subscribe as any
client would, and find which worker a connection landed on from C{/stats}
(its per-worker figures).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import treq
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import WAIT, CertificateFiles, ServerProcess, TLSClient, bounded, sleep, until


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


class _Server:
    """
    A server run with C{--workers}, and a client that trusts it.
    """

    def __init__(self, testcase, workers: int = 2, *extra: str) -> None:
        self.files = CertificateFiles(testcase)
        self.process = ServerProcess.spawn(testcase, [
            "-m", "memmq", "--address=127.0.0.1:0", f"--workers={workers}",
            f"--cert_file={self.files.cert_file}", f"--key_file={self.files.key_file}", *extra,
        ])
        self.client = TLSClient(testcase, self.files.certificate)
        self.count = workers

    @inlineCallbacks
    def start(self):
        port = yield self.process.wait_listening()
        self.url = f"https://127.0.0.1:{port}"

    @inlineCallbacks
    def stats(self):
        response = yield bounded(self.client.http.get(self.url + "/stats"))
        body = yield bounded(treq.content(response))
        return json.loads(body)

    @inlineCallbacks
    def whole(self):
        """
        C{/stats} once it has every worker's figures (a worker answers
        with its own alone while another has not joined it yet: just
        after a restart).
        """
        for _ in range(int(WAIT / 0.05)):
            stats = yield self.stats()
            if len(stats["workers"]) == self.count:
                return stats
            yield sleep(0.05)
        raise AssertionError(f"never every worker's figures: {stats}")

    @inlineCallbacks
    def subscribers_on(self, total: int):
        """
        Once the server has C{total} subscribers: each worker's count.
        """
        for _ in range(int(WAIT / 0.05)):
            stats = yield self.stats()
            if stats["subscribers"] == total and len(stats["workers"]) == self.count:
                return [w["subscribers"] for w in stats["workers"]]
            yield sleep(0.05)
        raise AssertionError(f"never {total} subscribers: {stats}")

    @inlineCallbacks
    def spread(self, topic: str, limit: int = 24, query: str | None = None):
        """
        Open subscribers of C{topic} (or of what C{query} names: a
        pattern, a group) until every worker has one more than before; fire
        with them.
        """
        stats = yield self.whole()
        before = stats["subscribers"]
        base = [w["subscribers"] for w in stats["workers"]]
        subscribers = []
        for _ in range(limit):
            if query is None:
                subscribers.append((yield self.client.subscribe(self.url, topic)))
            else:
                subscribers.append((yield self.client.connect(self.url, "/sub?" + query, None)))
            counts = yield self.subscribers_on(before + len(subscribers))
            if all(now > then for now, then in zip(counts, base, strict=True)):
                return subscribers
        raise AssertionError(f"{limit} subscribers all landed on some workers only: {counts}")


class DeliveryTests(TestCase):
    """
    One server seen from outside: a message published on any worker reaches
    every subscriber on every worker, once, in order.
    """

    timeout = 120

    @inlineCallbacks
    def test_across_workers_in_order(self):
        """
        Subscribers on both workers get every message of several concurrent
        publishers once, each publisher's in its order; the messages went
        between the workers (counted).
        """
        server = _Server(self)
        yield server.start()
        subscribers = yield server.spread("t")
        publishers = yield gatherResults([server.client.connect(server.url, "/pub", "t") for _ in range(4)])
        yield _probe(publishers, subscribers)
        count = 100
        _interleave(publishers, count)
        for subscriber in subscribers:
            yield until(lambda s=subscriber: len(_real(s.messages)) >= 4 * count, 90)
        yield sleep(0.2)
        for subscriber in subscribers:
            _per_publisher(self, subscriber, 4, count)
        stats = yield server.stats()
        self.assertGreater(stats["cross_worker_messages"], 0)

    @inlineCallbacks
    def test_no_interest_no_traffic(self):
        """
        Publishing to topics nobody follows, or followed on one worker only
        and published there, sends nothing between workers.
        """
        server = _Server(self)
        yield server.start()
        before = (yield server.stats())["cross_worker_messages"]
        for i in range(50):
            code, _ = yield server.client.publish(server.url, f"nobody-{i % 5}", b"x")
            self.assertEqual(code, 200)
        stats = yield server.stats()
        self.assertEqual(stats["cross_worker_messages"], before)
        self.assertEqual(stats["published"], 50)

    @inlineCallbacks
    def test_stats_add_up(self):
        """
        C{/stats} from any worker shows the whole server: its totals are
        the sums of the per-worker figures, its topics merged.
        """
        server = _Server(self)
        yield server.start()
        yield server.spread("s")
        for _ in range(10):
            yield server.client.publish(server.url, "s", b"x")
        stats = yield server.stats()
        workers = stats["workers"]
        self.assertEqual(stats["published"], 10)
        self.assertEqual(sum(w["published"] for w in workers), stats["published"])
        self.assertEqual(sum(w["subscribers"] for w in workers), stats["subscribers"])
        self.assertEqual(stats["topic_count"], 1)
        self.assertEqual(stats["topics"][0]["subscribers"], stats["subscribers"])
        self.assertEqual(stats["topics"][0]["published"], 10)
        response = yield bounded(server.client.http.get(server.url + "/metrics"))
        metrics = (yield bounded(treq.content(response))).decode()
        self.assertIn("memmq_messages_published_total 10.0", metrics)
        self.assertIn('memmq_worker_rss_bytes{worker="1"}', metrics)


@inlineCallbacks
def _probe(publishers, subscribers, topic_of=lambda p: "t"):
    """
    Publish probes from each WebSocket publisher until every one of
    C{subscribers} has had one of each: from then on, the workers the
    publishers landed on know what the subscribers' workers follow.
    """
    for p, publisher in enumerate(publishers):
        for _ in range(int(WAIT / 0.02)):
            if all(any(m.startswith(b"probe %d " % p) for m in s.messages) for s in subscribers):
                break
            publisher.sendMessage(b"probe %d " % p, isBinary=True)
            yield sleep(0.02)
        else:
            raise AssertionError(f"publisher {p}'s probes never reached every subscriber")


def _real(messages: list[bytes]) -> list[bytes]:
    return [m for m in messages if not m.startswith(b"probe")]


def _interleave(publishers, count: int) -> None:
    """
    Send C{count} messages C{b"P:I"} from each WebSocket publisher P,
    the publishers taking turns.
    """
    for i in range(count):
        for p, publisher in enumerate(publishers):
            publisher.sendMessage(b"%d:%d" % (p, i), isBinary=True)


def _per_publisher(testcase, subscriber, publishers: int, count: int) -> None:
    """
    C{subscriber} had every message L{_interleave} sent once, each
    publisher's in its order.
    """
    real = _real(subscriber.messages)
    testcase.assertEqual(len(real), publishers * count)
    for p in range(publishers):
        testcase.assertEqual(
            [m for m in real if m.startswith(b"%d:" % p)], [b"%d:%d" % (p, i) for i in range(count)]
        )


class PatternGroupTests(TestCase):
    """
    Patterns and queue groups across workers (README: Workers): a pattern
    subscriber on any worker matches; a queue group with members on several
    workers gets each message once in the whole server.
    """

    timeout = 120

    @inlineCallbacks
    def test_pattern_across_workers(self):
        """
        Pattern subscribers on both workers get every message to the
        topics their pattern matches, in order, published on either; a
        topic it does not match costs no traffic between workers.
        """
        server = _Server(self)
        yield server.start()
        subscribers = yield server.spread(None, query="pattern=p.*")
        publishers = yield gatherResults([server.client.connect(server.url, "/pub", f"p.{i}") for i in range(4)])
        yield _probe(publishers, subscribers)
        count = 50
        _interleave(publishers, count)
        for subscriber in subscribers:
            yield until(lambda s=subscriber: len(_real(s.messages)) >= 4 * count, 60)
        before = (yield server.stats())["cross_worker_messages"]
        self.assertGreater(before, 0)
        for i in range(20):
            code, _ = yield server.client.publish(server.url, f"q.{i}", b"x")
            self.assertEqual(code, 200)
        self.assertEqual((yield server.stats())["cross_worker_messages"], before)
        for subscriber in subscribers:
            _per_publisher(self, subscriber, 4, count)

    @inlineCallbacks
    def test_group_once_across_workers(self):
        """
        A queue group with members on both workers (some by topic, some by
        pattern) gets each of N messages exactly once across its members,
        every member a share; plain subscribers beside it get all N, in
        order per publisher.
        """
        server = _Server(self)
        yield server.start()
        members = yield server.spread(None, query="topic=j.x&group=g")
        members += yield server.spread(None, query="pattern=j.>&group=g")
        plain = yield server.spread("j.x")
        publishers = yield gatherResults([server.client.connect(server.url, "/pub", "j.x") for _ in range(4)])
        yield _probe(publishers, plain)
        count = 100
        _interleave(publishers, count)
        for subscriber in plain:
            yield until(lambda s=subscriber: len(_real(s.messages)) >= 4 * count, 60)
        yield until(lambda: sum(len(_real(m.messages)) for m in members) >= 4 * count, 30)
        yield sleep(0.3)
        shared = [m for member in members for m in _real(member.messages)]
        self.assertEqual(len(shared), 4 * count)
        self.assertEqual(sorted(shared), sorted(b"%d:%d" % (p, i) for p in range(4) for i in range(count)))
        self.assertTrue(all(_real(member.messages) for member in members), [len(m.messages) for m in members])
        for subscriber in plain:
            _per_publisher(self, subscriber, 4, count)
        stats = yield server.stats()
        self.assertEqual(stats["groups"], [{"group": "g", "members": len(members), "dropped": 0}])

    @inlineCallbacks
    def test_interest_removal_stops_traffic(self):
        """
        Once the pattern subscribers and group members on every worker have
        gone, publishing to their topics sends nothing between workers.
        """
        server = _Server(self)
        yield server.start()
        patterns = yield server.spread(None, query="pattern=r.>")
        subscribers = patterns + (yield server.spread(None, query="topic=r.x&group=h"))
        publisher = yield server.client.connect(server.url, "/pub", "r.x")
        yield _probe([publisher], patterns)
        self.assertGreater((yield server.stats())["cross_worker_messages"], 0)
        for subscriber in subscribers:
            subscriber.transport.loseConnection()
        yield gatherResults([s.wait_closed() for s in subscribers])
        yield server.subscribers_on(0)
        # The last interest frames cross while the figures do.
        yield sleep(0.2)
        before = (yield server.stats())["cross_worker_messages"]
        for i in range(20):
            publisher.sendMessage(b"late %d" % i, isBinary=True)
            code, _ = yield server.client.publish(server.url, "r.y", b"late")
            self.assertEqual(code, 200)
        self.assertEqual((yield server.stats())["cross_worker_messages"], before)


class OwnTrafficTests(TestCase):
    """
    With --proxy or --backplane, each worker is a proxy, or a node on
    Redis, of its own: its messages come and go there, and the mesh carries
    figures only.
    """

    timeout = 120

    def _publisher(self, server, topic: str):
        """
        A function publishing its payload to C{topic} through C{server},
        answered 200.
        """

        @inlineCallbacks
        def publish(payload):
            code, _ = yield server.client.publish(server.url, topic, payload)
            self.assertEqual(code, 200)

        return publish

    @inlineCallbacks
    def _in_order(self, publish, subscribers, count: int = 30):
        """
        Once every subscriber hears a probe, publish C{count} messages:
        each subscriber gets each once, in order.
        """
        for _ in range(int(WAIT / 0.05)):
            yield publish(b"probe")
            if all(b"probe" in s.messages for s in subscribers):
                break
            yield sleep(0.05)
        for i in range(count):
            yield publish(b"%d" % i)
        for subscriber in subscribers:
            yield until(lambda s=subscriber: len(_real(s.messages)) >= count, 30)
            self.assertEqual(_real(subscriber.messages), [b"%d" % i for i in range(count)])

    @inlineCallbacks
    def _figures_only(self, server):
        """
        The whole server's figures, in which nothing crossed between the
        workers.
        """
        stats = yield server.stats()
        self.assertEqual(stats["cross_worker_messages"], 0)
        self.assertEqual(len(stats["workers"]), 2)
        return stats

    @inlineCallbacks
    def test_proxy(self):
        """
        C{--proxy --workers=2}: each worker holds its own subscriptions on
        the upstream server (which counts them) and publishes there itself;
        subscribers on both workers, and a queue group's members, get each
        message once.
        """
        files = CertificateFiles(self)
        upstream = ServerProcess.spawn(self, [
            "-m", "memmq", "--address=127.0.0.1:0", f"--cert_file={files.cert_file}", f"--key_file={files.key_file}",
        ])
        port = yield upstream.wait_listening()
        server = _Server(self, 2, "--proxy", f"--servers=127.0.0.1:{port}")
        yield server.start()
        subscribers = yield server.spread("x")
        members = yield server.spread(None, query="topic=x&group=g")
        count = 30
        yield self._in_order(self._publisher(server, "x"), subscribers, count)
        yield until(lambda: sum(len(_real(m.messages)) for m in members) >= count, 30)
        yield sleep(0.3)
        shared = [m for member in members for m in _real(member.messages)]
        self.assertEqual(sorted(shared), sorted(b"%d" % i for i in range(count)))
        stats = yield self._figures_only(server)
        self.assertEqual(stats["upstream_servers"], [f"https://127.0.0.1:{port}"])
        response = yield bounded(TLSClient(self, files.certificate).http.get(f"https://127.0.0.1:{port}/stats"))
        upstream_stats = json.loads((yield bounded(treq.content(response))))
        # One plain and one group subscription per worker.
        self.assertEqual(upstream_stats["subscribers"], 4)

    @inlineCallbacks
    def test_backplane(self):
        """
        C{--backplane --workers=2} against a real redis-server: each worker
        is a node of its own (Redis counts two subscribers of the channel);
        a queue group counts per node, as the Redis backplane's do.
        """
        from tests.redis_support import RedisServer, numsub
        from tests.support import short_directory

        redis = RedisServer.start(self, short_directory(self))
        yield redis.ready
        server = _Server(self, 2, f"--backplane={redis.url}")
        yield server.start()
        subscribers = yield server.spread("y")
        yield self._in_order(self._publisher(server, "y"), subscribers)
        yield self._figures_only(server)
        self.assertEqual((yield numsub(redis, "memmq:y")), 2)


class FaultTests(TestCase):
    """
    A worker that dies is restarted and the others serve on; the parent
    stops its workers gracefully, and takes them with it when it dies.
    """

    timeout = 120

    @inlineCallbacks
    def test_worker_killed(self):
        """
        kill -9 of a worker: the other worker's subscribers keep getting
        messages, the parent restarts it (logged), and new subscribers on
        it are served.
        """
        server = _Server(self)
        yield server.start()
        subscribers = yield server.spread("k")
        # Worker 0 by its index: a worker whose peer is slow to answer
        # shows its own figures alone.
        stats = yield server.whole()
        victim = next(w for w in stats["workers"] if w["worker"] == 0)
        os.kill(victim["pid"], signal.SIGKILL)
        yield until(lambda: b"worker 0 (pid %d) died" % victim["pid"] in server.process.output)
        yield until(lambda: b"worker 0 (pid" in server.process.output.split(b"died", 1)[1]
                    and b"serving again" in server.process.output)
        closed = [s for s in subscribers if s.close_code is not None]
        alive = [s for s in subscribers if s.close_code is None]
        self.assertTrue(closed)
        self.assertTrue(alive)
        for i in range(5):
            code, _ = yield server.client.publish(server.url, "k", b"after %d" % i)
            self.assertEqual(code, 200)
        for subscriber in alive:
            yield subscriber.wait_for(5)
        stats = yield server.whole()
        self.assertNotIn(victim["pid"], [w["pid"] for w in stats["workers"]])
        yield server.spread("k2")

    @inlineCallbacks
    def test_sigterm(self):
        """
        SIGTERM to the parent: every worker's WebSocket subscribers are
        told 1001, and the parent exits 0 within a few seconds.
        """
        server = _Server(self)
        yield server.start()
        subscribers = yield server.spread("z")
        pids = [w["pid"] for w in (yield server.stats())["workers"]]
        status = yield server.process.terminate()
        self.assertEqual(status, 0)
        codes = yield gatherResults([s.wait_closed() for s in subscribers])
        self.assertEqual(set(codes), {1001})
        self.assertFalse([pid for pid in pids if _alive(pid)])

    @inlineCallbacks
    def test_sighup_passed_on(self):
        """
        SIGHUP to the parent is passed on to every worker, which serve on.
        """
        server = _Server(self)
        yield server.start()
        pids = [w["pid"] for w in (yield server.stats())["workers"]]
        server.process.transport.signalProcess("HUP")
        yield until(lambda: b"passing SIGHUP on to 2 workers" in server.process.output)
        yield sleep(0.5)
        self.assertEqual([w["pid"] for w in (yield server.stats())["workers"]], pids)
        self.assertNotIn(b"died", server.process.output)

    @inlineCallbacks
    def test_no_orphans(self):
        """
        A parent killed outright takes its workers with it.
        """
        server = _Server(self)
        yield server.start()
        pids = [w["pid"] for w in (yield server.stats())["workers"]]
        server.process.transport.signalProcess("KILL")
        yield bounded(server.process.ended)
        yield until(lambda: not [pid for pid in pids if _alive(pid)])


class GRPCTests(TestCase):
    """
    gRPC with workers: every worker's gRPC server shares the port
    (SO_REUSEPORT), and a message published on any reaches every
    subscriber.
    """

    timeout = 120

    @inlineCallbacks
    def test_grpc_across_workers(self):
        """
        Several gRPC subscribers (the kernel spreads their connections over
        the workers) each get a publisher's messages once, in order; SIGTERM
        exits 0.
        """
        from twisted.internet import reactor

        from memmq.client.rpc import GRPCClient
        from tests.grpc_support import GRPCServerProcess

        files = CertificateFiles(self)
        server = GRPCServerProcess.spawn(self, [
            "-m", "memmq", "--transport=grpc", "--address=127.0.0.1:0", "--workers=2",
            f"--cert_file={files.cert_file}", f"--key_file={files.key_file}",
        ])
        port = yield server.wait_listening()
        clients = [GRPCClient([f"127.0.0.1:{port}"], reactor=reactor) for _ in range(5)]
        for client in clients:
            self.addCleanup(lambda c=client: bounded(c.close()))
        subscriptions = yield gatherResults([bounded(c.subscribe("g")) for c in clients[1:]])
        received = [[] for _ in subscriptions]

        @inlineCallbacks
        def drain(subscription, into):
            while True:
                into.append((yield subscription.get()))

        for subscription, into in zip(subscriptions, received, strict=True):
            drain(subscription, into).addErrback(lambda f: None)
        publisher = clients[0]
        while not all(any(m == b"probe" for m in into) for into in received):
            yield bounded(publisher.publish("g", b"probe"))
            yield sleep(0.05)
        for i in range(50):
            yield bounded(publisher.publish("g", b"%d" % i))
        yield until(lambda: all(len([m for m in into if m != b"probe"]) >= 50 for into in received), 60)
        for into in received:
            self.assertEqual([m for m in into if m != b"probe"], [b"%d" % i for i in range(50)])
        status = yield server.terminate()
        self.assertEqual(status, 0, server.output)


class OptionTests(TestCase):
    """
    What does not yet work with several workers is refused with one line.
    """

    def test_refused(self):
        """
        --persist with --backplane with --workers=2: one line, status 2.
        """
        import subprocess

        from tests.support import child_env

        for extra in (["--persist", "--backplane=redis://127.0.0.1:1"],):
            result = subprocess.run(
                [sys.executable, "-m", "memmq", "--workers=2", *extra], capture_output=True, env=child_env(),
                timeout=30, check=False,
            )
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn(b"--workers", result.stderr)


class PlainListenTests(TestCase):
    """
    A --listen=plain: port served by workers speaks plain HTTP, and the
    start-up line warns that it is without TLS, as one process does.
    """

    timeout = 60

    @inlineCallbacks
    def test_plain_listen(self):
        import re

        server = _Server(self, 2, "--listen=plain:tcp:0:interface=127.0.0.1")
        yield server.start()
        yield until(lambda: b"WITHOUT TLS" in server.process.output)
        port = int(re.search(rb"listening on http://127\.0\.0\.1:(\d+) WITHOUT TLS", server.process.output).group(1))
        plain = f"http://127.0.0.1:{port}"
        # Enough requests, each on a connection of its own, for both
        # workers to take some.
        for i in range(10):
            response = yield bounded(treq.post(f"{plain}/pub?topic=plain", b"m%d" % i, persistent=False))
            self.assertEqual(response.code, 200)
        stats = yield server.stats()
        self.assertEqual(stats["published"], 10)


_ACTIVATE = (
    "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


class SystemdTests(TestCase):
    """
    twistd with workers under systemd socket activation: the parent adopts
    systemd's socket, the workers serve on it, READY=1 once they all do.
    """

    timeout = 120

    @inlineCallbacks
    def test_twistd_socket_activation(self):
        """
        C{twistd -n memmq --workers=2 --listen=systemd:...} with a socket
        passed as systemd does and a notify socket: READY=1 after both
        workers serve, messages flow over the passed socket, SIGTERM exits
        0 after STOPPING=1.
        """
        import socket as sockets

        from twisted.internet import reactor

        from tests.support import TWISTD, NotifySocket, child_env

        listening = sockets.socket(sockets.AF_INET, sockets.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(50)
        notify = NotifySocket(self)
        files = CertificateFiles(self)
        env = dict(child_env(), LISTEN_FDS="1", LISTEN_FDNAMES="memmq", NOTIFY_SOCKET=notify.address)
        process = ServerProcess()
        argv = [
            sys.executable, "-c", _ACTIVATE, *TWISTD, "memmq", "--workers=2",
            "--listen=systemd:domain=INET:name=memmq",
            f"--cert_file={files.cert_file}", f"--key_file={files.key_file}",
        ]
        reactor.spawnProcess(
            process, sys.executable, argv, env=env, childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()},
        )
        self.addCleanup(lambda: process.ended.called or process.transport.signalProcess("KILL"))
        port = yield process.wait_listening()
        self.assertEqual(port, listening.getsockname()[1])
        yield until(lambda: any(m.startswith("READY=1") for m in notify.read()))
        self.assertIn("2 workers", "".join(notify.received))
        client = TLSClient(self, files.certificate)
        url = f"https://127.0.0.1:{port}"
        subscriber = yield client.subscribe(url, "sd")
        for _ in range(int(WAIT / 0.05)):
            code, _body = yield client.publish(url, "sd", b"hi")
            self.assertEqual(code, 200)
            if subscriber.messages:
                break
            yield sleep(0.05)
        self.assertEqual(subscriber.messages[0], b"hi")
        process.transport.signalProcess("TERM")
        status = yield bounded(process.ended)
        self.assertEqual(status, 0)
        self.assertIn("STOPPING=1", notify.read())


# A worker that stops reading (README: Workers). Enough bytes to fill the stopped worker's stream (Twisted's buffer and
# the kernel's, some hundreds of KiB), far from what would be dropped.
_COUNT = 2000
_SIZE = 1024


def _message(i: int) -> bytes:
    return (b"%d:" % i).ljust(_SIZE, b".")


class StalledWorkerTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_stopped_worker(self):
        """
        While one worker is stopped, a queue group's messages go to the
        members on the worker that reads; when it goes on, its plain
        subscribers get every message, in order, and the group has had
        each message once.
        """
        server = _Server(self)
        yield server.start()
        plain = yield server.spread("k")
        members = yield server.spread(None, query="topic=k&group=g")
        probers = yield gatherResults([server.client.connect(server.url, "/pub", "k") for _ in range(2)])
        yield _probe(probers, plain + members[-1:])
        for member in members:
            del member.messages[:]
        stats = yield server.whole()
        stopped = stats["workers"][1]["pid"]
        os.kill(stopped, signal.SIGSTOP)
        self.addCleanup(_continue, stopped)
        # A worker that is stopped accepts nothing: this lands on the other.
        publisher = yield server.client.connect(server.url, "/pub", "k")
        for i in range(_COUNT):
            publisher.sendMessage(_message(i), isBinary=True)
        # Only the members on the worker still reading get messages now;
        # round-robin between the workers would give them half.
        yield until(lambda: sum(len(_real(m.messages)) for m in members) >= _COUNT * 3 // 4, 30)
        _continue(stopped)
        for subscriber in plain:
            yield until(lambda s=subscriber: len(_real(s.messages)) >= _COUNT, 60)
            self.assertEqual(_real(subscriber.messages), [_message(i) for i in range(_COUNT)])
        yield until(lambda: sum(len(_real(m.messages)) for m in members) >= _COUNT, 30)
        shared = sorted(m for member in members for m in _real(member.messages))
        self.assertEqual(shared, sorted(_message(i) for i in range(_COUNT)))
        stats = yield server.whole()
        self.assertEqual([w["dropped"] for w in stats["workers"]], [0, 0])
        response = yield bounded(server.client.http.get(server.url + "/metrics"))
        metrics = (yield bounded(treq.content(response))).decode()
        self.assertIn('memmq_worker_messages_dropped_total{worker="1"} 0.0', metrics)


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
