"""
Tests for access control at the front-ends (memmq.server.access and
memmq.server.credentials; README: Access control): real servers on
loopback ports with real TLS, every path asked with every kind of
credential, and the exact status, close code or gRPC status each gets.
"""

from __future__ import annotations

import base64
import datetime
import os
import sys
import time

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.auth import hash_token, make_authority, new_token
from memmq.broker import Broker
from memmq.client import Client
from memmq.client.rpc import GRPCClient
from memmq.errors import SubscribeError
from memmq.server.access import Access
from memmq.server.credentials import bearer_token, redact_tokens, select_subprotocol, subprotocol_token
from memmq.server.listen import parse_address
from memmq.server.rpc import GRPCService
from memmq.tls import ServerCertificate, self_signed_certificate
from tests.grpc_support import RawClient
from tests.support import (
    WAIT,
    Child,
    RawHTTP,
    Recorder,
    RunningServer,
    ServerProcess,
    bounded,
    child_env,
    spawn,
    spawn_memmq,
    until,
    write_file,
)

SECRET = b"s" * 40
OTHER_SECRET = b"o" * 40
_HEADERS_END = b"\r\n\r\n"


def _jwt(claims: dict, secret: bytes = SECRET) -> str:
    return jwt.encode(claims, secret, "HS256")


class Credentials:
    """
    The tokens, JWTs and files of the tests: an auth file with a publisher,
    a reader (may subscribe, not publish), an admin, a device known by its
    certificate, and anonymous allowed public.>; a JWT key.
    """

    def __init__(self, testcase, leeway: float = 0.0) -> None:
        base = os.path.abspath(testcase.mktemp())
        os.makedirs(base)
        self.base = base
        self.publisher = new_token()
        self.reader = new_token()
        self.admin = new_token()
        self.revoked = new_token()
        self.auth_file = os.path.join(base, "auth.toml")
        self.write_auth_file()
        self.jwt_key = write_file(os.path.join(base, "jwt.secret"), SECRET)
        now = int(time.time())
        self.browser = _jwt({"sub": "browser-1", "exp": now + 600, "memmq": {"sub": ["chat.*"]}})
        self.expired = _jwt({"sub": "browser-2", "exp": now - 60, "memmq": {"sub": ["chat.*"]}})
        self.forged = _jwt({"sub": "browser-3", "exp": now + 600, "memmq": {"pub": [">"]}}, OTHER_SECRET)
        self.leeway = leeway

    def auth_text(self, with_revoked: bool = True) -> str:
        text = f"""
            # the order service
            [[user]]
            name = "orders-service"
            token = "{hash_token(self.publisher)}"
            publish = ["orders.>"]
            subscribe = ["orders.>"]

            [[user]]
            name = "reader"
            token = "{hash_token(self.reader)}"
            subscribe = ["orders.*"]

            [[user]]
            name = "prometheus"
            token = "{hash_token(self.admin)}"
            admin = true

            [[user]]
            name = "edge-1"
            certificate = ["edge-1.example.com"]
            publish = ["telemetry.edge-1"]

            [anonymous]
            subscribe = ["public.>"]
            """
        if with_revoked:
            text += f"""
            [[user]]
            name = "leaver"
            token = "{hash_token(self.revoked)}"
            publish = [">"]
            """
        return text.replace("\n            ", "\n")

    def write_auth_file(self, text: str | None = None, mode: int = 0o600) -> None:
        write_file(self.auth_file, (self.auth_text() if text is None else text).encode(), mode)

    def authority(self):
        return make_authority(auth_file=self.auth_file, jwt_key=self.jwt_key, jwt_leeway=self.leeway)


class Answer:
    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(_HEADERS_END)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        self.phrase = parts[2] if len(parts) > 2 else ""
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:200]!r}>"


