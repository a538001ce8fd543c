"""
Tests for memmq.auth.command: memmq auth token, hash and check.
"""

from __future__ import annotations

import io
import os

from twisted.trial.unittest import SynchronousTestCase

from memmq.auth.authfile import parse_auth_file
from memmq.auth.command import main
from memmq.auth.tokens import hash_token

TOKEN = "a-token-read-from-stdin-0123456789"


def run(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


class CommandTests(SynchronousTestCase):
    def test_token(self) -> None:
        """
        memmq auth token prints a new token, then its hash, which an auth
        file takes.
        """
        status, out, err = run(["token"])
        token, digest = out.splitlines()
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(digest, hash_token(token))
        rules = parse_auth_file(f'[[user]]\nname = "a"\ntoken = "{digest}"\n')
        self.assertEqual(rules.identify_token(token).name, "a")

    def test_hash_from_stdin(self) -> None:
        """
        memmq auth hash reads the token from standard input (one line, its
        whitespace stripped) and prints only its hash.
        """
        self.assertEqual(run(["hash"], TOKEN + "\n"), (0, hash_token(TOKEN) + "\n", ""))

    def test_hash_never_from_argv(self) -> None:
        """
        A token on the command line is refused, saying where it is read from.
        """
        status, out, err = run(["hash", TOKEN])
        self.assertEqual((status, out), (2, ""))
        self.assertIn("read from standard input, never from the command line", err)
        self.assertNotIn(TOKEN, err)

    def test_hash_refusals(self) -> None:
        """
        No token, or a short one, exits 2 with one line that does not
        repeat the token.
        """
        self.assertEqual(run(["hash"], ""), (2, "", "memmq auth hash: no token on standard input\n"))
        status, out, err = run(["hash"], "s3cret\n")
        self.assertEqual((status, out), (2, ""))
        self.assertNotIn("s3cret", err)
        self.assertEqual(len(err.splitlines()), 1)

    def test_check(self) -> None:
        """
        memmq auth check loads a file as the server would: ok with a
        summary, or its one-line error and 2.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f'[[user]]\nname = "a"\ntoken = "{hash_token(TOKEN)}"\n')
        os.chmod(path, 0o600)
        status, out, err = run(["check", path])
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, f"ok: {path} (1 user; anonymous: nothing)\n")
        os.chmod(path, 0o644)
        status, out, err = run(["check", path])
        self.assertEqual((status, out), (2, ""))
        self.assertIn("accessible by group or others", err)

    def test_usage(self) -> None:
        """
        No or unknown subcommand is a usage error (2); --help is not.
        """
        self.assertEqual(run([])[0], 2)
        self.assertEqual(run(["frobnicate"])[0], 2)
        status, out, _ = run(["--help"])
        self.assertEqual(status, 0)
        self.assertIn("memmq auth token", out)
