"""
The scripts in examples/ are the README's examples: the README shows each
file whole, byte for byte (under a C{.. example: PATH} line), and each runs
as it is against a real server and prints what it should (README: Client
library, Testing your application, gRPC transport).
"""

from __future__ import annotations

import os
import re
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from memmq.broker import Broker
from tests.grpc_support import RunningGRPC
from tests.support import REPO, RunningServer, bounded, child_env

EXAMPLES = os.path.join(REPO, "examples")
MARKER = re.compile(r"^\.\. example: (\S+)\n\n\.\. code-block:: python\n\n", re.M)


def shown_examples() -> dict[str, str]:
    """
    Each example README.rst shows: its path, and the code block under its
    marker with the block's indentation taken off.
    """
    with open(os.path.join(REPO, "README.rst"), encoding="utf-8") as f:
        readme = f.read()
    shown = {}
    for match in MARKER.finditer(readme):
        lines = []
        for line in readme[match.end():].splitlines():
            if line and not line.startswith("    "):
                break
            lines.append(line[4:])
        shown[match.group(1)] = "\n".join(lines).strip("\n") + "\n"
    return shown


class ReadmeShowsExamplesTests(SynchronousTestCase):
    def test_each_file_shown_as_it_is(self) -> None:
        """
        Every script in examples/ is in README.rst, exactly as the file is.
        """
        shown = shown_examples()
        files = sorted(f"examples/{name}" for name in os.listdir(EXAMPLES) if name.endswith(".py"))
        self.assertEqual(sorted(shown), files)
        for path in files:
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                self.assertEqual(shown[path], f.read(), path)


class RunExamplesTests(TestCase):
    """
    Each example run with this Python against a server of its own on a
    free port, given as the script's argument (the default client's, by
    making that client for the port, as client.default() makes it).
    """

    timeout = 120

    @inlineCallbacks
    def _script(self, args: list[str], cwd: str = REPO):
        out, err, status = yield bounded(
            getProcessOutputAndValue(sys.executable, args, env=child_env(), path=cwd), 60
        )
        self.assertEqual(status, 0, err)
        return out.decode().splitlines()

    @inlineCallbacks
    def test_publish_subscribe(self) -> None:
        s = RunningServer(self, address="localhost:0")
        wrapper = (
            "import runpy; from memmq import client; "
            f"client._default = client.new(servers=['localhost:{s.port}']); "
            "runpy.run_path('examples/publish_subscribe.py', run_name='__main__')"
        )
        self.assertEqual((yield self._script(["-c", wrapper])), ["bar"])
        self.assertEqual(s.broker.published, 1)

    @inlineCallbacks
    def test_iterate(self) -> None:
        s = RunningServer(self)
        lines = yield self._script(["examples/iterate.py", f"127.0.0.1:{s.port}"])
        self.assertEqual(lines, ["one", "two", "three", "four"])

    @inlineCallbacks
    def test_cluster(self) -> None:
        servers = [RunningServer(self) for _ in range(3)]
        lines = yield self._script(["examples/cluster.py", *(f"127.0.0.1:{s.port}" for s in servers)])
        self.assertEqual(lines, ["to every server"] * 3 + ["to one server"])
        self.assertEqual(sorted(s.broker.published for s in servers), [1, 1, 2])

    @inlineCallbacks
    def test_grpc_client(self) -> None:
        g = RunningGRPC(self, Broker())
        self.assertEqual((yield self._script(["examples/grpc_client.py", g.server])), ["bar"])

    @inlineCallbacks
    def test_greet(self) -> None:
        """
        The testing example passes under trial, run from examples/ as the
        README says (in a directory of its own, for trial's _trial_temp).
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        env = child_env()
        env["PYTHONPATH"] = os.pathsep.join([EXAMPLES, env["PYTHONPATH"]])
        out, err, status = yield bounded(
            getProcessOutputAndValue(sys.executable, ["-m", "twisted.trial", "test_greet"], env=env, path=work), 60
        )
        self.assertEqual(status, 0, out + err)
        self.assertIn(b"PASSED (successes=1)", out)
