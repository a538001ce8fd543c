# -*- test-case-name: tests.test_auth_file -*-
"""
The auth file (C{--auth_file}): who may do what, as a person writes it.

A TOML file (comments start with C{#}); see the README section "Access
control" for a worked example::

    # orders-service publishes orders
    [[user]]
    name = "orders-service"
    token = "sha256:9f86d0..."      # memmq auth hash < token-file
    publish = ["orders.>"]

    [[user]]
    name = "edge-1"
    certificate = ["edge-1.example.com"]   # client certificate CN or SAN
    subscribe = ["telemetry.*"]

    [[user]]
    name = "prometheus"
    token = "sha256:60303a..."
    admin = true                   # may read /stats and /metrics

    [anonymous]                    # no credentials; nothing if absent
    subscribe = ["public.>"]

Each C{[[user]]} has a unique C{name}, a C{token} hash or a list of them
(two during a rotation), a C{certificate} subject name or a list of them, or
both, and any of C{publish}, C{subscribe} (lists of patterns) and C{admin}
(a boolean).  Unknown keys are errors, so a misspelt C{subscribe} is not
silently nothing.

Like ssh with a private key, the file is refused when its mode lets its
group or others read or write it.  Every error is one line naming the file,
the line where it can, and what is wrong, and never holds a token.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from memmq.auth.errors import AuthConfigError
from memmq.auth.model import NOTHING, Identity, Permissions
from memmq.auth.tokens import find_token, parse_token_hash
from memmq.errors import InvalidPattern
from memmq.patterns import parse_pattern

__all__ = ["AuthRules", "load_auth_file", "parse_auth_file"]

_USER_KEYS = frozenset(("name", "token", "certificate", "publish", "subscribe", "admin"))
_ANONYMOUS_KEYS = frozenset(("publish", "subscribe", "admin"))
_TOP_KEYS = frozenset(("user", "anonymous"))
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*\Z")


@dataclass(frozen=True)
class AuthRules:
    """
    An auth file, loaded and checked.

    @ivar path: the file it came from.
    @ivar users: one L{Identity} per C{[[user]]}, shared by every connection
        that identifies as it.
    @ivar anonymous: what a client with no credentials may do.
    """

    path: str
    users: tuple[Identity, ...] = ()
    anonymous: Permissions = NOTHING
    _tokens: tuple[tuple[bytes, Identity], ...] = field(default=(), repr=False)
    _certificates: dict[str, Identity] = field(default_factory=dict, repr=False)

    def identify_token(self, token: str) -> Identity | None:
        """
        The user with C{token}, or L{None}; constant time in the token.
        """
        return find_token(token, self._tokens)

    def identify_certificate(self, names: Sequence[str]) -> Identity | None:
        """
        The user one of C{names} (a certificate's CN and SANs) belongs to,
        or L{None}.  Names are compared exactly.
        """
        for name in names:
            identity = self._certificates.get(name)
            if identity is not None:
                return identity
        return None

    def describe(self) -> str:
        """
        One line for the log: the file, how many users, what anonymous may do.
        """
        users = f"{len(self.users)} user" + ("" if len(self.users) == 1 else "s")
        return f"{self.path} ({users}; anonymous: {self.anonymous.describe()})"


def load_auth_file(path: str) -> AuthRules:
    """
    Read and check the auth file at C{path}.

    @raise AuthConfigError: the file cannot be read, is readable or writable
        by group or others, or is not a valid auth file.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o077:
                raise AuthConfigError(
                    f"{path}: auth file is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                    f"run chmod 600 {path}"
                )
            data = f.read()
    except OSError as e:
        raise AuthConfigError(f"{path}: cannot read the auth file: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthConfigError(f"{path}: auth file is not UTF-8 text") from None
    return parse_auth_file(text, path)


def parse_auth_file(text: str, path: str = "<auth file>") -> AuthRules:
    """
    Check the auth file C{text} (read from C{path}, named in errors).

    @raise AuthConfigError: C{text} is not a valid auth file.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        position = _TOML_POSITION.search(message)
        if position is None:
            raise AuthConfigError(f"{path}: {_lower_first(message)}") from None
        line, column = position.groups()
        raise AuthConfigError(
            f"{path}:{line}: {_lower_first(message[: position.start()])} (column {column})"
        ) from None
    return _Checker(text, path).rules(document)


class _Checker:
    """
    Turns a parsed document into L{AuthRules}, saying where a mistake is.
    """

    def __init__(self, text: str, path: str) -> None:
        self._lines = text.splitlines()
        self._path = path

    def rules(self, document: dict[str, Any]) -> AuthRules:
        for key in document:
            if key not in _TOP_KEYS:
                self._fail(f"unknown key {key!r} (expected [[user]] or [anonymous])", self._line(None, 0, key))
        users = document.get("user", [])
        if not isinstance(users, list) or not all(isinstance(u, dict) for u in users):
            self._fail("'user' must be tables written [[user]]", self._line(None, 0, "user"))
        anonymous_table = document.get("anonymous", {})
        if not isinstance(anonymous_table, dict):
            self._fail("'anonymous' must be a table written [anonymous]", self._line(None, 0, "anonymous"))

        identities: list[Identity] = []
        tokens: list[tuple[bytes, Identity]] = []
        certificates: dict[str, Identity] = {}
        names: set[str] = set()
        for index, table in enumerate(users):
            where = ("user", index)
            name = table.get("name")
            if not isinstance(name, str) or not name.strip():
                self._fail("a [[user]] needs a name = \"...\"", self._line(where, index, "name"))
            if name in names:
                self._fail(f"user {name!r} is listed twice", self._line(where, index, "name"))
            names.add(name)
            self._check_keys(table, _USER_KEYS, where, f"user {name!r}")
            identity = Identity(name, self._permissions(table, where, f"user {name!r}"), "token")
            hashes = self._strings(table, "token", where, f"user {name!r}")
            subjects = self._strings(table, "certificate", where, f"user {name!r}")
            if not hashes and not subjects:
                self._fail(
                    f"user {name!r} has neither a token nor a certificate, so nothing can identify it",
                    self._line(where, index, None),
                )
            for text in hashes:
                try:
                    digest = parse_token_hash(text)
                except ValueError as e:
                    self._fail(f"user {name!r}: token: {e}", self._line(where, index, "token"))
                if any(digest == d for d, _ in tokens):
                    self._fail(f"user {name!r}: the same token hash is given to another user",
                               self._line(where, index, "token"))
                tokens.append((digest, identity))
            for subject in subjects:
                if subject in certificates:
                    self._fail(
                        f"user {name!r}: certificate name {subject!r} is given to user "
                        f"{certificates[subject].name!r} too",
                        self._line(where, index, "certificate"),
                    )
                certificates[subject] = Identity(name, identity.permissions, "certificate")
            identities.append(identity)

        anonymous = ("anonymous", 0)
        self._check_keys(anonymous_table, _ANONYMOUS_KEYS, anonymous, "anonymous")
        return AuthRules(
            path=self._path,
            users=tuple(identities),
            anonymous=self._permissions(anonymous_table, anonymous, "anonymous"),
            _tokens=tuple(tokens),
            _certificates=certificates,
        )

    def _check_keys(self, table: dict[str, Any], allowed: frozenset[str], where: tuple[str, int], what: str) -> None:
        for key in table:
            if key not in allowed:
                self._fail(
                    f"{what}: unknown key {key!r} (expected one of {', '.join(sorted(allowed))})",
                    self._line(where, where[1], key),
                )

    def _permissions(self, table: dict[str, Any], where: tuple[str, int], what: str) -> Permissions:
        admin = table.get("admin", False)
        if not isinstance(admin, bool):
            self._fail(f"{what}: admin must be true or false", self._line(where, where[1], "admin"))
        parsed = {}
        for key in ("publish", "subscribe"):
            value = table.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self._fail(f"{what}: {key} must be a list of patterns, like [\"orders.>\"]",
                           self._line(where, where[1], key))
            try:
                parsed[key] = tuple(parse_pattern(text) for text in value)
            except InvalidPattern as e:
                self._fail(f"{what}: {key}: {e}", self._line(where, where[1], key))
        return Permissions(parsed["publish"], parsed["subscribe"], admin)

    def _strings(self, table: dict[str, Any], key: str, where: tuple[str, int], what: str) -> list[str]:
        value = table.get(key, [])
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._fail(f"{what}: {key} must be a string or a list of strings", self._line(where, where[1], key))
        return value

    def _line(self, where: tuple[str, int] | None, index: int, key: str | None) -> int | None:
        """
        The line of C{key} in the C{index}th table named C{where[0]} (the
        top of the file when C{where} is L{None}), or of that table's header,
        or L{None} if the text is written in a way this does not follow
        (inline tables, dotted keys).
        """
        start = 0
        if where is not None:
            header = re.compile(r"\s*\[\[?\s*" + re.escape(where[0]) + r"\s*\]\]?\s*(#.*)?\Z")
            seen = -1
            for number, line in enumerate(self._lines):
                if header.match(line):
                    seen += 1
                    if seen == index:
                        start = number
                        break
            else:
                return None
            if key is None:
                return start + 1
        if key is None:
            return None
        assignment = re.compile(r"\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
        table = re.compile(r"\s*\[")
        for number in range(start + (where is not None), len(self._lines)):
            line = self._lines[number]
            if table.match(line):
                break
            if assignment.match(line):
                return number + 1
        return start + 1 if where is not None else None

    def _fail(self, message: str, line: int | None) -> NoReturn:
        place = self._path if line is None else f"{self._path}:{line}"
        raise AuthConfigError(f"{place}: {message}")


def _lower_first(message: str) -> str:
    message = message.strip()
    return message[:1].lower() + message[1:]
