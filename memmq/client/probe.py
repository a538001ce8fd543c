"""
Why a server did not answer as expected, when it can be told in one line:
it speaks something else than the client asked for (TLS or not, HTTP or
gRPC), or it refused a WebSocket handshake and says why in the body of its
answer, which autobahn does not read (README: Command-line client).

Each question is one short connection of its own, made only after a
failure, bounded in time: a server that answers nothing leaves the
failure's own reason as it was.
"""

from __future__ import annotations

from twisted.internet import endpoints, ssl
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from memmq.client.reasons import reason_of
from memmq.client.servers import BadServer, endpoint_of
from memmq.errors import ServersFailed

__all__ = ["PROBE_TIMEOUT", "diagnose", "explained", "reachable", "refusal_reason", "status_reason"]

# Seconds a probe may take, connection and answer together.
PROBE_TIMEOUT = 3.0
# The most of an answer a probe reads.
_LIMIT = 4096

SPEAKS_TLS = "this server speaks TLS: use https://"
SPEAKS_PLAIN = "this server does not speak TLS: use http://"
SPEAKS_GRPC = "this server speaks gRPC: use --transport=grpc"
SPEAKS_HTTP = "this server speaks HTTP/WebSocket, not gRPC: use --transport=http"


def status_reason(code: int, body: bytes) -> str:
    """
    One line for an HTTP answer that is not 200: the status and the first
    line of the body (memmq's errors are one line of plain text).
    """
    line = body.decode("utf-8", "replace").strip().splitlines()
    return f"HTTP {code}" + (f": {line[0]}" if line else "")


@implementer(IHandshakeListener)
class _Probe(Protocol):
    """
    Writes C{request} once connected; keeps what comes back (up to a limit)
    and whether a TLS handshake completed, with which protocol (ALPN).
    """

    def __init__(self, request: bytes, enough: int, tls: bool) -> None:
        self.request = request
        self.tls = tls
        self.enough = enough
        self.received = b""
        self.handshake = False
        self.connected = False
        self.failure = None
        self.alpn: bytes | None = None
        self.done: Deferred[_Probe] = Deferred()

    def connectionMade(self) -> None:
        self.connected = True
        if self.request:
            self.transport.write(self.request)
        elif not self.tls:
            self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self.handshake = True
        self.alpn = self.transport.negotiatedProtocol
        if not self.request:
            # All that was asked; abort rather than wait for a peer that
            # may never answer a TLS close.
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.enough:
            self.transport.abortConnection()

    def connectionLost(self, reason) -> None:
        if self.failure is None and not self.handshake:
            self.failure = reason
        if not self.done.called:
            self.done.callback(self)


def _exchange(reactor, host: str, port: int, tls, request: bytes, enough: int = _LIMIT) -> Deferred[_Probe]:
    """
    Connect to C{host:port} (over TLS with the C{tls} connection creator,
    if given), send C{request}, and fire with the L{_Probe} once the server
    closes, C{enough} bytes have come, or after L{PROBE_TIMEOUT}; never
    fails.
    """
    probe = _Probe(request, enough, tls is not None)
    endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=PROBE_TIMEOUT)
    if tls is not None:
        endpoint = endpoints.wrapClientTLS(tls, endpoint)
    connecting = endpoint.connect(Factory.forProtocol(lambda: probe))
    def not_connected(failure) -> None:
        probe.failure = failure
        if not probe.done.called:
            probe.done.callback(probe)

    connecting.addErrback(not_connected)

    def give_up() -> None:
        if probe.transport is not None:
            probe.transport.abortConnection()
        else:
            connecting.cancel()

    call = reactor.callLater(PROBE_TIMEOUT, give_up)

    def finished(result: _Probe) -> _Probe:
        if call.active():
            call.cancel()
        return result

    return probe.done.addCallback(finished)


def _tls(*protocols: bytes):
    # Unverified: the question is what the server speaks, not who it is.
    return ssl.CertificateOptions(verify=False, acceptableProtocols=list(protocols) or None)


def _get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


# Enough of an answer to tell whether it is HTTP/1.x.
_STATUS_LINE = len(b"HTTP/1.1 200")


def _answer(received: bytes) -> tuple[int, bytes] | None:
    """
    The status and body of an HTTP/1.x answer, or None when C{received} is
    not one.
    """
    head, _, body = received.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1][:3].isdigit():
        return None
    return int(status[1][:3]), body


@inlineCallbacks
def diagnose(reactor, server: str, transport: str = "http"):
    """
    Fire with one line saying what C{server} speaks, when that is not what
    a client of C{transport} (C{"http"} or C{"grpc"}) spoke to it through
    C{server}'s scheme; or with None when it seems to speak that, or does
    not answer.
    """
    tls, host, port = endpoint_of(server)
    if not tls:
        probe = yield _exchange(reactor, host, port, _tls(b"h2", b"http/1.1"), b"")
        return SPEAKS_TLS if probe.handshake else None
    if transport == "grpc":
        probe = yield _exchange(reactor, host, port, _tls(b"h2"), b"")
        if probe.handshake and probe.alpn == b"h2":
            return None
    http = yield _exchange(reactor, host, port, _tls(b"http/1.1"), _get(host, "/health"), _STATUS_LINE)
    if _answer(http.received) is not None:
        return SPEAKS_HTTP if transport == "grpc" else None
    if not http.handshake:
        plain = yield _exchange(reactor, host, port, None, _get(host, "/health"), _STATUS_LINE)
        return SPEAKS_PLAIN if _answer(plain.received) is not None else None
    if transport == "http":
        h2 = yield _exchange(reactor, host, port, _tls(b"h2"), b"")
        if h2.handshake and h2.alpn == b"h2":
            return SPEAKS_GRPC
    return None


@inlineCallbacks
def reachable(reactor, tls, server: str):
    """
    Fire with None when a TLS (or, for C{http://}, TCP) connection to
    C{server} can be made within L{PROBE_TIMEOUT}, or with one line saying
    why not.

    @param tls: the client's L{memmq.tls.ClientTLS} (its verification is
        part of what is checked).
    """
    secure, host, port = endpoint_of(server)
    probe = yield _exchange(reactor, host, port, tls.creator(host) if secure else None, b"")
    if probe.handshake or (probe.connected and not secure):
        return None
    if probe.failure is None:
        return "timed out"
    return reason_of(probe.failure)


@inlineCallbacks
def explained(reactor, error: ServersFailed, transport: str = "http"):
    """
    Fire with C{error}, or with an error of its kind whose reasons say what
    a server speaks instead, where L{diagnose} tells.
    """
    servers = [server for server in error.failures if server.startswith(("http://", "https://"))]
    try:
        found = yield gatherResults([diagnose(reactor, server, transport) for server in servers])
    except BadServer:
        return error
    better = {server: why for server, why in zip(servers, found, strict=True) if why is not None}
    if not better:
        return error
    return type(error)(error.topic, {server: better.get(server, why) for server, why in error.failures.items()})


@inlineCallbacks
def refusal_reason(reactor, tls, host: str, port: int, path: str):
    """
    Fire with the reason a server gives for refusing a GET of C{path} (its
    status and the first line of its answer's body), asked as a plain
    request: what a refused WebSocket handshake's answer said. None when it
    gives none, or does not refuse.

    @param tls: the TLS connection creator for C{host}, or None for plain
        HTTP.
    """
    probe = yield _exchange(reactor, host, port, tls, _get(host, path))
    answer = _answer(probe.received)
    if answer is None or answer[0] < 400:
        return None
    code, body = answer
    return status_reason(code, body)
