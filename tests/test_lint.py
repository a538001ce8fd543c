"""
The code passes ruff (ruff.toml), so style problems fail the build.
"""

from __future__ import annotations

import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import REPO


class LintTests(SynchronousTestCase):
    def test_ruff(self) -> None:
        """
        ruff finds nothing in memmq, tests and the plugin.
        """
        ruff = shutil.which("ruff")
        if ruff is None:
            raise SkipTest("ruff is not installed (pip install '.[test]')")
        result = subprocess.run(
            [ruff, "check", "--no-cache", "memmq", "tests", "twisted"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
