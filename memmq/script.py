"""
The C{memmq} command (and C{python -m memmq}): run the server in the
foreground, logging to stderr, until SIGINT or SIGTERM; or, with
C{--client} or C{-i}, the command-line client or the interactive prompt.
"""

from __future__ import annotations

import sys

from twisted.logger import LogLevel, globalLogBeginner

from memmq.logs import observer
from memmq.tap import Options, makeService

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """
    Parse C{argv} (default: C{sys.argv[1:]}), serve, and return the exit
    status once the reactor has stopped.
    """
    options = Options()
    options.parseOptions(sys.argv[1:] if argv is None else argv)

    from twisted.internet import reactor

    client = options["client"] or options["interactive"]
    # A server logs its life at info; a client's stderr is for the user,
    # so only memmq's own news and warnings from below it go there.
    quiet_below = LogLevel.warn if client else LogLevel.info
    globalLogBeginner.beginLoggingTo([observer(options["log_format"], quiet_below)], redirectStandardIO=False)
    if options["client"]:
        from memmq.cli import run

        return run(options, reactor)
    if options["interactive"]:
        from memmq.prompt import run

        return run(options, reactor)
    service = makeService(options, reactor, own_logging=True)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
