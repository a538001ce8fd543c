"""
Tests for memmq.client.rpc, and for --transport=grpc in the command-line
client and the proxy: against real gRPC front-ends on loopback, over real
TLS.
"""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from memmq.broker import Broker
from memmq.cli import client_from_options
from memmq.client import PublishError, SubscribeError, selector
from memmq.client import rpc as grpc_client
from memmq.client.pinning import name_override
from memmq.client.rpc import GRPCClient
from memmq.errors import InvalidTopic
from memmq.interfaces import ISubscriber
from memmq.options import MemmqOptions
from memmq.tap import Options, makeService
from memmq.tls import ServerCertificate, self_signed_certificate
from tests.grpc_support import RawClient, RunningGRPC
from tests.support import CertificateFiles, Recorder, TLSClient, bounded, dead_port, spawn_memmq, until


def _go_style_certificate(name: str) -> ServerCertificate:
    """
    A certificate made as asim/mq's server makes its own: self-signed, a
    CA, C{name} as its one DNS name, no common name.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Co")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ServerCertificate(key, [certificate], "made as asim/mq does")


def _client(testcase, servers, **kwargs) -> GRPCClient:
    c = grpc_client.new(servers=servers, reactor=reactor, **kwargs)
    testcase.addCleanup(lambda: bounded(c.close()))
    return c


@implementer(ISubscriber)
class ClientTests(TestCase):
    """
    The client library's interface, over gRPC.
    """

    timeout = 60

    def setUp(self) -> None:
        self.broker = Broker()
        self.server = RunningGRPC(self, self.broker)
        self.client = _client(self, [self.server.server])

    @inlineCallbacks
    def test_get(self) -> None:
        """
        subscribe(topic) fires once subscribed; get() takes each message in
        order; the unverified default pins the generated certificate.
        """
        subscription = yield bounded(self.client.subscribe("seed"))
        self.assertEqual(subscription.servers, [f"https://{self.server.server}"])
        for payload in (b"one", b"", b"\x00\xff"):
            yield bounded(self.client.publish("seed", payload))
        got = []
        for _ in range(3):
            got.append((yield bounded(subscription.get())))
        self.assertEqual(got, [b"one", b"", b"\x00\xff"])

    @inlineCallbacks
    def test_concurrent_publishes_keep_order(self) -> None:
        """
        Publishes made without waiting for each other arrive in the order
        they were made.  (memmq's own gRPC server happens to serve one
        channel's calls in order; a server that serves them concurrently,
        as Go's does, would not, which is why the client sends a topic's
        publishes one after the other.)
        """
        received: list[bytes] = []
        yield bounded(self.client.subscribe("order", received.append))
        yield bounded(gatherResults([self.client.publish("order", b"%03d" % i) for i in range(200)]))
        yield until(lambda: len(received) == 200)
        self.assertEqual(received, [b"%03d" % i for i in range(200)])

    @inlineCallbacks
    def test_async_for_and_callback(self) -> None:
        """
        A subscription iterates with async for; a callable subscriber gets
        each payload.
        """
        received: list[bytes] = []
        yield bounded(self.client.subscribe("cb", received.append))
        subscription = yield bounded(self.client.subscribe("cb"))
        yield bounded(gatherResults([self.client.publish("cb", b"%d" % i) for i in range(3)]))

        async def take(n):
            out = []
            async for payload in subscription:
                out.append(payload)
                if len(out) == n:
                    return out

        self.assertEqual((yield bounded(ensureDeferred(take(3)))), [b"0", b"1", b"2"])
        yield until(lambda: len(received) == 3)
        self.assertEqual(received, [b"0", b"1", b"2"])

    @inlineCallbacks
    def test_attach(self) -> None:
        """
        attach(topic, ISubscriber) returns at once and delivers Messages;
        unsubscribe closes the call and frees the topic on the server.
        """
        collect = Recorder()
        subscription = self.client.attach("ib", collect)
        yield until(lambda: self.broker.topic("ib") is not None)
        yield bounded(self.client.publish("ib", b"m"))
        yield until(lambda: len(collect.messages) == 1)
        self.assertEqual((collect.messages[0].topic, collect.messages[0].payload), ("ib", b"m"))
        yield bounded(self.client.unsubscribe(subscription))
        yield until(lambda: self.broker.topic("ib") is None)

    @inlineCallbacks
    def test_errors(self) -> None:
        """
        A bad topic fails at once with InvalidTopic; an oversized payload
        with PublishError naming RESOURCE_EXHAUSTED, tried once only.
        """
        with self.assertRaises(InvalidTopic):
            yield self.client.publish("", b"x")
        with self.assertRaises(PublishError) as caught:
            yield bounded(self.client.publish("big", b"x" * (2 * 1024 * 1024)))
        self.assertIn("RESOURCE_EXHAUSTED", str(caught.exception))

    @inlineCallbacks
    def test_close(self) -> None:
        """
        close() ends subscriptions, channels and the client's gRPC thread.
        """
        yield bounded(self.client.subscribe("closing"))
        self.assertTrue(self.client.transport._thread.running)
        yield bounded(self.client.close())
        self.assertFalse(self.client.transport._thread.running)
        yield until(lambda: self.broker.topic("closing") is None)


class TLSTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_ca_file(self) -> None:
        """
        With a CA file the server's certificate is verified: its own
        certificate as CA works, another one fails the publish.
        """
        files = CertificateFiles(self)
        server = RunningGRPC(self, Broker(), certificate=files.certificate)
        yield bounded(_client(self, [server.server], ca_file=files.cert_file).publish("t", b"x"))
        other = os.path.abspath(self.mktemp())
        with open(other, "wb") as f:
            f.write(self_signed_certificate("127.0.0.1").chain_pem())
        with self.assertRaises(PublishError):
            yield bounded(_client(self, [server.server], ca_file=other, retries=0).publish("t", b"x"))

    def testname_override(self) -> None:
        """
        A pinned certificate is checked against a name it holds when the
        host used is not one of them.
        """
        certificate = self_signed_certificate("memmq.example").certificate
        self.assertIsNone(name_override(certificate, "127.0.0.1"))
        self.assertIsNone(name_override(certificate, "memmq.example"))
        self.assertEqual(name_override(certificate, "10.1.2.3"), "memmq.example")
        named_with_port = _go_style_certificate("127.0.0.1:8081").certificate
        self.assertEqual(name_override(named_with_port, "127.0.0.1"), "[127.0.0.1:8081]")

    @inlineCallbacks
    def test_certificate_naming_host_and_port(self) -> None:
        """
        A server whose certificate names C{DNS:127.0.0.1:PORT}, host and
        port, as asim/mq's generated one does (no name a host can match) is
        reached unverified, as over HTTP: its pinned certificate is trusted.
        """
        port = dead_port()
        certificate = _go_style_certificate(f"127.0.0.1:{port}")
        broker = Broker()
        RunningGRPC(self, broker, certificate=certificate, address=f"127.0.0.1:{port}")
        client = _client(self, [f"127.0.0.1:{port}"], retries=0)
        subscription = yield bounded(client.subscribe("go"))
        yield bounded(client.publish("go", b"named with a port"))
        self.assertEqual((yield bounded(subscription.get())), b"named with a port")

    @inlineCallbacks
    def test_restart_with_new_certificate(self) -> None:
        """
        A subscription to a server that restarts (same port, new generated
        certificate) comes back: the new certificate is fetched and pinned.
        """
        broker = Broker()
        first = RunningGRPC(self, broker)
        port = first.port
        client = _client(self, [first.server])
        subscription = yield bounded(client.subscribe("back"))
        yield first.stop()
        second = RunningGRPC(self, broker, address=f"127.0.0.1:{port}")
        yield until(lambda: broker.topic("back") is not None)
        raw = RawClient(self, second.port, second.certificate)
        yield raw.publish("back", b"again")
        self.assertEqual((yield bounded(subscription.get())), b"again")
        yield bounded(client.publish("back", b"and me"))
        self.assertEqual((yield bounded(subscription.get())), b"and me")

    @inlineCallbacks
    def test_server_down(self) -> None:
        """
        Nothing listening: subscribe fails with SubscribeError after its
        retries, publish with PublishError.
        """
        client = _client(self, [f"127.0.0.1:{dead_port()}"], retries=1)
        with self.assertRaises(SubscribeError):
            yield bounded(client.subscribe("down"))
        with self.assertRaises(PublishError):
            yield bounded(client.publish("down", b"x"))


class SelectorTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_all_and_shard(self) -> None:
        """
        All publishes to every server; Shard to the one the topic picks.
        """
        brokers = [Broker(), Broker()]
        servers = [RunningGRPC(self, b) for b in brokers]
        names = [s.server for s in servers]
        every = _client(self, names)
        subscription = yield bounded(every.subscribe("all"))
        yield bounded(every.publish("all", b"x"))
        self.assertEqual((yield bounded(subscription.get())), b"x")
        self.assertEqual((yield bounded(subscription.get())), b"x")
        self.assertEqual([b.published for b in brokers], [1, 1])
        shard = _client(self, names, selector=selector.Shard())
        yield bounded(shard.publish("all", b"y"))
        self.assertEqual(sorted(b.published for b in brokers), [1, 2])


class CommandTests(TestCase):
    """
    memmq --client --transport=grpc as a real child process.
    """

    timeout = 90

    @inlineCallbacks
    def test_publish_and_subscribe(self) -> None:
        """
        --publish sends each line over gRPC; --subscribe prints each message
        received over gRPC on its own line.
        """
        broker = Broker()
        server = RunningGRPC(self, broker)
        raw = RawClient(self, server.port, server.certificate)
        stream = raw.subscribe("lines")
        yield bounded(stream.opened)
        subscriber = spawn_memmq(
            self, "--client", "--transport=grpc", "--topic=lines", "--subscribe", f"--servers={server.server}"
        )
        yield until(
            lambda: broker.topic("lines") is not None and len(broker.topic("lines").subscriptions) == 2
        ).addErrback(lambda f: self.fail(f"not subscribed: {subscriber.stderr!r} {subscriber.status}"))
        publisher = spawn_memmq(
            self, "--client", "--transport=grpc", "--topic=lines", "--publish", f"--servers={server.server}"
        )
        publisher.transport.write(b"first\n\nthird\r\nlast")
        publisher.transport.closeStdin()
        self.assertEqual((yield bounded(publisher.ended)), 0, publisher.stderr)
        self.assertEqual((yield stream.wait_for(4)), [b"first", b"", b"third", b"last"])
        yield until(lambda: subscriber.stdout.count(b"\n") == 4)
        self.assertEqual(subscriber.stdout, b"first\n\nthird\nlast\n")
        subscriber.transport.signalProcess("TERM")
        yield bounded(subscriber.ended)

    @inlineCallbacks
    def test_server_down(self) -> None:
        """
        No server: one line on stderr, exit status 1, no traceback.
        """
        child = spawn_memmq(
            self,
            "--client",
            "--transport=grpc",
            "--topic=t",
            "--publish",
            "--retries=0",
            f"--servers=127.0.0.1:{dead_port()}",
        )
        child.transport.write(b"x\n")
        child.transport.closeStdin()
        self.assertEqual((yield bounded(child.ended)), 1)
        self.assertNotIn(b"Traceback", child.stderr)
        self.assertIn(b"publish to 't' failed", child.stderr)


class PromptTests(TestCase):
    """
    The interactive prompt over gRPC (what -i --transport=grpc runs).
    """

    timeout = 60

    @inlineCallbacks
    def test_prompt(self) -> None:
        """
        A typed line is published over gRPC and not echoed back; a line
        from someone else is shown.
        """
        from prompt_toolkit.input import create_pipe_input
        from prompt_toolkit.output import DummyOutput

        from memmq.prompt import Prompt

        server = RunningGRPC(self, Broker())
        raw = RawClient(self, server.port, server.certificate)
        stream = raw.subscribe("t")
        yield bounded(stream.opened)
        pipe = create_pipe_input()
        keys = pipe.__enter__()
        self.addCleanup(pipe.__exit__, None, None, None)
        client = _client(self, [server.server], retries=0)
        printed: list[str] = []
        prompt = Prompt(client, "t", reactor, input=keys, output=DummyOutput(), printer=printed.append)
        prompt.start()
        self.addCleanup(lambda: bounded(prompt.stop()))
        yield bounded(prompt.ready)
        keys.send_text("mine\r")
        self.assertEqual((yield stream.wait_for(1)), [b"mine"])
        yield raw.publish("t", b"theirs")
        yield until(lambda: printed)
        self.assertEqual(printed, ["theirs"])


class ProxyTests(TestCase):
    """
    A proxy over gRPC upstreams, serving HTTP or gRPC.
    """

    timeout = 90

    def _proxy(self, args: list[str]):
        files = CertificateFiles(self)
        self.brokers = [Broker(), Broker()]
        self.upstreams = [RunningGRPC(self, b) for b in self.brokers]
        options = Options()
        options.parseOptions(
            [
                "--proxy",
                "--address=127.0.0.1:0",
                "--servers=" + ",".join(u.server for u in self.upstreams),
                f"--cert_file={files.cert_file}",
                f"--key_file={files.key_file}",
                *args,
            ]
        )
        service = makeService(options, reactor)
        service.startService()
        self.addCleanup(lambda: service.running and bounded(service.stopService()))
        return service, files

    @inlineCallbacks
    def test_http_front_grpc_upstream(self) -> None:
        """
        --upstream_transport=grpc: the proxy serves HTTP and WebSocket and
        speaks gRPC to its servers; a publish reaches every upstream and
        comes back to the proxy's subscriber.
        """
        service, files = self._proxy(["--upstream_transport=grpc"])
        self.assertIsInstance(service.broker.client, GRPCClient)
        port = service.getServiceNamed("http").port.getHost().port
        url = f"https://127.0.0.1:{port}"
        http = TLSClient(self, files.certificate)
        websocket = yield http.subscribe(url, "via")
        yield until(lambda: all(b.topic("via") is not None for b in self.brokers))
        code, body = yield http.publish(url, "via", b"hello")
        self.assertEqual(code, 200, body)
        self.assertEqual([b.published for b in self.brokers], [1, 1])
        # Once from each upstream (All).
        self.assertEqual((yield websocket.wait_for(2)), [b"hello", b"hello"])

    @inlineCallbacks
    def test_grpc_both_sides(self) -> None:
        """
        --transport=grpc: the proxy serves gRPC and speaks gRPC upstream;
        the hop count goes along as metadata.
        """
        service, files = self._proxy(["--transport=grpc", "--select=shard"])
        port = service.getServiceNamed("grpc").port
        raw = RawClient(self, port, files.certificate)
        stream = raw.subscribe("both")
        yield bounded(stream.opened)
        yield until(lambda: sum(b.topic("both") is not None for b in self.brokers) == 1)
        yield raw.publish("both", b"through")
        self.assertEqual((yield stream.wait_for(1)), [b"through"])
        self.assertEqual(sorted(b.published for b in self.brokers), [0, 1])


    @inlineCallbacks
    def test_partial_failure_not_retried(self) -> None:
        """
        A gRPC proxy one of whose upstreams is down answers ABORTED naming
        it; a client with retries does not ask again, so the upstream that
        took the message has it once (UNAVAILABLE would be retried).
        """
        service, files = self._proxy(["--transport=grpc", "--retries=0"])
        yield self.upstreams[1].stop()
        port = service.getServiceNamed("grpc").port
        c = _client(self, [f"127.0.0.1:{port}"], retries=3)
        error = yield self.assertFailure(bounded(c.publish("half", b"once")), PublishError)
        self.assertIn("ABORTED", str(error))
        self.assertIn(self.upstreams[1].server, str(error))
        self.assertEqual([b.published for b in self.brokers], [1, 0])


class OptionTests(SynchronousTestCase):
    def _parse(self, *args: str) -> MemmqOptions:
        options = MemmqOptions()
        options.parseOptions(list(args))
        return options

    def test_refused(self) -> None:
        """
        Bad transports and misplaced gRPC flags are refused with a clear
        reason.
        """
        from twisted.python.usage import UsageError

        for args, reason in [
            (["--transport=smoke"], "unknown --transport 'smoke': use http or grpc"),
            (["--transport=grpc", "--grpc_address=:9000"], "--grpc_address goes with --transport=http"),
            (["--upstream_transport=grpc"], "--upstream_transport goes with --proxy"),
            (["--proxy", "--servers=a:1", "--upstream_transport=x"], "unknown --upstream_transport 'x'"),
            (["--client", "--topic=t", "--publish", "--grpc_address=:9000"], "--grpc_address is for a server"),
            (["--grpc_address=nonsense"], "--grpc_address:"),
        ]:
            with self.assertRaises(UsageError) as caught:
                self._parse(*args)
            self.assertIn(reason, str(caught.exception))

    def test_client_transport(self) -> None:
        """
        --transport picks the client of --client and -i; a proxy's upstream
        follows --upstream_transport, else --transport.
        """
        cases = [
            (["--client", "--topic=t", "--publish", "--transport=grpc"], GRPCClient),
            (["-i", "--topic=t", "--transport=grpc"], GRPCClient),
            (["--proxy", "--servers=a:1", "--transport=grpc"], GRPCClient),
            (["--proxy", "--servers=a:1", "--upstream_transport=grpc"], GRPCClient),
            (["--proxy", "--servers=a:1", "--transport=grpc", "--upstream_transport=http"], None),
        ]
        for args, kind in cases:
            client = client_from_options(self._parse(*args), reactor)
            self.addCleanup(client.close)
            self.assertEqual(isinstance(client, GRPCClient), kind is GRPCClient, args)

    def test_services(self) -> None:
        """
        --transport=grpc serves gRPC on --address and HTTP only on --listen;
        --grpc_address adds gRPC beside HTTP.
        """

        def names(*args):
            return sorted(s.name for s in makeService(self._parse(*args), reactor) if s.name in ("grpc", "http"))

        self.assertEqual(names("--transport=grpc"), ["grpc"])
        self.assertEqual(names("--transport=grpc", "--listen=tcp:0"), ["grpc", "http"])
        self.assertEqual(names("--grpc_address=:0"), ["grpc", "http"])
        self.assertEqual(names(), ["http"])
