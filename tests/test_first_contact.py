"""
What a user meets first when something is wrong, each in one line (README:
Command-line client, gRPC transport, Proxy mode): a subscribe the server
refuses says the server's reason; a client of the wrong scheme or
transport is told which to use; a busy gRPC port ends the start before
anything says "listening", without gRPC's own logging; and a proxy says
what it proxies and how its upstreams are.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from memmq.broker import Broker
from memmq.client.probe import SPEAKS_GRPC, SPEAKS_HTTP, SPEAKS_TLS, diagnose
from tests.grpc_support import RunningGRPC
from tests.support import CertificateFiles, RunningServer, ServerProcess, bounded, dead_port, spawn_memmq, until


@inlineCallbacks
def _client(testcase, *args: str, lines: bytes | None = None):
    """
    Run C{memmq --client --topic=t ARGS} to its end; fire with its stderr
    lines (the status checked to be 1).
    """
    child = spawn_memmq(testcase, "--client", "--topic=t", *args)
    if lines is not None:
        child.transport.write(lines)
    child.transport.closeStdin()
    status = yield bounded(child.ended)
    testcase.assertEqual(status, 1, child.stderr)
    return child.stderr.decode().splitlines()


class ClientErrorTests(TestCase):
    """
    The command-line client against a server that cannot do what it asks.
    """

    timeout = 90

    @inlineCallbacks
    def test_since_without_persist(self) -> None:
        """
        --since against a server without --persist: one line with the
        server's reason, nothing from autobahn.
        """
        s = RunningServer(self)
        lines = yield _client(self, "--subscribe", "--since=0", f"--servers=127.0.0.1:{s.port}")
        self.assertEqual(lines, [
            f"memmq: cannot subscribe to 't' on https://127.0.0.1:{s.port}: HTTP 400: since needs a server run"
            " with --persist: this one keeps no messages to replay"
        ])

    @inlineCallbacks
    def test_http_client_against_grpc(self) -> None:
        """
        Publishing and subscribing over HTTP to a gRPC server: "use
        --transport=grpc".
        """
        g = RunningGRPC(self, Broker())
        lines = yield _client(self, "--publish", f"--servers={g.server}", lines=b"hello\n")
        self.assertEqual(lines[0], f"memmq: publish to 't' failed on https://{g.server}: {SPEAKS_GRPC}")
        self.assertEqual(len(lines), 2)  # and the summary
        lines = yield _client(self, "--subscribe", f"--servers={g.server}")
        self.assertEqual(lines, [f"memmq: cannot subscribe to 't' on https://{g.server}: {SPEAKS_GRPC}"])

    @inlineCallbacks
    def test_grpc_client_against_http(self) -> None:
        """
        --transport=grpc against an HTTP server: "use --transport=http", and
        none of gRPC's own logging.
        """
        s = RunningServer(self)
        server = f"127.0.0.1:{s.port}"
        lines = yield _client(self, "--transport=grpc", "--publish", f"--servers={server}", lines=b"hello\n")
        self.assertEqual(lines[0], f"memmq: publish to 't' failed on https://{server}: {SPEAKS_HTTP}")
        self.assertEqual(len(lines), 2)
        lines = yield _client(self, "--transport=grpc", "--subscribe", f"--servers={server}")
        self.assertEqual(lines, [f"memmq: cannot subscribe to 't' on https://{server}: {SPEAKS_HTTP}"])

    @inlineCallbacks
    def test_http_scheme_against_tls(self) -> None:
        """
        --servers=http://... against a TLS server: "use https://".
        """
        s = RunningServer(self)
        server = f"http://127.0.0.1:{s.port}"
        lines = yield _client(self, "--publish", f"--servers={server}", lines=b"hello\n")
        self.assertEqual(lines[0], f"memmq: publish to 't' failed on {server}: {SPEAKS_TLS}")
        lines = yield _client(self, "--subscribe", f"--servers={server}")
        self.assertEqual(lines, [f"memmq: cannot subscribe to 't' on {server}: {SPEAKS_TLS}"])

    @inlineCallbacks
    def test_no_diagnosis_for_other_failures(self) -> None:
        """
        A server that speaks what was asked, or none that listens: no
        diagnosis (the failure's own reason stands).
        """
        s = RunningServer(self)
        self.assertIsNone((yield bounded(diagnose(reactor, f"127.0.0.1:{s.port}", "http"))))
        g = RunningGRPC(self, Broker())
        self.assertIsNone((yield bounded(diagnose(reactor, g.server, "grpc"))))
        self.assertIsNone((yield bounded(diagnose(reactor, f"127.0.0.1:{dead_port()}", "http"))))


class StartUpTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_busy_grpc_address(self) -> None:
        """
        A --grpc_address in use: one line, status 2, and no line saying
        the HTTP side listens, nor any of gRPC's own.
        """
        g = RunningGRPC(self, Broker())
        child = spawn_memmq(self, "--address=127.0.0.1:0", f"--grpc_address={g.server}")
        self.assertEqual((yield bounded(child.ended)), 2)
        lines = child.stderr.decode().splitlines()
        self.assertEqual(lines[-1], f"memmq: cannot listen for gRPC on {g.server}: Address already in use")
        self.assertNotIn("listening", child.stderr.decode())
        self.assertNotIn("add_port", child.stderr.decode())

    @inlineCallbacks
    def test_proxy_says_what_it_proxies(self) -> None:
        """
        A proxy's start-up line says it is a proxy and names its servers;
        its /health is 200 while it serves, a line per upstream saying up
        or down.
        """
        s = RunningServer(self)
        up, down = f"127.0.0.1:{s.port}", f"127.0.0.1:{dead_port()}"
        files = CertificateFiles(self)
        proxy = ServerProcess.spawn(self, [
            "-m", "memmq", "--proxy", "--address=127.0.0.1:0", f"--servers={up},{down}",
            f"--cert_file={files.cert_file}", f"--key_file={files.key_file}",
        ])
        port = yield proxy.wait_listening()
        yield until(lambda: b"\n" in proxy.output.split(b"memmq listening on", 1)[1])
        line = proxy.output.split(b"memmq listening on", 1)[1].split(b"\n", 1)[0].decode()
        self.assertEqual(
            line,
            f" https://127.0.0.1:{port} (certificate loaded from {files.cert_file})"
            f" as a proxy of {up}, {down} (select all, upstream over http)",
        )
        client = RunningServer(self, certificate=files.certificate).client
        response = yield bounded(client.http.get(f"https://127.0.0.1:{port}/health"))
        body = yield bounded(response.content())
        self.assertEqual(response.code, 200)
        self.assertEqual(body.decode().splitlines(), [
            "ok", f"upstream https://{up} up", f"upstream https://{down} down: connection refused",
        ])
        self.assertEqual((yield proxy.terminate()), 0)
