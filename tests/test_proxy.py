"""
End-to-end tests for proxy mode (C{memmq --proxy}): upstream servers and
proxies run as real child processes on loopback, over real TLS; the tests
publish and subscribe through them as any client would.
"""

from __future__ import annotations

import socket
import sys
import zlib
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.names import dns
from twisted.names.server import DNSServerFactory
from twisted.trial.unittest import SkipTest, TestCase

from memmq.tap import Options, makeService
from memmq.tls import self_signed_certificate
from tests.support import (
    WAIT,
    CertificateFiles,
    Collector,
    RunningServer,
    ServerProcess,
    TLSClient,
    Zone,
    bounded,
    dead_port,
    until,
)

# Figures measured by the tests, for the record (printed on stderr too).
MEASURED: dict[str, float] = {}


def _files_for(testcase, host: str) -> CertificateFiles:
    """
    A generated cert/key pair in files whose certificate also names C{host}
    (beside localhost, 127.0.0.1 and ::1).
    """
    files = CertificateFiles(testcase)
    files.certificate = self_signed_certificate(host)
    with open(files.cert_file, "wb") as f:
        f.write(files.certificate.chain_pem())
    with open(files.key_file, "wb") as f:
        f.write(files.certificate.key_pem())
    return files


def _args(files: CertificateFiles, address: str, *extra: str) -> list[str]:
    return [
        "-m", "memmq", f"--address={address}", f"--cert_file={files.cert_file}", f"--key_file={files.key_file}",
        *extra,
    ]


class _Node:
    """
    A memmq process (server or proxy) that listens: its process and URL.
    """

    def __init__(self, process: ServerProcess, host: str) -> None:
        self.process = process
        self.host = host
        self.port = process.port
        self.url = f"https://{host}:{self.port}"
        # host:port, as --servers takes it
        self.name = f"{host}:{self.port}"


@inlineCallbacks
def _start(testcase, files: CertificateFiles, *extra: str, address: str = "127.0.0.1:0"):
    """
    Start C{python -m memmq} on C{address} and wait until it listens.
    """
    process = ServerProcess.spawn(testcase, _args(files, address, *extra))
    yield process.wait_listening()
    return _Node(process, address.rpartition(":")[0])


@inlineCallbacks
def _start_servers(testcase, files: CertificateFiles, count: int = 3):
    return (yield gatherResults([_start(testcase, files) for _ in range(count)]))


def _start_proxy(testcase, files: CertificateFiles, servers, *extra: str, address: str = "127.0.0.1:0") -> Deferred:
    names = ",".join(s if isinstance(s, str) else s.name for s in servers)
    return _start(testcase, files, "--proxy", f"--servers={names}", *extra, address=address)


@inlineCallbacks
def _cluster(testcase, *extra: str):
    """
    Three servers, a proxy over them (with C{extra} options), and a client
    that trusts their certificate: (files, client, servers, proxy).
    """
    files = CertificateFiles(testcase)
    client = TLSClient(testcase, files.certificate)
    servers = yield _start_servers(testcase, files)
    proxy = yield _start_proxy(testcase, files, servers, *extra)
    return files, client, servers, proxy


def _within(condition, seconds: float) -> Deferred:
    """
    Fire with whether C{condition()} came to hold within C{seconds}
    (checked every 10 ms).
    """
    d: Deferred = Deferred()
    deadline = reactor.seconds() + seconds

    def check():
        if condition():
            d.callback(True)
        elif reactor.seconds() >= deadline:
            d.callback(False)
        else:
            reactor.callLater(0.01, check)

    check()
    return d


def _real(collector: Collector) -> list[bytes]:
    """
    What C{collector} received, without the probes.
    """
    return [m for m in collector.messages if not m.startswith(b"probe ")]


