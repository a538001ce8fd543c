# -*- test-case-name: tests.test_limits -*-
"""
What the operating system limits (README: Limits): the open files a
process may hold (raised to the most it allows at start), the listen
backlog (the system's largest), and connections refused at accept for
want of descriptors (counted, and logged at most every few seconds rather
than a line each).
"""

from __future__ import annotations

import resource
import socket

from twisted.internet import tcp
from twisted.logger import Logger, globalLogPublisher

from memmq.internals.twisted_private import set_accept_logger
from memmq.server.limits import Guard

__all__ = ["raise_nofile_limit", "system_backlog", "watch_accepts", "with_backlog"]


class _AcceptObserver:
    """
    Receives a listening port's accept events: counts refused connections
    and logs them rate-limited, and passes anything else on.
    """

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    def __call__(self, event: dict) -> None:
        text = event.get("log_format") or ""
        if text.startswith(("EMFILE recovery: Closed", "Could not accept")):
            reason = event.get("acceptError", "EMFILE")
            self._guard.count(
                "refused", "refusing connections: {reason} (out of file descriptors; see the open files limit)",
                reason=reason,
            )
        elif text.startswith(("EMFILE encountered", "Re-reserving")):
            return
        else:
            globalLogPublisher(event)


def watch_accepts(port, guard: Guard) -> None:
    """
    Count and rate-limit the log lines of connections C{port} refuses
    (Twisted logs one line per refused connection).
    """
    if isinstance(port, tcp.Port):
        set_accept_logger(port, Logger(namespace="memmq.server.accept", observer=_AcceptObserver(guard)))


def system_backlog() -> int:
    """
    The longest listen backlog the system allows (Linux:
    C{net.core.somaxconn}), for bursts of connections after a restart.
    """
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(int(f.read().strip()), 1)
    except (OSError, ValueError):
        return socket.SOMAXCONN


def raise_nofile_limit() -> tuple[int, int]:
    """
    Raise the soft open-files limit to the hard one (as Go's runtime
    does), so that a server is not capped at 1,024 connections by a
    default nobody chose.  Returns (before, after).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read().strip())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft


def with_backlog(description: str) -> str:
    """
    A C{--listen} description of a TCP or UNIX endpoint, listening with the
    system's largest backlog unless it names one.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6", "unix") and "backlog=" not in description:
        return f"{description}:backlog={system_backlog()}"
    return description
