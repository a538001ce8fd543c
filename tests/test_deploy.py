"""
The README's deployment section, followed as written where this machine
allows: systemd's socket activation of the installed memmq command on port
8081, then the section's own curl line.  (Installing the units needs a
running systemd; tests/test_units.py verifies them with systemd-analyze.)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import REPO, Curl, bounded, curl_publish, curl_subscribe, sleep, spawn


def _readme_commands() -> list[str]:
    with open(os.path.join(REPO, "README.rst"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("Running under systemd\n=====================\n", 1)[1].split("\nProxy mode\n", 1)[0]
    return [line.strip() for line in re.findall(r"^    (\S.*)$", section, re.M)]


class DeploymentTests(TestCase):
    timeout = 90

    @inlineCallbacks
    def test_socket_activation_as_written(self) -> None:
        """
        The README's systemd-socket-activate line serves the seed's curl
        publish (the section's curl line) on port 8081, and a subscriber
        receives it.
        """
        commands = _readme_commands()
        activate = [c for c in commands if c.startswith("systemd-socket-activate ")]
        curl_line = [c for c in commands if c.startswith("curl ")]
        self.assertEqual(len(activate), 1, commands)
        self.assertEqual(len(curl_line), 1, commands)
        argv = shlex.split(activate[0])
        for tool in ("systemd-socket-activate", "memmq", "curl"):
            if shutil.which(tool) is None:
                raise SkipTest(f"{tool} is not installed")
        try:
            busy = reactor.listenTCP(8081, Factory(), interface="::")
        except Exception:
            raise SkipTest("port 8081 is taken on this machine") from None
        yield busy.stopListening()
        process = Curl()
        spawn(self, process, [shutil.which(argv[0]), *argv[1:]], env=dict(os.environ))
        # First until the socket is there and memmq answers through it...
        for attempt in range(100):
            out, err, status = yield curl_publish(8081, f"ping {attempt}")
            if (out, status) == (b"200", 0):
                break
            yield sleep(0.1)
        self.assertEqual((out, status), (b"200", 0), err)
        # ... then until a subscriber is up (curl shows nothing before the
        # first message), then the README's curl line itself.
        subscriber = curl_subscribe(self, 8081)
        for attempt in range(100):
            out, err, status = yield curl_publish(8081, f"probe {attempt}")
            if b"probe" in subscriber.output or subscriber.ended.called:
                break
            yield sleep(0.1)
        self.assertIn(b"probe", subscriber.output)
        out, err, status = yield bounded(getProcessOutputAndValue(
            "/bin/sh", ["-c", curl_line[0]], env=os.environ
        ))
        self.assertEqual((out, status), (b"", 0), err)
        yield subscriber.seen(b"a completely arbitrary message")
        process.transport.signalProcess(signal.SIGTERM)
        self.assertEqual((yield bounded(process.ended)), 0)


