"""
The C{memmq} command (and C{python -m memmq}): run the server in the
foreground, logging to stderr, until SIGINT or SIGTERM; or, with
C{--client} or C{-i}, the command-line client or the interactive prompt.
"""

from __future__ import annotations

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from memmq.tap import Options, makeService

__all__ = ["main"]


class _CurrentStderr:
    """
    Whatever C{sys.stderr} is when a line is written: the prompt swaps it
    (prompt_toolkit's C{patch_stdout}) so that log lines appear above the
    prompt instead of through it.
    """

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


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
    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn if client else LogLevel.info)
    levels.setLogLevelForNamespace("memmq", LogLevel.info)
    observer = FilteringLogObserver(textFileLogObserver(_CurrentStderr()), [levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    if options["client"]:
        from memmq.cli import run

        return run(options, reactor)
    if options["interactive"]:
        from memmq.prompt import run

        return run(options, reactor)
    service = makeService(options, reactor)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
