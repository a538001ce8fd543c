"""
Tests for memmq.server.rpc: the gRPC front-end end-to-end over real TLS on
loopback, with bare gRPC clients (the generated stubs), beside the HTTP
front-end over the same broker; and the server run as a real process.
"""

from __future__ import annotations

import sys
import threading
import time

import grpc
import treq
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from memmq.broker import Broker
from memmq.rpc import HOPS_METADATA, SERVICE
from memmq.server.listen import ListenError, parse_address
from memmq.server.rpc import GRPCService
from memmq.tls import self_signed_certificate
from tests.grpc_support import GRPCServerProcess, RawClient, RunningGRPC
from tests.support import TWISTD, RunningServer, bounded, until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _grpc_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("memmq-grpc")]


class GRPCTests(TestCase):
    """
    A server serving HTTP and gRPC over one broker.
    """

    timeout = 120

    def setUp(self) -> None:
        self.http = RunningServer(self)
        self.broker = self.http.broker
        self.grpc = RunningGRPC(self, self.broker, certificate=self.http.certificate, max_message_size=64 * 1024)
        self.client = RawClient(self, self.grpc.port, self.http.certificate)

    @inlineCallbacks
    def test_round_trip_across_transports(self) -> None:
        """
        A message published over gRPC reaches subscribers over gRPC and
        over WebSocket alike; one published over HTTP reaches gRPC
        subscribers; payloads arrive as sent, empty and binary included.
        """
        stream = self.client.subscribe("both")
        yield bounded(stream.opened)
        websocket = yield self.http.client.subscribe(self.http.url, "both")
        yield until(lambda: len(self.broker.topic("both").subscriptions) == 2)
        yield self.client.publish("both", b"over grpc")
        yield self.client.publish("both", b"")
        yield self.client.publish("both", bytes(range(256)))
        code, _ = yield self.http.client.publish(self.http.url, "both", b"over http")
        self.assertEqual(code, 200)
        expected = [b"over grpc", b"", bytes(range(256)), b"over http"]
        self.assertEqual((yield stream.wait_for(4)), expected)
        self.assertEqual((yield websocket.wait_for(4)), expected)

    @inlineCallbacks
    def test_many_streams(self) -> None:
        """
        50 streams x 1,000 messages: every stream gets every message, in
        publish order; nothing is dropped.
        """
        streams = [self.client.subscribe("many") for _ in range(50)]
        yield bounded(gatherResults([s.opened for s in streams]))
        count = 1000
        for i in range(count):
            yield self.client.publish("many", b"%d" % i)
        expected = [b"%d" % i for i in range(count)]
        results = yield bounded(gatherResults([s.wait_for(count) for s in streams]), 60)
        for payloads in results:
            self.assertEqual(payloads, expected)
        self.assertEqual(self.broker.dropped, 0)
        self.assertEqual(self.broker.delivered, 50 * count)

    @inlineCallbacks
    def test_bad_topic(self) -> None:
        """
        A missing, over-long or control-character topic is
        INVALID_ARGUMENT, for Pub and for Sub.
        """
        for topic in ("", "x" * 256, "bad\ntopic"):
            code, details = yield self.client.status_of_publish(topic, b"x")
            self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, topic)
            self.assertIn("topic", details)
            stream = self.client.subscribe(topic)
            stream.opened.addErrback(lambda f: None)
            self.assertEqual((yield stream.wait_ended()), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(self.broker.topics, 0)

    @inlineCallbacks
    def test_oversized_payload(self) -> None:
        """
        A payload over --max_message_size is RESOURCE_EXHAUSTED, just over
        it as far over it; one of exactly the limit is accepted.
        """
        stream = self.client.subscribe("size")
        yield bounded(stream.opened)
        for size in (64 * 1024 + 1, 4 * 1024 * 1024):
            code, details = yield self.client.status_of_publish("size", b"x" * size)
            self.assertEqual(code, grpc.StatusCode.RESOURCE_EXHAUSTED, details)
        yield self.client.publish("size", b"y" * 64 * 1024)
        self.assertEqual((yield stream.wait_for(1)), [b"y" * 64 * 1024])

    @inlineCallbacks
    def test_hops(self) -> None:
        """
        A proxied publish carries its hop count as metadata: past the limit
        it is refused as a loop (FAILED_PRECONDITION); garbage is
        INVALID_ARGUMENT.
        """
        code, details = yield self.client.status_of_publish("hops", b"x", ((HOPS_METADATA, "8"),))
        self.assertEqual(code, grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("loop", details)
        code, _ = yield self.client.status_of_publish("hops", b"x", ((HOPS_METADATA, "many"),))
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT)
        code, _ = yield self.client.status_of_publish("hops", b"x", ((HOPS_METADATA, "3"),))
        self.assertEqual(code, grpc.StatusCode.OK)

    @inlineCallbacks
    def test_disconnect_unsubscribes(self) -> None:
        """
        A client that hangs up mid-stream is unsubscribed at once: the
        topic is freed on the broker.
        """
        stream = self.client.subscribe("gone")
        yield bounded(stream.opened)
        yield self.client.publish("gone", b"one")
        yield stream.wait_for(1)
        self.assertIsNotNone(self.broker.topic("gone"))
        stream.cancel()
        yield until(lambda: self.broker.topic("gone") is None, 5)
        self.assertEqual(self.grpc.service.streams, set())

    @inlineCallbacks
    def test_stalled_subscriber(self) -> None:
        """
        A subscriber that reads nothing has its messages held, then dropped
        and counted, for it alone (README, "Delivery"): publishing never waits,
        and a reading subscriber of the same topic loses nothing.
        """
        self.broker.max_buffered_messages = 20
        stalled = self.client.subscribe("slow", read=False)
        reading = self.client.subscribe("slow")
        yield bounded(gatherResults([stalled.opened, reading.opened]))
        payload = b"z" * 16 * 1024
        count = 400  # 6.4 MB: past HTTP/2 windows, in-flight bound and buffer
        for _ in range(count):
            yield self.client.publish("slow", payload)
        yield reading.wait_for(count)
        self.assertEqual(len(reading.payloads), count)
        dropped = sorted((s.subscription.dropped, s.subscription.buffered) for s in self.grpc.service.streams)
        self.assertEqual(dropped[0], (0, 0))
        self.assertGreater(dropped[1][0], 0)
        self.assertLessEqual(dropped[1][1], 20)
        self.assertEqual(self.broker.dropped, dropped[1][0])

    @inlineCallbacks
    def test_metrics_count_grpc(self) -> None:
        """
        /metrics counts what is published and delivered over gRPC.
        """
        stream = self.client.subscribe("counted")
        yield bounded(stream.opened)
        for _ in range(3):
            yield self.client.publish("counted", b"abc")
        yield stream.wait_for(3)
        response = yield bounded(self.http.client.http.get(self.http.url + "/metrics"))
        body = (yield bounded(treq.content(response))).decode()
        self.assertIn("memmq_messages_published_total 3.0", body)
        self.assertIn("memmq_messages_delivered_total 3.0", body)
        self.assertIn("memmq_subscribers 1.0", body)

    @inlineCallbacks
    def test_health(self) -> None:
        """
        Health checking answers SERVING for the server and for mq.MQ, and a
        watcher sees NOT_SERVING when the server stops.
        """
        self.assertEqual((yield self.client.health("")), SERVING)
        self.assertEqual((yield self.client.health(SERVICE)), SERVING)
        statuses: list = []
        watching = self.client.watch_health(SERVICE, statuses)
        yield until(lambda: statuses == [SERVING])
        yield self.grpc.stop()
        yield bounded(watching)
        self.assertEqual(statuses, [SERVING, NOT_SERVING])

    @inlineCallbacks
    def test_reflection(self) -> None:
        """
        Server reflection lists mq.MQ and describes it without the proto
        file: its methods and message types, as grpcurl would ask.
        """
        response = yield self.client.reflect(reflection_pb2.ServerReflectionRequest(list_services=""))
        names = {s.name for s in response.list_services_response.service}
        self.assertIn("mq.MQ", names)
        self.assertIn("grpc.health.v1.Health", names)
        response = yield self.client.reflect(reflection_pb2.ServerReflectionRequest(file_containing_symbol="mq.MQ"))
        from google.protobuf import descriptor_pb2

        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in response.file_descriptor_response.file_descriptor_proto
        ]
        mq = next(f for f in files if f.package == "mq")
        self.assertEqual([m.name for m in mq.service[0].method], ["Pub", "Sub"])
        self.assertTrue(mq.service[0].method[1].server_streaming)
        self.assertEqual(
            sorted(m.name for m in mq.message_type), ["PubRequest", "PubResponse", "SubRequest", "SubResponse"]
        )

    @inlineCallbacks
    def test_shutdown_ends_streams(self) -> None:
        """
        Stopping the server ends every stream cleanly (status OK, what was
        published first delivered), unsubscribes them, and stops the gRPC
        thread within a second.
        """
        streams = [self.client.subscribe("stop") for _ in range(20)]
        yield bounded(gatherResults([s.opened for s in streams]))
        yield self.client.publish("stop", b"last words")
        started = time.monotonic()
        yield self.grpc.stop()
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 1.0)
        self.assertFalse(self.grpc.service.thread.running)
        self.assertNotIn("memmq-grpc", _grpc_threads())
        codes = yield bounded(DeferredList([s.wait_ended() for s in streams]))
        self.assertEqual({c for _, c in codes}, {grpc.StatusCode.OK})
        self.assertEqual([s.payloads for s in streams], [[b"last words"]] * 20)
        self.assertIsNone(self.broker.topic("stop"))


