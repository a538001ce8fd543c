"""
Every helper more than one test module uses: a real server on a loopback
port with a real (generated) certificate, clients that verify it, child
processes, bounded waits, free ports, short directories for UNIX sockets,
and the README's curl commands.  Test modules import from here (or from
tests/grpc_support.py), never from each other.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.client import HTTPClient
from twisted.internet import defer, endpoints, reactor, ssl, threads
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.names import dns, error
from twisted.names.common import ResolverBase
from twisted.trial.unittest import SkipTest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from memmq.broker import Broker, Message
from memmq.errors import MemmqError
from memmq.interfaces import IBroker, ISubscriber
from memmq.server.listen import parse_address
from memmq.server.service import HTTPService
from memmq.server.web import MemmqSite
from memmq.tls import ServerCertificate, self_signed_certificate

WAIT = 20.0  # seconds: the bound on any single wait in a test
# seconds: the bound on a server's start-up (or a worker's restart), which
# is several Pythons importing everything at once: ten times what it takes
# on an idle machine, as it may on a busy 2-core one.
START = 60.0

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# twistd's own entry point, run by sys.executable (so from this Python and
# this checkout): C{[sys.executable, *TWISTD, "memmq", ...]}.
TWISTD = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]

# What tests/fixtures/asim-mq/gen.go marshals, in order: UTF-8 text,
# binary, empty, and the three base64 padding cases.
PAYLOADS = [
    b"hello, world",
    'h\u00e9llo \u4e16\u754c \U0001f600 <&> "q" \\'.encode(),
    bytes([0x00, 0x01, 0xFE, 0xFF, 0x80, 0x0A, 0x0D, 0x22]),
    b"",
    b"a",
    b"ab",
    b"abc",
]


def child_env() -> dict[str, str]:
    """
    The environment for a child Python: it imports what this process does
    (trial runs in _trial_temp).
    """
    return dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, *sys.path]), PYTHONUNBUFFERED="1")


def bounded(d: Deferred, seconds: float = WAIT) -> Deferred:
    """
    C{d}, failing with TimeoutError after C{seconds}.
    """
    return d.addTimeout(seconds, reactor)


class RunningServer:
    """
    An in-process memmq HTTP front-end listening on 127.0.0.1, port 0.
    """

    def __init__(
        self, testcase, certificate: ServerCertificate | None = None, address: str = "127.0.0.1:0",
        endpoints: tuple[str, ...] = (), **site_options
    ) -> None:
        broker_options = {
            k: site_options.pop(k) for k in ("max_buffered_messages", "max_buffered_bytes") if k in site_options
        }
        self.broker = site_options.pop("broker", None) or Broker(**broker_options)
        listen = parse_address(address)
        self.certificate = certificate or self_signed_certificate(listen.host or "127.0.0.1")
        self.site = MemmqSite(self.broker, **site_options)
        self.service = HTTPService(self.site, listen, self.certificate, reactor, endpoints)
        try:
            self.service.startService()
        except MemmqError as e:
            raise SkipTest(f"cannot listen on {address}: {e}") from None
        testcase.addCleanup(self.stop)
        host = self.service.port.getHost()
        self.port = host.port
        self.url = f"https://{host.host}:{self.port}"
        self.client = TLSClient(testcase, self.certificate)
        # The --listen endpoints' ports, after the address's.
        self.endpoint_ports = [port.getHost().port for port in self.service.ports[1:]]

    def stop(self) -> Deferred:
        if self.service.running:
            return self.service.stopService()
        return None


@implementer(IPolicyForHTTPS)
class _TrustOne:
    def __init__(self, certificate: ServerCertificate) -> None:
        self._root = ssl.Certificate.loadPEM(certificate.chain_pem())

    def creatorForNetloc(self, hostname, port):
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._root)


class TLSClient:
    """
    HTTP and WebSocket clients that verify the server's certificate.
    """

    def __init__(self, testcase, certificate: ServerCertificate) -> None:
        self.certificate = certificate
        self._root = ssl.Certificate.loadPEM(certificate.chain_pem())
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 8
        testcase.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, contextFactory=_TrustOne(certificate), pool=pool))
        self._testcase = testcase

    def tls_options(self, host: str = "127.0.0.1"):
        return ssl.optionsForClientTLS(host, trustRoot=self._root)

    @inlineCallbacks
    def publish(self, url: str, topic: str | None, payload: bytes, method: str = "POST", **kwargs):
        """
        Publish; return (status code, body).
        """
        params = {} if topic is None else {"topic": topic}
        response = yield bounded(self.http.request(method, url + "/pub", params=params, data=payload, **kwargs))
        body = yield bounded(treq.content(response))
        return response.code, body

    def connect(
        self, url: str, path: str, topic: str | None, protocol=None, headers=None, protocols=None
    ) -> Deferred:
        """
        Open a WebSocket to C{path}; fire with the open protocol (an
        L{Collector} unless told otherwise), offering the subprotocols
        C{protocols} if given.
        """
        query = "" if topic is None else "?topic=" + topic
        host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
        factory = WebSocketClientFactory(f"wss://{host}:{port}{path}{query}", headers=headers, protocols=protocols)
        factory.protocol = protocol or Collector
        factory.opened = Deferred()
        factory.closed = Deferred()
        endpoint = endpoints.wrapClientTLS(
            self.tls_options(host),
            endpoints.TCP4ClientEndpoint(reactor, host, int(port), timeout=int(WAIT)),
        )
        connecting = endpoint.connect(factory)
        connecting.addErrback(lambda f: factory.opened.called or factory.opened.errback(f))

        def cleanup():
            proto = factory.opened.result if factory.opened.called else None
            if isinstance(proto, Collector) and proto.transport is not None and not factory.closed.called:
                proto.transport.abortConnection()
                return proto.wait_closed()

        self._testcase.addCleanup(cleanup)
        return bounded(factory.opened)

    def subscribe(self, url: str, topic: str) -> Deferred:
        return self.connect(url, "/sub", topic)


class Collector(WebSocketClientProtocol):
    """
    A WebSocket client that keeps what it receives and how it closed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[bytes] = []
        self.close_code: int | None = None
        self._waiters: list[tuple[Callable[[], bool], Deferred]] = []
        self._closed_waiters: list[Deferred] = []

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onConnect(self, response) -> None:
        pass

    def onMessage(self, payload, isBinary) -> None:
        self.messages.append(payload)
        self._check()

    def onClose(self, wasClean, code, reason) -> None:
        self.close_code = code
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"WebSocket refused: {reason}"))
        self.factory.closed.callback(code)
        for d in self._closed_waiters:
            d.callback(code)
        for _, d in self._waiters:
            if not d.called:
                d.errback(ConnectionError(f"closed with {code} after {len(self.messages)} messages"))

    def _check(self) -> None:
        for entry in list(self._waiters):
            condition, d = entry
            if condition():
                self._waiters.remove(entry)
                d.callback(self.messages)

    def wait_for(self, count: int, seconds: float = WAIT) -> Deferred:
        """
        Fire with the messages once there are C{count} of them.
        """
        d: Deferred = Deferred()
        self._waiters.append((lambda: len(self.messages) >= count, d))
        self._check()
        return bounded(d, seconds)

    def wait_closed(self, seconds: float = WAIT) -> Deferred:
        """
        Fire with the close code once the connection has closed.
        """
        if self.close_code is not None or self.factory.closed.called:
            return succeed(self.close_code)
        d: Deferred = Deferred()
        self._closed_waiters.append(d)
        return bounded(d, seconds)


