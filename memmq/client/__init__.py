"""
The memmq client library: asim/mq's Go client, in Python, on Deferreds.

    from memmq import client

    yield client.publish("example", b"bar")          # the default client: localhost:8081
    sub = yield client.subscribe("example")
    data = yield sub.get()                           # Go's data := <-ch

    c = client.new(servers=["127.0.0.1:8081", "127.0.0.1:8082"])           # cluster: every server
    c = client.new(servers=[...], selector=client.selector.Shard())        # shard: one server per topic
    c = client.new(servers=["memmq.proxy.local"], resolver=client.resolver.DNS())

The same over gRPC (asim/mq's MQ service; see L{memmq.client.rpc}):

    from memmq.client import rpc
    c = rpc.new(servers=["127.0.0.1:8081"])

The client core (L{memmq.client.core}) is transport-neutral; a transport
(L{memmq.client.websocket}, the default, or L{memmq.client.rpc})
implements L{ITransport}.

Every call needs a running reactor; nothing connects until a first publish
or subscribe.
"""

from __future__ import annotations

from memmq.client import resolver, selector
from memmq.client.core import DEFAULT_SERVER, Client, ITransport, Subscription
from memmq.errors import PublishError, SubscribeError

__all__ = [
    "Client",
    "DEFAULT_SERVER",
    "ITransport",
    "PublishError",
    "SubscribeError",
    "Subscription",
    "default",
    "new",
    "publish",
    "resolver",
    "selector",
    "subscribe",
]

_default: Client | None = None


def new(servers=(DEFAULT_SERVER,), selector=None, resolver=None, retries: int = 1, **options) -> Client:
    """
    A new client (Go's C{client.New(...)}); see L{Client} for the
    options (C{ca_file}, C{resolve_interval}, C{reactor}).
    """
    return Client(servers=servers, selector=selector, resolver=resolver, retries=retries, **options)


def default() -> Client:
    """
    The default client, for C{localhost:8081}, made on first use.
    """
    global _default
    if _default is None or _default.closed:
        _default = Client()
    return _default


def publish(topic: str, payload: bytes):
    """
    Publish on the default client; see L{Client.publish}.
    """
    return default().publish(topic, payload)


def subscribe(topic: str, callback=None, since: int | None = None):
    """
    Subscribe on the default client; see L{Client.subscribe}.
    """
    return default().subscribe(topic, callback, since=since)
