"""
The command-line client: C{memmq --client --topic=T --publish} publishes
each line of standard input, and says on stderr how it went (a summary at
the end, progress meanwhile when stderr is a terminal); C{--subscribe}
prints each message (in the C{--output_format}) until interrupted; both
together do both (README: Command-line client).

Failures a user can cause (no server, a refused publish) end the command
with one line on stderr and a non-zero status, never a traceback.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections import deque
from datetime import UTC, datetime

from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from memmq.client import Client, resolver, selector
from memmq.client.probe import explained
from memmq.client.reasons import reason_of
from memmq.errors import ServersFailed
from memmq.logs import say

__all__ = ["run", "client_from_options", "formatter"]

_log = Logger()

# How many lines of standard input may wait for their publish before
# reading pauses.
_READ_AHEAD = 256

# Seconds between two progress lines on a terminal.
_PROGRESS_INTERVAL = 0.5


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
        from memmq.client.rpc import GRPCClient as client_type
    return client_type(
        servers=options["server_list"],
        selector=selector.Shard() if options["select"] == "shard" else selector.All(),
        resolver=names,
        retries=options["retries"],
        ca_file=options["ca_file"],
        resolve_interval=options["resolve_interval"],
        reactor=reactor,
        token=options.get("token"),
        client_cert=options.get("client_cert"),
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
        self.failed = 0
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
        self.failed += 1
        if not self.done.called:
            self.done.errback(failure)


def formatter(output_format: str, topic: str, now=time.time):
    """
    What C{--subscribe} prints for a payload: C{raw}, the payload as it
    is; C{line}, C{topic: payload}; C{json}, one object with the topic, the
    time it was received (ISO 8601, UTC), the payload as text and
    C{"encoding": "utf-8"}, or in base64 and C{"encoding": "base64"} when
    it is not UTF-8. Each is followed by a newline.
    """
    if output_format == "raw":
        return lambda payload: payload + b"\n"
    if output_format == "line":
        prefix = topic.encode("utf-8") + b": "
        return lambda payload: prefix + payload + b"\n"

    def as_json(payload: bytes) -> bytes:
        try:
            text, encoding = payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
        received = datetime.fromtimestamp(now(), UTC).isoformat(timespec="microseconds")
        record = {"topic": topic, "time": received, "payload": text, "encoding": encoding}
        return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"

    return as_json


def _printer(output_format: str):
    """
    Print each message (a L{Message}) as C{output_format} says, with its
    own topic (a pattern subscription's messages have many).
    """
    renders: dict = {}

    def write(message) -> None:
        render = renders.get(message.topic)
        if render is None:
            if len(renders) > 1000:
                renders.clear()
            render = renders[message.topic] = formatter(output_format, message.topic)
        out = sys.stdout.buffer
        out.write(render(message.payload))
        out.flush()

    return write


class _Report:
    """
    How a publish of standard input is going, on stderr: a progress line
    rewritten in place while stderr is a terminal, and a summary at the end.
    """

    def __init__(self, publisher: _LinePublisher, topic: str, reactor, terminal: bool) -> None:
        self._publisher = publisher
        self._topic = topic
        self._started = time.monotonic()
        self._progress = None
        if terminal:
            self._progress = LoopingCall(self._show_progress)
            self._progress.clock = reactor
            self._progress.start(_PROGRESS_INTERVAL, now=False)

    def _show_progress(self) -> None:
        published, took = self._publisher.published, time.monotonic() - self._started
        os.write(2, f"\rmemmq: published {published} ({published / took:.0f}/s)\x1b[K".encode())

    def finish(self) -> None:
        """
        Stop the progress line and say the summary: how many were
        published, in how long, how many failed.
        """
        if self._progress is not None:
            if self._progress.running:
                self._progress.stop()
            os.write(2, b"\r\x1b[K")
        published, failed = self._publisher.published, self._publisher.failed
        took = time.monotonic() - self._started
        rate = f", {published / took:.0f}/s" if published and took > 0 else ""
        noun = "message" if published == 1 else "messages"
        say(f"published {published} {noun} to {self._topic!r} in {took:.2f} s{rate}; {failed} failed")


def run(options, reactor) -> int:
    """
    Run the client the options ask for; return the exit status.
    """
    topic = options["topic"]
    client = client_from_options(options, reactor)
    status = [0]
    stopping = [False]

    def fail(failure) -> Deferred | None:
        status[0] = 1
        if not failure.check(ServersFailed):
            return tell(failure)
        # Said once it is known whether the server speaks another scheme
        # or transport than the one asked for (README: Command-line client).
        transport = options.get("transport") or "http"
        return explained(reactor, failure.value, transport).addBoth(tell)

    def tell(failure) -> None:
        say(reason_of(failure))
        stop()

    def stop() -> None:
        if not stopping[0]:
            stopping[0] = True
            reactor.stop()

    def subscribed(subscription) -> None:
        _log.info(
            "subscribed to {topic!r} on {servers}", topic=subscription.topic, servers=", ".join(subscription.servers)
        )

    def start() -> None:
        waits = []
        if options["subscribe"]:
            d = client.subscribe(
                None if options["pattern"] else topic, _printer(options["output_format"]), since=options["since"],
                pattern=options["pattern"], group=options["group"], as_message=True,
            )
            d.addCallbacks(subscribed, fail)
            waits.append(d)
        if options["publish"]:
            publisher = _LinePublisher(client, topic)

            def read_input(_=None) -> None:
                if stopping[0]:
                    return
                report = _Report(publisher, topic, reactor, os.isatty(2))
                stdio.StandardIO(publisher, stdout=os.open(os.devnull, os.O_WRONLY), reactor=reactor)
                publisher.done.addCallbacks(published_all, fail)
                publisher.done.addBoth(lambda _: report.finish())

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
