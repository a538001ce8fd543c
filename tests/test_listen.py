"""
Tests for C{--listen}: Twisted server endpoint descriptions with TLS added,
checked by the options, listened on by L{memmq.server.service.HTTPService},
and served by real memmq processes over TCP, several endpoints at once and
a UNIX socket; a bad description or a busy port ends the command with one
line and status 2.
"""

from __future__ import annotations

import os
import re

from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.broker import Broker
from memmq.options import MemmqOptions
from memmq.server.listen import EndpointError, ListenError, parse_address, parse_endpoint
from memmq.server.service import HTTPService
from memmq.server.web import MemmqSite
from memmq.tls import self_signed_certificate
from tests.support import (
    TWISTD,
    CertificateFiles,
    ServerProcess,
    TLSClient,
    bounded,
    raw_publish,
    short_directory,
    until,
)

LISTENING = re.compile(rb"memmq listening on (\S+) \(certificate ([^)]*)\)")


def _listening(output: bytes) -> list[str]:
    """
    Where the start-up lines in C{output} say memmq listens.
    """
    return [match.group(1).decode() for match in LISTENING.finditer(output)]


def _publish_over_unix(client: TLSClient, path: str, topic: bytes, payload: bytes) -> Deferred:
    return raw_publish(client, endpoints.UNIXClientEndpoint(reactor, path), "127.0.0.1", topic, payload)


class ListenOptionTests(SynchronousTestCase):
    """
    --listen in the options: repeatable, checked at parse time, and
    displacing the default --address.
    """

    def _parse(self, *args: str) -> MemmqOptions:
        options = MemmqOptions()
        options.parseOptions(list(args))
        return options

    def test_default_address(self) -> None:
        """
        Without --listen the server listens on the default --address.
        """
        options = self._parse()
        self.assertEqual(options["listen"], [])
        self.assertEqual(str(options["listen_address"]), ":8081")

    def test_listen_only(self) -> None:
        """
        --listen is repeatable, kept in order; with it alone, no --address
        is listened on.
        """
        options = self._parse("--listen=tcp:8081", "--listen=unix:/run/memmq/memmq.sock")
        self.assertEqual(options["listen"], ["tcp:8081", "unix:/run/memmq/memmq.sock"])
        self.assertIsNone(options["address"])
        self.assertIsNone(options["listen_address"])

    def test_listen_and_address(self) -> None:
        """
        --address given as well is listened on as well.
        """
        options = self._parse("--listen=tcp6:port=8082:interface=\\:\\:1", "--address=127.0.0.1:8081")
        self.assertEqual(options["listen"], ["tcp6:port=8082:interface=\\:\\:1"])
        self.assertEqual(str(options["listen_address"]), "127.0.0.1:8081")

    def test_bad_descriptions(self) -> None:
        """
        A description Twisted cannot parse, or one that brings its own TLS,
        is a usage error naming it, on one line.
        """
        cases = {
            "foo:8081": "Unknown endpoint type: 'foo'",
            "tcp": "missing 1 required positional argument: 'port'",
            "tcp:http": "invalid literal for int() with base 10: 'http'",
            "tcp:8081:color=blue": "got an unexpected keyword argument 'color'",
            "systemd:domain=INET": "Specify exactly one of descriptor index or name",
            "ssl:443": "memmq adds TLS itself",
        }
        for description, reason in cases.items():
            with self.subTest(description=description):
                error = self.assertRaises(usage.UsageError, self._parse, f"--listen={description}")
                self.assertTrue(str(error).startswith(f"--listen={description}: "), str(error))
                self.assertIn(reason, str(error))
                self.assertNotIn("\n", str(error))

    def test_systemd_socket_missing(self) -> None:
        """
        A systemd: description whose socket was not passed parses: it is a
        failure to listen, reported at start.
        """
        options = self._parse("--listen=systemd:domain=INET:index=0")
        self.assertEqual(options["listen"], ["systemd:domain=INET:index=0"])
        error = self.assertRaises(ListenError, parse_endpoint, reactor, "systemd:domain=INET:index=0")
        self.assertEqual(
            str(error),
            "cannot listen on systemd:domain=INET:index=0: no sockets passed by systemd "
            "(run it from a .socket unit, or use tcp:PORT)",
        )

    def test_parse_endpoint(self) -> None:
        """
        parse_endpoint returns the plain endpoint; EndpointError is a
        ValueError.
        """
        endpoint = parse_endpoint(reactor, "tcp:0:interface=127.0.0.1")
        self.assertIsInstance(endpoint, endpoints.TCP4ServerEndpoint)
        self.assertRaises(ValueError, parse_endpoint, reactor, "nonsense")
        self.assertRaises(EndpointError, parse_endpoint, reactor, "nonsense")