@inlineCallbacks
def _probe(
    client: TLSClient, url: str, topic: str, collectors, tag: str, seconds: float = WAIT, interval: float = 0.1
):
    """
    Publish probes directly to C{url}, one per C{interval} seconds at most,
    until one has arrived at every one of C{collectors}: the path from that
    server to them is up.  Return the number of the last probe sent.
    """
    prefix = b"probe %s " % tag.encode()
    deadline = reactor.seconds() + seconds
    for attempt in range(10_000):
        code, body = yield client.publish(url, topic, prefix + b"%d" % attempt)
        if code != 200:
            raise AssertionError(f"probe to {url} answered {code}: {body!r}")
        arrived = yield _within(
            lambda: all(any(m.startswith(prefix) for m in c.messages) for c in collectors), interval
        )
        if arrived:
            return attempt
        if reactor.seconds() > deadline:
            break
    raise TimeoutError(f"no probe from {url} arrived within {seconds} s")


@inlineCallbacks
def _subscribe_all(client: TLSClient, nodes, topic: str):
    return (yield gatherResults([client.subscribe(n.url, quote(topic, safe="")) for n in nodes]))


class _TimedCollector(Collector):
    """
    A collector that notes when each message arrived.
    """

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []

    def onMessage(self, payload, isBinary) -> None:
        self.arrivals.append(reactor.seconds())
        super().onMessage(payload, isBinary)


class ClusterProxyTests(TestCase):
    """
    A proxy with --select=all in front of three servers.
    """

    timeout = 120

    @inlineCallbacks
    def test_all_mode(self) -> None:
        """
        A subscriber of the proxy receives, once each, the messages
        published directly to each of the three servers.  A message
        published to the proxy is answered 200 and reaches a subscriber of
        every server once; the proxy's own subscriber receives it once per
        server (three times), as documented.
        """
        _, client, servers, proxy = yield _cluster(self)
        topic = "cluster"
        upstream = yield client.subscribe(proxy.url, topic)
        for i, s in enumerate(servers):
            yield _probe(client, s.url, topic, [upstream], f"s{i}")
        for i, s in enumerate(servers):
            self.assertEqual((yield client.publish(s.url, topic, b"direct %d" % i)), (200, b""))
        for i, s in enumerate(servers):
            yield client.publish(s.url, topic, b"end %d" % i)
        yield until(lambda: all(b"end %d" % i in upstream.messages for i in range(3)))
        got = [m for m in _real(upstream) if not m.startswith(b"end ")]
        self.assertEqual(sorted(got), [b"direct 0", b"direct 1", b"direct 2"])
        # Per server, messages come in publish order.
        for i in range(3):
            mine = [m for m in _real(upstream) if m.endswith(b" %d" % i)]
            self.assertEqual(mine, [b"direct %d" % i, b"end %d" % i])

        direct = yield _subscribe_all(client, servers, topic)
        self.assertEqual((yield client.publish(proxy.url, topic, b"to all")), (200, b""))
        for d in direct:
            yield d.wait_for(1)
        yield until(lambda: _real(upstream).count(b"to all") == 3)
        for i, s in enumerate(servers):
            yield client.publish(s.url, topic, b"end2 %d" % i)
        for i, d in enumerate(direct):
            self.assertEqual((yield d.wait_for(2)), [b"to all", b"end2 %d" % i])
        yield until(lambda: all(b"end2 %d" % i in upstream.messages for i in range(3)))
        self.assertEqual(_real(upstream).count(b"to all"), 3)
        for d in direct:
            self.assertEqual(d.messages, [b"to all", b"end2 %d" % direct.index(d)])

    @inlineCallbacks
    def test_subscribers_share_upstream(self) -> None:
        """
        Two subscribers of the proxy to one topic each receive a message
        published directly to a server exactly once; once one of them
        leaves, the other still receives.
        """
        _, client, servers, proxy = yield _cluster(self)
        topic = "shared"
        first = yield client.subscribe(proxy.url, topic)
        second = yield client.subscribe(proxy.url, topic)
        for i, s in enumerate(servers):
            yield _probe(client, s.url, topic, [first, second], f"s{i}")
        yield client.publish(servers[0].url, topic, b"one")
        yield client.publish(servers[0].url, topic, b"end")
        for c in (first, second):
            yield until(lambda c=c: b"end" in c.messages)
            self.assertEqual(_real(c), [b"one", b"end"])

        first.sendClose(1000)
        yield first.wait_closed()
        yield client.publish(servers[1].url, topic, b"two")
        yield client.publish(servers[1].url, topic, b"end 2")
        yield until(lambda: b"end 2" in second.messages)
        self.assertEqual(_real(second), [b"one", b"end", b"two", b"end 2"])
        self.assertEqual(_real(first), [b"one", b"end"])

        # The last one leaving and a new one arriving: the upstream
        # subscription is opened again and works.
        second.sendClose(1000)
        yield second.wait_closed()
        third = yield client.subscribe(proxy.url, topic)
        yield _probe(client, servers[2].url, topic, [third], "again")
        yield client.publish(servers[2].url, topic, b"three")
        yield client.publish(servers[2].url, topic, b"end 3")
        yield until(lambda: b"end 3" in third.messages)
        self.assertEqual(_real(third), [b"three", b"end 3"])


