"""
memmq against the real thing: asim/mq, the Go program whose API memmq
speaks. Go clients against memmq's server and memmq's clients against Go's
server, over HTTP/WebSocket and gRPC; each one's proxy in front of the
other's servers; Go's --persist files replayed by memmq. Every side is a real
process on loopback, driven through its command line (memmq's library
through its public API). Skipped unless $MEMMQ_REFERENCE_BINARY names
asim/mq's binary (see README, Set-up).
"""

from __future__ import annotations

import base64
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from memmq.client import Client
from tests.interop_support import (
    Inbox,
    LibraryPublisher,
    WaitTimeout,
    deliver,
    go_client,
    go_server,
    memmq_client,
    memmq_server,
    reference_binary,
)
from tests.support import WAIT

TOPIC = "interop"
# Not only ASCII: both sides carry payloads as bytes.
MESSAGES = [b"first", "second \N{LATIN SMALL LETTER E WITH ACUTE}".encode(), b"third"]


class _InteropTestCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        reference_binary()
        # Processes run here: asim/mq writes its --persist files into its
        # working directory.
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def go_server(self, name: str, *args: str):
        return go_server(self, name, args, self.directory)

    def memmq_server(self, name: str, *args: str):
        return memmq_server(self, name, args, self.directory)

    def go_client(self, name: str, server: str, mode: str, transport: str = "http"):
        return go_client(self, name, server, TOPIC, mode, transport, self.directory)

    def memmq_client(self, name: str, server: str, mode: str, transport: str = "http", *args: str):
        return memmq_client(self, name, server, TOPIC, mode, transport, self.directory, args)


class GoClientsTests(_InteropTestCase):
    """
    asim/mq's clients against memmq's server.
    """

    @inlineCallbacks
    def test_http(self):
        """
        Lines published by Go's client over HTTP reach Go's WebSocket
        subscriber (and memmq's) through memmq's server, in order.
        """
        server, process = yield self.memmq_server("memmq server")
        subscribers = [self.go_client("Go subscriber", server, "subscribe"),
                       self.memmq_client("memmq subscriber", server, "subscribe")]
        yield deliver(self.go_client("Go publisher", server, "publish"), subscribers, MESSAGES, [process])

    @inlineCallbacks
    def test_grpc(self):
        """
        The same over gRPC: Go's gRPC client publishes to and subscribes on
        memmq's gRPC server.
        """
        server, process = yield self.memmq_server("memmq gRPC server", "--transport=grpc")
        subscribers = [self.go_client("Go gRPC subscriber", server, "subscribe", "grpc"),
                       self.memmq_client("memmq gRPC subscriber", server, "subscribe", "grpc")]
        publisher = self.go_client("Go gRPC publisher", server, "publish", "grpc")
        yield deliver(publisher, subscribers, MESSAGES, [process])


class MemmqClientsTests(_InteropTestCase):
    """
    memmq's clients against asim/mq's server.
    """

    @inlineCallbacks
    def test_http(self):
        """
        Lines published by memmq's command-line client reach memmq's and
        Go's subscribers through Go's server, in order.
        """
        server, process = yield self.go_server("Go server")
        subscribers = [self.memmq_client("memmq subscriber", server, "subscribe"),
                       self.go_client("Go subscriber", server, "subscribe")]
        yield deliver(self.memmq_client("memmq publisher", server, "publish"), subscribers, MESSAGES, [process])

    @inlineCallbacks
    def test_grpc(self):
        """
        The same over gRPC, against Go's gRPC server and its generated
        certificate (which names the host and port, C{DNS:127.0.0.1:PORT}).
        """
        server, process = yield self.go_server("Go gRPC server", "--transport=grpc")
        subscribers = [self.memmq_client("memmq gRPC subscriber", server, "subscribe", "grpc"),
                       self.go_client("Go gRPC subscriber", server, "subscribe", "grpc")]
        publisher = self.memmq_client("memmq gRPC publisher", server, "publish", "grpc")
        yield deliver(publisher, subscribers, MESSAGES, [process])

    @inlineCallbacks
    def test_library(self):
        """
        memmq's client library publishes to and subscribes on Go's server.
        """
        server, process = yield self.go_server("Go server")
        client = Client(servers=[server])
        self.addCleanup(client.close)
        inbox = Inbox("memmq library subscriber")
        subscription = yield client.subscribe(TOPIC, inbox)
        self.addCleanup(subscription.close)
        subscribers = [inbox, self.go_client("Go subscriber", server, "subscribe")]
        yield deliver(LibraryPublisher(client, TOPIC), subscribers, MESSAGES, [process])