class MuxCollector(Collector):
    """
    A scripted C{memmq.v1} client: keeps the messages (topic, payload) and
    the replies it receives, and the subprotocol the server chose.
    """

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[dict] = []
        self.subprotocol: str | None = None

    def onConnect(self, response) -> None:
        self.subprotocol = response.protocol

    def onMessage(self, payload, isBinary) -> None:
        from memmq.mux_protocol import decode_message

        if isBinary:
            self.messages.append(decode_message(payload))
        else:
            self.replies.append(json.loads(payload))
        self._check()

    def request(self, **fields) -> Deferred:
        """
        Send one control message; fire with the next reply.
        """
        count = len(self.replies) + 1
        self.sendMessage(json.dumps(fields).encode(), isBinary=False)
        return self.wait_replies(count).addCallback(lambda replies: replies[count - 1])

    def wait_replies(self, count: int, seconds: float = WAIT) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append((lambda: len(self.replies) >= count, d))
        self._check()
        return bounded(d, seconds).addCallback(lambda _: self.replies)

    def publish(self, topic: str, payload: bytes, ack: int = 0) -> None:
        from memmq.mux_protocol import encode_publish

        self.sendMessage(encode_publish(ack, topic, payload), isBinary=True)


def spawn(testcase, proto, argv: list[str], env: dict[str, str] | None = None, usePTY: bool = False) -> None:
    """
    Run C{argv} as a child process of C{proto} (which has an C{ended}
    Deferred), from the checkout, killed at cleanup if still running.
    """
    # Its own record of the end: a test's bounded wait on C{proto.ended}
    # cancels that Deferred when it times out, and the process must still
    # be killed then.
    gone: Deferred = Deferred()
    ended = proto.processEnded

    def processEnded(reason) -> None:
        # Noted first: the protocol's own callbacks may run the test's
        # cleanups at once.
        gone.callback(None)
        ended(reason)

    proto.processEnded = processEnded
    reactor.spawnProcess(proto, argv[0], argv, env=child_env() if env is None else env, path=REPO, usePTY=usePTY)

    def stop():
        if not gone.called:
            proto.transport.signalProcess("KILL")
        return bounded(gone)

    testcase.addCleanup(stop)