class InProcessProxyTests(TestCase):
    """
    The proxy's service built in this process, so that the upstream
    servers' brokers can be looked at.
    """

    timeout = 120

    @inlineCallbacks
    def test_one_upstream_subscription_per_topic(self) -> None:
        """
        Two subscribers of the proxy to one topic make one subscription on
        each upstream server; it stays while one of them is left and is
        closed (the topic freed on every server) once both have left.
        """
        files = CertificateFiles(self)
        servers = [RunningServer(self, certificate=files.certificate) for _ in range(3)]
        options = Options()
        options.parseOptions([
            "--proxy", "--address=127.0.0.1:0", "--servers=" + ",".join(s.url for s in servers),
            f"--cert_file={files.cert_file}", f"--key_file={files.key_file}",
        ])
        service = makeService(options, reactor)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        port = service.getServiceNamed("http").port.getHost().port
        proxy_url = f"https://127.0.0.1:{port}"
        client = TLSClient(self, files.certificate)
        topic = "once"

        def upstream_counts():
            return [len(t.subscriptions) if (t := s.broker.topic(topic)) is not None else 0 for s in servers]

        first = yield client.subscribe(proxy_url, topic)
        second = yield client.subscribe(proxy_url, topic)
        yield until(lambda: upstream_counts() == [1, 1, 1])
        self.assertEqual(service.broker.upstream_topics, [topic])
        yield servers[0].client.publish(servers[0].url, topic, b"hello")
        self.assertEqual((yield first.wait_for(1)), [b"hello"])
        self.assertEqual((yield second.wait_for(1)), [b"hello"])
        self.assertEqual(upstream_counts(), [1, 1, 1])

        first.sendClose(1000)
        yield first.wait_closed()
        yield until(lambda: service.broker.local.topic(topic) is not None
                     and len(service.broker.local.topic(topic).subscriptions) == 1)
        self.assertEqual(upstream_counts(), [1, 1, 1])
        yield servers[1].client.publish(servers[1].url, topic, b"still")
        self.assertEqual((yield second.wait_for(2)), [b"hello", b"still"])

        second.sendClose(1000)
        yield second.wait_closed()
        yield until(lambda: all(s.broker.topic(topic) is None for s in servers))
        self.assertEqual(service.broker.upstream_topics, [])
        yield service.stopService()


class ShardProxyTests(TestCase):
    """
    A proxy with --select=shard in front of three servers.
    """

    timeout = 120

    TOPICS = ["example", "news", "orders/eu", "ü", "日本語", "a b&c=d"]

    @inlineCallbacks
    def test_shard_mode(self) -> None:
        """
        A message published to the proxy lands on
        servers[crc32(topic) % 3] only, for ASCII and non-ASCII topics.
        """
        _, client, servers, proxy = yield _cluster(self, "--select=shard")
        for topic in self.TOPICS:
            chosen = zlib.crc32(topic.encode()) % 3
            direct = yield _subscribe_all(client, servers, topic)
            payload = f"sharded {topic}".encode()
            self.assertEqual((yield client.publish(proxy.url, topic, payload)), (200, b""), topic)
            # The chosen server gets it; once it has, each of the others
            # gets a marker first: the message did not go there.
            self.assertEqual((yield direct[chosen].wait_for(1)), [payload], f"{topic!r} on server {chosen}")
            for i, (s, d) in enumerate(zip(servers, direct, strict=True)):
                yield client.publish(s.url, topic, b"marker")
                yield d.wait_for(2 if i == chosen else 1)
                expected = [payload, b"marker"] if i == chosen else [b"marker"]
                self.assertEqual(d.messages, expected, f"{topic!r} on server {i}, sent to {chosen}")
            for d in direct:
                d.sendClose(1000)
                yield d.wait_closed()