class ListenServiceTests(TestCase):
    """
    HTTPService on several endpoints, in-process, over real sockets.
    """

    timeout = 60

    def _service(self, address: str | None, descriptions: list[str]) -> tuple[HTTPService, TLSClient]:
        certificate = self_signed_certificate("127.0.0.1")
        site = MemmqSite(Broker())
        address = None if address is None else parse_address(address)
        return HTTPService(site, address, certificate, reactor, descriptions), TLSClient(self, certificate)

    @inlineCallbacks
    def test_tcp_and_unix(self) -> None:
        """
        Endpoints are listened on together, all with TLS: a message
        published over the UNIX socket reaches a subscriber over TCP.  On
        stop every port closes.
        """
        path = os.path.join(short_directory(self), "memmq.sock")
        service, client = self._service(None, ["tcp:0:interface=127.0.0.1", f"unix:{path}"])
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        self.assertEqual(len(service.ports), 2)
        url = f"https://127.0.0.1:{service.port.getHost().port}"
        subscriber = yield client.subscribe(url, "both")
        answer = yield _publish_over_unix(client, path, b"both", b"over unix")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual((yield subscriber.wait_for(1)), [b"over unix"])
        self.assertEqual((yield client.publish(url, "both", b"over tcp")), (200, b""))
        self.assertEqual((yield subscriber.wait_for(2)), [b"over unix", b"over tcp"])
        yield service.stopService()
        self.assertEqual(service.ports, [])
        self.assertEqual((yield subscriber.wait_closed()), 1001)
        yield until(lambda: not os.path.exists(path))

    @inlineCallbacks
    def test_all_or_nothing(self) -> None:
        """
        When one endpoint cannot be listened on, start-up raises
        L{ListenError} naming it, and the ports already open are closed.
        """
        busy = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        port = busy.getHost().port
        path = os.path.join(short_directory(self), "memmq.sock")
        service, _ = self._service("127.0.0.1:0", [f"unix:{path}", f"tcp:{port}:interface=127.0.0.1"])
        error = self.assertRaises(ListenError, service.startService)
        self.assertEqual(str(error), f"cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use")
        self.assertEqual(service.ports, [])
        self.assertIsNone(service.port)
        yield until(lambda: not os.path.exists(path))


