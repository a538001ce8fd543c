"""
Tests for what is installed beside the code: the man page renders without
a warning, and the package installs it as share/man/man1/memmq.1; and
README's set-up command, run as written (see README, Set-up).
"""

from __future__ import annotations

import os
import shutil
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from memmq.client import Client
from tests.interop_support import LISTENING, start
from tests.support import REPO, bounded, child_env

MAN_PAGE = os.path.join(REPO, "man", "memmq.1")


class ManPageTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_renders_without_warnings(self) -> None:
        """
        groff -man -ww -z (every warning on, no output) has nothing to say
        about man/memmq.1.
        """
        groff = shutil.which("groff")
        if groff is None:
            raise SkipTest("groff is not installed")
        out, err, status = yield bounded(getProcessOutputAndValue(
            groff, ["-man", "-ww", "-z", MAN_PAGE], env=dict(os.environ), path=REPO,
        ))
        self.assertEqual((status, err.decode()), (0, ""))

    @inlineCallbacks
    def test_installed_with_the_package(self) -> None:
        """
        Installing the package's data puts the man page in share/man/man1,
        where man finds it under the installation prefix.
        """
        target = os.path.abspath(self.mktemp())
        out, err, status = yield bounded(getProcessOutputAndValue(
            sys.executable, ["setup.py", "-q", "install_data", f"--install-dir={target}"],
            env=child_env(), path=REPO,
        ))
        self.assertEqual(status, 0, err)
        with open(os.path.join(target, "share", "man", "man1", "memmq.1"), "rb") as installed:
            with open(MAN_PAGE, "rb") as shipped:
                self.assertEqual(installed.read(), shipped.read())


SETUP_PYTHON = "MEMMQ_SETUP_PYTHON"
INSTALL_WAIT = 600.0  # seconds: making a virtual environment and installing into it

# Where a fresh checkout would not have them: what installing or testing
# leaves behind.
_NOT_IN_A_CHECKOUT = shutil.ignore_patterns(
    ".git", ".venv", "_trial_temp*", "build", "*.egg-info", "__pycache__", "dropin.cache",
)


def readme_command(marker: str) -> str:
    """
    The command README.rst marks with C{.. ci: MARKER} (the first indented
    line after the marker, as .ci/run finds the test command).
    """
    with open(os.path.join(REPO, "README.rst"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    after = lines[lines.index(f".. ci: {marker}") + 1:]
    return next(line[4:] for line in after if line.startswith("    ") and not line[4:5].isspace())


def _system_environment(python3: str, bin_dir: str) -> dict[str, str]:
    """
    The environment of a user's shell in which C{python3} is C{python3}:
    none of this process's virtual environment or import path.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    ours = {os.path.dirname(sys.executable), os.path.join(os.environ.get("VIRTUAL_ENV", "/nonexistent"), "bin")}
    path = [d for d in env.get("PATH", os.defpath).split(os.pathsep) if d and d not in ours]
    os.symlink(python3, os.path.join(bin_dir, "python3"))
    env["PATH"] = os.pathsep.join([bin_dir, *path])
    return env


class SetUpCommandTests(TestCase):
    """
    README's set-up command, run as written in a fresh copy of the checkout
    with a given python3 (C{$MEMMQ_SETUP_PYTHON}; .ci/run gives the
    system's, /usr/bin/python3, which Debian and Ubuntu manage). The test
    command is the one .ci/run itself runs.
    """

    timeout = 1500

    @inlineCallbacks
    def test_server_command(self):
        """
        The command makes .venv, installs memmq there and starts a server
        that serves; run again in the same checkout, it does the same. The
        manual page is where README says, and C{man} finds it once .venv's
        bin is on PATH. (The command is given C{--address=127.0.0.1:0} so
        that it does not take port 8081.)
        """
        python3 = os.environ.get(SETUP_PYTHON)
        if not python3:
            raise SkipTest(f"set {SETUP_PYTHON} to a python3 to try README's set-up command with it (.ci/run does)")
        checkout = os.path.abspath(self.mktemp())
        shutil.copytree(REPO, checkout, ignore=_NOT_IN_A_CHECKOUT, symlinks=True)
        bin_dir = os.path.abspath(self.mktemp())
        os.makedirs(bin_dir)
        env = _system_environment(python3, bin_dir)
        command = readme_command("server command") + " --address=127.0.0.1:0"
        for run in ("first run", "second run"):
            yield self._serves(checkout, env, command, run)
        self.assertEqual(os.path.realpath(os.path.join(checkout, ".venv", "bin", "python3")), os.path.realpath(python3))
        page = os.path.join(checkout, ".venv", "share", "man", "man1", "memmq.1")
        with open(page, "rb") as installed, open(MAN_PAGE, "rb") as shipped:
            self.assertEqual(installed.read(), shipped.read())
        man = shutil.which("man")
        if man is not None:
            env["PATH"] = os.pathsep.join([os.path.join(checkout, ".venv", "bin"), env["PATH"]])
            env.pop("MANPATH", None)  # man derives its path from PATH only without it
            out, err, status = yield bounded(getProcessOutputAndValue(man, ["-w", "memmq"], env=env, path=checkout))
            self.assertEqual((status, out.decode().strip()), (0, page), err)

    @inlineCallbacks
    def _serves(self, checkout: str, env: dict[str, str], command: str, run: str):
        shell = start(self, f"README's set-up command ({run})", ["bash", "-c", command], checkout, env, session=True)
        # Installing downloads and builds: a bound of its own.
        yield shell.until(lambda c: LISTENING.search(c.output), "a server listening", INSTALL_WAIT)
        port = int(LISTENING.search(shell.output).group(2))
        client = Client(servers=[f"127.0.0.1:{port}"])
        try:
            yield bounded(client.publish("set-up", b"it serves"))
        finally:
            yield client.close()
        self.assertEqual((yield shell.terminate()), 0, shell.describe())
