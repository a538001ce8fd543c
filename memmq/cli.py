"""
The command-line client: C{memmq --client --topic=T --publish} publishes
each line of standard input; C{--subscribe} prints each message on its own
line until interrupted; both together do both.

Failures a user can cause (no server, a refused publish) end the command
with one line on stderr and a non-zero status, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections import deque

from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from memmq.client import Client, resolver, selector
from memmq.logs import say

__all__ = ["run", "client_from_options"]

_log = Logger()

# How many lines of standard input may wait for their publish before
# reading pauses.
_READ_AHEAD = 256


def client_from_options(options, reactor) -> Client:
    """
    The client the parsed C{options} describe.
    """
    if options["resolver"] == "dns":
        lookup = None
        if options["dns_server"] is not None:
            from twisted.names.client import Resolver

            lookup = Resolver(servers=[options["dns_server"]], reactor=reactor)
        names = resolver.DNS(resolver=lookup)
    else:
        names = resolver.IP()
    client_type = Client
    if (options.get("upstream_transport") or options.get("transport")) == "grpc":
        from memmq.client.grpc import GRPCClient as client_type
    return client_type(
        servers=options["server_list"],
        selector=selector.Shard() if options["select"] == "shard" else selector.All(),
        resolver=names,
        retries=options["retries"],
        ca_file=options["ca_file"],
        resolve_interval=options["resolve_interval"],
        reactor=reactor,
    )


class _LinePublisher(LineReceiver):
    """
    Publishes each line of standard input, in order, one at a time; fires
    C{done} with None at the end of input once every publish was accepted,
    or with the first failure.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 31

    def __init__(self, client: Client, topic: str) -> None:
        self._client = client
        self._topic = topic
        self._lines: deque[bytes] = deque()
        self._busy = False
        self._ended = False
        self._paused = False
        self.published = 0
        self.done: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        # As Go's bufio.Scanner (asim/mq's client): a line ends at \n, and
        # a \r before it is not part of it.
        if line.endswith(b"\r"):
            line = line[:-1]
        self._lines.append(line)
        if len(self._lines) >= _READ_AHEAD and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        self._next()

    def connectionLost(self, reason) -> None:
        rest = self.clearLineBuffer()  # a last line without a newline is a line too
        if rest:
            self.lineReceived(rest)
        self._ended = True
        self._next()

    def _next(self) -> None:
        if self._busy or self.done.called:
            return
        if not self._lines:
            if self._ended:
                self.done.callback(None)
            return
        self._busy = True
        line = self._lines.popleft()
        if self._paused and len(self._lines) < _READ_AHEAD // 2:
            self._paused = False
            self.transport.resumeProducing()
        self._client.publish(self._topic, line).addCallbacks(self._published, self._failed)

    def _published(self, _) -> None:
        self._busy = False
        self.published += 1
        self._next()

    def _failed(self, failure) -> None:
        self._busy = False
        if not self.done.called:
            self.done.errback(failure)


def _write_line(payload: bytes) -> None:
    out = sys.stdout.buffer
    out.write(payload + b"\n")
    out.flush()


def run(options, reactor) -> int:
    """
    Run the client the options ask for; return the exit status.
    """
    topic = options["topic"]
    client = client_from_options(options, reactor)
    status = [0]
    stopping = [False]

    def fail(failure) -> None:
        say(failure.getErrorMessage())
        status[0] = 1
        stop()

    def stop() -> None:
        if not stopping[0]:
            stopping[0] = True
            reactor.stop()

    def subscribed(subscription) -> None:
        _log.info("subscribed to {topic!r} on {servers}", topic=topic, servers=", ".join(subscription.servers))

    def start() -> None:
        waits = []
        if options["subscribe"]:
            d = client.subscribe(topic, _write_line, since=options["since"])
            d.addCallbacks(subscribed, fail)
            waits.append(d)
        if options["publish"]:
            publisher = _LinePublisher(client, topic)

            def read_input(_=None) -> None:
                if stopping[0]:
                    return
                stdio.StandardIO(publisher, stdout=os.open(os.devnull, os.O_WRONLY), reactor=reactor)
                publisher.done.addCallbacks(published_all, fail)

            def published_all(_) -> None:
                if not options["subscribe"]:
                    stop()

            if waits:  # subscribe first, so our own lines come back too
                waits[0].addCallback(read_input)
            else:
                read_input()

    def closing() -> Deferred:
        return client.close().addTimeout(2, reactor).addErrback(lambda f: None)

    reactor.addSystemEventTrigger("before", "shutdown", closing)
    reactor.callWhenRunning(start)
    reactor.run()
    return status[0]
