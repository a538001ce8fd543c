# -*- test-case-name: tests.test_auth_command -*-
"""
C{memmq auth}: the commands that make an auth file's entries.

- C{memmq auth token}: a new random token and, on the next line, its hash;
  the token goes to the client, the hash into the auth file.
- C{memmq auth hash}: the hash of a token read from standard input (typed
  without echo at a terminal), for a token that exists already.  Never from
  the command line, where C{ps} and shell history would show it.
- C{memmq auth check FILE}: whether FILE is an auth file the server will
  load, before a C{SIGHUP} tries it.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Sequence
from typing import TextIO

from memmq.auth.authfile import load_auth_file
from memmq.auth.errors import AuthConfigError
from memmq.auth.tokens import hash_token, new_token

__all__ = ["main"]

USAGE = """\
usage: memmq auth token          print a new random token, then its hash
       memmq auth hash < FILE    print the hash of the token read from standard input
       memmq auth check FILE     check that FILE is an auth file the server will load
"""


def main(
    argv: Sequence[str],
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """
    Run C{memmq auth} with the arguments after C{auth}; return the exit
    status (2 for a usage error or an unusable token or file).
    """
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if len(argv) == 1 and argv[0] in ("-h", "--help"):
        stdout.write(USAGE)
        return 0
    if list(argv) == ["token"]:
        token = new_token()
        stdout.write(f"{token}\n{hash_token(token)}\n")
        return 0
    if list(argv) == ["hash"]:
        return _hash(stdin, stdout, stderr)
    if len(argv) == 2 and argv[0] == "check":
        try:
            rules = load_auth_file(argv[1])
        except AuthConfigError as e:
            stderr.write(f"memmq auth check: {e}\n")
            return 2
        stdout.write(f"ok: {rules.describe()}\n")
        return 0
    if argv and argv[0] == "hash":
        stderr.write("memmq auth hash: the token is read from standard input, never from the command line\n")
    stderr.write(USAGE)
    return 2


def _hash(stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    if stdin.isatty():
        token = getpass.getpass("token: ")
    else:
        token = stdin.readline()
    token = token.strip()
    if not token:
        stderr.write("memmq auth hash: no token on standard input\n")
        return 2
    try:
        stdout.write(hash_token(token) + "\n")
    except ValueError as e:
        stderr.write(f"memmq auth hash: {e}\n")
        return 2
    return 0
