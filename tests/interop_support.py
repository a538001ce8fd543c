"""
Running memmq and asim/mq (the Go reference implementation) side by side for
tests/test_interop.py: real processes on loopback ports, talked to only
through their command lines (and memmq's public client API), each killed at
cleanup, every wait bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from tests.support import WAIT, bounded, child_env

REFERENCE_VARIABLE = "MEMMQ_REFERENCE_BINARY"

# How much of a process's output a failure shows (its end).
_SHOWN = 4000

# How long a probe is given to arrive before another is sent.
PROBE_INTERVAL = 0.5

# Where a memmq server says it listens: HTTP (https://HOST:PORT) and gRPC
# (HOST:PORT) alike, whatever the rest of the line says.
LISTENING = re.compile(rb"listening\b[^\n]*? on (?:https://)?(\S+):(\d+)\b")


def reference_binary() -> str:
    """
    The path of asim/mq's binary, from C{$MEMMQ_REFERENCE_BINARY}; skip the
    test when it is not set, and fail it when it names no executable file.
    """
    path = os.environ.get(REFERENCE_VARIABLE, "")
    if not path:
        raise SkipTest(
            f"asim/mq's binary is not available: set {REFERENCE_VARIABLE} to its path"
            " (see README, Set-up; .ci/run builds it when the reference's source is there)"
        )
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError(f"{REFERENCE_VARIABLE}={path!r} is not an executable file")
    return path


class WaitTimeout(AssertionError):
    """
    What was waited for did not happen within the bound.
    """


class Watched:
    """
    Something whose received lines a test waits on: C{until(predicate)}
    fires once C{predicate(self)} holds, or fails after its bound.
    """

    name = "?"
    distinct = False  # received() drops repeats (a proxy hears each upstream)

    def __init__(self) -> None:
        self._waits: list[tuple[Callable[[Watched], object], Deferred]] = []

    def lines(self) -> list[bytes]:
        raise NotImplementedError

    def received(self) -> list[bytes]:
        """
        The lines received, without probes (and without repeats if
        C{distinct}).
        """
        seen: list[bytes] = []
        for line in self.lines():
            if line.startswith(b"probe ") or (self.distinct and line in seen):
                continue
            seen.append(line)
        return seen

    def has_probe(self) -> bool:
        return any(line.startswith(b"probe ") for line in self.lines())

    def describe(self) -> str:
        return f"{self.name}: lines {self.lines()!r}"

    def until(self, predicate: Callable[[Watched], object], what: str, seconds: float = WAIT) -> Deferred:
        if predicate(self):
            return succeed(None)
        d: Deferred = Deferred()
        self._waits.append((predicate, d))

        def timed_out(failure):
            failure.trap(DeferredTimeout)
            raise WaitTimeout(f"{what}: not within {seconds} s; {self.describe()}")

        return d.addTimeout(seconds, reactor).addErrback(timed_out)

    def _check(self) -> None:
        waiting, self._waits = self._waits, []
        for predicate, d in waiting:
            if d.called:
                continue
            if predicate(self):
                d.callback(None)
            else:
                self._waits.append((predicate, d))


class Child(Watched, ProcessProtocol):
    """
    A child process: its standard output as lines (what a client prints),
    both streams kept for failure messages; standard input open for lines
    to publish.
    """

    def __init__(self, name: str) -> None:
        Watched.__init__(self)
        self.name = name
        self.stdout = b""
        self.output = b""
        self.status: int | None = None
        self.finished = False
        self._gone: list[Deferred] = []
        self.session = False

    def lines(self) -> list[bytes]:
        return self.stdout.split(b"\n")[:-1]

    def describe(self) -> str:
        state = f"ended with {self.status}" if self.finished else "running"
        output = self.output
        if len(output) > _SHOWN:
            output = b"[...] " + output[-_SHOWN:]
        return f"{self.name} ({state}) wrote {output!r}"

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self.output += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    def processEnded(self, reason) -> None:
        self.status = reason.value.exitCode
        self.finished = True
        self._check()
        waiting, self._waits = self._waits, []
        for _, d in waiting:
            if not d.called:
                d.errback(AssertionError(f"waited on {self.describe()}"))
        for d in self._gone:
            d.callback(None)

    def until(self, predicate: Callable[[Watched], object], what: str, seconds: float = WAIT) -> Deferred:
        if self.finished and not predicate(self):
            return fail(AssertionError(f"{what}: {self.describe()}"))
        return super().until(predicate, what, seconds)

    def send(self, line: bytes) -> None:
        self.transport.write(line + b"\n")

    def wait_ended(self, seconds: float = WAIT) -> Deferred:
        """
        Fire with the exit status (None after a signal).
        """
        d = self.until(lambda c: c.finished, f"{self.name} to end", seconds)
        return d.addCallback(lambda _: self.status)

    def finish(self) -> Deferred:
        """
        Close standard input (a publisher's end of input); fire once the
        process exits 0, having published every line.
        """
        self.transport.closeStdin()

        def ended(status):
            if status != 0:
                raise AssertionError(f"exit status {status}: {self.describe()}")

        return self.wait_ended().addCallback(ended)

    def terminate(self) -> Deferred:
        """
        SIGTERM (to its process group, if it leads one); fire with the exit
        status.
        """
        self._signal(signal.SIGTERM)
        return self.wait_ended()

    def _signal(self, number: int) -> None:
        if self.session:
            try:
                os.killpg(self.transport.pid, number)
                return
            except ProcessLookupError:
                pass  # not yet its own group
        self.transport.signalProcess(number)

    def _kill(self) -> Deferred | None:
        if self.finished:
            return None
        d: Deferred = Deferred()
        self._gone.append(d)
        self._signal(signal.SIGKILL)
        return bounded(d)


# Runs argv[1:] as the leader of a new session (and process group), so that
# a shell and what it started are signalled together.
_SETSID = "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"


def start(testcase, name: str, argv: list[str], path: str, env: dict[str, str] | None = None,
          session: bool = False) -> Child:
    """
    Run C{argv} in directory C{path}, killed at cleanup if still running.

    @param env: its environment (default: one that imports what this
        process does).
    @param session: run it in a process group of its own, signalled as a
        whole (for a shell command that starts a server).
    """
    child = Child(name)
    child.session = session
    if session:
        argv = [sys.executable, "-c", _SETSID, *argv]
    reactor.spawnProcess(child, argv[0], argv, env=child_env() if env is None else env, path=path)
    testcase.addCleanup(child._kill)
    return child


def free_port() -> int:
    """
    A loopback port free now (for asim/mq, which cannot say which port it
    got for port 0).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@inlineCallbacks
def _accepting(child: Child, port: int):
    """
    Fire with True once C{port} accepts connections, False if C{child}
    ended first.
    """
    deadline = reactor.seconds() + WAIT
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1)
    while not child.finished:
        try:
            protocol = yield endpoint.connect(Factory.forProtocol(Protocol))
        except ConnectError:
            if reactor.seconds() > deadline:
                raise WaitTimeout(f"port {port} not accepting within {WAIT} s; {child.describe()}") from None
            yield deferLater(reactor, 0.05, lambda: None)
        else:
            protocol.transport.abortConnection()
            return not child.finished
    return False


