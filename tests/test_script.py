"""
Tests for the commands: C{python -m memmq}, the C{memmq} console script and
C{twistd -n memmq}, each run as a real child process on loopback, and the
seed's own curl commands against them.
"""

from __future__ import annotations

import shutil
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import (
    REPO,
    TWISTD,
    WAIT,
    CertificateFiles,
    ServerProcess,
    TLSClient,
    bounded,
    child_env,
    curl_publish,
    curl_subscribe,
    sleep,
)

CLOSE_1001 = b"\x88\x16\x03\xe9server shutting down"


class CommandTests(TestCase):
    """
    The server commands, started for real.
    """

    timeout = 90

    @inlineCallbacks
    def test_seed_commands_against_default_listener(self) -> None:
        """
        C{python -m memmq} on every interface (empty host) with a generated
        certificate: the README's curl subscribe and publish work unchanged
        through C{localhost}; SIGTERM closes the subscriber with 1001 and
        exits 0.
        """
        server = ServerProcess.spawn(self, ["-m", "memmq", "--address=:0"])
        port = yield server.wait_listening()
        self.assertEqual(server.origin, "generated")
        self.assertIn(b"listening on https://[::]:", server.stderr)
        subscriber = curl_subscribe(self, port)
        # curl shows the 101 only along with the first message: publish a
        # probe until it arrives, so that the subscription is known to be up.
        for attempt in range(100):
            out, err, status = yield curl_publish(port, f"probe {attempt}")
            self.assertEqual((out, status), (b"200", 0), err)
            if b"probe" in subscriber.output:
                break
            yield sleep(0.1)
        self.assertTrue(subscriber.output.startswith(b"HTTP/1.1 101 "), subscriber.output)
        out, err, status = yield curl_publish(port)
        self.assertEqual((out, status), (b"200", 0), err)
        yield subscriber.seen(b"\x82\x1ea completely arbitrary message")
        started = time.monotonic()
        status = yield server.terminate()
        took = time.monotonic() - started
        self.assertEqual(status, 0, server.output)
        yield subscriber.seen(CLOSE_1001)
        self.assertLess(took, 5.0)
        self.assertNotIn(b"Traceback", server.output)

    @inlineCallbacks
    def _round_trip(self, server: ServerProcess, files: CertificateFiles) -> None:
        port = yield server.wait_listening()
        self.assertEqual(server.origin, f"loaded from {files.cert_file}")
        client = TLSClient(self, files.certificate)
        url = f"https://127.0.0.1:{port}"
        sub = yield client.subscribe(url, "cmd")
        for i in range(20):
            code, body = yield client.publish(url, "cmd", b"m%d" % i)
            self.assertEqual((code, body), (200, b""))
        self.assertEqual((yield sub.wait_for(20)), [b"m%d" % i for i in range(20)])
        status = yield server.terminate()
        self.assertEqual(status, 0, server.output)
        self.assertEqual((yield sub.wait_closed()), 1001)
        self.assertNotIn(b"Traceback", server.output)

    def test_console_script(self) -> Deferred:
        """
        The installed C{memmq} command serves with a loaded certificate,
        verified by the client, and exits 0 on SIGTERM.
        """
        memmq = shutil.which("memmq")
        if memmq is None:
            raise SkipTest("the memmq console script is not installed (pip install .)")
        files = CertificateFiles(self)
        server = ServerProcess.spawn(
            self, ["--address=127.0.0.1:0", f"--cert_file={files.cert_file}", f"--key_file={files.key_file}"],
            executable=memmq,
        )
        return self._round_trip(server, files)

    def test_twistd(self) -> Deferred:
        """
        C{twistd -n memmq} takes the same options and serves the same way.
        """
        files = CertificateFiles(self)
        server = ServerProcess.spawn(
            self, TWISTD + ["memmq", "--address=127.0.0.1:0", f"--cert_file={files.cert_file}",
                            f"--key_file={files.key_file}"],
        )
        return self._round_trip(server, files)

    @inlineCallbacks
    def _port_in_use(self, prefix: list[str]) -> None:
        busy = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(busy.stopListening)
        port = busy.getHost().port
        server = ServerProcess.spawn(self, prefix + [f"--address=127.0.0.1:{port}"])
        status = yield bounded(server.ended)
        self.assertEqual(status, 2, server.output)
        self.assertEqual(
            server.stderr.decode().splitlines()[-1],
            f"memmq: cannot listen on 127.0.0.1:{port}: Address already in use",
        )
        self.assertNotIn(b"Traceback", server.output)

    def test_port_in_use(self) -> Deferred:
        """
        A port in use: one line on stderr, exit status 2.
        """
        return self._port_in_use(["-m", "memmq"])

    def test_port_in_use_twistd(self) -> Deferred:
        """
        The same under twistd.
        """
        return self._port_in_use(TWISTD + ["memmq"])

    @inlineCallbacks
    def test_twistd_bad_option(self) -> None:
        """
        A bad option under twistd: one line on stderr, exit status 2.
        """
        out, err, status = yield bounded(getProcessOutputAndValue(
            sys.executable, TWISTD + ["memmq", "--max_message_size=lots"], env=child_env(), path=REPO,
        ))
        self.assertEqual(status, 2)
        self.assertEqual(err.decode().splitlines(), [
            "memmq: --max_message_size: 'lots' is not a size (for example 1048576, 512KiB or 8MiB)"
            " (see memmq --help)",
        ])

    @inlineCallbacks
    def test_twistd_lists_plugin(self) -> None:
        """
        C{twistd --help} lists memmq.
        """
        out, err, status = yield bounded(getProcessOutputAndValue(
            sys.executable, TWISTD[:2] + ["--help"], env=child_env(), path=REPO,
        ))
        self.assertEqual(status, 0, err)
        self.assertRegex(out.decode(), r"\n\s+memmq\s+An in-memory publish/subscribe message broker")


del WAIT
