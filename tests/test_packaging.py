"""
Tests for what is installed beside the code: the man page renders without
a warning, and the package installs it as share/man/man1/memmq.1.
"""

from __future__ import annotations

import os
import shutil
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

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