@inlineCallbacks
def go_server(testcase, name: str, args: Iterable[str] = (), path: str = "."):
    """
    Start asim/mq's server (or proxy) with C{args} on a free loopback port;
    fire with (C{"127.0.0.1:PORT"}, its L{Child}) once it accepts.
    """
    binary = reference_binary()
    for _ in range(3):
        port = free_port()
        child = start(testcase, name, [binary, f"--address=127.0.0.1:{port}", *args], path)
        if (yield _accepting(child, port)):
            return f"127.0.0.1:{port}", child
        if b"address already in use" not in child.output:
            break  # taken meanwhile: try another port; anything else is a failure
    raise AssertionError(f"asim/mq did not start: {child.describe()}")


@inlineCallbacks
def memmq_server(testcase, name: str, args: Iterable[str] = (), path: str = "."):
    """
    Start C{python -m memmq} with C{args} on loopback, port 0; fire with
    (C{"127.0.0.1:PORT"}, its L{Child}) once it says where it listens.
    """
    argv = [sys.executable, "-m", "memmq", "--address=127.0.0.1:0", *args]
    child = start(testcase, name, argv, path)
    yield child.until(lambda c: LISTENING.search(c.output), f"{name} to say where it listens")
    return "127.0.0.1:" + LISTENING.search(child.output).group(2).decode(), child


def go_client(testcase, name: str, server: str, topic: str, mode: str, transport: str, path: str) -> Child:
    """
    asim/mq's command-line client; C{mode} is C{"publish"} or C{"subscribe"}.
    """
    argv = [reference_binary(), "--client", f"--transport={transport}", f"--servers={server}",
            f"--topic={topic}", f"--{mode}"]
    return start(testcase, name, argv, path)


def memmq_client(testcase, name: str, server: str, topic: str, mode: str, transport: str, path: str,
                 args: Iterable[str] = ()) -> Child:
    """
    memmq's command-line client; C{mode} is C{"publish"} or C{"subscribe"}.
    """
    argv = [sys.executable, "-m", "memmq", "--client", f"--transport={transport}", f"--servers={server}",
            f"--topic={topic}", f"--{mode}", *args]
    return start(testcase, name, argv, path)


class Inbox(Watched):
    """
    A subscriber callback for memmq's client library, watched like a child
    process's output.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.messages: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.messages.append(data)
        self._check()

    def lines(self) -> list[bytes]:
        return list(self.messages)


class LibraryPublisher:
    """
    memmq's client library as a publisher for L{deliver}.
    """

    def __init__(self, client, topic: str) -> None:
        self._client = client
        self._topic = topic
        self._sent: list[Deferred] = []

    def send(self, line: bytes) -> None:
        self._sent.append(self._client.publish(self._topic, line))

    def finish(self) -> Deferred:
        return bounded(gatherResults(self._sent, consumeErrors=True))


def deliver(publisher, subscribers: list[Watched], messages: list[bytes], servers: Iterable[Child] = ()) -> Deferred:
    """
    Publish probes until every subscriber has received one (subscribing
    completes in the background, and asim/mq's client does not say when),
    then C{messages}; fire once the publisher has published them all and
    every subscriber received them, in order. A failure shows what
    C{servers} wrote.
    """
    servers = list(servers)

    def explain(failure):
        failure.trap(AssertionError)
        raise AssertionError("\n".join([str(failure.value), *(server.describe() for server in servers)]))

    return _deliver(publisher, subscribers, messages).addErrback(explain)


@inlineCallbacks
def _deliver(publisher, subscribers: list[Watched], messages: list[bytes]):
    # The subscribers were just started: a busy machine takes seconds to
    # start a Python process.
    deadline = reactor.seconds() + 2 * WAIT
    probe = 0
    while True:
        publisher.send(b"probe %d" % probe)
        probe += 1
        try:
            for subscriber in subscribers:
                yield subscriber.until(lambda s: s.has_probe(), "a probe", PROBE_INTERVAL)
            break
        except WaitTimeout:
            if reactor.seconds() > deadline:
                raise
    for message in messages:
        publisher.send(message)
    yield publisher.finish()
    for subscriber in subscribers:
        yield subscriber.until(lambda s: s.received() == messages, f"{subscriber.name} to receive {messages!r}")
