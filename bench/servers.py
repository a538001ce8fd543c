"""
Fresh servers for the benchmark scripts: one place that picks a loopback
port, starts a variant (a memmq checkout, or another program such as
asim/mq's binary), waits until it answers, and stops it.

A variant is NAME=CHECKOUT[::SERVER ARGS]: the server is ``python3 -m
memmq`` imported from CHECKOUT, or, for ``exec:PROGRAM``, that program,
with ``--address=127.0.0.1:PORT`` and the server args either way.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time

__all__ = ["free_port", "parse_variant", "server_command", "start", "stop", "wait_listening"]


def free_port() -> int:
    """
    A TCP port free on 127.0.0.1 now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, deadline: float, tls: bool = True, what: str = "the server") -> None:
    """
    Wait until something on 127.0.0.1:C{port} accepts a connection (and
    completes a TLS handshake, offering HTTP/2 as gRPC wants, if C{tls}),
    until the C{time.monotonic()} C{deadline}; exit saying so if nothing did.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
                if not tls:
                    return
                with context.wrap_socket(raw):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} on port {port} did not answer in time")


def parse_variant(text: str, headers: dict[str, list[str]] | None = None) -> dict:
    """
    NAME=CHECKOUT[::SERVER ARGS] as a dict: name, checkout, args, and the
    extra request headers given for NAME in C{headers}.
    """
    name, _, rest = text.partition("=")
    checkout, _, server_args = rest.partition("::")
    return {
        "name": name,
        "checkout": checkout or ".",
        "args": shlex.split(server_args),
        "headers": (headers or {}).get(name, []),
    }


def server_command(variant: dict, port: int) -> tuple[list[str], dict[str, str]]:
    """
    The command line and environment that run C{variant} on 127.0.0.1:C{port}.
    """
    address = f"--address=127.0.0.1:{port}"
    if variant["checkout"].startswith("exec:"):
        return [variant["checkout"][5:], address, *variant["args"]], dict(os.environ)
    # -P: not the working directory's memmq (a checkout run from) but
    # CHECKOUT's, whatever the directory this is run from.
    argv = [sys.executable, "-P", "-m", "memmq", address, *variant["args"]]
    return argv, dict(os.environ, PYTHONPATH=os.path.abspath(variant["checkout"]))


def start(variant: dict, port: int, **popen) -> subprocess.Popen:
    """
    Start C{variant} on C{port}; its output is dropped unless C{popen}
    (keyword arguments of L{subprocess.Popen}) says otherwise.
    """
    argv, env = server_command(variant, port)
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(argv, env=env, **popen)


def stop(process: subprocess.Popen, grace: float = 10) -> None:
    """
    Stop C{process} with SIGTERM, or SIGKILL after C{grace} seconds.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
