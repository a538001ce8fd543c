"""
The README's deployment section, followed as written where this machine
allows: systemd's socket activation of the installed memmq command, then
the section's own curl line, both on a free port rather than the README's
8081.  (Installing the units needs a running systemd; tests/test_units.py
verifies them with systemd-analyze.)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import REPO, Curl, bounded, curl_publish, curl_subscribe, dead_port, sleep, spawn


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
        The README's systemd-socket-activate line serves the README's curl
        publish (the section's curl line), and a subscriber receives it.
        """
        commands = _readme_commands()
        activate = [c for c in commands if c.startswith("systemd-socket-activate ")]
        curl_line = [c for c in commands if c.startswith("curl ")]
        self.assertEqual(len(activate), 1, commands)
        self.assertEqual(len(curl_line), 1, commands)
        for tool in ("systemd-socket-activate", "memmq", "curl"):
            if shutil.which(tool) is None:
                raise SkipTest(f"{tool} is not installed")
        # The commands run as written but for their port, rewritten in the
        # one place each names it: 8081 is where a user's own memmq runs
        # (the README's first command), and a test suite run beside it must
        # neither skip this test nor talk to that server.
        port = dead_port("::")
        argv = shlex.split(activate[0])
        self.assertEqual(argv[1:3], ["-l", "8081"], activate[0])
        argv[2] = str(port)
        self.assertEqual(curl_line[0].count("localhost:8081"), 1, curl_line[0])
        curl_command = curl_line[0].replace("localhost:8081", f"localhost:{port}")
        process = Curl()
        spawn(self, process, [shutil.which(argv[0]), *argv[1:]], env=dict(os.environ))
        # First until the socket is there and memmq answers through it...
        for attempt in range(100):
            out, err, status = yield curl_publish(port, f"ping {attempt}")
            if (out, status) == (b"200", 0):
                break
            yield sleep(0.1)
        self.assertEqual((out, status), (b"200", 0), err)
        # ... then until a subscriber is up (curl shows nothing before the
        # first message), then the README's curl line itself.
        subscriber = curl_subscribe(self, port)
        for attempt in range(100):
            out, err, status = yield curl_publish(port, f"probe {attempt}")
            if b"probe" in subscriber.output or subscriber.ended.called:
                break
            yield sleep(0.1)
        self.assertIn(b"probe", subscriber.output)
        out, err, status = yield bounded(getProcessOutputAndValue(
            "/bin/sh", ["-c", curl_command], env=os.environ
        ))
        self.assertEqual((out, status), (b"", 0), err)
        yield subscriber.seen(b"a completely arbitrary message")
        process.transport.signalProcess(signal.SIGTERM)
        self.assertEqual((yield bounded(process.ended)), 0)
