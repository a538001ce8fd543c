"""
In-memory doubles for testing an application that uses memmq's client,
without sockets or a server (as C{treq.testing} does for treq).

L{MemoryClient} is a real L{memmq.client.Client} -- the same C{publish},
C{subscribe}, C{attach}, C{unsubscribe} and C{close}, the same
L{memmq.client.Subscription} with C{get()} and C{async for} -- whose
servers are in-memory L{Broker}s, reached through L{MemoryTransport}.
Everything happens at once, on the calling stack: a test can check its
results with C{successResultOf} in a C{SynchronousTestCase}.

    from memmq.testing import MemoryClient

    client = MemoryClient()
    subscription = self.successResultOf(client.subscribe("greetings"))
    client.publish("greetings", b"hello")
    self.assertEqual(self.successResultOf(subscription.get()), b"hello")
    self.assertEqual(client.broker.topic("greetings").published, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from memmq.broker import Broker, Message
from memmq.broker import Subscription as BrokerSubscription
from memmq.client.core import Client, IStream, ITransport, Link
from memmq.client.servers import base_url
from memmq.errors import BadQuery, MemmqError
from memmq.interfaces import ISubscriber

__all__ = ["MEMORY_SERVER", "MemoryClient", "MemoryTransport"]

#: The server name of a L{MemoryClient} made with one broker.
MEMORY_SERVER = "memory:1"


@implementer(ISubscriber, IStream)
class _MemoryStream:
    """
    One link's subscription on one in-memory broker.
    """

    def __init__(self, broker: Broker, link: Link) -> None:
        self._broker = broker
        self._link = link
        if link.pattern is not None:
            subscription = broker.subscribe_pattern(link.pattern, self, link.group)
        else:
            subscription = broker.subscribe(link.topic, self, link.group)
        self._subscription: BrokerSubscription | None = subscription

    def deliver(self, message: Message) -> None:
        self._link.received(self, message.payload, message)

    def pause(self) -> None:
        if self._subscription is not None:
            self._subscription.pause()

    def resume(self) -> None:
        if self._subscription is not None:
            self._subscription.resume()

    def close(self) -> None:
        if self._subscription is not None:
            self._broker.unsubscribe(self._subscription)
            self._subscription = None
            self._link.lost(self, "closed")


@implementer(ITransport)
class MemoryTransport:
    """
    An L{ITransport} whose servers are in-memory brokers.

    @param brokers: server name (as the client is given it) -> broker.
    """

    def __init__(self, brokers: Mapping[str, Broker]) -> None:
        self.brokers = {base_url(name): broker for name, broker in brokers.items()}

    def _broker(self, server: str) -> Broker:
        try:
            return self.brokers[server]
        except KeyError:
            raise MemmqError("connection refused") from None

    def publish(self, server: str, topic: str, payload: bytes, hops: int) -> Deferred[None]:
        try:
            broker = self._broker(server)
        except MemmqError:
            return fail()
        return broker.publish(topic, payload, hops)

    def subscribe(self, link: Link) -> Deferred[IStream]:
        try:
            broker = self._broker(link.server)
        except MemmqError:
            return fail()
        if link.since is not None:
            # As a server without --persist answers.
            return fail(BadQuery("since needs a server running with --persist"))
        return succeed(_MemoryStream(broker, link))

    def close(self) -> Deferred[None]:
        return succeed(None)


class MemoryClient(Client):
    """
    A L{Client} whose servers are in-memory brokers.

    @param broker: the one server's broker (a new L{Broker} if not given);
        the client's server is then L{MEMORY_SERVER}.
    @param brokers: several servers instead, name -> broker; the client
        uses each (with C{selector}, as a client of real servers would).
    @param reactor: only for reconnecting after a failure; a L{Clock} by
        default, so nothing needs a running reactor.
    @param options: the other options of L{Client} (C{selector},
        C{retries}).

    @ivar broker: the broker given or made (with C{brokers}, the first).
    """

    def __init__(
        self,
        broker: Broker | None = None,
        brokers: Mapping[str, Broker] | None = None,
        reactor=None,
        **options,
    ) -> None:
        if brokers is None:
            brokers = {MEMORY_SERVER: broker if broker is not None else Broker()}
        elif broker is not None:
            raise TypeError("give broker or brokers, not both")
        if not brokers:
            raise ValueError("no brokers given")
        self.broker = next(iter(brokers.values()))
        transport: Callable[[Client], ITransport] = lambda client: MemoryTransport(brokers)  # noqa: E731
        super().__init__(
            servers=list(brokers),
            reactor=reactor if reactor is not None else Clock(),
            transport=transport,
            **options,
        )