class DNSProxyTests(TestCase):
    """
    A proxy with --resolver=dns follows the records of its servers' name.
    """

    timeout = 120

    @inlineCallbacks
    def test_follow_records(self) -> None:
        """
        A server added to the name's records is subscribed to by the proxy,
        so its subscribers get what is published there; one removed is
        left, so they no longer get what is published there.
        """
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            raise SkipTest("cannot listen on 127.0.0.2 here") from None
        finally:
            probe.close()
        files = _files_for(self, "127.0.0.2")
        client = TLSClient(self, files.certificate)
        a = yield _start(self, files)
        b = yield _start(self, files, address=f"127.0.0.2:{a.port}")

        zone = Zone()
        zone.addresses["memmq.test"] = ["127.0.0.1"]
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(DNSServerFactory(authorities=[zone])), interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        proxy = yield _start_proxy(
            self, files, [f"memmq.test:{a.port}"], "--resolver=dns",
            f"--dns_server=127.0.0.1:{udp.getHost().port}", "--resolve_interval=0.2",
        )
        topic = "dns"
        sub = yield client.subscribe(proxy.url, topic)
        yield _probe(client, a.url, topic, [sub], "a")
        yield client.publish(a.url, topic, b"from a")
        yield until(lambda: b"from a" in sub.messages)

        zone.addresses["memmq.test"] = ["127.0.0.1", "127.0.0.2"]
        yield _probe(client, b.url, topic, [sub], "b")
        yield client.publish(b.url, topic, b"from b")
        yield until(lambda: b"from b" in sub.messages)
        yield client.publish(a.url, topic, b"from a again")
        yield until(lambda: b"from a again" in sub.messages)

        zone.addresses["memmq.test"] = ["127.0.0.2"]
        # Until the proxy has left a: publish to a, then a marker to b; once
        # a's message no longer comes before the marker, a is left.  Then
        # check that it stays so.
        left_at = None
        deadline = reactor.seconds() + WAIT
        for i in range(10_000):
            x, marker = b"to a %d" % i, b"marker %d" % i
            yield client.publish(a.url, topic, x)
            yield client.publish(b.url, topic, marker)
            yield until(lambda marker=marker: marker in sub.messages)
            before = sub.messages[: sub.messages.index(marker)]
            if x not in before:
                if left_at is None:
                    left_at = i
                if i - left_at >= 3:
                    break
            else:
                left_at = None
            self.assertLess(reactor.seconds(), deadline, "the proxy still gets what is published to a")
        yield client.publish(b.url, topic, b"last")
        yield until(lambda: b"last" in sub.messages)
        late = [m for m in sub.messages if m.startswith(b"to a ") and int(m.split()[-1]) >= left_at]
        self.assertEqual(late, [])
        yield client.publish(b.url, topic, b"from b again")
        yield until(lambda: b"from b again" in sub.messages)


