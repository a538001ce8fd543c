"""
The client's gRPC transport (asim/mq's C{MQ} service): the same client as
over HTTP, the same selectors, resolvers, retries, subscriptions
and reconnection, over one gRPC channel per server, reused by every publish
and subscription (asim/mq's Go client dials once per publish).

    from memmq.client import rpc

    c = rpc.new(servers=["127.0.0.1:8081"])
    yield c.publish("example", b"bar")
    sub = yield c.subscribe("example")
    data = yield sub.get()

gRPC runs on C{grpc.aio}, on an asyncio loop in a thread of the client's
own (L{memmq.rpc.bridge}), started on first use and stopped by C{close()};
every result comes back on the reactor.

TLS: grpc-python cannot skip verification, so the default (unverified, as
asim/mq) fetches the certificate a server presents, in a TLS handshake of
its own that verifies nothing, and trusts exactly that certificate for that
server (naming one of the names it holds, whichever host it was reached
by); a server that comes back with another certificate is fetched again.
Given C{ca_file}, servers are verified against it, as over HTTP.  An
C{http://} server is spoken to without TLS.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from memmq.client.core import DEFAULT_SERVER, Client, IStream, ITransport, Link, backoff
from memmq.client.pinning import fetch_certificate, name_override
from memmq.client.reasons import reason_of, refusal
from memmq.client.servers import endpoint_of
from memmq.errors import MemmqError
from memmq.hops import TooManyHops
from memmq.rpc import HOPS_METADATA, mq_pb2, mq_pb2_grpc
from memmq.rpc.bridge import LoopThread

__all__ = ["GRPCClient", "GRPCTransport", "new"]

# A publish's retries: the first after 0.05 s, doubling to at most 5 s.
_RETRY_FIRST = 0.05
_RETRY_MAX = 5.0
# The answers that asking again cannot change.
_FINAL = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.ABORTED,
}


# Access control's refusals, as HTTP says them (memmq.client.reasons.refusal).
_REFUSALS = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}


def new(servers=(DEFAULT_SERVER,), selector=None, resolver=None, retries: int = 1, **options) -> GRPCClient:
    """
    A new gRPC client (Go's C{grpc.New(...)}); the options are
    L{memmq.client.Client}'s (C{ca_file}, C{resolve_interval}, C{reactor}).
    """
    return GRPCClient(servers=servers, selector=selector, resolver=resolver, retries=retries, **options)


def _rpc_reason(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        details = (error.details() or "").strip().splitlines()
        return f"gRPC {error.code().name}" + (f": {details[0]}" if details else "")
    return reason_of(Failure(error))


class _Channel:
    """
    One server's channel and stub; used on the loop only.
    """

    def __init__(
        self, target: str, roots: bytes | None, override: str | None, tls: bool,
        token: str | None = None, client_pem: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.target = target
        self._client_pem = client_pem
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._roots = roots
        self._override = override
        self._tls = tls
        self.channel: grpc.aio.Channel | None = None
        self.stub: mq_pb2_grpc.MQStub | None = None

    async def open(self) -> _Channel:
        options = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            # A server that stops answering is noticed within a minute, and
            # its subscriptions reconnect (as autobahn's auto-ping does).
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if self._override:
            options.append(("grpc.ssl_target_name_override", self._override))
        if self._tls:
            chain, key = self._client_pem or (None, None)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self._roots, private_key=key, certificate_chain=chain
            )
            self.channel = grpc.aio.secure_channel(self.target, credentials, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(self.target, options=options)
        self.stub = mq_pb2_grpc.MQStub(self.channel)
        return self

    async def publish(self, topic: str, payload: bytes, hops: int) -> None:
        metadata = self.metadata + ((HOPS_METADATA, str(hops)),) if hops else self.metadata or None
        await self.stub.Pub(mq_pb2.PubRequest(topic=topic, payload=payload), metadata=metadata, timeout=30)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()


@implementer(IStream)
class _Call:
    """
    One C{Sub} call: its L{Link}'s L{IStream}.

    Its loop half reads the responses (crossing to the reactor in batches)
    and stops reading while paused, so that the server holds, then drops,
    this subscriber's messages on its side.
    """

    def __init__(self, transport: GRPCTransport, link: Link) -> None:
        self._transport = transport
        self._thread = transport._thread
        self._link = link
        self.opened: Deferred[_Call] = Deferred(lambda d: self.close())
        # The loop's half (an Event binds to a loop when first waited on).
        self._call = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._cancelled = False

    # -- on the reactor ----------------------------------------------------

    def _to_loop(self, f, *args) -> None:
        if self._thread.running:
            self._thread.to_loop.call(f, *args)

    def pause(self) -> None:
        self._to_loop(self._set_reading, False)

    def resume(self) -> None:
        self._to_loop(self._set_reading, True)

    def close(self) -> None:
        self._to_loop(self._cancel)

    def _opened(self) -> None:
        if not self.opened.called:
            self.opened.callback(self)

    def _received(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            self._link.received(self, payload)

    def _ended(self, reason: str, unavailable: bool, refused: int = 0) -> None:
        if unavailable:
            self._transport._forget(self._link.server)
        if not self.opened.called:
            self.opened.errback(refusal(refused, reason) or MemmqError(reason))
        else:
            self._link.lost(self, reason)

    # -- on the loop -------------------------------------------------------

    def _set_reading(self, reading: bool) -> None:
        if reading:
            self._reading.set()
        else:
            self._reading.clear()

    def _cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def run(self, channel: _Channel, topic: str) -> None:
        to_reactor = self._thread.to_reactor
        reason, unavailable, refused = "stream ended", False, 0
        if self._cancelled:
            to_reactor.call(self._ended, "closed", False)
            return
        call = self._call = channel.stub.Sub(mq_pb2.SubRequest(topic=topic), metadata=channel.metadata or None)
        try:
            # The server answers with its headers once subscribed.
            await call.initial_metadata()
            if call.done():
                await call.read()  # raises the status it ended with
            to_reactor.call(self._opened)
            while True:
                if not self._reading.is_set():
                    await self._reading.wait()
                response = await call.read()
                if response is grpc.aio.EOF:
                    reason = "stream ended by the server"
                    break
                to_reactor.call(self._received, [response.payload])
        except grpc.aio.AioRpcError as e:
            reason, unavailable = _rpc_reason(e), e.code() == grpc.StatusCode.UNAVAILABLE
            refused = _REFUSALS.get(e.code(), 0)
        except asyncio.CancelledError:
            reason = "closed"
        except Exception as e:
            reason = _rpc_reason(e)
        finally:
            call.cancel()
            to_reactor.call(self._ended, reason, unavailable, refused)


class GRPCClient(Client):
    """
    A L{Client} that speaks gRPC (its transport is L{GRPCTransport}): see
    the module's docstring.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("transport", GRPCTransport)
        super().__init__(*args, **kwargs)


@implementer(ITransport)
class GRPCTransport:
    """
    The L{ITransport} over gRPC, made for one L{Client}: one channel per
    server, on an asyncio loop in a thread of its own.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._reactor = client.reactor
        self._channels: dict[str, _Channel] = {}
        self._lanes: dict[tuple[str, str, int], _Lane] = {}
        self._opening: dict[str, list[Deferred]] = {}
        self._making: dict[str, Deferred] = {}
        self._ca_pem = client.tls.ca_pem
        self._thread = LoopThread(self._reactor, "memmq-grpc-client")

    # -- channels ----------------------------------------------------------

    def _channel(self, server: str) -> Deferred[_Channel]:
        """
        The server's channel: made on first use (its certificate fetched, if
        not verifying) and reused until the server is unavailable.
        """
        channel = self._channels.get(server)
        if channel is not None:
            return succeed(channel)
        if self._client.closed:
            return Deferred.fromFailure(Failure(MemmqError("client is closed")))
        d: Deferred[_Channel] = Deferred()
        waiting = self._opening.get(server)
        if waiting is not None:
            waiting.append(d)
            return d
        self._opening[server] = [d]
        self._thread.start()
        making = self._making[server] = self._make_channel(server)
        making.addBoth(self._channel_made, server)
        return d

    @inlineCallbacks
    def _make_channel(self, server: str):
        tls, host, port = endpoint_of(server)
        roots = self._ca_pem
        override = None
        if tls and roots is None:
            chain = yield fetch_certificate(self._reactor, host, port)
            if not chain:
                raise MemmqError("the server showed no certificate")
            roots = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
            override = name_override(chain[0], host)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        channel = _Channel(target, roots, override, tls, self._client.token, self._client.tls.client_pem)
        return (yield self._thread.run(channel.open))

    def _channel_made(self, result, server: str) -> None:
        self._making.pop(server, None)
        waiting = self._opening.pop(server, [])
        if not isinstance(result, Failure):
            if self._client.closed:
                self._thread.to_loop.call(lambda: self._thread.loop.create_task(result.close()))
                result = Failure(MemmqError("client is closed"))
            else:
                self._channels[server] = result
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def _forget(self, server: str) -> None:
        """
        Make the next call to C{server} open a new channel (fetching its
        certificate again: a restarted server has a new one).
        """
        channel = self._channels.pop(server, None)
        if channel is not None and self._thread.running:
            # Its calls in flight finish first.
            self._thread.to_loop.call(lambda: self._thread.loop.call_later(5, _close_soon, channel))

    # -- ITransport --------------------------------------------------------

    def publish(self, server: str, topic: str, payload: bytes, hops: int) -> Deferred[None]:
        # Unary calls on one channel may be served in any order: the
        # publishes of a topic to a server go one after the other.
        key = (server, topic, hops)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(self, key)
        return lane.send(payload)

    @inlineCallbacks
    def _post(self, server: str, topic: str, payload: bytes, hops: int):
        """
        Publish one payload to one server, trying C{1 + retries} times.
        """
        reason = "not tried"
        retries = self._client.retries
        for attempt in range(retries + 1):
            try:
                channel = yield self._channel(server)
                yield self._thread.run(channel.publish, topic, payload, hops)
                return None
            except grpc.aio.AioRpcError as e:
                reason = _rpc_reason(e)
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise TooManyHops(reason) from None  # a loop does not heal by asking again
                if e.code() in _REFUSALS:
                    raise refusal(_REFUSALS[e.code()], reason) from None
                if e.code() in _FINAL:
                    break
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self._forget(server)
            except Exception:
                reason = reason_of(Failure())
            if attempt < retries:
                yield deferLater(self._reactor, backoff(attempt, _RETRY_FIRST, _RETRY_MAX), lambda: None)
        raise MemmqError(reason)

    def subscribe(self, link: Link) -> Deferred[IStream]:
        if link.pattern is not None or link.group is not None:
            # asim/mq's proto carries a topic and nothing else.
            return fail(MemmqError("gRPC carries topics only: patterns and queue groups need the HTTP transport"))
        call = _Call(self, link)
        self._channel(link.server).addCallbacks(
            lambda channel: self._thread.run(call.run, channel, link.topic),
            lambda failure: call._ended(reason_of(failure), False),
        ).addErrback(lambda failure: call._ended(reason_of(failure), False))
        return call.opened

    def close(self) -> Deferred[None]:
        """
        Close every channel, then stop the gRPC thread.
        """

        async def close_channels() -> None:
            for channel in channels:
                await channel.close()

        for making in list(self._making.values()):
            making.cancel()
        channels = list(self._channels.values())
        self._channels.clear()
        return self._thread.stop(close_channels).addCallback(lambda _: None)


async def _close_soon_async(channel: _Channel) -> None:
    await channel.close()


def _close_soon(channel: _Channel) -> None:
    asyncio.get_running_loop().create_task(_close_soon_async(channel))


class _Lane:
    """
    The publishes of one topic to one server (with one hop count: in a
    cycle of proxies a message comes back with more hops and must not wait
    behind itself), made one after the other so that they arrive in the
    order they were made.
    """

    def __init__(self, transport: GRPCTransport, key: tuple[str, str, int]) -> None:
        self._transport = transport
        self._key = key
        self._waiting: deque[tuple[bytes, Deferred[None]]] = deque()
        self._busy = False

    def send(self, payload: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((payload, d))
        if not self._busy:
            self._next()
        return d

    def _next(self) -> None:
        if not self._waiting:
            self._busy = False
            if self._transport._lanes.get(self._key) is self:
                del self._transport._lanes[self._key]
            return
        self._busy = True
        payload, done = self._waiting.popleft()
        server, topic, hops = self._key
        sent = self._transport._post(server, topic, payload, hops)

        def finished(result):
            self._next()
            return result

        sent.addBoth(finished).chainDeferred(done)
