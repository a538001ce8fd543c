"""
The backplane's command-line options (README: Redis backplane): where Redis
is, its password (from a file or the environment, never the command line
alone), its CA, and whether a node may start without it.
"""

from __future__ import annotations

import os

from twisted.python import usage

from memmq.errors import MemmqError
from memmq.values import Group, refuse

__all__ = ["BACKPLANE", "check_backplane"]


def _read_password(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise usage.UsageError(f"--backplane_password_file: cannot read {path}: {e.strerror or e}") from None
    password = text.strip("\r\n")
    if not password:
        raise usage.UsageError(f"--backplane_password_file: {path} is empty")
    return password


def check_backplane(options) -> None:
    """
    --backplane goes with a server; its companions go with it. The URL is
    parsed now (options["backplane_target"]) and the password read now.
    """
    options["backplane_target"] = None
    url = options["backplane"]
    if url is None:
        for name in ("backplane_password_file", "backplane_ca_file", "backplane_cert_file", "backplane_key_file"):
            if options[name]:
                raise usage.UsageError(f"--{name} goes with --backplane")
        if options["backplane_optional"]:
            raise usage.UsageError("--backplane_optional goes with --backplane")
        return
    if options["client"] or options["interactive"] or options["proxy"]:
        raise usage.UsageError("--backplane is for a server, not for --client, -i or --proxy")
    from memmq.backplane.redis import PASSWORD_ENVIRONMENT, parse_redis_url

    if options["backplane_password_file"]:
        password = _read_password(options["backplane_password_file"])
    else:
        password = os.environ.get(PASSWORD_ENVIRONMENT) or None
    tls = {}
    for name in ("ca_file", "cert_file", "key_file"):
        path = options["backplane_" + name]
        if path is None:
            continue
        if not os.path.isfile(path):
            raise usage.UsageError(f"--backplane_{name}: no such file: {path}")
        tls[name] = os.path.abspath(path)
    if bool(tls.get("cert_file")) != bool(tls.get("key_file")):
        raise usage.UsageError("--backplane_cert_file and --backplane_key_file go together")
    try:
        target = parse_redis_url(url, password, prefix=options["backplane_prefix"], **tls)
    except MemmqError as e:
        raise refuse(e) from None
    if tls and not target.tls:
        raise usage.UsageError("--backplane_ca_file, _cert_file and _key_file go with a rediss:// URL")
    options["backplane_target"] = target


BACKPLANE = Group(
    "Backplane options",
    note="several nodes sharing one Redis",
    flags=[
        ["backplane_optional", None,
         "Start even when Redis cannot be reached, serving locally (and saying so) until it can; "
         "without it such a start is refused."],
    ],
    parameters=[
        ["backplane", None, None,
         "redis://[user@]host[:port][/db] or rediss://... (TLS): share topics with every node on this "
         "Redis. The password comes from --backplane_password_file or MEMMQ_BACKPLANE_PASSWORD, "
         "never from the URL."],
        ["backplane_password_file", None, None, "With --backplane: a file holding Redis's password."],
        ["backplane_ca_file", None, None,
         "With a rediss:// --backplane: PEM CA certificates to verify Redis with [default: the system's]."],
        ["backplane_cert_file", None, None, "With a rediss:// --backplane: a PEM client certificate, with "
         "--backplane_key_file."],
        ["backplane_key_file", None, None, "With a rediss:// --backplane: the client certificate's key."],
        ["backplane_prefix", None, "memmq:",
         "With --backplane: the prefix of every Redis channel, so that several memmq clusters can share "
         "one Redis."],
    ],
    check=check_backplane,
)
