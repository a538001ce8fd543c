"""
The command-line options of memmq, shared by C{memmq}, C{python -m memmq}
and C{twistd memmq}.

Validation raises L{usage.UsageError}; L{memmq.tap.Options} is the
command-line face that turns it into one line on stderr and exit status 2.
"""

from __future__ import annotations

import re

from twisted.python import usage

from memmq.broker import DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_BUFFERED_MESSAGES
from memmq.errors import MemmqError
from memmq.server.http import DEFAULT_MAX_MESSAGE_SIZE
from memmq.server.listen import parse_address
from memmq.tls import load_certificate

__all__ = ["ServerOptions", "parse_size"]

_SIZE = re.compile(r"([0-9]+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """
    A size in bytes: a number, optionally with a binary unit (C{512KiB},
    C{8MiB}, C{1G}: K, M and G all count in 1024s).
    """
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (for example 1048576, 512KiB or 8MiB)")
    return int(match.group(1)) * _UNITS[match.group(2)[:1].lower()]


def _size(name: str):
    def coerce(text: str) -> int:
        try:
            return parse_size(text)
        except ValueError as e:
            raise ValueError(f"--{name}: {e}") from None
    return coerce


def _count(name: str):
    def coerce(text: str) -> int:
        text = str(text).strip()
        if text.startswith("-") and text[1:].isdigit():
            raise ValueError(f"--{name}: cannot be negative")
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"--{name}: {text!r} is not a whole number")
        return int(text)
    return coerce


class ServerOptions(usage.Options):
    """
    Options of the server (SPEC section 2).
    """

    synopsis = "Usage: memmq [options]"
    longdesc = (
        "memmq is an in-memory publish/subscribe message broker, wire-compatible with "
        "asim/mq: POST /pub?topic=T publishes the body, GET /sub?topic=T subscribes over "
        "a WebSocket (or a plain streaming response). TLS is always on; without "
        "--cert_file/--key_file a self-signed certificate is generated at start."
    )

    optFlags = [
        ["access_log", None, "Log every HTTP request (off by default: nothing is logged per request)."],
    ]
    optParameters = [
        ["address", None, ":8081",
         "Listen address host:port; an empty host listens on every interface, IPv4 and IPv6."],
        ["cert_file", None, None,
         "PEM certificate (chain) to serve, with --key_file. Without both, a self-signed "
         "certificate is generated at start."],
        ["key_file", None, None, "PEM private key of --cert_file (unencrypted)."],
        ["max_message_size", None, DEFAULT_MAX_MESSAGE_SIZE,
         "Largest payload accepted, in bytes (KiB/MiB suffixes allowed); larger ones get 413, "
         "or WebSocket close 1009.", _size("max_message_size")],
        ["max_buffered_messages", None, DEFAULT_MAX_BUFFERED_MESSAGES,
         "Per subscriber: messages held while its connection is full; further ones are "
         "dropped for that subscriber alone.", _count("max_buffered_messages")],
        ["max_buffered_bytes", None, DEFAULT_MAX_BUFFERED_BYTES,
         "Per subscriber: payload bytes held while its connection is full (KiB/MiB suffixes "
         "allowed); whichever limit is reached first applies.", _size("max_buffered_bytes")],
    ]

    def opt_version(self) -> None:
        """
        Print memmq's version and exit.
        """
        from memmq import __version__

        print(f"memmq {__version__}")
        raise SystemExit(0)

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")

    def postOptions(self) -> None:
        try:
            self["listen_address"] = parse_address(self["address"])
        except MemmqError as e:
            raise usage.UsageError(str(e)) from None
        cert_file, key_file = self["cert_file"], self["key_file"]
        if bool(cert_file) != bool(key_file):
            raise usage.UsageError("--cert_file and --key_file go together: give both or neither")
        self["certificate"] = None
        if cert_file:
            try:
                self["certificate"] = load_certificate(cert_file, key_file)
            except MemmqError as e:
                raise usage.UsageError(str(e)) from None
