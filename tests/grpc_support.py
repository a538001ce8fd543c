"""
What the gRPC tests share: an in-process gRPC front-end on a loopback port,
and a bare C{grpc.aio} client (the generated stubs, verifying the server's
certificate) on a thread of its own, with bounded waits on the reactor.
"""

from __future__ import annotations

import re

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SkipTest

from memmq.errors import MemmqError
from memmq.rpc import mq_pb2, mq_pb2_grpc
from memmq.rpc.bridge import LoopThread
from memmq.server.listen import parse_address
from memmq.server.rpc import GRPCService
from memmq.server.web import DEFAULT_MAX_MESSAGE_SIZE
from memmq.tls import ServerCertificate, self_signed_certificate
from tests.support import WAIT, ServerProcess, bounded

GRPC_LISTENING = re.compile(rb"memmq listening for gRPC on (\S+):(\d+) \(certificate ([^)]*)\)")


class GRPCServerProcess(ServerProcess):
    """
    A memmq child process serving gRPC: knows its gRPC port once logged.
    """

    LISTENING = GRPC_LISTENING


class RunningGRPC:
    """
    An in-process gRPC front-end on 127.0.0.1, port 0, over C{broker}.
    """

    def __init__(
        self,
        testcase,
        broker,
        certificate: ServerCertificate | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        address: str = "127.0.0.1:0",
    ) -> None:
        self.broker = broker
        self.certificate = certificate or self_signed_certificate("127.0.0.1")
        self.service = GRPCService(broker, parse_address(address), self.certificate, reactor, max_message_size)
        try:
            self.service.startService()
        except MemmqError as e:
            raise SkipTest(f"cannot listen for gRPC: {e}") from None
        testcase.addCleanup(self.stop)
        self.port = self.service.port
        self.server = f"127.0.0.1:{self.port}"

    def stop(self) -> Deferred | None:
        if self.service.running:
            return bounded(self.service.stopService())
        return None


class Stream:
    """
    A C{Sub} call seen from the reactor: the payloads received so far, and
    how it ended.
    """

    def __init__(self, client: RawClient) -> None:
        self._client = client
        self.payloads: list[bytes] = []
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None
        self.opened: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self._waiters: list[tuple[int, Deferred]] = []
        self._call = None

    def _received(self, payloads: list[bytes]) -> None:
        self.payloads.extend(payloads)
        for entry in list(self._waiters):
            if len(self.payloads) >= entry[0]:
                self._waiters.remove(entry)
                entry[1].callback(self.payloads)

    def _ended(self, code, details) -> None:
        self.code, self.details = code, details
        if not self.opened.called:
            self.opened.errback(RuntimeError(f"Sub failed: {code} {details}"))
        for _, d in self._waiters:
            d.errback(RuntimeError(f"stream ended ({code}) after {len(self.payloads)} messages"))
        self._waiters = []
        self.ended.callback(code)

    def wait_for(self, count: int, seconds: float = WAIT) -> Deferred:
        """
        Fire with the payloads once there are C{count} of them.
        """
        if len(self.payloads) >= count:
            return succeed(self.payloads)
        if self.ended.called:
            return fail(RuntimeError(f"stream ended after {len(self.payloads)} messages"))
        d: Deferred = Deferred()
        self._waiters.append((count, d))
        return bounded(d, seconds)

    def wait_ended(self, seconds: float = WAIT) -> Deferred:
        if self.ended.called:
            return succeed(self.code)
        d: Deferred = Deferred()
        self.ended.addBoth(lambda r: (d.callback(r), r)[1])
        return bounded(d, seconds)

    def cancel(self) -> None:
        """
        Hang up, as a client that goes away mid-stream.
        """
        self._client.thread.to_loop.call(lambda: self._call is not None and self._call.cancel())

    async def run(self, stub, topic: str, read: bool) -> None:
        to_reactor = self._client.thread.to_reactor
        call = self._call = stub.Sub(mq_pb2.SubRequest(topic=topic))
        try:
            await call.initial_metadata()
            if not call.done():
                to_reactor.call(lambda: self.opened.called or self.opened.callback(self))
            while read:
                response = await call.read()
                if response is grpc.aio.EOF:
                    break
                to_reactor.call(self._received, [response.payload])
            code = await call.code()
            details = await call.details()
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details()
        except BaseException:
            code, details = grpc.StatusCode.CANCELLED, "cancelled"
        to_reactor.call(self._ended, code, details)


class RawClient:
    """
    A bare gRPC client of one server, verifying its certificate: the
    generated stubs, on an asyncio loop in a thread of its own.
    """

    def __init__(self, testcase, port: int, certificate: ServerCertificate, host: str = "127.0.0.1") -> None:
        self.thread = LoopThread(reactor, "test-grpc-client")
        self.thread.start()
        self._target = f"{host}:{port}"
        self._roots = certificate.chain_pem()
        self._channel = None
        testcase.addCleanup(self.close)

    def _open(self):
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(self._target, grpc.ssl_channel_credentials(self._roots))
        return self._channel

    def publish(self, topic: str, payload: bytes, metadata=None) -> Deferred:
        """
        Fire with None once accepted, or fail with the AioRpcError.
        """

        async def call():
            stub = mq_pb2_grpc.MQStub(self._open())
            await stub.Pub(mq_pb2.PubRequest(topic=topic, payload=payload), metadata=metadata, timeout=WAIT)

        return bounded(self.thread.run(call))

    def status_of_publish(self, topic: str, payload: bytes, metadata=None) -> Deferred:
        """
        Fire with the (code, details) the server answered.
        """

        def failed(failure):
            failure.trap(grpc.aio.AioRpcError)
            return failure.value.code(), failure.value.details()

        return self.publish(topic, payload, metadata).addCallbacks(lambda _: (grpc.StatusCode.OK, ""), failed)

    def subscribe(self, topic: str, read: bool = True) -> Stream:
        """
        Open a C{Sub} call; its C{opened} fires once the server subscribed.
        With C{read=False} nothing is read from it (a stalled subscriber).
        """
        stream = Stream(self)
        self.thread.run(lambda: stream.run(mq_pb2_grpc.MQStub(self._open()), topic, read))
        return stream

    def health(self, service: str = "") -> Deferred:
        async def call():
            stub = health_pb2_grpc.HealthStub(self._open())
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
            return response.status

        return bounded(self.thread.run(call))

    def watch_health(self, service: str, statuses: list) -> Deferred:
        """
        Watch C{service}'s health, appending each status to C{statuses} on
        the reactor; fires when the watch ends.
        """

        async def call():
            stub = health_pb2_grpc.HealthStub(self._open())
            try:
                async for response in stub.Watch(health_pb2.HealthCheckRequest(service=service)):
                    self.thread.to_reactor.call(statuses.append, response.status)
            except grpc.aio.AioRpcError:
                pass

        return self.thread.run(call)

    def reflect(self, request: reflection_pb2.ServerReflectionRequest) -> Deferred:
        """
        One reflection request; fire with the response.
        """

        async def call():
            stub = reflection_pb2_grpc.ServerReflectionStub(self._open())
            call = stub.ServerReflectionInfo(iter([request]), timeout=WAIT)
            async for response in call:
                return response

        return bounded(self.thread.run(call))

    def close(self) -> Deferred:
        async def close_channel():
            if self._channel is not None:
                await self._channel.close()

        return bounded(self.thread.stop(close_channel))
