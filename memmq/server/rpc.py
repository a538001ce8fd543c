"""
The gRPC front-end: asim/mq's C{MQ} service (C{Pub}, C{Sub}), with gRPC
health checking and server reflection, as a side-service.

gRPC runs on C{grpc.aio}, on an asyncio loop in a thread of its own
(L{memmq.rpc.bridge}); the reactor thread alone touches the broker.  A
C{Pub} crosses to the reactor and waits there for the broker's answer; a
C{Sub} stream is an L{ISubscriber} on the reactor side whose messages cross
to the loop in batches, so a thousand streams need no thousand threads.

Each stream keeps a bounded number of messages in flight (crossed to the
loop, not yet written to its HTTP/2 stream); past that it pauses its
subscription, and the broker holds, then drops, that subscriber's messages
exactly as it does a slow WebSocket's (README, "Delivery").
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from memmq.auth import Forbidden, Unauthenticated
from memmq.broker import Message, check_topic
from memmq.errors import InvalidTopic, MemmqError, MessageTooLarge, PersistError, PublishError
from memmq.hops import BadHops, TooManyHops, check_hops
from memmq.interfaces import IBroker, ISubscriber
from memmq.rpc import HOPS_METADATA, SERVICE, mq_pb2
from memmq.rpc.bridge import LoopThread
from memmq.server.access import Access
from memmq.server.listen import Address, ListenError
from memmq.server.service import SHUTDOWN_GRACE
from memmq.tls import ServerCertificate

__all__ = ["GRPCService", "HOPS_METADATA", "status_of", "grpc_target"]

_log = Logger()

# Per stream: messages (and bytes) crossed to the loop and not yet written
# before the subscription pauses; it resumes below half of either.
_IN_FLIGHT = 256
_IN_FLIGHT_BYTES = 1024 * 1024
# Room for the topic and the framing of a PubRequest around a payload of
# the largest size accepted.
_FRAMING = 1024

_PUB_RESPONSE = mq_pb2.PubResponse()


def _sub_response(message: Message) -> bytes:
    """
    A SubResponse carrying C{message}'s payload, serialized: once per
    message, for every stream (see L{Message.framed}).
    """
    return mq_pb2.SubResponse(payload=message.payload).SerializeToString()


def _as_is(data: bytes) -> bytes:
    return data


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """
    The gRPC status that says what went wrong: the one place the gRPC
    front-end turns memmq's errors into answers.
    """
    if isinstance(error, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED, str(error)
    if isinstance(error, Forbidden):
        return grpc.StatusCode.PERMISSION_DENIED, str(error)
    if isinstance(error, (InvalidTopic, BadHops)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, MessageTooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, TooManyHops):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    if isinstance(error, PersistError):
        # Durable mode could not write it (HTTP says 507); subscribers may
        # have had it, so asking again is not the client's to do.
        return grpc.StatusCode.DATA_LOSS, str(error)
    if isinstance(error, PublishError):
        # Some of a proxy's upstreams did not take it (HTTP says 502); the
        # others did, so asking again would publish it twice there.
        return grpc.StatusCode.ABORTED, str(error)
    if isinstance(error, MemmqError):
        # Not taken (the server is shutting down): asking again is safe.
        return grpc.StatusCode.UNAVAILABLE, str(error)
    _log.error("gRPC call failed: {error!r}", error=error)
    return grpc.StatusCode.INTERNAL, "internal error"


def grpc_target(address: Address) -> str:
    """
    C{address} as gRPC spells a listening address: an empty host is every
    interface, IPv4 and IPv6 (C{[::]}).
    """
    host = address.host or "::"
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


def _bind_error(address: Address, error: Exception) -> str:
    """
    Why gRPC could not listen on C{address}, in the words the HTTP side
    uses (gRPC's own message sends the user to its debug logging): the
    error binding it ourselves gives, else gRPC's.
    """
    family = socket.AF_INET6 if ":" in (address.host or "::") else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address.host or "::", address.port))
    except OSError as e:
        return e.strerror or str(e)
    return str(error)


def _hops(context) -> int:
    for key, value in context.invocation_metadata() or ():
        if key == HOPS_METADATA:
            return check_hops(value)
    return 0


# What ends a stream whose JWT expired (instead of None, the server
# stopping); compared by identity, so not a bytes value (b"" is one object).
_EXPIRED = object()


@implementer(ISubscriber)
class _Stream:
    """
    One C{Sub} stream.  Its reactor half is the broker's subscriber; its
    loop half hands the serialized responses to the call.
    """

    def __init__(self, service: GRPCService) -> None:
        self._service = service
        self._thread = service.thread
        # The reactor's half.
        self.subscription = None
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._held = False
        # The loop's half.
        self._pending: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._expiry = None
        #: The stream ended because its JWT expired.
        self.expired = False

    # -- on the reactor ----------------------------------------------------

    def subscribe(self, topic: str, metadata=(), peer: str = "") -> None:
        access = self._service.access
        identity = access.check_call(metadata, "subscribe", topic, peer)
        self.subscription = self._service.broker.subscribe(topic, self)
        self._service.streams.add(self)
        self._expiry = access.at_expiry(identity, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        self._thread.to_loop.call(self._push, _EXPIRED)

    def deliver(self, message: Message) -> None:
        data = message.framed(_sub_response)
        self._in_flight += 1
        self._in_flight_bytes += len(data)
        self._thread.to_loop.call(self._push, data)
        if not self._held and (self._in_flight >= _IN_FLIGHT or self._in_flight_bytes >= _IN_FLIGHT_BYTES):
            self._held = True
            self.subscription.pause()

    def _written(self, count: int, size: int) -> None:
        self._in_flight -= count
        self._in_flight_bytes -= size
        if self._held and self._in_flight <= _IN_FLIGHT // 2 and self._in_flight_bytes <= _IN_FLIGHT_BYTES // 2:
            self._held = False
            if self.subscription is not None:
                self.subscription.resume()

    def unsubscribe(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._service.streams.discard(self)
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            self._service.broker.unsubscribe(subscription)

    def end(self) -> None:
        """
        The server is stopping: end the stream (status OK) once what was
        delivered is written.
        """
        self._thread.to_loop.call(self._push, None)

    # -- on the loop -------------------------------------------------------

    def _push(self, data) -> None:
        self._pending.append(data)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send(self, context) -> None:
        """
        Write what is delivered to the call until the stream ends, telling
        the reactor after each batch taken how much was written.
        """
        pending = self._pending
        while True:
            while not pending:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
            self._waiter = None
            batch = list(pending)
            pending.clear()
            for data in batch:
                if data is None:
                    return
                if data is _EXPIRED:
                    self.expired = True
                    return
                await context.write(data)
            self._thread.to_reactor.call(self._written, len(batch), sum(map(len, batch)))


class _MQ:
    """
    The C{MQ} service's handlers, on the loop.
    """

    def __init__(self, service: GRPCService) -> None:
        self._service = service
        self._thread = service.thread
        self._max_message_size = service.max_message_size

    async def Pub(self, request, context):
        try:
            topic = check_topic(request.topic)
            payload = request.payload
            if len(payload) > self._max_message_size:
                raise MessageTooLarge(
                    f"payload of {len(payload)} bytes is over the limit of {self._max_message_size} bytes"
                )
            hops = _hops(context)
            if self._service.stopping:
                raise MemmqError("server shutting down")
            await self._thread.in_reactor(
                self._publish, (context.invocation_metadata(), context.peer()), topic, payload, hops
            )
        except Exception as e:  # the one boundary: every error becomes a status
            code, details = status_of(e)
        else:
            return _PUB_RESPONSE
        await context.abort(code, details)

    def _publish(self, caller, topic: str, payload: bytes, hops: int):
        # On the reactor: access control (with the call's metadata and
        # peer), then the broker.
        self._service.access.check_call(caller[0], "publish", topic, caller[1])
        return self._service.broker.publish(topic, payload, hops)

    async def Sub(self, request, context):
        stream = _Stream(self._service)
        try:
            topic = check_topic(request.topic)
            if self._service.stopping:
                raise MemmqError("server shutting down")
            await self._thread.in_reactor(stream.subscribe, topic, context.invocation_metadata(), context.peer())
        except Exception as e:
            code, details = status_of(e)
        else:
            try:
                # Subscribed: say so at once, so that a client knows from
                # when on it receives what is published.
                await context.send_initial_metadata(())
                await stream.send(context)
            finally:
                self._thread.to_reactor.call(stream.unsubscribe)
            if not stream.expired:
                return
            code, details = grpc.StatusCode.UNAUTHENTICATED, "token expired: subscribe again with a new one"
        await context.abort(code, details)


class GRPCService(Service):
    """
    Serves the C{MQ} service over TLS on one address, from a thread of its
    own, over C{broker}.

    @ivar port: the port listened on, once started.
    @ivar streams: the open C{Sub} streams (reactor side).
    """

    name = "grpc"

    def __init__(
        self, broker: IBroker, address: Address, certificate: ServerCertificate, reactor, max_message_size: int,
        role: str = "", access: Access | None = None,
    ) -> None:
        self.broker = broker
        self.access = access or Access(clock=reactor)
        self.address = address
        self.certificate = certificate
        self.max_message_size = max_message_size
        self.role = role
        self._reactor = reactor
        self.thread = LoopThread(reactor, "memmq-grpc")
        self.streams: set[_Stream] = set()
        self.stopping = False
        self.port: int | None = None
        #: share the port with the other workers of the server (--workers)
        self.reuse_port = False
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None

    def privilegedStartService(self) -> None:
        # Listen here, as the HTTP front-end does (a port in use fails the
        # start); under twistd this runs after daemonizing, and gRPC does
        # not survive a fork.
        if self.port is None:
            self._listen()
        super().privilegedStartService()

    def _listen(self) -> None:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self.thread.loop)
        try:
            self.port = future.result(10)
        except Exception as e:
            self.thread.stop()
            raise ListenError(f"cannot listen for gRPC on {self.address}: {_bind_error(self.address, e)}") from None

    async def _serve(self) -> int:
        server = grpc.aio.server(
            options=[
                # Without this, a second server could bind the same port;
                # the workers of one server (--workers) share theirs so.
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                ("grpc.max_receive_message_length", self.max_message_size + _FRAMING),
                ("grpc.max_send_message_length", -1),
                # Ping idle clients every 30 s and drop those that do not
                # answer within 30 s (as autobahn's auto-ping does for
                # WebSocket subscribers); allow clients' own pings as often.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 30_000),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        mq = _MQ(self)
        # The generated add_MQServicer_to_server, but for Sub's serializer:
        # responses come serialized once per message, for every stream.
        handlers = {
            "Pub": grpc.unary_unary_rpc_method_handler(
                mq.Pub,
                request_deserializer=mq_pb2.PubRequest.FromString,
                response_serializer=mq_pb2.PubResponse.SerializeToString,
            ),
            "Sub": grpc.unary_stream_rpc_method_handler(
                mq.Sub, request_deserializer=mq_pb2.SubRequest.FromString, response_serializer=_as_is
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_registered_method_handlers(SERVICE, handlers)
        self._health = health_aio.HealthServicer()
        await self._health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        credentials = grpc.ssl_server_credentials([(self.certificate.key_pem(), self.certificate.chain_pem())])
        port = server.add_secure_port(grpc_target(self.address), credentials)
        if not port:
            raise ListenError("address in use or not available")
        await server.start()
        self._server = server
        return port

    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()
        # Said once every service has its ports, as the HTTP front-end does.
        _log.info(
            "memmq listening for gRPC on {address} (certificate {origin}){role}",
            address=grpc_target(Address(self.address.host or "::", self.port)),
            origin=self.certificate.origin, role=self.role,
        )

    def stopService(self) -> Deferred[None]:
        """
        Report NOT_SERVING, end every stream (status OK), let calls in
        flight finish for a moment, and stop the thread: within a second.
        """
        super().stopService()
        self.stopping = True
        _log.info("memmq stopping gRPC: ending {count} streams", count=len(self.streams))
        for stream in list(self.streams):
            stream.end()

        def gone(result):
            # Streams whose calls never finished (the loop is gone).
            for stream in list(self.streams):
                stream.unsubscribe()
            return None

        return self.thread.stop(self._shut_down).addTimeout(SHUTDOWN_GRACE * 2.5, self._reactor).addBoth(gone)

    async def _shut_down(self) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE)