class ProxyTests(_InteropTestCase):
    """
    Each one's proxy in front of the other's servers. With two servers
    behind a proxy (every publish to both), a subscriber of the proxy hears
    each message once from each; it is checked for each message, in order.
    """

    def _server(self, kind: str, name: str, *args: str) -> Deferred:
        start = self.memmq_server if kind == "memmq" else self.go_server
        return start(f"{kind} {name}", *args)

    def _client(self, kind: str, name: str, server: str, mode: str, transport: str):
        start = self.memmq_client if kind == "memmq" else self.go_client
        return start(f"{kind} {name}", server, mode, transport)

    @inlineCallbacks
    def _proxy(self, proxy: str, servers: str, transport: str, subscriber: str, publisher: str):
        """
        A C{proxy} ("memmq" or "Go") in front of two C{servers}, all
        speaking C{transport}: messages published through the proxy by a
        C{publisher} client reach a C{subscriber} client on each server and
        one on the proxy.
        """
        args = [f"--transport={transport}"]
        started = yield gatherResults([self._server(servers, f"server {i}", *args) for i in range(2)],
                                      consumeErrors=True)
        addresses = [address for address, _ in started]
        address, process = yield self._server(proxy, "proxy", "--proxy", *args, "--servers=" + ",".join(addresses))
        subscribers = [self._client(subscriber, f"subscriber of {servers} server {i}", server, "subscribe", transport)
                       for i, server in enumerate(addresses)]
        through = self._client(subscriber, f"subscriber of the {proxy} proxy", address, "subscribe", transport)
        through.distinct = True
        yield deliver(self._client(publisher, f"publisher to the {proxy} proxy", address, "publish", transport),
                      [*subscribers, through], MESSAGES, [*(p for _, p in started), process])

    def test_go_proxy_http(self) -> Deferred:
        """
        asim/mq's proxy in front of two memmq servers, over HTTP.
        """
        return self._proxy("Go", "memmq", "http", subscriber="memmq", publisher="Go")

    def test_go_proxy_grpc(self) -> Deferred:
        """
        asim/mq's proxy in front of two memmq servers, over gRPC.
        """
        return self._proxy("Go", "memmq", "grpc", subscriber="Go", publisher="Go")

    def test_memmq_proxy_http(self) -> Deferred:
        """
        memmq's proxy in front of two asim/mq servers, over HTTP.
        """
        return self._proxy("memmq", "Go", "http", subscriber="Go", publisher="memmq")

    def test_memmq_proxy_grpc(self) -> Deferred:
        """
        memmq's proxy in front of two asim/mq servers, over gRPC (Go's
        clients on both sides: it is the proxy's upstream client that is
        tried here).
        """
        return self._proxy("memmq", "Go", "grpc", subscriber="Go", publisher="Go")


@inlineCallbacks
def _records(path: str, count: int):
    """
    Fire with the first C{count} records of the --persist file C{path} once
    it holds them (asim/mq writes its files about once a second).
    """
    deadline = reactor.seconds() + WAIT
    while True:
        lines = []
        if os.path.exists(path):
            with open(path, "rb") as f:
                lines = f.read().split(b"\n")[:-1]
        if len(lines) >= count:
            return [json.loads(line) for line in lines[:count]]
        if reactor.seconds() > deadline:
            raise WaitTimeout(f"{path} holds {lines!r}, not {count} lines, after {WAIT} s")
        yield deferLater(reactor, 0.1, lambda: None)


class PersistTests(_InteropTestCase):
    """
    The files asim/mq writes with --persist, read by memmq's replay.
    """

    @inlineCallbacks
    def test_replay(self):
        """
        memmq run with --persist on the directory where asim/mq wrote a
        topic's file replays its messages (C{since=0}: all; C{since=N}: those
        stamped after N), then appends its own to the same file, stamped
        after asim/mq's.
        """
        go, go_process = yield self.go_server("Go server", "--persist")
        publisher = self.go_client("Go publisher", go, "publish")
        # asim/mq starts a topic's file on the topic's first message, which it
        # does not write itself when nobody is subscribed: hence a primer.
        messages = [b"", *MESSAGES]
        for line in [b"primer", *messages]:
            publisher.send(line)
        yield publisher.finish()
        path = os.path.join(self.directory, TOPIC + ".mq")
        records = yield _records(path, len(messages))
        payloads = [base64.b64decode(record["payload"]) for record in records]
        self.assertEqual(payloads[-len(messages):], messages)
        yield go_process.terminate()
        with open(path, "rb") as f:
            written_by_go = f.read()

        server, memmq = yield self.memmq_server("memmq server", "--persist", f"--persist_dir={self.directory}")
        replay = self.memmq_client("memmq subscriber since 0", server, "subscribe", "http", "--since=0")
        yield replay.until(lambda c: c.lines() == payloads, f"the replay of {payloads!r}")
        since = records[1]["timestamp"]
        later = self.memmq_client(f"memmq subscriber since {since}", server, "subscribe", "http", f"--since={since}")
        yield later.until(lambda c: c.lines() == payloads[2:], f"the replay of {payloads[2:]!r}")

        publisher = self.memmq_client("memmq publisher", server, "publish")
        publisher.send(b"from memmq")
        yield publisher.finish()
        yield replay.until(lambda c: c.lines() == [*payloads, b"from memmq"], "the live message after the replay")
        self.assertEqual((yield memmq.terminate()), 0)
        with open(path, "rb") as f:
            content = f.read()
        self.assertTrue(content.startswith(written_by_go), content)
        appended = [json.loads(line) for line in content[len(written_by_go):].split(b"\n")[:-1]]
        self.assertEqual([(r["topic"], base64.b64decode(r["payload"])) for r in appended], [(TOPIC, b"from memmq")])
        self.assertGreater(appended[0]["timestamp"], records[-1]["timestamp"])