class ServerDownTests(TestCase):
    """
    A proxy over three servers of which one goes down and comes back.
    """

    timeout = 120

    @inlineCallbacks
    def _kill_one(self):
        """
        Three servers and a proxy with a subscriber connected through it to
        every server; server 2 killed (SIGKILL); a direct subscriber on
        each of the other two.
        """
        self.files, self.client, self.servers, self.proxy = yield _cluster(self)
        self.sub = yield self.client.connect(self.proxy.url, "/sub", self.topic, protocol=_TimedCollector)
        for i, s in enumerate(self.servers):
            yield _probe(self.client, s.url, self.topic, [self.sub], f"s{i}")
        self.assertEqual((yield self.client.publish(self.proxy.url, self.topic, b"before")), (200, b""))
        yield until(lambda: _real(self.sub).count(b"before") == 3)
        self.victim = self.servers[1]
        self.victim.process.transport.signalProcess("KILL")
        yield bounded(self.victim.process.ended)
        self.killed_at = reactor.seconds()
        self.others = [self.servers[0], self.servers[2]]
        self.direct = yield _subscribe_all(self.client, self.others, self.topic)

    @inlineCallbacks
    def test_publish_while_down(self) -> None:
        """
        With server 2 killed, a publish to the proxy answers 502 naming
        server 2's URL and why; servers 1 and 3 still get the message,
        exactly once each, and so does the proxy's subscriber through them.
        """
        self.topic = "kill"
        yield self._kill_one()
        code, body = yield self.client.publish(self.proxy.url, self.topic, b"while down")
        self.assertEqual(
            (code, body),
            (502, f"publish failed: publish to 'kill' failed on {self.victim.url}: connection refused\n".encode()),
        )
        for i, (s, d) in enumerate(zip(self.others, self.direct, strict=True)):
            yield self.client.publish(s.url, self.topic, b"marker %d" % i)
            self.assertEqual((yield d.wait_for(2)), [b"while down", b"marker %d" % i])
        yield until(lambda: b"marker 0" in self.sub.messages and b"marker 1" in self.sub.messages)
        self.assertEqual(_real(self.sub).count(b"while down"), 2)

    @inlineCallbacks
    def test_restart_recovery(self) -> None:
        """
        Server 2, killed while messages are published through the proxy,
        is started again on the same port: without reconnecting, the
        proxy's subscriber gets what is published there again (the proxy
        resubscribes by itself).  Measures how long that takes.
        """
        self.topic = "restart"
        yield self._kill_one()
        # Publishing goes on meanwhile (its answer is the other test's
        # business); the other servers deliver.
        yield self.client.publish(self.proxy.url, self.topic, b"while down")
        for d in self.direct:
            yield d.wait_for(1)
        restarted = yield _start(self, self.files, address=f"127.0.0.1:{self.victim.port}")
        listening_at = reactor.seconds()
        sub = self.sub
        arrivals = len(sub.messages)
        attempt = yield _probe(
            self.client, restarted.url, self.topic, [_Since(sub, arrivals)], "back", seconds=60, interval=0.02
        )
        first = next(i for i in range(arrivals, len(sub.messages)) if sub.messages[i].startswith(b"probe back "))
        recovery = sub.arrivals[first] - listening_at
        down = listening_at - self.killed_at
        MEASURED["restart_recovery_seconds"] = recovery
        MEASURED["server_down_seconds"] = down
        sys.stderr.write(
            f"\n[test_proxy] server 2 down {down:.2f} s; the first probe published to it reached the proxy's "
            f"subscriber {recovery:.3f} s after it listened again (probe #{attempt})\n"
        )
        self.assertEqual((yield self.client.publish(restarted.url, self.topic, b"after")), (200, b""))
        yield until(lambda: b"after" in sub.messages)
        self.assertEqual(sub.messages.count(b"after"), 1)


class _Since:
    """
    The messages of a collector from index C{start} on (for L{_probe}).
    """

    def __init__(self, collector: Collector, start: int) -> None:
        self._collector = collector
        self._start = start

    @property
    def messages(self) -> list[bytes]:
        return self._collector.messages[self._start:]