class ServerProcess(ProcessProtocol):
    """
    A memmq server run as a real child process; knows its port once it has
    logged the line saying where it listens.
    """

    LISTENING = re.compile(rb"memmq listening on https://(\S+):(\d+) \(certificate ([^)]*)\)")

    def __init__(self) -> None:
        self.output = b""
        self.stdout = b""
        self.stderr = b""
        self._listening: list[Deferred] = []
        self.ended: Deferred = Deferred()
        self.status: int | None = None
        self.port: int | None = None
        self.origin: str | None = None

    @classmethod
    def spawn(cls, testcase, args: list[str], executable: str = sys.executable) -> ServerProcess:
        proto = cls()
        spawn(testcase, proto, [executable, *args])
        return proto

    def _received(self) -> None:
        match = self.LISTENING.search(self.output)
        if match and self.port is None:
            self.port = int(match.group(2))
            self.origin = match.group(3).decode()
            waiting, self._listening = self._listening, []
            for d in waiting:
                if not d.called:  # or it timed out
                    d.callback(self.port)

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self.output += data
        self._received()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self.output += data
        self._received()

    def processEnded(self, reason) -> None:
        self.status = reason.value.exitCode
        waiting, self._listening = self._listening, []
        for d in waiting:
            if not d.called:
                d.errback(RuntimeError(f"server exited ({self.status}) before listening: {self.output!r}"))
        self.ended.callback(self.status)

    def wait_listening(self, seconds: float = START) -> Deferred:
        """
        Fire with the port once the server says where it listens; fail
        with what it said so far if it has not within C{seconds}.
        """
        if self.port is not None:
            return succeed(self.port)
        d: Deferred = Deferred()
        self._listening.append(d)

        def late(failure):
            failure.trap(defer.TimeoutError)
            raise AssertionError(f"server not listening after {seconds:g} s: {self.output[-3000:]!r}")

        return bounded(d, seconds).addErrback(late)

    def terminate(self) -> Deferred:
        """
        SIGTERM; fire with the exit status.
        """
        self.transport.signalProcess("TERM")
        return bounded(self.ended)


def held_then_dropped(testcase, topic, buffered: int = 50):
    """
    Check that of C{topic}'s two subscriptions (the stalled one first) the
    stalled one dropped messages, keeping at most C{buffered}, and the
    healthy one none, and that the topic counts the stalled one's drops;
    return the stalled subscription.
    """
    stalled, healthy = list(topic.subscriptions)
    testcase.assertEqual(healthy.dropped, 0)
    testcase.assertGreater(stalled.dropped, 0)
    testcase.assertLessEqual(stalled.buffered, buffered)
    testcase.assertEqual(topic.dropped, stalled.dropped)
    return stalled


def until(condition: Callable[[], object], seconds: float = WAIT) -> Deferred:
    """
    Fire once C{condition()} holds, checking each reactor turn; bounded.
    """
    d: Deferred = Deferred()

    def check():
        if condition():
            d.callback(None)
        elif not d.called:
            call[0] = reactor.callLater(0.01, check)

    call = [reactor.callLater(0, check)]

    def cancel(result):
        if call[0].active():
            call[0].cancel()
        return result

    return bounded(d, seconds).addBoth(cancel)


