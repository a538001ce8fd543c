"""
A real redis-server for the backplane's tests: Debian's package (.ci/run
installs it when missing), on a free loopback port, saving nothing, in a
directory of its own, stopped by its pid; and memmq nodes that share it.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

from tests.support import WAIT, CertificateFiles, ServerProcess, TLSClient, bounded, child_env, dead_port, until

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def need_redis() -> None:
    if REDIS_SERVER is None or REDIS_CLI is None:
        raise SkipTest("redis-server and redis-cli are needed (.ci/run installs Debian's redis-server)")


# A cluster node also listens on its port + 10000 (the cluster bus).
_BUS_OFFSET = 10000


def _cluster_port() -> int:
    """
    A free port for a cluster node whose bus port is free and a port too.
    """
    for _ in range(100):
        port = dead_port()
        if port + _BUS_OFFSET <= 65535:
            try:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + _BUS_OFFSET))
                return port
            except OSError:
                pass
    raise AssertionError("no free pair of ports for a Redis cluster node")


class RedisServer(ProcessProtocol):
    """
    One redis-server child process; C{ready} fires once it accepts
    connections, C{ended} once it has exited.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ready: Deferred = Deferred()
        self.ended: Deferred = Deferred()

    @classmethod
    def start(cls, testcase, directory: str, port: int | None = None, *extra: str, tls: bool = False) -> RedisServer:
        need_redis()
        server = cls()
        server.port = port or (_cluster_port() if "--cluster-enabled" in extra else dead_port())
        server.directory = directory
        server.tls = tls
        address = ["--port", "0", "--tls-port", str(server.port)] if tls else ["--port", str(server.port)]
        argv = [
            REDIS_SERVER, *address, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", directory, "--daemonize", "no", *extra,
        ]
        server.process = reactor.spawnProcess(server, REDIS_SERVER, argv, env=dict(os.environ), path=directory)
        testcase.addCleanup(server.stop)
        bounded(server.ready)
        return server

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"Ready to accept connections" in self.output and not self.ready.called:
            self.ready.callback(self)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"redis-server ended: {self.output[-500:]!r}"))
        self.ended.callback(None)

    def stop(self, signal: str = "TERM") -> Deferred:
        """
        Stop it (by its pid) and fire once it has exited.
        """
        if not self.ended.called:
            self.process.signalProcess(signal)
        return bounded(self.ended)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def cli(self, *args: str, tls: tuple[str, ...] = (), password: str | None = None) -> Deferred:
        """
        C{redis-cli ARGS} against it; fires with its output (bytes).
        """
        options = ["-h", "127.0.0.1", "-p", str(self.port), *tls]
        env = dict(os.environ)
        if password:
            env["REDISCLI_AUTH"] = password
        d = getProcessOutputAndValue(REDIS_CLI, [*options, *args], env=env)
        return bounded(d.addCallback(lambda result: result[0]))


@inlineCallbacks
def numsub(redis: RedisServer, channel: str, command: str = "NUMSUB", **cli):
    """
    How many connections Redis says are subscribed to C{channel}.
    """
    out = yield redis.cli("PUBSUB", command, channel, **cli)
    lines = out.split()
    return int(lines[1]) if len(lines) > 1 else 0


def until_numsub(redis: RedisServer, channel: str, count: int, **options) -> Deferred:
    """
    Fire once Redis counts C{count} subscribers of C{channel}; bounded.
    """
    seen: list[int] = []

    @inlineCallbacks
    def poll():
        while True:
            seen.append((yield numsub(redis, channel, **options)))
            if seen[-1] == count:
                return seen[-1]
            yield until(lambda: True)

    return bounded(poll(), WAIT)


class Nodes:
    """
    memmq nodes (C{python -m memmq} children) sharing one Redis, with one
    certificate and a client that trusts it.
    """

    def __init__(self, testcase, redis_url: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.testcase = testcase
        self.redis_url = redis_url
        self.extra = extra
        self.env = env
        self.files = CertificateFiles(testcase)
        self.client = TLSClient(testcase, self.files.certificate)

    @inlineCallbacks
    def start(self, *extra: str):
        """
        Start one more node; fire with it (a ServerProcess with C{url}).
        """
        args = [
            "-m", "memmq", "--address", "127.0.0.1:0", "--cert_file", self.files.cert_file,
            "--key_file", self.files.key_file, "--backplane", self.redis_url, *self.extra, *extra,
        ]
        node = ServerProcess()
        from tests.support import spawn

        spawn(self.testcase, node, [sys.executable, *args], env=dict(child_env(), **(self.env or {})))
        port = yield node.wait_listening()
        node.url = f"https://127.0.0.1:{port}"
        return node

    def start_all(self, count: int, *extra: str) -> Deferred:
        """
        Start C{count} nodes at once; fire with the list of them.
        """
        return gatherResults([self.start(*extra) for _ in range(count)], consumeErrors=True)


PROBE = b"probe"


@inlineCallbacks
def reaches(client, node, subscribers, topic: str = "news", tries: int = 100):
    """
    Publish probes on C{node} until every one of C{subscribers} (Collectors
    on other nodes) has had one: from then on, C{node} knows they follow
    C{topic} (README: Redis backplane, a subscription is cluster-wide a
    moment after it opens). Compare what they receive with L{real}.
    """
    for _ in range(tries):
        yield client.publish(node.url, topic, PROBE)
        try:
            yield until(lambda: all(PROBE in sub.messages for sub in subscribers), 0.1)
        except Exception:
            continue
        return
    raise AssertionError("the probes never reached every subscriber")


def real(messages: list[bytes]) -> list[bytes]:
    """
    C{messages} without the probes of L{reaches}.
    """
    return [m for m in messages if m != PROBE]


@inlineCallbacks
def wait_real(sub, count: int):
    """
    Fire with the messages C{sub} received other than probes, once there
    are C{count}.
    """
    yield until(lambda: len(real(sub.messages)) >= count)
    return real(sub.messages)


class RedisListener(ProcessProtocol):
    """
    C{redis-cli SUBSCRIBE CHANNELS}: what a plain Redis subscriber hears.
    """

    def __init__(self) -> None:
        self.output = b""
        self.subscribed: Deferred = Deferred()
        self._channels = 0

    @classmethod
    def start(cls, testcase, redis: RedisServer, *channels: str) -> RedisListener:
        listener = cls()
        listener._channels = len(channels)
        argv = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(redis.port), "SUBSCRIBE", *channels]
        from tests.support import spawn

        listener.ended = Deferred()
        spawn(testcase, listener, argv, env=dict(os.environ))
        bounded(listener.subscribed)
        return listener

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.output.count(b"subscribe\n") >= self._channels and not self.subscribed.called:
            self.subscribed.callback(self)

    def processEnded(self, reason) -> None:
        self.ended.callback(None)