def ask(server: RunningServer, method: str, target: str, token: str | None = None, headers: dict | None = None,
        body: bytes = b"", head_only: bool | None = None, upgrade: bool = False) -> Deferred:
    """
    One HTTP request over a fresh TLS connection to C{server}; fires with
    its L{Answer}.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if upgrade:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    else:
        lines.append("Connection: close")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body
    if head_only is None:
        head_only = upgrade or (method == "GET" and target.startswith("/sub"))
    protocol = RawHTTP(request, head_only)
    endpoint = endpoints.wrapClientTLS(
        server.client.tls_options(), endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", server.port, timeout=int(WAIT))
    )
    endpoint.connect(Factory.forProtocol(lambda: protocol)).addErrback(protocol.done.errback)
    return bounded(protocol.done).addCallback(Answer)


class LogCapture:
    """
    Every log event's text while a test runs.
    """

    def __init__(self, testcase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event) -> None:
        from twisted.logger import formatEvent

        self.lines.append(formatEvent(event) + " " + repr(sorted(event.items(), key=lambda kv: kv[0]))[:2000])


class AccessServer:
    """
    An in-process server (HTTP and gRPC over one broker) with access
    control on, as the tests' L{Credentials} describe.
    """

    def __init__(self, testcase, credentials: Credentials, origins=None, access_log: bool = False,
                 certificate: ServerCertificate | None = None) -> None:
        self.access = Access(credentials.authority(), origins)
        self.broker = Broker()
        self.http = RunningServer(
            testcase, certificate=certificate, broker=self.broker, access=self.access, access_log=access_log
        )
        self.grpc = GRPCService(
            self.broker, parse_address("127.0.0.1:0"), self.http.certificate, reactor, 1 << 20, access=self.access
        )
        self.grpc.startService()
        testcase.addCleanup(lambda: self.grpc.running and bounded(self.grpc.stopService()))
        self.grpc_server = f"127.0.0.1:{self.grpc.port}"
        # autobahn's timers of the WebSockets the tests hung up on run in
        # buckets a fraction of a second later: wait for them, bounded.
        testcase.addCleanup(lambda: until(lambda: not any(
            "_notify_bucket" in repr(call.func) for call in reactor.getDelayedCalls()
        )))


class UnitTests(SynchronousTestCase):
    """
    The small pieces: reading a token from its places, redacting it.
    """

    def test_bearer(self) -> None:
        """
        Only the Bearer scheme gives a token; case-insensitive, trimmed.
        """
        self.assertEqual(bearer_token(b"Bearer abc"), "abc")
        self.assertEqual(bearer_token("bearer  abc "), "abc")
        self.assertIsNone(bearer_token("Basic abc"))
        self.assertIsNone(bearer_token("Bearer "))
        self.assertIsNone(bearer_token(None))

    def test_subprotocol(self) -> None:
        """
        The token subprotocol gives the token; the server selects
        memmq.bearer, never the one holding the token, and keeps what a
        handler chose (memmq.v1, say).
        """
        offered = ["memmq.bearer", "memmq.token.abc.def"]
        self.assertEqual(subprotocol_token(offered), "abc.def")
        self.assertEqual(select_subprotocol(offered), "memmq.bearer")
        self.assertEqual(select_subprotocol(offered, "memmq.v1"), "memmq.v1")
        self.assertIsNone(select_subprotocol(["memmq.token.abc"]))
        self.assertIsNone(select_subprotocol(["memmq.bearer"]))

    def test_redact(self) -> None:
        """
        Every token= value in a log line is replaced; other parameters stay.
        """
        line = '127.0.0.1 - - [x] "GET /sub?topic=a&token=SECRET&x=1 HTTP/1.1" 200 - "-" "ua token=S2"'
        redacted = redact_tokens(line)
        self.assertNotIn("SECRET", redacted)
        self.assertNotIn("S2", redacted)
        self.assertIn("topic=a&token=REDACTED&x=1", redacted)
        self.assertEqual(redact_tokens("/sub?topic=token=x"), "/sub?topic=token=x")


class MatrixTests(TestCase):
    """
    Each path with each kind of credential gets exactly its status.
    """

    timeout = 120

    def setUp(self) -> None:
        self.credentials = Credentials(self)
        self.logs = LogCapture(self)
        self.server = AccessServer(self, self.credentials)
        self.http = self.server.http

    def tearDown(self) -> None:
        c = self.credentials
        for secret in (c.publisher, c.reader, c.admin, c.browser, c.expired, c.forged):
            for line in self.logs.lines:
                self.assertNotIn(secret, line)

    @inlineCallbacks
    def _expect(self, cases, method: str, path: str, **kwargs):
        for token, status in cases:
            with self.subTest(path=path, token=token and token[:12]):
                answer = yield ask(self.http, method, path, token, **kwargs)
                self.assertEqual(answer.status, status, answer)
                if status == 401:
                    self.assertEqual(answer.headers.get("www-authenticate"), "Bearer")
                if status in (401, 403) and not kwargs.get("upgrade") and not path.startswith("/sub"):
                    self.assertEqual(answer.body.count(b"\n"), 1, answer)

    @inlineCallbacks
    def test_publish(self) -> None:
        """
        POST and PUT /pub: no credentials, an unknown token, an expired JWT
        and a badly signed one are 401; a reader, or a JWT allowed to
        subscribe only, 403; the publisher 200.
        """
        c = self.credentials
        cases = [
            (None, 401), ("x" * 43, 401), (c.expired, 401), (c.forged, 401),
            (c.reader, 403), (c.browser, 403), (c.admin, 403), (c.publisher, 200),
        ]
        yield self._expect(cases, "POST", "/pub?topic=orders.new", body=b"m")
        yield self._expect(cases, "PUT", "/pub?topic=orders.new", body=b"m")

    @inlineCallbacks
    def test_publish_reasons(self) -> None:
        """
        A refusal's one line says why, never with the token.
        """
        c = self.credentials
        answer = yield ask(self.http, "POST", "/pub?topic=orders.new", None, body=b"m")
        self.assertEqual(answer.body, b"no credentials, and anonymous may not publish to 'orders.new'\n")
        answer = yield ask(self.http, "POST", "/pub?topic=orders.new", c.reader, body=b"m")
        self.assertEqual(answer.body, b"'reader' may not publish to 'orders.new'\n")
        answer = yield ask(self.http, "POST", "/pub?topic=orders.new", c.expired, body=b"m")
        self.assertEqual(answer.body, b"JWT expired\n")
        answer = yield ask(self.http, "POST", "/pub?topic=orders.new", c.forged, body=b"m")
        self.assertEqual(answer.body, b"JWT signature does not verify with the server's HS256 key\n")

    @inlineCallbacks
    def test_patterns(self) -> None:
        """
        orders.> is one or more tokens after orders (not orders itself);
        orders.* exactly one; a topic is never read as a pattern.
        """
        c = self.credentials
        yield self._expect([(c.publisher, 200)], "POST", "/pub?topic=orders.new.eu", body=b"m")
        yield self._expect([(c.publisher, 403)], "POST", "/pub?topic=orders", body=b"m")
        yield self._expect([(c.publisher, 403)], "POST", "/pub?topic=ordersx.new", body=b"m")
        yield self._expect([(c.reader, 200)], "GET", "/sub?topic=orders.new")
        yield self._expect([(c.reader, 403)], "GET", "/sub?topic=orders.new.eu")
        yield self._expect([(None, 200)], "GET", "/sub?topic=public.a.b")
        yield self._expect([(None, 401)], "GET", "/sub?topic=public")

    @inlineCallbacks
    def test_subscribe_both_forms(self) -> None:
        """
        GET /sub, streaming and as a WebSocket handshake alike.
        """
        c = self.credentials
        cases = [
            (None, 401), ("x" * 43, 401), (c.expired, 401), (c.forged, 401),
            (c.admin, 403), (c.reader, 200), (c.publisher, 200),
        ]
        yield self._expect(cases, "GET", "/sub?topic=orders.new")
        yield self._expect([(t, 101 if s == 200 else s) for t, s in cases], "GET", "/sub?topic=orders.new",
                           upgrade=True)
        yield self._expect([(c.browser, 101), (c.reader, 403)], "GET", "/sub?topic=chat.room1", upgrade=True)
        yield self._expect([(c.reader, 403)], "GET", "/sub?topic=orders.new.eu", upgrade=True)

    @inlineCallbacks
    def test_websocket_publish(self) -> None:
        """
        GET /pub with an upgrade is checked at its handshake, for its topic.
        """
        c = self.credentials
        cases = [(None, 401), (c.expired, 401), (c.reader, 403), (c.publisher, 101)]
        yield self._expect(cases, "GET", "/pub?topic=orders.new", upgrade=True)

    @inlineCallbacks
    def test_handshake_reason_in_status_line(self) -> None:
        """
        A refused handshake carries the reason in its status line, which
        WebSocket clients show.
        """
        answer = yield ask(self.http, "GET", "/sub?topic=orders.new.eu", self.credentials.reader, upgrade=True)
        self.assertEqual((answer.status, answer.phrase), (403, "'reader' may not subscribe to 'orders.new.eu'"))

    @inlineCallbacks
    def test_since(self) -> None:
        """
        A subscription with since is checked as a subscription (before
        since is refused on a server without persistence).
        """
        yield self._expect([(None, 401), (self.credentials.reader, 400)], "GET", "/sub?topic=orders.new&since=0")

    @inlineCallbacks
    def test_token_in_query_and_subprotocol(self) -> None:
        """
        ?token= and the memmq.token.TOKEN subprotocol (with memmq.bearer,
        which the handshake selects) identify as the header does.
        """
        c = self.credentials
        answer = yield ask(self.http, "GET", f"/sub?topic=chat.room1&token={c.browser}", upgrade=True)
        self.assertEqual(answer.status, 101)
        answer = yield ask(
            self.http, "GET", "/sub?topic=chat.room1", upgrade=True,
            headers={"Sec-WebSocket-Protocol": f"memmq.bearer, memmq.token.{c.browser}"},
        )
        self.assertEqual(answer.status, 101)
        self.assertEqual(answer.headers.get("sec-websocket-protocol"), "memmq.bearer")
        answer = yield ask(self.http, "POST", f"/pub?topic=orders.new&token={c.publisher}", body=b"m")
        self.assertEqual(answer.status, 200)

    @inlineCallbacks
    def test_figures(self) -> None:
        """
        /stats and /metrics are the admin's; /health is open to everyone.
        """
        c = self.credentials
        cases = [(None, 401), ("x" * 43, 401), (c.expired, 401), (c.publisher, 403), (c.admin, 200)]
        yield self._expect(cases, "GET", "/stats")
        yield self._expect(cases, "GET", "/metrics")
        yield self._expect([(None, 200), ("x" * 43, 200)], "GET", "/health")

    @inlineCallbacks
    def test_refusals_counted(self) -> None:
        """
        /metrics counts refusals by kind; the log has few lines for many.
        """
        c = self.credentials
        for _ in range(5):
            yield ask(self.http, "POST", "/pub?topic=orders.new", c.reader, body=b"m")
        yield ask(self.http, "POST", "/pub?topic=orders.new", None, body=b"m")
        answer = yield ask(self.http, "GET", "/metrics", c.admin)
        self.assertIn(b'memmq_refusals_total{kind="forbidden"} 5.0', answer.body)
        self.assertIn(b'memmq_refusals_total{kind="unauthenticated"} 1.0', answer.body)
        refused = [line for line in self.logs.lines if line.startswith("refused ")]
        self.assertEqual(len(refused), 1, refused)

    @inlineCallbacks
    def test_one_identity_per_connection(self) -> None:
        """
        Requests on one connection are identified once: the second
        request's token is not looked up again (the cache is on the
        connection), but another token on it is.
        """
        authority = self.server.access.authority
        looked_up = []
        original = authority.identify_token

        def counting(token):
            looked_up.append(token)
            return original(token)

        authority.identify_token = counting
        self.addCleanup(setattr, authority, "identify_token", original)
        c = self.credentials
        client = Client(servers=[self.http.url], token=c.publisher)
        self.addCleanup(client.close)
        for _ in range(5):
            yield bounded(client.publish("orders.new", b"m"))
        self.assertEqual(len(looked_up), 1)

    @inlineCallbacks
    def test_grpc(self) -> None:
        """
        gRPC Pub: UNAUTHENTICATED without or with bad credentials,
        PERMISSION_DENIED when not allowed, OK when allowed; health open.
        """
        c = self.credentials
        raw = RawClient(self, self.server.grpc.port, self.http.certificate)
        cases = [
            (None, grpc.StatusCode.UNAUTHENTICATED), ("x" * 43, grpc.StatusCode.UNAUTHENTICATED),
            (c.expired, grpc.StatusCode.UNAUTHENTICATED), (c.forged, grpc.StatusCode.UNAUTHENTICATED),
            (c.reader, grpc.StatusCode.PERMISSION_DENIED), (c.publisher, grpc.StatusCode.OK),
        ]
        for token, code in cases:
            metadata = None if token is None else (("authorization", f"Bearer {token}"),)
            status, details = yield raw.status_of_publish("orders.new", b"m", metadata)
            self.assertEqual(status, code, details)
        status = yield raw.health()
        self.assertEqual(status, 1)  # SERVING

    @inlineCallbacks
    def test_grpc_subscribe(self) -> None:
        """
        gRPC Sub through the client: refused without a token (not retried),
        as a reader for a topic it may not, and accepted as the reader.
        """
        c = self.credentials
        for token, code in ((None, "UNAUTHENTICATED"), (c.reader, "PERMISSION_DENIED")):
            client = GRPCClient(servers=[self.server.grpc_server], token=token, ca_file=self._ca(), retries=3)
            self.addCleanup(client.close)
            error = yield bounded(client.subscribe("orders.new.eu")).addCallbacks(self.fail, lambda f: f.value)
            self.assertIsInstance(error, SubscribeError)
            self.assertIn(f"gRPC {code}", str(error))
        client = GRPCClient(servers=[self.server.grpc_server], token=c.reader, ca_file=self._ca())
        self.addCleanup(client.close)
        subscription = yield bounded(client.subscribe("orders.new"))
        publisher = GRPCClient(servers=[self.server.grpc_server], token=c.publisher, ca_file=self._ca())
        self.addCleanup(publisher.close)
        yield until(lambda: self.server.broker.topic("orders.new") is not None)
        yield bounded(publisher.publish("orders.new", b"hello"))
        self.assertEqual((yield bounded(subscription.get())), b"hello")
        error = yield bounded(client.publish("orders.new", b"no")).addCallbacks(self.fail, lambda f: f.value)
        self.assertIn("PERMISSION_DENIED", str(error))

    def _ca(self) -> str:
        path = os.path.join(self.credentials.base, "ca.pem")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(self.http.certificate.chain_pem())
        return path

    @inlineCallbacks
    def test_client_library(self) -> None:
        """
        The client library carries its token on publish and subscribe; a
        refusal is Unauthenticated or Forbidden, not retried.
        """
        c = self.credentials
        reader = Client(servers=[self.http.url], token=c.reader, retries=3)
        self.addCleanup(reader.close)
        subscription = yield bounded(reader.subscribe("orders.new"))
        publisher = Client(servers=[self.http.url], token=c.publisher)
        self.addCleanup(publisher.close)
        yield until(lambda: self.server.broker.topic("orders.new") is not None)
        yield bounded(publisher.publish("orders.new", b"hello"))
        self.assertEqual((yield bounded(subscription.get())), b"hello")
        error = yield bounded(reader.publish("orders.new", b"no")).addCallbacks(self.fail, lambda f: f.value)
        self.assertIn("HTTP 403: 'reader' may not publish to 'orders.new'", str(error))
        anonymous = Client(servers=[self.http.url], retries=3)
        self.addCleanup(anonymous.close)
        error = yield bounded(anonymous.subscribe("orders.new")).addCallbacks(self.fail, lambda f: f.value)
        self.assertIsInstance(error, SubscribeError)
        self.assertIn("HTTP 401: no credentials", str(error))
        self.assertEqual(self.server.access.refusals["unauthenticated"], 1)  # one attempt, not four


class ExpiryTests(TestCase):
    """
    A subscriber whose JWT expires is closed: WebSocket 4001, the streaming
    response ended, the gRPC stream UNAUTHENTICATED.
    """

    timeout = 60

    def setUp(self) -> None:
        self.credentials = Credentials(self, leeway=0.0)
        self.server = AccessServer(self, self.credentials)
        self.token = _jwt({"sub": "short", "exp": int(time.time()) + 2, "memmq": {"sub": ["chat.*"]}})

    @inlineCallbacks
    def test_websocket(self) -> None:
        """
        Close code 4001.
        """
        http = self.server.http
        headers = {"Authorization": f"Bearer {self.token}"}
        collector = yield http.client.connect(http.url, "/sub", "chat.a", headers=headers)
        code = yield collector.wait_closed()
        self.assertEqual(code, 4001)

    @inlineCallbacks
    def test_streaming(self) -> None:
        """
        The streaming response ends (the whole answer arrives: the request
        asked for the connection to close after it).
        """
        answer = yield ask(self.server.http, "GET", "/sub?topic=chat.a", self.token, head_only=False)
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.body.endswith(b"0\r\n\r\n"), answer)

    @inlineCallbacks
    def test_grpc(self) -> None:
        """
        The stream ends UNAUTHENTICATED; the client does not reconnect.
        """
        ca = os.path.join(self.credentials.base, "ca.pem")
        with open(ca, "wb") as f:
            f.write(self.server.http.certificate.chain_pem())
        client = GRPCClient(servers=[self.server.grpc_server], token=self.token, ca_file=ca)
        self.addCleanup(client.close)
        subscription = yield bounded(client.subscribe("chat.a"))
        [link] = subscription._links.values()
        yield until(lambda: link._closed, 10)
        self.assertEqual(subscription.connected, 0)


def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _client_certificate(ca, name: str, path: str) -> str:
    ca_key, ca_certificate = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return write_file(path, pem)


class ClientCertificateTests(TestCase):
    """
    --client_ca_file: a certificate from the CA whose name the auth file
    lists identifies its user; one from another CA fails the TLS
    handshake; one whose name no user has is 401; none is anonymous.
    """

    timeout = 60

    def setUp(self) -> None:
        self.credentials = Credentials(self)
        self.ca = _ca("memmq test CA")
        certificate = self_signed_certificate("127.0.0.1")
        certificate.client_authorities = [self.ca[1]]
        self.server = AccessServer(self, self.credentials, certificate=certificate)
        base = self.credentials.base
        self.edge = _client_certificate(self.ca, "edge-1.example.com", os.path.join(base, "edge.pem"))
        self.stranger = _client_certificate(self.ca, "stranger.example.com", os.path.join(base, "stranger.pem"))
        self.foreign = _client_certificate(_ca("another CA"), "edge-1.example.com", os.path.join(base, "foreign.pem"))

    def _publish(self, client_cert, topic: str = "telemetry.edge-1"):
        client = Client(servers=[self.server.http.url], client_cert=client_cert, retries=0)
        self.addCleanup(client.close)
        return bounded(client.publish(topic, b"reading")).addCallbacks(lambda _: "ok", lambda f: f.value)

    @inlineCallbacks
    def test_accepted(self) -> None:
        self.assertEqual((yield self._publish(self.edge)), "ok")
        error = yield self._publish(self.edge, "telemetry.edge-2")
        self.assertIn("HTTP 403: 'edge-1' may not publish to 'telemetry.edge-2'", str(error))

    @inlineCallbacks
    def test_unknown_subject(self) -> None:
        error = yield self._publish(self.stranger)
        self.assertIn("HTTP 401: no user in the auth file has the certificate name 'stranger.example.com'", str(error))

    @inlineCallbacks
    def test_unknown_ca(self) -> None:
        error = yield self._publish(self.foreign)
        self.assertNotEqual(error, "ok")
        self.assertNotIn("HTTP", str(error))

    @inlineCallbacks
    def test_cli(self) -> None:
        """
        The command-line client presents --client_cert_file (one PEM, or the
        certificate and --client_key_file apart): its user's rights apply,
        and a certificate no user names is refused with the server's line.
        """
        base = self.credentials.base
        with open(self.edge, "rb") as f:
            pem = f.read()
        split = pem.index(b"-----BEGIN PRIVATE KEY-----")
        cert_only = write_file(os.path.join(base, "edge.crt"), pem[:split])
        key_only = write_file(os.path.join(base, "edge.key"), pem[split:])
        received = Recorder()
        self.server.broker.subscribe("telemetry.edge-1", received)

        def cli(*certificate: str):
            child = spawn_memmq(
                self, "--client", "--topic=telemetry.edge-1", "--publish", "--retries=0",
                f"--servers={self.server.http.url}", *certificate,
            )
            child.transport.write(b"from the command line\n")
            child.transport.closeStdin()
            return bounded(child.ended).addCallback(lambda status: (status, child.stderr))

        for certificate in ([f"--client_cert_file={self.edge}"],
                            [f"--client_cert_file={cert_only}", f"--client_key_file={key_only}"]):
            status, stderr = yield cli(*certificate)
            self.assertEqual(status, 0, stderr)
        self.assertEqual(received.payloads, [b"from the command line"] * 2)
        status, stderr = yield cli(f"--client_cert_file={self.stranger}")
        self.assertEqual(status, 1)
        self.assertIn(b"HTTP 401: no user in the auth file has the certificate name 'stranger.example.com'", stderr)
        self.assertEqual(len(received.messages), 2)

    @inlineCallbacks
    def test_none(self) -> None:
        """
        A client with no certificate is served, as anonymous.
        """
        answer = yield ask(self.server.http, "POST", "/pub?topic=telemetry.edge-1", body=b"m")
        self.assertEqual(answer.status, 401)
        answer = yield ask(self.server.http, "GET", "/sub?topic=public.x")
        self.assertEqual(answer.status, 200)


class OriginTests(TestCase):
    """
    --allowed_origins: a handshake carrying another Origin gets 403;
    an allowed one, or none, is served.
    """

    @inlineCallbacks
    def test_origins(self) -> None:
        credentials = Credentials(self)
        server = AccessServer(self, credentials, origins=["https://chat.example.com"])
        logs = LogCapture(self)
        token = credentials.browser
        for origin, status in (("https://chat.example.com", 101), ("https://evil.example.com", 403), (None, 101)):
            headers = {} if origin is None else {"Origin": origin}
            answer = yield ask(server.http, "GET", "/sub?topic=chat.a", token, headers=headers, upgrade=True)
            self.assertEqual(answer.status, status, origin)
        self.assertEqual(server.access.refusals["origin"], 1)
        self.assertEqual(len([line for line in logs.lines if "is not allowed (--allowed_origins)" in line]), 1)


class AccessLogTests(TestCase):
    """
    The access log never shows a token.
    """

    @inlineCallbacks
    def test_redacted(self) -> None:
        credentials = Credentials(self)
        logs = LogCapture(self)
        server = AccessServer(self, credentials, access_log=True)
        answer = yield ask(server.http, "POST", f"/pub?topic=orders.new&token={credentials.publisher}", body=b"m")
        self.assertEqual(answer.status, 200)
        yield until(lambda: any("token=REDACTED" in line for line in logs.lines))
        for line in logs.lines:
            self.assertNotIn(credentials.publisher, line)


class ProcessTests(TestCase):
    """
    The memmq command: start-up line, a bad auth file refused, SIGHUP
    reloads, the CLI with MEMMQ_TOKEN, a proxy with credentials in front
    of a server with access control; no token in any log line.
    """

    timeout = 120

    def setUp(self) -> None:
        self.credentials = Credentials(self)

    def _server(self, *args: str) -> ServerProcess:
        return ServerProcess.spawn(self, ["-m", "memmq", "--address=127.0.0.1:0", *args])

    def _assert_no_token(self, output: bytes) -> None:
        c = self.credentials
        for secret in (c.publisher, c.reader, c.admin, c.revoked, c.browser):
            self.assertNotIn(secret.encode(), output)

    @inlineCallbacks
    def test_startup_line(self) -> None:
        server = self._server()
        yield server.wait_listening()
        yield until(lambda: b"access control off" in server.output)
        self.assertIn(b"anyone who reaches the port may publish, subscribe and read /stats and /metrics", server.output)
        yield server.terminate()

    @inlineCallbacks
    def test_bad_files(self) -> None:
        """
        A group-readable or broken auth file: one line, exit 2.
        """
        c = self.credentials
        c.write_auth_file(mode=0o640)
        child = Child()
        spawn(self, child, [sys.executable, "-m", "memmq", "--address=127.0.0.1:0", f"--auth_file={c.auth_file}"])
        status = yield bounded(child.ended)
        self.assertEqual(status, 2)
        self.assertEqual(child.stderr.count(b"\n"), 1, child.stderr)
        self.assertIn(b"auth file is accessible by group or others (mode 0640)", child.stderr)

    @inlineCallbacks
    def test_reload(self) -> None:
        """
        SIGHUP: a removed token is refused from then on; a file with an
        error keeps the rules (one log line), and the connection open
        across both stays.
        """
        c = self.credentials
        server = self._server(f"--auth_file={c.auth_file}", f"--jwt_key={c.jwt_key}", "--access_log")
        port = yield server.wait_listening()
        yield until(lambda: b"access control on: auth file" in server.output)
        http = _PortServer(self, port)
        answer = yield ask(http, "POST", "/pub?topic=anything", c.revoked, body=b"m")
        self.assertEqual(answer.status, 200)
        subscriber = yield ask(http, "GET", f"/sub?topic=orders.new&token={c.reader}", head_only=True)
        self.assertEqual(subscriber.status, 200)
        answer = yield ask(http, "POST", f"/pub?topic=orders.new&token={c.publisher}", body=b"m")
        self.assertEqual(answer.status, 200)
        c.write_auth_file(c.auth_text(with_revoked=False))
        server.transport.signalProcess("HUP")
        yield until(lambda: b"access control reloaded" in server.output)
        answer = yield ask(http, "POST", "/pub?topic=anything", c.revoked, body=b"m")
        self.assertEqual(answer.status, 401)
        c.write_auth_file("[[user]]\nname = 1\n")
        server.transport.signalProcess("HUP")
        yield until(lambda: b"access control not reloaded, keeping the previous rules" in server.output)
        answer = yield ask(http, "POST", "/pub?topic=orders.new", c.publisher, body=b"m")
        self.assertEqual(answer.status, 200)
        self.assertEqual(server.output.count(b"not reloaded"), 1)
        status = yield server.terminate()
        self.assertEqual(status, 0)
        self.assertIn(b"token=REDACTED", server.output)
        self._assert_no_token(server.output)

    @inlineCallbacks
    def test_cli_and_proxy(self) -> None:
        """
        A proxy presenting its own token upstream, enforcing its own auth
        file below; the CLI publishing through it with MEMMQ_TOKEN, and
        refused without.
        """
        c = self.credentials
        upstream = self._server(f"--auth_file={c.auth_file}")
        upstream_port = yield upstream.wait_listening()
        token_file = write_file(os.path.join(c.base, "proxy.token"), f"{c.publisher}\n".encode())
        proxy_token = new_token()
        proxy_auth = write_file(os.path.join(c.base, "proxy.toml"), (
            f'[[user]]\nname = "app"\ntoken = "{hash_token(proxy_token)}"\npublish = ["orders.>"]\n'
        ).encode())
        proxy = self._server(
            "--proxy", f"--servers=127.0.0.1:{upstream_port}", f"--token_file={token_file}",
            f"--auth_file={proxy_auth}",
        )
        proxy_port = yield proxy.wait_listening()
        http = _PortServer(self, upstream_port)
        subscriber = Client(servers=[f"127.0.0.1:{upstream_port}"], token=c.reader)
        self.addCleanup(subscriber.close)
        subscription = yield bounded(subscriber.subscribe("orders.new"))
        del http

        def cli(token):
            child = Child()
            env = child_env()
            env.pop("MEMMQ_TOKEN", None)
            if token is not None:
                env["MEMMQ_TOKEN"] = token
            spawn(self, child, [sys.executable, "-m", "memmq", "--client", "--topic=orders.new", "--publish",
                                f"--servers=127.0.0.1:{proxy_port}", "--retries=0"], env=env)
            child.transport.write(b"via the proxy\n")
            child.transport.closeStdin()
            return bounded(child.ended).addCallback(lambda status: (status, child.stderr))

        status, stderr = yield cli(proxy_token)
        self.assertEqual(status, 0, stderr)
        self.assertEqual((yield bounded(subscription.get())), b"via the proxy")
        status, stderr = yield cli(None)
        self.assertEqual(status, 1)
        self.assertIn(b"HTTP 401", stderr)
        self.assertNotIn(proxy_token.encode(), stderr)
        yield proxy.terminate()
        yield upstream.terminate()
        self._assert_no_token(proxy.output + upstream.output)
        self.assertNotIn(proxy_token.encode(), proxy.output)


class _PortServer:
    """
    What L{ask} needs of a server process: its port and a TLS client that
    does not verify (the process generated its certificate).
    """

    def __init__(self, testcase, port: int) -> None:
        from twisted.internet import ssl

        self.port = port
        options = ssl.CertificateOptions(verify=False)

        class _Client:
            def tls_options(self):
                return options

        self.client = _Client()


class OptionTests(SynchronousTestCase):
    """
    The options of access control, checked at start: one line and exit 2
    for what cannot be used.
    """

    def setUp(self) -> None:
        self.credentials = Credentials(self)

    def _parse(self, *args: str):
        from memmq.options import MemmqOptions

        options = MemmqOptions()
        options.parseOptions(["--address=127.0.0.1:0", *args])
        return options

    def _refused(self, *args: str) -> str:
        from twisted.python import usage

        return str(self.assertRaises(usage.UsageError, self._parse, *args))

    def test_off_by_default(self) -> None:
        """
        No access-control option: OFF, which says so.
        """
        from memmq.auth import OFF

        self.assertIs(self._parse()["authority"], OFF)

    def test_on(self) -> None:
        c = self.credentials
        options = self._parse(f"--auth_file={c.auth_file}", f"--jwt_key={c.jwt_key}",
                              "--allowed_origins=https://a.example, https://b.example:8443")
        self.assertTrue(options["authority"].enabled)
        self.assertEqual(options["origin_list"], ["https://a.example", "https://b.example:8443"])

    def test_refused(self) -> None:
        c = self.credentials
        c.write_auth_file(mode=0o644)
        self.assertIn("accessible by group or others (mode 0644); run chmod 600", self._refused(
            f"--auth_file={c.auth_file}"))
        self.assertIn("cannot read the JWT key", self._refused("--jwt_key=/nonexistent"))
        self.assertIn("not an origin", self._refused("--allowed_origins=chat.example.com"))
        self.assertIn("goes with --auth_file", self._refused(f"--client_ca_file={c.jwt_key}"))
        self.assertIn("is for a server or proxy", self._refused(
            "--client", "--topic=t", "--publish", f"--auth_file={c.auth_file}"))

    def test_client_token(self) -> None:
        """
        --token_file's first line, else $MEMMQ_TOKEN; a missing file is
        refused.
        """
        path = write_file(os.path.join(self.credentials.base, "t"), b"Bearer abc\nignored\n")
        options = self._parse("--client", "--topic=t", "--publish", f"--token_file={path}")
        self.assertEqual(options["token"], "abc")
        self.patch(os, "environ", dict(os.environ, MEMMQ_TOKEN="from-env"))
        self.assertEqual(self._parse("--client", "--topic=t", "--publish")["token"], "from-env")
        self.assertIn("cannot read", self._refused("--client", "--topic=t", "--publish", "--token_file=/nonexistent"))
        self.assertIn("goes with --client, -i or --proxy", self._refused(f"--token_file={path}"))

    def test_client_certificate(self) -> None:
        """
        --client_cert_file is loaded at start: a key alone, a file that is
        not there or holds no certificate are refused with one line.
        """
        base = self.credentials.base
        path = _client_certificate(_ca("CA"), "edge", os.path.join(base, "edge.pem"))
        client = ("--client", "--topic=t", "--publish")
        self.assertEqual(self._parse(*client, f"--client_cert_file={path}")["client_cert"], path)
        self.assertIn("--client_key_file goes with --client_cert_file",
                      self._refused(*client, f"--client_key_file={path}"))
        self.assertNotIn("\n", self._refused(*client, "--client_cert_file=/nonexistent"))
        self.assertIn("/nonexistent", self._refused(*client, "--client_cert_file=/nonexistent"))
        self.assertIn("goes with --client, -i or --proxy", self._refused(f"--client_cert_file={path}"))

    def test_auth_command(self) -> None:
        """
        memmq auth token prints a token and its hash.
        """
        from tests.support import run_memmq

        result = run_memmq("auth", "token")
        self.assertEqual(result.returncode, 0)
        token, digest = result.stdout.decode().split()
        self.assertEqual(hash_token(token), digest)

    def test_systemd_drop_in(self) -> None:
        """
        contrib/systemd/access-control.conf's memmq arguments are taken,
        with its credentials' files in place.
        """
        import configparser
        import shlex

        from tests.support import REPO, CertificateFiles

        parser = configparser.ConfigParser(strict=False, interpolation=None)
        with open(os.path.join(REPO, "contrib", "systemd", "access-control.conf"), encoding="utf-8") as f:
            parser.read_file(f)
        argv = shlex.split(parser["Service"]["ExecStart"])
        args = argv[argv.index("memmq") + 1:]
        c = self.credentials
        certificate = CertificateFiles(self)
        files = {"memmq.crt": certificate.cert_file, "memmq.key": certificate.key_file,
                 "auth.toml": c.auth_file, "jwt.secret": c.jwt_key}
        for name, path in files.items():
            args = [a.replace(f"%d/{name}", path) for a in args]
        from memmq.options import MemmqOptions

        options = MemmqOptions()
        options.parseOptions(args)
        self.assertTrue(options["authority"].enabled)
        self.assertEqual(options["origin_list"], ["https://chat.example.com"])
