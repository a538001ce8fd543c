"""
The C{--workers} option: how many processes serve (README: Workers).

Light to import, as every option group is.
"""

from __future__ import annotations

import os

from twisted.python import usage

from memmq.values import Group

__all__ = ["WORKERS", "check_workers", "usable_cpus"]


def usable_cpus() -> int:
    """
    The CPUs this process may run on (its affinity, which containers and
    C{taskset} narrow), at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _workers(text: str) -> int:
    if text == "auto":
        return usable_cpus()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"--workers: {text!r} is not a number of processes (1 or more) or auto")
    return int(text)


_workers.coerceDoc = ""  # type: ignore[attr-defined]


def check_workers(options) -> None:
    """
    Several workers serve a server's HTTP/WebSocket front-end; what does
    not yet work across processes is refused with one line.
    """
    if options["workers"] == 1:
        return
    if options["client"] or options["interactive"]:
        raise usage.UsageError("--workers is for the server, not for --client or -i")
    if options["persist"] and options["backplane"]:
        raise usage.UsageError("--workers does not go with --persist and --backplane together: run one node per core")
    if options["persist"]:
        raise usage.UsageError(
            "--workers does not go with --persist yet: each topic's file must be written by one process"
        )


WORKERS = Group(
    "Workers options",
    parameters=[
        ["workers", None, 1,
         "How many processes serve: a number, or auto for one per usable CPU. With more than 1, "
         "a parent process holds every listening socket and restarts workers that die; the "
         "workers share the sockets, the topics, patterns and queue groups, and any of them shows "
         "the whole server's /metrics and /stats; with --proxy or --backplane, each worker is a "
         "proxy or a node of its own [default: 1].", _workers],
    ],
    check=check_workers,
)
