"""
What the end-to-end tests share: a real server on a loopback port with a
real (generated) certificate, clients that verify it, and bounded waits.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.client import HTTPClient
from twisted.internet import endpoints, reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from memmq.broker import Broker
from memmq.errors import MemmqError
from memmq.server.listen import parse_address
from memmq.server.service import HTTPService
from memmq.server.web import MemmqSite
from memmq.tls import ServerCertificate, self_signed_certificate

WAIT = 20.0  # seconds: the bound on any single wait in a test

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        self, testcase, certificate: ServerCertificate | None = None, address: str = "127.0.0.1:0", **site_options
    ) -> None:
        broker_options = {
            k: site_options.pop(k) for k in ("max_buffered_messages", "max_buffered_bytes") if k in site_options
        }
        self.broker = site_options.pop("broker", None) or Broker(**broker_options)
        listen = parse_address(address)
        self.certificate = certificate or self_signed_certificate(listen.host or "127.0.0.1")
        self.site = MemmqSite(self.broker, **site_options)
        self.service = HTTPService(self.site, listen, self.certificate, reactor)
        try:
            self.service.startService()
        except MemmqError as e:
            raise SkipTest(f"cannot listen on {address}: {e}") from None
        testcase.addCleanup(self.stop)
        host = self.service.port.getHost()
        self.port = host.port
        self.url = f"https://{host.host}:{self.port}"
        self.client = TLSClient(testcase, self.certificate)

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

    def connect(self, url: str, path: str, topic: str | None, protocol=None, headers=None) -> Deferred:
        """
        Open a WebSocket to C{path}; fire with the open protocol (an
        L{Collector} unless told otherwise).
        """
        query = "" if topic is None else "?topic=" + topic
        host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
        factory = WebSocketClientFactory(f"wss://{host}:{port}{path}{query}", headers=headers)
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
            d.errback(RuntimeError(f"server exited ({self.status}) before listening: {self.output!r}"))
        self.ended.callback(self.status)

    def wait_listening(self) -> Deferred:
        """
        Fire with the port once the server says where it listens.
        """
        if self.port is not None:
            return succeed(self.port)
        d: Deferred = Deferred()
        self._listening.append(d)
        return bounded(d)

    def terminate(self) -> Deferred:
        """
        SIGTERM; fire with the exit status.
        """
        self.transport.signalProcess("TERM")
        return bounded(self.ended)