@inlineCallbacks
def whole_stats(client: TLSClient, url: str, workers: int):
    """
    C{/stats} of a server run with C{--workers}, once it holds every one of
    its C{workers} workers' figures.  The worker that answers waits a
    second for the others' (README: Workers) and answers without those that
    are slower: one that has not joined it yet (just after a restart), or
    one kept busy on a loaded machine.
    """
    for _ in range(int(WAIT / 0.05)):
        response = yield bounded(client.http.get(url + "/stats"))
        stats = json.loads((yield bounded(treq.content(response))))
        if len(stats["workers"]) == workers:
            return stats
        yield sleep(0.05)
    raise AssertionError(f"never every worker's figures: {stats}")


def sleep(seconds: float) -> Deferred:
    """
    Fire after C{seconds} on the reactor: only where a test must let time
    pass (a retry loop's pause), never to wait for an event.
    """
    return deferLater(reactor, seconds, lambda: None)


def dead_port(host: str = "127.0.0.1") -> int:
    """
    A TCP port on C{host} that nothing listens on right now: to connect to
    and be refused, or to hand to a command that takes no port 0
    (systemd-socket-activate).  Skips the test if C{host} cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]
    except OSError as e:
        raise SkipTest(f"cannot bind {host}: {e.strerror}") from None


def short_directory(testcase) -> str:
    """
    A new directory under /tmp, removed at cleanup, for UNIX sockets: a
    socket's path may take 108 bytes, and trial's temporary directory lies
    inside the checkout, as deep as wherever the project was cloned.
    """
    path = tempfile.mkdtemp(prefix="memmq-", dir="/tmp")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


class CertificateFiles:
    """
    A generated certificate for 127.0.0.1 written to C{cert_file} and
    C{key_file} in the test's temporary directory, for --cert_file and
    --key_file.
    """

    def __init__(self, testcase) -> None:
        self.certificate = self_signed_certificate("127.0.0.1")
        base = os.path.abspath(testcase.mktemp())
        os.makedirs(base)
        self.cert_file = os.path.join(base, "cert.pem")
        self.key_file = os.path.join(base, "key.pem")
        with open(self.cert_file, "wb") as f:
            f.write(self.certificate.chain_pem())
        with open(self.key_file, "wb") as f:
            f.write(self.certificate.key_pem())


class Child(ProcessProtocol):
    """
    A child memmq with a pipe to its stdin; keeps stdout and stderr.
    """

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.ended: Deferred = Deferred()
        self.status = None

    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason) -> None:
        self.status = reason.value.exitCode
        self.ended.callback(self.status)


def spawn_memmq(testcase, *args: str) -> Child:
    """
    Start C{python -m memmq ARGS} as a L{Child}, killed at cleanup.
    """
    child = Child()
    spawn(testcase, child, [sys.executable, "-m", "memmq", *args])
    return child


def run_memmq(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    """
    Run C{python -m memmq ARGS} in C{cwd} to its end (within 30 seconds,
    generous for a start-up on a busy machine) with no standard input.
    """
    return subprocess.run(
        [sys.executable, "-m", "memmq", *args],
        check=False,
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )


class Curl(ProcessProtocol):
    """
    curl as a long-running subscriber: keeps its output, fires C{seen} when
    the output holds what was asked for.
    """

    def __init__(self) -> None:
        self.output = b""
        self._waits: list[tuple[bytes, Deferred]] = []
        self.ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for entry in list(self._waits):
            if entry[0] in self.output:
                self._waits.remove(entry)
                entry[1].callback(self.output)

    def seen(self, needle: bytes) -> Deferred:
        d: Deferred = Deferred()
        self._waits.append((needle, d))
        self.outReceived(b"")
        return bounded(d)

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


def _curl() -> str:
    curl = shutil.which("curl")
    if curl is None:
        raise SkipTest("curl is not installed (.ci/run installs it)")
    return curl


def curl_subscribe(testcase, port: int, topic: str = "example") -> Curl:
    """
    The README's curl WebSocket subscribe command (section API), unchanged
    but for the port.
    """
    proto = Curl()
    curl = _curl()
    spawn(testcase, proto, [
        curl, "-k", "-i", "-N", "-s",
        "-H", "Connection: Upgrade",
        "-H", "Upgrade: websocket",
        "-H", f"Host: localhost:{port}",
        "-H", f"Origin:http://localhost:{port}",
        "-H", "Sec-Websocket-Version: 13",
        "-H", "Sec-Websocket-Key: memmq",
        f"https://localhost:{port}/sub?topic={topic}",
    ], env=dict(os.environ))
    return proto


def curl_publish(port: int, message: str = "a completely arbitrary message", topic: str = "example") -> Deferred:
    """
    The README's curl publish command (section API), unchanged but for the
    port; fires with (stdout, stderr, status).
    """
    curl = _curl()
    return bounded(getProcessOutputAndValue(
        curl, ["-k", "-s", "-S", "-w", "%{http_code}", "-d", message, f"https://localhost:{port}/pub?topic={topic}"],
        env=os.environ,
    ))


def new_client(testcase, servers, **kwargs):
    """
    A client of C{servers} (the library's C{client.new}, on the reactor),
    closed when C{testcase} ends.
    """
    from memmq import client

    c = client.new(servers=servers, reactor=reactor, **kwargs)
    testcase.addCleanup(c.close)
    return c


@implementer(ISubscriber)
class Recorder:
    """
    A subscriber that keeps the messages delivered to it, in order.
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]


