"""
The code passes ruff (ruff.toml), so style problems fail the build; the
tests keep their shared helpers in support modules, not in each other.
"""

from __future__ import annotations

import ast
import glob
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPO


def _imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """
    (line, module) of every import in C{tree}, at any depth, relative ones
    resolved against C{package}; C{from tests import test_x} counts as
    C{tests.test_x}.
    """
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


class LintTests(SynchronousTestCase):
    def test_ruff(self) -> None:
        """
        ruff finds nothing in memmq, tests and the plugin.  It runs as this
        Python's module (it comes with the test extra), so a missing ruff
        fails the test rather than skipping it.
        """
        result = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--no-cache", "memmq", "tests", "twisted"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_no_test_module_imports_another(self) -> None:
        """
        No tests/test_*.py imports another test module (at the top or inside
        a function): what tests share lives in tests/support.py or
        tests/grpc_support.py.
        """
        offending: set[str] = set()
        paths = sorted(glob.glob(os.path.join(REPO, "tests", "test_*.py")))
        self.assertTrue(paths)
        for path in paths:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for line, module in _imported_modules(tree, "tests"):
                parts = module.split(".")
                if len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_"):
                    offending.add(f"{os.path.basename(path)}:{line} imports {'.'.join(parts[:2])}")
        self.assertEqual(sorted(offending), [])
