"""
The Redis backplane (README: Redis backplane): its URL, glob and message
encoding in memory; then real memmq nodes on one real redis-server.
"""

from __future__ import annotations

import os

from twisted.internet.defer import inlineCallbacks
from twisted.python import usage
from twisted.trial.unittest import TestCase

from memmq.backplane.interest import EXPIRY, RemoteInterest, announcement, parse_announcement
from memmq.backplane.redis import decode, encode, parse_redis_url, redis_glob
from memmq.errors import MemmqError
from memmq.options import MemmqOptions
from memmq.patterns import parse_pattern
from tests.redis_support import Nodes, RedisListener, RedisServer, need_redis, numsub, reaches, until_numsub, wait_real
from tests.support import bounded, dead_port, run_memmq, short_directory, sleep, spawn_memmq, until

CHANNEL = "memmq:news"


class URLTests(TestCase):
    def test_redis_url(self):
        """
        redis:// and rediss:// URLs give host, port, database and user; the
        port defaults to 6379.
        """
        target = parse_redis_url("rediss://memmq@cache.example:6380/2", "pw")
        self.assertEqual(
            (target.host, target.port, target.db, target.username, target.password, target.tls),
            ("cache.example", 6380, 2, "memmq", "pw", True),
        )
        self.assertEqual(parse_redis_url("redis://h").port, 6379)
        self.assertNotIn("pw", repr(target))

    def test_password_in_url_refused(self):
        """
        A password in the URL is refused with one line naming where it
        goes instead.
        """
        with self.assertRaises(MemmqError) as raised:
            parse_redis_url("redis://u:secret@h:6379")
        self.assertIn("--backplane_password_file", str(raised.exception))
        self.assertNotIn("secret", str(raised.exception))

    def test_bad_urls(self):
        """
        Other schemes, a path that is no database number and queries are
        refused.
        """
        for url in ("http://h", "redis://h/x", "redis://h?prefix=a", "redis://:1"):
            self.assertRaises(MemmqError, parse_redis_url, url)

    def test_password_from_file_and_environment(self):
        """
        The password comes from --backplane_password_file, else from
        MEMMQ_BACKPLANE_PASSWORD; the companions need --backplane.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        options = MemmqOptions()
        options.parseOptions(["--backplane", "redis://h", "--backplane_password_file", path])
        self.assertEqual(options["backplane_target"].password, "from-file")
        os.environ["MEMMQ_BACKPLANE_PASSWORD"] = "from-env"
        self.addCleanup(os.environ.pop, "MEMMQ_BACKPLANE_PASSWORD")
        options = MemmqOptions()
        options.parseOptions(["--backplane", "redis://h"])
        self.assertEqual(options["backplane_target"].password, "from-env")
        self.assertRaises(usage.UsageError, MemmqOptions().parseOptions, ["--backplane_optional"])
        self.assertRaises(
            usage.UsageError, MemmqOptions().parseOptions, ["--backplane", "redis://h", "--backplane_ca_file", path]
        )


class EncodingTests(TestCase):
    def test_round_trip(self):
        """
        A message carries its node id and hops ahead of the payload, which
        may hold anything.
        """
        node = b"0123456789abcdef"
        for payload in (b"", b"x", b"memmq1 a\n\x00\xff"):
            self.assertEqual(decode(encode(node, 3, payload)), (node, 3, payload))

    def test_foreign_message(self):
        """
        A message published into Redis by something else is a payload as it
        is, from no node.
        """
        self.assertEqual(decode(b"hello"), (None, 0, b"hello"))
        self.assertEqual(decode(b"memmq1 short\nx"), (None, 0, b"memmq1 short\nx"))

    def test_glob(self):
        """
        A pattern's wildcards become *, its other characters are escaped.
        """
        self.assertEqual(redis_glob(parse_pattern("orders.*"), "memmq:"), "memmq:orders.*")
        self.assertEqual(redis_glob(parse_pattern("a?[b].>"), "p*"), r"p\*a\?\[b\].*")


class RemoteInterestTests(TestCase):
    def test_add_remove(self):
        """
        A channel is wanted while some other node has announced it, by
        name or by glob.
        """
        remote = RemoteInterest()
        self.assertFalse(remote.wants("memmq:a"))
        remote.apply(b"n1", "add", ["memmq:a"], [], 0)
        remote.apply(b"n2", "add", ["memmq:a"], [r"memmq:b.*"], 0)
        self.assertTrue(remote.wants("memmq:a"))
        self.assertTrue(remote.wants("memmq:b.x"))
        remote.apply(b"n1", "remove", ["memmq:a"], [], 1)
        self.assertTrue(remote.wants("memmq:a"))
        remote.apply(b"n2", "bye", [], [], 1)
        self.assertFalse(remote.wants("memmq:a"))
        self.assertFalse(remote.wants("memmq:b.x"))

    def test_state_replaces_and_silence_expires(self):
        """
        A node's state replaces what it said before; a node not heard from
        for EXPIRY seconds is forgotten.
        """
        remote = RemoteInterest()
        remote.apply(b"n1", "hello", ["memmq:a"], [], 0)
        remote.apply(b"n1", "state", ["memmq:b"], [], 1)
        self.assertEqual((remote.wants("memmq:a"), remote.wants("memmq:b")), (False, True))
        remote.apply(b"n2", "state", [], [], EXPIRY + 2)
        self.assertFalse(remote.wants("memmq:b"))
        self.assertEqual(remote.nodes, 1)

    def test_announcement_round_trip(self):
        """
        Announcements parse back; anything else is not one.
        """
        data = announcement(b"abc", "add", ["memmq:a"], ["memmq:*"])
        self.assertEqual(parse_announcement(data), (b"abc", "add", ["memmq:a"], ["memmq:*"]))
        for junk in (b"", b"{}", b"[1]", b'{"node":"x","op":"nuke"}', b'{"node":1,"op":"add"}'):
            self.assertIsNone(parse_announcement(junk))


class NodesTests(TestCase):
    """
    Real memmq nodes (python -m memmq) on one real redis-server.
    """

    def setUp(self):
        need_redis()
        self.directory = short_directory(self)
        self.redis = RedisServer.start(self, self.directory)
        return self.redis.ready

    @inlineCallbacks
    def publish_all(self, client, node, topic, payloads):
        codes = []
        for payload in payloads:
            code, _ = yield client.publish(node.url, topic, payload)
            codes.append(code)
        return codes

    @inlineCallbacks
    def test_fan_out_over_three_nodes(self):
        """
        Published on A, a message reaches the subscribers on B and C, and
        A's own, each once and in publish order.
        """
        nodes = Nodes(self, self.redis.url)
        a, b, c = yield nodes.start_all(3)
        subs = []
        for node in (a, b, b, c):
            subs.append((yield nodes.client.subscribe(node.url, "news")))
        yield until_numsub(self.redis, CHANNEL, 3)
        yield reaches(nodes.client, a, subs[1:])
        payloads = [b"m%d" % i for i in range(200)]
        codes = yield self.publish_all(nodes.client, a, "news", payloads)
        self.assertEqual(set(codes), {200})
        for sub in subs:
            self.assertEqual((yield wait_real(sub, len(payloads))), payloads)
        # Nothing more comes (A's own echo from Redis is dropped).
        yield reaches(nodes.client, c, subs[:3])
        yield nodes.client.publish(c.url, "news", b"last")
        for sub in subs:
            self.assertEqual((yield wait_real(sub, len(payloads) + 1))[len(payloads):], [b"last"])

    @inlineCallbacks
    def test_interest_follows_subscribers(self):
        """
        A node subscribes in Redis on its first local subscriber of a topic
        and unsubscribes after its last.
        """
        nodes = Nodes(self, self.redis.url)
        a, b = yield nodes.start_all(2)
        self.assertEqual((yield numsub(self.redis, CHANNEL)), 0)
        first = yield nodes.client.subscribe(a.url, "news")
        yield until_numsub(self.redis, CHANNEL, 1)
        second = yield nodes.client.subscribe(a.url, "news")
        other = yield nodes.client.subscribe(b.url, "news")
        yield until_numsub(self.redis, CHANNEL, 2)
        first.transport.abortConnection()
        yield first.wait_closed()
        # A still has a subscriber: still 2.
        yield reaches(nodes.client, a, [other])
        self.assertEqual((yield numsub(self.redis, CHANNEL)), 2)
        for sub in (second, other):
            sub.transport.abortConnection()
            yield sub.wait_closed()
        yield until_numsub(self.redis, CHANNEL, 0)

    @inlineCallbacks
    def test_redis_restarted(self):
        """
        While Redis is down publishes answer 503 and /health says degraded;
        once it is back the nodes subscribe again, and every message
        answered 200 arrives once, in order; none answered 503 does.
        """
        nodes = Nodes(self, self.redis.url)
        a, b = yield nodes.start_all(2)
        sub = yield nodes.client.subscribe(b.url, "news")
        yield until_numsub(self.redis, CHANNEL, 1)
        yield reaches(nodes.client, a, [sub])
        accepted = []
        for i in range(50):
            code, _ = yield nodes.client.publish(a.url, "news", b"before%d" % i)
            self.assertEqual(code, 200)
            accepted.append(b"before%d" % i)
        yield wait_real(sub, len(accepted))
        yield self.redis.stop()
        health = []

        @inlineCallbacks
        def down():
            response = yield nodes.client.http.get(a.url + "/health")
            health.append((response.code, (yield response.content())))
            return response.code == 503

        yield _until_true(down)
        self.assertIn(b"degraded", health[-1][1])
        code, body = yield nodes.client.publish(a.url, "news", b"refused")
        self.assertEqual((code, body.count(b"\n")), (503, 1))
        self.redis = RedisServer.start(self, self.directory, self.redis.port)
        yield self.redis.ready
        yield until_numsub(self.redis, CHANNEL, 1)

        @inlineCallbacks
        def up():
            response = yield nodes.client.http.get(a.url + "/health")
            yield response.content()
            return response.code == 200

        yield _until_true(up)
        yield reaches(nodes.client, a, [sub])
        for i in range(50):
            code, _ = yield nodes.client.publish(a.url, "news", b"after%d" % i)
            self.assertEqual(code, 200)
            accepted.append(b"after%d" % i)
        self.assertEqual((yield wait_real(sub, len(accepted))), accepted)
        self.assertIn(b"lost", a.output)
        self.assertIn(b"subscribed again", b.output)
        response = yield nodes.client.http.get(a.url + "/metrics")
        metrics = yield response.content()
        self.assertIn(b"memmq_backplane_up 1.0", metrics)
        self.assertIn(b"memmq_backplane_losses_total 1.0", metrics)
        self.assertIn(b"memmq_backplane_nodes 1.0", metrics)

    @inlineCallbacks
    def test_no_traffic_without_remote_interest(self):
        """
        A publish to a topic no other node follows goes no further than
        the node's own subscribers: Redis sees none of it (a plain Redis
        subscriber on the channel hears nothing), while a topic another
        node follows is published.
        """
        nodes = Nodes(self, self.redis.url)
        a, b = yield nodes.start_all(2)
        local = yield nodes.client.subscribe(a.url, "quiet")
        remote = yield nodes.client.subscribe(b.url, "news")
        yield reaches(nodes.client, a, [remote])
        # Past the warm-up after connecting, when a node sends everything.
        yield sleep(2.5)
        listener = RedisListener.start(self, self.redis, "memmq:quiet", CHANNEL)
        yield listener.subscribed
        for i in range(20):
            yield nodes.client.publish(a.url, "quiet", b"q%d" % i)
        yield nodes.client.publish(a.url, "news", b"heard")
        yield wait_real(remote, 1)
        yield until(lambda: b"heard" in listener.output)
        self.assertEqual((yield local.wait_for(20))[-1], b"q19")
        self.assertNotIn(b"message\nmemmq:quiet", listener.output)

    @inlineCallbacks
    def test_node_killed(self):
        """
        A node killed outright takes nothing from the others: its Redis
        subscription goes, theirs stay and keep receiving.
        """
        nodes = Nodes(self, self.redis.url)
        a, b, c = yield nodes.start_all(3)
        on_b = yield nodes.client.subscribe(b.url, "news")
        yield nodes.client.subscribe(c.url, "news")
        yield until_numsub(self.redis, CHANNEL, 2)
        c.transport.signalProcess("KILL")
        yield bounded(c.ended)
        yield until_numsub(self.redis, CHANNEL, 1)
        yield reaches(nodes.client, a, [on_b])
        codes = yield self.publish_all(nodes.client, a, "news", [b"1", b"2"])
        self.assertEqual(codes, [200, 200])
        self.assertEqual((yield wait_real(on_b, 2)), [b"1", b"2"])

    @inlineCallbacks
    def test_persistence_per_node(self):
        """
        Each node persists what is published through it: a message
        published on A is in A's file, not in B's, though B's subscriber has
        it.
        """
        dirs = [os.path.join(self.directory, name) for name in ("a", "b")]
        nodes = Nodes(self, self.redis.url)
        a = yield nodes.start("--persist", "--persist_dir", dirs[0], "--persist_sync")
        b = yield nodes.start("--persist", "--persist_dir", dirs[1], "--persist_sync")
        sub = yield nodes.client.subscribe(b.url, "news")
        yield until_numsub(self.redis, CHANNEL, 1)
        yield reaches(nodes.client, a, [sub])
        code, _ = yield nodes.client.publish(a.url, "news", b"kept by A")
        self.assertEqual(code, 200)
        yield wait_real(sub, 1)
        self.assertTrue(os.path.exists(os.path.join(dirs[0], "news.mq")))
        self.assertFalse(os.path.exists(os.path.join(dirs[1], "news.mq")))


class StartTests(TestCase):
    def test_refused_when_unreachable(self):
        """
        A node whose Redis cannot be reached refuses to start: one line,
        exit status 2.
        """
        need_redis()
        result = run_memmq("--address", "127.0.0.1:0", "--backplane", f"redis://127.0.0.1:{dead_port()}")
        self.assertEqual(result.returncode, 2)
        lines = result.stderr.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("cannot reach Redis", lines[0])

    def test_password_in_url(self):
        """
        A password on the command line is refused with one line.
        """
        result = run_memmq("--backplane", "redis://user:secret@127.0.0.1:1")
        self.assertEqual(result.returncode, 2)
        self.assertIn(b"no password in the URL", result.stderr)

    @inlineCallbacks
    def test_optional(self):
        """
        With --backplane_optional a node without its Redis serves locally,
        says so in its log and /health (200), and joins once Redis is
        there.
        """
        need_redis()
        directory = short_directory(self)
        port = dead_port()
        nodes = Nodes(self, f"redis://127.0.0.1:{port}", "--backplane_optional")
        a = yield nodes.start()
        self.assertIn(b"serving locally", a.output)
        response = yield nodes.client.http.get(a.url + "/health")
        self.assertEqual(response.code, 200)
        self.assertIn(b"serving locally", (yield response.content()))
        sub = yield nodes.client.subscribe(a.url, "news")
        code, _ = yield nodes.client.publish(a.url, "news", b"local")
        self.assertEqual(code, 200)
        self.assertEqual((yield sub.wait_for(1)), [b"local"])
        redis = RedisServer.start(self, directory, port)
        yield redis.ready
        yield until_numsub(redis, CHANNEL, 1)


class SecuredRedisTests(TestCase):
    @inlineCallbacks
    def test_tls_and_password(self):
        """
        rediss:// with a CA file, and a password from a file: the nodes
        reach a TLS-only Redis that wants a password.
        """
        need_redis()
        from tests.support import CertificateFiles

        directory = short_directory(self)
        files = CertificateFiles(self)
        redis = RedisServer.start(
            self, directory, None, "--tls-cert-file", files.cert_file, "--tls-key-file", files.key_file,
            "--tls-ca-cert-file", files.cert_file, "--tls-auth-clients", "no", "--requirepass", "s3cret",
            tls=True,
        )
        yield redis.ready
        password_file = os.path.join(directory, "password")
        with open(password_file, "w") as f:
            f.write("s3cret\n")
        nodes = Nodes(
            self, redis.url, "--backplane_password_file", password_file, "--backplane_ca_file", files.cert_file,
        )
        a, b = yield nodes.start_all(2)
        sub = yield nodes.client.subscribe(b.url, "news")
        cli = {"tls": ("--tls", "--cacert", files.cert_file), "password": "s3cret"}
        yield until_numsub(redis, CHANNEL, 1, **cli)
        yield reaches(nodes.client, a, [sub])
        code, _ = yield nodes.client.publish(a.url, "news", b"secret")
        self.assertEqual(code, 200)
        self.assertEqual((yield wait_real(sub, 1)), [b"secret"])
        # Without the password: refused at start.
        child = spawn_memmq(self, "--address", "127.0.0.1:0", "--backplane", redis.url,
                            "--backplane_ca_file", files.cert_file)
        self.assertEqual((yield bounded(child.ended)), 2)
        self.assertIn(b"cannot reach Redis", child.stderr)


class ClusterTests(TestCase):
    @inlineCallbacks
    def test_sharded_on_a_cluster(self):
        """
        On a Redis Cluster (here of one node holding every slot) the nodes
        use sharded pub/sub: SSUBSCRIBE shows in PUBSUB SHARDNUMSUB.
        """
        need_redis()
        directory = short_directory(self)
        redis = RedisServer.start(self, directory, None, "--cluster-enabled", "yes")
        yield redis.ready
        yield redis.cli("CLUSTER", "ADDSLOTSRANGE", "0", "16383")

        @inlineCallbacks
        def ok():
            return b"cluster_state:ok" in (yield redis.cli("CLUSTER", "INFO"))

        yield _until_true(ok)
        nodes = Nodes(self, redis.url)
        a, b = yield nodes.start_all(2)
        self.assertIn(b"sharded pub/sub", a.output)
        sub = yield nodes.client.subscribe(b.url, "news")
        yield until_numsub(redis, CHANNEL, 1, command="SHARDNUMSUB")
        self.assertEqual((yield numsub(redis, CHANNEL)), 0)
        yield reaches(nodes.client, a, [sub])
        payloads = [b"s%d" % i for i in range(20)]
        codes = yield NodesTests.publish_all(self, nodes.client, a, "news", payloads)
        self.assertEqual(set(codes), {200})
        self.assertEqual((yield wait_real(sub, len(payloads))), payloads)


@inlineCallbacks
def _until_true(check, tries: int = 400):
    """
    Run the Deferred-returning C{check} until it says True (bounded).
    """
    for _ in range(tries):
        if (yield check()):
            return
        yield bounded(until(lambda: True))
        from tests.support import sleep

        yield sleep(0.05)
    raise AssertionError("condition never held")