def write_file(path: str, data: str | bytes, mode: int = 0o600) -> str:
    """
    Write C{data} (text as UTF-8) to C{path} with C{mode}: by default its
    owner's alone, as memmq asks of a file that holds secrets.  Returns
    C{path}.
    """
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def logged_events(testcase) -> list[dict]:
    """
    Every log event from now to the end of C{testcase}, as it comes.
    """
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    testcase.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def exchange(site: MemmqSite, raw: bytes) -> tuple[bytes, StringTransport]:
    """
    Feed C{raw} to a fresh channel of C{site}; return what it answered.
    """
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    answer = transport.value()
    channel.connectionLost(None)
    return answer, transport


@implementer(IBroker)
class SlowBroker:
    """
    A broker that answers later, or fails: what a proxy's client does.
    """

    def __init__(self) -> None:
        self.pending: list[Deferred] = []

    def publish(self, topic, payload, hops=0):
        d = Deferred()
        self.pending.append(d)
        return d

    def subscribe(self, topic, subscriber):
        raise NotImplementedError

    def unsubscribe(self, subscription):
        pass


class Zone(ResolverBase):
    """
    The records a test serves, in dicts it changes between lookups.

    @ivar addresses: name to its addresses, IPv4 and IPv6 mixed, served in
        the order listed (as a rotating server would serve them).
    @ivar aliases: name to the name it is a CNAME of.
    @ivar missing: (name, record type) answered "no such name" although the
        name has addresses.
    @ivar queries: (name, record type) of every lookup, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.addresses: dict[str, list[str]] = {}
        self.aliases: dict[str, str] = {}
        self.missing: set[tuple[str, int]] = set()
        self.queries: list[tuple[str, int]] = []

    def _lookup(self, name, cls, type, timeout):
        name = (name.decode("ascii") if isinstance(name, bytes) else name).lower()
        self.queries.append((name, type))
        answers = []
        target = self.aliases.get(name, name)
        if target != name:
            answers.append(dns.RRHeader(name, dns.CNAME, ttl=0, payload=dns.Record_CNAME(target, ttl=0), auth=True))
        if target not in self.addresses or (name, type) in self.missing:
            return fail(error.DomainError(name))
        version, record = {dns.A: (4, dns.Record_A), dns.AAAA: (6, dns.Record_AAAA)}.get(type, (0, None))
        for address in self.addresses[target]:
            if ipaddress.ip_address(address).version == version:
                answers.append(dns.RRHeader(target, type, ttl=0, payload=record(address, ttl=0), auth=True))
        return succeed((answers, [], []))


class RawHTTP(Protocol):
    """
    Sends one request and keeps the answer: until the connection closes,
    or, with C{head_only}, until the end of its head (a stream, a
    handshake), then hangs up.  C{done} fires with the bytes received.
    """

    def __init__(self, request: bytes, head_only: bool = False) -> None:
        self.request = request
        self.head_only = head_only
        self.received = b""
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.head_only and b"\r\n\r\n" in self.received and not self.done.called:
            self.done.callback(self.received)
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(self.received)


def raw_publish(client: TLSClient, endpoint, host: str, topic: bytes, payload: bytes) -> Deferred:
    """
    POST /pub over TLS on the plain client C{endpoint}, verifying the
    server's certificate for C{host}; fire with the whole answer.
    """
    request = (
        b"POST /pub?topic=%s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (topic, len(payload))
    ) + payload
    proto = RawHTTP(request)
    connecting = endpoints.wrapClientTLS(client.tls_options(host), endpoint).connect(
        Factory.forProtocol(lambda: proto)
    )
    return bounded(connecting.addCallback(lambda _: proto.done))


def raw_tls(port: int, timeout: float = WAIT, context=None):
    """
    A blocking TLS socket to 127.0.0.1:C{port} that verifies nothing: for
    tests that play a hostile or broken client from a thread
    (C{deferToThread}).
    """
    import ssl as stdlib_ssl

    if context is None:
        context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = stdlib_ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return context.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


def read_until_closed(
    sock, seconds: float, limit: int = 1 << 20, quiet: float | None = None
) -> tuple[bytes, bool]:
    """
    Read from a blocking socket until the peer closes it, C{seconds} pass,
    C{limit} bytes came, or (with C{quiet}) nothing more comes for C{quiet}
    seconds after something did; return what came and whether it was
    closed.
    """
    import time

    deadline = time.monotonic() + seconds
    data = b""
    while len(data) < limit:
        left = deadline - time.monotonic()
        if data and quiet is not None:
            left = min(left, quiet)
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def send_until_stuck(sock, unit: bytes, limit: int, stuck: float = 2.0) -> int:
    """
    Send C{unit} repeatedly, never reading, until the peer takes nothing for
    C{stuck} seconds, closes, or C{limit} bytes went; return the bytes sent.
    """
    batch = unit * max(1, 65536 // len(unit))
    sent = 0
    sock.settimeout(stuck)
    while sent < limit:
        try:
            sock.sendall(batch)
        except OSError:
            break
        sent += len(batch)
    return sent


def websocket_upgrade(sock, path: str) -> bytes:
    """
    Upgrade a blocking socket to a WebSocket on C{path}; return the answer's
    head (C{HTTP/1.1 101 ...} when it worked).
    """
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, masked: bool = True) -> bytes:
    """
    One WebSocket frame as a client sends it (masked with a zero key, which
    leaves the payload as it is, unless C{masked} is false).
    """
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0x0F)
    n = len(payload)
    if n < 126:
        length = bytes([(0x80 if masked else 0) | n])
    elif n < 65536:
        length = bytes([(0x80 if masked else 0) | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([(0x80 if masked else 0) | 127]) + n.to_bytes(8, "big")
    return bytes([first]) + length + (b"\0\0\0\0" if masked else b"") + payload


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class Browser:
    """
    Debian's headless chromium, driven by chromium-driver through Selenium,
    with a fresh profile; quit at cleanup.

    Selenium blocks on each call to the driver, so every call runs in a
    thread (L{call}) while the reactor keeps serving the page.
    """

    def __init__(self, driver) -> None:
        self.driver = driver

    @classmethod
    def start(cls, testcase, *, width: int = 1280, height: int = 900) -> Deferred:
        """
        Fire with a L{Browser}; skip the test when chromium, its driver or
        Selenium is missing (.ci/run installs them).
        """
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError:
            raise SkipTest("selenium is not installed (pip install -e .[test])") from None
        for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
            if not os.access(path, os.X_OK):
                raise SkipTest(f"{path} is missing: Debian's {package} (.ci/run installs it)")
        profile = tempfile.mkdtemp(prefix="memmq-chromium-")
        testcase.addCleanup(shutil.rmtree, profile, True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={width},{height}",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})

        def launch():
            return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))

        def started(driver):
            browser = cls(driver)
            testcase.addCleanup(lambda: threads.deferToThread(driver.quit))
            return browser

        return bounded(threads.deferToThread(launch), 60).addCallback(started)

    def call(self, function, *args) -> Deferred:
        """
        C{function(driver, *args)} in a thread; bounded.
        """
        return bounded(threads.deferToThread(function, self.driver, *args))

    def get(self, url: str) -> Deferred:
        return self.call(lambda driver: driver.get(url))

    def script(self, source: str, *args) -> Deferred:
        return self.call(lambda driver: driver.execute_script(source, *args))

    def until(self, source: str, *args, seconds: float = WAIT) -> Deferred:
        """
        Fire with the value of the script C{source} once it is truthy,
        polling every 50 ms in the browser; bounded.
        """
        def wait(driver):
            from selenium.webdriver.support.ui import WebDriverWait

            return WebDriverWait(driver, seconds, poll_frequency=0.05).until(
                lambda d: d.execute_script(source, *args)
            )

        return bounded(threads.deferToThread(wait, self.driver), seconds + 5)

    def errors(self) -> Deferred:
        """
        Fire with the browser console's error entries so far.
        """
        return self.call(lambda driver: [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"])


class NotifySocket:
    """
    A datagram socket standing in for systemd's; keeps what it receives.
    """

    def __init__(self, testcase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"memmq-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(short_directory(testcase), "notify")
            self.sock.bind(self.address)
        self.sock.setblocking(False)
        testcase.addCleanup(self.sock.close)
        self.received: list[str] = []

    def read(self) -> list[str]:
        while True:
            try:
                self.received.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.received

    def feeds(self) -> int:
        """
        How many WATCHDOG=1 have arrived so far.
        """
        return sum(1 for message in self.read() if message == "WATCHDOG=1")



class StreamReader(Protocol):
    """
    A raw reader of a streaming C{GET /sub} over TLS, as a browser's
    C{EventSource} (C{event_stream}) or a plain client sends it: the body,
    de-chunked as it comes, and for an event stream its events, parsed as
    they come (so that megabytes cost no quadratic copying).  Pausing its
    transport stops reading, as a stalled peer does.

    @ivar events: for an event stream, each event's C{(id, data)}, the id
        being the last one seen (L{None} before any); an id alone (the end
        of a replay) only moves C{last_id}.
    """

    def __init__(self, testcase, server: RunningServer, query: str, headers: dict | None = None,
                 event_stream: bool = False) -> None:
        self.event_stream = event_stream
        self.head: bytes | None = None
        self.body = bytearray()
        self.events: list[tuple[int | None, bytes]] = []
        self.last_id: int | None = None
        self.ended = False
        self.lost: Deferred = Deferred()
        self._raw = bytearray()
        self._data_left = 0
        self._crlf_left = 0
        self._parsed = 0
        lines = [f"GET /sub?{query} HTTP/1.1", "Host: 127.0.0.1"]
        if event_stream:
            lines.append("Accept: text/event-stream")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        endpoint = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", server.port, server.client.tls_options())
        self.opened = bounded(endpoints.connectProtocol(endpoint, self))
        testcase.addCleanup(self.close)

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        raw = self._raw
        raw += data
        if self.head is None:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(raw[:end])
            del raw[: end + 4]
        start = 0
        while start < len(raw) and not self.ended:
            if self._data_left:
                taken = min(self._data_left, len(raw) - start)
                self.body += raw[start : start + taken]
                self._data_left -= taken
                start += taken
            elif self._crlf_left:
                taken = min(self._crlf_left, len(raw) - start)
                self._crlf_left -= taken
                start += taken
            else:
                end = raw.find(b"\r\n", start)
                if end < 0:
                    break
                size = int(raw[start:end], 16)
                start = end + 2
                if size == 0:
                    self.ended = True
                self._data_left, self._crlf_left = size, 2
        del raw[:start]
        if self.event_stream:
            self._parse_events()

    def _parse_events(self) -> None:
        body = self.body
        while True:
            end = body.find(b"\n\n", self._parsed)
            if end < 0:
                return
            data = None
            kind = None
            for line in bytes(body[self._parsed : end]).split(b"\n"):
                if line.startswith(b"id: "):
                    self.last_id = int(line[4:])
                elif line.startswith(b"data: "):
                    data = line[6:] if data is None else data + b"\n" + line[6:]
                elif line.startswith(b"event: "):
                    kind = line[7:]
            if data is not None:
                if kind == b"base64":
                    data = base64.b64decode(data)
                self.events.append((self.last_id, data))
            self._parsed = end + 2

    def data(self) -> list[bytes]:
        return [data for _, data in self.events]

    def ids(self) -> list[int | None]:
        return [event_id for event_id, _ in self.events]

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)

    _closed = False

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.abortConnection()