class ChainTests(TestCase):
    """
    Proxies chain: a proxy in front of a proxy in front of three servers.
    """

    timeout = 120

    @inlineCallbacks
    def test_chain_of_two(self) -> None:
        """
        A subscriber of proxy B (whose server is proxy A) receives what is
        published directly to the servers exactly as a subscriber of A does;
        a message published to B reaches every server once.
        """
        files = CertificateFiles(self)
        client = TLSClient(self, files.certificate)
        servers = yield _start_servers(self, files)
        a = yield _start_proxy(self, files, servers)
        b = yield _start_proxy(self, files, [a])
        topic = "chain"
        sub_a = yield client.subscribe(a.url, topic)
        sub_b = yield client.subscribe(b.url, topic)
        for i, s in enumerate(servers):
            yield _probe(client, s.url, topic, [sub_a, sub_b], f"s{i}")
        for round in range(3):
            for i, s in enumerate(servers):
                yield client.publish(s.url, topic, b"direct %d.%d" % (i, round))
        for i, s in enumerate(servers):
            yield client.publish(s.url, topic, b"end %d" % i)
        for c in (sub_a, sub_b):
            yield until(lambda c=c: all(b"end %d" % i in c.messages for i in range(3)))
        self.assertEqual(_real(sub_b), _real(sub_a))
        self.assertEqual(
            sorted(_real(sub_a)),
            sorted([b"direct %d.%d" % (i, r) for i in range(3) for r in range(3)] + [b"end %d" % i for i in range(3)]),
        )

        direct = yield _subscribe_all(client, servers, topic)
        self.assertEqual((yield client.publish(b.url, topic, b"via b")), (200, b""))
        for i, (s, d) in enumerate(zip(servers, direct, strict=True)):
            yield d.wait_for(1)
            yield client.publish(s.url, topic, b"end2 %d" % i)
            self.assertEqual((yield d.wait_for(2)), [b"via b", b"end2 %d" % i])
        yield until(lambda: all(b"end2 %d" % i in sub_b.messages for i in range(3)))
        self.assertEqual(_real(sub_b).count(b"via b"), 3)


class LoopTests(TestCase):
    """
    Proxies that would forward to themselves.
    """

    timeout = 120

    @inlineCallbacks
    def test_self_listing_refused(self) -> None:
        """
        A proxy whose --servers lists its own address exits with status 2
        and one line on stderr saying so.
        """
        files = CertificateFiles(self)
        port = dead_port()
        process = ServerProcess.spawn(
            self, _args(files, f"127.0.0.1:{port}", "--proxy", f"--servers=127.0.0.1:{port}")
        )
        status = yield bounded(process.ended)
        self.assertEqual(status, 2, process.output)
        lines = process.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, process.stderr)
        self.assertTrue(lines[0].startswith("memmq: --servers lists this proxy itself"), lines[0])
        self.assertEqual(process.stdout, b"")

    @inlineCallbacks
    def test_self_listing_grpc_refused(self) -> None:
        """
        The same for a proxy that lists its own --grpc_address.
        """
        files = CertificateFiles(self)
        port, grpc_port = dead_port(), dead_port()
        process = ServerProcess.spawn(
            self,
            _args(
                files, f"127.0.0.1:{port}", "--proxy", f"--grpc_address=127.0.0.1:{grpc_port}",
                "--upstream_transport=grpc", f"--servers=127.0.0.1:{grpc_port}",
            ),
        )
        status = yield bounded(process.ended)
        self.assertEqual(status, 2, process.output)
        lines = process.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, process.stderr)
        self.assertTrue(lines[0].startswith("memmq: --servers lists this proxy itself"), lines[0])

    @inlineCallbacks
    def test_cycle_of_two(self) -> None:
        """
        Two proxies that list each other: a publish to one is refused
        within a bounded time (502 saying a loop was detected, or 508); a
        subscriber receives it a bounded number of times; both keep serving.
        """
        files = CertificateFiles(self)
        client = TLSClient(self, files.certificate)
        port_a, port_b = dead_port(), dead_port()
        a, b = yield gatherResults([
            _start_proxy(self, files, [f"127.0.0.1:{port_b}"], address=f"127.0.0.1:{port_a}"),
            _start_proxy(self, files, [f"127.0.0.1:{port_a}"], address=f"127.0.0.1:{port_b}"),
        ])
        topic = "loop"
        sub = yield client.subscribe(a.url, topic)
        for attempt in range(2):
            started = reactor.seconds()
            code, body = yield client.publish(a.url, topic, b"round %d" % attempt)
            took = reactor.seconds() - started
            MEASURED[f"cycle_publish_{attempt}_seconds"] = took
            self.assertNotEqual(code, 200, body)
            self.assertTrue(code == 508 or (code == 502 and b"loop detected" in body), (code, body))
            self.assertLess(took, 10, f"the loop took {took:.1f} s to be refused")
        self.assertLessEqual(len(sub.messages), 16)
        for attempt in range(2):
            self.assertLessEqual(sub.messages.count(b"round %d" % attempt), 8)
        code, body = yield client.publish(b.url, topic, b"to b")
        self.assertNotEqual(code, 200, body)
