# -*- test-case-name: tests.test_fuzz -*-
"""
Property-based tests (hypothesis) that throw generated input at a real
memmq process over real TLS (issue 17): HTTP requests (request lines,
headers, chunked bodies, pipelining, clients that stop reading), WebSocket
frame sequences, gRPC publishes, and corrupt replay files.

The invariants: an answer under 500 or a close within a bounded time;
never a 5xx, never a traceback in the log; the server's memory within a
bound; and a well-formed publish and subscribe on another connection still
working afterwards.  Examples are few (the whole module takes well under a
minute); the generated cases differ from run to run, so a rare failure
prints its example to reproduce.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from memmq.persist.record import encode_topic, line
from memmq.persist.replay import read_lines
from memmq.rpc import mq_pb2, mq_pb2_grpc
from tests.support import REPO, child_env, client_frame, raw_tls, read_until_closed, websocket_upgrade

# The server's RSS may grow by this much over a whole test (MiB).
RSS_BOUND = 64

ANSWER_WITHIN = 5.0

_LAST = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

def _fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """
    A memmq process on loopback (HTTP over TLS, and gRPC), its log in a file.
    """

    def __init__(self) -> None:
        self.port = _free_port()
        self.grpc_port = _free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="fuzz-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "memmq", f"--address=127.0.0.1:{self.port}",
             f"--grpc_address=127.0.0.1:{self.grpc_port}"],
            env=child_env(), cwd=REPO, stdout=self.log, stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                raw_tls(self.port, 1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("the fuzzed server did not start")
        self.rss_at_start = self.rss_mb()

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            for text in f:
                if text.startswith("VmRSS:"):
                    return int(text.split()[1]) / 1024
        return 0.0

    def log_text(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()
        os.unlink(self.log.name)


def _statuses(data: bytes) -> list[int]:
    """
    The status codes of the answers in C{data} (pipelined answers, or one
    followed by a stream).
    """
    codes = []
    for piece in data.split(b"HTTP/1.")[1:]:
        parts = piece.split(b" ", 2)
        if len(parts) > 1 and parts[1][:3].isdigit() and parts[0][:1] in (b"0", b"1"):
            codes.append(int(parts[1][:3]))
    return codes


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'*+^`|", min_size=1,
                 max_size=20)
_any_bytes = st.binary(max_size=64)
_header_value = st.one_of(_token, st.binary(max_size=100).map(lambda b: b.decode("latin-1")))


@st.composite
def _chunked(draw) -> bytes:
    chunks = draw(st.lists(st.binary(max_size=300), max_size=4))
    body = b""
    for chunk in chunks:
        size = draw(st.sampled_from(["%x", "%X", "%x;ext=1", "garbage", "ffffffffffffffff", "-%x"]))
        size_text = size % len(chunk) if "%" in size else size
        body += size_text.encode() + b"\r\n" + chunk + b"\r\n"
    return body + b"0\r\n\r\n"


@st.composite
def _request(draw) -> bytes:
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "G\x00T", "get"]))
    path = draw(st.sampled_from(["/pub", "/sub", "/health", "/metrics", "/stats", "/", "/pub/x", "*", "//", ""]))
    query = draw(st.one_of(
        st.just(""),
        st.builds(lambda t: "?topic=" + t, _token),
        st.builds(lambda t: "?topic=" + t, st.text(max_size=40)),
        st.builds(lambda t: "?topic=x&since=" + t, st.text(max_size=10)),
        st.builds(lambda t: "?offset=" + t, st.text(max_size=10)),
    ))
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "FOO"]))
    target = (path + query).encode("utf-8", "surrogatepass").replace(b" ", b"%20")
    head = method.encode("latin-1") + b" " + target + b" " + version.encode() + eol + b"Host: x" + eol
    for name, value in draw(st.lists(st.tuples(_token, _header_value), max_size=4)):
        if name.lower() in ("content-length", "transfer-encoding", "x-memmq-hops"):
            continue
        head += name.encode() + b": " + value.encode("latin-1", "replace").replace(b"\r", b"").replace(b"\n", b"") + eol
    if draw(st.booleans()):
        head += b"Upgrade: websocket" + eol + b"Connection: Upgrade" + eol + b"Sec-WebSocket-Version: 13" + eol
        head += b"Sec-WebSocket-Key: " + draw(st.sampled_from([b"dGhlIHNhbXBsZSBub25jZQ==", b"memmq", b""])) + eol
    body_kind = draw(st.sampled_from(["none", "length", "chunked", "bad-length"]))
    body = draw(st.binary(max_size=2000))
    if body_kind == "length":
        head += b"Content-Length: %d" % len(body) + eol
    elif body_kind == "bad-length":
        head += b"Content-Length: " + draw(st.sampled_from([b"-1", b"1e3", b"0x10", b"", b"1, 2"])) + eol
        body = b""
    elif body_kind == "chunked":
        head += b"Transfer-Encoding: chunked" + eol
        body = draw(_chunked())
    else:
        body = b""
    return head + eol + body


_frame = st.builds(
    lambda opcode, fin, rsv, masked, payload: client_frame(opcode, payload, fin, rsv, masked),
    st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB, 0xF]),
    st.booleans(),
    st.sampled_from([0] * 6 + [1, 4, 7]),
    st.sampled_from([True] * 8 + [False]),
    st.one_of(st.binary(max_size=200), st.just(b"\xff\xfe"), st.just("h\u00e9llo".encode())),
)

# Close codes a server may answer a broken client with.
_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010}


class FuzzTests(SynchronousTestCase):
    """
    Generated input against a real server (one per test).
    """

    def setUp(self) -> None:
        self.server = _Server()
        self.addCleanup(self.server.stop)

    def _still_healthy(self) -> None:
        """
        No traceback in the log, memory within the bound, and a publish and
        a subscribe on fresh connections work.
        """
        log = self.server.log_text()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled", log)
        self.assertLess(self.server.rss_mb() - self.server.rss_at_start, RSS_BOUND)
        sub = raw_tls(self.server.port, 5)
        self.assertTrue(websocket_upgrade(sub, "/sub?topic=fuzz-check").startswith(b"HTTP/1.1 101"))
        pub = raw_tls(self.server.port, 5)
        pub.sendall(b"POST /pub?topic=fuzz-check HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        answer, _ = read_until_closed(pub, 1, quiet=1.0)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        sub.settimeout(5)
        frame = sub.recv(64)
        self.assertEqual(frame, b"\x82\x05hello")
        pub.close()
        sub.close()

    def test_http_requests(self) -> None:
        """
        Pipelined generated requests, read: every answer is under 500, and
        there is an answer or a close within a few seconds.
        """

        @_fuzz(80)
        @given(st.lists(_request(), min_size=1, max_size=3))
        def one(requests) -> None:
            sock = raw_tls(self.server.port, 5)
            try:
                # The last request closes the connection once all are answered.
                sock.sendall(b"".join(requests) + _LAST)
                data, closed = read_until_closed(sock, ANSWER_WITHIN, quiet=1.0)
            finally:
                sock.close()
            codes = _statuses(data)
            self.assertTrue(codes or closed, f"no answer and no close: {data[:200]!r}")
            self.assertFalse([c for c in codes if c >= 500], data[:300])
            self.assertNotIn("Traceback", self.server.log_text())

        one()
        self._still_healthy()

    def test_clients_that_stop_reading(self) -> None:
        """
        Many pipelined generated requests, never read: the server stays
        within its memory bound and serves others.
        """

        @_fuzz(8)
        @given(_request(), st.integers(min_value=100, max_value=3000))
        def one(request, copies) -> None:
            sock = raw_tls(self.server.port, 5)
            sock.settimeout(1)
            try:
                for _ in range(copies // 100):
                    sock.sendall(request * 100)
            except OSError:
                pass
            finally:
                sock.close()

        one()
        self._still_healthy()

    def test_websocket_frames(self) -> None:
        """
        Generated frame sequences, then a close: a close frame with an
        allowed code, or the connection closed, within a few seconds.
        """

        @_fuzz(80)
        @given(st.sampled_from(["/pub?topic=fuzz", "/sub?topic=fuzz"]), st.lists(_frame, min_size=1, max_size=6))
        def one(path, frames) -> None:
            sock = raw_tls(self.server.port, 5)
            try:
                self.assertTrue(websocket_upgrade(sock, path).startswith(b"HTTP/1.1 101"))
                try:
                    sock.sendall(b"".join(frames) + client_frame(0x8, b"\x03\xe8"))
                except OSError:
                    pass
                data, closed = read_until_closed(sock, ANSWER_WITHIN, quiet=2.0)
            finally:
                sock.close()
            closes = [i for i in range(len(data) - 3) if data[i] == 0x88]
            self.assertTrue(closed or closes, f"neither closed nor a close frame: {data[:100]!r}")
            if closes and data[closes[-1] + 1] >= 2:
                code = int.from_bytes(data[closes[-1] + 2: closes[-1] + 4], "big")
                if code not in _CLOSE_CODES:
                    # A 0x88 byte inside a payload: only a final close counts.
                    self.assertTrue(closed)

        one()
        self._still_healthy()

    def test_grpc_publishes(self) -> None:
        """
        Generated topics and payloads over gRPC: OK or a client error,
        never an internal one.
        """
        pem = ssl.get_server_certificate(("127.0.0.1", self.server.grpc_port)).encode()
        channel = grpc.secure_channel(
            f"127.0.0.1:{self.server.grpc_port}", grpc.ssl_channel_credentials(root_certificates=pem),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        self.addCleanup(channel.close)
        stub = mq_pb2_grpc.MQStub(channel)

        @_fuzz(40)
        @given(st.text(max_size=300), st.binary(max_size=5000))
        def one(topic, payload) -> None:
            try:
                stub.Pub(mq_pb2.PubRequest(topic=topic, payload=payload), timeout=5)
            except grpc.RpcError as e:
                self.assertIn(
                    e.code(), (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), e.details()
                )
            try:
                for _ in stub.Sub(mq_pb2.SubRequest(topic=topic), timeout=0.2):
                    break
            except grpc.RpcError as e:
                self.assertIn(e.code(), (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED),
                              e.details())

        one()
        self._still_healthy()


_record = st.tuples(st.integers(min_value=1, max_value=2**62), st.binary(max_size=50))
_junk = st.one_of(
    st.binary(max_size=80).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.just(b'{"timestamp":1,"topic":"t","payload":"!!"}'),
    st.just(b'{"timestamp":"1","topic":"t","payload":""}'),
    st.just(b'{"timestamp":1,"topic":"t"'),
)


class ReplayReaderFuzzTests(SynchronousTestCase):
    """
    The replay reader over files with torn and corrupt lines.
    """

    def test_corrupt_lines_skipped_and_counted(self) -> None:
        """
        Every well-formed record of the topic in range is read, in order;
        every other line is skipped and counted; nothing raises.
        """
        directory = self.mktemp()
        os.makedirs(directory)

        @_fuzz(100)
        @given(st.lists(st.one_of(_record.map(lambda r: ("ok", r)), _junk.map(lambda j: ("junk", j))), max_size=30),
               st.booleans(), st.integers(min_value=1, max_value=512))
        def one(lines, torn, chunk) -> None:
            path = os.path.join(directory, "t.mq")
            expected, junk = [], 0
            with open(path, "wb") as f:
                for kind, value in lines:
                    if kind == "ok":
                        timestamp, payload = value
                        f.write(line(timestamp, encode_topic("t"), payload))
                        expected.append(payload)
                    else:
                        f.write(value + b"\n")
                        junk += 1 if value.strip() else 0
                if torn:
                    f.write(b'{"timestamp":5,"topic":"t","payl')
                    junk += 1
            got, skipped, offset, bound, done = [], 0, 0, None, False
            for _ in range(10_000):
                payloads, offset, bound, done, bad = read_lines(path, "t", 0, 2**63, offset, bound, chunk)
                got += payloads
                skipped += bad
                if done:
                    break
            self.assertTrue(done)
            self.assertEqual(got, expected)
            self.assertEqual(skipped, junk)

        one()
