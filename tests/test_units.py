"""
Tests for contrib/systemd: the units pass C{systemd-analyze verify}, their
command line is one memmq takes, and socket activation works for real, with
C{systemd-socket-activate} handing memmq its listening socket.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import sys

from twisted.internet import endpoints, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.support import (
    REPO,
    TWISTD,
    CertificateFiles,
    ServerProcess,
    TLSClient,
    bounded,
    child_env,
    dead_port,
    raw_publish,
    spawn,
    until,
)

UNITS = os.path.join(REPO, "contrib", "systemd")


def _unit(name: str) -> configparser.ConfigParser:
    """
    A unit file's settings (the last of a repeated key wins, which is all
    these tests need).
    """
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # keys are case-sensitive
    with open(os.path.join(UNITS, name), encoding="utf-8") as f:
        parser.read_file(f)
    return parser


def _exec_start() -> list[str]:
    return shlex.split(_unit("memmq.service")["Service"]["ExecStart"])


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SkipTest(f"{name} is not installed (it comes with systemd)")
    return path


class UnitFileTests(SynchronousTestCase):
    """
    What the units say, checked without running systemd.
    """

    def test_service(self) -> None:
        """
        memmq.service runs twistd memmq in the foreground without a pid
        file, logging journald-aware text (one timestamp, journald's), tells
        systemd when it is ready, and is hardened.
        """
        service = _unit("memmq.service")["Service"]
        command = _exec_start()
        self.assertEqual(os.path.basename(command[0]), "twistd")
        self.assertEqual(
            command[1:5], ["--nodaemon", "--pidfile=", "--logger=memmq.logs.text_observer", "memmq"]
        )
        expected = {
            "Type": "notify",
            "DynamicUser": "yes",
            "StateDirectory": "memmq",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
            "Restart": "on-failure",
        }
        self.assertEqual({key: service.get(key) for key in expected}, expected)

    def test_socket_matches_service(self) -> None:
        """
        The service listens on the socket memmq.socket passes, by the name
        the socket gives it.
        """
        socket_unit = _unit("memmq.socket")["Socket"]
        self.assertEqual(socket_unit["ListenStream"], "8081")
        name = socket_unit["FileDescriptorName"]
        self.assertIn(f"--listen=systemd:domain=INET6:name={name}", _exec_start())

    def test_command_line_parses(self) -> None:
        """
        twistd takes the service's command line, memmq's options included.
        """
        config = ServerOptions()
        config.parseOptions(_exec_start()[1:])
        self.assertEqual(config.subCommand, "memmq")
        self.assertTrue(config["nodaemon"])
        self.assertEqual(config.subOptions["listen"], ["systemd:domain=INET6:name=memmq"])
        self.assertIsNone(config.subOptions["listen_address"])


class VerifyTests(TestCase):
    """
    systemd-analyze verify on the units as shipped.
    """

    timeout = 60

    @inlineCallbacks
    def test_verify(self) -> None:
        """
        Both units pass systemd-analyze verify without a warning, once
        ExecStart names the twistd installed here.
        """
        analyze = _tool("systemd-analyze")
        twistd = shutil.which("twistd")
        if twistd is None:
            raise SkipTest("twistd is not on PATH")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        for name in ("memmq.service", "memmq.socket"):
            with open(os.path.join(UNITS, name), encoding="utf-8") as f:
                text = f.read()
            if name == "memmq.service":
                self.assertIn(f"ExecStart={_exec_start()[0]} ", text)
                text = text.replace(f"ExecStart={_exec_start()[0]} ", f"ExecStart={twistd} ")
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(text)
        paths = [os.path.join(directory, name) for name in ("memmq.service", "memmq.socket")]
        out, err, status = yield bounded(getProcessOutputAndValue(
            analyze, ["verify", "--man=no", *paths], env=dict(os.environ), path=directory,
        ))
        self.assertEqual((status, out + err), (0, b""))

    @inlineCallbacks
    def test_verify_catches_mistakes(self) -> None:
        """
        The check above would see a mistake: a misspelt key is a warning.
        """
        analyze = _tool("systemd-analyze")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "memmq.socket")
        with open(os.path.join(UNITS, "memmq.socket"), encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace("ListenStream=", "ListenStreem="))
        out, err, status = yield bounded(getProcessOutputAndValue(
            analyze, ["verify", "--man=no", path], env=dict(os.environ), path=directory,
        ))
        self.assertIn(b"ListenStreem", out + err)


class SocketActivationTests(TestCase):
    """
    systemd-socket-activate listens, and hands the socket to memmq at the
    first connection, as systemd does with memmq.socket.
    """

    timeout = 90

    def _activate(self, address: str, port: int, fdname: str, command: list[str]) -> ServerProcess:
        activate = _tool("systemd-socket-activate")
        server = ServerProcess()
        env = child_env()
        # systemd-socket-activate passes its child only what -E names.
        argv = [
            activate, "-l", address, f"--fdname={fdname}",
            "-E", f"PYTHONPATH={env['PYTHONPATH']}", "-E", "PYTHONUNBUFFERED=1",
            sys.executable, *command,
        ]
        spawn(self, server, argv, env=env)
        return server

    @inlineCallbacks
    def _wait_for_socket(self, server: ServerProcess, address: str) -> None:
        yield until(lambda: f"Listening on {address} as 3.".encode() in server.output or server.ended.called)
        if server.ended.called:
            self.fail(f"systemd-socket-activate ended: {server.output!r}")

    @inlineCallbacks
    def test_publish_subscribe(self) -> None:
        """
        memmq --listen=systemd:domain=INET:index=0 serves the socket it was
        handed, with TLS: a subscriber receives what is published, and
        SIGTERM ends it with status 0.
        """
        files = CertificateFiles(self)
        port = dead_port()
        address = f"127.0.0.1:{port}"
        server = self._activate(address, port, "memmq", [
            "-m", "memmq", "--listen=systemd:domain=INET:index=0",
            f"--cert_file={files.cert_file}", f"--key_file={files.key_file}",
        ])
        yield self._wait_for_socket(server, address)
        client = TLSClient(self, files.certificate)
        url = f"https://{address}"
        # The first connection starts memmq, which then accepts it.
        subscriber = yield client.subscribe(url, "activated")
        self.assertEqual((yield server.wait_listening()), port)
        for i in range(10):
            self.assertEqual((yield client.publish(url, "activated", b"m%d" % i)), (200, b""))
        self.assertEqual((yield subscriber.wait_for(10)), [b"m%d" % i for i in range(10)])
        self.assertEqual((yield server.terminate()), 0, server.output)
        self.assertEqual((yield subscriber.wait_closed()), 1001)
        self.assertNotIn(b"Traceback", server.output)

    @inlineCallbacks
    def test_service_command_line(self) -> None:
        """
        twistd with memmq.service's own arguments (an IPv6 socket named
        memmq) serves through the socket it is handed.
        """
        files = CertificateFiles(self)
        port = dead_port("::1")
        address = f"[::1]:{port}"
        name = _unit("memmq.socket")["Socket"]["FileDescriptorName"]
        arguments = _exec_start()[1:]
        server = self._activate(address, port, name, [
            *TWISTD[:2], *arguments, f"--cert_file={files.cert_file}", f"--key_file={files.key_file}",
        ])
        yield self._wait_for_socket(server, address)
        client = TLSClient(self, files.certificate)
        # treq takes no IPv6 literal in a URL: a raw request instead.
        endpoint = endpoints.TCP6ClientEndpoint(reactor, "::1", port)
        answer = yield raw_publish(client, endpoint, "::1", b"activated", b"hello")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(f"memmq listening on https://{address} ".encode(), server.output)
        self.assertEqual((yield server.terminate()), 0, server.output)
        self.assertNotIn(b"Traceback", server.output)