class ListenCommandTests(TestCase):
    """
    memmq --listen, run for real.
    """

    timeout = 90

    @inlineCallbacks
    def _round_trip(self, server: ServerProcess, files: CertificateFiles, ports: int = 1) -> None:
        """
        Wait for C{ports} TCP listeners; subscribe on the first, publish on
        each; SIGTERM exits 0 and closes the subscriber with 1001.
        """
        yield server.wait_listening()
        yield until(lambda: len(_listening(server.output)) >= ports)
        urls = _listening(server.output)
        self.assertEqual(len(urls), ports, server.output)
        self.assertEqual(len(set(urls)), ports)
        self.assertIn(f"certificate loaded from {files.cert_file}".encode(), server.output)
        client = TLSClient(self, files.certificate)
        subscriber = yield client.subscribe(urls[0], "listen")
        expected = []
        for i, url in enumerate(urls * 5):
            self.assertEqual((yield client.publish(url, "listen", b"m%d" % i)), (200, b""))
            expected.append(b"m%d" % i)
        self.assertEqual((yield subscriber.wait_for(len(expected))), expected)
        self.assertEqual((yield server.terminate()), 0, server.output)
        self.assertEqual((yield subscriber.wait_closed()), 1001)
        self.assertNotIn(b"Traceback", server.output)

    def _files_args(self) -> tuple[CertificateFiles, list[str]]:
        files = CertificateFiles(self)
        return files, [f"--cert_file={files.cert_file}", f"--key_file={files.key_file}"]

    def test_tcp(self) -> Deferred:
        """
        --listen=tcp:0:interface=127.0.0.1 serves TLS with the loaded
        certificate, and is the only listener: no --address by default.
        """
        files, args = self._files_args()
        server = ServerProcess.spawn(self, ["-m", "memmq", "--listen=tcp:0:interface=127.0.0.1", *args])
        return self._round_trip(server, files)

    def test_two_endpoints(self) -> Deferred:
        """
        Two --listen at once both serve the same broker.
        """
        files, args = self._files_args()
        listen = ["--listen=tcp:0:interface=127.0.0.1", "--listen=tcp:0:interface=127.0.0.1"]
        server = ServerProcess.spawn(self, ["-m", "memmq", *listen, *args])
        return self._round_trip(server, files, ports=2)

    def test_address_and_listen(self) -> Deferred:
        """
        --address given beside --listen is listened on too.
        """
        files, args = self._files_args()
        server = ServerProcess.spawn(
            self, ["-m", "memmq", "--address=127.0.0.1:0", "--listen=tcp:0:interface=127.0.0.1", *args]
        )
        return self._round_trip(server, files, ports=2)

    def test_twistd(self) -> Deferred:
        """
        twistd memmq takes --listen the same way.
        """
        files, args = self._files_args()
        server = ServerProcess.spawn(self, TWISTD + ["memmq", "--listen=tcp:0:interface=127.0.0.1", *args])
        return self._round_trip(server, files)

    @inlineCallbacks
    def test_unix(self) -> None:
        """
        --listen=unix:PATH serves HTTPS over a UNIX socket: a publish over
        it reaches a subscriber on a TCP listener; the socket file goes
        when the server stops.
        """
        files, args = self._files_args()
        path = os.path.join(short_directory(self), "memmq.sock")
        server = ServerProcess.spawn(
            self, ["-m", "memmq", f"--listen=unix:{path}", "--listen=tcp:0:interface=127.0.0.1", *args]
        )
        port = yield server.wait_listening()
        yield until(lambda: f"unix:{path}" in _listening(server.output))
        client = TLSClient(self, files.certificate)
        subscriber = yield client.subscribe(f"https://127.0.0.1:{port}", "unix")
        answer = yield _publish_over_unix(client, path, b"unix", b"through the socket file")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual((yield subscriber.wait_for(1)), [b"through the socket file"])
        self.assertEqual((yield server.terminate()), 0, server.output)
        self.assertFalse(os.path.exists(path))

    @inlineCallbacks
    def _fails(self, args: list[str], message: str) -> None:
        server = ServerProcess.spawn(self, args)
        status = yield bounded(server.ended)
        self.assertEqual(status, 2, server.output)
        self.assertEqual(server.stderr.decode().splitlines()[-1], message)
        self.assertNotIn(b"Traceback", server.output)
        self.assertEqual(_listening(server.output), [])

    def test_bad_description(self) -> Deferred:
        """
        A bad description: one line on stderr, exit status 2.
        """
        return self._fails(
            ["-m", "memmq", "--listen=tpc:8081"],
            "memmq: --listen=tpc:8081: Unknown endpoint type: 'tpc' (see memmq --help)",
        )

    @inlineCallbacks
    def test_port_in_use(self) -> None:
        """
        A busy port given by --listen: one line, exit status 2, from memmq
        and from twistd memmq alike.
        """
        busy = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        description = f"tcp:{busy.getHost().port}:interface=127.0.0.1"
        message = f"memmq: cannot listen on {description}: Address already in use"
        for prefix in (["-m", "memmq"], TWISTD + ["memmq"]):
            yield self._fails(prefix + [f"--listen={description}"], message)

    def test_no_systemd_socket(self) -> Deferred:
        """
        A systemd: endpoint started outside socket activation: one line
        saying so, exit status 2.
        """
        return self._fails(
            [*TWISTD, "memmq", "--listen=systemd:domain=INET6:name=memmq"],
            "memmq: cannot listen on systemd:domain=INET6:name=memmq: no sockets passed by systemd "
            "(run it from a .socket unit, or use tcp:PORT)",
        )