class StartTests(TestCase):
    timeout = 60

    def test_port_in_use(self) -> None:
        """
        A gRPC address in use fails the start with ListenError (exit 2 from
        the command), and leaves no thread behind.
        """
        busy = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        service = GRPCService(
            Broker(), parse_address(f"127.0.0.1:{busy.getHost().port}"), self_signed_certificate(), reactor, 1024
        )
        self.assertRaises(ListenError, service.startService)
        return until(lambda: not service.thread.running, 5)


class ProcessTests(TestCase):
    """
    memmq --transport=grpc as a real process.
    """

    timeout = 60

    @inlineCallbacks
    def _serve(self, args: list[str]):
        server = GRPCServerProcess.spawn(self, args)
        port = yield server.wait_listening()
        return server, port

    @inlineCallbacks
    def test_sigterm(self) -> None:
        """
        python -m memmq --transport=grpc serves Pub and Sub on --address
        (with its generated certificate, pinned by the client), ends its
        streams and exits 0 on SIGTERM.
        """
        server, port = yield self._serve(["-m", "memmq", "--transport=grpc", "--address=127.0.0.1:0"])
        self.assertEqual(server.origin, "generated")
        from memmq.client.rpc import GRPCClient

        client = GRPCClient([f"127.0.0.1:{port}"], reactor=reactor)
        self.addCleanup(lambda: bounded(client.close()))
        subscription = yield bounded(client.subscribe("proc"))
        yield bounded(client.publish("proc", b"hello"))
        self.assertEqual((yield bounded(subscription.get())), b"hello")
        status = yield server.terminate()
        self.assertEqual(status, 0, server.output)
        self.assertIn(b"memmq stopping gRPC: ending 1 streams", server.output)

    @inlineCallbacks
    def test_twistd(self) -> None:
        """
        twistd -n memmq --transport=grpc serves gRPC and exits 0 on SIGTERM.
        """
        server, port = yield self._serve([*TWISTD, "memmq", "--transport=grpc", "--address=127.0.0.1:0"])
        from memmq.client.rpc import GRPCClient

        client = GRPCClient([f"127.0.0.1:{port}"], reactor=reactor)
        self.addCleanup(lambda: bounded(client.close()))
        yield bounded(client.publish("twistd", b"x"))
        status = yield server.terminate()
        self.assertEqual(status, 0, server.output)

    @inlineCallbacks
    def test_threads(self) -> None:
        """
        A server holding 200 streams runs a handful of threads, not one per
        stream.
        """
        server, port = yield self._serve(["-m", "memmq", "--transport=grpc", "--address=127.0.0.1:0"])
        from memmq.client.rpc import GRPCClient

        client = GRPCClient([f"127.0.0.1:{port}"], reactor=reactor)
        self.addCleanup(lambda: bounded(client.close()))
        subscriptions = yield bounded(gatherResults([client.subscribe(f"t{i % 7}") for i in range(200)]))
        self.assertEqual(len(subscriptions), 200)
        with open(f"/proc/{server.transport.pid}/status") as f:
            threads = int(next(line.split()[1] for line in f if line.startswith("Threads:")))
        self.assertLess(threads, 20)
        status = yield server.terminate()
        self.assertEqual(status, 0, server.output)


if sys.platform != "linux":
    del ProcessTests.test_threads
