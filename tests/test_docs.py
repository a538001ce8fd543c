"""
README.rst and man/memmq.1 stay in step with the options: every option is
documented in both.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from memmq.options import MemmqOptions
from tests.support import REPO


def _option_names() -> list[str]:
    """
    Every long option, those made by opt_ methods (--listen, --version)
    included.
    """
    return sorted(set(MemmqOptions().synonyms.values()))


class DocumentationTests(SynchronousTestCase):
    def _read(self, *path: str) -> str:
        with open(os.path.join(REPO, *path), encoding="utf-8") as f:
            return f.read()

    def test_readme_lists_every_option(self) -> None:
        """
        Each option appears in README.rst as --name.
        """
        readme = self._read("README.rst")
        missing = [name for name in _option_names() if f"--{name}" not in readme]
        self.assertEqual(missing, [])

    def test_man_page_lists_every_option(self) -> None:
        """
        Each option appears in the man page (roff escapes its dashes).
        """
        man = self._read("man", "memmq.1")
        missing = [name for name in _option_names() if f"\\-\\-{name}" not in man]
        self.assertEqual(missing, [])
